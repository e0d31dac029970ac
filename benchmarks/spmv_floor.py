"""How fast can any SpMV be on this core?  The floor under issue 4's SpMV target.

SpMV on the benchmark's matrix (20000² at 0.1 %, float64, int32 indices) does
400k multiply-adds whose right operands ``x[crd[p]]`` are random reads of a
160 KB vector: five times the L1 data cache, so most of them miss L1. This
script times, in one process, in interleaved blocks on one thread:

- ``gather floor``: a loop with no rows at all, ``s += v[p] * x[crd[p]]`` over
  every stored entry with four accumulators; the least work any SpMV on this
  matrix must do (it skips ``pos``, the row loop and the stores of ``y``);
- ``gather, x in L1``: the same loop with every column folded into the first
  4096 (a 32 KB ``x``): what the floor would be if ``x`` fitted in L1;
- ``read A``: the same loop without ``x`` (sums ``v`` and ``crd``): what
  streaming A alone costs;
- spcomp's SpMV kernel on one thread and on two, and scipy's ``A @ x``.

On two threads each core reads its own half through its own L1 and L2, so the
best two-thread SpMV is about half the gather floor. The floor loops are written
in LLVM IR here and compiled with llvmlite for this CPU, the same toolchain
spcomp uses, so no C compiler is needed. They skip the last ``nnz % 4`` entries:
they are timings, not results.

Run: ``python -m benchmarks.spmv_floor [--blocks 5]``.
"""
from __future__ import annotations

import argparse
import ctypes
import time

import numpy as np

_LOOP = """
define void @{name}(i64 %n, ptr noalias %crd, ptr noalias %v, ptr noalias %x, ptr noalias %out) {{
entry:
  %n4 = and i64 %n, -4
  %any = icmp sgt i64 %n4, 0
  br i1 %any, label %loop, label %done
loop:
  %p = phi i64 [0, %entry], [%p.next, %loop]
{phis}
{body}
  %p.next = add i64 %p, 4
  %more = icmp slt i64 %p.next, %n4
  br i1 %more, label %loop, label %done
done:
{results}
  %s01 = fadd double %r0, %r1
  %s23 = fadd double %r2, %r3
  %s = fadd double %s01, %s23
  store double %s, ptr %out
  ret void
}}
"""


def _loop_ir(name: str, use_x: bool) -> str:
    """One 4-way unrolled pass over the stored entries; ``use_x``: multiply by x[crd[p]]."""
    phis, body, results = [], [], []
    for k in range(4):
        phis.append(f"  %s{k} = phi double [0.0, %entry], [%s{k}.next, %loop]")
        body += [f"  %p{k} = add i64 %p, {k}",
                 f"  %c{k}.at = getelementptr inbounds i32, ptr %crd, i64 %p{k}",
                 f"  %c{k}.32 = load i32, ptr %c{k}.at",
                 f"  %c{k} = sext i32 %c{k}.32 to i64",
                 f"  %v{k}.at = getelementptr inbounds double, ptr %v, i64 %p{k}",
                 f"  %v{k} = load double, ptr %v{k}.at"]
        if use_x:
            body += [f"  %x{k}.at = getelementptr inbounds double, ptr %x, i64 %c{k}",
                     f"  %x{k} = load double, ptr %x{k}.at",
                     f"  %m{k} = fmul double %v{k}, %x{k}"]
            body.append(f"  %s{k}.next = fadd double %s{k}, %m{k}")
        else:  # read crd without touching x: OR it into the value's bits
            body += [f"  %vb{k} = bitcast double %v{k} to i64",
                     f"  %m{k}.bits = or i64 %vb{k}, %c{k}",
                     f"  %m{k} = bitcast i64 %m{k}.bits to double",
                     f"  %s{k}.next = fadd double %s{k}, %m{k}"]
        results.append(f"  %r{k} = phi double [0.0, %entry], [%s{k}.next, %loop]")
    return _LOOP.format(name=name, phis="\n".join(phis), body="\n".join(body),
                        results="\n".join(results))


class FloorLoops:
    """The floor loops, compiled once for this CPU with llvmlite."""

    def __init__(self):
        import llvmlite.binding as llvm

        llvm.initialize_native_target()
        llvm.initialize_native_asmprinter()
        source = _loop_ir("gather", True) + _loop_ir("read_a", False)
        module = llvm.parse_assembly(source)
        module.verify()
        target = llvm.Target.from_default_triple()
        machine = target.create_target_machine(cpu=llvm.get_host_cpu_name(),
                                               features=llvm.get_host_cpu_features().flatten(),
                                               opt=3, jit=True)
        self._engine = llvm.create_mcjit_compiler(module, machine)
        self._engine.finalize_object()
        proto = ctypes.CFUNCTYPE(None, ctypes.c_int64, ctypes.c_void_p, ctypes.c_void_p,
                                 ctypes.c_void_p, ctypes.c_void_p)
        self.gather = proto(self._engine.get_function_address("gather"))
        self.read_a = proto(self._engine.get_function_address("read_a"))


def _timer(fn, calls: int):
    def run():
        start = time.perf_counter()
        for _ in range(calls):
            fn()
        return (time.perf_counter() - start) / calls * 1e3
    return run


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--blocks", type=int, default=5, help="interleaved blocks (default 5)")
    parser.add_argument("--calls", type=int, default=30, help="calls per sample (default 30)")
    parser.add_argument("--samples", type=int, default=40, help="samples per block (default 40)")
    args = parser.parse_args(argv)

    import scipy.sparse as sp

    import spcomp

    n = 20000
    a = sp.random(n, n, density=0.001, format="csr", random_state=0, dtype=np.float64)
    a.sort_indices()
    x = np.random.default_rng(1).random(n)
    crd = a.indices.astype(np.int32)
    crd_l1 = (crd % 4096).astype(np.int32)
    out = np.zeros(1)
    loops = FloorLoops()
    addr = lambda arr: arr.ctypes.data  # noqa: E731

    def floor(fn, c):
        args_ = (a.nnz, addr(c), addr(a.data), addr(x), addr(out))
        return lambda: fn(*args_)

    spcomp.set_num_threads(1)
    kernel = spcomp.compile("y[i] = A[i,j] * x[j]", formats={"A": "csr"})
    tensor = spcomp.Tensor.from_scipy(a)
    np.testing.assert_allclose(kernel(A=tensor, x=x), a @ x, rtol=1e-12)
    impls = {  # name: (threads, call)
        "gather floor": (1, floor(loops.gather, crd)),
        "gather, x in L1": (1, floor(loops.gather, crd_l1)),
        "read A": (1, floor(loops.read_a, crd)),
        "spcomp SpMV": (1, lambda: kernel(A=tensor, x=x)),
        "spcomp, 2 threads": (2, lambda: kernel(A=tensor, x=x)),
        "scipy A @ x": (1, lambda: a @ x),
    }
    medians = {name: [] for name in impls}
    for _ in range(args.blocks):
        for name, (threads, fn) in impls.items():
            spcomp.set_num_threads(threads)
            fn()  # warm caches, pages and spcomp's validation
            timer = _timer(fn, args.calls)
            medians[name].append(float(np.median([timer() for _ in range(args.samples)])))

    scipy_ms = np.median(medians["scipy A @ x"])
    print(f"SpMV floor, {n}x{n} at 0.1 % (nnz={a.nnz}), "
          f"medians per block of {args.samples}x{args.calls} calls, ms, one thread unless named:")
    for name, values in medians.items():
        mid = float(np.median(values))
        cells = " ".join(f"{v:.3f}" for v in values)
        print(f"  {name:<18} {cells}   median {mid:.3f} = scipy/{scipy_ms / mid:.2f}")
    best_two = float(np.median(medians["gather floor"])) / 2
    print(f"best two-thread SpMV (half the gather floor, no launch cost): {best_two:.3f} ms = "
          f"{scipy_ms / best_two:.2f}x scipy")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
