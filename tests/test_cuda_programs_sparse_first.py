"""Sparse outputs stored compressed first inside a program's one CUDA kernel (lower/device_compact.py).

A statement whose output is dcsr, csf or a 2-d coo joins the run's launch through
its dense-first stand-in (csr, ``dcc``): counted, prefix-summed and filled as
test_cuda_programs_sparse_join.py checks, then one more phase writes the output's
first level from the row starts (a second scan, over "the row has entries" flags,
places dcsr's rows). The 32 -> 64-bit rerun is test_cuda_programs_sparse_join.py's,
for these formats too. A later statement reads the output after the barrier, also
one whose threads split its top positions (their count is read on the device).
Results under cuda-sim against numpy.einsum and the statements run one by one
(array for array); the kernels compile with nvcc.
"""
from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp
from hypothesis import given, settings
from hypothesis import strategies as st

import spcomp
from spcomp.backends.cuda import nvcc, sim
from spcomp.backends.cuda.emit import emit_module
from spcomp.backends.cuda.signature import signatures
from spcomp.formats import Format
from spcomp.ir import nodes as n
from spcomp.ir.types import I64, ptr
from spcomp.lower import device_compact, device_scan, record
from spcomp.runtime import launch

from conftest import examples
from test_cuda_programs import fused_kernels, separately

M, N = 600, 40  # several blocks of 256 threads: the barriers are crossed for real
B = sp.random(M, N, density=0.3, format="csr", random_state=12)
A = sp.csr_matrix(sp.random(M, N, density=0.2, format="csr", random_state=11).multiply(
    (np.arange(M) % 3 != 0)[:, None]))  # every third row empty: dcsr skips them
X = np.linspace(-1, 1, N)
FIRST = ["dcsr", "coo"]


@pytest.fixture(autouse=True)
def _several_blocks(monkeypatch):
    monkeypatch.setenv("SPCOMP_SIM_WORKERS", "4")


def _compile(text, fmt, outputs, extra=None):
    formats = {"A": "csr", "B": "csr", "T": fmt, **(extra or {})}
    used = {n: f for n, f in formats.items() if f"{n}[" in text}
    return spcomp.compile(text, formats=used, backend="cuda-sim", outputs=outputs)


def _same_arrays(got, want):
    assert got.format == want.format
    for l, (g, w) in enumerate(zip(got.levels, want.levels)):
        for a in w:
            assert np.array_equal(g[a], w[a]), (l, a)
    assert np.array_equal(got.vals, want.vals)


@pytest.mark.parametrize("fmt", FIRST)
def test_a_compressed_first_temporary_joins_and_a_position_split_reader_reads_it(fmt):
    k = _compile("T[i,j] = A[i,j] * B[i,j]; y[i] = T[i,j] * x[j]", fmt, ["T", "y"])
    assert k.launches == 1, k.loops
    (seg,) = fused_kernels(k)
    assert seg.steps[0].stored == Format.parse(fmt) and "then its first level written from the row starts" in k.loops
    out = k(A=A, B=B, x=X)
    want = A.multiply(B)
    assert k.last_launches == 1 and seg.reruns == 0
    assert out["T"].format == Format.parse(fmt) and np.allclose(out["T"].to_numpy(), want.toarray())
    assert np.allclose(out["y"], want @ X)
    _same_arrays(out["T"], separately(k, {"A": A, "B": B, "x": X})["T"])


def test_dcsr_keeps_only_the_rows_with_entries():
    k = _compile("T[i,j] = A[i,j] * B[i,j]; u[j] = T[i,j] * w[i]", "dcsr", ["T", "u"])
    assert k.launches == 1, k.loops
    w = np.linspace(1, 2, M)
    out = k(A=A, B=B, w=w)
    T = out["T"]
    want = A.multiply(B).tocsr()
    want.eliminate_zeros()  # A's emptied rows hold explicit zeros: the kernel skips computed zeros
    rows = np.flatnonzero(np.diff(want.indptr))
    assert 0 < len(rows) < M and np.array_equal(T.levels[0]["crd"], rows)
    assert T.levels[0]["pos"].tolist() == [0, len(rows)]
    assert np.allclose(out["u"], w @ want)


def test_a_csf_output_of_order_3_joins():
    rng = np.random.default_rng(5)
    Xt = rng.standard_normal((90, 6, 5)) * (rng.random((90, 6, 5)) < 0.2)
    Xt[::4] = 0  # empty slices
    k = spcomp.compile("T[i,j,k] = X[i,j,k] * 2; z[i,j] = T[i,j,k] * v[k]", formats={"X": "dcc", "T": "csf"},
                       backend="cuda-sim", outputs=["T", "z"])
    assert k.launches == 1, k.loops
    v = np.arange(5.0)
    out = k(X=Xt, v=v)
    assert np.allclose(out["T"].to_numpy(), 2 * Xt) and np.allclose(out["z"], (2 * Xt) @ v)
    _same_arrays(out["T"], separately(k, {"X": Xt, "v": v})["T"])


@pytest.mark.parametrize("fmt", FIRST)
def test_too_small_arrays_run_the_launch_again_with_room(monkeypatch, fmt):
    monkeypatch.setattr(launch, "FIRST_CAPACITY", 3)
    k = _compile("T[i,j] = A[i,j] + B[i,j]; y[i] = T[i,j] * x[j]", fmt, ["T", "y"])
    (seg,) = fused_kernels(k)
    out = k(A=A, B=B, x=X)
    assert seg.reruns == 1 and seg.gave_up == 0
    assert np.allclose(out["T"].to_numpy(), (A + B).toarray()) and np.allclose(out["y"], (A + B) @ X)


@pytest.mark.parametrize("chunk", [1, 7])
def test_the_row_flags_scan_over_many_chunks(monkeypatch, chunk):
    monkeypatch.setattr(device_scan, "SCAN_CHUNK", chunk)
    k = _compile("T[i,j] = A[i,j] * B[i,j]; y[i] = T[i,j] * x[j]", "dcsr", ["T", "y"])
    out = k(A=A, B=B, x=X)
    _same_arrays(out["T"], separately(k, {"A": A, "B": B, "x": X})["T"])


def test_the_first_level_is_a_phase_of_its_own():
    k = _compile("T[i,j] = A[i,j] * B[i,j]; y[i] = T[i,j] * x[j]", "dcsr", ["T", "y"])
    (seg,) = fused_kernels(k)
    source = next(iter(seg.built.values())).compiled[0]
    # count | 3 scan steps | fill | first level | y
    assert source.count("spc_grid_sync((unsigned int*)") == 6
    assert "the first level from the row starts" in source


def test_formats_without_a_stand_in_join_on_one_thread():
    assert device_compact.first_kind(Format.parse("coo")) == device_compact.COORDINATES
    assert device_compact.first_kind(Format.parse("dcsr")) == device_compact.UNIQUE
    assert device_compact.stand_in(Format.parse("csr")) is None  # dense first: joins as it is
    assert device_compact.stand_in(Format.parse("c(nonunique)q(nonunique)q")) is None  # a 3-d coo
    rng = np.random.default_rng(1)
    Xt = rng.standard_normal((30, 4, 3)) * (rng.random((30, 4, 3)) < 0.3)
    k = spcomp.compile("T[i,j,k] = X[i,j,k] * 2; z[i,j] = T[i,j,k] * v[k]", formats={"X": "dcc", "T": "coo"},
                       backend="cuda-sim", outputs=["T", "z"])
    assert k.launches == 1, k.loops
    (seg,) = fused_kernels(k)
    assert seg.steps[0].stored is None and seg.steps[0].bounded  # appended by one thread (bounded appends)
    out = k(X=Xt, v=np.ones(3))
    assert np.allclose(out["T"].to_numpy(), 2 * Xt) and np.allclose(out["z"], (2 * Xt).sum(axis=2))


@pytest.mark.skipif(not nvcc.nvcc_available(), reason="nvcc (the CUDA toolkit) is not installed")
@pytest.mark.parametrize("fmt", FIRST + ["csf"])
def test_every_joined_kernel_compiles_with_nvcc(fmt):
    if fmt == "csf":
        k = spcomp.compile("T[i,j,k] = X[i,j,k] * 2; z[i,j] = T[i,j,k] * v[k]", formats={"X": "dcc", "T": "csf"},
                           backend="cuda-sim")
    else:
        k = _compile("T[i,j] = A[i,j] * B[i,j]; y[i] = T[i,j] * x[j]", fmt, ["y"])
    (seg,) = fused_kernels(k)
    for built in seg.built.values():
        report = nvcc.check_source(built.compiled[0], arch="sm_90")
        assert set(report) == {built.function.name}


@st.composite
def _cases(draw):
    rows, cols = draw(st.integers(1, 300)), draw(st.integers(1, 12))
    density, empty = draw(st.sampled_from([0.0, 0.05, 0.4])), draw(st.integers(1, 4))
    seed = draw(st.integers(0, 2**16))
    fmt = draw(st.sampled_from(FIRST))
    op = draw(st.sampled_from(["*", "+"]))
    reader = draw(st.sampled_from(["y[i] = T[i,j] * x[j]", "u[j] = T[i,j] * w[i]", "Y[i,j] = T[i,j] + 1",
                                   "S[i,j] = T[i,j] + Q[i,j]"]))  # (S: one thread's bounded appends)
    return rows, cols, density, empty, seed, fmt, op, reader


@settings(max_examples=examples(4), deadline=None)  # each example compiles its kernels with g++
@given(_cases())
def test_random_compressed_first_outputs_match_einsum(case):
    rows, cols, density, empty, seed, fmt, op, reader = case
    P = sp.random(rows, cols, density=density, format="csr", random_state=seed)
    P = sp.csr_matrix(P.multiply((np.arange(rows) % empty != 0)[:, None])) if empty > 1 else P
    Q = sp.random(rows, cols, density=0.3, format="csr", random_state=seed + 1)
    x, w = np.linspace(-1, 1, cols), np.linspace(1, 2, rows)
    text = f"T[i,j] = P[i,j] {op} Q[i,j]; {reader}"
    out_name = reader[0]
    formats = {"P": "csr", "Q": "csr", "T": fmt, **({"S": "csr"} if out_name == "S" else {})}
    k = spcomp.compile(text, formats=formats, backend="cuda-sim", outputs=["T", out_name])
    assert k.launches == 1, k.loops
    ops = {"P": P, "Q": Q, **({"x": x} if out_name == "y" else {"w": w} if out_name == "u" else {})}
    got = k(**ops)
    T = np.einsum("ij,ij->ij", P.toarray(), Q.toarray()) if op == "*" else P.toarray() + Q.toarray()
    want = {"y": lambda: np.einsum("ij,j->i", T, x), "u": lambda: np.einsum("ij,i->j", T, w),
            "Y": lambda: T + 1, "S": lambda: T + Q.toarray()}[out_name]()
    result = got[out_name].to_numpy() if out_name == "S" else got[out_name]
    assert np.allclose(got["T"].to_numpy(), T) and np.allclose(result, want)
    _same_arrays(got["T"], separately(k, ops)["T"])


# ------------------------------------------- the block scan (backends/cuda/team.py)

def _chunk_scan_function():
    """``out[q] = start[c] + counts[chunk c's rows up to q]``, a block per chunk of
    ``size`` rows: a member loop that scans a scalar, as device_scan's step 3."""
    counts, out, start = n.Var("counts", ptr(I64)), n.Var("out", ptr(I64)), n.Var("start", ptr(I64))
    totals, rows, size, chunks = n.Var("totals", ptr(I64)), n.Var("rows", I64), n.Var("size", I64), n.Var("chunks", I64)
    c, q, run = n.Var("c", I64), n.Var("q", I64), n.Var("running", I64)
    first = n.Binary("*", c, size)
    body = n.Block((n.Declare(run, n.Load(start, c)),
                    n.For(q, first, n.Binary("min", n.Binary("+", first, size), rows), n.Block((
                        n.Assign(run, n.Binary("+", run, n.Load(counts, q))),
                        n.Store(out, q, run))), parallel="gpu-thread"),
                    n.Store(totals, c, run)))
    return n.Function("chunk_scan", (counts, out, start, totals, rows, size, chunks),
                      n.Block((n.For(c, n.i64(0), chunks, body, parallel="gpu-block"), n.Return())))


@pytest.mark.parametrize("rows,size", [(1, 1), (700, 64), (700, 256), (1000, 300), (513, 1024)])
def test_a_member_loop_that_scans_a_scalar_gives_the_sequential_sums(rows, size):
    f = _chunk_scan_function()
    source = emit_module(n.Module((f,)))
    assert "spc_block_scan(" in source
    mod = sim.compile_sim(source, signatures(n.Module((f,))))
    rng = np.random.default_rng(rows + size)
    counts = rng.integers(0, 5, rows).astype(np.int64)
    chunks = -(-rows // size)
    start = rng.integers(0, 100, chunks).astype(np.int64)
    out, totals = np.zeros(rows, dtype=np.int64), np.zeros(chunks, dtype=np.int64)
    assert mod.launch("chunk_scan", [counts, out, start, totals, rows, size, chunks], 3, 64) == 0
    for k in range(chunks):
        part = counts[k * size:(k + 1) * size]
        assert np.array_equal(out[k * size:(k + 1) * size], start[k] + np.cumsum(part))
        assert totals[k] == start[k] + part.sum()
    if nvcc.nvcc_available():
        nvcc.check_source(source)


def test_a_block_of_partial_warps_runs_the_statements_one_by_one(monkeypatch):
    from spcomp import program_gpu
    monkeypatch.setattr(program_gpu, "DEFAULT_BLOCK", 48)  # the scan's warp shuffles need whole warps
    k = _compile("T[i,j] = A[i,j] * B[i,j] * 2; y[i] = T[i,j] * x[j]", "dcsr", ["T", "y"])  # (not cached)
    assert k.launches == 2 and not fused_kernels(k)
    assert np.allclose(k(A=A, B=B, x=X)["y"], 2 * (A.multiply(B) @ X))


# ------------------------------------ bounded appends: one thread, a fixed capacity

BOUNDED = "T[i,j] = A[i,j] * B[i,j]; S[i,j] = T[i,j] + B[i,j]; y[i] = S[i,j] * x[j]"


def test_a_serial_statement_with_bounded_appends_joins_after_a_dcsr_temporary():
    # S co-iterates T's stored rows with B's: one thread appends it (bounded appends)
    k = _compile(BOUNDED, "dcsr", ["T", "S", "y"], {"S": "csr"})
    assert k.launches == 1, k.loops
    (seg,) = fused_kernels(k)
    assert seg.steps[0].stored is not None and seg.steps[1].bounded and "one thread appends it" in k.loops
    out = k(A=A, B=B, x=X)
    want = A.multiply(B) + B
    assert seg.reruns == 0 and np.allclose(out["S"].to_numpy(), want.toarray()) and np.allclose(out["y"], want @ X)
    alone = separately(k, {"A": A, "B": B, "x": X})
    _same_arrays(out["S"], alone["S"])
    _same_arrays(out["T"], alone["T"])


def test_bounded_appends_that_do_not_fit_run_the_launch_again(monkeypatch):
    monkeypatch.setattr(launch, "FIRST_CAPACITY", 3)
    k = _compile(BOUNDED, "dcsr", ["S", "y"], {"S": "csr"})
    (seg,) = fused_kernels(k)
    out = k(A=A, B=B, x=X)
    # T's scan reports first (S does not run), then S's appends: each output gets room once
    assert seg.reruns == 2 and seg.gave_up == 0
    want = A.multiply(B) + B
    assert np.allclose(out["S"].to_numpy(), want.toarray()) and np.allclose(out["y"], want @ X)


def test_bounded_appends_past_32_bit_positions_run_again_with_64_bit_indices(monkeypatch):
    monkeypatch.setattr(record, "INDEX32_LIMIT", 300)
    k = _compile("S[i,j] = T[i,j] + B[i,j]; y[i] = S[i,j] * x[j]", "dcsr", ["S", "y"], {"S": "csr"})
    assert k.launches == 1, k.loops
    T = sp.random(M, N, density=0.1, format="csr", random_state=3)
    out = k(T=T, B=B, x=X)
    (seg,) = fused_kernels(k)
    want = T + B
    assert want.nnz > 300 and seg.reruns >= 1 and any(bits == 64 for bits, _hows in seg.built)
    assert np.allclose(out["S"].to_numpy(), want.toarray()) and np.allclose(out["y"], want @ X)


@pytest.mark.skipif(not nvcc.nvcc_available(), reason="nvcc (the CUDA toolkit) is not installed")
def test_the_bounded_append_kernel_compiles_with_nvcc():
    k = _compile(BOUNDED, "dcsr", ["S", "y"], {"S": "csr"})
    (seg,) = fused_kernels(k)
    for built in seg.built.values():
        assert set(nvcc.check_source(built.compiled[0], arch="sm_90")) == {built.function.name}


def test_a_reader_split_over_the_top_positions_of_one_threads_dcsr_reads_their_count_on_the_device():
    k = _compile("S[i,j] = T[i,j] + B[i,j]; y[i] = S[i,j] * x[j]", "dcsr", ["S", "y"], {"S": "dcsr"})
    assert k.launches == 1, k.loops
    (seg,) = fused_kernels(k)
    assert seg.steps[0].bounded and seg.steps[0].stored is None and "by positions" in k.loops
    T = sp.random(M, N, density=0.1, format="csr", random_state=3)
    out = k(T=T, B=B, x=X)
    assert np.allclose(out["S"].to_numpy(), (T + B).toarray()) and np.allclose(out["y"], (T + B) @ X)
