"""How large an expression spcomp compiles, and how long ones are kept shallow.

Every stage after the frontend (sum placement, normalisation, the lowerer, the
kernel IR, both code generators) walks expression trees recursively, and the
parser reads ``a + b + c + ...`` as a left-deep tree as deep as the sum is long.
So the frontend (1) refuses an expression beyond the limits below with a
:class:`~spcomp.errors.LimitError` that states the limit, before the expensive
stages, and (2) rebuilds every long ``+ -`` or ``*`` chain balanced
(:mod:`spcomp.notation.chains`), so that what passes the limits is at most
:data:`MAX_DEPTH` deep and compiles under Python's default recursion limit (1000
frames), from the main thread or any other. The frontend itself walks
iteratively (Lark's LALR parser, ``Transformer_NonRecursive``, ``check``).

The limits (docs/guide.md, "Limits"):

* :data:`MAX_OPERANDS` operands (tensor accesses, scalars, numbers) on the right
  side. Compile time grows about linearly with them; a sum of 1000 operands
  compiled in ~2 s here (one vector repeated) to ~4 s (1000 distinct vectors).
  A longer sum can be split over several kernels with ``+=``.
* :data:`MAX_DEPTH` levels of nesting, counted on the checked expression:
  each function call, unary minus, implicit sum and operator is a level, and a
  chain of n operands joined by ``+ -`` (or by ``*``) counts about log2(n) once
  it is at least ``chains.BALANCE_FROM`` long. Chains of ``/`` are not balanced.
* :data:`MAX_INDICES` index variables: each is a loop of the kernel's nest.
"""
from __future__ import annotations

from .. import notation as nt
from ..errors import LimitError
from ..notation import chains
from . import ast

MAX_OPERANDS = 1000
MAX_DEPTH = 64
MAX_INDICES = 32


def check_operands(stmt: ast.Statement) -> None:
    """Refuse a right side with more than :data:`MAX_OPERANDS` operands."""
    count, stack = 0, [stmt.rhs]
    while stack:
        node = stack.pop()
        kids = ast.children(node)
        if kids:
            stack.extend(kids)
        elif not isinstance(node, ast.Call):
            count += 1
    if count > MAX_OPERANDS:
        raise LimitError(f"the expression has {count} operands (tensor accesses, scalars and numbers); "
                         f"spcomp compiles at most {MAX_OPERANDS} in one expression: split a longer "
                         f"sum over several kernels that accumulate into the output with '+='")


def check_indices(stmt: ast.Statement) -> None:
    """Refuse more than :data:`MAX_INDICES` distinct index variables."""
    names = {i.name for i in stmt.lhs.indices}
    stack = [stmt.rhs]
    while stack:
        node = stack.pop()
        if isinstance(node, ast.Access):
            names.update(i.name for i in node.indices)
        stack.extend(ast.children(node))
    if len(names) > MAX_INDICES:
        raise LimitError(f"the expression uses {len(names)} index variables; spcomp compiles at most "
                         f"{MAX_INDICES} (each index is a loop of the kernel)")


def check_depth(e) -> None:
    """Refuse a checked (and balanced) expression deeper than :data:`MAX_DEPTH`."""
    deepest, stack = 0, [(e, 1)]
    while stack:
        node, d = stack.pop()
        deepest = max(deepest, d)
        stack.extend((c, d + 1) for c in nt.children(node))
    if deepest > MAX_DEPTH:
        raise LimitError(f"the expression nests {deepest} levels deep; spcomp compiles at most "
                         f"{MAX_DEPTH} (each function call, unary minus, implicit sum and operator is a "
                         f"level; a long chain of + - or * counts about log2 of its length, a chain of / "
                         f"its length)")


# ------------------------------------------------------------------ balance

def balance(e):
    """``e`` with every ``+ -`` and ``*`` chain of at least ``chains.BALANCE_FROM``
    operands rebuilt balanced, sums kept where they are.

    Sums are placed before this (the TACO rule works on the tree as parsed) and a
    chain never reaches through a :class:`~spcomp.notation.Sum`, so each sum keeps
    its meaning. A chain that is the body of ``sum(j, ...)`` divides at its top so
    that ``j`` is used on both sides: the sum then still sits on the lowest common
    ancestor of its uses, and printing the result and reading it back gives the
    same notation. Iterative: ``e`` may be as deep as the expression is long."""
    order = []  # pre-order: (node, indices of the sums right above it, parts)
    stack = [(e, ())]
    while stack:
        node, wrapped = stack.pop()
        parts = _parts(node)
        order.append((node, wrapped, parts))
        inner = wrapped + (node.index,) if isinstance(node, nt.Sum) else ()
        stack.extend((x, inner) for _, x in parts[1])
    done: dict = {}
    for node, wrapped, (kind, operands) in reversed(order):  # children before parents
        new = [(sign, done[id(x)]) for sign, x in operands]
        if kind == "node":
            done[id(node)] = nt.with_children(node, [x for _, x in new])
        else:
            split = _split([x for _, x in operands], wrapped)
            done[id(node)] = (chains.balanced_sum(new, split) if kind == "sum"
                              else chains.balanced_product([x for _, x in new], split))
    return done[id(e)]


def _parts(node) -> tuple:
    """("sum" | "product", its chain's operands) for the head of a long chain, else
    ("node", its children); operands as ``(sign, node)``."""
    if isinstance(node, (nt.Add, nt.Sub, nt.Mul)):
        if chains.chain_length(node, chains.BALANCE_FROM) >= chains.BALANCE_FROM:
            if isinstance(node, nt.Mul):
                return "product", [(1, f) for f in chains.factors(node)]
            return "sum", chains.signed_terms(node)
    return "node", [(1, c) for c in nt.children(node)]


def _split(operands: list, wrapped: tuple) -> int | None:
    """Where a chain under ``sum(j, ...)`` for each ``j`` in ``wrapped`` divides: the
    nearest to the middle that has a use of every ``j`` on each side (None: the
    middle). Such a place exists: the tree as parsed had one at its top."""
    if not wrapped:
        return None
    used = [{i for a in nt.accesses(x) for i in a.indices} for x in operands]
    lo, hi = 1, len(operands) - 1
    for j in wrapped:
        at = [k for k, u in enumerate(used) if j in u]
        if not at:
            continue
        lo, hi = max(lo, at[0] + 1), min(hi, at[-1])
    if lo > hi:
        return None
    return min(max(len(operands) // 2, lo), hi)
