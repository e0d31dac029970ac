"""Schedules as data (DESIGN §5): what to change about the default loop nest.

A :class:`Schedule` is an immutable list of directives; each method returns a
new schedule, so they chain::

    Schedule().reorder("i", "k", "j").parallelize("i").precompute("k")

The lowerer checks every directive and refuses an illegal one with a
:class:`~spcomp.errors.ScheduleError` that says why. The numbers a directive takes
are checked here, when the schedule is built: integers (Python or NumPy, not bools)
within the bounds below, so that none reaches LLVM as a count it cannot honour.
"""
from __future__ import annotations

import numbers
from dataclasses import dataclass

from .errors import ScheduleError

PARALLEL_KINDS = ("threads", "gpu-block", "gpu-thread", "gpu-warp")
#: TACO's ``OutputRaceStrategy`` names, for ``parallelize(..., race=...)``
RACE_STRATEGIES = ("IgnoreRaces", "NoRaces", "Atomics", "Temporary", "ParallelReduction")
#: ``bound`` limits: 1 .. 2**31 - 1 iterations
BOUND_MAX = 2 ** 31 - 1
#: ``split`` factors: 1 ..  2**31 - 1. A factor at least the dimension's size is one
#: block (the right answer, nothing gained); larger ones are refused as mistakes.
SPLIT_FACTOR_MAX = 2 ** 31 - 1
#: ``unroll`` factors: 1 .. 64. LLVM copies the loop body that many times: beyond 64
#: the code only grows (2**31 compiles for minutes, 2**32 aborts LLVM).
UNROLL_MAX = 64
#: ``vectorize`` widths: 0 (the backend decides), or a power of two up to 64 lanes.
VECTOR_WIDTH_MAX = 64
#: ``gpu(block=)``: threads per CUDA block, 1 .. 1024 (a multiple of 32 where warps are mapped)
GPU_BLOCK_MAX = 1024


def _count(call: str, value, lo: int, hi: int, what: str) -> int:
    """``value`` as an int in ``lo..hi``, or a ScheduleError naming the directive."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise ScheduleError(f"{call}: the {what} must be an integer, not {type(value).__name__} "
                            f"{value!r}")
    if not lo <= value <= hi:
        raise ScheduleError(f"{call}: the {what} must be in {lo}..{hi}, got {int(value)}")
    return int(value)


def _index_name(call: str, index) -> None:
    if not isinstance(index, str):
        raise ScheduleError(f"{call}: the index must be a name (a str), not {type(index).__name__}")


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

    def parallelize(self, index: str, how: str = "threads", race: str | None = None,
                    insist: bool = False) -> "Schedule":
        """Run the loop over ``index`` in parallel: on CPU threads or mapped to the GPU.

        ``race`` names how iterations that update the same output element are kept
        apart (TACO's ``OutputRaceStrategy``): ``"NoRaces"`` (none can: refused where
        the compiler sees that some can), ``"Atomics"`` (atomic adds), ``"Temporary"``
        and ``"ParallelReduction"`` (each CPU thread adds into its own zeroed copy of
        the output, the copies are added at the end), ``"IgnoreRaces"`` (plain stores;
        refused where iterations race unless ``insist=True``: then the result may be
        wrong). None: the compiler chooses (docs/guide.md, "Scheduling")."""
        if how not in PARALLEL_KINDS:
            raise ScheduleError(f"parallelize({index!r}, {how!r}): unknown kind; use one of "
                                f"{', '.join(PARALLEL_KINDS)}")
        if race is None and not insist:
            return self._with("parallelize", index, how)  # the key of schedules without a strategy
        if race not in RACE_STRATEGIES:
            raise ScheduleError(f"parallelize({index!r}, {how!r}, race={race!r}): unknown race strategy; "
                                f"use one of {', '.join(RACE_STRATEGIES)}")
        return self._with("parallelize", index, how, race, bool(insist))

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

    def factorize(self, *groups) -> "Schedule":
        """Fix the contraction order of a product of three or more tensors.

        ``factorize(False)`` keeps the statement as written (no temporaries);
        ``factorize(("B", "c"))`` contracts ``B`` and ``c`` into a dense temporary
        ``t1`` first, then the rest; each further group may name earlier groups'
        temporaries (``t1``, ``t2`` ...). Without this directive the compiler
        chooses from the operands' sizes and densities at the first call."""
        if groups == (False,):
            return self._with("factorize", False)
        if not groups or not all(isinstance(g, (tuple, list)) and len(g) >= 2
                                 and all(isinstance(x, str) for x in g) for g in groups):
            raise ScheduleError("factorize takes False or groups of two or more operand names, "
                                "e.g. factorize(('B', 'c'))")
        return self._with("factorize", tuple(tuple(g) for g in groups))

    def split(self, index: str, outer: str, inner: str, factor: int) -> "Schedule":
        """Run the loop over ``index`` as two loops, ``outer`` over blocks of ``factor``
        coordinates and ``inner`` within a block (``index = outer*factor + inner``;
        the last block is cut at the dimension's end). The pieces can be reordered,
        parallelised, vectorised and unrolled like any loop. Dense loops only.
        ``factor`` is an integer in 1..2**31 - 1; one at least the dimension's size
        runs one block."""
        if not all(isinstance(x, str) for x in (index, outer, inner)) or len({index, outer, inner}) != 3:
            raise ScheduleError(f"split({index!r}, {outer!r}, {inner!r}, ...): three distinct index names, "
                                "e.g. split('i', 'i0', 'i1', 8)")
        factor = _count(f"split({index!r}, {outer!r}, {inner!r}, {factor!r})", factor, 1,
                        SPLIT_FACTOR_MAX, "factor")
        return self._with("split", index, outer, inner, factor)

    def divide(self, index: str, outer: str, inner: str, parts: int) -> "Schedule":
        """Run the loop over ``index`` as ``parts`` blocks (TACO's divide): ``outer``
        over the blocks, ``inner`` within one, like ``split`` with the factor
        ``ceil(N/parts)`` taken at run time from the dimension's size. ``parts`` is an
        integer in 1..2**31 - 1. Dense loops only."""
        if not all(isinstance(x, str) for x in (index, outer, inner)) or len({index, outer, inner}) != 3:
            raise ScheduleError(f"divide({index!r}, {outer!r}, {inner!r}, ...): three distinct index names, "
                                "e.g. divide('i', 'i0', 'i1', 4)")
        parts = _count(f"divide({index!r}, {outer!r}, {inner!r}, {parts!r})", parts, 1, SPLIT_FACTOR_MAX, "parts")
        return self._with("divide", index, outer, inner, parts)

    def pos(self, index: str, pos_index: str, operand: str, within: str | None = None) -> "Schedule":
        """Walk the loop over ``index`` by ``operand``'s positions of the compressed
        level storing it, as one loop ``pos_index`` over all of that level's positions
        (the loops over the levels above it follow from the positions: each chunk of
        positions finds its rows by searching their ``pos`` arrays). This is TACO's
        ``fuse`` + ``pos``: ``split(pos_index, ...)`` then cuts the nonzeros into equal
        chunks, and ``parallelize`` of the outer piece balances threads by nonzeros.

        ``within="i"`` (the index stored just above ``index``) is TACO's ``pos`` of
        one segment: ``pos_index`` runs over the positions of one row, inside the
        loop over ``i``; ``split``, ``unroll``, ``vectorize`` and, on the GPU, a warp's
        lanes can name it and its pieces (docs/guide.md, "Position loops")."""
        call = f"pos({index!r}, {pos_index!r}, {operand!r}" + ("" if within is None else f", within={within!r}") + ")"
        if not all(isinstance(x, str) for x in (index, pos_index, operand)) or index == pos_index:
            raise ScheduleError(f"{call}: an index, a new name for its position loop and an operand name, "
                                "e.g. pos('j', 'jpos', 'A')")
        if within is None:
            return self._with("pos", index, pos_index, operand)
        if not isinstance(within, str) or within in (index, pos_index):
            raise ScheduleError(f"{call}: within names the index of the loop around the segment, "
                                "e.g. pos('j', 'jpos', 'A', within='i')")
        return self._with("pos", index, pos_index, operand, within)

    def fuse(self, outer: str, inner: str, fused: str) -> "Schedule":
        """Run the loop over ``inner``, nested directly in the one over ``outer``, and
        that loop as one loop ``fused`` (TACO's fuse). Where ``inner`` is a compressed
        level under ``outer``'s level of one operand (CSR's row/column pair), the fused
        loop runs over that operand's nonzeros (the same as ``pos(inner, fused, A)``);
        ``pos``, ``split`` and ``parallelize`` can name ``fused``."""
        call = f"fuse({outer!r}, {inner!r}, {fused!r})"
        if not all(isinstance(x, str) for x in (outer, inner, fused)) or len({outer, inner, fused}) != 3:
            raise ScheduleError(f"{call}: three distinct index names, e.g. fuse('i', 'j', 'f')")
        return self._with("fuse", outer, inner, fused)

    def bound(self, index: str, limit: int) -> "Schedule":
        """Declare that the loop over ``index`` runs at most ``limit`` times (TACO's
        bound): the kernel checks it on every entry to the loop and stops with a
        ``KernelRuntimeError`` when a call's data break it (never reading or writing
        out of bounds); a small bound (at most 64) also unrolls the loop that many times."""
        call = f"bound({index!r}, {limit!r})"
        _index_name(call, index)
        return self._with("bound", index, _count(call, limit, 1, BOUND_MAX, "limit"))

    def vectorize(self, index: str, width: int = 0) -> "Schedule":
        """Ask the backend to vectorise the loop over ``index`` ``width`` lanes wide:
        0 lets it choose, 1 keeps the loop scalar, else a power of two up to 64."""
        call = f"vectorize({index!r}, {width!r})"
        _index_name(call, index)
        width = _count(call, width, 0, VECTOR_WIDTH_MAX, "width")
        if width & (width - 1):
            raise ScheduleError(f"{call}: the width must be 0 or a power of two up to {VECTOR_WIDTH_MAX}")
        return self._with("vectorize", index, width)

    def unroll(self, index: str, factor: int) -> "Schedule":
        """Ask the backend to unroll the loop over ``index`` ``factor`` times (1..64;
        1 keeps it rolled)."""
        call = f"unroll({index!r}, {factor!r})"
        _index_name(call, index)
        return self._with("unroll", index, _count(call, factor, 1, UNROLL_MAX, "factor"))

    def gpu(self, block: int) -> "Schedule":
        """Launch the CUDA kernel with ``block`` threads per block (the backends'
        default is 256): 1..1024, and a multiple of 32 where the kernel maps warps
        or blocks (a warp per row, a block's team, TACO's block > warp > thread
        chunks). The emitted kernel says so (``__launch_bounds__``); the CPU
        backend refuses it."""
        call = f"gpu(block={block!r})"
        return self._with("gpu", _count(call, block, 1, GPU_BLOCK_MAX, "block size"))

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


def check_names(schedule: Schedule, notation) -> None:
    """Every index a schedule names must be one the expression uses, or a loop an
    earlier directive made (a split's pieces, a position loop, a fused loop)."""
    from .notation import accesses
    used = {i.name for a in [notation.lhs] + accesses(notation.rhs) for i in a.indices}

    def need(d, names):
        for n in names:
            if n not in used:
                args = ", ".join(repr(x) for x in d[1:])
                raise ScheduleError(f"{d[0]}({args}): the expression has no index {n!r} "
                                    f"(its indices: {', '.join(sorted(used)) or 'none'})")
    made = {"split": (2, 4), "divide": (2, 4), "pos": (2, 3), "fuse": (3, 4)}
    takes = {"split": 1, "divide": 1, "pos": 1, "fuse": 2}
    for d in schedule.directives:  # loops a directive makes can be named by later ones
        if d[0] in made:
            need(d, d[1:1 + takes[d[0]]])
            lo, hi = made[d[0]]
            used = used | set(d[lo:hi])
    for d in schedule.directives:
        names = d[1] if d[0] == "reorder" else d[1:2] if d[0] in (
            "parallelize", "precompute", "vectorize", "unroll", "bound") else ()
        need(d, names)
