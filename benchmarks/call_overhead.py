"""What a warm call of a compiled kernel costs over calling its native function through ctypes.

    python -m benchmarks.call_overhead            # best of 7 x 20 000 calls, one thread
    python -m benchmarks.call_overhead --clock cpu   # CPU time: steadier on a loaded machine
    python -m benchmarks.call_overhead --cold 200 --evict-mb 64   # also: one call with cold caches

The last row is a program of two statements fused into one native function
(``t = A x; y = t + b``): its repeated call against the same function called
with the argument list that call replays. A last line times a program run by
chunks of rows on two threads: its repeated call against its general path.

A tiny SpMV (64 x 64, 10 % dense, float64), so that the kernel's own work is a
hundred nanoseconds or so and the rest is the call: the kernel called with an
spcomp Tensor, with a SciPy csr matrix, and with the output given, each against
the very same native function (``Kernel``'s fast path's ctypes function) called
with a prepared argument list -- what calling TACO's generated C through ctypes
costs. Both are timed in one process, interleaved, so the difference is the
Python side of the call. The issue's target: at most 1.5 us over the native call.

``--cold N`` adds the cold-cache call: before each timed call a buffer of
``--evict-mb`` MB is written one byte per 64-byte line (evicting the
interpreter's code and objects, the operands and the TLB from the caches the
buffer covers), then one call is timed; N such samples each for spcomp and for
the ctypes call, interleaved, and their medians. The target there: at most
20 us for the whole call. (An L3 larger than the buffer keeps part of what the
call touches: ``lscpu`` says how large it is; raise ``--evict-mb`` past it.)
"""
from __future__ import annotations

import argparse
import time

import numpy as np
import scipy.sparse as sp

import spcomp
from spcomp import Tensor
from spcomp.runtime.outputs import zeros_in_order


CLOCKS = {"wall": time.perf_counter, "cpu": time.thread_time}


def bench(f, n: int, repeat: int, clock=time.perf_counter) -> float:
    """Best of ``repeat`` means over ``n`` calls, in microseconds."""
    f()
    best = float("inf")
    for _ in range(repeat):
        t0 = clock()
        for _ in range(n):
            f()
        best = min(best, (clock() - t0) / n)
    return best * 1e6


class Evictor:
    """Writes one byte per cache line of a large buffer: what the caches held before
    is gone (as after a burst of other work between two calls)."""

    def __init__(self, mb: int):
        self.lines = np.zeros(mb << 20, np.uint8)[::64]

    def __call__(self):
        np.add(self.lines, 1, out=self.lines)


def cold(fs: dict, evict, samples: int) -> dict:
    """Median time in microseconds of one call of each of ``fs`` right after
    ``evict()``, the functions taking turns so that both see the same host."""
    times = {name: [] for name in fs}
    clock = time.perf_counter
    for _ in range(samples):
        for name, f in fs.items():
            evict()
            t0 = clock()
            f()
            times[name].append(clock() - t0)
    return {name: float(np.median(ts)) * 1e6 for name, ts in times.items()}


def native(k, operands):
    """The ctypes function and argument list the kernel's fast path replays for
    ``operands`` (with a fresh output the call would allocate), ready to call."""
    k(**operands)
    fast = k._fast.latest if k._fast is not None else None
    if fast is None or fast.bind(operands) is None:
        raise SystemExit("the kernel has no fast path for these operands")
    args = fast.bind(operands)
    out = np.zeros(fast.out_shape, fast.out_dtype)
    for slot in fast.out_slots:
        args[slot] = out.ctypes.data
    fn = fast.fn
    return lambda: fn(*args)


def native_program(k, operands):
    """The fused function and argument list a program's repeated call replays
    (``runtime/program_repeat.py``), with fresh arrays for what it writes."""
    k(**operands)
    repeat = k.segments[0][1].repeat if k.launches == 1 else None
    args = repeat.inputs.bind(operands) if repeat is not None else None
    if args is None:
        raise SystemExit("the program has no repeated call for these operands")
    keep = []
    for _name, shape, order, dtype, slots, _scalar in repeat.fresh:
        keep.append(zeros_in_order(shape, order, dtype))  # as the repeat makes them
        for slot in slots:
            args[slot] = keep[-1].ctypes.data
    fn = repeat.inputs.fn
    return lambda: (fn(*args), keep)


def chunked_program(rng, calls: int, repeat: int, clock) -> None:
    """A program run by chunks of rows on two threads (``T = A B`` csr, ``y = T c``;
    every call split): its repeated call (``runtime/program_repeat_chunks.py``)
    against the general path, the same call with the repeat dropped before it."""
    from spcomp.runtime import threads
    n = 64
    A, B = (Tensor.from_scipy(sp.random(n, n, density=0.1, format="csr", random_state=rng), "csr") for _ in "AB")
    k = spcomp.compile("T[i,k] = A[i,j]*B[j,k]; y[i] = T[i,k]*c[k]", formats={"A": "csr", "B": "csr", "T": "csr"})
    ops = {"A": A, "B": B, "c": rng.random(n)}
    run = k.segments[0][1]

    def general():
        run.repeat = None
        k(**ops)
    before = spcomp.get_num_threads(), threads.MIN_PARALLEL_WORK
    spcomp.set_num_threads(2)
    threads.MIN_PARALLEL_WORK = 0
    try:
        k(**ops)
        if "chunk of rows" not in k.loops or run.repeat is None:
            raise SystemExit("the program has no repeated call by chunks")
        ours = min(bench(lambda: k(**ops), calls, repeat, clock), bench(lambda: k(**ops), calls, repeat, clock))
        base = min(bench(general, calls, repeat, clock), bench(general, calls, repeat, clock))
    finally:
        spcomp.set_num_threads(before[0])
        threads.MIN_PARALLEL_WORK = before[1]
    print(f"\nprogram by chunks of rows, 2 threads: repeated call {ours:.2f} us, general path {base:.2f} us "
          f"({base / ours:.1f}x)")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--calls", type=int, default=20000)
    p.add_argument("--repeat", type=int, default=7)
    p.add_argument("--clock", choices=sorted(CLOCKS), default="wall",
                   help="cpu: this thread's CPU time, steadier on a shared, loaded machine")
    p.add_argument("--cold", type=int, default=0, metavar="N",
                   help="also time N single calls each with cold caches (0: skip)")
    p.add_argument("--evict-mb", type=int, default=64, help="the buffer written between cold calls (MB)")
    a = p.parse_args()
    clock = CLOCKS[a.clock]
    spcomp.set_num_threads(1)
    rng = np.random.default_rng(0)
    A = sp.random(64, 64, density=0.1, format="csr", random_state=rng)
    At = Tensor.from_scipy(A, "csr")
    x = rng.random(64)
    y = np.zeros(64)
    k = spcomp.compile("y[i] = A[i,j] * x[j]", formats={"A": "csr"})
    cases = [("Tensor operand", {"A": At, "x": x}),
             ("SciPy csr operand", {"A": A, "x": x}),
             ("output given (y=)", {"A": At, "x": x, "y": y})]
    print(f"{'call':<22} {'spcomp us':>10} {'ctypes us':>10} {'over us':>8} {'ratio':>6}")
    for name, ops in cases:
        k._fast = None
        raw = native(k, ops)
        ours = bench(lambda: k(**ops), a.calls, a.repeat, clock)
        base = bench(raw, a.calls, a.repeat, clock)
        ours = min(ours, bench(lambda: k(**ops), a.calls, a.repeat, clock))  # interleaved: both see the same noise
        base = min(base, bench(raw, a.calls, a.repeat, clock))
        print(f"{name:<22} {ours:>10.2f} {base:>10.2f} {ours - base:>8.2f} {ours / base:>6.2f}")
    # a program of two statements fused into one function: its repeated call
    b = rng.random(64)
    kp = spcomp.compile("t[i] = A[i,j] * x[j]; y[i] = t[i] + b[i]", formats={"A": "csr"})
    ops = {"A": At, "x": x, "b": b}
    raw = native_program(kp, ops)
    ours = min(bench(lambda: kp(**ops), a.calls, a.repeat, clock), bench(lambda: kp(**ops), a.calls, a.repeat, clock))
    base = min(bench(raw, a.calls, a.repeat, clock), bench(raw, a.calls, a.repeat, clock))
    name = "program, 2 statements"
    print(f"{name:<22} {ours:>10.2f} {base:>10.2f} {ours - base:>8.2f} {ours / base:>6.2f}")
    chunked_program(rng, max(a.calls // 20, 100), a.repeat, clock)
    if a.cold:
        evict = Evictor(a.evict_mb)
        print(f"\ncold caches ({a.evict_mb} MB written before each call; median of {a.cold} calls)")
        print(f"{'call':<22} {'spcomp us':>10} {'ctypes us':>10} {'over us':>8} {'ratio':>6}")
        for name, ops in cases:
            k._fast = None
            raw = native(k, ops)
            got = cold({"ours": lambda: k(**ops), "base": raw}, evict, a.cold)
            ours, base = got["ours"], got["base"]
            print(f"{name:<22} {ours:>10.2f} {base:>10.2f} {ours - base:>8.2f} {ours / base:>6.2f}")


if __name__ == "__main__":
    main()
