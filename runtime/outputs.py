"""The output of a call: allocated before the kernel runs, handed back after.

* :class:`PlainOutput` -- a fresh row-major dense array (the common case, kept cheap);
* :class:`DeviceOutput` -- a dense output on the GPU (pycuda in, pycuda out);
* :class:`Output` -- everything else: a dense output in another layout or given by
  the caller, and sparse outputs, whose arrays the kernel appends to (growing its
  own, or filling arrays of a capacity the runtime chose).

:class:`OutputLayout` is the one walk over a sparse output's levels: which arrays
each level has, their dtypes, and how the arrays become a :class:`Tensor`. The
one-pass append (here), the two-phase count and fill (``assemble.py``) and the
chunked append (``chunks.py``) all build their result through it.
"""
from __future__ import annotations

import ctypes
import functools
import math

import numpy as np

from spcomp.errors import DTypeError, OperandError, UnsupportedError
from spcomp.ir.types import to_numpy
from spcomp.lower.context import level_array_type
from spcomp.lower.order import access_chain

from . import memory
from .memory import data_ptr, free, mostly_unused, owned_view
from .plan import np_dtype
from .tensor import Tensor

_poison = False


def poison_unzeroed(on: bool = True) -> None:
    """Fill the dense outputs a kernel promised to store whole (and that are
    therefore not zeroed) with NaN bytes instead of leaving ``np.empty``'s
    contents, which are often zero by luck: a kernel that skips an element then
    shows NaN. For tests and debugging (the test suite turns it on); it costs a
    pass over each such output."""
    global _poison
    _poison = bool(on)


def fresh_output(shape, dtype, overwrite: bool) -> np.ndarray:
    """A new dense output: left uninitialised when the kernel stores every element
    (``OutputPlan.overwrites``), else zeros."""
    if not overwrite:
        return np.zeros(shape, dtype=dtype)
    out = np.empty(shape, dtype=dtype)
    if _poison:
        out.reshape(-1).view(np.uint8).fill(0xFF)
    return out


def zeros_in_order(shape, order, dtype) -> np.ndarray:
    """A zeroed dense array of ``shape`` (index order) stored in mode ``order``: for
    ``dd:1,0`` a column-major one (a transposed view of its row-major storage, as a
    kernel's own dense output in that order is). A fused function writes it there."""
    if not order or tuple(order) == tuple(range(len(order))):
        return np.zeros(shape, dtype=dtype)
    return np.transpose(np.zeros([shape[d] for d in order], dtype=dtype), np.argsort(order))


def fresh_maker(shape, dtype, overwrite: bool):
    """A function of no arguments that makes what ``fresh_output(shape, dtype,
    overwrite)`` makes, bound once for a repeated call (fastcall.py): NumPy's
    allocator itself where nothing else is done. Poisoning applies to makers made
    while it is on."""
    if not overwrite:
        return functools.partial(np.zeros, shape, dtype)
    if not _poison:
        return functools.partial(np.empty, shape, dtype)
    return functools.partial(fresh_output, shape, dtype, True)


class PlainOutput:
    """A fresh row-major dense output (the common case, kept cheap)."""
    __slots__ = ("array",)

    def __init__(self, shape, dtype, overwrite=False):
        self.array = fresh_output(shape, dtype, overwrite)

    def arg(self, b, pointers=True):
        return data_ptr(self.array) if pointers else self.array.reshape(-1)

    def discard(self):
        pass

    def result(self):
        if not self.array.shape:
            return self.array.item()
        return self.array


class DeviceOutput:
    """A dense output on the GPU: the caller's GPUArray (``+=``, or ``=`` into a
    given buffer, zeroed first) or a fresh one from ``pycuda.gpuarray.zeros``."""
    __slots__ = ("array",)

    def __init__(self, shape, dtype, given, accumulate):
        from spcomp.errors import ShapeError

        from .operands import is_device_array
        if given is None:
            import pycuda.gpuarray as gpuarray
            self.array = gpuarray.zeros(shape, dtype=dtype)
            return
        if not is_device_array(given):
            raise OperandError("the other operands are on the GPU: pass the output as a pycuda GPUArray too")
        if tuple(given.shape) != tuple(shape) or np.dtype(given.dtype) != np.dtype(dtype):
            raise ShapeError(f"output has shape {tuple(given.shape)} and dtype {given.dtype}; the kernel "
                             f"produces {tuple(shape)} {np.dtype(dtype)}")
        if not accumulate:
            given.fill(0)
        self.array = given

    def arg(self, b, pointers=False):
        return self.array.reshape(-1)

    def discard(self):
        pass

    def result(self):
        return self.array


@functools.lru_cache(maxsize=256)
def _array_dtype(level, array: str, bits: int) -> np.dtype:
    """A level array's NumPy dtype, asked a few times a call (~2 us each uncached)."""
    return to_numpy(level_array_type(level, array, bits))


class OutputLayout:
    """A sparse output's levels as the runtime sees them: level ``first`` is the first
    stored one (the levels above it are dense: ``dense_positions`` rows), each level's
    arrays and their dtypes for an index width, and how arrays become a Tensor."""

    def __init__(self, fmt, level_sizes: list, bits: int, dtype: np.dtype):
        self.fmt = fmt
        self.level_sizes = list(level_sizes)
        self.bits = bits
        self.dtype = dtype
        d = 0
        while d < len(fmt.levels) and fmt.levels[d].is_dense:
            d += 1
        self.first = d
        self.dense_positions = math.prod(int(x) for x in self.level_sizes[:d])

    def dtype_of(self, level: int, array: str) -> np.dtype:
        """The NumPy dtype of one of the output's arrays (``vals``: the values')."""
        if array == "vals":
            return self.dtype
        return _array_dtype(self.fmt.levels[level], array, self.bits)

    def keys(self) -> list:
        """``(level, array)`` of every stored array, ``(-1, "vals")`` last."""
        return [(l, a) for l in range(self.first, len(self.fmt.levels)) for a in self.fmt.levels[l].arrays] + [
            (-1, "vals")]

    def _shape_parents(self, l: int):
        """Positions of the levels above level ``l`` when the shape alone fixes them (the
        dense rows, then shape-sized levels such as an inserted bitmap's), else None."""
        parent = self.dense_positions
        for k in range(self.first, l):
            kind = self.fmt.levels[k]
            if not kind.shape_sized:
                return None
            parent = kind.num_positions(parent, self.level_sizes[k], {})
        return parent

    def fixed_size(self, level: int, array: str) -> int:
        """Entries of an array whose size does not depend on what the kernel appends,
        as the level says (``Level.fixed_array_size``: the first stored level's ``pos``,
        packed-block arrays, a bitmap's bytes) with the positions above as its parents
        where the shape fixes them; ``vals`` has the last level's positions where the
        shape alone fixes them."""
        l = level if level >= 0 else len(self.fmt.levels) - 1
        kind, size = self.fmt.levels[l], self.level_sizes[l]
        parent = self._shape_parents(l)
        if parent is None:
            n = None
        elif array == "vals":
            n = kind.num_positions(parent, size, {}) if kind.shape_sized else None
        else:
            n = kind.fixed_array_size(array, parent, size)
        if n is None:
            raise UnsupportedError(f"output format {self.fmt.spec()!r}: level {l} ({kind.kind_name}) "
                                   f"does not fix the size of {array!r} before the kernel runs")
        return n

    def tensor(self, shape, take) -> Tensor:
        """The output Tensor, the arrays taken level by level: ``take(key, n, dtype)``
        gives the first ``n`` entries of array ``key`` (first the arrays whose size the
        level fixes, ``Level.fixed_array_size``: ``pos``, which says how many entries
        the level's other arrays hold)."""
        levels = self.fmt.levels
        level_arrays = [dict() for _ in levels]
        parent = self.dense_positions
        for l in range(self.first, len(levels)):
            kind, size = levels[l], self.level_sizes[l]
            arrays = {a: take((l, a), fixed, self.dtype_of(l, a)) for a in kind.arrays
                      if (fixed := kind.fixed_array_size(a, parent, size)) is not None}
            count = kind.num_positions(parent, size, arrays)
            for a in kind.arrays:
                if a not in arrays:
                    arrays[a] = take((l, a), count, self.dtype_of(l, a))
            level_arrays[l] = arrays
            parent = count
        vals = take((-1, "vals"), parent, self.dtype)
        # built by the kernel, well formed by construction: no validation pass
        return Tensor(self.fmt, shape, level_arrays, vals, validated=True)


class Output:
    """Allocates a kernel's output, hands its pointers out, and builds the result."""

    def __init__(self, low, sizes: dict, given, bits: int, accumulate: bool, overwrite: bool):
        t = low.inspection.notation.lhs.tensor
        self.name = t.name
        self.fmt = t.format
        self.dtype = np_dtype(t.dtype)
        self.shape = tuple(sizes[i.name] for i in low.inspection.notation.lhs.indices)
        self.dense_out = low.output.shape == "dense"
        self.index_limit = low.output.index_limit  # the most entries the kernel's positions hold
        self.capacity = None  # entries the kernel's growable arrays start with (set by the caller)
        self.arrays, self.grow, self.bounded, self.shared = {}, {}, {}, {}
        self.shared_offset = 0  # where the result starts in the shared arrays (meet_chunks.py)
        level_sizes = [sizes[i.name] for i in access_chain(low.inspection.notation.lhs)]
        self.layout = OutputLayout(self.fmt, level_sizes, bits, self.dtype)
        if self.dense_out:
            self._alloc_dense(given, accumulate, overwrite, level_sizes)
            return
        if given is not None and not accumulate:
            raise OperandError(f"output {self.name} is sparse: the kernel assembles it, so do not "
                               "pass it (pass it only with +=)")
        grow, bounded = set(low.output.growable), set(low.output.bounded) | set(low.output.meet)
        # what each call of this output allocates: the grown arrays' pointers, the fixed arrays
        # (bounded arrays and those chunks share are allocated at the capacity the call picks)
        self._plan = ([key for key in self.layout.keys() if key in grow],
                      [(key, self.layout.fixed_size(*key), self.layout.dtype_of(*key))
                       for key in self.layout.keys() if key not in grow and key not in bounded])
        self._allocate()

    def _allocate(self):
        grown, fixed = self._plan
        for key in grown:
            self.grow[key] = ctypes.c_void_p(0)
        for key, size, dtype in fixed:
            self.arrays[key] = np.zeros(size, dtype=dtype)

    def again(self, allocate: bool = True) -> "Output":
        """A fresh output of the same call (a sparse one, nothing given): its layout and
        allocation plan reused, for a call repeated with the same operands (sparsecall.py).
        ``allocate=False``: nothing allocated yet (a template kept between calls)."""
        out = object.__new__(Output)
        out.name, out.fmt, out.dtype, out.shape = self.name, self.fmt, self.dtype, self.shape
        out.dense_out, out.index_limit, out.layout, out._plan = False, self.index_limit, self.layout, self._plan
        out.capacity = None
        out.arrays, out.grow, out.bounded, out.shared, out.shared_offset = {}, {}, {}, {}, 0
        if allocate:
            out._allocate()
        return out

    def _alloc_dense(self, given, accumulate, overwrite, level_sizes):
        if given is None:
            self.dense = fresh_output(tuple(level_sizes), self.dtype, overwrite)
            self.user = None
            return
        arr = given
        if not isinstance(arr, np.ndarray):
            raise OperandError(f"output {self.name} must be a numpy.ndarray, not {type(arr).__name__}")
        if arr.dtype != self.dtype:
            raise DTypeError(f"output {self.name} has dtype {arr.dtype} but the kernel writes {self.dtype}")
        if not arr.flags.writeable:
            raise OperandError(f"output {self.name} is read-only")
        view = np.transpose(arr, self.fmt.order) if self.fmt.order else arr
        self.user = arr
        self.dense = view if view.flags.c_contiguous else np.ascontiguousarray(view)
        if not accumulate and not overwrite:
            self.dense[...] = 0

    # ------------------------------------------------------------ arguments
    def arg(self, b, pointers=True):
        if self.dense_out:
            arr = self.dense
        elif b.role == "output_grow":
            return ctypes.byref(self.grow[(b.level, b.array)])
        elif b.role in ("output_bounded", "needed"):
            arr = self._bounded_array(b)
        elif b.role == "output_meet":  # allocated by the call once it has split the rows (meet_chunks.py)
            return 0
        else:
            arr = self.arrays[(b.level, b.array)]
        return data_ptr(arr) if pointers else arr

    def _bounded_array(self, b):
        """An array the kernel appends into without growing it (Options.bounded_appends):
        ``capacity`` entries (``pos`` one more), or the one count it reports."""
        key = (b.level, b.array) if b.role == "output_bounded" else "needed"
        arr = self.bounded.get(key)
        if arr is None:
            if key == "needed":
                arr = np.zeros(1, np.int64)
            else:
                arr = np.zeros(self.capacity + (1 if b.array == "pos" else 0), self.layout.dtype_of(*key))
            self.bounded[key] = arr
        return arr

    def share(self, keys, total: int) -> dict:
        """Allocate the arrays ``keys`` that chunks meeting in the middle share, ``total``
        entries each (uninitialised: each entry is written before it is read)."""
        self.shared = {key: np.empty(max(total, 1), self.layout.dtype_of(*key)) for key in keys}
        return self.shared

    def needed(self) -> int:
        """Entries a bounded-append kernel needed (0 when it grows its own arrays)."""
        counts = self.bounded.get("needed")
        return int(counts[0]) if counts is not None else 0

    def discard(self):
        for ptr in self.grow.values():
            if ptr.value:
                free(ptr.value)
                ptr.value = None

    def _slotted(self):
        """(level, kind) of the output's fixed-slot level (``Level.fixed_slots``), or None."""
        return next(((l, k) for l, k in enumerate(self.fmt.levels) if k.fixed_slots), None)

    def largest_count(self):
        """The most entries a block of the fixed-slot level was given (0: none)."""
        found = self._slotted()
        if found is None:
            return 0
        l, kind = found
        return kind.largest_fill({a: arr for (m, a), arr in self.arrays.items() if m == l})

    def packed_k(self):
        return self._slotted()[1].K

    # --------------------------------------------------------------- result
    def _taken(self, key, n, dtype):
        """The first ``n`` entries of one of the output's arrays."""
        if key in self.arrays:
            return self.arrays[key]
        if key in self.shared:  # a view where the chunks' entries start; cut when much is unused
            whole = self.shared[key]
            part = whole[self.shared_offset:self.shared_offset + n]
            return part.copy() if mostly_unused(n, whole.shape[0]) else part
        if key in self.bounded:
            whole = self.bounded[key]
            return whole[:n].copy() if mostly_unused(n, whole.shape[0]) else whole[:n]
        return self._take(key, n, dtype)

    def _take(self, key, n, dtype):
        """A kernel-allocated array as NumPy, without a copy, freed when the last array
        using it goes; trimmed to its length with realloc when much of it is unused.

        A buffer the call's initial capacity held (no growth) with under a quarter
        unused is kept whole: trimming a large block before it is freed leaves
        malloc's mmap threshold just under the next call's request, so every call
        got fresh pages (SpGEMM 5000² on one thread: ~1000 page faults and 5.5 ms a
        call trimmed, ~100 and 2.6 ms kept; docs/performance.md)."""
        ptr = self.grow[key].value
        if n == 0 or not ptr:
            if ptr:
                free(ptr)
            return np.zeros(0, dtype=dtype)
        nbytes = n * dtype.itemsize
        capacity = self.capacity
        if capacity is None or n > capacity or mostly_unused(n, capacity):
            trimmed = memory.realloc(ptr, nbytes)
            if trimmed:
                ptr = trimmed
        return owned_view(ptr, n, dtype)

    def result(self):
        if not self.dense_out:
            return self.layout.tensor(self.shape, self._taken)
        out = self.dense
        if self.user is not None:
            if not np.shares_memory(out, self.user):
                np.copyto(np.transpose(self.user, self.fmt.order), out)
            return self.user
        if not self.shape:
            return out.reshape(()).item() if out.size else 0.0
        return np.transpose(out, np.argsort(self.fmt.order))
