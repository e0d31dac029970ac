"""A fused run's diagonal of a sparse temporary (``T[k,k]``), made inside the function.

A statement that repeats an index on a sparse tensor reads a *diagonal storage*
(``lower/diagonal.py``): ``T_diag[k] = T[k,k]``, its levels those of ``T``'s
dimensions kept (each index keeps its first dimension), in ``T``'s storage order,
a dense level staying dense and any other made compressed. For a temporary its
own fused run wrote, :func:`diagonal_block` builds that storage right there from
the writer's arrays in one pass: walk ``T``'s entries in storage order
(``fused_transpose.walk_entries``), keep those whose coordinates agree on every
repeated index, and drop each into the diagonal's levels -- a dense level at
``parent * N + coordinate``, a compressed one opening a new position when its
parent position or its coordinate changes (counted per parent, prefix-summed
into ``pos`` afterwards). That one pass is in order when the asked levels hold
the indices in the order each first comes in ``T``'s storage order (always so
for a diagonal of order 1): the walk is sorted by the storage-order coordinates,
and the kept entries agree on each repeated index. The arrays are the function's own, freed
after the reader. A reader that asks for the diagonal in another mode order (a
transposed copy of it, ``Z[i,j] = T[j,i,i]`` into a csr ``Z``), or a ``T`` whose
storage order does not meet the diagonal's entries in its order (or with an
unordered level), gets the kept
entries gathered into a coordinate list first, stably counting-sorted by each of
the asked levels, last to first, and then dropped into those levels the same way.
The same placing lays out a stand-in in its declared levels (:func:`expand_read`):
a bitmap level as a dense one with its byte set, a packed-block level (blocked ELL)
by the next slot of the entry's block, ``STATUS_PACKED_OVERFLOW`` when its K are taken.
"""
from __future__ import annotations

import dataclasses

from ..formats import Compressed, Dense, PackedBlock, Singleton
from ..formats.bitmap import Bitmap
from ..ir import nodes as n
from ..ir.types import I64, ptr
from .diagonal import Diagonal
from .fused_transpose import entry_count, sort_pass, walk_entries


def walkable(src) -> bool:
    """Whether ``fused_transpose.walk_entries`` walks a tensor stored ``src``: unblocked,
    every level dense, bitmap, compressed, singleton or packed-block (ordered or not),
    the top one not a singleton."""
    return (src.blocks is None and bool(src.levels) and type(src.levels[0]) is not Singleton
            and all(type(lvl) in (Dense, Bitmap, Compressed, Singleton, PackedBlock) for lvl in src.levels))


def placeable(fmt) -> bool:
    """Whether :class:`_Levels` fills storage ``fmt``: unblocked, of dense, bitmap,
    compressed (unique or not), singleton and packed-block levels (a block past its
    K slots returns ``STATUS_PACKED_OVERFLOW``), the top one not a singleton."""
    return (fmt.blocks is None and bool(fmt.levels) and type(fmt.levels[0]) is not Singleton
            and all(type(lvl) in (Dense, Bitmap, Compressed, Singleton, PackedBlock) for lvl in fmt.levels))


def buildable(diag: Diagonal, fmt) -> bool:
    """Whether :func:`diagonal_block` can build ``diag`` stored ``fmt`` (its own
    format, or that of a transposed copy of it) from its operand's arrays
    (:func:`walkable`, :func:`placeable`)."""
    return walkable(diag.operand_format) and placeable(fmt)


def diagonal_storages(low) -> list:
    """``(storage read, diagonal storage, format)`` for each way a lowering reads a
    diagonal: the diagonal storage itself (in its own format), or a transposed copy
    of it (in that copy's)."""
    ops = low.operands
    read = {b.storage for b in low.code.bindings if b.role == "input"}
    return [(storage, op, fmt) for storage, (op, fmt) in ops.transposes.items()
            if op in ops.diagonals and storage in read] + \
        [(storage, storage, d.format) for storage, d in ops.diagonals.items() if storage in read]


@dataclasses.dataclass(frozen=True)
class DiagonalRead:
    """A reader's diagonal storage of a temporary its run wrote, as ``lower.fuse.fuse``
    takes it: the ``writer``'s place in the run, the ``tensor``, per writer level the
    index of its dimension, the writer's name and the reader's (``levels``), and the
    writer level whose coordinate it must equal (``first``: itself where it comes
    first), per level of the storage the writer level whose coordinate it holds
    (``kept``) and its kind (``kinds``: :func:`level_kind`), whether one walk of the
    writer's entries meets them in the storage's order (``in_order``), per writer
    level its PackedBlock where it is one (``packed``, else None), and per level of
    the storage the same (``placed``: a blocked ELL laid out by :func:`expand_read`). A transposed copy
    is one with no repeated index (:func:`copy_read`), a stand-in laid out in its
    declared levels one level for level (:func:`expand_read`)."""
    writer: int
    tensor: str
    levels: tuple
    first: tuple
    kept: tuple
    kinds: tuple
    in_order: bool
    packed: tuple = ()
    placed: tuple = ()  # per storage level its PackedBlock where it fills one (expand_read), else None


def level_kind(lvl) -> str:
    """How :class:`_Levels` fills a level: "dense", "bitmap" (placed as a dense one,
    its byte set), "packed" (a slot of its block per new coordinate under its parent),
    "compressed" (a position per new coordinate under its parent),
    "repeated" (nonunique: a position per entry) or "singleton"."""
    if type(lvl) is Singleton:
        return "singleton"
    if type(lvl) is Bitmap:
        return "bitmap"
    if type(lvl) is PackedBlock:
        return "packed"
    if type(lvl) is Compressed:
        return "compressed" if lvl.unique else "repeated"
    return "dense"


def _packed_levels(src) -> tuple:
    return tuple(lvl if type(lvl) is PackedBlock else None for lvl in src.levels)


def copy_read(writer: int, tensor: str, src, indices: list, written: list, fmt) -> DiagonalRead:
    """The :class:`DiagonalRead` of a copy of ``tensor`` (stored ``src``, written by the
    run's statement ``writer``) stored ``fmt``, another mode order (``indices``,
    ``written``: the reader's and the writer's index name per dimension): every entry
    kept, so :func:`diagonal_block` gathers, sorts and places them all."""
    kept = tuple(src.order.index(d) for d in fmt.order)
    return DiagonalRead(writer, tensor, tuple((written[d], indices[d]) for d in src.order),
                        tuple(range(len(src.order))), kept, tuple(level_kind(lvl) for lvl in fmt.levels),
                        kept == tuple(range(len(kept))) and all(lvl.ordered for lvl in src.levels),
                        _packed_levels(src))


def expand_read(writer: int, tensor: str, stand_in, indices: list, written: list, fmt) -> DiagonalRead:
    """The :class:`DiagonalRead` that lays out ``tensor``, assembled by the run's
    statement ``writer`` in ``stand_in`` (``lower.outputs.assembled_format``: its dense
    levels below sparse ones stored compressed), in its declared ``fmt``: level for
    level (the same mode order and blocks), in one walk (the stand-in's entries are
    unique and in storage order), each dense level's block zero-filled. A level's
    size is its index's (``indices``, ``written``: the reader's and the writer's
    index name per dimension; ``i_o`` for a blocked one's outer level), or the block."""
    def name(names, d, part):
        return fmt.blocks[d] if part == "inner" else names[d] + ("_o" if part == "outer" else "")
    levels = tuple((name(written, d, part), name(indices, d, part)) for d, part in fmt.level_map())
    ident = tuple(range(len(levels)))
    return DiagonalRead(writer, tensor, levels, ident, ident, tuple(level_kind(lvl) for lvl in fmt.levels),
                        all(lvl.ordered for lvl in stand_in.levels), _packed_levels(stand_in), _packed_levels(fmt))


def unblock_read(writer: int, tensor: str, stand_in, indices: list, written: list, fmt) -> DiagonalRead:
    """The :class:`DiagonalRead` that lays out ``tensor``, assembled by the run's
    statement ``writer`` in a blocked ``stand_in`` (an operand's blocks:
    ``lower.blocked.output_in_blocks``), in the unblocked ``fmt`` (its declared
    format, or a copy's in another mode order): the stand-in's entries walked in its
    levels (``i_o``, ..., ``i_i``), each dimension's coordinate ``outer * block +
    inner``, gathered, sorted by ``fmt``'s levels and placed."""
    where = {part_dim: level for level, part_dim in enumerate(stand_in.level_map())}
    levels = tuple((stand_in.blocks[d] if part == "inner" else written[d] + ("_o" if part == "outer" else ""),
                    stand_in.blocks[d] if part == "inner" else indices[d] + ("_o" if part == "outer" else ""))
                   for d, part in stand_in.level_map())
    kept = tuple((where[(d, "outer")], where[(d, "inner")], stand_in.blocks[d]) if (d, "outer") in where
                 else where[(d, "whole")] for d in fmt.order)
    return DiagonalRead(writer, tensor, levels, tuple(range(len(levels))), kept,
                        tuple(level_kind(lvl) for lvl in fmt.levels), False, _packed_levels(stand_in.level_view()),
                        _packed_levels(fmt))


def diagonal_read(writer: int, diag: Diagonal, indices: list, written: list, fmt) -> DiagonalRead:
    """The :class:`DiagonalRead` of ``diag`` stored ``fmt`` (its own format, or a
    transposed copy's; its operand written by the run's statement ``writer``;
    ``indices``, ``written``: the reader's and the writer's index name per operand
    dimension)."""
    src = diag.operand_format
    dims = [diag.dims[d] for d in src.order]  # per writer level: the diagonal dimension it lands on
    first = tuple(dims.index(x) for x in dims)
    kept = tuple(dims.index(d) for d in fmt.order)
    return DiagonalRead(writer, diag.operand, tuple((written[d], indices[d]) for d in src.order), first, kept,
                        tuple(level_kind(lvl) for lvl in fmt.levels),
                        list(fmt.order) == list(dict.fromkeys(dims)) and all(lvl.ordered for lvl in src.levels),
                        _packed_levels(src))


@dataclasses.dataclass
class DiagonalCopy:
    """One diagonal made in the function: the reader's arrays (``target``: (level,
    array) -> its parameter variable, now a local), the writer's (``source``), the
    size of each writer level's dimension (``sizes``) and the :class:`DiagonalRead`."""
    target: dict
    source: dict
    sizes: list
    read: DiagonalRead

    @property
    def arrays(self) -> list:
        return list(self.target.values())

    def coord(self, xs: list, kept):
        """The coordinate a storage level holds: writer level ``kept``'s (``xs``: per
        writer level), or ``outer * block + inner`` for ``(outer, inner, block)``
        (:func:`unblock_read`: a dimension a blocked stand-in cuts in two)."""
        if isinstance(kept, tuple):
            return n.Binary("+", n.Binary("*", xs[kept[0]], n.i64(kept[2])), xs[kept[1]])
        return xs[kept]

    def size_of(self, kept):
        """The size of the coordinates :meth:`coord` gives."""
        if isinstance(kept, tuple):
            return n.Binary("*", self.sizes[kept[0]], n.i64(kept[2]))
        return self.sizes[kept]

    @property
    def packed(self) -> dict:
        """Writer level -> its PackedBlock (``walk_entries``)."""
        return {level: p for level, p in enumerate(self.read.packed) if p is not None}


class _Levels:
    """The storage's levels being filled (``alloc`` allocates an array zeroed, ``emit``
    adds a statement): :meth:`place` drops one entry (its coordinate per level, its
    value) into them, entries coming in the storage's order."""

    def __init__(self, c: DiagonalCopy, nnz, alloc, emit, names):
        self.c, self.state, self.bounds, self.packed = c, [], [], {}
        parents = n.i64(1)  # the positions of the level above (a bound for a compressed one)
        for level, kind in enumerate(c.read.kinds):
            self.bounds.append(parents)
            cur = n.Var(names("diag_at"), I64)
            emit(n.Declare(cur, n.i64(0)))
            if kind in ("dense", "bitmap"):
                self.state.append((kind, cur, None, None, None))
                parents = n.Binary("*", parents, c.size_of(c.read.kept[level]))
                if kind == "bitmap":  # a byte per position, 0 (zeroed) until an entry lands there
                    alloc(c.target[(level, "map")], parents)
                continue
            if kind == "packed":  # K slots per (parent, block), count[tile] of them used
                packed = self.packed[level] = c.read.placed[level]
                tiles = n.Binary("*", parents, packed.num_blocks_expr(c.size_of(c.read.kept[level])))
                alloc(c.target[(level, "count")], tiles)
                alloc(c.target[(level, "crd")], n.Binary("*", tiles, n.i64(packed.K)))
                last_parent, last = n.Var(names("diag_parent"), I64), n.Var(names("diag_last"), I64)
                for v in (last_parent, last):
                    emit(n.Declare(v, n.i64(-1)))
                self.state.append((kind, cur, last_parent, last, None))
                parents = n.Binary("*", tiles, n.i64(packed.K))
                continue
            alloc(c.target[(level, "crd")], nnz)
            if kind == "singleton":  # one coordinate per parent position, at that position
                self.state.append((kind, cur, None, None, None))
                continue
            alloc(c.target[(level, "pos")], n.Binary("+", parents, n.i64(1)))
            last_parent, last, count = (n.Var(names(x), I64) for x in ("diag_parent", "diag_last", "diag_count"))
            for v, init in ((last_parent, -1), (last, -1), (count, 0)):
                emit(n.Declare(v, n.i64(init)))
            self.state.append((kind, cur, last_parent, last, count))
            parents = nnz
        alloc(c.target[(-1, "vals")], parents)

    def place(self, xs: list, value) -> list:
        c, body, parent = self.c, [], n.i64(0)
        for level, (kind, cur, last_parent, last, count) in enumerate(self.state):
            x = xs[level]
            if kind in ("dense", "bitmap"):
                body.append(n.Assign(cur, n.Binary("+", n.Binary("*", parent, c.size_of(c.read.kept[level])), x)))
                if kind == "bitmap":
                    body.append(n.Store(c.target[(level, "map")], cur, n.const(1, c.target[(level, "map")].type.elem)))
            elif kind == "packed":
                body.append(self._slot(level, parent, x))
            elif kind == "singleton":
                crd = c.target[(level, "crd")]
                body += [n.Assign(cur, parent), n.Store(crd, cur, _cast(x, crd.type.elem))]
            else:
                pos, crd = c.target[(level, "pos")], c.target[(level, "crd")]
                at = n.Binary("+", parent, n.i64(1))
                opens = (n.Block((n.Assign(cur, count), n.Assign(count, n.Binary("+", count, n.i64(1))),
                                  n.Store(crd, cur, _cast(x, crd.type.elem)),
                                  n.Store(pos, at, n.Binary("+", n.Load(pos, at), n.const(1, pos.type.elem))),
                                  n.Assign(last_parent, parent), n.Assign(last, x))))
                if kind == "repeated":  # a position per entry
                    body.append(opens)
                else:
                    body.append(n.If(n.Binary("||", n.Binary("!=", parent, last_parent), n.Binary("!=", x, last)),
                                     opens))
            parent = cur
        vals = c.target[(-1, "vals")]
        return body + [n.Store(vals, parent, n.Binary("+", n.Load(vals, parent), value))]

    def _slot(self, level: int, parent, x):
        """At packed level ``level``: a new (parent, coordinate) takes the next slot of
        its block (``count[tile]``, the in-block coordinate stored), or the function
        returns ``STATUS_PACKED_OVERFLOW`` when the block's K are taken."""
        _kind, cur, last_parent, last, _ = self.state[level]
        packed, size = self.packed[level], self.c.size_of(self.c.read.kept[level])
        count, crd = self.c.target[(level, "count")], self.c.target[(level, "crd")]
        bs = packed.block_size_expr(size)
        block = n.Binary("/", x, bs)
        tile = n.Binary("+", n.Binary("*", parent, packed.num_blocks_expr(size)), block)
        used = _i64(n.Load(count, tile))
        return n.If(n.Binary("||", n.Binary("!=", parent, last_parent), n.Binary("!=", x, last)), n.Block((
            n.If(n.Binary(">=", used, n.i64(packed.K)), n.Block((n.Return(n.STATUS_PACKED_OVERFLOW),))),
            n.Assign(cur, n.Binary("+", n.Binary("*", tile, n.i64(packed.K)), used)),
            n.Store(crd, cur, _cast(n.Binary("-", x, n.Binary("*", block, bs)), crd.type.elem)),
            n.Store(count, tile, n.Binary("+", n.Load(count, tile), n.const(1, count.type.elem))),
            n.Assign(last_parent, parent), n.Assign(last, x))))

    def sums(self, names) -> list:
        """Each compressed level's counts per parent, prefix-summed into its ``pos``."""
        out = []
        for level, (kind, _cur, _lp, last, _count) in enumerate(self.state):
            if last is None or kind == "packed":
                continue
            pos, q = self.c.target[(level, "pos")], n.Var(names("diag_q"), I64)
            above = self.state[level - 1][4] if level and self.state[level - 1][4] is not None else self.bounds[level]
            out.append(n.For(q, n.i64(0), above, n.Block((
                n.Store(pos, n.Binary("+", q, n.i64(1)),
                        n.Binary("+", n.Load(pos, n.Binary("+", q, n.i64(1))), n.Load(pos, q))),))))
        return out


def diagonal_block(c: DiagonalCopy, names) -> list:
    """Statements that allocate and fill ``c``'s arrays (``names`` makes fresh
    variable names); a failed allocation frees the arrays made before it."""
    r = c.read
    nnz = n.Var(names("diag_nnz"), I64)
    what = ("diagonal" if r.first != tuple(range(len(r.first))) else
            "copy in another mode order" if r.kept != r.first else "declared storage")
    out = [n.Comment(f"{c.target[(-1, 'vals')].name}: the {what} of {r.tensor} gathered here from its "
                     "writer's arrays, freed after its reader"), n.Declare(nnz, entry_count(c))]
    live: list = []

    def alloc(var, count, zero=True):
        out.append(n.Allocate(var, n.Binary("max", count, n.i64(1)), zero=zero, free=tuple(live)))
        live.append(var)
    levels = _Levels(c, nnz, alloc, out.append, names)
    src_vals = c.source[(-1, "vals")]

    def kept_only(xs, body):
        on = None
        for w, f in enumerate(r.first):
            if f != w:
                same = n.Binary("==", xs[w], xs[f])
                on = same if on is None else n.Binary("&&", on, same)
        return n.Block(tuple(body)) if on is None else n.Block((n.If(on, n.Block(tuple(body))),))
    if r.in_order:
        out.append(walk_entries(c, 0, n.i64(0), [], lambda xs, p: kept_only(
            xs, levels.place([c.coord(xs, w) for w in r.kept], n.Load(src_vals, p))), names))
        return out + levels.sums(names)
    # another order: the kept entries as a coordinate list, sorted by the levels, then placed
    m, e = n.Var(names("diag_m"), I64), n.Var(names("diag_e"), I64)
    coords = [n.Var(names("diag_key"), ptr(I64)) for _ in r.kept]
    values = n.Var(names("diag_vals"), src_vals.type)
    perm = [n.Var(names("diag_order"), ptr(I64)), n.Var(names("diag_order"), ptr(I64))]
    temps = coords + [values] + perm
    for var in temps:
        alloc(var, nnz, zero=False)
    out.append(n.Declare(m, n.i64(0)))
    out.append(walk_entries(c, 0, n.i64(0), [], lambda xs, p: kept_only(xs, [
        *(n.Store(coords[level], m, c.coord(xs, w)) for level, w in enumerate(r.kept)),
        n.Store(values, m, n.Load(src_vals, p)), n.Assign(m, n.Binary("+", m, n.i64(1)))]), names))
    out.append(n.For(e, n.i64(0), m, n.Block((n.Store(perm[0], e, e),))))
    current = 0
    for level in reversed(range(len(r.kept))):  # stable counting sorts, last level to first
        key, size = coords[level], c.size_of(r.kept[level])
        count = n.Var(names("diag_count"), ptr(I64))
        alloc(count, n.Binary("+", size, n.i64(1)))
        out += sort_pass(key, size, perm[current], perm[1 - current], count, m, names)
        live.remove(count)
        current = 1 - current
    at = n.Var(names("diag_entry"), I64)
    out.append(n.For(e, n.i64(0), m, n.Block((
        n.Declare(at, n.Load(perm[current], e)),
        *levels.place([n.Load(key, at) for key in coords], n.Load(values, at))))))
    out += [n.Free(v) for v in temps]
    return out + levels.sums(names)


def _i64(e):
    return e if e.type == I64 else n.Cast(e, I64)


def _cast(x, t):
    return x if t == I64 else n.Cast(x, t)
