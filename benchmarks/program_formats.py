"""Programs returning tensors stored compressed first (dcsr, coo, csf) at 1 and 2 threads.

A fused run returning such a tensor runs on threads by chunks of rows, the tensor
computed rows first (csr, ``dcc``) and converted after the join. For each program
this prints the best of ``--reps`` interleaved calls: 1 thread (the one-thread fused
function), 2 threads as before (the chunked function taken away: the statements
run as kernels of their own, Python between them) and 2 threads by chunks.

Run: ``python -m benchmarks.program_formats [--n 20000] [--density 0.001] [--min-work N]``
(``--min-work 0`` splits whatever the measured threshold says).
"""
from __future__ import annotations

import argparse
import os
import time

import numpy as np

PROGRAMS = [
    ("add, dcsr", "T[i,j] = A[i,j]*2; C[i,j] = T[i,j] + B[i,j]", {"T": "csr", "C": "dcsr"}, None),
    ("add, coo", "T[i,j] = A[i,j]*2; C[i,j] = T[i,j] + B[i,j]", {"T": "csr", "C": "coo"}, None),
    ("SpGEMM dcsr + SpMV", "T[i,k] = A[i,j]*B[j,k]; y[i] = T[i,k]*c[k]", {"T": "dcsr"}, ["T", "y"]),
    ("SpGEMM coo + SpMV", "T[i,k] = A[i,j]*B[j,k]; y[i] = T[i,k]*c[k]", {"T": "coo"}, ["T", "y"]),
    ("3-d scale, csf", "T[i,j,k] = X[i,j,k]*2; C[i,j,k] = T[i,j,k] + Y[i,j,k]", {"T": "csf", "C": "csf"}, None),
]


def best(f, reps):
    out = float("inf")
    for _ in range(reps):
        t = time.perf_counter()
        f()
        out = min(out, time.perf_counter() - t)
    return out * 1e3


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=20000)
    ap.add_argument("--density", type=float, default=0.001)
    ap.add_argument("--reps", type=int, default=10)
    ap.add_argument("--min-work", type=int, help="SPCOMP_MIN_PARALLEL_WORK for this run")
    args = ap.parse_args(argv)
    if args.min_work is not None:
        os.environ["SPCOMP_MIN_PARALLEL_WORK"] = str(args.min_work)
    import scipy.sparse as sp

    import spcomp
    n, d = args.n, args.density
    rng = np.random.default_rng(0)
    cube = max(n // 100, 2)

    def order3(seed):
        a = sp.random(cube, 100 * 100, density=d * 20, format="csr", random_state=seed).toarray()
        return spcomp.Tensor.from_numpy(a.reshape(cube, 100, 100), "dcc")
    ops = {"A": sp.random(n, n, density=d, format="csr", random_state=1),
           "B": sp.random(n, n, density=d, format="csr", random_state=2),
           "c": rng.standard_normal(n), "X": order3(3), "Y": order3(4)}
    print(f"{'program':22s} {'1 thread':>9s} {'2, kernels':>11s} {'2, chunks':>10s}  (ms, best of {args.reps})")
    for name, text, fmts, outputs in PROGRAMS:
        formats = {"A": "csr", "B": "csr", "X": "dcc", "Y": "dcc", **fmts}
        k = spcomp.compile(text, formats={t: f for t, f in formats.items() if f"{t}[" in text}, outputs=outputs)
        seg = k.segments[0][1]
        chunks = seg.chunks
        call = (lambda k=k: k(**{x: ops[x] for x in k.inputs}))
        times = {"1": float("inf"), "kernels": float("inf"), "chunks": float("inf")}
        for _ in range(args.reps):  # interleaved, so that a loaded host's noise falls on all three
            spcomp.set_num_threads(1)
            times["1"] = min(times["1"], best(call, 1))
            spcomp.set_num_threads(2)
            seg.chunks = lambda bits: None
            times["kernels"] = min(times["kernels"], best(call, 1))
            seg.chunks = chunks
            times["chunks"] = min(times["chunks"], best(call, 1))
        print(f"{name:22s} {times['1']:9.2f} {times['kernels']:11.2f} {times['chunks']:10.2f}"
              f"  (chunked: {'yes' if chunks(32) is not None else 'no'})")


if __name__ == "__main__":
    main()
