"""Measuring what splitting a call over libgomp's team costs on this host.

The runtime keeps a call on one thread when its work (rows + nonzeros, launch.py's
units) would gain less from ``T`` threads than waking and joining the team costs.
Both sides are measured here on a small CSR SpMV kernel with a native parallel
driver (the shape most kernels' units are calibrated in): ``unit_ns``, the time of
one unit on one thread (a row of 8 nonzeros over a cache-resident vector is 9
units), and ``fork_join_ns``, what a driver call over ``T`` near-empty chunks
costs beyond the same work on this thread. A call gains from ``T`` threads when
``W * unit * (1 - 1/T) > fork_join``. Minimum times over repeated runs are used:
the machine may be shared and a minimum is what a quiet moment costs. The runtime
decides when to measure (again: runtime/split_threshold.py); the kernel is compiled
once per process.
"""
from __future__ import annotations

import time

import numpy as np

from spcomp.ir import F64, I32, I64, Assign, Binary, Const, Declare, For, Function, Load, Module, Store, Var
from spcomp.ir import block, i64, ptr

ROW_NONZEROS = 8
ROWS = 4096  # 36k units: ~20-40 us on one thread, long enough to time, short to repeat
REPEATS = 25
BUDGET_NS = 20_000_000  # per measured quantity: the whole measurement stays well under 0.1 s
_kernel = None  # (function, driver) of the compiled SpMV, kept for later measurements


def _spmv() -> Module:
    pos, crd, vals, x, y = (Var("pos", ptr(I64)), Var("crd", ptr(I32)), Var("vals", ptr(F64)),
                            Var("x", ptr(F64)), Var("y", ptr(F64)))
    lo, hi, i, p, acc = Var("lo", I64), Var("hi", I64), Var("i", I64), Var("p", I64), Var("acc", F64)
    fn = Function("calibrate_spmv", (lo, hi, pos, crd, vals, x, y), block(
        For(i, lo, hi, block(
            Declare(acc, Const(0.0, F64)),
            For(p, Load(pos, i), Load(pos, Binary("+", i, i64(1))), block(
                Assign(acc, Binary("+", acc, Binary("*", Load(vals, p), Load(x, Load(crd, p))))))),
            Store(y, i, acc)), parallel="threads")))
    return Module((fn,), entry="calibrate_spmv")


def _best(call, repeats: int = REPEATS, budget_ns: int = BUDGET_NS) -> float:
    """The shortest of ``repeats`` timed calls, in ns (fewer, at least 3, once they
    took ``budget_ns``: on a loaded host a team call can wait a scheduler tick)."""
    best, start = float("inf"), time.perf_counter_ns()
    for k in range(repeats):
        t = time.perf_counter_ns()
        call()
        end = time.perf_counter_ns()
        best = min(best, end - t)
        if k >= 2 and end - start > budget_ns:
            break
    return best


def measure(threads: int) -> tuple | None:
    """``(unit_ns, fork_join_ns)`` on this host for a team of ``threads``, or None
    where no native driver can be built (no libgomp)."""
    global _kernel
    if _kernel is None:
        from .jit import compile_module
        cm = compile_module(_spmv())
        _kernel = (cm.function("calibrate_spmv"), cm.parallel_driver("calibrate_spmv"))
    fn, driver = _kernel
    if driver is None:
        return None
    rng = np.random.default_rng(0)
    pos = np.arange(0, (ROWS + 1) * ROW_NONZEROS, ROW_NONZEROS, dtype=np.int64)
    crd = rng.integers(0, 1 << 14, ROWS * ROW_NONZEROS).astype(np.int32)
    vals = rng.random(ROWS * ROW_NONZEROS)
    x, y = rng.random(1 << 14), np.zeros(ROWS)
    arrays = [a.ctypes.data for a in (pos, crd, vals, x, y)]
    fn(0, ROWS, *arrays)  # warm the code and the data
    whole = _best(lambda: fn(0, ROWS, *arrays))
    unit = whole / (ROWS * (ROW_NONZEROS + 1))
    # a team over ``threads`` chunks of one row each, against those rows on this thread
    bounds = np.arange(threads + 1, dtype=np.int64)
    for _ in range(3):
        driver(threads, bounds.ctypes.data, *arrays)
    team = _best(lambda: driver(threads, bounds.ctypes.data, *arrays), 4 * REPEATS)
    alone = _best(lambda: fn(0, threads, *arrays), 4 * REPEATS)
    return max(unit, 1e-3), max(team - alone, 0.0)


def threshold(threads: int, margin: float = 2.0) -> int | None:
    """The work units below which a call is faster on one thread than on
    ``threads``, times ``margin`` (a call's estimate is rough, and a team woken
    for a short call spins into the next one); None without a native driver."""
    if threads <= 1:
        return None
    got = measure(threads)
    if got is None:
        return None
    unit, fork_join = got
    return int(margin * fork_join / (unit * (1.0 - 1.0 / threads)))
