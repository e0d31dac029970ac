"""Shared machinery for the side-by-side benchmarks: timing, thread control,
optional peers, result checks, the machine description and the table.

Nothing here is spcomp-specific except :class:`Threads`, which sets spcomp's
thread count together with its peers' so that every column of a row runs
under the same setting.

Timing policy (see ``benchmarks/README.md``): each implementation is called
``warmup`` times, then timed call by call with :func:`time.perf_counter` until
it has at least ``min_repeats`` samples and ``target_s`` seconds of samples
(at most ``max_repeats``); the median is reported. Implementations are timed
one after another on the same inputs, with a short pause between them so that
spinning worker threads of the previous one (OpenMP, OpenBLAS) have gone to
sleep before the next one starts.
"""
from __future__ import annotations

import importlib
import os
import platform
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np

# The environment variables the benchmark drops before NumPy loads (kernels.py
# does it, this module records what was done); see docs/performance.md.
BLAS_ENV_VARS = ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE")


# ------------------------------------------------------------------ peers

def optional_import(name: str):
    """``(module, None)`` when ``name`` imports, else ``(None, reason)``."""
    try:
        return importlib.import_module(name), None
    except Exception as e:  # ImportError, or a broken install raising anything
        return None, f"{name} is not installed ({type(e).__name__}: {e})"


# ---------------------------------------------------------------- threads

class Threads:
    """Set the thread count of spcomp and of every peer in one call.

    - spcomp: ``spcomp.set_num_threads``;
    - PyTorch: ``torch.set_num_threads`` (intra-op OpenMP/MKL threads);
    - NumPy's BLAS: ``threadpoolctl.threadpool_limits(n, user_api="blas")`` when
      threadpoolctl is installed (otherwise BLAS keeps its default and a note
      says so);
    - scipy.sparse kernels are single-threaded C++: nothing to set.
    """

    def __init__(self, spcomp_module, torch_module=None):
        self.spcomp = spcomp_module
        self.torch = torch_module
        self.threadpoolctl, why = optional_import("threadpoolctl")
        self.notes = []
        if self.threadpoolctl is None:
            self.notes.append("threadpoolctl is not installed: NumPy's BLAS ran with its default "
                              "thread count in every row (pip install threadpoolctl to control it)")
        self._limits = None
        self.current = None

    def set(self, n: int) -> None:
        self.spcomp.set_num_threads(n)
        if self.torch is not None:
            self.torch.set_num_threads(n)
        if self.threadpoolctl is not None:
            if self._limits is not None:
                self._limits.restore_original_limits()
            self._limits = self.threadpoolctl.threadpool_limits(limits=n, user_api="blas")
        self.current = n

    def blas_info(self) -> str:
        if self.threadpoolctl is None:
            return "unknown (threadpoolctl not installed)"
        infos = [f"{i.get('internal_api')} {i.get('version')} ({i.get('prefix')})"
                 for i in self.threadpoolctl.threadpool_info() if i.get("user_api") == "blas"]
        return ", ".join(infos) or "none found"


def all_threads() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        return os.cpu_count() or 1


def parse_threads(text: str | None) -> list:
    """``"1,2"`` -> ``[1, 2]``; default: 1 and all available cores."""
    if not text:
        n = all_threads()
        return [1] if n == 1 else [1, n]
    out = []
    for part in text.split(","):
        part = part.strip()
        if not part:
            continue
        n = int(part)
        if n < 1:
            raise ValueError(f"--threads: {n} is not a thread count")
        if n not in out:
            out.append(n)
    return out


# ----------------------------------------------------------------- timing

@dataclass
class Timing:
    median_s: float
    samples: list = field(default_factory=list)
    round_medians: list = field(default_factory=list)  # measure_interleaved: one per round

    @property
    def repeats(self) -> int:
        return len(self.samples)


@dataclass(frozen=True)
class TimingPolicy:
    warmup: int = 3
    min_repeats: int = 10
    max_repeats: int = 200
    target_s: float = 1.0
    pause_s: float = 0.25   # between implementations: lets spinning pool threads sleep
    rounds: int = 1         # interleaved rounds: each implementation's samples are spread
                            # over the run, so they all see the same noise from the host

    def per_round(self) -> "TimingPolicy":
        """The share of one round: the sample budget split evenly over the rounds."""
        r = max(1, self.rounds)
        return self.scaled(min_repeats=-(-self.min_repeats // r), max_repeats=-(-self.max_repeats // r),
                           target_s=self.target_s / r, rounds=1)

    def scaled(self, **kw) -> "TimingPolicy":
        return TimingPolicy(**{**self.__dict__, **kw})


def measure(fn: Callable[[], Any], policy: TimingPolicy) -> Timing:
    """Median wall time of ``fn()`` (seconds) after ``policy.warmup`` calls."""
    for _ in range(policy.warmup):
        fn()
    samples = []
    spent = 0.0
    perf = time.perf_counter
    while len(samples) < policy.max_repeats and (len(samples) < policy.min_repeats or spent < policy.target_s):
        t0 = perf()
        fn()
        dt = perf() - t0
        samples.append(dt)
        spent += dt
    return Timing(statistics.median(samples), samples)


def measure_interleaved(fns: dict, policy: TimingPolicy) -> dict:
    """``{name: Timing}`` for every callable in ``fns``, timed in ``policy.rounds``
    interleaved rounds (a pause before each implementation's share of a round); the
    median is taken over all of an implementation's samples. On a shared host whose
    neighbours come and go within seconds, one implementation timed in one window
    and its peer in the next can differ by 30 % for no reason of their own."""
    share = policy.per_round()
    samples = {name: [] for name in fns}
    rounds = {name: [] for name in fns}
    for r in range(max(1, policy.rounds)):
        for name, fn in fns.items():
            pause(policy)  # later rounds: one call wakes the pools the pause put to sleep
            got = measure(fn, share if r == 0 else share.scaled(warmup=1))
            samples[name] += got.samples
            rounds[name].append(got.median_s)
    return {name: Timing(statistics.median(s), s, rounds[name]) for name, s in samples.items()}


def paired_ratios(peer: Timing, ours: Timing) -> list:
    """peer / ours within each interleaved round: both were timed within about a
    second of each other, so a host whose pace drifts from minute to minute (this
    one moves by up to 1.8x) changes both alike; the ratio of whole-run medians
    mixes rounds taken at different paces."""
    return [p / o for p, o in zip(peer.round_medians, ours.round_medians) if o > 0]


def measure_each_call(fn: Callable[[], Any], calls: int, warmup: int = 1000) -> Timing:
    """Median of ``calls`` individually timed calls (for per-call overheads in µs;
    the ~0.05 µs of the two ``perf_counter`` reads is included)."""
    for _ in range(warmup):
        fn()
    perf = time.perf_counter
    samples = [0.0] * calls
    for c in range(calls):
        t0 = perf()
        fn()
        samples[c] = perf() - t0
    return Timing(statistics.median(samples), samples)


def pause(policy: TimingPolicy) -> None:
    if policy.pause_s > 0:
        time.sleep(policy.pause_s)


# ----------------------------------------------------------------- checks

def check_dense(got, ref, rtol: float = 1e-5, atol: float | None = None) -> tuple:
    """``(ok, message)``: ``np.allclose(got, ref)``; ``atol`` defaults to
    ``1e-8 * max|ref|`` (so a float32 peer is judged relative to the data's scale)."""
    got = np.asarray(got)
    ref = np.asarray(ref)
    if got.shape != ref.shape:
        return False, f"shape {got.shape} != {ref.shape}"
    scale = float(np.max(np.abs(ref))) if ref.size else 1.0
    atol = 1e-8 * max(scale, 1.0) if atol is None else atol
    if np.allclose(got, ref, rtol=rtol, atol=atol):
        return True, "ok"
    err = float(np.max(np.abs(got.astype(np.float64) - ref.astype(np.float64))))
    return False, f"max abs error {err:.3g} (scale {scale:.3g})"


def check_sparse(got, ref, rtol: float = 1e-5, atol: float = 1e-8) -> tuple:
    """``(ok, message)``: np.allclose semantics on the implied dense matrices of two
    scipy.sparse matrices, without densifying (a missing or extra nonzero counts
    as a difference from zero)."""
    import scipy.sparse as sp
    g = sp.csr_matrix(got)
    r = sp.csr_matrix(ref)
    if g.shape != r.shape:
        return False, f"shape {g.shape} != {r.shape}"
    viol = abs(g - r) - rtol * abs(r)
    worst = float(viol.max()) if viol.nnz else 0.0
    if worst <= atol:
        return True, "ok"
    return False, f"max violation {worst:.3g} over np.allclose tolerance"


# ------------------------------------------------------------- other load

def _proc_stat() -> tuple | None:
    """``(busy, total)`` clock ticks of the whole machine, from /proc/stat."""
    try:
        with open("/proc/stat") as f:
            v = [int(x) for x in f.readline().split()[1:]]
    except (OSError, ValueError):
        return None
    idle = v[3] + (v[4] if len(v) > 4 else 0)
    steal = v[7] if len(v) > 7 else 0
    total = sum(v[:8])
    return total - idle - steal, total


class LoadMonitor:
    """How much CPU other processes used between :meth:`start` and :meth:`share`.

    The machine's busy time (/proc/stat) minus this process's own CPU time, as a
    fraction of the machine's total: on a shared 2-core box a test suite running
    beside the benchmark skews every number, and spinning OpenMP workers suffer
    most (a 0.5 ms torch.mv becomes 8-16 ms, whole scheduler ticks)."""

    def __init__(self):
        self.start()

    def start(self):
        self.stat0 = _proc_stat()
        t = os.times()
        self.own0 = t.user + t.system

    def share(self) -> float | None:
        s1 = _proc_stat()
        if self.stat0 is None or s1 is None:
            return None
        busy = s1[0] - self.stat0[0]
        total = s1[1] - self.stat0[1]
        if total <= 0:
            return None
        t = os.times()
        hz = os.sysconf("SC_CLK_TCK")
        own = (t.user + t.system - self.own0) * hz
        return max(0.0, (busy - own) / total)


def wait_until_idle(max_wait_s: float, threshold: float = 0.05, settle: int = 3) -> float | None:
    """Wait (at most ``max_wait_s``) until other processes use under ``threshold``
    of the CPU for ``settle`` consecutive seconds; returns the last share seen."""
    deadline = time.monotonic() + max_wait_s
    calm = 0
    share = None
    while True:
        m = LoadMonitor()
        time.sleep(1.0)
        share = m.share()
        if share is None:
            return None
        calm = calm + 1 if share < threshold else 0
        if calm >= settle or time.monotonic() >= deadline:
            return share


# ----------------------------------------------------------------- machine

def cpu_model() -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10).stdout
        for line in out.splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except (OSError, subprocess.SubprocessError):
        pass
    return platform.processor() or "unknown"


def git_revision(path) -> str:
    """``abc1234`` (plus ``+changes`` when the work tree differs), or "" outside git."""
    try:
        rev = subprocess.run(["git", "-C", str(path), "rev-parse", "--short", "HEAD"], capture_output=True,
                             text=True, timeout=10)
        if rev.returncode != 0:
            return ""
        dirty = subprocess.run(["git", "-C", str(path), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=10).stdout.strip()
        return rev.stdout.strip() + ("+changes" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return ""


def versions(**modules) -> dict:
    out = {"python": platform.python_version()}
    for name, mod in modules.items():
        out[name] = getattr(mod, "__version__", "?") if mod is not None else "not installed"
    return out


def machine_lines(threads: Threads, removed_env: dict, extra: dict) -> list:
    lines = [f"CPU: {cpu_model()}, {all_threads()} cores available to this process "
             f"(os.cpu_count() = {os.cpu_count()})",
             "versions: " + ", ".join(f"{k} {v}" for k, v in extra.items()),
             f"NumPy BLAS: {threads.blas_info()}"]
    if removed_env:
        lines.append("unset before importing NumPy: " + ", ".join(f"{k}={v}" for k, v in removed_env.items()))
    else:
        lines.append("OPENBLAS_CORETYPE / OPENBLAS_L2_SIZE were not set")
    return lines


# ------------------------------------------------------------------ table

@dataclass
class Column:
    key: str
    title: str
    align: str = "right"   # "left" or "right"


def fmt_time(value, unit: str = "ms") -> str:
    if value is None:
        return "—"
    if isinstance(value, str):
        return value
    v = value * (1e3 if unit == "ms" else 1e6)
    if v >= 100:
        return f"{v:.0f}"
    if v >= 10:
        return f"{v:.1f}"
    if v >= 1:
        return f"{v:.2f}"
    return f"{v:.3f}"


def fmt_ratio(peer, ours) -> str:
    if not isinstance(peer, (int, float)) or not isinstance(ours, (int, float)) or ours <= 0:
        return "—"
    return f"{peer / ours:.2f}×"


def render_text(columns: list, rows: list) -> str:
    cells = [[c.title for c in columns]] + [[str(r.get(c.key, "")) for c in columns] for r in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(columns))]

    def line(row):
        parts = []
        for c, w, v in zip(columns, widths, row):
            parts.append(v.ljust(w) if c.align == "left" else v.rjust(w))
        return "  ".join(parts).rstrip()
    out = [line(cells[0]), "  ".join("-" * w for w in widths)]
    out += [line(r) for r in cells[1:]]
    return "\n".join(out)


def render_markdown(columns: list, rows: list) -> str:
    head = "| " + " | ".join(c.title for c in columns) + " |"
    rule = "|" + "|".join(":---" if c.align == "left" else "---:" for c in columns) + "|"
    body = ["| " + " | ".join(str(r.get(c.key, "")).replace("|", "\\|") for c in columns) + " |"
            for r in rows]
    return "\n".join([head, rule] + body)


def eprint(*a) -> None:
    print(*a, file=sys.stderr, flush=True)
