"""The CPU backend as the runtime sees it: build, load, call and describe a kernel.

A :class:`CpuTarget` turns a lowered kernel into LLVM machine code (``jit.py``),
hands out the ctypes entry point (called with data pointers; ctypes releases the
GIL) and its libgomp parallel driver, and dumps/loads object code for the disk
cache and kernel files. :data:`CAPABILITIES` says what the lowerer and the call
path may count on (``spcomp/ir/target.py``).
"""
from __future__ import annotations

from spcomp.ir.target import Capabilities

_SOURCE_DIGEST = None


def source_digest() -> str:
    """A hash of the compiler's own source: an edited compiler never reuses old kernels."""
    global _SOURCE_DIGEST
    if _SOURCE_DIGEST is None:
        import hashlib
        from pathlib import Path

        import spcomp.errors
        import spcomp.backends
        h = hashlib.sha256()
        roots = [Path(spcomp.errors.__file__).parent, Path(spcomp.backends.__file__).parent]
        for root in roots:
            for path in sorted(root.rglob("*.py")):
                h.update(path.read_bytes())
        _SOURCE_DIGEST = h.hexdigest()[:16]
    return _SOURCE_DIGEST


class CpuTarget:
    """LLVM through llvmlite, called through ctypes (which releases the GIL)."""
    name = "cpu"

    @property
    def capabilities(self) -> Capabilities:
        from .jit import host_gathers_fast
        return Capabilities("cpu", parallel_kinds=("threads",), vector_gathers=host_gathers_fast())

    def lower(self, notation, options):
        from spcomp.lower.lowerer import lower
        return lower(notation, options)

    def build(self, lowered):
        from . import compile_module
        return compile_module(lowered.code.module)

    def entry(self, compiled, lowered):
        # the Kernel passes data pointers as ints: the ctypes function is called directly
        return compiled.function(lowered.code.entry)

    def split_threshold(self, threads: int):
        """The work units below which a call is faster on one thread than on
        ``threads`` (measured on this host, calibrate.py), or None without libgomp."""
        from .calibrate import threshold
        return threshold(threads)

    def team_available(self) -> bool:
        """Whether fused runs' phases may run as one call on a libgomp team (team.py)."""
        from .parallel import gomp_library
        return gomp_library() is not None

    def team_sums(self, dtype_name: str) -> bool:
        """Whether the team driver adds per-chunk copies of this dtype itself."""
        from .team import summable
        return summable(dtype_name)

    def team_driver(self, phases: list):
        """The compiled team driver (team.py) of ``phases``: ``(split, parameter IR
        types, per-chunk parameter indices, summed dtypes)`` each."""
        from .team import PhaseSpec, TeamDriver
        return TeamDriver([PhaseSpec(*p) for p in phases])

    def team_copies(self) -> bool:
        """Whether a team call makes transposed copies between its phases (team_transpose)."""
        return True

    def team_transpose(self, index, value) -> tuple:
        """``(address, owner)`` of a compiled ``lower/fused_transpose.transpose_function``
        for these IR types (the owner keeps the code alive), for a team call's copies."""
        from spcomp.lower.fused_transpose import transpose_function
        from . import compile_module
        compiled = compile_module(transpose_function("spcomp_team_transpose", index, value))
        return compiled.address("spcomp_team_transpose"), compiled

    def parallel_driver(self, compiled, lowered):
        """``f(nthreads, bounds, args...)`` running the kernel on native threads, or None."""
        return compiled.parallel_driver(lowered.code.entry)

    def source(self, compiled) -> str:
        return compiled.llvm_ir if compiled.llvm_ir is not None else getattr(compiled, "saved_llvm_ir", "")

    # --- disk cache and saved kernels: object code plus the readable IR
    def cache_key(self) -> tuple:
        import llvmlite

        from spcomp.version import __version__
        from .jit import host_cpu_key, llvm_version
        from .parallel import gomp_library
        # kernels built where libgomp loads call GOMP_parallel: elsewhere they could not link
        threads = "libgomp" if gomp_library() else "no-libgomp"
        return (host_cpu_key(), llvmlite.__version__, llvm_version(), __version__, source_digest(), threads)

    def dump(self, compiled) -> dict:
        return {"object": compiled.object_code, "llvm_ir": self.source(compiled)}

    def load(self, data: dict, lowered):
        from . import load_object
        compiled = load_object(data["object"], lowered.code.module)
        compiled.saved_llvm_ir = data["llvm_ir"]
        return compiled
