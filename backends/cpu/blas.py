"""The BLAS that generated CPU code calls for matrix products (``Gemm`` statements).

SciPy exports its BLAS (OpenBLAS in the wheels) to compiled extensions as
PyCapsules in ``scipy.linalg.cython_blas``: plain C functions with the Fortran
calling convention (every argument by reference, column-major). Registering
their addresses as LLVM symbols lets object code — fresh or loaded from the disk
cache — call them by name, with no address baked into the cache.
"""
from __future__ import annotations

import ctypes

from llvmlite import binding as llvm

SYMBOLS = {"spcomp_blas_sgemm": "sgemm", "spcomp_blas_dgemm": "dgemm"}

_registered = False


def _capsule_address(capsule) -> int:
    get_name = ctypes.pythonapi.PyCapsule_GetName
    get_name.restype = ctypes.c_char_p
    get_name.argtypes = [ctypes.py_object]
    get_pointer = ctypes.pythonapi.PyCapsule_GetPointer
    get_pointer.restype = ctypes.c_void_p
    get_pointer.argtypes = [ctypes.py_object, ctypes.c_char_p]
    return get_pointer(capsule, get_name(capsule))


def register_symbols() -> None:
    """Make ``spcomp_blas_sgemm``/``dgemm`` resolvable by the JIT (once per process)."""
    global _registered
    if _registered:
        return
    from scipy.linalg import cython_blas
    for symbol, routine in SYMBOLS.items():
        llvm.add_symbol(symbol, _capsule_address(cython_blas.__pyx_capi__[routine]))
    _registered = True
