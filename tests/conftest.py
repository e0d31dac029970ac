"""Hypothesis profiles and shared test helpers.

Profiles (choose with ``HYPOTHESIS_PROFILE=name``; default ``ci``):

* ``ci``: deterministic (``derandomize=True``, no example database), no
  deadline (a kernel compiles in 20-500 ms), the example counts each property
  test asks for through :func:`examples`.
* ``dev``: random seeds and the local example database, same counts: use it to
  look for new failures.
* ``thorough``: like ``dev`` with 10x the examples.

``SPCOMP_HYPOTHESIS_EXAMPLES`` scales every property test's example count: a
float factor (``SPCOMP_HYPOTHESIS_EXAMPLES=0.2`` for a smoke run, ``=5`` for a
soak run).

Kernels compile into a fresh on-disk cache per test session (a temporary
``SPCOMP_CACHE_DIR``, removed at the end) unless ``SPCOMP_CACHE_DIR`` is already
set, so a run neither reads nor fills the user's cache and every lowering under
test is done by the code under test (export ``SPCOMP_CACHE_DIR`` to reuse one).
"""
from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections import Counter

import pytest
from hypothesis import HealthCheck, settings

_SUPPRESS = [HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much,
             HealthCheck.large_base_example]

_SESSION_CACHE = None
if not os.environ.get("SPCOMP_CACHE_DIR"):
    _SESSION_CACHE = tempfile.mkdtemp(prefix="spcomp-test-cache-")
    os.environ["SPCOMP_CACHE_DIR"] = _SESSION_CACHE


def pytest_sessionfinish(session, exitstatus):
    if _SESSION_CACHE is not None:
        shutil.rmtree(_SESSION_CACHE, ignore_errors=True)


settings.register_profile("ci", deadline=None, derandomize=True, database=None, print_blob=True,
                          suppress_health_check=_SUPPRESS)
settings.register_profile("dev", deadline=None, print_blob=True, suppress_health_check=_SUPPRESS)
settings.register_profile("thorough", deadline=None, print_blob=True, suppress_health_check=_SUPPRESS)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))

# Split calls are timed, and one that waited for a core keeps the measured band on one
# thread for a moment (runtime/threads.note_split). Test workers share the cores, so
# their calls really wait at times: off for the suite, so that whether a call splits
# stays the threshold's decision; tests/test_split_threshold.py turns it on.
from spcomp.runtime import threads as _runtime_threads  # noqa: E402

_runtime_threads.STALL_FLOOR_S = float("inf")


def examples(n: int) -> int:
    """``n`` scaled by ``SPCOMP_HYPOTHESIS_EXAMPLES`` (and 10x under ``thorough``), at least 1."""
    try:
        factor = float(os.environ.get("SPCOMP_HYPOTHESIS_EXAMPLES", "1"))
    except ValueError:
        factor = 1.0
    if os.environ.get("HYPOTHESIS_PROFILE") == "thorough":
        factor *= 10
    return max(1, int(round(n * factor)))


class OutcomeStats:
    """Counts what the generated cases of one property test did: ``ok``,
    ``refused`` (UnsupportedError with a reason, by first line of the message),
    ``known bug`` (by bug name). Summarised at the end of the run."""

    registry: dict = {}

    def __init__(self, name: str):
        self.name = name
        self.counts = Counter()
        self.refusals = Counter()
        self.known = Counter()
        self.features = Counter()
        OutcomeStats.registry[name] = self

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    def ok(self):
        self.counts["ok"] += 1

    def refused(self, reason: str):
        self.counts["refused"] += 1
        self.refusals[reason] += 1

    def known_bug(self, name: str):
        self.counts["known bug"] += 1
        self.known[name] += 1

    def feature(self, *names: str):
        """Count features of a case that ran (sparse output, += ...), for the summary."""
        for n in names:
            self.features[n] += 1

    def refusal_rate(self) -> float:
        return self.counts["refused"] / self.total if self.total else 0.0

    def summary(self) -> str:
        parts = [f"{self.name}: {self.total} cases, " + ", ".join(f"{k} {v}" for k, v in sorted(self.counts.items()))]
        if self.features:
            parts.append("    ran: " + ", ".join(f"{k} {v}" for k, v in sorted(self.features.items())))
        for reason, n in self.refusals.most_common(5):
            parts.append(f"    refused {n}x: {reason}")
        for bug, n in self.known.most_common():
            parts.append(f"    known bug {n}x: {bug}")
        return "\n".join(parts)

    def assert_refusal_rate(self, limit: float = 0.2):
        assert self.refusal_rate() <= limit, (
            f"{self.refusal_rate():.0%} of the generated cases were refused (limit {limit:.0%}); "
            f"narrow the generators.\n{self.summary()}")


@pytest.fixture
def cache_dir(tmp_path, monkeypatch):
    """A fresh, private disk cache for the test (and no kernel kept in memory)."""
    import spcomp
    monkeypatch.setenv("SPCOMP_CACHE_DIR", str(tmp_path / "cache"))
    spcomp.clear_cache()
    yield tmp_path / "cache"
    spcomp.clear_cache()


@pytest.fixture
def outcome_stats(request):
    """An :class:`OutcomeStats` named after the test."""
    return OutcomeStats(request.node.name)


def pytest_terminal_summary(terminalreporter):
    if not OutcomeStats.registry:
        return
    terminalreporter.section("spcomp property-test outcomes")
    for stats in OutcomeStats.registry.values():
        terminalreporter.write_line(stats.summary())


@contextlib.contextmanager
def spcomp_threads(n: int, min_work: int | None = None):
    """spcomp's thread count set to ``n`` for the block; with ``min_work`` the
    runtime's MIN_PARALLEL_WORK too (0: split even tiny calls). Both restored after."""
    import spcomp
    from spcomp.runtime import threads as _threads
    before, work = spcomp.get_num_threads(), _threads.MIN_PARALLEL_WORK
    spcomp.set_num_threads(n)
    if min_work is not None:
        _threads.MIN_PARALLEL_WORK = min_work
    try:
        yield
    finally:
        spcomp.set_num_threads(before)
        _threads.MIN_PARALLEL_WORK = work


@contextlib.contextmanager
def split_everything(n: int, monkeypatch, any_copies: bool = False):
    """``n`` threads even for tiny work (and, with ``any_copies``, per-thread partial
    copies of the output whatever their size); yields the list of (extent, parts)
    splits the runtime made."""
    from spcomp.runtime import partials
    from spcomp.runtime import threads as _threads
    calls = []
    real = _threads.split

    def spy(extent, parts, pos=None):
        calls.append((extent, parts))
        return real(extent, parts, pos)
    monkeypatch.setattr(_threads, "split", spy)
    if any_copies:
        monkeypatch.setattr(partials, "COPY_SHARE", float("inf"))
    with spcomp_threads(n, min_work=0):
        yield calls


def record_splits(monkeypatch) -> list:
    """A list that collects the thread count each time the runtime cuts a call's
    row bounds for the native driver, and the number of chunks each time the Python
    pool runs a call on more than one (a split call adds once or more; a call on
    one thread never does)."""
    import spcomp
    from spcomp.runtime import threads as _threads
    split = []
    from spcomp.runtime.launch import Launcher
    real_bounds = Launcher.bounds
    real_ranges = _threads.run_ranges

    def bounds(self, rows, nthreads, pos):
        split.append(nthreads)
        return real_bounds(self, rows, nthreads, pos)

    def run_ranges(call, n, pos=None, threads=None, work=None):
        ran = []

        def counted(lo, hi):
            ran.append(lo)
            return call(lo, hi)
        statuses = real_ranges(counted, n, pos, threads=threads, work=work)
        if len(ran) > 1:
            split.append(len(ran))
        return statuses
    monkeypatch.setattr(Launcher, "bounds", bounds)
    monkeypatch.setattr(_threads, "run_ranges", run_ranges)
    return split


def pytest_configure(config):
    """Every test runs with the fresh dense outputs the runtime leaves unzeroed
    (a kernel that stores every element, spcomp/lower/coverage.py) filled with NaN
    bytes instead of whatever ``np.empty`` returned, which is often zero by luck: a
    kernel that skips an element it promised to store then fails its check, in
    every property and example test."""
    from spcomp.runtime.outputs import poison_unzeroed
    poison_unzeroed(True)


def assert_same_bits(a, b):
    """Two result Tensors hold the same format, shape and arrays, bit for bit."""
    import numpy as np
    assert a.format == b.format and a.shape == b.shape
    mine = [np.asarray(x) for level in a.levels for x in level.values()] + [np.asarray(a.vals)]
    theirs = [np.asarray(x) for level in b.levels for x in level.values()] + [np.asarray(b.vals)]
    for x, y in zip(mine, theirs):
        assert x.dtype == y.dtype and x.shape == y.shape
        assert x.tobytes() == y.tobytes()
