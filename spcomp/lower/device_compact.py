"""A sparse output stored compressed first, assembled inside a fused GPU launch.

A two-phase output (:mod:`.assembly`) needs a dense first level: its rows are
the parallel loop, and each row's count lands at ``pos[row + 1]``. An output
stored compressed first -- ``dcsr`` (``cc``), ``csf`` (``ccc``), a 2-d ``coo``
(``c(nonunique) q``) -- is lowered with :func:`spcomp.lower.outputs.rows_first`'s
stand-in instead (csr, ``dcc``): the same entries in the same order, with a row
of the dense level for every coordinate of the first. Inside the launch
(:mod:`.device_scan`) the stand-in is counted, scanned and filled as usual; the
levels below the first are the output's own arrays, and one more phase, a
grid-stride loop over the rows, turns the stand-in's row starts into the
output's first level (:class:`FirstLevel`):

* unique levels (dcsr, csf): the scan also sums a flag per row, "the row has
  entries", so ``flags[q]`` is the number of non-empty rows before ``q``; a
  non-empty row ``q`` writes its coordinate ``crd0[flags[q]] = q`` and its end
  ``pos1[flags[q] + 1]``; ``pos0 = [0, flags[rows]]``;
* a coordinate list (2-d coo): every entry ``p`` of row ``q`` gets
  ``crd0[p] = q``; ``pos0 = [0, entries]``.
"""
from __future__ import annotations

import dataclasses

from ..formats.compressed import Compressed
from ..formats.singleton import Singleton
from ..ir import nodes as n
from ..ir.build import add
from ..ir.types import I64
from .context import Binding
from .outputs import rows_first

FLAGS_ROLE = "row_flags"  # per row, 1 when it has entries; the scan turns them into its first level's positions
UNIQUE, COORDINATES = "unique", "coordinates"


def first_kind(fmt) -> str | None:
    """How an output of ``fmt`` stored compressed first is built from its stand-in:
    :data:`UNIQUE` (every level unique compressed, in mode order: dcsr, csf),
    :data:`COORDINATES` (a 2-d coo), or None (not one of these)."""
    if rows_first(fmt) is None:
        return None
    levels = fmt.levels
    if all(type(l) is Compressed and l.unique for l in levels):
        return UNIQUE
    if (len(levels) == 2 and type(levels[0]) is Compressed and not levels[0].unique
            and type(levels[1]) is Singleton and levels[1].unique):
        return COORDINATES
    return None


def stand_in(fmt):
    """The dense-first format a statement writing ``fmt`` is lowered with (csr for
    dcsr and 2-d coo, ``dcc`` for csf), or None where :func:`first_kind` is None."""
    return rows_first(fmt) if first_kind(fmt) is not None else None


@dataclasses.dataclass
class FirstLevel:
    """The output's own first-level arrays and the phase that writes them.

    ``starts``: the stand-in's row starts of its level 1 (after the scan: row ``q``'s
    entries at ``[starts[q], starts[q + 1])``), ``rows`` their count, ``fresh`` a
    name maker of the phased function."""
    kind: str
    name: str
    starts: n.Var
    crd_type: object
    rows: n.Var
    fresh: object

    def __post_init__(self):
        index = self.starts.type
        self.pos0 = n.Var(self.fresh(f"{self.name}1_pos"), index)
        self.crd0 = n.Var(self.fresh(f"{self.name}1_crd"), self.crd_type)
        self.pos1 = n.Var(self.fresh(f"{self.name}2_pos"), index) if self.kind == UNIQUE else None
        self.flags = n.Var(self.fresh(f"{self.name}_row_flags"), index) if self.kind == UNIQUE else None

    def bindings(self) -> list:
        """The extra parameters: the output's level-0 ``pos`` and ``crd`` (and level 1's
        ``pos``, for unique levels) as outputs, then the row flags."""
        out = [Binding(self.pos0, "output", self.name, 0, "pos", storage=self.name),
               Binding(self.crd0, "output", self.name, 0, "crd", storage=self.name)]
        if self.kind == UNIQUE:
            out += [Binding(self.pos1, "output", self.name, 1, "pos", storage=self.name),
                    Binding(self.flags, FLAGS_ROLE, self.name, storage=self.name)]
        return out

    def phase(self) -> n.Block:
        """The grid-stride loop over the rows that writes the first level."""
        q = n.Var(self.fresh("q"), I64)
        start, end = n.Var(self.fresh("row_start"), I64), n.Var(self.fresh("row_end"), I64)
        body = [n.Declare(start, _load(self.starts, q)), n.Declare(end, _load(self.starts, add(q, n.i64(1))))]
        if self.kind == UNIQUE:
            k = n.Var(self.fresh("row_entry"), I64)
            body.append(n.If(n.Binary(">", end, start), n.Block((
                n.Declare(k, _load(self.flags, q)),
                _store(self.crd0, k, q),
                _store(self.pos1, add(k, n.i64(1)), end)))))
            total = _load(self.flags, self.rows)  # non-empty rows
        else:
            p = n.Var(self.fresh("p"), I64)
            body.append(n.For(p, start, end, n.Block((_store(self.crd0, p, q),))))
            total = _load(self.starts, self.rows)  # entries
        body.append(n.If(n.Binary("==", q, n.i64(0)), n.Block((_store(self.pos0, n.i64(1), total),))))
        note = ("the first level from the row starts: each non-empty row's coordinate and end" if self.kind == UNIQUE
                else "the first level from the row starts: each entry's row")
        return n.Block((n.Comment(note), n.For(q, n.i64(0), self.rows, n.Block(tuple(body)), parallel="gpu-thread")))


def _load(arr: n.Var, at) -> n.Expr:
    return n.Cast(n.Load(arr, at), I64)


def _store(arr: n.Var, at, value) -> n.Store:
    return n.Store(arr, at, n.Cast(value, arr.type.elem))


__all__ = ["FLAGS_ROLE", "UNIQUE", "COORDINATES", "first_kind", "stand_in", "FirstLevel"]
