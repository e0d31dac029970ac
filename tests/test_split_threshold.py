"""The one-thread threshold is measured on the host (threads.min_parallel_work, cpu/calibrate.py).

A call of fewer work units than the threshold stays on the calling thread. It is
measured per process and thread count (fork/join cost of libgomp's team against
one unit of SpMV work), kept between SPLIT_NEVER_WORK and SPLIT_ALWAYS_WORK, and
calls outside that band never pay for the measurement. A sample that looks
load-inflated is taken again later (runtime/split_threshold.py: the policy is
tested here with an injected clock, measurement and load, no timing), and a
cached fast path picks up a new threshold.
"""
from __future__ import annotations

import numpy as np
import pytest

import spcomp
from spcomp.backends.cpu import calibrate
from spcomp.runtime import split_threshold as policy
from spcomp.runtime import threads as _threads

from conftest import record_splits, spcomp_threads

STALL_FLOOR_S = 2e-3  # runtime/threads.py's (conftest.py and the fixture below turn the timing off)


class Clock:
    """A clock that moves only when told."""

    def __init__(self):
        self.t = 1000.0

    def __call__(self):
        return self.t


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
    fake.clock = Clock()
    monkeypatch.setattr(policy, "now", fake.clock)
    monkeypatch.setattr(policy, "load_per_core", lambda: 0.1)
    monkeypatch.setattr(_threads, "split_state", [0])
    monkeypatch.setattr(_threads, "hold", [0.0])
    monkeypatch.setattr(_threads, "_stalls", [0])
    monkeypatch.setattr(_threads, "_best_rate", {})
    # real calls are timed (threads.note_split): on a loaded host one may really wait
    # for a core and hold the band; these tests set what the timing says themselves
    monkeypatch.setattr(_threads, "STALL_FLOOR_S", float("inf"))
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


# ---------------------------------------------------------------- the re-measuring policy

LOW, HIGH, FALLBACK = 100, 1_000_000, 5_000


def threshold(samples, loads=None, clock=None):
    """A SplitThreshold fed ``samples`` (then repeating the last) under ``loads``."""
    samples, loads = list(samples), list(loads or [0.1])

    def measure():
        return samples.pop(0) if len(samples) > 1 else samples[0]

    def load():
        return loads.pop(0) if len(loads) > 1 else loads[0]
    clock = clock or Clock()
    return policy.SplitThreshold(measure, LOW, HIGH, FALLBACK, clock=clock, load=load), clock


def test_a_load_inflated_sample_is_taken_again_later_and_the_smallest_kept():
    t, clock = threshold([10 ** 9, 20_000, 30_000])
    assert t.wants_sample()
    t.sample()
    assert t.value == HIGH  # clamped: the team took a scheduler tick to wake
    assert not t.wants_sample()  # not before its time
    clock.t += policy.RETRY_FIRST_S
    assert t.wants_sample()
    assert t.sample() and t.value == 20_000
    clock.t += policy.RETRY_FIRST_S  # a clean sample is confirmed by one more, spaced
    assert t.wants_sample()
    assert not t.sample() and t.value == 20_000  # the larger second sample does not raise it
    assert t.due is None  # settled
    clock.t += 10 ** 6
    assert not t.wants_sample()
    assert t.samples == 3


def test_a_busy_host_makes_a_sample_suspect_below_the_clamp():
    """A sample taken while the load average says the cores are busy may have caught
    a quiet moment: it counts as the clamp (one thread) until a clean one comes."""
    t, clock = threshold([5_000, 40_000, 45_000], loads=[1.5, 0.2])
    t.sample()
    assert t.value == HIGH and t.due == clock.t + policy.RETRY_FIRST_S
    clock.t = t.due
    t.sample()
    assert t.value == 40_000 and t.due is not None
    clock.t = t.due
    t.sample()
    assert t.value == 40_000 and t.due is None


def test_suspect_samples_back_off_and_never_stop():
    t, clock = threshold([10 ** 9])
    waits = []
    for _ in range(12):
        before = clock.t
        t.sample()
        waits.append(t.due - before)
        clock.t = t.due
    assert waits[:3] == [policy.RETRY_FIRST_S, 2 * policy.RETRY_FIRST_S, 4 * policy.RETRY_FIRST_S]
    assert max(waits) == policy.RETRY_MAX_S and waits[-1] == policy.RETRY_MAX_S
    assert t.value == HIGH


def test_a_failed_measurement_is_final():
    for failure in (None, RuntimeError("no driver")):
        def measure(failure=failure):
            if isinstance(failure, Exception):
                raise failure
            return failure
        t = policy.SplitThreshold(measure, LOW, HIGH, FALLBACK, clock=Clock(), load=lambda: 0.1)
        t.sample()
        assert t.value == FALLBACK and t.due is None and not t.wants_sample()


def test_min_parallel_work_samples_again_and_bumps_the_generation(fresh):
    fresh.value = 10 ** 9
    assert _threads.min_parallel_work(50_000, 2) == _threads.SPLIT_ALWAYS_WORK
    (generation,) = _threads.split_state
    due = _threads.measured_threshold(2).due
    assert due == fresh.clock.t + policy.RETRY_FIRST_S
    fresh.value = 20_000
    assert _threads.min_parallel_work(50_000, 2) == _threads.SPLIT_ALWAYS_WORK  # not due yet
    fresh.clock.t = due
    assert _threads.min_parallel_work(50_000, 2) == 20_000
    assert _threads.split_state[0] > generation
    fresh.clock.t += policy.RETRY_FIRST_S
    assert _threads.min_parallel_work(50_000, 2) == 20_000
    assert _threads.measured_threshold(2).due is None  # settled: no sample pending
    assert fresh.calls == [2, 2, 2]


def test_a_cached_fast_path_picks_up_a_new_threshold(fresh, monkeypatch):
    """A kernel called again and again with the same operands (its FastCall path)
    stays on one thread while the measurement says so, and splits once a later
    sample finds the host quiet, without any call of another kind in between."""
    import scipy.sparse as sp
    A = sp.random(3000, 3000, density=0.004, format="csr", random_state=np.random.default_rng(0))
    x = np.random.default_rng(1).random(3000)
    k = spcomp.compile("y[i] = A[i,j] * x[j]", formats={"A": "csr"})
    split = record_splits(monkeypatch)
    with spcomp_threads(2):
        fresh.value = 10 ** 9  # a busy host: the team is slow to wake
        one = [k(A=A, x=x) for _ in range(3)]
        assert split == []
        assert k._fast is not None  # the repeated calls ran on the fast path
        fresh.value = _threads.SPLIT_NEVER_WORK  # quiet now, once the sample is due
        fresh.clock.t += policy.RETRY_FIRST_S
        two = [k(A=A, x=x) for _ in range(3)]
        assert split and set(split) == {2}
    for y in one + two:
        np.testing.assert_array_equal(y, one[0])


def test_a_sample_due_for_another_thread_count_leaves_the_fast_path_alone(fresh, monkeypatch):
    """A fast path watches the threshold of its own thread count: one still sampling
    for another count (a process that used 3 threads before) does not send every
    2-thread call the general way."""
    import scipy.sparse as sp
    A = sp.random(3000, 3000, density=0.004, format="csr", random_state=np.random.default_rng(0))
    x = np.random.default_rng(1).random(3000)
    k = spcomp.compile("y[i] = A[i,j] * x[j]", formats={"A": "csr"})
    general = []
    real = _threads.min_parallel_work
    monkeypatch.setattr(_threads, "min_parallel_work", lambda *a, **kw: (general.append(a), real(*a, **kw))[1])
    fresh.value = 10 ** 9  # 3 threads: suspect, sampled again later
    with spcomp_threads(3):
        k(A=A, x=x)
    assert _threads.measured_threshold(3).due is not None
    fresh.value = 20_000
    with spcomp_threads(2):
        k(A=A, x=x)
        fresh.clock.t += policy.RETRY_FIRST_S
        k(A=A, x=x)  # the confirming sample: settled
        assert _threads.measured_threshold(2).due is None
        fresh.clock.t += 10 * policy.RETRY_MAX_S  # the 3-thread sample is long due
        general.clear()
        for _ in range(5):
            k(A=A, x=x)
        assert len(general) <= 1  # (at most the call that rebuilt the fast path)


def test_a_split_that_waited_for_a_core_holds_the_band_on_one_thread(fresh, monkeypatch):
    """A split call far slower than one thread would be waited for a core (NumPy's
    OpenBLAS workers spin after each BLAS call): the band's calls stay on one
    thread for HOLD_S, and cached decisions are made again when it starts and ends."""
    monkeypatch.setattr(_threads, "STALL_FLOOR_S", STALL_FLOOR_S)
    assert _threads.min_parallel_work(50_000, 2) == 10_000
    generation = _threads.split_state[0]
    assert not _threads.note_split(50_000, 1e-3)   # under the floor: a slow wake at most
    assert not _threads.note_split(3_000_000, 4e-3)  # ~2.3 ms of work on one thread: not a wait
    assert _threads.split_state[0] == generation and not _threads.hold[0]
    # 0.04 ms of work took 7 ms: once may be a team waking from sleep, twice in a row waits
    assert not _threads.note_split(50_000, 7e-3)
    assert not _threads.note_split(50_000, 1e-4)    # the next one was quick: no hold
    assert not _threads.note_split(50_000, 7e-3)
    assert _threads.note_split(50_000, 7e-3)
    assert _threads.split_state[0] > generation
    assert _threads.min_parallel_work(50_000, 2) == _threads.SPLIT_ALWAYS_WORK
    assert _threads.min_parallel_work(_threads.SPLIT_ALWAYS_WORK, 2) <= _threads.SPLIT_ALWAYS_WORK
    fresh.clock.t += _threads.HOLD_S
    generation = _threads.split_state[0]
    assert _threads.min_parallel_work(50_000, 2) == 10_000
    assert _threads.split_state[0] > generation and not _threads.hold[0]
    # calls outside the band and fixed thresholds are never held
    assert not _threads.note_split(_threads.SPLIT_ALWAYS_WORK, 1.0)
    monkeypatch.setattr(_threads, "MIN_PARALLEL_WORK", 0)
    assert not _threads.note_split(50_000, 1.0)


def test_a_kernel_dear_per_unit_is_judged_by_its_own_best_split(fresh, monkeypatch):
    """An SpGEMM's unit (a scatter into a workspace) costs several SpMV units: its
    ordinary two-thread calls (2.4-2.6 ms for 500 000 units, more than twice the generic
    0.75 ns a unit) are not waits once PACE_CALLS calls have set its pace; a call
    BEST_FACTOR times slower than its best still is. Until then the generic rule holds
    (a kernel whose first calls all wait is held as before)."""
    monkeypatch.setattr(_threads, "STALL_FLOOR_S", STALL_FLOOR_S)
    spgemm, spmv = object(), object()
    assert _threads.PACE_CALLS == 3
    assert not _threads.note_split(500_000, 2.2e-3, spgemm)   # a wait by the generic rule, alone
    assert not _threads.note_split(500_000, 1.0e-3, spgemm)   # (quick: the run of waits ends)
    assert not _threads.note_split(500_000, 2.2e-3, spgemm)
    generation = _threads.split_state[0]
    for elapsed in (2.6e-3, 2.4e-3, 2.5e-3, 2.6e-3):           # its pace set: ~2.5x its best, not waits
        assert not _threads.note_split(500_000, elapsed, spgemm)
    assert _threads.split_state[0] == generation and not _threads.hold[0]
    assert not _threads.note_split(500_000, 3.5e-3, spgemm)  # 3.5x its best: waited, once
    assert _threads.note_split(500_000, 3.6e-3, spgemm)
    assert _threads.split_state[0] > generation
    # another kernel has no pace yet: the generic rule (0.04 ms of work took 7 ms)
    fresh.clock.t += _threads.HOLD_S
    assert not _threads.note_split(50_000, 7e-3, spmv)
    assert _threads.note_split(50_000, 7e-3, spmv)


def test_a_repeated_call_that_waited_runs_on_one_thread_until_the_hold_ends(fresh, monkeypatch):
    """The general path and the fast path both time the calls the threshold split;
    one that waited keeps the repeated calls on one thread, the fast path included,
    until the hold ends (every split here is made to look slow)."""
    monkeypatch.setattr(_threads, "STALL_FLOOR_S", STALL_FLOOR_S)
    import scipy.sparse as sp
    A = sp.random(3000, 3000, density=0.004, format="csr", random_state=np.random.default_rng(0))
    x = np.random.default_rng(1).random(3000)
    k = spcomp.compile("y[i] = A[i,j] * x[j]", formats={"A": "csr"})
    fresh.value = _threads.SPLIT_NEVER_WORK  # every call of the band splits
    timed = []
    real = _threads.note_split
    monkeypatch.setattr(_threads, "note_split",
                        lambda units, elapsed, key=None: (timed.append(units), real(units, 1.0))[1])
    with spcomp_threads(2):
        first = k(A=A, x=x)
        assert len(timed) == 1 and not _threads.hold[0]  # one slow split alone holds nothing
        k(A=A, x=x)
        assert len(timed) == 2 and _threads.hold[0]      # the second in a row does
        held = [k(A=A, x=x) for _ in range(4)]
        assert len(timed) == 2 and k._fast is not None  # on one thread, the fast path too
        fresh.clock.t += _threads.HOLD_S
        after = [k(A=A, x=x) for _ in range(3)]
        assert len(timed) == 4  # split again once the hold ended (and held again after two)
    for y in held + after:
        np.testing.assert_array_equal(y, first)


def test_the_fast_path_times_the_calls_it_splits(fresh, monkeypatch):
    """Repeated split calls (the generated fast path) are timed too; calls that did
    not wait leave the threshold alone."""
    import scipy.sparse as sp
    A = sp.random(3000, 3000, density=0.004, format="csr", random_state=np.random.default_rng(0))
    x = np.random.default_rng(1).random(3000)
    k = spcomp.compile("y[i] = A[i,j] * x[j]", formats={"A": "csr"})
    fresh.value = _threads.SPLIT_NEVER_WORK
    timed = []
    real = _threads.note_split
    monkeypatch.setattr(_threads, "note_split",
                        lambda units, elapsed, key=None: (timed.append(units), real(units, 0.0))[1])
    with spcomp_threads(2):
        for _ in range(5):
            k(A=A, x=x)
    assert len(timed) == 5 and len(set(timed)) == 1 and not _threads.hold[0]
    assert k._fast is not None and k._fast.latest.split_units == timed[0]
