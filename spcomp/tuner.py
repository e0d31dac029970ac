"""``spcomp.tune``: time the schedules the compiler accepts on the user's operands, keep the fastest.

The candidates are schedules of the kernel's own loops: the default, one thread,
other loop orders, each loop run in parallel, hoisting reductions or not, a
split of the outer dense loop with its outer piece on threads, vector widths and
unrolling of the innermost loop, a divide of the outer loop into one block per
thread; for the CUDA backends, GPU mappings too (:func:`gpu_candidates`). A candidate the lowerer refuses is listed as
refused; one whose result differs from the default schedule's (beyond rounding)
is listed as wrong and never kept. The fastest is recorded in the tuning cache
(runtime/tuning.py) under the problem's bucket; a later ``spcomp.compile`` of the
kernel without a schedule runs it from a first call in the same bucket. Tuning never runs during a plain call unless ``SPCOMP_AUTOTUNE=1``.
"""
from __future__ import annotations

import itertools
import time
import warnings
from dataclasses import dataclass, field

import numpy as np

from .errors import ScheduleError, SpcompError, UnsupportedError
from .schedule import Schedule

MAX_PERMUTATIONS = 24     # loop orders tried: all of up to 4 loops
SPLIT_FACTORS = (64, 1024)
VECTOR_WIDTHS = (1, 4, 8, 16)
POS_CHUNK = 2048          # nonzeros per chunk of a position split (threads take ranges of chunks)
# GPU mappings (gpu_candidates): rows a block takes, nonzeros a thread takes, the
# launch's threads per block (backends/cuda/launch.py) that sizes a block's chunk
GPU_BACKENDS = ("cuda", "cuda-sim")
GPU_ROWS_PER_BLOCK = (32, 256)
GPU_NNZ_PER_THREAD = (8, 64)
GPU_BLOCK = 256
GPU_BLOCK_SIZES = (128, 512)  # other block sizes tried (Schedule.gpu) with a thread and a warp per row
TIME_BUDGET = 0.05        # seconds of calls per candidate measurement (at least MIN_CALLS)
MIN_CALLS = 3


@dataclass
class Tried:
    schedule: Schedule
    seconds: float | None = None   # best mean time of a call; None unless it ran
    status: str = "ok"             # ok | refused: ... | wrong | failed: ...


@dataclass
class TuneResult:
    """What :func:`tune` tried and what it kept (``kernel``, ``schedule``)."""
    kernel: object
    schedule: Schedule
    tried: list = field(default_factory=list)
    cached: bool = False      # the schedule came from the tuning cache, nothing was timed
    recorded: bool = False    # written to the tuning cache

    def table(self) -> str:
        """The candidates, fastest first, with times and what happened to the others."""
        ok = sorted((t for t in self.tried if t.seconds is not None), key=lambda t: t.seconds)
        rest = [t for t in self.tried if t.seconds is None]
        best = ok[0].seconds if ok else None
        width = max([len(str(t.schedule)) for t in self.tried] + [8])
        lines = [f"{'schedule':<{width}}  {'time':>10}  {'vs best':>7}  status"]
        for t in ok + rest:
            shown = f"{t.seconds * 1e6:8.1f}us" if t.seconds is not None else f"{'-':>10}"
            ratio = f"{t.seconds / best:6.2f}x" if t.seconds is not None and best else f"{'':>7}"
            lines.append(f"{str(t.schedule):<{width}}  {shown}  {ratio}  {t.status}")
        return "\n".join(lines)

    def __str__(self) -> str:
        head = f"kept {self.schedule}" + (" (from the tuning cache)" if self.cached else "")
        return head + "\n" + self.table() if self.tried else head


def candidates(kernel, limit: int | None = None) -> list:
    """Schedules to try for ``kernel``: the default first, then variations of its
    loops (some of which the lowerer will refuse)."""
    order = [i.name for i in kernel.lowered.inspection.order]
    out_indices = {i.name for i in kernel.notation.lhs.indices}
    reductions = [i for i in order if i not in out_indices]
    inner = order[-1] if order else None
    found = [Schedule(), Schedule().sequential()]
    if 1 < len(order) <= 4:
        for perm in itertools.islice(itertools.permutations(order), MAX_PERMUTATIONS):
            if list(perm) != order:
                found.append(Schedule().reorder(*perm))
    for i in order:
        found.append(Schedule().parallelize(i))
        if i not in out_indices:  # a reduction loop on threads, by each race strategy
            found += [Schedule().parallelize(i, race=r) for r in ("Atomics", "ParallelReduction")]
    found += _position_splits(kernel)
    if reductions:
        found.append(Schedule().no_precompute())
        found += [Schedule().precompute(r) for r in reductions]
    if order:
        outer = order[0]
        for f in SPLIT_FACTORS:
            found.append(Schedule().split(outer, outer + "_o", outer + "_i", f).parallelize(outer + "_o"))
        found.append(Schedule().divide(outer, outer + "_o", outer + "_i", threads()).parallelize(outer + "_o"))
    if inner is not None:
        found += [Schedule().vectorize(inner, w) for w in VECTOR_WIDTHS]
        found.append(Schedule().unroll(inner, 4))
    found.append(Schedule().no_blas())
    if getattr(kernel, "backend", "cpu") in GPU_BACKENDS:
        found += gpu_candidates(kernel)
    seen, unique = set(), []
    for s in found:
        if s.key() not in seen:
            seen.add(s.key())
            unique.append(s)
    return unique[:limit] if limit else unique


def _position_splits(kernel) -> list:
    """A split of each sparse operand's compressed levels into chunks of POS_CHUNK
    nonzeros, the chunks on threads (nnz-balanced whatever the rows' lengths)."""
    return [Schedule().pos(idx, idx + "_pos", acc).split(idx + "_pos", idx + "_c", idx + "_p", POS_CHUNK)
            .parallelize(idx + "_c") for acc, idx in _compressed_levels(kernel)]


def gpu_candidates(kernel) -> list:
    """GPU mappings of ``kernel``'s loops (docs/cuda.md, "TACO's GPU schedules"): the
    outer loop per thread, warp or block; :data:`GPU_ROWS_PER_BLOCK` rows per block
    on the block's threads (a scalar output's sum reduced per block), or a warp per
    row with its lanes splitting the innermost loop; a warp per row; a thread and a
    warp per row with :data:`GPU_BLOCK_SIZES` threads per block; chunks of
    :data:`GPU_NNZ_PER_THREAD` nonzeros (or one) per thread of each compressed level,
    flat and as TACO's block > warp > thread chunks (shared rows added atomically)."""
    order = [i.name for i in kernel.lowered.inspection.order]
    if not order:
        return []
    outer, found = order[0], []
    o0, o1 = outer + "_o", outer + "_i"
    for kind in ("gpu-thread", "gpu-warp", "gpu-block"):
        found.append(Schedule().parallelize(outer, kind))
    for block in GPU_BLOCK_SIZES:  # the launch's block size (the others launch GPU_BLOCK threads)
        found += [Schedule().parallelize(outer, kind).gpu(block) for kind in ("gpu-thread", "gpu-warp")]
    # the lanes of a warp split the innermost loop: a reduction's partial sums are combined by shuffles
    lanes = order[-1]
    race = None if lanes in {i.name for i in kernel.notation.lhs.indices} else "ParallelReduction"
    # a scalar output: each block's threads sum their part, the block adds its sum once
    summed = None if kernel.notation.lhs.indices else "ParallelReduction"
    for rows in GPU_ROWS_PER_BLOCK:
        split = Schedule().split(outer, o0, o1, rows)
        found.append(split.parallelize(o0, "gpu-block").parallelize(o1, "gpu-thread", race=summed))
        if len(order) > 1:
            found.append(split.parallelize(o0, "gpu-block").parallelize(o1, "gpu-warp")
                         .parallelize(lanes, "gpu-thread", race=race))
    if len(order) > 1:
        found.append(Schedule().parallelize(outer, "gpu-warp").parallelize(lanes, "gpu-thread", race=race))
    for acc, idx in _compressed_levels(kernel):
        pos = Schedule().pos(idx, idx + "_pos", acc)
        for nnz in GPU_NNZ_PER_THREAD:
            found.append(pos.split(idx + "_pos", idx + "_c", idx + "_p", nnz).parallelize(idx + "_c", "gpu-thread"))
        found.append(pos.split(idx + "_pos", idx + "_c", idx + "_p", GPU_BLOCK)  # a nonzero per thread
                     .parallelize(idx + "_c", "gpu-block").parallelize(idx + "_p", "gpu-thread", race="Atomics"))
        nnz, (block, warp, thread) = GPU_NNZ_PER_THREAD[0], (idx + x for x in ("_block", "_warp", "_thread"))
        found.append(pos.split(idx + "_pos", block, idx + "_b", nnz * GPU_BLOCK)  # TACO's GPU SpMV
                     .split(idx + "_b", warp, idx + "_w", nnz * 32).split(idx + "_w", thread, idx + "_t", nnz)
                     .parallelize(block, "gpu-block", race="IgnoreRaces")
                     .parallelize(warp, "gpu-warp", race="IgnoreRaces")
                     .parallelize(thread, "gpu-thread", race="Atomics"))
    return found


def _compressed_levels(kernel) -> list:
    """``(operand, index)`` of each compressed level with unique coordinates."""
    from .notation import accesses
    out = []
    for acc in dict.fromkeys(accesses(kernel.notation.rhs)):
        fmt = acc.tensor.format
        for level, kind in enumerate(fmt.levels):
            if kind.segmented and kind.unique:
                out.append((acc.tensor.name, acc.indices[fmt.order[level]].name))
    return out


def threads() -> int:
    from .runtime.threads import get_num_threads
    return get_num_threads()


def _dense(result):
    if hasattr(result, "to_numpy"):
        return np.asarray(result.to_numpy(), dtype=np.float64)
    if hasattr(result, "toarray"):
        return np.asarray(result.toarray(), dtype=np.float64)
    return np.asarray(result, dtype=np.float64)


def _same(a, b, rtol) -> bool:
    a, b = _dense(a), _dense(b)
    if a.shape != b.shape:
        return False
    scale = max(1.0, float(np.max(np.abs(b)))) if b.size else 1.0
    return bool(np.all(np.abs(a - b) <= rtol * scale + rtol * np.abs(b)))


def time_call(call, budget: float = TIME_BUDGET, repeat: int = 3) -> float:
    """The best of ``repeat`` mean times of ``call()``, each over about ``budget`` seconds."""
    t = time.perf_counter()
    call()
    once = max(time.perf_counter() - t, 1e-7)
    n = max(MIN_CALLS, int(budget / once))
    best = float("inf")
    for _ in range(repeat):
        t = time.perf_counter()
        for _ in range(n):
            call()
        best = min(best, (time.perf_counter() - t) / n)
    return best


def _fresh(operands: dict, output: str) -> dict:
    """The operands with a copy of a given output (``+=`` kernels update it in place)."""
    if output in operands and isinstance(operands[output], np.ndarray):
        return {**operands, output: operands[output].copy()}
    return operands


def _progress(total: int, show: bool):
    try:
        from tqdm.auto import tqdm
    except ImportError:  # tqdm is optional (the nn extra): no bar then
        return None
    return tqdm(total=total, desc="spcomp.tune", disable=not show, leave=False)


def tune(kernel, *, max_candidates: int | None = None, budget: float = TIME_BUDGET, progress: bool = True,
         use_cache: bool = True, record: bool = True, rtol: float | None = None, **operands) -> TuneResult:
    """Time the legal schedules of ``kernel`` on ``operands`` and keep the fastest.

    Returns a :class:`TuneResult`: ``.kernel`` (compiled with the kept schedule),
    ``.schedule``, ``.tried`` and ``.table()``. With ``use_cache`` a schedule already
    recorded for this kernel and problem bucket is returned without timing; with
    ``record`` the kept one is written to the tuning cache, so that later
    ``spcomp.compile`` calls of the kernel with no schedule use it. Every kept
    schedule's result equals the default schedule's (within ``rtol``: reordered
    float sums round differently)."""
    from .runtime import tuning
    name, describe = _kernel_key(kernel)
    problem = tuning.bucket({n: v for n, v in operands.items()})
    if use_cache:
        hit = tuning.lookup(name, problem)
        if hit is not None:
            schedule, seconds = hit
            try:
                return TuneResult(_compile(kernel, schedule), schedule,
                                  [Tried(schedule, seconds, "ok (cached)")], cached=True)
            except SpcompError:
                pass  # the cached schedule no longer compiles: tune again
    dtypes = {n: t.dtype for n, t in kernel.notation.tensors.items()}
    if rtol is None:
        rtol = 1e-4 if any(d != "float64" for d in dtypes.values()) else 1e-9
    output = kernel.output_name
    default = _compile(kernel, Schedule())
    reference = default(**_fresh(operands, output))
    tried, best = [], None
    cands = candidates(kernel, max_candidates)
    bar = _progress(len(cands), progress)
    try:
        for schedule in cands:
            t = Tried(schedule)
            tried.append(t)
            try:
                k = _compile(kernel, schedule)
                got = k(**_fresh(operands, output))
                if not _same(got, reference, rtol):
                    t.status = "wrong: differs from the default schedule's result"
                else:
                    t.seconds = time_call(lambda: k(**_fresh(operands, output)), budget)
                    if best is None or t.seconds < best[1]:
                        best = (k, t.seconds, schedule)
            except (ScheduleError, UnsupportedError) as e:
                t.status = f"refused: {str(e).splitlines()[0][:100]}"
            except SpcompError as e:
                t.status = f"failed: {type(e).__name__}: {str(e).splitlines()[0][:80]}"
            if bar is not None:
                bar.update(1)
    finally:
        if bar is not None:
            bar.close()
    kept, seconds, schedule = best if best is not None else (default, None, Schedule())
    result = TuneResult(kept, schedule, tried)
    if record and seconds is not None:
        result.recorded = tuning.record(name, problem, schedule, seconds, describe)
    return result


def _kernel_key(kernel):
    from .runtime import tuning
    return tuning.notation_key(kernel.expression, kernel.notation, kernel.backend)


def _compile(kernel, schedule: Schedule):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # a reorder against a format warns of its copy: timed like the rest
        return kernel.with_schedule(schedule)


def adopt_tuned(kernel, operands: dict) -> None:
    """At ``kernel``'s first call: with ``SPCOMP_AUTOTUNE=1`` tune it on these operands,
    else take the schedule ``spcomp.tune`` kept for these operands' problem bucket
    (``kernel.tuned_buckets``), if any; the kernel runs with it from now on. A bucket
    with no tuned schedule keeps the default."""
    buckets, kernel.tuned_buckets = kernel.tuned_buckets, None
    if kernel.autotune:
        kernel.autotune = False
        best = tune(kernel, progress=False, **operands).kernel
    else:
        from .runtime import tuning
        schedule = (buckets or {}).get(tuning.bucket(operands))
        if schedule is None:
            return
        try:
            best = kernel.with_schedule(schedule)
        except (ScheduleError, UnsupportedError):  # no longer legal (another spcomp version)
            return
    if best is not kernel:
        kernel._options, kernel._variants, kernel.schedule = best._options, best._variants, best.schedule
        kernel.runtime, kernel.warnings, kernel._fast = best.runtime, best.warnings, None
