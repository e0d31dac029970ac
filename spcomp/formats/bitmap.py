"""Bitmap level ``b``: a byte per coordinate saying whether it is stored (Finch's bytemap).

Parent position ``q`` owns the positions ``q * N .. q * N + N - 1`` as a dense
level does; ``map[q * N + c]`` is 1 where coordinate ``c`` is stored and 0 where
it is not. Values (or the segments of the level below) exist at every position;
those of unset positions are never read. Good for rows of middling density: no
coordinate array, and a kernel walks a row by testing bytes instead of chasing
``crd``.

This module is the whole level: its storage (arrays, packing from coordinates,
unpacking, validation) and its lowering (an iterator that skips unset bytes).
As an output it is assembled compressed and packed by the runtime
(:meth:`assembled_as`). It is registered by one line in ``registry.py``.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from ..ir import nodes as n
from ..ir.build import add, mul
from ..ir.types import I8, I64
from .level import Level, LevelIterator, PosInfo, StorageArray


@dataclass(frozen=True)
class Bitmap(Level):
    letter: ClassVar[str] = "b"
    kind_name: ClassVar[str] = "bitmap"
    arrays: ClassVar[tuple] = ("map",)
    storage: ClassVar[tuple] = (StorageArray("map", "membership", "int8: 1 stored, 0 not"),)
    has_unused_positions: ClassVar[bool] = True
    shape_sized: ClassVar[bool] = True
    coordinate_positions: ClassVar[bool] = True

    def num_positions(self, parent_positions, dim_size, arrays):
        return parent_positions * dim_size

    def fixed_array_size(self, array, parent_positions, dim_size):
        """``map``: a byte per coordinate under every parent position."""
        return parent_positions * dim_size if array == "map" else None

    def array_type(self, array, index_bits):
        return I8

    def assembled_as(self, under_sparse: bool, levels_below: bool = False):
        from .compressed import Compressed
        return Compressed()

    def positions_expr(self, parent_count, dim, arrays):
        return self.insert_size(parent_count, dim)

    # ------------------------------------------------------------ insert
    inserts: ClassVar[bool] = True

    def insert_size(self, parent_size, dim):
        """A byte per coordinate under every parent position."""
        return mul(parent_size, dim)

    def insert_position(self, parent_pos, dim, coord):
        """``parent * N + coord``, as a dense level places it."""
        return coord if parent_pos is None else add(mul(parent_pos, dim), coord)

    def insert_init(self, arrays, begin, end, fresh):
        """Every byte of ``[begin, end)`` 0: nothing stored there yet."""
        p = n.Var(fresh("p_map"), I64)
        return [n.For(p, begin, end, n.block(n.Store(arrays["map"], p, n.Const(0, I8))))]

    def insert_coord(self, arrays, pos, coord):
        """``map[pos] = 1``: the coordinate is stored."""
        return [n.Store(arrays["map"], pos, n.Const(1, I8))]

    # ------------------------------------------------------------ storage
    def pack(self, ctx):
        """Positions ``parent * N + c``; the map marks the entries' positions."""
        ppos = ctx.ppos * ctx.N + ctx.coords
        P = ctx.P * ctx.N
        bits = np.zeros(P, np.int8)
        bits[ppos] = 1
        return {"map": bits}, ppos, P

    def unpack(self, arrays, cur, N):
        """The stored positions under parent positions ``cur`` and their coordinates."""
        flat = (cur[:, None] * N + np.arange(N, dtype=np.int64)).reshape(-1)
        keep = np.asarray(arrays["map"])[flat] != 0
        counts = keep.reshape(len(cur), N).sum(axis=1) if len(cur) else np.zeros(0, np.int64)
        return flat[keep], flat[keep] - np.repeat(cur, counts) * N, counts

    def validate(self, ctx):
        bits = ctx.index_array("map")
        P = ctx.P * ctx.N
        if bits.shape[0] != P:
            ctx.fail(f"map has {bits.shape[0]} entries but needs {P} ({ctx.N} per position of {ctx.parents})")
        k = np.flatnonzero((bits != 0) & (bits != 1))
        if k.size:
            ctx.fail(f"map[{int(k[0])}] = {int(bits[k[0]])}; a bitmap holds 0 (not stored) or 1 (stored)")
        ctx.same = None
        return P

    # ------------------------------------------------------------ lowering
    def iterator(self, la, fresh) -> "BitmapIterator":
        return BitmapIterator(la, fresh)


class BitmapIterator(LevelIterator):
    """``for c in 0..N: if map[q*N + c]``; merged, it skips to the next set byte."""

    def __init__(self, la, fresh):
        super().__init__(la, fresh)
        self.c = n.Var(fresh("c" + la.name), I64)
        self.base = n.Var(fresh("p" + la.name + "_base"), I64)

    def _set(self, c):
        return n.Binary("!=", n.Load(self.la.arrays["map"], add(self.base, c)), n.Const(0, I8))

    def _skip(self):
        unset = n.Binary("==", n.Load(self.la.arrays["map"], add(self.base, self.c)), n.Const(0, I8))
        return n.While(n.Binary("&&", n.Binary("<", self.c, self.la.dim), unset),
                       n.block(n.Assign(self.c, add(self.c, n.i64(1)))))

    def segment_length(self):
        return self.la.dim

    def remaining(self):
        return n.Binary("-", self.la.dim, self.c)

    def init(self):
        return [n.Declare(self.base, mul(self.la.parent.pos, self.la.dim)), n.Declare(self.c, n.i64(0)),
                self._skip()]

    def valid(self):
        return n.Binary("<", self.c, self.la.dim)

    def load(self, coord):
        return [n.Assign(coord, self.c)]

    def position(self):
        return PosInfo(add(self.base, self.c))

    def advance(self):
        return [n.Assign(self.c, add(self.c, n.i64(1))), self._skip()]

    def loop(self, coord, body):
        return [n.Declare(self.base, mul(self.la.parent.pos, self.la.dim)),
                n.For(self.c, n.i64(0), self.la.dim, n.block(
                    n.If(self._set(self.c), n.block(n.Declare(coord, self.c),
                                                    *body(PosInfo(add(self.base, self.c)))))))]
