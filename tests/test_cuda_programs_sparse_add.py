"""A sparse ``+=`` output inside a program's one CUDA kernel (spcomp/program_gpu.py).

A sparse ``S[i,j] += ...`` is lowered as ``S = S_old + ...``: the tensor you pass
is read as an input, the count phase counts the union of each row's old and new
entries, and the fill merges them into new arrays, handed back (yours are left as
they were). On the CUDA backends that statement used to be a kernel of its own;
now it is counted, scanned and filled between the barriers of the run's launch
like any two-phase output (lower/device_scan.py). Examples pin the launch counts
(before -> now), the results against numpy and bitwise against the statements
run as kernels of their own; random ones run under cuda-sim; nvcc compiles them.
"""
from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp
from hypothesis import given, settings
from hypothesis import strategies as st

import spcomp
from spcomp.backends.cuda import nvcc
from spcomp.runtime import launch

from conftest import examples
from test_cuda_programs import fused_kernels, separately
from test_cuda_programs_copies import same_arrays

M, N = 600, 40  # several blocks of 256 threads: the barriers are crossed for real
A = sp.random(M, N, density=0.2, format="csr", random_state=31)
B = sp.random(M, N, density=0.3, format="csr", random_state=32)
S0 = sp.random(M, N, density=0.1, format="csr", random_state=33)
X = np.linspace(-1, 1, N)


@pytest.fixture(autouse=True)
def _several_blocks(monkeypatch):
    monkeypatch.setenv("SPCOMP_SIM_WORKERS", "4")


def _dense(v):
    return v.to_numpy() if hasattr(v, "to_numpy") else np.asarray(v)


def _call(k, S):
    ops = {"A": A, "B": B, "x": X, "S": S}
    return k(**{n: ops[n] for n in k.inputs}, S=S)  # (S is the output it adds into, not an input)


# (text, formats, outputs, S's expected sum added to S0, launches before this change)
EXAMPLES = [
    ("T[i,j] = A[i,j]*2; S[i,j] += T[i,j]", {"A": "csr", "T": "csr", "S": "csr"}, None,
     lambda: 2 * A.toarray(), 2),
    ("S[i,j] += A[i,j]*2; y[i] = S[i,j]*x[j]", {"A": "csr", "S": "csr"}, ["S", "y"], lambda: 2 * A.toarray(), 2),
    ("T[i,j] = A[i,j]*B[i,j]; S[i,j] += T[i,j] + A[i,j]; y[i] = S[i,j]*x[j]",
     {"A": "csr", "B": "csr", "T": "csr", "S": "csr"}, ["S", "y"], lambda: A.multiply(B).toarray() + A.toarray(), 3),
]


@pytest.mark.parametrize("text,formats,outputs,added,before", EXAMPLES)
def test_a_sparse_add_joins_the_launch(text, formats, outputs, added, before):
    k = spcomp.compile(text, formats=formats, outputs=outputs, backend="cuda-sim")
    assert k.launches == 1 < before, k.loops
    assert "S +=: the tensor you pass is read as S_old" in k.loops
    S = S0.copy()
    (seg,) = fused_kernels(k)
    before = seg.reruns  # (the compiled program is cached: a test before may have rerun it)
    got = _call(k, S)
    assert k.last_launches == 1
    s = got["S"] if isinstance(got, dict) else got
    want = S0.toarray() + added()
    assert np.allclose(_dense(s), want)
    assert np.array_equal(S.toarray(), S0.toarray())  # the caller's tensor is left as it was
    if isinstance(got, dict):
        assert np.allclose(got["y"], want @ X)
    assert seg.reruns == before  # room for the old entries and T's at once
    alone = _alone(k)
    assert same_arrays(s, alone["S"] if isinstance(alone, dict) else alone)


def _alone(k):
    fused = [seg for kind, seg, _ in k.segments if kind == "fused"]
    ops = {"A": A, "B": B, "x": X, "S": S0.copy()}
    return separately(k, {n: ops[n] for n in [*k.inputs, "S"]}) if fused else None


def test_a_sparse_add_after_a_rerun_for_room(monkeypatch):
    monkeypatch.setattr(launch, "FIRST_CAPACITY", 3)
    k = spcomp.compile("T[i,j] = A[i,j]*2; S[i,j] += T[i,j]", formats={"A": "csr", "T": "csr", "S": "csr"},
                       backend="cuda-sim")
    (seg,) = fused_kernels(k)
    before = seg.reruns
    got = _call(k, S0.copy())
    assert seg.reruns > before
    assert np.allclose(_dense(got), S0.toarray() + 2 * A.toarray())


@pytest.mark.skipif(not nvcc.nvcc_available(), reason="nvcc (the CUDA toolkit) is not installed")
def test_a_kernel_with_a_sparse_add_compiles_with_nvcc():
    text, formats, outputs, _a, _b = EXAMPLES[1]
    k = spcomp.compile(text, formats=formats, outputs=outputs, backend="cuda-sim")
    (seg,) = fused_kernels(k)
    for built in seg.built.values():
        report = nvcc.check_source(built.compiled[0], arch="sm_90")
        assert set(report) == {built.function.name}


@settings(max_examples=examples(4), deadline=None)
@given(st.sampled_from(["csr", "dc"]), st.sampled_from([0.0, 0.05, 0.5]), st.sampled_from(["A", "B"]),
       st.booleans(), st.integers(0, 2**16))
def test_random_sparse_adds_cuda_sim(fmt, density, source, reduce, seed):
    old = sp.random(M, N, density=density, format="csr", random_state=seed)
    text = f"T[i,j] = {source}[i,j]*3; S[i,j] += T[i,j]" + ("; y[i] = S[i,j]*x[j]" if reduce else "")
    k = spcomp.compile(text, formats={source: "csr", "T": "csr", "S": fmt}, outputs=["S", "y"] if reduce else None,
                       backend="cuda-sim")
    assert k.launches == 1, k.loops
    src = {"A": A, "B": B}[source]
    got = k(**{source: src, "S": old.copy(), **({"x": X} if reduce else {})})
    s = got["S"] if reduce else got
    want = old.toarray() + 3 * src.toarray()
    assert np.allclose(_dense(s), want)
    if reduce:
        assert np.allclose(got["y"], want @ X)
