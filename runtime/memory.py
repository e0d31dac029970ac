"""Raw memory a kernel hands back: malloc'd arrays as NumPy, data pointers, libc.

Kernels allocate growing outputs with the process's malloc; the runtime views
those bytes as NumPy arrays without copying and frees them with libc's ``free``
when the last array using them goes. A call passes operands to machine code as
raw data pointers, read here as cheaply as the interpreter allows.
"""
from __future__ import annotations

import ctypes
import ctypes.util

import numpy as np

_LIBC = None


def _libc():
    global _LIBC
    if _LIBC is None:
        libc = ctypes.CDLL(ctypes.util.find_library("c"))
        libc.free.argtypes = [ctypes.c_void_p]
        libc.realloc.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
        libc.realloc.restype = ctypes.c_void_p
        libc.memcmp.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_size_t]
        libc.memcmp.restype = ctypes.c_int
        _LIBC = libc
    return _LIBC


def free(ptr: int) -> None:
    """Free memory a kernel allocated (kernels use the process's malloc)."""
    _libc().free(ctypes.c_void_p(ptr))


def realloc(ptr: int, nbytes: int) -> int:
    """``realloc`` of a kernel's array; 0 when it failed (the old block is then still valid)."""
    return _libc().realloc(ctypes.c_void_p(ptr), nbytes) or 0


class _Bytes:
    """Memory at an address as NumPy sees it: the ``base`` of a :func:`malloc_view`,
    which a finalizer can watch (weak references) to free the memory."""

    __slots__ = ("__array_interface__", "__weakref__")

    def __init__(self, ptr: int, n: int, dtype: np.dtype):
        self.__array_interface__ = {"data": (ptr, False), "shape": (n,), "typestr": dtype.str, "version": 3}


class _Owned(_Bytes):
    """A :class:`_Bytes` that frees its memory when NumPy lets it go."""

    __slots__ = ("ptr",)

    def __init__(self, ptr: int, n: int, dtype: np.dtype):
        super().__init__(ptr, n, dtype)
        self.ptr = ptr

    def __del__(self, _free=None):
        (_free or free)(self.ptr)


def owned_view(ptr: int, n: int, dtype: np.dtype) -> np.ndarray:
    """``n`` items of malloc'd memory as NumPy, freed with the last array using them
    (a ``__del__`` of the array's base: ~0.9 us less than a ``weakref.finalize``)."""
    dtype = np.dtype(dtype)
    return _as_dtype(np.asarray(_Owned(ptr, n, dtype)), dtype)


def _as_dtype(arr: np.ndarray, dtype: np.dtype) -> np.ndarray:
    """``arr`` as ``dtype``: a type-string names only NumPy's own dtypes (ml_dtypes'
    bfloat16 reads back as two-byte void), so any other is a view of the same bytes."""
    return arr if arr.dtype == dtype else arr.view(dtype)


def malloc_view(ptr: int, n: int, dtype: np.dtype) -> np.ndarray:
    """``n`` items of malloc'd memory as NumPy, not owning it (its ``base`` is an
    object a finalizer can watch to free it). An ``__array_interface__`` costs ~1 us;
    a ctypes array of ``n`` bytes cost ~8 us, as ctypes made a new type per length,
    three or four times a chunked SpGEMM call."""
    dtype = np.dtype(dtype)
    return _as_dtype(np.asarray(_Bytes(ptr, n, dtype)), dtype)


def same_contents(a: np.ndarray, b: np.ndarray) -> bool:
    """Whether two arrays hold the same bytes: libc's ``memcmp`` on contiguous arrays
    of one dtype and shape (~0.3 us plus the bytes at memory speed; ``np.array_equal``
    costs ~3 us of Python before it compares anything), NumPy otherwise."""
    if (type(a) is np.ndarray and type(b) is np.ndarray and a.dtype == b.dtype and a.shape == b.shape
            and a.flags.c_contiguous and b.flags.c_contiguous):
        return a.nbytes == 0 or _libc().memcmp(data_ptr(a), data_ptr(b), a.nbytes) == 0
    return bool(np.array_equal(a, b))


def mostly_unused(n: int, capacity: int) -> bool:
    """Whether an output array of ``capacity`` entries holding ``n`` leaves over a
    quarter unused: then it is cut to ``n``, else kept whole."""
    return 4 * (capacity - n) > capacity


def _slow_data_ptr(a) -> int:
    return a.__array_interface__["data"][0]


def _pick_data_ptr():
    """The cheapest reader of an ndarray's data pointer that this interpreter allows.

    ``__array_interface__`` builds a dict (~1.5 us, a tenth of a small call); on
    CPython the pointer is the first field after the object header (NumPy's ABI:
    ``PyArray_DATA``), read in ~0.2 us. The fast reader is used only when it
    agrees with ``__array_interface__`` on probes here."""
    import platform
    if platform.python_implementation() != "CPython":
        return _slow_data_ptr
    at = ctypes.c_void_p.from_address
    offset = object.__basicsize__

    def fast(a) -> int:
        return at(id(a) + offset).value

    base = np.arange(8.0)
    probes = [base, base[3:], np.zeros((2, 3), np.float32), np.zeros(0)]
    if all(fast(a) == _slow_data_ptr(a) for a in probes):
        fast.parts = (at, offset)  # for generated code that inlines the read (fastcall.py)
        return fast
    return _slow_data_ptr


data_ptr = _pick_data_ptr()
data_ptr.__doc__ = "The address of an ndarray's first element."


def pointer_parts():
    """``(from_address, offset)`` with ``from_address(id(a) + offset).value`` the data
    pointer of ndarray ``a``, where :func:`data_ptr` reads it that way; else None."""
    return getattr(data_ptr, "parts", None)
