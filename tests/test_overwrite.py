"""Dense outputs the kernel writes whole are not zeroed first (spcomp/lower/coverage.py).

A wrong "yes" from the coverage check would return uninitialised memory, which is
often zero by luck; so every test runs with such outputs filled with NaN bytes
(conftest.py), and these tests also count how many outputs were left unzeroed and
fill given outputs with garbage before the call.
"""
from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp
from hypothesis import given, settings
from hypothesis import strategies as st

import spcomp
from spcomp.runtime import outputs as outputs_module
from spcomp.ir import nodes as n
from spcomp.ir.types import F64, I64, PointerType
from spcomp.lower.coverage import writes_every_element
from spcomp.testing.strategies import expressions

from conftest import examples, spcomp_threads
from test_properties import run_case


@pytest.fixture
def poisoned(monkeypatch):
    """Counts the fresh outputs the kernel promises to overwrite (NaN-filled, as in
    every test: conftest.py)."""
    counts = {"skipped zeros": 0}
    real = outputs_module.fresh_output

    def fresh(shape, dtype, overwrite):
        out = real(shape, dtype, overwrite)
        if overwrite:
            counts["skipped zeros"] += 1
            out.reshape(-1).view(np.uint8).fill(0xFF)  # NaN in every float type; True / -1 otherwise
        return out

    monkeypatch.setattr(outputs_module, "fresh_output", fresh)
    return counts


def _overwrites(expr, formats):
    k = spcomp.compile(expr, formats=formats)
    return k.lowered.output.overwrites


@pytest.mark.parametrize("expr, formats, expected", [
    # stored whole: every row stores its value once
    ("y[i] = A[i,j] * x[j]", {"A": "csr"}, True),
    ("y[i] = A[i,j] * x[j] + b[i]", {"A": "csr"}, True),
    ("y[i] = A[i,j] * x[j]", {"A": "twell"}, True),
    ("Y[i,j] = 2 * A[i,j]", {}, True),                       # dense in, dense out
    ("s = a[i] * b[i]", {"a": "c"}, True),                   # a scalar, stored once
    # rows cleared by the kernel at the top of the row loop (coverage.zero_rows)
    ("Y[i,k] = A[i,j] * X[j,k]", {"A": "csr"}, True),        # register blocks load Y's row
    ("y[i] = a[i] + b[i]", {"a": "c"}, True),                # a merge loop: stores under ifs
    ("Y[i,j] = 2 * A[i,j]", {"A": "csr"}, True),             # only the nonzeros are stored
    ("A[i,j] = B[i,k,l] * C[k,j] * D[l,j]", {"B": "dcc"}, True),
    # neither: the runtime zeroes the output
    ("y[i] = A[i,j] * x[j]", {"A": "dcsr"}, False),          # the row loop walks stored rows only
    ("A[i,j] = B[i,k,l] * C[k,j] * D[l,j]", {"B": "csf"}, False),
    ("y[i] = A[i,j] * x[j]", {"A": "coo"}, False),           # a row may come back (non-unique level)
    ("y[i] = A[i,j] * x[j]", {"A": "csc"}, False),           # scattered adds
    ("y[j] = A[i,j] * x[i]", {"A": "csr"}, False),
    ("y[i] += A[i,j] * x[j]", {"A": "csr"}, False),          # adds to what is there
    ("Y[i,k] = A[i,j] * X[j,k]", {"A": "csr", "Y": "dd:1,0"}, False),  # rows of Y are not i
])
def test_which_kernels_overwrite(expr, formats, expected):
    assert _overwrites(expr, formats) is expected


def _loop(var, start, end, *body, parallel=None):
    return n.For(var, start, end, n.block(*body), parallel=parallel)


def test_coverage_rejects_partial_loops_guards_and_early_returns():
    N = n.Var("N_i", I64)
    i = n.Var("i", I64)
    y = n.Var("y_vals", PointerType(F64))
    one = n.const(1.0, F64)
    sizes = {"i": N}

    def fn(*body):
        return n.Function("kernel", (N, y), n.block(*body))

    whole = _loop(i, n.i64(0), N, n.Store(y, i, one))
    assert writes_every_element(fn(whole), y, ["i"], sizes)
    assert not writes_every_element(fn(_loop(i, n.i64(1), N, n.Store(y, i, one))), y, ["i"], sizes)
    guarded = _loop(i, n.i64(0), N, n.If(n.Binary("<", i, n.i64(5)), n.block(n.Store(y, i, one))))
    assert not writes_every_element(fn(guarded), y, ["i"], sizes)
    assert not writes_every_element(fn(n.Return(n.STATUS_OK), whole), y, ["i"], sizes)
    assert writes_every_element(fn(whole, n.Return(n.STATUS_OK)), y, ["i"], sizes)
    shifted = _loop(i, n.i64(0), N, n.Store(y, n.Binary("+", i, n.i64(0)), one))
    assert not writes_every_element(fn(shifted), y, ["i"], sizes)
    reads = _loop(i, n.i64(0), N, n.Store(y, i, n.Load(y, i)))
    assert not writes_every_element(fn(reads), y, ["i"], sizes)
    lo, hi = n.Var("lo", I64), n.Var("hi", I64)
    chunk = _loop(i, lo, hi, n.Store(y, i, one), parallel="threads")
    assert writes_every_element(fn(chunk), y, ["i"], sizes, parallel=("i", lo, hi))
    assert not writes_every_element(fn(chunk), y, ["i"], sizes)  # a chunk of another loop


def test_the_row_loop_clears_its_row_before_adding_into_it():
    k = spcomp.compile("Y[i,k] = A[i,j] * X[j,k]", formats={"A": "csr"})
    body = k.ir[k.ir.index("for (int64_t i = lo; i < hi; i++)"):]
    assert body.index("zero row i of Y_vals") < body.index("in blocks of 32")
    assert "Y_vals[q] = 0.0;" in body


def test_skipped_zeros_still_give_the_right_result(poisoned):
    rng = np.random.default_rng(3)
    A = sp.random(300, 200, density=0.05, format="csr", random_state=4)
    x = rng.standard_normal(200)
    k = spcomp.compile("y[i] = A[i,j] * x[j]", formats={"A": "csr"})
    for threads in (1, 2):
        with spcomp_threads(threads, min_work=0):
            for _ in range(3):  # the general path, then the cached fast path
                np.testing.assert_allclose(k(A=A, x=x), A @ x, rtol=1e-12, atol=1e-12)
    assert poisoned["skipped zeros"] == 6
    X = rng.standard_normal((200, 37))  # 32 columns in registers + 5 in the remainder
    k = spcomp.compile("Y[i,k] = A[i,j] * X[j,k]", formats={"A": "csr"})
    for threads in (1, 2):
        with spcomp_threads(threads, min_work=0):
            for _ in range(2):
                np.testing.assert_allclose(k(A=A, X=X), A @ X, rtol=1e-12, atol=1e-12)
                Y = np.full((300, 37), np.nan)
                assert k(A=A, X=X, Y=Y) is Y
                np.testing.assert_allclose(Y, A @ X, rtol=1e-12, atol=1e-12)
    assert poisoned["skipped zeros"] == 10


def test_a_given_output_full_of_garbage_is_overwritten_or_cleared():
    A = sp.random(50, 40, density=0.1, format="csr", random_state=5)
    x = np.arange(40.0)
    for fmt in ("csr", "dcsr"):  # dcsr skips empty rows: its given output must be cleared
        k = spcomp.compile("y[i] = A[i,j] * x[j]", formats={"A": fmt})
        for _ in range(3):
            y = np.full(50, np.nan)
            assert k(A=A, x=x, y=y) is y
            np.testing.assert_allclose(y, A @ x, rtol=1e-12, atol=1e-12)


def test_random_kernels_with_poisoned_fresh_outputs(outcome_stats, poisoned):
    """Random expressions x formats on one and two threads (every call split): an
    element a kernel that skips the zeros forgets stays NaN and fails the check."""

    @settings(max_examples=examples(150))
    @given(st.data())
    def run(data):
        case = data.draw(expressions(max_operands=3, max_order=2), label="case")
        threads = data.draw(st.sampled_from([1, 2]), label="threads")
        with spcomp_threads(threads, min_work=0):
            run_case(data, case, outcome_stats)

    run()
    outcome_stats.assert_refusal_rate(0.2)
    print("fresh outputs left unzeroed:", poisoned["skipped zeros"])
    assert poisoned["skipped zeros"] > 0, "no random kernel overwrote its output: the test checks nothing"


def test_an_output_that_shares_memory_with_an_input_is_refused():
    """Writing y while reading x from the same memory is a silent wrong answer, with
    or without the zeros: refused, on the general and on the cached fast path."""
    A = sp.random(6, 6, density=0.5, format="csr", random_state=6)
    x, y = np.ones(6), np.zeros(6)
    buf = np.zeros(12)
    for expr in ("y[i] = A[i,j] * x[j]", "y[i] += A[i,j] * x[j]"):
        k = spcomp.compile(expr, formats={"A": "csr"})
        for _ in range(2):  # the second call would take the fast path
            k(A=A, x=x, y=y)
            with pytest.raises(spcomp.OperandError, match="output y shares memory with input x"):
                k(A=A, x=x, y=x)
            with pytest.raises(spcomp.OperandError, match="shares memory"):
                k(A=A, x=buf[:6], y=buf[3:9])
    k = spcomp.compile("y[i] = A[i,j] * x[j]", formats={"A": "csr"})
    data = np.zeros(3 + A.nnz)
    B = sp.csr_matrix((data[3:], A.indices, A.indptr), shape=A.shape)  # B.data overlaps y
    with pytest.raises(spcomp.OperandError, match="input A"):
        k(A=B, x=x, y=data[:6])


def test_interleaved_views_of_one_buffer_are_not_an_overlap():
    A = sp.random(6, 6, density=0.5, format="csr", random_state=7)
    buf = np.arange(12.0)
    x, y = buf[0::2], buf[1::2]  # address ranges overlap, elements do not
    k = spcomp.compile("y[i] = A[i,j] * x[j]", formats={"A": "csr"})
    expected = A @ x.copy()
    np.testing.assert_allclose(k(A=A, x=x, y=y), expected, rtol=1e-12)
