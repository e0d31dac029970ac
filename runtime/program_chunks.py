"""A fused run on threads by chunks of rows: every statement over one ``[lo, hi)`` range.

A fused run whose statements each write only the row their outer loop is on, its
sparse temporaries csr-like (rows first), is also built from the statements'
chunk lowerings (``Options.append_chunks``, joined by ``spcomp.lower.fuse``): one
call over ``[lo, hi)`` runs every statement over those rows, each sparse
statement appending its rows to arrays of its own from position 0, and a later
statement reading them in the same call. The runtime calls it once per thread
(the native driver, else the Python pool) with per-chunk capacities and output
slots, then, as for a one-statement chunked kernel (:mod:`.chunks`), stitches
each returned sparse output from the chunks; an unreturned temporary was freed by
each call itself. A tensor stored compressed first (dcsr, coo, csf) is computed in
a rows-first stand-in (csr, dcc) and, when returned or read after the run,
converted back to its own format after the join (:func:`as_declared`). A statement
that sums over the rows (a scalar, or a dense output indexed by something else:
``ThreadPlan.partials``) adds into a zeroed copy of its output per chunk, and the
copies are added into the output in chunk order after the join (:mod:`.partials`).
One launch, like the one-thread function.
"""
from __future__ import annotations

import ctypes
from types import SimpleNamespace

import numpy as np

from . import interrupt
from . import threads as _threads
from spcomp.ir.types import to_numpy
from spcomp.lower.context import level_array_type

from .chunks import CHUNK_SLACK, stitch
from .convert import repack_below
from .launch import balance_pos, work
from .memory import data_ptr, free
from .partials import add_into
from .tensor import Tensor


class _Chunk:
    """One ``[lo, hi)`` call's rows and the arrays it allocated: (step, (level,
    array)) -> the pointer its slot holds."""

    __slots__ = ("lo", "hi", "slots")

    def __init__(self, lo: int, hi: int, slots: dict):
        self.lo, self.hi, self.slots = lo, hi, slots

    def free(self):
        for p in self.slots.values():
            if p.value:
                free(p.value)
                p.value = None


def per_chunk_params(built) -> tuple:
    """``(capacities, slots, copies)``: where the fused function's per-chunk parameters
    sit in its argument list, as position -> step (a sparse statement's first
    capacity), position -> (step, (level, array)) (one of its grown arrays' slot)
    and position -> step (a summing statement's output values: a copy per chunk)."""
    fn = built.module.function(built.module.entry)
    capacities, slots, copies = {}, {}, {}
    for at, (src, param) in enumerate(zip(built.sources, fn.params)):
        if param.name not in fn.per_chunk:
            continue
        role, b, _x = built.plans[src.statement][src.position]
        if role == "capacity":
            capacities[at] = src.statement
        elif role == "out" and built.lows[src.statement].threads.partials:
            copies[at] = src.statement
        else:
            slots[at] = (src.statement, (b.level, b.array))
    return capacities, slots, copies


class ChunkPlan:
    """How a chunked call runs, from its operands alone: the rows' balance, where the
    per-chunk parameters sit, each chunk's first capacity, the summed outputs'
    copies, and the driver with its chunks (or the Python pool with the call's
    work). Made by each general call and kept by its repeat
    (:mod:`.program_repeat_chunks`), which runs it again on fresh outputs; nothing
    in it changes once made, so concurrent calls may share it."""

    __slots__ = ("built", "n", "pos", "weights", "cap_at", "slot_at", "copy_at", "copies", "capacities",
                 "returned", "units", "work", "whole", "driver", "bounds", "ranges", "caps", "first_hi")

    def __init__(self, launcher, built, n: int, sizes: dict, storages: dict, capacities: dict, returned: set,
                 units: int, copies: dict | None = None):
        """``built``: a chunked FusedBuild over ``[0, n)``, split by its first
        statement's balance (``sizes``, ``storages``); ``capacities``: step -> first
        capacity of each sparse step; ``returned``: the steps whose output is stitched
        into its Output; ``copies``: step -> (values, dtype, assign) of each statement
        summing into per-chunk copies; ``units``: the call's work (interrupt.py)."""
        low = built.lows[0]
        self.built, self.n, self.units = built, n, units
        self.pos = pos = balance_pos(low, storages)
        self.weights = launcher.weights(low, storages, pos, sizes)
        self.cap_at, self.slot_at, self.copy_at = per_chunk_params(built)
        self.copies, self.capacities, self.returned = copies or {}, capacities, frozenset(returned)
        self.whole = max(self._weight(0, n), 1)
        threads = _threads.get_num_threads()
        self.driver = launcher.driver_of(built.variant) if threads > 1 else None
        self.bounds = self.ranges = self.caps = self.work = None
        if self.driver is not None:
            self.bounds = launcher.bounds(n, threads, self.weights)
            self.ranges = [(int(lo), int(hi)) for lo, hi in zip(self.bounds[:-1], self.bounds[1:])]
            self.caps = {at: np.array([self.capacity(step, lo, hi) for lo, hi in self.ranges], dtype=np.int64)
                         for at, step in self.cap_at.items()}
        else:
            self.work = work(n, pos, sizes, low, storages)
        self.first_hi = self.ranges[0][1] if self.ranges else n

    def _weight(self, lo: int, hi: int) -> int:
        pos = self.pos
        return int(pos[hi]) - int(pos[lo]) + hi - lo if pos is not None else hi - lo

    def capacity(self, step, lo: int, hi: int) -> int:
        """A chunk's first capacity: a returned output's first chunk becomes its arrays,
        so it starts at the whole call's estimate (as chunks.run_chunks); the rest
        start at their share."""
        c = self.capacities[step]
        return c if lo == 0 and step in self.returned else \
            max(1024, int(c * CHUNK_SLACK * self._weight(lo, hi) / self.whole))


def run_chunked(plan: ChunkPlan, args: list, outs: dict) -> list:
    """Run ``plan``'s function on ``args`` (its arguments, ``lo``/``hi`` first; a summed
    output's slot holds the output's pointer), ``outs``: step -> Output of each
    sparse step. Returns the calls' statuses; the chunks' arrays are freed whatever
    happens, and the copies are added into the outputs only when every chunk succeeded."""
    built, n, copies = plan.built, plan.n, plan.copies
    parts: dict = {at: {} for at in plan.copy_at}  # position -> chunk's lo -> its copy
    chunks: list = []
    try:
        if plan.driver is not None:
            statuses = [interrupt.run(plan.units, _on_driver, plan, args, chunks, parts)]
        else:
            def call(lo, hi):
                chunk = _Chunk(lo, hi, {key: ctypes.c_void_p(0) for key in plan.slot_at.values()})
                chunks.append(chunk)
                a = list(args)
                a[0], a[1] = lo, hi
                for at, step in plan.cap_at.items():
                    a[at] = plan.capacity(step, lo, hi)
                for at, key in plan.slot_at.items():
                    a[at] = ctypes.byref(chunk.slots[key])
                for at, step in plan.copy_at.items():
                    size, dtype, _assign = copies[step]
                    part = parts[at][lo] = np.zeros(size, dtype)
                    a[at] = data_ptr(part)
                return built.function(*a)
            statuses = interrupt.run(plan.units, _threads.run_ranges, call, n, plan.weights, None, plan.work)
        if not any(statuses):
            chunks.sort(key=lambda c: c.lo)
            _stitch_returned(plan, chunks, outs)
            for at, step in plan.copy_at.items():  # in chunk order: the same sum from call to call
                if parts[at]:
                    add_into(args[at], np.stack([parts[at][lo] for lo in sorted(parts[at])]), copies[step][2])
        return statuses
    finally:
        for c in chunks:
            c.free()


def join_slots(plan: ChunkPlan, ranges: list, pointers, outs: dict, ok: bool) -> None:
    """After one call ran ``plan``'s function over ``ranges`` (the team call of
    program_team.py), the pointers its chunks' grown arrays got (``pointers``: a row
    per slot, a column per chunk): the returned outputs stitched from them (``outs``:
    step -> Output) where ``ok`` (every chunk succeeded), every chunk's arrays freed."""
    chunks = _chunks_of(plan, ranges, pointers)
    try:
        if ok:
            _stitch_returned(plan, chunks, outs)
    finally:
        for c in chunks:
            c.free()


def _stitch_returned(plan: ChunkPlan, chunks: list, outs: dict) -> None:
    """Each returned sparse output (``outs``: step -> Output) stitched from ``chunks``
    (in row order) as a one-statement chunked kernel's are."""
    for step in sorted(plan.returned):
        views = [SimpleNamespace(lo=c.lo, hi=c.hi, grow={key: p for (s, key), p in c.slots.items() if s == step})
                 for c in chunks]
        stitch(outs[step], views, plan.n, plan.capacity(step, 0, chunks[0].hi if chunks else plan.n))


def _chunks_of(plan: ChunkPlan, ranges: list, pointers) -> list:
    """The ``_Chunk`` of each of ``ranges`` holding the arrays a native call left in its
    slots (``pointers``: a row per slot, a column per chunk; 0 where none)."""
    keys = list(plan.slot_at.values())
    rows = [list(map(int, row)) for row in pointers]
    return [_Chunk(lo, hi, {key: ctypes.c_void_p(rows[r][c] or None) for r, key in enumerate(keys)})
            for c, (lo, hi) in enumerate(ranges)]


def _on_driver(plan: ChunkPlan, args, chunks, parts) -> int:
    """One native driver call over the plan's chunks, each chunk's capacities, slots
    and output copies element ``c`` of per-chunk arrays; the chunks it ran go to
    ``chunks``, the copies (position -> lo -> copy, in ``parts``) are made here."""
    ranges = plan.ranges
    count = len(ranges)
    where = {}
    for at, step in plan.copy_at.items():
        size, dtype, _assign = plan.copies[step]
        copy_table = np.zeros((count, size), dtype)
        parts[at].update((lo, copy_table[c]) for c, (lo, _hi) in enumerate(ranges))
        where[at] = data_ptr(copy_table) + copy_table.strides[0] * np.arange(count, dtype=np.int64)
    g = len(plan.slot_at)
    # the calls' pointers, a row per slot, then a row per slot of where each one is
    table = np.zeros((2 * g, count), dtype=np.int64)
    base = data_ptr(table)
    table[g:] = base + 8 * np.arange(g * count, dtype=np.int64).reshape(g, count)
    a = list(args)
    for at, values in plan.caps.items():
        a[at] = data_ptr(values)
    for at, addresses in where.items():
        a[at] = data_ptr(addresses)
    for r, at in enumerate(plan.slot_at):
        a[at] = base + 8 * count * (g + r)
    try:
        return plan.driver(count, data_ptr(plan.bounds), *a[2:])
    finally:  # whatever ran, its arrays are freed with the chunks
        chunks.extend(_chunks_of(plan, ranges, table[:g]))


def as_declared(t: Tensor, fmt, bits: int) -> Tensor:
    """A tensor the chunked function computed in a rows-first stand-in (a dense level,
    then compressed ones: ``lower.outputs.rows_first``) in its declared ``fmt``, as the
    one-thread function returns it: the same entries in the same order and index
    arrays of the ``bits``-wide kernel's types. Compressed levels below (dcsr, csf)
    keep the stand-in's arrays, only the top level is compressed (O(rows)); a
    coordinate list (coo) gets each entry's coordinates (O(nnz)); anything else is
    repacked from the entries (``repack_below``: a few passes over them, no sort)."""
    below = fmt.levels[1:]
    if all(a == b for a, b in zip(below, t.format.levels[1:])):
        levels, vals = _compress_top(t), t.vals
    elif not fmt.levels[0].unique and all(l.aligned_with_parent for l in below):
        levels, vals = _coordinates(t), t.vals
    else:
        levels, vals = repack_below(t.format, t.levels, t.vals, fmt, t.shape)
    levels = [{a: np.asarray(x, dtype=to_numpy(level_array_type(kind, a, bits))) for a, x in arrays.items()}
              for kind, arrays in zip(fmt.levels, levels)]
    return Tensor(fmt, t.shape, levels, vals, validated=True)


def _compress_top(t: Tensor) -> list:
    """A rows-first tensor's levels with its dense first level compressed: the rows
    that hold entries (the writer appends no empty row), their row ends kept."""
    pos = t.levels[1]["pos"]
    rows = np.flatnonzero(np.diff(pos))
    top = {"pos": np.array([0, rows.size]), "crd": rows}
    return [top, {**t.levels[1], "pos": np.append(pos[rows], pos[-1])}] + list(t.levels[2:])


def _coordinates(t: Tensor) -> list:
    """A rows-first tensor's levels as a coordinate list: every entry's coordinates,
    the last level's ``crd`` kept."""
    coords = [np.arange(t.shape[0])]
    for arrays in t.levels[1:]:
        counts = np.diff(arrays["pos"])
        coords = [np.repeat(c, counts) for c in coords] + [arrays["crd"]]
    return [{"pos": np.array([0, t.vals.size]), "crd": coords[0]}] + [{"crd": c} for c in coords[1:]]


__all__ = ["ChunkPlan", "as_declared", "join_slots", "per_chunk_params", "run_chunked"]
