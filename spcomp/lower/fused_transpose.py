"""A fused run's copy of a sparse temporary in another mode order, made inside the function.

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
that). A temporary of order 3 or more is copied as a sorted coordinate list
instead (:func:`sorted_copy_block`: a stable counting sort per level but the last).
The copy's arrays are the function's own heap arrays, freed after the reader.
:func:`walk_entries` also walks packed-block levels (their used slots only): a
packed temporary's copy is gathered and sorted by ``fused_diagonal.copy_read``.
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


@dataclasses.dataclass
class SortedCopy:
    """A copy stored as a coordinate list (``c(nonunique) q(nonunique) ... q``) in
    another mode order: its arrays (``target``: (level, array) -> the reader's
    parameter variable, now a local), the writer's (``source``), the size of each
    of the writer's levels' dimensions (``sizes``) and, per level of the copy, the
    writer's level that holds its coordinate (``key``); ``unordered``: the writer has
    an unordered level, so its walk is in no order and the copy is sorted by every level."""
    target: dict
    source: dict
    sizes: list
    key: list
    unordered: bool = False
    packed: dict = dataclasses.field(default_factory=dict)  # writer level -> its PackedBlock (walk_entries)

    @property
    def arrays(self) -> list:
        return list(self.target.values())


def walk_entries(c: SortedCopy, level: int, parent, coords: list, body, names):
    """A loop over the writer's entries in storage order (each level dense, bitmap,
    compressed, singleton or packed-block, told by its arrays; ``c.packed`` holds a packed level's
    B and K), ``body(coords, p)`` run at each with its coordinates (per writer level)
    and its position ``p``."""
    if level == len(c.sizes):
        return body(coords, parent)
    if level in c.packed:
        return _walk_packed(c, level, parent, coords, body, names)
    pos, crd = c.source.get((level, "pos")), c.source.get((level, "crd"))
    if (level, "map") in c.source:  # bitmap: positions parent * N + coordinate, those whose byte is set
        x, p = n.Var(names("copy_c"), I64), n.Var(names("copy_p"), I64)
        inner = walk_entries(c, level + 1, p, coords + [x], body, names)
        return n.For(x, n.i64(0), c.sizes[level], n.Block((
            n.Declare(p, n.Binary("+", n.Binary("*", parent, c.sizes[level]), x)),
            n.If(n.Binary("!=", n.Load(c.source[(level, "map")], p), n.const(0, c.source[(level, "map")].type.elem)),
                 n.Block((inner,))))))
    if crd is None:  # dense: positions parent * N + coordinate
        x = n.Var(names("copy_c"), I64)
        at = n.Binary("+", n.Binary("*", parent, c.sizes[level]), x)
        p = n.Var(names("copy_p"), I64)
        inner = walk_entries(c, level + 1, p, coords + [x], body, names)
        return n.For(x, n.i64(0), c.sizes[level], n.Block((n.Declare(p, at), inner)))
    x = n.Var(names("copy_c"), I64)
    if pos is None:  # singleton: the parent's position, one coordinate
        return n.Block((n.Declare(x, _i64(n.Load(crd, parent))),
                        walk_entries(c, level + 1, parent, coords + [x], body, names)))
    p = n.Var(names("copy_p"), I64)
    return n.For(p, _i64(n.Load(pos, parent)), _i64(n.Load(pos, n.Binary("+", parent, n.i64(1)))), n.Block((
        n.Declare(x, _i64(n.Load(crd, p))), walk_entries(c, level + 1, p, coords + [x], body, names))))


def _walk_packed(c: SortedCopy, level: int, parent, coords: list, body, names):
    """:func:`walk_entries` at a packed-block level: under ``parent`` each block ``b``
    owns the K slots from ``(parent * nb + b) * K``, the first ``count`` of them used,
    each holding its coordinate within the block (unused slots are skipped)."""
    packed, size = c.packed[level], c.sizes[level]
    count, crd = c.source[(level, "count")], c.source[(level, "crd")]
    b, s, tile, p, x = (n.Var(names(v), I64) for v in ("copy_block", "copy_s", "copy_tile", "copy_p", "copy_c"))
    blocks = packed.num_blocks_expr(size)
    inner = walk_entries(c, level + 1, p, coords + [x], body, names)
    return n.For(b, n.i64(0), blocks, n.Block((
        n.Declare(tile, n.Binary("+", n.Binary("*", parent, blocks), b)),
        n.For(s, n.i64(0), _i64(n.Load(count, tile)), n.Block((
            n.Declare(p, n.Binary("+", n.Binary("*", tile, n.i64(packed.K)), s)),
            n.Declare(x, n.Binary("+", n.Binary("*", b, packed.block_size_expr(size)), _i64(n.Load(crd, p)))),
            inner))))))


def entry_count(c: SortedCopy):
    """The writer's entry count: its last level's positions (each level's from its
    parent's; a packed level's are all its slots, used or not, and a bitmap's all its
    coordinates: bounds)."""
    count = n.i64(1)
    for level, size in enumerate(c.sizes):
        pos = c.source.get((level, "pos"))
        if level in c.packed:
            count = n.Binary("*", n.Binary("*", count, c.packed[level].num_blocks_expr(size)),
                             n.i64(c.packed[level].K))
        elif (level, "crd") not in c.source:
            count = n.Binary("*", count, size)
        elif pos is not None:
            count = _i64(n.Load(pos, count))
    return count


def sort_pass(key, size, src, dst, count, entries, names) -> list:
    """Statements that stably counting-sort the permutation ``src`` (``entries`` long)
    by ``key[src[e]]`` (coordinates below ``size``) into ``dst``, counting in
    ``count`` (``size + 1`` zeroed entries, freed at the end): count, scan, place."""
    e, x, at, q = (n.Var(names(v), I64) for v in ("copy_e", "copy_x", "copy_at", "copy_q"))
    return [
        n.For(e, n.i64(0), entries, n.Block((
            n.Declare(x, n.Binary("+", n.Load(key, n.Load(src, e)), n.i64(1))),
            n.Store(count, x, n.Binary("+", n.Load(count, x), n.i64(1)))))),
        n.For(q, n.i64(0), size, n.Block((
            n.Store(count, n.Binary("+", q, n.i64(1)),
                    n.Binary("+", n.Load(count, n.Binary("+", q, n.i64(1))), n.Load(count, q))),))),
        n.For(e, n.i64(0), entries, n.Block((
            n.Declare(x, n.Load(key, n.Load(src, e))),
            n.Declare(at, n.Load(count, x)),
            n.Store(count, x, n.Binary("+", at, n.i64(1))),
            n.Store(dst, at, n.Load(src, e))))),
        n.Free(count)]


def sorted_copy_block(c: SortedCopy, names) -> list:
    """Statements that allocate and fill ``c``'s arrays: the writer's entries walked
    once into a coordinate array per level (at their positions), then stably sorted
    by each of the copy's levels but the last, last to first (a counting sort each:
    count, scan, place a permutation), then laid out in that order. Entries that agree
    on every level but the copy's last come out in the writer's order, which is
    ascending in that level's coordinate, so the list is sorted. Every temporary is
    freed before the reader runs; a failed allocation frees what was made before it."""
    ndim = len(c.sizes)
    nnz = n.Var(names("copy_nnz"), I64)
    coords = [n.Var(names(f"copy_key{level}"), ptr(I64)) for level in range(ndim)]
    perm = [n.Var(names("copy_order"), ptr(I64)), n.Var(names("copy_order"), ptr(I64))]
    live: list = []
    out = [n.Comment("the temporary laid out as a sorted coordinate list here (counting sorts), freed after its "
                     "reader"), n.Declare(nnz, entry_count(c))]

    def alloc(var, size, zero=False):
        out.append(n.Allocate(var, n.Binary("max", size, n.i64(1)), zero=zero, free=tuple(live)))
        live.append(var)
    for var in coords + perm:
        alloc(var, nnz)
    out.append(walk_entries(c, 0, n.i64(0), [], lambda xs, p: n.Block(tuple(
        n.Store(coords[level], p, x) for level, x in enumerate(xs))), names))
    e = n.Var(names("copy_e"), I64)
    out.append(n.For(e, n.i64(0), nnz, n.Block((n.Store(perm[0], e, e),))))
    current = 0
    for level in reversed(range(ndim if c.unordered else ndim - 1)):  # stable sorts, last (but one) to first
        key, size = coords[c.key[level]], c.sizes[c.key[level]]
        count = n.Var(names("copy_count"), ptr(I64))
        alloc(count, n.Binary("+", size, n.i64(1)), zero=True)
        out += sort_pass(key, size, perm[current], perm[1 - current], count, nnz, names)
        live.remove(count)
        current = 1 - current
    made = []
    pos = c.target[(0, "pos")]
    out.append(n.Allocate(pos, n.i64(2), free=tuple(live)))
    made.append(pos)
    for level in range(ndim):
        crd = c.target[(level, "crd")]
        out.append(n.Allocate(crd, n.Binary("max", nnz, n.i64(1)), free=tuple(live + made)))
        made.append(crd)
    vals = c.target[(-1, "vals")]
    out.append(n.Allocate(vals, n.Binary("max", nnz, n.i64(1)), free=tuple(live + made)))
    pos_t = pos.type.elem
    out += [n.Store(pos, n.i64(0), n.const(0, pos_t)),
            n.Store(pos, n.i64(1), n.Cast(nnz, pos_t) if pos_t != I64 else nnz)]
    src, x = perm[current], n.Var(names("copy_x"), I64)
    fill = [n.Declare(x, n.Load(src, e))]
    for level in range(ndim):
        crd = c.target[(level, "crd")]
        value = n.Load(coords[c.key[level]], x)
        fill.append(n.Store(crd, e, n.Cast(value, crd.type.elem) if crd.type.elem != I64 else value))
    fill.append(n.Store(vals, e, n.Load(c.source[(-1, "vals")], x)))
    out.append(n.For(e, n.i64(0), nnz, n.Block(tuple(fill))))
    out += [n.Free(v) for v in live]
    return out


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


def transpose_function(name: str, index, value) -> n.Module:
    """A function of its own making :func:`transpose_block`'s copy of a csr-like
    temporary (``index``, ``value``: its IR types) between two phases of a team call
    (``runtime/program_team.py``):
    ``int32 NAME(pos, crd, vals, rows, cols, pos_out, crd_out, vals_out)``, the copy's
    arrays left in the three slots (the caller frees them), status 2 when an
    allocation fails (nothing left allocated)."""
    count = iter(range(1 << 30))

    def names(base: str) -> str:
        return f"{base}_{next(count)}"
    src = {(1, "pos"): n.Var("pos", ptr(index)), (1, "crd"): n.Var("crd", ptr(index)),
           (-1, "vals"): n.Var("vals", ptr(value))}
    rows, cols = n.Var("rows", I64), n.Var("cols", I64)
    copy = TransposedCopy(n.Var("copy_pos", ptr(index)), n.Var("copy_crd", ptr(index)), n.Var("copy_vals", ptr(value)),
                          src, rows, cols)
    slots = [n.Var(f"{a.name}_out", ptr(a.type)) for a in copy.arrays]
    body = transpose_block(copy, names) + [n.Store(s, n.i64(0), a) for s, a in zip(slots, copy.arrays)] + [n.Return()]
    fn = n.Function(name, (src[(1, "pos")], src[(1, "crd")], src[(-1, "vals")], rows, cols, *slots), n.Block(tuple(body)),
                    doc="a csr-like temporary transposed between two phases of a team call")
    return n.Module((fn,), name)
