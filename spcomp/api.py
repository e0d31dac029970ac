"""``spcomp.compile``: text + formats + schedule -> Kernel, cached in memory."""
from __future__ import annotations

import threading
import warnings

from .errors import TranspositionWarning
from .formats import Format
from .kernel import Kernel
from .lower.lowerer import Options
from .schedule import Schedule
from .targets import get_target

_cache: dict = {}
_cache_lock = threading.Lock()


def _format_key(formats) -> tuple:
    if not formats:
        return ()
    return tuple(sorted((k, v.spec() if isinstance(v, Format) else str(v)) for k, v in formats.items()))


def _dtype_key(dtypes) -> tuple:
    if not dtypes:
        return ()
    return tuple(sorted((k, str(getattr(v, "__name__", v))) for k, v in dtypes.items()))


def compile(expression: str, formats: dict | None = None, dtype="float64", schedule: Schedule | None = None,
            backend: str = "cpu", *, dtypes: dict | None = None, drop_zeros: bool | None = None,
            name: str = "kernel") -> Kernel:
    """Compile one line of index notation into a kernel.

    ``formats`` maps tensor names to a format string or :class:`Format` (others are
    dense); ``dtype`` is the value type of every tensor not named in ``dtypes``
    ("float32", "float64" or "bfloat16"); ``schedule`` changes the default loop
    nest; ``backend`` is "cpu", "cuda" or "cuda-sim"; ``drop_zeros`` makes a sparse
    output skip values that compute to zero (default: where a loop over the
    output's sparse level is dense, and always for packed-block outputs).
    """
    from .frontend import to_notation
    schedule = schedule or Schedule()
    dtype_name = getattr(dtype, "__name__", None) or str(dtype)
    key = (expression, _format_key(formats), dtype_name, _dtype_key(dtypes), schedule.key(), backend,
           drop_zeros, name)
    with _cache_lock:
        hit = _cache.get(key)
    if hit is not None:
        return hit
    notation = to_notation(expression, formats=formats, dtypes=dtypes, default_dtype=dtype)
    options = options_from_schedule(schedule, drop_zeros, name, backend)
    kernel = Kernel(expression, notation, options, get_target(backend), schedule)
    for w in kernel.warnings:
        warnings.warn(w, TranspositionWarning, stacklevel=2)
    with _cache_lock:
        _cache[key] = kernel
    return kernel


def options_from_schedule(schedule: Schedule, drop_zeros, name, backend) -> Options:
    par = schedule.parallel
    kind = "threads" if backend == "cpu" else "gpu-thread"
    if schedule.get("sequential"):
        parallel = None
    elif par is not None:
        parallel, kind = par[0], par[1]
        if (kind == "threads") != (backend == "cpu"):
            from .errors import ScheduleError
            raise ScheduleError(f"parallelize({parallel!r}, {kind!r}) does not fit backend {backend!r}: "
                                f"use 'threads' on cpu and gpu-block/gpu-thread/gpu-warp on cuda")
    else:
        parallel = "auto"
    return Options(
        drop_zeros=drop_zeros,
        parallel=parallel,
        parallel_kind=kind,
        order=schedule.order,
        precompute=tuple(p[0] for p in schedule.get("precompute")),
        vectorize=tuple((v[0], v[1]) for v in schedule.get("vectorize")),
        unroll=tuple((u[0], u[1]) for u in schedule.get("unroll")),
        auto_precompute=not schedule.get("no_precompute"),
        name=name,
    )


def clear_cache() -> None:
    """Forget every compiled kernel held in memory."""
    with _cache_lock:
        _cache.clear()
