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
* locks another thread held at the fork stay held in the child: each module that
  keeps a lock makes a new one in its own at-fork handler.

The "spawn" and "forkserver" start methods begin a fresh interpreter: nothing to do.
"""
from __future__ import annotations

import os

from . import flags


def forked() -> bool:
    """Whether this process is a child made by ``os.fork()`` from a spcomp process."""
    return flags.forked.value != 0


def _after_fork_in_child() -> None:
    flags.forked.value = 1


os.register_at_fork(after_in_child=_after_fork_in_child)

__all__ = ["forked"]
