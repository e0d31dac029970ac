"""The CUDA backends as the runtime sees them: ``cuda`` (pycuda, a real GPU) and
``cuda-sim`` (the same CUDA C compiled for the CPU harness).

Both lower through the default GPU schedule (``default_schedule.py``), emit
CUDA C (``emit.py``) and launch through :class:`GpuCall`, which picks the
mapping a call's data asks for and computes the launch configuration.
:data:`CAPABILITIES` says what the lowerer and the call path may count on.
"""
from __future__ import annotations

from spcomp.errors import BackendUnavailableError
from spcomp.ir.target import Capabilities

GPU_KINDS = ("gpu-thread", "gpu-block", "gpu-warp")
DEFAULT_BLOCK = 256  # threads per block of a launch without Schedule.gpu(block=)


def _capabilities(name: str) -> Capabilities:
    return Capabilities(name, parallel_kinds=GPU_KINDS, host_threads=False, vector_units=False,
                        vector_gathers=True, atomics=True, growable_outputs=False, chunked_assembly=False,
                        blas=False, pointers=False, device_arrays=name == "cuda", unzeroed_outputs=False,
                        relayout_on_threads=False, saveable=False)


class _GpuTarget:
    """What the two CUDA targets share: lowering, emission, launching."""
    name = "?"

    @property
    def capabilities(self) -> Capabilities:
        return _capabilities(self.name)

    def lower(self, notation, options):
        # the default GPU schedule depends on the kernel's class (default_schedule.py)
        from .default_schedule import lower_default
        return lower_default(notation, options)

    def entry(self, compiled, lowered):
        return GpuCall(self, compiled, lowered)

    def source(self, compiled) -> str:
        return compiled[0]

    def cache_key(self) -> tuple:
        return ()


class CudaSimTarget(_GpuTarget):
    """The emitted CUDA C run on the CPU through the cuda-sim harness."""
    name = "cuda-sim"

    def build(self, lowered):
        from . import emit_module
        from .signature import signatures
        from .sim import compile_sim
        source = emit_module(lowered.code.module, lowered.threads.gpu_block)
        return (source, compile_sim(source, signatures(lowered.code.module)))

    def run(self, compiled, lowered, args, grid, block) -> int:
        return compiled[1].launch(lowered.code.entry, list(args), grid, block)


class CudaTarget(_GpuTarget):
    """CUDA C through pycuda on a real GPU."""
    name = "cuda"

    def __init__(self):
        self._modules: dict = {}  # CUDA C text -> pycuda module, compiled on the first launch
        self.program_modules: dict = {}  # ... of a program's statements as one kernel (spcomp/program_gpu.py)

    def build(self, lowered):
        from . import emit_module
        source = emit_module(lowered.code.module, lowered.threads.gpu_block)
        return (source, None)

    def run(self, compiled, lowered, args, grid, block) -> int:
        from .device import compile_gpu, gpu_available
        from .signature import signatures
        ok, why = gpu_available()
        if not ok:
            raise BackendUnavailableError(f"backend 'cuda' cannot run here: {why}")
        if compiled[0] not in self._modules:
            self._modules[compiled[0]] = compile_gpu(compiled[0], kernels=signatures(lowered.code.module))
        return self._modules[compiled[0]].launch(lowered.code.entry, list(args), grid, block)


class GpuCall:
    """Launches a GPU kernel: the mapping its lowering fixed, or -- when the default
    schedule left a thread or a warp per row open (default_schedule.RowChoice) -- the one
    the call's row lengths pick, built on first need. Records ``target.last_launch``."""

    def __init__(self, target, compiled, lowered):
        from . import launch_config
        from .default_schedule import mapping
        self.launch_config = launch_config  # bound now: tests patch the module's function
        self.target = target
        self.choice = lowered.threads.gpu_choice
        self.default = mapping(lowered)
        self.built = {self.default: (lowered, compiled)}

    def __call__(self, *args):
        how, why = self.choice.pick(args) if self.choice is not None else (self.default, None)
        if how not in self.built:
            low = self.choice.warp
            self.built[how] = (low, self.target.build(low))
        low, compiled = self.built[how]
        fn = low.entry_function
        scalars = {p.name: a if isinstance(a, int) else 0 for p, a in zip(fn.params, args)}
        grid, block = self.launch_config(fn, scalars, low.threads.gpu_block or DEFAULT_BLOCK)
        self.target.last_launch = {"mapping": how, "grid": grid, "block": block, "why": why}
        return self.target.run(compiled, low, args, grid, block)
