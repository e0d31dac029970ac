"""Row prefetches (spcomp/lower/prefetch.py): which loops get them, that the look-ahead
never reads out of bounds, and that compiled kernels give the same bits with and
without them."""
from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp

import spcomp
from spcomp.ir import nodes as n
from spcomp.ir.types import F64, I32, I64, ptr
from spcomp.lower.context import Names
from spcomp.lower.prefetch import MAX_LINES, MIN_TABLE_BYTES, prefetch_rows

OUT, E, V, W = (n.Var(name, ptr(F64)) for name in ("out", "E", "V", "W"))
CRD = n.Var("crd", ptr(I32))
P, K, J, NK, T = (n.Var(name, I64) for name in ("p", "k", "j", "N_k", "t"))
LAST = n.Var("last", I64)


def sddmm_nest(prelude=None, row=None, start=n.i64(0), end=NK, tail=()):
    """for p in 0..10: j = crd[p]; t = 0; for k in start..end: t += E[j*N_k + k]; out[p] = t"""
    index = row if row is not None else n.Binary("+", n.Binary("*", J, NK), K)
    pre = prelude if prelude is not None else [n.Declare(J, n.Cast(n.Load(CRD, P), I64))]
    acc = n.Var("acc", F64)
    inner = n.For(K, start, end, n.block(n.Assign(acc, n.Binary("+", acc, n.Load(E, index)))))
    return n.For(P, n.i64(0), n.i64(10), n.block(*pre, n.Declare(acc, n.const(0.0, F64)), inner,
                                                   n.Store(OUT, P, acc), *tail))


def hints(stmts):
    return [x for s in stmts for x in n.walk(s) if isinstance(x, n.Prefetch)]


def test_prefetches_the_rows_of_the_nonzero_ahead_when_the_last_position_is_known():
    assert not hints(prefetch_rows([sddmm_nest()], {}, Names()))  # no bound for crd[p + 8]
    out = prefetch_rows([sddmm_nest()], {P: LAST}, Names())
    got = hints(out)
    assert {h.array for h in got} == {E}
    body = out[0].body.body
    ahead = next(s for s in body if isinstance(s, n.Declare) and s.var.name.startswith("p_ahead"))
    assert ahead.init == n.Binary("min", n.Binary("+", P, n.i64(8)), LAST)  # never past the level
    j_ahead = next(s for s in body if isinstance(s, n.Declare) and s.var.name.startswith("j_ahead"))
    assert j_ahead.init == n.Cast(n.Load(CRD, ahead.var), I64)
    # a run-time row length: a loop over its first lines, at most MAX_LINES
    lines = next(s for s in body if isinstance(s, n.Declare) and s.var.name.startswith("lines"))
    assert n.Const(MAX_LINES, I64) in list(n.walk(lines.init))


def test_a_row_of_known_length_gets_one_hint_per_line():
    out = prefetch_rows([sddmm_nest(end=n.i64(20))], {P: LAST}, Names())
    offsets = sorted(h.index.rhs.value for h in hints(out))
    assert offsets == [0, 8, 16, 19]  # 20 doubles: three lines, and the last element when misaligned
    long_row = prefetch_rows([sddmm_nest(end=n.i64(10_000))], {P: LAST}, Names())
    assert len(hints(long_row)) <= MAX_LINES + 1


def test_leaves_alone_what_it_must_not_or_need_not_prefetch():
    ends = {P: LAST}
    consecutive = sddmm_nest(row=n.Binary("+", n.Binary("*", P, NK), K))  # rows follow p: hardware prefetch
    assert not hints(prefetch_rows([consecutive], ends, Names()))
    strided = sddmm_nest(row=n.Binary("+", n.Binary("*", K, NK), J))  # a column, not a row
    assert not hints(prefetch_rows([strided], ends, Names()))
    # the prelude reads an array the loop writes: recomputing it ahead would read stale data
    written = sddmm_nest(prelude=[n.Declare(J, n.Cast(n.Load(W, P), I64))], tail=(n.Store(W, P, n.const(0.0, F64)),))
    assert not hints(prefetch_rows([written], ends, Names()))
    # the row's bounds move with p: the look-ahead row's extent is unknown
    moving = sddmm_nest(start=J, end=n.Binary("+", J, n.i64(4)))
    assert not hints(prefetch_rows([moving], ends, Names()))
    # a loop that already holds hints (register blocking's) gets no second set
    hinted = sddmm_nest(tail=(n.Prefetch(E, P),))
    assert len(hints(prefetch_rows([hinted], ends, Names()))) == 1


def test_only_the_prelude_the_addresses_need_is_recomputed():
    unrelated = n.Var("v", F64)
    nest = sddmm_nest(prelude=[n.Declare(J, n.Cast(n.Load(CRD, P), I64)), n.Declare(unrelated, n.Load(V, P))])
    out = prefetch_rows([nest], {P: LAST}, Names())
    declared = [s.var.name for s in out[0].body.body if isinstance(s, n.Declare)]
    assert any(name.startswith("j_ahead") for name in declared)
    assert not any(name.startswith("v_ahead") for name in declared)


def test_hints_for_a_table_of_known_size_run_only_when_it_outgrows_l1():
    out = prefetch_rows([sddmm_nest()], {P: LAST}, Names(), {E: n.Binary("*", T, NK)})
    guards = [s for s in out[0].body.body if isinstance(s, n.If)]
    assert len(guards) == 1 and hints(guards[0].then.body)
    assert guards[0].cond == n.Binary(">=", n.Binary("*", T, NK), n.i64(MIN_TABLE_BYTES // 8))
    unguarded = prefetch_rows([sddmm_nest()], {P: LAST}, Names())  # size unknown: always
    assert not any(isinstance(s, n.If) for s in unguarded[0].body.body) and hints(unguarded)


def test_the_last_position_of_a_level_under_compressed_ones_is_known():
    """CSF's third level ends at pos3[pos2[pos1[1]]] - 1: its loop gets hints too."""
    k = spcomp.compile("A[i,j] = B[i,k,l] * C[k,j] * D[l,j]", formats={"B": "csf"})
    assert "min((pB3 + 8), ((int64_t)B3_pos[(int64_t)B2_pos[(int64_t)B1_pos[1]]] - 1))" in k.ir


SDDMM = "C[i,j] = B[i,j] * D[i,k] * E[k,j]"


def test_compiled_sddmm_prefetches_in_its_fill_phase_only():
    k = spcomp.compile(SDDMM, formats={"B": "csr", "C": "csr"})
    count, fill = k.ir.split("kernel_fill(")
    assert "__builtin_prefetch" not in count  # the count phase reads no rows (LLVM drops its dot products)
    assert "__builtin_prefetch(&E_T_vals[" in fill and "(int64_t)B2_pos[N_i] - 1" in fill
    gpu = spcomp.compile(SDDMM, formats={"B": "csr", "C": "csr"}, backend="cuda-sim")
    assert "prefetch" not in gpu.source


@pytest.mark.parametrize("expr, formats", [
    (SDDMM, {"B": "csr", "C": "csr"}),
    (SDDMM, {"B": "dcsr", "C": "dcsr"}),
    ("C[i,j] = B[i,j] * D[i,k] * E[k,j]", {"B": "csr"}),
    ("y[i,r] = A[i,j] * X[j,r]", {"A": "csr"}),
    ("y[i,r] = A[i,j] * X[j,r]", {"A": "dcsr"}),
    ("y[i,r] = A[j,i] * X[j,r]", {"A": "csc"}),
    ("y[i] = A[i,j] * X[j,r] * w[r]", {"A": "csr"}),
])
def test_results_are_bitwise_those_without_prefetches(monkeypatch, tmp_path, expr, formats):
    """The hints change no value: the same kernel compiled without the pass agrees to
    the bit, on a matrix whose last rows hold its last nonzeros (the clamp matters)."""
    rng = np.random.default_rng(7)
    n_rows, n_inner = 700, 13  # 9100-element tables: over MIN_TABLE_BYTES, the hints run
    A = sp.random(n_rows, n_rows, density=0.02, format="csr", random_state=3)
    A = sp.csr_matrix(A + sp.eye(n_rows, format="csr"))  # the last row holds nonzeros
    dense = {"D": rng.standard_normal((n_rows, n_inner)), "E": rng.standard_normal((n_inner, n_rows)),
             "X": rng.standard_normal((n_rows, n_inner)), "w": rng.standard_normal(n_inner)}
    names = {"B": A, "A": A}
    monkeypatch.setenv("SPCOMP_CACHE_DIR", str(tmp_path))
    args = {name: value for name, value in {**names, **dense}.items() if f"{name}[" in expr}
    with_hints = spcomp.compile(expr, formats=formats)
    got = with_hints(**args)
    without = _without_prefetch_pass(monkeypatch, tmp_path, expr, formats)
    assert without is not with_hints
    assert "__builtin_prefetch" not in without.ir or " in blocks of " in without.ir  # regblock's own hints stay
    ref = without(**args)
    as_dense = [r.to_scipy().toarray() if hasattr(r, "to_scipy") else np.asarray(r) for r in (got, ref)]
    np.testing.assert_array_equal(as_dense[0], as_dense[1])
    assert "__builtin_prefetch" in with_hints.ir
    reference = np.einsum(_einsum_spec(expr), *[a.toarray() if sp.issparse(a) else a for a in args.values()])
    np.testing.assert_allclose(as_dense[0], reference, rtol=1e-12, atol=1e-12)


def _without_prefetch_pass(monkeypatch, tmp_path, expr, formats):
    """The kernel compiled with the prefetch pass switched off (a fresh disk and
    memory cache, so it is really rebuilt); the memory cache is cleared again so
    later tests do not get it."""
    import spcomp.lower.assembly as assembly
    import spcomp.lower.lowerer as lowerer
    monkeypatch.setattr(lowerer, "prefetch_rows", lambda nest, *rest: nest)
    monkeypatch.setattr(assembly, "prefetch_rows", lambda nest, *rest: nest)
    monkeypatch.setenv("SPCOMP_CACHE_DIR", str(tmp_path / "without"))
    spcomp.clear_cache()
    try:
        return spcomp.compile(expr, formats=formats)
    finally:
        spcomp.clear_cache()


def _einsum_spec(expr: str) -> str:
    lhs, rhs = expr.split("=")
    out = lhs[lhs.index("[") + 1:lhs.index("]")].replace(",", "")
    ins = [f[f.index("[") + 1:f.index("]")].replace(",", "") for f in rhs.split("*") if "[" in f]
    return ",".join(ins) + "->" + out


@pytest.mark.parametrize("fmt", ["csf", "dcc"])
def test_mttkrp_over_a_large_factor_is_bitwise_that_without_hints(monkeypatch, tmp_path, fmt):
    """The innermost level of a CSF tensor, its last position read through two
    parents' pos arrays, with a factor table large enough for the hints to run."""
    rng = np.random.default_rng(11)
    shape, rank = (9, 30, 800), 12  # D: 800 x 12 = 9600 elements, over MIN_TABLE_BYTES
    corner = np.array(shape) - 1  # the last fibre holds the last position
    coords = np.unique(np.vstack([rng.integers(0, shape, size=(600, 3)), corner]), axis=0).T
    values = rng.standard_normal(coords.shape[1])
    B = spcomp.Tensor.from_coo(coords, values, shape, fmt)
    C, D = rng.standard_normal((shape[1], rank)), rng.standard_normal((shape[2], rank))
    expr = "A[i,j] = B[i,k,l] * C[k,j] * D[l,j]"
    monkeypatch.setenv("SPCOMP_CACHE_DIR", str(tmp_path))
    with_hints = spcomp.compile(expr, formats={"B": fmt})
    assert "if (((N_l * N_j) >= 8192))" in with_hints.ir
    got = with_hints(B=B, C=C, D=D)
    ref = _without_prefetch_pass(monkeypatch, tmp_path, expr, {"B": fmt})(B=B, C=C, D=D)
    np.testing.assert_array_equal(got, ref)
    dense_B = np.zeros(shape)
    dense_B[tuple(coords)] = values
    np.testing.assert_allclose(got, np.einsum("ikl,kj,lj->ij", dense_B, C, D), rtol=1e-12, atol=1e-12)
