"""The native entry of a repeated call: a FastCall's checks and call made in C.

A kernel's warm repeated call through :mod:`.fastcall` costs a few microseconds
of Python, and with cold host caches (a call after a burst of other work) ~80 us,
most of it the interpreter touching its own objects and ctypes converting the
arguments. The optional extension ``spcomp.runtime.fastentry`` (``fastentry.c``,
built at install time when a C compiler is there) checks the same things and
calls the kernel's function directly. :func:`make` builds its ``Entry`` for a
call whose every check and argument it can take (``fastcall.FastCall.native``
says which): Tensors and ndarrays as operands, SciPy matrices whose row
extents it compares as bytes, a fresh or given dense output, integer-class arguments only, no split
the measured threshold still watches.
Anything the entry cannot decide from identities and layouts alone it answers
``MISS``, and the FastCall's own checks decide, so the entry never accepts a call
the Python path would refuse. ``SPCOMP_NATIVE_ENTRY=0`` turns it off.
"""
from __future__ import annotations

import ctypes
import os

import numpy as np

from . import threads as _threads

try:
    from . import fastentry
except ImportError:  # built without a C compiler: the Python fast path alone
    fastentry = None

MISS = fastentry.MISS if fastentry is not None else object()
# the argument types the entry passes as 64-bit integers (fastentry.c)
_INTEGER_ARGS = frozenset([ctypes.c_void_p, ctypes.c_int64, ctypes.c_int32, ctypes.c_long, ctypes.c_longlong,
                           ctypes.c_int, ctypes.c_size_t, ctypes.c_ssize_t, ctypes.c_uint64, ctypes.c_uint32])
_STATUS_TYPES = frozenset([ctypes.c_int32, ctypes.c_int])
MAX_ARGS, MAX_DIMS, MAX_SLOTS = 48, 8, 8  # as fastentry.c sizes its tables


def available() -> bool:
    """Whether the extension was built and is not turned off."""
    return fastentry is not None and os.environ.get("SPCOMP_NATIVE_ENTRY", "1") != "0"


def make(fn, template: list, count: int, checks: list, alloc, given, out_shape: tuple, out_dtype, zero_given: bool,
         apart: list, out_slots: tuple, scalar: bool, threads, split_generation, keep):
    """The Entry of a repeated call, or None where it cannot make one: no
    extension, ``fn`` not a ctypes function of integer-class arguments returning a
    status, an argument only Python knows how to pass, or more arguments, slots
    or dimensions than its tables hold. ``checks``: per operand ``(name, weak
    reference, kind, shape, strides, dtype, slots, scipy)`` (kind 0: the very
    object, 1: an ndarray laid out alike, 2: an unchanged SciPy matrix, whose
    ``scipy`` is ``(data, indices, indptr, converted Tensor: weak references;
    shape; row extents as bytes)``); ``template``: the argument list (at the
    checks' and the output's slots whatever the FastCall keeps there: each call
    swaps a pointer in); the rest as a FastCall keeps them (fastcall.py)."""
    if not available():
        return None
    if getattr(fn, "restype", None) not in _STATUS_TYPES or getattr(fn, "argtypes", None) is None:
        return None
    if len(fn.argtypes) != len(template) or len(template) > MAX_ARGS \
            or any(t not in _INTEGER_ARGS for t in fn.argtypes):
        return None
    swapped = {k for c in checks for k in c[6]} | set(out_slots)
    if any(type(v) is not int for k, v in enumerate(template) if k not in swapped):
        return None
    if len(out_slots) > MAX_SLOTS or len(out_shape) > MAX_DIMS \
            or any(len(c[3]) > MAX_DIMS or len(c[6]) > MAX_SLOTS for c in checks):
        return None
    dtype = np.dtype(out_dtype)
    nbytes = int(np.prod(out_shape, dtype=np.int64)) * dtype.itemsize
    split = split_generation is not None
    try:
        address = ctypes.cast(fn, ctypes.c_void_p).value
        return fastentry.make(
            address, [v if type(v) is int else 0 for v in template], count, checks, np.ndarray, _alloc_kind(alloc), alloc, given, out_shape, dtype, nbytes, zero_given, apart, out_slots, scalar,
            vars(_threads), threads or 0, _threads.split_state if split else None,
            split_generation if split else 0, _threads.hold, keep)
    except (ValueError, TypeError, OverflowError, ctypes.ArgumentError):
        return None


def _alloc_kind(alloc) -> int:
    """How the entry makes a fresh output: 1 as ``np.zeros``, 2 as ``np.empty`` (where
    ``alloc`` is one of them bound to the output's shape and dtype), 0 by calling
    ``alloc`` (an output poisoned for tests, outputs.py)."""
    func = getattr(alloc, "func", None)
    if getattr(alloc, "keywords", None):
        return 0
    return 1 if func is np.zeros else 2 if func is np.empty else 0


def run(entry, operands):
    """The call's result, ``(status,)`` when the kernel failed, or MISS."""
    return fastentry.run(entry, operands)
