"""Packed-block level ``p(B,K)``: TwELL / ELLPACK tiles of fixed slots.

The dimension (size N) is cut into ``nb = ceil(N / B)`` blocks of B coordinates.
Parent position ``q`` and block ``b`` own the K slots at positions
``(q * nb + b) * K + s`` for ``s < K``; ``count[q * nb + b]`` says how many of
them are used. ``crd`` holds each used slot's coordinate *within its block*
(0..B-1, so int16 whenever B <= 32768) and the value array holds its value;
unused slots hold coordinate 0 and value 0.

``B = None`` (written ``p(K)``) is ELLPACK: one block spans the whole dimension.
An *ordered* level keeps each block's slots sorted by coordinate, so the level
iterates in increasing coordinate order and can be merged with other levels;
an unordered one can only be iterated and drive locates into other operands.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from ..ir import nodes as n
from ..ir.build import add, mul
from ..ir.types import I64
from .level import Level, LevelIterator, PosInfo, StorageArray


@dataclass(frozen=True)
class PackedBlock(Level):
    letter: ClassVar[str] = "p"
    kind_name: ClassVar[str] = "packed-block"
    arrays: ClassVar[tuple] = ("count", "crd")
    storage: ClassVar[tuple] = (StorageArray("count", "counts", "int32: used slots per (parent, block)"),
                                StorageArray("crd", "coordinates", "int16 (B <= 32768) or int32: in-block"))
    fixed_slots: ClassVar[bool] = True
    has_unused_positions: ClassVar[bool] = True
    B: int | None = 256
    K: int = 32
    ordered: bool = True
    unique: bool = True

    def __post_init__(self):
        from ..errors import FormatError
        if self.B is not None and self.B < 1:
            raise FormatError(f"packed-block level p(B={self.B},K={self.K}): B must be >= 1")
        if self.K < 1:
            raise FormatError(f"packed-block level p(B={self.B},K={self.K}): K must be >= 1")
        if self.B is not None and self.K > self.B:
            raise FormatError(f"packed-block level p(B={self.B},K={self.K}): K must not exceed B")

    @classmethod
    def from_spec(cls, words, numbers, text):
        from ..errors import FormatError
        from .compressed import level_flags
        flags = level_flags(words, text, "packed-block")
        if not flags["unique"]:
            raise FormatError(f"format {text!r}: a packed-block level is always unique")
        if len(numbers) == 2:
            return cls(numbers[0], numbers[1], ordered=flags["ordered"])
        if len(numbers) == 1:
            return cls(None, numbers[0], ordered=flags["ordered"])
        raise FormatError(f"format {text!r}: a packed-block level is p(B,K) or p(K)")

    def array_type(self, array, index_bits):
        from ..ir.types import I16, I32
        if array == "count":
            return I32
        return I16 if self.crd_dtype_bits() == 16 else I32

    def block_size(self, dim_size: int) -> int:
        return self.B if self.B is not None else max(dim_size, 1)

    def num_blocks(self, dim_size: int) -> int:
        b = self.block_size(dim_size)
        return -(-dim_size // b)

    def num_positions(self, parent_positions, dim_size, arrays):
        return parent_positions * self.num_blocks(dim_size) * self.K

    def crd_dtype_bits(self) -> int:
        """Width of stored in-block coordinates: 16 bits when B fits, else 32."""
        return 16 if (self.B is not None and self.B <= 32768) else 32

    def spec(self) -> str:
        args = [str(self.K)] if self.B is None else [str(self.B), str(self.K)]
        if not self.ordered:
            args.append("unordered")
        return f"p({','.join(args)})"

    def unpack(self, arrays, cur, N):
        """Used slots only, block by block under each parent."""
        import numpy as np

        from .storage import ranges
        B, nb, K = self.block_size(N), self.num_blocks(N), self.K
        g = (cur[:, None] * nb + np.arange(nb, dtype=np.int64)).reshape(-1)
        cnt = np.asarray(arrays["count"])[g].astype(np.int64)
        new = ranges(g * K, cnt)
        blk = np.repeat(g % nb, cnt) if nb else np.zeros(0, np.int64)
        coords = blk * B + np.asarray(arrays["crd"])[new].astype(np.int64)
        counts = cnt.reshape(len(cur), nb).sum(axis=1) if nb else np.zeros(len(cur), np.int64)
        return new, coords, counts

    def iterator(self, la, fresh) -> "PackedIterator":
        return PackedIterator(la, fresh)

    # IR expressions shared by the iterator and the output appender
    def block_size_expr(self, dim):
        if self.B is not None:
            return n.i64(self.B)
        return n.Binary("max", dim, n.i64(1))

    def num_blocks_expr(self, dim):
        bs = self.block_size_expr(dim)
        return n.Binary("/", n.Binary("+", dim, n.Binary("-", bs, n.i64(1))), bs)




class PackedIterator(LevelIterator):
    """Blocks in order, and in each block the used slots ``0 .. count``."""

    def __init__(self, la, fresh):
        super().__init__(la, fresh)
        base = la.name
        self.b = n.Var(fresh("b" + base), I64)
        self.p = n.Var(fresh("p" + base), I64)
        self.end = n.Var(fresh("p" + base + "_end"), I64)
        self.nb = n.Var(fresh("nb" + base), I64)
        kind = la.kind
        self.bs = kind.block_size_expr(la.dim)

    def _tile(self, b):
        return add(mul(self.la.parent.pos, self.nb), b)

    def _count(self, b):
        return n.Cast(n.Load(self.la.arrays["count"], self._tile(b)), I64)

    def _skip_empty(self):
        K = n.i64(self.la.kind.K)
        nxt = add(self.b, n.i64(1))
        return n.While(
            n.Binary("&&", n.Binary("==", self.p, self.end), n.Binary("<", nxt, self.nb)),
            n.block(n.Assign(self.b, nxt),
                    n.Assign(self.p, mul(self._tile(self.b), K)),
                    n.Assign(self.end, add(self.p, self._count(self.b)))))

    def init(self):
        return [n.Declare(self.nb, self.la.kind.num_blocks_expr(self.la.dim)),
                n.Declare(self.b, n.i64(-1)), n.Declare(self.p, n.i64(0)),
                n.Declare(self.end, n.i64(0)), self._skip_empty()]

    def valid(self):
        return n.Binary("<", self.p, self.end)

    def load(self, coord):
        crd = n.Cast(n.Load(self.la.arrays["crd"], self.p), I64)
        return [n.Assign(coord, add(mul(self.b, self.bs), crd))]

    def position(self):
        return PosInfo(self.p)

    def advance(self):
        return [n.Assign(self.p, add(self.p, n.i64(1))), self._skip_empty()]

    def loop(self, coord, body):
        K = n.i64(self.la.kind.K)
        base = n.Var(self.fresh("slot" + self.la.name), I64)
        crd = n.Cast(n.Load(self.la.arrays["crd"], self.p), I64)
        inner = n.For(self.p, base, add(base, self._count(self.b)),
                      n.block(n.Declare(coord, add(mul(self.b, self.bs), crd)),
                              *body(PosInfo(self.p))))
        return [n.Declare(self.nb, self.la.kind.num_blocks_expr(self.la.dim)),
                n.For(self.b, n.i64(0), self.nb,
                      n.block(n.Declare(base, mul(self._tile(self.b), K)), inner))]
