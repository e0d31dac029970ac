"""A two-phase sparse statement as one function of phases, for a fused GPU program.

On the CUDA backends a statement whose output is assembled in two phases
(:mod:`.assembly`: a dense first level, then unique compressed ones -- csr,
``dc``, dense-then-csf) normally runs as two kernels with the host between them:
``NAME_count``, an exclusive prefix sum of the row counts on the host, the
allocation of the coordinate and value arrays at their exact sizes, ``NAME_fill``.
A fused program kernel (``spcomp/program_gpu.py``) cannot leave the device in
between, so :func:`phased_function` joins them into one function of
:data:`PHASES` blocks, which the program emitter prints with a grid-wide
barrier after each:

1. the count phase, as lowered (grid-stride over the rows);
2. the scan of the per-row counts, in three steps (a two-level scan): a block
   per chunk of rows (:data:`SCAN_CHUNK` of them, passed by the host) sums
   each compressed level's counts in the chunk, its threads reading
   neighbouring rows (a block reduction); one thread scans the chunk totals
   into chunk starts, writes each level's total to ``needed`` and returns
   :data:`CAPACITY_STATUS` when a total exceeds the capacity the host
   allocated that level's arrays at -- every block then leaves after the
   barrier, nothing is filled, no later statement runs, and the host runs the
   launch again with room for exactly ``needed``; a block per chunk scans its
   rows in place from the chunk's start (a member loop that scans a scalar,
   printed by ``backends/cuda/team.py`` as rounds of ``spc_block_scan``).
   Level ``first``'s row starts are the output ``pos``;
3. the fill phase, as lowered, into arrays of at least the capacity;
4. for an output stored compressed first, lowered as its dense-first
   stand-in (:mod:`.device_compact`): its first level from the row starts
   (the scan then also sums the rows' "has entries" flags).

One thread scans the ``rows / SCAN_CHUNK`` chunk totals.
"""
from __future__ import annotations

import dataclasses

from ..errors import UnsupportedError
from ..ir import nodes as n
from ..ir.build import add
from ..ir.types import I64, ptr
from .assembly import ROW_POS
from .context import Binding
from .device_compact import UNIQUE, FirstLevel, first_kind

# the launch ran out of room for a sparse output's entries: the host runs it again
CAPACITY_STATUS = n.STATUS_NO_ROOM
SCAN_CHUNK = 1024  # rows one block sums, then scans, in the first and last steps of the scan (the host passes it)
PHASES = 5  # blocks of a phased function: count, the scan's three steps, fill
ROWS_ROLE = "rows"          # the number of rows (dense positions above the first compressed level)
CHUNK_ROWS_ROLE = "chunk_rows"  # rows per chunk of the scan: SCAN_CHUNK
CHUNKS_ROLE = "chunks"      # ceil(rows / chunk rows)
CHUNK_SUMS_ROLE = "chunk_sums"  # per compressed level and chunk: its total, then its start
CAPACITY_ROLE = "capacity"  # per compressed level: the entries its arrays were allocated for
NEEDED_ROLE = "needed"      # per compressed level: the entries the count phase found


@dataclasses.dataclass(frozen=True)
class Phased:
    """A two-phase statement as one function: its parameters are the fill's, then
    the rows, the rows per chunk, the chunks, one capacity per compressed level
    (from ``first``), ``needed`` and the chunk sums."""
    function: n.Function
    bindings: list
    first: int   # the first compressed level
    levels: int  # the output's levels
    phases: int = PHASES  # its blocks: one more for an output stored compressed first (device_compact.py)


def phased_function(low, name: str, stored=None) -> Phased:
    """The phases of ``low`` (a two-phase lowering whose output is ``name``) as one
    function; UnsupportedError when the count takes a parameter the fill does not
    (the function has the fill's) or the two name a variable with two types.
    ``stored``: the format the output is stored in when ``low`` writes its dense-first
    stand-in (:mod:`.device_compact`): one more phase writes its first level."""
    plan = low.output.assembly
    module = low.code.module
    count, fill = module.function(plan.count), module.function(plan.fill)
    if not set(count.params) <= set(fill.params):
        raise UnsupportedError(f"output {name}: {count.name} takes parameters {fill.name} does not")
    _same_types(count, fill)
    bindings = list(low.code.bindings)
    first = plan.first
    kind = first_kind(stored) if stored is not None else None
    if stored is not None and (kind is None or first != 1):
        raise UnsupportedError(f"output {name}: format {stored.spec()!r} is not built from a dense-first stand-in")
    if kind is not None:  # the stand-in's row starts are not the output's pos: a row array of its own
        bindings = [dataclasses.replace(b, role=ROW_POS) if b.role == "output" and (b.level, b.array) == (first, "pos")
                    else b for b in bindings]
    per_row = {b.level: b.var for b in bindings
               if b.role == ROW_POS or (b.role == "output" and (b.level, b.array) == (first, "pos"))}
    levels = len(low.inspection.notation.lhs.tensor.format.levels)
    if sorted(per_row) != list(range(first, levels)):
        raise UnsupportedError(f"output {name}: the fill phase does not take every level's row counts")
    taken = {v.name for v in _variables(count) + _variables(fill)}

    def fresh(base: str) -> n.Var:
        k, text = 0, base
        while text in taken:
            k += 1
            text = f"{base}{k}"
        taken.add(text)
        return n.Var(text, I64)
    rows, chunk_rows, chunks = fresh(f"{name}_rows"), fresh(f"{name}_chunk_rows"), fresh(f"{name}_chunks")
    caps = {l: fresh(f"{name}{l + 1}_capacity") for l in range(first, levels)}
    needed = n.Var(fresh(f"{name}_needed").name, ptr(I64))
    sums = n.Var(fresh(f"{name}_chunk_sums").name, ptr(I64))
    extras = [Binding(rows, ROWS_ROLE, name, storage=name), Binding(chunk_rows, CHUNK_ROWS_ROLE, name, storage=name),
              Binding(chunks, CHUNKS_ROLE, name, storage=name)]
    extras += [Binding(caps[l], CAPACITY_ROLE, name, l, storage=name) for l in caps]
    extras += [Binding(needed, NEEDED_ROLE, name, storage=name), Binding(sums, CHUNK_SUMS_ROLE, name, storage=name)]
    top = None
    if kind is not None:
        crd = next(b.var for b in bindings if b.role == "output" and (b.level, b.array) == (first, "crd"))
        top = FirstLevel(kind, name, per_row[first], crd.type, rows, lambda base: fresh(base).name)
        extras += top.bindings()
    flags = (top.flags, per_row[first]) if kind == UNIQUE else None
    scan = _Scan(per_row, rows, chunk_rows, chunks, sums, first, fresh, flags)
    phases = [_phase(count), scan.chunk_totals(), scan.chunk_starts(caps, needed), scan.scan_chunks(), _phase(fill)]
    phases += [top.phase()] if top is not None else []
    doc = (f"{fill.doc}\nthe phases in one launch: count, a two-level prefix sum on the device, fill"
           + (f", {name}'s first level from the row starts" if top is not None else "")
           + " (a grid-wide barrier after each step)")
    fn = n.Function(f"{fill.name}_phased", tuple(fill.params) + tuple(b.var for b in extras),
                    n.Block(tuple(phases) + (n.Return(n.STATUS_OK),)), doc=doc)
    return Phased(fn, bindings + extras, first, levels, len(phases))


def split_phases(stmts: tuple, phases: int = PHASES) -> list:
    """A fused statement block (:func:`spcomp.lower.fuse.fuse` of a phased function:
    a note and loads, then its ``phases`` blocks) as that many blocks, the note
    and loads kept with the count phase."""
    body = list(stmts)
    if len(body) < phases or not all(isinstance(b, n.Block) for b in body[-phases:]):
        raise ValueError(f"a phased statement ends with its {phases} phase blocks")
    count = n.Block(tuple(body[:-phases]) + tuple(body[-phases].body))
    return [count] + body[-phases + 1:]


def _phase(fn: n.Function) -> n.Block:
    """``fn``'s body as a block, its final ``return 0`` dropped."""
    body = list(fn.body.body)
    if body and isinstance(body[-1], n.Return) and body[-1].status == n.STATUS_OK:
        body.pop()
    return n.Block(tuple(body))


class _Scan:
    """The three steps of the two-level scan of the per-row counts (``per_row``:
    compressed level -> its array, the count of row ``q`` at ``[q + 1]``), and of
    the row flags where given (``(flags, counts)``: 1 at ``flags[q + 1]`` when
    ``counts[q + 1]`` is not 0; their chunk sums after the levels')."""

    def __init__(self, per_row: dict, rows, chunk_rows, chunks, sums, first: int, fresh, flags=None):
        self.per_row, self.rows, self.chunk_rows, self.chunks = per_row, rows, chunk_rows, chunks
        self.sums, self.first = sums, first
        self.fresh = fresh
        self.flags = flags
        # what each step scans: slot of the chunk sums -> array; the flags first, so
        # that step 1 reads the counts they flag before scanning them in place
        self.scanned = dict(per_row) if flags is None else {first + len(per_row): flags[0], **per_row}

    def _sum_at(self, l: int, c) -> n.Expr:
        return add(n.Binary("*", n.i64(l - self.first), self.chunks), c)

    def _over_chunk(self, c, body) -> n.For:
        """``for q in chunk c's rows: body(q)``, split among the block's threads
        (neighbouring threads read neighbouring rows)."""
        q = self.fresh("q")
        start = n.Binary("*", c, self.chunk_rows)
        end = n.Binary("min", add(start, self.chunk_rows), self.rows)
        return n.For(q, start, end, n.Block(tuple(body(q))), parallel="gpu-thread")

    def _block_per_chunk(self, note: str, per_level) -> n.Block:
        c = self.fresh("chunk")
        inner = [s for l, arr in self.scanned.items() for s in per_level(l, arr, c)]
        return n.Block((n.Comment(note), n.For(c, n.i64(0), self.chunks, n.Block(tuple(inner)), parallel="gpu-block")))

    def _addend(self, arr, q) -> n.Expr:
        """Row ``q``'s count (its flag, for the flags' array)."""
        if self.flags is not None and arr is self.flags[0]:
            count = n.Cast(n.Load(self.flags[1], add(q, n.i64(1))), I64)
            return n.Select(n.Binary("!=", count, n.i64(0)), n.i64(1), n.i64(0))
        return n.Cast(n.Load(arr, add(q, n.i64(1))), I64)

    def chunk_totals(self) -> n.Block:
        """Step 1, a block per chunk: its rows' counts summed (the block's threads
        read neighbouring rows) into the chunk sums."""
        def level(l, arr, c):
            total = self.fresh(f"chunk_total{l + 1}")
            return [n.Declare(total, n.i64(0)),
                    self._over_chunk(c, lambda q: [n.Assign(total, add(total, self._addend(arr, q)))]),
                    n.Store(self.sums, self._sum_at(l, c), total)]
        return self._block_per_chunk("prefix sum of the row counts, step 1: each chunk's total", level)

    def chunk_starts(self, caps: dict, needed) -> n.Block:
        """Step 2, one thread: chunk totals -> chunk starts (exclusive); each level's
        total to ``needed`` (the flags' after them); CAPACITY_STATUS when one exceeds
        its capacity."""
        out: list = [n.Comment("prefix sum of the row counts, step 2 (one thread): the chunks' starts, "
                               "each level's total")]
        totals = {}
        for l in self.scanned:
            total, c, v = self.fresh(f"total{l + 1}"), self.fresh("chunk"), self.fresh("chunk_sum")
            at = self._sum_at(l, c)
            step = (n.Declare(v, n.Load(self.sums, at)), n.Store(self.sums, at, total),
                    n.Assign(total, add(total, v)))
            out += [n.Declare(total, n.i64(0)), n.For(c, n.i64(0), self.chunks, n.Block(step)),
                    n.Store(needed, n.i64(l - self.first), total)]
            totals[l] = total
        for l, total in totals.items():
            if l in caps:
                out.append(n.If(n.Binary(">", total, caps[l]), n.Block((n.Return(CAPACITY_STATUS),))))
        return n.Block(tuple(out))

    def scan_chunks(self) -> n.Block:
        """Step 3, a block per chunk: its rows' counts -> inclusive row ends in place
        (at ``[q + 1]``), from the chunk's start: a scan across the block's threads
        (``backends/cuda/team.py``), the flags' first so that they read the counts
        before those are overwritten."""
        def level(l, arr, c):
            running = self.fresh(f"row_end{l + 1}")
            return [n.Declare(running, n.Load(self.sums, self._sum_at(l, c))),
                    self._over_chunk(c, lambda q: [
                        n.Assign(running, add(running, self._addend(arr, q))),
                        n.Store(arr, add(q, n.i64(1)), n.Cast(running, arr.type.elem))])]
        return self._block_per_chunk("prefix sum of the row counts, step 3: each chunk scanned from its start", level)


def _variables(fn: n.Function) -> list:
    seen: dict = {p.name: p for p in fn.params}
    for x in n.walk(fn.body):
        if isinstance(x, n.Var):
            seen.setdefault(x.name, x)
    return list(seen.values())


def _same_types(count: n.Function, fill: n.Function) -> None:
    """UnsupportedError when a name stands for variables of two types in the two
    phases (the joined function declares each in its own block, but the program
    fuser renames by name)."""
    types = {}
    for fn in (count, fill):
        for x in n.walk(fn.body):
            if isinstance(x, n.Var):
                if types.setdefault(x.name, x.type) != x.type:
                    raise UnsupportedError(f"the two phases of {fill.name} name {x.name} with two types")


__all__ = ["CAPACITY_STATUS", "SCAN_CHUNK", "PHASES", "Phased", "phased_function", "split_phases", "ROWS_ROLE",
           "CHUNK_ROWS_ROLE", "CHUNKS_ROLE", "CAPACITY_ROLE", "NEEDED_ROLE", "CHUNK_SUMS_ROLE"]
