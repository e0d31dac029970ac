"""Structural validation of tensor storage (DESIGN §8).

:func:`validate_storage` checks everything a generated kernel relies on before a
user's arrays reach machine code: the shape and each level's array names here,
each level's own rules through its kind's ``validate`` hook (spcomp/formats):

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
  (``PackedBlock.check_types``: in-block coordinates as int16
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

from spcomp.errors import DTypeError, InvalidTensorError
from spcomp.formats import Format
from spcomp.formats.level import CheckContext

from .bounds import check_shape, check_storage, index_dtype_problem, uint64_overflow
from .convert import STORAGE_DTYPES, level_kind


class _Where:
    """Builds messages that name the tensor, level and kind."""

    def __init__(self, name):
        self.tensor = "tensor" if name is None else f"tensor {name}"

    def level(self, l: int, lvl) -> str:
        return f"{self.tensor} level {l} ({level_kind(lvl)})"

    def fail(self, prefix: str, text: str):
        raise InvalidTensorError(f"{prefix}: {text}")


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
    if fmt.blocks is not None:  # whole blocks: the level view's arrays over the level shape
        misfit = fmt.block_misfit(shape)
        if misfit is not None:
            d, size, b = misfit
            raise InvalidTensorError(f"{t}: shape {shape} in format {str(fmt)!r}: dimension {d} has size "
                                     f"{size}, not a multiple of its block size {b}")
        validate_storage(fmt.level_view(), fmt.level_shape(shape), levels, vals,
                         f"{name or 'tensor'} ({str(fmt)} levels)")
        return
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
        ctx = CheckContext(
            arrays, N, P, parents, lambda text, prefix=prefix: where.fail(prefix, text),
            lambda key, prefix=prefix, arrays=arrays: _index_array(where, prefix, arrays, key),
            dim=d, level=l, fmt=fmt, tensor=t, last=l == fmt.ndim - 1, vals=vals,
            check_vals=lambda count: _check_vals_array(t, vals, count),
            next_aligned=l + 1 < fmt.ndim and fmt.levels[l + 1].aligned_with_parent, same=same)
        P = lvl.validate(ctx)  # the level's own rules
        same = ctx.same
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
