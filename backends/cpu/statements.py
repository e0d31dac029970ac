"""Kernel IR statements -> LLVM instructions: the statement half of a function's lowering.

:class:`StatementLowering` is mixed into :class:`~.function.FunctionLowering`: one
method per statement class (``stmt_For``...), plus the allocation checks and the
out-of-memory exit they share. The IR was verified (:mod:`spcomp.ir.verify`); the
conventions these methods implement (scopes, loops, allocation, ``Sort``, ``Gemm``,
``PollInterrupt``) are listed in :mod:`.codegen`'s docstring.
"""
from __future__ import annotations

from llvmlite import ir

from spcomp.errors import UnsupportedError
from spcomp.ir import nodes as n
from spcomp.ir.printer import print_ir
from spcomp.ir.types import BF16, BOOL, F64, PointerType
from spcomp.runtime.flags import INTERRUPT_SYMBOL

from .llvm_types import I8_T, I32_T, I64_T, PTR, memory_type, register_type, sizeof


class StatementLowering:
    """``stmt(s)`` / ``block(b)``: emit IR statement ``s`` at the builder's position."""

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
            value = self.expr(s.init)
        slot = self.declare(s.var)
        if value is None and isinstance(s.var.type, PointerType):
            value = ir.Constant(PTR, None)  # realloc/free of a fresh pointer variable is safe
        if value is not None:
            self.b.store(value, slot)

    def stmt_Assign(self, s: n.Assign):
        v = s.value
        if (self.vector_loops and isinstance(v, n.Binary) and v.op == "+" and v.type.is_float
                and v.lhs == s.var):
            value = self.b.fadd(self.expr(v.lhs), self.expr(v.rhs), flags=self.ml.vector_sum_flags)
        else:
            value = self.expr(s.value)
        self.b.store(value, self.slot(s.var))

    def address(self, array, index):
        """The address of ``array[index]`` (an ``inbounds`` GEP)."""
        base = self.expr(array)
        idx = self.expr(index)
        name = f"{array.name}.at" if isinstance(array, n.Var) else ""
        return self.b.gep(base, [idx], inbounds=True, source_etype=memory_type(array.type.elem),
                          name=name)

    def stmt_Store(self, s: n.Store):
        elem = s.array.type.elem
        address = self.address(s.array, s.index)
        value = self.expr(s.value)
        if elem == BOOL:
            value = self.b.zext(value, I8_T)
        self.b.store(value, address)

    def stmt_AtomicAdd(self, s: n.AtomicAdd):
        elem = s.array.type.elem
        if elem in (BOOL, BF16):  # the GPU has them (a compare-and-swap loop for bf16)
            raise UnsupportedError(f"the CPU backend has no atomic add on {elem} "
                                   f"(in function {self.f.name!r}: {print_ir(s)})")
        address = self.address(s.array, s.index)
        value = self.expr(s.value)
        self.b.atomic_rmw("fadd" if elem.is_float else "add", address, value, "monotonic")

    def stmt_For(self, s: n.For):
        var = s.var
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
        cond, body, end = (self.new_block("while." + x) for x in ("cond", "body", "end"))
        self.b.branch(cond)
        self.enter(cond)
        self.b.cbranch(self.expr(s.cond), body, end)
        self.enter(body)
        self.block(s.body)
        self.branch_to(cond)
        self.enter(end)

    def stmt_If(self, s: n.If):
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

    def byte_count(self, count_expr, elem, oom=None):
        """(element count as i64, byte count >= 1); a negative count or one whose byte
        count does not fit in an i64 jumps to the out-of-memory exit (``oom`` when given)."""
        count = self.to_i64(self.expr(count_expr), count_expr.type)
        size = sizeof(elem)
        too_big = self.b.icmp_unsigned(">", count, ir.Constant(I64_T, (2**63 - 1) // size),
                                       name="too.big")
        ok = self.new_block("size.ok")
        self.b.cbranch(too_big, oom or self.out_of_memory(), ok)
        self.enter(ok)
        count = self.at_least_one(count)
        return count, self.b.mul(count, ir.Constant(I64_T, size), name="bytes", flags=("nuw",))

    def at_least_one(self, value):
        """max(value, 1): a zero-size request still gets a pointer that is not null."""
        is_zero = self.b.icmp_unsigned("==", value, ir.Constant(I64_T, 0))
        return self.b.select(is_zero, ir.Constant(I64_T, 1), value)

    def check_allocation(self, p, var, oom=None):
        ok = self.new_block(f"{var.name}.allocated")
        failed = self.b.icmp_unsigned("==", p, ir.Constant(PTR, None), name=f"{var.name}.failed")
        self.b.cbranch(failed, oom or self.out_of_memory(), ok)
        self.enter(ok)

    def freeing_then_out_of_memory(self, s):
        """The exit of a failed ``s`` (Allocate or Reallocate): free ``s.free``, then the out-of-memory return;
        None (the shared exit) when it frees nothing."""
        if not s.free:
            return None
        here = self.b.block
        fail = self.new_block(f"{s.var.name}.failed.free")
        self.enter(fail)
        for v in s.free:
            self.stmt_Free(n.Free(v))
        self.b.branch(self.out_of_memory())
        self.b.position_at_end(here)
        return fail

    def stmt_Allocate(self, s: n.Allocate):
        var = s.var
        oom = self.freeing_then_out_of_memory(s)
        count, nbytes = self.byte_count(s.count, var.type.elem, oom)
        if s.zero:
            calloc = self.ml.external("calloc", PTR, [I64_T, I64_T])
            p = self.b.call(calloc, [count, ir.Constant(I64_T, sizeof(var.type.elem))],
                            name=var.name)
        else:
            malloc = self.ml.external("malloc", PTR, [I64_T])
            p = self.b.call(malloc, [nbytes], name=var.name)
        self.check_allocation(p, var, oom)
        self.b.store(p, self.declare(var))

    def stmt_Reallocate(self, s: n.Reallocate):
        var = s.var
        slot = self.slot(var)
        oom = self.freeing_then_out_of_memory(s)
        _, nbytes = self.byte_count(s.count, var.type.elem, oom)
        realloc = self.ml.external("realloc", PTR, [PTR, I64_T])
        p = self.b.call(realloc, [self.b.load(slot, name=var.name), nbytes], name=var.name)
        self.check_allocation(p, var, oom)
        self.b.store(p, slot)

    def stmt_Free(self, s: n.Free):
        free = self.ml.external("free", ir.VoidType(), [PTR])
        self.b.call(free, [self.b.load(self.slot(s.var), name=s.var.name)])

    def stmt_Sort(self, s: n.Sort):
        base = self.address(s.array, s.start)
        count = self.to_i64(self.expr(s.count), s.count.type)
        self.b.call(self.ml.sort_helper(s.array.type.elem), [base, count])

    def stmt_Prefetch(self, s: n.Prefetch):
        """``llvm.prefetch`` of the element's line: a read, kept in every cache level."""
        base = self.expr(s.array)
        idx = self.to_i64(self.expr(s.index), s.index.type)
        # no ``inbounds``: the element may lie past the array, which a prefetch allows
        address = self.b.gep(base, [idx], source_etype=memory_type(s.array.type.elem))
        fn = self.ml.external("llvm.prefetch.p0", ir.VoidType(), [PTR, I32_T, I32_T, I32_T])
        self.b.call(fn, [address, ir.Constant(I32_T, 0), ir.Constant(I32_T, 3), ir.Constant(I32_T, 1)])

    def stmt_Gemm(self, s: n.Gemm):
        """Row-major ``C = op(A)·op(B)`` is column-major ``Cᵀ = op(B)ᵀ·op(A)ᵀ``: call
        Fortran gemm with B first, sizes (n, m, k), every argument by reference."""
        elem = s.c.type.elem
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

