"""Types of the kernel IR: scalars and pointers to arrays of scalars.

``bf16`` is a storage-only type: the lowerer always converts a loaded bf16
value to ``f32`` with an explicit :class:`~spcomp.ir.nodes.Cast` before doing
arithmetic, and casts back before storing. Backends keep bf16 in memory as the
upper 16 bits of an IEEE float32 (round-to-nearest-even on the way down).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np


# The one table of facts about each scalar type: its width in bits, the C type that
# stores it (the IR printer's and the CUDA emitter's: bf16 is stored as the upper
# half of a float32) and the NumPy dtype of its arrays. Each backend's own table
# (LLVM types in backends/cpu/llvm_types.py, ctypes in backends/cpu/abi.py) is
# about its target language only.
_FACTS = {  # name: (bits, C name, NumPy dtype name)
    "bool": (1, "bool", "bool"),
    "i8": (8, "int8_t", "int8"),
    "i16": (16, "int16_t", "int16"),
    "i32": (32, "int32_t", "int32"),
    "i64": (64, "int64_t", "int64"),
    "f32": (32, "float", "float32"),
    "f64": (64, "double", "float64"),
    "bf16": (16, "uint16_t", "bfloat16"),
}
C_NAMES = {name: facts[1] for name, facts in _FACTS.items()}


@dataclass(frozen=True)
class ScalarType:
    name: str  # 'bool' 'i8' 'i16' 'i32' 'i64' 'f32' 'f64' 'bf16'

    @property
    def is_float(self) -> bool:
        return self.name in ("f32", "f64", "bf16")

    @property
    def is_int(self) -> bool:
        return self.name in ("i8", "i16", "i32", "i64")

    @property
    def bits(self) -> int:
        return _FACTS[self.name][0]

    @property
    def c_name(self) -> str:
        return _FACTS[self.name][1]

    def __repr__(self) -> str:
        return self.name

    __str__ = __repr__


@dataclass(frozen=True)
class PointerType:
    elem: "Type"

    def __repr__(self) -> str:
        return f"{self.elem}*"

    __str__ = __repr__


Type = ScalarType | PointerType

BOOL = ScalarType("bool")
I8 = ScalarType("i8")
I16 = ScalarType("i16")
I32 = ScalarType("i32")
I64 = ScalarType("i64")
F32 = ScalarType("f32")
F64 = ScalarType("f64")
BF16 = ScalarType("bf16")
SCALAR_TYPES = (BOOL, I8, I16, I32, I64, F32, F64, BF16)


def ptr(elem: Type) -> PointerType:
    return PointerType(elem)


def from_numpy(dtype) -> ScalarType:
    """The IR type that stores elements of a NumPy dtype (bfloat16 -> bf16)."""
    dtype = np.dtype(dtype)
    for t in SCALAR_TYPES:
        if _FACTS[t.name][2] == dtype.name:
            return t
    raise TypeError(f"no IR type for dtype {dtype}")


def to_numpy(t: ScalarType) -> np.dtype:
    if t == BF16:
        import ml_dtypes
        return np.dtype(ml_dtypes.bfloat16)
    return np.dtype(_FACTS[t.name][2])


def compute_type(storage: ScalarType) -> ScalarType:
    """The type arithmetic happens in for values stored as ``storage``."""
    return F32 if storage == BF16 else storage


def bf16_bits(value: float) -> int:
    """The bf16 bit pattern of ``value`` (round to nearest even; NaN stays a quiet NaN):
    how both backends write a bf16 constant."""
    with np.errstate(over="ignore"):
        f = np.float32(value)
    bits = int(np.array(f).view(np.uint32))
    if f != f:
        return ((bits >> 16) & 0x8000) | 0x7FC0
    return ((bits + 0x7FFF + ((bits >> 16) & 1)) >> 16) & 0xFFFF
