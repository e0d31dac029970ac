"""Kernel IR: the imperative, backend-neutral form of a kernel (DESIGN §6)."""
from . import nodes, types
from .nodes import *  # noqa: F401,F403
from .printer import CPrinter, print_ir
from .types import (BF16, BOOL, F32, F64, I8, I16, I32, I64, PointerType,
                    ScalarType, ptr)
