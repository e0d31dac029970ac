"""A SciPy matrix changed in place after a kernel validated it (its conversion is
cached per object): structure changes are caught, and no change ever makes a
kernel address outside an array.

* ``indptr`` changed (a row's extent, ``indptr[-1]`` raised): detected at the next
  call (a copy of ``indptr`` is compared, O(rows)), the matrix validated again, and
  a bad one refused with InvalidTensorError.
* coordinates changed in place (``indices``): not detected (that costs a pass over
  them), but every coordinate a kernel reads is clamped into its dimension, so the
  kernel stays inside its arrays: no crash, no read of foreign memory.
"""
from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp
from hypothesis import given, settings
from hypothesis import strategies as st

import spcomp
from spcomp.errors import InvalidTensorError

from conftest import examples

SPMV = ("y[i] = A[i,j] * x[j]", {"A": "csr"})
ATX = ("y[j] = A[i,j] * x[i]", {"A": "csr"})  # scatters into y at A's coordinates


def _matrix(seed=1):
    return sp.random(60, 50, density=0.2, format="csr", random_state=seed)


@pytest.mark.parametrize("calls", [1, 3], ids=["general-path", "fast-path"])
def test_a_changed_indptr_is_caught_at_the_next_call(calls):
    k = spcomp.compile(*SPMV)
    A, x = _matrix(), np.ones(50)
    for _ in range(calls):
        np.testing.assert_allclose(k(A=A, x=x), A @ x)
    A.indptr[-1] += 7  # more entries than indices holds
    with pytest.raises(InvalidTensorError, match="indptr ends at"):
        k(A=A, x=x)
    A.indptr[-1] -= 7
    A.indptr[10], A.indptr[11] = A.indptr[11] + 3, A.indptr[10]  # decreasing
    with pytest.raises(InvalidTensorError, match="indptr decreases"):
        k(A=A, x=x)


def test_a_row_moved_within_indptr_is_revalidated_and_computed():
    """A valid change of the structure (an entry moved to the next row) is simply used."""
    k = spcomp.compile(*SPMV)
    A, x = _matrix(), np.arange(50.0)
    k(A=A, x=x)
    row = int(np.argmax(np.diff(A.indptr) > 0))
    A.indptr[row + 1] -= 1  # the row's last entry now starts the next row
    A.has_sorted_indices = False
    want = sp.csr_matrix((A.data, A.indices, A.indptr), shape=A.shape) @ x
    got = k(A=A, x=x)
    np.testing.assert_allclose(got, want)


@pytest.mark.parametrize("expr,formats", [SPMV, ATX], ids=["gather", "scatter"])
def test_coordinates_changed_in_place_never_reach_outside_the_arrays(expr, formats):
    k = spcomp.compile(expr, formats=formats)
    A = _matrix()
    x = np.ones(A.shape[1] if "x[j]" in expr else A.shape[0])
    k(A=A, x=x)
    A.indices[:5] = [10**9, -(10**9), 2**31 - 1, -1, A.shape[1]]  # far out of range
    y = k(A=A, x=x)
    assert np.isfinite(y).all() and y.shape == (A.shape[0] if "y[i]" in expr else A.shape[1],)


@settings(max_examples=examples(30), deadline=None)
@given(changes=st.lists(st.tuples(st.integers(0, 599), st.integers(-2**31, 2**31 - 1)), min_size=1, max_size=20))
def test_any_in_place_coordinates_leave_the_kernel_inside_its_arrays(changes):
    """Whatever the caller writes into ``indices``, the call returns a finite result of
    the right shape (x holds ones: a read outside it would show as garbage or crash)."""
    k = spcomp.compile(*ATX)
    A = _matrix(seed=4)
    x = np.ones(A.shape[0])
    k(A=A, x=x)
    for at, value in changes:
        A.indices[at % A.nnz] = value
    y = k(A=A, x=x)
    assert y.shape == (A.shape[1],) and np.isfinite(y).all()
    assert y.sum() == pytest.approx(A.data.sum())  # every entry added once, into some column


def test_coordinates_only_merged_and_stored_are_not_clamped_and_stay_harmless():
    """A sparse add reads coordinates only to merge them and to store them into the
    output: its loops carry no clamp (they would cost a quarter of its time), and a
    coordinate changed in place is copied into the result as it is. The result then
    fails validation when used (a kernel clamps what addresses memory anyway)."""
    k = spcomp.compile("C[i,j] = A[i,j] + B[i,j]", formats={"A": "csr", "B": "csr", "C": "csr"})
    assert "clamp_index(" not in k.ir
    A, B = _matrix(1), _matrix(2)
    k(A=A, B=B)
    A.indices[0] = 10**6
    C = k(A=A, B=B)
    assert C.levels[1]["crd"].max() == 10**6
    spmv = spcomp.compile(*SPMV)
    with pytest.raises(InvalidTensorError, match="out of range"):  # arrays handed in anew are validated
        spmv(A=spcomp.Tensor(C.format, C.shape, C.levels, C.vals), x=np.ones(50))
    assert np.isfinite(spmv(A=C, x=np.ones(50))).all()  # the result itself: its addressing is clamped


@pytest.mark.parametrize("bad", [10**6, -5, 2**31 - 1, 200])
def test_a_tensor_changed_in_place_is_not_copied_by_the_unchecked_counting_sort(bad):
    """A csr Tensor read as csc is copied by SciPy's counting sort (runtime/row_copies.py),
    which indexes its counts by the coordinates unchecked: a coordinate changed in place
    after the Tensor was validated must send the copy the checked way, which names it."""
    import warnings
    from spcomp.runtime import row_copies
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        k = spcomp.compile("y[i] = A[i,j] * x[j]", formats={"A": "csc"})
    A = sp.random(300, 200, density=0.05, format="csr", random_state=1)
    t = spcomp.Tensor.from_scipy(A, "csr")
    x = np.ones(200)
    np.testing.assert_allclose(k(A=t, x=x), A @ x)
    csc = t.format.with_order((1, 0))
    assert row_copies.swapped(t, csc, False) is not None  # the fast copy, while the arrays are valid
    t.levels[1]["crd"][0] = bad
    assert row_copies.swapped(t, csc, False) is None
    with pytest.raises(InvalidTensorError, match="out of range"):
        k(A=t, x=x)
