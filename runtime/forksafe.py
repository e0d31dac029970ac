"""What a process forked after running threaded kernels must not use again.

``os.fork()`` (and multiprocessing's "fork" start method) copies the parent's
memory into a child with one thread, the one that forked. Whatever stood for the
other threads is copied as it was, so the child hung on its first parallel call:

* libgomp's team: its bookkeeping says the parked threads exist, and
  ``GOMP_parallel`` waits for them forever. GNU libgomp is not fork-safe, so a
  forked child never calls it: :func:`forked` makes ``Kernel._driver_of`` give no
  native driver (parallel calls run on the Python pool), and the generated driver
  itself (backends/cpu/parallel.py) reads the word ``spcomp_forked``
  (flags.py): set, it runs its chunks one after another on the calling
  thread instead of calling ``GOMP_parallel`` (a call planned before the fork,
  kept by ``Kernel._fast``, still reaches it).
* the Python pool and the interrupt helper thread: their modules drop them in
  the child (threads.py, interrupt.py); new ones are made on demand. Kernels run
  on one thread there until ``spcomp.set_num_threads``.
* locks another thread held at the fork stay held in the child: every
  module-level lock is a :class:`Lock`, which the child gets back released.

The "spawn" and "forkserver" start methods begin a fresh interpreter: nothing to do.
"""
from __future__ import annotations

import os
import threading
import weakref

from . import flags


def forked() -> bool:
    """Whether this process is a child made by ``os.fork()`` from a spcomp process."""
    return flags.forked.value != 0


class Lock:
    """A lock that a child made by ``os.fork()`` finds released.

    A lock another thread held at the fork stays held in the child forever (that
    thread does not exist there), so every module-level lock of spcomp is one of
    these: the child replaces the inner lock. ``factory`` is ``threading.Lock`` or
    ``threading.RLock``."""
    __slots__ = ("_factory", "_lock", "__weakref__")

    def __init__(self, factory=threading.Lock):
        self._factory = factory
        self._lock = factory()
        _locks.add(self)

    def __enter__(self):
        return self._lock.__enter__()

    def __exit__(self, *exc):
        return self._lock.__exit__(*exc)

    def acquire(self, *args, **kwargs):
        return self._lock.acquire(*args, **kwargs)

    def release(self):
        self._lock.release()


_locks: "weakref.WeakSet[Lock]" = weakref.WeakSet()


def _after_fork_in_child() -> None:
    flags.forked.value = 1
    for lock in list(_locks):
        lock._lock = lock._factory()


os.register_at_fork(after_in_child=_after_fork_in_child)

__all__ = ["Lock", "forked"]
