"""Schedules as data (DESIGN §5): what to change about the default loop nest.

A :class:`Schedule` is an immutable list of directives; each method returns a
new schedule, so they chain::

    Schedule().reorder("i", "k", "j").parallelize("i").precompute("k")

The lowerer checks every directive and refuses an illegal one with a
:class:`~spcomp.errors.ScheduleError` that says why.
"""
from __future__ import annotations

from dataclasses import dataclass

from .errors import ScheduleError

PARALLEL_KINDS = ("threads", "gpu-block", "gpu-thread", "gpu-warp")


@dataclass(frozen=True)
class Schedule:
    directives: tuple = ()

    def _with(self, *d) -> "Schedule":
        return Schedule(self.directives + (tuple(d),))

    def reorder(self, *indices: str) -> "Schedule":
        """Run the loops in this order (indices not named follow in default order)."""
        if not indices or not all(isinstance(i, str) for i in indices):
            raise ScheduleError("reorder takes index names, e.g. reorder('i', 'k', 'j')")
        return self._with("reorder", tuple(indices))

    def parallelize(self, index: str, how: str = "threads") -> "Schedule":
        """Run the loop over ``index`` in parallel: on CPU threads or mapped to the GPU."""
        if how not in PARALLEL_KINDS:
            raise ScheduleError(f"parallelize({index!r}, {how!r}): unknown kind; use one of "
                                f"{', '.join(PARALLEL_KINDS)}")
        return self._with("parallelize", index, how)

    def sequential(self) -> "Schedule":
        """Run every loop on one thread (no default parallelisation)."""
        return self._with("sequential")

    def precompute(self, index: str) -> "Schedule":
        """Compute the reduction over ``index`` into a temporary, hoisted out of the
        loops it does not depend on (the default does this where it saves work)."""
        return self._with("precompute", index)

    def no_precompute(self) -> "Schedule":
        """Keep reductions where the expression puts them (no automatic hoisting)."""
        return self._with("no_precompute")

    def no_blas(self) -> "Schedule":
        """Run matrix products of dense operands in the loop nest, not by a BLAS
        ``gemm`` call (spcomp offloads them on the CPU by default; see docs/guide.md)."""
        return self._with("no_blas")

    def keep_layout(self) -> "Schedule":
        """Read every dense operand in the layout it comes in: no per-call row-major
        copy of one that the innermost loop would walk across rows (the default makes
        that copy, one pass over the operand, where it saves a strided read per
        nonzero). For operands too large to copy, or loops that are fast strided."""
        return self._with("keep_layout")

    def split(self, index: str, outer: str, inner: str, factor: int) -> "Schedule":
        """Run the loop over ``index`` as two loops, ``outer`` over blocks of ``factor``
        coordinates and ``inner`` within a block (``index = outer*factor + inner``;
        the last block is cut at the dimension's end). The pieces can be reordered,
        parallelised, vectorised and unrolled like any loop. Dense loops only."""
        if not all(isinstance(x, str) for x in (index, outer, inner)) or len({index, outer, inner}) != 3:
            raise ScheduleError(f"split({index!r}, {outer!r}, {inner!r}, ...): three distinct index names, "
                                "e.g. split('i', 'i0', 'i1', 8)")
        if isinstance(factor, bool) or not isinstance(factor, int) or factor < 1:
            raise ScheduleError(f"split({index!r}, {outer!r}, {inner!r}, {factor!r}): the factor must be "
                                "an integer >= 1")
        return self._with("split", index, outer, inner, int(factor))

    def vectorize(self, index: str, width: int = 0) -> "Schedule":
        return self._with("vectorize", index, int(width))

    def unroll(self, index: str, factor: int) -> "Schedule":
        if factor < 1:
            raise ScheduleError(f"unroll({index!r}, {factor}): the factor must be >= 1")
        return self._with("unroll", index, int(factor))

    # ------------------------------------------------------------- queries
    def get(self, name):
        return [d[1:] for d in self.directives if d[0] == name]

    @property
    def order(self):
        r = self.get("reorder")
        return list(r[-1][0]) if r else None

    @property
    def parallel(self):
        p = self.get("parallelize")
        return p[-1] if p else None

    def key(self) -> str:
        return repr(self.directives)

    def __str__(self) -> str:
        parts = [f"{d[0]}({', '.join(repr(x) for x in d[1:])})" for d in self.directives]
        return "Schedule()" + "".join("." + p for p in parts)
