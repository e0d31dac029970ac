"""The C ABI of a kernel as ctypes sees it: one prototype per IR function.

Every kernel function returns an int32 status; pointer parameters are passed as
addresses (``c_void_p``), scalars as their C type. The JIT and the native
parallel drivers both build their ctypes functions from here.
"""
from __future__ import annotations

import ctypes

from spcomp.errors import LimitError
from spcomp.ir import nodes as n
from spcomp.ir.types import BF16, BOOL, F32, F64, I8, I16, I32, I64, PointerType

_CTYPES = {BOOL: ctypes.c_bool, I8: ctypes.c_int8, I16: ctypes.c_int16, I32: ctypes.c_int32,
           I64: ctypes.c_int64, F32: ctypes.c_float, F64: ctypes.c_double,
           BF16: ctypes.c_uint16}


# ctypes.CFUNCTYPE takes at most this many arguments (it raises a bare ArgumentError)
MAX_ARGUMENTS = 1024


def ctypes_signature(f: n.Function) -> ctypes.CFUNCTYPE:
    """The ctypes prototype of a kernel function: ``int32 f(void*, int64, ...)``."""
    args = [ctypes.c_void_p if isinstance(p.type, PointerType) else _CTYPES[p.type]
            for p in f.params]
    if len(args) > MAX_ARGUMENTS:
        raise LimitError(f"the kernel takes {len(args)} arguments (the arrays and sizes of its "
                         f"operands); a ctypes call takes at most {MAX_ARGUMENTS}: use fewer distinct "
                         f"operands, or split a long sum over kernels that accumulate with '+='")
    return ctypes.CFUNCTYPE(ctypes.c_int32, *args)
