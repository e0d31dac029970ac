"""Backends: kernel IR -> machine code. ``cpu`` (LLVM via llvmlite) and ``cuda`` (CUDA C)."""
from __future__ import annotations

import importlib

BACKENDS = ("cpu", "cuda")


def get_backend(name: str):
    """The backend module called ``name`` (imported on first use)."""
    if name not in BACKENDS:
        from spcomp.errors import BackendUnavailableError
        raise BackendUnavailableError(f"no backend {name!r}; choose one of {', '.join(BACKENDS)}")
    return importlib.import_module(f"{__name__}.{name}")
