"""Compile checks with nvcc: does the emitted CUDA C build, and what does it cost?

:func:`check` takes a compiled :class:`spcomp.Kernel` (backend ``cuda`` or
``cuda-sim``) and reports, per arch (sm_80 and sm_90 by default) and per
``__global__`` function, what ptxas says about it. :func:`check_source`, the
lower-level function, runs ``nvcc -cubin -arch=<arch> -Xptxas -v`` on a source
text and reads ptxas' report for every kernel (entry function)::

    {"spmv": {"registers": 18, "shared_bytes": 0, "spill_stores": 0,
              "spill_loads": 0, "stack_bytes": 0, "barriers": 0}}

No GPU is needed. nvcc is looked up as ``$SPCOMP_NVCC``, ``$CUDA_HOME/bin/nvcc``,
``nvcc`` on PATH, then ``/usr/local/cuda/bin/nvcc``.
"""
from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

from spcomp import errors


class NvccError(errors.SpcompError):
    """nvcc rejected a CUDA source. ``log`` holds nvcc's output, ``arch`` the target."""

    def __init__(self, message: str, log: str = "", arch: str = ""):
        self.log = log
        self.arch = arch
        super().__init__(message)


def nvcc_path() -> str | None:
    cands = [os.environ.get("SPCOMP_NVCC")]
    if os.environ.get("CUDA_HOME"):
        cands.append(str(Path(os.environ["CUDA_HOME"]) / "bin" / "nvcc"))
    cands += [shutil.which("nvcc"), "/usr/local/cuda/bin/nvcc"]
    for c in cands:
        if c and os.path.isfile(c) and os.access(c, os.X_OK):
            return c
    return None


def nvcc_available() -> bool:
    return nvcc_path() is not None


_ENTRY = re.compile(r"Compiling entry function '([^']+)' for '([^']+)'")
_PROPS = re.compile(r"Function properties for (\S+)")
_FRAME = re.compile(r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads")
_USED = re.compile(r"Used (\d+) registers")
_SMEM = re.compile(r"(\d+) bytes smem")
_BARS = re.compile(r"used (\d+) barriers")


def parse_ptxas(log: str) -> dict:
    """Per-kernel resource use from ``ptxas -v`` output."""
    out: dict[str, dict] = {}
    entry = None     # kernel whose "Used ..." line comes next
    props = None     # function whose "Function properties" frame line comes next
    for line in log.splitlines():
        m = _ENTRY.search(line)
        if m:
            entry = m.group(1)
            out.setdefault(entry, {"registers": 0, "shared_bytes": 0, "spill_stores": 0, "spill_loads": 0,
                                   "stack_bytes": 0, "barriers": 0})
            continue
        m = _PROPS.search(line)
        if m:
            props = m.group(1)
            continue
        m = _FRAME.search(line)
        if m and props is not None:
            if props in out:
                out[props].update(stack_bytes=int(m.group(1)), spill_stores=int(m.group(2)),
                                  spill_loads=int(m.group(3)))
            props = None
            continue
        m = _USED.search(line)
        if m and entry is not None:
            info = out[entry]
            info["registers"] = int(m.group(1))
            s = _SMEM.search(line)
            info["shared_bytes"] = int(s.group(1)) if s else 0
            b = _BARS.search(line)
            info["barriers"] = int(b.group(1)) if b else 0
            entry = None
    return out


_results: dict[tuple, dict] = {}


def check_source(cuda_source: str, arch: str = "sm_90", options=(), timeout: float = 300) -> dict:
    """Compile ``cuda_source`` to a cubin for ``arch`` and return ptxas' numbers per kernel.

    Raises :class:`~spcomp.errors.BackendUnavailableError` without nvcc and
    :class:`NvccError` (with nvcc's messages) when the source does not compile.
    """
    nvcc = nvcc_path()
    if nvcc is None:
        raise errors.BackendUnavailableError(
            "nvcc was not found ($SPCOMP_NVCC, $CUDA_HOME/bin, PATH, /usr/local/cuda/bin): install the CUDA "
            "toolkit to compile-check CUDA kernels")
    key = (hashlib.sha256(cuda_source.encode()).hexdigest(), arch, tuple(options), nvcc)
    if key in _results:
        return {k: dict(v) for k, v in _results[key].items()}
    with tempfile.TemporaryDirectory(prefix="spcomp-nvcc-") as tmp:
        src = Path(tmp) / "kernel.cu"
        src.write_text(cuda_source)
        cmd = [nvcc, "-cubin", f"-arch={arch}", "-Xptxas", "-v", *options, "-o", str(Path(tmp) / "kernel.cubin"),
               str(src)]
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
        except subprocess.TimeoutExpired:
            raise NvccError(f"nvcc took longer than {timeout:.0f} s for {arch}", arch=arch) from None
    log = (proc.stdout + "\n" + proc.stderr).strip()
    if proc.returncode != 0:
        raise NvccError(f"nvcc could not compile the CUDA source for {arch}:\n{log}", log=log, arch=arch)
    result = parse_ptxas(log)
    _results[key] = result
    return {k: dict(v) for k, v in result.items()}


def kernel_sources(kernel) -> list[str]:
    """The distinct CUDA C texts of a compiled :class:`spcomp.Kernel` (one per index width built)."""
    backend = getattr(kernel, "backend", None)
    if backend not in ("cuda", "cuda-sim"):
        raise errors.UnsupportedError(
            f"check() compiles CUDA kernels; {kernel!r} was compiled for backend {backend!r}: "
            "compile it with backend='cuda' or backend='cuda-sim'")
    kernel._variant(32)
    texts = [kernel.target.source(v.compiled) for _, v in sorted(kernel.variants.items(), key=str)]
    return list(dict.fromkeys(texts))


def check(kernel, arch=("sm_80", "sm_90"), options=(), timeout: float = 300) -> dict:
    """ptxas' resource use of a compiled kernel: ``{arch: {function: {...}}}``.

    ``kernel`` is a :class:`spcomp.Kernel` compiled with ``backend="cuda"`` or
    ``"cuda-sim"``; every ``__global__`` function of its CUDA C (every index width
    built so far) is compiled for each ``arch`` (a name or a tuple of names) and
    reported as :func:`check_source` does: ``registers``, ``shared_bytes``,
    ``spill_stores``, ``spill_loads`` (bytes), ``stack_bytes``, ``barriers``.
    Raises :class:`~spcomp.errors.BackendUnavailableError` without nvcc and
    :class:`NvccError` naming the kernel and the arch when nvcc rejects the text.
    """
    archs = (arch,) if isinstance(arch, str) else tuple(arch)
    out: dict[str, dict] = {}
    for a in archs:
        report: dict[str, dict] = {}
        for text in kernel_sources(kernel):
            try:
                report.update(check_source(text, a, options, timeout))
            except NvccError as e:
                raise NvccError(f"{kernel!r}: {e}", log=e.log, arch=a) from None
        out[a] = report
    return out
