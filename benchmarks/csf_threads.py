"""CSF kernels on threads under the default schedule: TTV and MTTKRP over a uniform
200³ tensor (1 %), and TTV over a skewed one, at 1 and 2 threads.

For each it prints the call's work estimate (runtime/launch.py ``work``), whether the
runtime splits it on two threads against the threshold in force (measured on the host
once per process, or ``SPCOMP_MIN_PARALLEL_WORK``), and the min and median of 400
calls. The skewed tensor has 20 top positions of 40 fibers of 200 nonzeros and 180
positions with 1800 fibers of one between them: cut by fiber count one thread gets
nearly all the nonzeros.

Run: ``python -m benchmarks.csf_threads [--min-work N]`` (``--min-work 250000``: the
threshold used where it cannot be measured; a loaded host measures 4,000,000).
"""
from __future__ import annotations

import argparse
import os
import time

import numpy as np


def uniform(n, density, rng):
    nnz = int(density * n ** 3)
    lin = np.sort(rng.choice(n ** 3, size=nnz, replace=False))
    return np.stack(np.unravel_index(lin, (n, n, n)))


def skewed(n, rng):
    hi, hj, hk = np.meshgrid(np.arange(20), np.arange(40), np.arange(n), indexing="ij")
    lin = np.sort(rng.choice(180 * n, size=1800, replace=False))
    li, lj = np.divmod(lin, n)
    light = np.stack([li + 20, lj, rng.integers(0, n, 1800)])
    return np.concatenate([np.stack([hi.ravel(), hj.ravel(), hk.ravel()]), light], axis=1)


def timed(f, reps=400):
    ts = []
    for _ in range(reps):
        t = time.perf_counter_ns()
        f()
        ts.append(time.perf_counter_ns() - t)
    ts.sort()
    return ts[0] / 1e6, ts[len(ts) // 2] / 1e6


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--min-work", type=int, help="SPCOMP_MIN_PARALLEL_WORK for this run")
    args = ap.parse_args(argv)
    if args.min_work is not None:
        os.environ["SPCOMP_MIN_PARALLEL_WORK"] = str(args.min_work)
    import spcomp
    from spcomp.runtime.launch import Launcher
    from spcomp.runtime.threads import min_parallel_work
    seen = []
    decide = Launcher.worth_splitting
    Launcher.worth_splitting = staticmethod(lambda low, sizes, threads, units:
                                            seen.append((threads, units)) or decide(low, sizes, threads, units))
    rng = np.random.default_rng(0)
    n = 200

    def csf(coords):
        return spcomp.Tensor.from_coo(coords, rng.random(coords.shape[1]), (n, n, n), "csf")
    B, S = csf(uniform(n, 0.01, rng)), csf(skewed(n, rng))
    c, C, D = rng.random(n), rng.random((n, 16)), rng.random((n, 16))
    ttv = spcomp.compile("A[i,j] = B[i,j,k] * c[k]", formats={"B": "csf"})
    mttkrp = spcomp.compile("A[i,j] = B[i,k,l] * C[k,j] * D[l,j]", formats={"B": "csf"})
    cases = [("TTV 200³ 1%", ttv, {"B": B, "c": c}, np.einsum("ijk,k->ij", B.to_numpy(), c)),
             ("MTTKRP 200³ 1% R=16", mttkrp, {"B": B, "C": C, "D": D},
              np.einsum("ikl,kj,lj->ij", B.to_numpy(), C, D)),
             ("TTV skewed", ttv, {"B": S, "c": c}, np.einsum("ijk,k->ij", S.to_numpy(), c))]
    print(f"{'kernel':22} thr {'units':>8} {'threshold':>10} split {'min ms':>8} {'median ms':>9}")
    for name, k, ops, ref in cases:
        for threads in (1, 2):
            spcomp.set_num_threads(threads)
            seen.clear()
            np.testing.assert_allclose(k(**ops), ref, rtol=1e-10, atol=1e-12)
            units = seen[-1][1] if seen else 0
            threshold = min_parallel_work(units, threads) if threads > 1 else "-"
            splits = threads > 1 and units >= threshold
            best, median = timed(lambda: k(**ops))
            print(f"{name:22} {threads:3} {units:8} {threshold!s:>10} {'yes' if splits else 'no':5} "
                  f"{best:8.3f} {median:9.3f}")


if __name__ == "__main__":
    main()
