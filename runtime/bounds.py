"""The sizes and index values spcomp accepts, and the checks that refuse the rest.

A generated kernel computes every size, position and coordinate in int64, and it
gets sizes through ctypes, which wraps a Python int of 2**63 or more to a negative
number without a word. NumPy, for its part, truncates a float size, wraps uint64
values past int64 when it casts them, and raises its own exceptions (``ValueError:
array is too big``) for arrays no machine can hold. So every size and index value
is checked where it enters spcomp, by the functions here, and refused with a
:class:`~spcomp.errors.ShapeError` or :class:`~spcomp.errors.InvalidTensorError`
that names the tensor, the dimension or array, and the bound:

* a dimension size is a Python or NumPy integer (not a float, not a bool) in
  ``0 .. SIZE_LIMIT - 1``: below ``2**63 - 1``, so that ``N + 1`` (a ``pos`` array's
  length, a loop's end) still fits in int64;
* the positions of the levels whose size is fixed by the shape (dense levels, and
  packed-block levels: parent positions * blocks * K) stay within
  ``POSITION_LIMIT``, so that one 8-byte entry per position fits in the ``2**63 - 1``
  bytes an array may span;
* an index array (``pos``, ``crd``, ``count``, coordinates, SciPy's
  ``indptr``/``indices``) has a signed or unsigned integer dtype in either byte
  order, and its values fit in int64 (a uint64 value past ``2**63 - 1`` is refused,
  not wrapped).
"""
from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from spcomp.errors import InvalidTensorError, ShapeError
from spcomp.formats import Format

INT64_MAX = int(np.iinfo(np.int64).max)
#: Every dimension size must be below this (``2**63 - 1``).
SIZE_LIMIT = INT64_MAX
SIZE_BOUND_TEXT = "below 2**63 - 1"
#: The most positions the dense and packed-block levels of a tensor may hold.
POSITION_LIMIT = INT64_MAX // 8 - 1

__all__ = ["SIZE_LIMIT", "POSITION_LIMIT", "check_shape", "check_storage", "check_sizes",
           "index_dtype_problem", "native_index_array"]


def _tensor(name) -> str:
    return "tensor" if name is None else f"tensor {name}"


def check_shape(shape, name=None) -> tuple:
    """``shape`` as a tuple of Python ints, or a ShapeError naming the tensor and the
    dimension: sizes are integers (a float such as ``2.5`` or ``3.0`` is refused
    rather than truncated; a bool is not a size), non-negative and below ``2**63 - 1``."""
    if type(shape) is tuple and all(type(s) is int and 0 <= s < SIZE_LIMIT for s in shape):
        return shape  # the common case, kept cheap: Tensor.__init__ runs this for every result
    t = _tensor(name)
    if isinstance(shape, (str, bytes, Mapping)):
        raise ShapeError(f"{t}: shape {shape!r} is not a sequence of sizes; give a tuple of integers")
    try:
        dims = tuple(shape)
    except TypeError:
        raise ShapeError(f"{t}: shape {shape!r} is not a sequence of sizes; give a tuple of "
                         "integers") from None
    for d, s in enumerate(dims):
        if isinstance(s, (bool, np.bool_)) or not isinstance(s, (int, np.integer)):
            raise ShapeError(f"{t}: size of dimension {d} is {s!r} ({type(s).__name__}); shape must be "
                             "integers (Python int or NumPy integer)")
        if s < 0:
            raise ShapeError(f"{t}: size of dimension {d} is {int(s)}; sizes must be non-negative")
        if s >= SIZE_LIMIT:
            raise ShapeError(f"{t}: size of dimension {d} is {int(s)}; spcomp takes sizes "
                             f"{SIZE_BOUND_TEXT} ({SIZE_LIMIT})")
    return tuple(int(s) for s in dims)


def check_storage(fmt: Format, shape, name=None) -> None:
    """A ShapeError when the levels of ``fmt`` whose positions the shape alone fixes
    (``Level.shape_sized``: dense, packed-block and bitmap levels, down to the first
    compressed or singleton one)
    would hold more than ``POSITION_LIMIT`` positions: their ``pos``/``count``/``crd``/
    ``vals`` arrays could not exist. Levels below a compressed one are sized by its
    arrays, which validation compares."""
    dims = fmt.level_shape(shape)
    P = 1
    for l, lvl in enumerate(fmt.levels):
        N = dims[l]
        if not lvl.shape_sized:
            return
        P = lvl.num_positions(P, N, {})
        if P > POSITION_LIMIT:
            dims = ", ".join(str(d) for d in fmt.order[:l + 1])
            raise ShapeError(f"{_tensor(name)} of shape {tuple(shape)} in format {str(fmt)!r}: storage "
                             f"level(s) 0..{l} (dimension(s) {dims}) hold {P} positions; spcomp stores "
                             f"at most {POSITION_LIMIT} (2**60 - 2), so that an array with an 8-byte "
                             "entry per position fits in 2**63 - 1 bytes")


def check_sizes(sizes: Mapping, out_name=None, out_format: Format | None = None,
                out_indices=()) -> None:
    """The sizes a kernel call bound to its indices (from the operands' shapes): each
    below ``2**63 - 1`` (a ctypes int64 argument would wrap), and the output's
    fixed-size storage within :func:`check_storage`'s bound."""
    for i, s in sizes.items():
        if not 0 <= s < SIZE_LIMIT:
            raise ShapeError(f"index {i} has size {s}; spcomp takes sizes {SIZE_BOUND_TEXT} "
                             f"({SIZE_LIMIT})")
    if out_format is not None and out_indices:
        check_storage(out_format, tuple(sizes[i] for i in out_indices),
                      None if out_name is None else f"{out_name} (the output)")


def index_dtype_problem(dtype) -> str | None:
    """Why an array of ``dtype`` cannot hold indices (None when it can): only signed
    and unsigned integers; bools and floats are not indices."""
    dtype = np.dtype(dtype)
    if dtype.kind in "iu":
        return None
    return (f"has dtype {dtype}; index arrays must be signed or unsigned integers whose values "
            "fit in int64")


def uint64_overflow(a: np.ndarray):
    """``(position, value)`` of the first value of an unsigned 64-bit array past
    ``2**63 - 1`` (where a cast to int64 would wrap it negative), or None."""
    if a.dtype.kind != "u" or a.dtype.itemsize < 8 or not a.size:
        return None
    hits = np.flatnonzero(a > INT64_MAX)
    return (int(hits[0]), int(a[hits[0]])) if hits.size else None


def native_index_array(a, what: str) -> np.ndarray:
    """``a`` as a native-order int32 or int64 array (``a`` itself when it is one):
    what SciPy's and spcomp's own conversions take. Other integer dtypes, and either
    byte order, are converted (one copy); anything else, and uint64 values past
    ``2**63 - 1``, raise an InvalidTensorError that names ``what`` (the array)."""
    a = np.asarray(a)
    problem = index_dtype_problem(a.dtype)
    if problem is not None:
        raise InvalidTensorError(f"{what} {problem}")
    if a.dtype.isnative and a.dtype in (np.dtype(np.int32), np.dtype(np.int64)):
        return a
    bad = uint64_overflow(a)
    if bad is not None:
        raise InvalidTensorError(f"{what}[{bad[0]}] = {bad[1]} does not fit in int64 (index values "
                                 f"must be at most {INT64_MAX})")
    top = int(a.max()) if a.size else 0
    return a.astype(np.int32 if top <= np.iinfo(np.int32).max and a.dtype.itemsize <= 4
                    else np.int64)
