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
import os
import threading
import weakref

import numpy as np

from .errors import (DTypeError, KernelRuntimeError, OperandError,
                     PackedOverflowError, ShapeError, SpcompError)
from .formats import Format
from .ir import nodes as irn
from .ir.printer import print_ir
from .lower.context import level_array_type
from .lower.lowerer import Options, lower
from .lower.order import access_chain
from .notation import accesses
from .runtime import forksafe as _forksafe
from .runtime import interrupt as _interrupt
from .runtime import threads as _threads
from . import chunks as _chunks
from . import relayout as _relayout

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


def _get_libc():
    global _LIBC
    if _LIBC is None:
        _LIBC = _libc()
        _LIBC.free.argtypes = [ctypes.c_void_p]
        _LIBC.realloc.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
        _LIBC.realloc.restype = ctypes.c_void_p
    return _LIBC


def _free(ptr: int):
    """Free memory a kernel allocated (kernels use the process's malloc)."""
    _get_libc().free(ctypes.c_void_p(ptr))


def _realloc(ptr: int, nbytes: int) -> int:
    return _get_libc().realloc(ctypes.c_void_p(ptr), nbytes) or 0


def _malloc_view(ptr: int, n: int, dtype: np.dtype) -> np.ndarray:
    """``n`` items of malloc'd memory as NumPy, not owning it (its ``base`` is the
    ctypes buffer, for a finalizer that frees it)."""
    buf = (ctypes.c_char * (n * dtype.itemsize)).from_address(ptr)
    return np.frombuffer(buf, dtype=dtype, count=n)


def _mostly_unused(n: int, capacity: int) -> bool:
    """Whether an output array of ``capacity`` entries holding ``n`` leaves over a
    quarter unused: then it is cut to ``n`` (see _Output._take), else kept whole."""
    return 4 * (capacity - n) > capacity


def _slow_data_ptr(a) -> int:
    return a.__array_interface__["data"][0]


def _pick_data_ptr():
    """The cheapest reader of an ndarray's data pointer that this interpreter allows.

    ``__array_interface__`` builds a dict (~1.5 us, a tenth of a small call); on
    CPython the pointer is the first field after the object header (NumPy's ABI:
    ``PyArray_DATA``), read in ~0.2 us. The fast reader is used only when it
    agrees with ``__array_interface__`` on probes here."""
    import platform
    if platform.python_implementation() != "CPython":
        return _slow_data_ptr
    at = ctypes.c_void_p.from_address
    offset = object.__basicsize__

    def fast(a) -> int:
        return at(id(a) + offset).value

    base = np.arange(8.0)
    probes = [base, base[3:], np.zeros((2, 3), np.float32), np.zeros(0)]
    if all(fast(a) == _slow_data_ptr(a) for a in probes):
        return fast
    return _slow_data_ptr


_data_ptr = _pick_data_ptr()


def _scipy_fingerprint(m) -> tuple:
    """What a zero-copy Tensor of SciPy matrix ``m`` depends on besides the numbers
    in its arrays: which arrays ``m`` holds and its shape (reassigning ``m.data``
    or ``m.indices``, or ``sum_duplicates()``, changes it). Weak references, so
    that neither an array's id is reused unnoticed nor its memory kept alive."""
    return (weakref.ref(m.data), weakref.ref(m.indices), weakref.ref(m.indptr), m.shape)


def _scipy_unchanged(m, fingerprint) -> bool:
    data, indices, indptr, shape = fingerprint
    return (data() is m.data and indices() is m.indices and indptr() is m.indptr
            and m.shape == shape)


# guards Kernel._bounds_cache (see Kernel._bounds)
_BOUNDS_LOCK = threading.Lock()


def _after_fork_in_child():
    """A lock another thread held at ``os.fork()`` stays held in the child: a new one."""
    global _BOUNDS_LOCK
    _BOUNDS_LOCK = threading.Lock()


os.register_at_fork(after_in_child=_after_fork_in_child)

# Work of one iteration of a dense loop nested under a sparse one, in units of a
# sparse nonzero's: such loops run vectorised (SpMM's k loop: 0.23 ns per nonzero
# and column against SpMV's 0.7 ns per nonzero on a Zen 4), so MTTKRP's R=16 loop
# makes each nonzero weigh 4 (docs/performance.md, "Threads").
DENSE_ITERATION_WORK = 0.25
# a growable output's first capacity counts at most this many times the inputs'
# stored entries from the products its loops form (Kernel._initial_capacity)
PRODUCT_GUESS_CAP = 16


class _Variant:
    """One lowering + machine code, for one index width."""

    def __init__(self, lowered, compiled, function):
        self.lowered = lowered
        self.compiled = compiled
        self.function = function
        self.arg_plan = _arg_plan(lowered)
        self.driver = None  # native parallel driver, looked up on first parallel call
        self.driver_checked = False


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
        self._pointer_cache: dict = {}
        self._bounds_cache: dict = {}
        self._fast: _FastCall | None = None
        self._variant(32)  # compile now: errors surface at compile(), source is ready
        low = self._variants[32].lowered
        self.warnings = list(low.warnings)
        out = notation.lhs.tensor
        self.output_name = out.name
        self.inputs = []
        for acc in accesses(notation.rhs):
            if acc.tensor.name not in self.inputs:
                self.inputs.append(acc.tensor.name)
        self._plan = _CallPlan(self, low)

    # ----------------------------------------------------------- inspection
    @property
    def index_notation(self) -> str:
        """The checked expression with its sums made explicit."""
        return repr(self.notation)

    @property
    def loops(self) -> str:
        """The loop nest the lowerer chose, one loop a line."""
        low = self._variants[32].lowered
        text = f"{low.notation!r}\n" + low.loops
        if low.assembly is not None and self._backend.name == "cpu" and _chunks.preferred(low):
            text += (f"\n(on CPU threads: each thread appends its {low.parallel} rows instead of counting "
                     "them first, and the runtime joins the chunks)")
        for name, diag in getattr(low, "diagonals", {}).items():
            kept = [diag.indices[d] for d in diag.kept]
            text += (f"\n(diagonal: {name}[{','.join(kept)}] = {diag.operand}[{','.join(diag.indices)}], "
                     f"the entries of {diag.operand} on it, gathered at each call)")
        if low.bounded:
            text += (f"\n(appends {self.output_name} into arrays allocated at a first guess of its size, "
                     "counting every entry; runs once more at the exact size when they did not fit)")
        return text

    @property
    def blas_calls(self) -> list:
        """The matrix products this kernel hands to BLAS, one line each (empty when
        none; see ``Schedule.no_blas``)."""
        return list(self._variants[32].lowered.blas)

    @property
    def ir(self) -> str:
        """The kernel IR printed as C-like code."""
        return print_ir(self._variants[32].lowered.module)

    @property
    def source(self) -> str:
        """The generated code: LLVM IR for the CPU backend, CUDA C for cuda."""
        return self._backend.source(self._variants[32].compiled)

    @property
    def last_launch(self) -> dict | None:
        """GPU backends: how the last call ran -- ``mapping`` ('gpu-thread', 'gpu-warp',
        'gpu-block' or 'serial'), ``grid``, ``block`` and ``why`` (the default schedule's
        reason for a thread or a warp per row, else None); None before the first call."""
        return getattr(self._backend, "last_launch", None)

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

    def _one_pass_variant(self, bits: int) -> _Variant:
        """This kernel lowered without a parallel loop, so a sparse output is appended
        in one pass: for calls too small to split, where the two-phase assembly's
        counting pass would be pure overhead."""
        return self._variant_with(bits, "one-pass", parallel=None)

    def _chunks_variant(self, bits: int) -> _Variant:
        """This kernel lowered so that each ``[lo, hi)`` call appends its rows to arrays
        of its own, for CPU threads to fill a sparse output without counting it
        first (``Lowered.append_chunks``; spcomp/chunks.py)."""
        return self._variant_with(bits, "chunks", append_chunks=True)

    def _variant_with(self, bits: int, tag: str, **changes) -> _Variant:
        """The variant lowered with ``changes`` to this kernel's options, built once
        and kept under ``(bits, tag)`` (so ``save`` ships it)."""
        key = (bits, tag)
        v = self._variants.get(key)
        if v is None:
            import dataclasses
            v = self._load_or_build(bits, dataclasses.replace(self._options, **changes))
            self._variants[key] = v
        return v

    def _cache_key(self, bits: int, options=None):
        tensors = sorted((t.name, t.order, t.format.spec(), t.dtype) for t in self.notation.tensors.values())
        return (self.expression, repr(self.notation), tensors, repr(options or self._options), bits,
                self._backend.name) + self._backend.cache_key()

    def _load_or_build(self, bits: int, options=None) -> _Variant:
        from .runtime import cache
        options = options or self._options
        can_cache = hasattr(self._backend, "load")
        digest = cache.key_digest(self._cache_key(bits, options)) if can_cache else None
        if digest is not None:
            payload = cache.load_entry(digest)
            if payload is not None:
                try:
                    compiled = self._backend.load(payload["compiled"], payload["lowered"])
                    lowered = payload["lowered"]
                    return _Variant(lowered, compiled, self._backend.entry(compiled, lowered))
                except SpcompError:
                    pass  # unusable here: rebuild below
        opt = Options(**{**options.__dict__, "index_bits": bits})
        if self._backend.name == "cpu":
            lowered = lower(self.notation, opt)
        else:  # the default GPU schedule depends on the kernel's class (gpu_default.py)
            from .gpu_default import lower_default
            lowered = lower_default(self.notation, opt)
        compiled = self._backend.build(lowered)
        if digest is not None:
            cache.store_entry(digest, {"lowered": lowered, "compiled": self._backend.dump(compiled)})
        return _Variant(lowered, compiled, self._backend.entry(compiled, lowered))

    # -------------------------------------------------------- save / load
    def save(self, path) -> None:
        """Write this kernel (every index width compiled so far, the variants a call
        may pick, and the copy kernels of its auto-layout) to ``path``, to ship with an
        inference script; :func:`spcomp.load` reads it without compiling."""
        from pathlib import Path

        from .runtime import cache
        cache.write_atomic(Path(path), cache.pack(self._payload()))

    def _payload(self) -> dict:
        if not hasattr(self._backend, "dump"):
            raise SpcompError(f"kernels of backend {self._backend.name!r} cannot be saved")
        self._build_call_variants()
        relayouts = {}
        if self._backend.name == "cpu" and self._options.auto_layout:
            relayouts = {key: _relayout.copy_kernel(key)._payload()
                         for key in _relayout.copies_of(self._plan.storages)}
        return {
            "expression": self.expression, "notation": self.notation, "options": self._options,
            "backend": self._backend.name, "machine": self._backend.cache_key(),
            "variants": {b: {"lowered": v.lowered, "compiled": self._backend.dump(v.compiled)}
                         for b, v in self._variants.items()},
            "relayouts": relayouts,
        }

    def _build_call_variants(self) -> None:
        """Compile the variants a call may pick besides the plain one, so that a saved
        kernel runs without LLVM: a sparse output's one-pass append (one thread) and
        its chunks (CPU threads, where :func:`spcomp.chunks.preferred`)."""
        if self._backend.name != "cpu":
            return
        for bits in [b for b in self._variants if isinstance(b, int)]:
            low = self._variants[bits].lowered
            if low.assembly is not None:
                self._one_pass_variant(bits)
                if _chunks.preferred(low):
                    self._chunks_variant(bits)

    @classmethod
    def load(cls, path) -> "Kernel":
        from pathlib import Path

        from .errors import CacheError
        from .runtime import cache
        try:
            data = Path(path).read_bytes()
        except OSError as e:
            raise CacheError(f"cannot read kernel file {path}: {e}") from None
        return cls._from_payload(cache.unpack(data, str(path)), path)

    @classmethod
    def _from_payload(cls, payload: dict, path) -> "Kernel":
        from .errors import CacheError
        from .targets import get_target
        backend = get_target(payload["backend"])
        if payload["machine"] != backend.cache_key():
            raise CacheError(f"{path} was compiled for another machine or library version "
                             f"({payload['machine'][0]}); recompile it here")
        variants = {}
        for bits, entry in payload["variants"].items():
            compiled = backend.load(entry["compiled"], entry["lowered"])
            variants[bits] = _Variant(entry["lowered"], compiled, backend.entry(compiled, entry["lowered"]))
        for key, copy in payload.get("relayouts", {}).items():
            _relayout.install(key, cls._from_payload(copy, path))
        return cls(payload["expression"], payload["notation"], payload["options"], backend, None,
                   variants=variants)

    # ----------------------------------------------------------- operands
    def _to_tensor(self, name: str, value, fmt: Format, dtype: np.dtype):
        """The operand as a validated Tensor in ``fmt`` (cached per object)."""
        key = (id(value), id(fmt))  # fmt objects live as long as the kernel's plan
        hit = self._tensor_cache.get(key)
        if hit is not None and hit[0]() is value and (hit[2] is None or _scipy_unchanged(value, hit[2])):
            return hit[1]
        import scipy.sparse as sp

        from .runtime import Tensor
        if isinstance(value, Tensor) and value.format == fmt:
            # a Tensor caches its own validation: nothing to remember here
            self._check_dtype(name, value.dtype, dtype)
            if value.dtype == dtype:
                try:
                    return value.validate()
                except SpcompError as e:
                    raise _renamed(e, name) from None
        try:
            if isinstance(value, Tensor):
                t = value
                if t.format != fmt:
                    t = t.to_format(fmt)
            elif sp.issparse(value):
                t = Tensor.from_scipy(value, fmt)
            else:
                arr = np.asarray(value)
                if arr.dtype.kind not in "biuf" and arr.dtype.name != "bfloat16":
                    raise DTypeError(f"has dtype {arr.dtype}, which spcomp cannot compute with; "
                                     f"the kernel takes {dtype}")
                flat = (_relayout.relayout(arr, fmt.order, dtype)
                        if fmt.is_dense and self._backend.name == "cpu" else None)
                if flat is not None:  # a dense copy in another order, made on the threads
                    t = Tensor(fmt, arr.shape, [{} for _ in fmt.levels], flat, validated=True)
                else:
                    t = Tensor.from_numpy(arr, fmt)
        except SpcompError as e:
            raise _renamed(e, name) from None
        self._check_dtype(name, t.dtype, dtype)
        if t.dtype != dtype:
            t = t.astype(dtype)
        try:
            t.validate()
        except SpcompError as e:
            raise _renamed(e, name) from None
        if not _tracks(value, t):
            return t  # a converted copy would go stale if the caller changes the original
        cache = self._tensor_cache
        try:
            # the entry goes when the caller's object does, so it never keeps data alive
            ref = weakref.ref(value, lambda _r, key=key, cache=cache: cache.pop(key, None))
        except TypeError:
            return t  # not weak-referenceable: convert each call
        cache[key] = (ref, t, _scipy_fingerprint(value) if sp.issparse(value) else None)
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

    def _input_arg(self, st, bits, k, pointers):
        """Array ``k`` of an input storage (a plain dense array, or a Tensor)."""
        return st.arg(bits, k, pointers) if type(st) is _Dense else self._tensor_arg(st, bits, k, pointers)

    def _tensor_arg(self, t, bits, k, pointers):
        """Array ``k`` of ``t``'s kernel arrays, as a data pointer on the CPU."""
        if not pointers:
            return t.kernel_arrays(bits)[k]
        key = (id(t), bits)
        hit = self._pointer_cache.get(key)
        if hit is None or hit[0]() is not t:
            ptrs = [_data_ptr(a) for a in t.kernel_arrays(bits)]
            cache = self._pointer_cache
            hit = (weakref.ref(t, lambda _r, key=key, cache=cache: cache.pop(key, None)), ptrs)
            cache[key] = hit
        return hit[1][k]

    def _operand(self, spec, value):
        """An operand ready for the kernel: (shape, arrays by index width, tensor)."""
        storage, operand, fmt, dtype, plain = spec
        if storage in self._plan.derived:
            return self._diagonal_operand(spec, value)
        if _is_device_array(value):
            return self._device_operand(spec, value)
        if plain and type(value) is np.ndarray and value.dtype == dtype and value.flags.c_contiguous:
            return _Dense(value)  # a dense array in row-major order is its own storage
        if fmt.ndim == 0 and isinstance(value, (int, float, np.number)):
            return _Dense(np.asarray(value, dtype=dtype))
        return self._to_tensor(operand, value, fmt, dtype)

    def _diagonal_operand(self, spec, value):
        """The diagonal storage (or its transposed copy) a kernel reads for an access
        that repeats an index on a sparse operand (spcomp/lower/diagonal.py): the
        operand's entries whose coordinates agree on each repeated index. Cached per
        operand Tensor, like a conversion."""
        storage, operand, fmt, dtype, _plain = spec
        low = self._variants[32].lowered
        source = self._plan.derived[storage]
        diag = low.diagonals[source]
        if _is_device_array(value):
            raise OperandError(f"operand {operand} is a pycuda GPUArray, but the kernel reads its diagonal "
                               "through a copy made on the host: pass it as a NumPy/SciPy array or Tensor")
        tensor = self._to_tensor(operand, value, diag.operand_format, dtype)
        key = ("diagonal", storage)
        hit = self._tensor_cache.get(key)
        if hit is not None and hit[0]() is tensor:
            return hit[1]
        kept = list(diag.kept)
        for d, k in enumerate(diag.dims):
            if tensor.shape[kept[k]] != tensor.shape[d]:
                raise ShapeError(f"operand {operand}: dimensions {kept[k]} and {d} are both indexed by "
                                 f"{diag.indices[d]} but have sizes {tensor.shape[kept[k]]} and "
                                 f"{tensor.shape[d]}")
        coords, values = tensor.to_coo()
        keep = np.ones(values.shape[0], dtype=bool)
        for d, k in enumerate(diag.dims):
            keep &= coords[d] == coords[kept[k]]
        from .runtime import Tensor
        out = Tensor.from_coo(coords[kept][:, keep], values[keep], tuple(tensor.shape[d] for d in kept),
                              diag.format, dtype=dtype)
        if source != storage:  # read through a transposed copy
            out = out.to_format(fmt, drop_zeros=False)
        out.validate()
        self._tensor_cache[key] = (weakref.ref(tensor), out, None)
        return out

    def _device_operand(self, spec, value):
        """A pycuda GPUArray operand, kept on the device (backend "cuda" only)."""
        storage, operand, fmt, dtype, plain = spec
        if self._backend.name != "cuda":
            raise OperandError(f"operand {operand} is a pycuda GPUArray: only backend='cuda' takes device "
                               f"arrays (this kernel is for {self._backend.name!r}); pass a NumPy array")
        if not plain and fmt.is_dense:
            raise OperandError(f"operand {operand} is a pycuda GPUArray, but the kernel reads it through a "
                               f"copy in layout {fmt.spec()!r}, which is not made on the device: pass it "
                               "in that layout (e.g. transposed), or as a NumPy array")
        if not plain:
            raise OperandError(f"operand {operand} is a pycuda GPUArray, but the kernel stores it as "
                               f"{fmt.spec()!r}: a device array can only be a row-major dense operand "
                               "(pass sparse operands as SciPy/NumPy/Tensor, they are copied)")
        if np.dtype(value.dtype) != dtype:
            raise DTypeError(f"operand {operand}: the GPUArray holds {value.dtype}, the kernel takes {dtype}")
        if not value.flags.c_contiguous:
            raise OperandError(f"operand {operand}: the GPUArray is not C-contiguous")
        return _Dense(value)

    # ---------------------------------------------------------------- call
    def __call__(self, **operands):
        """Run the kernel: operands by name -> ndarray, Tensor or float."""
        fast = self._fast
        if fast is not None and len(operands) == fast.count:
            args = fast.bind(operands)
            if args is not None:
                return fast.run(self, args, operands)
        plan = self._plan
        names = operands.keys()
        if names != plan.names:
            self._check_names(operands)
        storages = {}
        for spec in plan.storages:
            value = operands[spec[1]]
            if (spec[4] and type(value) is np.ndarray and value.dtype == spec[3]
                    and value.flags.c_contiguous):
                storages[spec[0]] = _Dense(value)  # row-major dense: its own storage
            else:
                storages[spec[0]] = self._operand(spec, value)
        sizes = self._bind_sizes(storages, operands)
        bits = 32
        for t in storages.values():
            if t.index_bits_needed() > 32:
                bits = 64
        variant = self._variants.get(bits) or self._variant(bits)
        low = variant.lowered
        given = operands.get(self.output_name)
        if given is not None:
            _refuse_overlap(given, operands, self.output_name)
        sizing = low  # the lowering whose balance and work_scale size a growable output
        if low.assembly is not None:  # a sparse output whose rows may be assembled in parallel
            cpu = self._backend.name == "cpu"
            if cpu and not self._splits(low, sizes, storages):
                variant = self._one_pass_variant(bits)  # one thread: append in one pass
            elif cpu and _chunks.preferred(low) and self._chunks_variant(bits).lowered.append_chunks:
                variant = self._chunks_variant(bits)  # threads append chunks of rows (spcomp/chunks.py)
            else:  # the GPU, or rows the chunks cannot cover: count, scan, fill (spcomp/assemble.py)
                from .assemble import run_two_phase
                return run_two_phase(self, variant, storages, sizes, bits, given)
            low = variant.lowered
        if self._backend.name == "cuda" and plan.plain_output and any(
                type(st) is _Dense and _is_device_array(st.array) for st in storages.values()):
            # pycuda arrays in, a pycuda array out: nothing leaves the device
            out = _DeviceOutput(tuple(sizes[i] for i in plan.out_indices), plan.out_dtype, given,
                                self.notation.accumulate)
        elif given is None and plan.plain_output:
            out = _PlainOutput(tuple(sizes[i] for i in plan.out_indices), plan.out_dtype,
                               self._overwrites(low))
        else:
            out = _Output(self, low, sizes, given, bits)
        pointers = self._backend.name == "cpu"
        capacity = None
        if any(role == "capacity" for role, _a, _b in variant.arg_plan):  # a growable output: an _Output
            capacity = out.capacity = self._initial_capacity(sizing, sizes, storages)
        if capacity is not None and low.append_chunks:  # (only a growable output can be chunked)
            return _chunks.run_chunks(self, variant, storages, sizes, bits, out, capacity)
        work = self._call_work(low, sizes, storages)
        while True:
            args, lohi = self._call_args(variant.arg_plan, storages, sizes, bits, pointers,
                                         lambda key: out.arg(key, pointers), capacity)
            if pointers and plan.plain_output:
                self._fast = self._fast_call(operands, storages, variant, args, lohi, sizes, given, work)
            try:
                statuses = self._run(variant, args, lohi, low, sizes, storages, work)
            except BaseException:  # Ctrl-C (runtime/interrupt.py): free what the kernel allocated
                out.discard()
                raise
            if capacity is None or not low.bounded or out.needed() <= capacity or any(statuses):
                break
            # the appends did not fit the arrays (device code cannot grow them): run
            # again with room for exactly what this run counted
            capacity = out.needed()
            out = _Output(self, low, sizes, given, bits)
            out.capacity = capacity
        for s in statuses:
            if s != 0:
                out.discard()
                self._raise_status(s, out)
        return out.result()

    def _fast_call(self, operands, storages, variant, args, lohi, sizes, given, work):
        """The _FastCall that repeats this call, or None when an operand is a
        converted copy (its conversion must run on every call) or the given
        output is not a plain writeable row-major array of the output's shape."""
        plan = self._plan
        out_shape = tuple(sizes[i] for i in plan.out_indices)
        checks = {}
        if given is not None:
            out_check = (out_shape, plan.out_dtype)
            if not _plain_output_array(given, out_check):
                return None
            checks[self.output_name] = (_OUTPUT, out_check)
        for storage, operand, fmt, _dtype, _plain in self._plan.storages:
            value, st = operands[operand], storages[storage]
            if type(st) is _Dense and st.array is value:
                check = (_ARRAY, (value.shape, value.strides, value.dtype))
            elif st is value:  # a Tensor in the kernel's format and dtype
                check = (_TENSOR, None)
            else:
                hit = self._tensor_cache.get((id(value), id(fmt)))
                if hit is None or hit[1] is not st or hit[2] is None:
                    return None
                check = (_SCIPY, (hit[2], weakref.ref(st)))
            if checks.setdefault(operand, check)[0] != check[0]:
                return None
        marked = list(args)
        for k, (role, a, _b) in enumerate(variant.arg_plan):
            if role == "out":
                marked[k] = _OUT
            elif role == "in" and checks[self._plan.operand_of[a]][0] == _ARRAY:
                marked[k] = _Slot(self._plan.operand_of[a], args[k])
        launch = self._launch(variant, marked, lohi, variant.lowered, sizes, storages)
        if launch is None:
            return None
        fn, call_args = launch
        template = [v.value if type(v) is _Slot else v for v in call_args]
        entries = []
        for name, (kind, fp) in checks.items():
            slots = tuple(k for k, v in enumerate(call_args) if type(v) is _Slot and v.name == name)
            entries.append((name, weakref.ref(operands[name]), kind, fp, slots))
        return _FastCall(
            entries, _interrupt.wrap(fn, work), template,
            tuple(k for k, v in enumerate(call_args) if v is _OUT),
            out_shape, plan.out_dtype,
            _threads.get_num_threads() if lohi is not None else None,
            self._driver_bounds(variant, fn, sizes, storages),
            self.output_name if given is not None else None, not self.notation.accumulate,
            self._overwrites(variant.lowered))

    def _overwrites(self, low) -> bool:
        """Whether the kernel stores every element of its dense output, so a fresh
        output need not be zeroed nor a given one cleared (lower/coverage.py). CPU
        only: a GPU launch's coverage of the range is the grid's business."""
        return self._backend.name == "cpu" and getattr(low, "overwrites_output", False)

    def _driver_bounds(self, variant, fn, sizes, storages):
        """The bounds array a parallel-driver launch points at (kept alive with it)."""
        if fn is not variant.driver or fn is None:
            return None
        low = variant.lowered
        return self._bounds(_parallel_extent(low, sizes, storages), _threads.get_num_threads(), self._balance_pos(low, storages))

    def _call_args(self, arg_plan, storages, sizes, bits, pointers, out_arg, capacity=None):
        """A call's argument list from an argument plan, and where ``lo`` sits in it
        (``lo``/``hi`` are placeholders the launcher fills); ``out_arg(key)`` gives an
        output array's argument, ``capacity`` a growable output's first size (plans
        with a ``capacity`` role only). Shared by plain calls and the two-phase assembly."""
        args, lohi = [], None
        for role, a, b in arg_plan:
            if role == "in":
                args.append(self._input_arg(storages[a], bits, b, pointers))
            elif role == "size":
                args.append(sizes[a])
            elif role == "out":
                args.append(out_arg(a))
            elif role == "capacity":
                args.append(capacity)
            else:  # lo, hi
                if role == "lo":
                    lohi = len(args)
                args.append(0)
        return args, lohi

    def _check_names(self, operands):
        plan = self._plan
        unexpected = sorted(set(operands) - plan.allowed)
        if unexpected:
            raise OperandError(f"unexpected operand(s) {', '.join(unexpected)}; this kernel takes "
                               f"{', '.join(sorted(plan.names))}"
                               + (f" (and optionally the output {self.output_name})"
                                  if not self.notation.accumulate else ""))
        missing = sorted(plan.names - set(operands))
        if missing:
            raise OperandError(f"missing operand(s) {', '.join(missing)} for {self.expression!r}")

    def _bind_sizes(self, storages, operands) -> dict:
        sizes = {}
        for storage, ndim, indices, shown in self._plan.shape_checks:
            shape = storages[storage].shape
            if len(shape) != ndim:
                raise ShapeError(f"operand {shown} has {len(shape)} dimension(s) but the expression "
                                 f"indexes it with {ndim}")
            for i, size in zip(indices, shape):
                have = sizes.setdefault(i, size)
                if have != size:
                    self._size_mismatch(storages, i)
        out_val = operands.get(self.output_name)
        origin = self._size_origins(storages) if out_val is not None else {}
        lhs = self.notation.lhs
        if out_val is not None:
            shape = tuple(np.shape(out_val)) if not hasattr(out_val, "shape") else tuple(out_val.shape)
            if len(shape) != len(lhs.indices):
                raise ShapeError(f"output {self.output_name} has {len(shape)} dimension(s) but the "
                                 f"expression indexes it with {len(lhs.indices)}")
            for d, i in enumerate(lhs.indices):
                if i.name in sizes and sizes[i.name] != shape[d]:
                    o_name, o_dim = origin[i.name]
                    raise ShapeError(f"output {self.output_name} dimension {d} (index {i.name}) has size "
                                     f"{shape[d]} but dimension {o_dim} of {o_name} has size {sizes[i.name]}")
                sizes.setdefault(i.name, int(shape[d]))
        for i in self._plan.index_names:
            if i not in sizes:
                raise ShapeError(f"the size of index {i} cannot be inferred from the operands; pass "
                                 f"the output {self.output_name} to give it")
        return sizes

    def _size_origins(self, storages) -> dict:
        origin = {}
        for storage, ndim, indices, shown in self._plan.shape_checks:
            for d, i in enumerate(indices):
                origin.setdefault(i, (shown, d))
        return origin

    def _size_mismatch(self, storages, index):
        """Raise the ShapeError that names both operands bound to ``index``."""
        first = None
        for storage, ndim, indices, shown in self._plan.shape_checks:
            shape = storages[storage].shape
            for d, i in enumerate(indices):
                if i != index:
                    continue
                if first is None:
                    first = (shown, d, shape[d])
                elif shape[d] != first[2]:
                    raise ShapeError(
                        f"index {index} is bound to dimension {d} of {shown} (size {shape[d]}) and to "
                        f"dimension {first[1]} of {first[0]} (size {first[2]})")

    def _run(self, variant, args, lohi, low, sizes, storages, work=None):
        """Run the call (``work``: its :meth:`_call_work`, when the caller has it);
        the statuses of the kernel calls."""
        launch = self._launch(variant, args, lohi, low, sizes, storages)
        if launch is not None:
            fn, call_args = launch
            work = self._call_work(low, sizes, storages) if work is None else work
            return [_interrupt.run(work, fn, *call_args)]
        fn = variant.function
        n = _parallel_extent(low, sizes, storages)
        pos = self._balance_pos(low, storages)
        work = self._work(n, pos, sizes, low, storages)
        run_ranges = _threads.run_ranges

        def call(lo, hi):
            a = list(args)
            a[lohi] = lo
            a[lohi + 1] = hi
            return fn(*a)
        return _interrupt.run(work, run_ranges, call, n, pos, None, work)

    def _call_work(self, low, sizes, storages) -> int:
        """A CPU call's work units (:meth:`_work`), for :func:`~.runtime.interrupt.run`:
        0 on the GPU (its kernels cannot be stopped, nor launched from another thread);
        a lowering without a parallel loop (the one-pass variant) is measured by the
        kernel's own, the dense iteration space when neither has one."""
        if self._backend.name != "cpu":
            return 0
        if low.parallel is None:
            low = self._variants[32].lowered
        n = _parallel_extent(low, sizes, storages) if low.parallel is not None else 0
        return self._work(n, self._balance_pos(low, storages) if n else None, sizes, low, storages)

    @staticmethod
    def _balance_pos(low, storages):
        """The pos array that measures each row's work, when the kernel names one."""
        if low.balance is None or getattr(low, "parallel_split", None):
            return None
        name, level = low.balance
        t = storages.get(name)
        if t is None or isinstance(t, _Dense):
            return None
        return t.levels[level].get("pos")

    @staticmethod
    def _work(n, pos, sizes, low, storages) -> int:
        """Work units of a call: with a balancing pos array, rows + its nonzeros times
        the mean length of the sparse segments each nonzero walks in its nested
        loops (``Lowered.work_scale``, SpGEMM's rows of B) and times its nested dense
        loops' iterations (``Lowered.work_dense``, SpMM's k) at DENSE_ITERATION_WORK
        each; else the dense iteration space."""
        if pos is not None:
            dense = 1
            for index in low.work_dense:
                dense *= max(int(sizes.get(index, 1)), 1)
            per = Kernel._segment_scale(low, storages) * max(dense * DENSE_ITERATION_WORK, 1.0)
            return n + int((int(pos[-1]) if len(pos) else 0) * per)
        work = 1  # no nonzero count to go by: the loop nest's dense iteration space bounds it
        for v in sizes.values():
            work *= max(int(v), 1)
        return work

    @staticmethod
    def _segment_scale(low, storages) -> float:
        """The product of the mean segment lengths of the sparse levels a balanced
        nonzero's nested loops walk (``Lowered.work_scale``); 1 when none."""
        per = 1.0
        for name, level in low.work_scale:
            t = storages.get(name)
            inner = t.levels[level].get("pos") if t is not None and not isinstance(t, _Dense) else None
            if inner is not None and len(inner) > 1:
                per *= max(int(inner[-1]) / (len(inner) - 1), 1.0)
        return per

    def _initial_capacity(self, low, sizes, storages) -> int:
        """Entries to allocate for an output the kernel appends to (it doubles them
        when they run out; :meth:`_Output._take` trims them when much is unused): at
        least the sparse inputs' stored entries, and the products a balanced
        nonzero's nested sparse loops form when known (SpGEMM: nnz(A) times B's mean
        row length, which is nnz(C) up to collisions), never more than the output's
        dense size. Starting at nnz(A) + nnz(B), SpGEMM's output grew three times a
        call."""
        sparse = [t.nnz for t in storages.values() if not isinstance(t, _Dense) and not t.format.is_dense]
        # with a sparse operand the dense ones say nothing of the output's size (SDDMM's
        # D and E counted made 2.96M entries for 400k, trimmed and faulted in each call)
        guess = max(1024, sum(sparse) if sparse else sum(t.nnz for t in storages.values()))
        pos = self._balance_pos(low, storages) if low.work_scale else None
        if pos is not None and len(pos):
            # products can far exceed the result (many collisions): past PRODUCT_GUESS_CAP
            # times the inputs the arrays grow instead of starting far above the result
            products = int(int(pos[-1]) * self._segment_scale(low, storages))
            guess = max(guess, min(products, PRODUCT_GUESS_CAP * guess))
        dense = 1
        for i in self._plan.out_indices:
            dense *= max(int(sizes[i]), 1)
        return max(1, min(guess, dense))

    def _splits(self, low, sizes, storages) -> bool:
        """Whether a CPU call of this lowering runs its parallel loop on several threads."""
        n = _parallel_extent(low, sizes, storages)
        if n < 2 or _threads.get_num_threads() <= 1:
            return False
        return self._work(n, self._balance_pos(low, storages), sizes, low, storages) >= _threads.MIN_PARALLEL_WORK

    def _launch(self, variant, args, lohi, low, sizes, storages):
        """(function, arguments) that run the whole call from this thread: the kernel
        itself, or its native parallel driver; None when the Python pool must run it."""
        fn = variant.function
        if lohi is None:
            return fn, args
        n = _parallel_extent(low, sizes, storages)
        cpu = self._backend.name == "cpu"
        pos = self._balance_pos(low, storages) if cpu and n >= 2 else None
        if not cpu or n < 2 or self._work(n, pos, sizes, low, storages) < _threads.MIN_PARALLEL_WORK:
            # the GPU grid covers the whole range; small CPU work runs on this thread
            a = list(args)
            a[lohi], a[lohi + 1] = 0, n
            return fn, a
        threads = _threads.get_num_threads()
        if self._driver_of(variant) is not None and threads > 1:
            bounds = self._bounds(n, threads, pos)
            return variant.driver, [len(bounds) - 1, _data_ptr(bounds)] + args[:lohi] + args[lohi + 2:]
        if threads <= 1:
            a = list(args)
            a[lohi], a[lohi + 1] = 0, n
            return fn, a
        return None

    def _driver_of(self, variant):
        """The variant's native parallel driver (looked up once), or None; always None
        in a forked child, where libgomp's team is unusable (runtime/forksafe.py)."""
        if _forksafe.forked():
            return None
        if not variant.driver_checked:
            finder = getattr(self._backend, "parallel_driver", None)
            variant.driver = finder(variant.compiled, variant.lowered) if finder else None
            variant.driver_checked = True
        return variant.driver

    def _bounds(self, n, threads, pos):
        """Row bounds of the threads' chunks, balanced by ``pos``; cached per pos array
        (splitting costs O(rows), more than a small kernel's whole run)."""
        key = (n, threads, id(pos) if pos is not None else None)
        with _BOUNDS_LOCK:
            # under the lock: a call hands the driver only the array's address, so an
            # entry another thread is using must never be replaced (freeing its array);
            # only a stale entry (its pos array died, so no call uses it) is
            hit = self._bounds_cache.get(key)
            if hit is not None and (pos is None or hit[0]() is pos):
                return hit[1]
            ranges = _threads.split(n, threads, pos)
            bounds = np.array([r[0] for r in ranges] + [ranges[-1][1]], dtype=np.int64)
            cache = self._bounds_cache
            ref = (weakref.ref(pos, lambda _r, key=key, cache=cache: cache.pop(key, None))
                   if pos is not None else None)
            cache[key] = (ref, bounds)
            return bounds

    def _raise_status(self, status, out):
        if status == irn.STATUS_INTERRUPTED:  # the interrupt flag was set: Ctrl-C
            raise KeyboardInterrupt
        if status == irn.STATUS_PACKED_OVERFLOW:
            largest = out.largest_count()
            raise PackedOverflowError(
                f"output {self.output_name}: a block got {largest} nonzeros but the packed-block level "
                f"has K={out.packed_k()} slots; compile with a larger K (e.g. twell(B=..,K={largest}))",
                largest_count=largest)
        raise KernelRuntimeError(f"kernel for {self.expression!r} failed: "
                                 f"{irn.STATUS_CODES.get(status, f'status {status}')}")


def _parallel_extent(low, sizes, storages) -> int:
    """Trip count of the parallel loop: its index's size, a split piece's share, or
    the number of positions of the top compressed level it walks."""
    walked = getattr(low, "parallel_positions", None)
    if walked is not None:
        pos = storages[walked[0]].levels[walked[1]]["pos"]
        return int(pos[-1]) if len(pos) else 0
    n = sizes[low.parallel]
    split = getattr(low, "parallel_split", None)
    if split:
        factor, outer = split
        n = -(-n // factor) if outer else min(factor, n)
    return n


def _tracks(value, t) -> bool:
    """Whether Tensor ``t`` made from ``value`` stays right if the caller later
    changes ``value``'s numbers in place: a Tensor itself (immutable by contract)
    or a zero-copy view sharing ``value``'s values array."""
    from .runtime import Tensor
    if isinstance(value, Tensor):
        return value is t
    if not hasattr(value, "indptr"):  # (an ndarray's .data is a memoryview, which bfloat16 cannot make)
        return False
    data = getattr(value, "data", None)
    if isinstance(data, np.ndarray):  # scipy compressed
        return np.shares_memory(t.vals, data)
    return False


def _renamed(e: SpcompError, name: str) -> SpcompError:
    """``e`` with the operand's name in front, keeping its attributes."""
    e.args = (f"operand {name}: {e.args[0] if e.args else ''}",) + tuple(e.args[1:])
    return e


_TENSOR, _ARRAY, _SCIPY, _OUTPUT = 0, 1, 2, 3


def _plain_output_array(v, shape_dtype) -> bool:
    """Whether ``v`` can be written by the kernel as it is: an ndarray of the output's
    shape and dtype, row-major and writeable."""
    return (type(v) is np.ndarray and (v.shape, v.dtype) == shape_dtype
            and v.flags.c_contiguous and v.flags.writeable)
_OUT = object()  # marks the output's pointer in a _FastCall's argument template


class _Slot:
    """Marks a dense operand's pointer in an argument list (see Kernel._fast_call)."""
    __slots__ = ("name", "value")

    def __init__(self, name, value):
        self.name = name
        self.value = value


class _FastCall:
    """The last call's native call, repeated while the same operands come back.

    Each operand is checked for being the very object of the last call and
    unchanged where it could change without a copy: an ndarray's shape, strides
    and dtype (its data pointer moves only with its size), a SciPy matrix's
    arrays and shape; an spcomp Tensor is immutable. A new ndarray like the last
    one (the next batch of activations) only swaps its pointer into a copy of the
    argument list. The check is a few attribute reads, against ~10 us for the
    general path. Never changed once built, so concurrent calls are safe."""
    __slots__ = ("checks", "count", "fn", "args", "out_slots", "out_shape", "out_dtype",
                 "threads", "keep", "given", "zero_given", "overwrite")

    def __init__(self, checks, fn, args, out_slots, out_shape, out_dtype, threads, keep,
                 given=None, zero_given=True, overwrite=False):
        self.checks = tuple(checks)
        self.count = len(self.checks)
        self.fn = fn
        self.args = args
        self.out_slots = out_slots
        self.out_shape = out_shape
        self.out_dtype = out_dtype
        self.threads = threads  # thread count the launch was planned for, if it matters
        self.keep = keep  # the thread bounds array whose pointer is in args
        self.given = given  # name of the output operand when the caller passes it
        self.zero_given = zero_given and not overwrite  # "=" kernels clear a given output, "+=" ones add to it
        self.overwrite = overwrite  # the kernel stores every output element: a fresh one needs no zeros

    def bind(self, operands):
        """The argument list for ``operands`` (output slot unset), or None."""
        if self.threads is not None and self.threads != _threads.get_num_threads():
            return None
        args = None
        for name, ref, kind, fp, slots in self.checks:
            v = operands.get(name, _OUT)  # a missing name never matches (a dead ref gives None)
            if kind == _OUTPUT:  # any array the kernel can write as it is
                if not _plain_output_array(v, fp):
                    return None
                _refuse_overlap(v, operands, name)
            elif kind == _ARRAY:
                if type(v) is not np.ndarray or (v.shape, v.strides, v.dtype) != fp:
                    return None
                if ref() is not v:  # a new array laid out like the last: its pointer changes
                    if args is None:
                        args = list(self.args)
                    p = _data_ptr(v)
                    for k in slots:
                        args[k] = p
            elif ref() is not v:
                return None
            elif kind == _SCIPY and (fp[1]() is None or not _scipy_unchanged(v, fp[0])):
                return None
        return list(self.args) if args is None else args

    def run(self, kernel, args, operands):
        if self.given is None:
            out = _fresh_output(self.out_shape, self.out_dtype, self.overwrite)
        else:
            out = operands[self.given]
            if self.zero_given:
                out.fill(0)
        p = _data_ptr(out)
        for k in self.out_slots:
            args[k] = p
        status = self.fn(*args)
        if status != 0:
            kernel._raise_status(status, None)
        return out if self.out_shape or self.given is not None else out.item()


class _Dense:
    """A row-major dense operand used as is (no Tensor, no copy)."""
    __slots__ = ("array", "shape", "nnz", "_ptr")

    def __init__(self, array):
        self.array = array
        self.shape = array.shape
        self.nnz = array.size
        self._ptr = None

    def index_bits_needed(self):
        return 32

    def arg(self, bits, k, pointers):
        if not pointers:
            return self.array.reshape(-1)
        if self._ptr is None:
            self._ptr = _data_ptr(self.array)
        return self._ptr


def _is_device_array(value) -> bool:
    """A pycuda ``GPUArray`` (checked by module and attribute: importing pycuda
    just to ask would fail on machines without the CUDA driver)."""
    return type(value).__module__.startswith("pycuda") and hasattr(value, "gpudata")


class _DeviceOutput:
    """A dense output on the GPU: the caller's GPUArray (``+=``, or ``=`` into a
    given buffer, zeroed first) or a fresh one from ``pycuda.gpuarray.zeros``."""
    __slots__ = ("array",)

    def __init__(self, shape, dtype, given, accumulate):
        if given is None:
            import pycuda.gpuarray as gpuarray
            self.array = gpuarray.zeros(shape, dtype=dtype)
            return
        if not _is_device_array(given):
            raise OperandError("the other operands are on the GPU: pass the output as a pycuda GPUArray too")
        if tuple(given.shape) != tuple(shape) or np.dtype(given.dtype) != np.dtype(dtype):
            raise ShapeError(f"output has shape {tuple(given.shape)} and dtype {given.dtype}; the kernel "
                             f"produces {tuple(shape)} {np.dtype(dtype)}")
        if not accumulate:
            given.fill(0)
        self.array = given

    def arg(self, b, pointers=False):
        return self.array.reshape(-1)

    def discard(self):
        pass

    def result(self):
        return self.array


def _refuse_overlap(out, operands, out_name) -> None:
    """An ``OperandError`` when the output array shares memory with an input: the
    kernel would read values it has already overwritten (or zeroed), a silent wrong
    answer. Interleaved views of one buffer that share no element are fine."""
    if not isinstance(out, np.ndarray):
        return
    for name, value in operands.items():
        if name == out_name:
            continue
        arrays = [value] if isinstance(value, np.ndarray) else [
            a for a in (getattr(value, attr, None) for attr in ("data", "indices", "indptr"))
            if isinstance(a, np.ndarray)]
        if any(_overlaps(out, a) for a in arrays):
            raise OperandError(f"output {out_name} shares memory with input {name}: pass a "
                               f"separate array for the output")


def _overlaps(a: np.ndarray, b: np.ndarray) -> bool:
    """Whether two arrays share an element: the address ranges first (cheap), then
    NumPy's exact answer, bounded; an answer too hard to find counts as yes."""
    if not np.may_share_memory(a, b):
        return False
    try:
        return np.shares_memory(a, b, max_work=10_000)
    except getattr(np, "exceptions", np).TooHardError:  # np.TooHardError before NumPy 1.25
        return True


def _fresh_output(shape, dtype, overwrite: bool) -> np.ndarray:
    """A new dense output: left uninitialised when the kernel stores every element
    (``Lowered.overwrites_output``), else zeros. Tests replace this with one that
    fills the array with garbage, so a kernel that skips an element fails."""
    return np.empty(shape, dtype=dtype) if overwrite else np.zeros(shape, dtype=dtype)


class _PlainOutput:
    """A fresh row-major dense output (the common case, kept cheap)."""
    __slots__ = ("array",)

    def __init__(self, shape, dtype, overwrite=False):
        self.array = _fresh_output(shape, dtype, overwrite)

    def arg(self, b, pointers=True):
        return _data_ptr(self.array) if pointers else self.array.reshape(-1)

    def discard(self):
        pass

    def result(self):
        if not self.array.shape:
            return self.array.item()
        return self.array


class _CallPlan:
    """What a call does, worked out once from the lowered kernel."""

    def __init__(self, kernel: "Kernel", low):
        notation = kernel.notation
        out_t = notation.lhs.tensor
        self.storages = []
        self.derived = {}  # storage -> the diagonal storage it is read through (diagonal.py)
        diagonals = getattr(low, "diagonals", {})  # absent from kernels saved before diagonals
        seen = set()
        for b in low.bindings:
            if b.role != "input" or b.storage in seen:
                continue
            seen.add(b.storage)
            if b.storage in low.transposes:
                operand, fmt = low.transposes[b.storage]
                if operand in diagonals:  # a transposed copy of a diagonal storage
                    self.derived[b.storage] = operand
                    operand = diagonals[operand].operand
                dtype = _np_dtype(notation.tensors[operand].dtype)
            elif b.storage in diagonals:
                operand, fmt = diagonals[b.storage].operand, diagonals[b.storage].format
                self.derived[b.storage] = b.storage
                dtype = _np_dtype(notation.tensors[operand].dtype)
            elif b.tensor == kernel.output_name:
                operand, fmt, dtype = b.tensor, out_t.format, _np_dtype(out_t.dtype)
            else:
                t = notation.tensors[b.storage]
                operand, fmt, dtype = b.storage, t.format, _np_dtype(t.dtype)
            plain = fmt.is_dense and fmt.order == tuple(range(fmt.ndim)) and b.storage not in self.derived
            self.storages.append((b.storage, operand, fmt, dtype, plain))
        self.operand_of = {st[0]: st[1] for st in self.storages}
        self.names = frozenset(kernel.inputs) | ({kernel.output_name} if notation.accumulate else set())
        self.allowed = self.names | {kernel.output_name}
        self.shape_checks = []
        checked = set()
        for acc in accesses(low.notation.rhs):
            name = acc.tensor.name
            if name not in seen or acc in checked:
                continue
            checked.add(acc)
            shown = low.transposes.get(name, (name,))[0]
            diagonal = diagonals.get(shown)
            if diagonal is not None:
                shown = diagonal.operand
            if name.endswith("_old") and name[:-4] == kernel.output_name:
                shown = kernel.output_name
            self.shape_checks.append((name, len(acc.indices), [i.name for i in acc.indices], shown))
        self.index_names = [i.name for i in low.order]
        ofmt = out_t.format
        self.plain_output = low.output_shape == "dense" and ofmt.order == tuple(range(ofmt.ndim))
        self.out_indices = [i.name for i in notation.lhs.indices]
        self.out_dtype = _np_dtype(out_t.dtype)


def _arg_plan(low) -> list:
    """(role, a, b) per kernel parameter, in order."""
    plan = []
    for b in low.bindings:
        if b.role == "input":
            plan.append(("in", b.storage, _array_slot(low, b)))
        elif b.role == "size":
            plan.append(("size", b.index, None))
        elif b.role in ("output", "output_grow", "output_bounded", "needed"):
            plan.append(("out", b, None))
        else:
            plan.append((b.role, None, None))
    return plan


def _array_slot(low, b) -> int:
    """Position of a binding's array in Tensor.kernel_arrays order."""
    t = low.notation.tensors.get(b.storage)
    if t is None:  # a storage not in the notation's tensor map (transposed copy)
        for acc in accesses(low.notation.rhs):
            if acc.tensor.name == b.storage:
                t = acc.tensor
                break
    k = 0
    for l, kind in enumerate(t.format.levels):
        for a in kind.arrays:
            if l == b.level and a == b.array:
                return k
            k += 1
    return k  # vals


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
        self.capacity = None  # entries the kernel's growable arrays start with (Kernel.__call__)
        self.given = given
        chain = access_chain(low.notation.lhs)
        self.level_sizes = [sizes[i.name] for i in chain]
        if low.output_shape == "dense":
            self._alloc_dense(given)
        else:
            if given is not None and not kernel.notation.accumulate:
                raise OperandError(f"output {self.t.name} is sparse: the kernel assembles it, so do not "
                                   "pass it (pass it only with +=)")
            self._alloc_sparse()

    # --------------------------------------------------------------- dense
    def _alloc_dense(self, given):
        storage_shape = tuple(self.level_sizes)
        overwrite = self.k._overwrites(self.low)
        if given is None:
            self.dense = _fresh_output(storage_shape, self.dtype, overwrite)
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
        if not self.k.notation.accumulate and not overwrite:
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
        self.bounded = {}  # (level, array) -> array at self.capacity entries, made on first use
        bounded = set(getattr(self.low, "bounded", ()))
        for l in range(d, len(levels)):
            kind = levels[l]
            for a in kind.arrays:
                if (l, a) in bounded:
                    continue
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
        elif (-1, "vals") not in bounded:
            kind = levels[-1]
            n = dense_positions * kind.num_blocks(self.level_sizes[-1]) * kind.K
            self.arrays[(-1, "vals")] = np.zeros(n, dtype=self.dtype)

    def arg(self, b, pointers=True):
        if self.low.output_shape == "dense":
            arr = self.dense
        elif b.role == "output_grow":
            return ctypes.byref(self.grow[(b.level, b.array)])
        elif b.role in ("output_bounded", "needed"):
            arr = self._bounded_array(b)
        else:
            arr = self.arrays[(b.level, b.array)]
        return _data_ptr(arr) if pointers else arr

    def dtype_of(self, level: int, array: str) -> np.dtype:
        """The NumPy dtype of one of the output's arrays (``vals``: the values')."""
        if array == "vals":
            return self.dtype
        from .ir.types import to_numpy
        return to_numpy(level_array_type(self.fmt.levels[level], array, self.bits))

    def _bounded_array(self, b):
        """An array the kernel appends into without growing it (Options.bounded_appends):
        ``capacity`` entries (``pos`` one more), or the one count it reports."""
        key = (b.level, b.array) if b.role == "output_bounded" else "needed"
        arr = self.bounded.get(key)
        if arr is None:
            if key == "needed":
                arr = np.zeros(1, np.int64)
            else:
                arr = np.zeros(self.capacity + (1 if b.array == "pos" else 0), self.dtype_of(b.level, b.array))
            self.bounded[key] = arr
        return arr

    def needed(self) -> int:
        """Entries a bounded-append kernel needed (0 when it grows its own arrays)."""
        counts = self.bounded.get("needed")
        return int(counts[0]) if counts is not None else 0

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

    def _taken(self, key, n, dtype):
        """The first ``n`` entries of an array the kernel appended to."""
        if key in self.bounded:
            whole = self.bounded[key]
            return whole[:n].copy() if _mostly_unused(n, whole.shape[0]) else whole[:n]
        return self._take(key, n, dtype)

    def _take(self, key, n, dtype):
        """A kernel-allocated array as NumPy, without a copy, freed when the last array
        using it goes; trimmed to its length with realloc when much of it is unused.

        A buffer the call's initial capacity held (no growth) with under a quarter
        unused is kept whole: trimming a large block before it is freed leaves
        malloc's mmap threshold just under the next call's request, so every call
        got fresh pages (SpGEMM 5000² on one thread: ~1000 page faults and 5.5 ms a
        call trimmed, ~100 and 2.6 ms kept; docs/performance.md)."""
        ptr = self.grow[key].value
        if n == 0 or not ptr:
            if ptr:
                _free(ptr)
            return np.zeros(0, dtype=dtype)
        nbytes = n * dtype.itemsize
        capacity = self.capacity
        if capacity is None or n > capacity or _mostly_unused(n, capacity):
            trimmed = _realloc(ptr, nbytes)
            if trimmed:
                ptr = trimmed
        view = _malloc_view(ptr, n, dtype)
        weakref.finalize(view.base, _free, ptr)
        return view

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
        from .runtime import Tensor
        levels = self.fmt.levels
        level_arrays = [dict() for _ in levels]
        parent = self.dense_positions
        for l in range(self.d, len(levels)):
            kind = levels[l]
            arrs = {}
            for a in kind.arrays:
                if (l, a) in self.arrays:
                    arrs[a] = self.arrays[(l, a)]
                elif a == "pos":
                    arrs[a] = self._taken((l, a), parent + 1, self.dtype_of(l, a))
            count = kind.num_positions(parent, self.level_sizes[l], arrs)
            for a in kind.arrays:
                if a not in arrs:
                    arrs[a] = self._taken((l, a), count, self.dtype_of(l, a))
            level_arrays[l] = arrs
            parent = count
        if (-1, "vals") in self.arrays:
            vals = self.arrays[(-1, "vals")]
        else:
            vals = self._taken((-1, "vals"), parent, self.dtype)
        # built by the kernel, well formed by construction: no validation pass
        return Tensor(self.fmt, self.shape, level_arrays, vals, validated=True)
