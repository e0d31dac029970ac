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
    aligned_with_parent: ClassVar[bool] = True
    ordered: bool = True
    unique: bool = True

    @classmethod
    def from_spec(cls, words, numbers, text):
        if numbers:
            from ..errors import FormatError
            raise FormatError(f"format {text!r}: a singleton level takes no numbers")
        return cls(**level_flags(words, text, "singleton"))

    @classmethod
    def drawn_run(cls, length):
        """A coordinate list over ``length`` dimensions: a non-unique compressed level, then
        non-unique singletons and a unique one (a compressed level alone for one)."""
        from .compressed import Compressed
        if length == 1:
            return [Compressed().spec()]
        return ([Compressed(unique=False).spec()] + [cls(unique=False).spec()] * (length - 2)
                + [cls().spec()])

    def num_positions(self, parent_positions, dim_size, arrays):
        return parent_positions

    def positions_expr(self, parent_count, dim, arrays):
        return parent_count

    def spec(self) -> str:
        flags = [f for f, on in (("nonunique", not self.unique), ("unordered", not self.ordered)) if on]
        return "q" + (f"({','.join(flags)})" if flags else "")

    def pack(self, ctx):
        """The coordinate of each parent position; a parent with two differs is an error."""
        import numpy as np

        from ..errors import FormatError
        from .storage import coordinate_array
        ppos, c, l = ctx.ppos, ctx.coords, ctx.level
        if len(c) > 1:
            bad = np.flatnonzero((ppos[1:] == ppos[:-1]) & (c[1:] != c[:-1]))
            if bad.size:
                q = int(ppos[bad[0]])
                raise FormatError(
                    f"format {str(ctx.fmt)!r} cannot hold this tensor: level {l} (singleton) stores "
                    f"one coordinate per position of level {l - 1}, but position {q} has entries "
                    f"with coordinates {int(c[bad[0]])} and {int(c[bad[0] + 1])}; use a "
                    "non-unique parent level (e.g. 'coo')")
        crd = np.zeros(ctx.P, np.int64)
        crd[ppos] = c
        return {"crd": coordinate_array(crd, ctx.N)}, ppos, ctx.P

    def unpack(self, arrays, cur, N):
        import numpy as np
        return cur, np.asarray(arrays["crd"])[cur].astype(np.int64), np.ones(len(cur), np.int64)

    def validate(self, ctx):
        """One ``crd`` per parent position, in range; ordered/unique among the positions
        whose levels above hold equal coordinates (``ctx.same``)."""
        import numpy as np

        from .storage import first, first_duplicate
        P = ctx.P
        crd = ctx.index_array("crd")
        if crd.shape[0] != P:
            ctx.fail(f"crd has {crd.shape[0]} entries but needs {P} (one per position of "
                               f"{'the root' if ctx.level == 0 else f'level {ctx.level - 1}'})")
        c = crd.astype(np.int64, copy=False)
        k = first((c < 0) | (c >= ctx.N))
        if k is not None:
            ctx.fail(f"crd[{k}] = {int(crd[k])} is out of range for dimension {ctx.dim} of size {ctx.N}")
        if ctx.same is not None and P > 1:
            eq_above = ctx.same[1:]
            if self.ordered:
                step = c[1:] - c[:-1]
                bad = (step <= 0) if self.unique else (step < 0)
                k = first(bad & eq_above)
                if k is not None:
                    rel_text = (f"is not greater than crd[{k}] = {int(c[k])}" if self.unique
                                else f"is less than crd[{k}] = {int(c[k])}")
                    ctx.fail(f"crd[{k + 1}] = {int(c[k + 1])} {rel_text} while the "
                                       "coordinates of the levels above are equal; the level is "
                                       f"ordered{' and unique' if self.unique else ''}")
            elif self.unique:
                segment = np.cumsum(~ctx.same) - 1
                dup = first_duplicate(segment, c)
                if dup is not None:
                    ctx.fail(f"crd[{dup[1]}] = {int(c[dup[1]])} repeats crd[{dup[0]}] under "
                                       "equal coordinates of the levels above; the level is unique")
        if ctx.next_aligned and ctx.same is not None:
            nxt = np.zeros(P, bool)
            if P > 1:
                nxt[1:] = ctx.same[1:] & (c[1:] == c[:-1])
            ctx.same = nxt
        else:
            ctx.same = None
        return P

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
