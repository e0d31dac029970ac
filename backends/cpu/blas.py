"""The BLAS that generated CPU code calls for matrix products (``Gemm`` statements).

SciPy exports its BLAS (OpenBLAS in the wheels) to compiled extensions as
PyCapsules in ``scipy.linalg.cython_blas``: plain C functions with the Fortran
calling convention (every argument by reference, column-major). Registering
their addresses as LLVM symbols lets object code — fresh or loaded from the disk
cache — call them by name, with no address baked into the cache.
"""
from __future__ import annotations

import contextlib
import ctypes

from llvmlite import binding as llvm

from spcomp.runtime import forksafe

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


# ------------------------------------------------------------ BLAS threads

class _DlInfo(ctypes.Structure):
    _fields_ = [("dli_fname", ctypes.c_char_p), ("dli_fbase", ctypes.c_void_p),
                ("dli_sname", ctypes.c_char_p), ("dli_saddr", ctypes.c_void_p)]


_thread_fns: tuple | None = None
_thread_fns_found = False
# (a block a thread was in at a fork never ends in the child: OpenBLAS keeps one thread there)
_limit_lock = forksafe.Lock()
_limit_depth = 0
_limit_saved = 0


def _openblas_thread_functions() -> tuple | None:
    """``(get_num_threads, set_num_threads)`` of the OpenBLAS that SciPy's ``sgemm``
    lives in (found with ``dladdr``), or None for another BLAS or platform."""
    global _thread_fns, _thread_fns_found
    if _thread_fns_found:
        return _thread_fns
    _thread_fns_found = True
    try:
        from scipy.linalg import cython_blas
        libc = ctypes.CDLL(None)
        libc.dladdr.argtypes = [ctypes.c_void_p, ctypes.POINTER(_DlInfo)]
        info = _DlInfo()
        if not libc.dladdr(_capsule_address(cython_blas.__pyx_capi__["sgemm"]), ctypes.byref(info)):
            return None
        lib = ctypes.CDLL(info.dli_fname.decode())
    except (OSError, AttributeError, ImportError):
        return None
    for prefix in ("scipy_openblas", "openblas"):
        get = getattr(lib, f"{prefix}_get_num_threads", None)
        set_ = getattr(lib, f"{prefix}_set_num_threads", None)
        if get is not None and set_ is not None:
            get.restype, get.argtypes = ctypes.c_int, []
            set_.restype, set_.argtypes = None, [ctypes.c_int]
            _thread_fns = (get, set_)
            break
    return _thread_fns


@contextlib.contextmanager
def single_threaded_blas():
    """Run SciPy's OpenBLAS on the calling thread while the block runs.

    For callers that split a product over their own threads (``spcomp.nn``'s gate:
    one weight slab per thread): OpenBLAS's own workers then get no job, so they
    do not busy-wait afterwards on the cores the next spcomp kernel needs (they
    spin for ~2^28 cycles after each call). The setting is process-wide in
    OpenBLAS's pthreads build, so a scipy.linalg call from another thread during
    the block also runs on one thread; nested and concurrent blocks restore the
    count when the last one ends. A no-op when SciPy's BLAS is not OpenBLAS.
    """
    global _limit_depth, _limit_saved
    fns = _openblas_thread_functions()
    if fns is None:
        yield
        return
    get, set_ = fns
    with _limit_lock:
        if _limit_depth == 0:
            _limit_saved = get()
            set_(1)
        _limit_depth += 1
    try:
        yield
    finally:
        with _limit_lock:
            _limit_depth -= 1
            if _limit_depth == 0:
                set_(_limit_saved)
