"""What a call costs on top of the kernel: torch operands, the custom operator, torch.compile.

    python benchmarks/torch_overhead.py             # one thread, best of 7 x 20 000 calls

A tiny SpMV (64 x 64, 10 % dense, float32), so that the kernel's own work is a few
hundred nanoseconds and every row is overhead: the kernel with NumPy/Tensor operands
(its repeated-call fast path), with torch operands, the operator's implementation,
the operator through torch's dispatcher (``torch.ops.spcomp.k_*``), the KernelOp
wrapper, and a ``torch.compile(fullgraph=True)`` function calling it, next to
``torch.mv`` on the same CSR tensor and a compiled function calling ``torch.mv``
(what torch.compile's own call path costs). docs/torch.md, "Overhead", quotes it.
"""
from __future__ import annotations

import time
import warnings

import numpy as np
import scipy.sparse as sp
import torch

import spcomp
import spcomp.torch as st
from spcomp import Tensor


def bench(f, n: int = 20000, repeat: int = 7) -> float:
    """Best of ``repeat`` means over ``n`` calls, in microseconds."""
    f()
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        for _ in range(n):
            f()
        best = min(best, (time.perf_counter() - t0) / n)
    return best * 1e6


def main() -> None:
    warnings.filterwarnings("ignore")
    spcomp.set_num_threads(1)
    torch.set_num_threads(1)
    k = spcomp.compile("y[i] = W[i,j] * x[j]", formats={"W": "csr"}, dtype="float32")
    m = sp.random(64, 64, density=0.1, format="csr", dtype=np.float32, random_state=0)
    Wn, xn = Tensor.from_scipy(m, "csr"), np.ones(64, np.float32)
    Wt = torch.sparse_csr_tensor(torch.from_numpy(m.indptr), torch.from_numpy(m.indices), torch.from_numpy(m.data),
                                 m.shape)
    xt = torch.ones(64)
    spmv = st.op(k)
    levels = spmv.levels("W", Wt)
    arrays, shapes = list(levels.arrays) + [xt], list(levels.shape)
    compiled = torch.compile(lambda x: spmv(W=levels, x=x), fullgraph=True)
    dense = Wt.to_dense()
    compiled_dense = torch.compile(lambda x: torch.mv(dense, x), fullgraph=True)
    rows = [
        ("kernel, NumPy/Tensor operands (fast path)", lambda: k(W=Wn, x=xn), 20000),
        ("kernel, torch operands", lambda: k(W=Wt, x=xt), 20000),
        ("operator implementation (KernelOp.run)", lambda: spmv.run(arrays, shapes), 20000),
        ("torch.ops.spcomp.k_*(arrays, shapes)", lambda: spmv.packet(arrays, shapes), 20000),
        ("KernelOp(W=Levels, x=x)", lambda: spmv(W=levels, x=xt), 20000),
        ("torch.compile(fullgraph) calling the operator", lambda: compiled(xt), 5000),
        ("torch.mv(W_csr, x)", lambda: torch.mv(Wt, xt), 20000),
        ("torch.compile(fullgraph) calling torch.mv(dense)", lambda: compiled_dense(xt), 5000),
    ]
    print(f"tiny SpMV 64x64, {m.nnz} nonzeros, float32, one thread; best of 7 means, microseconds per call")
    for name, f, n in rows:
        print(f"{name:50s} {bench(f, n):8.2f}")


if __name__ == "__main__":
    main()
