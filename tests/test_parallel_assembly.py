"""Parallel assembly of sparse outputs whose first level is dense (csr, dense-then-csf).

Two ways, both tested here on the CPU: chunks (spcomp/chunks.py, the CPU's
default), where each thread appends its rows to arrays of its own and the
runtime stitches them; and two phases (count -> scan -> fill, the GPU's way),
where ``NAME_count`` counts each row's entries, the runtime scans the counts
into ``pos`` and allocates exact-size arrays and ``NAME_fill`` writes each row
from its start. These tests check the results against the dense reference
(``spcomp.testing``), that 1, 2 and 3 threads give the same arrays bit for bit
either way, that cuda-sim runs the two-phase kernels over several blocks, that
nvcc compiles every emitted source for sm_90, and what is still refused.
"""
from __future__ import annotations

import contextlib

import numpy as np
import pytest
import scipy.sparse as sp
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import spcomp
from spcomp.runtime import chunks as _chunks
from spcomp.runtime import launch
from spcomp.errors import ScheduleError
from spcomp.runtime import threads as _threads
from spcomp.testing import check_kernel
from spcomp.testing.check import make_operands

from conftest import assert_same_bits, record_splits, spcomp_threads

CSR3 = {"A": "csr", "B": "csr", "C": "csr"}
ADD = "C[i,j] = A[i,j] + B[i,j]"
SUB = "C[i,j] = A[i,j] - B[i,j]"
MUL = "C[i,j] = A[i,j] * B[i,j]"
# the split threshold the SpGEMM work-estimate test sets (the default may move)
SPGEMM_THRESHOLD = 250_000
SPGEMM = "C[i,j] = A[i,k] * B[k,j]"

# (expression, formats): every kernel here is assembled in two phases
CASES = [
    pytest.param(ADD, CSR3, id="csr-add"),
    pytest.param(SUB, CSR3, id="csr-sub"),
    pytest.param(MUL, CSR3, id="csr-mul"),
    pytest.param(SPGEMM, CSR3, id="spgemm"),
    pytest.param(SPGEMM, {"A": "csr", "B": "csr", "C": "d c(unordered)"}, id="spgemm-unordered"),
    pytest.param("C[i,j] = A[i,j] + 2 * B[i,j]", {"A": "csr", "B": "dense", "C": "csr"}, id="csr-plus-dense"),
    pytest.param("C[i,j,k] = A[i,j,k] + B[i,j,k]", {"A": "dcc", "B": "dcc", "C": "dcc"}, id="csf-under-dense-add"),
    pytest.param("C[i,j,k] = A[i,j,k] * B[i,j,k]", {"A": "ddc", "B": "ddc", "C": "ddc"}, id="dense-dense-c-mul"),
    pytest.param("C[i,j,k] = A[i,j,l] * B[l,k]", {"A": "dcc", "B": "csr", "C": "dcc"}, id="csf-under-dense-spgemm"),
]
SIZES = {"i": 70, "j": 45, "k": 30, "l": 20}


def threads(n, min_work=0):
    """Run kernels on ``n`` threads, splitting even small work (``min_work``)."""
    return spcomp_threads(n, min_work)


def two_phase(kernel):
    """Whether the kernel's rows may be assembled in parallel (it then has the two
    phases; CPU calls on threads use its chunks variant unless ``mode`` says not)."""
    return kernel.lowered.output.assembly is not None


class Mode(str):
    """The ``mode`` fixture's value; ``chunk_calls`` counts calls that ran as chunks."""
    chunk_calls = 0


@pytest.fixture(params=["chunks", "chunks-pool", "two-phase"])
def mode(request, monkeypatch):
    """How CPU threads assemble a sparse output: appended chunks, stitched (on
    libgomp's team through the native driver, or on the Python pool when there is
    none) or counted, then filled."""
    monkeypatch.setattr(_chunks, "MODE", "never" if request.param == "two-phase" else "always")
    if request.param == "chunks-pool":
        monkeypatch.setattr(_chunks, "_driver", lambda *args: None)
    m = Mode("two-phase" if request.param == "two-phase" else "chunks")
    real = _chunks.run_chunks

    def counted(*args):
        m.chunk_calls += 1
        return real(*args)
    monkeypatch.setattr(_chunks, "run_chunks", counted)
    return m


# ====================================================================== CPU

@pytest.mark.parametrize("expr,formats", CASES)
def test_cpu_matches_reference_and_is_thread_count_independent(expr, formats, mode):
    results = []
    for n in (1, 2, 3):
        with threads(n):
            r = check_kernel(expr, formats, sizes=SIZES, density=0.3, seed=3)
        assert two_phase(r.kernel)
        results.append(r.result)
    assert mode.chunk_calls == (2 if mode == "chunks" else 0)  # the 2- and 3-thread calls
    for other in results[1:]:
        assert_same_bits(results[0], other)


def test_generated_code_names_the_phases():
    k = spcomp.compile(ADD, formats=CSR3)
    assert 'define i32 @"kernel_count"' in k.source or "@kernel_count(" in k.source
    assert "kernel_fill" in k.source
    assert "int32_t kernel_count(" in k.ir and "int32_t kernel_fill(" in k.ir
    assert "(count phase)" in k.ir and "(fill phase)" in k.ir
    assert "two-phase assembly of C" in k.loops
    assert "for i in 0..N_i (parallel: threads)" in k.loops


def test_big_add_really_runs_on_two_threads(monkeypatch, mode):
    """Big enough to pass the runtime's own work threshold: two chunks, or both
    phases split rows."""
    rng = np.random.default_rng(0)
    n = 60_000
    A = sp.random(n, n, density=6e-5, format="csr", random_state=rng, dtype=np.float64)
    B = sp.random(n, n, density=6e-5, format="csr", random_state=rng, dtype=np.float64)
    assert n + A.nnz >= _threads.FALLBACK_PARALLEL_WORK
    k = spcomp.compile(ADD, formats=CSR3)
    split = record_splits(monkeypatch)
    with threads(2, _threads.FALLBACK_PARALLEL_WORK):
        two = k(A=A, B=B)
    assert split == ([2] if mode == "chunks" else [2, 2])  # chunks, or count and fill
    split.clear()
    with threads(1, _threads.FALLBACK_PARALLEL_WORK):
        one = k(A=A, B=B)
    assert_same_bits(one, two)
    expected = (A + B).tocsr()
    expected.sort_indices()
    got = two.to_scipy()
    assert abs(got - expected).max() == 0


@pytest.mark.parametrize("capacity", [1, 300, 10**6], ids=["all-grow", "some-grow", "none-grow"])
@pytest.mark.parametrize("expr,formats", [CASES[3], CASES[6]])
def test_chunks_stitch_whatever_their_arrays_held(expr, formats, capacity, monkeypatch, mode):
    """The first chunk's arrays become the result's: grown by realloc when the others'
    entries do not fit (or the kernel already doubled them), used as they are when
    they do. Chunks that doubled their own arrays are copied like the others."""
    monkeypatch.setattr(launch, "FIRST_CAPACITY", capacity)
    monkeypatch.setattr(_chunks, "CHUNK_SLACK", 1e-9)  # the later chunks start at 1024 entries
    ops = None
    results = []
    for n in (1, 3):
        with threads(n):
            r = check_kernel(expr, formats, sizes={"i": 90, "j": 80, "k": 70, "l": 40}, density=0.5,
                             seed=5, operands=ops)
        ops = r.operands
        results.append(r.result)
    assert results[0].nnz > 2048  # more than the later chunks' first 1024 entries each
    assert_same_bits(*results)
    assert mode.chunk_calls == (1 if mode == "chunks" else 0)


def test_cpu_threads_chunk_only_where_counting_repeats_nested_loops(monkeypatch):
    """By default SpGEMM (a row of B walked per nonzero of A) runs as chunks and the
    sparse add (one walk per row) as count and fill; both give the one-thread bits."""
    split = record_splits(monkeypatch)
    for expr, expected in ((SPGEMM, [2]), (ADD, [2, 2])):
        ops = None
        results = []
        for n in (2, 1):
            split.clear()
            with threads(n):
                r = check_kernel(expr, CSR3, sizes=SIZES, density=0.3, seed=2, operands=ops)
            ops = r.operands
            results.append(r.result)
            assert split == (expected if n == 2 else [])
        assert_same_bits(*results)
        assert ("each thread appends its i rows" in r.kernel.loops) == (expected == [2])


def test_saved_kernel_holds_the_variants_calls_pick(tmp_path, monkeypatch):
    """A saved sparse-output kernel carries its one-pass and chunks variants: the
    loaded one runs on one thread and on two without compiling anything."""
    k = spcomp.compile(SPGEMM, formats=CSR3)
    k.save(tmp_path / "spgemm.spk")
    loaded = spcomp.load(tmp_path / "spgemm.spk")

    def no_compiling(*args, **kwargs):
        raise AssertionError("the loaded kernel compiled a variant")
    monkeypatch.setattr(loaded, "_load_or_build", no_compiling)
    ops = make_operands(k.notation, {"i": 30, "j": 20, "k": 10}, np.random.default_rng(2), 0.3)
    for n in (1, 2):
        with threads(n):
            assert_same_bits(k(**ops), loaded(**ops))


def test_concurrent_callers_get_their_own_results(mode):
    """Several Python threads call one sparse-output kernel at once: while one call
    holds the pool the others run on their own thread; every result is its own
    operands' product, bit for bit the one-thread result."""
    import threading
    k = spcomp.compile(SPGEMM, formats=CSR3)
    rng = np.random.default_rng(7)
    cases = [make_operands(k.notation, {"i": 60, "j": 50, "k": 40}, rng, 0.3) for _ in range(4)]
    with threads(1):
        expected = [k(**ops) for ops in cases]
    failures = []

    def work(s):
        try:
            for _ in range(20):
                assert_same_bits(k(**cases[s]), expected[s])
        except BaseException as e:  # reported by the main thread
            failures.append(e)
    with threads(2):
        workers = [threading.Thread(target=work, args=(s,)) for s in range(4)]
        for w in workers:
            w.start()
        for w in workers:
            w.join()
    assert not failures, failures[0]


def test_sparse_accumulate(mode):
    """A ``+=`` into a csr output reads the old one as an input: still two phases."""
    k = spcomp.compile("C[i,j] += A[i,j] * B[i,j]", formats=CSR3)
    assert two_phase(k)
    with threads(2):
        r = check_kernel("C[i,j] += A[i,j] * B[i,j]", CSR3, sizes=SIZES, density=0.4)
    assert r.max_error == 0


def test_drop_zeros_counts_only_what_is_stored(mode):
    """With drop_zeros the count and the fill skip the same computed zeros."""
    a = np.array([[1.0, 2.0, 0.0], [0.0, 3.0, 4.0]])
    b = np.array([[-1.0, 2.0, 5.0], [0.0, -3.0, 0.0]])
    k = spcomp.compile(ADD, formats=CSR3, drop_zeros=True)
    with threads(2):
        c = k(A=spcomp.Tensor.from_numpy(a, "csr"), B=spcomp.Tensor.from_numpy(b, "csr"))
    assert c.nnz == 3
    np.testing.assert_array_equal(c.to_numpy(), a + b)
    # SpGEMM: the count phase then needs the workspace's values too
    x = np.array([[1.0, 1.0, 0.0], [2.0, 0.0, 1.0]])
    y = np.array([[1.0, 3.0], [-1.0, 1.0], [0.0, 1.0]])
    k = spcomp.compile(SPGEMM, formats=CSR3, drop_zeros=True)
    with threads(2):
        c = k(A=spcomp.Tensor.from_numpy(x, "csr"), B=spcomp.Tensor.from_numpy(y, "csr"))
    assert c.nnz == 3  # (0, 0) cancels to zero
    np.testing.assert_array_equal(c.to_numpy(), x @ y)


def test_serial_schedule_keeps_the_one_pass_append():
    k = spcomp.compile(ADD, formats=CSR3, schedule=spcomp.Schedule().sequential())
    assert not two_phase(k)
    assert "kernel_count" not in k.ir


@pytest.mark.parametrize("formats", [
    pytest.param({"A": "csr", "B": "csr", "C": "coo"}, id="coo-output"),
    pytest.param({"A": "dcsr", "B": "dcsr", "C": "dcsr"}, id="dcsr-output"),
])
def test_outputs_without_a_dense_first_level_stay_one_pass(formats):
    r = check_kernel(ADD, formats, sizes={"i": 20, "j": 15})
    assert not two_phase(r.kernel)
    with pytest.raises(ScheduleError, match="appended to in order"):
        spcomp.compile(ADD, formats=formats, schedule=spcomp.Schedule().parallelize("i"))


# ========================================================== property test

KERNELS = [(ADD, CSR3), (SUB, CSR3), (MUL, CSR3), (SPGEMM, CSR3),
           (SPGEMM, {"A": "csr", "B": "csr", "C": "d c(unordered)"})]


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(case=st.sampled_from(range(len(KERNELS))),
       i=st.integers(0, 40), j=st.integers(0, 40), k=st.integers(0, 12),
       density=st.sampled_from([0.0, 0.05, 0.3, 1.0]), empty_rows=st.sampled_from([0.0, 0.5]),
       seed=st.integers(0, 2**16))
def test_property_random_shapes_and_densities(case, i, j, k, density, empty_rows, seed):
    expr, formats = KERNELS[case]
    kernel = spcomp.compile(expr, formats=formats)
    assert two_phase(kernel)
    ops = make_operands(kernel.notation, {"i": i, "j": j, "k": k}, np.random.default_rng(seed), density,
                        empty_rows=empty_rows)
    results = []
    for n, chunks in ((1, True), (2, True), (3, True), (2, False)):
        with threads(n), _assembly(chunks):
            results.append(check_kernel(expr, formats, operands=ops).result)
    for other in results[1:]:
        assert_same_bits(results[0], other)


@contextlib.contextmanager
def _assembly(chunks: bool):
    """The ``mode`` fixture's switch, for a hypothesis test (no function fixtures)."""
    before = _chunks.MODE
    _chunks.MODE = "always" if chunks else "never"
    try:
        yield
    finally:
        _chunks.MODE = before


# ================================================================ cuda-sim

SIM_SIZES = {"i": 600, "j": 40, "k": 30, "l": 12}  # 600 rows: 3 blocks of 256 threads


@pytest.mark.parametrize("expr,formats", CASES)
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_cuda_sim_matches_reference(expr, formats, dtype):
    r = check_kernel(expr, formats, sizes=SIM_SIZES, density=0.1, seed=5, backend="cuda-sim", dtype=dtype)
    assert two_phase(r.kernel)
    fn = r.kernel.lowered.code.module.function("kernel_fill")
    from spcomp.backends.cuda import launch_config
    grid, block = launch_config(fn, {"lo": 0, "hi": SIM_SIZES["i"]})
    assert grid == 3 and block == 256
    # the same arrays as the CPU kernel, bit for bit
    cpu = check_kernel(expr, formats, operands=r.operands, dtype=dtype)
    assert_same_bits(cpu.result, r.result)


def test_cuda_sim_empty_and_zero_size():
    for sizes in ({"i": 0, "j": 5, "k": 3}, {"i": 7, "j": 0, "k": 3}, {"i": 7, "j": 4, "k": 0}):
        for expr in (ADD, SPGEMM):
            check_kernel(expr, CSR3, sizes=sizes, backend="cuda-sim")


@pytest.mark.parametrize("expr,formats", CASES)
def test_cuda_sources_compile_with_nvcc_for_sm90(expr, formats):
    from spcomp.backends.cuda import check_source, nvcc_available
    if not nvcc_available():
        pytest.skip("nvcc not installed")
    k = spcomp.compile(expr, formats=formats, backend="cuda", dtype="float32")
    assert "__global__ void kernel_count(" in k.source and "__global__ void kernel_fill(" in k.source
    report = check_source(k.source, arch="sm_90")
    assert set(report) == {"kernel_count", "kernel_fill"}


def test_cuda_appends_what_cannot_be_split_and_refuses_team_mappings():
    """Outputs the two phases cannot cover (coo, dcsr) run serially into bounded
    arrays on the GPU (tests/test_cuda_appends.py); a team mapping is refused."""
    for formats in ({"A": "csr", "B": "csr", "C": "coo"}, {"A": "dcsr", "B": "dcsr", "C": "dcsr"}):
        k = spcomp.compile(ADD, formats=formats, backend="cuda-sim")
        assert k.lowered.output.assembly is None and k.lowered.output.bounded
        check_kernel(ADD, formats, backend="cuda-sim", sizes={"i": 9, "j": 7}, density=0.4)
    with pytest.raises(ScheduleError, match="gpu-thread"):
        spcomp.compile(ADD, formats=CSR3, backend="cuda-sim",
                       schedule=spcomp.Schedule().parallelize("i", "gpu-block"))


def test_save_load_keeps_both_phases(tmp_path, mode):
    k = spcomp.compile(SPGEMM, formats=CSR3)
    k.save(tmp_path / "spgemm.spk")
    loaded = spcomp.load(tmp_path / "spgemm.spk")
    ops = make_operands(k.notation, {"i": 30, "j": 20, "k": 10}, np.random.default_rng(1), 0.3)
    with threads(2):
        assert_same_bits(k(**ops), loaded(**ops))


def test_64_bit_indices(monkeypatch, mode):
    """Operands that need 64-bit indices get the 64-bit variant of both phases."""
    from spcomp.runtime import Tensor
    monkeypatch.setattr(Tensor, "index_bits_needed", lambda self: 64)
    with threads(2):
        r = check_kernel(SPGEMM, CSR3, sizes=SIZES, density=0.3)
    assert r.result.levels[1]["pos"].dtype == np.int64
    assert r.kernel.lowering(64).output.assembly is not None


def test_spgemm_work_counts_the_rows_of_B_each_nonzero_walks(monkeypatch, mode):
    """The runtime's work estimate multiplies each balanced nonzero by what its nested
    loops cost (``Lowered.work_scale``): for SpGEMM the mean row length of B. A
    product whose rows + nnz(A) is far under the threshold, but whose multiply-adds
    are over it, splits on two threads, with the bits of the one-thread result;
    SpMV of the same A (no nested loop) does not split."""
    rng = np.random.default_rng(4)
    A = sp.random(4000, 4000, density=0.002, format="csr", random_state=rng, dtype=np.float64)
    B = sp.random(4000, 4000, density=0.02, format="csr", random_state=rng, dtype=np.float64)
    assert A.shape[0] + A.nnz < SPGEMM_THRESHOLD / 4
    assert A.nnz * B.nnz / B.shape[0] > SPGEMM_THRESHOLD
    k = spcomp.compile(SPGEMM, formats=CSR3)
    assert k.lowered.threads.work_scale == (("B", 1),)
    spmv = spcomp.compile("y[i] = A[i,j] * x[j]", formats={"A": "csr"})
    assert spmv.lowered.threads.work_scale == ()
    split = record_splits(monkeypatch)
    with threads(2, SPGEMM_THRESHOLD):
        two = k(A=A, B=B)
        assert split == ([2] if mode == "chunks" else [2, 2])  # chunks, or count and fill
        split.clear()
        spmv(A=A, x=np.ones(4000))
        assert split == []
    with threads(1, SPGEMM_THRESHOLD):
        one = k(A=A, B=B)
    assert_same_bits(one, two)
    np.testing.assert_allclose(two.to_numpy(), (A @ B).toarray(), rtol=1e-12, atol=1e-12)


def test_kernel_arrays_as_numpy_keep_their_dtype_and_are_freed_with_the_last_view(monkeypatch):
    """The stitched output's arrays are malloc'd memory seen as NumPy (memory.py):
    a dtype NumPy's type strings cannot name (ml_dtypes' bfloat16) stays itself, and
    an owned view frees its memory once, when its last view goes."""
    import ctypes

    from spcomp.runtime import memory
    ml_dtypes = pytest.importorskip("ml_dtypes")
    libc = ctypes.CDLL(None)
    libc.malloc.restype, libc.malloc.argtypes = ctypes.c_void_p, [ctypes.c_size_t]
    bf16 = np.dtype(ml_dtypes.bfloat16)
    src = np.arange(4, dtype=bf16)
    seen = memory.malloc_view(src.ctypes.data, 4, bf16)
    assert seen.dtype == bf16 and seen.tolist() == src.tolist()
    freed = []
    real = memory.free
    monkeypatch.setattr(memory, "free", lambda p: (freed.append(p), real(p)))
    for dtype in (bf16, np.dtype(np.int32), np.dtype(np.float64)):
        freed.clear()  # (malloc may hand the last address out again)
        p = libc.malloc(4 * dtype.itemsize)
        owned = memory.owned_view(p, 4, dtype)
        owned[:] = 3
        assert owned.dtype == dtype and owned.tolist() == [3, 3, 3, 3]
        part = owned[1:3]
        del owned
        assert p not in freed  # a view still uses it
        del part
        assert freed.count(p) == 1
