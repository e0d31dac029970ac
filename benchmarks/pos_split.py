"""Position-split SpMV against the default row-parallel one on a power-law matrix.

The default parallel SpMV splits rows over threads, balanced by the rows' nonzeros
(the runtime's prefix sums of ``pos``), so it is only as balanced as its heaviest
row allows: on a matrix whose longest rows hold a large share of the nonzeros one
thread gets them. ``Schedule().pos("j", "q", "A").split("q", "c", "p", F)
.parallelize("c")`` cuts the nonzeros into chunks of ``F`` whatever the rows, each
chunk finding its rows by binary search (the rows two chunks share are added
atomically). Both kernels are timed in one process in interleaved blocks on the
same thread count; results are checked against SciPy.

``--sddmm K`` times ``C[i,j] = A[i,j] * D[i,k] * E[k,j]`` into a csr ``C`` instead
(a sparse output whose entries follow A's positions: counted and filled per range
of chunks, lower/possparse.py; checked bitwise against the default's).

Run: ``python -m benchmarks.pos_split [--rows 200000] [--threads 2] [--blocks 7] [--hub]
[--min-work 0] [--sddmm 16]`` (``--min-work 0``: split every call, whatever the host's measured
one-thread threshold, which a loaded host sets high).
"""
from __future__ import annotations

import argparse
import time

import numpy as np
import scipy.sparse as sp

import spcomp
from spcomp import Schedule


def power_law(rows: int, cols: int, alpha: float, mean: float, seed: int = 0, hub: bool = False) -> sp.csr_matrix:
    """Row lengths drawn from a Pareto law (a few rows very long), columns uniform;
    ``hub``: the middle row full (a hub vertex of a graph)."""
    rng = np.random.default_rng(seed)
    lengths = rng.pareto(alpha, rows) + 1.0
    lengths = np.minimum(np.round(lengths * mean / lengths.mean()), cols).astype(np.int64)
    if hub:
        lengths[rows // 2] = cols
    rows_idx = [np.sort(rng.choice(cols, k, replace=False)) if k > 64 else np.unique(rng.integers(0, cols, k))
                for k in lengths]  # unique(): a short row may lose a repeated column
    indptr = np.concatenate([[0], np.cumsum([len(r) for r in rows_idx])])
    indices = np.concatenate(rows_idx).astype(np.int32)
    data = rng.standard_normal(len(indices))
    return sp.csr_matrix((data, indices, indptr), shape=(rows, cols))


def _best(fn, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=200_000)
    ap.add_argument("--cols", type=int, default=200_000)
    ap.add_argument("--alpha", type=float, default=1.2, help="Pareto exponent of the row lengths")
    ap.add_argument("--mean", type=float, default=10.0, help="mean nonzeros per row")
    ap.add_argument("--hub", action="store_true", help="one full row in the middle")
    ap.add_argument("--chunk", type=int, default=2048, help="positions per chunk")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--blocks", type=int, default=7)
    ap.add_argument("--min-work", type=int, default=None,
                    help="calls below this many work units stay on one thread (default: the host's measured "
                         "threshold, which a loaded host sets high; 0 splits every call)")
    ap.add_argument("--repeat", type=int, default=20)
    ap.add_argument("--sddmm", type=int, default=0, metavar="K",
                    help="time SDDMM into a csr output with K-wide dense factors instead of SpMV")
    a = ap.parse_args(argv)
    A = power_law(a.rows, a.cols, a.alpha, a.mean, hub=a.hub)
    x = np.random.default_rng(1).standard_normal(a.cols)
    lengths = np.diff(A.indptr)
    print(f"matrix {a.rows}x{a.cols}, nnz {A.nnz}, longest row {lengths.max()} "
          f"({100 * lengths.max() / A.nnz:.1f} % of nnz), top 1 % of rows hold "
          f"{100 * np.sort(lengths)[-max(1, a.rows // 100):].sum() / A.nnz:.1f} %")
    T = spcomp.Tensor.from_scipy(A, "csr")
    if a.sddmm:
        rng = np.random.default_rng(2)
        expr, formats = "C[i,j] = A[i,j] * D[i,k] * E[k,j]", {"A": "csr", "C": "csr"}
        operands = {"A": T, "D": rng.standard_normal((a.rows, a.sddmm)), "E": rng.standard_normal((a.sddmm, a.cols))}
    else:
        expr, formats, operands = "y[i] = A[i,j] * x[j]", {"A": "csr"}, {"A": T, "x": x}
    kernels = {
        "rows (default)": spcomp.compile(expr, formats=formats),
        f"pos split {a.chunk}": spcomp.compile(expr, formats=formats, schedule=Schedule()
                                               .pos("j", "q", "A").split("q", "c", "p", a.chunk).parallelize("c")),
    }
    spcomp.set_num_threads(a.threads)
    if a.min_work is not None:
        from spcomp.runtime import threads as _threads
        _threads.MIN_PARALLEL_WORK = a.min_work
    results = [k(**operands) for k in kernels.values()]
    if a.sddmm:
        rows = np.repeat(np.arange(a.rows), np.diff(A.indptr))  # each stored entry's row (never D @ E whole)
        want = A.data * np.einsum("pk,kp->p", operands["D"][rows], operands["E"][:, A.indices])
        np.testing.assert_allclose(np.asarray(results[0].vals), want, rtol=1e-9, atol=1e-9)
        assert all(np.array_equal(results[0].vals, r.vals) and np.array_equal(results[0].levels[1]["crd"],
                                                                                r.levels[1]["crd"]) for r in results)
    else:
        for r in results:
            np.testing.assert_allclose(r, A @ x, rtol=1e-9, atol=1e-9)
    best = {name: float("inf") for name in kernels}
    for _ in range(a.blocks):  # interleaved: the host's load hits both alike
        for name, k in kernels.items():
            best[name] = min(best[name], _best(lambda k=k: k(**operands), a.repeat))
    base = best["rows (default)"]
    print(f"{'schedule':<20} {'threads':>7} {'best ms':>9} {'vs rows':>8}")
    for name, t in best.items():
        print(f"{name:<20} {a.threads:>7} {t * 1e3:>9.3f} {base / t:>7.2f}x")


if __name__ == "__main__":
    main()
