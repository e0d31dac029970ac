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
    shape_sized: ClassVar[bool] = True
    parameters: ClassVar[tuple] = ("B", "K")
    drawn_flags: ClassVar[tuple] = ("unordered",)
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

    @classmethod
    def draw_parameters(cls, pick, largest, roomy=False):
        """``(B, K)`` with 1 <= K <= B <= ``largest``, or one time in six an ELL ``(K,)``;
        ``roomy``: K = B, and an ELL row of ``largest`` slots (``output_size_cap``)."""
        if pick(0, 5) == 3:  # a middle choice: Hypothesis favours the smallest
            return (largest if roomy else pick(1, largest),)
        B = pick(1, largest)
        return (B, B if roomy or pick(0, 1) else pick(1, B))

    def assembled_as(self, under_sparse: bool, levels_below: bool = False):
        """A kernel fills the slots itself (``append_entry``) as the last level under dense
        ones only; elsewhere (blocked ELL's block columns, above their dense blocks) it
        appends the level compressed and the runtime packs the slots, a block with more
        entries than K being a PackedOverflowError then."""
        if under_sparse or levels_below:
            from .compressed import Compressed
            return Compressed()
        return self

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

    def fixed_array_size(self, array, parent_positions, dim_size):
        """``count``: one per (parent, block); ``crd``: K slots per (parent, block)."""
        blocks = parent_positions * self.num_blocks(dim_size)
        return {"count": blocks, "crd": blocks * self.K}.get(array)

    def positions_expr(self, parent_count, dim, arrays):
        return mul(mul(parent_count, self.num_blocks_expr(dim)), n.i64(self.K))

    def largest_fill(self, arrays) -> int:
        """The most entries any block was given (its ``count``; past K when a kernel
        overflowed it): what the overflow error suggests for K."""
        count = arrays["count"]
        return int(count.max()) if count.size else 0

    def output_size_cap(self):
        """ELL (``p(K)``): one block spans the row, so a row holds at most K entries."""
        return self.K if self.B is None else None

    def preset_name(self, name):
        """``twell(B=..,K=..)`` / ``ell(K=..)`` with this level's numbers."""
        if name.startswith("twell"):
            return f"twell(B={self.B},K={self.K})"
        if name.startswith("ell"):
            return f"ell(K={self.K})"
        return None

    def crd_dtype_bits(self) -> int:
        """Width of stored in-block coordinates: 16 bits when B fits, else 32."""
        return 16 if (self.B is not None and self.B <= 32768) else 32

    def spec(self) -> str:
        args = [str(self.K)] if self.B is None else [str(self.B), str(self.K)]
        if not self.ordered:
            args.append("unordered")
        return f"p({','.join(args)})"

    def pack(self, ctx):
        """Entries into their block's slots in order; a block with more than K entries
        grows K (``ctx.overflow == 'grow'``, ``ctx.replaced``) or is an error."""
        import dataclasses

        import numpy as np

        from ..ir.types import to_numpy
        level, N, c, ppos, P = self, ctx.N, ctx.coords, ctx.ppos, ctx.P
        B, nb = self.block_size(N), self.num_blocks(N)
        self.check_types(ctx.fmt, ctx.level, N)
        first = ctx.group_starts(ctx.level)
        dc = c if first is None else c[first]
        dp = ppos if first is None else ppos[first]
        blk = dc // B
        g = dp * nb + blk
        counts = np.bincount(g, minlength=P * nb)
        largest = int(counts.max()) if counts.size else 0
        K = self.K
        if largest > K:
            if ctx.overflow != "grow":
                raise ctx.overflow_error(self, counts, largest, nb)
            level = ctx.replaced = dataclasses.replace(self, K=largest)
            K = largest
        # slot of item k = g*K + (k - index of the first item of its block)
        group_first = np.cumsum(counts) - counts
        slot = np.arange(len(g), dtype=np.int64)
        slot += g * K
        slot -= group_first[g]
        crd = np.zeros(P * nb * K, to_numpy(level.array_type("crd", 32)))
        crd[slot] = dc - blk * B
        return ({"count": counts.astype(np.int32), "crd": crd},
                slot if first is None else slot[np.cumsum(first) - 1], P * nb * K)

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

    def validate(self, ctx):
        """``count`` within 0..K per (parent, block); used slots' in-block ``crd`` in the
        block, increasing where ordered, no repeat; unused slots' coordinates and values 0."""
        from ..errors import FormatError
        import numpy as np

        from .storage import first, first_duplicate
        P = ctx.P
        count = ctx.index_array("count")
        crd = ctx.index_array("crd")
        B, nb, K = self.block_size(ctx.N), self.num_blocks(ctx.N), self.K
        try:
            self.check_types(ctx.fmt, ctx.level, ctx.N)
        except FormatError as e:
            raise FormatError(f"{ctx.tensor}: {e}") from None
        G = P * nb  # (parent, block) pairs
        if count.shape[0] != G:
            ctx.fail(f"count has {count.shape[0]} entries but needs {G} "
                               f"({nb} block(s) of {B} for dimension {ctx.dim} of size {ctx.N}, under {ctx.parents})")
        k = first((count < 0) | (count > K))
        if k is not None:
            ctx.fail(f"count[{k}] = {int(count[k])} is outside 0..{K} (K = {K} slots per block)")
        if crd.shape[0] != G * K:
            ctx.fail(f"crd has {crd.shape[0]} entries but needs {G * K} "
                               f"({G} block(s) of K = {K} slots)")
        # one row per (parent, block), one column per slot: no per-slot index arrays
        c2 = crd.reshape(G, K)
        used = np.arange(K)[None, :] < count[:, None]
        last = ctx.N - (nb - 1) * B if nb else B      # size of the last (maybe shorter) block
        bsize = np.full(nb, B, np.int64)
        if nb:
            bsize[-1] = last
        bsize_g = np.tile(bsize, P)[:, None] if G else np.zeros((0, 1), np.int64)
        k = first((used & ((c2 < 0) | (c2 >= bsize_g))).reshape(-1))
        if k is not None:
            gk, s = divmod(k, K)
            b = gk % nb
            ctx.fail(f"crd[{k}] = {int(crd[k])} (slot {s} of block {b}) is out of "
                               f"range 0..{int(bsize[b]) - 1} for block {b} of dimension {ctx.dim} of size {ctx.N} "
                               f"(in-block coordinates, block size {B})")
        k = first((~used & (c2 != 0)).reshape(-1))
        if k is not None:
            gk, s = divmod(k, K)
            ctx.fail(f"crd[{k}] = {int(crd[k])} is in an unused slot (slot {s}, "
                               f"count[{gk}] = {int(count[gk])}) and must be 0")
        if self.ordered:
            if K > 1:
                k = first((used[:, 1:] & (c2[:, 1:] <= c2[:, :-1])).reshape(-1))
                if k is not None:
                    gk, s = divmod(k, K - 1)
                    k = gk * K + s + 1
                    ctx.fail(f"crd[{k}] = {int(crd[k])} is not greater than crd[{k - 1}] = "
                                       f"{int(crd[k - 1])} within block {gk % nb} under parent position "
                                       f"{gk // nb} (count[{gk}] = {int(count[gk])}); the level is "
                                       "ordered")
        else:
            ui = np.flatnonzero(used.reshape(-1))
            dup = first_duplicate(ui // K, crd[ui].astype(np.int64))
            if dup is not None:
                a, b = int(ui[dup[0]]), int(ui[dup[1]])
                ctx.fail(f"crd[{b}] = {int(crd[b])} repeats crd[{a}] within block "
                                   f"{(a // K) % nb} under parent position {a // K // nb}; "
                                   "the level is unique")
        if ctx.last:
            vals = ctx.vals
            ctx.check_vals(G * K)
            k = first((~used & (vals.reshape(G, K) != 0)).reshape(-1))
            if k is not None:
                ctx.fail(f"vals[{k}] = {vals[k]} is in an unused slot (count[{k // K}] = "
                                   f"{int(count[k // K])}) and must be 0")
        ctx.same = None
        return G * K

    def check_types(self, fmt, l: int, dim_size: int) -> None:
        """A FormatError when a kernel could not read this level (level ``l`` of ``fmt``)
        in its types: in-block coordinates are int16, or int32 for blocks over 32768 and
        for ``ell``, whose one block spans the dimension, so a block holds at most 2**31
        coordinates; ``count`` is int32, so K <= 2**31 - 1. Shared by packing and
        validation, so neither lets a value wrap in the kernel."""
        import numpy as np

        from ..errors import FormatError
        from ..ir.types import to_numpy
        from .storage import INT32_MAX
        B = self.block_size(dim_size)
        crd = to_numpy(self.array_type("crd", 32))
        if B - 1 > np.iinfo(crd).max:
            raise FormatError(f"format {str(fmt)!r}: level {l} ({self.spec()}) has blocks of {B} "
                              f"coordinates, more than its in-block coordinates ({crd}, at most "
                              f"{int(np.iinfo(crd).max) + 1} per block) can hold; "
                              + ("give B" if self.B is None else f"use B <= {int(np.iinfo(crd).max) + 1}"))
        if self.K > INT32_MAX:
            raise FormatError(f"format {str(fmt)!r}: level {l} ({self.spec()}) has K = {self.K} slots "
                              f"per block; counts are int32, so K must be at most {INT32_MAX}")

    def iterator(self, la, fresh) -> "PackedIterator":
        return PackedIterator(la, fresh)

    def append_entry(self, arrays, parent_pos, coord, dim, store_value_at, overflow, fresh) -> list:
        """An output's append (TACO's getAppendCoord for fixed slots): ``coord`` into the
        next free slot of its block under ``parent_pos``, ``store_value_at(slot)`` there,
        and ``overflow`` set to 1 instead when the block's K slots are taken."""
        from ..ir.types import I32
        bs, nb = self.block_size_expr(dim), self.num_blocks_expr(dim)
        tile, slot = n.Var(fresh("tile"), I64), n.Var(fresh("slot"), I64)
        count, crd = arrays["count"], arrays["crd"]
        at = add(mul(tile, n.i64(self.K)), slot)
        block_no = n.Binary("/", coord, bs)
        return [
            n.Declare(tile, add(mul(parent_pos, nb), block_no)),
            n.Declare(slot, n.Cast(n.Load(count, tile), I64)),
            n.If(n.Binary("<", slot, n.i64(self.K)), n.block(
                n.Store(crd, at, n.Cast(n.Binary("-", coord, mul(block_no, bs)), crd.type.elem)),
                store_value_at(at)),
                n.block(n.Assign(overflow, n.Const(1, I32)))),
            n.Store(count, tile, n.Cast(add(slot, n.i64(1)), count.type.elem)),
        ]

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
