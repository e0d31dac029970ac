"""Ctrl-C during a long kernel call: the call stops within a fraction of a second.

Python runs signal handlers on the main thread between bytecodes, so a
KeyboardInterrupt waited for a native call (ctypes, GIL released) to return:
10-20 s for a large SpGEMM. Two halves make it prompt:

* in the kernel, a process-wide ``int32`` flag owned by this module, which the
  CPU backend gives generated code as the symbol ``spcomp_interrupt``: each outer
  loop polls it (``PollInterrupt``, placed by lower/polls.py) and the kernel
  returns ``STATUS_INTERRUPTED``, freeing its own workspaces, when it is set;
* in the caller, :func:`run`: a call estimated long (``Kernel._work`` units at
  least :data:`LONG_WORK`) made on the main thread is *watched*. While it runs,
  Python's wakeup fd (``signal.set_wakeup_fd``), to which the interpreter's
  C-level handler writes each signal's number the moment it arrives, is a pipe
  that a persistent watcher thread reads: on SIGINT it sets the flag. The kernel
  returns early, the main thread goes back to bytecode and Python's own handler
  raises KeyboardInterrupt there; the flag is cleared once the call has returned.

The call stays on the main thread. It used to run on a helper thread while the
main thread waited on a lock (still the way when the watch cannot be used, see
:func:`_watch`), but libgomp keeps one thread team per calling thread: a helper's
team was a second set of workers beside the main thread's (torch's GEMMs, every
short spcomp call), and after a torch GEMM its spinning workers held the cores
the helper's team needed (a 99.5 %-sparse FFN's consumer: 2.2-2.6 ms where the
same kernel on the main thread's team takes 1.0-1.1 ms, docs/performance.md).

Short calls, and calls from other threads (Python delivers signals to the main
thread only), run as they are. The flag is process-wide: a kernel running on
another thread while it is set stops too, and its call raises KeyboardInterrupt
(``Kernel._raise_status``), as a kernel does whenever it returns
``STATUS_INTERRUPTED``.
"""
from __future__ import annotations

import functools
import os
import signal
import threading

from . import flags, threads
from .handoff import Task, Worker

# Kernel._work units from which a main-thread call is watched: 2**22 is about a
# millisecond of SpMV (0.25-0.7 ns a nonzero), where arming the watch (two
# set_wakeup_fd calls, ~2 us) is lost in the noise
LONG_WORK = 1 << 22

_flag = flags.interrupt  # read by generated code with an atomic load
_helper: Worker | None = None
_watcher: "_Watcher | None" = None
_watcher_lock = threading.Lock()


def requested() -> bool:
    """Whether the flag is set (a call on the main thread is being stopped)."""
    return _flag.value != 0


def run(work: int, fn, *args):
    """``fn(*args)``, a native call (or a dispatch of native calls) that releases
    the GIL; watched when it is long and made on the main thread, so that Ctrl-C
    stops it (see the module docstring)."""
    if work < LONG_WORK or threading.current_thread() is not threading.main_thread():
        return fn(*args)
    watcher = _watch()
    if watcher is None:
        return _on_helper(fn, args)
    watcher.arm()
    try:
        return fn(*args)
    finally:
        watcher.disarm_surely()


def wrap(fn, work: int):
    """``fn`` itself for a short call, else ``fn`` run through :func:`run`: for a
    call repeated with the same sizes (``Kernel._fast``)."""
    return fn if work < LONG_WORK else functools.partial(run, work, fn)


class _Watcher:
    """A pipe that stands in as Python's wakeup fd during a watched call, and the
    daemon thread that reads it: a SIGINT byte sets the flag while armed. Bytes
    are passed on to the wakeup fd the process had (asyncio's loop uses one), so
    nothing that listens there misses a signal."""

    def __init__(self):
        self.read_end, self.write_end = os.pipe()
        os.set_blocking(self.write_end, False)  # set_wakeup_fd requires it
        self.lock = threading.Lock()  # makes "armed -> set the flag" and "disarm -> clear" atomic
        self.armed = False
        self.depth = 0  # watched calls under way on the main thread (one inside another)
        self.previous = -1
        self.thread = threading.Thread(target=self._read, name="spcomp-interrupt-watch", daemon=True)
        self.thread.start()

    def arm(self) -> None:
        """Start watching (nested calls on the main thread watch once: only the
        outermost sets and puts back the wakeup fd)."""
        if self.depth > 0:
            self.depth += 1
            return
        _flag.value = 0  # only a watched SIGINT sets it: never left set from before
        previous = signal.set_wakeup_fd(self.write_end, warn_on_full_buffer=False)
        if previous != self.write_end:  # (ours: an arm a signal cut short; keep what was there)
            self.previous = previous
        with self.lock:
            self.armed = True
        self.depth = 1

    def disarm_surely(self) -> None:
        """Put the process's wakeup fd back and clear the flag, even when a signal
        handler raises at a bytecode in between (it is raised after, once)."""
        self.depth -= 1
        if self.depth > 0:
            return
        pending = None
        while True:
            try:
                with self.lock:
                    self.armed = False
                    _flag.value = 0
                signal.set_wakeup_fd(self.previous)
                break
            except BaseException as e:  # KeyboardInterrupt from the call's own Ctrl-C
                pending = pending or e
        if pending is not None:
            raise pending

    def _read(self) -> None:
        while True:
            try:
                data = os.read(self.read_end, 512)
            except OSError:
                return
            if not data:
                return
            if signal.SIGINT in data:
                with self.lock:
                    if self.armed:
                        _flag.value = 1
            previous = self.previous
            if previous >= 0:
                try:
                    os.write(previous, data)
                except OSError:  # that fd is full or gone: its owner polls on its own
                    pass


def _watch() -> "_Watcher | None":
    """The watcher, or None where a watch cannot stop the call: not POSIX (the
    wakeup fd is a socket there), or SIGINT handled by something other than
    Python's default handler (that handler may not raise: stopping the kernel
    would turn a signal it meant to ignore into KeyboardInterrupt)."""
    global _watcher
    if os.name != "posix" or signal.getsignal(signal.SIGINT) is not signal.default_int_handler:
        return None
    with _watcher_lock:
        if _watcher is None:
            _watcher = _Watcher()
        return _watcher


def _on_helper(fn, args):
    """The call on a helper thread while this one waits on a lock a signal
    interrupts: for the main thread when :func:`_watch` gives no watcher."""
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
    """Neither the helper nor the watcher thread exists in a child made by
    ``os.fork()``; new ones are made on demand (the child's copy of the pipe is
    left unused). The flag is cleared (the fork may have come from another thread
    while the main thread was stopping a call)."""
    global _helper, _watcher, _watcher_lock
    _helper = None
    _watcher = None
    _watcher_lock = threading.Lock()
    _flag.value = 0


os.register_at_fork(after_in_child=_after_fork_in_child)

__all__ = ["LONG_WORK", "requested", "run", "wrap"]
