"""Syntax tree -> checked index notation (:class:`spcomp.notation.Assignment`).

:func:`check` verifies what the grammar cannot (known functions and their
arity, one order per tensor, an output that is not read, distinct output
indices, finite literals), binds every tensor to its format and dtype, and
makes the implicit sums explicit.

Sum placement (DESIGN §4, as in TACO). An index used on the right and absent
from the left is summed, and its :class:`~spcomp.notation.Sum` wraps the
smallest sub-expression that holds every use of the index, i.e. the lowest
common ancestor of the accesses that use it, in the tree *as parsed*::

    a[i] = b[i] + C[j,i]            ->  b[i] + sum(j, C[j,i])
    y[i] = A[i,j] * x[j]            ->  sum(j, A[i,j] * x[j])
    a[i] = relu(B[i,k]*c[k]) + d[i] ->  relu(sum(k, B[i,k] * c[k])) + d[i]
    s = a[i]*b[i] + c[j]            ->  sum(i, a[i] * b[i]) + sum(j, c[j])

The tree is binary and left associative, so ``A[i,j]*B[j,k]*c[k]`` is
``(A*B)*c`` and both ``j`` and ``k`` go on the outer product; a product chain
is *not* regrouped to give an index a tighter home (write the parentheses,
``A[i,j]*(B[j,k]*c[k])``, to ask for ``sum(j, A * sum(k, B*c))``). Sums on the
same node nest in order of first appearance in the text, outermost first.
An index used only on the left is a broadcast, not an error; an index repeated
in one access on the right (``A[i,i]``) takes the diagonal.
"""
from __future__ import annotations

import math

import numpy as np

from .. import notation as nt
from ..errors import DTypeError, FormatError, NotationError, UnknownFunctionError
from ..formats import Format
from . import ast, limits

DTYPES = ("float32", "float64", "bfloat16")

_BINOPS = {"+": nt.Add, "-": nt.Sub, "*": nt.Mul, "/": nt.Div}


def check(stmt: ast.Statement, formats: dict | None = None, dtypes: dict | None = None,
          default_dtype="float64") -> nt.Assignment:
    """Check ``stmt`` and build its index notation.

    ``formats`` maps tensor names to a format string or :class:`~spcomp.Format`
    (tensors not named are dense); ``dtypes`` maps tensor names to "float32",
    "float64" or "bfloat16" (or the NumPy / ml_dtypes types); ``default_dtype``
    is the dtype of the tensors not named.
    """
    if not isinstance(stmt, ast.Statement):
        raise TypeError(f"check() takes a parsed Statement, not {type(stmt).__name__}; "
                        "use spcomp.frontend.to_notation for text")
    limits.check_operands(stmt)
    limits.check_indices(stmt)
    _check_output_indices(stmt)
    _check_functions_and_numbers(stmt)
    orders = _tensor_orders(stmt)
    _check_name_spaces(stmt, orders)
    formats = _resolve_formats(formats or {}, orders, stmt.text)
    dtypes = _resolve_dtypes(dtypes or {}, default_dtype, orders, stmt.text)
    tensors = {n: nt.TensorVar(n, orders[n], formats[n], dtypes[n]) for n in orders}
    lhs = nt.Access(tensors[stmt.lhs.name], tuple(nt.IndexVar(i.name) for i in stmt.lhs.indices))
    rhs = limits.balance(_place_sums(stmt, tensors))
    limits.check_depth(rhs)
    return nt.Assignment(lhs, rhs, stmt.accumulate)


# --------------------------------------------------------------- messages

def _located(message: str, node: ast.Node, text: str) -> str:
    """``message`` with the node's position and a caret under it in the source."""
    lines = text.splitlines()
    if not text or not node.line or node.line > len(lines):
        return message
    return f"{message} ({node.where})\n  {lines[node.line - 1]}\n  {' ' * (node.column - 1)}^"


def _indices(n: int) -> str:
    return f"{n} index" if n == 1 else f"{n} indices"


# ------------------------------------------------------------------ checks

def _walk(node, path=()):
    """Every (path, node) of an expression, parents first, left to right.

    Iterative, like :func:`_convert`: a tree as parsed is as deep as its longest
    ``+`` chain (see limits.py)."""
    stack = [(path, node)]
    while stack:
        path, node = stack.pop()
        yield path, node
        kids = ast.children(node)
        stack.extend((path + (k,), kids[k]) for k in reversed(range(len(kids))))


def _check_output_indices(stmt: ast.Statement) -> None:
    seen = set()
    for index in stmt.lhs.indices:
        if index.name in seen:
            raise NotationError(_located(
                f"index '{index.name}' appears twice in the output {stmt.lhs!r}; each output "
                "dimension needs its own index (a diagonal output is not supported)", index, stmt.text))
        seen.add(index.name)


def _check_functions_and_numbers(stmt: ast.Statement) -> None:
    for _, node in _walk(stmt.rhs):
        if isinstance(node, ast.Call):
            if node.func not in nt.FUNCTIONS:
                hint = ("; sums are implicit: an index on the right that is not on the left is summed"
                        if node.func == "sum" else "")
                raise UnknownFunctionError(_located(
                    f"unknown function '{node.func}'; known functions are "
                    f"{', '.join(sorted(nt.FUNCTIONS))}{hint}", node, stmt.text))
            arity = nt.FUNCTIONS[node.func].arity
            if len(node.args) != arity:
                raise NotationError(_located(
                    f"function '{node.func}' takes {arity} argument{'s' if arity != 1 else ''}, "
                    f"got {len(node.args)}", node, stmt.text))
        elif isinstance(node, ast.Number) and not math.isfinite(node.value):
            raise NotationError(_located(f"number '{node.text}' is not a finite float64", node, stmt.text))


def _tensor_orders(stmt: ast.Statement) -> dict:
    """Tensor name -> order, output first, then the right side in order of appearance."""
    out = stmt.lhs.name
    first = {out: stmt.lhs}
    for _, node in _walk(stmt.rhs):
        if not isinstance(node, ast.Access):
            continue
        if node.name == out:
            raise NotationError(_located(
                f"output '{out}' also appears on the right side; a kernel does not read its "
                f"output: write '{stmt.lhs!r} += ...' to accumulate into it, or give the result "
                "another name", node, stmt.text))
        seen = first.setdefault(node.name, node)
        if seen.order != node.order:
            raise NotationError(_located(
                f"tensor '{node.name}' is used with {_indices(seen.order)} ({seen!r}, {seen.where}) "
                f"and with {_indices(node.order)} ({node!r}); a tensor has one order", node, stmt.text))
    return {name: access.order for name, access in first.items()}


def _check_name_spaces(stmt: ast.Statement, orders: dict) -> None:
    accesses = [stmt.lhs] + [n for _, n in _walk(stmt.rhs) if isinstance(n, ast.Access)]
    for access in accesses:
        for index in access.indices:
            if index.name in orders:
                raise NotationError(_located(
                    f"name '{index.name}' is used both as a tensor and as an index; "
                    "rename one of them", index, stmt.text))


def _check_names(what: str, given: dict, orders: dict, text: str) -> None:
    for name in given:
        if name not in orders:
            raise NotationError(f"{what} names {name!r}, which is not a tensor of {text.strip()!r}; "
                                f"its tensors are {', '.join(orders)}")


def _resolve_formats(formats: dict, orders: dict, text: str) -> dict:
    _check_names("formats", formats, orders, text)
    out = {}
    for name, order in orders.items():
        if name not in formats:
            out[name] = Format.dense(order) if order else Format(())
            continue
        try:
            out[name] = Format.parse(formats[name], ndim=order)
        except FormatError as e:
            raise FormatError(f"tensor {name!r}: {e}") from e
    return out


def dtype_name(value) -> str | None:
    """The spcomp name of a dtype ("float32", "float64", "bfloat16"), or None if not one.

    Accepts those names, NumPy dtypes and scalar types (``np.float32``,
    ``np.dtype("f4")``) and ``ml_dtypes.bfloat16``.
    """
    if isinstance(value, str) and value in DTYPES:
        return value
    if value is None or isinstance(value, bool):
        return None
    try:
        name = np.dtype(value).name
    except (TypeError, ValueError):
        return None
    return name if name in DTYPES else None


def _shown(value) -> str:
    return repr(value) if isinstance(value, str) else str(getattr(value, "__name__", value))


def _resolve_dtypes(dtypes: dict, default, orders: dict, text: str) -> dict:
    _check_names("dtypes", dtypes, orders, text)
    allowed = ", ".join(DTYPES)
    fallback = dtype_name(default)
    if fallback is None:
        raise DTypeError(f"default_dtype: dtype {_shown(default)} is not supported; "
                         f"allowed dtypes are {allowed}")
    out = {}
    for name in orders:
        out[name] = dtype_name(dtypes[name]) if name in dtypes else fallback
        if out[name] is None:
            raise DTypeError(f"tensor {name!r}: dtype {_shown(dtypes[name])} is not supported; "
                             f"allowed dtypes are {allowed}")
    return out


# ------------------------------------------------------------ sum placement

def _common_prefix(paths: list) -> tuple:
    """The path of the lowest common ancestor of the nodes at ``paths``."""
    n = 0
    while all(len(p) > n for p in paths) and len({p[n] for p in paths}) == 1:
        n += 1
    return paths[0][:n]


def _place_sums(stmt: ast.Statement, tensors: dict):
    """The right side as index notation, each summed index wrapped on its lowest
    common ancestor (see the module docstring)."""
    kept = {i.name for i in stmt.lhs.indices}
    uses: dict = {}  # summed index -> paths of the accesses that use it; order of first appearance
    for path, node in _walk(stmt.rhs):
        if isinstance(node, ast.Access):
            for index in node.indices:
                if index.name not in kept:
                    uses.setdefault(index.name, []).append(path)
    sums: dict = {}  # path -> indices summed there, outermost first
    for name, paths in uses.items():
        sums.setdefault(_common_prefix(paths), []).append(name)
    return _convert(stmt.rhs, sums, tensors)


def _convert(root, sums: dict, tensors: dict):
    """The syntax tree at ``root`` as index notation, with the sums at their paths."""
    done: dict = {}  # path -> converted node
    for path, node in reversed(list(_walk(root))):  # children before parents
        kids = [done.pop(path + (k,)) for k in range(len(ast.children(node)))]
        if isinstance(node, ast.Access):
            out = nt.Access(tensors[node.name], tuple(nt.IndexVar(i.name) for i in node.indices))
        elif isinstance(node, ast.Number):
            out = nt.Literal(node.value)
        elif isinstance(node, ast.Neg):
            out = nt.Neg(kids[0])
        elif isinstance(node, ast.BinOp):
            out = _BINOPS[node.op](kids[0], kids[1])
        elif isinstance(node, ast.Call):
            out = nt.Call(node.func, tuple(kids))
        else:
            raise TypeError(f"not a spcomp syntax node: {node!r}")
        for name in reversed(sums.get(path, ())):
            out = nt.Sum(nt.IndexVar(name), out)
        done[path] = out
    return done[()]


# ------------------------------------------------------------ notation -> text

def unparse(assignment: nt.Assignment) -> str:
    """``assignment`` as text that :func:`~spcomp.frontend.to_notation` reads back.

    Sums are left implicit, so the text means the same only where every
    :class:`~spcomp.notation.Sum` sits where the TACO rule puts it, which holds
    for every Assignment :func:`check` returns. Formats and dtypes are not text;
    pass them again.
    """
    return ast.to_text(ast.Statement(_to_ast(assignment.lhs), _to_ast(assignment.rhs),
                                     assignment.accumulate))


def _number(value: float):
    if not math.isfinite(value):
        raise NotationError(f"literal {value!r} has no text form")
    value = float(value)
    text = repr(int(value)) if value.is_integer() and abs(value) < 1e16 else repr(value)
    return ast.Neg(ast.Number(text.lstrip("-"))) if text.startswith("-") else ast.Number(text)


def _to_ast(e):
    if isinstance(e, nt.Sum):
        return _to_ast(e.body)
    if isinstance(e, nt.Access):
        return ast.Access(e.tensor.name, tuple(ast.Index(i.name) for i in e.indices))
    if isinstance(e, nt.Literal):
        return _number(e.value)
    if isinstance(e, nt.Neg):
        return ast.Neg(_to_ast(e.operand))
    if isinstance(e, nt.Call):
        return ast.Call(e.func, tuple(_to_ast(a) for a in e.args))
    for op, cls in _BINOPS.items():
        if isinstance(e, cls):
            return ast.BinOp(op, _to_ast(e.lhs), _to_ast(e.rhs))
    raise TypeError(f"not an index-notation expression: {e!r}")
