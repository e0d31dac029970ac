"""The CUDA backend: kernel IR -> CUDA C -> (pycuda | nvcc check | cuda-sim).

* :func:`emit_module` -- CUDA C text for an IR module (always works; the module
  docstring of :mod:`.emit` is the contract for the lowerer's parallel loops);
* :func:`launch_config` -- (grid, block) for a function and its arguments;
* :func:`compile_sim` -- run that text on the CPU (``runtime/cuda_sim.h``);
* :func:`check` -- a compiled Kernel's ptxas numbers (registers, shared memory,
  spills) per arch and per ``__global__`` function;
* :func:`check_source` / :func:`nvcc_available` -- compile CUDA C text with nvcc,
  read ptxas' register / shared-memory / spill numbers;
* :func:`gpu_available` / :func:`compile_gpu` -- the real GPU through pycuda.
"""
from .device import compile_gpu, gpu_available
from .emit import CudaEmitter, emit_function, emit_module
from .launch import launch_config
from .nvcc import NvccError, check, check_source, nvcc_available
from .sim import CudaSimError, compile_sim

__all__ = ["emit_module", "emit_function", "launch_config", "CudaEmitter", "compile_sim", "CudaSimError",
           "check", "check_source", "nvcc_available", "NvccError", "gpu_available", "compile_gpu"]
