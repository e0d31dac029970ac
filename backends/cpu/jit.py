"""LLVM IR -> optimised machine code for the host CPU -> callable ctypes functions.

One :class:`_Host` per process holds the target machine (host CPU name and features,
O3 code generation) and the new-pass-manager O3 pipeline. :func:`compile_module` lowers
kernel IR (:mod:`.codegen`), optimises it, emits object code and loads it;
:func:`load_object` loads object code from an earlier compile (the disk cache) without
parsing or optimising anything. Either way a :class:`CompiledModule` owns an MCJIT
execution engine holding the code; the ctypes functions it hands out keep the engine alive.

Object code uses the large code model (llvmlite's ``jitdefault``), so it loads at any
address. ctypes releases the GIL while a kernel runs.

Memory: a process may compile thousands of kernels, so each compile frees what it
made. Three workarounds for llvmlite 0.50 (``benchmarks/llvmlite_leak_repro.py``
measures each): the O3 pass manager is freed by hand (llvmlite never frees it, ~75 KB
a compile); the pass builder is replaced every :data:`PASS_BUILDER_RUNS` optimisations
(each run adds callbacks to it that are never removed, and every later pass calls
them: compiles got 4x slower over 2000 of them); and each module is parsed into a
context of its own, freed with it (the global context keeps every constant and
metadata node an optimisation creates, ~2.5 KB a compile).
"""
from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import os
import struct
import sys
import threading

import llvmlite
import llvmlite.binding as llvm

from spcomp.errors import CacheError
from spcomp.ir import nodes as n
from spcomp.ir.verify import KernelIRError
from spcomp.runtime import forksafe

from . import codegen
from .abi import ctypes_signature

_lock = forksafe.Lock(threading.RLock)
_host: "_Host | None" = None


class _Host:
    """The process-wide LLVM state: initialised targets, target machine, pass pipeline."""

    def __init__(self):
        llvm.initialize_native_target()
        llvm.initialize_native_asmprinter()
        for lib in ("m", "c"):
            path = ctypes.util.find_library(lib)
            if path:
                llvm.load_library_permanently(path)
        from .parallel import gomp_library
        if gomp_library():
            llvm.load_library_permanently(gomp_library())
        from spcomp.runtime import flags
        for name, address in flags.symbols().items():  # the runtime's words generated code reads
            llvm.add_symbol(name, address)
        self.triple = llvm.get_process_triple()
        self.cpu = llvm.get_host_cpu_name()
        try:
            self.features = llvm.get_host_cpu_features().flatten()
        except RuntimeError:  # not reported on this platform
            self.features = ""
        self.target = llvm.Target.from_triple(self.triple)
        self.tm = self.make_target_machine()
        self.data_layout = str(self.tm.target_data)
        self.pto = llvm.create_pipeline_tuning_options(speed_level=3)
        self.pto.loop_vectorization = True
        self.pto.slp_vectorization = True
        self.pto.loop_interleaving = True
        self.pto.loop_unrolling = True
        self.pass_builder = llvm.create_pass_builder(self.tm, self.pto)
        self.pass_builder_runs = 0
        self.key = f"{self.triple}/{self.cpu}/{self.features}"

    def make_target_machine(self, jit: bool = False):
        return self.target.create_target_machine(
            cpu=self.cpu, features=self.features, opt=3, reloc="default",
            codemodel="jitdefault", jit=jit)

    def optimize(self, module_ref) -> None:
        """Run the O3 pipeline on ``module_ref`` (the caller holds ``_lock``).

        A pipeline cannot run twice, so each call builds one and frees it after.
        llvmlite registers new instrumentation callbacks in the pass builder on every
        run and never removes them, so the builder is replaced before they pile up
        (the old one's callback list, ~1.5 KB, stays allocated: llvmlite does not free it)."""
        if self.pass_builder_runs >= PASS_BUILDER_RUNS:
            self.pass_builder.close()
            self.pass_builder = llvm.create_pass_builder(self.tm, self.pto)
            self.pass_builder_runs = 0
        self.pass_builder_runs += 1
        mpm = self.pass_builder.getModulePassManager()
        try:
            mpm.run(module_ref, self.pass_builder)
        finally:
            _free_pass_manager(mpm)


# Optimisations one pass builder runs before it is replaced (see _Host.optimize):
# 16 keeps the callbacks each pass calls few and leaks ~0.1 KB a compile.
PASS_BUILDER_RUNS = 16


def _free_pass_manager(mpm) -> None:
    """Free a new-pass-manager pipeline.

    In llvmlite 0.50 ``ModulePassManager.close()`` frees nothing: the no-op
    ``ObjectRef._dispose`` precedes ``NewPassManager._dispose`` in its MRO. When
    that is so, the C++ object is deleted here; a fixed llvmlite just closes it."""
    if type(mpm)._dispose is llvm.ffi.ObjectRef._dispose:
        llvm.ffi.lib.LLVMPY_DisposeNewModulePassManger(mpm)
        mpm.detach()
    else:
        mpm.close()


def _get_host() -> _Host:
    global _host
    with _lock:
        if _host is None:
            _host = _Host()
        return _host


def host_cpu_key() -> str:
    """Triple, CPU name and feature string of this machine, for cache keys."""
    return _get_host().key


# LLVM CPU names whose vector gather instructions are slower than the scalar loads
# they replace: on a Zen 4 every vectorised form of SpMV's ``x[crd[p]]`` loop
# (4 or 8 lanes, masked tail or not, hardware or scalarised gathers) measured
# 0.6-0.95x the scalar loop; on an AVX-512 Xeon (rocketlake) 8 masked lanes measured
# 1.27x it. Older AMD cores gather no faster than Zen 4.
SLOW_GATHER_CPUS = ("znver", "bdver", "btver", "amdfam")


def host_gathers_fast() -> bool:
    """Whether loops that gather (``x[crd[p]]``) should be vectorised on this CPU.

    ``SPCOMP_VECTOR_GATHERS=1`` or ``0`` overrides the guess (for a CPU this table
    does not know, and for printouts that must not depend on the machine)."""
    forced = os.environ.get("SPCOMP_VECTOR_GATHERS", "").strip()
    if forced in ("0", "1"):
        return forced == "1"
    return not _get_host().cpu.startswith(SLOW_GATHER_CPUS)


def llvm_version() -> str:
    return ".".join(map(str, llvm.llvm_version_info)) + f" (llvmlite {llvmlite.__version__})"


# ------------------------------------------------------------ object files

def _check_object(data: bytes) -> None:
    """Refuse bytes that are not a whole ELF relocatable object for this machine.

    LLVM does not check what it is given: loading garbage crashes the process."""
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise CacheError(f"object code must be bytes, not {type(data).__name__}")
    data = bytes(data)
    if sys.platform != "linux":
        return  # only ELF is checked; other formats go to LLVM as they are
    if len(data) < 64 or data[:4] != b"\x7fELF":
        raise CacheError("object code is not an ELF file (corrupt or truncated cache entry)")
    if data[4] != 2 or data[5] != (1 if sys.byteorder == "little" else 2):
        raise CacheError("object code is not a 64-bit ELF file of this byte order")
    endian = "<" if data[5] == 1 else ">"
    e_type, e_machine = struct.unpack_from(endian + "HH", data, 16)
    host_machine = {"x86_64": 62, "aarch64": 183, "ppc64le": 21, "riscv64": 243}.get(
        llvm.get_process_triple().split("-")[0])
    if e_type != 1 or (host_machine is not None and e_machine != host_machine):
        raise CacheError(f"object code is not a relocatable object for this machine "
                         f"(type {e_type}, machine {e_machine})")
    shoff, = struct.unpack_from(endian + "Q", data, 40)
    shentsize, shnum = struct.unpack_from(endian + "HH", data, 58)
    if shentsize < 64 or shoff + shentsize * shnum > len(data):
        raise CacheError("object code is truncated (section table past the end)")
    for i in range(shnum):
        sh_type, = struct.unpack_from(endian + "I", data, shoff + i * shentsize + 4)
        offset, size = struct.unpack_from(endian + "QQ", data, shoff + i * shentsize + 24)
        if sh_type != 8 and offset + size > len(data):  # 8 = SHT_NOBITS
            raise CacheError(f"object code is truncated (section {i} past the end)")


class CompiledModule:
    """Machine code for one kernel IR module, loaded and callable.

    ``llvm_ir`` and ``optimized_ir`` are ``None`` for a module made by :func:`load_object`;
    so is ``assembly``.
    """

    def __init__(self, ir_module: n.Module, object_code: bytes,
                 llvm_ir: str | None = None, optimized_ir: str | None = None):
        self.ir_module = ir_module
        self.object_code = bytes(object_code)
        self.llvm_ir = llvm_ir
        self.optimized_ir = optimized_ir
        self._assembly: str | None = None
        self._functions: dict[str, object] = {}
        if b"spcomp_blas_" in self.object_code:  # calls BLAS (a Gemm statement)
            from .blas import register_symbols
            register_symbols()  # imports scipy.linalg: only for kernels that need it
        self._engine = engine = _load_object_code(self.object_code)
        self._addresses = {}
        for f in ir_module.functions:
            address = engine.get_function_address(f.name)
            if not address:
                raise CacheError(f"object code has no function {f.name!r}: it was not "
                                 f"compiled from this kernel IR")
            self._addresses[f.name] = address

    @property
    def assembly(self) -> str | None:
        """Assembly of the optimised code (emitted on first use)."""
        if self._assembly is None and self.optimized_ir is not None:
            host = _get_host()
            with _lock, _module_in_own_context(self.optimized_ir) as ref:
                self._assembly = host.tm.emit_assembly(ref)
        return self._assembly

    def address(self, name: str) -> int:
        try:
            return self._addresses[name]
        except KeyError:
            raise KeyError(f"no function {name!r} in this module "
                           f"(has {', '.join(self._addresses)})") from None

    def parallel_driver(self, name: str):
        """The native parallel driver of kernel ``name`` (see parallel.py), or None."""
        from .parallel import DRIVER_SUFFIX, driver_signature, is_parallel
        key = name + DRIVER_SUFFIX
        f = self._functions.get(key)
        if f is None:
            fn = self.ir_module.function(name)
            if not is_parallel(fn):
                return None
            address = self._engine.get_function_address(key)
            if not address:
                return None
            f = driver_signature(fn)(address)
            f.engine = self._engine  # the code's owner; see function()
            self._functions[key] = f
        return f

    def function(self, name: str):
        """The ctypes function for IR function ``name``: returns the int32 status.

        Pointer parameters take ``c_void_p`` (an address such as ``array.ctypes.data``),
        scalar parameters their ctypes type. The function keeps the machine code alive
        by holding the execution engine, not this module: a module that caches its
        functions and a function that held the module would be a cycle, freed only by
        the cyclic GC, so ``spcomp.clear_cache()`` would not free the code."""
        f = self._functions.get(name)
        if f is None:
            address = self.address(name)
            f = ctypes_signature(self.ir_module.function(name))(address)
            f.engine = self._engine  # the code's owner; see function()
            self._functions[name] = f
        return f

    def __repr__(self) -> str:
        names = ", ".join(f.name for f in self.ir_module.functions)
        return f"<CompiledModule [{names}] {len(self.object_code)} bytes of object code>"


def to_llvm_ir(ir_module: n.Module, *, fast_math: bool = False) -> str:
    """The LLVM IR text for a kernel IR module, before optimisation."""
    from .parallel import add_drivers
    host = _get_host()
    llmod = codegen.generate(ir_module, triple=host.triple, data_layout=host.data_layout,
                             fast_math=fast_math)
    add_drivers(llmod, ir_module)
    return str(llmod)


def compile_module(ir_module: n.Module, *, fast_math: bool = False) -> CompiledModule:
    """Lower, optimise (O3, host CPU), emit object code and load it."""
    text = to_llvm_ir(ir_module, fast_math=fast_math)
    optimized, obj = _optimized_object(text)
    return CompiledModule(ir_module, obj, text, optimized)


def _optimized_object(text: str) -> tuple:
    """``(optimised LLVM IR, object code)`` of LLVM IR ``text`` (O3, host CPU)."""
    host = _get_host()
    with _lock, _module_in_own_context(text) as ref:
        host.optimize(ref)
        return str(ref), host.tm.emit_object(ref)


def _load_object_code(obj: bytes):
    """An MCJIT engine holding ``obj``, loaded and finalised (its functions callable)."""
    with _lock:
        # MCJIT owns the target machine it is given, so each engine gets its own.
        engine = llvm.create_mcjit_compiler(llvm.parse_assembly(""), _get_host().make_target_machine(jit=True))
        engine.add_object_file(llvm.ObjectFileRef.from_data(obj))
        engine.finalize_object()
    return engine


@contextlib.contextmanager
def _module_in_own_context(text: str):
    """The parsed and verified module of ``text``, in an LLVM context of its own that
    is freed with it on exit (the global context would keep every constant and
    metadata node the optimiser makes for the life of the process)."""
    context = llvm.create_context()
    try:
        try:
            ref = llvm.parse_assembly(text, context=context)
            ref.verify()
        except RuntimeError as e:
            raise KernelIRError(f"the CPU backend produced invalid LLVM IR: {e}\n{text}") from e
        try:
            yield ref
        finally:
            ref.close()
    finally:
        context.close()


def load_object(object_code: bytes, ir_module: n.Module) -> CompiledModule:
    """Load object code from :attr:`CompiledModule.object_code` without optimising again.

    ``ir_module`` gives the function signatures; it must be the module compiled."""
    _check_object(object_code)
    from .parallel import gomp_library
    if b"GOMP_parallel" in bytes(object_code) and gomp_library() is None:
        raise CacheError("the object code runs on libgomp's threads, and libgomp cannot be loaded here; "
                         "recompile the kernel on this machine")
    return CompiledModule(ir_module, object_code)


def compile_llvm(llmod, names: list) -> tuple:
    """``(engine, addresses)``: an llvmlite module built here (not from kernel IR: the
    team driver of backends/cpu/team.py) optimised, loaded, and the addresses of its
    functions ``names``; the engine owns the code (keep it while calling them)."""
    host = _get_host()
    llmod.triple, llmod.data_layout = host.triple, host.data_layout
    engine = _load_object_code(_optimized_object(str(llmod))[1])
    return engine, {name: engine.get_function_address(name) for name in names}
