"""Merge lattices (DESIGN §5): which sparse iterators a loop co-iterates.

For one loop index, an expression's lattice is a set of *points*; a point is
the set of sparse level iterators that must all hold a coordinate for that
sub-expression to be nonzero. ``full`` marks the point with no iterators that
covers every coordinate (a dense operand in a union, ``exp`` of a sparse
operand, a nonzero constant): then the loop runs over the whole dimension.
Products intersect, sums and subtractions unite, zero-preserving functions
keep their argument's lattice, others make the loop full.
"""
from __future__ import annotations

from dataclasses import dataclass

from ..notation import (Access, Add, Call, Div, Literal, Mul, Neg, Sub, Sum, children, free_indices)
from .normalize import zero_preserving


@dataclass(frozen=True)
class Lattice:
    points: frozenset      # of frozensets of iterator keys (no empty set)
    full: bool             # the all-coordinates point is present

    @property
    def empty(self) -> bool:
        return not self.points and not self.full

    def iterators(self) -> set:
        out = set()
        for p in self.points:
            out |= p
        return out

    def ordered_points(self) -> list:
        """Points largest first (the order cases are tested in)."""
        return sorted(self.points, key=lambda p: (-len(p), sorted(map(str, p))))


EMPTY = Lattice(frozenset(), False)
FULL = Lattice(frozenset(), True)


def _meet(p, q):
    return p | q


def intersect(a: Lattice, b: Lattice) -> Lattice:
    if a.empty or b.empty:
        return EMPTY
    pts = set()
    for p in a.points:
        for q in b.points:
            pts.add(_meet(p, q))
        if b.full:
            pts.add(p)
    if a.full:
        pts |= set(b.points)
    return Lattice(frozenset(pts), a.full and b.full)


def union(a: Lattice, b: Lattice) -> Lattice:
    pts = set(a.points) | set(b.points)
    for p in a.points:
        for q in b.points:
            pts.add(_meet(p, q))
    return Lattice(frozenset(pts), a.full or b.full)


def _reduces_over_other_index(e, index) -> bool:
    """Whether ``e`` holds a sum that ``index`` is free in (computed for each ``index``)."""
    if isinstance(e, Sum):
        return index != e.index and index in free_indices(e)
    if isinstance(e, (Access, Literal)):
        return False
    return any(_reduces_over_other_index(c, index) for c in children(e))


def build(e, index, sparse_key) -> Lattice:
    """The lattice of ``e`` for loop ``index``.

    ``sparse_key(access)`` returns the iterator key of the access's level that
    stores ``index`` when that level must be iterated (not located), else None.
    """
    if isinstance(e, Access):
        if index not in e.indices:
            return FULL
        key = sparse_key(e)
        return Lattice(frozenset({frozenset({key})}), False) if key is not None else FULL
    if isinstance(e, Literal):
        return EMPTY if e.value == 0 else FULL
    if isinstance(e, Neg):
        return build(e.operand, index, sparse_key)
    if isinstance(e, Mul):
        return intersect(build(e.lhs, index, sparse_key), build(e.rhs, index, sparse_key))
    if isinstance(e, Div):
        den = build(e.rhs, index, sparse_key)
        if _reduces_over_other_index(e.rhs, index):
            # a sum is a computed value stored at every coordinate (0 on an empty
            # segment): dividing by it where it is empty gives inf, so it is never absent
            den = union(den, FULL)
        return intersect(build(e.lhs, index, sparse_key), den)
    if isinstance(e, (Add, Sub)):
        return union(build(e.lhs, index, sparse_key), build(e.rhs, index, sparse_key))
    if isinstance(e, Sum):
        return build(e.body, index, sparse_key)
    if isinstance(e, Call):
        out = EMPTY
        for a in e.args:
            out = union(out, build(a, index, sparse_key))
        # f(0) != 0: every coordinate has a value, but the operands still
        # have to be walked to know where they are nonzero
        return out if zero_preserving(e.func) else union(out, FULL)
    raise TypeError(e)
