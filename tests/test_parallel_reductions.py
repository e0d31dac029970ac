"""Reductions on CPU threads: per-thread partial results added at the end (runtime/partials.py).

A scalar output's sum (dot products, norms) and a loop over a reduction index that
scatters into a short dense vector (column sums of a csr, ``A^T x``) run on all
threads: chunk ``c`` adds into its own zeroed copy of the output and the copies are
added into the output in chunk order. The sum is reassociated, so results are
compared with one thread's by tolerance (and bitwise from call to call), and
against the NumPy reference. These tests force splitting of small inputs
(``MIN_PARALLEL_WORK = 0``) and check the split happened.
"""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import spcomp
from spcomp.errors import ScheduleError
from spcomp.runtime import launch, partials
from spcomp.runtime import threads as _threads
from spcomp.testing import check_kernel, random_operands

from conftest import examples, spcomp_threads, split_everything


REDUCTIONS = [
    ("a = x[i] * y[i]", {}),                                  # dot product
    ("a = x[i] * x[i]", {"x": "c"}),                          # a norm, sparse vector: by positions
    ("a = x[i] * y[i]", {"x": "c"}),                          # sparse . dense
    ("a = A[i,j] * A[i,j]", {"A": "csr"}),                    # Frobenius norm
    ("a = A[i,j] * x[j]", {"A": "dcsr"}),                     # DCSR: the top level's positions
    ("a = B[i,j,k]", {"B": "csf"}),                           # CSF sum
    ("a += x[i] * y[i]", {}),                                 # into an old value
    ("y[j] = A[i,j]", {"A": "csr"}),                          # column sums
    ("y[j] = A[i,j] * x[i]", {"A": "csr"}),                   # A^T x
    ("y[j] += A[i,j] * x[i]", {"A": "csr"}),
]


@pytest.mark.parametrize("expr, formats", REDUCTIONS)
def test_reductions_are_parallel_with_partials(expr, formats):
    k = spcomp.compile(expr, formats=formats)
    th = k.lowered.threads
    assert th.parallel is not None and th.partials
    assert "(parallel: threads" in k.loops


@pytest.mark.parametrize("expr, formats", [
    ("a = x[i] * y[i]", {"x": "c", "y": "c"}),               # the top loop co-iterates two levels
    ("a = x[i] + y[j]", {}),                                  # two sums: i's would repeat j's per thread
    ("C[j,k] = A[i,j] * B[i,k]", {"A": "csr"}),               # a matrix output: copies too large
])
def test_reductions_that_stay_on_one_thread(expr, formats):
    k = spcomp.compile(expr, formats=formats)
    assert not k.lowered.threads.partials


def test_gpu_keeps_atomics():
    k = spcomp.compile("a = x[i] * y[i]", backend="cuda-sim")
    assert not k.lowered.threads.partials


def test_explicit_parallelize_of_a_scalar_sum():
    k = spcomp.compile("a = x[i] * y[i]", schedule=spcomp.Schedule().parallelize("i"))
    assert k.lowered.threads.partials
    with pytest.raises(ScheduleError, match="only the outermost loop"):
        spcomp.compile("a = A[i,j]", formats={"A": "csr"}, schedule=spcomp.Schedule().parallelize("j"))


@pytest.mark.parametrize("threads", [2, 3])
@pytest.mark.parametrize("expr, formats", REDUCTIONS)
def test_split_reductions_match_one_thread(expr, formats, threads, monkeypatch):
    k = spcomp.compile(expr, formats=formats)
    ops = random_operands(k, sizes={"i": 37, "j": 11, "k": 5}, density=0.4, seed=3)
    out = k.notation.lhs.tensor.name

    def call():
        o = dict(ops)
        if out in o:
            o[out] = np.array(o[out], copy=True)
        return k(**o)
    with spcomp_threads(1):
        one = call()
    with split_everything(threads, monkeypatch, any_copies=True) as calls:
        two = call()
        again = call()
    assert calls, "the call was not split"
    np.testing.assert_allclose(two, one, rtol=1e-12, atol=1e-12)
    np.testing.assert_array_equal(two, again)  # one thread count: the same bits each call
    check_kernel(expr, formats, operands={n: (np.array(v, copy=True) if n == out else v)
                                          for n, v in ops.items()})


def test_partials_copies_only_when_small(monkeypatch):
    """A vector output as long as the work would cost more to copy than it saves."""
    k = spcomp.compile("y[j] = A[i,j]", formats={"A": "csr"})
    low = k.lowered
    assert partials.worth(low, {"i": 10, "j": 10}, 2, 10_000)
    assert not partials.worth(low, {"i": 10, "j": 10_000}, 2, 10_000)
    monkeypatch.setattr(_threads, "MIN_PARALLEL_WORK", 1)
    assert not launch.Launcher.worth_splitting(low, {"i": 10, "j": 10_000}, 2, 10_000)
    assert launch.Launcher.worth_splitting(low, {"i": 10, "j": 10}, 2, 10_000)


@st.composite
def reduction_kernels(draw):
    expr, formats = draw(st.sampled_from(REDUCTIONS))
    sizes = {c: draw(st.sampled_from([0, 1, 2, 7, 30])) for c in "ijk"}
    return expr, formats, sizes, draw(st.sampled_from([0.05, 0.5, 1.0])), draw(st.sampled_from([2, 3, 4]))


@settings(max_examples=examples(25), deadline=None)
@given(case=reduction_kernels(), seed=st.integers(0, 2 ** 16))
def test_random_reductions_on_threads(case, seed):
    expr, formats, sizes, density, threads = case
    k = spcomp.compile(expr, formats=formats)
    ops = random_operands(k, sizes=sizes, density=density, seed=seed)
    out = k.notation.lhs.tensor.name
    fresh = {n: (np.array(v, copy=True) if n == out else v) for n, v in ops.items()}
    with spcomp_threads(1):
        one = k(**fresh)
    before = partials.COPY_SHARE
    partials.COPY_SHARE = float("inf")
    try:
        with spcomp_threads(threads, min_work=0):
            got = k(**{n: (np.array(v, copy=True) if n == out else v) for n, v in ops.items()})
    finally:
        partials.COPY_SHARE = before
    np.testing.assert_allclose(got, one, rtol=1e-12, atol=1e-12)
    with spcomp_threads(threads, min_work=0):
        check_kernel(expr, formats, operands={n: (np.array(v, copy=True) if n == out else v)
                                              for n, v in ops.items()})


def test_python_pool_partials(monkeypatch):
    """Without the native driver (no libgomp) the Python pool runs the chunks, each
    into its own copy."""
    k = spcomp.compile("y[j] = A[i,j] * x[i]", formats={"A": "csr"})
    monkeypatch.setattr(launch.Launcher, "driver_of", lambda self, variant: None)
    ops = random_operands(k, sizes={"i": 50, "j": 6}, density=0.5, seed=1)
    with spcomp_threads(1):
        one = k(**ops)
    with split_everything(2, monkeypatch, any_copies=True) as calls:
        two = k(**ops)
    assert calls
    np.testing.assert_allclose(two, one, rtol=1e-12, atol=1e-12)
