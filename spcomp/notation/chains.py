"""Long chains of ``+ -`` and of ``*`` as balanced trees.

The parser reads ``a + b + c + d`` left associative, ``((a + b) + c) + d``: a chain of
n terms is a tree n deep, and every stage after the frontend walks trees
recursively. Rebuilt balanced, ``(a + b) + (c + d)``, the same chain is about
log2(n) deep, so a 1000-term sum is 10 levels instead of 1000 and no walker comes
near Python's recursion limit. Only chains of at least :data:`BALANCE_FROM`
operands are rebuilt: shorter ones keep the shape they were written in (and
print as before).

The operands keep their left-to-right order; a ``-`` is carried into the half it
heads (``a - b - c - d`` -> ``(a - b) - (c + d)``). The value is the same up to
floating-point rounding, which now adds pairwise instead of left to right.
"""
from __future__ import annotations

from .nodes import Add, Mul, Sub

BALANCE_FROM = 16


def signed_terms(e) -> list:
    """The operands of the ``+ -`` tree at ``e``, left to right, as ``(sign, operand)``
    with sign +1 or -1 (the tree's value is the signed sum). Iterative: ``e`` may be a
    chain thousands deep."""
    out = []
    stack = [(e, 1)]
    while stack:
        node, sign = stack.pop()
        if isinstance(node, Add):
            stack += [(node.rhs, sign), (node.lhs, sign)]
        elif isinstance(node, Sub):
            stack += [(node.rhs, -sign), (node.lhs, sign)]
        else:
            out.append((sign, node))
    return out


def factors(e) -> list:
    """The operands of the ``*`` tree at ``e``, left to right (iterative)."""
    out = []
    stack = [e]
    while stack:
        node = stack.pop()
        if isinstance(node, Mul):
            stack += [node.rhs, node.lhs]
        else:
            out.append(node)
    return out


def chain_length(e, limit: int) -> int:
    """How many operands the ``+ -`` (or ``*``) tree at ``e`` has, counting no further
    than ``limit``."""
    kinds = (Add, Sub) if isinstance(e, (Add, Sub)) else (Mul,)
    count, stack = 0, [e]
    while stack and count < limit:
        node = stack.pop()
        if isinstance(node, kinds):
            stack += [node.rhs, node.lhs]
        else:
            count += 1
    return count


def balanced_sum(terms: list, split: int | None = None):
    """The signed sum of ``terms`` (``(sign, operand)``, the first sign +1) as a
    balanced tree. ``split`` is where the top node divides the terms (default: the
    middle); the halves below divide in the middle."""
    if terms[0][0] != 1:
        raise ValueError("the first term of a chain has sign +1")
    if len(terms) == 1:
        return terms[0][1]
    s = len(terms) // 2 if split is None else split
    left = balanced_sum(terms[:s])
    sign = terms[s][0]
    right = balanced_sum([(t * sign, x) for t, x in terms[s:]])
    return Add(left, right) if sign == 1 else Sub(left, right)


def balanced_product(items: list, split: int | None = None):
    """The product of ``items`` as a balanced tree (``split`` as in :func:`balanced_sum`)."""
    if len(items) == 1:
        return items[0]
    s = len(items) // 2 if split is None else split
    return Mul(balanced_product(items[:s]), balanced_product(items[s:]))


def product(items: list):
    """``items[0] * items[1] * ...``: left associative when short, balanced from
    :data:`BALANCE_FROM` factors."""
    if len(items) >= BALANCE_FROM:
        return balanced_product(items)
    out = items[0]
    for f in items[1:]:
        out = Mul(out, f)
    return out
