"""When the one-thread threshold is measured, and measured again.

A call stays on the calling thread below a number of work units that the host's
fork/join cost sets (threads.min_parallel_work; the measurement is the CPU
backend's calibrate.py). Measured once, a process that started while other
processes held the cores kept the inflated number for life: a team slow to wake
(a scheduler tick) put every call below SPLIT_ALWAYS_WORK on one thread.

:class:`SplitThreshold` keeps the smallest value of spaced clean samples (load only
inflates one, as it only slows a timed run) and samples again, later, while its
samples look load-inflated: the measurement came out at the clamp (no call below
the always-split size would gain: the team took a scheduler tick to wake), or the
host's load average said the cores were busy when it ran. Retries back off from
RETRY_FIRST_S to RETRY_MAX_S and go on while the samples stay suspect (one costs
at most ~60 ms, spaced minutes apart); once a sample looks clean, one more spaced
sample is taken and the threshold settles. A suspect sample counts only as the
clamp: on a busy host a measurement that caught a quiet moment would split calls
that then wait for a scheduler tick (SpGEMM 2000² at load 6 on 2 cores: 3.1 ms a
call on two threads against 1.5 on one, medians). A failed measurement (no libgomp) is
final. Time, the measurement and the load are injected, so the policy is tested
without timing anything.
"""
from __future__ import annotations

import os
import time

now = time.monotonic  # the clock of every threshold and cached split (tests replace it)
RETRY_FIRST_S = 2.0    # first re-measure after a suspect sample
RETRY_MAX_S = 120.0    # the longest wait between samples while they stay suspect
CLEAN_SAMPLES = 2      # clean samples before the threshold settles (their minimum is kept)


def load_per_core() -> float | None:
    """The one-minute load average over the cores this process may use, or None."""
    try:
        cores = len(os.sched_getaffinity(0))
        return os.getloadavg()[0] / max(cores, 1)
    except (AttributeError, OSError):  # pragma: no cover - not Linux
        return None


class SplitThreshold:
    """The threshold of one thread count: ``value`` (None before the first sample),
    ``due`` (when the next sample is wanted; None once settled)."""

    __slots__ = ("measure", "lowest", "highest", "fallback", "clock", "load", "busy_load", "value", "due",
                 "clean", "samples", "wait")

    def __init__(self, measure, lowest: int, highest: int, fallback: int, clock=None, load=None,
                 busy_load: float = 1.0):
        self.measure = measure    # () -> units, or None when it cannot be measured
        self.lowest, self.highest, self.fallback = lowest, highest, fallback
        self.clock = now if clock is None else clock
        self.load = load_per_core if load is None else load  # () -> load per core, or None
        self.busy_load = busy_load
        self.value: int | None = None
        self.due: float | None = None
        self.clean = 0            # clean samples so far
        self.samples = 0
        self.wait = RETRY_FIRST_S

    def wants_sample(self) -> bool:
        return self.value is None or (self.due is not None and self.clock() >= self.due)

    def sample(self) -> bool:
        """Measure once and fold the result in; whether ``value`` changed."""
        before = self.value
        self.samples += 1
        try:
            got = self.measure()
        except Exception:  # a failed measurement keeps the fixed threshold
            got = None
        if got is None:
            if self.value is None:
                self.value = self.fallback
            self.due = None  # (nothing to measure with: final)
            return self.value != before
        units = int(min(max(got, self.lowest), self.highest))
        load = self.load()
        busy = load is not None and load >= self.busy_load
        if busy or units >= self.highest:
            # a busy host: whatever this sample caught, a split call there often waits a
            # scheduler tick, so it counts only as the clamp (one thread below it)
            self.value = self.highest if self.value is None else self.value
            self.clean = 0
            self.due = self.clock() + self.wait
            self.wait = min(self.wait * 2, RETRY_MAX_S)
        else:
            self.value = units if self.value is None else min(self.value, units)
            self.clean += 1
            self.due = None if self.clean >= CLEAN_SAMPLES else self.clock() + RETRY_FIRST_S
        return self.value != before
