"""The chunks of a Dask array as spcomp sees them: kinds, conversions, slices, nnz.

A Dask array's chunks may be NumPy arrays, ``scipy.sparse`` matrices or arrays,
pydata ``sparse`` arrays or :class:`spcomp.Tensor` objects. Kernels take the first
three kinds of Python object except pydata's as they are; the functions here turn
a chunk into what a kernel call takes, a kernel's result back into the chunk kind
the user started from, cut a chunk when operands are rechunked, and count stored
entries. They run on the workers, so they depend on nothing but the chunk.

Dask asks an array's *meta* (a zero-size example chunk) for a zero-size slice,
which a :class:`~spcomp.Tensor` cannot give, so an array of Tensors carries a
:class:`TensorMeta` instead; and Dask joins chunks (``compute()``) through its
``concatenate_lookup`` dispatch, so this module registers one for Tensors.
"""
from __future__ import annotations

import numpy as np
import scipy.sparse as sp

from spcomp.runtime import Tensor, resolve_dtype

TENSOR, SCIPY, PYDATA, NUMPY = "tensor", "scipy", "pydata", "numpy"


class TensorMeta:
    """The meta of a Dask array whose chunks are :class:`spcomp.Tensor` objects:
    a zero-size stand-in with the ``shape``/``ndim``/``dtype`` Dask reads and a
    ``format``, whose slices are itself (Dask slices a meta to make new ones)."""

    def __init__(self, ndim: int, dtype, format=None):
        self.ndim = int(ndim)
        self.shape = (0,) * self.ndim
        self.dtype = resolve_dtype(dtype)
        self.format = format

    def __getitem__(self, index) -> "TensorMeta":
        return self

    def astype(self, dtype, **kwargs) -> "TensorMeta":
        return TensorMeta(self.ndim, dtype, self.format)

    def __repr__(self) -> str:
        return f"TensorMeta(ndim={self.ndim}, dtype={self.dtype}, format={self.format})"


def is_pydata(x) -> bool:
    """A pydata ``sparse`` array (found by its module, so pydata need not be installed)."""
    return type(x).__module__.split(".")[0] == "sparse"


def kind_of(x) -> str:
    """Which kind of chunk ``x`` (a chunk or a Dask meta) is."""
    if isinstance(x, (Tensor, TensorMeta)):
        return TENSOR
    if sp.issparse(x):
        return SCIPY
    if is_pydata(x):
        return PYDATA
    return NUMPY


def as_operand(block, format):
    """A chunk as a kernel operand of storage ``format`` (a ``spcomp.Format``): the
    kinds a kernel takes pass through; pydata arrays become Tensors in ``format``
    (a dense operand gets a NumPy array)."""
    if is_pydata(block):
        if format.is_dense:
            return block.todense()
        coo = block if hasattr(block, "coords") else block.tocoo()
        return Tensor.from_coo(np.asarray(coo.coords), np.asarray(coo.data), tuple(coo.shape), format)
    return block


def scipy_kind(format) -> str:
    """The SciPy sparse kind that matches a 2-D storage format: CSC for a column-major
    one, CSR otherwise."""
    return "csc" if format.order == (1, 0) else "csr"


def convert_result(result, kind: str, matrix: bool = False):
    """A kernel's sparse result (a Tensor) as a chunk of ``kind``: for SciPy, a
    ``csr_matrix``/``csc_matrix`` when ``matrix`` (the inputs were matrices), else
    a ``csr_array``/``csc_array``."""
    if kind == SCIPY and isinstance(result, Tensor):
        layout = scipy_kind(result.format)
        m = result.to_scipy(layout)
        if matrix:
            m = (sp.csc_matrix if layout == "csc" else sp.csr_matrix)(m)
        return m
    if kind == PYDATA and isinstance(result, Tensor):
        import sparse  # pydata: present on the workers whenever the inputs were pydata arrays
        coords, values = result.to_coo()
        return sparse.COO(coords, values, shape=result.shape)
    return result


def scipy_meta(format, dtype, matrix: bool):
    """The meta of an array of SciPy chunks in ``format``'s layout."""
    layout = scipy_kind(format)
    cls = {("csr", True): sp.csr_matrix, ("csc", True): sp.csc_matrix,
           ("csr", False): sp.csr_array, ("csc", False): sp.csc_array}[(layout, bool(matrix))]
    return cls((0, 0), dtype=dtype)


def nnz(block) -> int:
    """Stored entries of a chunk (nonzeros for a NumPy chunk)."""
    if isinstance(block, Tensor) or sp.issparse(block) or is_pydata(block):
        return int(block.nnz)
    return int(np.count_nonzero(block))


def slice_block(block, index: tuple):
    """``block[index]`` for ``index`` a tuple of slices, in the chunk's own kind:
    how an operand is cut when its chunks are split to match another operand's."""
    if isinstance(block, Tensor):
        return _slice_tensor(block, index)
    if sp.issparse(block):
        kind = block.format if block.format in ("csr", "csc") else "csr"
        cut = block.asformat(kind)[index]
        return cut
    return block[index]


def _slice_tensor(t: Tensor, index: tuple) -> Tensor:
    """A box of a Tensor, in the same format (through its coordinates)."""
    if t.format.is_dense:
        return Tensor.from_numpy(t.to_numpy()[index], t.format, dtype=t.dtype)
    coords, values = t.to_coo()
    keep = np.ones(values.shape[0], bool)
    shape = []
    for d, s in enumerate(index):
        lo, hi, _ = s.indices(t.shape[d])
        keep &= (coords[d] >= lo) & (coords[d] < hi)
        shape.append(hi - lo)
    starts = np.array([s.indices(t.shape[d])[0] for d, s in enumerate(index)], np.int64)[:, None]
    return Tensor.from_coo(coords[:, keep] - starts, values[keep], tuple(shape), t.format, dtype=t.dtype)


def concatenate_tensors(arrays, axis: int = 0) -> Tensor:
    """Tensors joined along ``axis`` in the first one's format (``compute()`` of an
    array of Tensor chunks goes through this)."""
    arrays = list(arrays)
    first = arrays[0]
    if len(arrays) == 1:
        return first
    coords, values, offset = [], [], 0
    for t in arrays:
        c, v = t.to_coo()
        c = c.copy()
        c[axis] += offset
        offset += t.shape[axis]
        coords.append(c)
        values.append(v)
    shape = list(first.shape)
    shape[axis] = offset
    return Tensor.from_coo(np.concatenate(coords, axis=1), np.concatenate(values), tuple(shape),
                           first.format, dtype=first.dtype)


def coo_chunk(coords, values, shape, kind: str, format):
    """A chunk of ``kind`` from coordinates ``(ndim, n)`` (duplicates summed): a
    Tensor in ``format``, or a SciPy matrix of the matching kind."""
    if kind == SCIPY:
        m = sp.coo_array((values, (coords[0], coords[1])), shape=shape)
        m.sum_duplicates()
        return m.asformat(scipy_kind(format))
    return Tensor.from_coo(coords, values, shape, format)


def register() -> None:
    """Teach Dask to join Tensor chunks (idempotent; run on import of spcomp.dask,
    in the client and, through the worker plugin, in every worker)."""
    from dask.array.dispatch import concatenate_lookup
    concatenate_lookup.register(Tensor, concatenate_tensors)
    concatenate_lookup.register(TensorMeta, concatenate_tensors)
