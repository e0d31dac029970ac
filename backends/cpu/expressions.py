"""Kernel IR expressions -> LLVM values: the expression half of a function's lowering.

:class:`ExpressionLowering` is mixed into :class:`~.function.FunctionLowering`: one
method per expression class (``expr_Binary``...), the intrinsics, and the casts
(``convert``, bf16 included). The IR was verified (:mod:`spcomp.ir.verify`), so
operand types agree; the conventions these methods implement (short-circuit ``&&``
where the right side may trap, float compares and ``min``/``max``, the bit
intrinsics) are listed in :mod:`.codegen`'s docstring.
"""
from __future__ import annotations

from llvmlite import ir

from spcomp.ir import nodes as n
from spcomp.ir.types import BF16, BOOL, F32, ScalarType, bf16_bits

from . import math_functions
from .llvm_types import F32_T, I1_T, I8_T, I16_T, I32_T, I64_T, memory_type, register_type, wrap_int


def may_trap(e) -> bool:
    """Whether evaluating ``e`` may fault: it reads memory or divides integers."""
    if isinstance(e, n.Load):
        return True
    if isinstance(e, n.Binary):
        if e.op in ("/", "%") and not e.lhs.type.is_float:
            return True
        return may_trap(e.lhs) or may_trap(e.rhs)
    if isinstance(e, n.Unary):
        return may_trap(e.operand)
    if isinstance(e, n.Cast):
        return may_trap(e.value)
    if isinstance(e, n.Select):
        return may_trap(e.cond) or may_trap(e.if_true) or may_trap(e.if_false)
    if isinstance(e, n.Call):
        return any(may_trap(a) for a in e.args)
    return False


# intrinsics LLVM knows (it folds and vectorises them); the others are C library calls
LLVM_MATH = ("exp", "log", "log2", "log10", "sqrt", "abs", "sin", "cos", "floor", "ceil", "rint",
             "trunc", "pow")


class ExpressionLowering:
    """``expr(e)``: the LLVM value of IR expression ``e`` at the builder's position."""

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
            return ir.Constant(I16_T, wrap_int(bf16_bits(float(e.value)), 16))
        if t.is_float:
            return ir.Constant(register_type(t), float(e.value))
        return ir.Constant(register_type(t), wrap_int(e.value, t.bits))

    def expr_Load(self, e: n.Load):
        address = self.address(e.array, e.index)
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
        t = e.lhs.type
        if op in ("&&", "||"):
            lhs = self.expr(e.lhs)
            if may_trap(e.rhs):
                return self.short_circuit(op, lhs, e.rhs)
            rhs = self.expr(e.rhs)
            return self.b.and_(lhs, rhs) if op == "&&" else self.b.or_(lhs, rhs)
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
            if e.func == "popcount":
                fn = self.ml.external("llvm.ctpop.i64", I64_T, [I64_T])
                return self.b.call(fn, [self.expr(e.args[0])], name=e.func)
            if e.func == "clear_lowest":  # a wrapping sub (no nsw): 0 and bit 63 alone are fine
                x = self.expr(e.args[0])
                return self.b.and_(x, self.b.sub(x, ir.Constant(I64_T, 1)), name=e.func)
            if e.func == "clamp_index":  # unsigned: a negative coordinate is past ``last`` too
                c, last = (self.expr(a) for a in e.args)
                return self.b.select(self.b.icmp_unsigned("<=", c, last), c, last, name="clamped")
            fn = self.ml.external("llvm.cttz.i64", I64_T, [I64_T, I1_T])  # defined (64) for 0
            return self.b.call(fn, [self.expr(e.args[0]), ir.Constant(I1_T, 0)], name=e.func)
        xs = [self.expr(a) for a in e.args]
        lt = register_type(t)

        def libm(name, arity):
            if name in LLVM_MATH:
                llvm_name = {"abs": "fabs"}.get(name, name)
                return self.ml.external(f"llvm.{llvm_name}.{'f32' if t == F32 else 'f64'}", lt, [lt] * arity)
            # the C library's (resolved in the process, as Python links libm)
            return self.ml.external(name + ("f" if t == F32 else ""), lt, [lt] * arity)

        if e.func in n.COMPOUND_INTRINSICS:
            return math_functions.expand(self.b, libm, e.func, xs, lt)
        if e.func in ("erf", "exp", "tanh"):  # float32: vectorisable forms (math_functions)
            return getattr(math_functions, e.func)(self.b, libm, xs[0], lt)
        return self.b.call(libm(e.func, len(xs)), xs, name=e.func)

    def expr_Select(self, e: n.Select):
        t = e.if_true.type
        c = self.expr(e.cond)
        if may_trap(e.if_true) or may_trap(e.if_false):
            return self.lazy(c, e.if_true, e.if_false, t, "select")
        return self.b.select(c, self.expr(e.if_true), self.expr(e.if_false))

    def expr_Cast(self, e: n.Cast):
        src, dst = e.value.type, e.type
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
