"""BSR SpMM: spcomp's ``bsr(R,C)`` kernel against scipy's BSR ``@`` dense and spcomp's CSR.

``Y[i,k] = A[i,j] * X[j,k]`` (and SpMV, ``X`` one column) on a block-sparse matrix
(whole R x C blocks stored, a given fraction of the blocks present), float64, for
4x4 and 16x16 blocks. Each row times, interleaved on the same inputs:

- ``spcomp bsr``: the kernel compiled with ``formats={"A": "bsr(R,C)"}``, called
  with the very scipy ``bsr_array`` (zero-copy: its indptr/indices/data are the
  level arrays);
- ``scipy bsr``: ``A_bsr @ X`` (scipy's C++ ``bsr_matvecs``, one thread);
- ``spcomp csr``: the same matrix as CSR (every stored block entry, zeros inside
  blocks included, so both kernels do the same multiply-adds) with
  ``formats={"A": "csr"}``.

A second table times 2:4 structured sparsity: a weight ``W`` (n x n, two nonzeros
in every four consecutive entries of a row) in ``nm(2,4)`` times dense activations
``X`` (n x k), against NumPy's dense ``W @ X`` (BLAS, same thread count through
threadpoolctl) and spcomp's CSR kernel on the same weight.

Ratios are peer time / spcomp time (above 1: spcomp's blocked kernel is faster).
One thread by default (scipy's kernels have one); ``--threads 2`` lets spcomp and
BLAS use two and says so. Results are checked against each other before timing.

Run: ``python -m benchmarks.bsr [--n 4096] [--k 64] [--density 0.02] [--threads 1]``.
"""
from __future__ import annotations

import argparse

import numpy as np
import scipy.sparse as sp

import spcomp

from .common import (Column, LoadMonitor, Threads, TimingPolicy, fmt_ratio, fmt_time, measure_interleaved,
                     render_text)


def block_sparse(n: int, R: int, C: int, density: float, seed: int = 0) -> sp.bsr_array:
    """An n x n bsr_array with ``density`` of its R x C blocks stored (sorted, canonical)."""
    rng = np.random.default_rng(seed)
    nb_r, nb_c = n // R, n // C
    mask = sp.random(nb_r, nb_c, density=density, format="csr", random_state=seed, dtype=np.float64)
    mask.sort_indices()
    data = rng.standard_normal((mask.nnz, R, C))
    m = sp.bsr_array((data, mask.indices.astype(np.int32), mask.indptr.astype(np.int32)), shape=(n, n))
    m.sort_indices()
    return m


def run(n: int, K: int, density: float, blocks: list, threads: int, policy: TimingPolicy) -> list:
    spcomp.set_num_threads(threads)
    rng = np.random.default_rng(1)
    X = rng.standard_normal((n, K))
    rows = []
    for R in blocks:
        A = block_sparse(n, R, R, density)
        csr = A.tocsr()  # explicit zeros inside blocks kept: the same multiply-adds
        csr.sort_indices()
        for op, text, B in (("SpMM", "Y[i,k] = A[i,j] * X[j,k]", X), ("SpMV", "Y[i] = A[i,j] * X[j]", X[:, 0].copy())):
            rows.append(_row(op, text, A, csr, B, R, policy))
    return rows


def _row(op, text, A, csr, X, R, policy) -> dict:
    """One statement timed three ways (spcomp bsr, scipy bsr, spcomp csr), checked first."""
    k_bsr = spcomp.compile(text, formats={"A": f"bsr({R},{R})"})
    k_csr = spcomp.compile(text, formats={"A": "csr"})
    ref = A @ X
    for name, got in (("spcomp bsr", k_bsr(A=A, X=X)), ("spcomp csr", k_csr(A=csr, X=X))):
        if not np.allclose(got, ref, rtol=1e-9, atol=1e-9):
            raise SystemExit(f"{name} disagrees with scipy for {R}x{R} blocks ({op})")
    load = LoadMonitor()
    t = measure_interleaved({
        "spcomp bsr": lambda: k_bsr(A=A, X=X),
        "scipy bsr": lambda: A @ X,
        "spcomp csr": lambda: k_csr(A=csr, X=X),
    }, policy)
    share = load.share()
    ours = t["spcomp bsr"].median_s
    return {"op": op, "blocks": f"{R}x{R}", "nnz": f"{A.nnz:,}",
            "spcomp bsr": fmt_time(ours), "scipy bsr": fmt_time(t["scipy bsr"].median_s),
            "scipy/spcomp": fmt_ratio(t["scipy bsr"].median_s, ours),
            "spcomp csr": fmt_time(t["spcomp csr"].median_s),
            "csr/bsr": fmt_ratio(t["spcomp csr"].median_s, ours),
            "other load": "?" if share is None else f"{share:.0%}"}


def two_four(n: int, seed: int = 0) -> np.ndarray:
    """An n x n weight pruned to 2:4 along its rows (the two largest of every four kept)."""
    w = np.random.default_rng(seed).standard_normal((n, n // 4, 4))
    drop = np.argsort(np.abs(w), axis=2)[:, :, :2]
    np.put_along_axis(w, drop, 0.0, axis=2)
    return w.reshape(n, n)


def run_nm(n: int, K: int, threads: int, policy: TimingPolicy) -> list:
    W = two_four(n)
    X = np.random.default_rng(2).standard_normal((n, K))
    Wt = spcomp.Tensor.from_numpy(W, "nm(2,4)")
    csr = sp.csr_array(W)
    k_nm = spcomp.compile("Y[i,k] = W[i,j] * X[j,k]", formats={"W": "nm(2,4)"})
    k_csr = spcomp.compile("Y[i,k] = W[i,j] * X[j,k]", formats={"W": "csr"})
    ref = W @ X
    for name, got in (("nm", k_nm(W=Wt, X=X)), ("csr", k_csr(W=csr, X=X))):
        if not np.allclose(got, ref, rtol=1e-9, atol=1e-9):
            raise SystemExit(f"spcomp {name} disagrees with BLAS on the 2:4 weight")
    load = LoadMonitor()
    t = measure_interleaved({"spcomp nm": lambda: k_nm(W=Wt, X=X), "blas": lambda: W @ X,
                             "spcomp csr": lambda: k_csr(W=csr, X=X)}, policy)
    share = load.share()
    ours = t["spcomp nm"].median_s
    return [{"weight": f"{n}x{n} 2:4", "k": K, "spcomp nm(2,4)": fmt_time(ours),
             "dense BLAS": fmt_time(t["blas"].median_s), "blas/nm": fmt_ratio(t["blas"].median_s, ours),
             "spcomp csr": fmt_time(t["spcomp csr"].median_s), "csr/nm": fmt_ratio(t["spcomp csr"].median_s, ours),
             "other load": "?" if share is None else f"{share:.0%}"}]


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=4096)
    p.add_argument("--k", type=int, default=64, help="columns of the dense operand")
    p.add_argument("--density", type=float, default=0.02, help="fraction of blocks stored")
    p.add_argument("--blocks", default="4,16")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--rounds", type=int, default=3)
    a = p.parse_args(argv)
    policy = TimingPolicy(min_repeats=9, target_s=1.5, rounds=a.rounds)
    threads = Threads(spcomp)
    threads.set(a.threads)
    rows = run(a.n, a.k, a.density, [int(b) for b in a.blocks.split(",")], a.threads, policy)
    print(f"Y = A @ X: A {a.n}x{a.n} float64 with {a.density:.0%} of its blocks stored, X {a.n}x{a.k} (SpMM) "
          f"or {a.n} (SpMV); "
          f"spcomp on {a.threads} thread(s), scipy on one; medians of interleaved rounds")
    print(render_text([Column(c, c) for c in rows[0]], rows))
    rows = run_nm(a.n, a.k, a.threads, policy)
    print(f"\nY = W @ X: W 2:4 structured ({a.n}x{a.n}, float64), X {a.n}x{a.k}; spcomp and BLAS on "
          f"{a.threads} thread(s) ({threads.blas_info()})")
    print(render_text([Column(c, c) for c in rows[0]], rows))


if __name__ == "__main__":
    main()
