"""Singleton level ``q``: exactly one coordinate per parent position (COO's lower levels).

``crd[p]`` is the coordinate at position ``p``, which equals the parent position.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from ..ir import nodes as n
from .compressed import CompressedIterator, level_flags
from .level import Level, PosInfo, StorageArray


@dataclass(frozen=True)
class Singleton(Level):
    letter: ClassVar[str] = "q"
    kind_name: ClassVar[str] = "singleton"
    arrays: ClassVar[tuple] = ("crd",)
    storage: ClassVar[tuple] = (StorageArray("crd", "coordinates", "index"),)
    ordered: bool = True
    unique: bool = True

    @classmethod
    def from_spec(cls, words, numbers, text):
        if numbers:
            from ..errors import FormatError
            raise FormatError(f"format {text!r}: a singleton level takes no numbers")
        return cls(**level_flags(words, text, "singleton"))

    def num_positions(self, parent_positions, dim_size, arrays):
        return parent_positions

    def spec(self) -> str:
        flags = [f for f, on in (("nonunique", not self.unique), ("unordered", not self.ordered)) if on]
        return "q" + (f"({','.join(flags)})" if flags else "")

    def unpack(self, arrays, cur, N):
        import numpy as np
        return cur, np.asarray(arrays["crd"])[cur].astype(np.int64), np.ones(len(cur), np.int64)

    def iterator(self, la, fresh) -> "SingletonIterator":
        return SingletonIterator(la, fresh)


class SingletonIterator(CompressedIterator):
    """The positions ``[q, q+1)`` of a unique parent, or the run ``[q, seg_end)``
    a non-unique parent found; otherwise iterated like a compressed level."""

    def _bounds(self):
        parent = self.la.parent
        end = parent.seg_end if parent.seg_end is not None else n.Binary("+", parent.pos, n.i64(1))
        return parent.pos, end

    def loop(self, coord, body):
        if self.seg is None and self.la.parent.seg_end is None:
            q = self.la.parent.pos
            return [n.block(n.Declare(self.p, q), n.Declare(coord, self.coordinate(self.p)),
                            *body(PosInfo(self.p)))]
        return super().loop(coord, body)
