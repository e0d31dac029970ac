"""Kernel IR -> LLVM IR: one ``llvmlite.ir.Module`` per kernel IR :class:`~spcomp.ir.nodes.Module`.

The lowering is a direct walk, one method per node class (``stmt_For``, ``expr_Load``...).
Besides the conventions of :mod:`spcomp.ir.nodes`, it fixes these:

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
* ``Sort`` calls an internal helper per element type (insertion sort up to 16 elements,
  heapsort above), itself written in kernel IR and lowered by this module.
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

import re

import numpy as np
from llvmlite import ir

from spcomp.errors import SpcompError, UnsupportedError
from spcomp.ir import nodes as n
from spcomp.ir.printer import print_ir
from spcomp.ir.types import BF16, BOOL, F32, F64, I64, PointerType, ScalarType, ptr
from spcomp.runtime.flags import INTERRUPT_SYMBOL


class KernelIRError(SpcompError, ValueError):
    """Kernel IR that breaks the IR's own rules (a type mismatch, an undeclared variable).

    It is a bug in the stage that built the IR, never in the user's input."""


# ------------------------------------------------------------------ types

PTR = ir.PointerType()
I1_T, I8_T, I16_T, I32_T, I64_T = (ir.IntType(b) for b in (1, 8, 16, 32, 64))
F32_T, F64_T = ir.FloatType(), ir.DoubleType()

_REGISTER = {"bool": I1_T, "i8": I8_T, "i16": I16_T, "i32": I32_T, "i64": I64_T,
             "f32": F32_T, "f64": F64_T, "bf16": I16_T}
_MEMORY = dict(_REGISTER, bool=I8_T)


def register_type(t) -> ir.Type:
    """The LLVM type of a value of IR type ``t`` held in a register."""
    return PTR if isinstance(t, PointerType) else _REGISTER[t.name]


def memory_type(t) -> ir.Type:
    """The LLVM type of an array element of IR type ``t``."""
    return PTR if isinstance(t, PointerType) else _MEMORY[t.name]


def sizeof(t) -> int:
    return 8 if isinstance(t, PointerType) else max(1, t.bits // 8)


#: Symbols the generated code calls or that LLVM lowers intrinsics to; kernels may not use them.
RUNTIME_SYMBOLS = frozenset(
    "malloc calloc realloc free tanh tanhf erf erff exp expf log logf sqrt sqrtf "
    "fabs fabsf memcpy memset memmove".split()) | {INTERRUPT_SYMBOL}
SORT_HELPER_PREFIX = "__spcomp_sort_"
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")


def bf16_bits(value: float) -> int:
    """The bf16 bit pattern of ``value`` (round to nearest even; NaN stays a quiet NaN)."""
    with np.errstate(over="ignore"):
        f = np.float32(value)
    bits = int(np.array(f).view(np.uint32))
    if f != f:
        return ((bits >> 16) & 0x8000) | 0x7FC0
    return ((bits + 0x7FFF + ((bits >> 16) & 1)) >> 16) & 0xFFFF


def _wrap_int(value: int, bits: int) -> int:
    value = int(value) & ((1 << bits) - 1)
    return value - (1 << bits) if value >> (bits - 1) else value


# --------------------------------------------------------------- analysis

def _may_trap(e) -> bool:
    """Whether evaluating ``e`` may fault: it reads memory or divides integers."""
    if isinstance(e, n.Load):
        return True
    if isinstance(e, n.Binary):
        if e.op in ("/", "%") and not e.lhs.type.is_float:
            return True
        return _may_trap(e.lhs) or _may_trap(e.rhs)
    if isinstance(e, n.Unary):
        return _may_trap(e.operand)
    if isinstance(e, n.Cast):
        return _may_trap(e.value)
    if isinstance(e, n.Select):
        return _may_trap(e.cond) or _may_trap(e.if_true) or _may_trap(e.if_false)
    if isinstance(e, n.Call):
        return any(_may_trap(a) for a in e.args)
    return False


def _copied_pointers(f: n.Function) -> set:
    """Pointer variables whose value is used other than as the base of an access."""
    out: set = set()

    def expr(e, base=False):
        if isinstance(e, n.Var):
            if not base and isinstance(e.type, PointerType):
                out.add(e)
        elif isinstance(e, n.Load):
            expr(e.array, True)
            expr(e.index)
        elif isinstance(e, n.Binary):
            expr(e.lhs)
            expr(e.rhs)
        elif isinstance(e, n.Unary):
            expr(e.operand)
        elif isinstance(e, n.Cast):
            expr(e.value)
        elif isinstance(e, n.Select):
            expr(e.cond)
            expr(e.if_true)
            expr(e.if_false)
        elif isinstance(e, n.Call):
            for a in e.args:
                expr(a)

    def stmt(s):
        if isinstance(s, n.Block):
            for t in s.body:
                stmt(t)
        elif isinstance(s, n.Declare) and s.init is not None:
            expr(s.init)
        elif isinstance(s, n.Assign):
            expr(s.value)
        elif isinstance(s, (n.Store, n.AtomicAdd)):
            expr(s.array, True)
            expr(s.index)
            expr(s.value)
        elif isinstance(s, n.For):
            expr(s.start)
            expr(s.end)
            stmt(s.body)
        elif isinstance(s, n.While):
            expr(s.cond)
            stmt(s.body)
        elif isinstance(s, n.If):
            expr(s.cond)
            stmt(s.then)
            if s.otherwise is not None:
                stmt(s.otherwise)
        elif isinstance(s, (n.Allocate, n.Reallocate)):
            expr(s.count)
        elif isinstance(s, n.Sort):
            expr(s.array, True)
            expr(s.start)
            expr(s.count)
        elif isinstance(s, n.Prefetch):
            expr(s.array, True)
            expr(s.index)
        elif isinstance(s, n.Gemm):  # the pointers go to BLAS
            for e in (s.a, s.b, s.c, s.m, s.n, s.k, s.lda, s.ldb, s.ldc):
                expr(e)

    stmt(f.body)
    return out


# ------------------------------------------------------------ sort helper

def sort_function(t: ScalarType) -> n.Function:
    """``__spcomp_sort_<t>(a, count)``: sort ``a[0:count]`` ascending, in kernel IR.

    Insertion sort up to 16 elements, heapsort above (O(n log n) worst case, no recursion).
    """
    a, count = n.Var("a", ptr(t)), n.Var("count", I64)
    one, zero = n.i64(1), n.i64(0)

    def v(name, type_=I64):
        return n.Var(name, type_)

    def at(i):
        return n.Load(a, i)

    def add(x, y):
        return n.Binary("+", x, y)

    def sub(x, y):
        return n.Binary("-", x, y)

    def swap(i, j):
        tmp = v("tmp", t)
        return n.Block((n.Declare(tmp, at(i)), n.Store(a, i, at(j)), n.Store(a, j, tmp)))

    def sift_down(root_init, end):
        root, child, go = v("root"), v("child"), v("go", BOOL)
        first_child = add(n.Binary("*", root, n.i64(2)), one)
        return n.Block((
            n.Declare(root, root_init),
            n.Declare(go, n.Const(True, BOOL)),
            n.While(n.Binary("&&", go, n.Binary("<", first_child, end)), n.block(
                n.Declare(child, first_child),
                n.If(n.Binary("&&", n.Binary("<", add(child, one), end),
                              n.Binary("<", at(child), at(add(child, one)))),
                     n.block(n.Assign(child, add(child, one)))),
                n.If(n.Binary("<", at(root), at(child)),
                     n.block(swap(root, child), n.Assign(root, child)),
                     n.block(n.Assign(go, n.Const(False, BOOL)))),
            )),
        ))

    i, j, key = v("i"), v("j"), v("key", t)
    insertion = n.block(
        n.For(i, one, count, n.block(
            n.Declare(key, at(i)),
            n.Declare(j, sub(i, one)),
            n.While(n.Binary("&&", n.Binary(">=", j, zero), n.Binary(">", at(j), key)),
                    n.block(n.Store(a, add(j, one), at(j)), n.Assign(j, sub(j, one)))),
            n.Store(a, add(j, one), key),
        )))
    start, end = v("start"), v("end")
    heapsort = n.block(
        n.Declare(start, n.Binary("/", count, n.i64(2))),
        n.While(n.Binary(">", start, zero), n.block(
            n.Assign(start, sub(start, one)), sift_down(start, count))),
        n.Declare(end, count),
        n.While(n.Binary(">", end, one), n.block(
            n.Assign(end, sub(end, one)), swap(zero, end), sift_down(zero, end))),
    )
    return n.Function(SORT_HELPER_PREFIX + t.name, (a, count), n.block(
        n.If(n.Binary("<=", count, n.i64(16)), insertion, heapsort), n.Return(n.STATUS_OK)),
        doc=f"sort {t}[0:count] ascending")


# ---------------------------------------------------------------- modules

class _LoopID(ir.values.MDValue):
    """A ``distinct`` metadata node whose first operand is itself: an ``llvm.loop`` ID."""

    def __init__(self, module: ir.Module, properties):
        super().__init__(module, properties, name=str(len(module.metadata)))

    def descr(self, buf):
        ops = [self.get_reference()] + [p.get_reference() for p in self.operands]
        buf += ("distinct !{{ {0} }}".format(", ".join(ops)), "\n")

    __eq__ = object.__eq__
    __ne__ = object.__ne__
    __hash__ = object.__hash__


class _ModuleLowering:
    def __init__(self, module: ir.Module, fast_math: bool):
        self.module = module
        self.float_flags = ("fast",) if fast_math else ("contract",)
        # a float sum in a vectorised loop: its lanes are already summed out of order,
        # and ``reassoc`` lets LLVM add them up as a tree (3 steps for 8 lanes) instead
        # of one after another (SpMV: 8 dependent adds per row, 12 % of its time)
        self.vector_sum_flags = self.float_flags if fast_math else ("contract", "reassoc")

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
        name = SORT_HELPER_PREFIX + t.name
        fn = self.module.globals.get(name)
        if fn is None:
            fn = _FunctionLowering(self, sort_function(t), linkage="internal").lower()
        return fn

    def loop_id(self, loop: n.For) -> _LoopID:
        md = self.module.add_metadata
        props = [md(["llvm.loop.mustprogress"])]
        if loop.vectorize == 1:
            props.append(md(["llvm.loop.vectorize.width", ir.Constant(I32_T, 1)]))
        elif loop.vectorize > 1:
            props.append(md(["llvm.loop.vectorize.enable", ir.Constant(I1_T, 1)]))
            props.append(md(["llvm.loop.vectorize.width", ir.Constant(I32_T, loop.vectorize)]))
            if loop.masked_tail:
                props.append(md(["llvm.loop.vectorize.predicate.enable", ir.Constant(I1_T, 1)]))
                props.append(md(["llvm.loop.interleave.count", ir.Constant(I32_T, 1)]))
        if loop.unroll == 1:
            props.append(md(["llvm.loop.unroll.disable"]))
        elif loop.unroll > 1:
            props.append(md(["llvm.loop.unroll.count", ir.Constant(I32_T, loop.unroll)]))
        return _LoopID(self.module, props)


def generate(module: n.Module, *, triple: str = "", data_layout: str = "",
             fast_math: bool = False) -> ir.Module:
    """Lower a kernel IR module to an ``llvmlite.ir.Module`` (not yet optimised).

    ``fast_math`` puts ``fast`` on float arithmetic (reassociation: vectorised float
    reductions without a ``vectorize`` hint); the default is ``contract`` only.
    """
    names = [f.name for f in module.functions]
    for name in names:
        if not _NAME.match(name) or name in RUNTIME_SYMBOLS or name.startswith(SORT_HELPER_PREFIX):
            raise KernelIRError(f"function name {name!r} is not a valid or free symbol name")
    if len(set(names)) != len(names):
        raise KernelIRError(f"duplicate function names in module: {names}")
    llmod = ir.Module(name=module.entry or (names[0] if names else "spcomp"))
    if triple:
        llmod.triple = triple
    if data_layout:
        llmod.data_layout = data_layout
    lowering = _ModuleLowering(llmod, fast_math)
    for f in module.functions:
        _FunctionLowering(lowering, f).lower()
    return llmod


# -------------------------------------------------------------- functions

class _FunctionLowering:
    def __init__(self, ml: _ModuleLowering, f: n.Function, linkage: str = "external"):
        self.ml = ml
        self.f = f
        self.module = ml.module
        self.ff = ml.float_flags
        self.fn = ir.Function(self.module, ir.FunctionType(
            I32_T, [register_type(p.type) for p in f.params]), name=f.name)
        if linkage != "external":
            self.fn.linkage = linkage
        self.fn.attributes.add("nounwind")
        self.entry = self.fn.append_basic_block("entry")
        self.allocas = ir.IRBuilder(self.entry)
        self.b = ir.IRBuilder()
        self.scopes: list[dict] = [{}]
        self.oom_block: ir.Block | None = None
        self.vector_loops = 0  # depth of enclosing loops with a vectorize hint

    # ----------------------------------------------------------- helpers
    def error(self, message: str, node=None):
        where = f" in function {self.f.name!r}"
        if node is not None:
            where += f": {print_ir(node)}"
        return KernelIRError(message + where)

    def new_block(self, name: str) -> ir.Block:
        """A block not yet placed in the function (placed when entered: readable order)."""
        return ir.Block(parent=self.fn, name=name)

    def enter(self, block: ir.Block):
        if block not in self.fn.blocks:
            self.fn.blocks.append(block)
        self.b.position_at_end(block)

    def branch_to(self, block: ir.Block):
        if not self.b.block.is_terminated:
            self.b.branch(block)

    def alloca(self, t, name: str):
        slot = self.allocas.alloca(register_type(t), name=name)
        slot.type = PTR  # print `ptr`, not llvmlite's typed `i64*`
        return slot

    def declare(self, var: n.Var, name: str | None = None):
        slot = self.alloca(var.type, name or var.name)
        self.scopes[-1][var] = slot
        return slot

    def slot(self, var: n.Var):
        for scope in reversed(self.scopes):
            if var in scope:
                return scope[var]
        for scope in reversed(self.scopes):
            for other in scope:
                if other.name == var.name:
                    raise self.error(f"variable {var.name} used as {var.type} but declared "
                                     f"as {other.type}")
        raise self.error(f"variable {var.name} ({var.type}) used before it is declared")

    def to_i64(self, value, t):
        if not (isinstance(t, ScalarType) and t.is_int):
            raise self.error(f"expected an integer, got {t}")
        return value if t.bits == 64 else self.b.sext(value, I64_T)

    def same_type(self, node, *exprs):
        types = {e.type for e in exprs}
        if len(types) != 1:
            raise self.error("operands of different types "
                             f"({', '.join(str(e.type) for e in exprs)})", node)
        return types.pop()

    def out_of_memory(self) -> ir.Block:
        if self.oom_block is None:
            self.oom_block = self.new_block("out.of.memory")
        return self.oom_block

    # ---------------------------------------------------------- function
    def lower(self) -> ir.Function:
        if len({p.name for p in self.f.params}) != len(self.f.params):
            raise self.error("duplicate parameter names")
        copied = _copied_pointers(self.f)
        for p, arg in zip(self.f.params, self.fn.args):
            arg.name = p.name
            if isinstance(p.type, PointerType):
                arg.add_attribute("noalias")
                if p not in copied:
                    arg.add_attribute("captures(none)")
            elif p.type == BOOL:
                arg.add_attribute("zeroext")
            elif p.type.is_int and p.type.bits < 32:
                arg.add_attribute("signext")
            self.allocas.store(arg, self.declare(p, p.name + ".addr"))
        body = self.fn.append_basic_block("body")
        self.b.position_at_end(body)
        if self.f.doc:
            self.comment(self.f.doc)
        self.block(self.f.body)
        if not self.b.block.is_terminated:
            self.b.ret(ir.Constant(I32_T, n.STATUS_OK))
        if self.oom_block is not None:
            self.enter(self.oom_block)
            self.b.ret(ir.Constant(I32_T, n.STATUS_OUT_OF_MEMORY))
        self.allocas.branch(body)
        return self.fn

    # -------------------------------------------------------- statements
    def stmt(self, s):
        method = getattr(self, "stmt_" + type(s).__name__, None)
        if method is None:
            raise self.error(f"not a statement: {type(s).__name__}")
        method(s)

    def block(self, b: n.Block):
        self.scopes.append({})
        for s in b.body:
            self.stmt(s)
        self.scopes.pop()

    stmt_Block = block

    def comment(self, text: str):
        for line in text.splitlines() or [""]:
            self.b.comment(line)

    def stmt_Comment(self, s: n.Comment):
        self.comment(s.text)

    def stmt_Declare(self, s: n.Declare):
        value = None
        if s.init is not None:
            if s.init.type != s.var.type:
                raise self.error(f"{s.var.name} is {s.var.type}, its initial value "
                                 f"{s.init.type}", s)
            value = self.expr(s.init)
        slot = self.declare(s.var)
        if value is None and isinstance(s.var.type, PointerType):
            value = ir.Constant(PTR, None)  # realloc/free of a fresh pointer variable is safe
        if value is not None:
            self.b.store(value, slot)

    def stmt_Assign(self, s: n.Assign):
        if s.value.type != s.var.type:
            raise self.error(f"{s.var.name} is {s.var.type}, the value {s.value.type}", s)
        v = s.value
        if (self.vector_loops and isinstance(v, n.Binary) and v.op == "+" and v.type.is_float
                and v.lhs == s.var):
            value = self.b.fadd(self.expr(v.lhs), self.expr(v.rhs), flags=self.ml.vector_sum_flags)
        else:
            value = self.expr(s.value)
        self.b.store(value, self.slot(s.var))

    def address(self, array, index, node):
        if not isinstance(array.type, PointerType):
            raise self.error(f"indexing a non-pointer of type {array.type}", node)
        base = self.expr(array)
        idx = self.expr(index)
        if not (isinstance(index.type, ScalarType) and index.type.is_int):
            raise self.error(f"index of type {index.type}", node)
        name = f"{array.name}.at" if isinstance(array, n.Var) else ""
        return self.b.gep(base, [idx], inbounds=True, source_etype=memory_type(array.type.elem),
                          name=name)

    def stmt_Store(self, s: n.Store):
        elem = s.array.type.elem if isinstance(s.array.type, PointerType) else None
        if elem is not None and s.value.type != elem:
            raise self.error(f"storing {s.value.type} into an array of {elem}", s)
        address = self.address(s.array, s.index, s)
        value = self.expr(s.value)
        if elem == BOOL:
            value = self.b.zext(value, I8_T)
        self.b.store(value, address)

    def stmt_AtomicAdd(self, s: n.AtomicAdd):
        elem = s.array.type.elem if isinstance(s.array.type, PointerType) else None
        if elem is not None and s.value.type != elem:
            raise self.error(f"adding {s.value.type} into an array of {elem}", s)
        if not isinstance(elem, ScalarType) or elem in (BOOL, BF16):
            raise UnsupportedError(f"the CPU backend has no atomic add on {elem} "
                                   f"(in function {self.f.name!r}: {print_ir(s)})")
        address = self.address(s.array, s.index, s)
        value = self.expr(s.value)
        self.b.atomic_rmw("fadd" if elem.is_float else "add", address, value, "monotonic")

    def stmt_For(self, s: n.For):
        var = s.var
        if not (isinstance(var.type, ScalarType) and var.type.is_int):
            raise self.error(f"loop variable {var.name} is {var.type}, not an integer", s)
        for bound in (s.start, s.end):
            if bound.type != var.type:
                raise self.error(f"loop {var.name} ({var.type}) has a bound of type "
                                 f"{bound.type}: {print_ir(bound)}")
        notes = [f"{k} {v}" for k, v in (("parallel", s.parallel), ("vectorize", s.vectorize),
                                           ("unroll", s.unroll)) if v]
        if s.vectorize > 1 and s.masked_tail:
            notes.append("masked tail")
        self.comment(f"for {var.name} in [{print_ir(s.start)}, {print_ir(s.end)})"
                     + (f"  ({', '.join(notes)})" if notes else ""))
        start = self.expr(s.start)
        end = self.expr(s.end)
        self.scopes.append({})
        slot = self.declare(var)
        self.b.store(start, slot)
        label = f"for.{var.name}"
        header, body = self.new_block(label + ".header"), self.new_block(label + ".body")
        latch, exit_ = self.new_block(label + ".latch"), self.new_block(label + ".exit")
        self.b.branch(header)
        self.enter(header)
        iv = self.b.load(slot, name=var.name)
        self.b.cbranch(self.b.icmp_signed("<", iv, end, name=label + ".cond"), body, exit_)
        self.enter(body)
        vector = s.vectorize > 1
        self.vector_loops += vector
        self.block(s.body)
        self.vector_loops -= vector
        self.branch_to(latch)
        self.enter(latch)
        iv = self.b.load(slot, name=var.name)
        self.b.store(self.b.add(iv, ir.Constant(iv.type, 1), name=var.name + ".next",
                                flags=("nsw",)), slot)
        backedge = self.b.branch(header)
        backedge.set_metadata("llvm.loop", self.ml.loop_id(s))
        self.scopes.pop()
        self.enter(exit_)

    def stmt_While(self, s: n.While):
        if s.cond.type != BOOL:
            raise self.error(f"while condition of type {s.cond.type}", s.cond)
        cond, body, end = (self.new_block("while." + x) for x in ("cond", "body", "end"))
        self.b.branch(cond)
        self.enter(cond)
        self.b.cbranch(self.expr(s.cond), body, end)
        self.enter(body)
        self.block(s.body)
        self.branch_to(cond)
        self.enter(end)

    def stmt_If(self, s: n.If):
        if s.cond.type != BOOL:
            raise self.error(f"if condition of type {s.cond.type}", s.cond)
        c = self.expr(s.cond)
        then, end = self.new_block("if.then"), self.new_block("if.end")
        otherwise = self.new_block("if.else") if s.otherwise and s.otherwise.body else None
        self.b.cbranch(c, then, otherwise or end)
        self.enter(then)
        self.block(s.then)
        self.branch_to(end)
        if otherwise is not None:
            self.enter(otherwise)
            self.block(s.otherwise)
            self.branch_to(end)
        self.enter(end)

    def byte_count(self, count_expr, elem, node):
        """(element count as i64, byte count >= 1); a negative count or one whose byte
        count does not fit in an i64 jumps to the out-of-memory exit."""
        if not (isinstance(count_expr.type, ScalarType) and count_expr.type.is_int):
            raise self.error(f"element count of type {count_expr.type}", node)
        count = self.to_i64(self.expr(count_expr), count_expr.type)
        size = sizeof(elem)
        too_big = self.b.icmp_unsigned(">", count, ir.Constant(I64_T, (2**63 - 1) // size),
                                       name="too.big")
        ok = self.new_block("size.ok")
        self.b.cbranch(too_big, self.out_of_memory(), ok)
        self.enter(ok)
        count = self.at_least_one(count)
        return count, self.b.mul(count, ir.Constant(I64_T, size), name="bytes", flags=("nuw",))

    def at_least_one(self, value):
        """max(value, 1): a zero-size request still gets a pointer that is not null."""
        is_zero = self.b.icmp_unsigned("==", value, ir.Constant(I64_T, 0))
        return self.b.select(is_zero, ir.Constant(I64_T, 1), value)

    def check_allocation(self, p, var):
        ok = self.new_block(f"{var.name}.allocated")
        failed = self.b.icmp_unsigned("==", p, ir.Constant(PTR, None), name=f"{var.name}.failed")
        self.b.cbranch(failed, self.out_of_memory(), ok)
        self.enter(ok)

    def stmt_Allocate(self, s: n.Allocate):
        var = s.var
        if not isinstance(var.type, PointerType):
            raise self.error(f"allocating into {var.name} of non-pointer type {var.type}", s)
        count, nbytes = self.byte_count(s.count, var.type.elem, s)
        if s.zero:
            calloc = self.ml.external("calloc", PTR, [I64_T, I64_T])
            p = self.b.call(calloc, [count, ir.Constant(I64_T, sizeof(var.type.elem))],
                            name=var.name)
        else:
            malloc = self.ml.external("malloc", PTR, [I64_T])
            p = self.b.call(malloc, [nbytes], name=var.name)
        self.check_allocation(p, var)
        self.b.store(p, self.declare(var))

    def stmt_Reallocate(self, s: n.Reallocate):
        var = s.var
        if not isinstance(var.type, PointerType):
            raise self.error(f"reallocating {var.name} of non-pointer type {var.type}", s)
        slot = self.slot(var)
        _, nbytes = self.byte_count(s.count, var.type.elem, s)
        realloc = self.ml.external("realloc", PTR, [PTR, I64_T])
        p = self.b.call(realloc, [self.b.load(slot, name=var.name), nbytes], name=var.name)
        self.check_allocation(p, var)
        self.b.store(p, slot)

    def stmt_Free(self, s: n.Free):
        if not isinstance(s.var.type, PointerType):
            raise self.error(f"freeing {s.var.name} of non-pointer type {s.var.type}", s)
        free = self.ml.external("free", ir.VoidType(), [PTR])
        self.b.call(free, [self.b.load(self.slot(s.var), name=s.var.name)])

    def stmt_Sort(self, s: n.Sort):
        elem = s.array.type.elem if isinstance(s.array.type, PointerType) else None
        if not isinstance(elem, ScalarType) or elem in (BOOL, BF16):
            raise UnsupportedError(f"the CPU backend cannot sort an array of {elem} "
                                   f"(in function {self.f.name!r}: {print_ir(s)})")
        base = self.address(s.array, s.start, s)
        count = self.to_i64(self.expr(s.count), s.count.type)
        self.b.call(self.ml.sort_helper(elem), [base, count])

    def stmt_Prefetch(self, s: n.Prefetch):
        """``llvm.prefetch`` of the element's line: a read, kept in every cache level."""
        if not isinstance(s.array.type, PointerType):
            raise self.error(f"prefetching from a non-pointer of type {s.array.type}", s)
        base = self.expr(s.array)
        idx = self.to_i64(self.expr(s.index), s.index.type)
        # no ``inbounds``: the element may lie past the array, which a prefetch allows
        address = self.b.gep(base, [idx], source_etype=memory_type(s.array.type.elem))
        fn = self.ml.external("llvm.prefetch.p0", ir.VoidType(), [PTR, I32_T, I32_T, I32_T])
        self.b.call(fn, [address, ir.Constant(I32_T, 0), ir.Constant(I32_T, 3), ir.Constant(I32_T, 1)])

    def stmt_Gemm(self, s: n.Gemm):
        """Row-major ``C = op(A)·op(B)`` is column-major ``Cᵀ = op(B)ᵀ·op(A)ᵀ``: call
        Fortran gemm with B first, sizes (n, m, k), every argument by reference."""
        elem = s.c.type.elem if isinstance(s.c.type, PointerType) else None
        if elem not in (F32, F64) or any(x.type != s.c.type for x in (s.a, s.b)):
            raise self.error("Gemm needs three f32 or three f64 pointers", s)
        lt = register_type(elem)
        sizes = []
        for name, e in (("m", s.m), ("n", s.n), ("k", s.k), ("lda", s.lda), ("ldb", s.ldb), ("ldc", s.ldc)):
            v = self.to_i64(self.expr(e), e.type)
            too_big = self.b.icmp_unsigned(">", v, ir.Constant(I64_T, 2**31 - 1), name=f"{name}.too.big")
            ok = self.new_block(f"gemm.{name}.ok")
            fail = self.new_block(f"gemm.{name}.too.big")
            self.b.cbranch(too_big, fail, ok)
            self.enter(fail)
            self.b.ret(ir.Constant(I32_T, n.STATUS_TOO_LARGE_FOR_BLAS))
            self.enter(ok)
            sizes.append(self.b.trunc(v, I32_T, name=name))
        m, n_, k, lda, ldb, ldc = sizes

        def by_ref(value, t, name):
            slot = self.allocas.alloca(t, name=name)  # entry-block slot, like a variable's
            slot.type = PTR
            self.b.store(value, slot)
            return slot
        trans = {False: ir.Constant(I8_T, ord("N")), True: ir.Constant(I8_T, ord("T"))}
        fn = self.ml.external("spcomp_blas_" + ("dgemm" if elem == F64 else "sgemm"), ir.VoidType(),
                              [PTR] * 13)
        self.b.call(fn, [by_ref(trans[s.trans_b], I8_T, "gemm.transa"), by_ref(trans[s.trans_a], I8_T, "gemm.transb"),
                         by_ref(n_, I32_T, "gemm.m"), by_ref(m, I32_T, "gemm.n"), by_ref(k, I32_T, "gemm.k"),
                         by_ref(ir.Constant(lt, float(s.alpha)), lt, "gemm.alpha"),
                         self.expr(s.b), by_ref(ldb, I32_T, "gemm.lda"),
                         self.expr(s.a), by_ref(lda, I32_T, "gemm.ldb"),
                         by_ref(ir.Constant(lt, float(s.beta)), lt, "gemm.beta"),
                         self.expr(s.c), by_ref(ldc, I32_T, "gemm.ldc")])

    def stmt_Return(self, s: n.Return):
        self.b.ret(ir.Constant(I32_T, int(s.status)))
        self.enter(self.new_block("after.return"))

    def stmt_PollInterrupt(self, s: n.PollInterrupt):
        flag = self.b.load_atomic(self.ml.external_i32(INTERRUPT_SYMBOL), "monotonic", 4, typ=I32_T,
                                  name="interrupt")
        stop, go = self.new_block("interrupted"), self.new_block("not.interrupted")
        self.b.cbranch(self.b.icmp_signed("!=", flag, ir.Constant(I32_T, 0)), stop, go).set_weights([1, 1 << 20])
        self.enter(stop)
        for v in s.free:
            self.stmt_Free(n.Free(v))
        self.b.ret(ir.Constant(I32_T, n.STATUS_INTERRUPTED))
        self.enter(go)

    # ------------------------------------------------------- expressions
    def expr(self, e):
        method = getattr(self, "expr_" + type(e).__name__, None)
        if method is None:
            raise self.error(f"not an expression: {type(e).__name__}")
        return method(e)

    def expr_Var(self, e: n.Var):
        return self.b.load(self.slot(e), name=e.name)

    def expr_Const(self, e: n.Const):
        t = e.type
        if t == BOOL:
            return ir.Constant(I1_T, int(bool(e.value)))
        if t == BF16:
            return ir.Constant(I16_T, _wrap_int(bf16_bits(float(e.value)), 16))
        if t.is_float:
            return ir.Constant(register_type(t), float(e.value))
        return ir.Constant(register_type(t), _wrap_int(e.value, t.bits))

    def expr_Load(self, e: n.Load):
        address = self.address(e.array, e.index, e)
        elem = e.array.type.elem
        value = self.b.load(address, typ=memory_type(elem))
        if elem == BOOL:
            value = self.b.icmp_unsigned("!=", value, ir.Constant(I8_T, 0))
        return value

    def lazy(self, cond_value, then_expr, else_expr, result_type, label):
        """``cond ? then : else`` with branches: only the chosen operand is evaluated.

        ``then_expr``/``else_expr`` are IR expressions or ready LLVM values."""
        then, other, end = (self.new_block(f"{label}.{x}") for x in ("true", "false", "end"))
        self.b.cbranch(cond_value, then, other)
        incoming = []
        for block, e in ((then, then_expr), (other, else_expr)):
            self.enter(block)
            value = e if isinstance(e, ir.Value) else self.expr(e)
            incoming.append((value, self.b.block))
            self.b.branch(end)
        self.enter(end)
        phi = self.b.phi(register_type(result_type), name=label)
        for value, block in incoming:
            phi.add_incoming(value, block)
        return phi

    def short_circuit(self, op: str, lhs, rhs_expr):
        """C's ``lhs && rhs`` / ``lhs || rhs``: ``rhs`` evaluated only when it decides."""
        label = "and" if op == "&&" else "or"
        before = self.b.block
        rhs_block, end = self.new_block(f"{label}.rhs"), self.new_block(f"{label}.end")
        if op == "&&":
            self.b.cbranch(lhs, rhs_block, end)
        else:
            self.b.cbranch(lhs, end, rhs_block)
        self.enter(rhs_block)
        rhs = self.expr(rhs_expr)
        rhs_end = self.b.block
        self.b.branch(end)
        self.enter(end)
        phi = self.b.phi(I1_T, name=label)
        phi.add_incoming(ir.Constant(I1_T, int(op == "||")), before)
        phi.add_incoming(rhs, rhs_end)
        return phi

    def expr_Binary(self, e: n.Binary):
        op = e.op
        t = self.same_type(e, e.lhs, e.rhs)
        if op in ("&&", "||"):
            if t != BOOL:
                raise self.error(f"{op} on {t}", e)
            lhs = self.expr(e.lhs)
            if _may_trap(e.rhs):
                return self.short_circuit(op, lhs, e.rhs)
            rhs = self.expr(e.rhs)
            return self.b.and_(lhs, rhs) if op == "&&" else self.b.or_(lhs, rhs)
        if isinstance(t, PointerType) or t == BF16:
            raise self.error(f"arithmetic on {t}" + (" (bf16 is storage-only: cast to f32)"
                                                      if t == BF16 else ""), e)
        a, b = self.expr(e.lhs), self.expr(e.rhs)
        bld = self.b
        if t.is_float:
            ff = self.ff
            simple = {"+": bld.fadd, "-": bld.fsub, "*": bld.fmul, "/": bld.fdiv, "%": bld.frem}
            if op in simple:
                return simple[op](a, b, flags=ff)
            if op == "!=":
                return bld.fcmp_unordered("!=", a, b)
            if op in ("<", "<=", ">", ">=", "=="):
                return bld.fcmp_ordered(op, a, b)
            if op in ("min", "max"):
                pick = bld.fcmp_ordered("<" if op == "min" else ">", a, b)
                return bld.select(pick, a, b, name=op)
        elif t == BOOL:
            if op in ("==", "!="):
                return bld.icmp_unsigned(op, a, b)
            if op in ("&", "min"):
                return bld.and_(a, b)
            if op in ("|", "max"):
                return bld.or_(a, b)
        else:
            if op in ("+", "-", "*"):
                fn = {"+": bld.add, "-": bld.sub, "*": bld.mul}[op]
                return fn(a, b, flags=("nsw",))
            simple = {"/": bld.sdiv, "%": bld.srem, "<<": bld.shl, ">>": bld.ashr,
                      "&": bld.and_, "|": bld.or_}
            if op in simple:
                return simple[op](a, b)
            if op in ("<", "<=", ">", ">=", "==", "!="):
                return bld.icmp_signed(op, a, b)
            if op in ("min", "max"):
                pick = bld.icmp_signed("<" if op == "min" else ">", a, b)
                return bld.select(pick, a, b, name=op)
        raise self.error(f"operator {op!r} on {t}", e)

    def expr_Unary(self, e: n.Unary):
        t = e.operand.type
        if isinstance(t, PointerType) or t == BF16:
            raise self.error(f"unary {e.op} on {t}", e)
        x = self.expr(e.operand)
        if e.op == "-":
            if t.is_float:
                return self.b.fneg(x)
            if t.is_int:
                return self.b.neg(x)
        elif e.op == "!":
            if t == BOOL:
                return self.b.not_(x)
            if t.is_int:
                return self.b.zext(self.b.icmp_signed("==", x, ir.Constant(x.type, 0)), x.type)
        raise self.error(f"unary {e.op!r} on {t}", e)

    def expr_Call(self, e: n.Call):
        t = e.type
        if e.func in n.INT_INTRINSICS:
            if t != I64 or len(e.args) != 1 or e.args[0].type != I64:
                raise self.error(f"intrinsic {e.func} takes and returns one i64", e)
            if e.func == "popcount":
                fn = self.ml.external("llvm.ctpop.i64", I64_T, [I64_T])
                return self.b.call(fn, [self.expr(e.args[0])], name=e.func)
            if e.func == "clear_lowest":  # a wrapping sub (no nsw): 0 and bit 63 alone are fine
                x = self.expr(e.args[0])
                return self.b.and_(x, self.b.sub(x, ir.Constant(I64_T, 1)), name=e.func)
            fn = self.ml.external("llvm.cttz.i64", I64_T, [I64_T, I1_T])  # defined (64) for 0
            return self.b.call(fn, [self.expr(e.args[0]), ir.Constant(I1_T, 0)], name=e.func)
        if e.func not in n.INTRINSICS:
            raise self.error(f"unknown intrinsic {e.func!r}", e)
        if t not in (F32, F64):
            raise self.error(f"intrinsic {e.func} on {t} (only f32 and f64)", e)
        if len(e.args) != 1 or e.args[0].type != t:
            raise self.error(f"intrinsic {e.func} takes one {t} argument", e)
        x = self.expr(e.args[0])
        lt = register_type(t)
        suffix = "f32" if t == F32 else "f64"
        if e.func in ("tanh", "erf"):
            fn = self.ml.external(e.func + ("f" if t == F32 else ""), lt, [lt])
        else:
            name = {"abs": "fabs"}.get(e.func, e.func)
            fn = self.ml.external(f"llvm.{name}.{suffix}", lt, [lt])
        return self.b.call(fn, [x], name=e.func)

    def expr_Select(self, e: n.Select):
        if e.cond.type != BOOL:
            raise self.error(f"select condition of type {e.cond.type}", e)
        t = self.same_type(e, e.if_true, e.if_false)
        c = self.expr(e.cond)
        if _may_trap(e.if_true) or _may_trap(e.if_false):
            return self.lazy(c, e.if_true, e.if_false, t, "select")
        return self.b.select(c, self.expr(e.if_true), self.expr(e.if_false))

    def expr_Cast(self, e: n.Cast):
        src, dst = e.value.type, e.type
        if isinstance(src, PointerType) or not isinstance(dst, ScalarType):
            raise self.error(f"cast from {src} to {dst}", e)
        return self.convert(self.expr(e.value), src, dst)

    def convert(self, x, src: ScalarType, dst: ScalarType):
        b = self.b
        if src == dst:
            return x
        if src == BF16:
            as_f32 = b.bitcast(b.shl(b.zext(x, I32_T), ir.Constant(I32_T, 16)), F32_T)
            return self.convert(as_f32, F32, dst)
        if dst == BF16:
            f = self.convert(x, src, F32)
            bits = b.bitcast(f, I32_T)
            lsb = b.and_(b.lshr(bits, ir.Constant(I32_T, 16)), ir.Constant(I32_T, 1))
            rounded = b.add(b.add(bits, ir.Constant(I32_T, 0x7FFF)), lsb)
            quiet_nan = b.or_(b.lshr(bits, ir.Constant(I32_T, 16)), ir.Constant(I32_T, 0x0040))
            is_nan = b.fcmp_unordered("uno", f, f)
            top = b.select(is_nan, quiet_nan, b.lshr(rounded, ir.Constant(I32_T, 16)))
            return b.trunc(top, I16_T, name="bf16")
        dt = register_type(dst)
        if src == BOOL:
            return b.uitofp(x, dt) if dst.is_float else b.zext(x, dt)
        if dst == BOOL:
            if src.is_float:
                return b.fcmp_unordered("!=", x, ir.Constant(x.type, 0.0))
            return b.icmp_signed("!=", x, ir.Constant(x.type, 0))
        if src.is_int and dst.is_int:
            return b.sext(x, dt) if dst.bits > src.bits else b.trunc(x, dt)
        if src.is_int:
            return b.sitofp(x, dt)
        if dst.is_int:
            return b.fptosi(x, dt)
        return b.fpext(x, dt) if dst.bits > src.bits else b.fptrunc(x, dt)
