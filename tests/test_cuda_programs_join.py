"""``+=`` and serial statements inside a program's one CUDA kernel (spcomp/program_gpu.py).

A dense ``+=`` statement joins a run: the launch starts from the caller's array
and the sums come back into it in place; a later statement of the run reads the
updated values. A serial statement (no grid-level loop) runs on one thread of
the joined kernel between the barriers. Examples pin ``k.launches == 1`` and the
in-place update; random programs with ``+=`` (spcomp.testing.programs) run under
cuda-sim against the float64 reference and against the statements run as
kernels of their own. Every new kind of fused kernel compiles with nvcc.
"""
from __future__ import annotations

import warnings

import numpy as np
import pytest
import scipy.sparse as sp
from hypothesis import given, settings
from hypothesis import strategies as st

import spcomp
from spcomp.backends.cuda import nvcc
from spcomp.backends.cuda.grid_sync import SERIAL_THREAD
from spcomp.errors import DTypeError, OperandError, ShapeError, TranspositionWarning, UnsupportedError
from spcomp.testing.programs import close, program_operands, programs, reference_program

from conftest import examples
from test_cuda_programs import fused_kernels, separately

M, N = 600, 40  # several blocks of 256 threads: the barrier is crossed for real
A = sp.random(M, N, density=0.2, format="csr", random_state=7)
X = np.linspace(-1, 1, N)
W = np.random.default_rng(7).standard_normal(M)


def _compile(text, **kw):
    return spcomp.compile(text, formats={"A": "csr"}, backend="cuda-sim", **kw)


@pytest.fixture(autouse=True)
def _several_blocks(monkeypatch):
    # four resident blocks under cuda-sim whatever the host's CPUs: a grid of more
    # than one block, so a serial statement run by every block would show
    monkeypatch.setenv("SPCOMP_SIM_WORKERS", "4")


def test_a_dense_add_joins_the_run_and_updates_the_callers_array_in_place():
    k = _compile("t[i] = A[i,j]*x[j]; y[i] += relu(t[i])*2")
    assert k.launches == 1, k.loops
    y0 = np.arange(M, dtype=float)
    y = y0.copy()
    got = k(A=A, x=X, y=y)
    assert got is y and k.last_launches == 1
    assert np.allclose(y, y0 + 2 * np.maximum(A @ X, 0))
    k(A=A, x=X, y=y)  # adds again
    assert np.allclose(y, y0 + 4 * np.maximum(A @ X, 0))


def test_a_later_statement_reads_the_updated_sums():
    k = _compile("y[i] += A[i,j]*x[j]; z[i] = y[i]*3 + w[i]", outputs=["y", "z"])
    assert k.launches == 1, k.loops
    y0 = np.full(M, 0.5)
    y = y0.copy()
    got = k(A=A, x=X, w=W, y=y)
    assert got["y"] is y and k.last_launches == 1
    assert np.allclose(y, y0 + A @ X)
    assert np.allclose(got["z"], (y0 + A @ X) * 3 + W)


def test_a_scalar_add_and_a_block_per_row_add_join():
    B = np.random.default_rng(3).standard_normal((N, 48))
    k = _compile("Y[i,k] += A[i,j]*B[j,k]; s += Y[i,k]*Y[i,k]", outputs=["Y", "s"])
    assert k.launches == 1, k.loops
    Y0 = np.random.default_rng(4).standard_normal((M, 48))
    Y = Y0.copy()
    got = k(A=A, B=B, Y=Y, s=1.5)
    want = Y0 + A @ B
    assert got["Y"] is Y and np.allclose(Y, want)
    assert isinstance(got["s"], float) and np.isclose(got["s"], 1.5 + np.sum(want * want), rtol=1e-12)
    cell = np.array(2.0)  # a 0-d array is updated in place too
    got = k(A=A, B=B, Y=Y0.copy(), s=cell)
    assert np.isclose(cell, 2.0 + np.sum(want * want), rtol=1e-12)


def test_an_add_into_a_column_major_array_still_updates_it():
    k = _compile("t[i,k] = A[i,j]*B[j,k]; Y[i,k] += t[i,k]*2")
    B = np.ones((N, 3))
    Y = np.asfortranarray(np.ones((M, 3)))
    got = k(A=A, B=B, Y=Y)
    assert k.last_launches == 1 and got is Y
    assert np.allclose(Y, 1 + 2 * (A @ B))


@pytest.mark.parametrize("given,error", [
    (np.zeros(M, dtype=np.float32), DTypeError),
    (np.zeros(M + 1), ShapeError),
    ([0.0] * M, OperandError),
])
def test_a_bad_add_operand_is_named(given, error):
    k = _compile("t[i] = A[i,j]*x[j]; y[i] += t[i]")
    assert k.launches == 1
    with pytest.raises(error, match="y"):
        k(A=A, x=X, y=given)


def test_a_read_only_add_operand_is_refused():
    k = _compile("t[i] = A[i,j]*x[j]; y[i] += t[i]")
    y = np.zeros(M)
    y.flags.writeable = False
    with pytest.raises(OperandError, match="read-only"):
        k(A=A, x=X, y=y)


def test_an_add_operand_sharing_memory_is_refused():
    # the launch uploads each array once: a sum the caller also passes as an input
    # (or as a second sum) would not be seen updated by the other statements
    k = _compile("t[i] = A[i,j]*x[j]; y[i] += t[i] + w[i]; z[i] += y[i]*2", outputs=["y", "z"])
    assert k.launches == 1, k.loops
    w = W.copy()
    with pytest.raises(OperandError, match="y shares memory with input w"):
        k(A=A, x=X, w=w, y=w, z=np.zeros(M))
    y = np.zeros(M)
    with pytest.raises(OperandError, match="shares memory"):
        k(A=A, x=X, w=W, y=y, z=y[::-1])
    assert not y.any() and np.array_equal(w, W)


def test_a_serial_statement_runs_on_one_thread_between_the_barriers():
    k = _compile("y[i] = A[i,j]*x[j]; m = max(i, y[i]); z[i] = y[i] / m")
    assert k.launches == 1, k.loops
    t = A @ X
    assert np.allclose(k(A=A, x=X), t / t.max())
    assert k.last_launches == 1 and k._target.last_launch["grid"] > 1
    body = k.source.split("__global__")[1]
    assert body.count("spc_grid_sync(") == 2 and body.count(f"if ({SERIAL_THREAD})") == 1


def test_a_serial_add_is_done_once_however_many_blocks_run():
    # every thread running it would add the maximum once per thread
    k = _compile("y[i] = A[i,j]*x[j]; m += max(i, y[i])", outputs=["y", "m"])
    assert k.launches == 1, k.loops
    got = k(A=A, x=X, m=10.0)
    assert k._target.last_launch["grid"] > 1
    assert np.isclose(got["m"], 10.0 + (A @ X).max())


def test_serial_statements_first_and_alone():
    k = _compile("m = max(i, w[i]); z[i] = A[i,j]*x[j] * m; n = max(i, z[i])", outputs=["z", "n"])
    assert k.launches == 1, k.loops
    got = k(A=A, x=X, w=W)
    z = (A @ X) * W.max()
    assert np.allclose(got["z"], z) and np.isclose(got["n"], z.max())
    both = spcomp.compile("m = max(i, w[i]); n = max(i, w[i] * m)", outputs=["m", "n"], backend="cuda-sim")
    assert both.launches == 1, both.loops
    got = both(w=W)
    assert np.isclose(got["m"], W.max()) and np.isclose(got["n"], (W * W.max()).max())


JOINED = [
    ("t[i] = A[i,j]*x[j]; y[i] += relu(t[i])*2", None),
    ("y[i] = A[i,j]*x[j]; m = max(i, y[i]); z[i] = y[i] / m", None),
    ("y[i] = A[i,j]*x[j]; m += max(i, y[i])", ["y", "m"]),
    ("Y[i,k] += A[i,j]*B[j,k]; s += Y[i,k]*Y[i,k]", ["Y", "s"]),
]


@pytest.mark.skipif(not nvcc.nvcc_available(), reason="nvcc (the CUDA toolkit) is not installed")
@pytest.mark.parametrize("text,outputs", JOINED)
def test_every_joined_kernel_compiles_with_nvcc(text, outputs):
    k = _compile(text, outputs=outputs)
    (seg,) = fused_kernels(k)
    for built in seg.built.values():
        report = nvcc.check_source(built.compiled[0], arch="sm_90")
        assert set(report) == {built.function.name}


def _fresh(ops: dict) -> dict:
    return {n: (v[0], v[1].copy() if isinstance(v[1], np.ndarray) else v[1]) for n, v in ops.items()}


@settings(max_examples=examples(8), deadline=None)
@given(st.data())
def test_random_programs_with_adds_cuda_sim(data):
    # with sparse temporaries of any format too: those of dense rows join the launch
    # (test_cuda_programs_sparse_join.py), the others run as kernels of their own
    sparse = data.draw(st.booleans(), label="sparse temporaries")
    case = data.draw(programs(max_statements=3, sparse_temporaries=sparse, accumulate=True))
    ops = data.draw(program_operands(case))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", TranspositionWarning)
        try:
            k = spcomp.compile(case.text, formats=case.formats, outputs=list(case.outputs), backend="cuda-sim")
        except UnsupportedError as e:
            assert str(e)
            return
    assert k.loops.count("one native function") + k.loops.count("a kernel of its own") == k.launches
    call = _fresh(ops)
    got = k(**{n: v[1] for n, v in call.items()})
    got = got if isinstance(got, dict) else {case.outputs[0]: got}
    want = reference_program(k.program, {n: v[0] for n, v in ops.items()})
    for name in case.outputs:
        assert close(got[name], want[name]), (str(case), name, got[name], want[name])
    for name in case.accumulated:  # the caller's array holds the sums
        if isinstance(call[name][1], np.ndarray):
            assert got[name] is call[name][1]
    alone = separately(k, {n: v[1] for n, v in _fresh(ops).items()})
    alone = alone if isinstance(alone, dict) else {case.outputs[0]: alone}
    for name in case.outputs:
        assert close(alone[name], want[name]), (str(case), name)
