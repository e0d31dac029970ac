"""Structural validation of tensor storage (DESIGN §8).

:func:`validate_storage` checks everything a generated kernel relies on before a
user's arrays reach machine code:

* the shape has one integer size per format level, in ``0 .. 2**63 - 2``, and the
  dense and packed-block levels hold a number of positions an array can have
  (:mod:`spcomp.runtime.bounds`);
* each level holds exactly the arrays its kind names, 1-D and integer typed (signed
  or unsigned, either byte order; uint64 values past ``2**63 - 1`` are refused);
* compressed: ``pos`` has parent positions + 1 entries, starts at 0, never
  decreases and ends at ``len(crd)``; coordinates lie in ``[0, N)``; within a
  segment they increase strictly (ordered unique), never decrease (ordered
  non-unique) or do not repeat (unordered unique);
* singleton: one coordinate per parent position, in ``[0, N)``, ordered (and
  unique) among siblings whose coordinates above are equal (COO runs);
* packed-block: the block size and K fit the types a kernel reads them in
  (:func:`~spcomp.runtime.convert.check_packed_level`: in-block coordinates as int16
  or int32, counts as int32);
  ``count`` per (parent, block) in ``[0, K]``, ``crd`` of length
  parent positions * blocks * K holding in-block coordinates ``[0, block size)``;
  used slots increase strictly (ordered) or do not repeat (unordered); unused
  slots hold coordinate 0 and, on the last level, value 0 (so kernels that read
  every slot stay in bounds and add nothing);
* ``vals`` is 1-D, float32 / float64 / bfloat16 in native byte order, one value
  per position of the last level.

The checks are vectorised NumPy: no Python loop runs per entry. Each message
names the tensor level, its kind, the array and the first bad position, e.g.
``tensor level 1 (compressed): crd[17] = 900 is out of range for dimension 1 of size 800``.
No NaN checks are made.
"""
from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from spcomp.errors import DTypeError, FormatError, InvalidTensorError
from spcomp.formats import Compressed, Dense, Format, PackedBlock, Singleton
from spcomp.formats.level import CheckContext

from .bounds import check_shape, check_storage, index_dtype_problem, uint64_overflow
from .convert import STORAGE_DTYPES, check_packed_level, level_kind


class _Where:
    """Builds messages that name the tensor, level and kind."""

    def __init__(self, name):
        self.tensor = "tensor" if name is None else f"tensor {name}"

    def level(self, l: int, lvl) -> str:
        return f"{self.tensor} level {l} ({level_kind(lvl)})"

    def fail(self, prefix: str, text: str):
        raise InvalidTensorError(f"{prefix}: {text}")


def _first(mask: np.ndarray):
    """Index of the first True in ``mask``, or None."""
    hits = np.flatnonzero(mask)
    return int(hits[0]) if hits.size else None


def _first_duplicate(segment: np.ndarray, crd: np.ndarray):
    """(earlier, later) indices of the first repeated (segment, crd) pair, or None."""
    if crd.size < 2:
        return None
    perm = np.lexsort((crd, segment))
    s, c = segment[perm], crd[perm]
    k = _first((s[1:] == s[:-1]) & (c[1:] == c[:-1]))
    if k is None:
        return None
    a, b = int(perm[k]), int(perm[k + 1])
    return (min(a, b), max(a, b))


def _index_array(where: _Where, prefix: str, arrays: Mapping, key: str) -> np.ndarray:
    a = arrays[key]
    if not isinstance(a, np.ndarray):
        where.fail(prefix, f"{key} is a {type(a).__name__}, not a NumPy array")
    if a.ndim != 1:
        where.fail(prefix, f"{key} has shape {a.shape}; level arrays are 1-D")
    problem = index_dtype_problem(a.dtype)
    if problem is not None:
        where.fail(prefix, f"{key} {problem}")
    bad = uint64_overflow(a)
    if bad is not None:  # the int64 casts below (and the kernel's) would wrap it negative
        where.fail(prefix, f"{key}[{bad[0]}] = {bad[1]} does not fit in int64 (index values must be "
                           "at most 2**63 - 1)")
    return a


def validate_storage(fmt: Format, shape, levels, vals, name: str | None = None) -> None:
    """Raise :class:`~spcomp.errors.InvalidTensorError` (``ShapeError`` for a shape out of
    bounds, ``FormatError`` for a packed level a kernel cannot read, ``DTypeError`` for
    ``vals``) on the first defect of the storage; return None when it is well formed."""
    where = _Where(name)
    t = where.tensor
    shape = check_shape(shape, name)
    if len(shape) != fmt.ndim:
        raise InvalidTensorError(f"{t}: shape {shape} has {len(shape)} dimension(s) but format "
                                 f"{str(fmt)!r} has {fmt.ndim} level(s)")
    check_storage(fmt, shape, name)
    if isinstance(levels, Mapping) or len(levels) != fmt.ndim:
        raise InvalidTensorError(f"{t}: format {str(fmt)!r} has {fmt.ndim} level(s); levels must be "
                                 f"a list of {fmt.ndim} dict(s) of arrays")
    P = 1  # positions of the parent level
    same = None  # per position: same coordinates through this level as the previous position
    for l, lvl in enumerate(fmt.levels):
        d = fmt.order[l]
        N = int(shape[d])
        prefix = where.level(l, lvl)
        arrays = levels[l]
        if not isinstance(arrays, Mapping):
            where.fail(prefix, f"expected a dict of arrays {list(lvl.arrays)}, got {type(arrays).__name__}")
        for key in lvl.arrays:
            if key not in arrays:
                where.fail(prefix, f"missing array {key!r} (a {level_kind(lvl)} level stores "
                                   f"{', '.join(lvl.arrays) or 'no arrays'})")
        for key in arrays:
            if key not in lvl.arrays:
                where.fail(prefix, f"unexpected array {key!r} (a {level_kind(lvl)} level stores "
                                   f"{', '.join(lvl.arrays) or 'no arrays'})")
        parents = "the one root position" if l == 0 else f"level {l - 1}'s {P} positions"
        next_is_singleton = l + 1 < fmt.ndim and isinstance(fmt.levels[l + 1], Singleton)

        if isinstance(lvl, Dense):
            P *= N
            same = None
        elif isinstance(lvl, Compressed):
            pos = _index_array(where, prefix, arrays, "pos")
            crd = _index_array(where, prefix, arrays, "crd")
            if pos.shape[0] != P + 1:
                where.fail(prefix, f"pos has {pos.shape[0]} entries but needs {P + 1} "
                                   f"(one more than {parents})")
            p = pos.astype(np.int64, copy=False)
            if p[0] != 0:
                where.fail(prefix, f"pos[0] = {int(p[0])}, must be 0")
            k = _first(p[1:] < p[:-1])
            if k is not None:
                where.fail(prefix, f"pos[{k + 1}] = {int(p[k + 1])} is less than pos[{k}] = {int(p[k])}; "
                                   "pos must not decrease")
            if p[-1] != crd.shape[0]:
                where.fail(prefix, f"pos[{P}] = {int(p[-1])} but crd has {crd.shape[0]} entries; "
                                   "they must be equal")
            c = crd.astype(np.int64, copy=False)
            k = _first((c < 0) | (c >= N))
            if k is not None:
                where.fail(prefix, f"crd[{k}] = {int(crd[k])} is out of range for dimension {d} of size {N}")
            nc = c.shape[0]
            is_start = np.zeros(nc + 1, bool)
            is_start[p[:-1]] = True
            is_start = is_start[:nc]
            if lvl.ordered and nc > 1:
                step = c[1:] - c[:-1]
                bad = (step <= 0) if lvl.unique else (step < 0)
                k = _first(bad & ~is_start[1:])
                if k is not None:
                    seg = int(np.searchsorted(p, k + 1, side="right")) - 1
                    rel_text = (f"is not greater than crd[{k}] = {int(c[k])}" if lvl.unique
                                else f"is less than crd[{k}] = {int(c[k])}")
                    where.fail(prefix, f"crd[{k + 1}] = {int(c[k + 1])} {rel_text} within segment {seg} "
                                       f"(pos[{seg}]..pos[{seg + 1}] = {int(p[seg])}..{int(p[seg + 1])}); "
                                       f"the level is ordered{' and unique' if lvl.unique else ''}")
            elif lvl.unique and not lvl.ordered:
                segment = np.cumsum(is_start) - 1
                dup = _first_duplicate(segment, c)
                if dup is not None:
                    where.fail(prefix, f"crd[{dup[1]}] = {int(c[dup[1]])} repeats crd[{dup[0]}] within "
                                       f"segment {int(segment[dup[0]])}; the level is unique")
            if next_is_singleton:
                same = np.zeros(nc, bool)
                if nc > 1:
                    same[1:] = ~is_start[1:] & (c[1:] == c[:-1])
            else:
                same = None
            P = nc
        elif isinstance(lvl, Singleton):
            crd = _index_array(where, prefix, arrays, "crd")
            if crd.shape[0] != P:
                where.fail(prefix, f"crd has {crd.shape[0]} entries but needs {P} (one per position of "
                                   f"{'the root' if l == 0 else f'level {l - 1}'})")
            c = crd.astype(np.int64, copy=False)
            k = _first((c < 0) | (c >= N))
            if k is not None:
                where.fail(prefix, f"crd[{k}] = {int(crd[k])} is out of range for dimension {d} of size {N}")
            if same is not None and P > 1:
                eq_above = same[1:]
                if lvl.ordered:
                    step = c[1:] - c[:-1]
                    bad = (step <= 0) if lvl.unique else (step < 0)
                    k = _first(bad & eq_above)
                    if k is not None:
                        rel_text = (f"is not greater than crd[{k}] = {int(c[k])}" if lvl.unique
                                    else f"is less than crd[{k}] = {int(c[k])}")
                        where.fail(prefix, f"crd[{k + 1}] = {int(c[k + 1])} {rel_text} while the "
                                           "coordinates of the levels above are equal; the level is "
                                           f"ordered{' and unique' if lvl.unique else ''}")
                elif lvl.unique:
                    segment = np.cumsum(~same) - 1
                    dup = _first_duplicate(segment, c)
                    if dup is not None:
                        where.fail(prefix, f"crd[{dup[1]}] = {int(c[dup[1]])} repeats crd[{dup[0]}] under "
                                           "equal coordinates of the levels above; the level is unique")
            if next_is_singleton and same is not None:
                nxt = np.zeros(P, bool)
                if P > 1:
                    nxt[1:] = same[1:] & (c[1:] == c[:-1])
                same = nxt
            else:
                same = None
        elif isinstance(lvl, PackedBlock):
            count = _index_array(where, prefix, arrays, "count")
            crd = _index_array(where, prefix, arrays, "crd")
            B, nb, K = lvl.block_size(N), lvl.num_blocks(N), lvl.K
            try:
                check_packed_level(fmt, l, lvl, N)
            except FormatError as e:
                raise FormatError(f"{t}: {e}") from None
            G = P * nb  # (parent, block) pairs
            if count.shape[0] != G:
                where.fail(prefix, f"count has {count.shape[0]} entries but needs {G} "
                                   f"({nb} block(s) of {B} for dimension {d} of size {N}, under {parents})")
            k = _first((count < 0) | (count > K))
            if k is not None:
                where.fail(prefix, f"count[{k}] = {int(count[k])} is outside 0..{K} (K = {K} slots per block)")
            if crd.shape[0] != G * K:
                where.fail(prefix, f"crd has {crd.shape[0]} entries but needs {G * K} "
                                   f"({G} block(s) of K = {K} slots)")
            # one row per (parent, block), one column per slot: no per-slot index arrays
            c2 = crd.reshape(G, K)
            used = np.arange(K)[None, :] < count[:, None]
            last = N - (nb - 1) * B if nb else B      # size of the last (maybe shorter) block
            bsize = np.full(nb, B, np.int64)
            if nb:
                bsize[-1] = last
            bsize_g = np.tile(bsize, P)[:, None] if G else np.zeros((0, 1), np.int64)
            k = _first((used & ((c2 < 0) | (c2 >= bsize_g))).reshape(-1))
            if k is not None:
                gk, s = divmod(k, K)
                b = gk % nb
                where.fail(prefix, f"crd[{k}] = {int(crd[k])} (slot {s} of block {b}) is out of "
                                   f"range 0..{int(bsize[b]) - 1} for block {b} of dimension {d} of size {N} "
                                   f"(in-block coordinates, block size {B})")
            k = _first((~used & (c2 != 0)).reshape(-1))
            if k is not None:
                gk, s = divmod(k, K)
                where.fail(prefix, f"crd[{k}] = {int(crd[k])} is in an unused slot (slot {s}, "
                                   f"count[{gk}] = {int(count[gk])}) and must be 0")
            if lvl.ordered:
                if K > 1:
                    k = _first((used[:, 1:] & (c2[:, 1:] <= c2[:, :-1])).reshape(-1))
                    if k is not None:
                        gk, s = divmod(k, K - 1)
                        k = gk * K + s + 1
                        where.fail(prefix, f"crd[{k}] = {int(crd[k])} is not greater than crd[{k - 1}] = "
                                           f"{int(crd[k - 1])} within block {gk % nb} under parent position "
                                           f"{gk // nb} (count[{gk}] = {int(count[gk])}); the level is "
                                           "ordered")
            else:
                ui = np.flatnonzero(used.reshape(-1))
                dup = _first_duplicate(ui // K, crd[ui].astype(np.int64))
                if dup is not None:
                    a, b = int(ui[dup[0]]), int(ui[dup[1]])
                    where.fail(prefix, f"crd[{b}] = {int(crd[b])} repeats crd[{a}] within block "
                                       f"{(a // K) % nb} under parent position {a // K // nb}; "
                                       "the level is unique")
            if l == fmt.ndim - 1:
                _check_vals_array(t, vals, G * K)
                k = _first((~used & (vals.reshape(G, K) != 0)).reshape(-1))
                if k is not None:
                    where.fail(prefix, f"vals[{k}] = {vals[k]} is in an unused slot (count[{k // K}] = "
                                       f"{int(count[k // K])}) and must be 0")
            same = None
            P = G * K
        else:  # a kind that validates itself (Level.validate: the bitmap level)
            P = lvl.validate(CheckContext(
                arrays, N, P, parents, lambda text, prefix=prefix: where.fail(prefix, text),
                lambda key, prefix=prefix, arrays=arrays: _index_array(where, prefix, arrays, key)))
            same = None
    _check_vals_array(t, vals, P)


def _check_vals_array(t: str, vals, P: int) -> None:
    if not isinstance(vals, np.ndarray):
        raise InvalidTensorError(f"{t}: vals is a {type(vals).__name__}, not a NumPy array")
    native = vals.dtype.newbyteorder("=")
    if not vals.dtype.isnative and native in STORAGE_DTYPES:  # (the packers convert; raw arrays are kept)
        order = "big-endian" if vals.dtype.byteorder == ">" else "little-endian"
        raise DTypeError(f"{t}: vals is {order} ({vals.dtype.str}); a kernel reads {native.name} in "
                         f"this machine's byte order: convert with .astype({native.str!r})")
    if vals.dtype not in STORAGE_DTYPES:
        raise DTypeError(f"{t}: vals has dtype {vals.dtype}; spcomp stores float32, float64 or "
                         "bfloat16 values")
    if vals.ndim != 1:
        raise InvalidTensorError(f"{t}: vals has shape {vals.shape}; it must be 1-D")
    if vals.shape[0] != P:
        raise InvalidTensorError(f"{t}: vals has {vals.shape[0]} entries but the last level has "
                                 f"{P} positions")
