"""Handing a call to another thread so that an exception never leaves it behind.

A caller that gives work to a thread and then waits on a lock can be stopped by
an exception at almost any bytecode: KeyboardInterrupt from Ctrl-C arrives while
it waits (a lock wait is interruptible), but also just before or just after a
hand-over or an acquire, where the caller cannot tell whether it happened. Had it
simply propagated, the thread would go on writing into arrays the caller frees
(a crash, or a result made of two calls), and a protocol of persistent locks
(release to start, acquire when done) would be out of step for the next call.

So every hand-over is a fresh :class:`Task` with two one-shot locks. ``claim``
settles who decides its fate, once: the thread that takes the task to run it, or
the caller that withdraws it after an exception, before any thread took it.
``done`` is released when it has run, after ``finished`` is set, so a caller
that cannot tell whether its own acquire succeeded reads ``finished`` instead.
A task withdrawn but already queued is skipped when a thread gets to it, so the
queue never needs repairing. A task costs two lock allocations (~1 us).
"""
from __future__ import annotations

import queue
import threading

# seconds between checks while waiting; a signal interrupts the wait at once on
# POSIX, the timeout only bounds how long a platform that does not would take
WAIT_S = 0.1


class Task:
    """``fn(*args)``, to be run once on another thread (:class:`Worker`)."""

    __slots__ = ("fn", "args", "claim", "done", "finished", "result", "error")

    def __init__(self, fn, *args):
        self.fn = fn
        self.args = args
        self.claim = threading.Lock()
        self.done = threading.Lock()
        self.done.acquire()
        self.finished = False
        self.result = None
        self.error: BaseException | None = None

    def run(self) -> None:
        """On the worker: run the call unless the caller withdrew it."""
        if not self.claim.acquire(blocking=False):
            return
        try:
            self.result = self.fn(*self.args)
        except BaseException as e:  # handed back to the caller
            self.error = e
        self.finished = True
        self.done.release()

    def wait(self) -> None:
        """On the caller: until the task has run. Interruptible: see :meth:`settle`."""
        while not self.done.acquire(timeout=WAIT_S):
            pass

    def withdraw(self) -> bool:
        """Whether the task was withdrawn: no thread has taken it, and none will."""
        return self.claim.acquire(blocking=False)

    def wait_quietly(self) -> None:
        """Until a task a thread took has run, ignoring exceptions from signal
        handlers meanwhile (the caller is already handling one)."""
        while not self.finished:
            try:
                self.done.acquire(timeout=WAIT_S)
            except BaseException:  # e.g. a second Ctrl-C: the first is on its way
                pass

    def settle(self) -> None:
        """After an exception on the caller's side: withdraw the task, or wait
        until it has run, so that nothing it uses is freed under it."""
        if not self.withdraw():
            self.wait_quietly()


class Worker(threading.Thread):
    """A daemon thread that runs the tasks put into ``tasks``, one at a time."""

    def __init__(self, name: str):
        super().__init__(daemon=True, name=name)
        self.tasks: queue.SimpleQueue = queue.SimpleQueue()
        self.start()

    def run(self):
        while True:
            self.tasks.get().run()


__all__ = ["Task", "Worker", "WAIT_S"]
