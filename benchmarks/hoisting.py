"""Hoisting (precompute) in the fused FFN: time grows as nnz(H)·(K + D), not nnz(H)·K·D.

    python -m benchmarks.hoisting [--tokens 256] [--hidden 512] [--ffn 2048] [--nnz-per-row 32]

Times ``O[t,d] = H[t,n] * X[t,k] * Wu[n,k] * Wd[n,d]`` (H in twell) with the default
schedule (the dot product over k is computed once per stored (t, n)) and with
``Schedule().no_precompute()`` (recomputed for every d), doubling K and D in turn.
"""
from __future__ import annotations

import argparse
import time

import numpy as np

import spcomp


def _median_time(fn, repeat=5):
    fn()
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return float(np.median(times))


def _case(tokens, k_dim, d_dim, n_dim, per_row, schedule, rng):
    H = np.zeros((tokens, n_dim), dtype=np.float32)
    for t in range(tokens):
        cols = rng.choice(n_dim, size=per_row, replace=False)
        H[t, cols] = rng.standard_normal(per_row)
    X = rng.standard_normal((tokens, k_dim)).astype(np.float32)
    Wu = rng.standard_normal((n_dim, k_dim)).astype(np.float32)
    Wd = rng.standard_normal((n_dim, d_dim)).astype(np.float32)
    kern = spcomp.compile("O[t,d] = H[t,n] * X[t,k] * Wu[n,k] * Wd[n,d]",
                          formats={"H": "twell(B=256,K=64)"}, dtype="float32", schedule=schedule)
    Ht = spcomp.Tensor.from_numpy(H, kern.formats["H"], overflow="grow")
    out = kern(H=Ht, X=X, Wu=Wu, Wd=Wd)
    ref = (H * (X @ Wu.T)) @ Wd
    assert np.allclose(out, ref, rtol=1e-3, atol=1e-2 * np.abs(ref).max()), "wrong result"
    return _median_time(lambda: kern(H=Ht, X=X, Wu=Wu, Wd=Wd))


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--tokens", type=int, default=256)
    p.add_argument("--hidden", type=int, default=512, help="K and D (the model width)")
    p.add_argument("--ffn", type=int, default=2048, help="N, the hidden FFN width")
    p.add_argument("--nnz-per-row", type=int, default=32)
    p.add_argument("--threads", type=int, default=None)
    args = p.parse_args(argv)
    if args.threads:
        spcomp.set_num_threads(args.threads)
    rng = np.random.default_rng(0)
    k0 = d0 = args.hidden
    shapes = [("K, D", k0, d0), ("2K, D", 2 * k0, d0), ("K, 2D", k0, 2 * d0), ("2K, 2D", 2 * k0, 2 * d0)]
    schedules = [("hoisted (default)", None), ("no_precompute", spcomp.Schedule().no_precompute())]
    print(f"# tokens={args.tokens} N={args.ffn} nnz(H)={args.tokens * args.nnz_per_row} "
          f"threads={spcomp.get_num_threads()}")
    print(f"{'schedule':<20}{'shape':<8}{'ms':>10}{'ratio to K,D':>14}{'model K+D':>11}{'model K*D':>11}")
    for label, sched in schedules:
        base = None
        for name, K, D in shapes:
            t = _case(args.tokens, K, D, args.ffn, args.nnz_per_row, sched, rng)
            base = base or t
            print(f"{label:<20}{name:<8}{t * 1e3:>10.2f}{t / base:>14.2f}"
                  f"{(K + D) / (k0 + d0):>11.2f}{(K * D) / (k0 * d0):>11.2f}")


if __name__ == "__main__":
    main()
