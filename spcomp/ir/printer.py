"""Print kernel IR as C-like text (``Kernel.ir``).

:class:`CPrinter` is written to be subclassed: the CUDA backend derives its
emitter from it and overrides only what differs (qualifiers, parallel loops,
atomics), so the two texts stay alike.
"""
from __future__ import annotations

from . import nodes as n
from .types import BF16, BOOL, F32, F64, PointerType


class CPrinter:
    indent_unit = "  "

    # ------------------------------------------------------------- types
    def type_name(self, t) -> str:
        if isinstance(t, PointerType):
            return f"{self.type_name(t.elem)}*"
        return t.c_name

    # ------------------------------------------------------- expressions
    def expr(self, e) -> str:
        method = getattr(self, "expr_" + type(e).__name__)
        return method(e)

    def expr_Var(self, e: n.Var) -> str:
        return e.name

    def expr_Const(self, e: n.Const) -> str:
        if e.type == BOOL:
            return "true" if e.value else "false"
        if e.type.is_float:
            v = float(e.value)
            if v != v:
                return "NAN"
            if v in (float("inf"), float("-inf")):
                return "INFINITY" if v > 0 else "-INFINITY"
            text = repr(v)
            return text + ("f" if e.type == F32 else "")
        return str(int(e.value))

    def expr_Load(self, e: n.Load) -> str:
        return f"{self.expr(e.array)}[{self.expr(e.index)}]"

    def expr_Binary(self, e: n.Binary) -> str:
        a, b = self.expr(e.lhs), self.expr(e.rhs)
        if e.op in ("min", "max"):
            return f"{e.op}({a}, {b})"
        if e.op == "%" and getattr(e.lhs.type, "is_float", False):
            return f"{'fmodf' if e.lhs.type == F32 else 'fmod'}({a}, {b})"
        return f"({a} {e.op} {b})"

    def expr_Unary(self, e: n.Unary) -> str:
        inner = self.expr(e.operand)
        if inner.startswith(("-", "!")) or (isinstance(e.operand, n.Const) and e.operand.value < 0):
            inner = f"({inner})"
        return f"{e.op}{inner}"

    def expr_Call(self, e: n.Call) -> str:
        name = e.func
        if name in n.COMPOUND_INTRINSICS:  # one name for every float type
            return f"{name}({', '.join(self.expr(a) for a in e.args)})"
        if e.type == F32:
            name = {"abs": "fabsf"}.get(name, name + "f")
        elif name == "abs":
            name = "fabs"
        return f"{name}({', '.join(self.expr(a) for a in e.args)})"

    def expr_Select(self, e: n.Select) -> str:
        return f"({self.expr(e.cond)} ? {self.expr(e.if_true)} : {self.expr(e.if_false)})"

    def expr_Cast(self, e: n.Cast) -> str:
        # bf16 is stored as the upper half of a float: name the conversion, not a C cast
        if e.type == BF16:
            return f"float_to_bf16({self.expr(e.value)})"
        if getattr(e.value, "type", None) == BF16:
            return f"bf16_to_float({self.expr(e.value)})"
        return f"({self.type_name(e.type)}){self.expr(e.value)}"

    # -------------------------------------------------------- statements
    def stmt(self, s, depth: int) -> list[str]:
        method = getattr(self, "stmt_" + type(s).__name__)
        return method(s, depth)

    def line(self, depth: int, text: str) -> str:
        return self.indent_unit * depth + text

    def block_lines(self, b: n.Block, depth: int) -> list[str]:
        out = []
        for s in b.body:
            out.extend(self.stmt(s, depth))
        return out

    def stmt_Comment(self, s: n.Comment, d):
        return [self.line(d, f"// {line}") for line in s.text.splitlines() or [""]]

    def stmt_Declare(self, s: n.Declare, d):
        init = f" = {self.expr(s.init)}" if s.init is not None else ""
        return [self.line(d, f"{self.type_name(s.var.type)} {s.var.name}{init};")]

    def stmt_Assign(self, s: n.Assign, d):
        v = s.value
        if isinstance(v, n.Binary) and v.op in "+-*" and v.lhs == s.var:
            return [self.line(d, f"{s.var.name} {v.op}= {self.expr(v.rhs)};")]
        return [self.line(d, f"{s.var.name} = {self.expr(v)};")]

    def stmt_Store(self, s: n.Store, d):
        target = f"{self.expr(s.array)}[{self.expr(s.index)}]"
        v = s.value
        if (isinstance(v, n.Binary) and v.op in "+-" and isinstance(v.lhs, n.Load)
                and v.lhs.array == s.array and v.lhs.index == s.index):
            return [self.line(d, f"{target} {v.op}= {self.expr(v.rhs)};")]
        return [self.line(d, f"{target} = {self.expr(v)};")]

    def stmt_AtomicAdd(self, s: n.AtomicAdd, d):
        return [self.line(d, f"atomic_add(&{self.expr(s.array)}[{self.expr(s.index)}], {self.expr(s.value)});")]

    def stmt_Block(self, s: n.Block, d):
        return [self.line(d, "{")] + self.block_lines(s, d + 1) + [self.line(d, "}")]

    def loop_annotation(self, s: n.For) -> str:
        notes = []
        if s.parallel:
            notes.append(f"parallel: {s.parallel}")
        if s.vectorize:
            notes.append(f"vectorize: {s.vectorize}" + (", masked tail" if s.masked_tail else ""))
        if s.unroll:
            notes.append(f"unroll: {s.unroll}")
        return f"  // {', '.join(notes)}" if notes else ""

    def stmt_For(self, s: n.For, d):
        v = s.var.name
        head = (f"for ({self.type_name(s.var.type)} {v} = {self.expr(s.start)}; "
                f"{v} < {self.expr(s.end)}; {v}++) {{{self.loop_annotation(s)}")
        return [self.line(d, head)] + self.block_lines(s.body, d + 1) + [self.line(d, "}")]

    def stmt_While(self, s: n.While, d):
        return ([self.line(d, f"while ({self.expr(s.cond)}) {{")]
                + self.block_lines(s.body, d + 1) + [self.line(d, "}")])

    def stmt_If(self, s: n.If, d):
        out = [self.line(d, f"if ({self.expr(s.cond)}) {{")] + self.block_lines(s.then, d + 1)
        other = s.otherwise
        while other is not None and len(other.body) == 1 and isinstance(other.body[0], n.If):
            inner = other.body[0]
            out.append(self.line(d, f"}} else if ({self.expr(inner.cond)}) {{"))
            out.extend(self.block_lines(inner.then, d + 1))
            other = inner.otherwise
        if other is not None and other.body:
            out.append(self.line(d, "} else {"))
            out.extend(self.block_lines(other, d + 1))
        out.append(self.line(d, "}"))
        return out

    def stmt_Allocate(self, s: n.Allocate, d):
        t = self.type_name(s.var.type)
        elem = self.type_name(s.var.type.elem)
        fn = (f"calloc({self.expr(s.count)}, sizeof({elem}))" if s.zero
              else f"malloc(sizeof({elem}) * {self.expr(s.count)})")
        out = [self.line(d, f"{t} {s.var.name} = ({t}){fn};")]
        if s.free:
            leave = "".join(f"free({v.name}); " for v in s.free) + f"return {n.STATUS_OUT_OF_MEMORY};"
            out.append(self.line(d, f"if (!{s.var.name}) {{ {leave} }}"))
        return out

    def stmt_Reallocate(self, s: n.Reallocate, d):
        t = self.type_name(s.var.type)
        elem = self.type_name(s.var.type.elem)
        out = [self.line(d, f"{s.var.name} = ({t})realloc({s.var.name}, sizeof({elem}) * {self.expr(s.count)});")]
        if s.free:
            leave = "".join(f"free({v.name}); " for v in s.free) + f"return {n.STATUS_OUT_OF_MEMORY};"
            out.append(self.line(d, f"if (!{s.var.name}) {{ {leave} }}"))
        return out

    def stmt_Free(self, s: n.Free, d):
        return [self.line(d, f"free({s.var.name});")]

    def stmt_Sort(self, s: n.Sort, d):
        return [self.line(d, f"sort_ascending({self.expr(s.array)} + {self.expr(s.start)}, {self.expr(s.count)});")]

    def stmt_Prefetch(self, s: n.Prefetch, d):
        return [self.line(d, f"__builtin_prefetch(&{self.expr(s.array)}[{self.expr(s.index)}]);")]

    def stmt_Gemm(self, s: n.Gemm, d):
        elem = s.c.type.elem if isinstance(s.c.type, PointerType) else None
        fn = "cblas_dgemm" if elem == F64 else "cblas_sgemm"
        suffix = "" if elem == F64 else "f"
        one = f"{float(s.alpha)!r}{suffix}"
        zero = f"{float(s.beta)!r}{suffix}"
        ta = "CblasTrans" if s.trans_a else "CblasNoTrans"
        tb = "CblasTrans" if s.trans_b else "CblasNoTrans"
        e = self.expr
        return [self.line(d, f"{fn}(CblasRowMajor, {ta}, {tb}, {e(s.m)}, {e(s.n)}, {e(s.k)}, {one}, "
                             f"{e(s.a)}, {e(s.lda)}, {e(s.b)}, {e(s.ldb)}, {zero}, {e(s.c)}, {e(s.ldc)});")]

    def stmt_Return(self, s: n.Return, d):
        return [self.line(d, f"return {s.status};")]

    def stmt_PollInterrupt(self, s: n.PollInterrupt, d):
        leave = "".join(f"free({v.name}); " for v in s.free) + f"return {n.STATUS_INTERRUPTED};"
        return [self.line(d, f"if (interrupt_requested()) {{ {leave} }}  // Ctrl-C: stop early")]

    # --------------------------------------------------------- functions
    def param(self, p: n.Var) -> str:
        if isinstance(p.type, PointerType):
            return f"{self.type_name(p.type)} restrict {p.name}"
        return f"{self.type_name(p.type)} {p.name}"

    def function(self, f: n.Function) -> str:
        lines = []
        if f.doc:
            lines += [f"// {line}" for line in f.doc.splitlines()]
        params = ",\n    ".join(self.param(p) for p in f.params)
        lines.append(f"int32_t {f.name}(\n    {params}) {{")
        lines += self.block_lines(f.body, 1)
        lines.append(self.line(1, "return 0;") if not (f.body.body and isinstance(f.body.body[-1], n.Return)) else "")
        lines.append("}")
        return "\n".join(l for l in lines if l != "")

    def module(self, m: n.Module) -> str:
        return "\n\n".join(self.function(f) for f in m.functions) + "\n"


def print_ir(node) -> str:
    """C-like text for a Module, Function, statement or expression."""
    p = CPrinter()
    if isinstance(node, n.Module):
        return p.module(node)
    if isinstance(node, n.Function):
        return p.function(node)
    if isinstance(node, (n.Var, n.Const, n.Load, n.Binary, n.Unary, n.Call, n.Select, n.Cast)):
        return p.expr(node)
    return "\n".join(p.stmt(node, 0))
