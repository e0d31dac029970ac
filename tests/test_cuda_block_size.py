"""The launch's block size as a schedule directive (``Schedule.gpu(block=)``): the
emitted CUDA C declares it (``__launch_bounds__``), the launcher uses it, it is
checked (1..1024, a multiple of 32 where warps or blocks are mapped), and kernels
launched with it match numpy.einsum on cuda-sim and compile with nvcc where the
toolkit is installed. The tuner tries a few sizes among its GPU candidates."""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import spcomp
import spcomp.backends.cuda as cuda
from spcomp import Schedule
from spcomp.errors import ScheduleError
from spcomp.runtime import tuning
from spcomp.tuner import GPU_BLOCK_SIZES, gpu_candidates

from conftest import examples

HAS_NVCC = cuda.nvcc.nvcc_available()
SPMV, SPMM = "y[i] = A[i,j] * x[j]", "Y[i,k] = A[i,j] * B[j,k]"
KERNELS = [(SPMV, "ij,j->i", {"x": (1,)}), (SPMM, "ij,jk->ik", {"B": (1, 2)}),
           ("s = A[i,j] * x[j]", "ij,j->", {"x": (1,)})]
MAPPINGS = [
    None,  # the default (a thread or a warp per row, picked per call)
    Schedule().parallelize("i", "gpu-thread"),
    Schedule().parallelize("i", "gpu-warp"),
    Schedule().parallelize("i", "gpu-block"),
    Schedule().pos("j", "q", "A").split("q", "c", "p", 8).parallelize("c", "gpu-thread"),
]
WARPS = {2, 3}  # the mappings above that need whole warps


def _compile(expr, schedule, block):
    s = (schedule or Schedule()).gpu(block)
    return spcomp.compile(expr, formats={"A": "csr"}, backend="cuda-sim", schedule=s)


@settings(max_examples=examples(20), deadline=None)
@given(case=st.sampled_from(range(len(KERNELS))), mapping=st.sampled_from(range(len(MAPPINGS))),
       block=st.sampled_from([1, 32, 64, 96, 100, 128, 1024]), dims=st.lists(st.integers(1, 70), min_size=3,
                                                                             max_size=3),
       density=st.sampled_from([0.0, 0.1, 0.5]), seed=st.integers(0, 99))
def test_block_size_directive_matches_einsum_on_cuda_sim(case, mapping, block, dims, density, seed):
    expr, spec, shapes = KERNELS[case]
    if mapping in WARPS and block % 32:
        with pytest.raises(ScheduleError, match="multiple of 32"):
            _compile(expr, MAPPINGS[mapping], block)
        return
    rng = np.random.default_rng(seed)
    a = rng.standard_normal(dims[:2]) * (rng.random(dims[:2]) < density)
    ops = {name: rng.standard_normal(tuple(dims[d] for d in axes)) for name, axes in shapes.items()}
    k = _compile(expr, MAPPINGS[mapping], block)
    got = k(A=a, **ops)
    np.testing.assert_allclose(got, np.einsum(spec, a, *ops.values()), rtol=1e-10, atol=1e-10)
    if k.last_launch["mapping"] != "serial":
        assert k.last_launch["block"] == block
        assert f"__launch_bounds__({block})" in k.source
    if block % 32:  # the default keeps a thread per row
        assert k.last_launch["mapping"] in ("gpu-thread", "serial")


@pytest.mark.skipif(not HAS_NVCC, reason="nvcc (the CUDA toolkit) is not installed")
@pytest.mark.parametrize("schedule", [Schedule().parallelize("i", "gpu-warp").gpu(128),
                                      Schedule().parallelize("i", "gpu-thread").gpu(100),
                                      Schedule().parallelize("i", "gpu-block").gpu(1024)])
def test_block_size_kernels_compile_with_nvcc(schedule):
    k = spcomp.compile(SPMV, formats={"A": "csr"}, backend="cuda-sim", schedule=schedule)
    block = schedule.get("gpu")[-1][0]
    assert f"__launch_bounds__({block})" in k.source
    report = cuda.check(k, arch="sm_90")["sm_90"]
    assert set(report) == set(cuda.signature.parse_kernels(k.source)), report


def test_without_the_directive_the_source_declares_no_bounds():
    k = spcomp.compile(SPMV, formats={"A": "csr"}, backend="cuda-sim")
    assert "__launch_bounds__" not in k.source
    k(A=np.eye(40), x=np.ones(40))
    assert k.last_launch["block"] == 256


@pytest.mark.parametrize("block, words", [(0, "1..1024"), (1025, "1..1024"), (True, "integer"), (64.0, "integer")])
def test_block_size_is_checked(block, words):
    with pytest.raises(ScheduleError, match=words):
        Schedule().gpu(block)


def test_cpu_backend_refuses_a_block_size():
    with pytest.raises(ScheduleError, match="CUDA backends"):
        spcomp.compile(SPMV, formats={"A": "csr"}, schedule=Schedule().gpu(128))


def test_team_of_a_block_refuses_a_partial_warp():
    s = Schedule().split("i", "i0", "i1", 4).parallelize("i0", "gpu-block").parallelize("i1", "gpu-thread").gpu(48)
    with pytest.raises(ScheduleError, match="whole warps"):
        spcomp.compile(SPMV, formats={"A": "csr"}, backend="cuda-sim", schedule=s)


def test_tuner_tries_block_sizes_and_the_cache_keeps_them():
    k = spcomp.compile(SPMV, formats={"A": "csr"}, backend="cuda-sim")
    sized = [s for s in gpu_candidates(k) if s.get("gpu")]
    assert {s.get("gpu")[-1][0] for s in sized} == set(GPU_BLOCK_SIZES)
    for s in sized:
        assert tuning.from_data(tuning.to_data(s)) == s
        a = np.eye(50) * 2.0
        np.testing.assert_allclose(k.with_schedule(s)(A=a, x=np.ones(50)), 2.0)
