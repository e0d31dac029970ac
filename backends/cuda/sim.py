"""cuda-sim: run emitted CUDA C on the CPU (DESIGN §7).

The very same text that nvcc compiles is compiled by the host C++ compiler with
``runtime/cuda_sim.h`` force-included (``g++ -O1 -std=c++17 -include cuda_sim.h
-x c++``) into a shared library. For each ``__global__`` function the module
appends a generated ``extern "C"`` launcher that unpacks an argument array and
runs the kernel over the grid: blocks on a few worker threads, the threads of a
block as cooperative fibers, so ``__syncthreads``, ``__syncwarp`` and the warp
shuffles are real barriers (see the header for the full model).

Libraries are cached in memory per process and, signed with the user's key, in
the kernel cache's private directory (``cuda-sim/``, see :mod:`spcomp.runtime.trust`)
under the hash of header, source and compiler flags. A cached library is loaded
only after its HMAC checks out, from an anonymous in-memory file (``memfd``), so
nothing another user can write is ever ``dlopen``-ed.

    sim = compile_sim(emit_module(module), signatures(module))
    status = sim.launch("spmv", [n, pos, crd, vals, x, y], grid=4, block=64)

Arrays are passed as host pointers: the kernel reads and writes the NumPy
arrays in place. ``launch`` returns the kernel's status (0 = ok); a harness
failure (a deadlock, a warp operation with a bad mask, ``__trap``) raises
:class:`CudaSimError`.
"""
from __future__ import annotations

import ctypes
import hashlib
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import numpy as np

from spcomp import errors
from spcomp.runtime import forksafe

from .emit import emit_module
from .launch import launch_config
from .signature import KernelSignature, coerce_args, parse_kernels, signatures

CXXFLAGS = ("-O1", "-std=c++17", "-fPIC", "-shared", "-pthread", "-w", "-fno-strict-aliasing")


class CudaSimError(errors.SpcompError):
    """The CPU harness could not run a kernel (compile error, deadlock, bad warp mask...)."""


def header_path() -> Path:
    import spcomp.runtime
    return Path(spcomp.runtime.__file__).resolve().parent / "cuda_sim.h"


def compiler() -> str | None:
    """The host C++ compiler: $CXX, else g++, else c++."""
    for cand in (os.environ.get("CXX"), "g++", "c++"):
        if cand and shutil.which(cand):
            return shutil.which(cand)
    return None


def _dims(v) -> tuple[int, int, int]:
    if isinstance(v, (int, np.integer)):
        return int(v), 1, 1
    t = tuple(int(x) for x in v)
    if not 1 <= len(t) <= 3:
        raise CudaSimError(f"grid/block must be an int or 1 to 3 ints, got {v!r}")
    return t + (1,) * (3 - len(t))


def _launcher(sig: KernelSignature) -> str:
    args = []
    for i, p in enumerate(sig.params):
        if sig.has_status and i == len(sig.params) - 1:
            args.append("&spc_status_value")
        elif p.pointer:
            args.append(f"({p.ctype})(*(void* const*)spc_args[{i}])")
        else:
            args.append(f"*({p.base}*)spc_args[{i}]")
    call = f"{sig.name}({', '.join(args)});"
    return (f'extern "C" int spc_sim_launch_{sig.name}(void** spc_args, const unsigned* g, const unsigned* b, '
            f'int workers, char* err, int errlen) {{\n'
            f'  int32_t spc_status_value = 0;\n'
            f'  std::function<void()> body = [&]() {{ {call} }};\n'
            f'  if (spc_sim::launch(dim3(g[0], g[1], g[2]), dim3(b[0], b[1], b[2]), body, workers, err, errlen) != 0)\n'
            f'    return -1;\n'
            f'  return spc_status_value;\n'
            f'}}\n')


class SimModule:
    """A compiled cuda-sim library: ``launch`` runs one of its kernels."""

    def __init__(self, library: bytes, kernels: dict, source: str):
        self.kernels = kernels
        self.source = source
        self._lib = _dlopen_bytes(library)
        self._fns = {}
        for name in kernels:
            fn = getattr(self._lib, f"spc_sim_launch_{name}")
            fn.restype = ctypes.c_int
            fn.argtypes = [ctypes.POINTER(ctypes.c_void_p), ctypes.POINTER(ctypes.c_uint),
                           ctypes.POINTER(ctypes.c_uint), ctypes.c_int, ctypes.c_char_p, ctypes.c_int]
            self._fns[name] = fn

    def launch(self, function_name: str, args, grid=1, block=1, workers: int | None = None) -> int:
        """Run ``function_name`` over ``grid`` x ``block`` threads; returns its status.

        ``args`` are the kernel's parameters in order, without the status
        parameter. ``workers`` OS threads run blocks concurrently (default:
        $SPCOMP_SIM_WORKERS or up to 8, one per CPU).
        """
        if function_name not in self.kernels:
            raise errors.OperandError(f"no kernel `{function_name}` in this module "
                                      f"(it has {', '.join(sorted(self.kernels)) or 'none'})")
        sig = self.kernels[function_name]
        values = coerce_args(sig, args)
        keep = []
        pointers = []
        for p, v in zip(sig.user_params, values):
            if p.pointer:
                holder = ctypes.c_void_p(v.ctypes.data)
            else:
                holder = np.array([v], dtype=p.dtype)
            keep.append(holder)
            pointers.append(ctypes.addressof(holder) if p.pointer else holder.ctypes.data)
        if sig.has_status:
            pointers.append(0)  # the launcher passes its own status variable
        argv = (ctypes.c_void_p * max(1, len(pointers)))(*pointers)
        g = (ctypes.c_uint * 3)(*_dims(grid))
        b = (ctypes.c_uint * 3)(*_dims(block))
        if workers is None:
            workers = int(os.environ.get("SPCOMP_SIM_WORKERS", "0"))
        err = ctypes.create_string_buffer(1024)
        rc = self._fns[function_name](argv, g, b, int(workers), err, len(err))
        del keep
        if rc < 0:
            raise CudaSimError(f"cuda-sim: kernel `{function_name}` (grid {_dims(grid)}, block {_dims(block)}): "
                               f"{err.value.decode(errors='replace')}")
        return rc


_cache: dict[str, SimModule] = {}
_lock = forksafe.Lock()
SIM_MAGIC = b"SPCOMP-SIM-1\n"


def _dlopen_bytes(library: bytes) -> ctypes.CDLL:
    """Load a shared library from bytes already verified, through an anonymous
    in-memory file: no path another process could swap between check and load.

    The file stays open with the library: the dynamic loader knows a library by
    its path, so a reused descriptor number would hand back the old library."""
    if hasattr(os, "memfd_create") and os.path.isdir("/proc/self/fd"):
        fd = os.memfd_create("spcomp-cuda-sim", getattr(os, "MFD_CLOEXEC", 0))
        try:
            view = memoryview(library)
            while view:
                view = view[os.write(fd, view):]
            lib = ctypes.CDLL(f"/proc/self/fd/{fd}")
        except BaseException:
            os.close(fd)
            raise
        _open_libraries.append(fd)
        return lib
    with tempfile.TemporaryDirectory(prefix="spcomp-sim-") as tmp:  # 0700, this process's own
        path = Path(tmp) / f"kernel-{len(_open_libraries)}.so"
        path.write_bytes(library)
        lib = ctypes.CDLL(str(path))
        _open_libraries.append(path)
        return lib


_open_libraries: list = []  # memfd descriptors of the loaded libraries (kept open, see above)


def _build(cxx: str, header: Path, full: str) -> bytes:
    """The shared library of ``full`` (CUDA C plus launchers), compiled in a private
    temporary directory."""
    with tempfile.TemporaryDirectory(prefix="spcomp-sim-") as tmp:
        src = Path(tmp) / "kernel.cu"
        src.write_text(full)
        out = Path(tmp) / "kernel.so"
        cmd = [cxx, *CXXFLAGS, "-include", str(header), "-x", "c++", str(src), "-o", str(out)]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            raise CudaSimError(f"cuda-sim: the host compiler rejected the CUDA source:\n"
                               f"{proc.stderr.strip()}\n[command: {' '.join(cmd)}]")
        return out.read_bytes()


def _cached_library(key: str) -> bytes | None:
    """The library cached under ``key``, when its signature checks out."""
    from spcomp.runtime import cache, trust
    folder, user_key = cache.trusted_dir()
    if folder is None:
        return None
    path = folder / cache.SIM_FOLDER / f"{key}.sim"
    try:
        data = trust.read_private(path)
        if not data.startswith(SIM_MAGIC):
            raise errors.CacheError(f"{path}: not a cuda-sim library")
        library = trust.verify(data[len(SIM_MAGIC):], user_key, str(path), "cache key")
    except FileNotFoundError:
        return None
    except (OSError, errors.CacheError):
        try:
            path.unlink()
        except OSError:
            pass
        return None
    try:
        os.utime(path)
    except OSError:
        pass
    return library


def _store_library(key: str, library: bytes) -> None:
    from spcomp.runtime import cache, trust
    folder, user_key = cache.trusted_dir()
    if folder is not None:
        cache.store_bytes(folder, folder / cache.SIM_FOLDER / f"{key}.sim",
                          SIM_MAGIC + trust.sign(library, user_key) + library)


def compile_sim(cuda_source: str, kernels: dict | None = None) -> SimModule:
    """Compile CUDA C (e.g. from :func:`~spcomp.backends.cuda.emit.emit_module`) for the CPU harness.

    ``kernels`` ({name: KernelSignature}) are the source's ``__global__`` functions to
    launch: for emitted source, :func:`~spcomp.backends.cuda.signature.signatures` of the
    IR module; without it they are read from the text (hand-written CUDA C)."""
    cxx = compiler()
    if cxx is None:
        raise errors.BackendUnavailableError("cuda-sim needs a host C++ compiler (g++ or $CXX); none was found")
    header = header_path()
    if kernels is None:
        kernels = parse_kernels(cuda_source)
    if not kernels:
        raise CudaSimError("the source has no __global__ function to launch")
    full = cuda_source + "\n\n// ---- cuda-sim launchers ----\n" + "\n".join(_launcher(s) for s in kernels.values())
    key = hashlib.sha256("\0".join([header.read_text(), full, cxx, *CXXFLAGS]).encode()).hexdigest()[:24]
    with _lock:
        if key in _cache:
            return _cache[key]
        library = _cached_library(key)
        if library is None:
            library = _build(cxx, header, full)
            _store_library(key, library)
        module = SimModule(library, kernels, cuda_source)
        _cache[key] = module
        return module


def run(module, function_name: str, args_by_name: dict, block: int = 256, grid: int | None = None,
        workers: int | None = None) -> int:
    """Emit, compile (cached) and launch one function of an IR module under cuda-sim.

    Arguments are given by parameter name; without ``grid`` the launch
    configuration comes from :func:`~spcomp.backends.cuda.launch.launch_config`.
    """
    fn = module.function(function_name)
    sim = compile_sim(emit_module(module), signatures(module))
    if grid is None:
        grid, block = launch_config(fn, args_by_name, block)
    missing = [p.name for p in fn.params if p.name not in args_by_name]
    if missing:
        raise errors.OperandError(f"`{function_name}` needs {', '.join(missing)}")
    return sim.launch(function_name, [args_by_name[p.name] for p in fn.params], grid, block, workers)
