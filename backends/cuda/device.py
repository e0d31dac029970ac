"""Run emitted CUDA C on a real GPU through pycuda (DESIGN §7).

    ok, why = gpu_available()
    gpu = compile_gpu(emit_module(module), kernels=signatures(module))  # pycuda, no_extern_c=True
    status = gpu.launch("spmv", [n, pos, crd, vals, x, y], grid=4, block=256)

``launch`` takes NumPy arrays (copied to the device before the launch; those the
kernel may write -- every pointer parameter not declared ``const`` -- are copied
back after it) or ``pycuda.gpuarray.GPUArray`` s (used in place, nothing copied).
Scalars are converted to the parameter's C type. It returns the kernel's status
(0 = ok). Without pycuda, a CUDA driver or a device, :func:`compile_gpu` and
:func:`run` raise :class:`~spcomp.errors.BackendUnavailableError` naming what is
missing; emitting CUDA C still works everywhere.

The CUDA context is the device's primary context (``pycuda.autoprimaryctx``),
shared with other libraries in the process. Inside :func:`streams.ordered` (a call
with CUDA torch tensors) the launch goes on the order's stream, fenced against the
caller's stream on the device, and only that stream is waited for.
"""
from __future__ import annotations

import numpy as np

from spcomp import errors
from spcomp.runtime import streams

from .emit import emit_module
from .launch import launch_config
from .signature import coerce_args, parse_kernels, signatures


def gpu_available() -> tuple[bool, str]:
    """(True, device name) when pycuda, a CUDA driver and a device are there, else (False, why not)."""
    try:
        import pycuda.driver as drv
    except ModuleNotFoundError as e:
        if (e.name or "").split(".")[0] == "pycuda":
            return False, f"pycuda is not installed ({e}); pip install 'spcomp[cuda]'"
        return False, f"pycuda cannot be imported: {e}"
    except Exception as e:  # a broken pycuda build, no libcuda.so (no NVIDIA driver)
        return False, f"pycuda cannot be imported (is the NVIDIA driver installed?): {e}"
    try:
        drv.init()
        count = drv.Device.count()
    except Exception as e:
        return False, f"the CUDA driver could not be initialised: {e}"
    if count == 0:
        return False, "the CUDA driver reports no device"
    return True, drv.Device(0).name()


def _require_gpu():
    ok, why = gpu_available()
    if not ok:
        raise errors.BackendUnavailableError(f"the cuda backend cannot run kernels here: {why}")


class GpuModule:
    """A CUDA module compiled by pycuda; ``launch`` runs one of its kernels."""

    def __init__(self, cuda_source: str, arch: str | None = None, options=(), kernels: dict | None = None):
        _require_gpu()
        import pycuda.autoprimaryctx  # noqa: F401  (makes the primary context current)
        from pycuda.compiler import SourceModule
        self.source = cuda_source
        self.kernels = parse_kernels(cuda_source) if kernels is None else kernels
        try:
            self._module = SourceModule(cuda_source, no_extern_c=True, arch=arch, options=list(options) or None)
        except Exception as e:  # pycuda.driver.CompileError carries nvcc's messages
            from .nvcc import NvccError
            raise NvccError(f"pycuda could not compile the CUDA source:\n{e}", log=str(e), arch=arch or "") from e
        self._functions = {name: self._module.get_function(name) for name in self.kernels}

    def co_resident_blocks(self, function_name: str, block: int) -> int:
        """Blocks of ``block`` threads of this kernel the device runs at once (what a
        grid-wide barrier needs): per multiprocessor the fewest that threads,
        registers (allocated per warp in 256s), static shared memory and the block
        limit allow, times the multiprocessors."""
        import pycuda.driver as drv
        fn = self._functions[function_name]
        dev = drv.Context.get_device()
        attr = drv.device_attribute

        def get(name, default):
            a = getattr(attr, name, None)
            return dev.get_attribute(a) if a is not None else default
        warps = -(-int(block) // 32)
        limits = [get("MAX_THREADS_PER_MULTIPROCESSOR", 1024) // (warps * 32),
                  get("MAX_BLOCKS_PER_MULTIPROCESSOR", 16)]
        regs = int(getattr(fn, "num_regs", 0))
        if regs:
            per_warp = -(-regs * 32 // 256) * 256
            limits.append(get("MAX_REGISTERS_PER_MULTIPROCESSOR", 65536) // (per_warp * warps))
        shared = int(getattr(fn, "shared_size_bytes", 0))
        if shared:
            limits.append(get("MAX_SHARED_MEMORY_PER_MULTIPROCESSOR", 49152) // shared)
        return max(1, min(limits)) * get("MULTIPROCESSOR_COUNT", 1)

    def launch(self, function_name: str, args, grid=1, block=256, heap_bytes: int | None = None) -> int:
        """Run ``function_name`` over ``grid`` x ``block`` threads and return its status.

        ``heap_bytes`` raises the device heap that in-kernel ``malloc`` draws from
        (8 MiB by default) before the launch.
        """
        import pycuda.driver as drv
        from pycuda.gpuarray import GPUArray
        if function_name not in self.kernels:
            raise errors.OperandError(f"no kernel `{function_name}` in this module "
                                      f"(it has {', '.join(sorted(self.kernels)) or 'none'})")
        sig = self.kernels[function_name]
        values = coerce_args(sig, args, device_arrays=(GPUArray,))
        call = []
        for p, v in zip(sig.user_params, values):
            if not p.pointer:
                call.append(np.uint8(v) if p.base == "bool" else v)  # pycuda packs NumPy numbers only
            elif isinstance(v, GPUArray):
                call.append(v.gpudata)
            else:
                host = v.view(np.uint16) if v.dtype.name == "bfloat16" else v
                if host.size == 0:  # cuMemAlloc(0) fails; the kernel never touches the element
                    call.append(drv.In(np.zeros(1, dtype=host.dtype)))
                else:
                    call.append(drv.In(host) if p.const else drv.InOut(host))
        status = np.zeros(1, dtype=np.int32)
        if sig.has_status:
            call.append(drv.InOut(status))
        if heap_bytes is not None:
            drv.Context.set_limit(drv.limit.MALLOC_HEAP_SIZE, int(heap_bytes))
        grid3 = (grid, 1, 1) if isinstance(grid, (int, np.integer)) else tuple(grid) + (1,) * (3 - len(grid))
        block3 = (block, 1, 1) if isinstance(block, (int, np.integer)) else tuple(block) + (1,) * (3 - len(block))
        shape = {"grid": tuple(int(g) for g in grid3), "block": tuple(int(b) for b in block3)}
        order = streams.current()
        if order is None:  # pycuda's own stream; the whole context is waited for
            self._functions[function_name](*call, **shape)
            drv.Context.synchronize()
            return int(status[0])
        # a caller's stream order (a CUDA torch tensor among the operands): the launch goes on
        # the order's stream, after the caller's queued work and before its next, and only
        # that stream is waited for (the status word and copied-back host arrays are read)
        stream = order.stream()
        order.before(stream)
        self._functions[function_name](*call, stream=stream, **shape)
        order.after(stream)
        stream.synchronize()
        return int(status[0])


def compile_gpu(cuda_source: str, arch: str | None = None, options=(), kernels: dict | None = None) -> GpuModule:
    """Compile CUDA C for the GPU of this machine (raises BackendUnavailableError without one).

    ``kernels``: the source's kernel signatures ({name: KernelSignature}), from the IR
    for emitted source (:func:`~spcomp.backends.cuda.signature.signatures`); without it
    they are read from the text."""
    return GpuModule(cuda_source, arch=arch, options=options, kernels=kernels)


def run(module, function_name: str, args_by_name: dict, block: int = 256, grid: int | None = None) -> int:
    """Emit, compile and launch one function of an IR module on the GPU; returns its status."""
    _require_gpu()
    fn = module.function(function_name)
    gpu = compile_gpu(emit_module(module), kernels=signatures(module))
    if grid is None:
        grid, block = launch_config(fn, args_by_name, block)
    missing = [p.name for p in fn.params if p.name not in args_by_name]
    if missing:
        raise errors.OperandError(f"`{function_name}` needs {', '.join(missing)}")
    return gpu.launch(function_name, [args_by_name[p.name] for p in fn.params], grid, block)
