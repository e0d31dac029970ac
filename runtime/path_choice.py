"""Which one-launch way a big call of a fused run takes, measured: its team call or its
one-thread function.

A fused run with no function over chunks of rows has two ways to run a call big
enough for threads in one native launch: the team call (``program_team.py``: its
phases over a libgomp team, barriers between them) and the run's own one-thread
function. Neither always wins: a phase the team runs on one thread (a writer with
no function over chunks), or a copy one thread makes between phases, can leave the
team slower than one thread on a host whose memory bandwidth two threads already
fill. So the first calls of each run and size class time both ways (:data:`TRIES`
each, alternating, the fastest of each kept) and later calls take the faster, as
the split threshold of a kernel is measured rather than guessed (``threads.py``).

Both ways give the same bits where no statement sums over rows into per-chunk
copies (the transposed copy and the stitch are the one-thread function's own code);
a run that sums so always takes the team call, so no two calls of it differ.
"""
from __future__ import annotations

import time

TRIES = 2  # timed calls of each way per run and size class (the first may compile: the faster kept)
WAYS = ("team", "one")


class PathChoice:
    """The timings of the two ways, per key (a run's statements and a size class)."""

    def __init__(self):
        self.times: dict = {}  # key -> way -> seconds of its timed calls

    def pick(self, key) -> str:
        """The way the next call of ``key`` takes: the one timed fewer times while
        either lacks :data:`TRIES` calls (the team first), then the faster."""
        seen = self.times.setdefault(key, {way: [] for way in WAYS})
        short = [way for way in WAYS if len(seen[way]) < TRIES]
        if short:
            return min(short, key=lambda way: len(seen[way]))
        return min(WAYS, key=lambda way: min(seen[way]))

    def measuring(self, key) -> bool:
        """Whether calls of ``key`` are still being timed."""
        seen = self.times.get(key)
        return seen is None or any(len(seen[way]) < TRIES for way in WAYS)

    def note(self, key, way: str, seconds: float) -> None:
        """Record a timed call (past the tries: nothing)."""
        seen = self.times.setdefault(key, {w: [] for w in WAYS})[way]
        if len(seen) < TRIES:
            seen.append(seconds)

    def chosen(self, key) -> str | None:
        """The way measured faster for ``key``, or None while still measuring."""
        return None if self.measuring(key) else self.pick(key)


def size_class(env: dict, names) -> int:
    """A call's size class: the bit length of its operands' stored entries (nnz of a
    sparse one, size of an array), halved -- calls within a factor of about four
    share their measurement."""
    total = 0
    for name in names:
        v = env.get(name)
        nnz = getattr(v, "nnz", None)
        total += int(nnz) if nnz is not None else int(getattr(v, "size", 0) or 0)
    return total.bit_length() // 2


def run_one_launch(paths: PathChoice, key, team, one_thread, env: dict) -> bool:
    """Run a big call in one launch: ``team.run(env)`` or ``one_thread(env)``, whichever
    ``paths`` measured faster for ``key`` (timing this call while it measures); the team
    always where it sums over rows. False where the team call declined this call
    (nothing ran: the caller takes the per-phase path)."""
    if team.sums_over_rows:
        return team.run(env)
    way = paths.pick(key)
    measuring = paths.measuring(key)
    start = time.perf_counter()
    if way == "one":
        one_thread(env)
        ran = True
    else:
        ran = team.run(env)
    if measuring and ran:
        paths.note(key, way, time.perf_counter() - start)
    return ran


__all__ = ["PathChoice", "TRIES", "WAYS", "run_one_launch", "size_class"]
