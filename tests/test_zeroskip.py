"""Blocks of zeros skipped in dense loops that keep only nonzero values (lower/zeroskip.py)."""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import spcomp
from spcomp.ir import nodes as n
from spcomp.ir.types import F64, I64, PointerType
from spcomp.lower.zeroskip import BLOCK, skip_zero_blocks

from conftest import examples, spcomp_threads

_F = PointerType(F64)


def _fresh():
    count = {}

    def fresh(name):
        count[name] = count.get(name, 0) + 1
        return name if count[name] == 1 else f"{name}_{count[name]}"
    return fresh


def _loop(value_from, store_into):
    """``for t in 0..N: v = value_from[t]; if (v != 0) store_into[t] = v``."""
    t, N, v = n.Var("t", I64), n.Var("N", I64), n.Var("v", F64)
    return n.For(t, n.i64(0), N, n.block(
        n.Declare(v, n.Load(value_from, t)),
        n.If(n.Binary("!=", v, n.const(0, F64)), n.block(n.Store(store_into, t, v)))))


def test_a_loop_that_keeps_nonzeros_is_cut_into_blocks_with_a_scan():
    a, out = n.Var("a", _F), n.Var("out", _F)
    loop = _loop(a, out)
    new = skip_zero_blocks([loop], _fresh())
    blocks = next(s for s in new if isinstance(s, n.For))
    scan, test = [s for s in blocks.body.body if isinstance(s, (n.For, n.If))]
    assert not any(isinstance(x, (n.If, n.Store)) for x in n.walk(scan))  # branch-free: it vectorises
    assert isinstance(test.then.body[0], n.For) and test.then.body[0].body == loop.body  # the original body
    count = next(s for s in new if isinstance(s, n.Declare))
    assert blocks.end == count.var and count.init.lhs.rhs == n.i64(BLOCK - 1)  # ceil(N / BLOCK) blocks


def test_loops_of_other_shapes_are_left_alone():
    a = n.Var("a", _F)
    fresh = _fresh()
    reads_what_it_writes = _loop(a, a)
    assert skip_zero_blocks([reads_what_it_writes], fresh) == [reads_what_it_writes]
    threaded = dataclasses.replace(_loop(a, n.Var("out", _F)), parallel="threads")
    assert skip_zero_blocks([threaded], fresh) == [threaded]
    # a loop holding another loop is not innermost: only the inner one is cut
    outer = n.For(n.Var("i", I64), n.i64(0), n.i64(4), n.block(_loop(a, n.Var("out", _F))))
    (new,) = skip_zero_blocks([outer], fresh)
    assert new.var.name == "i" and isinstance(new.body.body[1], n.Declare)


def test_the_relu_of_a_dense_matrix_into_compressed_columns_uses_it():
    k = spcomp.compile("H[t,n] = relu(At[n,t])", formats={"H": "dc:1,0"}, dtype="float32")
    assert k.ir.count("whose values are all zero are skipped") >= 1
    assert "are all zero are skipped" not in spcomp.compile("y[i] = A[i,j] * x[j]", formats={"A": "csr"}).ir


_SPECIALS = st.sampled_from([0.0, -0.0, 0.0, 0.0, 1.5, -2.0, np.nan, np.inf, -np.inf, 1e-300])


@pytest.mark.parametrize("threads", [1, 2])
@settings(max_examples=examples(40), deadline=None)
@given(rows=st.integers(1, 5), cols=st.integers(1, 2 * BLOCK + 3), data=st.data(),
       expr=st.sampled_from(["H[i,j] = relu(A[i,j])", "H[i,j] = A[i,j] * B[i,j]", "H[i,j] = abs(A[i,j]) + B[i,j]",
                             "H[j,i] = sin(A[i,j])"]),
       fmt=st.sampled_from(["csr", "dcsr", "coo", "dc:1,0"]))
def test_kept_entries_match_numpy_with_blocks_of_zeros(threads, rows, cols, data, expr, fmt):
    """Sizes around the block length, values mostly zero with NaN, inf and -0.0:
    the entries kept are exactly the nonzero ones NumPy computes."""
    A = np.array(data.draw(st.lists(_SPECIALS, min_size=rows * cols, max_size=rows * cols))).reshape(rows, cols)
    B = np.array(data.draw(st.lists(_SPECIALS, min_size=rows * cols, max_size=rows * cols))).reshape(rows, cols)
    k = spcomp.compile(expr, formats={"H": fmt})
    ops = {"A": A, "B": B} if "B[" in expr else {"A": A}
    with np.errstate(all="ignore"), spcomp_threads(threads):
        got = k(**ops).to_numpy()
        ref = {"H[i,j] = relu(A[i,j])": lambda: np.where(A < 0, 0.0, A),  # NaN stays NaN
               "H[i,j] = A[i,j] * B[i,j]": lambda: A * B,
               "H[i,j] = abs(A[i,j]) + B[i,j]": lambda: np.abs(A) + B,
               "H[j,i] = sin(A[i,j])": lambda: np.sin(A).T}[expr]()
    np.testing.assert_array_equal(np.isnan(got), np.isnan(ref))
    np.testing.assert_array_equal(np.where(np.isnan(ref), 0, got), np.where(np.isnan(ref), 0, ref))
