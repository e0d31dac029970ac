"""Singleton level ``q``: exactly one coordinate per parent position (COO's lower levels).

``crd[p]`` is the coordinate at position ``p``, which equals the parent position.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from .level import Level


@dataclass(frozen=True)
class Singleton(Level):
    letter: ClassVar[str] = "q"
    arrays: ClassVar[tuple] = ("crd",)
    ordered: bool = True
    unique: bool = True

    def num_positions(self, parent_positions, dim_size, arrays):
        return parent_positions

    def spec(self) -> str:
        flags = [f for f, on in (("nonunique", not self.unique), ("unordered", not self.ordered)) if on]
        return "q" + (f"({','.join(flags)})" if flags else "")
