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

from ..ir import nodes as n
from ..ir.build import as_i64, clamp_coordinate
from ..ir.types import I64
from .level import Level, LevelIterator, PosInfo, StorageArray


def level_flags(words: list, text: str, kind: str) -> dict:
    """``ordered``/``unique`` from a level's flags (``c(nonunique,unordered)``)."""
    from ..errors import FormatError
    for w in words:
        if w not in ("nonunique", "unordered"):
            raise FormatError(f"format {text!r}: unknown level flag {w!r} (known: nonunique, unordered)")
    return {"ordered": "unordered" not in words, "unique": "nonunique" not in words}


@dataclass(frozen=True)
class Compressed(Level):
    letter: ClassVar[str] = "c"
    kind_name: ClassVar[str] = "compressed"
    arrays: ClassVar[tuple] = ("pos", "crd")
    storage: ClassVar[tuple] = (StorageArray("pos", "segments", "index"),
                                StorageArray("crd", "coordinates", "index"))
    ordered: bool = True
    unique: bool = True
    drawn_flags: ClassVar[tuple] = ("unordered",)

    @classmethod
    def from_spec(cls, words, numbers, text):
        if numbers:
            from ..errors import FormatError
            raise FormatError(f"format {text!r}: a compressed level takes no numbers")
        return cls(**level_flags(words, text, "compressed"))

    def fixed_array_size(self, array, parent_positions, dim_size):
        """``pos``: one entry per parent position and one more; ``crd`` grows."""
        return parent_positions + 1 if array == "pos" else None

    def num_positions(self, parent_positions, dim_size, arrays):
        return int(arrays["pos"][parent_positions]) if len(arrays["pos"]) > parent_positions else 0

    def positions_expr(self, parent_count, dim, arrays):
        """``pos[parent_count]``: where the last parent's segment ends."""
        return as_i64(n.Load(arrays["pos"], parent_count))

    def spec(self) -> str:
        flags = [f for f, on in (("nonunique", not self.unique), ("unordered", not self.ordered)) if on]
        return "c" + (f"({','.join(flags)})" if flags else "")

    def pack(self, ctx):
        """One segment per parent; a non-unique level holds one position per entry of the
        run of singleton levels below it (COO), a unique one per distinct coordinate."""
        import numpy as np

        from .storage import coordinate_array, index_array
        levels = ctx.fmt.levels
        m = ctx.level
        if not self.unique:
            while m + 1 < len(levels) and levels[m + 1].aligned_with_parent:
                m += 1
        first = ctx.group_starts(m)
        n = ctx.coords.shape[0]
        if first is None:  # every entry its own position: None stands for arange(n)
            crd, owner = ctx.coords, ctx.ppos
            new_ppos = None if n else np.zeros(0, np.int64)
        else:
            crd, owner = ctx.coords[first], ctx.ppos[first]
            new_ppos = np.cumsum(first) - 1
        pos = np.zeros(ctx.P + 1, np.int64)
        np.cumsum(np.bincount(owner, minlength=ctx.P), out=pos[1:])
        return ({"pos": index_array(pos, int(pos[-1])), "crd": coordinate_array(crd, ctx.N)},
                new_ppos, int(pos[-1]))

    def unpack(self, arrays, cur, N):
        import numpy as np

        from .storage import ranges
        pos = np.asarray(arrays["pos"]).astype(np.int64, copy=False)
        lo = pos[cur]
        lens = pos[cur + 1] - lo
        new = ranges(lo, lens)
        return new, np.asarray(arrays["crd"])[new].astype(np.int64), lens

    def validate(self, ctx):
        """``pos`` monotone from 0 to len(crd), one more entry than parents; ``crd`` in
        range, increasing within a segment where ordered, no repeat where unique."""
        import numpy as np

        from .storage import first, first_duplicate
        P = ctx.P
        pos = ctx.index_array("pos")
        crd = ctx.index_array("crd")
        if pos.shape[0] != P + 1:
            ctx.fail(f"pos has {pos.shape[0]} entries but needs {P + 1} "
                               f"(one more than {ctx.parents})")
        p = pos.astype(np.int64, copy=False)
        if p[0] != 0:
            ctx.fail(f"pos[0] = {int(p[0])}, must be 0")
        k = first(p[1:] < p[:-1])
        if k is not None:
            ctx.fail(f"pos[{k + 1}] = {int(p[k + 1])} is less than pos[{k}] = {int(p[k])}; "
                               "pos must not decrease")
        if p[-1] != crd.shape[0]:
            ctx.fail(f"pos[{P}] = {int(p[-1])} but crd has {crd.shape[0]} entries; "
                               "they must be equal")
        c = crd.astype(np.int64, copy=False)
        k = first((c < 0) | (c >= ctx.N))
        if k is not None:
            ctx.fail(f"crd[{k}] = {int(crd[k])} is out of range for dimension {ctx.dim} of size {ctx.N}")
        nc = c.shape[0]
        is_start = np.zeros(nc + 1, bool)
        is_start[p[:-1]] = True
        is_start = is_start[:nc]
        if self.ordered and nc > 1:
            step = c[1:] - c[:-1]
            bad = (step <= 0) if self.unique else (step < 0)
            k = first(bad & ~is_start[1:])
            if k is not None:
                seg = int(np.searchsorted(p, k + 1, side="right")) - 1
                rel_text = (f"is not greater than crd[{k}] = {int(c[k])}" if self.unique
                            else f"is less than crd[{k}] = {int(c[k])}")
                ctx.fail(f"crd[{k + 1}] = {int(c[k + 1])} {rel_text} within segment {seg} "
                                   f"(pos[{seg}]..pos[{seg + 1}] = {int(p[seg])}..{int(p[seg + 1])}); "
                                   f"the level is ordered{' and unique' if self.unique else ''}")
        elif self.unique and not self.ordered:
            segment = np.cumsum(is_start) - 1
            dup = first_duplicate(segment, c)
            if dup is not None:
                ctx.fail(f"crd[{dup[1]}] = {int(c[dup[1]])} repeats crd[{dup[0]}] within "
                                   f"segment {int(segment[dup[0]])}; the level is unique")
        if ctx.next_aligned:
            ctx.same = np.zeros(nc, bool)
            if nc > 1:
                ctx.same[1:] = ~is_start[1:] & (c[1:] == c[:-1])
        else:
            ctx.same = None
        return nc

    def iterator(self, la, fresh) -> "CompressedIterator":
        return CompressedIterator(la, fresh)


# ------------------------------------------------------------------ lowering


class CompressedIterator(LevelIterator):
    """``for p in pos[q] .. pos[q+1]``; a non-unique level walks runs of equal crd."""

    def __init__(self, la, fresh):
        super().__init__(la, fresh)
        self.p = n.Var(fresh("p" + la.name), I64)
        self.end = n.Var(fresh("p" + la.name + "_end"), I64)
        self.seg = n.Var(fresh("p" + la.name + "_seg"), I64) if not la.kind.unique else None

    def _bounds(self):
        q = self.la.parent.pos
        pos = self.la.arrays["pos"]
        return as_i64(n.Load(pos, q)), as_i64(n.Load(pos, n.Binary("+", q, n.i64(1))))

    def coordinate(self, p):
        """The coordinate at position ``p``; kept within the dimension where it
        addresses memory (``LevelAccess.addressing``, ir.build.clamp_coordinate)."""
        c = as_i64(n.Load(self.la.arrays["crd"], p))
        return clamp_coordinate(c, self.la.dim) if self.la.addressing else c

    def segment_length(self):
        lo, hi = self._bounds()
        return n.Binary("-", hi, lo)

    def remaining(self):
        return n.Binary("-", self.end, self.p)

    def init(self):
        lo, hi = self._bounds()
        out = [n.Declare(self.p, lo), n.Declare(self.end, hi)]
        if self.seg is not None:
            out.append(n.Declare(self.seg, self.p))
        return out

    def valid(self):
        return n.Binary("<", self.p, self.end)

    def load(self, coord):
        crd = self.la.arrays["crd"]
        out = [n.Assign(coord, self.coordinate(self.p))]
        if self.seg is not None:
            nxt = n.Binary("+", self.seg, n.i64(1))
            out += [n.Assign(self.seg, n.Binary("+", self.p, n.i64(1))),
                    n.While(n.Binary("&&", n.Binary("<", self.seg, self.end),
                                     n.Binary("==", as_i64(n.Load(crd, self.seg)), coord)),
                            n.block(n.Assign(self.seg, nxt)))]
        return out

    def position(self):
        return PosInfo(self.p, self.seg)

    def advance(self):
        if self.seg is not None:
            return [n.Assign(self.p, self.seg)]
        return [n.Assign(self.p, n.Binary("+", self.p, n.i64(1)))]

    def loop(self, coord, body):
        if self.seg is not None:
            return super().loop(coord, body)
        lo, hi = self._bounds()
        return [n.For(self.p, lo, hi, n.block(n.Declare(coord, self.coordinate(self.p)),
                                              *body(PosInfo(self.p))))]
