"""A fused run's transposed copy of a 2-d sparse temporary, made inside the function.

A statement that reads a temporary against its storage order (``C[k,i] = T[i,k]``
with ``T`` csr) reads a copy stored the other way (``T_T``, format ``dc:1,0``: a
``pos`` over the columns, the rows as coordinates). For a temporary written
earlier in the same fused function, :func:`transpose_block` builds that copy right
there, from the writer's arrays, by a counting sort: count each column's entries,
prefix-sum them into ``pos``, then walk the entries row by row and drop each into
the next free slot of its column (so each column's rows come out ascending). The
writer may store ``T`` as ``dc`` (csr, or csc read by rows: its "rows" are then the
columns), ``cc`` (dcsr: rows walked through its stored row coordinates) or
``c q`` (coo: one row coordinate per entry), each with its top level ordered; the
copy is always ``dc`` (``spcomp.program_copies`` asks the reader's lowering for
that). The copy's three arrays are the function's own heap arrays, freed after the reader.
"""
from __future__ import annotations

import dataclasses

from ..ir import nodes as n
from ..ir.types import I64, ptr


@dataclasses.dataclass
class TransposedCopy:
    """The arrays of one copy (the reader's parameter variables, now locals) and
    what they are made from: the writer's arrays (``source``: (level, array) ->
    pointer expression; ``(0, "crd")`` present for a compressed top level, ``(1, "pos")``
    absent for a singleton second level) and the temporary's row and column counts
    in the writer's storage order."""
    pos: n.Var
    crd: n.Var
    vals: n.Var
    source: dict
    rows: object
    cols: object

    @property
    def arrays(self) -> list:
        return [self.pos, self.crd, self.vals]


def _i64(e):
    return e if e.type == I64 else n.Cast(e, I64)


def _entries(c: TransposedCopy, row, p, body: tuple, names):
    """``(nnz, loop)``: the writer's entry count, and a loop over its entries in
    storage order that runs ``body`` with ``row`` (its row) and ``p`` (its position)."""
    src = c.source
    if (0, "crd") not in src:  # dc: rows 0..rows, each row's entries pos[row]..pos[row + 1]
        nnz = _i64(n.Load(src[(1, "pos")], c.rows))
        return nnz, n.For(row, n.i64(0), c.rows, n.Block((
            n.For(p, _i64(n.Load(src[(1, "pos")], row)),
                  _i64(n.Load(src[(1, "pos")], n.Binary("+", row, n.i64(1)))), n.Block(body)),)))
    tops = _i64(n.Load(src[(0, "pos")], n.i64(1)))
    if (1, "pos") not in src:  # c q (coo): one row coordinate per entry
        return tops, n.For(p, n.i64(0), tops, n.Block((n.Declare(row, _i64(n.Load(src[(0, "crd")], p))),) + body))
    q = n.Var(names("copy_top"), I64)  # cc (dcsr): the stored rows, each one's entries below it
    nnz = _i64(n.Load(src[(1, "pos")], tops))
    return nnz, n.For(q, n.i64(0), tops, n.Block((
        n.Declare(row, _i64(n.Load(src[(0, "crd")], q))),
        n.For(p, _i64(n.Load(src[(1, "pos")], q)),
              _i64(n.Load(src[(1, "pos")], n.Binary("+", q, n.i64(1)))), n.Block(body)))))


def transpose_block(c: TransposedCopy, names) -> list:
    """Statements that allocate and fill ``c``'s arrays (``names`` makes fresh
    variable names). An allocation that fails frees the copy's arrays made before it."""
    nnz, col, row, p, q, at = (n.Var(names(x), I64) for x in ("copy_nnz", "copy_col", "copy_row", "copy_p",
                                                               "copy_q", "copy_at"))
    pos_t, crd_t = c.pos.type.elem, c.crd.type.elem
    src_crd, src_vals = c.source[(1, "crd")], c.source[(-1, "vals")]
    nxt = n.Var(names("copy_next"), ptr(I64))
    one = n.const(1, pos_t)
    count = n.For(p, n.i64(0), nnz, n.Block((
        n.Declare(col, n.Binary("+", _i64(n.Load(src_crd, p)), n.i64(1))),
        n.Store(c.pos, col, n.Binary("+", n.Load(c.pos, col), one)))))
    scan = n.For(q, n.i64(0), c.cols, n.Block((
        n.Store(c.pos, n.Binary("+", q, n.i64(1)),
                n.Binary("+", n.Load(c.pos, n.Binary("+", q, n.i64(1))), n.Load(c.pos, q))),
        n.Store(nxt, q, _i64(n.Load(c.pos, q))))))
    total, place = _entries(c, row, p, (
        n.Declare(col, _i64(n.Load(src_crd, p))),
        n.Declare(at, n.Load(nxt, col)),
        n.Store(nxt, col, n.Binary("+", at, n.i64(1))),
        n.Store(c.crd, at, n.Cast(row, crd_t) if crd_t != I64 else row),
        n.Store(c.vals, at, n.Load(src_vals, p))), names)
    return [
        n.Comment(f"{c.vals.name}: the temporary transposed here (count per column, scan, place), "
                  "freed after its reader"),
        n.Declare(nnz, total),
        n.Allocate(c.pos, n.Binary("+", c.cols, n.i64(1)), zero=True),
        n.Allocate(c.crd, n.Binary("max", nnz, n.i64(1)), free=(c.pos,)),
        n.Allocate(c.vals, n.Binary("max", nnz, n.i64(1)), free=(c.pos, c.crd)),
        n.Allocate(nxt, n.Binary("max", c.cols, n.i64(1)), free=(c.pos, c.crd, c.vals)),
        count, scan, place, n.Free(nxt),
    ]


def free_on_every_exit(stmts: list, arrays: list) -> list:
    """``stmts`` (a reader's block) with ``arrays`` freed wherever it may leave early:
    before an error return, at an interrupt poll and on a failed allocation or
    reallocation (a reader's growing output)."""
    def go(s):
        if isinstance(s, n.Return) and s.status != n.STATUS_OK:
            return n.Block(tuple(n.Free(a) for a in arrays) + (s,))
        if isinstance(s, (n.PollInterrupt, n.Allocate, n.Reallocate)):
            return dataclasses.replace(s, free=tuple(s.free) + tuple(arrays))
        if isinstance(s, n.Block):
            return n.Block(tuple(go(x) for x in s.body))
        if isinstance(s, (n.For, n.While)):
            return dataclasses.replace(s, body=go(s.body))
        if isinstance(s, n.If):
            return dataclasses.replace(s, then=go(s.then),
                                       otherwise=go(s.otherwise) if s.otherwise is not None else None)
        return s
    return [go(s) for s in stmts]
