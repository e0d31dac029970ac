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

from .level import Level


@dataclass(frozen=True)
class PackedBlock(Level):
    letter: ClassVar[str] = "p"
    arrays: ClassVar[tuple] = ("count", "crd")
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
