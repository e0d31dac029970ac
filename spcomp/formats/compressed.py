"""Compressed level ``c``: CSR-style segments.

Parent position ``q`` owns positions ``pos[q] .. pos[q+1]``; ``crd[p]`` is the
coordinate at position ``p``. ``pos`` has parent_positions + 1 entries, starting
at 0 and never decreasing. ``ordered``: coordinates increase within a segment.
``unique``: no coordinate repeats within a segment (a non-unique level is the
top of a COO tensor, whose runs of equal coordinates are iterated as segments).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from .level import Level


@dataclass(frozen=True)
class Compressed(Level):
    letter: ClassVar[str] = "c"
    arrays: ClassVar[tuple] = ("pos", "crd")
    ordered: bool = True
    unique: bool = True

    def num_positions(self, parent_positions, dim_size, arrays):
        return int(arrays["pos"][parent_positions]) if len(arrays["pos"]) > parent_positions else 0

    def spec(self) -> str:
        flags = [f for f, on in (("nonunique", not self.unique), ("unordered", not self.ordered)) if on]
        return "c" + (f"({','.join(flags)})" if flags else "")
