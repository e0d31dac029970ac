"""The LLVM side of the IR's types: the one table from IR scalar types to LLVM types.

In memory, ``bool`` is one byte (NumPy's layout) and ``bf16`` an ``i16`` holding the
upper half of a float32; in registers a bool is ``i1``. Pointers are opaque ``ptr``.
The bit widths come from :mod:`spcomp.ir.types`.
"""
from __future__ import annotations

from llvmlite import ir

from spcomp.ir.types import PointerType

PTR = ir.PointerType()
I1_T, I8_T, I16_T, I32_T, I64_T = (ir.IntType(b) for b in (1, 8, 16, 32, 64))
F32_T, F64_T = ir.FloatType(), ir.DoubleType()

_REGISTER = {"bool": I1_T, "i8": I8_T, "i16": I16_T, "i32": I32_T, "i64": I64_T,
             "f32": F32_T, "f64": F64_T, "bf16": I16_T}
_MEMORY = dict(_REGISTER, bool=I8_T)


def register_type(t) -> ir.Type:
    """The LLVM type of a value of IR type ``t`` held in a register."""
    return PTR if isinstance(t, PointerType) else _REGISTER[t.name]


def memory_type(t) -> ir.Type:
    """The LLVM type of an array element of IR type ``t``."""
    return PTR if isinstance(t, PointerType) else _MEMORY[t.name]


def sizeof(t) -> int:
    """Bytes per array element of IR type ``t``."""
    return 8 if isinstance(t, PointerType) else max(1, t.bits // 8)


def wrap_int(value: int, bits: int) -> int:
    """``value`` as a signed ``bits``-bit integer (two's complement wrap-around)."""
    value = int(value) & ((1 << bits) - 1)
    return value - (1 << bits) if value >> (bits - 1) else value
