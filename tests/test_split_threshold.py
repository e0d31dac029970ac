"""The one-thread threshold is measured on the host (threads.min_parallel_work, cpu/calibrate.py).

A call of fewer work units than the threshold stays on the calling thread. It is
measured once per process and thread count (fork/join cost of libgomp's team
against one unit of SpMV work), kept between SPLIT_NEVER_WORK and
SPLIT_ALWAYS_WORK, and calls outside that band never pay for the measurement.
"""
from __future__ import annotations

import numpy as np
import pytest

import spcomp
from spcomp.backends.cpu import calibrate
from spcomp.runtime import threads as _threads

from conftest import record_splits, spcomp_threads


@pytest.fixture
def fresh(monkeypatch):
    """No fixed threshold, no environment override, no measurement yet; a counting
    calibrator returning ``fresh.value``."""
    calls = []

    class Fake:
        value = 10_000

        def __call__(self, threads):
            calls.append(threads)
            if isinstance(self.value, Exception):
                raise self.value
            return self.value
    fake = Fake()
    fake.calls = calls
    monkeypatch.setattr(_threads, "MIN_PARALLEL_WORK", None)
    monkeypatch.delenv("SPCOMP_MIN_PARALLEL_WORK", raising=False)
    monkeypatch.setattr(_threads, "_measured", {})
    monkeypatch.setattr(_threads, "_calibrator", fake)
    return fake


def test_measured_once_per_thread_count(fresh):
    assert _threads.min_parallel_work(50_000, 2) == 10_000
    assert _threads.min_parallel_work(60_000, 2) == 10_000
    assert _threads.min_parallel_work(60_000, 3) == 10_000
    assert fresh.calls == [2, 3]


def test_calls_outside_the_band_are_not_measured(fresh):
    assert _threads.min_parallel_work(_threads.SPLIT_ALWAYS_WORK, 2) <= _threads.SPLIT_ALWAYS_WORK
    assert _threads.min_parallel_work(10, 2) > 10
    assert fresh.calls == []


@pytest.mark.parametrize("value, want", [(1, _threads.SPLIT_NEVER_WORK), (10 ** 9, _threads.SPLIT_ALWAYS_WORK),
                                         (None, _threads.FALLBACK_PARALLEL_WORK),
                                         (RuntimeError("no"), _threads.FALLBACK_PARALLEL_WORK)])
def test_measurement_is_clamped_and_failures_keep_the_fixed_threshold(fresh, value, want):
    fresh.value = value
    assert _threads.min_parallel_work(50_000, 2) == want


def test_fixed_threshold_and_environment_win(fresh, monkeypatch):
    monkeypatch.setenv("SPCOMP_MIN_PARALLEL_WORK", "123")
    assert _threads.min_parallel_work(50_000, 2) == 123
    monkeypatch.setattr(_threads, "MIN_PARALLEL_WORK", 7)
    assert _threads.min_parallel_work(50_000, 2) == 7
    assert fresh.calls == []


def test_small_kernels_that_gain_use_two_threads(fresh, monkeypatch):
    """A call in the band splits when the measurement says it gains, and stays on one
    thread when it does not; the results are the same bits (rows are split)."""
    import scipy.sparse as sp
    A = sp.random(3000, 3000, density=0.004, format="csr", random_state=np.random.default_rng(0))
    x = np.random.default_rng(1).random(3000)
    k = spcomp.compile("y[i] = A[i,j] * x[j]", formats={"A": "csr"})
    split = record_splits(monkeypatch)
    with spcomp_threads(2):
        fresh.value = _threads.SPLIT_NEVER_WORK
        two = k(A=A, x=x)
        assert split and set(split) == {2}
        monkeypatch.setattr(_threads, "_measured", {})
        k._fast = None
        split.clear()
        fresh.value = 10 ** 9
        one = k(A=A, x=x)
        assert split == []
    np.testing.assert_array_equal(one, two)


def test_calibration_measures_positive_costs():
    got = calibrate.measure(2)
    if got is None:
        pytest.skip("no libgomp here: no native driver to measure")
    unit, fork_join = got
    assert 0 < unit < 1000  # ns per unit of SpMV work
    assert fork_join >= 0
    assert calibrate.threshold(1) is None
