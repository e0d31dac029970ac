"""lower/heap_exits.py: every early exit frees the function's own live heap arrays."""
from __future__ import annotations

from spcomp.ir import nodes as n
from spcomp.ir.types import F64, I64, ptr
from spcomp.lower.heap_exits import free_on_early_exits


def _v(name):
    return n.Var(name, ptr(F64))


def _frees(s) -> list:
    return [v.name for v in s.free]


def test_exits_free_what_is_live_there_and_nothing_else():
    a, b, out, grown, i = _v("a"), _v("b"), _v("out"), _v("grown"), n.Var("i", I64)
    loop = n.For(i, n.i64(0), n.i64(4), n.block(
        n.Reallocate(grown, n.i64(8)),
        n.PollInterrupt(),
        n.If(n.Binary("<", i, n.i64(2)), n.block(n.Return(2)))))
    body = n.block(
        n.Allocate(a, n.i64(4)),
        n.Allocate(out, n.i64(4)), n.Store(out, n.i64(0), out),   # stored: the runtime's to free
        n.Allocate(b, n.i64(4)),
        loop,
        n.Free(b),
        n.Allocate(grown, n.i64(4)),   # after b's free: only a is live
        n.Free(a),
        n.Return(5),                   # nothing of its own is live
        n.Return(0))
    fn = free_on_early_exits(n.Function("f", (), body))
    s = fn.body.body
    assert _frees(s[0]) == [] and _frees(s[1]) == ["a"] and _frees(s[3]) == ["a"]
    realloc, poll, guard = s[4].body.body
    assert _frees(realloc) == ["a", "b"] and _frees(poll) == ["a", "b"]
    assert [type(x).__name__ for x in guard.then.body[0].body] == ["Free", "Free", "Return"]
    assert _frees(s[6]) == ["a"]
    assert s[8] == n.Return(5)


def test_an_array_freed_inside_a_branch_counts_as_freed_after_it():
    """(A leak on that path rather than a double free on the other.)"""
    a, b, flag = _v("a"), _v("b"), n.Var("flag", I64)
    body = n.block(
        n.Allocate(a, n.i64(4)),
        n.If(n.Binary("<", flag, n.i64(1)), n.block(n.Free(a))),
        n.Allocate(b, n.i64(4)),
        n.Free(b),
        n.Free(a))
    fn = free_on_early_exits(n.Function("f", (flag,), body))
    assert _frees(fn.body.body[2]) == []


def test_a_one_statement_kernel_frees_its_first_workspace_when_the_second_malloc_fails():
    """The pass runs on every CPU function, not only fused runs' (SpGEMM's three
    workspace mallocs: a failing second or third frees the ones before it)."""
    import spcomp
    ir = spcomp.compile("C[i,j] = A[i,k] * B[k,j]", formats={"A": "csr", "B": "csr", "C": "csr"}).ir
    assert "if (!workspace_bits) { free(workspace); return 2; }" in ir
    assert "if (!workspace_list) { free(workspace); free(workspace_bits); return 2; }" in ir
