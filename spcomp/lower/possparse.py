"""Position splits into a sparse output: two-phase assembly per chunk of positions.

A position loop (possplit.py) cuts an operand's nonzeros into chunks; a chunk may
begin and end inside a row. A sparse output can still be assembled chunk by chunk
when its entries follow the split operand's positions one for one: the output is
dense levels then one compressed level (csr-like), its indices in storage order
are the operand's chain of levels down to the walked one (``C[i,j] = A[i,j] * B[i,j]``
with A csr). Then every position of the walked level makes at most one output
entry (exactly one unless computed zeros are dropped), computed whole inside the
chunk that holds the position (no sum across chunks, so the right side need not be
linear), and the two phases of assembly.py work per chunk:

1. ``NAME_count`` counts each row's entries; a range's first and last rows may be
   shared with the neighbouring ranges, so their counts are *added* into the
   runtime's zeroed counts (atomically when ranges run on threads);
2. the runtime's prefix sum gives the row starts;
3. ``NAME_fill`` writes a row's entries from its start plus the entries that earlier
   ranges hold of it: ``max(0, P0 - pos[q])``, the row's positions before the
   range's first one ``P0`` (one entry each); where zeros are dropped, the range
   first counts the nonzero values of those positions (:func:`skipped_entries`:
   one more pass over at most one row, the values computed as the fill does).

Each entry lands where the default schedule puts it, so the arrays are the same
bit for bit. On CPU threads a range of chunks is a thread's; on the GPU, a chunk
is a thread's (the count adds atomically there too). Everything else is refused
with the reason (:func:`refusal`).
"""
from __future__ import annotations

from ..errors import ScheduleError
from ..ir import nodes as n
from ..ir.build import add, as_i64
from . import assembly
from .assembly import CountSink, FillSink
from .outputs import applies, dense_prefix


def refusal(spec, acc, lhs, level: int, opt, accumulate: bool):
    """Why a position loop over ``acc``'s level ``level`` cannot assemble the sparse
    output ``lhs`` chunk by chunk, or None when it can."""
    out, fmt = lhs.tensor.name, lhs.tensor.format
    why = f"{spec.what}: a position split assembles the sparse output {out} ({fmt.spec()!r}) chunk by chunk only "
    if not applies(fmt) or dense_prefix(fmt) != len(fmt.levels) - 1:
        return why + "when it is dense levels then one compressed level (csr-like); store it dense, or csr"
    chain = [acc.indices[d] for d in acc.tensor.format.order][:level + 1]
    out_chain = [lhs.indices[d] for d in fmt.order]
    if out_chain != chain:
        return (why + f"when its indices in storage order ({', '.join(i.name for i in out_chain)}) are "
                f"{acc.tensor.name}'s levels down to the split one ({', '.join(i.name for i in chain)}): then each "
                f"position of {acc.tensor.name} makes one entry of {out}")
    if accumulate:
        return why + "with '=' (with '+=' the entries of the old output would be merged in)"
    if spec.pieces:
        return why + ("with one level of chunks (a GPU thread each): a block's warps and threads would share "
                      "the counters of the rows they append to")
    race = opt.race[0] if opt.race else None
    if race not in (None, "NoRaces", "Atomics"):
        return (f"parallelize({spec.outer!r}, race={race!r}): chunks of positions write entries of the sparse "
                f"output {out} of their own (no copies to add up); leave the race strategy out")
    return None


def check(spec, acc, lhs, level: int, opt, accumulate: bool) -> None:
    """ScheduleError with :func:`refusal`'s reason."""
    why = refusal(spec, acc, lhs, level, opt, accumulate)
    if why is not None:
        raise ScheduleError(why)


class ChunkCountSink(CountSink):
    """Counts per row; a range's edge rows add theirs (atomically on threads)."""

    atomic = False      # set per pass by the lowerer: an edge row shared with another range
    accumulate = False  # set per pass: an edge row (add) or an inner one (store)

    def row_end(self, q):
        if not self.accumulate:
            return super().row_end(q)
        (l, arr), = self.counts.items()
        at, count = add(q, n.i64(1)), n.Cast(self.counters[l], arr.type.elem)
        if self.atomic:
            return [n.AtomicAdd(arr, at, count)]
        return [n.Store(arr, at, n.Binary("+", n.Load(arr, at), count))]


class ChunkFillSink(FillSink):
    """Fills a row from its start plus the entries earlier ranges hold of it."""

    atomic = accumulate = False  # (set per pass; the fill never races)

    def __init__(self, params, lhs, drop_zeros, fresh, sizes, starts, plan):
        super().__init__(params, lhs, drop_zeros, fresh, sizes, starts)
        self.plan = plan
        self.skipped = None  # dropping zeros: the first row's entries before the range (skipped_entries)

    def enter(self, index, env):
        out = super().enter(index, env)
        if self._level_of(index) != self.d - 1:
            return out
        plan = self.plan
        level = plan.level
        parent = env.pos[(plan.acc, level - 1)].pos if level else n.i64(0)
        if self.skipped is None:  # one entry a position
            first_of_row = as_i64(n.Load(plan.params.levels[level]["pos"], parent))
            before = n.Binary("max", n.i64(0), n.Binary("-", plan.ranges[level][0], first_of_row))
        else:  # only the range's first row has entries in earlier ranges
            first_row = plan.ranges[level - 1][0]
            before = n.Select(n.Binary("==", parent, first_row), self.skipped, n.i64(0))
        counter = self.counters[self.d]
        return out + [n.Assign(counter, add(counter, before))]


class _SkipCountSink(CountSink):
    """Counts the entries of the one row it is run over, storing nothing."""

    def row_end(self, q):
        return []

    def epilogue(self):
        return []


def skipped_entries(lw, sink, env) -> list:
    """Where a fill drops zeros: a pass over the range's first row, its positions
    before the range's first one only, counting the nonzero values into the
    variable ``sink.skipped`` that the row's start adds (called once the range's
    positions are known, before its passes). Nothing for other sinks."""
    if not isinstance(sink, ChunkFillSink) or not sink.drop:
        return []
    plan = lw.pos_plan
    level = plan.level
    counter = _SkipCountSink(sink.p, lw.lhs, True, lw.fresh, lw.sizes, {})
    saved, current = dict(plan.ranges), plan.current
    first = {m: plan.ranges[m][0] for m in range(level)}
    plan.ranges = {**{m: (first[m], add(first[m], n.i64(1))) for m in range(level)},
                   level: (n.i64(0), plan.ranges[level][0])}
    plan.current = (True, first[0], n.Binary("min", add(first[0], n.i64(1)), saved[0][1]))
    try:
        nest = lw.emitter(counter, text=False).nest(lw.outer, lw.expr, counter, env.child(), depth=1)
    finally:
        plan.ranges, plan.current = saved, current
    sink.skipped = counter.counters[sink.d]
    return [n.Comment("the nonzero entries of the range's first row in earlier ranges (zeros are dropped)"),
            *counter.prologue(), *nest]


def build(lw):
    """The two-phase Lowered of a position loop into a sparse output whose chunks
    run on threads, or None when they do not (then one pass appends in order: the
    passes over a range's rows run first row, inner rows, last row)."""
    parallel = lw._position_parallel()
    if parallel is None:
        return None
    lw.parallel, lw.out_shape, lw.workspace = parallel, "csf", None
    lw.accumulate_inside = False
    return assembly.build(lw, sinks)


def sinks(lw, out, drop, per_row) -> tuple:
    """The (count, fill) sinks of a position loop's two phases."""
    plan = lw.pos_plan
    plan.params = lw.params[plan.name]
    return (ChunkCountSink(out, lw.lhs, drop, lw.fresh, lw.sizes, per_row, lw.opt.index_limit),
            ChunkFillSink(out, lw.lhs, drop, lw.fresh, lw.sizes, per_row, plan))


__all__ = ["refusal", "check", "ChunkCountSink", "ChunkFillSink", "build", "sinks", "skipped_entries"]
