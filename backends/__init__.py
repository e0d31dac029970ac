"""Backends: kernel IR -> machine code. ``cpu`` (LLVM via llvmlite) and ``cuda`` (CUDA C).

:func:`get_target` gives the object a Kernel builds and calls through (``cpu``,
``cuda``, ``cuda-sim``), with its :class:`~spcomp.ir.target.Capabilities`;
:func:`get_backend` the code generator module itself.
"""
from __future__ import annotations

import importlib

BACKENDS = ("cpu", "cuda")
TARGETS = {"cpu": ("cpu.target", "CpuTarget"), "cuda-sim": ("cuda.target", "CudaSimTarget"),
           "cuda": ("cuda.target", "CudaTarget")}


def get_backend(name: str):
    """The backend module called ``name`` (imported on first use)."""
    if name not in BACKENDS:
        from spcomp.errors import BackendUnavailableError
        raise BackendUnavailableError(f"no backend {name!r}; choose one of {', '.join(BACKENDS)}")
    return importlib.import_module(f"{__name__}.{name}")


def get_target(name: str):
    """A fresh target object for backend ``name`` ("cpu", "cuda" or "cuda-sim")."""
    try:
        module, cls = TARGETS[name]
    except (KeyError, TypeError):
        from spcomp.errors import UnsupportedError
        raise UnsupportedError(f"unknown backend {name!r}; use one of {', '.join(TARGETS)}") from None
    return getattr(importlib.import_module(f"{__name__}.{module}"), cls)()
