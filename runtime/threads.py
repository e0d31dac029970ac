"""A persistent thread pool that runs a kernel's parallel loop in chunks.

Generated kernels take their outer loop's bounds ``[lo, hi)`` as arguments, so
running in parallel is calling the same function on disjoint ranges from
several threads; ctypes releases the GIL for the call. Ranges are balanced by
the nonzeros a pos array says each row holds, not by row count.
"""
from __future__ import annotations

import contextlib
import os
import threading
import time
import numpy as np

from .handoff import Task, Worker
from . import split_threshold
from .split_threshold import SplitThreshold

_lock = threading.Lock()
_pool: "_Pool | None" = None
_num_threads: int | None = None
class _Local(threading.local):
    """This thread's cap from thread_limit(), if any. The class default makes reading
    an unset cap a plain lookup: ``getattr(local, name, None)`` raised and caught an
    AttributeError, ~0.8 us of every warm call's ~2 us of Python."""
    limit = None


_local = _Local()
# threads inside a thread_limit() block now: while none is (the usual case) no
# thread's cap is read, a thread-local lookup that costs ~4 us with cold caches
_limited = 0


class _Pool:
    """Worker threads that run the ranges of one call after another's.

    Each range is a :class:`~.handoff.Task`: a hand-over costs a few microseconds,
    several times less than a concurrent.futures pool, which matters for
    sub-millisecond kernels; and an exception on the calling thread (Ctrl-C while
    it waits) withdraws the ranges no worker has taken and waits for the others
    before it propagates, so no worker writes into arrays the caller frees and the
    next call finds the pool as it was."""

    def __init__(self, n: int):
        self.workers = [Worker("spcomp-worker") for _ in range(n)]
        self.busy = threading.Lock()

    def run(self, call, ranges) -> list:
        """Run ``call`` over ``ranges``: the first on this thread, the rest on workers."""
        with self.busy:
            tasks = [Task(call, lo, hi) for lo, hi in ranges[1:len(self.workers) + 1]]
            try:
                for w, t in zip(self.workers, tasks):
                    w.tasks.put(t)
                results = [call(*ranges[0])]
                for t in tasks:
                    t.wait()
            except BaseException:
                for t in tasks:
                    t.settle()
                raise
        for t in tasks:
            if t.error is not None:
                raise t.error
            results.append(t.result)
        return results


def _default_threads() -> int:
    env = os.environ.get("SPCOMP_NUM_THREADS")
    if env:
        try:
            return max(1, int(env))
        except ValueError:
            pass
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - not Linux
        return max(1, os.cpu_count() or 1)


def get_num_threads() -> int:
    """Threads a kernel called from this thread may use: the process-wide count,
    capped by an enclosing :func:`thread_limit` on this thread."""
    count = _num_threads or _process_threads()
    if not _limited:
        return count
    limit = _local.limit
    return count if limit is None else min(limit, count)


def _process_threads() -> int:
    global _num_threads
    if _num_threads is None:
        _num_threads = _default_threads()
    return _num_threads


@contextlib.contextmanager
def thread_limit(n: int):
    """Within the block, kernels called *from this thread* use at most ``n`` threads.

    For code that is already parallel (one kernel call per worker of the caller's
    own pool): each call then runs on its worker instead of starting a thread team
    of its own, which would put two teams' threads on the same cores. Other
    threads, and the count after the block, are unchanged."""
    n = int(n)
    if n < 1:
        raise ValueError("thread_limit: n must be >= 1")
    global _limited
    with _lock:
        _limited += 1  # (before this thread's cap is set: it is read whenever it is set)
    before = _local.limit
    _local.limit = n if before is None else min(n, before)
    try:
        yield
    finally:
        _local.limit = before
        with _lock:
            _limited -= 1


def set_num_threads(n: int) -> None:
    """Use ``n`` threads for parallel kernels (default: the cores available,
    or ``SPCOMP_NUM_THREADS``; 1 in a child made by ``os.fork()``, where ``n``
    threads then run on the Python pool, never on libgomp's team)."""
    global _num_threads, _pool
    n = int(n)
    if n < 1:
        raise ValueError("set_num_threads: n must be >= 1")
    with _lock:
        _num_threads = n
        _pool = None  # idle workers of the old pool stay parked; a new pool is sized to n
        split_state[0] += 1  # (cached split decisions were made for the old count)


def _get_pool() -> "_Pool":
    global _pool
    with _lock:
        if _pool is None:
            _pool = _Pool(max(1, _process_threads() - 1))
        return _pool


def split(n: int, parts: int, pos: np.ndarray | None = None) -> list:
    """Cut ``[0, n)`` into at most ``parts`` ranges of about equal work.

    With ``pos`` (length n+1, cumulative nonzeros per row) a row weighs its
    nonzeros plus one, so empty rows still cost something."""
    if n <= 0:
        return []
    parts = max(1, min(parts, n))
    if parts == 1:
        return [(0, n)]
    if pos is None or len(pos) != n + 1:
        bounds = np.linspace(0, n, parts + 1).astype(np.int64)
    else:
        work = pos.astype(np.int64) + np.arange(n + 1, dtype=np.int64)
        targets = np.linspace(0, work[-1], parts + 1)
        bounds = np.searchsorted(work, targets, side="left").astype(np.int64)
        bounds[0], bounds[-1] = 0, n
        bounds = np.maximum.accumulate(bounds)
    return [(int(a), int(b)) for a, b in zip(bounds[:-1], bounds[1:]) if b > a]


# Without a measurement (no libgomp, a forked child, a failed one) calls under this
# many units of work (launch.work: rows + nonzeros, ...) run on the calling thread.
# A short call next to NumPy's BLAS meets OpenBLAS's spinning threads, and libgomp's
# then spin into the next GEMM: with 100k the MiniLM encoder's compensated top-k
# variants went from 68-109 to 126-211 ms (examples/minilm_sparse.py --sweep,
# session 8), so spcomp.nn keeps this margin for its calls between GEMMs.
FALLBACK_PARALLEL_WORK = 250_000
# at or above this many units a call always splits, unmeasured (~3 ms on one thread)
SPLIT_ALWAYS_WORK = 4_000_000
# below this many units a call never splits, whatever the measurement says
SPLIT_NEVER_WORK = 4_096
# a fixed threshold when set (tests set 0 to split every call); None: measured
MIN_PARALLEL_WORK: int | None = None
_measured: dict = {}  # threads -> its SplitThreshold in this process (split_threshold.py)
_measure_lock = threading.Lock()
_calibrator = None  # threads -> units or None: the CPU backend's measurement (set by launch.py)
# what a cached split decision (fastcall.py) checks before it is reused (with its
# threshold's next sample time): [0] the generation, bumped when a threshold or the
# thread count changes
split_state = [0]

# A split call can wait for a core that another library's threads hold: OpenBLAS's
# workers spin ~0.15 s after each NumPy BLAS call, and a two-thread SpMV of 0.4 ms
# then takes ~7 ms (the scheduler shares the core in slices of milliseconds). A split
# call of the measured band (below SPLIT_ALWAYS_WORK) that took STALL_FACTOR times
# what one thread would need (SERIAL_S_PER_UNIT a unit), and at least STALL_FLOOR_S,
# waited so. STALLS_TO_HOLD such calls in a row (one alone is also what waking a team
# that slept through an idle spell can cost, once) keep the band's calls on the calling
# thread for HOLD_S (note_split); :data:`hold` holds the time it ends (0: none), which
# cached decisions check too. A unit's cost differs between kernels (an SpMV's unit is
# a multiply-add, an SpGEMM's a scatter into a workspace, several times dearer: its
# two-thread calls of 1.6-2.6 ms all looked like waits and held it on one thread), so a
# kernel whose split calls have been timed before must also be BEST_FACTOR times slower
# than its fastest split call per unit so far (``key``: the kernel's function).
SERIAL_S_PER_UNIT = 0.75e-9   # ~3 ms for SPLIT_ALWAYS_WORK units on one thread
BEST_FACTOR = 3.0
PACE_CALLS = 3                # timed split calls of a kernel before its own pace is the yardstick
RATES_KEPT = 512              # kernels whose pace is remembered (the newest)
_best_rate: dict = {}         # id(kernel function) -> (fastest split call's seconds per unit, calls timed)
STALL_FACTOR = 2.0
STALL_FLOOR_S = 2e-3
STALLS_TO_HOLD = 2
HOLD_S = 0.25
hold = [0.0]
_stalls = [0]  # split calls in a row that waited


def note_split(units: int | None, elapsed: float, key=None) -> bool:
    """After a call the measured threshold split, taking ``elapsed`` seconds: whether
    it was the STALLS_TO_HOLD-th in a row to wait for a core (see above), in which
    case the band's calls stay on one thread for HOLD_S, and cached decisions are
    made again. ``key``: the kernel's function, whose fastest split call per unit is
    the yardstick once it has one."""
    if units is None or not threshold_decides(units):
        return False
    quick = elapsed < STALL_FLOOR_S or elapsed < STALL_FACTOR * units * SERIAL_S_PER_UNIT
    if key is not None and units > 0:
        rate = elapsed / units
        best, timed = _best_rate.pop(id(key), (rate, 0))
        _best_rate[id(key)] = (min(rate, best), timed + 1)  # (re-inserted: the newest last)
        while len(_best_rate) > RATES_KEPT:
            del _best_rate[next(iter(_best_rate))]
        # the kernel's own pace once PACE_CALLS calls set it (until then the generic rule:
        # a kernel whose first calls all wait is held as before)
        quick = quick or (timed >= PACE_CALLS and rate < BEST_FACTOR * best)
    if quick:
        _stalls[0] = 0
        return False
    _stalls[0] += 1
    if _stalls[0] < STALLS_TO_HOLD:
        return False
    _stalls[0] = 0
    hold[0] = split_threshold.now() + HOLD_S
    split_state[0] += 1
    return True


def run_split(units: int | None, fn, *args, key=None):
    """``fn(*args)``, a call the threshold split, timed for :func:`note_split`
    (``key``: the kernel's function, when ``fn`` is a wrapper; else ``fn``)."""
    start = time.perf_counter()
    result = fn(*args)
    note_split(units, time.perf_counter() - start, fn if key is None else key)
    return result


def _held() -> bool:
    """Whether a hold (note_split) is on; one that has ended is cleared here, and the
    decisions cached under it are made again."""
    until = hold[0]
    if not until:
        return False
    if split_threshold.now() < until:
        return True
    hold[0] = 0.0
    split_state[0] += 1
    return False


def set_calibrator(fn) -> None:
    """Give the measurement of the host's fork/join cost (``fn(threads)`` -> the
    work units below which one thread is faster, or None)."""
    global _calibrator
    if _calibrator is None:
        _calibrator = fn


def min_parallel_work(units: int | None = None, threads: int | None = None) -> int:
    """The work units below which a call stays on the calling thread: MIN_PARALLEL_WORK
    or ``SPCOMP_MIN_PARALLEL_WORK`` when set, else the host's fork/join cost against
    per-unit work, measured per process and thread count (calibrate.py in the CPU
    backend), between SPLIT_NEVER_WORK and SPLIT_ALWAYS_WORK (FALLBACK_PARALLEL_WORK
    when it cannot be measured). ``units``, a call's work, lets a call outside that
    band skip the measurement. A measurement made while other processes hold the
    cores finds a team slow to wake (a scheduler tick, milliseconds) and keeps the
    process's calls below SPLIT_ALWAYS_WORK on one thread -- at worst what one thread
    costs, where splitting on such a machine costs ten times that -- until a later
    sample finds the host quiet (split_threshold.py: spaced samples, the smallest kept)."""
    if MIN_PARALLEL_WORK is not None:
        return MIN_PARALLEL_WORK
    env = _env_threshold()
    if env is not None:
        return env
    if units is not None and (units >= SPLIT_ALWAYS_WORK or units < SPLIT_NEVER_WORK):
        return SPLIT_ALWAYS_WORK
    if _held():  # a split call just waited for a core another library's threads held
        return SPLIT_ALWAYS_WORK
    threads = get_num_threads() if threads is None else threads
    got = _measured.get(threads)
    if got is None or got.wants_sample():
        with _measure_lock:
            got = _measured.get(threads)
            if got is None:
                got = _measured[threads] = SplitThreshold(
                    lambda: _measure(threads), SPLIT_NEVER_WORK, SPLIT_ALWAYS_WORK, FALLBACK_PARALLEL_WORK)
            if got.wants_sample() and got.sample():
                split_state[0] += 1
    return got.value


def measured_threshold(threads: int):
    """The :class:`SplitThreshold` of ``threads`` in this process (its ``value``,
    ``samples`` and ``due``), or None before the first sample (benchmarks report it)."""
    return _measured.get(threads)


def threshold_decides(units: int | None) -> bool:
    """Whether the measured threshold decides a call of ``units`` (None: unknown,
    so it may): no fixed one is set and the call is inside the measured band."""
    if MIN_PARALLEL_WORK is not None or _env_threshold() is not None:
        return False
    return units is None or SPLIT_NEVER_WORK <= units < SPLIT_ALWAYS_WORK


def _env_threshold():
    env = os.environ.get("SPCOMP_MIN_PARALLEL_WORK")
    if env:
        try:
            return max(0, int(env))
        except ValueError:
            pass
    return None


def _measure(threads: int):
    """The calibrator's units for ``threads``, or None (none set, one thread, a
    forked child: libgomp's team is unusable there)."""
    from . import forksafe
    if _calibrator is None or threads <= 1 or forksafe.forked():
        return None
    return _calibrator(threads)


def run_ranges(call, n: int, pos: np.ndarray | None = None, threads: int | None = None,
               work: int | None = None) -> list:
    """Run ``call(lo, hi)`` over ``[0, n)``; returns the status codes.

    ``work`` estimates the whole call's cost in loop iterations (default: rows
    plus the nonzeros ``pos`` counts); below :func:`min_parallel_work` it runs here."""
    threads = get_num_threads() if threads is None else threads
    if work is None:
        work = n + (int(pos[-1]) if pos is not None and len(pos) else 0)
    if threads <= 1 or work < min_parallel_work(work, threads):
        return [call(0, n)]
    ranges = split(n, threads, pos)
    if len(ranges) <= 1:
        return [call(0, n)]
    pool = _get_pool()
    if pool.busy.locked():  # called from several Python threads at once: run here
        return [call(0, n)]
    return pool.run(call, ranges)


def _after_fork_in_child() -> None:
    """In a child made by ``os.fork()`` (multiprocessing's "fork" start method) the
    pool's worker threads do not exist, and a lock that another thread held at the
    fork stays held: both are made anew, the pool on demand. Kernels run on one
    thread until :func:`set_num_threads`: a forked child is usually one of many
    workers, and libgomp's team cannot be used in it at all (runtime/forksafe.py)."""
    global _lock, _pool, _num_threads, _measure_lock
    _lock = threading.Lock()
    _measure_lock = threading.Lock()
    _pool = None
    _num_threads = 1


os.register_at_fork(after_in_child=_after_fork_in_child)
