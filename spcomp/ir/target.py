"""What a backend can do, as data: the one question the lowerer and the call path
ask instead of a backend's name.

Each backend (``backends/cpu/target.py``, ``backends/cuda/target.py``) provides a
:class:`Capabilities`; the lowerer reads it from ``Options.caps`` (so it is part
of every cache key) and the runtime from the kernel's target. Kept in ``ir``, the
seam every stage shares, so neither side imports the other.
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Capabilities:
    name: str                    # the backend's name, for messages only
    # the mappings Schedule.parallelize accepts; the first is what the default schedule uses
    parallel_kinds: tuple = ("threads",)
    # a parallel loop is a range [lo, hi) that host threads split and the runtime
    # balances (else one launch covers it: a GPU grid)
    host_threads: bool = True
    # vector registers to fill: register blocking, prefetching, per-thread row clearing
    vector_units: bool = True
    # vector gathers (``x[crd[p]]`` loops vectorised) pay off on this machine
    vector_gathers: bool = True
    # a loop over a reduction index may run in parallel, adding into a dense output atomically
    atomics: bool = False
    # a kernel may grow its output arrays itself (realloc); else it appends into arrays
    # the runtime allocates and is run again when they were too short
    growable_outputs: bool = True
    # the threads of a sparse-output call append chunks of rows that the runtime stitches
    chunked_assembly: bool = True
    # dense matrix products may go to BLAS
    blas: bool = True
    # a call passes raw data pointers (else arrays the backend copies or maps itself)
    pointers: bool = True
    # operands may be device arrays (pycuda GPUArray), kept on the device
    device_arrays: bool = False
    # a dense output the kernel stores whole is left unzeroed (the kernel's coverage
    # analysis holds for one host thread per range; a GPU grid's coverage is its own)
    unzeroed_outputs: bool = True
    # dense operands are copied into another layout by a compiled kernel on the threads
    relayout_on_threads: bool = True
    # compiled code can be written to the disk cache and to kernel files
    saveable: bool = True

    def __post_init__(self):
        object.__setattr__(self, "parallel_kinds", tuple(self.parallel_kinds))

    @property
    def default_parallel_kind(self) -> str:
        return self.parallel_kinds[0]
