"""A CUDA kernel's C signature: what the launchers check and convert arguments against.

For the kernels spcomp emits the signature comes from the IR (:func:`signature`): the
function's parameters in order, pointers as ``T*`` (``const T*`` when the function only
loads from them, :func:`readonly_params`), scalars as their C type (``ir/types.py``'s
C names), and the status parameter ``int32_t* spc_status`` last. The emitter prints its
parameter lists from the same objects, so the text and the launchers cannot disagree.

:func:`parse_kernels` reads signatures back from CUDA C text instead. Only source
spcomp did not emit needs it: :func:`~.sim.compile_sim` and :func:`~.device.compile_gpu`
accept any CUDA C (the harness tests hand them their own kernels), and
:func:`~.nvcc.check_source` reports on any text.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np

from spcomp import errors
from spcomp.ir import nodes as n
from spcomp.ir.types import BF16, SCALAR_TYPES, PointerType, ScalarType, to_numpy

STATUS_PARAM = "spc_status"

# C type -> NumPy dtype name: the IR's C names (ir/types.py; bf16's storage type
# uint16_t reads as uint16, and a launch takes uint16 or bfloat16 arrays for it), then
# the other spellings hand-written CUDA C may use
C_TYPES = {t.c_name: to_numpy(t).name for t in SCALAR_TYPES if t != BF16} | {
    "char": "int8", "signed char": "int8", "unsigned char": "uint8", "uint8_t": "uint8",
    "short": "int16", "unsigned short": "uint16", "uint16_t": "uint16", "int": "int32",
    "unsigned": "uint32", "unsigned int": "uint32", "uint32_t": "uint32",
    "long": "int64", "long long": "int64",
    "unsigned long": "uint64", "unsigned long long": "uint64", "uint64_t": "uint64", "size_t": "uint64",
}


@dataclass(frozen=True)
class KernelParam:
    name: str
    base: str        # the C element / scalar type, e.g. 'float', 'int64_t'
    pointer: bool
    const: bool

    @property
    def ctype(self) -> str:
        """The C type to cast a launch argument to, e.g. ``const float*``."""
        return ("const " if self.const else "") + self.base + ("*" if self.pointer else "")

    @property
    def dtype(self) -> np.dtype:
        return np.dtype(C_TYPES[self.base])

    @property
    def declaration(self) -> str:
        """The parameter as the emitter prints it: ``const float* __restrict__ x``."""
        return f"{self.ctype} __restrict__ {self.name}" if self.pointer else f"{self.base} {self.name}"


@dataclass(frozen=True)
class KernelSignature:
    name: str
    params: tuple    # of KernelParam, the status parameter included

    @property
    def has_status(self) -> bool:
        return bool(self.params) and self.params[-1].name == STATUS_PARAM

    @property
    def user_params(self) -> tuple:
        return self.params[:-1] if self.has_status else self.params

def readonly_params(f: n.Function) -> set:
    """Pointer parameters the function only loads from (they become ``const T*``)."""
    ptrs = {p.name for p in f.params if isinstance(p.type, PointerType)}
    seen: dict[str, int] = {}
    loaded: dict[str, int] = {}
    for x in n.walk(f.body):
        if isinstance(x, n.Var) and x.name in ptrs:
            seen[x.name] = seen.get(x.name, 0) + 1
        elif isinstance(x, n.Load) and isinstance(x.array, n.Var) and x.array.name in ptrs:
            loaded[x.array.name] = loaded.get(x.array.name, 0) + 1
    return {p for p in ptrs if seen.get(p, 0) == loaded.get(p, 0)}


def kernel_params(f: n.Function) -> tuple:
    """The :class:`KernelParam` s of IR function ``f``'s own parameters, in order."""
    readonly = readonly_params(f)
    out = []
    for p in f.params:
        pointer = isinstance(p.type, PointerType)
        elem = p.type.elem if pointer else p.type
        if not isinstance(elem, ScalarType):
            raise errors.UnsupportedError(f"cuda backend, function `{f.name}`: parameter `{p.name}` is a "
                                          "pointer to a pointer")
        out.append(KernelParam(p.name, elem.c_name, pointer, pointer and p.name in readonly))
    return tuple(out)


def signature(f: n.Function) -> KernelSignature:
    """The signature of the ``__global__`` function the emitter prints for ``f``."""
    return KernelSignature(f.name, kernel_params(f) + (KernelParam(STATUS_PARAM, "int32_t", True, False),))


def signatures(module: n.Module) -> dict:
    """{name: KernelSignature} of the kernels of an IR module (what ``emit_module`` prints)."""
    return {f.name: signature(f) for f in module.functions}


_KERNEL = re.compile(r"__global__\s+(?:__launch_bounds__\s*\([^)]*\)\s*)?void\s+"
                     r"(?:__launch_bounds__\s*\([^)]*\)\s*)?(\w+)\s*\(([^)]*)\)")


def parse_kernels(source: str) -> dict:
    """{name: KernelSignature} for every ``__global__`` function of a CUDA source."""
    text = re.sub(r"/\*.*?\*/", " ", source, flags=re.S)
    text = re.sub(r"//[^\n]*", " ", text)
    out = {}
    for m in _KERNEL.finditer(text):
        name, plist = m.group(1), m.group(2).strip()
        params = []
        if plist and plist != "void":
            for raw in plist.split(","):
                words = raw.replace("*", " * ").split()
                words = [w for w in words if w not in ("__restrict__", "restrict", "__restrict")]
                if len(words) < 2:
                    raise errors.SpcompError(f"cannot read the parameter {raw.strip()!r} of kernel `{name}`")
                pname = words[-1]
                words = words[:-1]
                pointer = words.count("*")
                const = "const" in words
                base = " ".join(w for w in words if w not in ("*", "const"))
                if pointer > 1 or base not in C_TYPES:
                    raise errors.SpcompError(f"kernel `{name}`: parameter `{pname}` has a type ({raw.strip()}) "
                                             "the launchers do not handle")
                params.append(KernelParam(pname, base, bool(pointer), const))
        out[name] = KernelSignature(name, tuple(params))
    return out


def _dtype_matches(param: KernelParam, dtype: np.dtype) -> bool:
    want = param.dtype
    if dtype == want:
        return True
    if param.base in ("uint16_t", "unsigned short") and dtype.name == "bfloat16":
        return True
    if dtype.kind == want.kind and dtype.itemsize == want.itemsize and dtype.kind in "iuf":
        return True  # e.g. int64 'l' vs 'q'
    return False


def coerce_args(sig: KernelSignature, args, device_arrays=()) -> list:
    """Check launch arguments against a kernel signature and normalise them.

    ``args`` are the kernel's parameters in order, the status parameter left out
    (the launchers add it). Arrays must be C-contiguous NumPy arrays of the
    parameter's element type (bf16 arrays may be ml_dtypes.bfloat16 or uint16),
    writable unless the parameter is ``const``; scalars become NumPy scalars of
    the parameter's type. Objects whose type is in ``device_arrays`` (GPU arrays)
    are checked by dtype only and passed through.
    """
    params = sig.user_params
    args = list(args)
    if len(args) != len(params):
        raise errors.OperandError(f"kernel `{sig.name}` takes {len(params)} arguments "
                                  f"({', '.join(p.name for p in params)}), got {len(args)}")
    out = []
    for p, a in zip(params, args):
        if p.pointer:
            if device_arrays and isinstance(a, device_arrays):
                if not _dtype_matches(p, np.dtype(a.dtype)):
                    raise errors.DTypeError(f"kernel `{sig.name}`: `{p.name}` is {p.ctype}, got a GPU array of "
                                            f"{a.dtype}")
                out.append(a)
                continue
            if not isinstance(a, np.ndarray):
                raise errors.OperandError(f"kernel `{sig.name}`: `{p.name}` is {p.ctype} and needs a NumPy array, "
                                          f"got {type(a).__name__}")
            if not _dtype_matches(p, a.dtype):
                raise errors.DTypeError(f"kernel `{sig.name}`: `{p.name}` is {p.ctype}, got an array of {a.dtype}")
            if not a.flags.c_contiguous:
                raise errors.OperandError(f"kernel `{sig.name}`: the array for `{p.name}` is not C-contiguous")
            if not p.const and not a.flags.writeable:
                raise errors.OperandError(f"kernel `{sig.name}`: the kernel writes `{p.name}`, but its array is "
                                          "read-only")
            out.append(a)
        else:
            if isinstance(a, np.ndarray):
                if a.size != 1:
                    raise errors.OperandError(f"kernel `{sig.name}`: `{p.name}` is a scalar {p.base}, got an array")
                a = a.reshape(()).item()
            if p.dtype.kind in "iub" and isinstance(a, (float, np.floating)) and float(a) != int(a):
                raise errors.OperandError(f"kernel `{sig.name}`: `{p.name}` is {p.base}, got {a!r}")
            try:
                if p.dtype.kind in "iu":
                    info = np.iinfo(p.dtype)
                    if not info.min <= int(a) <= info.max:
                        raise OverflowError
                    out.append(p.dtype.type(int(a)))
                else:
                    out.append(p.dtype.type(a))
            except (OverflowError, TypeError, ValueError):
                raise errors.OperandError(f"kernel `{sig.name}`: `{p.name}` is {p.base}, got {a!r}") from None
    return out
