"""Reverse-mode derivatives of one index-notation statement, as statements.

For ``Y[o] = rhs`` and an operand ``A``, the vector–Jacobian product with a
cotangent ``dY`` is ``dA[a] = Σ_{o ∪ s \\ a} dY[o] * ∂rhs/∂A[a]``. Every
occurrence of ``A`` in ``rhs`` contributes one *term*; the term is the product of
what the walk from the root to that occurrence meets (DESIGN §4 semantics, so a
product of factors and nothing else, which the lowerer's sum lifting and pushing
handles as it handles any product):

* ``a + b``, ``a - b``, ``-a``: a sign;
* ``a * b``: the other factor;
* ``a / b``: ``1 / b`` towards ``a``, ``-a / (b * b)`` towards ``b``;
* ``f(x, ...)``: the function's derivative in its ``k``-th argument, an
  expression from the function registry (:mod:`spcomp.notation.functions`);
* ``Σ_j body``: ``j`` is no longer summed (it names the occurrence's coordinate).

Occurrences add (``A[i,j]*A[j,k]`` has two terms). The summed indices of every
sub-expression copied into a term are renamed fresh, so the term's own free
indices (the output's and the stripped sums') are never captured, and the result
is an ordinary :class:`~spcomp.notation.Assignment`: it prints, compiles, and can
itself be differentiated.

A diagonal occurrence (``A[i,i]``) contributes to ``dA`` on the diagonal only; an
output cannot repeat an index, so such terms form a separate statement over the
distinct indices (``dA⁽ⁱⁱ⁾[i]``) that the caller embeds (see :class:`Gradient`).
"""
from __future__ import annotations

import itertools
from dataclasses import dataclass

from ..errors import NotationError, UnsupportedError
from ..formats import Format
from ..notation.functions import FUNCTIONS as REGISTRY, maps_zero_to_zero
from ..notation import (Access, Add, Assignment, Call, Div, IndexVar, Literal, Mul, Neg, Sub, Sum,
                        TensorVar, accesses, children, free_indices)


@dataclass(frozen=True)
class Gradient:
    """The derived statements of one operand's gradient.

    ``parts`` maps a *diagonal pattern* to a statement: the pattern says, for each
    dimension of the operand, which output index of the statement holds its
    coordinate (``(0, 1)`` for ``dA[i,j]``; ``(0, 0)`` for a diagonal ``A[i,i]``,
    whose statement is ``dA[i] = ...``). The gradient is the sum of the parts, each
    embedded at its pattern (the plain ``(0, 1, ...)`` part needs no embedding).
    ``pattern`` names the operand that restricts the gradient to the stored
    positions of ``operand`` (None for a dense gradient)."""
    operand: str
    parts: dict
    pattern: str | None = None
    sizes: dict | None = None  # scalar operand name -> the index of the statement whose size it holds


def names_in(assignment: Assignment) -> set:
    """Every tensor and index name the statement uses (to pick fresh ones)."""
    out = set(assignment.tensors)
    for acc in [assignment.lhs] + accesses(assignment.rhs):
        out.update(i.name for i in acc.indices)
    stack = [assignment.rhs]
    while stack:
        e = stack.pop()
        if isinstance(e, Sum):
            out.add(e.index.name)
        stack.extend(children(e))
    return out


class Names:
    """Hands out names not used in a statement: ``base``, ``base1``, ``base2``..."""

    def __init__(self, used):
        self.used = set(used)

    def fresh(self, base: str) -> str:
        base = base.rstrip("0123456789") or "t"
        for n in itertools.chain([base], (f"{base}{k}" for k in itertools.count(1))):
            if n not in self.used:
                self.used.add(n)
                return n


def rename_bound(e, names: Names, env: dict | None = None):
    """``e`` with each Sum's index renamed fresh (and its uses inside it), so copies
    of ``e`` never capture or collide with the indices around them."""
    env = env or {}
    if isinstance(e, Access):
        return Access(e.tensor, tuple(IndexVar(env.get(i.name, i.name)) for i in e.indices))
    if isinstance(e, Literal):
        return e
    if isinstance(e, Sum):
        new = names.fresh(e.index.name)
        return Sum(IndexVar(new), rename_bound(e.body, names, {**env, e.index.name: new}))
    kids = [rename_bound(c, names, env) for c in children(e)]
    if isinstance(e, Neg):
        return Neg(kids[0])
    if isinstance(e, Call):
        return Call(e.func, tuple(kids))
    return type(e)(kids[0], kids[1])


def substitute(e, mapping: dict):
    """``e`` with free index names renamed by ``mapping`` (bound ones untouched)."""
    if isinstance(e, Access):
        return Access(e.tensor, tuple(IndexVar(mapping.get(i.name, i.name)) for i in e.indices))
    if isinstance(e, Literal):
        return e
    if isinstance(e, Sum):
        inner = {k: v for k, v in mapping.items() if k != e.index.name}
        return Sum(e.index, substitute(e.body, inner))
    kids = [substitute(c, mapping) for c in children(e)]
    if isinstance(e, Neg):
        return Neg(kids[0])
    if isinstance(e, Call):
        return Call(e.func, tuple(kids))
    return type(e)(kids[0], kids[1])


def function_derivative(call: Call, k: int):
    """``∂ f(args) / ∂ args[k]`` as an expression, from the function registry."""
    entry = REGISTRY.get(call.func)
    if entry is None:
        raise UnsupportedError(f"cannot differentiate {call!r}: the function registry has no derivative "
                               f"of {call.func!r}")
    return entry.derivative(call.args, k)


def _occurrences(e, name: str, path=()):
    """Paths (tuples of child positions) of every access of tensor ``name`` in ``e``."""
    if isinstance(e, Access):
        return [path] if e.tensor.name == name else []
    out = []
    for k, c in enumerate(children(e)):
        out += _occurrences(c, name, path + (k,))
    return out


def _stored_slope_is_one(call: Call, derivative) -> bool:
    """Whether ``call`` at the root of a zero-dropping output has slope 1 wherever the
    output stores a value: a function with ``f(0) = 0`` whose derivative is
    ``heaviside(x, h)`` is ``max(x, 0)``, so a stored (nonzero) value means ``x > 0``.
    That is how the ReLU mask becomes the output's stored pattern (no mask tensor)."""
    return (len(call.args) == 1 and isinstance(derivative, Call) and derivative.func == "heaviside"
            and derivative.args[:1] == call.args and maps_zero_to_zero(call))


def _walk(rhs, path, names: Names, zero_dropping: bool = False):
    """The factors, sign and stripped sums on the way from ``rhs`` to the access at
    ``path``: -> (sign, factors, stripped index names, the access). With
    ``zero_dropping`` the gradient is read only where the output stores a nonzero
    (see :func:`_stored_slope_is_one`)."""
    sign, factors, stripped = 1.0, [], []
    node = rhs
    for depth, k in enumerate(path):
        if isinstance(node, Sum):
            stripped.append(node.index.name)
        elif isinstance(node, Neg):
            sign = -sign
        elif isinstance(node, Sub) and k == 1:
            sign = -sign
        elif isinstance(node, Mul):
            factors.append(rename_bound(node.rhs if k == 0 else node.lhs, names))
        elif isinstance(node, Div):
            if k == 0:
                factors.append(Div(Literal(1.0), rename_bound(node.rhs, names)))
            else:
                den = rename_bound(node.rhs, names)
                factors.append(Div(rename_bound(node.lhs, names), Mul(den, rename_bound(node.rhs, names))))
                sign = -sign
        elif isinstance(node, Call):
            args = tuple(rename_bound(a, names) for a in node.args)
            d = function_derivative(Call(node.func, args), k)
            if not (depth == 0 and zero_dropping and _stored_slope_is_one(Call(node.func, args), d)):
                factors.append(rename_bound(d, names))
        node = children(node)[k]
    return sign, factors, stripped, node


def _diagonal_pattern(access: Access) -> tuple:
    """For each dimension, the position of its index's first appearance among the distinct ones."""
    first: dict = {}
    return tuple(first.setdefault(i.name, len(first)) for i in access.indices)


def _product(factors: list):
    out = None
    for f in factors:
        out = f if out is None else Mul(out, f)
    return Literal(1.0) if out is None else out


def _free_names(e) -> set:
    return {i.name for i in free_indices(e)}


def place_sums(e, summed: list):
    """``e`` (a product of factors) with a Sum for each name in ``summed``, placed as
    the frontend places them (on the lowest node holding every use, DESIGN §4)
    where that is a product node or a factor, and never inside a factor (``Σ_k (C[k]
    + D[i])`` is not ``Σ_k C[k] + D[i]``). Names on one node nest in ``summed`` order."""
    if not summed:
        return e
    if isinstance(e, (Mul, Neg)):
        kids = children(e)
        frees = [_free_names(c) for c in kids]
        here, inner = [], [[] for _ in kids]
        for s in summed:
            users = [k for k, f in enumerate(frees) if s in f]
            (inner[users[0]] if len(users) == 1 else here).append(s)
        e = Neg(place_sums(kids[0], inner[0])) if isinstance(e, Neg) else Mul(
            place_sums(kids[0], inner[0]), place_sums(kids[1], inner[1]))
        summed = here
    for s in reversed(summed):
        e = Sum(IndexVar(s), e)
    return e


def _first_appearance(e) -> list:
    return list(dict.fromkeys(i.name for a in accesses(e) for i in a.indices))


def derive(assignment: Assignment, operand: str, cotangent: TensorVar, gradient_name: str,
           pattern: TensorVar | None = None, zero_dropping: bool = False) -> Gradient:
    """The gradient statements of ``operand`` for the statement ``assignment``.

    ``cotangent`` is the tensor holding ``∂L/∂Y`` (read at the output's indices);
    ``gradient_name`` names the gradient's output; ``pattern``, when given, is a
    tensor of the operand's order and format whose stored entries the gradient is
    taken at (the statements read it as a factor: an SDDMM-shaped sampled product).
    ``zero_dropping`` says the output is sparse and stores only nonzeros, and the
    cotangent has its pattern (a ReLU at the root then needs no mask factor).
    """
    paths = _occurrences(assignment.rhs, operand)
    if not paths:
        raise NotationError(f"cannot differentiate with respect to {operand!r}: "
                            f"{assignment!r} does not read it")
    tensor = assignment.tensors[operand]
    names = Names(names_in(assignment) | {cotangent.name, gradient_name}
                  | ({pattern.name} if pattern is not None else set()))
    terms: dict = {}      # diagonal pattern -> [(sign, term)]
    lhs_names: dict = {}  # diagonal pattern -> the gradient's index names: its first occurrence's
    sizes: dict = {}
    out_access = Access(cotangent, assignment.lhs.indices)
    for path in paths:
        sign, factors, stripped, access = _walk(assignment.rhs, path, names, zero_dropping)
        if any(isinstance(f, Literal) and f.value == 0 for f in factors):
            continue  # through sign, floor, heaviside ...: this occurrence passes no gradient
        diag = _diagonal_pattern(access)
        distinct = list(dict.fromkeys(i.name for i in access.indices))
        target = lhs_names.setdefault(diag, distinct)
        body = _product([out_access] + factors)
        free = {i.name for i in assignment.lhs.indices} | set(stripped)
        # rename this term's indices so the operand's coordinates are the target names
        mapping = dict(zip(distinct, target))
        clashes = {n for n in free if n not in mapping and n in target}
        for n in clashes:
            mapping[n] = names.fresh(n)
        body = substitute(body, mapping)
        # a sum this occurrence sits under whose index the term no longer uses: the
        # term counts it (Σ_k of something without k is size(k) times it); the size
        # is a scalar operand the caller binds from the forward operands' shapes
        used = _free_names(body)
        for n in stripped:
            if n not in distinct and mapping.get(n, n) not in used:
                scalar = TensorVar(names.fresh("n" + n), 0, Format(()), tensor.dtype)
                sizes[scalar.name] = n
                body = Mul(body, Access(scalar, ()))
        kept = set(target)
        if pattern is not None and diag == tuple(range(len(diag))):
            body = Mul(Access(pattern, tuple(IndexVar(n) for n in target)), body)
        free = _free_names(body) - kept
        body = place_sums(body, [n for n in _first_appearance(body) if n in free])
        terms.setdefault(diag, []).append((sign, body))
    parts = {}
    for diag, bodies in terms.items():
        sign, rhs = bodies[0]
        rhs = Neg(rhs) if sign < 0 else rhs
        for sign, b in bodies[1:]:
            rhs = Add(rhs, b) if sign > 0 else Sub(rhs, b)
        order = len(lhs_names[diag])
        fmt = tensor.format if (pattern is not None and order == tensor.order) else (
            Format.dense(order) if order else Format(()))
        out = TensorVar(gradient_name, order, fmt, tensor.dtype)
        parts[diag] = Assignment(Access(out, tuple(IndexVar(n) for n in lhs_names[diag])), rhs)
    return Gradient(operand, parts, pattern.name if pattern is not None else None, sizes)
