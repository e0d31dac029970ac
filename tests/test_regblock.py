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


def _prefetches(stmts):
    return [x for s in stmts for x in n.walk(s) if isinstance(x, n.Prefetch)]


def test_prefetches_the_block_rows_ahead_only_with_a_known_last_position():
    last = n.Var("last", I64)
    without = block_rows([spmm_nest()], Names())
    assert not _prefetches(without)  # no bound for the look-ahead read of crd: no hints
    out = block_rows([spmm_nest()], Names(), {P: last})
    hints = _prefetches(out)
    assert {h.array for h in hints} == {X}  # the indirect rows, not V (sequential) nor Y
    assert len(hints) == 5  # the block's 4 lines, and a 5th when X's rows are misaligned
    blocked_loop = next(s for s in out if isinstance(s, n.For)).body.body[-1]
    ahead = next(s for s in blocked_loop.body.body if isinstance(s, n.Declare) and s.var.name.startswith("p_ahead"))
    assert ahead.init == n.Binary("min", n.Binary("+", P, n.i64(8)), last)  # never past the level
    remainder = out[-1].then.body[-1]
    assert not _prefetches([remainder])  # the short remainder pass gets none


def test_compiled_spmm_prefetches_within_the_matrix():
    import numpy as np
    import scipy.sparse as sp
    import spcomp
    k = spcomp.compile("Y[i,k] = A[i,j] * X[j,k]", formats={"A": "csr"})
    assert "__builtin_prefetch(&X_vals[" in k.ir and "(int64_t)A2_pos[N_i] - 1" in k.ir
    dcsr = spcomp.compile("Y[i,k] = A[i,j] * X[j,k]", formats={"A": "dcsr"})
    assert "(int64_t)A2_pos[(int64_t)A1_pos[1]] - 1" in dcsr.ir  # under a compressed level: through its pos
    # a singleton level (COO) has its parent's positions: it ends where level 1 does
    coo = spcomp.compile("Y[i,k] = A[i,j] * X[j,k]", formats={"A": "coo"})
    assert "min((pA2 + 8), ((int64_t)A1_pos[1] - 1))" in coo.ir
    rng = np.random.default_rng(2)
    C = sp.random(60, 50, density=0.3, format="coo", random_state=rng)
    C.sum_duplicates()
    Xc = rng.random((50, 200))  # 10000 elements: over MIN_TABLE_BYTES, the hints run
    np.testing.assert_allclose(coo(A=spcomp.Tensor.from_scipy(C, "coo"), X=Xc), C @ Xc, rtol=1e-12)
    # the last rows hold the last nonzeros: the look-ahead is clamped, results exact
    A = sp.csr_matrix(np.triu(np.ones((40, 40))))
    X = np.arange(40 * 35, dtype=np.float64).reshape(40, 35)
    np.testing.assert_array_equal(k(A=A, X=X), A @ X)


def test_block_hints_run_only_for_a_table_larger_than_l1():
    """With X's size known the blocked loop's hints sit under ``size >= MIN_TABLE_BYTES``
    (as prefetch.py's do): rows that stay in L1 gain nothing from them, and a 51 KB
    X ran 0.240 -> 0.201 ms without them (SpMM, one thread, docs/performance.md).
    Unknown size: the hints run unguarded."""
    from spcomp.lower.prefetch import MIN_TABLE_BYTES
    last, rows = n.Var("last", I64), n.Var("N_j", I64)
    size = n.Binary("*", rows, NK)
    out = block_rows([spmm_nest()], Names(), {P: last}, {X: size})
    blocked_loop = next(s for s in out if isinstance(s, n.For)).body.body[-1]
    guards = [s for s in blocked_loop.body.body if isinstance(s, n.If)]
    assert len(guards) == 1 and guards[0].cond == n.Binary(">=", size, n.i64(MIN_TABLE_BYTES // 8))
    assert len(_prefetches([guards[0]])) == 5
    unguarded = block_rows([spmm_nest()], Names(), {P: last}, {})
    loop = next(s for s in unguarded if isinstance(s, n.For)).body.body[-1]
    assert not any(isinstance(s, n.If) for s in loop.body.body) and len(_prefetches(unguarded)) == 5
