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

from ..errors import LimitError
from ..notation import (Access, Add, Call, Div, Literal, Mul, Neg, Sub, Sum, children, free_indices)
from .normalize import zero_preserving

# A loop tests its lattice's points as one if/else chain, each case with its own copy
# of the loop body, so n sparse operands in a union cost 2**n - 1 cases: nested that
# deep the kernel IR outgrows Python's recursion limit at 8 (255 cases), and O3 on
# the code took 2.6 s at 6 operands (63), 9.8 s at 7 (127); nested unions (dcsr
# operands) multiply: 4.1 s at 190 cases in all.
MAX_CASES_PER_LOOP = 64
MAX_CASES = 256


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


class _TooManyCases(Exception):
    """A lattice grew past MAX_CASES_PER_LOOP points while being built."""


def _bounded(points: set) -> set:
    if len(points) >= MAX_CASES_PER_LOOP:  # with the full point, one more case
        raise _TooManyCases(len(points))
    return points


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
    return Lattice(frozenset(_bounded(pts)), a.full and b.full)


def union(a: Lattice, b: Lattice) -> Lattice:
    pts = set(a.points) | set(b.points)
    for p in a.points:
        for q in b.points:
            pts.add(_meet(p, q))
            _bounded(pts)  # n operands make 2**n points: stop before they exhaust memory
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
    A lattice of more than :data:`MAX_CASES_PER_LOOP` points is refused.
    """
    try:
        return _build(e, index, sparse_key)
    except _TooManyCases:
        raise LimitError(f"the loop over {getattr(index, 'name', index)} co-iterates so many sparse "
                         f"operands in a union that it would test more than {MAX_CASES_PER_LOOP} cases "
                         f"(n operands make 2**n - 1); spcomp compiles at most {MAX_CASES_PER_LOOP} cases "
                         f"in one loop: {_HINT}") from None


def _build(e, index, sparse_key) -> Lattice:
    if isinstance(e, Access):
        if index not in e.indices:
            return FULL
        key = sparse_key(e)
        return Lattice(frozenset({frozenset({key})}), False) if key is not None else FULL
    if isinstance(e, Literal):
        return EMPTY if e.value == 0 else FULL
    if isinstance(e, Neg):
        return _build(e.operand, index, sparse_key)
    if isinstance(e, Mul):
        return intersect(_build(e.lhs, index, sparse_key), _build(e.rhs, index, sparse_key))
    if isinstance(e, Div):
        den = _build(e.rhs, index, sparse_key)
        if _reduces_over_other_index(e.rhs, index):
            # a sum is a computed value stored at every coordinate (0 on an empty
            # segment): dividing by it where it is empty gives inf, so it is never absent
            den = union(den, FULL)
        return intersect(_build(e.lhs, index, sparse_key), den)
    if isinstance(e, (Add, Sub)):
        return union(_build(e.lhs, index, sparse_key), _build(e.rhs, index, sparse_key))
    if isinstance(e, Sum):
        return _build(e.body, index, sparse_key)
    if isinstance(e, Call):
        keeps_zero = zero_preserving(e)
        out = EMPTY
        for a in e.args:
            if keeps_zero and isinstance(a, Literal):
                continue  # pow(x, 2): the 2 is not a coordinate where a value is stored
            out = union(out, _build(a, index, sparse_key))
        # f(0) != 0: every coordinate has a value, but the operands still
        # have to be walked to know where they are nonzero
        return out if keeps_zero else union(out, FULL)
    raise TypeError(e)


def count_cases(L: Lattice, so_far: int) -> int:
    """``so_far`` plus the cases a loop with lattice ``L`` emits;
    refuses more than :data:`MAX_CASES` in all (a :class:`~spcomp.errors.LimitError`
    that says what to change)."""
    cases = len(L.points) + L.full  # at most MAX_CASES_PER_LOOP: build() saw to it
    if so_far + cases > MAX_CASES:
        raise LimitError(f"the loop nest tests more than {MAX_CASES} cases of which sparse operands "
                         f"are present (unions of sparse operands nested in unions); spcomp compiles "
                         f"at most {MAX_CASES}: {_HINT}")
    return so_far + cases


_HINT = ("store some of the sparse operands dense, or add them up in separate kernels that "
         "accumulate into the output with '+='")
