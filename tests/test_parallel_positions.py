"""Outer loops over a top compressed level run on threads (parallel.top_positions).

A DCSR matrix or a CSF tensor has no dense row loop to split: the outer loop walks
the stored coordinates of its first level. When that level is unique and nothing
co-iterates with it, every position owns its own rows of a dense output, so the
runtime splits the positions over threads (balanced by the next level's ``pos``).
These tests force splitting of small inputs (MIN_PARALLEL_WORK = 0) and check the
split happened, the results against NumPy, bitwise equality with one thread, and the
cases that must stay sequential. The GPU backends split the positions over the grid.
"""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import spcomp
from spcomp.testing import check_kernel, random_operands

from conftest import examples, split_everything


def _lowered(k):
    return k.lowered


@pytest.mark.parametrize("expr, formats, walked", [
    ("y[i] = A[i,j] * x[j]", {"A": "cc"}, ("A", 0)),                       # DCSR SpMV
    ("Y[i,k] = A[i,j] * X[j,k]", {"A": "cc"}, ("A", 0)),                   # DCSR SpMM
    ("y[i] = A[i,j]", {"A": "cd"}, ("A", 0)),                              # compressed rows, dense columns
    ("A[i,j] = B[i,k,l] * C[k,j] * D[l,j]", {"B": "csf"}, ("B", 0)),       # MTTKRP
    ("y[j] = A[i,j] * x[i]", {"A": "cc:1,0"}, ("A", 0)),                   # DCSC: its top level is j
])
def test_top_compressed_loops_are_parallel_by_positions(expr, formats, walked):
    k = spcomp.compile(expr, formats=formats)
    low = _lowered(k)
    assert low.threads.positions == walked
    assert "(parallel: threads, by positions)" in k.loops
    assert "// parallel: threads" in k.ir


@pytest.mark.parametrize("expr, formats", [
    ("y[i] = A[i,j] * x[j]", {"A": "cc"}),
    ("y[i] = A[i,j] * x[j]", {"A": "cb"}),
    ("Y[i,j] = 2 * A[i,j]", {"A": "cc", "Y": "dc"}),   # two-phase assembly, counted by positions
])
def test_top_compressed_loops_run_on_gpu_threads_by_positions(expr, formats):
    """The GPU grid splits a top compressed level's positions as CPU threads do."""
    k = spcomp.compile(expr, formats=formats, backend="cuda-sim")
    assert k.lowered.threads.positions == ("A", 0)
    assert "(parallel: gpu-thread, by positions)" in k.loops or "(parallel: gpu-block, by positions)" in k.loops
    for seed in range(3):
        check_kernel(expr, formats, backend="cuda-sim", seed=seed, sizes={"i": 9, "j": 6})


@pytest.mark.parametrize("expr, formats, backend", [
    ("y[i] = A[i,j] * x[j]", {"A": "coo"}, "cpu"),                         # non-unique top level
    ("y[i] = A[i,j] * x[j] + B[i,j] * x[j]", {"A": "cc", "B": "cc"}, "cpu"),  # two levels co-iterate
    ("C[i,j] = 2 * A[i,j]", {"A": "cc", "C": "cc"}, "cpu"),                # sparse output
    ("y[i] = A[i,j] * x[j]", {"A": "csr"}, "cpu"),                         # dense rows: split by rows
])
def test_loops_that_are_not_split_by_positions(expr, formats, backend):
    k = spcomp.compile(expr, formats=formats, backend=backend)
    assert _lowered(k).threads.positions is None
    assert "by positions" not in k.loops


@pytest.mark.parametrize("threads", [2, 3])
def test_dcsr_spmv_splits_its_positions(threads, monkeypatch):
    """The split's extent is the number of stored rows, not the row count; a given
    output keeps zeros in the rows no position owns."""
    rng = np.random.default_rng(5)
    A = np.zeros((40, 9))
    rows = rng.choice(40, 11, replace=False)
    A[rows] = rng.random((11, 9)) * (rng.random((11, 9)) < 0.6)
    A[rows[0]] = 0.0
    A[rows[0], 0] = 1.0
    x = rng.random(9)
    At = spcomp.Tensor.from_numpy(A, "cc")
    k = spcomp.compile("y[i] = A[i,j] * x[j]", formats={"A": "cc"})
    with split_everything(threads, monkeypatch) as calls:
        y = np.full(40, 9.0)
        got = k(A=At, x=x, y=y)
    stored_rows = int(At.levels[0]["pos"][-1])
    assert (stored_rows, threads) in calls
    np.testing.assert_allclose(got, A @ x, rtol=1e-13, atol=1e-13)
    assert got is y


TOP_FORMATS_2D = ["cc", "cd", "cc:1,0"]
TOP_FORMATS_3D = ["ccc", "cdc", "csf", "cdd", "ccd"]


@st.composite
def top_compressed_kernels(draw):
    """A random kernel whose first operand has a compressed top level, with dense
    factors, a dense output, random sizes (0 and 1 included) and densities."""
    shape = draw(st.sampled_from(["spmv", "spmm", "rowsum", "mttkrp", "ttv", "scaled"]))
    if shape == "spmv":
        expr, fmts = "y[i] = A[i,j] * x[j]", {"A": draw(st.sampled_from(TOP_FORMATS_2D))}
    elif shape == "spmm":
        expr, fmts = "Y[i,k] = A[i,j] * X[j,k]", {"A": draw(st.sampled_from(TOP_FORMATS_2D))}
    elif shape == "rowsum":
        expr, fmts = "y[i] = A[i,j]", {"A": draw(st.sampled_from(TOP_FORMATS_2D))}
    elif shape == "mttkrp":
        expr, fmts = "A[i,j] = B[i,k,l] * C[k,j] * D[l,j]", {"B": draw(st.sampled_from(TOP_FORMATS_3D))}
    elif shape == "ttv":
        expr, fmts = "Y[i,j] = B[i,j,k] * v[k]", {"B": draw(st.sampled_from(TOP_FORMATS_3D))}
    else:
        expr, fmts = "Y[i,j] += 2 * A[i,j] * s[i]", {"A": draw(st.sampled_from(TOP_FORMATS_2D))}
    sizes = {c: draw(st.sampled_from([0, 1, 3, 8, 17])) for c in "ijkl"}
    return expr, fmts, sizes, draw(st.sampled_from([0.1, 0.4, 0.9]))


@settings(max_examples=examples(40), deadline=None)
@given(case=top_compressed_kernels(), threads=st.sampled_from([2, 3]), seed=st.integers(0, 2**16),
       dtype=st.sampled_from(["float32", "float64"]))
def test_random_kernels_split_by_positions_match_numpy_and_one_thread(case, threads, seed, dtype):
    expr, fmts, sizes, density = case
    k = spcomp.compile(expr, formats=fmts, dtype=dtype)
    walked = _lowered(k).threads.positions
    ops = random_operands(k, sizes=sizes, density=density, seed=seed)

    def fresh():  # a += output is updated in place: each call gets its own copy of the arrays
        return {n: (v.copy() if isinstance(v, np.ndarray) else v) for n, v in ops.items()}
    with pytest.MonkeyPatch.context() as mp:
        with split_everything(1, mp):
            one = k(**fresh())
        k.runtime.launcher.bounds_cache.clear()  # splits are cached per kernel; the spy should see this one
        with split_everything(threads, mp) as calls:
            check_kernel(expr, fmts, dtype=dtype, operands=fresh())
            many = k(**fresh())
    if walked is not None:  # (a column-major operand under a row output keeps its loop sequential)
        assert walked[1] == 0
        operand = ops.get(walked[0])
        extent = int(operand.levels[0]["pos"][-1]) if hasattr(operand, "levels") else None
        if extent is not None and extent >= 2:
            assert (extent, threads) in calls
    assert one.tobytes() == many.tobytes()  # each position's rows are computed by one thread, in order
