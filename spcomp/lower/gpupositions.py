"""Chunks of positions on the GPU (TACO's ``fuse(i, j, f).pos(f, fpos, A).split(...)``
with ``parallelize(..., GPUBlock / GPUWarp / GPUThread)``).

On CPU threads a kernel call takes a range of chunks ``[lo, hi)`` (possplit.py).
On the GPU one launch covers every chunk, so the lowerer wraps the chunk's work --
the binary search of its rows in the ``pos`` arrays and the three passes over its
first, inner and last rows -- in the grid-level loop over chunks, one chunk per
iteration (:func:`chunk_loops`). Where the schedule cuts a chunk further
(``split(fpos1, warp, fpos2, NNZ_PER_WARP).split(fpos2, thread, nz, NNZ_PER_THREAD)``)
the sub-chunks are loops nested in it, each run by the GPU level its ``parallelize``
names (gpumap.py: a block's warps, a warp's lanes) or sequentially, and the
innermost sub-chunk's positions ``[first, end)`` are what a thread searches and walks.
A ``parallelize`` of the loop within a chunk (TACO's ``split(fpos, block, fpos1,
N).parallelize(fpos1, GPUThread)``) gives each of its team's members one position.

Rows shared by neighbouring chunks are the races: :func:`chunk_race` reads the
strategies of all the levels together (TACO's SpMV asks IgnoreRaces of the block
and warp levels and Atomics of the thread level: the threads' atomic adds keep
every level's chunks apart).
"""
from __future__ import annotations

from ..errors import ScheduleError
from ..ir import nodes as n
from ..ir.types import I64
from . import gpumap


def chunk_race(spec, opt) -> tuple:
    """``(strategy, insist, loop named)`` for the chunks of a cut position loop: NoRaces
    anywhere (refused: chunks share rows), else Atomics, ParallelReduction or
    Temporary where a level asks for it, else IgnoreRaces (insisted on by every level
    that names it), else None (the compiler chooses)."""
    members = gpumap.members_of(opt)
    race, insist = opt.race or (None, False)
    asked = [(spec.outer, race, insist)] if race is not None else []
    for m in members.values():  # a member over a loop inside the chunk (SpMM's k) adds into its rows too
        if m.race is not None:
            asked.append((m.index, m.race, m.insist))
    if not asked:
        return None, False, spec.outer
    for wanted in ("NoRaces", "Atomics", "ParallelReduction", "Temporary"):
        for name, r, ins in asked:
            if r == wanted:
                return r, ins, name
    return "IgnoreRaces", all(ins for _n, _r, ins in asked), asked[-1][0]


def chunk_loops(spec, opt, lo, hi, fresh, body, placed: dict) -> list:
    """The grid-level loop over chunks ``[lo, hi)`` (``opt.parallel_kind``) and the
    loops over their sub-chunks; ``body(lo, hi, span)`` is one chunk's work (chunks
    ``[lo, hi)``, or positions ``span``). Member loops are recorded in ``placed``
    (loop variable -> piece name) for gpumap.check_nesting."""
    chunk = n.Var(fresh(spec.outer), I64)
    note = n.Comment(f"{spec.what}: one chunk of positions per {opt.parallel_kind} iteration")
    members = gpumap.members_of(opt)
    levels = [(spec.outer, spec.factor), *spec.pieces]
    if spec.inner in members:  # the positions within a chunk run on the team: one each (TACO's fpos1)
        levels.append((spec.inner, 1))
    if len(levels) == 1:
        work = body(chunk, n.Binary("+", chunk, n.i64(1)))
        return [note, n.For(chunk, lo, hi, n.block(*work), parallel=opt.parallel_kind)]
    if spec.factor < 0:
        raise ScheduleError(f"{spec.what}: sub-chunks (here {levels[1][0]}'s) need a chunk of a fixed number of "
                            "positions; split the position loop instead of dividing it")

    def positions(k, start, end) -> list:
        """The loops from level ``k`` in, over the positions ``[start, end)`` of level k-1's piece."""
        if k == len(levels):
            return body(None, None, (start, end))
        name, factor = levels[k]
        var = n.Var(fresh(name), I64)
        first, last = n.Var(fresh(f"{name}_first"), I64), n.Var(fresh(f"{name}_end"), I64)
        inner = [n.Declare(first, n.Binary("+", start, n.Binary("*", var, n.i64(factor)))),
                 n.Declare(last, n.Binary("min", n.Binary("+", first, n.i64(factor)), end)),
                 *positions(k + 1, first, last)]
        mapping = members[name].mapping if name in members else None
        if mapping:
            placed[var.name] = name
        count = -(-levels[k - 1][1] // factor)  # sub-chunks of one piece of level k-1
        return [n.For(var, n.i64(0), n.i64(count), n.block(*inner), parallel=mapping)]

    first, last = n.Var(fresh(f"{spec.outer}_first"), I64), n.Var(fresh(f"{spec.outer}_end"), I64)
    work = [n.Declare(first, n.Binary("*", chunk, n.i64(spec.factor))),
            n.Declare(last, n.Binary("+", first, n.i64(spec.factor))),
            *positions(1, first, last)]
    return [note, n.For(chunk, lo, hi, n.block(*work), parallel=opt.parallel_kind)]
