"""Loops over a bitmap level run in parallel (Level.coordinate_positions).

A bitmap level is walked over its whole dimension with a byte test per coordinate,
and under the root its positions are its coordinates: its iterations are rows as
independent as a dense loop's, so the outer loop over a top bitmap level is split
by ranges of rows on CPU threads and on the GPU grid
(``lower/parallel.coordinate_rows``), and a top compressed level's positions are
split on the GPU as on CPU threads (``parallel.top_positions``). These tests check
the loops the default schedule makes parallel (``k.loops``), that CPU calls really
split (MIN_PARALLEL_WORK = 0), and results against NumPy over formats with bitmap
levels in every position, at one and two threads, on the CPU and cuda-sim.
"""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import spcomp
from spcomp.backends.cuda import nvcc
from spcomp.testing import check_kernel
from spcomp.testing.strategies import ExpressionCase, operands

from conftest import examples, spcomp_threads, split_everything

SPMV = "y[i] = A[i,j] * x[j]"
SIZES = {"i": 7, "j": 5, "k": 3}


@pytest.mark.parametrize("backend, kind", [("cpu", "threads"), ("cuda-sim", "gpu-thread")])
@pytest.mark.parametrize("expr, formats, line", [
    (SPMV, {"A": "bd"}, "for i in A level 1 (b) (parallel: {})"),
    (SPMV, {"A": "bb"}, "for i in A level 1 (b) (parallel: {})"),
    (SPMV, {"A": "bc"}, "for i in A level 1 (b) (parallel: {})"),
    (SPMV, {"A": "cb"}, "for i in A level 1 (c) (parallel: {}, by positions)"),
    ("y[i] = a[i] * b[i]", {"a": "b"}, "for i in a level 1 (b) (parallel: {})"),
    ("Y[i,j] = 2 * A[i,j]", {"A": "bc", "Y": "dc"}, "for i in A level 1 (b) (parallel: {})"),  # two-phase
    ("Y[i,j] = 2 * A[i,j]", {"A": "bd", "Y": "bb"}, "for i in A level 1 (b) (parallel: {})"),  # inserted
])
def test_the_default_schedule_runs_bitmap_loops_in_parallel(expr, formats, line, backend, kind, monkeypatch):
    k = spcomp.compile(expr, formats=formats, backend=backend)
    assert line.format(kind) in k.loops
    with split_everything(2, monkeypatch) as calls:
        for seed in range(3):
            check_kernel(expr, formats, backend=backend, sizes=SIZES, density=0.5, seed=seed)
    if backend == "cpu":
        assert calls and all(parts == 2 for _extent, parts in calls)


@pytest.mark.parametrize("backend", ["cpu", "cuda-sim"])
@pytest.mark.parametrize("expr, formats", [
    ("y[i] = a[i] * b[i]", {"a": "b", "b": "b"}),       # two bitmaps intersect: a merge
    ("y[i] = a[i] + b[i]", {"a": "b"}),                  # a bitmap merged with a dense vector
    ("Y[i,j] = 2 * A[i,j]", {"A": "bc", "Y": "cc"}),     # a sparse first output level is appended in order
])
def test_bitmap_loops_that_stay_serial(expr, formats, backend):
    k = spcomp.compile(expr, formats=formats, backend=backend)
    assert "parallel" not in k.loops
    check_kernel(expr, formats, backend=backend, sizes=SIZES, seed=1)


def test_a_bitmap_row_loop_is_balanced_by_the_level_below():
    """Rows of a bitmap over compressed are weighed by the compressed level's pos, as a
    CSR's are; the GPU default then picks a warp or a thread per row from it."""
    assert spcomp.compile(SPMV, formats={"A": "bc"}).lowered.threads.balance == ("A", 1)
    gpu = spcomp.compile(SPMV, formats={"A": "bc"}, backend="cuda-sim")
    assert "(GPU default: a warp per i" in gpu.loops


@pytest.mark.parametrize("expr, fmt", [(SPMV, "bc"), (SPMV, "cc"), ("y[j] = A[i,j] * x[i]", "cc"),
                                       ("s = A[i,j]", "cc")])
@pytest.mark.parametrize("cols, mapping", [(60, "gpu-warp"), (6, "gpu-thread")])
def test_the_gpu_default_runs_a_warp_per_long_bitmap_row_or_stored_row(expr, fmt, cols, mapping):
    """Long rows (>= 16 entries on average) of a bitmap-over-compressed or a DCSR run a
    warp each, short ones a thread each, on the same kernel."""
    for seed in range(2):
        r = check_kernel(expr, {"A": fmt}, backend="cuda-sim", sizes={"i": 9, "j": cols}, density=0.8, seed=seed)
        assert r.kernel.last_launch["mapping"] == mapping


@pytest.mark.parametrize("kind", ["gpu-warp", "gpu-block"])
@pytest.mark.parametrize("fmt", ["bd", "bc", "cc", "cb"])
def test_a_team_per_bitmap_row_or_compressed_position_splits_the_loop_inside(kind, fmt):
    """With a warp or a block per row its members split the row's loop (gpu-lane,
    gpu-thread) and only one of them writes the row's result."""
    s = spcomp.Schedule().parallelize("i", kind)
    k = spcomp.compile(SPMV, formats={"A": fmt}, backend="cuda-sim", schedule=s)
    assert f"(parallel: {kind}" in k.loops
    assert {"gpu-warp": "gpu-lane", "gpu-block": "gpu-thread"}[kind] in k.source.split("__global__")[-1]
    for seed in range(2):
        check_kernel(SPMV, {"A": fmt}, backend="cuda-sim", schedule=s, sizes={"i": 6, "j": 40}, seed=seed)


# expressions over A (order 2) or a (order 1); the output's formats they are drawn with
KERNELS = [
    ("y[i] = A[i,j] * x[j]", None),
    ("Y[i,k] = A[i,j] * B[j,k]", None),
    ("y[i] = A[i,j]", None),
    ("y[j] = A[i,j] * x[i]", None),
    ("Y[i,j] = A[i,j] * 2 + B[i,j]", ("dense", "dc", "db", "bd", "bb", "cc")),
    ("Y[i,j] = A[i,j] * B[i,j]", ("dense", "dc", "db", "bb")),
    ("y[i] = a[i] * b[i]", ("dense", "b", "c")),
    ("y[i] = a[i] * 3", ("dense", "b")),
]


@st.composite
def bitmap_format(draw, ndim: int) -> str:
    """Levels over d, c and b with a bitmap at a drawn position, in a drawn mode order."""
    levels = [draw(st.sampled_from("dcb")) for _ in range(ndim)]
    levels[draw(st.integers(0, ndim - 1))] = "b"
    order = draw(st.permutations(range(ndim)))
    text = "".join(levels)
    return text if list(order) == sorted(order) else text + ":" + ",".join(map(str, order))


@pytest.mark.filterwarnings("ignore::spcomp.errors.TranspositionWarning")
@pytest.mark.parametrize("backend", ["cpu", "cuda-sim"])
@settings(max_examples=examples(20), deadline=None)
@given(data=st.data())
def test_kernels_over_bitmap_levels_match_einsum_at_one_and_two_threads(backend, data):
    expr, outputs = data.draw(st.sampled_from(KERNELS))
    name = "A" if "A[" in expr else "a"
    formats = {name: data.draw(bitmap_format(2 if name == "A" else 1))}
    if "B[" in expr:
        formats["B"] = data.draw(st.sampled_from(["dense", "csr", "db"]))
    if outputs:
        out = data.draw(st.sampled_from(outputs))
        if out != "dense":
            formats[expr[0]] = out
    k = spcomp.compile(expr, formats=formats, backend=backend)
    case = ExpressionCase(expr, formats, {}, expr[0])
    ops = data.draw(operands(case, sizes={"i": data.draw(st.integers(0, 9)), "j": data.draw(st.integers(0, 6)),
                                          "k": 3}, scipy_inputs=False))
    first = None
    for threads in (1, 2):
        with spcomp_threads(threads, min_work=0):
            result = check_kernel(expr, formats, operands=dict(ops), backend=backend).result
        got = result.to_numpy() if hasattr(result, "to_numpy") else np.asarray(result)
        if first is None:
            first = got
        else:  # rows never share an output element: the split changes no bit
            np.testing.assert_array_equal(got, first, err_msg=k.loops)


@pytest.mark.parametrize("expr, formats", [
    ("Y[i,j] = A[i,j] * 2", {"A": "db"}),
    ("Y[i,j] = A[i,j] * B[i,j]", {"A": "db"}),
    ("Y[i,k,j] = A[i,k,j] * 2", {"A": "cdb"}),
])
def test_an_inner_loop_over_a_bitmap_level_runs_on_threads_when_asked(expr, formats, monkeypatch):
    """Below the outermost loop a bitmap level's range is 0..N in every row, as a dense
    loop's is, so parallelize of it splits that range."""
    s = spcomp.Schedule().parallelize("j")
    k = spcomp.compile(expr, formats=formats, schedule=s)
    assert "level" in k.loops and "(b) (parallel: threads)" in k.loops
    with split_everything(2, monkeypatch) as calls:
        for seed in range(3):
            check_kernel(expr, formats, schedule=s, sizes=SIZES, seed=seed)
    assert calls


@pytest.mark.parametrize("expr, formats, why", [
    ("Y[i,j] = A[i,j] * B[i,j]", {"A": "db", "B": "db"}, "merges sparse operands"),
    ("Y[i,j] = A[i,j] + B[i,j]", {"A": "db"}, "merges sparse operands"),
    ("Y[i,j] = A[i,j] * B[i,j]", {"A": "db", "B": "dc"}, "whose range changes"),
])
def test_an_inner_loop_that_merges_a_bitmap_level_is_refused(expr, formats, why):
    with pytest.raises(spcomp.ScheduleError, match=why):
        spcomp.compile(expr, formats=formats, schedule=spcomp.Schedule().parallelize("j"))


@pytest.mark.skipif(not nvcc.nvcc_available(), reason="nvcc is not installed")
@pytest.mark.parametrize("formats, schedule", [
    ({"A": "bc"}, None), ({"A": "cc"}, None), ({"A": "bd"}, ("i", "gpu-warp")), ({"A": "cb"}, ("i", "gpu-block")),
])
def test_parallel_bitmap_and_position_kernels_compile_with_nvcc(formats, schedule):
    s = spcomp.Schedule().parallelize(*schedule) if schedule else None
    k = spcomp.compile(SPMV, formats=formats, backend="cuda-sim", schedule=s)
    report = nvcc.check(k, arch=("sm_90",))["sm_90"]
    assert report and all(info["spill_stores"] == 0 for info in report.values())
