"""The default GPU schedule per kernel class (spcomp/gpu_default.py, docs/cuda.md).

* thread vs warp per row, picked at each call from the average row length of the
  operand that balances the outer loop (``Kernel.last_launch`` says which ran);
* a block per row with the row's entries staged in ``__shared__`` arrays for
  kernels whose threads split a dense output row (SpMM, the TwELL down projection);
* an explicit ``parallelize`` still decides.

Everything runs under cuda-sim on several blocks, checked against NumPy by
``spcomp.testing.check_kernel``; the new variants compile with nvcc (skipped without it).
"""
from __future__ import annotations

import re

import ml_dtypes
import numpy as np
import pytest
import scipy.sparse as sp

import spcomp
import spcomp.backends.cuda as cuda
from spcomp import Schedule
from spcomp.backends.cuda import default_schedule as gpu_default
from spcomp.backends.cuda import launch, nvcc, sim, staging
from spcomp.testing import check_kernel, fit_packed

pytestmark = pytest.mark.skipif(sim.compiler() is None, reason="cuda-sim needs a host C++ compiler (g++)")
needs_nvcc = pytest.mark.skipif(not nvcc.nvcc_available(), reason="nvcc (the CUDA toolkit) is not installed")

SIM = dict(backend="cuda-sim")
CSR = {"A": "csr"}
TWELL = {"H": "twell(B=64,K=16)"}
SPMV, SPMM, SDDMM = "y[i] = A[i,j] * x[j]", "C[i,k] = A[i,j] * B[j,k]", "C[i,j] = A[i,j] * B[i,k] * D[j,k]"
DOWN = "O[t,d] = H[t,n] * Wd[n,d]"


@pytest.fixture(params=[32, 128], ids=["block32", "block128"])
def several_blocks(request, monkeypatch):
    """Every launch of the test runs 3 blocks of 32 or 128 threads (grid-stride loops;
    a 64-entry chunk is staged in two passes by 32 threads, in one by 128)."""
    real = cuda.launch_config

    def forced(function, args_by_name, block=256, max_grid=launch.MAX_GRID):
        real(function, args_by_name, block, max_grid)
        return 3, request.param

    spcomp.clear_cache()  # targets bind launch_config when a kernel is built
    monkeypatch.setattr(cuda, "launch_config", forced)
    yield request.param
    spcomp.clear_cache()


def csr_rows(lens, ncols, seed=0, dtype=np.float64):
    """A CSR matrix whose row r has lens[r] entries (values from spcomp.testing.VALUES)."""
    rng = np.random.default_rng(seed)
    indices = np.concatenate([np.sort(rng.choice(ncols, size=m, replace=False)) for m in lens] + [[]])
    indptr = np.concatenate([[0], np.cumsum(lens)])
    data = rng.choice(np.array([-2.0, -1.0, -0.5, 0.5, 1.0, 2.0]), size=int(indptr[-1]))
    return sp.csr_matrix((data.astype(dtype), indices.astype(np.int64), indptr), shape=(len(lens), ncols))


def body(k) -> str:
    """The kernels of ``k.source``, without the prelude (whose block reduction has a __shared__ array)."""
    return k.source[k.source.index('extern "C"'):]


def code(k) -> str:
    """``body(k)`` without its comments."""
    return re.sub(r"//[^\n]*", "", body(k))


# ------------------------------------------------------- thread or warp per row

SHORT = [0, 1, 3, 5, 0, 2, 7, 4] * 5          # 2.75 entries per row
LONG = [0, 40, 33, 64, 65, 31, 0, 100] * 3    # 41.6 entries per row


@pytest.mark.parametrize("lens, mapping", [(SHORT, "gpu-thread"), (LONG, "gpu-warp")], ids=["short", "long"])
def test_spmv_default_picks_thread_or_warp_from_row_lengths(several_blocks, lens, mapping):
    A = csr_rows(lens, 120)
    x = np.random.default_rng(1).standard_normal(120)
    run = check_kernel(SPMV, CSR, {"A": A, "x": x}, **SIM)
    launch = run.kernel.last_launch
    assert launch["mapping"] == mapping and launch["block"] == several_blocks and launch["grid"] == 3
    assert "entries per row on average" in launch["why"]
    assert "parallel: gpu-thread" in body(run.kernel)  # k.source shows the default variant


def test_the_same_kernel_switches_mapping_per_call(several_blocks):
    """One kernel: long rows run a warp per row, short rows a thread, then a warp again;
    the warp variant is built once, on the first call that needs it."""
    k = spcomp.compile(SPMV, formats=CSR, **SIM)
    launcher = k.variant().function
    assert set(launcher.built) == {"gpu-thread"}  # the warp variant is not built before it is needed
    x = np.ones(120)
    for lens, mapping in [(SHORT, "gpu-thread"), (LONG, "gpu-warp"), (SHORT, "gpu-thread"), (LONG, "gpu-warp")]:
        A = csr_rows(lens, 120, seed=len(lens))
        np.testing.assert_allclose(k(A=A, x=x), A @ x, rtol=1e-12)
        assert k.last_launch["mapping"] == mapping
    assert set(launcher.built) == {"gpu-thread", "gpu-warp"}


def test_threshold_is_the_average_row_length():
    """The boundary: an average of exactly WARP_ROW_THRESHOLD entries is a warp, just below a thread."""
    t = gpu_default.WARP_ROW_THRESHOLD
    k = spcomp.compile(SPMV, formats=CSR, **SIM)
    x = np.ones(200)
    for lens, mapping in [([t] * 6, "gpu-warp"), ([t] * 5 + [t - 1], "gpu-thread"), ([0, 2 * t], "gpu-warp")]:
        A = csr_rows(lens, 200)
        np.testing.assert_allclose(k(A=A, x=x), A @ x, rtol=1e-12)
        assert k.last_launch["mapping"] == mapping, lens
    assert f">= {t}" in k.loops  # the rule is shown with the loop nest


@pytest.mark.parametrize("lens", [SHORT, LONG], ids=["short", "long"])
def test_sddmm_and_scatter_kernels_run_either_mapping(several_blocks, lens):
    """SDDMM (dense output) and Aᵀx (atomics) walk the rows of A too: both mappings agree with NumPy."""
    A = csr_rows(lens, 120, seed=3)
    rng = np.random.default_rng(2)
    run = check_kernel(SDDMM, CSR, {"A": A, "B": rng.standard_normal((len(lens), 6)),
                                    "D": rng.standard_normal((120, 6))}, **SIM)
    want = "gpu-warp" if lens is LONG else "gpu-thread"
    assert run.kernel.last_launch["mapping"] == want
    run = check_kernel("y[j] = A[i,j] * x[i]", CSR, {"A": A, "x": rng.standard_normal(len(lens))}, **SIM)
    assert run.kernel.last_launch["mapping"] == want and "atomicAdd(&y_vals" in body(run.kernel)


@pytest.mark.parametrize("shape", [(0, 7), (5, 7), (5, 0)], ids=["no-rows", "no-entries", "no-columns"])
def test_empty_matrices(several_blocks, shape):
    A = sp.csr_matrix(shape)
    run = check_kernel(SPMV, CSR, {"A": A, "x": np.ones(shape[1])}, **SIM)
    assert run.kernel.last_launch["mapping"] == "gpu-thread"
    run = check_kernel(SPMM, CSR, {"A": A, "B": np.ones((shape[1], 5))}, **SIM)
    assert run.kernel.last_launch["mapping"] == "gpu-block"


def test_only_legal_mapping_is_used():
    """A sparse output cannot be split among a team: a thread per row, however long the rows."""
    rng = np.random.default_rng(4)
    A = csr_rows(LONG, 120)
    run = check_kernel(SDDMM, {"A": "csr", "C": "csr"}, {"A": A, "B": rng.standard_normal((len(LONG), 4)),
                                                         "D": rng.standard_normal((120, 4))}, **SIM)
    assert run.kernel.last_launch["mapping"] == "gpu-thread" and "GPU default" not in run.kernel.loops


# ---------------------------------------------- a block per row, staged in shared memory

def test_spmm_default_is_a_staged_block_per_row(several_blocks):
    """Rows of 0..130 entries cross the 64-entry chunks; N_k = 70 is more than the block."""
    lens = [0, 1, 63, 64, 65, 130, 0, 5]
    A = csr_rows(lens, 200, seed=5)
    run = check_kernel(SPMM, CSR, {"A": A, "B": np.random.default_rng(6).standard_normal((200, 70))}, **SIM)
    k = run.kernel
    assert k.last_launch["mapping"] == "gpu-block" and k.last_launch["why"] is None
    src = body(k)
    assert "parallel: gpu-block" in src and "__syncthreads();  // the chunk is staged" in src
    assert "__shared__ int32_t spc_A2_crd_" in src and "__shared__ double spc_A_vals_" in src
    assert "A2_crd[pA2]" not in code(k) and "A_vals[pA2]" not in code(k)  # every thread reads the shared copies
    assert f"[{staging.STAGE_ENTRIES}];" in src and "staged in shared memory" in k.loops


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_twell_down_projection_default_is_staged(several_blocks, dtype):
    """H twell with several tiles per row, an all-zero row and full tiles; d = 70."""
    rng = np.random.default_rng(7)
    H = rng.choice([0.0, 0.0, 0.0, 0.5, -1.0, 2.0], size=(5, 150))
    H[2] = 0.0
    H[4, :64] = 1.5  # a full tile: more than K entries, trimmed to K by fit_packed
    H = fit_packed(H, TWELL["H"])
    np_dtype = np.dtype(ml_dtypes.bfloat16 if dtype == "bfloat16" else dtype)
    run = check_kernel(DOWN, TWELL, {"H": H.astype(np_dtype), "Wd": rng.standard_normal((150, 70)).astype(np_dtype)},
                       dtype=dtype, **SIM)
    src = body(run.kernel)
    assert run.kernel.last_launch["mapping"] == "gpu-block"
    assert "__shared__" in src and "__syncthreads();  // the chunk is staged" in src
    assert "H_vals[pH2]" not in code(run.kernel) and "H2_crd[pH2]" not in code(run.kernel)


def test_fused_ffn_and_accumulating_output_are_staged(several_blocks):
    """``+=`` into O and the fused FFN (a block reduction inside the staged loop)."""
    rng = np.random.default_rng(8)
    H = fit_packed(rng.choice([0.0, 0.0, 1.0, -0.5], size=(4, 100)), TWELL["H"])
    run = check_kernel("O[t,d] += H[t,n] * Wd[n,d]", TWELL, {"H": H, "Wd": rng.standard_normal((100, 9)),
                                                             "O": rng.standard_normal((4, 9))}, **SIM)
    assert run.kernel.last_launch["mapping"] == "gpu-block"
    run = check_kernel("O[t,d] = H[t,n] * X[t,k] * Wu[n,k] * Wd[n,d]", TWELL,
                       {"H": H, "X": rng.standard_normal((4, 6)), "Wu": rng.standard_normal((100, 6)),
                        "Wd": rng.standard_normal((100, 9))}, **SIM)
    assert run.kernel.last_launch["mapping"] == "gpu-block"
    assert "spc_block_reduce" in body(run.kernel) and "the chunk is staged" in body(run.kernel)


# ------------------------------------------------------------ explicit schedules

@pytest.mark.parametrize("how", ["gpu-thread", "gpu-warp"])
def test_explicit_parallelize_overrides_the_default(how):
    A = csr_rows(LONG if how == "gpu-thread" else SHORT, 200, seed=9)
    B = np.random.default_rng(9).standard_normal((200, 5))
    run = check_kernel(SPMM, CSR, {"A": A, "B": B}, schedule=Schedule().parallelize("i", how), **SIM)
    assert run.kernel.last_launch["mapping"] == how and "__shared__" not in body(run.kernel)
    run = check_kernel(SPMV, CSR, {"A": A, "x": np.ones(200)}, schedule=Schedule().parallelize("i", how), **SIM)
    assert run.kernel.last_launch["mapping"] == how and "GPU default" not in run.kernel.loops
    run = check_kernel(SPMV, CSR, {"A": A, "x": np.ones(200)}, schedule=Schedule().sequential(), **SIM)
    assert run.kernel.last_launch["mapping"] == "serial"


def test_explicit_gpu_block_is_staged_too():
    """Staging is how the emitter prints this loop shape in any gpu-block kernel."""
    k = spcomp.compile(SPMM, formats=CSR, schedule=Schedule().parallelize("i", "gpu-block"), **SIM)
    assert "the chunk is staged" in body(k) and "GPU default" not in k.loops


# ------------------------------------------------------------------------ nvcc

@needs_nvcc
@pytest.mark.parametrize("expr, formats, dtype", [(SPMM, CSR, "float32"), (DOWN, TWELL, "float32"),
                                                  (DOWN, TWELL, "bfloat16"), (SPMM, CSR, "float64")])
def test_staged_kernels_compile_with_nvcc_and_use_shared_memory(expr, formats, dtype):
    k = spcomp.compile(expr, formats=formats, dtype=dtype, **SIM)
    for arch, report in cuda.check(k).items():
        info = report["kernel"]
        assert info["shared_bytes"] >= staging.STAGE_ENTRIES * 2 * 2, (arch, info)  # a crd and a vals chunk
        assert info["spill_stores"] == 0 and 0 < info["registers"] <= 255, (arch, info)


@needs_nvcc
@pytest.mark.parametrize("expr", [SPMV, SDDMM])
def test_thread_and_warp_variants_compile_with_nvcc(expr):
    """Both variants the default picks between: the thread one is k.source, the warp
    one is what parallelize('i', 'gpu-warp') compiles."""
    for schedule in (None, Schedule().parallelize("i", "gpu-warp")):
        k = spcomp.compile(expr, formats=CSR, dtype="float32", schedule=schedule, **SIM)
        for arch, report in cuda.check(k).items():
            assert 0 < report["kernel"]["registers"] <= 255, (arch, report)


def test_warp_variant_is_the_explicit_warp_kernel():
    """What the default launches for long rows is the same CUDA C as an explicit gpu-warp schedule."""
    k = spcomp.compile(SPMV, formats=CSR, **SIM)
    k(A=csr_rows(LONG, 120), x=np.ones(120))
    low, compiled = k.variant().function.built["gpu-warp"]
    explicit = spcomp.compile(SPMV, formats=CSR, schedule=Schedule().parallelize("i", "gpu-warp"), **SIM)
    assert k.target.source(compiled) == explicit.source
