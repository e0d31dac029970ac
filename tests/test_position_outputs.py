"""Position splits into sparse outputs (lower/possparse.py): a csr-like output whose
entries follow the split operand's positions, assembled by count and fill per chunk
of positions. Every kernel is checked against numpy.einsum on one thread and on two
threads with every call split, and its arrays (pos, crd, vals) against the default
schedule's bit for bit (each entry is computed the same way and lands at the same
place); on cuda-sim (a GPU thread per chunk) and through nvcc too. Refusals name why."""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import spcomp.backends.cuda as cuda
from spcomp import Schedule
from spcomp.errors import ScheduleError

from schedule_operands import compile_quiet, operands_by_axes
from conftest import examples, record_splits, spcomp_threads

SPARSE_OUT = [
    # expr, formats, operand, index split, einsum, operand axes
    ("C[i,j] = A[i,j] * B[i,j]", {"A": "csr", "C": "csr"}, "A", "j", "ij,ij->ij", {"A": (0, 1), "B": (0, 1)}),
    ("C[i,j] = A[i,j] * B[i,j]", {"A": "dcsr", "C": "csr"}, "A", "j", "ij,ij->ij", {"A": (0, 1), "B": (0, 1)}),
    ("C[i,j] = A[i,j] * x[j]", {"A": "csr", "C": "csr"}, "A", "j", "ij,j->ij", {"A": (0, 1), "x": (1,)}),
    ("C[i,j] = A[i,j] * D[i,k] * E[k,j]", {"A": "csr", "C": "csr"}, "A", "j", "ij,ik,kj->ij",
     {"A": (0, 1), "D": (0, 2), "E": (2, 1)}),  # SDDMM: a sum under each position
    ("Y[i,j] = B[i,j,k] * c[k]", {"B": "csf", "Y": "csr"}, "B", "j", "ijk,k->ij", {"B": (0, 1, 2), "c": (2,)}),
    ("Y[i,j,k] = B[i,j,k] * c[k]", {"B": "csf", "Y": "ddc"}, "B", "k", "ijk,k->ijk", {"B": (0, 1, 2), "c": (2,)}),
]


def _operands(axes, formats, dims, density, seed):
    return operands_by_axes(axes, formats, dims, density, seed, long_rows=True)


def _same_arrays(got, want):
    """Bitwise equal storages: every level array and the values."""
    assert got.shape == want.shape
    for lg, lw in zip(got.levels, want.levels):
        assert lg.keys() == lw.keys()
        for key in lg:
            np.testing.assert_array_equal(np.asarray(lg[key]), np.asarray(lw[key]), err_msg=key)
    np.testing.assert_array_equal(np.asarray(got.vals).view(np.uint8), np.asarray(want.vals).view(np.uint8))


@settings(max_examples=examples(25), deadline=None)
@given(case=st.sampled_from(range(len(SPARSE_OUT))), dims=st.lists(st.integers(1, 17), min_size=3, max_size=3),
       density=st.sampled_from([0.0, 0.1, 0.3, 1.0]), factor=st.integers(1, 13), fuse=st.booleans(),
       race=st.sampled_from([None, "Atomics", "NoRaces"]), seed=st.integers(0, 99))
def test_position_split_into_sparse_output(case, dims, density, factor, fuse, race, seed):
    expr, formats, name, index, spec, axes = SPARSE_OUT[case]
    ops, dense = _operands(axes, formats, dims, density, seed)
    base = (Schedule().fuse("i", index, "f").pos("f", "q", name) if fuse and index == "j" and name == "A"
            else Schedule().pos(index, "q", name))
    k = compile_quiet(expr, formats, base.split("q", "c", "p", factor).parallelize("c", race=race))
    default = compile_quiet(expr, formats)
    ref = np.einsum(spec, *dense)
    want = default(**ops)
    for n in (1, 2):
        with spcomp_threads(n, min_work=0 if n > 1 else None):
            got = k(**ops)
        np.testing.assert_allclose(got.to_numpy(), ref, rtol=1e-10, atol=1e-10, err_msg=f"{n} thread(s)")
        _same_arrays(got, want)


DROPPING = [  # relu makes zeros of nonzeros: the output keeps only the positive values
    ("C[i,j] = relu(A[i,j] * B[i,j])", {"A": "csr", "C": "csr"}, "A", "j", {"A": (0, 1), "B": (0, 1)}),
    ("C[i,j] = relu(A[i,j] * B[i,j])", {"A": "dcsr", "C": "csr"}, "A", "j", {"A": (0, 1), "B": (0, 1)}),
    ("Y[i,j,k] = relu(B[i,j,k] * c[k])", {"B": "csf", "Y": "ddc"}, "B", "k", {"B": (0, 1, 2), "c": (2,)}),
]


@settings(max_examples=examples(20), deadline=None)
@given(case=st.sampled_from(range(len(DROPPING))), dims=st.lists(st.integers(1, 17), min_size=3, max_size=3),
       density=st.sampled_from([0.0, 0.2, 1.0]), factor=st.integers(1, 9), seed=st.integers(0, 99))
def test_position_split_into_sparse_output_dropping_zeros(case, dims, density, factor, seed):
    """A range counts the nonzero entries of its first row that earlier ranges hold."""
    expr, formats, name, index, axes = DROPPING[case]
    ops, dense = _operands(axes, formats, dims, density, seed)
    product = dense[0] * (dense[1] if dense[1].ndim == dense[0].ndim else dense[1].reshape(1, 1, -1))
    k = compile_quiet(expr, formats, Schedule().pos(index, "q", name).split("q", "c", "p", factor).parallelize("c"),
                 drop_zeros=True)
    want = compile_quiet(expr, formats, drop_zeros=True)(**ops)
    for n in (1, 2):
        with spcomp_threads(n, min_work=0 if n > 1 else None):
            got = k(**ops)
        np.testing.assert_array_equal(got.to_numpy(), np.maximum(product, 0.0), err_msg=f"{n} thread(s)")
        _same_arrays(got, want)
    assert np.all(np.asarray(got.vals) > 0)


def test_sparse_output_position_split_really_splits(monkeypatch):
    ops, dense = _operands({"A": (0, 1), "B": (0, 1)}, {"A": "csr"}, (60, 40), 0.1, 1)
    k = compile_quiet("C[i,j] = A[i,j] * B[i,j]", {"A": "csr", "C": "csr"},
                 Schedule().pos("j", "q", "A").split("q", "c", "p", 8).parallelize("c"))
    assert "two-phase assembly of C" in k.loops and "atomic_add" in k.ir
    splits = record_splits(monkeypatch)
    with spcomp_threads(2, min_work=0):
        got = k(**ops)
    assert splits, "the call ran on one thread"
    _same_arrays(got, compile_quiet("C[i,j] = A[i,j] * B[i,j]", {"A": "csr", "C": "csr"})(**ops))
    np.testing.assert_array_equal(got.to_numpy(), dense[0] * dense[1])


def test_sequential_position_loop_appends_in_order():
    ops, dense = _operands({"A": (0, 1), "x": (1,)}, {"A": "csr"}, (9, 7), 0.4, 2)
    k = compile_quiet("C[i,j] = A[i,j] * x[j]", {"A": "csr", "C": "csr"}, Schedule().pos("j", "q", "A").sequential())
    assert "two-phase" not in k.loops
    np.testing.assert_array_equal(k(**ops).to_numpy(), dense[0] * dense[1])


REFUSALS = [
    ("C[i,j] = A[i,j] * x[j]", {"A": "csr", "C": "dcsr"}, Schedule().pos("j", "q", "A"), {},
     "dense levels then one compressed level"),
    ("C[i,j] = A[i,j] * x[j]", {"A": "csr", "C": "csc"}, Schedule().pos("j", "q", "A"), {}, "storage order"),
    ("C[i,j] = A[i,j] * x[j]", {"A": "dcsr", "C": "csr"}, Schedule().pos("i", "q", "A"), {}, "storage order"),
    ("C[i,j] += A[i,j] * x[j]", {"A": "csr", "C": "csr"}, Schedule().pos("j", "q", "A"), {}, "with '='"),
    ("C[i,j] = A[i,j] * x[j]", {"A": "csr", "C": "csr"},
     Schedule().pos("j", "q", "A").split("q", "c", "p", 4).parallelize("c", race="ParallelReduction"), {},
     "no copies to add up"),
    ("C[i,j] = A[i,j] * x[j]", {"A": "csr", "C": "csr"}, Schedule().pos("j", "q", "A").split("q", "c", "p", 8)
     .split("p", "w", "t", 2).parallelize("c", "gpu-block").parallelize("w", "gpu-thread"), {"backend": "cuda-sim"},
     "one level of chunks"),
    ("C[i,j] = A[i,j] + B[i,j]", {"A": "csr", "B": "csr", "C": "csr"}, Schedule().pos("j", "q", "A"), {},
     "also walks B"),
]


@pytest.mark.parametrize("expr, formats, schedule, kw, words", REFUSALS)
def test_sparse_output_position_split_refusals(expr, formats, schedule, kw, words):
    with pytest.raises(ScheduleError, match=words):
        compile_quiet(expr, formats, schedule, **kw)


@settings(max_examples=examples(10), deadline=None)
@given(dims=st.lists(st.integers(1, 40), min_size=2, max_size=2), density=st.sampled_from([0.0, 0.2, 1.0]),
       factor=st.integers(1, 9), drop=st.booleans(), seed=st.integers(0, 99))
def test_position_split_into_sparse_output_on_cuda_sim(dims, density, factor, drop, seed):
    """A GPU thread per chunk: counts added atomically, fills from the row starts."""
    expr = "C[i,j] = relu(A[i,j] * B[i,j])" if drop else "C[i,j] = A[i,j] * B[i,j]"
    ops, (a, b) = _operands({"A": (0, 1), "B": (0, 1)}, {"A": "csr"}, dims, density, seed)
    formats = {"A": "csr", "C": "csr"}
    s = Schedule().pos("j", "q", "A").split("q", "c", "p", factor)
    k = compile_quiet(expr, formats, s, backend="cuda-sim", drop_zeros=drop)
    got = k(**ops)
    np.testing.assert_array_equal(got.to_numpy(), np.maximum(a * b, 0.0) if drop else a * b)
    _same_arrays(got, compile_quiet(expr, formats, backend="cuda-sim", drop_zeros=drop)(**ops))


@pytest.mark.skipif(not cuda.nvcc_available(), reason="nvcc (the CUDA toolkit) is not installed")
@pytest.mark.parametrize("drop", [False, True])
def test_sparse_output_position_split_compiles_with_nvcc(drop):
    k = compile_quiet("C[i,j] = relu(A[i,j] * B[i,j])", {"A": "csr", "C": "csr"},
                      Schedule().pos("j", "q", "A").split("q", "c", "p", 4), backend="cuda-sim", drop_zeros=drop)
    report = cuda.check(k, arch="sm_90")["sm_90"]
    assert set(report) == set(cuda.signature.parse_kernels(k.source)) == {"kernel_count", "kernel_fill"}
