"""Dense operands copied into another dimension order, on the threads.

A kernel whose innermost loop would stride across a dense operand's rows reads a
copy of it in the order that loop wants (the lowerer's auto-layout: SDDMM's
``E[k,j]`` under ``for j: for k`` becomes ``E_T``). The copy is made at every
call, since the caller may change the array between calls. NumPy's transposed
copy runs on one thread; here a compiled copy kernel (``T[a,b] = E[b,a]``,
without an auto-layout of its own) runs it on libgomp's team like any parallel
kernel. Two threads, E 64×20000 float64: 0.57-0.69 ms against NumPy's 1.35; on
one thread they tie (1.45 vs 1.34 ms), so one thread keeps NumPy's copy.
"""
from __future__ import annotations

import string

import numpy as np

from . import forksafe
from . import threads as _threads

# below this many elements NumPy's copy is as quick as waking the team
MIN_ELEMENTS = 1 << 18
DTYPES = ("float32", "float64")

_kernels: dict = {}
_lock = forksafe.Lock()


def copy_expression(order: tuple) -> str:
    """``T[storage indices] = E[operand indices]`` for a storage in ``order``:
    storage dimension ``d`` is operand dimension ``order[d]``."""
    names = string.ascii_lowercase[:len(order)]
    operand = [""] * len(order)
    for d, axis in enumerate(order):
        operand[axis] = names[d]
    return f"T[{','.join(names)}] = E[{','.join(operand)}]"


def copy_kernel(key: tuple, make):
    """The compiled copy kernel for ``(order, dtype name)``, made by ``make(key)`` on
    first use (the Kernel module supplies it: the runtime does not compile)."""
    with _lock:
        k = _kernels.get(key)
    if k is None:
        k = make(key)
        with _lock:
            k = _kernels.setdefault(key, k)
    return k


def forget_copy_kernels() -> None:
    """Drop every copy kernel built or installed so far (as a fresh process has none)."""
    with _lock:
        _kernels.clear()


def copies_of(storages) -> list:
    """The ``(order, dtype name)`` of every copy a kernel's calls may make here: its
    dense storages (``CallPlan.storages``) in a non-identity order with a float dtype."""
    keys = []
    for _storage, _operand, fmt, dtype, _plain in storages:
        order = tuple(fmt.order)
        if (fmt.is_dense and len(order) >= 2 and order != tuple(range(len(order)))
                and np.dtype(dtype).name in DTYPES):
            keys.append((order, np.dtype(dtype).name))
    return list(dict.fromkeys(keys))


def install(key: tuple, kernel) -> None:
    """Use ``kernel`` (one read from a saved kernel file) for ``key`` unless one is
    already there: a loaded kernel then copies without compiling."""
    with _lock:
        _kernels.setdefault(tuple(key), kernel)


def relayout(value: np.ndarray, order: tuple, dtype: np.dtype, make) -> np.ndarray | None:
    """``value``'s elements in storage ``order``, flat, copied on the threads by the
    kernel ``make`` compiles; None where NumPy's copy is the better tool (one thread,
    a small or non-float array, a conversion of dtype on the way)."""
    if (_threads.get_num_threads() <= 1 or value.size < MIN_ELEMENTS or value.ndim < 2
            or not value.flags.c_contiguous or value.dtype != dtype or dtype.name not in DTYPES
            or tuple(order) == tuple(range(value.ndim))):
        return None
    return copy_kernel((tuple(order), dtype.name), make)(E=value).reshape(-1)


__all__ = ["relayout", "copy_expression", "copies_of", "copy_kernel", "install", "MIN_ELEMENTS"]
