"""A sparse output's repeated call (runtime/sparsecall.py): with the very operands
again it skips the general path's Python, so every test changes something
between calls -- values, structure, thread count, variant settings -- and checks
the result against SciPy."""
from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp

import spcomp
from spcomp.runtime import chunks, launch, threads

SPGEMM = "C[i,j] = A[i,k] * B[k,j]"


@pytest.fixture(scope="module")
def spgemm():
    return spcomp.compile(SPGEMM, formats={"A": "csr", "B": "csr", "C": "csr"}, dtype="float64")


@pytest.fixture
def two_threads_always_split(monkeypatch):
    monkeypatch.setattr(threads, "MIN_PARALLEL_WORK", 0)
    old = spcomp.get_num_threads()
    spcomp.set_num_threads(2)
    yield
    spcomp.set_num_threads(old)


def _csr(seed, n=60, density=0.1):
    a = sp.random(n, n, density=density, format="csr", random_state=seed)
    a.sort_indices()
    return a


def _same(result, A, B):
    got = result.to_scipy() if hasattr(result, "to_scipy") else sp.csr_matrix(result)
    ref = (A @ B).tocsr()
    ref.sort_indices()
    assert got.has_sorted_indices or np.all(np.diff(got.indices) != 0)
    np.testing.assert_array_equal(got.indptr, ref.indptr)
    np.testing.assert_array_equal(got.indices, ref.indices)
    np.testing.assert_allclose(got.data, ref.data)


def _general_path_fails(k, monkeypatch):
    """Make the general path raise, so a call that returns came by the fast path."""
    def refuse(*_a, **_k):
        raise AssertionError("general path taken")
    monkeypatch.setattr(k.runtime.operands, "storages", refuse)


@pytest.mark.parametrize("split", [False, True], ids=["one-pass", "chunks"])
def test_repeated_call_is_served_and_exact(spgemm, monkeypatch, request, split):
    if split:
        request.getfixturevalue("two_threads_always_split")
    else:  # a fixed threshold: a measured one due for its next sample would send a call
        monkeypatch.setattr(threads, "MIN_PARALLEL_WORK", 1 << 40)  # to the general path on purpose
    A, B = _csr(0), _csr(1)
    _same(spgemm(A=A, B=B), A, B)
    with monkeypatch.context() as m:
        _general_path_fails(spgemm, m)
        for _ in range(3):
            _same(spgemm(A=A, B=B), A, B)


def test_results_of_repeated_calls_are_independent(spgemm):
    A, B = _csr(2), _csr(3)
    first = spgemm(A=A, B=B)
    second = spgemm(A=A, B=B)
    for l, (arrays, others) in enumerate(zip(first.levels, second.levels)):
        for name, arr in arrays.items():
            assert not np.shares_memory(arr, others[name]), (l, name)
    assert not np.shares_memory(first.vals, second.vals)
    _same(first, A, B)


def test_values_and_structure_changed_in_place_are_seen(spgemm):
    A, B = _csr(4), _csr(5)
    spgemm(A=A, B=B)
    spgemm(A=A, B=B)
    A.data[:] = 2.0
    _same(spgemm(A=A, B=B), A, B)
    A.indices = A.indices.copy()
    A.indices[: A.indptr[1]] = np.arange(A.indptr[1])  # row 0's columns changed, new array
    _same(spgemm(A=A, B=B), A, B)


def test_thread_count_and_settings_changes_miss(spgemm, monkeypatch):
    A, B = _csr(6), _csr(7)
    spgemm(A=A, B=B)
    spgemm(A=A, B=B)
    old = spcomp.get_num_threads()
    try:
        monkeypatch.setattr(threads, "MIN_PARALLEL_WORK", 0)
        spcomp.set_num_threads(2)
        _same(spgemm(A=A, B=B), A, B)
        monkeypatch.setattr(chunks, "MODE", "never")  # two phases now: no repeat can be served
        _same(spgemm(A=A, B=B), A, B)
        monkeypatch.setattr(chunks, "MODE", "always")
        monkeypatch.setattr(launch, "FIRST_CAPACITY", 1)  # the arrays must grow from one entry
        _same(spgemm(A=A, B=B), A, B)
        _same(spgemm(A=A, B=B), A, B)
    finally:
        spcomp.set_num_threads(old)


def test_tensor_operands_and_alternating_pairs(spgemm):
    pairs = [(_csr(8), _csr(9)), (_csr(10), _csr(11))]
    tensors = [(spcomp.Tensor.from_scipy(a, "csr"), spcomp.Tensor.from_scipy(b, "csr")) for a, b in pairs]
    for _ in range(3):
        for (A, B), (tA, tB) in zip(pairs, tensors):
            _same(spgemm(A=A, B=B), A, B)
            _same(spgemm(A=tA, B=tB), A, B)


def test_a_dead_operands_id_reused_is_not_confused(spgemm):
    B = _csr(12)
    for seed in range(20, 30):
        A = _csr(seed)
        _same(spgemm(A=A, B=B), A, B)


@pytest.mark.parametrize("split", [False, True], ids=["one-pass", "chunks"])
def test_an_output_past_the_32_bit_limit_repeats_with_the_64_bit_kernel(monkeypatch, tmp_path, request, split):
    from spcomp.lower import record
    if split:
        request.getfixturevalue("two_threads_always_split")
    monkeypatch.setattr(record, "INDEX32_LIMIT", 40)  # read when a kernel is compiled
    monkeypatch.setenv("SPCOMP_CACHE_DIR", str(tmp_path / "cache"))
    spcomp.clear_cache()
    try:
        k = spcomp.compile(SPGEMM, formats={"A": "csr", "B": "csr", "C": "csr"}, dtype="float64")
        A, B = _csr(13, n=30, density=0.2), _csr(14, n=30, density=0.2)
        small = A[:1]
        for _ in range(3):  # past the limit, then one row (32-bit again), alternating
            big = k(A=A, B=B)
            assert big.nnz > 40 and big.levels[1]["crd"].dtype == np.int64
            _same(big, A, B)
            _same(k(A=small, B=B), small, B)
    finally:
        spcomp.clear_cache()


def test_a_kept_repeat_holds_no_output_memory(spgemm):
    """Up to 8 repeats stay per kernel: none keeps an output array alive."""
    A, B = _csr(15), _csr(16)
    spgemm(A=A, B=B)
    repeat = spgemm._fast.latest.runner
    assert repeat.proto.arrays == {} and repeat.proto.grow == {}
    _same(spgemm(A=A, B=B), A, B)
    assert repeat.proto.arrays == {}
