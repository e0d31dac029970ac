"""How the layers spread kernel calls over spcomp's thread count.

The layers split work themselves (token row blocks, weight slabs, TwELL tiles)
where the runtime would not, so the pool and the split sizes live here.
"""
from __future__ import annotations

import contextlib
import os
import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np

import spcomp

_pool: ThreadPoolExecutor | None = None
_pool_size = 0
_pool_lock = threading.Lock()


def _after_fork_in_child():
    """The executor's threads do not exist in a child made by ``os.fork()`` (it would
    queue work nobody runs), and a lock another thread held stays held: new ones."""
    global _pool_lock, _pool
    _pool_lock = threading.Lock()
    _pool = None


os.register_at_fork(after_in_child=_after_fork_in_child)


def num_threads() -> int:
    return spcomp.get_num_threads()


def parallel_map(fn, items: list) -> list:
    """``[fn(item) for item in items]`` on the spcomp thread count (kernel calls release
    the GIL). Each item's kernel calls run on its own thread (``thread_limit(1)``): the
    items are the parallelism, a thread team per call would oversubscribe the cores."""
    global _pool, _pool_size
    n = num_threads()
    if n <= 1 or len(items) <= 1:
        return [fn(it) for it in items]
    with _pool_lock:
        if _pool is None or _pool_size != n:
            _pool = ThreadPoolExecutor(max_workers=n - 1, thread_name_prefix="spcomp-nn")
            _pool_size = n
        pool = _pool

    def one_thread(item):
        with spcomp.thread_limit(1):
            return fn(item)
    futures = [pool.submit(one_thread, it) for it in items[1:]]
    results, errors = [], []
    try:
        results.append(one_thread(items[0]))
    except BaseException as e:  # still wait: workers write into buffers the caller owns
        errors.append(e)
    for f in futures:
        while True:
            try:
                results.append(f.result())
                break
            except BaseException as e:
                errors.append(e)
                if f.done():  # the item's own error, not a signal (Ctrl-C) while waiting
                    break
    if errors:
        raise errors[0]
    return results


def serial_when_small(nonzero_work: int, enabled: bool = True):
    """Keep a weight-sparse call on this thread when its rows + nonzeros are under the
    runtime's threshold, although its token loop makes the runtime's estimate larger.

    In a model such a call (~1 ms) sits between NumPy GEMMs: a libgomp team woken for
    it keeps spinning into the next GEMM while OpenBLAS's threads spin into the next
    kernel. Measured on the MiniLM encoder (examples/minilm_sparse.py --sweep, 2
    threads): a 10 %-density model's forward took 51-66 ms with these calls split,
    38-45 ms on one thread each (docs/ffn.md). ``enabled=False`` leaves the split to
    the runtime (spcomp.torch: torch's threads are the same libgomp team)."""
    from spcomp.runtime.threads import MIN_PARALLEL_WORK, FALLBACK_PARALLEL_WORK
    limit = FALLBACK_PARALLEL_WORK if MIN_PARALLEL_WORK is None else MIN_PARALLEL_WORK
    return spcomp.thread_limit(1) if enabled and nonzero_work < limit else contextlib.nullcontext()


def row_ranges(n: int, work: np.ndarray | None = None, min_rows: int = 8) -> list:
    """Cut ``[0, n)`` into one range per thread (balanced by cumulative ``work``)."""
    from spcomp.runtime.threads import split
    parts = max(1, min(num_threads(), n // min_rows))
    return split(n, parts, work)


def chunks(n: int, parts: int) -> list:
    """``[0, n)`` as ``parts`` contiguous index lists of about equal length."""
    bounds = np.linspace(0, n, max(1, min(parts, n)) + 1).astype(int)
    return [list(range(a, b)) for a, b in zip(bounds[:-1], bounds[1:]) if b > a]
