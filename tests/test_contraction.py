"""Contraction order: the cost model's plans reach the expected operation counts, and
factorised kernels match NumPy (random multi-operand statements, with and without
factorisation). Counts are the model's (lower/contract.py), never times."""
from __future__ import annotations

import warnings

import numpy as np
import pytest
import scipy.sparse as sp
from hypothesis import given, settings
from hypothesis import strategies as st

import spcomp
from spcomp.errors import ScheduleError, TranspositionWarning, UnsupportedError
from spcomp.frontend import to_notation
from spcomp.lower import contract
from spcomp.notation import accesses
from spcomp.testing import densify, reference
from spcomp.testing.programs import close, products
from spcomp.testing.strategies import tensors

from conftest import examples

N = 2000
ROW = 8


def _sparse(n, m, per_row, seed):
    return sp.random(n, m, density=per_row / m, format="csr", random_state=seed)


def test_chain_spmv_costs_nnz_a_plus_nnz_b():
    A, B, c = _sparse(N, N, ROW, 1), _sparse(N, N, ROW, 2), np.ones(N)
    k = spcomp.compile("y[i] = A[i,j]*B[j,k]*c[k]", formats={"A": "csr", "B": "csr"})
    plan, single = k.contraction.plan(dict(A=A, B=B, c=c))
    assert plan.factorised
    # as written: every stored A[i,j] walks row j of B
    assert single == pytest.approx(A.nnz + A.nnz * (B.nnz / N))
    # factorised: nnz(B) for t[j], the temporary's N entries, nnz(A) for y
    assert plan.cost == pytest.approx(A.nnz + B.nnz + N)
    assert "t1[j] = sum(k, B[j,k] * c[k])" in plan.describe()
    y = k(A=A, B=B, c=c)
    assert np.allclose(y, A @ (B @ c))
    assert "t1[j]" in k.loops and "one native function" in k.loops


def test_ffn_keeps_its_hoisted_single_statement():
    """O(nnz(H)·(K+D)) as written: no factorisation is cheaper."""
    a = to_notation("O[t,d] = H[t,n]*X[t,k]*Wu[n,k]*Wd[n,d]", formats={"H": "csr"})
    sizes, dens = {"t": 256, "n": 2048, "k": 512, "d": 512}, {"H": 0.05}
    nnz = 256 * 2048 * 0.05
    assert contract.statement_cost(a, sizes, dens) == pytest.approx(nnz * (512 + 512))
    assert not contract.best(a, sizes, dens, "float64").factorised


def test_mttkrp_stays_as_written():
    a = to_notation("A[i,j] = B[i,k,l]*C[k,j]*D[l,j]", formats={"B": "csf"})
    sizes, dens = {"i": 200, "k": 200, "l": 200, "j": 16}, {"B": 0.001}
    best = contract.best(a, sizes, dens, "float64")
    assert not best.factorised
    assert best.cost <= 200 ** 3 * 0.001 * 16 * 1.01


def test_sddmm_then_spmm_attention_pattern():
    """O[i,d] = S[i,j]*Q[i,k]*K[j,k]*V[j,d]: SDDMM then SpMM, nnz(S)·(K+D), as written."""
    a = to_notation("O[i,d] = S[i,j]*Q[i,k]*K[j,k]*V[j,d]", formats={"S": "csr"})
    sizes, dens = {"i": 1024, "j": 1024, "k": 64, "d": 64}, {"S": 0.01}
    nnz = 1024 * 1024 * 0.01
    best = contract.best(a, sizes, dens, "float64")
    assert best.cost <= nnz * (64 + 64) + nnz + 1


def test_sparse_matrix_chain_picks_the_cheap_pair():
    """Y[i,l] = A[i,j]*B[j,k]*c[k,l] with a thin dense c: contract B·c first."""
    a = to_notation("Y[i,l] = A[i,j]*B[j,k]*C[k,l]", formats={"A": "csr", "B": "csr"})
    sizes, dens = {"i": 5000, "j": 5000, "k": 5000, "l": 4}, {"A": 0.002, "B": 0.002}
    best = contract.best(a, sizes, dens, "float64")
    nnz = 5000 * 5000 * 0.002
    assert best.factorised and best.statements[0].lhs.tensor.order == 2
    assert best.cost <= 2 * nnz * 4 + 5000 * 4 + 1


def test_factorize_fixed_and_disabled():
    A, B, c = _sparse(50, 40, 4, 3), _sparse(40, 30, 4, 4), np.arange(30.0)
    want = A @ (B @ c)
    off = spcomp.compile("y[i] = A[i,j]*B[j,k]*c[k]", formats={"A": "csr", "B": "csr"},
                         schedule=spcomp.Schedule().factorize(False))
    assert off.contraction is None and np.allclose(off(A=A, B=B, c=c), want)
    fixed = spcomp.compile("y[i] = A[i,j]*B[j,k]*c[k]", formats={"A": "csr", "B": "csr"},
                           schedule=spcomp.Schedule().factorize(("A", "B")))
    assert np.allclose(fixed(A=A, B=B, c=c), want)
    assert "t1[i,k] = sum(j, A[i,j] * B[j,k])" in fixed.loops
    with pytest.raises(ScheduleError):
        spcomp.Schedule().factorize("A")


def test_factorize_group_must_name_operands():
    with pytest.raises(UnsupportedError, match="factorize group"):
        spcomp.compile("y[i] = A[i,j]*B[j,k]*c[k]", formats={"A": "csr"},
                       schedule=spcomp.Schedule().factorize(("A", "Z")))


def test_plans_are_cached_by_shape_and_density_bucket():
    A, B, c = _sparse(300, 300, 4, 5), _sparse(300, 300, 4, 6), np.ones(300)
    k = spcomp.compile("y[i] = A[i,j]*B[j,k]*c[k]", formats={"A": "csr", "B": "csr"}, name="buckets")
    k(A=A, B=B, c=c)
    k(A=_sparse(300, 300, 4, 7), B=B, c=c)
    assert len(k.contraction.cache) == 1
    k(A=_sparse(300, 300, 60, 7), B=B, c=c)
    assert len(k.contraction.cache) == 2


@settings(max_examples=examples(30), deadline=None)
@given(st.data())
def test_random_products_match_numpy(data):
    text, fmts, shapes = data.draw(products(sparse_output=True))
    ops = {n: data.draw(tensors(shape, fmts[n])) for n, shape in shapes.items()}
    groups = data.draw(st.sampled_from([None, False, "first"]))
    schedule = spcomp.Schedule()
    if groups is False:
        schedule = schedule.factorize(False)
    elif groups == "first":
        schedule = schedule.factorize(tuple(sorted(shapes)[:2]))
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", TranspositionWarning)
            k = spcomp.compile(text, formats=fmts, schedule=schedule)
            got = k(**{n: v[1] for n, v in ops.items()})
    except UnsupportedError as e:
        assert str(e)
        return
    want = reference(k.notation, {n: v[0] for n, v in ops.items()})
    assert close(got, want), (text, fmts, densify(got), want)


def test_a_chain_of_sparse_matrices_keeps_its_temporary_sparse():
    """Y = A·B·C, all csr at 1 % of 2000²: as written the nest (i, l, j, k) merges a
    row of B with a column of C for every (i, l, A[i,j]); the plan contracts a pair
    into a csr temporary, nnz(A)·rowlen(B) + nnz(t)·rowlen(C) plus t's entries."""
    n, d = 2000, 0.01
    a = to_notation("Y[i,l] = A[i,j]*B[j,k]*C[k,l]", formats={"A": "csr", "B": "csr", "C": "csr"})
    sizes, dens = dict.fromkeys("ijkl", n), dict.fromkeys("ABC", d)
    best = contract.best(a, sizes, dens, "float64")
    t = best.statements[0].lhs
    assert best.factorised and not t.tensor.format.is_dense
    fill = contract.product_density([f for f in _products(best.statements[0])], t, sizes, dens)
    assert fill == pytest.approx(1 - (1 - d * d) ** n)
    products = n * n * d * (n * d)
    assert best.cost == pytest.approx(products + contract.SPARSE_ENTRY * fill * n * n + fill * n * n * (n * d))
    # the dense temporary costs its n² elements and a dense row walk per row of C
    dense = [p for p in contract.plans(a, sizes, dens, "float64")
             if p.factorised and p.statements[0].lhs.tensor.format.is_dense]
    assert min(p.cost for p in dense) > 2 * best.cost


def test_merges_count_both_fibers():
    """y[i] = A[i,j]*B[i,j]*c[j] (csr A, B): the j loop walks both rows, 2·nnz."""
    a = to_notation("y[i] = A[i,j]*B[i,j]*c[j]", formats={"A": "csr", "B": "csr"})
    sizes, dens = {"i": 1000, "j": 1000}, {"A": 0.01, "B": 0.01}
    walk = 1000 * 1000 * (0.01 + 0.01)
    assert contract.statement_cost(a, sizes, dens) == pytest.approx(1000 * 1000 * 0.01 * 0.01 + walk)


def test_the_kernel_as_built_is_what_the_plan_beats():
    """The statement's cost is counted on the nest the kernel built (here it reads C
    transposed and merges B's rows with C's columns), not on the one the model would pick."""
    A, B, C = (_sparse(300, 300, 3, s) for s in (11, 12, 13))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", TranspositionWarning)
        k = spcomp.compile("Y[i,l] = A[i,j]*B[j,k]*C[k,l]", formats=dict.fromkeys("ABC", "csr"))
        plan, single = k.contraction.plan(dict(A=A, B=B, C=C))
    nnz = A.nnz
    assert single >= 300 * 300 * (nnz / 300) * (B.nnz + C.nnz) / 300  # the merges alone
    assert plan.factorised and plan.cost < single / 10


def _products(s):
    from spcomp.lower.normalize import factors, lift_sums, split_sums
    return factors(split_sums(lift_sums(s.rhs))[1])


@settings(max_examples=examples(20), deadline=None)
@given(st.data())
def test_every_plan_the_model_may_pick_matches_numpy(data):
    """Each factorised plan (temporaries dense or compressed, either order; outputs dense
    or sparse) is run, not only the cheapest: whichever the operands make the model
    choose is right."""
    text, fmts, shapes = data.draw(products(sparse_output=True))
    ops = {n: data.draw(tensors(shape, fmts[n])) for n, shape in shapes.items()}
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", TranspositionWarning)
            k = spcomp.compile(text, formats=fmts)
    except UnsupportedError as e:
        assert str(e)
        return
    want = reference(k.notation, {n: v[0] for n, v in ops.items()})
    if k.contraction is None:
        return
    sizes = {i.name: n for acc in accesses(k.notation.rhs) for i, n in zip(acc.indices, shapes[acc.tensor.name])}
    density = {name: data.draw(st.sampled_from([0.01, 0.2, 1.0])) for name in shapes}
    options = [p for p in contract.plans(k.notation, sizes, density, "float64") if p.factorised]
    picked = data.draw(st.lists(st.sampled_from(options), max_size=3, unique_by=id)) if options else []
    for plan in picked:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", TranspositionWarning)
                program = k.contraction.program(plan)
                got = program(**{n: v[1] for n, v in ops.items()})
        except UnsupportedError as e:  # a storage the lowerer refuses: the planner moves on
            assert str(e)
            continue
        assert close(got, want), (plan.describe(), fmts, densify(got), want)
