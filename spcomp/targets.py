"""Adapters between a Kernel and the backends: build machine code from a lowered
kernel and return a Python callable that takes NumPy arrays and integers."""
from __future__ import annotations

from .errors import BackendUnavailableError, UnsupportedError


_SOURCE_DIGEST = None


def _source_digest() -> str:
    """A hash of the compiler's own source: an edited compiler never reuses old kernels."""
    global _SOURCE_DIGEST
    if _SOURCE_DIGEST is None:
        import hashlib
        from pathlib import Path

        from . import backends
        h = hashlib.sha256()
        roots = [Path(__file__).parent, Path(backends.__file__).parent]
        for root in roots:
            for path in sorted(root.rglob("*.py")):
                h.update(path.read_bytes())
        _SOURCE_DIGEST = h.hexdigest()[:16]
    return _SOURCE_DIGEST


class CpuTarget:
    """LLVM through llvmlite, called through ctypes (which releases the GIL)."""
    name = "cpu"

    def build(self, lowered):
        from .backends.cpu import compile_module
        return compile_module(lowered.module)

    def entry(self, compiled, lowered):
        # the Kernel passes data pointers as ints: the ctypes function is called directly
        return compiled.function(lowered.entry)

    def parallel_driver(self, compiled, lowered):
        """``f(nthreads, bounds, args...)`` running the kernel on native threads, or None."""
        return compiled.parallel_driver(lowered.entry)

    def source(self, compiled) -> str:
        return compiled.llvm_ir if compiled.llvm_ir is not None else getattr(compiled, "saved_llvm_ir", "")

    # --- disk cache and saved kernels: object code plus the readable IR
    def cache_key(self) -> tuple:
        import llvmlite

        from . import __version__
        from .backends.cpu import host_cpu_key
        from .backends.cpu.jit import llvm_version
        from .backends.cpu.parallel import gomp_library
        # kernels built where libgomp loads call GOMP_parallel: elsewhere they could not link
        threads = "libgomp" if gomp_library() else "no-libgomp"
        return (host_cpu_key(), llvmlite.__version__, llvm_version(), __version__, _source_digest(), threads)

    def dump(self, compiled) -> dict:
        return {"object": compiled.object_code, "llvm_ir": self.source(compiled)}

    def load(self, data: dict, lowered):
        from .backends.cpu import load_object
        compiled = load_object(data["object"], lowered.module)
        compiled.saved_llvm_ir = data["llvm_ir"]
        return compiled


class CudaSimTarget:
    """The emitted CUDA C run on the CPU through the cuda-sim harness."""
    name = "cuda-sim"

    def build(self, lowered):
        from .backends.cuda import emit_module
        from .backends.cuda.sim import compile_sim
        source = emit_module(lowered.module)
        return (source, compile_sim(source))

    def entry(self, compiled, lowered):
        return _GpuCall(self, compiled, lowered)

    def run(self, compiled, lowered, args, grid, block) -> int:
        return compiled[1].launch(lowered.entry, list(args), grid, block)

    def source(self, compiled) -> str:
        return compiled[0]

    def cache_key(self) -> tuple:
        return ()


class CudaTarget:
    """CUDA C through pycuda on a real GPU."""
    name = "cuda"

    def __init__(self):
        self._modules: dict = {}  # CUDA C text -> pycuda module, compiled on the first launch

    def build(self, lowered):
        from .backends.cuda import emit_module
        source = emit_module(lowered.module)
        return (source, None)

    def entry(self, compiled, lowered):
        return _GpuCall(self, compiled, lowered)

    def run(self, compiled, lowered, args, grid, block) -> int:
        from .backends.cuda.device import compile_gpu, gpu_available
        ok, why = gpu_available()
        if not ok:
            raise BackendUnavailableError(f"backend 'cuda' cannot run here: {why}")
        if compiled[0] not in self._modules:
            self._modules[compiled[0]] = compile_gpu(compiled[0])
        return self._modules[compiled[0]].launch(lowered.entry, list(args), grid, block)

    def source(self, compiled) -> str:
        return compiled[0]

    def cache_key(self) -> tuple:
        return ()


class _GpuCall:
    """Launches a GPU kernel: the mapping its lowering fixed, or -- when the default
    schedule left a thread or a warp per row open (gpu_default.RowChoice) -- the one
    the call's row lengths pick, built on first need. Records ``target.last_launch``."""

    def __init__(self, target, compiled, lowered):
        from .backends.cuda import launch_config
        from .gpu_default import mapping
        self.launch_config = launch_config  # bound now: tests patch the module's function
        self.target = target
        self.choice = getattr(lowered, "gpu_choice", None)
        self.default = mapping(lowered)
        self.built = {self.default: (lowered, compiled)}

    def __call__(self, *args):
        how, why = self.choice.pick(args) if self.choice is not None else (self.default, None)
        if how not in self.built:
            low = self.choice.warp
            self.built[how] = (low, self.target.build(low))
        low, compiled = self.built[how]
        fn = low.module.function(low.entry)
        scalars = {p.name: a if isinstance(a, int) else 0 for p, a in zip(fn.params, args)}
        grid, block = self.launch_config(fn, scalars)
        self.target.last_launch = {"mapping": how, "grid": grid, "block": block, "why": why}
        return self.target.run(compiled, low, args, grid, block)


TARGETS = {"cpu": CpuTarget, "cuda-sim": CudaSimTarget, "cuda": CudaTarget}


def get_target(name: str):
    try:
        return TARGETS[name]()
    except KeyError:
        raise UnsupportedError(f"unknown backend {name!r}; use one of {', '.join(TARGETS)}") from None
