"""Sparse outputs inside a program's one CUDA kernel (spcomp/program_gpu.py, lower/device_scan.py).

A statement whose output is csr, ``dc`` or dense-then-compressed of higher order
is counted, prefix-summed on the device and filled between grid-wide barriers of
the run's one launch, into arrays the host allocated before it at an estimate;
a later statement of the run reads the sparse temporary after the barrier. When
the estimate is too small the kernel fills nothing and the host runs the launch
again with room for what it counted. Random chains of such statements run under
cuda-sim against numpy.einsum and against the statements run one by one (random
programs with any temporary format: test_cuda_programs_join.py); the joined
kernels compile with nvcc.
"""
from __future__ import annotations

import re

import numpy as np
import pytest
import scipy.sparse as sp
from hypothesis import given, settings
from hypothesis import strategies as st

import spcomp
from spcomp import program_gpu
from spcomp.backends.cuda import nvcc
from spcomp.errors import DTypeError, KernelRuntimeError, OperandError, ShapeError
from spcomp.lower import device_scan, record
from spcomp.lower.device_scan import CAPACITY_STATUS
from spcomp.program_gpu_sparse import SparseRows
from spcomp.runtime import launch
from spcomp.testing.programs import close

from conftest import examples
from test_cuda_programs import fused_kernels, separately

M, N, K = 600, 40, 24  # several blocks of 256 threads: the barriers are crossed for real
A = sp.random(M, N, density=0.2, format="csr", random_state=11)
B = sp.random(M, N, density=0.3, format="csr", random_state=12)
C = sp.random(N, K, density=0.2, format="csr", random_state=13)
X = np.linspace(-1, 1, N)
W = np.random.default_rng(11).standard_normal(M)
U = np.random.default_rng(12).standard_normal(K)
OPERANDS = {"A": A, "B": B, "C": C, "x": X, "w": W, "u": U}
DENSE = {"A": A.toarray(), "B": B.toarray(), "C": C.toarray(), "x": X, "w": W, "u": U}
INPUT_FORMATS = {"A": "csr", "B": "csr", "C": "csr"}


@pytest.fixture(autouse=True)
def _several_blocks(monkeypatch):
    # four resident blocks under cuda-sim whatever the host's CPUs: the scan, run by
    # one thread of the grid, would show if every block ran it
    monkeypatch.setenv("SPCOMP_SIM_WORKERS", "4")


def _compile(text, formats=None, **kw):
    used = {n: f for n, f in {**INPUT_FORMATS, **(formats or {})}.items() if re.search(rf"\b{n}\[", text)}
    return spcomp.compile(text, formats=used, backend="cuda-sim", **kw)


def _ops(k) -> dict:
    return {n: OPERANDS[n] for n in k.inputs}


def _dense(v):
    return v.to_numpy() if hasattr(v, "to_numpy") else np.asarray(v)


def test_a_csr_temporary_joins_the_launch_and_a_later_statement_reads_it():
    k = _compile("T[i,j] = A[i,j] * B[i,j]; y[i] = T[i,j] * x[j]", {"T": "csr"})
    assert k.launches == 1, k.loops
    (seg,) = fused_kernels(k)
    assert seg.steps[0].sparse and "T inside the launch: counted, a two-level prefix sum" in k.loops
    y = k(A=A, B=B, x=X)
    assert k.last_launches == 1 and seg.reruns == 0
    assert np.allclose(y, A.multiply(B) @ X)


def test_a_returned_sparse_output_is_cut_to_its_entries():
    k = _compile("y[i] = A[i,j] * x[j]; T[i,j] = A[i,j] * B[i,j] * y[i]", {"T": "dc"}, outputs=["y", "T"])
    assert k.launches == 1, k.loops
    out = k(A=A, B=B, x=X)
    want = A.multiply(B).multiply((A @ X)[:, None])
    T = out["T"]
    assert T.nnz == want.nnz and len(T.vals) == T.nnz  # no room of the estimate left over
    assert np.allclose(T.to_numpy(), want.toarray()) and np.allclose(out["y"], A @ X)


def test_a_product_temporary_with_a_workspace_joins():
    k = _compile("T[i,k] = A[i,j] * C[j,k]; z[i] = relu(T[i,k]) * u[k]", {"T": "csr"})
    assert k.launches == 1, k.loops
    got = k(A=A, C=C, u=U)
    assert np.allclose(got, np.maximum((A @ C).toarray(), 0) @ U)


def test_a_dense_then_compressed_order_3_output_joins():
    rng = np.random.default_rng(5)
    Xt = rng.standard_normal((300, 6, 5)) * (rng.random((300, 6, 5)) < 0.3)
    Yt = rng.standard_normal((300, 6, 5)) * (rng.random((300, 6, 5)) < 0.5)
    k = spcomp.compile("T[i,j,k] = X[i,j,k] * Y[i,j,k]; z[i,j] = T[i,j,k] * v[k]",
                       formats={"X": "dcc", "Y": "dcc", "T": "dcc"}, backend="cuda-sim", outputs=["T", "z"])
    assert k.launches == 1, k.loops
    v = np.arange(5.0)
    out = k(X=Xt, Y=Yt, v=v)
    assert np.allclose(out["T"].to_numpy(), Xt * Yt) and np.allclose(out["z"], (Xt * Yt) @ v)


def test_too_small_arrays_run_the_launch_again_with_room(monkeypatch):
    monkeypatch.setattr(launch, "FIRST_CAPACITY", 3)
    k = _compile("T[i,j] = A[i,j] + B[i,j]; y[i] = T[i,j] * x[j]", {"T": "csr"}, outputs=["T", "y"])
    (seg,) = fused_kernels(k)
    out = k(A=A, B=B, x=X)
    # every block left the first launch after the scan's barrier (none waited at the
    # next one for a block that saw the status early and left: grid_sync.STATUS_WORD)
    assert seg.reruns == 1 and seg.gave_up == 0
    assert np.allclose(out["T"].to_numpy(), (A + B).toarray()) and np.allclose(out["y"], (A + B) @ X)
    k(A=A, B=B, x=X)
    assert seg.reruns == 2  # each call starts from the estimate again


def test_arrays_that_never_get_room_raise_instead_of_looping(monkeypatch):
    monkeypatch.setattr(launch, "FIRST_CAPACITY", 3)
    monkeypatch.setattr(SparseRows, "grow", lambda self, bits: None)  # as if the counts kept growing
    k = _compile("T[i,j] = A[i,j] * B[i,j]; y[i] = T[i,j] * x[j]", {"T": "csr"})
    with pytest.raises(KernelRuntimeError, match="counted more entries than its arrays held"):
        k(A=A, B=B, x=X)
    assert fused_kernels(k)[0].reruns == program_gpu.RERUNS


def test_a_rerun_does_not_add_twice_into_a_dense_add(monkeypatch):
    monkeypatch.setattr(launch, "FIRST_CAPACITY", 1)
    k = _compile("y[i] += A[i,j] * x[j]; T[i,j] = A[i,j] * y[i]; z[i] = T[i,j] * x[j]", {"T": "csr"},
                 outputs=["y", "z"])
    assert k.launches == 1, k.loops
    y0 = np.arange(M, dtype=float)
    y = y0.copy()
    out = k(A=A, x=X, y=y)
    assert fused_kernels(k)[0].reruns == 1 and out["y"] is y
    assert np.allclose(y, y0 + A @ X)
    assert np.allclose(out["z"], A.multiply(y[:, None]) @ X)


def test_every_level_of_an_order_3_output_gets_room(monkeypatch):
    monkeypatch.setattr(launch, "FIRST_CAPACITY", 2)
    rng = np.random.default_rng(6)
    Xt = rng.standard_normal((40, 6, 5)) * (rng.random((40, 6, 5)) < 0.4)
    k = spcomp.compile("T[i,j,k] = X[i,j,k] * 2; s = T[i,j,k] * T[i,j,k]", formats={"X": "dcc", "T": "dcc"},
                       backend="cuda-sim", outputs=["T", "s"])
    out = k(X=Xt)
    assert fused_kernels(k)[0].reruns == 1
    assert np.allclose(out["T"].to_numpy(), 2 * Xt) and np.isclose(out["s"], np.sum(4 * Xt * Xt))


@pytest.mark.parametrize("fmt", ["csr", "dcsr", "coo"])  # (dcsr, coo: test_cuda_programs_sparse_first.py)
def test_more_entries_than_32_bit_positions_hold_run_again_with_64_bit_indices(monkeypatch, fmt):
    monkeypatch.setattr(record, "INDEX32_LIMIT", 300)  # read when the program compiles
    k = _compile("T[i,j] = A[i,j] * B[i,j] + A[i,j]; y[i] = T[i,j] * x[j]", {"T": fmt}, outputs=["T", "y"])
    assert k.launches == 1, k.loops
    out = k(A=A, B=B, x=X)
    (seg,) = fused_kernels(k)
    want = A.multiply(B) + A
    assert want.nnz > 300 and seg.reruns == 1 and any(bits == 64 for bits, _hows in seg.built)
    assert out["T"].levels[int(fmt == "csr")]["pos"].dtype == np.int64
    assert np.allclose(out["T"].to_numpy(), want.toarray()) and np.allclose(out["y"], want @ X)


def test_the_scan_steps_are_barriers_apart_and_report_a_status_of_their_own():
    k = _compile("T[i,j] = A[i,j] * B[i,j]; y[i] = T[i,j] * x[j]", {"T": "csr"})
    (seg,) = fused_kernels(k)
    source = next(iter(seg.built.values())).compiled[0]
    assert f"atomicMax(spc_status, {CAPACITY_STATUS})" in source
    assert source.count("spc_grid_sync((unsigned int*)") == 5  # count | 3 scan steps | fill | y
    assert source.count("if (((volatile int32_t*)spc_grid_barrier)[3] != 0) return;") == 5


@pytest.mark.parametrize("chunk", [1, 7, 64])
def test_the_two_level_scan_over_many_chunks(monkeypatch, chunk):
    # rows in chunks of `chunk` (the host passes it to the kernel):
    # the per-chunk scans, the chunk starts and their sums give the exact row starts,
    # empty rows and a last partial chunk included
    monkeypatch.setattr(device_scan, "SCAN_CHUNK", chunk)
    P = sp.random(M, N, density=0.05, format="csr", random_state=4)
    P = sp.csr_matrix(P.multiply((np.arange(M) % 3 != 0)[:, None]))  # every third row empty
    k = _compile("T[i,j] = P[i,j] * B[i,j] + P[i,j]; y[i] = T[i,j] * x[j]", {"P": "csr", "T": "csr"},
                 outputs=["T", "y"])
    out = k(P=P, B=B, x=X)
    alone = separately(k, {"P": P, "B": B, "x": X})["T"]  # counted, scanned on the host, filled
    T = out["T"]
    for a in ("pos", "crd"):
        assert np.array_equal(T.levels[1][a], alone.levels[1][a])
    want = P.multiply(B) + P
    assert np.array_equal(T.vals, alone.vals) and np.allclose(T.to_numpy(), want.toarray())
    assert np.allclose(out["y"], want @ X)


@pytest.mark.parametrize("ops,error", [
    ({"A": A, "B": sp.random(M, N + 1, density=0.1, format="csr"), "x": X}, ShapeError),
    ({"A": A, "B": B, "x": np.ones(N, dtype=np.complex128)}, DTypeError),
    ({"A": A, "B": B}, OperandError),
])
def test_bad_operands_are_named_before_the_launch(ops, error):
    k = _compile("T[i,j] = A[i,j] * B[i,j]; y[i] = T[i,j] * x[j]", {"T": "csr"})
    with pytest.raises(error):
        k(**ops)


def test_a_sparse_output_passed_in_is_refused():
    k = _compile("y[i] = A[i,j] * x[j]; T[i,j] = A[i,j] * y[i]", {"T": "csr"}, outputs=["y", "T"])
    with pytest.raises(OperandError):
        k(A=A, x=X, T=A)


JOINED = [
    ("T[i,j] = A[i,j] * B[i,j]; y[i] = T[i,j] * x[j]", {"T": "csr"}),
    ("T[i,k] = A[i,j] * C[j,k]; z[i] = relu(T[i,k]) * u[k]", {"T": "csr"}),
    ("y[i] = A[i,j] * x[j]; T[i,j] = A[i,j] * y[i]; S[i,j] = T[i,j] + B[i,j]", {"T": "dc", "S": "csr"}),
    ("T[i,j,k] = X[i,j,k] * 2; s = T[i,j,k] * T[i,j,k]", {"X": "dcc", "T": "dcc"}),
]


@pytest.mark.skipif(not nvcc.nvcc_available(), reason="nvcc (the CUDA toolkit) is not installed")
@pytest.mark.parametrize("text,formats", JOINED)
def test_every_joined_sparse_kernel_compiles_with_nvcc(text, formats):
    k = _compile(text, formats)
    (seg,) = fused_kernels(k)
    assert k.launches == 1, k.loops
    for built in seg.built.values():
        report = nvcc.check_source(built.compiled[0], arch="sm_90")
        assert set(report) == {built.function.name}


# ----------------------------------------------------------- random chains

@st.composite
def sparse_chains(draw):
    """``(text, formats, outputs, reference)``: 2 or 3 statements over A, B (M x N),
    C (N x K), x (N), w (M), u (K), at least one writing a sparse matrix (csr or
    dc) that a later one may read; ``reference`` maps each written name to numpy."""
    mats = {"A": "MN"}   # matrices by shape tag: MN or MK
    vecs = ["w"]         # vectors over i
    steps, formats = [], {}
    count = draw(st.integers(2, 3))
    sparse_at = draw(st.integers(0, count - 1))
    for s in range(count):
        prev = steps[-1][0] if steps else None
        sparse = s == sparse_at or draw(st.booleans())
        if sparse:
            name = f"S{s + 1}"
            src = prev if prev in mats else draw(st.sampled_from(sorted(mats)))
            kind = draw(st.sampled_from(["scale", "mul", "add", "relu", "spgemm"] if mats[src] == "MN"
                                        else ["scale", "relu"]))
            if kind == "scale":
                v = prev if prev in vecs else draw(st.sampled_from(vecs))
                text, how, tag = f"{name}[i,j] = {src}[i,j] * {v}[i]", ("ij,i->ij", src, v), mats[src]
            elif kind == "mul":
                text, how, tag = f"{name}[i,j] = {src}[i,j] * B[i,j]", ("ij,ij->ij", src, "B"), "MN"
            elif kind == "add":
                text, how, tag = f"{name}[i,j] = {src}[i,j] + B[i,j]", ("add", src, "B"), "MN"
            elif kind == "relu":
                text, how, tag = f"{name}[i,j] = relu({src}[i,j]) * 2", ("relu", src), mats[src]
            else:
                text, how, tag = f"{name}[i,k] = {src}[i,j] * C[j,k]", ("ij,jk->ik", src, "C"), "MK"
            formats[name] = draw(st.sampled_from(["csr", "dc"]))
            mats[name] = tag
        else:
            name = f"t{s + 1}"
            src = prev if prev in mats else draw(st.sampled_from(sorted(mats)))
            v = "x" if mats[src] == "MN" else "u"
            text, how = f"{name}[i] = {src}[i,{'j' if v == 'x' else 'k'}] * {v}[{'j' if v == 'x' else 'k'}]", \
                ("ij,j->i", src, v)
            vecs.append(name)
        steps.append((name, text, how))
    last = steps[-1][0]
    outputs = [n for n, _t, _h in steps[:-1] if draw(st.booleans())] + [last]
    return "; ".join(t for _n, t, _h in steps), formats, outputs, steps


def _reference(steps) -> dict:
    env = dict(DENSE)
    for name, _text, how in steps:
        if how[0] == "add":
            env[name] = env[how[1]] + env[how[2]]
        elif how[0] == "relu":
            env[name] = np.maximum(env[how[1]], 0) * 2
        else:
            env[name] = np.einsum(how[0], *(env[o] for o in how[1:]))
    return env


@settings(max_examples=examples(5), deadline=None)  # each example compiles its kernels with g++
@given(sparse_chains())
def test_random_chains_with_sparse_temporaries_run_as_one_launch(chain):
    text, formats, outputs, steps = chain
    k = _compile(text, formats, outputs=outputs)
    assert k.launches == 1, k.loops
    got = k(**_ops(k))
    got = got if isinstance(got, dict) else {outputs[0]: got}
    assert k.last_launches == 1
    want = _reference(steps)
    for name in outputs:
        assert close(got[name], want[name]), (text, formats, name)
    alone = separately(k, _ops(k))
    alone = alone if isinstance(alone, dict) else {outputs[0]: alone}
    for name in outputs:
        assert np.allclose(_dense(alone[name]), _dense(got[name]), rtol=1e-12, atol=1e-12), (text, name)

