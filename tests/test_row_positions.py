"""TACO's ``pos`` within a row (lower/rowpos.py): ``pos("j", "jpos", "A", within="i")``
walks one segment of A's positions inside the loop over i; ``split``, ``unroll`` and
``vectorize`` may name it and its pieces, and on the GPU a warp's lanes take it 32
apart. Checked against numpy.einsum on one and two threads, bitwise against the
default schedule where the positions' order is kept and no reduction is reassociated,
and through cuda-sim; every refusal names why."""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from spcomp import Schedule
from spcomp.errors import KernelRuntimeError, ScheduleError

from schedule_operands import compile_quiet, operands_by_axes
from conftest import examples, spcomp_threads

KERNELS = [
    # expr, formats, einsum, operand axes, whether the j loop is a reduction (reassociated when vectorised)
    ("y[i] = A[i,j] * x[j]", {"A": "csr"}, "ij,j->i", {"A": (0, 1), "x": (1,)}, True),
    ("y[i] = A[i,j] * x[j]", {"A": "dcsr"}, "ij,j->i", {"A": (0, 1), "x": (1,)}, True),
    ("Y[i,k] = A[i,j] * B[j,k]", {"A": "csr"}, "ij,jk->ik", {"A": (0, 1), "B": (1, 2)}, False),
    ("C[i,j] = A[i,j] * B[i,j]", {"A": "csr"}, "ij,ij->ij", {"A": (0, 1), "B": (0, 1)}, False),
    ("C[i,j] = A[i,j] * B[i,j]", {"A": "csr", "C": "csr"}, "ij,ij->ij", {"A": (0, 1), "B": (0, 1)}, False),
    ("Y[i,j] = B[i,j,k] * c[k]", {"B": "csf"}, "ijk,k->ij", {"B": (0, 1, 2), "c": (2,)}, True),
]


def _operands(axes, formats, dims, density, seed):
    return operands_by_axes(axes, formats, dims, density, seed, long_rows=False)


def _dense(x):
    return x.to_numpy() if hasattr(x, "to_numpy") else np.asarray(x)


@settings(max_examples=examples(25), deadline=None)
@given(case=st.sampled_from(range(len(KERNELS))), dims=st.lists(st.integers(1, 40), min_size=3, max_size=3),
       density=st.sampled_from([0.0, 0.1, 0.4, 1.0]), factor=st.integers(1, 9),
       hint=st.sampled_from([None, ("unroll", "j1", 4), ("vectorize", "j1", 4), ("unroll", "j0", 2),
                             ("vectorize", "jpos", 0)]),
       split=st.booleans(), seed=st.integers(0, 99))
def test_row_positions_match_einsum_and_default(case, dims, density, factor, hint, split, seed):
    expr, formats, spec, axes, reduction = KERNELS[case]
    index, name = ("k", "B") if "B" in formats else ("j", "A")
    within = "j" if "B" in formats else "i"
    ops, dense = _operands(axes, formats, dims, density, seed)
    s = Schedule().pos(index, "jpos", name, within=within)
    if split:
        s = s.split("jpos", "j0", "j1", factor)
    if hint is not None and (split or hint[1] == "jpos"):
        s = getattr(s, hint[0])(hint[1], hint[2])
    k = compile_quiet(expr, formats, s)
    assert "over one segment of" in k.loops
    ref = np.einsum(spec, *dense)
    base = compile_quiet(expr, formats, Schedule().vectorize(index, 1) if reduction else None)(**ops)
    for n in (1, 2):
        with spcomp_threads(n, min_work=0 if n > 1 else None):
            got = k(**ops)
        np.testing.assert_allclose(_dense(got), ref, rtol=1e-10, atol=1e-10, err_msg=f"{n} thread(s)")
        if not reduction:  # the same adds in the same order: bit for bit
            np.testing.assert_array_equal(_dense(got), _dense(base))
    if reduction and hint is None:  # a scalar loop cut into blocks still adds in order
        k1 = compile_quiet(expr, formats, s.vectorize("j1" if split else "jpos", 1))
        np.testing.assert_array_equal(_dense(k1(**ops)), _dense(base))


def test_row_position_split_is_a_strip_mined_loop():
    k = compile_quiet("y[i] = A[i,j] * x[j]", {"A": "csr"},
                 Schedule().pos("j", "jpos", "A", within="i").split("jpos", "j0", "j1", 4).unroll("j1", 4)
                 .parallelize("i"))
    assert "for (int64_t j0 = 0;" in k.ir and "unroll: 4" in k.ir
    assert "for i in 0..N_i (parallel: threads)" in k.loops


def test_warp_lanes_take_a_rows_positions_on_cuda_sim():
    rng = np.random.default_rng(2)
    a = rng.standard_normal((37, 90)) * (rng.random((37, 90)) < 0.3)
    x = rng.standard_normal(90)
    taco = (Schedule().parallelize("i", "gpu-warp").pos("j", "jpos", "A", within="i")
            .split("jpos", "thread_nz", "thread", 32).parallelize("thread", "gpu-thread", race="ParallelReduction"))
    lanes = Schedule().parallelize("i", "gpu-warp").parallelize("j", "gpu-thread", race="ParallelReduction")
    k = compile_quiet("y[i] = A[i,j] * x[j]", {"A": "csr"}, taco, backend="cuda-sim")
    np.testing.assert_allclose(k(A=a, x=x), a @ x, rtol=1e-12, atol=1e-12)
    assert k.source == compile_quiet("y[i] = A[i,j] * x[j]", {"A": "csr"}, lanes, backend="cuda-sim").source


REFUSALS = [
    (Schedule().pos("j", "jpos", "A", within="i").split("jpos", "j0", "j1", 4).parallelize("j1"), {},
     "runs on one thread"),
    (Schedule().parallelize("i", "gpu-warp").pos("j", "jpos", "A", within="i").split("jpos", "a", "b", 8)
     .parallelize("b", "gpu-thread"), {"backend": "cuda-sim"}, "32 apart"),
    (Schedule().pos("j", "jpos", "A", within="j2"), {}, "index stored"),
    (Schedule().pos("j", "jpos", "A", within="i").divide("jpos", "a", "b", 2), {}, "blocks of a fixed size"),
    (Schedule().pos("j", "jpos", "A", within="i").split("jpos", "a", "b", 2).reorder("b", "i", "a"), {},
     "separates the pieces"),
    (Schedule().pos("j", "jpos", "A", within="i").pos("i", "q", "A"), {}, "one position loop"),
]


@pytest.mark.parametrize("schedule, kw, words", REFUSALS)
def test_row_position_refusals(schedule, kw, words):
    with pytest.raises(ScheduleError, match=words):
        compile_quiet("y[i] = A[i,j] * x[j]", {"A": "csr"}, schedule, **kw)


def test_row_positions_of_a_merged_loop_are_refused():
    with pytest.raises(ScheduleError, match="does not walk A's positions alone"):
        compile_quiet("y[i] = (A[i,j] + B[i,j]) * x[j]", {"A": "csr", "B": "csr"},
                 Schedule().pos("j", "jpos", "A", within="i"))


def test_within_must_be_a_name():
    with pytest.raises(ScheduleError, match="within names"):
        Schedule().pos("j", "jpos", "A", within="j")


def test_tacos_spmv_cpu_schedule():
    """TACO's scheduleSpMVCPU: split(i, i0, i1, 32).pos(j, jpos, A(i,j)).split(jpos, jpos0, jpos1, 4)
    .reorder({i0, i1, jpos0, jpos1}).parallelize(i0, CPUThread, NoRaces).parallelize(jpos1, CPUVector, ...)."""
    rng = np.random.default_rng(7)
    a = rng.standard_normal((100, 80)) * (rng.random((100, 80)) < 0.3)
    x = rng.standard_normal(80)
    s = (Schedule().split("i", "i0", "i1", 32).pos("j", "jpos", "A", within="i").split("jpos", "jpos0", "jpos1", 4)
         .reorder("i0", "i1", "jpos0", "jpos1").parallelize("i0", race="NoRaces").vectorize("jpos1"))
    k = compile_quiet("y[i] = A[i,j] * x[j]", {"A": "csr"}, s)
    for n in (1, 2):
        with spcomp_threads(n, min_work=0 if n > 1 else None):
            np.testing.assert_allclose(k(A=a, x=x), a @ x, rtol=1e-12)


def test_tacos_spmm_cpu_schedule_is_refused_with_the_reason():
    """TACO's scheduleSpMMCPU runs the dense k loop between jpos0 and jpos1: spcomp
    strip-mines the row's position loop in place, so that order is refused."""
    s = (Schedule().split("i", "i0", "i1", 16).pos("j", "jpos", "A", within="i").split("jpos", "jpos0", "jpos1", 4)
         .reorder("i0", "i1", "jpos0", "k", "jpos1").parallelize("i0", race="NoRaces").vectorize("k"))
    with pytest.raises(ScheduleError, match="separates the pieces"):
        compile_quiet("Y[i,k] = A[i,j] * B[j,k]", {"A": "csr"}, s)


def test_tacos_spmv_rows_gpu_schedule_on_cuda_sim():
    """TACO's scheduleSpMVRowsGPU, with its pos of a row: the block > warp > lanes kernel."""
    rng = np.random.default_rng(8)
    a = rng.standard_normal((100, 80)) * (rng.random((100, 80)) < 0.3)
    x = rng.standard_normal(80)
    rows = Schedule().split("i", "block", "row", 8).parallelize("block", "gpu-block", race="NoRaces") \
        .parallelize("row", "gpu-warp")
    taco = rows.pos("j", "jpos", "A", within="i").split("jpos", "thread_nz", "thread", 32) \
        .parallelize("thread", "gpu-thread", race="ParallelReduction")
    k = compile_quiet("y[i] = A[i,j] * x[j]", {"A": "csr"}, taco, backend="cuda-sim")
    np.testing.assert_allclose(k(A=a, x=x), a @ x, rtol=1e-12)
    lanes = rows.parallelize("j", "gpu-thread", race="ParallelReduction")
    assert k.source == compile_quiet("y[i] = A[i,j] * x[j]", {"A": "csr"}, lanes, backend="cuda-sim").source


def test_bound_on_a_rows_positions_is_the_rows_length():
    a = np.zeros((5, 9))
    a[1, :3] = 1.0
    s = Schedule().pos("j", "jpos", "A", within="i").bound("jpos", 4)
    k = compile_quiet("y[i] = A[i,j] * x[j]", {"A": "csr"}, s)
    np.testing.assert_allclose(k(A=a, x=np.ones(9)), a.sum(axis=1))
    a[2, :] = 1.0  # a row of 9 positions
    with pytest.raises(KernelRuntimeError):
        k(A=a, x=np.ones(9))
