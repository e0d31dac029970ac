"""Register blocking (spcomp/lower/regblock.py) on hand-built kernel IR: the nests it
rewrites and the ones it must leave alone (each refusal guards a wrong answer or a
slowdown the rewrite would cause)."""
from __future__ import annotations

from spcomp.ir import nodes as n
from spcomp.ir.types import F64, I32, I64, ptr
from spcomp.lower.context import Names
from spcomp.lower.regblock import block_rows

Y, X, V = n.Var("Y", ptr(F64)), n.Var("X", ptr(F64)), n.Var("V", ptr(F64))
CRD = n.Var("crd", ptr(I32))
P, K, J, NK = n.Var("p", I64), n.Var("k", I64), n.Var("j", I64), n.Var("N_k", I64)
ROW = n.Var("i", I64)


def spmm_nest(value=None, index=None, prelude=None, inner_extra=()):
    """for p in 0..10: j = crd[p]; for k in 0..N_k: Y[i*N_k + k] += V[p] * X[j*N_k + k]"""
    idx = index if index is not None else n.Binary("+", n.Binary("*", ROW, NK), K)
    rhs = value if value is not None else n.Binary(
        "*", n.Load(V, P), n.Load(X, n.Binary("+", n.Binary("*", J, NK), K)))
    inner = n.For(K, n.i64(0), NK, n.block(n.Store(Y, idx, n.Binary("+", n.Load(Y, idx), rhs)), *inner_extra))
    pre = prelude if prelude is not None else [n.Declare(J, n.Cast(n.Load(CRD, P), I64))]
    return n.For(P, n.i64(0), n.i64(10), n.block(*pre, inner))


def blocked(nest):
    return "blocks of" in repr(block_rows([nest], Names()))


def test_rewrites_the_spmm_nest_into_blocks_and_a_remainder():
    out = block_rows([spmm_nest()], Names())
    loops = [s for s in out if isinstance(s, n.For)]
    assert len(loops) == 1 and isinstance(out[-1], n.If)  # the blocks, then the guarded remainder
    inner = loops[0].body.body[-1].body.body[-1]
    assert isinstance(inner, n.For) and inner.end == n.Binary("+", inner.start, n.i64(32))


def test_leaves_alone_what_it_cannot_block():
    reads_y = n.Binary("*", n.Load(V, P), n.Load(Y, n.Binary("*", J, NK)))
    assert not blocked(spmm_nest(value=reads_y))                       # reads the output elsewhere
    assert not blocked(spmm_nest(index=n.Binary("+", n.Binary("*", J, NK), K)))  # address moves with p
    assert not blocked(spmm_nest(index=ROW))                           # one element for every k: a sum
    dot = n.For(n.Var("q", I64), n.i64(0), n.i64(4), n.block())
    assert not blocked(spmm_nest(prelude=[n.Declare(J, n.Cast(n.Load(CRD, P), I64)), dot]))  # work per block
    extra = n.Store(V, K, n.const(0.0, F64))
    assert not blocked(spmm_nest(inner_extra=(extra,)))                # a second statement in the k loop
    parallel = spmm_nest()
    parallel = n.For(parallel.var, parallel.start, parallel.end, parallel.body, parallel="threads")
    assert not blocked(parallel)
    assert blocked(spmm_nest())
