"""``Tensor``: a format, a shape, a value dtype and the NumPy arrays of each level.

Storage (fixed by :mod:`spcomp.formats`): ``levels[l]`` is a dict holding the
arrays ``format.levels[l].arrays`` of storage level ``l``, which stores tensor
dimension ``format.order[l]``; ``vals`` is a 1-D array with one value per
position of the last level (for an all-dense format the row-major flattening of
``np.transpose(a, format.order)``; an order-0 tensor has one value).

A ``Tensor`` does not copy what it is given, and it never mutates its arrays.
**Do not mutate the arrays of a tensor after it was built or validated**: the
validation result, ``nnz`` and the kernel arrays are cached on the tensor.

Constructors::

    Tensor.from_numpy(a, format)          Tensor.from_scipy(m, format)
    Tensor.from_coo(coords, values, shape, format)
    Tensor.from_arrays(format, shape, levels, vals)      # user arrays, validated now

Tensors built by the ``from_numpy`` / ``from_coo`` / ``from_scipy`` packers are
well formed by construction and marked validated, except the zero-copy
``from_scipy`` path, whose arrays belong to the user (validated on first use).
"""
from __future__ import annotations

import copy
from collections.abc import Mapping

import numpy as np

from spcomp.errors import DTypeError, ShapeError
from spcomp.formats import Format
from spcomp.ir.types import to_numpy

from . import convert as _cv
from .bounds import check_shape, native_index_array
from .row_copies import swapped
from .validate import validate_storage

__all__ = ["Tensor", "as_tensor"]


def _parse_format(format, ndim: int) -> Format:
    return Format.parse(format, ndim=ndim)


class Tensor:
    """A sparse (or dense) tensor stored level by level. See the module docstring."""

    __slots__ = ("format", "shape", "dtype", "levels", "vals", "_validated", "_nnz",
                 "_kernel_arrays", "_index_bits", "__weakref__")

    def __init__(self, format, shape, levels, vals, *, validated: bool = False, index_bits: int | None = None):
        """``index_bits=64`` makes kernels read the index arrays as given, with their
        64-bit variant, even when every index fits int32 (by default int64 arrays
        whose values fit are converted to int32 once, on first use): for int64
        arrays shared with another library (torch), which then are never copied."""
        if index_bits not in (None, 32, 64):
            raise ValueError(f"index_bits must be None, 32 or 64, not {index_bits!r}")
        shape = check_shape(shape)  # integers below 2**63 - 1, never truncated (runtime/bounds.py)
        fmt = format if isinstance(format, Format) else _parse_format(format, len(shape))
        self.format: Format = fmt
        self.shape: tuple = shape
        self.levels: list = [
            {k: (v if isinstance(v, np.ndarray) else np.asarray(v)) for k, v in lv.items()}
            if isinstance(lv, Mapping) else lv
            for lv in levels]
        self.vals: np.ndarray = vals if isinstance(vals, np.ndarray) else np.asarray(vals)
        self.dtype: np.dtype = self.vals.dtype
        self._validated = bool(validated)
        self._nnz = None
        self._kernel_arrays: dict = {}
        self._index_bits = 64 if index_bits == 64 else None

    # ------------------------------------------------------------ constructors
    @classmethod
    def from_numpy(cls, a, format, dtype=None, overflow: str = "error") -> "Tensor":
        """Pack a dense array into ``format``; zeros are not stored in sparse levels.

        ``overflow="grow"`` raises a packed-block level's K to the largest block count
        instead of raising :class:`~spcomp.errors.PackedOverflowError`.
        """
        a = np.asarray(a)
        fmt = _parse_format(format, a.ndim)
        fmt, levels, vals = _cv.pack_dense(a, fmt, dtype, overflow)
        return cls(fmt, a.shape, levels, vals, validated=True)

    @classmethod
    def from_coo(cls, coords, values, shape, format, dtype=None, sum_duplicates: bool = True,
                 overflow: str = "error") -> "Tensor":
        """Pack a coordinate list: ``coords`` is ``(ndim, nnz)`` or ``ndim`` arrays, in
        dimension order. Duplicates are summed (``sum_duplicates=False`` makes them an
        :class:`~spcomp.errors.InvalidTensorError`). Explicit zeros given are stored.
        Values and coordinates in either byte order are accepted (the packed copy is native)."""
        shape = check_shape(shape)
        fmt = _parse_format(format, len(shape))
        fmt, levels, vals = _cv.pack_coo(fmt, shape, coords, values, dtype, sum_duplicates, overflow)
        return cls(fmt, shape, levels, vals, validated=True)

    @classmethod
    def from_scipy(cls, m, format="csr", dtype=None, overflow: str = "error") -> "Tensor":
        """Pack any ``scipy.sparse`` matrix or array.

        Zero-copy when ``m`` is CSR in canonical form (sorted, no duplicates) and the
        format is ``csr`` (``d c``), or likewise CSC and ``csc`` (``d c:1,0``): the
        tensor shares ``indptr``/``indices`` when they are native int32/int64 (other
        integer dtypes and big-endian ones are converted: SciPy's own conversions
        refuse them) and ``data`` unless the value dtype or byte order changes.
        """
        import scipy.sparse as sp

        if not sp.issparse(m):
            raise TypeError(f"from_scipy takes a scipy.sparse matrix or array, not {type(m).__name__}")
        shape = tuple(int(s) for s in m.shape)
        fmt = _parse_format(format, len(shape))
        target = _cv.resolve_dtype(dtype, m.dtype)
        kind = m.format
        m = _scipy_ready(m, target)
        if kind in ("csr", "csc", "bsr"):
            _check_scipy_compressed(m)
        if (kind in ("csr", "csc") and len(shape) == 2 and _is_dense_compressed(fmt)
                and fmt.order == ((0, 1) if kind == "csr" else (1, 0))):
            if not m.has_canonical_format:
                # unsorted or duplicated indices: SciPy's own C++ pass on a copy is ~6x
                # faster than the general COO packing below (which sorts)
                m = m.copy()
                m.sum_duplicates()
            data = m.data if m.data.dtype == target else m.data.astype(target)
            levels = [{}, {"pos": m.indptr, "crd": m.indices}]
            return cls(fmt, shape, levels, data, validated=False)
        if kind == "bsr" and fmt == Format.bsr(*m.blocksize):
            return cls._from_scipy_bsr(m, fmt, shape, target)
        coo = m.tocoo()
        coords = getattr(coo, "coords", None)
        if coords is None:
            coords = (coo.row, coo.col)
        fmt, levels, vals = _cv.pack_coo(fmt, shape, tuple(coords), coo.data, target, True, overflow)
        return cls(fmt, shape, levels, vals, validated=True)

    @classmethod
    def _from_scipy_bsr(cls, m, fmt, shape, target) -> "Tensor":
        """Zero-copy: scipy's BSR arrays are ``bsr(R,C)``'s levels (``indptr`` -> ``pos``,
        ``indices`` -> ``crd``, ``data`` of shape ``(nblocks, R, C)`` flattened -> ``vals``)."""
        from .convert import check_block_fit
        check_block_fit(fmt, shape, "scipy bsr matrix")
        if not m.has_canonical_format:  # unsorted or duplicated blocks: SciPy's pass on a copy
            m = m.copy()
            m.sum_duplicates()
        data = m.data if m.data.dtype == target else m.data.astype(target)
        levels = [{}, {"pos": m.indptr, "crd": m.indices}] + [{} for _ in fmt.levels[2:]]
        return cls(fmt, shape, levels, data.reshape(-1), validated=False)

    @classmethod
    def from_arrays(cls, format, shape, levels, vals) -> "Tensor":
        """Wrap raw level arrays from a user (no copy), validating them now."""
        t = cls(format, shape, levels, vals)
        t.validate()
        return t

    # ------------------------------------------------------------ facts
    @property
    def ndim(self) -> int:
        return len(self.shape)

    @property
    def nnz(self) -> int:
        """Number of stored entries (explicit zeros included; packed levels: used slots)."""
        if self._nnz is None:
            if any(l.has_unused_positions for l in self.format.levels):
                coords, _ = _cv.unpack_coo(self.format, self.shape, self.levels, self.vals)
                self._nnz = int(coords[-1].shape[0])
            else:
                self._nnz = int(self.vals.shape[0])
        return self._nnz

    def __repr__(self) -> str:
        return (f"Tensor(format={str(self.format)!r}, shape={self.shape}, dtype={self.dtype.name}, "
                f"nnz={self.nnz})")

    # ------------------------------------------------------------ validation
    def validate(self, name: str | None = None) -> "Tensor":
        """Check the storage is well formed; raise :class:`~spcomp.errors.InvalidTensorError`
        naming the level, array and first bad position (``name`` labels the tensor in the
        message). The result is cached: a second call is O(1), so the arrays must not be
        mutated after validation. Returns ``self``."""
        if not self._validated:
            validate_storage(self.format, self.shape, self.levels, self.vals, name)
            self._validated = True
        return self

    @property
    def validated(self) -> bool:
        return self._validated

    # ------------------------------------------------------------ kernel side
    def index_bits_needed(self) -> int:
        """32 when every index (sizes, positions, pos/crd values) fits in int32, else 64."""
        if self._index_bits is None:
            big = max([0, self.vals.shape[0], *self.shape])
            for lvl, arrays in zip(self.format.levels, self.levels):
                for key, a in arrays.items():
                    if lvl.array_type(key, 32) != lvl.array_type(key, 64):
                        continue  # only arrays of the index width bound it (not packed counts, bitmaps)
                    if a.size and (a.dtype.itemsize > 4 or a.dtype == np.uint32):
                        big = max(big, int(a.max()))
            self._index_bits = 32 if big <= _cv.INT32_MAX else 64
        return self._index_bits

    def kernel_arrays(self, index_bits: int = 32) -> list:
        """The arrays a kernel takes, in parameter order: per level the arrays of
        ``format.levels[l].arrays`` in order, then ``vals``.

        pos/crd of compressed and singleton levels become int32 (``index_bits=32``) or
        int64 (64); packed ``count`` is int32 and packed ``crd`` int16/int32 as the level
        says; ``vals`` keeps its dtype (bfloat16 stays ``ml_dtypes.bfloat16``). All arrays
        are C-contiguous. The tensor is validated first. Cached per ``index_bits``.
        Raises ``ValueError`` when 32 bits are asked and some index does not fit.
        """
        if index_bits not in (32, 64):
            raise ValueError(f"index_bits must be 32 or 64, not {index_bits!r}")
        cached = self._kernel_arrays.get(index_bits)
        if cached is not None:
            return cached
        self.validate()
        if index_bits == 32 and self.index_bits_needed() == 64:
            raise ValueError(f"{self!r} has indices that do not fit in int32; use index_bits=64")
        out = []
        for lvl, arrays in zip(self.format.levels, self.levels):
            for key in lvl.arrays:
                want = to_numpy(lvl.array_type(key, index_bits))  # the level's rule
                out.append(np.ascontiguousarray(arrays[key], dtype=want))
        out.append(np.ascontiguousarray(self.vals))
        # two threads may convert at once: both must get the same arrays, since the
        # kernel's pointer cache keeps their addresses (not the arrays) per Tensor
        return self._kernel_arrays.setdefault(index_bits, out)

    # ------------------------------------------------------------ conversions
    def to_numpy(self) -> np.ndarray:
        """A fresh dense array in dimension order (duplicates in COO storage are summed).
        Validates first: unpacking trusts the arrays (a bad ``pos`` would make NumPy
        raise its own errors, or read garbage)."""
        self.validate()
        return _cv.unpack_dense(self.format, self.shape, self.levels, self.vals)

    def to_coo(self, drop_zeros: bool = False):
        """``(coords, values)``: coords ``(ndim, nnz)`` int64 in dimension order, entries in
        storage order. Stored explicit zeros are kept unless ``drop_zeros``. Validates
        first, like :meth:`to_numpy` (so conversions to other formats do too)."""
        self.validate()
        coords, values = _cv.unpack_coo(self.format, self.shape, self.levels, self.vals)
        n = values.shape[0]
        out = np.empty((self.ndim, n), np.int64)
        for l, d in enumerate(self.format.order):
            out[d] = coords[l]
        if drop_zeros:
            keep = values != 0
            out, values = out[:, keep], values[keep]
        return out, values

    def to_scipy(self, kind: str = "csr"):
        """A ``scipy.sparse`` array (``csr_array`` etc.; any ``asformat`` kind) of a 2-D tensor.

        bfloat16 values become float32 (SciPy has no bfloat16). A csr/csc/bsr tensor with
        ``kind`` equal to its layout shares its arrays with the result.
        """
        import scipy.sparse as sp

        if self.ndim != 2:
            raise ShapeError(f"to_scipy needs a 2-D tensor; this one has shape {self.shape}")
        vals = self.vals.astype(np.float32) if self.dtype == _cv.BFLOAT16 else self.vals
        fmt = self.format
        if kind in ("csr", "csc") and _is_dense_compressed(fmt) \
                and fmt.order == ((0, 1) if kind == "csr" else (1, 0)) and fmt.levels[1].ordered \
                and fmt.levels[1].unique:
            self.validate()
            cls = sp.csr_array if kind == "csr" else sp.csc_array
            lv = self.levels[1]
            return cls((vals, lv["crd"], lv["pos"]), shape=self.shape)
        if kind == "bsr" and fmt.blocks is not None and fmt == Format.bsr(*fmt.blocks):
            self.validate()  # scipy's bsr_array is these very arrays
            R, C = fmt.blocks
            lv = self.levels[1]
            return sp.bsr_array((vals.reshape(-1, R, C), lv["crd"], lv["pos"]), shape=self.shape)
        coords, values = self.to_coo()
        if values.dtype == _cv.BFLOAT16:
            values = values.astype(np.float32)
        m = sp.coo_array((values, (coords[0], coords[1])), shape=self.shape)
        m.sum_duplicates()
        return m.asformat(kind)

    def to_format(self, format, overflow: str = "error", drop_zeros: bool = True) -> "Tensor":
        """The same tensor in another format (via COO). Returns ``self`` when the format
        is already the same. Zeros are not carried over unless ``drop_zeros=False``."""
        fmt = _parse_format(format, self.ndim)
        if fmt == self.format:
            return self
        if self.format.is_dense:
            return Tensor.from_numpy(self.to_numpy(), fmt, overflow=overflow)
        self.validate()
        fast = swapped(self, fmt, drop_zeros)  # csr <-> csc: a counting sort, no coordinate list
        if fast is not None:
            return fast
        coords, values = self.to_coo(drop_zeros=drop_zeros)
        return Tensor.from_coo(coords, values, self.shape, fmt, dtype=self.dtype, overflow=overflow)

    def astype(self, dtype) -> "Tensor":
        """The same storage with values converted (level arrays are shared)."""
        target = _cv.resolve_dtype(dtype, self.dtype)
        if target == self.dtype:
            return self
        return Tensor(self.format, self.shape, self.levels, self.vals.astype(target),
                      validated=self._validated, index_bits=self._index_bits if self._index_bits == 64 else None)

    # ------------------------------------------------------------ torch
    @classmethod
    def from_torch(cls, t, format=None, index_bits: int | None = None) -> "Tensor":
        """A ``torch.Tensor`` as a Tensor, sharing its buffers where the layouts agree:
        strided -> ``dense`` (a C-contiguous tensor's memory is the values array),
        ``sparse_csr`` -> ``csr``, ``sparse_csc`` -> ``csc``, coalesced ``sparse_coo``
        -> ``coo``; ``torch.bfloat16`` values are viewed as ``ml_dtypes.bfloat16``.
        ``format`` converts the result (a copy) when it differs. ``index_bits=64``
        keeps int64 index buffers for the kernels' 64-bit variant (see ``__init__``).
        Imports torch (runtime/torch_convert.py); docs/torch.md lists what is copied."""
        from . import torch_convert
        out = torch_convert.from_torch(cls, t, index_bits=index_bits)
        return out if format is None else out.to_format(format)

    def to_torch(self, layout=None):
        """This tensor as a ``torch.Tensor`` sharing its arrays where torch has the
        layout: ``csr`` -> ``torch.sparse_csr``, ``csc`` -> ``torch.sparse_csc``,
        ``coo`` -> ``torch.sparse_coo`` (its coordinates stacked: a copy), dense
        formats -> strided (a copy unless row-major); any other format is converted
        to ``layout`` (``torch.sparse_coo`` when None)."""
        from . import torch_convert
        return torch_convert.to_torch(self, layout)


def expand_output(t: Tensor, fmt: Format) -> Tensor:
    """A kernel's output assembled in a stand-in format (``lower/outputs.assembled_format``:
    dense levels under sparse ones, and bitmap levels, stored compressed) as a Tensor of
    ``fmt``: each stored parent position of a dense level gets the level's whole
    sub-block, zero where the kernel stored nothing. The stand-in has ``fmt``'s mode
    order and its entries are unique and sorted in storage order: the levels above the
    first substituted one keep the kernel's arrays, the rest are built without a sort."""
    if t.format.blocks != fmt.blocks:  # assembled in an operand's blocks (lower/blocked.py)
        return t.to_format(fmt)
    levels, vals = _cv.repack_below(t.format, t.levels, t.vals, fmt, t.shape)
    return Tensor(fmt, t.shape, levels, vals, validated=True)


def _is_dense_compressed(fmt: Format) -> bool:
    """SciPy's CSR layout: a full level without arrays over one with ordered, unique
    segments (``Level.compressed_segments``), so indptr and indices are shared."""
    return (fmt.ndim == 2 and fmt.blocks is None and fmt.levels[0].is_dense
            and fmt.levels[1].compressed_segments)


def as_tensor(x, format=None, dtype=None, overflow: str = "error") -> Tensor:
    """Whatever a user passes as an operand, as a :class:`Tensor`.

    A ``Tensor`` is converted to ``format`` (and ``dtype``) only when they differ; a
    ``scipy.sparse`` object goes through :meth:`Tensor.from_scipy` (``format`` defaults
    to ``csr``); anything else through :meth:`Tensor.from_numpy` (``format`` defaults to
    dense).
    """
    import scipy.sparse as sp

    if isinstance(x, Tensor):
        t = x if format is None else x.to_format(format, overflow=overflow)
        return t if dtype is None else t.astype(dtype)
    if sp.issparse(x):
        return Tensor.from_scipy(x, "csr" if format is None else format, dtype=dtype, overflow=overflow)
    a = np.asarray(x)
    if a.dtype.kind in "OSU":
        raise DTypeError(f"cannot use an array of dtype {a.dtype} as a tensor")
    return Tensor.from_numpy(a, "dense" if format is None else format, dtype=dtype, overflow=overflow)


def _scipy_ready(m, target: np.dtype):
    """``m``, or a shallow copy of it that SciPy's own conversions (``tocoo``,
    ``sum_duplicates``) take, since they raise a ValueError of their own on what a
    user may have put in the arrays: ``indptr``/``indices`` become native int32/int64
    (:func:`~spcomp.runtime.bounds.native_index_array`; a float, bool or out-of-range
    uint64 index array is an InvalidTensorError naming it), and values SciPy does not
    compute with (float16, bfloat16, big-endian) become ``target`` (float32 for
    bfloat16, which SciPy lacks), exactly. The caller's matrix is not changed. COO
    coordinates are checked by the packer (``pack_coo``)."""
    fixed = {}
    if m.format in ("csr", "csc", "bsr"):
        new = {key: native_index_array(getattr(m, key), f"scipy {m.format} matrix: {key}")
               for key in ("indptr", "indices")}
        if new["indptr"].dtype != new["indices"].dtype:  # SciPy wants one index dtype
            new = {key: a.astype(np.int64) for key, a in new.items()}
        fixed = {key: a for key, a in new.items() if a is not getattr(m, key)}
    if m.format in ("csr", "csc", "bsr", "coo", "dia"):
        dt = m.data.dtype
        if not (dt.isnative and (dt.kind in "biu" or dt in (_cv.FLOAT32, _cv.FLOAT64))):
            fixed["data"] = m.data.astype(_cv.FLOAT32 if target == _cv.BFLOAT16 else target)
    if not fixed:
        return m
    m = copy.copy(m)  # shares what is not fixed; the fixed arrays are this copy's alone
    for key, a in fixed.items():
        setattr(m, key, a)
    return m


def _check_scipy_compressed(m) -> None:
    """Check a scipy CSR/CSC's indptr and indices before SciPy or a kernel reads them
    (SciPy does not check arrays handed to its constructors)."""
    from spcomp.errors import InvalidTensorError
    major, minor = (m.shape[0], m.shape[1]) if m.format != "csc" else (m.shape[1], m.shape[0])
    if m.format == "bsr":  # counted in blocks
        if np.ndim(m.data) != 3:
            raise InvalidTensorError(f"scipy bsr matrix: data has shape {np.shape(m.data)}, expected "
                                     "(nblocks, R, C)")
        R, C = m.data.shape[1:]
        if R < 1 or C < 1 or major % R or minor % C:
            raise InvalidTensorError(f"scipy bsr matrix: blocks of {R}x{C} do not tile its shape {m.shape}")
        major, minor = major // R, minor // C
    indptr, indices = np.asarray(m.indptr), np.asarray(m.indices)
    what = f"scipy {m.format} matrix"
    if indptr.ndim != 1 or len(indptr) != major + 1:
        raise InvalidTensorError(f"{what}: indptr has length {len(indptr)}, expected {major + 1}")
    if len(indptr) and indptr[0] != 0:
        raise InvalidTensorError(f"{what}: indptr[0] = {int(indptr[0])}, expected 0")
    steps = np.diff(indptr)
    if steps.size and steps.min() < 0:
        at = int(np.argmax(steps < 0))
        raise InvalidTensorError(f"{what}: indptr decreases at {at + 1} "
                                 f"({int(indptr[at])} -> {int(indptr[at + 1])})")
    end = int(indptr[-1]) if len(indptr) else 0
    if end != len(indices) or end > len(m.data):
        raise InvalidTensorError(f"{what}: indptr ends at {end} but indices has {len(indices)} "
                                 f"and data {len(m.data)} entries")
    if indices.size and (indices.min() < 0 or indices.max() >= minor):
        bad = int(np.argmax((indices < 0) | (indices >= minor)))
        raise InvalidTensorError(f"{what}: indices[{bad}] = {int(indices[bad])} is out of range "
                                 f"for size {minor}")
