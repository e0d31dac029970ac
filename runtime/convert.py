"""Packing coordinates and dense arrays into level storage, and unpacking it again.

Everything here works on plain arrays, so :mod:`spcomp.runtime.tensor` can wrap it:

* :func:`pack_coo` / :func:`pack_dense` build ``(format, levels, vals)`` for any
  format from a coordinate list or a dense array. They walk the levels top-down
  with one array ``ppos`` (the parent position of every entry) and build each
  level's arrays with a few vectorised NumPy passes: no Python loop runs per entry.
* :func:`unpack_coo` / :func:`unpack_dense` read any storage back.
* :func:`resolve_dtype` decides the value dtype (float32, float64, bfloat16), always
  in native byte order: big-endian data (read from a file, say) is converted by
  the packers on the copy they make anyway.
* :func:`scalar_value` converts a scalar operand to a kernel's value type, refusing
  what the conversion would change silently.

Storage layout is fixed by the level docstrings in :mod:`spcomp.formats`.
Packing rules beyond that layout:

* Entries are stored in lexicographic order of their storage-ordered coordinates.
* A unique level groups entries by (parent position, coordinate). A non-unique
  compressed level (the top of COO) gives one position per distinct coordinate
  tuple through the run of singleton levels under it, so COO holds one position
  per entry; duplicates are summed before packing.
* A singleton level under a level with more positions than entries (``d q``)
  stores coordinate 0 and value 0 at positions that hold no entry.
* Packed-block slots are filled in coordinate order; unused slots hold coordinate
  0 and value 0. ``overflow="grow"`` raises K to the largest block count.
"""
from __future__ import annotations

import dataclasses
import math

import ml_dtypes
import numpy as np

from spcomp.errors import DTypeError, FormatError, InvalidTensorError, PackedOverflowError, ShapeError
from spcomp.formats import Format
from spcomp.formats import storage
from spcomp.formats.level import PackContext

from .bounds import INT64_MAX, check_shape, check_storage, index_dtype_problem, uint64_overflow

BFLOAT16 = np.dtype(ml_dtypes.bfloat16)
FLOAT32 = np.dtype(np.float32)
FLOAT64 = np.dtype(np.float64)
#: The value dtypes a tensor may store.
STORAGE_DTYPES = (FLOAT32, FLOAT64, BFLOAT16)
INT32_MAX = int(np.iinfo(np.int32).max)

_OVERFLOW_MODES = ("error", "grow")


# ------------------------------------------------------------------ dtypes

def resolve_dtype(dtype=None, source=None) -> np.dtype:
    """The value dtype to store, given a requested ``dtype`` and the ``source`` values' dtype.

    ``dtype=None`` keeps float32, float64 and bfloat16, turns float16 into float32 and
    integers/bools into float64. ``"bfloat16"`` (or ``"bf16"``, ``ml_dtypes.bfloat16``)
    stores bfloat16. Complex, object and string data, and any other requested dtype,
    raise :class:`~spcomp.errors.DTypeError` naming the dtype. A non-native byte order
    (``>f8`` on a little-endian machine) counts as its native twin: the result is
    always native, so converting to it byte-swaps.
    """
    src = None if source is None else _native(np.dtype(source))
    if src is not None and (src.kind in "cOSUMmV" and src != BFLOAT16):
        raise DTypeError(f"values of dtype {src} cannot be stored: spcomp stores float32, float64 "
                         "or bfloat16 values (convert real data with .astype(np.float64))")
    if dtype is None:
        if src is None:
            return FLOAT64
        if src in STORAGE_DTYPES:
            return src
        if src == np.float16:
            return FLOAT32
        if src.kind in "biu":
            return FLOAT64
        raise DTypeError(f"values of dtype {src} cannot be stored: spcomp stores float32, float64 "
                         "or bfloat16 values")
    if isinstance(dtype, str) and dtype.strip().lower() in ("bfloat16", "bf16"):
        return BFLOAT16
    try:
        want = _native(np.dtype(dtype))
    except TypeError:
        raise DTypeError(f"dtype {dtype!r} is not a dtype: spcomp stores float32, float64 or "
                         "bfloat16 values") from None
    if want not in STORAGE_DTYPES:
        raise DTypeError(f"dtype {want} cannot be stored: spcomp stores float32, float64 or "
                         "bfloat16 values")
    return want


def _native(dtype: np.dtype) -> np.dtype:
    return dtype if dtype.isnative else dtype.newbyteorder("=")


def scalar_value(name: str, value, dtype) -> np.ndarray:
    """A Python or NumPy scalar operand as a 0-d array of the kernel's value ``dtype``.

    Refused with a :class:`~spcomp.errors.DTypeError` naming operand ``name``: complex
    values (NumPy's cast drops the imaginary part), non-numbers, and finite values
    that the cast would turn into inf (``1e300`` for float32; an ``int`` past float64's
    range, where Python's ``float()`` raises OverflowError). Rounding to the kernel's
    precision is accepted (an ``int`` past int64 included: it is converted to a float,
    never to an integer type), as is inf or NaN given as such.
    """
    dtype = np.dtype(dtype)
    if isinstance(value, (complex, np.complexfloating)):
        raise DTypeError(f"operand {name} is the complex scalar {value!r}; spcomp computes with real "
                         f"{dtype} values (pass .real if the imaginary part is not needed)")
    if isinstance(value, (bool, np.bool_)):
        return np.asarray(value, dtype=dtype)
    if not isinstance(value, (int, float, np.integer, np.floating)):
        raise DTypeError(f"operand {name} is a {type(value).__name__}, which spcomp cannot compute "
                         f"with; the kernel takes a real {dtype} scalar")
    finfo = ml_dtypes.finfo(dtype)
    try:
        x = float(value)
    except OverflowError:
        x = None
    text = repr(value)
    if len(text) > 32:
        text = f"(an integer of {len(str(value))} digits)"
    if x is None or (math.isinf(x) and np.isfinite(value)):
        raise DTypeError(f"operand {name} = {text} is beyond the range of float64; the kernel takes "
                         f"{dtype} values of magnitude at most {float(finfo.max):.7g}")
    with np.errstate(over="ignore"):
        out = np.asarray(x, dtype=dtype)
    if math.isfinite(x) and not np.isfinite(out):
        raise DTypeError(f"operand {name} = {text} is beyond the range of {dtype} (largest finite "
                         f"magnitude {float(finfo.max):.7g}): it would become inf; compile with "
                         "dtype='float64' or scale the value")
    return out


def _work_dtype(dtype: np.dtype) -> np.dtype:
    """Accumulation dtype for summing duplicates: float64 for float64, else float32."""
    return FLOAT64 if dtype == FLOAT64 else FLOAT32


index_array = storage.index_array  # int32 when the values fit, else int64


def level_kind(level) -> str:
    """The name messages use for a level kind (the kind says)."""
    return level.kind_name


def storage_dims(fmt: Format, shape) -> list:
    """Size of the coordinates each storage level holds (a blocked level's: ``N/b`` or ``b``)."""
    return list(fmt.level_shape(shape))


def check_block_fit(fmt: Format, shape, what: str = "the tensor") -> None:
    """ShapeError when a blocked format's dimension is not a multiple of its block:
    spcomp stores whole blocks only (as scipy's BSR does)."""
    misfit = fmt.block_misfit(shape)
    if misfit is not None:
        d, size, b = misfit
        raise ShapeError(f"{what} has shape {tuple(int(s) for s in shape)} but format {str(fmt)!r} cuts "
                         f"dimension {d} into blocks of {b}, and {size} is not a multiple of {b}; "
                         "pad it to a multiple or use an unblocked format")


def _pack_blocked(fmt: Format, shape, coords, values, dtype, sum_duplicates, overflow):
    """pack_coo of a blocked format: the entries' level coordinates packed into its level view."""
    shape = check_shape(shape)
    if len(shape) != fmt.ndim:
        raise FormatError(f"format {str(fmt)!r} has {fmt.ndim} dimension(s) but the tensor has {len(shape)}")
    check_block_fit(fmt, shape)
    coords = _as_coords(coords, len(shape))
    for d, c in enumerate(coords):
        bad = np.flatnonzero((c < 0) | (c >= shape[d])) if c.ndim == 1 else np.zeros(0, np.int64)
        if bad.size:
            k = int(bad[0])
            raise InvalidTensorError(f"coords[{d}][{k}] = {int(c[k])} is out of range for dimension {d} "
                                     f"of size {shape[d]}")
    lcoords = fmt.to_level_coords([c.astype(np.int64, copy=False) for c in coords])
    _v, levels, vals = pack_coo(fmt.level_view(), fmt.level_shape(shape), lcoords, values, dtype,
                                sum_duplicates, overflow)
    return fmt, levels, vals


def blocked_view(a: np.ndarray, fmt: Format) -> np.ndarray:
    """A dense array as the level view of a blocked format (a view: reshape, transpose)."""
    check_block_fit(fmt, a.shape, "the array")
    shape, axis = [], {}
    for d, b in enumerate(fmt.blocks):
        if b > 1:
            axis[(d, "outer")], axis[(d, "inner")] = len(shape), len(shape) + 1
            shape += [a.shape[d] // b, b]
        else:
            axis[(d, "whole")] = len(shape)
            shape.append(a.shape[d])
    return a.reshape(shape).transpose([axis[key] for key in fmt.level_map()])


def _check_overflow_mode(overflow: str) -> None:
    if overflow not in _OVERFLOW_MODES:
        raise ValueError(f"overflow must be 'error' or 'grow', not {overflow!r}")


# ------------------------------------------------------------------ helpers

def _run_starts(n: int, *keys: np.ndarray) -> np.ndarray:
    """Boolean mask: entry k differs from entry k-1 in some key (entry 0 always starts)."""
    start = np.zeros(n, bool)
    if n:
        start[0] = True
        for key in keys:
            start[1:] |= key[1:] != key[:-1]
    return start


def _with_level(fmt: Format, l: int, level) -> Format:
    """``fmt`` with level ``l`` replaced; a preset's name follows the new last level
    where the level spells it (``Level.preset_name``: twell, ell with the new K)."""
    levels = list(fmt.levels)
    levels[l] = level
    name = level.preset_name(fmt.name) if fmt.name and l == len(levels) - 1 else None
    return Format(tuple(levels), fmt.order, name=name)


# ------------------------------------------------------------------ packing

def _sort_coo(scoords: list, shape_s: list, values: np.ndarray):
    """Sort entries lexicographically by storage coordinates; return (scoords, values, unique?)."""
    n = len(values)
    if n <= 1 or not scoords:
        return scoords, values, n <= 1
    total = 1
    for s in shape_s:
        total *= max(int(s), 1)
    if total < 2 ** 62:
        key = np.zeros(n, np.int64)
        for c, s in zip(scoords, shape_s):
            key *= int(s)
            key += c
        d = np.diff(key)
        if not (d < 0).any():
            return scoords, values, bool((d > 0).all())
        perm = np.argsort(key, kind="stable")
        key = key[perm]
        unique = bool((key[1:] != key[:-1]).all())
    else:
        perm = np.lexsort(scoords[::-1])
        unique = None
    scoords = [c[perm] for c in scoords]
    values = values[perm]
    if unique is None:
        unique = not (~_run_starts(n, *scoords)[1:]).any()
    return scoords, values, unique


def pack_coo(fmt: Format, shape, coords, values, dtype=None, sum_duplicates=True,
             overflow="error", sorted_unique=False):
    """Storage of a tensor given by coordinates (in dimension order) and values.

    ``coords`` is an ``(ndim, nnz)`` integer array or a sequence of ``ndim`` arrays.
    Returns ``(format, levels, vals)``; the format differs from ``fmt`` only when
    ``overflow="grow"`` raised a packed level's K. ``sorted_unique=True`` promises the
    entries are already unique and sorted in storage order (skips the sort).
    """
    _check_overflow_mode(overflow)
    if fmt.blocks is not None:
        return _pack_blocked(fmt, shape, coords, values, dtype, sum_duplicates, overflow)
    shape = check_shape(shape)
    ndim = len(shape)
    if fmt.ndim != ndim:
        raise FormatError(f"format {str(fmt)!r} has {fmt.ndim} level(s) but the tensor has "
                          f"{ndim} dimension(s)")
    check_storage(fmt, shape)
    values = values_in = np.asarray(values)
    target = resolve_dtype(dtype, values.dtype)
    coords = _as_coords(coords, ndim)
    nnz = coords[0].shape[0] if ndim else values.size
    if values.ndim == 0:
        values = np.broadcast_to(values, (nnz,))
    values = values.reshape(-1) if values.ndim > 1 and values.size == nnz else values
    if values.ndim != 1 or values.shape[0] != nnz:
        raise ShapeError(f"values has shape {values.shape} but the coordinates list {nnz} entries")
    for d, c in enumerate(coords):
        if c.shape != (nnz,):
            raise ShapeError(f"coords[{d}] has shape {c.shape}; every coordinate array needs "
                             f"{nnz} entries")
        if nnz:
            bad = np.flatnonzero((c < 0) | (c >= shape[d]))
            if bad.size:
                k = int(bad[0])
                raise InvalidTensorError(f"coords[{d}][{k}] = {int(c[k])} is out of range for "
                                         f"dimension {d} of size {shape[d]}")
    if ndim == 0:
        work = values.astype(_work_dtype(target))
        if nnz > 1 and not sum_duplicates:
            raise InvalidTensorError(f"an order-0 tensor holds one value; got {nnz} entries "
                                     "(pass sum_duplicates=True to add them)")
        return fmt, [], np.array([work.sum()], dtype=target)
    scoords = [coords[d].astype(np.int64, copy=False) for d in fmt.order]
    dims = storage_dims(fmt, shape)
    if sorted_unique:
        unique = True
    else:
        scoords, values, unique = _sort_coo(scoords, dims, values)
    if not unique:
        start = _run_starts(nnz, *scoords)
        if not sum_duplicates:
            k = int(np.flatnonzero(~start)[0])
            where = tuple(int(coords_d[k]) for coords_d in _unpermute(scoords, fmt.order))
            raise InvalidTensorError(f"coordinate {where} appears more than once; pass "
                                     "sum_duplicates=True to add duplicates")
        idx = np.flatnonzero(start)
        values = np.add.reduceat(values.astype(_work_dtype(target)), idx) if idx.size else values
        scoords = [c[idx] for c in scoords]
    else:
        # _build may hand ``values`` back as vals: never alias the caller's array
        if sorted_unique or np.may_share_memory(values, values_in):
            values = np.array(values, dtype=target)
    try:
        return _build(fmt, dims, scoords, values.astype(target, copy=False), overflow)
    except MemoryError as e:  # NumPy's own message says how much it asked for
        raise ShapeError(f"tensor of shape {shape} in format {str(fmt)!r}: its storage cannot be "
                         f"allocated ({e})") from e


def _unpermute(scoords: list, order) -> list:
    out = [None] * len(order)
    for l, d in enumerate(order):
        out[d] = scoords[l]
    return out


def _as_coords(coords, ndim: int) -> list:
    if isinstance(coords, np.ndarray):
        if coords.ndim == 1 and ndim == 1:
            coords = [coords]
        elif coords.ndim != 2 or coords.shape[0] != ndim:
            raise ShapeError(f"coords has shape {coords.shape}; expected (ndim, nnz) with ndim = {ndim}")
    coords = [np.asarray(c) for c in coords]
    if len(coords) != ndim:
        raise ShapeError(f"coords has {len(coords)} coordinate arrays for a tensor of order {ndim}")
    for d, c in enumerate(coords):
        _check_coords(f"coords[{d}]", c)
    if ndim:
        coords = [c.astype(np.int64, copy=False).reshape(-1) if c.ndim else c.reshape(1).astype(np.int64)
                  for c in coords]
    return coords


def _check_coords(what: str, c: np.ndarray) -> None:
    """An InvalidTensorError unless ``c`` holds whole numbers that fit in int64: an
    integer array (a uint64 value past 2**63 - 1 would wrap in the cast), or a float
    array of finite whole numbers below 2**63 (the cast truncates and wraps the rest)."""
    if not c.size:
        return
    if c.dtype.kind == "f":
        bad = np.flatnonzero(~np.isfinite(c) | (c != np.round(c)) | (np.abs(c) >= 2.0 ** 63))
        if bad.size:
            k = int(bad[0])
            raise InvalidTensorError(f"{what}[{k}] = {c.reshape(-1)[k]!r} is not a whole number that fits "
                                     "in int64; coordinates are integers (signed or unsigned integer "
                                     "arrays, or floats holding whole numbers)")
        return
    problem = index_dtype_problem(c.dtype)
    if problem is not None:
        raise InvalidTensorError(f"{what} {problem}")
    bad = uint64_overflow(c.reshape(-1))
    if bad is not None:
        raise InvalidTensorError(f"{what}[{bad[0]}] = {bad[1]} does not fit in int64 (coordinates must "
                                 f"be at most {INT64_MAX})")


def pack_dense(a, fmt: Format, dtype=None, overflow="error"):
    """Storage of a dense array; zeros are not stored in sparse levels."""
    _check_overflow_mode(overflow)
    a = np.asarray(a)
    target = resolve_dtype(dtype, a.dtype)
    if fmt.ndim != a.ndim:
        raise FormatError(f"format {str(fmt)!r} has {fmt.ndim} level(s) but the array has "
                          f"{a.ndim} dimension(s)")
    if fmt.blocks is not None:
        _v, levels, vals = pack_dense(blocked_view(a, fmt), fmt.level_view(), dtype, overflow)
        return fmt, levels, vals
    st = np.transpose(a, fmt.order) if a.ndim else a
    if fmt.is_dense:
        return fmt, [{} for _ in fmt.levels], np.array(st, dtype=target, order="C").reshape(-1)
    dims = list(st.shape)
    # Leading dense levels: their positions are the row-major index of their coordinates,
    # so one flat index per nonzero gives the parent position of the first sparse level.
    lead = 0
    while fmt.levels[lead].is_dense:
        lead += 1
    mask = st != 0
    values = st[mask].astype(target, copy=False)   # boolean indexing gives a fresh array
    flat = np.flatnonzero(mask)
    inner = 1
    for s in dims[lead:]:
        inner *= s
    if lead:
        ppos = flat // inner
        rest = flat - ppos * inner
    else:
        ppos, rest = None, flat
    sub = [rest] if len(dims) - lead == 1 else list(np.unravel_index(rest, dims[lead:]))
    sc = [None] * lead + sub
    P = 1
    for s in dims[:lead]:
        P *= s
    return _build(fmt, dims, sc, values, overflow, start=lead, ppos=ppos, P=P)


def _build(fmt: Format, dims: list, sc: list, values: np.ndarray, overflow: str,
           start: int = 0, ppos=None, P: int = 1):
    """Build level arrays from unique entries sorted by storage coordinates.

    ``values`` must be a fresh array (it may become ``vals``). Levels before ``start``
    are built already (dense ones by the caller, or any kept by :func:`repack_below`)
    and folded into ``ppos`` (the parent position of each entry, ``None`` meaning
    ``arange(n)``) and ``P`` (the number of parent positions).
    """
    n = values.shape[0]
    ndim = fmt.ndim
    levels_out: list = [{} for _ in range(start)]
    if ppos is None and start == 0:
        ppos = np.zeros(n, np.int64)   # every entry under the one root position

    def group_starts(l: int, m: int):
        # entries that open a new (parent position, coordinates through level m) group;
        # None when every entry does (the entries are unique)
        if m == ndim - 1 or n == 0:
            return None
        keys = [ppos] if ppos is not None else []
        start_mask = _run_starts(n, *keys, *sc[l:m + 1])
        return None if start_mask.all() else start_mask

    def identity():
        return np.arange(n, dtype=np.int64)

    for l in range(start, ndim):
        lvl = fmt.levels[l]
        N = dims[l]
        c = sc[l].astype(np.int64, copy=False)
        if ppos is None:
            ppos = identity()
        ctx = PackContext(N, c, ppos, P, level=l, fmt=fmt, group_starts=lambda m, l=l: group_starts(l, m),
                          overflow=overflow, overflow_error=lambda lvl, counts, largest, nb, l=l:
                          _overflow_error(fmt, l, lvl, dims, counts, largest, nb))
        arrays, ppos, P = lvl.pack(ctx)  # the level's own rule
        if ctx.replaced is not None:  # a packed-block level whose K grew
            fmt = _with_level(fmt, l, ctx.replaced)
        levels_out.append(arrays)
    if ppos is None and P == n:
        return fmt, levels_out, values
    vals = np.zeros(P, values.dtype)
    vals[ppos if ppos is not None else identity()] = values
    return fmt, levels_out, vals


def _overflow_error(fmt, l, lvl, dims, counts, largest, nb) -> PackedOverflowError:
    g = int(np.argmax(counts))
    q, b = divmod(g, nb)
    B = lvl.block_size(dims[l])
    lo, hi = b * B, min((b + 1) * B, dims[l]) - 1
    above = fmt.levels[:l]
    if all(x.is_dense for x in above):
        where = f"under index {tuple(int(i) for i in np.unravel_index(q, dims[:l]))} " if l else ""
    else:
        where = f"under parent position {q} "
    suggestion = _with_level(fmt, l, dataclasses.replace(lvl, K=largest))
    return PackedOverflowError(
        f"tensor level {l} (packed-block {lvl.spec()}) of format {str(fmt)!r}: block {b} "
        f"(coordinates {lo}..{hi}) {where}holds {largest} nonzeros but has only K={lvl.K} slots; "
        f"the largest count found is {largest}. Use K >= {largest} (format {str(suggestion)!r}) "
        f"or pass overflow='grow'", largest)


def repack_below(src: Format, levels: list, vals: np.ndarray, fmt: Format, shape):
    """``(levels, vals)`` of ``fmt`` from storage of ``src``, a format with the same mode
    order whose levels agree with ``fmt``'s down to some level ``L``: the arrays of the
    levels above ``L`` are kept as they are, and only the entries' coordinates from
    ``L`` down are read back and packed (in storage order already: no sort)."""
    if fmt.blocks is not None:  # kept levels and their view agree: repack the view
        return repack_below(src.level_view(), levels, vals, fmt.level_view(), fmt.level_shape(shape))
    dims = storage_dims(fmt, shape)
    L = next((l for l, (a, b) in enumerate(zip(src.levels, fmt.levels)) if a != b), fmt.ndim)
    if L == fmt.ndim:
        return levels, vals
    P = 1
    for l in range(L):
        P = src.levels[l].num_positions(P, dims[l], levels[l])
    cur = owner = np.arange(P, dtype=np.int64)
    coords: list = []
    for l in range(L, src.ndim):
        new, mine, counts = src.levels[l].unpack(levels[l], cur, dims[l])
        owner = np.repeat(owner, counts)
        coords = [np.repeat(x, counts) for x in coords] + [mine]
        cur = new
    _fmt, out, new_vals = _build(fmt, dims, [None] * L + coords, vals[cur], "error", start=L, ppos=owner, P=P)
    return list(levels[:L]) + out[L:], new_vals


# ------------------------------------------------------------------ unpacking

def unpack_coo(fmt: Format, shape, levels: list, vals: np.ndarray):
    """Stored entries as (storage-ordered coordinate arrays, values), in storage order.

    Walks the used positions top-down; unused packed slots are skipped. Assumes
    well-formed storage (validate first when the arrays come from a user). A blocked
    format's entries come back as dimension coordinates in mode order.
    """
    if fmt.blocks is not None:
        lcoords, values = unpack_coo(fmt.level_view(), fmt.level_shape(shape), levels, vals)
        dcoords = fmt.from_level_coords(lcoords) if values.size else [np.zeros(0, np.int64)] * fmt.ndim
        return [dcoords[d] for d in fmt.order], values
    dims = storage_dims(fmt, shape)
    cur = np.zeros(1, np.int64)
    coords: list = []
    for l, lvl in enumerate(fmt.levels):
        new, mine, counts = lvl.unpack(levels[l], cur, dims[l])  # the level's own rule
        coords = [np.repeat(x, counts) for x in coords] + [mine]
        cur = new
    return coords, vals[cur]


def unpack_dense(fmt: Format, shape, levels: list, vals: np.ndarray) -> np.ndarray:
    """A fresh dense array in dimension order; duplicate entries (COO) are summed."""
    shape = tuple(int(s) for s in shape)
    dims = storage_dims(fmt, shape)
    if fmt.is_dense:
        inv = np.argsort(fmt.order)
        return np.transpose(vals.reshape(dims), inv).copy() if shape else vals.reshape(()).copy()
    coords, values = unpack_coo(fmt, shape, levels, vals)
    dcoords = tuple(_unpermute(coords, fmt.order))
    if all(lvl.unique for lvl in fmt.levels):
        out = np.zeros(shape, vals.dtype)
        out[dcoords] = values
        return out
    size = 1
    for s in shape:
        size *= s
    flat = np.ravel_multi_index(dcoords, shape) if values.size else np.zeros(0, np.int64)
    sums = np.bincount(flat, weights=values.astype(np.float64), minlength=size)
    return sums.astype(vals.dtype).reshape(shape)
