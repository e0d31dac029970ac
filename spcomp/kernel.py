"""The compiled kernel a user calls: operands in, result out.

A :class:`Kernel` holds the lowered kernel (per index width: 32-bit indices
first, 64-bit compiled on demand when an operand needs it) and the backend's
machine code. A call binds operands by name, converts and validates them
(once per Tensor object), checks shapes and dtypes, allocates the output,
runs the machine code (over threads when the outer loop is parallel) and
returns a NumPy array, a Tensor or a scalar.
"""
from __future__ import annotations

import ctypes
import weakref

import numpy as np

from .errors import (DTypeError, KernelRuntimeError, OperandError,
                     PackedOverflowError, ShapeError, SpcompError)
from .formats import Format
from .ir import nodes as irn
from .ir.printer import print_ir
from .lower.context import index_type, level_array_type
from .lower.lowerer import Options, lower
from .lower.order import access_chain
from .notation import accesses

_DTYPES = {"float32": np.dtype(np.float32), "float64": np.dtype(np.float64)}


def _np_dtype(name: str) -> np.dtype:
    if name == "bfloat16":
        import ml_dtypes
        return np.dtype(ml_dtypes.bfloat16)
    return _DTYPES[name]


def _libc():
    import ctypes.util
    return ctypes.CDLL(ctypes.util.find_library("c"))


_LIBC = None


def _free(ptr: int):
    global _LIBC
    if _LIBC is None:
        _LIBC = _libc()
        _LIBC.free.argtypes = [ctypes.c_void_p]
    _LIBC.free(ctypes.c_void_p(ptr))


class _Variant:
    """One lowering + machine code, for one index width."""

    def __init__(self, lowered, compiled, function):
        self.lowered = lowered
        self.compiled = compiled
        self.function = function


class Kernel:
    """A compiled index-notation kernel. Call it with operands by name."""

    def __init__(self, expression: str, notation, options: Options, backend, schedule=None,
                 variants: dict | None = None):
        self.expression = expression
        self.notation = notation
        self._options = options
        self._backend = backend
        self.schedule = schedule
        self._variants: dict = dict(variants or {})
        self._tensor_cache: dict = {}
        self._variant(32)  # compile now: errors surface at compile(), source is ready
        low = self._variants[32].lowered
        self.warnings = list(low.warnings)
        out = notation.lhs.tensor
        self.output_name = out.name
        self.inputs = []
        for acc in accesses(notation.rhs):
            if acc.tensor.name not in self.inputs:
                self.inputs.append(acc.tensor.name)

    # ----------------------------------------------------------- inspection
    @property
    def index_notation(self) -> str:
        """The checked expression with its sums made explicit."""
        return repr(self.notation)

    @property
    def loops(self) -> str:
        """The loop nest the lowerer chose, one loop a line."""
        low = self._variants[32].lowered
        return f"{low.notation!r}\n" + low.loops

    @property
    def ir(self) -> str:
        """The kernel IR printed as C-like code."""
        return print_ir(self._variants[32].lowered.module)

    @property
    def source(self) -> str:
        """The generated code: LLVM IR for the CPU backend, CUDA C for cuda."""
        return self._backend.source(self._variants[32].compiled)

    @property
    def formats(self) -> dict:
        return {name: t.format for name, t in self.notation.tensors.items()}

    def __repr__(self) -> str:
        fmts = ", ".join(f"{k}={v}" for k, v in self.formats.items() if not v.is_dense)
        return f"<spcomp.Kernel {self.expression!r}{' ' + fmts if fmts else ''} backend={self._backend.name}>"

    # ------------------------------------------------------------ variants
    def _variant(self, bits: int) -> _Variant:
        v = self._variants.get(bits)
        if v is None:
            v = self._load_or_build(bits)
            self._variants[bits] = v
        return v

    def _cache_key(self, bits: int):
        tensors = sorted((t.name, t.order, t.format.spec(), t.dtype) for t in self.notation.tensors.values())
        return (self.expression, repr(self.notation), tensors, repr(self._options), bits,
                self._backend.name) + self._backend.cache_key()

    def _load_or_build(self, bits: int) -> _Variant:
        from .runtime import cache
        can_cache = hasattr(self._backend, "load")
        digest = cache.key_digest(self._cache_key(bits)) if can_cache else None
        if digest is not None:
            payload = cache.load_entry(digest)
            if payload is not None:
                try:
                    compiled = self._backend.load(payload["compiled"], payload["lowered"])
                    lowered = payload["lowered"]
                    return _Variant(lowered, compiled, self._backend.entry(compiled, lowered))
                except SpcompError:
                    pass  # unusable here: rebuild below
        opt = Options(**{**self._options.__dict__, "index_bits": bits})
        lowered = lower(self.notation, opt)
        compiled = self._backend.build(lowered)
        if digest is not None:
            cache.store_entry(digest, {"lowered": lowered, "compiled": self._backend.dump(compiled)})
        return _Variant(lowered, compiled, self._backend.entry(compiled, lowered))

    # -------------------------------------------------------- save / load
    def save(self, path) -> None:
        """Write this kernel (every index width compiled so far) to ``path``, to ship
        with an inference script; :func:`spcomp.load` reads it without compiling."""
        from .runtime import cache
        if not hasattr(self._backend, "dump"):
            raise SpcompError(f"kernels of backend {self._backend.name!r} cannot be saved")
        payload = {
            "expression": self.expression, "notation": self.notation, "options": self._options,
            "backend": self._backend.name, "machine": self._backend.cache_key(),
            "variants": {b: {"lowered": v.lowered, "compiled": self._backend.dump(v.compiled)}
                         for b, v in self._variants.items()},
        }
        from pathlib import Path
        cache.write_atomic(Path(path), cache.pack(payload))

    @classmethod
    def load(cls, path) -> "Kernel":
        from pathlib import Path

        from .errors import CacheError
        from .runtime import cache
        from .targets import get_target
        try:
            data = Path(path).read_bytes()
        except OSError as e:
            raise CacheError(f"cannot read kernel file {path}: {e}") from None
        payload = cache.unpack(data, str(path))
        backend = get_target(payload["backend"])
        if payload["machine"] != backend.cache_key():
            raise CacheError(f"{path} was compiled for another machine or library version "
                             f"({payload['machine'][0]}); recompile it here")
        variants = {}
        for bits, entry in payload["variants"].items():
            compiled = backend.load(entry["compiled"], entry["lowered"])
            variants[bits] = _Variant(entry["lowered"], compiled, backend.entry(compiled, entry["lowered"]))
        return cls(payload["expression"], payload["notation"], payload["options"], backend, None,
                   variants=variants)

    # ----------------------------------------------------------- operands
    def _to_tensor(self, name: str, value, fmt: Format, dtype: np.dtype):
        """The operand as a validated Tensor in ``fmt`` (cached per object)."""
        from .runtime import Tensor
        import scipy.sparse as sp
        key = (id(value), fmt)
        hit = self._tensor_cache.get(key)
        if hit is not None and hit[0]() is value:
            return hit[1]
        try:
            if isinstance(value, Tensor):
                t = value
                if t.format != fmt:
                    t = t.to_format(fmt)
            elif sp.issparse(value):
                t = Tensor.from_scipy(value, fmt)
            else:
                arr = np.asarray(value)
                t = Tensor.from_numpy(arr, fmt)
        except SpcompError as e:
            raise type(e)(f"operand {name}: {e}") from None
        self._check_dtype(name, t.dtype, dtype)
        if t.dtype != dtype:
            t = t.astype(dtype)
        try:
            t.validate()
        except SpcompError as e:
            raise type(e)(f"operand {name}: {e}") from None
        try:
            self._tensor_cache[key] = (weakref.ref(value), t)
        except TypeError:
            pass  # not weak-referenceable (e.g. a Python list): convert each call
        return t

    @staticmethod
    def _check_dtype(name, have, want):
        have = np.dtype(have)
        if have == want:
            return
        if have.kind in "biu":
            return  # integers and bools convert exactly enough to float
        if have.kind == "f" and want.itemsize >= have.itemsize and want.name != "bfloat16":
            return  # widening float
        if have.kind not in "fbiuV" and have.name != "bfloat16":
            raise DTypeError(f"operand {name} has dtype {have}, which spcomp cannot compute with; "
                             f"the kernel takes {want}")
        raise DTypeError(f"operand {name} has dtype {have} but the kernel was compiled for {want}; "
                         f"convert it (e.g. .astype({want.name!r})) or compile with dtype={have.name!r}")

    # ---------------------------------------------------------------- call
    def __call__(self, **operands):
        notation = self.notation
        low32 = self._variants[32].lowered
        out_t = notation.lhs.tensor
        # --- names
        expected = set(self.inputs)
        allowed = expected | {self.output_name}
        unexpected = sorted(set(operands) - allowed)
        if unexpected:
            raise OperandError(f"unexpected operand(s) {', '.join(unexpected)}; this kernel takes "
                               f"{', '.join(sorted(allowed if notation.accumulate else expected))}")
        missing = sorted(expected - set(operands))
        if notation.accumulate and self.output_name not in operands:
            missing.append(self.output_name)
        if missing:
            raise OperandError(f"missing operand(s) {', '.join(missing)} for {self.expression!r}")
        # --- storages the kernel reads
        storages = {}
        for b in low32.bindings:
            if b.role == "input" and b.storage not in storages:
                t = notation.tensors.get(b.storage)
                if b.storage in low32.transposes:
                    operand, fmt = low32.transposes[b.storage]
                    dtype = _np_dtype(notation.tensors[operand].dtype)
                elif b.storage.endswith("_old") and b.tensor == self.output_name:
                    operand, fmt, dtype = b.tensor, out_t.format, _np_dtype(out_t.dtype)
                else:
                    operand, fmt, dtype = b.storage, t.format, _np_dtype(t.dtype)
                storages[b.storage] = self._operand(operand, operands[operand], fmt, dtype)
        # --- sizes
        sizes = self._bind_sizes(storages, operands, low32)
        bits = 32
        for t in storages.values():
            if t.index_bits_needed() > 32:
                bits = 64
        variant = self._variant(bits)
        low = variant.lowered
        # --- output
        out = _Output(self, low, sizes, operands.get(self.output_name), bits)
        args = []
        lohi = None
        capacity = max(1024, sum(int(t.nnz) for t in storages.values()))
        for b in low.bindings:
            if b.role == "size":
                args.append(sizes[b.index])
            elif b.role in ("lo", "hi"):
                lohi = lohi if lohi is not None else len(args)
                args.append(0)
            elif b.role == "capacity":
                args.append(capacity)
            elif b.role == "input":
                t = storages[b.storage]
                arrays = t.kernel_arrays(bits)
                args.append(_level_array(t, arrays, b.level, b.array))
            else:
                args.append(out.arg(b))
        statuses = self._run(variant, args, lohi, low, sizes, storages)
        for s in statuses:
            if s != 0:
                out.discard()
                self._raise_status(s, out)
        return out.result()

    def _operand(self, name, value, fmt, dtype):
        if isinstance(value, (int, float, np.number)) and fmt.ndim == 0:
            value = np.asarray(value, dtype=dtype)
        return self._to_tensor(name, value, fmt, dtype)

    def _bind_sizes(self, storages, operands, low) -> dict:
        sizes = {}
        origin = {}
        notation = low.notation
        for acc in accesses(notation.rhs):
            t = storages.get(acc.tensor.name)
            if t is None:
                continue
            name = acc.tensor.name
            shown = low.transposes.get(name, (name,))[0]
            if name.endswith("_old") and name[:-4] == self.output_name:
                shown = self.output_name
            if len(t.shape) != len(acc.indices):
                raise ShapeError(f"operand {shown} has {len(t.shape)} dimension(s) but the expression "
                                 f"indexes it with {len(acc.indices)} ({acc!r})")
            for d, i in enumerate(acc.indices):
                size = int(t.shape[d])
                if i.name in sizes and sizes[i.name] != size:
                    o_name, o_dim = origin[i.name]
                    raise ShapeError(
                        f"index {i.name} is bound to dimension {d} of {shown} (size {size}) and to "
                        f"dimension {o_dim} of {o_name} (size {sizes[i.name]})")
                sizes.setdefault(i.name, size)
                origin.setdefault(i.name, (shown, d))
        out_val = operands.get(self.output_name)
        lhs = notation.lhs
        if out_val is not None:
            shape = np.shape(out_val) if not hasattr(out_val, "shape") else tuple(out_val.shape)
            if len(shape) != len(lhs.indices):
                raise ShapeError(f"output {self.output_name} has {len(shape)} dimension(s) but the "
                                 f"expression indexes it with {len(lhs.indices)}")
            for d, i in enumerate(lhs.indices):
                if i.name in sizes and sizes[i.name] != shape[d]:
                    o_name, o_dim = origin[i.name]
                    raise ShapeError(f"output {self.output_name} dimension {d} (index {i.name}) has size "
                                     f"{shape[d]} but dimension {o_dim} of {o_name} has size {sizes[i.name]}")
                sizes.setdefault(i.name, int(shape[d]))
        for i in low.order:
            if i.name not in sizes:
                raise ShapeError(f"the size of index {i.name} cannot be inferred from the operands; pass "
                                 f"the output {self.output_name} to give it")
        return sizes

    def _run(self, variant, args, lohi, low, sizes, storages):
        fn = variant.function
        if lohi is None:
            return [fn(*args)]
        n = sizes[low.parallel]
        if self._backend.name != "cpu":  # the GPU grid covers the whole range
            args[lohi], args[lohi + 1] = 0, n
            return [fn(*args)]
        from .runtime.threads import run_ranges
        pos = None
        if low.balance is not None:
            name, level = low.balance
            t = storages.get(name)
            if t is not None:
                pos = t.levels[level].get("pos")

        def call(lo, hi):
            a = list(args)
            a[lohi] = lo
            a[lohi + 1] = hi
            return fn(*a)
        return run_ranges(call, n, pos)

    def _raise_status(self, status, out):
        if status == irn.STATUS_PACKED_OVERFLOW:
            largest = out.largest_count()
            raise PackedOverflowError(
                f"output {self.output_name}: a block got {largest} nonzeros but the packed-block level "
                f"has K={out.packed_k()} slots; compile with a larger K (e.g. twell(B=..,K={largest}))",
                largest_count=largest)
        raise KernelRuntimeError(f"kernel for {self.expression!r} failed: "
                                 f"{irn.STATUS_CODES.get(status, f'status {status}')}")


def _level_array(t, arrays, level, name):
    """Pick one array from Tensor.kernel_arrays order."""
    k = 0
    for l, kind in enumerate(t.format.levels):
        for a in kind.arrays:
            if l == level and a == name:
                return arrays[k]
            k += 1
    return arrays[k]  # vals


class _Output:
    """Allocates a kernel's output, hands its pointers out, and builds the result."""

    def __init__(self, kernel: Kernel, low, sizes: dict, given, bits: int):
        self.k = kernel
        self.low = low
        self.t = low.notation.lhs.tensor
        self.fmt = self.t.format
        self.dtype = _np_dtype(self.t.dtype)
        self.shape = tuple(sizes[i.name] for i in low.notation.lhs.indices)
        self.bits = bits
        self.arrays = {}
        self.grow = {}
        self.given = given
        chain = access_chain(low.notation.lhs)
        self.level_sizes = [sizes[i.name] for i in chain]
        if low.output_shape == "dense":
            self._alloc_dense(given)
        else:
            if given is not None and not low.notation.accumulate:
                raise OperandError(f"output {self.t.name} is sparse: the kernel assembles it, so do not "
                                   "pass it (pass it only with +=)")
            self._alloc_sparse()

    # --------------------------------------------------------------- dense
    def _alloc_dense(self, given):
        storage_shape = tuple(self.level_sizes)
        if given is None:
            self.dense = np.zeros(storage_shape, dtype=self.dtype)
            self.user = None
            return
        arr = given
        if not isinstance(arr, np.ndarray):
            raise OperandError(f"output {self.t.name} must be a numpy.ndarray, not {type(arr).__name__}")
        if arr.dtype != self.dtype:
            raise DTypeError(f"output {self.t.name} has dtype {arr.dtype} but the kernel writes {self.dtype}")
        if not arr.flags.writeable:
            raise OperandError(f"output {self.t.name} is read-only")
        view = np.transpose(arr, self.fmt.order) if self.fmt.order else arr
        self.user = arr
        if view.flags.c_contiguous:
            self.dense = view
        else:
            self.dense = np.ascontiguousarray(view)
        if not self.low.notation.accumulate:
            self.dense[...] = 0

    # -------------------------------------------------------------- sparse
    def _alloc_sparse(self):
        levels = self.fmt.levels
        d = 0
        while levels[d].is_dense:
            d += 1
        dense_positions = int(np.prod(self.level_sizes[:d])) if d else 1
        self.d = d
        self.dense_positions = dense_positions
        grow = set(self.low.growable)
        for l in range(d, len(levels)):
            kind = levels[l]
            for a in kind.arrays:
                if (l, a) in grow:
                    self.grow[(l, a)] = ctypes.c_void_p(0)
                    continue
                et = level_array_type(kind, a, self.bits)
                from .ir.types import to_numpy
                dt = to_numpy(et)
                if a == "pos":
                    self.arrays[(l, a)] = np.zeros(dense_positions + 1, dtype=dt)
                elif a == "count":
                    self.arrays[(l, a)] = np.zeros(dense_positions * kind.num_blocks(self.level_sizes[l]), dtype=dt)
                else:  # packed crd
                    n = dense_positions * kind.num_blocks(self.level_sizes[l]) * kind.K
                    self.arrays[(l, a)] = np.zeros(n, dtype=dt)
        if (-1, "vals") in grow:
            self.grow[(-1, "vals")] = ctypes.c_void_p(0)
        else:
            kind = levels[-1]
            n = dense_positions * kind.num_blocks(self.level_sizes[-1]) * kind.K
            self.arrays[(-1, "vals")] = np.zeros(n, dtype=self.dtype)

    def arg(self, b):
        if self.low.output_shape == "dense":
            return self.dense
        if b.role == "output_grow":
            return ctypes.byref(self.grow[(b.level, b.array)])
        return self.arrays[(b.level, b.array)]

    def discard(self):
        for ptr in self.grow.values():
            if ptr.value:
                _free(ptr.value)
                ptr.value = None

    def largest_count(self):
        for (l, a), arr in self.arrays.items():
            if a == "count":
                return int(arr.max()) if arr.size else 0
        return 0

    def packed_k(self):
        return self.fmt.levels[-1].K

    def _take(self, key, n, dtype):
        """Copy a kernel-allocated array into NumPy and free the original."""
        ptr = self.grow[key].value
        if n == 0 or not ptr:
            if ptr:
                _free(ptr)
            return np.zeros(0, dtype=dtype)
        buf = (ctypes.c_char * (n * dtype.itemsize)).from_address(ptr)
        arr = np.frombuffer(buf, dtype=dtype, count=n).copy()
        _free(ptr)
        return arr

    def result(self):
        if self.low.output_shape == "dense":
            out = self.dense
            if self.user is not None:
                if not np.shares_memory(out, self.user):
                    np.copyto(np.transpose(self.user, self.fmt.order), out)
                return self.user
            if not self.shape:
                return out.reshape(()).item() if out.size else 0.0
            inv = np.argsort(self.fmt.order)
            return np.transpose(out, inv)
        from .ir.types import to_numpy
        from .runtime import Tensor
        levels = self.fmt.levels
        level_arrays = [dict() for _ in levels]
        parent = self.dense_positions
        for l in range(self.d, len(levels)):
            kind = levels[l]
            arrs = {}
            for a in kind.arrays:
                dt = to_numpy(level_array_type(kind, a, self.bits))
                if (l, a) in self.arrays:
                    arrs[a] = self.arrays[(l, a)]
                elif a == "pos":
                    arrs[a] = self._take((l, a), parent + 1, dt)
            if "pos" in arrs:
                count = int(arrs["pos"][parent]) if len(arrs["pos"]) > parent else 0
            elif kind.letter == "q":
                count = parent
            else:
                count = parent * kind.num_blocks(self.level_sizes[l]) * kind.K
            for a in kind.arrays:
                if a not in arrs:
                    dt = to_numpy(level_array_type(kind, a, self.bits))
                    arrs[a] = self._take((l, a), count, dt)
            level_arrays[l] = arrs
            parent = count
        if (-1, "vals") in self.arrays:
            vals = self.arrays[(-1, "vals")]
        else:
            vals = self._take((-1, "vals"), parent, self.dtype)
        return Tensor.from_arrays(self.fmt, self.shape, level_arrays, vals)
