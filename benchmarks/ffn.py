"""FFN blocks: dense NumPy/BLAS vs spcomp weight-sparse vs spcomp activation-sparse (TwELL).

    python benchmarks/ffn.py                 # both sizes, 256 tokens, float32
    python benchmarks/ffn.py --size minilm   # or 1b
    python benchmarks/ffn.py --rounds 11 --threads 2 --json out.json

Sizes:
  minilm  hidden 384,  FFN 1536, non-gated, GELU and ReLU (all-MiniLM-L6-v2 shape)
  1b      hidden 2048, FFN 5632, gated ReLU: down(relu(gate(x)) * up(x)) (SparseLM-1B of the TwELL paper)

Variants (all float32, biases included where the model has them):
  dense          NumPy: x @ W.T through BLAS, activation in NumPy/SciPy
  weight-sparse  spcomp SparseFFN(mode="weight"): every FFN weight pruned by magnitude to
                 90 / 95 / 99 % sparsity, stored csr; kernels Y[t,o] += X[t,i]*W[o,i]
  act-sparse     spcomp SparseFFN(mode="activation"), default consume="auto" (by columns at
                 256 tokens). ReLU: the gate (or up) bias is shifted so that ReLU leaves 1 % / 0.5 %
                 of each row nonzero (~56 / ~28 of 5632; ~15 / ~8 of 1536); each thread runs the
                 gate kernel on its weight slab (its matrix product handed to BLAS,
                 Kernel.blas_calls), writing its columns of H compressed (dc:1,0), then the fused
                 up+down kernel on those columns. GELU: top-k with k = 1 % / 0.5 %, packed in
                 twell(B=256,K=32) and re-packed by columns for the consumer.
  act-sparse twell rows  1b only: consume="rows", the TwELL layout end to end (gate writes
                 twell(B=256,K=32) rows, the fused kernel reads them a token row at a time).
  (diagnostic)   1b only: the gate as a NumPy BLAS GEMM + relu, packed with Tensor.from_numpy,
                 then the spcomp fused kernel on twell rows: the peer of the spcomp path.

Timing: every variant is run once per round, rounds interleaved, after one warm-up call;
the table gives the median (and best) seconds per FFN call and dense/variant ratios (> 1 is
faster than dense). Building the layers (pruning, packing weights, compiling kernels) is not
timed. Correctness: each variant's output is compared with a float64 NumPy computation of
the same (pruned / sparsified) function.

OPENBLAS_CORETYPE and OPENBLAS_L2_SIZE are removed from this process's environment before
NumPy is imported (``--keep-openblas-env`` keeps them): a forced core type or L2 size can pin
OpenBLAS to slower kernels than the host supports, which would flatter the sparse variants.
What was removed is printed. Threads: NumPy's BLAS and spcomp both use ``--threads`` (default:
all cores available), set through OPENBLAS_NUM_THREADS / OMP_NUM_THREADS and
spcomp.set_num_threads.
"""
from __future__ import annotations

import argparse
import os
import sys


def _parse():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--size", choices=("minilm", "1b", "all"), default="all")
    p.add_argument("--tokens", type=int, default=256)
    p.add_argument("--rounds", type=int, default=7)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--keep-openblas-env", action="store_true")
    p.add_argument("--json", default=None, help="write the rows as JSON here")
    return p.parse_args()


ARGS = _parse()
REMOVED = {}
if not ARGS.keep_openblas_env:
    for var in ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE"):
        if var in os.environ:
            REMOVED[var] = os.environ.pop(var)
if ARGS.threads:
    os.environ["OPENBLAS_NUM_THREADS"] = os.environ["OMP_NUM_THREADS"] = str(ARGS.threads)

import json  # noqa: E402
import platform  # noqa: E402
import time  # noqa: E402

import numpy as np  # noqa: E402
from scipy.special import erf  # noqa: E402

import spcomp  # noqa: E402
from spcomp.nn import SparseFFN  # noqa: E402
from spcomp.runtime import Tensor  # noqa: E402

if ARGS.threads:
    spcomp.set_num_threads(ARGS.threads)


def gelu64(z):
    return 0.5 * z * (1.0 + erf(z / np.sqrt(2.0)))


def gelu32(z):
    return (0.5 * z * (1.0 + erf(z * np.float32(0.7071067811865476)))).astype(np.float32, copy=False)


def relu(z):
    return np.maximum(z, 0)


class Case:
    """One variant: a callable timed per round, plus a check against float64 NumPy."""

    def __init__(self, name, fn, reference=None, note="", layer=None):
        self.name, self.fn, self.reference, self.note, self.layer = name, fn, reference, note, layer
        self.times = []
        self.error = None

    def check(self):
        out = self.fn()
        if self.reference is not None:
            ref = self.reference()
            self.error = float(np.abs(out - ref).max() / max(np.abs(ref).max(), 1e-30))


def run_rounds(cases, rounds):
    for c in cases:
        c.check()  # warm-up + correctness
    for _ in range(rounds):
        for c in cases:
            t0 = time.perf_counter()
            c.fn()
            c.times.append(time.perf_counter() - t0)


def table(title, cases, extra=""):
    dense = np.median(cases[0].times)
    print(f"\n{title}{extra}")
    print(f"{'variant':44s} {'median ms':>10s} {'best ms':>9s} {'vs dense':>9s} {'max rel err':>12s}  note")
    rows = []
    for c in cases:
        med, best = float(np.median(c.times)), float(np.min(c.times))
        ratio = dense / med
        err = "" if c.error is None else f"{c.error:.1e}"
        print(f"{c.name:44s} {med * 1e3:10.2f} {best * 1e3:9.2f} {ratio:8.2f}x {err:>12s}  {c.note}")
        rows.append({"table": title, "variant": c.name, "median_s": med, "best_s": best,
                     "speedup_vs_dense": ratio, "max_rel_err": c.error, "note": c.note})
    return rows


def shift_for_sparsity(pre: np.ndarray, sparsity: float) -> np.float32:
    """A bias that leaves a (1 - sparsity) fraction of ``pre`` above zero."""
    return np.float32(-np.quantile(pre, sparsity))


# ------------------------------------------------------------------- MiniLM size

def bench_minilm(T, rounds):
    rng = np.random.default_rng(0)
    D, F = 384, 1536
    x = rng.standard_normal((T, D)).astype(np.float32)
    w1 = (rng.standard_normal((F, D)) / np.sqrt(D)).astype(np.float32)
    b1 = (0.1 * rng.standard_normal(F)).astype(np.float32)
    w2 = (rng.standard_normal((D, F)) / np.sqrt(F)).astype(np.float32)
    b2 = (0.1 * rng.standard_normal(D)).astype(np.float32)
    x64 = x.astype(np.float64)
    pre = x @ w1.T + b1
    rows = []
    for act in ("gelu", "relu"):
        f32 = gelu32 if act == "gelu" else relu
        f64 = gelu64 if act == "gelu" else relu
        cases = [Case(f"dense NumPy/BLAS {act}", lambda f32=f32: f32(x @ w1.T + b1) @ w2.T + b2,
                      lambda f64=f64: f64(x64 @ w1.T + b1) @ w2.T + b2)]
        for sp in (0.90, 0.95, 0.99):
            ffn = SparseFFN.weight_sparse(w1, b1, w2, b2, density=1 - sp, activation=act)
            W1, W2 = ffn.up.weight_numpy().astype(np.float64), ffn.down.weight_numpy().astype(np.float64)
            cases.append(Case(f"spcomp weight-sparse {sp:.0%} csr", lambda ffn=ffn: ffn(x),
                              lambda W1=W1, W2=W2, f64=f64: f64(x64 @ W1.T + b1) @ W2.T + b2,
                              f"weight sparsity {ffn.sparsity:.3f}"))
        for sp in (0.99, 0.995):
            if act == "relu":
                shift = shift_for_sparsity(pre, sp)
                bs = (b1 + shift).astype(np.float32)
                ffn = SparseFFN.activation_sparse(w1, bs, w2, b2, activation="relu")
                ref = (lambda bs=bs: relu(x64 @ w1.T + bs) @ w2.T + b2)
                name = f"spcomp act-sparse {sp:.1%} relu"
            else:
                k = max(1, int(round((1 - sp) * F)))
                ffn = SparseFFN.activation_sparse(w1, b1, w2, b2, activation="gelu", topk=k)

                def ref(k=k):
                    a = gelu64(x64 @ w1.T + b1)
                    idx = np.argpartition(a, F - k, axis=1)[:, F - k:]
                    h = np.zeros_like(a)
                    np.put_along_axis(h, idx, np.take_along_axis(a, idx, 1), 1)
                    return h @ w2.T + b2
                name = f"spcomp act-sparse {sp:.1%} gelu top-{k} twell"
            cases.append(Case(name, lambda ffn=ffn: ffn(x), ref, layer=ffn))
        run_rounds(cases, rounds)
        for c in cases:
            if c.layer is not None:
                c.note = (f"activation sparsity {c.layer.sparsity:.4f} "
                          f"({c.layer.last_nnz / T:.1f} nonzeros/row)")
        rows += table(f"MiniLM FFN (hidden {D}, FFN {F}, {act}, non-gated), {T} tokens", cases)
    return rows


# ---------------------------------------------------------------- SparseLM-1B size

def bench_1b(T, rounds):
    rng = np.random.default_rng(1)
    D, F = 2048, 5632
    x = rng.standard_normal((T, D)).astype(np.float32)
    wg = (rng.standard_normal((F, D)) / np.sqrt(D)).astype(np.float32)
    wu = (rng.standard_normal((F, D)) / np.sqrt(D)).astype(np.float32)
    wd = (rng.standard_normal((D, F)) / np.sqrt(F)).astype(np.float32)
    x64 = x.astype(np.float64)
    pre = x @ wg.T
    wd_t = np.ascontiguousarray(wd.T)
    fused = spcomp.compile("O[t,d] = H[t,n] * X[t,k]*Wu[n,k] * Wd[n,d]", formats={"H": "twell(B=256,K=32)"},
                           dtype="float32")
    rows = []
    # gate biases: 0 for the dense and weight-sparse rows; shifted for the act-sparse rows
    # so that ReLU leaves 1 % / 0.5 % of each row (BLAS time does not depend on the values)
    bias = {sp: np.full(F, shift_for_sparsity(pre, sp), np.float32) for sp in (0.99, 0.995)}
    b995 = bias[0.995]
    bg = np.zeros(F, np.float32)

    def dense():
        return (relu(x @ wg.T + bg) * (x @ wu.T)) @ wd.T
    cases = [Case("dense NumPy/BLAS gated relu", dense,
                  lambda: (relu(x64 @ wg.T) * (x64 @ wu.T)) @ wd.T.astype(np.float64))]
    for sp in (0.90, 0.95, 0.99):
        ffn = SparseFFN.weight_sparse(wu, None, wd, None, w_gate=wg, b_gate=bg, density=1 - sp, activation="relu")
        G, U, W2 = (l.weight_numpy().astype(np.float64) for l in (ffn.gate, ffn.up, ffn.down))
        cases.append(Case(f"spcomp weight-sparse {sp:.0%} csr", lambda ffn=ffn: ffn(x),
                          lambda G=G, U=U, W2=W2: (relu(x64 @ G.T) * (x64 @ U.T)) @ W2.T,
                          f"weight sparsity {ffn.sparsity:.3f}"))
    act = {}
    for sp in (0.99, 0.995):
        ffn = SparseFFN.activation_sparse(wu, None, wd, None, w_gate=wg, b_gate=bias[sp], activation="relu")
        act[sp] = ffn
        cases.append(Case(f"spcomp act-sparse {sp:.1%} gated relu", lambda ffn=ffn: ffn(x),
                          lambda b=bias[sp]: (relu(x64 @ wg.T + b) * (x64 @ wu.T)) @ wd.T.astype(np.float64)))
    ffn995 = act[0.995]
    slabs = _gate_slabs(ffn995, x)
    cases.append(Case("  of which: gate kernels -> dc:1,0", lambda: _gate_slabs(ffn995, x), None,
                      "H[t,n] = relu(X[t,k]*Wa[n,k] + ba[n]) per weight slab and thread: BLAS sgemm, relu + pack"))
    cases.append(Case("  of which: fused up+down kernels", lambda: _consume_slabs(ffn995, slabs, x), None,
                      "O[t,d] += H[t,n]*(X[t,k]*Wu[n,k])*Wd[n,d] on each slab's columns, outputs summed"))
    rows995 = SparseFFN.activation_sparse(wu, None, wd, None, w_gate=wg, b_gate=b995, activation="relu",
                                          consume="rows")
    cases.append(Case("spcomp act-sparse 99.5% twell rows", lambda: rows995(x),
                      lambda: (relu(x64 @ wg.T + b995) * (x64 @ wu.T)) @ wd.T.astype(np.float64),
                      "consume='rows': gate -> twell(B=256,K=32), fused kernel a token row at a time"))
    H995 = ffn995.activations(x)
    cases.append(Case("  of which: gate kernel -> twell", lambda: ffn995.activations(x), None,
                      "the same gate writing twell rows (SparseFFN.activations)"))
    cases.append(Case("  of which: fused up+down on twell rows", lambda: _fused_rows(ffn995, H995, x), None,
                      "the fused kernel on H as packed, token rows split over threads"))

    cases.append(Case("(diagnostic) BLAS gate GEMM + relu only", lambda: relu(x @ wg.T + b995), None,
                      "NumPy: the peer of the gate kernel row"))

    def diag():
        g = relu(x @ wg.T + b995)
        H = Tensor.from_numpy(g, "twell(B=256,K=32)")
        return fused(H=H, X=x, Wu=wu, Wd=wd_t)
    cases.append(Case("(diagnostic) BLAS gate + spcomp fused", diag,
                      lambda: (relu(x64 @ wg.T + b995) * (x64 @ wu.T)) @ wd.T.astype(np.float64),
                      "gate in NumPy: not spcomp-only"))
    run_rounds(cases, rounds)
    for sp, c in zip((0.99, 0.995), cases[4:6]):
        c.note = (f"activation sparsity {act[sp].sparsity:.4f} "
                  f"({act[sp].last_nnz / T:.1f} nonzeros/row), H by columns (dc:1,0) per weight slab")
    rows += table(f"SparseLM-1B FFN (hidden {D}, FFN {F}, gated relu), {T} tokens", cases,
                  "\n(act-sparse rows: gate bias shifted for the sparsity; dense BLAS time does not "
                  "depend on bias values)")
    return rows


def _gate_slabs(ffn, x):
    """The first stage of the by-columns forward pass alone: each thread's gate kernel
    on its weight slab, H compressed by columns."""
    from spcomp.nn.kernels import dense_operand
    X = dense_operand(x, "dense")
    slabs = ffn._column_slabs()
    return ffn._on_slabs(lambda p: ffn._gate_slab(slabs[p], X), slabs)


def _consume_slabs(ffn, Hs, x):
    """The second stage alone: the fused kernel on each slab's columns, outputs summed."""
    from spcomp.nn.kernels import dense_operand
    X = dense_operand(x, "dense")
    slabs = ffn._column_slabs()
    outs = [np.zeros((x.shape[0], ffn.hidden), np.float32) for _ in slabs]
    ffn._on_slabs(lambda p: ffn._consume_slab(slabs[p], Hs[p], X, outs[p]), slabs)
    ffn._sum_outputs(outs[0], outs[1:])
    return outs[0]


def _fused_rows(ffn, H, x):
    from spcomp.nn.kernels import call_kernel, dense_operand
    from spcomp.nn.parallel import parallel_map, row_ranges
    from spcomp.nn.twell import row_nnz, twell_rows
    _, consumer = ffn._kernels_for(H.format.levels[1].K)
    out = np.zeros((x.shape[0], ffn.hidden), np.float32)

    def run(r):
        lo, hi = r
        call_kernel(consumer, H=twell_rows(H, lo, hi), Wd=ffn.wd, O=out[lo:hi],
                    X=dense_operand(x[lo:hi], "dense"), Wu=ffn.wu)
    parallel_map(run, row_ranges(x.shape[0], row_nnz(H)))
    return out


def main():
    print(f"spcomp {spcomp.__version__}, numpy {np.__version__}, python {platform.python_version()}, "
          f"{os.cpu_count()} cpus, spcomp threads {spcomp.get_num_threads()}")
    try:
        cfg = np.show_config(mode="dicts")
        blas = cfg.get("Build Dependencies", {}).get("blas", {})
        print(f"BLAS: {blas.get('name')} {blas.get('version')}")
    except Exception:  # pragma: no cover - older NumPy
        pass
    if REMOVED:
        print(f"removed from the environment before importing NumPy: {REMOVED}")
    else:
        print("OPENBLAS_CORETYPE / OPENBLAS_L2_SIZE: not set" if not ARGS.keep_openblas_env
              else "OPENBLAS_* environment kept as given")
    rows = []
    if ARGS.size in ("minilm", "all"):
        rows += bench_minilm(ARGS.tokens, ARGS.rounds)
    if ARGS.size in ("1b", "all"):
        rows += bench_1b(ARGS.tokens, ARGS.rounds)
    if ARGS.json:
        with open(ARGS.json, "w") as f:
            json.dump(rows, f, indent=1)


if __name__ == "__main__":
    sys.exit(main())
