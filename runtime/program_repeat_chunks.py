"""A fused run's call by chunks of rows, repeated while the same operands come back.

A call big enough for threads of a run that has a function over chunks of rows
(:mod:`.program_chunks`) pays, besides what any general call of a run pays
(:mod:`.program_repeat`), for its chunks: the rows' balance, where the per-chunk
parameters sit, each chunk's first capacity, the driver's bounds. All of it
depends on the operands alone, so the call keeps it as a
:class:`~.program_chunks.ChunkPlan`, and :class:`ChunkRepeat` replays the call:
the input checks and argument template of a :class:`RunRepeat` (the very Tensor,
an unchanged SciPy matrix, an ndarray's shape, strides and dtype; the thread
count and the split threshold's generation), fresh outputs and per-chunk tables,
the driver (or the Python pool), the stitch of each returned sparse output, the
summed statements' copies added in, the stand-ins converted to their declared
formats. It misses where the general path could decide otherwise: the thread
count, the threshold (a new generation, a sample due, or a fixed one set: the
settings :func:`.sparsecall.call_settings` names), other operands or layouts. A
stitch or chunk past 32-bit positions steps aside for the general path's 64-bit
run (the summed copies are added only after every chunk and stitch succeeded,
and a dense ``+=`` by chunks runs 64-bit from the start).
"""
from __future__ import annotations

from . import threads as _threads
from .launch import balance_pos, parallel_extent, work
from .program_chunks import run_chunked
from .program_repeat import RunRepeat, replay_parts
from .sparsecall import call_settings


class ChunkRepeat(RunRepeat):
    """A :class:`RunRepeat` whose launch runs a :class:`~.program_chunks.ChunkPlan`."""
    __slots__ = ("plan", "order")

    def __init__(self, parts, bits, fail, plan, order):
        super().__init__(*parts, bits, fail, call_settings())
        self.plan = plan            # the chunks, from the operands alone
        self.order = tuple(order)   # the sparse steps' places in the run, as the Outputs come

    def launch(self, args: list, outs: list) -> int:
        return max(run_chunked(self.plan, args, dict(zip(self.order, outs))))


def record_chunks(run, built, per_step, outs: list, bits: int, env: dict, fail, stand_in, plan, generation: int):
    """The :class:`ChunkRepeat` of the call just made of ``run`` by chunks (``built``
    its chunked FusedBuild, ``plan`` the ChunkPlan it ran; the rest as for
    :func:`.program_repeat.record`), or None where a repeat could not be trusted.
    ``generation``: ``threads.split_state`` read before the call chose chunks."""
    # the work each split decision of the call weighed: the first statement's, and that
    # of each statement summing into per-chunk copies (FusedRun._chunked)
    units = [work(parallel_extent(low, sizes, storages), balance_pos(low, storages), sizes, low, storages)
             for j, (low, (storages, sizes, _a, _c)) in enumerate(zip(built.lows, per_step))
             if j == 0 or low.threads.partials]
    if plan.work is not None:  # the Python pool decides its split again (threads.run_ranges)
        units.append(plan.work)
    threads = _threads.get_num_threads()
    watched = _threads.measured_threshold(threads) if any(_threads.threshold_decides(u) for u in units) else None
    parts = replay_parts(run, built, per_step, outs, bits, env, stand_in,
                         lambda marked: (None, marked, generation, watched, None, plan.bounds))
    if parts is None:
        return None
    return ChunkRepeat(parts, bits, fail, plan, [j for j, st in enumerate(run.steps) if st.sparse])


__all__ = ["ChunkRepeat", "record_chunks"]
