"""Sparse outputs past what 32-bit positions hold, and dense operands past 32-bit
coordinates: the call runs the 64-bit kernel, on every assembly path, never
returning an output whose positions wrapped.

The real sizes (2**31 entries) need tens of GB; the logic is tested here at small
sizes by lowering the 32-bit limit (``spcomp.lower.record.INDEX32_LIMIT``, read
when a kernel is compiled), and one real case runs where the memory is there.
"""
from __future__ import annotations

import os
import warnings

import numpy as np
import pytest
import scipy.sparse as sp
from hypothesis import given, settings
from hypothesis import strategies as st

import spcomp
from spcomp.errors import TranspositionWarning
from spcomp.lower import record
from spcomp.runtime.chunks import MODE as _CHUNKS_MODE  # noqa: F401  (module must import)
from spcomp.testing import check_kernel
from spcomp.testing.strategies import expressions, output_formats

from conftest import examples, spcomp_threads
from test_properties import run_case

LIMIT = 40


@pytest.fixture
def small_limit(monkeypatch, tmp_path):
    """Kernels compiled in this test take 40 entries as the most a 32-bit output holds."""
    monkeypatch.setattr(record, "INDEX32_LIMIT", LIMIT)
    monkeypatch.setenv("SPCOMP_CACHE_DIR", str(tmp_path / "cache"))
    spcomp.clear_cache()
    yield LIMIT
    spcomp.clear_cache()


def _index_dtypes(t) -> set:
    return {str(a.dtype) for level in t.levels for name, a in level.items() if name in ("pos", "crd")}


def _spgemm(n=30, density=0.2, seed=1):
    rng = np.random.default_rng(seed)
    return (sp.random(n, n, density=density, format="csr", random_state=rng),
            sp.random(n, n, density=density, format="csr", random_state=rng))


PATHS = [  # (threads, chunks mode, expression, formats)
    (1, "auto", "C[i,j] = A[i,k] * B[k,j]", {"A": "csr", "B": "csr", "C": "csr"}),       # one pass
    (2, "always", "C[i,j] = A[i,k] * B[k,j]", {"A": "csr", "B": "csr", "C": "csr"}),     # chunks
    (2, "never", "C[i,j] = A[i,k] * B[k,j]", {"A": "csr", "B": "csr", "C": "csr"}),      # count, fill
    (2, "auto", "C[i,j] = A[i,j] + B[i,j]", {"A": "csr", "B": "csr", "C": "csr"}),       # count, fill
    (1, "auto", "C[i,j] = A[i,j] + B[i,j]", {"A": "coo", "B": "csr", "C": "coo"}),       # coo append
    (2, "auto", "C[i,j] = A[i,k] * B[k,j]", {"A": "dcsr", "B": "csr", "C": "dcsr"}),     # dcsr append
]


@pytest.mark.parametrize("threads,mode,expr,formats", PATHS,
                         ids=["one-pass", "chunks", "two-phase-spgemm", "two-phase-add", "coo", "dcsr"])
def test_an_output_past_the_32_bit_limit_is_computed_by_the_64_bit_kernel(small_limit, monkeypatch,
                                                                          threads, mode, expr, formats):
    from spcomp.runtime import chunks, threads as threads_module
    monkeypatch.setattr(chunks, "MODE", mode)
    monkeypatch.setattr(threads_module, "MIN_PARALLEL_WORK", 0)
    A, B = _spgemm()
    with spcomp_threads(threads):
        run = check_kernel(expr, formats, {"A": A, "B": B})
    assert run.result.nnz > LIMIT
    assert _index_dtypes(run.result) == {"int64"}
    small = {"A": A[:1], "B": B if "k" in expr else B[:1]}  # one row: at most 30 entries, 32-bit
    with spcomp_threads(threads):
        run = check_kernel(expr, formats, small)
    assert run.result.nnz <= LIMIT and _index_dtypes(run.result) <= {"int32"}


def test_an_output_past_the_limit_on_the_gpu_path(small_limit):
    """cuda-sim appends into runtime-allocated arrays (bounded appends)."""
    A, B = _spgemm()
    run = check_kernel("C[i,j] = A[i,k] * B[k,j]", {"A": "dcsr", "B": "csr", "C": "dcsr"},
                       {"A": A, "B": B}, backend="cuda-sim")
    assert run.result.nnz > LIMIT and _index_dtypes(run.result) == {"int64"}


def test_a_dense_operand_past_the_limit_selects_the_64_bit_kernel(small_limit):
    """Its coordinates would not fit int32: the output's must not wrap."""
    x = np.zeros(3 * LIMIT)
    x[[1, LIMIT + 5, 3 * LIMIT - 1]] = [1.0, 2.0, 3.0]
    k = spcomp.compile("y[i] = x[i] * 2", formats={"y": "c"})
    y = k(x=x)
    assert _index_dtypes(y) == {"int64"}
    np.testing.assert_array_equal(y.to_numpy(), 2 * x)


def test_random_sparse_outputs_past_the_limit(outcome_stats, tmp_path):
    """Random expressions with sparse outputs, the 32-bit limit at a handful of entries:
    whatever path assembles the output, the result is the reference's."""
    @settings(max_examples=examples(40), deadline=None)
    @given(st.data())
    def run(data):
        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(record, "INDEX32_LIMIT", data.draw(st.integers(1, 30), label="limit"))
            mp.setenv("SPCOMP_CACHE_DIR", str(tmp_path / "cache"))
            spcomp.clear_cache()
            case = data.draw(expressions(max_operands=3, max_order=3, min_output_order=1,
                                         output_format=lambda ndim: output_formats(ndim, allow_dense=False)),
                             label="case")
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", TranspositionWarning)
                with spcomp_threads(data.draw(st.sampled_from([1, 2]), label="threads"), 0):
                    run_case(data, case, outcome_stats)
            spcomp.clear_cache()
    run()
    outcome_stats.assert_refusal_rate(0.2)


def _available_bytes() -> int:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


@pytest.mark.skipif(_available_bytes() < 12 << 30, reason="needs 12 GB of free memory for a 2**31-element "
                    "operand (8 GB of float32)")
def test_a_real_dense_operand_past_2_31_elements():
    """A float32 vector of 2**31 + 16 elements, zero but for three entries (calloc'd:
    its zero pages cost no memory), read by a kernel with a sparse output: the
    coordinates past 2**31 come back exact, in int64."""
    n = 2**31 + 16
    x = np.zeros(n, dtype=np.float32)
    at = np.array([5, 2**31 - 1, n - 1])
    x[at] = [1.0, 2.0, 3.0]
    k = spcomp.compile("y[i] = x[i] * 2", formats={"y": "c"}, dtype="float32")
    y = k(x=x)
    assert y.levels[0]["crd"].dtype == np.int64
    np.testing.assert_array_equal(y.levels[0]["crd"], at)
    np.testing.assert_array_equal(y.vals, [2.0, 4.0, 6.0])
    del x
    os.sched_yield()
