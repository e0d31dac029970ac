"""Operands in, storages out: what a call makes of each value the user passes.

A row-major dense array of the kernel's dtype is its own storage (:class:`Dense`);
anything else becomes a validated :class:`~.tensor.Tensor` in the storage's format
and dtype -- converted once per object and cached while the object lives (a SciPy
matrix while its arrays and shape stay the same), or made again each call where a
cached copy could go stale. Accesses that repeat an index on a sparse operand read
a diagonal storage gathered here; device arrays stay on the device.
"""
from __future__ import annotations

import weakref

import numpy as np

from spcomp.errors import DTypeError, OperandError, ShapeError, SpcompError

from .convert import scalar_value
from .memory import data_ptr, same_contents
from .row_copies import by_rows, diagonal_entries
from .tensor import Tensor


class Dense:
    """A row-major dense operand used as is (no Tensor, no copy)."""
    __slots__ = ("array", "shape", "nnz", "_ptr")

    def __init__(self, array):
        self.array = array
        self.shape = array.shape
        self.nnz = array.size
        self._ptr = None

    def index_bits_needed(self):
        return 32

    def arg(self, bits, k, pointers):
        if not pointers:
            return self.array.reshape(-1)
        if self._ptr is None:
            self._ptr = data_ptr(self.array)
        return self._ptr


def is_device_array(value) -> bool:
    """A pycuda ``GPUArray`` (checked by module and attribute: importing pycuda
    just to ask would fail on machines without the CUDA driver)."""
    return type(value).__module__.startswith("pycuda") and hasattr(value, "gpudata")


def is_torch(value) -> bool:
    """A ``torch.Tensor`` (or Parameter), asked of its type's module so that nothing
    here imports torch: its conversions live in ``torch_bridge.py``, imported on the
    first call that passes one."""
    return type(value).__module__.startswith("torch")


def any_torch(operands: dict) -> bool:
    """Whether any operand of a call is a torch tensor (the call then goes through
    ``torch_bridge.call``, and its result comes back as torch)."""
    for v in operands.values():
        if type(v).__module__.startswith("torch"):
            return True
    return False


def is_plain_array(value, dtype) -> bool:
    """Whether ``value`` is a row-major ndarray of ``dtype``: then it is its own storage."""
    return type(value) is np.ndarray and value.dtype == dtype and value.flags.c_contiguous


def scipy_fingerprint(m) -> tuple:
    """What a zero-copy Tensor of SciPy matrix ``m`` depends on besides the numbers
    in its arrays: which arrays ``m`` holds and its shape (reassigning ``m.data``
    or ``m.indices``, or ``sum_duplicates()``, changes it), and the contents of
    ``indptr``, copied: a row's extent changed in place (``indptr[-1]`` raised) is
    caught at O(rows) per call. Weak references, so that neither an array's id is
    reused unnoticed nor its memory kept alive. (Coordinates changed in place are
    not detected, which would cost a pass over them; kernels clamp every coordinate
    they read into its dimension, so they can never address outside an array.)"""
    indptr = m.indptr
    extents = indptr.tobytes() if indptr.nbytes <= SMALL_EXTENTS else indptr.copy()
    return (weakref.ref(m.data), weakref.ref(m.indices), weakref.ref(indptr), m.shape, extents)


# an indptr of at most this many bytes is compared as bytes (~0.2 us), a longer one
# with libc's memcmp (a ctypes call, ~1 us, then memory speed)
SMALL_EXTENTS = 8192


def scipy_unchanged(m, fingerprint) -> bool:
    data, indices, indptr, shape, extents = fingerprint
    if not (data() is m.data and indices() is m.indices and indptr() is m.indptr and m.shape == shape):
        return False
    if type(extents) is bytes:
        return m.indptr.tobytes() == extents
    return same_contents(m.indptr, extents)


def renamed(e: SpcompError, name: str) -> SpcompError:
    """``e`` with the operand's name in front, keeping its attributes."""
    e.args = (f"operand {name}: {e.args[0] if e.args else ''}",) + tuple(e.args[1:])
    return e


def check_dtype(name, have, want) -> None:
    """DTypeError unless an operand of dtype ``have`` converts exactly enough to ``want``."""
    have = np.dtype(have)
    if have == want:
        return
    if have.kind in "biu":
        return  # integers and bools convert exactly enough to float
    if have.kind == "f" and want.itemsize >= have.itemsize and want.name != "bfloat16":
        return  # widening float
    if have.kind not in "fbiuV" and have.name != "bfloat16":
        raise DTypeError(f"operand {name} has dtype {have}, which spcomp cannot compute with; "
                         f"the kernel takes {want}")
    raise DTypeError(f"operand {name} has dtype {have} but the kernel was compiled for {want}; "
                     f"convert it (e.g. .astype({want.name!r})) or compile with dtype={have.name!r}")


def _tracks(value, t) -> bool:
    """Whether Tensor ``t`` made from ``value`` stays right if the caller later
    changes ``value``'s numbers in place: a Tensor itself (immutable by contract)
    or a zero-copy view sharing ``value``'s values array."""
    if isinstance(value, Tensor):
        return value is t
    if not hasattr(value, "indptr"):  # (an ndarray's .data is a memoryview, which bfloat16 cannot make)
        return False
    data = getattr(value, "data", None)
    if isinstance(data, np.ndarray):  # scipy compressed
        return np.shares_memory(t.vals, data)
    return False


def index_bits(storages, sizes: dict, limit: int) -> int:
    """The index width a call needs: 64 when any storage's indices pass int32, or an
    index's size or a dense operand's element count passes ``limit`` (the 32-bit
    kernel's: its coordinates and dense positions would wrap)."""
    for st in storages.values():
        if st.index_bits_needed() > 32 or (type(st) is Dense and st.nnz > limit):
            return 64
    for size in sizes.values():
        if size > limit:
            return 64
    return 32


class Operands:
    """Makes a kernel's storages from a call's operands, with the caches that let a
    repeated call skip the work (one per kernel)."""

    def __init__(self, plan, caps, diagonals: dict, relayout=None):
        self.plan = plan
        self.caps = caps
        self.diagonals = diagonals      # Lowered.operands.diagonals
        self.relayout = relayout        # (array, order, dtype) -> flat copy on the threads, or None
        self.tensors: dict = {}         # (id(value), id(fmt)) -> (weakref, Tensor, scipy fingerprint)
        self.pointers: dict = {}        # (id(tensor), bits) -> (weakref, [data pointers])

    def storages(self, operands) -> dict:
        """Storage name -> Dense or Tensor, for every input storage of the plan."""
        out = {}
        for spec in self.plan.storages:
            value = operands[spec[1]]
            if spec[4] and type(value) is np.ndarray and value.dtype == spec[3] and value.flags.c_contiguous:
                out[spec[0]] = Dense(value)  # row-major dense: its own storage
            else:
                out[spec[0]] = self.operand(spec, value)
        return out

    def operand(self, spec, value):
        """An operand ready for the kernel: Dense or a validated Tensor."""
        storage, operand, fmt, dtype, plain = spec
        if is_torch(value):  # (Kernel.__call__ converts them first; a direct caller may not)
            from . import torch_bridge
            value = torch_bridge.host_value(value, self.caps)
        if storage in self.plan.derived:
            return self.diagonal(spec, value)
        if is_device_array(value):
            return self.device(spec, value)
        if plain and is_plain_array(value, dtype):
            return Dense(value)
        if fmt.ndim == 0 and isinstance(value, (int, float, complex, np.number)):
            return Dense(scalar_value(operand, value, dtype))
        return self.tensor(operand, value, fmt, dtype)

    # ------------------------------------------------------------ tensors
    def cached(self, value, fmt):
        """The cache entry of ``value`` converted to ``fmt``, when still valid."""
        hit = self.tensors.get((id(value), id(fmt)))
        if hit is not None and hit[0]() is value and (hit[2] is None or scipy_unchanged(value, hit[2])):
            return hit
        return None

    def tensor(self, name: str, value, fmt, dtype: np.dtype):
        """The operand as a validated Tensor in ``fmt`` (cached per object)."""
        hit = self.cached(value, fmt)  # fmt objects live as long as the kernel's plan
        if hit is not None:
            return hit[1]
        import scipy.sparse as sp
        if isinstance(value, Tensor) and value.format == fmt:
            # a Tensor caches its own validation: nothing to remember here
            check_dtype(name, value.dtype, dtype)
            if value.dtype == dtype:
                try:
                    return value.validate()
                except SpcompError as e:
                    raise renamed(e, name) from None
        try:
            t = self._convert(value, fmt, dtype, sp)
        except SpcompError as e:
            raise renamed(e, name) from None
        check_dtype(name, t.dtype, dtype)
        if t.dtype != dtype:
            t = t.astype(dtype)
        try:
            t.validate()
        except SpcompError as e:
            raise renamed(e, name) from None
        if not _tracks(value, t):
            return t  # a converted copy would go stale if the caller changes the original
        key, cache = (id(value), id(fmt)), self.tensors
        try:
            # the entry goes when the caller's object does, so it never keeps data alive
            ref = weakref.ref(value, lambda _r, key=key, cache=cache: cache.pop(key, None))
        except TypeError:
            return t  # not weak-referenceable: convert each call
        cache[key] = (ref, t, scipy_fingerprint(value) if sp.issparse(value) else None)
        return t

    def _convert(self, value, fmt, dtype, sp) -> Tensor:
        if isinstance(value, Tensor):
            return value if value.format == fmt else value.to_format(fmt)
        if sp.issparse(value):
            return Tensor.from_scipy(value, fmt)
        arr = np.asarray(value)
        if arr.dtype.kind not in "biuf" and arr.dtype.name != "bfloat16":
            raise DTypeError(f"has dtype {arr.dtype}, which spcomp cannot compute with; the kernel takes {dtype}")
        if fmt.is_dense and arr.dtype == dtype and arr.ndim == fmt.ndim:
            stored = np.transpose(arr, fmt.order)
            if stored.flags.c_contiguous:  # already laid out as the format stores it (a transpose)
                return Tensor(fmt, arr.shape, [{} for _ in fmt.levels], stored.reshape(-1), validated=True)
        if fmt.is_dense and self.relayout is not None:
            flat = self.relayout(arr, fmt.order, dtype)
            if flat is not None:  # a dense copy in another order, made on the threads
                return Tensor(fmt, arr.shape, [{} for _ in fmt.levels], flat, validated=True)
        return Tensor.from_numpy(arr, fmt)

    def input_arg(self, st, bits, k, pointers):
        """Array ``k`` of an input storage (Dense or a Tensor), a data pointer on the CPU."""
        if type(st) is Dense:
            return st.arg(bits, k, pointers)
        if not pointers:
            return st.kernel_arrays(bits)[k]
        key = (id(st), bits)
        hit = self.pointers.get(key)
        if hit is None or hit[0]() is not st:
            ptrs = [data_ptr(a) for a in st.kernel_arrays(bits)]
            cache = self.pointers
            hit = (weakref.ref(st, lambda _r, key=key, cache=cache: cache.pop(key, None)), ptrs)
            cache[key] = hit
        return hit[1][k]

    def forget(self, value) -> None:
        """Drop every cached conversion of ``value`` (for callers that convert many
        short-lived objects and want the memory back before the objects die)."""
        for key in [k for k in self.tensors if k[0] == id(value)]:
            self.tensors.pop(key, None)

    # ----------------------------------------------------------- diagonals
    def diagonal(self, spec, value):
        """The diagonal storage (or its transposed copy) a kernel reads for an access
        that repeats an index on a sparse operand (spcomp/lower/diagonal.py): the
        operand's entries whose coordinates agree on each repeated index. Cached per
        operand Tensor, like a conversion."""
        storage, operand, fmt, dtype, _plain = spec
        source = self.plan.derived[storage]
        diag = self.diagonals[source]
        if is_device_array(value):
            raise OperandError(f"operand {operand} is a pycuda GPUArray, but the kernel reads its diagonal "
                               "through a copy made on the host: pass it as a NumPy/SciPy array or Tensor")
        tensor = self.tensor(operand, value, diag.operand_format, dtype)
        key = ("diagonal", storage)
        hit = self.tensors.get(key)
        if hit is not None and hit[0]() is tensor:
            return hit[1]
        kept = list(diag.kept)
        for d, k in enumerate(diag.dims):
            if tensor.shape[kept[k]] != tensor.shape[d]:
                raise ShapeError(f"operand {operand}: dimensions {kept[k]} and {d} are both indexed by "
                                 f"{diag.indices[d]} but have sizes {tensor.shape[kept[k]]} and "
                                 f"{tensor.shape[d]}")
        if len(kept) == 1 and tensor.ndim == 2 and by_rows(tensor.format):  # T[k,k] of a csr-like T
            coords, values = diagonal_entries(tensor)
        else:
            coords, values = tensor.to_coo()
            keep = np.ones(values.shape[0], dtype=bool)
            for d, k in enumerate(diag.dims):
                keep &= coords[d] == coords[kept[k]]
            coords, values = coords[kept][:, keep], values[keep]
        out = Tensor.from_coo(coords, values, tuple(tensor.shape[d] for d in kept), diag.format, dtype=dtype)
        if source != storage:  # read through a transposed copy
            out = out.to_format(fmt, drop_zeros=False)
        out.validate()
        self.tensors[key] = (weakref.ref(tensor), out, None)
        return out

    # ------------------------------------------------------------- devices
    def device(self, spec, value):
        """A pycuda GPUArray operand, kept on the device (targets with device arrays only)."""
        storage, operand, fmt, dtype, plain = spec
        if not self.caps.device_arrays:
            raise OperandError(f"operand {operand} is a pycuda GPUArray: only backend='cuda' takes device "
                               f"arrays (this kernel is for {self.caps.name!r}); pass a NumPy array")
        if not plain and fmt.is_dense:
            raise OperandError(f"operand {operand} is a pycuda GPUArray, but the kernel reads it through a "
                               f"copy in layout {fmt.spec()!r}, which is not made on the device: pass it "
                               "in that layout (e.g. transposed), or as a NumPy array")
        if not plain:
            raise OperandError(f"operand {operand} is a pycuda GPUArray, but the kernel stores it as "
                               f"{fmt.spec()!r}: a device array can only be a row-major dense operand "
                               "(pass sparse operands as SciPy/NumPy/Tensor, they are copied)")
        if np.dtype(value.dtype) != dtype:
            raise DTypeError(f"operand {operand}: the GPUArray holds {value.dtype}, the kernel takes {dtype}")
        if not value.flags.c_contiguous:
            raise OperandError(f"operand {operand}: the GPUArray is not C-contiguous")
        return Dense(value)


# ------------------------------------------------------------ output overlap

def refuse_overlap(out, operands, out_name) -> None:
    """An ``OperandError`` when the output array shares memory with an input: the
    kernel would read values it has already overwritten (or zeroed), a silent wrong
    answer. Interleaved views of one buffer that share no element are fine."""
    if not isinstance(out, np.ndarray):
        return
    for name, value in operands.items():
        if name == out_name:
            continue
        arrays = [value] if isinstance(value, np.ndarray) else [
            a for a in (getattr(value, attr, None) for attr in ("data", "indices", "indptr"))
            if isinstance(a, np.ndarray)]
        if isinstance(value, Tensor):  # (validated by now) every level array and the values
            arrays = [a for lv in value.levels for a in lv.values()] + [value.vals]
        if any(overlaps(out, a) for a in arrays):
            raise OperandError(f"output {out_name} shares memory with input {name}: pass a "
                               f"separate array for the output")


def overlaps(a: np.ndarray, b: np.ndarray) -> bool:
    """Whether two arrays share an element: the address ranges first (cheap), then
    NumPy's exact answer, bounded; an answer too hard to find counts as yes."""
    if not np.may_share_memory(a, b):
        return False
    try:
        return np.shares_memory(a, b, max_work=10_000)
    except getattr(np, "exceptions", np).TooHardError:  # np.TooHardError before NumPy 1.25
        return True
