"""Names, parameters and the environment the lowerer threads through loops."""
from __future__ import annotations

from dataclasses import dataclass, field

from ..ir import nodes as n
from ..ir.types import BF16, F32, F64, I32, I64, ScalarType
from ..notation import TensorVar


class Names:
    """Fresh, readable variable names: ``j``, then ``j_2``, ``j_3`` ..."""

    def __init__(self, reserved=()):
        self.used = set(reserved)

    def __call__(self, base: str) -> str:
        if base not in self.used:
            self.used.add(base)
            return base
        k = 2
        while f"{base}_{k}" in self.used:
            k += 1
        name = f"{base}_{k}"
        self.used.add(name)
        return name


VALUE_TYPES = {"float32": F32, "float64": F64, "bfloat16": BF16}


def value_type(t: TensorVar) -> ScalarType:
    return VALUE_TYPES[t.dtype]


def index_type(bits: int) -> ScalarType:
    return I32 if bits == 32 else I64


def level_array_type(level, array: str, bits: int) -> ScalarType:
    """Element type of one level array in the kernel for an index width (the level says)."""
    return level.array_type(array, bits)


@dataclass
class Binding:
    """What the runtime passes for one kernel parameter."""
    var: n.Var
    role: str            # 'size' 'lo' 'hi' 'capacity' 'input' 'output' 'output_grow'
    tensor: str = ""     # operand name the user passes
    level: int = -1      # storage level, -1 for vals
    array: str = ""      # 'pos' 'crd' 'count' 'vals'
    index: str = ""      # for 'size': the index variable name
    storage: str = ""    # name of the tensor's storage in this kernel (transposes differ)


@dataclass
class TensorParams:
    """The parameter variables of one tensor storage."""
    var_name: str                  # storage name, e.g. "A" or "A_T"
    tensor: TensorVar
    levels: list                   # per level: {array: Var}
    vals: n.Var

    def array(self, level: int, name: str) -> n.Var:
        return self.levels[level][name]


@dataclass
class Env:
    """What is known at a point in the loop nest."""
    bound: dict = field(default_factory=dict)   # IndexVar -> ir.Var coordinate
    pos: dict = field(default_factory=dict)     # (Access, level) -> PosInfo; ('out', l) too
    temps: dict = field(default_factory=dict)   # temp TensorVar -> ir.Var
    team: str | None = None   # member mapping still to place inside a GPU team loop

    def child(self) -> "Env":
        return Env(dict(self.bound), dict(self.pos), dict(self.temps), self.team)
