"""Sparse outputs appended one entry at a time on the CUDA backends (coo, dcsr, csf,
sparse vectors): device code cannot realloc, so the runtime allocates the arrays at
a capacity, the kernel stores what fits and reports what it needed, and the runtime
runs it again when that was more (Options.bounded_appends). Checked on cuda-sim
against the float64 reference, and with nvcc where the toolkit is installed."""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import spcomp
from spcomp.backends.cuda import nvcc
from spcomp.runtime import launch
from spcomp.runtime.launch import Launcher
from spcomp.testing import check_kernel, random_operands

CASES = [
    ("y[i] = A[i,j] * x[j]", {"A": "csr", "y": "c"}),
    ("C[i,j] = A[i,j] + B[i,j]", {"A": "coo", "B": "coo", "C": "coo"}),
    ("C[i,j] = A[i,j] * B[i,j]", {"A": "dcsr", "B": "csr", "C": "dcsr"}),
    ("C[i,j] = A[i,k] * B[k,j]", {"A": "dcsr", "B": "csr", "C": "dcsr"}),
    ("C[i,j] = A[i,j] + B[i,j]", {"A": "csr", "B": "coo", "C": "coo"}),
    ("Y[i,j,k] = X[i,j,k] * 2", {"X": "csf", "Y": "csf"}),
]
SIZES = {"i": 23, "j": 19, "k": 17}


def _runs(monkeypatch) -> list:
    """Count the kernel launches of each call."""
    runs = []
    real = Launcher.run

    def counted(self, *args, **kwargs):
        runs.append(1)
        return real(self, *args, **kwargs)
    monkeypatch.setattr(Launcher, "run", counted)
    return runs


@pytest.mark.parametrize("expr,formats", CASES)
def test_appended_outputs_match_the_reference_on_cuda_sim(expr, formats):
    k = spcomp.compile(expr, formats=formats, backend="cuda-sim")
    assert "_needed" in k.ir  # the kernel reports what it appended
    assert "runs once more at the exact size" in k.loops
    for density in (0.0, 0.2, 0.7):
        check_kernel(expr, formats, backend="cuda-sim", sizes=SIZES, density=density, seed=3)


@pytest.mark.parametrize("capacity,launches", [(1, 2), (100000, 1)])
def test_a_second_launch_only_when_the_first_did_not_fit(monkeypatch, capacity, launches):
    expr, formats = CASES[3]  # SpGEMM into dcsr: more entries than the inputs hold
    k = spcomp.compile(expr, formats=formats, backend="cuda-sim")
    ops = random_operands(k, sizes=SIZES, density=0.4, seed=1)
    want = k(**ops).to_numpy()  # whatever capacity the runtime guessed
    monkeypatch.setattr(launch, "FIRST_CAPACITY", capacity)
    runs = _runs(monkeypatch)
    got = k(**ops)
    assert len(runs) == launches
    np.testing.assert_array_equal(got.to_numpy(), want)
    on_cpu = spcomp.compile(expr, formats=formats)(**ops)
    np.testing.assert_allclose(got.to_numpy(), on_cpu.to_numpy(), rtol=1e-12, atol=1e-12)
    # the arrays are cut to what the kernel appended: the CPU's entries, one for one
    for level in (0, 1):
        for name, arr in on_cpu.levels[level].items():
            np.testing.assert_array_equal(got.levels[level][name], arr)


@settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck))
@given(case=st.sampled_from(CASES), density=st.floats(0.0, 1.0), seed=st.integers(0, 2**16),
       capacity=st.integers(1, 64), sizes=st.fixed_dictionaries(
           {"i": st.integers(1, 12), "j": st.integers(1, 12), "k": st.integers(1, 12)}))
def test_any_first_capacity_gives_the_reference(case, density, seed, capacity, sizes):
    """Whatever the runtime's first guess, the result is the reference's."""
    expr, formats = case
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(launch, "FIRST_CAPACITY", capacity)
        check_kernel(expr, formats, backend="cuda-sim", sizes=sizes, density=density, seed=seed)


@pytest.mark.skipif(not nvcc.nvcc_available(), reason="nvcc (the CUDA toolkit) is not installed")
@pytest.mark.parametrize("expr,formats", CASES[:4])
def test_appending_kernels_compile_with_nvcc(expr, formats):
    k = spcomp.compile(expr, formats=formats, backend="cuda-sim")
    report = nvcc.check(k, arch=("sm_90",))["sm_90"]
    assert report and all(info["spill_stores"] == 0 for info in report.values())
