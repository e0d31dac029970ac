"""Explicit reductions sum(k, e), max(k, e), min(k, e): against the dense reference,
where a sparse operand's unstored entries are zeros (and an empty range gives 0)."""
from __future__ import annotations

import warnings

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import spcomp
from spcomp.errors import TranspositionWarning, UnsupportedError
from spcomp.testing import densify, reference
from spcomp.testing.programs import close
from spcomp.testing.strategies import formats, tensors

from conftest import examples

BODIES = ["A[i,j]", "A[i,j] * B[i,j]", "A[i,j] + B[i,j]", "abs(A[i,j]) - B[i,j]", "A[i,j] * x[j]",
          "relu(A[i,j]) * 2"]


@settings(max_examples=examples(40), deadline=None)
@given(st.data())
def test_random_reductions_match_numpy(data):
    op = data.draw(st.sampled_from(["max", "min", "sum"]))
    body = data.draw(st.sampled_from(BODIES))
    shape = (data.draw(st.integers(0, 5)), data.draw(st.integers(0, 5)))
    whole = data.draw(st.booleans())
    text = f"n = {op}(i, {op}(j, {body}))" if whole else f"m[i] = {op}(j, {body}) + 1"
    fa = data.draw(formats(2, kinds="dcq", allow_packed=False))
    fb = data.draw(formats(2, kinds="dc", allow_packed=False))
    ops = {"A": data.draw(tensors(shape, fa)), "B": data.draw(tensors(shape, fb)),
           "x": data.draw(tensors((shape[1],), "dense"))}
    backend = data.draw(st.sampled_from(["cpu"] * 5 + ["cuda-sim"]))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", TranspositionWarning)
        k = spcomp.compile(text, formats={n: f for n, f in (("A", fa), ("B", fb)) if n in body},
                           backend=backend)
    names = {a.tensor.name for a in __import__("spcomp").notation.accesses(k.notation.rhs)}
    got = k(**{n: v[1] for n, v in ops.items() if n in names})
    want = reference(k.notation, {n: v[0] for n, v in ops.items() if n in names})
    assert close(got, want), (text, fa, fb, densify(got), want)


def test_max_over_sparse_counts_unstored_zeros():
    import scipy.sparse as sp
    A = sp.csr_matrix(np.array([[-1.0, 0, -2], [-1, -3, -2], [0, 0, 0], [4, 0, 1]]))
    k = spcomp.compile("m[i] = max(j, A[i,j])", formats={"A": "csr"})
    assert np.array_equal(k(A=A), [0.0, -1.0, 0.0, 4.0])
    k = spcomp.compile("m[i] = min(j, A[i,j])", formats={"A": "csr"})
    assert np.array_equal(k(A=A), [-2.0, -3.0, 0.0, 0.0])
    assert "when a coordinate of j was not visited" in k.loops


def test_binary_max_stays_a_function():
    x, y = np.array([1.0, 5.0]), np.array([3.0, 2.0])
    k = spcomp.compile("z[i] = max(x[i], y[i])")
    assert np.array_equal(k(x=x, y=y), [3.0, 5.0])
    # a bare name that is not an index is a scalar operand: the binary function
    k = spcomp.compile("z[i] = max(s, x[i])")
    assert np.array_equal(k(s=2.0, x=x), [2.0, 5.0])


def test_reduction_text_round_trips():
    from spcomp.frontend import to_notation, unparse
    a = to_notation("m[i] = max(j, A[i,j] * x[j]) + min(k, B[i,k])")
    assert repr(a) == "m[i] = (max(j, A[i,j] * x[j]) + min(k, B[i,k]))"
    assert to_notation(unparse(a)) == a


def test_dask_refuses_a_split_max():
    pytest.importorskip("dask")
    from spcomp.dask.plan import hoist
    from spcomp.frontend import to_notation
    a = to_notation("m[i] = max(j, A[i,j])")
    with pytest.raises(UnsupportedError, match="one chunk"):
        hoist(a.rhs, {"j"}, set())


def test_sibling_reductions_over_one_name_are_separate():
    x, y = np.array([1.0, -2.0, 3.0]), np.array([-4.0, 1.0, 0.0])
    assert spcomp.compile("n = sum(i, x[i]) * sum(i, y[i])")(x=x, y=y) == x.sum() * y.sum()
    assert spcomp.compile("n = max(i, x[i]) + min(i, y[i])")(x=x, y=y) == x.max() + y.min()
