"""spcomp kernels side by side with SciPy, PyTorch (CPU) and NumPy, in one run.

    python -m benchmarks.kernels [--quick] [--threads 1,2] [--markdown out.md] [--only spmv,spmm]
                                 [--wait-idle SECONDS]

Prints one table: per benchmark and thread count, the median time of spcomp and
of each peer on the same data, and ``speedup = peer_time / spcomp_time`` (above
1× spcomp is faster). Every implementation's result is checked against the
reference (np.allclose semantics) under each thread setting before it is
timed; one that disagrees is reported as FAIL and not timed, and the command
then exits with status 1. A peer that is not installed is skipped with a note.

OPENBLAS_CORETYPE and OPENBLAS_L2_SIZE are removed from this process's
environment before NumPy is imported, so that OpenBLAS picks its kernels for
the real CPU (they are meant for tests that must be reproducible across
machines, not for timing). This is done here only, never in tests.
"""
from __future__ import annotations

import os
import statistics
import sys

_REMOVED_ENV = {}
if "numpy" not in sys.modules:
    for _var in ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE"):
        if _var in os.environ:
            _REMOVED_ENV[_var] = os.environ.pop(_var)

import argparse  # noqa: E402
import contextlib  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
import uuid  # noqa: E402
import warnings  # noqa: E402
from dataclasses import dataclass, field  # noqa: E402
from typing import Any, Callable  # noqa: E402

import numpy as np  # noqa: E402
import scipy  # noqa: E402
import scipy.sparse as sp  # noqa: E402

import spcomp  # noqa: E402

from . import common as C  # noqa: E402

PEERS = ("scipy", "torch", "numpy")


# --------------------------------------------------------------- sizes

@dataclass(frozen=True)
class Sizes:
    n: int            # SpMV / SpMM / add / SDDMM: n x n CSR
    density: float
    k: int            # SpMM dense columns, SDDMM inner dimension
    g_n: int          # SpGEMM: g_n x g_n CSR times itself-shaped CSR
    g_density: float
    t_n: int          # MTTKRP: t_n^3 CSF tensor
    t_density: float
    rank: int
    dense_peer: bool  # run the dense float32 BLAS peer for SpMV / SpMM


FULL = Sizes(n=20000, density=0.001, k=64, g_n=5000, g_density=0.002,
             t_n=200, t_density=0.01, rank=16, dense_peer=True)
QUICK = Sizes(n=5000, density=0.004, k=64, g_n=2000, g_density=0.005,
              t_n=100, t_density=0.01, rank=16, dense_peer=True)

FULL_POLICY = C.TimingPolicy(warmup=3, min_repeats=10, max_repeats=500, target_s=1.0, pause_s=0.25, rounds=5)
# the pause outlasts NumPy's OpenBLAS workers, which spin ~0.15 s after a call on this
# host: with 0.05 s a 2-thread spcomp row that followed the NumPy column waited on
# that spinning thread for its whole 0.05 s window (SpMV 8 ms a call, docs/performance.md)
QUICK_POLICY = C.TimingPolicy(warmup=1, min_repeats=3, max_repeats=50, target_s=0.05, pause_s=0.25)


# --------------------------------------------------------------- cases

@dataclass
class Impl:
    column: str                          # spcomp | scipy | torch | numpy
    what: str                            # what it runs, for the notes
    run: Callable[[], Any]
    check: Callable[[Any], tuple]        # result -> (ok, message)


@dataclass
class Case:
    key: str
    name: str
    size: str
    impls: list = field(default_factory=list)
    skipped: dict = field(default_factory=dict)   # column -> reason
    notes: list = field(default_factory=list)

    def add(self, column, what, run, check):
        self.impls.append(Impl(column, what, run, check))


class Env:
    """What every case needs: the RNG, torch (or why not), the sizes."""

    def __init__(self, sizes: Sizes, torch_module, torch_why):
        self.sizes = sizes
        self.rng = np.random.default_rng(20240604)
        self.torch = torch_module
        self.torch_why = torch_why

    # -- data
    def csr(self, n, m, density):
        a = sp.random(n, m, density=density, format="csr", random_state=self.rng, dtype=np.float64)
        a.sum_duplicates()
        a.sort_indices()
        return a

    def dense(self, *shape):
        return self.rng.random(shape)

    # -- torch
    def torch_csr(self, a):
        """A torch CSR tensor sharing ``a``'s arrays (int32 indices: the same bytes
        spcomp and SciPy read; MKL's LP64 sparse routines take them as they are)."""
        t = self.torch
        return t.sparse_csr_tensor(t.from_numpy(a.indptr), t.from_numpy(a.indices), t.from_numpy(a.data),
                                   size=a.shape)

    def skip_torch(self, case: Case):
        if self.torch is None:
            case.skipped["torch"] = self.torch_why
            return True
        return False


def _t2sp(t):
    """torch sparse CSR -> scipy CSR."""
    return sp.csr_matrix((t.values().numpy(), t.col_indices().numpy(), t.crow_indices().numpy()),
                         shape=tuple(t.shape))


def _sp_of(tensor):
    return tensor.to_scipy("csr")


def case_spmv(env: Env) -> Case:
    s = env.sizes
    A = env.csr(s.n, s.n, s.density)
    x = env.dense(s.n)
    ref = A @ x
    case = Case("spmv", "SpMV y=A·x", f"{s.n}² {s.density:.1%} nnz={A.nnz}")
    k = spcomp.compile("y[i] = A[i,j] * x[j]", formats={"A": "csr"}, dtype="float64")
    case.kernel = k
    case.add("spcomp", "y[i] = A[i,j]*x[j], A csr", lambda: k(A=A, x=x), lambda r: C.check_dense(r, ref))
    case.add("scipy", "A @ x (scipy.sparse CSR, single-threaded)", lambda: A @ x, lambda r: C.check_dense(r, ref))
    if not env.skip_torch(case):
        t = env.torch
        At, xt = env.torch_csr(A), t.from_numpy(x)
        case.add("torch", "torch.mv(CSR, x)", lambda: t.mv(At, xt), lambda r: C.check_dense(r.numpy(), ref))
    if s.dense_peer:
        Ad = A.astype(np.float32).toarray()
        x32 = x.astype(np.float32)
        case.add("numpy", f"dense float32 A @ x (BLAS sgemv; {Ad.nbytes / 2**30:.2f} GiB; float64 would "
                 f"be {2 * Ad.nbytes / 2**30:.1f} GiB)",
                 lambda: Ad @ x32, lambda r: C.check_dense(r, ref, rtol=1e-4, atol=1e-4 * np.abs(ref).max()))
    else:
        case.skipped["numpy"] = "dense peer turned off"
    return case


def case_spmm(env: Env) -> Case:
    s = env.sizes
    A = env.csr(s.n, s.n, s.density)
    X = env.dense(s.n, s.k)
    ref = A @ X
    case = Case("spmm", f"SpMM Y=A·X (K={s.k})", f"{s.n}² {s.density:.1%} nnz={A.nnz}")
    k = spcomp.compile("Y[i,k] = A[i,j] * X[j,k]", formats={"A": "csr"}, dtype="float64")
    case.kernel = k
    case.add("spcomp", "Y[i,k] = A[i,j]*X[j,k], A csr", lambda: k(A=A, X=X), lambda r: C.check_dense(r, ref))
    case.add("scipy", "A @ X (scipy.sparse CSR, single-threaded)", lambda: A @ X, lambda r: C.check_dense(r, ref))
    if not env.skip_torch(case):
        t = env.torch
        At, Xt = env.torch_csr(A), t.from_numpy(X)
        case.add("torch", "torch.mm(CSR, X)", lambda: t.mm(At, Xt), lambda r: C.check_dense(r.numpy(), ref))
    if s.dense_peer:
        Ad = A.astype(np.float32).toarray()
        X32 = X.astype(np.float32)
        case.add("numpy", f"dense float32 A @ X (BLAS sgemm; {2 * s.n * s.n * s.k / 1e9:.0f} GFLOP)",
                 lambda: Ad @ X32, lambda r: C.check_dense(r, ref, rtol=1e-4, atol=1e-4 * np.abs(ref).max()))
    else:
        case.skipped["numpy"] = "dense peer turned off"
    return case


def case_add(env: Env) -> Case:
    s = env.sizes
    A = env.csr(s.n, s.n, s.density)
    B = env.csr(s.n, s.n, s.density)
    ref = A + B
    case = Case("add", "add C=A+B (CSR)", f"{s.n}² {s.density:.1%} nnz={A.nnz}+{B.nnz}")
    k = spcomp.compile("C[i,j] = A[i,j] + B[i,j]", formats={"A": "csr", "B": "csr", "C": "csr"}, dtype="float64")
    case.kernel = k
    case.add("spcomp", "C[i,j] = A[i,j]+B[i,j], all csr", lambda: k(A=A, B=B),
             lambda r: C.check_sparse(_sp_of(r), ref))
    case.add("scipy", "A + B (scipy.sparse CSR)", lambda: A + B, lambda r: C.check_sparse(r, ref))
    if not env.skip_torch(case):
        At, Bt = env.torch_csr(A), env.torch_csr(B)
        case.add("torch", "CSR + CSR (torch.add)", lambda: At + Bt, lambda r: C.check_sparse(_t2sp(r), ref))
    case.skipped["numpy"] = "no NumPy formulation of a sparse sum"
    return case


def _spgemm_data(env: Env):
    s = env.sizes
    return env.csr(s.g_n, s.g_n, s.g_density), env.csr(s.g_n, s.g_n, s.g_density)


def case_spgemm(env: Env, out_fmt: str = "csr", data=None) -> Case:
    s = env.sizes
    A, B = data if data is not None else _spgemm_data(env)
    ref = (A @ B).tocsr()
    ordered = out_fmt == "csr"
    key = "spgemm" if ordered else "spgemm-unordered"
    name = "SpGEMM C=A·B (CSR)" if ordered else "SpGEMM, C unordered"
    case = Case(key, name, f"{s.g_n}² {s.g_density:.1%} nnz(C)={ref.nnz}")
    k = spcomp.compile("C[i,j] = A[i,k] * B[k,j]", formats={"A": "csr", "B": "csr", "C": out_fmt},
                       dtype="float64")
    case.kernel = k
    case.add("spcomp", f"C[i,j] = A[i,k]*B[k,j], A,B csr, C {out_fmt} (workspace)", lambda: k(A=A, B=B),
             lambda r: C.check_sparse(_sp_of(r), ref))
    # scipy sorts no result's columns; whether this one's are is checked, not assumed
    order = "sorted" if (A @ B).has_sorted_indices else "not sorted (has_sorted_indices is False)"
    case.add("scipy", f"A @ B (scipy.sparse CSR; its result's column indices are {order}, "
             f"spcomp's are{' not' if not ordered else ''} sorted)", lambda: A @ B,
             lambda r: C.check_sparse(r, ref))
    if not env.skip_torch(case):
        At, Bt = env.torch_csr(A), env.torch_csr(B)
        case.add("torch", "CSR @ CSR (torch.mm, sparse result)", lambda: env.torch.mm(At, Bt),
                 lambda r: C.check_sparse(_t2sp(r), ref))
    case.skipped["numpy"] = "no NumPy formulation"
    return case


def case_sddmm(env: Env) -> Case:
    s = env.sizes
    B = env.csr(s.n, s.n, s.density)
    D = env.dense(s.n, s.k)
    E = env.dense(s.k, s.n)
    rows = np.repeat(np.arange(s.n), np.diff(B.indptr))   # COO row index of B (structure, built once)
    cols = B.indices

    def numpy_sddmm():
        return B.data * np.einsum("nk,kn->n", D[rows], E[:, cols])
    ref_vals = B.data * (D[rows] * E.T[cols]).sum(axis=1)
    ref = sp.csr_matrix((ref_vals, B.indices, B.indptr), shape=B.shape)
    case = Case("sddmm", f"SDDMM C=B∘(D·E) (K={s.k})", f"{s.n}² {s.density:.1%} nnz={B.nnz}")
    k = spcomp.compile("C[i,j] = B[i,j] * D[i,k] * E[k,j]", formats={"B": "csr", "C": "csr"}, dtype="float64")
    case.kernel = k
    case.add("spcomp", "C[i,j] = B[i,j]*D[i,k]*E[k,j], B,C csr, D,E dense row-major", lambda: k(B=B, D=D, E=E),
             lambda r: C.check_sparse(_sp_of(r), ref))
    case.skipped["scipy"] = "B.multiply(D @ E) needs the dense n×n product: not a fair peer"
    case.add("numpy", "B.data * einsum('nk,kn->n', D[rows], E[:, cols]) over the nonzeros (single-threaded)",
             numpy_sddmm, lambda r: C.check_dense(r, ref_vals))
    if not env.skip_torch(case):
        t = env.torch
        if not hasattr(t.sparse, "sampled_addmm"):
            case.skipped["torch"] = "torch.sparse.sampled_addmm is not available"
        else:
            Bt, Dt, Et = env.torch_csr(B), t.from_numpy(D), t.from_numpy(E)
            Bv = Bt.values()

            def torch_sddmm():
                r = t.sparse.sampled_addmm(Bt, Dt, Et, beta=0.0, alpha=1.0)
                r.values().mul_(Bv)
                return r
            case.add("torch", "sampled_addmm(B, D, E, beta=0) then values *= B.values",
                     torch_sddmm, lambda r: C.check_sparse(_t2sp(r), ref))
    return case


def _mttkrp_data(env: Env):
    s = env.sizes
    n = s.t_n
    nnz = int(round(s.t_density * n ** 3))
    lin = np.sort(env.rng.choice(n ** 3, size=nnz, replace=False))
    i, rem = np.divmod(lin, n * n)
    kk, ll = np.divmod(rem, n)
    vals = env.rng.random(nnz)
    Cm = env.dense(n, s.rank)
    Dm = env.dense(n, s.rank)
    return n, nnz, (i, kk, ll), vals, Cm, Dm


def case_mttkrp(env: Env, fmt: str = "csf", data=None) -> Case:
    s = env.sizes
    n, nnz, (i, kk, ll), vals, Cm, Dm = data if data is not None else _mttkrp_data(env)
    shape = (n, n, n)
    Bt = spcomp.Tensor.from_coo(np.stack([i, kk, ll]), vals, shape, fmt)

    def numpy_mttkrp():
        w = vals[:, None] * Cm[kk] * Dm[ll]
        starts = np.flatnonzero(np.r_[True, i[1:] != i[:-1]])
        out = np.zeros((n, s.rank))
        out[i[starts]] = np.add.reduceat(w, starts, axis=0)
        return out
    ref = np.zeros((n, s.rank))
    np.add.at(ref, i, vals[:, None] * Cm[kk] * Dm[ll])
    key = "mttkrp" if fmt == "csf" else f"mttkrp-{fmt}"
    case = Case(key, f"MTTKRP (B {fmt}, R={s.rank})", f"{n}³ {s.t_density:.0%} nnz={nnz}")
    k = spcomp.compile("A[i,j] = B[i,k,l] * C[k,j] * D[l,j]", formats={"B": fmt}, dtype="float64")
    case.kernel = k
    case.add("spcomp", f"A[i,j] = B[i,k,l]*C[k,j]*D[l,j], B {fmt}", lambda: k(B=Bt, C=Cm, D=Dm),
             lambda r: C.check_dense(r, ref))
    case.skipped["scipy"] = "no scipy.sparse 3-D tensors"
    case.add("numpy", "COO: w = vals·C[k]·D[l] (nnz×R), np.add.reduceat over the sorted i segments",
             numpy_mttkrp, lambda r: C.check_dense(r, ref))
    if not env.skip_torch(case):
        t = env.torch
        it, kt, lt = (t.from_numpy(a.astype(np.int64)) for a in (i, kk, ll))
        vt, Ct, Dt = t.from_numpy(vals), t.from_numpy(Cm), t.from_numpy(Dm)

        def torch_mttkrp():
            w = vt[:, None] * Ct[kt] * Dt[lt]
            return t.zeros((n, s.rank), dtype=t.float64).index_add_(0, it, w)
        case.add("torch", "COO: gather + index_add_ (no sparse MTTKRP in torch)", torch_mttkrp,
                 lambda r: C.check_dense(r.numpy(), ref))
    return case


def make_cases(env: Env, only) -> list:
    cases = []
    for key, build in [("spmv", case_spmv), ("spmm", case_spmm), ("add", case_add)]:
        if only is None or key in only:
            C.eprint(f"[setup] {key}")
            cases.append(build(env))
    if only is None or "spgemm" in only:
        C.eprint("[setup] spgemm")
        data = _spgemm_data(env)
        cases.append(case_spgemm(env, "csr", data))
        # the same product into an unordered compressed level: no per-row sort, like SciPy's result
        cases.append(case_spgemm(env, "d c(unordered)", data))
    if only is None or "sddmm" in only:
        C.eprint("[setup] sddmm")
        cases.append(case_sddmm(env))
    if only is None or "mttkrp" in only:
        C.eprint("[setup] mttkrp")
        data = _mttkrp_data(env)
        cases.append(case_mttkrp(env, "csf", data))
        # the same tensor with a dense first level: the only MTTKRP layout spcomp parallelises
        cases.append(case_mttkrp(env, "dcc", data))
    return cases


# --------------------------------------------------------------- running

def run_case(case: Case, threads: C.Threads, nthreads: int, policy: C.TimingPolicy, failures: list) -> dict:
    threads.set(nthreads)
    row = {"bench": case.name, "size": case.size, "threads": str(nthreads), "unit": "ms"}
    times = {}
    checks = []
    timed = {}
    for impl in case.impls:
        try:
            ok, msg = impl.check(impl.run())
        except Exception as e:  # a peer that cannot run this: report, do not time
            ok, msg = False, f"raised {type(e).__name__}: {e}"
        if not ok:
            failures.append(f"{case.name}, {nthreads} thread(s), {impl.column}: {msg}")
            times[impl.column] = "FAIL"
            checks.append(f"{impl.column} FAIL")
            continue
        timed[impl.column] = impl.run
    timings = C.measure_interleaved(timed, policy)
    for column, timing in timings.items():
        times[column] = timing.median_s
    if "spcomp" in timings:  # per-round ratios to each peer (target_lines)
        times["_paired"] = {p: C.paired_ratios(timings[p], timings["spcomp"]) for p in PEERS if p in timings}
    ours = times.get("spcomp")
    row["spcomp"] = C.fmt_time(ours)
    for p in PEERS:
        if p in times:
            row[p] = C.fmt_time(times[p])
            row["x_" + p] = C.fmt_ratio(times[p], ours)
        else:
            row[p] = "—"
            row["x_" + p] = "—"
    row["check"] = "ok" if not checks else "; ".join(checks)
    row["_times"] = times
    return row


@contextlib.contextmanager
def _env(**values):
    old = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def compile_rows(quick: bool, env: Env, failures: list) -> list:
    """Compile time (first in process, cold, from the disk cache, warm) and the
    per-call overhead of a kernel on tiny inputs, next to SciPy's and torch's."""
    spmv = ("y[i] = A[i,j] * x[j]", {"A": "csr"})
    spgemm = ("C[i,j] = A[i,k] * B[k,j]", {"A": "csr", "B": "csr", "C": "csr"})
    tag = uuid.uuid4().hex[:8]
    samples = 3 if quick else 10
    rows = []

    def row(bench, size, value, unit, **peers):
        r = {"bench": bench, "size": size, "threads": "—", "unit": unit, "spcomp": C.fmt_time(value, unit),
             "check": "", "_times": {"spcomp": value}}
        for p in PEERS:
            v = peers.get(p)
            r[p] = C.fmt_time(v, unit)
            r["x_" + p] = C.fmt_ratio(v, value)
            r["_times"][p] = v
        rows.append(r)

    def timed_compile(expr, formats, name):
        t0 = time.perf_counter()
        spcomp.compile(expr, formats=formats, dtype="float64", name=name)
        return time.perf_counter() - t0

    with _env(SPCOMP_DISK_CACHE="0"):
        first = timed_compile(*spmv, f"bench_first_{tag}")
        cold = []
        for r in range(samples):
            spcomp.clear_cache()
            cold.append(timed_compile(*spmv, f"bench_cold_{tag}_{r}"))
        cold_g = []
        for r in range(samples):
            spcomp.clear_cache()
            cold_g.append(timed_compile(*spgemm, f"bench_coldg_{tag}_{r}"))
    with tempfile.TemporaryDirectory(prefix="spcomp-bench-cache-") as d, _env(SPCOMP_CACHE_DIR=d,
                                                                               SPCOMP_DISK_CACHE="1"):
        spcomp.clear_cache()
        timed_compile(*spmv, f"bench_disk_{tag}")
        disk = []
        for _ in range(samples):
            spcomp.clear_cache()
            disk.append(timed_compile(*spmv, f"bench_disk_{tag}"))
    warm = C.measure_each_call(lambda: spcomp.compile(*spmv, dtype="float64", name=f"bench_disk_{tag}"),
                               calls=1000 if quick else 10000, warmup=100).median_s
    row("compile: first in process (SpMV)", "incl. imports, LLVM init", first, "ms")
    row("compile: cold (SpMV)", f"median of {samples}, no disk cache", float(np.median(cold)), "ms")
    row("compile: cold (SpGEMM)", f"median of {samples}, no disk cache", float(np.median(cold_g)), "ms")
    row("compile: disk-cache hit (SpMV)", f"median of {samples}, memory cache cleared", float(np.median(disk)),
        "ms")
    row("compile: warm, memory hit (SpMV)", "median of calls", warm, "µs")

    # per-call overhead on a 4x4 SpMV
    A = sp.random(4, 4, density=0.5, format="csr", random_state=np.random.default_rng(1))
    x = np.ones(4)
    k = spcomp.compile(*spmv, dtype="float64")
    calls = 2000 if quick else 10000
    ok, msg = C.check_dense(k(A=A, x=x), A @ x)
    if not ok:
        failures.append(f"per-call overhead SpMV 4×4: {msg}")
    ours = C.measure_each_call(lambda: k(A=A, x=x), calls).median_s
    peers = {"scipy": C.measure_each_call(lambda: A @ x, calls).median_s}
    if env.torch is not None:
        t = env.torch
        At, xt = env.torch_csr(A), t.from_numpy(x)
        peers["torch"] = C.measure_each_call(lambda: t.mv(At, xt), calls).median_s
    row("per-call overhead: SpMV 4×4", f"median of {calls} calls", ours, "µs", **peers)
    rows[-1]["check"] = "ok" if ok else "spcomp FAIL"
    return rows


COLUMNS = [
    C.Column("bench", "benchmark", "left"),
    C.Column("size", "size", "left"),
    C.Column("threads", "thr"),
    C.Column("unit", "unit", "left"),
    C.Column("spcomp", "spcomp"),
    C.Column("scipy", "scipy"),
    C.Column("x_scipy", "×scipy"),
    C.Column("torch", "torch"),
    C.Column("x_torch", "×torch"),
    C.Column("numpy", "NumPy"),
    C.Column("x_numpy", "×NumPy"),
    C.Column("check", "check", "left"),
]

# (benchmark key, peer, threads: "all" or 1, minimum speedup)
TARGETS = [
    ("spmv", "scipy", "all", 2.5), ("spmv", "torch", "all", 1.0),
    ("spmm", "scipy", "all", 2.5), ("spmm", "torch", "all", 1.0),
    ("add", "scipy", "all", 1.0),
    ("spmv", "scipy", 1, 1.0),
    ("spgemm", "scipy", 1, 1.0), ("spgemm", "scipy", "all", 1.8),  # issue 25: into sorted CSR
]


def target_lines(results: dict, thread_list: list) -> list:
    lines = []
    top = max(thread_list)
    for key, peer, thr, need in TARGETS:
        n = top if thr == "all" else thr
        label = f"{key} vs {peer}, {'all threads' if thr == 'all' else f'{thr} thread'} ({n}): ≥ {need:.1f}×"
        times = results.get((key, n))
        if times is None or not isinstance(times.get("spcomp"), float) or not isinstance(times.get(peer), float):
            lines.append(f"{label}: not measured")
            continue
        got = times[peer] / times["spcomp"]
        paired = sorted(times.get("_paired", {}).get(peer, []))
        if len(paired) >= 3:  # judged on the rounds' ratios: each round times both at one pace
            mid = statistics.median(paired)
            lines.append(f"{label}: {mid:.2f}× median of {len(paired)} rounds' ratios "
                         f"({paired[0]:.2f}-{paired[-1]:.2f}; whole-run medians {got:.2f}×) — "
                         f"{'met' if mid >= need else 'MISSED'}")
        else:
            lines.append(f"{label}: {got:.2f}× — {'met' if got >= need else 'MISSED'}")
    return lines


def threshold_notes(thread_list: list) -> list:
    """What spcomp's measured one-thread threshold was at each thread count: at the
    clamp, the host was busy when it was sampled and calls under it ran on one thread."""
    from spcomp.runtime import threads as _threads
    lines = []
    for n in thread_list:
        t = _threads.measured_threshold(n) if n > 1 else None
        if t is not None and t.value is not None:
            busy = " — the clamp: the host was busy, calls under it ran on one thread" \
                if t.value >= _threads.SPLIT_ALWAYS_WORK else ""
            lines.append(f"spcomp's one-thread threshold at {n} threads: {t.value:,} work units "
                         f"({t.samples} sample(s){', settled' if t.due is None else ', sampling again'}){busy}")
    return lines


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.kernels", description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="smaller sizes and fewer repeats (a smoke run, < 1 min)")
    ap.add_argument("--threads", help="comma-separated thread counts (default: 1 and all cores)")
    ap.add_argument("--markdown", metavar="FILE", help="also write the table and notes as Markdown to FILE")
    ap.add_argument("--only", help="comma-separated subset of: compile,spmv,spmm,add,spgemm,sddmm,mttkrp")
    ap.add_argument("--wait-idle", type=float, default=0, metavar="SECONDS",
                    help="first wait (at most SECONDS) until other processes leave the CPU idle")
    args = ap.parse_args(argv)

    warnings.filterwarnings("ignore", message=".*[Ss]parse.*")  # torch's beta / invariant-check notices
    sizes = QUICK if args.quick else FULL
    policy = QUICK_POLICY if args.quick else FULL_POLICY
    thread_list = C.parse_threads(args.threads)
    only = None if not args.only else {s.strip() for s in args.only.split(",") if s.strip()}

    torch, torch_why = C.optional_import("torch")
    threads = C.Threads(spcomp, torch)
    env = Env(sizes, torch, torch_why)
    llvmlite, _ = C.optional_import("llvmlite")
    tpc = threads.threadpoolctl
    versions = C.versions(spcomp=spcomp, numpy=np, scipy=scipy, torch=torch, llvmlite=llvmlite, threadpoolctl=tpc)
    rev = C.git_revision(os.path.dirname(os.path.dirname(os.path.abspath(spcomp.__file__))))
    if rev:
        versions["spcomp"] += f" (git {rev})"
    failures = []
    if args.wait_idle > 0:
        C.eprint(f"[wait] until other processes use < 5% of the CPU (at most {args.wait_idle:g} s)")
        C.wait_until_idle(args.wait_idle)
    load = C.LoadMonitor()
    t_start = time.perf_counter()

    rows = []
    if only is None or "compile" in only:
        C.eprint("[run] compile time and per-call overhead")
        threads.set(max(thread_list))
        rows += compile_rows(args.quick, env, failures)
    cases = make_cases(env, only)
    results = {}
    for case in cases:
        for n in thread_list:
            C.eprint(f"[run] {case.key}, {n} thread(s)")
            row = run_case(case, threads, n, policy, failures)
            results[(case.key, n)] = row["_times"]
            rows.append(row)
    elapsed = time.perf_counter() - t_start
    others = load.share()

    notes = ["speedup ×peer = peer time / spcomp time (above 1× spcomp is faster); times are medians of "
             f"repeated calls after {policy.warmup} warm-up call(s), at least {policy.min_repeats} samples "
             f"and {policy.target_s:g} s of samples per cell (at most {policy.max_repeats}), taken in "
             f"{policy.rounds} interleaved round(s) of the row's implementations; the targets below are "
             "judged on the median of the rounds' own ratios (both timed within a second of each other), "
             "with the table's whole-run ratio beside it",
             "scipy.sparse kernels are single-threaded: their 'all threads' rows run the same code as the 1-thread rows"]
    notes += threads.notes
    notes += threshold_notes(thread_list)
    for case in cases:
        for impl in case.impls:
            if impl.column != "spcomp":
                notes.append(f"{case.name} — {impl.column}: {impl.what}")
        for col, why in case.skipped.items():
            notes.append(f"{case.name} — {col}: skipped, {why}")
    machine = C.machine_lines(threads, _REMOVED_ENV, versions)
    if others is not None:
        machine.append(f"other processes used {others:.0%} of the machine's CPU time during the run"
                       + (" — WARNING: the numbers are skewed by that load; rerun on an idle machine "
                          "(--wait-idle 600)" if others > 0.05 else ""))
    targets = target_lines(results, thread_list) if (only is None or {"spmv", "spmm", "add", "spgemm"} & only) else []
    mode = "quick" if args.quick else "full"

    print(f"spcomp kernels vs peers ({mode} run, threads {','.join(map(str, thread_list))}, "
          f"{elapsed:.0f} s)")
    for line in machine:
        print("  " + line)
    print()
    print(C.render_text(COLUMNS, rows))
    print()
    for line in notes:
        print("- " + line)
    if targets:
        print("\ntargets (issues 4, 25)" + (", at the quick sizes: the targets are set for the full run's "
                                      "(a quick SpMV or add is under the runtime's threshold for "
                                      "splitting and runs on one thread)" if args.quick else "") + ":")
        for line in targets:
            print("  " + line)
    if failures:
        print("\nFAILED checks (not timed):")
        for f in failures:
            print("  " + f)

    if args.markdown:
        md = [f"Measured with `python -m benchmarks.kernels{' --quick' if args.quick else ''}"
              f"{' --threads ' + args.threads if args.threads else ''}` ({mode} run, {elapsed:.0f} s).", ""]
        md += [f"- {line}" for line in machine] + [""]
        md += [C.render_markdown(COLUMNS, rows), ""]
        md += [f"- {line}" for line in notes]
        if targets:
            md += ["", "Targets (issues 4, 25):", ""] + [f"- {line}" for line in targets]
        if failures:
            md += ["", "FAILED checks (not timed):", ""] + [f"- {f}" for f in failures]
        with open(args.markdown, "w", encoding="utf-8") as f:
            f.write("\n".join(md) + "\n")
        C.eprint(f"[done] wrote {args.markdown}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
