"""Chunks of rows that meet in one buffer, so that nothing is copied after the join.

On CPU threads a csr-like output (one dense level, then one compressed level) is
appended by chunks of rows (``Options.append_chunks``, runtime/chunks.py): each
``[lo, hi)`` call appends its rows to arrays of its own, and after the join the
runtime copies the later chunks' entries behind the first's. For SpGEMM on two
threads that copy was ~0.1 ms of a ~0.9 ms call (docs/performance.md, session 14).

With ``Options.meet_chunks`` the chunks write one set of arrays the runtime
allocated. Chunks ``2k`` and ``2k + 1`` meet at a position ``M``: chunk ``2k + 1``
walks its rows forward and appends from ``M`` up, as one thread would; chunk
``2k`` walks its rows from the last to the first and drains each row's workspace
from its highest coordinate down, writing each entry just below the previous one.
So each row's entries come out in order, the rows in order, and the pair's entries
are one contiguous run around ``M``: the output is a view of the arrays, its row
ends shifted, and only pairs after the first (three or more threads) are moved.

It applies where a row's entries come from a workspace (Gustavson), the only
place the lowering can walk a row's coordinates backwards (the touched list), and
where the parallel loop is the dense loop over the output's rows. A chunk's room
is ``[floor, ceiling)``; a row that would not fit sets ``full`` and nothing more
is stored, and the kernel returns ``STATUS_NO_ROOM`` with its count still
reported (``reached``), so the runtime reruns with the room each chunk needed.
"""
from __future__ import annotations

from dataclasses import dataclass

from ..ir import nodes as n
from ..ir.build import add, mul
from ..ir.types import I64, ptr
from .context import Binding
from .parallel import probe_lattice


@dataclass
class Meet:
    """The per-chunk parameters and state of a chunk that meets its neighbour."""
    floor: n.Var     # the lowest position the chunk may write (per chunk)
    ceiling: n.Var   # one past the highest (per chunk)
    down: n.Var      # 1: rows last to first, entries appended downwards from the ceiling
    reached: n.Var   # where the chunk writes its counter at the end (its lowest or one past its highest)
    full: n.Var      # set once a row did not fit: nothing more is stored
    step: n.Var      # +1 or -1: how the counter moves per entry
    below: n.Var     # 0 or -1: where an entry goes relative to the counter
    walked: bool = False  # the emitter reversed the row loop (the lowerer checks it did)
    keys: tuple = ()      # (level, array) of the output the chunks share

    @property
    def params(self) -> tuple:
        return (self.floor, self.ceiling, self.down, self.reached)

    def start(self):
        """Where the chunk's counter starts: the floor going up, the ceiling going down."""
        return add(self.floor, mul(self.down, n.Binary("-", self.ceiling, self.floor)))

    def prologue(self) -> list:
        return [n.Comment("this chunk appends from its floor up, or (down = 1) from its ceiling down"),
                n.Declare(self.full, n.i64(0)),
                n.Declare(self.step, n.Binary("-", n.i64(1), mul(n.i64(2), self.down))),
                n.Declare(self.below, n.Binary("-", n.i64(0), self.down))]

    def row(self, walk, lo, hi):
        """The row that step ``walk`` of ``[lo, hi)`` visits: itself, or ``lo + hi - 1 - walk`` going down."""
        self.walked = True
        back = n.Binary("-", n.Binary("-", add(lo, hi), n.i64(1)), mul(n.i64(2), walk))
        return add(walk, mul(self.down, back))

    def nth(self, t, count):
        """Which of a row's ``count`` drained coordinates step ``t`` takes: the ``t``-th,
        or the ``t``-th from the end going down."""
        back = n.Binary("-", n.Binary("-", count, n.i64(1)), mul(n.i64(2), t))
        return add(t, mul(self.down, back))

    def row_end(self, q):
        """The row-end slot a finished row ``q`` writes its counter to: ``pos[q + 1]``
        (where it ends) going up, ``pos[q]`` (where it starts) going down."""
        return add(q, n.Binary("-", n.i64(1), self.down))

    def room_for(self, counter, count) -> list:
        """Set ``full`` when ``count`` more entries would leave the chunk's room."""
        lowest = add(counter, mul(self.below, count))
        highest = add(lowest, count)
        outside = n.Binary("||", n.Binary("<", lowest, self.floor), n.Binary(">", highest, self.ceiling))
        return [n.If(outside, n.block(n.Assign(self.full, n.i64(1))))]

    def guard(self, stores) -> list:
        return [n.If(n.Binary("==", self.full, n.i64(0)), n.block(*stores))]

    def at(self, counter):
        return add(counter, self.below)

    def advance(self, counter):
        return n.Assign(counter, add(counter, self.step))

    def epilogue(self, counter) -> list:
        return [n.Store(self.reached, n.i64(0), counter),
                n.If(n.Binary("!=", self.full, n.i64(0)), n.block(n.Return(n.STATUS_NO_ROOM)))]


def applies(fmt, workspace, parallel, loop_order, chunked: bool, expr) -> bool:
    """Whether chunks of this lowering can meet: a 2-d output stored dense then
    compressed, appended by chunks of its rows (``chunked``) over the outermost
    loop, a plain loop over the rows (no operand's level walked by it), each row's
    entries drained from a workspace over the output's last index."""
    levels = fmt.levels
    if not (chunked and len(levels) == 2 and levels[0].is_dense and not levels[1].is_dense
            and levels[1].segmented and levels[1].unique and workspace is not None
            and parallel is not None and bool(loop_order) and parallel == loop_order[0]):
        return False
    lattice = probe_lattice(expr, parallel)
    return lattice.full and not lattice.iterators()


def adopt(bindings: list, sink, out, fresh) -> Meet:
    """Turn ``sink``'s growable arrays into arrays the runtime allocates and every
    chunk shares (role ``output_meet``) and add the per-chunk parameters
    (roles ``meet_floor``, ``meet_ceiling``, ``meet_down``, ``meet_reached``); returns
    the Meet the sink and the emitter then use."""
    name = out.var_name
    floor, ceiling, down = (n.Var(fresh(f"{name}_{x}"), I64) for x in ("floor", "ceiling", "down"))
    meet = Meet(floor, ceiling, down, n.Var(fresh(f"{name}_reached"), ptr(I64)),
                *(n.Var(fresh(f"{name}_{x}"), I64) for x in ("full", "step", "below")))
    keys = {param.name: key for key, param in sink.out_params.items()}
    for k, b in enumerate(bindings):
        if b.role == "output_grow" and b.var.name in keys:  # the array itself, not where to publish it
            local = sink.grow_ptrs[keys[b.var.name]]
            bindings[k] = Binding(local, "output_meet", b.tensor, b.level, b.array, storage=b.storage)
    bindings += [Binding(meet.floor, "meet_floor"), Binding(meet.ceiling, "meet_ceiling"),
                 Binding(meet.down, "meet_down"), Binding(meet.reached, "meet_reached")]
    meet.keys = tuple(sink.out_params)
    sink.bind_growable({}, {})
    sink.meet = meet
    return meet


__all__ = ["Meet", "adopt", "applies"]
