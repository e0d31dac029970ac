"""Schedule.split: i = i0*f + i1 with the remainder cut at N, alone and with
reorder (tiling), parallelize, vectorize and unroll; results against numpy.einsum."""
from __future__ import annotations

import warnings

import numpy as np
import pytest
import scipy.sparse as sp
from hypothesis import given, settings
from hypothesis import strategies as st

import spcomp
from spcomp import Schedule
from spcomp.errors import ScheduleError

from conftest import examples


def _compile(expr, schedule, formats=None):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # LLVM may decline a vectorize hint; not under test
        return spcomp.compile(expr, formats=formats, schedule=schedule)


def _rand(rng, *shape):
    return rng.standard_normal(shape)


MATMUL = "C[i,j] = A[i,k] * B[k,j]"


@pytest.mark.parametrize("factor", [1, 3, 4, 7, 50])
def test_split_output_index_matvec(factor):
    rng = np.random.default_rng(factor)
    A, x = _rand(rng, 13, 6), _rand(rng, 6)
    k = _compile("y[i] = A[i,j] * x[j]", Schedule().split("i", "i0", "i1", factor))
    np.testing.assert_allclose(k(A=A, x=x), np.einsum("ij,j->i", A, x))
    assert f"for i1 in 0..min({factor}, N_i-i0*{factor}): i = i0*{factor} + i1" in k.loops


def test_tiling_with_parallel_vectorize_unroll():
    rng = np.random.default_rng(1)
    A, B = _rand(rng, 10, 5), _rand(rng, 5, 9)
    s = (Schedule().split("i", "i0", "i1", 4).reorder("i0", "j", "i1")
         .parallelize("i0").vectorize("i1").unroll("i1", 2))
    k = _compile(MATMUL, s)
    np.testing.assert_allclose(k(A=A, B=B), np.einsum("ik,kj->ij", A, B))
    lines = [line.strip() for line in k.loops.splitlines()]
    assert lines[1].startswith("for i0 in 0..ceil(N_i/4) (parallel: threads)")
    assert lines[2].startswith("for j in")
    assert lines[3].startswith("for i1 in")
    assert "vectorize: 8, unroll: 2" in k.ir


def test_two_splits_tile_both_output_indices():
    rng = np.random.default_rng(2)
    A, B = _rand(rng, 9, 4), _rand(rng, 4, 11)
    s = Schedule().split("i", "i0", "i1", 4).split("j", "j0", "j1", 3).reorder("i0", "j0", "i1", "j1")
    k = _compile(MATMUL, s)
    np.testing.assert_allclose(k(A=A, B=B), A @ B)
    firsts = [line.split()[1] for line in k.loops.splitlines()[1:] if line.strip().startswith("for")]
    assert firsts[:4] == ["i0", "j0", "i1", "j1"]


def test_inner_piece_outside_outer_piece():
    rng = np.random.default_rng(3)
    A, x = _rand(rng, 11, 3), _rand(rng, 3)
    k = _compile("y[i] = A[i,j] * x[j]", Schedule().split("i", "i0", "i1", 4).reorder("i1", "i0"))
    np.testing.assert_allclose(k(A=A, x=x), A @ x)
    assert "for i0 in 0..ceil((N_i-i1)/4): i = i0*4 + i1" in k.loops


def test_split_reduction_index():
    rng = np.random.default_rng(4)
    A, x = _rand(rng, 5, 10), _rand(rng, 10)
    k = _compile("y[i] = A[i,j] * x[j]", Schedule().split("j", "j0", "j1", 4).vectorize("j1"))
    np.testing.assert_allclose(k(A=A, x=x), A @ x)
    assert "for j1 in" in k.loops


def test_split_scatter_reduction_outside_the_output_loop():
    rng = np.random.default_rng(5)
    A, x = _rand(rng, 7, 6), _rand(rng, 7)
    k = _compile("y[j] = A[i,j] * x[i]", Schedule().split("i", "i0", "i1", 3).reorder("i0", "i1", "j"))
    np.testing.assert_allclose(k(A=A, x=x), np.einsum("ij,i->j", A, x))


@pytest.mark.parametrize("rows, threads", [(300, 1), (3001, 2)])
def test_split_rows_of_a_csr_operand_in_parallel(rows, threads):
    """3001 rows x 5% is above the work threshold: the blocks of rows go to threads."""
    W = sp.random(rows, 3000, density=0.05, format="csr", random_state=6)
    x = np.random.default_rng(6).standard_normal(3000)
    k = _compile("y[i] = W[i,j] * x[j]", Schedule().split("i", "i0", "i1", 16).parallelize("i0"),
                 formats={"W": "csr"})
    previous = spcomp.runtime.threads.get_num_threads()
    try:
        spcomp.set_num_threads(threads)
        np.testing.assert_allclose(k(W=W, x=x), W @ x)
    finally:
        spcomp.set_num_threads(previous)


def test_parallel_piece_spread_over_threads():
    """Enough work to take the threaded path: the runtime counts i0's trips, not N_i's."""
    rng = np.random.default_rng(7)
    A, x = _rand(rng, 1001, 300), _rand(rng, 300)
    k = _compile("y[i] = A[i,j] * x[j]", Schedule().split("i", "i0", "i1", 8).parallelize("i0"))
    previous = spcomp.runtime.threads.get_num_threads()
    try:
        spcomp.set_num_threads(2)
        np.testing.assert_allclose(k(A=A, x=x), A @ x)
    finally:
        spcomp.set_num_threads(previous)


@pytest.mark.parametrize("schedule, message", [
    (Schedule().split("j", "j0", "j1", 4), "only dense loops can be split"),
    (Schedule().split("q", "q0", "q1", 4), "no index 'q'"),
    (Schedule().split("i", "j", "i1", 4), "already an index"),
    (Schedule().split("i", "i0", "i1", 4).reorder("i", "j"), "name 'i0' and 'i1' instead"),
    (Schedule().split("i", "i0", "i1", 4).parallelize("i1"), "only the outermost loop"),
    (Schedule().split("i", "i0", "i1", 4).reorder("i0", "j", "i1"), "i runs where the later of i0, i1 runs"),
])
def test_refused_splits_say_why(schedule, message):
    with pytest.raises(ScheduleError, match=message):
        _compile("y[i] = W[i,j] * x[j]", schedule, formats={"W": "csr"})


@pytest.mark.parametrize("factor", [0, -2, 2.5, True])
def test_factor_must_be_a_positive_integer(factor):
    with pytest.raises(ScheduleError, match="factor"):
        Schedule().split("i", "i0", "i1", factor)


def test_split_sparse_output_refused():
    with pytest.raises(ScheduleError, match="dense outputs only"):
        _compile("C[i,j] = A[i,j] * B[i,j]", Schedule().split("i", "i0", "i1", 2),
                 formats={"A": "csr", "C": "csr"})


def test_separated_pieces_of_a_reduction_refused():
    with pytest.raises(ScheduleError, match="must be adjacent"):
        _compile(MATMUL, Schedule().split("k", "k0", "k1", 2).reorder("i", "k0", "j", "k1"))


def test_schedule_prints_split():
    assert str(Schedule().split("i", "i0", "i1", 8)) == "Schedule().split('i', 'i0', 'i1', 8)"


# ------------------------------------------------------------------ property

_LAYOUTS = {
    "plain": lambda: Schedule(),
    "tiled": lambda: Schedule().reorder("i0", "j", "i1"),
    "tiled-parallel": lambda: Schedule().reorder("i0", "j", "i1").parallelize("i0"),
    "inner-hints": lambda: Schedule().vectorize("i1").unroll("i1", 4),
}


@settings(max_examples=examples(40))
@given(m=st.integers(0, 9), n=st.integers(0, 9), kk=st.integers(0, 4),
       factor=st.one_of(st.just(1), st.integers(2, 12)),
       layout=st.sampled_from(sorted(_LAYOUTS)), split_k=st.booleans())
def test_split_matches_einsum(m, n, kk, factor, layout, split_k):
    """Random factors (1, divisors and not, larger than the extent) and shapes with
    0- and 1-sized dimensions."""
    s = Schedule().split("i", "i0", "i1", factor)
    if split_k:
        s = s.split("k", "k0", "k1", max(1, factor // 2))
    for d in _LAYOUTS[layout]().directives:
        s = s._with(*d)
    rng = np.random.default_rng(m * 100 + n * 10 + kk)
    A, B = _rand(rng, m, kk), _rand(rng, kk, n)
    k = _compile(MATMUL, s)
    np.testing.assert_allclose(k(A=A, B=B), np.einsum("ik,kj->ij", A, B), atol=1e-12)


@settings(max_examples=examples(25))
@given(rows=st.integers(0, 40), cols=st.integers(0, 12), factor=st.integers(1, 50),
       density=st.sampled_from([0.0, 0.2, 1.0]), parallel=st.booleans())
def test_split_rows_of_csr_matches_scipy(rows, cols, factor, density, parallel):
    """The dense row level of a CSR operand split, every factor against every size."""
    s = Schedule().split("i", "i0", "i1", factor)
    if parallel:
        s = s.parallelize("i0")
    W = sp.random(rows, cols, density=density, format="csr", random_state=rows + cols)
    x = np.random.default_rng(cols).standard_normal(cols)
    k = _compile("y[i] = W[i,j] * x[j]", s, formats={"W": "csr"})
    np.testing.assert_allclose(k(W=W, x=x), W @ x, atol=1e-12)
