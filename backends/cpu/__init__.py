"""The CPU backend: kernel IR -> LLVM IR (llvmlite) -> O3 machine code for the host -> ctypes.

    cm = compile_module(ir_module)       # CompiledModule: llvm_ir, optimized_ir, assembly, object_code
    status = cm.function("spmv")(a.ctypes.data, n, ...)
    cm2 = load_object(cm.object_code, ir_module)   # from a cache: no optimisation again
"""
from .codegen import KernelIRError, generate
from .jit import (CompiledModule, compile_module, host_cpu_key, llvm_version, load_object,
                  to_llvm_ir)

__all__ = ["CompiledModule", "KernelIRError", "compile_module", "generate", "host_cpu_key",
           "llvm_version", "load_object", "to_llvm_ir"]
