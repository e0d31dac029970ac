"""Dense level ``d``: every coordinate 0..N-1 under every parent position."""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from .level import Level, PosInfo


@dataclass(frozen=True)
class Dense(Level):
    letter: ClassVar[str] = "d"
    kind_name: ClassVar[str] = "dense"
    shape_sized: ClassVar[bool] = True
    coordinate_positions: ClassVar[bool] = True
    arrays: ClassVar[tuple] = ()

    def assembled_as(self, under_sparse: bool, levels_below: bool = False):
        """Under a sparse level an output's dense level is appended compressed and
        expanded by the runtime into zero-filled blocks (outputs.assembled_format)."""
        if under_sparse:
            from .compressed import Compressed
            return Compressed()
        return self

    @property
    def is_dense(self) -> bool:
        return True

    @property
    def locatable(self) -> bool:
        return True

    @property
    def full(self) -> bool:
        return True

    def num_positions(self, parent_positions, dim_size, arrays):
        return parent_positions * dim_size

    def pack(self, ctx):
        return {}, ctx.ppos * ctx.N + ctx.coords, ctx.P * ctx.N

    def validate(self, ctx):
        ctx.same = None
        return ctx.P * ctx.N

    def unpack(self, arrays, cur, N):
        import numpy as np

        from .storage import grid
        return grid(cur, N), np.tile(np.arange(N, dtype=np.int64), len(cur)), np.full(len(cur), N, np.int64)

    def locate(self, la, coord) -> PosInfo:
        """Position of ``coord`` under the parent: ``parent * N + coord``."""
        return PosInfo(self.insert_position(la.parent.pos, la.dim, coord))

    def positions_expr(self, parent_count, dim, arrays):
        return self.insert_size(parent_count, dim)

    # ------------------------------------------------------------ insert
    inserts: ClassVar[bool] = True

    def insert_size(self, parent_size, dim):
        """``parent_size * N`` (``N`` alone under one parent position)."""
        from ..ir import nodes as n
        return dim if parent_size == n.i64(1) else n.Binary("*", parent_size, dim)

    def insert_position(self, parent_pos, dim, coord):
        """``parent * N + coord`` (``coord`` under the root); nothing to mark."""
        from ..ir import nodes as n
        if parent_pos is None or (isinstance(parent_pos, n.Const) and parent_pos.value == 0):
            return coord
        return n.Binary("+", n.Binary("*", parent_pos, dim), coord)
