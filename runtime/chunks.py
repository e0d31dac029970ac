"""CPU threads assembling a sparse output by chunks of rows, stitched afterwards.

A sparse output whose first levels are dense (csr, dense-then-csf) is filled on
several CPU threads this way: the kernel, lowered with
``Options.append_chunks``, is called once per thread on a ``[lo, hi)`` range of
the output's rows and appends those rows to arrays it allocates itself,
counting positions from 0, exactly as a one-thread call appends every row. The
runtime then stitches the chunks:

* level d (the first compressed one) has one ``pos`` array for all chunks, each
  writing only its rows' ends: each chunk's span gets its running maximum (rows
  no loop visited end where the row before them ends) plus the entries of the
  chunks before it;
* the deeper arrays (coordinates, values, lower ``pos``) are concatenated: the
  first chunk's are grown in place by ``realloc`` and the others' entries
  copied after them (lower ``pos`` entries shifted by the entries before).

Against the two-phase count and fill (spcomp/assemble.py), which the GPU keeps
(thousands of threads cannot each own growable arrays), this walks the loop
nest once instead of twice; the price is copying the later chunks' entries
once. :func:`preferred` says which kernels gain. Where the rows are drained from
a workspace (SpGEMM into csr), the chunks instead share the output's arrays in
pairs that meet in the middle and nothing is copied (:mod:`.meet_chunks`); the
copying chunks are then its fallback.
"""
from __future__ import annotations

import ctypes
import itertools

import numpy as np

from spcomp.errors import KernelRuntimeError
from spcomp.lower.outputs import MIN_CAPACITY

from . import interrupt
from . import threads as _threads
from .launch import WiderIndices, balance_pos, parallel_extent, work
from .meet_chunks import run_meet
from .memory import data_ptr, free, malloc_view, realloc

# "auto": chunks where counting would repeat nested sparse loops, else two phases
# (see preferred); tests force "always" or "never" to cover both ways on the CPU
MODE = "auto"
# chunks that can meet in the output's arrays do (meet_chunks.py); tests set False for the copy
MEET = True
# a chunk's first capacity is its share of the call's estimate times this, so an
# estimate that is about right does not make a chunk double its arrays at the end
CHUNK_SLACK = 1.125


def preferred(low) -> bool:
    """Whether CPU threads should assemble this two-phase lowering's output by chunks.

    Where each nonzero walks nested sparse loops (``Lowered.work_scale``: SpGEMM's
    row of B per nonzero of A), the count pass repeats that merge, about half the
    fill's cost: on two threads chunks measured 1.18x count and fill (5000² SpGEMM,
    blocks of calls) and 1.04x with a two-thread SpMV between calls. Where a row is
    one operand's walk counting is cheap: the sparse add measured 1.14x and 0.92x,
    SDDMM 0.94x and 0.91x (its copy of the later chunks' entries costs more than its
    count), so they keep count and fill. A loop over an operand's top positions
    (DCSR, CSF) always counts and fills: its chunks are not ranges of output rows."""
    if low.threads.positions is not None:
        return False  # threads split an operand's top positions: chunks are not blocks of output rows
    if MODE != "auto":
        return MODE == "always"
    return bool(low.threads.work_scale)


class _Chunk:
    """One thread's rows and the arrays its kernel call allocated."""

    __slots__ = ("lo", "hi", "grow")

    def __init__(self, lo: int, hi: int, grow: dict):
        self.lo, self.hi = lo, hi
        self.grow = grow  # (level, array) -> ctypes.c_void_p the kernel set

    def free(self):
        for p in self.grow.values():
            if p.value:
                free(p.value)
                p.value = None


def _view(address: int, count: int, dtype: np.dtype) -> np.ndarray:
    """``count`` items of malloc'd memory as NumPy, without owning it."""
    if count == 0 or not address:
        return np.zeros(0, dtype=dtype)
    return malloc_view(address, count, dtype)


class _Slots:
    """Where a chunked variant's argument list takes the capacity and the grown
    arrays' pointers: worked out once per variant, not per call."""

    __slots__ = ("cap", "grow")

    def __init__(self, arg_plan):
        self.cap = next(k for k, (role, _a, _b) in enumerate(arg_plan) if role == "capacity")
        self.grow = {k: (b.level, b.array) for k, (role, b, _x) in enumerate(arg_plan)
                     if role == "out" and b.role == "output_grow"}


def run_chunks(ctx, variant, storages, sizes, bits, out, capacity: int, call_units: int = 0, prepared=None):
    """Run ``variant`` (``Lowered.append_chunks``) over the threads' row ranges
    into ``out`` (an ``Output``) and return the stitched result; ``call_units``,
    the call's work (launch.call_work, the same units), decides whether Ctrl-C must
    be able to stop it and whether the call splits. ``prepared``: the argument
    list and ``lo``'s slot when the caller has them (sparsecall.py)."""
    low = variant.lowered
    n = parallel_extent(low, sizes, storages)
    pos = balance_pos(low, storages)
    units = call_units or work(n, pos, sizes, low, storages)
    args, lohi = prepared or ctx.args(variant.arg_plan, storages, sizes, bits, lambda b: out.arg(b, True),
                                      capacity)
    if low.output.meet:  # the chunks share the output's arrays (meet_chunks.py)
        def fallback():
            plain = variant.fallback
            again = ctx.output(plain.lowered, sizes, None, bits, storages)
            again.capacity = capacity
            return run_chunks(ctx, plain, storages, sizes, bits, again, capacity, units)
        return run_meet(ctx, variant, n, pos, out, capacity, units, (args, lohi), fallback)
    slots = variant.slots(_Slots)
    cap_slot, grow_slots = slots.cap, slots.grow
    whole = max(int(pos[n]) - int(pos[0]) + n if pos is not None else n, 1)

    def chunk_capacity(lo, hi):
        # the first chunk's arrays become the result's: they start at the whole call's
        # capacity, so the others' entries fit after its own in memory that the
        # previous call's result (same request) left warm; the rest start at their share
        if lo == 0:
            return capacity
        share = int(pos[hi]) - int(pos[lo]) + hi - lo if pos is not None else hi - lo
        return max(1024, int(capacity * CHUNK_SLACK * share / whole))
    chunks = []

    def call(lo, hi):
        chunk = _Chunk(lo, hi, {key: ctypes.c_void_p(0) for key in grow_slots.values()})
        chunks.append(chunk)
        a = list(args)
        a[lohi], a[lohi + 1] = lo, hi
        a[cap_slot] = chunk_capacity(lo, hi)
        for k, key in grow_slots.items():
            a[k] = ctypes.byref(chunk.grow[key])
        return variant.function(*a)

    try:
        driver = _driver(ctx.launcher, variant, n, units)
        if driver is not None:  # libgomp's team, like every other parallel kernel
            statuses = [_threads.run_split(units, interrupt.run, call_units, _run_on_driver, ctx.launcher, driver,
                                           args, lohi, cap_slot, grow_slots, n, pos, chunk_capacity, chunks,
                                           key=driver)]
        else:  # (Ctrl-C: run_ranges returns once no worker runs, then the chunks are freed)
            statuses = interrupt.run(call_units, _threads.run_ranges, call, n, pos, None, units)
        for s in statuses:
            if s != 0:
                ctx.fail(s, out)
        chunks.sort(key=lambda c: c.lo)
        _stitch(out, chunks, n, capacity)
    except BaseException:
        out.discard()
        raise
    finally:
        for c in chunks:
            c.free()
    return out.result()


def _driver(launcher, variant, n: int, units: int):
    """The variant's native parallel driver when this call splits, else None (one
    thread, or no libgomp: the Python pool runs the chunks); a seam tests replace."""
    return launcher.split_driver(variant, n, units)


def _run_on_driver(launcher, driver, args, lohi, cap_slot, grow_slots, n, pos, chunk_capacity, chunks):
    """One driver call over the balanced chunks: each chunk's capacity and output
    pointers are element ``c`` of per-chunk arrays (``Function.per_chunk``); the
    chunks it ran are appended to ``chunks``. Returns the largest status.

    The Python pool would do too, but after any libgomp kernel the team's threads
    spin for a while on the cores the pool's workers need: SpGEMM on two threads
    with an SpMV between calls took 4.3 ms by the pool against 2.9 by count and fill."""
    bounds = launcher.bounds(n, _threads.get_num_threads(), pos)
    count = len(bounds) - 1
    edges = bounds.tolist()
    g = len(grow_slots)
    # per-chunk arrays, one row each: the capacities; the pointers the kernels set
    # (one row per grown array); where each of those pointers is (what the driver passes)
    table = np.empty((1 + 2 * g, count), dtype=np.int64)
    table[0] = [chunk_capacity(edges[c], edges[c + 1]) for c in range(count)]
    table[1:1 + g] = 0
    base = data_ptr(table)
    table[1 + g:] = base + 8 * (count + np.arange(g * count, dtype=np.int64)).reshape(g, count)
    a = list(args)
    a[cap_slot] = base
    for j, k in enumerate(grow_slots):
        a[k] = base + 8 * count * (1 + g + j)
    del a[lohi:lohi + 2]
    try:
        status = driver(count, data_ptr(bounds), *a)
    finally:  # whatever ran, its arrays are freed with the chunks
        made = table[1:1 + g].T.tolist()
        keys = list(grow_slots.values())
        for c in range(count):
            chunks.append(_Chunk(edges[c], edges[c + 1],
                                 {key: ctypes.c_void_p(made[c][j] or None) for j, key in enumerate(keys)}))
    return status


def _stitch(out, chunks, n: int, capacity: int) -> None:
    """Join the chunks' arrays into ``out``'s (see the module docstring). Plain
    arrays (coordinates, values) are moved with one ``memmove`` each; only a deeper
    level's ``pos``, whose entries shift, goes through NumPy."""
    layout = out.layout
    levels = layout.fmt.levels
    d, m = layout.first, len(levels)
    if not chunks:
        return
    rows_per = layout.dense_positions // n if n else 0  # level d-1 positions per parallel iteration
    pos_d = out.arrays[(d, "pos")]
    limit = np.iinfo(pos_d.dtype).max if out.index_limit is None else out.index_limit
    # entries each chunk holds at each compressed level, and the offsets they start at
    counts = {d: []}
    for c in chunks:
        lo, hi = c.lo * rows_per + 1, c.hi * rows_per + 1
        if hi > lo:
            seg = pos_d[lo:hi]
            np.maximum.accumulate(seg, out=seg)
            counts[d].append(int(pos_d[hi - 1]))
        else:
            counts[d].append(0)
    for l in range(d + 1, m):
        counts[l] = [int(_view(c.grow[(l, "pos")].value, counts[l - 1][t] + 1, layout.dtype_of(l, "pos"))[-1])
                     for t, c in enumerate(chunks)]
    starts = {l: list(itertools.accumulate(counts[l], initial=0)) for l in counts}
    for l in range(d, m):
        if starts[l][-1] > limit:  # (the 64-bit kernel runs the call again)
            raise WiderIndices(f"{starts[l][-1]} entries at level {l + 1}")
    for t in range(1, len(chunks)):
        if starts[d][t]:
            lo, hi = chunks[t].lo * rows_per, chunks[t].hi * rows_per
            pos_d[lo + 1: hi + 1] += pos_d.dtype.type(starts[d][t])
    room = max(capacity, MIN_CAPACITY)  # what the kernel allocated (AppendSink's prologue)
    for key, first in chunks[0].grow.items():
        l, array = key
        group = l - 1 if array == "pos" else (m - 1 if array == "vals" else l)
        dt = layout.dtype_of(l, array)
        extra = 1 if array == "pos" else 0
        total = starts[group][-1] + extra
        if counts[group][0] >= room or total > room:  # it grew, or the rest do not fit
            grown = realloc(first.value, max(total, 1) * dt.itemsize)
            if not grown:
                raise KernelRuntimeError(f"out of memory joining the threads' parts of output {out.name}")
        else:
            grown = first.value
        first.value = None  # the output owns it now
        out.grow[key].value = grown
        size = dt.itemsize
        for t in range(1, len(chunks)):
            at, count = starts[group][t], counts[group][t]
            part = chunks[t].grow[key].value
            if array != "pos":
                if count:
                    ctypes.memmove(grown + at * size, part, count * size)
                continue
            # entry 0 is the chunk's 0; the rest move by the entries before
            joined = _view(grown, total, dt)
            joined[at + 1: at + count + 1] = _view(part, count + 1, dt)[1:] + dt.type(starts[l][t])
    out.capacity = capacity  # _take keeps the first chunk's arrays whole when nearly full, as one thread's


def stitch(out, chunks, n: int, capacity: int) -> None:
    """Join chunks (each with ``lo``, ``hi`` and ``grow``: (level, array) -> the
    ``ctypes.c_void_p`` its call set; ``capacity``: what the first one started
    with) into ``out``'s arrays, as for this module's own chunks; a fused program
    run by chunks of rows (program_chunks.py) stitches its returned outputs so."""
    _stitch(out, chunks, n, capacity)


__all__ = ["MODE", "preferred", "run_chunks", "stitch"]
