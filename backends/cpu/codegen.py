"""Kernel IR -> LLVM IR: one ``llvmlite.ir.Module`` per kernel IR :class:`~spcomp.ir.nodes.Module`.

:func:`generate` verifies the module (:func:`spcomp.ir.verify.verify_module`), then
lowers each function by a direct walk, one method per node class (``stmt_For``,
``expr_Load``...). The parts, by job:

* this module: the module (names, externals, the sort helpers, :func:`generate`);
* :mod:`.function`: one function's frame and the state its lowering shares;
* :mod:`.statements` and :mod:`.expressions`: one method per IR node class;
* :mod:`.loop_hints`: ``llvm.loop`` metadata and float flags;
* :mod:`.llvm_types`: IR types as LLVM types.

Besides the conventions of :mod:`spcomp.ir.nodes`, the lowering fixes these:

* Every function returns ``i32`` (the status). Pointer parameters are ``ptr noalias``, and
  ``captures(none)`` unless the function copies the pointer value somewhere; scalar
  parameters keep their IR type (``i1 zeroext``, ``i8``/``i16 signext``).
* In memory, ``bool`` is one byte (NumPy's layout) and ``bf16`` is an ``i16`` holding the
  upper half of a float32; in registers a bool is ``i1`` and a bf16 value only ever exists
  between its ``Load`` and the ``Cast`` to ``f32``.
* Scalar and pointer variables live in ``alloca`` s of the entry block, named after the IR
  variable (``n.addr`` for a parameter); SROA/mem2reg promote them at O3. A ``Block``
  statement opens a scope, as in C. A pointer variable declared without a value is null.
* ``Comment`` s, the function's ``doc`` and a header per loop become ``;`` comments in
  the unoptimised LLVM IR text.
* ``For`` evaluates ``start`` and ``end`` once, before the loop, then runs ``var`` up by 1
  with ``add nsw``; its latch carries ``llvm.loop`` metadata: ``mustprogress``, the
  vectorize hint (``vectorize.enable`` + ``width``; width 1 disables; a ``masked_tail``
  loop adds ``vectorize.predicate.enable`` and ``interleave.count 1``, so its last partial
  vector runs masked instead of in a scalar remainder loop) and the unroll hint
  (``unroll.count``; 1 disables).
* ``&&``, ``||`` and ``Select`` are eager (``and``/``or``/``select``), except where C would
  skip an operand that may trap (one holding a ``Load`` or an integer ``/``/``%``): then they
  branch, like C, so ``p < end && crd[p] < x`` never reads ``crd[end]``.
* Float compares are ordered, except ``!=`` (unordered, as in C). Float ``min``/``max`` are
  ``a < b ? a : b`` / ``a > b ? a : b`` (with a NaN the second operand wins, like x86
  ``minps``/``maxps``). Float arithmetic carries ``contract`` (FMA allowed, as clang does);
  a float sum ``t = t + v`` inside a loop with a vectorize hint also carries ``reassoc``:
  the hint already lets LLVM keep per-lane partial sums, and the flag lets it add the
  lanes up as a tree at the end instead of in lane order.
* ``Allocate``/``Reallocate`` call libc for at least one element and return status 2
  (``STATUS_OUT_OF_MEMORY``) on a null result or a count that is negative or whose size
  overflows an ``i64``; a failed ``Reallocate`` leaves the old block allocated.
* ``Call("ctz", (x,), i64)`` is ``llvm.cttz.i64`` defined for 0 (64: ``tzcnt``),
  ``Call("popcount", ...)`` ``llvm.ctpop.i64`` and ``Call("clear_lowest", ...)``
  ``x & (x - 1)`` with a wrapping ``sub``: the lowerer reads bitmap words with them.
* ``Sort`` calls an internal helper per element type, the IR's own sort
  (:mod:`spcomp.ir.sort`: insertion sort up to 16 elements, heap sort above) lowered
  like any function (``__spcomp_sort_i64``...).
* ``Gemm`` calls the Fortran-convention ``sgemm``/``dgemm`` that SciPy exports (symbols
  ``spcomp_blas_sgemm``/``spcomp_blas_dgemm``, registered by ``blas.py``), swapping the
  operands so that column-major BLAS computes the row-major product; a size over
  ``2**31 - 1`` returns status 3.
* ``PollInterrupt`` is a ``load atomic monotonic`` of the external ``i32``
  ``spcomp_interrupt`` (the runtime's flag, registered with the JIT by jit.py) and a
  branch, weighted as unlikely, to a block that frees the poll's arrays and returns
  status 4. Atomic, so LLVM may neither hoist the load out of the loop nor assume
  it unchanged; it sits in an outer loop, so the inner loops' analysis never sees it.
"""

from __future__ import annotations

from llvmlite import ir

from spcomp.ir import nodes as n
from spcomp.ir.sort import helper_name, sort_function
from spcomp.ir.types import ScalarType
from spcomp.ir.verify import KernelIRError, verify_module
from spcomp.runtime.flags import INTERRUPT_SYMBOL

from . import loop_hints
from .function import FunctionLowering
from .llvm_types import I32_T, PTR

__all__ = ["KernelIRError", "RUNTIME_SYMBOLS", "generate"]

#: Symbols the generated code calls or that LLVM lowers intrinsics to; kernels may not use them.
RUNTIME_SYMBOLS = frozenset(
    "malloc calloc realloc free tanh tanhf erf erff exp expf log logf sqrt sqrtf "
    "fabs fabsf memcpy memset memmove".split()) | {INTERRUPT_SYMBOL}


class ModuleLowering:
    """What the functions of one LLVM module share: externals, sort helpers, loop metadata."""

    def __init__(self, module: ir.Module, fast_math: bool):
        self.module = module
        self.float_flags = loop_hints.float_flags(fast_math)
        self.vector_sum_flags = loop_hints.vector_sum_flags(fast_math)

    def external(self, name: str, ret: ir.Type, args) -> ir.Function:
        fn = self.module.globals.get(name)
        if fn is None:
            fn = ir.Function(self.module, ir.FunctionType(ret, list(args)), name=name)
            fn.attributes.add("nounwind")
        return fn

    def external_i32(self, name: str) -> ir.GlobalVariable:
        """An ``i32`` defined outside the module (the JIT resolves it by name)."""
        g = self.module.globals.get(name)
        if g is None:
            g = ir.GlobalVariable(self.module, I32_T, name=name)
            g.type = PTR  # print `ptr`, not llvmlite's typed `i32*`
        return g

    def sort_helper(self, t: ScalarType) -> ir.Function:
        """The module's internal sort helper for elements of ``t``, lowered on first use."""
        fn = self.module.globals.get(helper_name(t))
        if fn is None:
            fn = FunctionLowering(self, sort_function(t), linkage="internal").lower()
        return fn

    def loop_id(self, loop: n.For) -> loop_hints.LoopID:
        return loop_hints.loop_id(self.module, loop)


def generate(module: n.Module, *, triple: str = "", data_layout: str = "",
             fast_math: bool = False) -> ir.Module:
    """Lower a kernel IR module to an ``llvmlite.ir.Module`` (not yet optimised).

    ``fast_math`` puts ``fast`` on float arithmetic (reassociation: vectorised float
    reductions without a ``vectorize`` hint); the default is ``contract`` only.
    Raises :class:`KernelIRError` for IR that breaks the IR's rules.
    """
    verify_module(module)
    names = [f.name for f in module.functions]
    for name in names:
        if name in RUNTIME_SYMBOLS:
            raise KernelIRError(f"function name {name!r} is not a valid or free symbol name "
                                "(the generated code calls it)")
    llmod = ir.Module(name=module.entry or (names[0] if names else "spcomp"))
    if triple:
        llmod.triple = triple
    if data_layout:
        llmod.data_layout = data_layout
    lowering = ModuleLowering(llmod, fast_math)
    for f in module.functions:
        FunctionLowering(lowering, f).lower()
    return llmod
