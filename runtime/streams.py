"""Which CUDA stream a launch goes on, when a caller above the backend has one.

A kernel called with device memory that another library owns (a CUDA torch
tensor) must run after the work that library queued on that memory and before the
work it queues next, without stalling the host on the whole device. The caller
says so by entering :func:`ordered` with a *stream order*, an object with three
methods:

* ``stream()`` -- the pycuda ``Stream`` the launch goes on;
* ``before(stream)`` -- make that stream wait (on the device) for the caller's work;
* ``after(stream)`` -- make the caller's stream wait for the launch.

The CUDA backend's ``GpuModule.launch`` (backends/cuda/device.py) reads :func:`current` and,
when there is an order, launches on its stream and synchronises that stream alone
(the kernel's status word is read on the host) instead of the whole context. It lives in the runtime
because both sides import it: the backend reads it, the torch bridge
(``torch_bridge.TorchStreamOrder``) sets it -- the one order today; a
context variable keeps concurrent calls on different threads apart.
"""
from __future__ import annotations

import contextlib
import contextvars

_ORDER: contextvars.ContextVar = contextvars.ContextVar("spcomp_cuda_stream_order", default=None)


def current():
    """The stream order of the innermost :func:`ordered` block, or None."""
    return _ORDER.get()


@contextlib.contextmanager
def ordered(order):
    """Launches inside the block go on ``order.stream()``, fenced by ``before``/``after``."""
    token = _ORDER.set(order)
    try:
        yield order
    finally:
        _ORDER.reset(token)
