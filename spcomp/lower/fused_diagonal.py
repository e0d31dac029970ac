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
into ``pos`` afterwards). That one pass is in order when the indices come in the
same order in ``T``'s storage order whether each is placed at its first
dimension there or at its kept one (:func:`buildable`; always so for a diagonal
of order 1): the walk is sorted by the storage-order coordinates, and the kept
entries agree on each repeated index. The arrays are the function's own, freed
after the reader.
"""
from __future__ import annotations

import dataclasses

from ..formats import Compressed, Dense, Singleton
from ..ir import nodes as n
from ..ir.types import I64
from .diagonal import Diagonal, kept_dims
from .fused_transpose import entry_count, walk_entries


def buildable(diag: Diagonal) -> bool:
    """Whether :func:`diagonal_block` can build ``diag`` from its operand's arrays:
    unblocked, every level dense, compressed or singleton and ordered, the top one
    not a singleton, and the indices in the order of their kept dimensions in the
    operand's storage order (the diagonal's levels) in the order each first comes
    there (so one walk in storage order fills the diagonal in order)."""
    fmt = diag.operand_format
    if fmt.blocks is not None or not fmt.levels or type(fmt.levels[0]) is Singleton:
        return False
    if not all(type(lvl) in (Dense, Compressed, Singleton) and lvl.ordered for lvl in fmt.levels):
        return False
    kept = kept_dims(diag.dims)
    firsts = list(dict.fromkeys(diag.dims[d] for d in fmt.order))
    return firsts == [diag.dims[d] for d in fmt.order if kept[diag.dims[d]] == d]


@dataclasses.dataclass(frozen=True)
class DiagonalRead:
    """A reader's diagonal storage of a temporary its run wrote, as ``lower.fuse.fuse``
    takes it: the ``writer``'s place in the run, the ``tensor``, per writer level the
    index of its dimension, the writer's name and the reader's (``levels``), and the writer level whose coordinate it must
    equal (``first``: itself where it comes first), and per level of the diagonal the
    writer level it keeps (``kept``) and whether it is dense (``dense``)."""
    writer: int
    tensor: str
    levels: tuple
    first: tuple
    kept: tuple
    dense: tuple


def diagonal_read(writer: int, diag: Diagonal, indices: list, written: list) -> DiagonalRead:
    """The :class:`DiagonalRead` of ``diag`` (its operand written by the run's statement
    ``writer``; ``indices``, ``written``: the reader's and the writer's index name per
    operand dimension)."""
    fmt = diag.operand_format
    dims = [diag.dims[d] for d in fmt.order]  # per writer level: the diagonal dimension it lands on
    first = tuple(dims.index(x) for x in dims)
    kept = tuple(w for w, d in enumerate(fmt.order) if diag.kept[dims[w]] == d)  # (the diagonal's levels)
    return DiagonalRead(writer, diag.operand, tuple((written[d], indices[d]) for d in fmt.order), first, kept,
                        tuple(fmt.levels[w].is_dense for w in kept))


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


def diagonal_block(c: DiagonalCopy, names) -> list:
    """Statements that allocate and fill ``c``'s arrays (``names`` makes fresh
    variable names); a failed allocation frees the arrays made before it."""
    r = c.read
    nnz = n.Var(names("diag_nnz"), I64)
    out = [n.Comment(f"{c.target[(-1, 'vals')].name}: the diagonal of {r.tensor} gathered here from its "
                     "writer's arrays, freed after its reader"), n.Declare(nnz, entry_count(c))]
    made: list = []
    parents = n.i64(1)            # the positions of the level above (a bound for a compressed one)
    state = []                    # per diagonal level: (position, last parent, last coordinate, count)
    bounds = []                   # per diagonal level: its parent positions (bound)
    for level, dense in enumerate(r.dense):
        bounds.append(parents)
        cur = n.Var(names("diag_at"), I64)
        out.append(n.Declare(cur, n.i64(0)))
        if dense:
            state.append((cur, None, None, None))
            parents = n.Binary("*", parents, c.sizes[r.kept[level]])
            continue
        pos, crd = c.target[(level, "pos")], c.target[(level, "crd")]
        out.append(n.Allocate(pos, n.Binary("+", parents, n.i64(1)), zero=True, free=tuple(made)))
        made.append(pos)
        out.append(n.Allocate(crd, n.Binary("max", nnz, n.i64(1)), free=tuple(made)))
        made.append(crd)
        last_parent, last, count = (n.Var(names(x), I64) for x in ("diag_parent", "diag_last", "diag_count"))
        out += [n.Declare(last_parent, n.i64(-1)), n.Declare(last, n.i64(-1)), n.Declare(count, n.i64(0))]
        state.append((cur, last_parent, last, count))
        parents = nnz
    vals = c.target[(-1, "vals")]
    out.append(n.Allocate(vals, n.Binary("max", parents, n.i64(1)), zero=True, free=tuple(made)))

    def place(xs, p):
        body, parent = [], n.i64(0)
        for level, (cur, last_parent, last, count) in enumerate(state):
            x = xs[r.kept[level]]
            if last is None:
                body.append(n.Assign(cur, n.Binary("+", n.Binary("*", parent, c.sizes[r.kept[level]]), x)))
            else:
                pos, crd = c.target[(level, "pos")], c.target[(level, "crd")]
                one = n.const(1, pos.type.elem)
                at = n.Binary("+", parent, n.i64(1))
                body.append(n.If(n.Binary("||", n.Binary("!=", parent, last_parent), n.Binary("!=", x, last)),
                                 n.Block((n.Assign(cur, count), n.Assign(count, n.Binary("+", count, n.i64(1))),
                                          n.Store(crd, cur, _cast(x, crd.type.elem)),
                                          n.Store(pos, at, n.Binary("+", n.Load(pos, at), one)),
                                          n.Assign(last_parent, parent), n.Assign(last, x)))))
            parent = cur
        body.append(n.Store(vals, parent, n.Binary("+", n.Load(vals, parent), n.Load(c.source[(-1, "vals")], p))))
        on = None
        for w, f in enumerate(r.first):
            if f != w:
                same = n.Binary("==", xs[w], xs[f])
                on = same if on is None else n.Binary("&&", on, same)
        return n.Block(tuple(body)) if on is None else n.Block((n.If(on, n.Block(tuple(body))),))
    out.append(walk_entries(c, 0, n.i64(0), [], place, names))
    for level, (cur, _lp, last, count) in enumerate(state):  # each compressed level's counts, summed up
        if last is None:
            continue
        pos, q = c.target[(level, "pos")], n.Var(names("diag_q"), I64)
        above = state[level - 1][3] if level and state[level - 1][3] is not None else bounds[level]
        out.append(n.For(q, n.i64(0), above, n.Block((
            n.Store(pos, n.Binary("+", q, n.i64(1)),
                    n.Binary("+", n.Load(pos, n.Binary("+", q, n.i64(1))), n.Load(pos, q))),))))
    return out


def _cast(x, t):
    return x if t == I64 else n.Cast(x, t)
