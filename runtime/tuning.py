"""The tuning cache: the schedule ``spcomp.tune`` found fastest, per kernel and problem.

One JSON file per kernel (expression, formats, dtypes, backend), in a private
directory (``$SPCOMP_TUNE_CACHE``, else ``tune/`` in spcomp's cache directory;
``SPCOMP_TUNE_CACHE=off`` turns it off), signed with this user's key there like
the kernel cache (runtime/trust.py): a file someone else wrote is ignored. It
holds data only -- directive names and their arguments, never code or pickles --
and a schedule read back is rebuilt through :class:`~spcomp.Schedule`'s own
methods, which check every argument again.

Entries are keyed by the problem's *bucket*: each operand's shape and, for sparse
ones, its density rounded to a quarter decade, so a tuned schedule is reused for
problems alike and retuned for others. A kernel compiled without a schedule runs
the schedule tuned for its first call's bucket, if there is one, else the default
(``tuned_buckets``, ``tuner.adopt_tuned``): a schedule found on one problem -- a
small matrix, or a busy host that made one thread win -- is not applied to others.
"""
from __future__ import annotations

import json
import math
import os
import threading
from pathlib import Path

from spcomp.errors import CacheError, ScheduleError
from spcomp.schedule import Schedule

from . import cache, trust

FILE_LIMIT = 1 << 20  # a tuning file is a few kilobytes; anything larger is not ours
# the directives a tuned schedule may hold (each a Schedule method of that name)
DIRECTIVES = ("reorder", "parallelize", "sequential", "precompute", "no_precompute", "no_blas",
              "keep_layout", "split", "divide", "vectorize", "unroll", "pos", "fuse", "bound", "gpu")
_lock = threading.Lock()
_generation = [0]  # bumped by record(): spcomp.compile's in-memory kernels without a schedule go stale


def generation() -> int:
    """How many schedules this process has recorded (part of compile's cache key)."""
    return _generation[0]


def tune_dir() -> Path | None:
    """The tuning cache's directory as configured, or None when it is off."""
    env = os.environ.get("SPCOMP_TUNE_CACHE")
    if env is not None and env.strip().lower() in ("", "0", "off", "no", "false"):
        return None
    return Path(env) if env else cache.cache_dir() / "tune"


def _trusted(create: bool) -> tuple:
    """(the checked directory, this user's key there), or (None, None). Without
    ``create`` a missing directory is not made (a compile only looks); the default
    one, inside the kernel cache's directory, needs that directory to pass first."""
    path = tune_dir()
    if path is None:
        return None, None
    if not os.environ.get("SPCOMP_TUNE_CACHE"):
        parent, _key = cache.trusted_dir()
        if parent is None:
            return None, None
        path = parent / "tune"
    if not create and not os.path.isdir(path):
        return None, None
    try:
        real = trust.private_dir(path) if create else trust.check_private_dir(path)
        return real, trust.user_key(real)
    except trust.InsecureDirectory as e:
        trust.warn_once(path, str(e), "the tuning cache")
        return None, None


def kernel_key(expression, formats: tuple, dtype: str, dtypes: tuple, backend: str) -> str:
    """The file name of a kernel's entries."""
    return cache.key_digest(("tune-1", expression, formats, dtype, dtypes, backend))[:32]


def density_bucket(density: float) -> str:
    """A density rounded to a quarter decade ("1e-3.25"); "0" for none stored."""
    if density <= 0:
        return "0"
    return f"1e{round(math.log10(density) * 4) / 4:g}"


def bucket(operands: dict) -> str:
    """The problem's bucket: each operand's shape and, when sparse, density bucket."""
    parts = []
    for name in sorted(operands):
        v = operands[name]
        shape = tuple(int(s) for s in getattr(v, "shape", ()))
        nnz = getattr(v, "nnz", None)
        if nnz is None or not shape:
            parts.append(f"{name}{list(shape)}")
            continue
        size = math.prod(shape)
        parts.append(f"{name}{list(shape)}@{density_bucket(nnz / size if size else 0.0)}")
    return " ".join(parts)


def to_data(schedule: Schedule) -> list:
    return [[d[0], *[list(a) if isinstance(a, tuple) else a for a in d[1:]]] for d in schedule.directives]


def from_data(data) -> Schedule:
    """A Schedule rebuilt from its JSON form through Schedule's methods; ScheduleError
    for anything that is not a list of known directives with valid arguments."""
    if not isinstance(data, list):
        raise ScheduleError("a tuned schedule is a list of directives")
    s = Schedule()
    for d in data:
        if not isinstance(d, list) or not d or d[0] not in DIRECTIVES:
            raise ScheduleError(f"not a schedule directive: {d!r}")
        args = d[1:]
        if d[0] == "reorder":
            if len(args) != 1 or not isinstance(args[0], list):
                raise ScheduleError(f"not a reorder directive: {d!r}")
            args = args[0]
        plain = args[:3] if d[0] == "parallelize" else args  # parallelize(i, how, race, insist: a bool)
        if not all(isinstance(a, (str, int)) and not isinstance(a, bool) for a in plain) or (
                d[0] == "parallelize" and len(args) > 3 and not isinstance(args[3], bool)):
            raise ScheduleError(f"bad arguments in {d!r}")
        s = getattr(s, d[0])(*args)
    return s


def _read(folder: Path, key: bytes, name: str) -> dict:
    path = folder / f"{name}.json"
    try:
        data = trust.read_private(path, FILE_LIMIT)
    except FileNotFoundError:
        return {}
    except OSError:
        return {}
    try:
        body = trust.verify(data, key, str(path))
        entry = json.loads(body.decode())
    except (CacheError, ValueError, UnicodeDecodeError):
        return {}  # damaged or not written with this user's key: ignored
    return entry if isinstance(entry, dict) else {}


def _buckets(name: str) -> dict:
    """``{bucket: stored item}`` of kernel ``name``: empty when the cache is off, not
    private, or holds nothing (valid) for it."""
    folder, key = _trusted(create=False)
    if folder is None:
        return {}
    found = _read(folder, key, name).get("buckets", {})
    return found if isinstance(found, dict) else {}


def _schedule(item):
    """``(Schedule, seconds)`` of a stored item, or None where it is not a valid one."""
    if not isinstance(item, dict):
        return None
    try:
        return from_data(item.get("schedule")), float(item.get("seconds", 0.0))
    except (ScheduleError, TypeError, ValueError):
        return None


def lookup(name: str, problem: str):
    """``(Schedule, seconds)`` recorded for kernel ``name`` and ``problem`` (a
    :func:`bucket`); None if none."""
    return _schedule(_buckets(name).get(problem))


def record(name: str, problem: str, schedule: Schedule, seconds: float, describe: dict) -> bool:
    """Store the fastest ``schedule`` for kernel ``name`` on ``problem``; False when
    the cache is off or not private."""
    folder, key = _trusted(create=True)
    if folder is None:
        return False
    with _lock:
        entry = _read(folder, key, name)
        item = {"schedule": to_data(schedule), "seconds": float(seconds), "bucket": problem}
        entry["kernel"] = describe
        entry.setdefault("buckets", {})[problem] = item
        body = json.dumps(entry, sort_keys=True, indent=1).encode()
        trust.write_private(folder / f"{name}.json", trust.sign(body, key) + body)
        _generation[0] += 1
    return True


def notation_key(expression: str, notation, backend: str):
    """The tuning cache's name for a kernel (its expression, each tensor's format and
    dtype, the backend) and that description as data."""
    tensors = sorted((n, t.format.spec(), t.dtype) for n, t in notation.tensors.items())
    formats = tuple((n, f) for n, f, _d in tensors)
    dtypes = tuple((n, d) for n, _f, d in tensors)
    name = kernel_key(expression, formats, "", dtypes, backend)
    return name, {"expression": expression, "tensors": [list(t) for t in tensors], "backend": backend}


def tuned_buckets(expression: str, notation, backend: str) -> dict:
    """``{bucket: Schedule}``: every schedule ``spcomp.tune`` recorded for this kernel,
    by the problem bucket it was tuned on (empty when none or the cache is off). A
    compile does not know its problem, so the kernel picks at its first call
    (``tuner.adopt_tuned``): a schedule tuned on one problem is not applied to others."""
    found = {}
    for problem, item in _buckets(notation_key(expression, notation, backend)[0]).items():
        got = _schedule(item)
        if got is not None:
            found[problem] = got[0]
    return found
