"""CPU threads appending a csr-like output by chunks of rows that meet in one buffer.

The kernel's side is ``spcomp/lower/meet.py``. This module runs it:

* the rows are cut into the launcher's balanced chunks (one per thread); each gets
  a room of its share of the call's capacity estimate. Pairs of chunks share a
  region: chunk ``2k`` may write ``[floor, M)``, going down from ``M``, chunk
  ``2k + 1`` ``[M, ceiling)``, going up; the runtime writes ``M`` as the row end
  between them before the call;
* one native driver call runs the chunks; every chunk writes its rows' ends (going
  down, a row's start) in positions of the shared arrays, and where its counter
  ended (``reached``: its lowest position going down, one past its highest up);
* the pairs' runs are moved together (none with two threads), the row ends
  shifted so the first row starts at 0, and the result's arrays are views of the
  shared ones from where the first pair's entries start;
* a chunk whose rows did not fit returns ``STATUS_NO_ROOM`` with its count
  still reported: the call runs once more with the room each chunk needed.

Without a native driver (no libgomp, a forked child), or on a call that stays on
one thread, ``fallback`` runs the chunks that append to arrays of their own
(runtime/chunks.py).
"""
from __future__ import annotations

import ctypes
import math

import numpy as np

from spcomp.ir.nodes import STATUS_NO_ROOM
from spcomp.lower.outputs import MIN_CAPACITY

from . import interrupt
from . import threads as _threads
from .launch import WiderIndices
from .memory import data_ptr

# a chunk's room is its share of the call's estimate times this
MEET_SLACK = 1.125


class _Slots:
    """Where a meeting variant's argument list takes its per-chunk tables and the
    shared arrays: worked out once per variant."""

    __slots__ = ("floor", "ceiling", "down", "reached", "shared")

    def __init__(self, arg_plan):
        roles = {role: k for k, (role, _a, _b) in enumerate(arg_plan)}
        self.floor, self.ceiling, self.down = roles["meet_floor"], roles["meet_ceiling"], roles["meet_down"]
        self.reached = roles["meet_reached"]
        self.shared = {k: (b.level, b.array) for k, (role, b, _x) in enumerate(arg_plan)
                       if role == "out" and b.role == "output_meet"}


def rooms(edges: list, pos, capacity: int) -> list:
    """Each chunk's room in entries: its share (``pos``'s entries plus one per row,
    as the launcher balances them) of ``capacity`` times MEET_SLACK."""
    whole = (int(pos[edges[-1]]) - int(pos[edges[0]]) if pos is not None else 0) + edges[-1] - edges[0]
    out = []
    for lo, hi in zip(edges[:-1], edges[1:]):
        share = (int(pos[hi]) - int(pos[lo]) if pos is not None else 0) + hi - lo
        out.append(max(MIN_CAPACITY, math.ceil(capacity * MEET_SLACK * share / max(whole, 1))))
    return out


def layout(room: list) -> tuple:
    """``(floors, ceilings, downs, meets, total)`` for chunks of ``room`` entries:
    chunk ``2k`` goes down to its floor from the point ``meets[k]`` where chunk
    ``2k + 1`` starts going up; the regions follow each other."""
    count = len(room)
    floors, ceilings, downs, meets = [], [], [], []
    at = 0
    for c in range(0, count, 2):
        mid = at + room[c]
        floors.append(at), ceilings.append(mid), downs.append(1), meets.append(mid)
        at = mid
        if c + 1 < count:
            floors.append(mid), ceilings.append(mid + room[c + 1]), downs.append(0)
            at = mid + room[c + 1]
    return floors, ceilings, downs, meets, at


def needed_rooms(reached: list, floors: list, ceilings: list, downs: list) -> list:
    """The entries each chunk counted, from where its counter ended."""
    return [ceiling - end if down else end - floor
            for end, floor, ceiling, down in zip(reached, floors, ceilings, downs)]


def run_meet(ctx, variant, n: int, pos, out, capacity: int, units: int, prepared, fallback):
    """Run ``variant`` (lowered with ``Options.meet_chunks``) over the threads' ``n`` rows
    (balanced by ``pos``) into ``out`` and return the result; ``prepared``: ``(args,
    lohi)``, the argument list (its output slots as ``out.arg`` gives them);
    ``fallback()`` runs the call by chunks of arrays of their own."""
    driver = ctx.launcher.split_driver(variant, n, units)
    if driver is None:
        return fallback()
    edges = ctx.launcher.bounds(n, _threads.get_num_threads(), pos)
    key = (id(edges), capacity)
    plan = variant.meet_rooms.get(key) if variant.meet_rooms else None
    if plan is None or plan.edges is not edges:
        plan = _Plan(edges, rooms(edges.tolist(), pos, capacity), learned=False)
    for _attempt in range(2):
        status, counts = _run(variant, driver, plan, out, units, prepared)
        if status == 0:
            if not plan.learned:
                _keep(variant, key, _Plan(edges, with_margin(counts), learned=True))
            return out.result()
        if status != STATUS_NO_ROOM:
            out.discard()
            ctx.fail(status, out)
        # what each chunk counted and some more: a row's room is checked before it
        # drops computed zeros, for as many entries as it touched
        plan = _Plan(edges, with_margin(counts), learned=False)
    return fallback()


class _Plan:
    """The rooms of one row split's chunks and what follows from them: the layout,
    the row ends the runtime presets, and the per-chunk table the driver reads
    (floor, ceiling, down, the counter each chunk reports, and that slot's offset)."""

    __slots__ = ("edges", "bounds", "room", "floors", "ceilings", "downs", "meets", "total", "presets",
                 "template", "learned")

    def __init__(self, edges, room: list, learned: bool):
        self.edges, self.bounds, self.room, self.learned = edges, edges.tolist(), room, learned
        self.floors, self.ceilings, self.downs, self.meets, self.total = layout(room)
        last = len(self.bounds) - 1
        self.presets = [(self.bounds[min(2 * k + 1, last)], meet) for k, meet in enumerate(self.meets)]
        count = len(room)
        self.template = np.array([self.floors, self.ceilings, self.downs, [0] * count,
                                  [8 * (3 * count + c) for c in range(count)]], dtype=np.int64)


def _keep(variant, key, plan: _Plan) -> None:
    """Keep the rooms the next call with the same row split and estimate asks for: what
    each chunk counted and a sixteenth more. The same operands give the same counts,
    so the arrays are not mostly unused (which would copy the result) nor too small."""
    if variant.meet_rooms is None or len(variant.meet_rooms) > 16:
        variant.meet_rooms = {}
    variant.meet_rooms[key] = plan


def with_margin(counts: list) -> list:
    """Rooms for chunks that counted ``counts`` entries: a sixteenth more, and MIN_CAPACITY."""
    return [c + c // 16 + MIN_CAPACITY for c in counts]


def _run(variant, driver, plan: _Plan, out, units, prepared):
    """One driver call with ``plan``'s rooms: ``(status, counts)``, the entries each
    chunk counted (None on success with rooms already learned, or an error status).
    On success ``out`` holds the joined result."""
    slots = variant.slots(_Slots)
    limit = out.index_limit
    if limit is not None and plan.total > limit:  # 32-bit positions: let the 64-bit kernel have it
        raise WiderIndices(f"{plan.total} entries of room")
    ends = out.arrays[(out.layout.first, "pos")]
    for row, meet in plan.presets:  # the row end between a pair's chunks: where they meet
        ends[row] = meet
    shared = out.share(slots.shared.values(), plan.total)
    count = len(plan.room)
    table = plan.template.copy()  # (a call's own: concurrent calls share the plan)
    base = data_ptr(table)
    table[4] += base
    args, lohi = prepared
    a = list(args)
    for k, key in slots.shared.items():
        a[k] = data_ptr(shared[key])
    a[slots.floor], a[slots.ceiling], a[slots.down], a[slots.reached] = (
        base, base + 8 * count, base + 16 * count, base + 32 * count)
    del a[lohi:lohi + 2]
    status = _threads.run_split(units, interrupt.run, units, driver, count, data_ptr(plan.edges), *a,
                                key=driver)
    if status not in (0, STATUS_NO_ROOM):
        return status, None
    reached = table[3].tolist()
    if status == 0:
        _join(out, ends, plan.bounds, plan.meets, reached, shared)
        if plan.learned:
            return 0, None
    return status, needed_rooms(reached, plan.floors, plan.ceilings, plan.downs)


def _join(out, ends, bounds: list, meets: list, reached: list, shared: dict) -> None:
    """Move each pair's run behind the previous one's (pairs after the first; the
    row end between two pairs, written by both neighbours, is set here), shift the
    row ends so the first row starts at 0, and say where the result starts."""
    count = len(bounds) - 1
    first = reached[0]
    end = reached[1] if count > 1 else meets[0]  # where the first pair's entries end
    for k in range(1, len(meets)):
        lo_row, hi_row = bounds[2 * k], bounds[min(2 * k + 2, count)]
        start, stop = reached[2 * k], reached[2 * k + 1] if 2 * k + 1 < count else meets[k]
        if start != end:
            for arr in shared.values():
                size = arr.dtype.itemsize
                ctypes.memmove(data_ptr(arr) + end * size, data_ptr(arr) + start * size, (stop - start) * size)
            seg = ends[lo_row + 1:hi_row + 1]
            seg -= seg.dtype.type(start - end)
        ends[lo_row] = end
        end += stop - start
    if first:
        ends -= ends.dtype.type(first)
    out.shared_offset = first


__all__ = ["MEET_SLACK", "layout", "needed_rooms", "rooms", "run_meet"]
