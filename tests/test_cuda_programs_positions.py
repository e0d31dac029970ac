"""A sparse writer whose threads split an input's top positions, inside a program's one CUDA kernel.

On the CUDA backends a two-phase statement (csr, ``dc``, ``dcc`` output) reading a
dcsr or csf input runs a thread per stored row (the input's top positions, not the
dense rows: ``low.threads.positions``). Each output row is still counted and filled
by one thread (the input's top level is unique), so the count, the scan and the fill
run between the barriers of the run's launch (spcomp/program_gpu.py ``_rows_apart``);
rows the input does not store keep the zero count the host allocated. Such a statement
used to be a kernel of its own. A split of a row's nonzeros would have threads count one
row together and is still a kernel of its own. Examples pin the launch counts (before
-> now) and results against numpy; random densities run under cuda-sim; nvcc compiles.
"""
from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp
from hypothesis import given, settings
from hypothesis import strategies as st

import spcomp
from spcomp.backends.cuda import nvcc

from conftest import examples
from test_cuda_programs import fused_kernels, separately
from test_cuda_programs_copies import same_arrays

M, N, K = 600, 40, 8  # several blocks of 256 threads: the barriers are crossed for real
A = sp.random(M, N, density=0.02, format="csr", random_state=41)  # many rows empty
X = np.linspace(-1, 1, N)
Z = np.linspace(1, 2, K)
A3 = np.zeros((M // 10, N, K))
A3[np.random.default_rng(41).random(A3.shape) < 0.03] = 1.5


@pytest.fixture(autouse=True)
def _several_blocks(monkeypatch):
    monkeypatch.setenv("SPCOMP_SIM_WORKERS", "4")


def _dense(v):
    return v.to_numpy() if hasattr(v, "to_numpy") else np.asarray(v)


@pytest.mark.parametrize("fmt", ["csr", "dc"])
def test_a_writer_over_a_dcsr_inputs_stored_rows_joins(fmt):
    k = spcomp.compile("T[i,j] = A[i,j]*3; y[i] = T[i,j]*x[j]", formats={"A": "dcsr", "T": fmt},
                       outputs=["T", "y"], backend="cuda-sim")
    assert k.launches == 1, k.loops  # 2 before
    assert "for i in A level 1 (c) (parallel: gpu-thread, by positions)" in k.loops
    got = k(A=A, x=X)
    assert k.last_launches == 1
    assert np.allclose(_dense(got["T"]), 3 * A.toarray()) and np.allclose(got["y"], 3 * A.toarray() @ X)
    alone = separately(k, {"A": A, "x": X})
    assert same_arrays(got["T"], alone["T"])


def test_a_writer_over_a_csf_inputs_stored_rows_joins():
    k = spcomp.compile("T[i,j,k] = A[i,j,k]*3; y[i] = T[i,j,k]*z[k]", formats={"A": "csf", "T": "dcc"},
                       backend="cuda-sim")
    assert k.launches == 1, k.loops  # 2 before
    got = k(A=A3, z=Z)
    assert np.allclose(got, np.einsum("ijk,k->i", 3 * A3, Z))


@pytest.mark.skipif(not nvcc.nvcc_available(), reason="nvcc (the CUDA toolkit) is not installed")
def test_a_kernel_with_a_writer_over_positions_compiles_with_nvcc():
    k = spcomp.compile("T[i,j] = A[i,j]*3; y[i] = T[i,j]*x[j]", formats={"A": "dcsr", "T": "csr"},
                       backend="cuda-sim")
    (seg,) = fused_kernels(k)
    for built in seg.built.values():
        report = nvcc.check_source(built.compiled[0], arch="sm_90")
        assert set(report) == {built.function.name}


@settings(max_examples=examples(4), deadline=None)
@given(st.sampled_from([0.0, 0.002, 0.05, 0.6]), st.sampled_from(["csr", "dc", "dcsr"]), st.integers(0, 2**16))
def test_random_writers_over_positions_cuda_sim(density, fmt, seed):
    a = sp.random(M, N, density=density, format="csr", random_state=seed)
    k = spcomp.compile("T[i,j] = A[i,j]*B[i,j]; y[i] = T[i,j]*x[j]", formats={"A": "dcsr", "B": "csr", "T": fmt},
                       backend="cuda-sim")
    assert k.launches == 1, k.loops
    b = a.copy()
    b.data = np.linspace(-1, 1, b.nnz)
    got = k(A=a, B=b, x=X)
    assert np.allclose(got, a.multiply(b).toarray() @ X)
