"""Schedule.divide (TACO's divide): a loop run as P blocks of ceil(N/P) coordinates,
the block size taken at run time; results equal the default schedule's, bit for bit
where the order of every sum is kept (a divided output loop, or a divided reduction
whose pieces stay adjacent)."""
from __future__ import annotations

import warnings

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import spcomp
from spcomp import Schedule
from spcomp.errors import ScheduleError
from spcomp.runtime import tuning

from conftest import examples, spcomp_threads

MATMUL = "C[i,j] = A[i,k] * B[k,j]"


def _compile(expr, schedule, formats=None):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return spcomp.compile(expr, formats=formats, schedule=schedule)


def test_divide_prints_its_run_time_block():
    k = _compile("y[i] = A[i,j] * x[j]", Schedule().divide("i", "i0", "i1", 4).parallelize("i0"))
    lines = [line.strip() for line in k.loops.splitlines()]
    assert lines[1] == "for i0 in 0..ceil(N_i/ceil(N_i/4)) (parallel: threads)"
    assert lines[2].startswith("for i1 in 0..min(ceil(N_i/4), N_i-i0*ceil(N_i/4))")
    assert k.lowered.threads.split == (-4, True)


@pytest.mark.parametrize("bad, match", [
    (lambda: Schedule().divide("i", "i0", "i1", 0), "parts must be in 1"),
    (lambda: Schedule().divide("i", "i0", "i1", True), "must be an integer"),
    (lambda: Schedule().divide("i", "i", "i1", 2), "three distinct"),
])
def test_bad_divides_are_refused(bad, match):
    with pytest.raises(ScheduleError, match=match):
        bad()


def test_divide_refuses_what_split_refuses():
    with pytest.raises(ScheduleError, match=r"divide\('q'"):
        spcomp.compile("y[i] = A[i,j] * x[j]", schedule=Schedule().divide("q", "q0", "q1", 2))
    with pytest.raises(ScheduleError, match="only dense loops can be split"):
        spcomp.compile("y[i] = A[i,j] * x[j]", formats={"A": "csr"}, schedule=Schedule().divide("j", "j0", "j1", 2))


def test_divide_round_trips_through_the_tuning_cache():
    s = Schedule().divide("i", "i0", "i1", 3).parallelize("i0")
    assert tuning.from_data(tuning.to_data(s)) == s


@settings(max_examples=examples(40), deadline=None)
@given(expr=st.sampled_from([MATMUL, "y[i] = A[i,j] * x[j]", "y[i] = A[i,j] * x[j]"]),
       which=st.sampled_from(["i", "j", "k"]), parts=st.integers(1, 9), parallel=st.booleans(),
       threads=st.sampled_from([1, 2, 3]), n=st.integers(0, 12), m=st.integers(0, 12), seed=st.integers(0, 99))
def test_random_divides_equal_the_default_bitwise(expr, which, parts, parallel, threads, n, m, seed):
    names = {"i", "j"} | ({"k"} if expr == MATMUL else set())
    if which not in names:
        which = "i"
    s = Schedule().divide(which, "p0", "p1", parts)
    if parallel and which == "i":
        s = s.parallelize("p0")
    rng = np.random.default_rng(seed)
    if expr == MATMUL:
        ops = {"A": rng.standard_normal((n, m)), "B": rng.standard_normal((m, 5))}
    else:
        ops = {"A": rng.standard_normal((n, m)), "x": rng.standard_normal(m)}
    default = _compile(expr, Schedule())
    k = _compile(expr, s)
    with spcomp_threads(threads, min_work=0):
        got = k(**ops)
    want = default(**ops)
    if "BLAS" in default.loops:  # the default is one dgemm call: its own order of sums, not bit for bit
        assert np.allclose(got, want, rtol=1e-12, atol=1e-12)
        return
    assert np.asarray(got).tobytes() == np.asarray(want).tobytes()
