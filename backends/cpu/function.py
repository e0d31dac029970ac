"""One kernel IR function -> one LLVM function: the state the statement and expression
lowering share (builder, scopes, the out-of-memory exit) and the function's frame.

Every function returns ``i32`` (the status). Pointer parameters are ``ptr noalias``, and
``captures(none)`` unless the function copies the pointer value somewhere
(:func:`copied_pointers`); scalar parameters keep their IR type (``i1 zeroext``,
``i8``/``i16 signext``). Parameters are stored into entry-block ``alloca`` s
(``n.addr``) that SROA/mem2reg promote at O3.
"""
from __future__ import annotations

from llvmlite import ir

from spcomp.ir import nodes as n
from spcomp.ir.printer import print_ir
from spcomp.ir.types import BOOL, PointerType
from spcomp.ir.verify import KernelIRError

from .expressions import ExpressionLowering
from .llvm_types import I32_T, I64_T, PTR, register_type
from .statements import StatementLowering


def copied_pointers(f: n.Function) -> set:
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


class FunctionLowering(StatementLowering, ExpressionLowering):
    """Lowers one IR function into an ``ir.Function`` of the module ``ml`` lowers."""

    def __init__(self, ml, f: n.Function, linkage: str = "external"):
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
        raise self.error(f"variable {var.name} ({var.type}) used before it is declared")  # verified: never

    def to_i64(self, value, t):
        """An integer value of IR type ``t`` widened to i64."""
        return value if t.bits == 64 else self.b.sext(value, I64_T)

    def out_of_memory(self) -> ir.Block:
        if self.oom_block is None:
            self.oom_block = self.new_block("out.of.memory")
        return self.oom_block

    # ---------------------------------------------------------- function
    def lower(self) -> ir.Function:
        copied = copied_pointers(self.f)
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

