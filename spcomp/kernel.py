"""The compiled kernel a user calls: operands in, result out.

A :class:`Kernel` holds the lowered kernel (per index width: 32-bit indices
first, 64-bit compiled on demand when an operand needs it) and the target's
machine code, and runs calls through the machinery in ``runtime/``: operands
become storages (``operands.py``), shapes are bound (``plan.py``), the output is
allocated (``outputs.py``), the code runs on threads or a GPU (``launch.py``), a
sparse output is assembled in one pass, by counting first (``assemble.py``) or
in chunks (``chunks.py``), and a repeated call takes the fast path
(``fastcall.py``).
"""
from __future__ import annotations

import numpy as np

from .backends import get_target
from .errors import CacheError, KernelRuntimeError, SpcompError
from .frontend import to_notation
from .kernel_variants import KernelVariants
from .ir.printer import print_ir
from .lower.record import Options
from .notation import accesses
from .runtime import assemble, call, chunks
from .runtime import relayout as relayout_kernels
from .runtime.tensor import expand_output
from .runtime.fastcall import MISS, remember
from .runtime.launch import Variant, WiderIndices
from .runtime.operands import any_torch, index_bits, refuse_overlap
from .schedule import Schedule, check_names
from .tuner import adopt_tuned


class Kernel(KernelVariants):
    """A compiled index-notation kernel. Call it with operands by name."""

    def __init__(self, expression: str, notation, options, target, schedule=None, variants: dict | None = None):
        self.expression = expression
        self.notation = notation
        self._options = options
        self._target = target
        self.schedule = schedule
        self._variants: dict = dict(variants or {})
        self._fast = None
        self.contraction = None  # spcomp.contraction.Contraction: may run a factorised program instead
        self.autotune = False  # SPCOMP_AUTOTUNE=1 and no schedule given: tune on the first call (tuner.py)
        self.tuned_buckets = None  # {problem bucket: schedule spcomp.tune kept}: the first call picks
        low = self._variant(32).lowered  # compile now: errors surface at compile(), source is ready
        self.warnings = list(low.inspection.warnings)
        self.output_name = notation.lhs.tensor.name
        # an order-0 ``+=`` output may be a Python or NumPy scalar: the updated value comes back
        self._scalar_acc = notation.accumulate and notation.lhs.tensor.order == 0
        self.inputs = list(dict.fromkeys(acc.tensor.name for acc in accesses(notation.rhs)))
        # the call machinery (plan, operand converter, launcher): public for inspection
        self.runtime = call.CallContext(expression, notation, low, target, self.output_name, self.inputs,
                                      _relayout)

    # ----------------------------------------------------------- inspection
    @property
    def lowered(self):
        """The lowered kernel (32-bit indices): its code, operand, output and thread
        plans and what :attr:`loops` prints (``spcomp.lower.record.Lowered``)."""
        return self._variants[32].lowered

    def lowering(self, bits: int = 32):
        """The lowered kernel for ``bits``-bit indices (64 is compiled on first use)."""
        return self._variant(bits).lowered

    def variant(self, bits: int = 32):
        """The compiled variant for ``bits``-bit indices: ``lowered``, ``compiled`` (the
        target's code object) and ``function`` (what a call runs)."""
        return self._variant(bits)

    @property
    def variants(self) -> dict:
        """Every variant compiled so far, by index width (and ``(bits, tag)`` for the
        one-pass and chunks variants a sparse-output call may pick)."""
        return dict(self._variants)

    @property
    def options(self):
        """The lowering options (``spcomp.lower.record.Options``) this kernel was built with."""
        return self._options

    @property
    def target(self):
        """The backend object this kernel was built by (``spcomp.backends.get_target``)."""
        return self._target

    @property
    def index_notation(self) -> str:
        """The checked expression with its sums made explicit."""
        return repr(self.notation)

    @property
    def loops(self) -> str:
        """The loop nest the lowerer chose, one loop a line."""
        low = self.lowered
        text = f"{low.inspection.notation!r}\n" + low.inspection.loops
        if low.output.assembly is not None and self.runtime.caps.chunked_assembly and chunks.preferred(low):
            text += (f"\n(on CPU threads: each thread appends its {low.threads.parallel} rows instead of "
                     "counting them first, and the runtime joins the chunks)")
        for name, diag in low.operands.diagonals.items():
            kept = [diag.indices[d] for d in diag.kept]
            text += (f"\n(diagonal: {name}[{','.join(kept)}] = {diag.operand}[{','.join(diag.indices)}], "
                     f"the entries of {diag.operand} on it, gathered at each call)")
        if low.output.bounded:
            text += (f"\n(appends {self.output_name} into arrays allocated at a first guess of its size, "
                     "counting every entry; runs once more at the exact size when they did not fit)")
        plan = self.contraction.describe() if self.contraction is not None else ""
        if plan:
            text += "\n" + plan
        return text

    @property
    def blas_calls(self) -> list:
        """The matrix products this kernel hands to BLAS, one line each (empty when
        none; see ``Schedule.no_blas``)."""
        return list(self.lowered.inspection.blas)

    @property
    def ir(self) -> str:
        """The kernel IR printed as C-like code."""
        return print_ir(self.lowered.code.module)

    @property
    def source(self) -> str:
        """The generated code: LLVM IR for the CPU backend, CUDA C for cuda."""
        return self._target.source(self._variants[32].compiled)

    @property
    def last_launch(self) -> dict | None:
        """GPU backends: how the last call ran -- ``mapping`` ('gpu-thread', 'gpu-warp',
        'gpu-block' or 'serial'), ``grid``, ``block`` and ``why`` (the default schedule's
        reason for a thread or a warp per row, else None); None before the first call."""
        return getattr(self._target, "last_launch", None)

    @property
    def backend(self) -> str:
        return self._target.name

    @property
    def capabilities(self):
        """What this kernel's backend can do (``spcomp.ir.target.Capabilities``)."""
        return self.runtime.caps

    @property
    def formats(self) -> dict:
        return {name: t.format for name, t in self.notation.tensors.items()}

    def __repr__(self) -> str:
        fmts = ", ".join(f"{k}={v}" for k, v in self.formats.items() if not v.is_dense)
        return f"<spcomp.Kernel {self.expression!r}{' ' + fmts if fmts else ''} backend={self._target.name}>"

    def vjp(self, wrt=None, *, dense=False, cotangent_format=None, schedule=None):
        """The derived gradient statements of the operands in ``wrt`` (default: all) for
        this kernel's backend, with the default schedule unless ``schedule`` is given
        (:func:`spcomp.vjp`, docs/autodiff.md)."""
        from .autodiff import VJP
        return VJP(self.notation, wrt, dense=dense, target=self._target, kernel_class=type(self),
                   cotangent_format=cotangent_format, schedule=schedule,
                   output_drops_zeros=self.lowered.output.drops_zeros)

    def forget(self, *values) -> None:
        """Drop the cached conversions of these operand objects now (they go anyway
        when the objects do): for callers that pass many short-lived operands."""
        for v in values:
            self.runtime.operands.forget(v)

    # -------------------------------------------------------- save / load
    def save(self, path, key=None) -> None:
        """Write this kernel (every index width compiled so far, the variants a call
        may pick, and the copy kernels of its auto-layout) to ``path``, to ship with an
        inference script; :func:`spcomp.load` reads it without compiling.

        The file holds machine code: loading it runs that code in the loading
        process, as loading a shared library does. With ``key`` (bytes or str, at
        least 16 bytes) the file is signed (HMAC-SHA256), and ``spcomp.load(path,
        key=key)`` refuses a file that was not signed with it; without one it
        carries a checksum, which detects damage but not tampering."""
        from pathlib import Path

        from .runtime import cache
        cache.write_atomic(Path(path), self.to_bytes(key))

    def to_bytes(self, key=None) -> bytes:
        """The bytes :meth:`save` writes, in memory: to send a kernel to other processes
        (``spcomp.dask`` ships one to its workers this way) instead of compiling it
        there. Same format, same signing rules; :func:`spcomp.loads` reads them."""
        from .runtime import cache, trust
        return cache.pack(self.payload(), trust.as_key(key))

    def payload(self) -> dict:
        """What :meth:`to_bytes` packs: plain data (runtime/record.py) and object code."""
        caps = self.runtime.caps
        if not caps.saveable:
            raise SpcompError(f"kernels of backend {self._target.name!r} cannot be saved")
        for bits in [b for b in self._variants if isinstance(b, int)]:
            # the variants a call may pick besides the plain one, so a loaded kernel runs without LLVM
            if self._variants[bits].lowered.output.assembly is not None and caps.host_threads:
                self._variant_with(bits, "one-pass", parallel=None)
                if caps.chunked_assembly and chunks.preferred(self._variants[bits].lowered):
                    self._chunks_variant(bits)
        relayouts = {}
        if caps.relayout_on_threads and self._options.auto_layout:
            relayouts = {key: relayout_kernels.copy_kernel(key, copy_kernel).payload()
                         for key in relayout_kernels.copies_of(self.runtime.plan.storages)}
        return {
            "expression": self.expression, "notation": self.notation, "options": self._options,
            "backend": self._target.name, "machine": self._target.cache_key(),
            "variants": {b: {"lowered": v.lowered, "compiled": self._target.dump(v.compiled)}
                         for b, v in self._variants.items()},
            "relayouts": relayouts,
        }

    @classmethod
    def load(cls, path, key=None) -> "Kernel":
        """The kernel :meth:`save` wrote to ``path``, checked (signature or checksum, format,
        machine, spcomp version) before use; with ``key`` it must be signed with it. Loading
        runs the machine code it holds: load only files you trust, as a shared library."""
        from pathlib import Path
        try:
            data = Path(path).read_bytes()
        except OSError as e:
            raise CacheError(f"cannot read kernel file {path}: {e}") from None
        return cls.from_bytes(data, key, where=str(path))

    @classmethod
    def from_bytes(cls, data: bytes, key=None, where: str = "kernel bytes") -> "Kernel":
        """The kernel :meth:`to_bytes` (or :meth:`save`) wrote, from memory
        (``spcomp.loads``); checked and trusted exactly as :meth:`load` checks a file."""
        from .runtime import cache, trust
        payload = cache.unpack(bytes(data), where, trust.as_key(key))
        try:
            return cls.from_payload(payload, where)
        except (KeyError, TypeError, AttributeError, ValueError) as e:
            raise CacheError(f"{where}: not a saved kernel of this spcomp ({type(e).__name__}: {e})") from None

    @classmethod
    def from_payload(cls, payload: dict, path) -> "Kernel":
        """The kernel a verified :meth:`payload` describes (``path`` names it in errors)."""
        target = get_target(payload["backend"])
        if payload["machine"] != target.cache_key():
            raise CacheError(f"{path} was compiled for another machine or library version "
                             f"({payload['machine'][0]}); recompile it here")
        variants = {}
        for bits, entry in payload["variants"].items():
            compiled = target.load(entry["compiled"], entry["lowered"])
            variants[bits] = Variant(entry["lowered"], compiled, target.entry(compiled, entry["lowered"]))
        for key, copy in payload.get("relayouts", {}).items():
            relayout_kernels.install(key, cls.from_payload(copy, path))
        return cls(payload["expression"], payload["notation"], payload["options"], target, None,
                   variants=variants)

    # ---------------------------------------------------------------- call
    def __call__(self, **operands):
        """Run the kernel: operands by name -> ndarray, Tensor or float; with any
        ``torch.Tensor`` operand, a torch tensor (docs/torch.md)."""
        fast = self._fast
        if fast is not None and self.contraction is None:  # the last call's operands again?
            result = fast.call(operands)  # (fastcall.py; MISS for any others, a scalar output too)
            if result is not MISS:
                return result
        if self._scalar_acc and _is_scalar(operands.get(self.output_name)):
            cell = np.array(operands[self.output_name], dtype=self.runtime.plan.out_dtype)
            self(**{**operands, self.output_name: cell})
            return cell.item()
        if self.contraction is not None and not any_torch(operands):
            program = self.contraction.kernel_for(operands)
            if program is not None:
                return program(**operands)
            result = MISS if fast is None else fast.call(operands)
            if result is not MISS:
                return result
        if self.autotune or self.tuned_buckets:
            adopt_tuned(self, operands)
        ctx = self.runtime
        if any_torch(operands):  # their buffers as storages, the result back as torch
            from .runtime import torch_bridge
            return torch_bridge.call(self, operands, self.output_name, ctx.plan.out_dtype, ctx.caps)
        if operands.keys() != ctx.plan.names:
            ctx.plan.check_names(operands, self.expression)
        storages = ctx.operands.storages(operands)
        sizes = ctx.plan.bind_sizes(storages, operands)
        given = operands.get(self.output_name)
        if given is not None:
            refuse_overlap(given, operands, self.output_name)
        bits = index_bits(storages, sizes, self._options.index32_limit)
        try:
            return self._call_with(bits, storages, sizes, given, operands)
        except WiderIndices:
            if bits == 64:
                raise KernelRuntimeError(f"kernel for {self.expression!r}: its 64-bit output overflowed") from None
            # the output outgrew 32-bit positions: the 64-bit kernel runs the call again
            return self._call_with(64, storages, sizes, given, operands)

    def with_schedule(self, schedule) -> "Kernel":
        """This kernel (expression, formats, dtypes, backend, output options) compiled
        with ``schedule`` instead; ScheduleError when the schedule does not apply."""
        check_names(schedule, self.notation)
        o = self._options
        options = Options.from_schedule(schedule, o.drop_zeros, o.name, self._target.capabilities)
        return Kernel(self.expression, self.notation, options, self._target, schedule)

    def _call_with(self, bits, storages, sizes, given, operands):
        """The call with ``bits``-bit indices, from its operands' storages."""
        variant = self._variants.get(bits) or self._variant(bits)
        expand = variant.lowered.output.expand
        if expand is not None:  # dense levels under sparse ones: assembled compressed, then expanded
            return expand_output(self._assembled(variant, bits, storages, sizes, given, operands), expand)
        return self._assembled(variant, bits, storages, sizes, given, operands)

    def _assembled(self, variant, bits, storages, sizes, given, operands):
        """The call's result as the kernel assembles it."""
        sizing = variant.lowered  # the lowering whose thread plan sizes a growable output
        if sizing.output.assembly is not None:  # a sparse output whose rows may be assembled in parallel
            chosen = self._assembly_variant(variant, bits, sizes, storages)
            if chosen is None:
                return assemble.run_two_phase(self.runtime, variant, storages, sizes, bits, given)
            variant = chosen
        result, fast = call.run(self.runtime, variant, sizing, storages, sizes, bits, given, operands)
        if fast is not None:
            self._fast = remember(self._fast, fast, operands)
        return result


def _is_scalar(value) -> bool:
    """A Python or NumPy real scalar (not a bool, not an array)."""
    return isinstance(value, (int, float, np.floating, np.integer)) and not isinstance(value, (bool, np.bool_))


def _relayout(value, order, dtype):
    """A dense operand copied into storage ``order`` on the threads (runtime/relayout.py)."""
    return relayout_kernels.relayout(value, order, dtype, make=copy_kernel)


def copy_kernel(key: tuple) -> Kernel:
    """The kernel that copies a dense operand into storage order ``key[0]`` (dtype
    ``key[1]``) on the threads (runtime/relayout.py), without an auto-layout of its own."""
    order, dtype = key
    expression = relayout_kernels.copy_expression(order)
    notation = to_notation(expression, formats=None, dtypes=None, default_dtype=dtype)
    target = get_target("cpu")
    options = Options.from_schedule(Schedule().keep_layout(), None, "relayout", target.capabilities)
    return Kernel(expression, notation, options, target)
