"""Kernels on the workers: sent once as signed bytes, loaded once per process.

A kernel reaches the workers as the bytes :meth:`spcomp.Kernel.to_bytes` writes
(the format of a saved kernel file), signed with a random key made for each
``apply``. The bytes are *one* node of the task graph, so Dask moves them to a
worker once, like any other piece of data every task depends on; the key travels
inside each task's arguments, never next to the bytes, so bytes damaged in
transfer or replaced while spilled to a worker's disk fail the signature check.

Each worker process keeps the kernels it loaded in :data:`_KERNELS`, keyed by the
SHA-256 of the unsigned kernel bytes (the same for every ``apply`` of one
kernel), so later tasks, and later ``apply`` calls, skip loading. The task
functions the graphs call (:func:`run_block`, :func:`reduce_blocks`) live here.
"""
from __future__ import annotations

import hashlib
import secrets
import threading
from collections import OrderedDict

import numpy as np

from spcomp.runtime import threads as spcomp_threads

from . import blocks

MAX_KERNELS = 64  # kernels one worker process keeps (least recently used go first)

_KERNELS: OrderedDict = OrderedDict()
_LOCK = threading.Lock()
_STATS = {"loads": 0, "hits": 0}


class Shipment:
    """A kernel ready to send: its signed bytes (``data``), the per-apply ``key`` and
    the ``digest`` workers cache it under. The sending process caches the kernel
    object itself under the digest, so in-process schedulers never reload it."""

    def __init__(self, kernel):
        self.key = secrets.token_bytes(32)
        self.data = kernel.to_bytes(self.key)
        self.digest = hashlib.sha256(kernel.to_bytes(None)).hexdigest()
        _remember(self.digest, kernel)

    def node(self):
        """The graph node holding the bytes (a Delayed with a content-derived name)."""
        import dask
        return dask.delayed(self.data, pure=True, name=f"spcomp-kernel-{self.digest[:16]}-"
                            f"{hashlib.sha256(self.data).hexdigest()[:16]}")


def _remember(digest: str, kernel) -> None:
    with _LOCK:
        _KERNELS[digest] = kernel
        _KERNELS.move_to_end(digest)
        while len(_KERNELS) > MAX_KERNELS:
            _KERNELS.popitem(last=False)


def kernel_for(data: bytes, digest: str, key: bytes):
    """The kernel of ``digest``: from this process's cache, else loaded from ``data``
    after its signature under ``key`` checks out (``spcomp.loads``)."""
    with _LOCK:
        kernel = _KERNELS.get(digest)
        if kernel is not None:
            _KERNELS.move_to_end(digest)
            _STATS["hits"] += 1
            return kernel
    from spcomp.kernel import Kernel
    kernel = Kernel.from_bytes(data, key, where="kernel sent by spcomp.dask")
    with _LOCK:
        _STATS["loads"] += 1
    _remember(digest, kernel)
    return kernel


def cache_info() -> dict:
    """This process's kernel cache: ``loads`` (kernels read from bytes), ``hits``
    (tasks that found theirs loaded) and ``kernels`` (digests held)."""
    with _LOCK:
        return {**_STATS, "kernels": list(_KERNELS)}


def run_block(data, digest, key, spec, *values):
    """One task of the blockwise step: the kernel on one tuple of blocks.
    ``spec`` is ``(names, formats, threads)``, ``values`` the blocks (or scalars)
    in the order of ``names``."""
    names, formats, nthreads = spec
    kernel = kernel_for(data, digest, key)
    operands = {n: blocks.as_operand(v, f) for n, f, v in zip(names, formats, values)}
    with spcomp_threads.thread_limit(nthreads):
        return kernel(**operands)


def reduce_blocks(mode, finish, nthreads, add_data, add_digest, add_key, *parts):
    """Partial results added: ``mode`` is "dense", "scalar" or "sparse" (then the
    ``add_*`` arguments are the compiled sparse-add kernel's). With ``finish``
    (``(kind, matrix, dtype)``) the sum is the output's chunk: converted to the kind
    the inputs had, a 0-d array for a scalar."""
    total = parts[0]
    if len(parts) > 1:
        if mode == "sparse":
            kernel = kernel_for(add_data, add_digest, add_key)
            with spcomp_threads.thread_limit(nthreads):
                for p in parts[1:]:
                    total = kernel(P=total, Q=p)
        elif mode == "dense":
            total = np.array(total, copy=True)
            for p in parts[1:]:
                np.add(total, p, out=total)
        else:
            total = sum(parts[1:], total)
    if finish is None:
        return total
    kind, matrix, dtype = finish
    if mode == "scalar":
        return np.asarray(total, dtype=dtype)
    if mode == "sparse":
        return blocks.convert_result(total, kind, matrix)
    return total
