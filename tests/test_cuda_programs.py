"""A program's statements as one CUDA kernel (spcomp/program_gpu.py, backends/cuda/grid_sync.py).

Random chains of 2 to 4 statements (csr or dense matrices, dense temporaries,
element-wise statements, row sums mapped a thread or a warp per row, scatters,
``+=`` into the caller's vector, a scalar sum or a serial scalar max) run under
cuda-sim as one launch; each result is checked against
numpy.einsum and against the same statements run as kernels of their own. Every
fused kernel compiles with nvcc where it is installed. The grid-wide barrier:
the launch never has more blocks than run at once, and an oversubscribed grid
(a test-only override of that count) reports an error instead of hanging; on
its own, the barrier orders six rounds of neighbour exchanges between blocks, and
gives up (status 7) when half the grid cannot start.
"""
from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp
from hypothesis import given, settings
from hypothesis import strategies as st

import spcomp
from spcomp import program_gpu
from spcomp.backends.cuda import nvcc
from spcomp.backends.cuda.grid_sync import sim_co_resident_blocks
from spcomp.errors import KernelRuntimeError

from conftest import examples

M, N = 600, 40  # rows of A (several blocks: the barrier is crossed for real); 40 columns (a warp per
# row by default when A is dense enough)
FUNCS = ("relu", "sigmoid", "")


@st.composite
def chains(draw):
    """``(text, einsum reference of each tensor, fusable)``: 2 to 4 statements over
    ``A`` (M x N), ``x`` (N) and ``w`` (M), each reading what the one before wrote."""
    rows, cols = ["w"], ["x"]  # vectors over i (M) and over j (N)
    steps = []
    count = draw(st.integers(2, 4))
    for s in range(count):
        name = f"t{s + 1}"
        last = s == count - 1
        kinds = ["sum_rows", "elementwise", "scatter", "matrix", "add"] + (["scalar", "serial"] if last else [])
        kind = draw(st.sampled_from(kinds))
        prev = steps[-1][0] if steps else None
        pick_rows = (lambda: prev if prev in rows else draw(st.sampled_from(rows)))
        pick_cols = (lambda: prev if prev in cols else draw(st.sampled_from(cols)))
        if kind == "sum_rows":
            v = pick_cols()
            src = prev if prev and prev.startswith("m") else "A"
            steps.append((name, f"{name}[i] = {src}[i,j]*{v}[j]", ("ij,j->i", src, v)))
            rows.append(name)
        elif kind == "elementwise":
            a, b = pick_rows(), draw(st.sampled_from(rows))
            f = draw(st.sampled_from(FUNCS))
            steps.append((name, f"{name}[i] = {f}({a}[i]) + {b}[i]*2", ("elementwise", f, a, b)))
            rows.append(name)
        elif kind == "scatter":
            a = pick_rows()
            steps.append((name, f"{name}[j] = A[i,j]*{a}[i]", ("ij,i->j", "A", a)))
            cols.append(name)
        elif kind == "add":  # into the caller's vector (an output, updated in place)
            name = f"y{s + 1}"
            a = pick_rows()
            steps.append((name, f"{name}[i] += {a}[i]*2", ("add", a)))
            rows.append(name)
        elif kind == "serial":  # a max has no atomic form: one thread of the grid does it
            a = pick_rows()
            steps.append((name, f"{name} = max(i, {a}[i])", ("max", a)))
        elif kind == "matrix":
            name = f"m{s + 1}"
            a = pick_rows()
            steps.append((name, f"{name}[i,j] = A[i,j]*{a}[i]", ("ij,i->ij", "A", a)))
        else:
            a, b = pick_rows(), draw(st.sampled_from(rows))
            steps.append((name, f"{name} = {a}[i]*{b}[i]", ("i,i->", a, b)))
    return steps


def _reference(steps, env):
    env = dict(env)
    for name, _text, how in steps:
        if how[0] == "elementwise":
            _k, f, a, b = how
            v = env[a]
            v = np.maximum(v, 0) if f == "relu" else 1 / (1 + np.exp(-v)) if f == "sigmoid" else v
            env[name] = v + env[b] * 2
        elif how[0] == "add":
            env[name] = env[name] + env[how[1]] * 2
        elif how[0] == "max":
            env[name] = env[how[1]].max()
        else:
            env[name] = np.einsum(how[0], *(env[o] for o in how[1:]))
    return env


def separately(k, ops):
    """The program run with every statement a kernel of its own."""
    fused = [seg for kind, seg, _ in k.segments if kind == "fused"]
    for seg in fused:
        seg.wants_threads = lambda env: True
    try:
        return k(**ops)
    finally:
        for seg in fused:
            del seg.wants_threads


def fused_kernels(k):
    return [seg for kind, seg, _ in k.segments if isinstance(seg, program_gpu.GpuProgramRun)]


@settings(max_examples=examples(12), deadline=None)
@given(chains(), st.sampled_from(["csr", "dense"]), st.sampled_from([0.05, 0.6]), st.integers(0, 2**16))
def test_random_chains_run_as_one_launch(steps, fmt, density, seed):
    text = "; ".join(t for _n, t, _h in steps)
    out = steps[-1][0]
    added = [n for n, _t, how in steps if how[0] == "add"]
    outputs = list(dict.fromkeys(added + [out]))
    # every temporary named dense: a sparse one (what the compiler would choose for
    # A*w of a csr A) is assembled between launches on these backends
    temporaries = {n: "dense" for n, _t, _h in steps if n not in outputs}
    k = spcomp.compile(text, formats={**({"A": fmt} if "A[" in text else {}), **temporaries}, backend="cuda-sim",
                       outputs=outputs)
    A = sp.random(M, N, density=density, format="csr", random_state=seed)
    rng = np.random.default_rng(seed)
    x, w = rng.standard_normal(N), rng.standard_normal(M)
    old = {n: rng.standard_normal(M) for n in added}  # the += vectors' values before the call
    ops = {n: v for n, v in {"A": A if fmt == "csr" else A.toarray(), "x": x, "w": w}.items() if n in k.inputs}
    given = {n: v.copy() for n, v in old.items()}
    got = k(**ops, **given)
    got = got if len(outputs) > 1 else {out: got}
    assert k.last_launches == k.launches == 1, k.loops  # every template writes a dense array in one launch
    assert "one native function, one CUDA kernel launch" in k.loops
    want = _reference(steps, {"A": A.toarray(), "x": x, "w": w, **old})
    for name in outputs:
        assert np.allclose(got[name], want[name], rtol=1e-10, atol=1e-10), (text, name, got[name], want[name])
    assert all(got[n] is given[n] for n in added)  # updated in place
    alone = separately(k, {**ops, **{n: v.copy() for n, v in old.items()}})
    alone = alone if len(outputs) > 1 else {out: alone}
    assert k.last_launches == len(steps)
    for name in outputs:
        assert np.allclose(got[name], alone[name], rtol=1e-12, atol=1e-12)


def test_rows_pick_a_warp_or_a_thread_inside_the_one_kernel():
    k = spcomp.compile("t[i] = A[i,j]*x[j]; y[i] = relu(t[i]) + t[i]*2", formats={"A": "csr"}, backend="cuda-sim")
    x = np.linspace(-1, 1, N)
    for density, how in ((0.05, "gpu-thread"), (0.6, "gpu-warp")):
        A = sp.random(M, N, density=density, format="csr", random_state=5)
        t = A @ x
        assert np.allclose(k(A=A, x=x), np.maximum(t, 0) + t * 2)
        assert k.last_launches == 1
        assert k.backend == "cuda-sim" and k._target.last_launch["mapping"] == f"one kernel: {how}, gpu-thread"
    source = k.source
    assert source.count("__global__ void") == 1 and "spc_grid_sync(" in source.split("__global__")[1]


def test_a_block_per_row_statement_shares_the_kernel_too():
    # SpMM's default is a block per row with the row staged in shared memory
    k = spcomp.compile("Y[i,k] = A[i,j]*B[j,k]; Z[i,k] = relu(Y[i,k]) * 2; s = Z[i,k]*Z[i,k]",
                       formats={"A": "csr"}, backend="cuda-sim")
    A = sp.random(500, 64, density=0.3, format="csr", random_state=1)
    B = np.random.default_rng(1).standard_normal((64, 48))
    Z = np.maximum(A @ B, 0) * 2
    assert np.isclose(k(A=A, B=B), np.einsum("ik,ik->", Z, Z), rtol=1e-12)
    assert k.last_launches == 1
    assert k._target.last_launch["mapping"] == "one kernel: gpu-block, gpu-thread, gpu-thread"


def test_statements_needing_host_work_stay_kernels_of_their_own():
    # a transposed copy of a temporary cannot join (the runtime makes it between
    # launches); a csr output joins (counted, scanned and filled inside the launch:
    # test_cuda_programs_sparse_join.py), and so do dcsr and one thread's appends
    # (test_cuda_programs_sparse_first.py)
    k = spcomp.compile("t[i] = A[i,j]*x[j]; y[i] = t[i]*2; C[i,j] = A[i,j]*y[i]",
                       formats={"A": "csr", "C": "csr"}, backend="cuda-sim")
    assert [kind for kind, _s, _r in k.segments] == ["fused"]
    k2 = spcomp.compile("M[i,j] = A[i,j]*w[i]; Z[j,i] = M[i,j]*2", formats={"A": "csr", "Z": "csr"},
                        backend="cuda-sim")
    assert k2.launches == 2 and "a kernel of its own" in k2.loops
    A = sp.random(M, N, density=0.2, format="csr", random_state=2)
    x = np.arange(N, dtype=float)
    got = k(A=A, x=x)
    assert k.last_launches == 1
    want = A.multiply((2 * (A @ x))[:, None]).toarray()
    assert np.allclose(got.to_numpy(), want)


PROGRAMS = [
    ("t[i] = A[i,j]*x[j]; y[i] = sigmoid(t[i]) + t[i]*2; s = y[i]*t[i]", {"A": "csr"}),
    ("t[i] = A[i,j]*x[j]; u[j] = A[i,j]*t[i]", {"A": "csr"}),
    ("t[i] = A[i,j]*x[j]; M[i,j] = A[i,j]*t[i]; z[i] = M[i,j]*x[j]", {"A": "dense"}),
    ("M[i,k] = A[i,j]*B[j,k]; t[i] = relu(M[i,k]) * x[k]", {"A": "csr"}),
]


@pytest.mark.skipif(not nvcc.nvcc_available(), reason="nvcc (the CUDA toolkit) is not installed")
@pytest.mark.parametrize("text,formats", PROGRAMS)
def test_every_fused_kernel_compiles_with_nvcc(text, formats):
    k = spcomp.compile(text, formats=formats, backend="cuda-sim")
    (seg,) = fused_kernels(k)
    A = sp.random(M, N, density=0.6, format="csr", random_state=1)
    ops = {"A": A if formats["A"] == "csr" else A.toarray(), "x": np.ones(N), "B": np.ones((N, N))}
    k(**{n: v for n, v in ops.items() if n in k.inputs})  # builds the warp-per-row kernel where it picks one
    assert len(seg.built) >= 1
    for built in seg.built.values():
        report = nvcc.check_source(built.compiled[0], arch="sm_90")
        assert set(report) == {built.function.name}


def _big_call():
    k = spcomp.compile("t[i] = A[i,j]*x[j]; y[i] = t[i]*3", formats={"A": "csr"}, backend="cuda-sim")
    A = sp.random(40 * 256, 8, density=0.3, format="csr", random_state=3)
    return k, {"A": A, "x": np.arange(8.0)}, 3 * (A @ np.arange(8.0))


def test_the_grid_never_exceeds_the_blocks_that_run_at_once(monkeypatch):
    from spcomp.backends.cuda.sim import SimModule
    launches = []
    real = SimModule.launch

    def spy(self, name, args, grid=1, block=1, workers=None):
        launches.append((name, grid, block, workers))
        return real(self, name, args, grid, block, workers)
    monkeypatch.setattr(SimModule, "launch", spy)
    monkeypatch.setenv("SPCOMP_SIM_WORKERS", "3")
    k, ops, want = _big_call()
    assert np.allclose(k(**ops), want)
    (name, grid, block, workers), = launches
    assert name.startswith("statements_") and grid == workers == 3 == sim_co_resident_blocks()
    assert k._target.last_launch["why"] == "40 blocks wanted, 3 resident at once"


def test_an_oversubscribed_grid_reports_an_error_instead_of_hanging(monkeypatch):
    k, ops, want = _big_call()
    monkeypatch.setenv("SPCOMP_SIM_WORKERS", "2")
    monkeypatch.setattr(program_gpu, "co_resident_blocks", lambda target, built: 40)  # test-only: lie
    monkeypatch.setattr(program_gpu, "SYNC_TIMEOUT_S", 0.2)
    with pytest.raises(KernelRuntimeError, match="grid-wide barrier") as info:
        k(**ops)
    assert "t[i] = A[i,j]*x[j]" in str(info.value)
    monkeypatch.undo()
    assert np.allclose(k(**ops), want) and k.last_launches == 1


ROUNDS_KERNEL = r"""
extern "C" __global__ void rounds(int64_t rounds, int64_t* cells, int64_t* seen, unsigned int* bar,
                                  int64_t limit_ns, int32_t* spc_status) {
  // each round: every block writes its cell, then (after the barrier) reads its neighbour's
  int64_t b = blockIdx.x, n = gridDim.x;
  for (int64_t r = 0; r < rounds; ++r) {
    if (threadIdx.x == 0) cells[b] = r * 1000 + b;
    if (spc_grid_sync(bar, limit_ns)) { atomicMax(spc_status, 7); return; }
    if (threadIdx.x == 0) seen[r * n + b] = cells[(b + 1) % n];
    if (spc_grid_sync(bar, limit_ns)) { atomicMax(spc_status, 7); return; }
  }
}
"""


@pytest.mark.parametrize("workers,grid,status", [(4, 4, 0), (2, 4, 7)])
def test_the_grid_barrier_orders_every_round_or_gives_up(monkeypatch, workers, grid, status):
    from spcomp.backends.cuda.grid_sync import GRID_SYNC
    from spcomp.backends.cuda.prelude import PRELUDE
    from spcomp.backends.cuda.sim import compile_sim
    sim = compile_sim(PRELUDE + GRID_SYNC + ROUNDS_KERNEL)
    rounds = 6
    cells, seen = np.zeros(grid, dtype=np.int64), np.full(rounds * grid, -1, dtype=np.int64)
    bar = np.zeros(4, dtype=np.uint32)
    got = sim.launch("rounds", [rounds, cells, seen, bar, 200_000_000], grid=grid, block=64, workers=workers)
    assert got == status
    if status == 0:  # every block saw its neighbour's value of the same round
        want = [r * 1000 + (b + 1) % grid for r in range(rounds) for b in range(grid)]
        assert seen.tolist() == want
    else:  # two blocks ran and waited for two that could not start: each gave up after 0.2 s
        assert bar[2] == 1
