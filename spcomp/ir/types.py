"""Types of the kernel IR: scalars and pointers to arrays of scalars.

``bf16`` is a storage-only type: the lowerer always converts a loaded bf16
value to ``f32`` with an explicit :class:`~spcomp.ir.nodes.Cast` before doing
arithmetic, and casts back before storing. Backends keep bf16 in memory as the
upper 16 bits of an IEEE float32 (round-to-nearest-even on the way down).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np


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
        return {"bool": 1, "i8": 8, "i16": 16, "i32": 32, "i64": 64,
                "f32": 32, "f64": 64, "bf16": 16}[self.name]

    @property
    def c_name(self) -> str:
        return C_NAMES[self.name]

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

C_NAMES = {"bool": "bool", "i8": "int8_t", "i16": "int16_t", "i32": "int32_t",
           "i64": "int64_t", "f32": "float", "f64": "double", "bf16": "uint16_t"}


def ptr(elem: Type) -> PointerType:
    return PointerType(elem)


def from_numpy(dtype) -> ScalarType:
    """The IR type that stores elements of a NumPy dtype (bfloat16 -> bf16)."""
    dtype = np.dtype(dtype)
    if dtype.name == "bfloat16":
        return BF16
    table = {"int8": I8, "int16": I16, "int32": I32, "int64": I64,
             "float32": F32, "float64": F64, "bool": BOOL}
    try:
        return table[dtype.name]
    except KeyError:
        raise TypeError(f"no IR type for dtype {dtype}") from None


def to_numpy(t: ScalarType) -> np.dtype:
    if t == BF16:
        import ml_dtypes
        return np.dtype(ml_dtypes.bfloat16)
    return np.dtype({"i8": "int8", "i16": "int16", "i32": "int32", "i64": "int64",
                     "f32": "float32", "f64": "float64", "bool": "bool"}[t.name])


def compute_type(storage: ScalarType) -> ScalarType:
    """The type arithmetic happens in for values stored as ``storage``."""
    return F32 if storage == BF16 else storage
