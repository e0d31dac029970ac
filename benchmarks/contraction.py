"""Contraction order: a factorised product against the statement as written and its peers.

    python -m benchmarks.contraction [--n 20000] [--per-row 16] [--repeat 7] [--threads 1]
                                     [--section all|products|programs|temporaries] [--clock wall|cpu]

Each case is one statement of three or four operands. spcomp runs it with the plan
its cost model picks at the first call (``auto``) and as written
(``Schedule().factorize(False)``); the peers evaluate the same product with
``opt_einsum.contract`` (its own contraction order, NumPy/BLAS underneath) where
opt_einsum is installed, ``numpy.einsum(..., optimize=True)`` on dense copies
where they fit in memory, and SciPy sparse products in the cheapest order written
by hand. Each result is checked against SciPy's before it is timed. The model's
operation counts (iterations of the innermost loops) are printed beside the times.
Times are medians of ``--repeat`` calls; on a shared machine they are noisy.

The ``programs`` section times programs whose statements write a sparse
temporary (SpGEMM then SpMV, SpGEMM then a sparse add): the program as one
``spcomp.compile`` (``k.launches`` native functions, 1 where it fused), the same
statements as separate kernels chained in Python (each with its default
schedule, threads included), and SciPy.

The ``temporaries`` section times SpGEMM then SpMV with the temporary ``t`` left
to the compiler (csr, chosen from its operands) against ``formats={"t": "dense"}``
(one dense row of workspace where the reader walks ``t`` by rows, the whole
n × n array where it walks it by columns): ``--section temporaries --n 5000 --per-row 5``.
"""
from __future__ import annotations

import argparse
import time

import numpy as np
import scipy.sparse as sp

import spcomp

DENSE_LIMIT = 4e8  # dense copies above this many elements are not made (numpy.einsum column)


CLOCK = time.perf_counter  # --clock cpu: this process's CPU time (less disturbed by others on a shared host)


def _median(fn, repeat):
    fn()
    times = []
    for _ in range(repeat):
        t0 = CLOCK()
        fn()
        times.append(CLOCK() - t0)
    return float(np.median(times))


def _cases(n, per_row, rng):
    A = sp.random(n, n, density=per_row / n, format="csr", random_state=1)
    B = sp.random(n, n, density=per_row / n, format="csr", random_state=2)
    c = rng.standard_normal(n)
    C4 = rng.standard_normal((n, 4))
    m = max(n // 10, 64)
    nnz3 = m * per_row  # a 3-tensor with per_row entries per slice, as an unfolded m x m*m matrix
    T = sp.csr_matrix((rng.standard_normal(nnz3), (rng.integers(0, m, nnz3), rng.integers(0, m * m, nnz3))),
                      shape=(m, m * m))
    T.sum_duplicates()
    U, V = rng.standard_normal((m, 8)), rng.standard_normal((m, 8))
    S = sp.random(m, m, density=per_row / m, format="csr", random_state=4)
    Q, K, Vv = (rng.standard_normal((m, 32)) for _ in range(3))
    s = max(n // 10, 64)  # three sparse matrices: as written, each (i, l) merges a row of B with a column of C
    A3, B3, C3 = (sp.random(s, s, density=per_row / s, format="csr", random_state=r) for r in (5, 6, 7))
    all_csr = {"A": "csr", "B": "csr", "C": "csr"}
    # the FFN's down projection with a bias: the sum under "+" (as written: t, d, n)
    H = sp.random(256, 4 * m, density=0.02, format="csr", random_state=8)
    Wd, bias = rng.standard_normal((4 * m, m)), rng.standard_normal(m)
    return [
        ("epilogue O = H·Wd + b (H csr 2 %)", "O[t,d] = H[t,n]*Wd[n,d] + b[d]", {"H": "csr"},
         dict(H=H, Wd=Wd, b=bias), None, lambda: H @ Wd + bias),
        ("y = A·B·c (SpMV chain)", "y[i] = A[i,j]*B[j,k]*c[k]", {"A": "csr", "B": "csr"},
         dict(A=A, B=B, c=c), "ij,jk,k->i", lambda: A @ (B @ c)),
        ("Y = A·B·C, C thin dense", "Y[i,l] = A[i,j]*B[j,k]*C[k,l]", {"A": "csr", "B": "csr"},
         dict(A=A, B=B, C=C4), "ij,jk,kl->il", lambda: A @ (B @ C4)),
        ("TTM chain Y[i,r,s] = X[i,j,k]·U[j,r]·V[k,s]", "Y[i,r,s] = X[i,j,k]*U[j,r]*V[k,s]", {"X": "csf"},
         dict(X=_tensor3(T, m), U=U, V=V), "ijk,jr,ks->irs",
         lambda: _ttm_scipy(T, m, U, V)),
        (f"Y = A·B·C, all csr ({s}²), dense Y", "Y[i,l] = A[i,j]*B[j,k]*C[k,l]", all_csr,
         dict(A=A3, B=B3, C=C3), "ij,jk,kl->il", lambda: ((A3 @ B3) @ C3).toarray()),
        (f"Y = A·B·C, all csr ({s}²), csr Y", "Y[i,l] = A[i,j]*B[j,k]*C[k,l]", dict(all_csr, Y="csr"),
         dict(A=A3, B=B3, C=C3), "ij,jk,kl->il", lambda: (A3 @ B3) @ C3),
        ("attention O = (S∘QKᵀ)·V", "O[i,d] = S[i,j]*Q[i,k]*K[j,k]*V[j,d]", {"S": "csr"},
         dict(S=S, Q=Q, K=K, V=Vv), "ij,ik,jk,jd->id", lambda: _sddmm_spmm(S, Q, K, Vv)),
    ]


def _tensor3(T, m):
    coo = T.tocoo()
    coords = np.stack([coo.row, coo.col // m, coo.col % m])
    return spcomp.Tensor.from_coo(coords, coo.data, (m, m, m), "csf")


def _ttm_scipy(T, m, U, V):
    # X_(1) (m x m*m) times (U ⊗ V) without forming the Kronecker product
    coo = T.tocoo()
    j, k = coo.col // m, coo.col % m
    out = np.zeros((m, U.shape[1], V.shape[1]))
    np.add.at(out, coo.row, coo.data[:, None, None] * U[j][:, :, None] * V[k][:, None, :])
    return out


def _sddmm_spmm(S, Q, K, V):
    coo = S.tocoo()
    vals = coo.data * np.einsum("pk,pk->p", Q[coo.row], K[coo.col])
    return sp.csr_matrix((vals, (coo.row, coo.col)), shape=S.shape) @ V


def _programs(n, per_row):
    A = sp.random(n, n, density=per_row / n, format="csr", random_state=1)
    B = sp.random(n, n, density=per_row / n, format="csr", random_state=2)
    D = sp.random(n, n, density=per_row / n, format="csr", random_state=3)
    c = np.random.default_rng(0).standard_normal(n)
    csr = {"A": "csr", "B": "csr", "D": "csr", "T": "csr", "C": "csr"}
    return [
        ("T = A·B (csr); y = T·c", ["T[i,k] = A[i,j]*B[j,k]", "y[i] = T[i,k]*c[k]"], csr,
         dict(A=A, B=B, c=c), lambda: (A @ B) @ c),
        ("T = A·B (csr); C = T + D (csr)", ["T[i,k] = A[i,j]*B[j,k]", "C[i,k] = T[i,k] + D[i,k]"], csr,
         dict(A=A, B=B, D=D), lambda: A @ B + D),
    ]


def _dense(x):
    if isinstance(x, spcomp.Tensor):
        return x.to_numpy()
    return x.toarray() if sp.issparse(x) else np.asarray(x)


def programs(args):
    """The programs section: one compiled program against its statements one by one."""
    print(f"# programs with a sparse temporary, n={args.n} stored per row={args.per_row}, "
          f"medians of {args.repeat} calls (ms)")
    print(" | ".join(["case", "launches", "spcomp program", "statements as separate kernels", "scipy"]))
    for name, texts, fmts, ops, scipy_fn in _programs(args.n, args.per_row):
        text = "; ".join(texts)
        prog = spcomp.compile(text, formats={k: v for k, v in fmts.items() if f"{k}[" in text})
        kernels = [spcomp.compile(t, formats={k: v for k, v in fmts.items() if f"{k}[" in t}) for t in texts]

        def chained(kernels=kernels, ops=ops):
            env = dict(ops)
            for k in kernels:
                env[k.output_name] = k(**{n: env[n] for n in k.inputs})
            return env[kernels[-1].output_name]
        want = _dense(scipy_fn())
        for got in (prog(**ops), chained()):
            assert np.allclose(_dense(got), want, rtol=1e-8, atol=1e-8 * max(1.0, np.abs(want).max())), name
        print(" | ".join([name, str(getattr(prog, "launches", "?")),
                          f"{1e3 * _median(lambda: prog(**ops), args.repeat):.3f}",
                          f"{1e3 * _median(chained, args.repeat):.3f}",
                          f"{1e3 * _median(scipy_fn, args.repeat):.3f}"]), flush=True)


def temporaries(args):
    """The temporaries section: a program's unnamed temporary in the format the compiler
    chose from its operands against ``formats={"t": "dense"}``, interleaved best-of."""
    n = args.n
    A = sp.random(n, n, density=args.per_row / n, format="csr", random_state=1)
    B = sp.random(n, n, density=args.per_row / n, format="csr", random_state=2)
    x = np.random.default_rng(0).standard_normal(n)
    print(f"# temporaries: chosen format against dense, n={n} stored per row={args.per_row}, "
          f"best of {args.repeat} interleaved calls (ms)")
    print(" | ".join(["case", "chosen", "spcomp chosen", "spcomp t dense"]))
    for name, text, want in [("t = A·B; y = t·x", "t[i,k] = A[i,j]*B[j,k]; y[i] = t[i,k]*x[k]", lambda: A @ (B @ x)),
                             ("t = A·B; y = tᵀ·x", "t[i,k] = A[i,j]*B[j,k]; y[k] = t[i,k]*x[i]",
                              lambda: (A @ B).T @ x)]:
        chosen = spcomp.compile(text, formats={"A": "csr", "B": "csr"})
        dense = spcomp.compile(text, formats={"A": "csr", "B": "csr", "t": "dense"})
        runs = {"chosen": lambda k=chosen: k(A=A, B=B, x=x)}
        if "y[i]" in text or n * n <= DENSE_LIMIT:  # (y[i] keeps one row of a dense t; y[k] all of it)
            runs["dense"] = lambda k=dense: k(A=A, B=B, x=x)
        for fn in runs.values():
            assert np.allclose(fn(), want()), name
        best = {}
        for _ in range(args.repeat):
            for key, fn in runs.items():
                t0 = CLOCK()
                fn()
                best[key] = min(best.get(key, float("inf")), CLOCK() - t0)
        print(" | ".join([name, str(chosen.program.tensors["t"].format), f"{1e3 * best['chosen']:.3f}",
                          f"{1e3 * best['dense']:.3f}" if "dense" in best else "over DENSE_LIMIT"]), flush=True)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=20000)
    p.add_argument("--per-row", type=int, default=16)
    p.add_argument("--repeat", type=int, default=7)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--section", choices=["all", "products", "programs", "temporaries"], default="all")
    p.add_argument("--clock", choices=["wall", "cpu"], default="wall",
                   help="cpu: process CPU time (all threads), steadier on a shared host")
    args = p.parse_args(argv)
    global CLOCK
    CLOCK = time.process_time if args.clock == "cpu" else time.perf_counter
    if args.threads:
        spcomp.set_num_threads(args.threads)
    if args.section in ("all", "programs"):
        programs(args)
    if args.section in ("all", "temporaries"):
        temporaries(args)
    if args.section in ("programs", "temporaries"):
        return
    try:
        import opt_einsum
    except ImportError:
        opt_einsum = None
    rng = np.random.default_rng(0)
    print(f"# n={args.n} stored per row={args.per_row}, medians of {args.repeat} calls (ms); "
          "counts: the cost model's innermost iterations")
    if opt_einsum is None:
        print("# opt_einsum: not installed (pip install opt_einsum): its column is skipped")
    header = ["case", "plan", "count", "as written count", "spcomp auto", "as written", "scipy",
              "numpy einsum", "opt_einsum"]
    print(" | ".join(header))
    for name, text, fmts, ops, spec, scipy_fn in _cases(args.n, args.per_row, rng):
        auto = spcomp.compile(text, formats=fmts)
        plain = spcomp.compile(text, formats=fmts, schedule=spcomp.Schedule().factorize(False))
        want = scipy_fn()
        want = want.toarray() if sp.issparse(want) else np.asarray(want)
        for k in (auto, plain):
            got = _dense(k(**ops))
            assert np.allclose(got, want, rtol=1e-8, atol=1e-8 * max(1.0, np.abs(want).max())), name
        plan, single = auto.contraction.plan(ops)
        row = [name, plan.describe() if plan.factorised else "as written", f"{plan.cost:.3g}", f"{single:.3g}",
               f"{1e3 * _median(lambda: auto(**ops), args.repeat):.3f}",
               f"{1e3 * _median(lambda: plain(**ops), args.repeat):.3f}",
               f"{1e3 * _median(scipy_fn, args.repeat):.3f}"]
        dense = [v.toarray() if sp.issparse(v) else (v.to_numpy() if isinstance(v, spcomp.Tensor) else v)
                 for v in ops.values()] if sum(np.prod(getattr(v, "shape", ())) for v in ops.values()) \
            < DENSE_LIMIT else None
        if spec is None:  # not a product: einsum cannot say it
            row += ["not a product", "not a product"]
            print(" | ".join(row), flush=True)
            continue
        if dense is None:
            row.append("too large dense")
        else:
            row.append(f"{1e3 * _median(lambda: np.einsum(spec, *dense, optimize=True), args.repeat):.3f}")
        if opt_einsum is None:
            row.append("not installed")
        elif dense is None:
            row.append("too large dense")
        else:
            row.append(f"{1e3 * _median(lambda: opt_einsum.contract(spec, *dense), args.repeat):.3f}")
        print(" | ".join(row), flush=True)


if __name__ == "__main__":
    main()
