"""Ctrl-C during a long kernel call: the call stops within a fraction of a second.

Python runs signal handlers on the main thread between bytecodes, so a
KeyboardInterrupt waited for a native call (ctypes, GIL released) to return:
10-20 s for a large SpGEMM. Two halves make it prompt:

* in the kernel, a process-wide ``int32`` flag owned by this module, which the
  CPU backend gives generated code as the symbol ``spcomp_interrupt``: each outer
  loop polls it (``PollInterrupt``, placed by lower/polls.py) and the kernel
  returns ``STATUS_INTERRUPTED``, freeing its own workspaces, when it is set;
* in the caller, :func:`run`: a call estimated long (``Kernel._work`` units at
  least :data:`LONG_WORK`) made on the main thread runs on a persistent helper
  thread while the main thread waits on a lock, a wait a signal interrupts. On
  KeyboardInterrupt (any exception a signal handler raises) it sets the flag,
  waits uninterruptibly for the call to return, clears the flag and re-raises,
  so the caller frees the call's outputs only once no thread writes them.

Short calls, and calls from other threads (Python delivers signals to the main
thread only), run where they are, as before: the hand-over costs tens of
microseconds, against a millisecond and more for a long call. The flag is
process-wide: a kernel running on another thread while it is set stops too,
and its call raises KeyboardInterrupt (``Kernel._raise_status``), as a kernel
does whenever it returns ``STATUS_INTERRUPTED``.
"""
from __future__ import annotations

import functools
import os
import threading

from . import flags, threads
from .handoff import Task, Worker

# Kernel._work units from which a main-thread call runs on the helper: 2**22 is
# about a millisecond of SpMV (0.25-0.7 ns a nonzero), where the hand-over's tens
# of microseconds are lost in the noise
LONG_WORK = 1 << 22

_flag = flags.interrupt  # read by generated code with an atomic load
_helper: Worker | None = None


def requested() -> bool:
    """Whether the flag is set (a call on the main thread is being stopped)."""
    return _flag.value != 0


def run(work: int, fn, *args):
    """``fn(*args)``, a native call (or a dispatch of native calls) that releases
    the GIL; on the helper thread when it is long and made on the main thread,
    so that Ctrl-C stops it (see the module docstring)."""
    if work < LONG_WORK or threading.current_thread() is not threading.main_thread():
        return fn(*args)
    return _on_helper(fn, args)


def wrap(fn, work: int):
    """``fn`` itself for a short call, else ``fn`` run through :func:`run`: for a
    call repeated with the same sizes (``Kernel._fast``)."""
    return fn if work < LONG_WORK else functools.partial(run, work, fn)


def _on_helper(fn, args):
    global _helper
    task = Task(_limited, threads.get_num_threads(), fn, args)
    try:
        _flag.value = 0  # only _stop sets it, on this thread: never left set by a second Ctrl-C
        if _helper is None:
            _helper = Worker("spcomp-interruptible")
        _helper.tasks.put(task)
        task.wait()
    except BaseException:
        _stop(task)
        raise
    if task.error is not None:
        raise task.error
    return task.result


def _limited(count: int, fn, args):
    """``fn(*args)`` on the helper, with the thread count the caller has (its
    ``thread_limit`` is its own thread's: the helper would not see it)."""
    with threads.thread_limit(count):
        return fn(*args)


def _stop(task: Task) -> None:
    """Withdraw the call, or make it return early and wait until it has."""
    if task.withdraw():
        return
    try:
        _flag.value = 1
        task.wait_quietly()
    finally:
        _flag.value = 0


def _after_fork_in_child() -> None:
    """The helper thread does not exist in a child made by ``os.fork()``; a new one
    is made on demand. The flag is cleared (the fork may have come from another
    thread while the main thread was stopping a call)."""
    global _helper
    _helper = None
    _flag.value = 0


os.register_at_fork(after_in_child=_after_fork_in_child)

__all__ = ["LONG_WORK", "requested", "run", "wrap"]
