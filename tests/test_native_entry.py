"""The native entry of a repeated call (runtime/fastentry.c, runtime/native_entry.py).

Once a kernel's FastCall has served a call, its checks and the call run in C.
Each test proves the entry ran where it claims to (the Python checks are made
to fail loudly first) and that everything it must not accept falls back to the
Python path with the same result or error as before: other objects, layouts,
dtypes, thread counts, a changed SciPy matrix, an overlapping or read-only
output, a dead operand's stand-in.
"""
from __future__ import annotations

import gc

import numpy as np
import pytest
import scipy.sparse as sp
from hypothesis import given, settings
from hypothesis import strategies as st

import spcomp
from spcomp.errors import OperandError
from spcomp.runtime import Tensor, native_entry, threads

pytestmark = pytest.mark.skipif(not native_entry.available(),
                                reason="spcomp.runtime.fastentry was not built (no C compiler at install)")


def _kernel():
    return spcomp.compile("y[i] = W[i,j] * x[j]", formats={"W": "csr"})


def _W(seed=0, n=30):
    return sp.random(n, n, density=0.3, format="csr", random_state=seed)


def _warmed(k, **ops):
    """``k`` after two calls with ``ops``: the second made its FastCall's native entry."""
    k(**ops)
    k(**ops)
    return k


def _native_only(k, monkeypatch):
    """The kernel's latest FastCall, its Python checks made to fail until the test
    ends: what runs next without an error ran in the native entry. (Kernels are
    cached by text: the next test may meet the same FastCall.)"""
    fast = k._fast.latest
    assert fast.native is not None

    def refuse(operands):
        raise AssertionError("the Python fast path ran where the native entry should have")
    monkeypatch.setattr(fast, "spec", refuse)
    return fast


@pytest.mark.parametrize("kind", ["tensor", "scipy"])
def test_repeated_call_runs_natively(kind, monkeypatch):
    k = _kernel()
    W = _W()
    A = Tensor.from_scipy(W, "csr") if kind == "tensor" else W
    x = np.arange(30.0)
    k(W=A, x=x)
    first = k(W=A, x=x)
    _native_only(k, monkeypatch)
    got = k(W=A, x=x)
    assert got is not first
    np.testing.assert_allclose(got, W @ x)
    x2 = np.linspace(0, 1, 30)  # a new array laid out alike: its pointer swapped in
    np.testing.assert_allclose(k(W=A, x=x2), W @ x2)
    x2 *= 3  # changed in place: read afresh
    np.testing.assert_allclose(k(W=A, x=x2), W @ x2)


def test_other_operands_fall_back_with_the_same_result():
    k = _kernel()
    W, x = _W(), np.arange(30.0)
    _warmed(k, W=W, x=x)
    assert k._fast.latest.native is not None
    np.testing.assert_allclose(k(W=W, x=x.astype(np.float32)), W @ x, rtol=1e-6)  # another dtype
    np.testing.assert_allclose(k(W=W, x=np.arange(60.0)[::2]), W @ np.arange(60.0)[::2])  # strided
    W2, x2 = _W(1, 12), np.ones(12)
    np.testing.assert_allclose(k(W=W2, x=x2), W2 @ x2)  # another shape

    class Sub(np.ndarray):
        pass
    np.testing.assert_allclose(k(W=W, x=x.view(Sub)), W @ x)  # not an ndarray itself
    W.data = W.data * 2.0  # a new data array in the same matrix
    np.testing.assert_allclose(k(W=W, x=x), W @ x)
    other = _W(7)  # the same matrix object holding another matrix's arrays
    W.data, W.indices, W.indptr = other.data, other.indices, other.indptr
    np.testing.assert_allclose(k(W=W, x=x), other @ x)


def test_names_are_checked():
    k = _kernel()
    W, x = _W(), np.arange(30.0)
    _warmed(k, W=W, x=x)
    with pytest.raises(OperandError):
        k(W=W)
    with pytest.raises(OperandError):
        k(W=W, z=x)
    with pytest.raises(OperandError):
        k(W=W, x=x, q=x)


def test_dead_operand_is_never_matched():
    k = _kernel()
    W, x = _W(), np.arange(30.0)
    T = Tensor.from_scipy(W, "csr")
    _warmed(k, W=T, x=x)
    assert k._fast.latest.native is not None
    del T
    gc.collect()
    with pytest.raises(spcomp.SpcompError):
        k(W=None, x=x)


def test_thread_counts_are_checked(monkeypatch):
    monkeypatch.setattr(threads, "MIN_PARALLEL_WORK", 0)  # the kernel splits: it records its thread count
    k = _kernel()
    W, x = _W(n=200), np.arange(200.0)
    before = threads.get_num_threads()
    try:
        threads.set_num_threads(2)
        k(W=W, x=x)
        k(W=W, x=x)
        fast = _native_only(k, monkeypatch)
        np.testing.assert_allclose(k(W=W, x=x), W @ x)
        monkeypatch.setattr(fast, "spec", None)  # the Python path back for what the entry refuses
        with threads.thread_limit(1):
            np.testing.assert_allclose(k(W=W, x=x), W @ x)
        threads.set_num_threads(1)
        np.testing.assert_allclose(k(W=W, x=x), W @ x)
    finally:
        threads.set_num_threads(before)


def test_given_output_runs_natively_and_overlap_is_still_refused(monkeypatch):
    k = _kernel()
    W, x = _W(), np.arange(30.0)
    y = np.full(30, 7.0)
    _warmed(k, W=W, x=x, y=y)
    _native_only(k, monkeypatch)
    assert k(W=W, x=x, y=y) is y
    np.testing.assert_allclose(y, W @ x)  # "=" clears the given output first
    monkeypatch.setattr(k._fast.latest, "spec", None)
    with pytest.raises(OperandError):
        k(W=W, x=x, y=x)  # the output is an input: refused, native entry or not
    frozen = np.zeros(30)
    frozen.flags.writeable = False
    with pytest.raises(OperandError):
        k(W=W, x=x, y=frozen)
    y2 = np.empty(30)
    assert k(W=W, x=x, y=y2) is y2
    np.testing.assert_allclose(y2, W @ x)


def test_accumulate_adds_natively(monkeypatch):
    k = spcomp.compile("y[i] += W[i,j] * x[j]", formats={"W": "csr"})
    W, x = _W(), np.arange(30.0)
    y = np.ones(30)
    _warmed(k, W=W, x=x, y=y)
    _native_only(k, monkeypatch)
    k(W=W, x=x, y=y)
    np.testing.assert_allclose(y, 1 + 3 * (W @ x))


def test_scalar_output_is_a_python_float(monkeypatch):
    k = spcomp.compile("s = W[i,j] * x[j]", formats={"W": "csr"})
    W, x = _W(), np.arange(30.0)
    _warmed(k, W=W, x=x)
    _native_only(k, monkeypatch)
    got = k(W=W, x=x)
    assert isinstance(got, float) and got == pytest.approx((W @ x).sum())


def test_turned_off_by_the_environment(monkeypatch):
    monkeypatch.setenv("SPCOMP_NATIVE_ENTRY", "0")
    k = _kernel()
    W, x = _W(), np.arange(30.0)
    _warmed(k, W=W, x=x)
    assert k._fast.latest.native is None
    np.testing.assert_allclose(k(W=W, x=x), W @ x)


@settings(max_examples=25, deadline=None)
@given(st.sampled_from(["y[i] = W[i,j] * x[j]", "Y[i,k] = W[i,j] * B[j,k]", "Y[i,j] = W[i,j] * B[i,j]",
                        "y[j] = W[i,j] * x[i]", "s = W[i,j] * B[i,j]"]),
       st.sampled_from(["csr", "csc", "dense"]), st.integers(1, 9), st.integers(1, 9), st.integers(0, 2 ** 16))
def test_random_repeats_match_numpy(text, fmt, m, n, seed):
    """Each kernel called on one set of operands, then on new arrays laid out alike,
    then on the first set after a change in place: every result against einsum."""
    rng = np.random.default_rng(seed)
    k = spcomp.compile(text, formats={"W": fmt})
    W = sp.random(m, n, density=0.4, format="csr", random_state=seed)
    shapes = {"x": (n,) if "W[i,j] * x[j]" in text else (m,), "B": (n, 5) if "B[j,k]" in text else (m, n)}
    spec = text.split("=")[1].replace(" ", "")
    names = [t.split("[")[0] for t in spec.split("*")][1:]

    def run(extra):
        got = k(W=W, **extra)
        subs = ",".join(t.split("[")[1].rstrip("]").replace(",", "") for t in spec.split("*"))
        out = text.split("=")[0].strip()
        out_idx = out.split("[")[1].rstrip("]").replace(",", "") if "[" in out else ""
        want = np.einsum(f"{subs}->{out_idx}", W.toarray(), *[extra[a] for a in names])
        np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-12)

    first = {a: rng.standard_normal(shapes[a]) for a in names}
    for _ in range(3):
        run(first)
    run({a: rng.standard_normal(shapes[a]) for a in names})
    for a in names:
        first[a] *= -2
    run(first)


def test_row_extents_changed_in_place_are_seen(monkeypatch):
    """The one in-place change of a SciPy matrix a repeated call checks: its row
    extents (the entry compares indptr's bytes, as the Python path does)."""
    k = spcomp.compile("y[i] = W[i,j] * x[j]", formats={"W": "csr"})
    W = sp.csr_matrix((np.array([2.0, 3.0]), np.array([5, 7]), np.array([0, 1, 2])), shape=(2, 9))
    x = np.arange(9.0)
    _warmed(k, W=W, x=x)
    fast = _native_only(k, monkeypatch)
    np.testing.assert_allclose(k(W=W, x=x), [10.0, 21.0])
    W.indptr[1] = 0  # row 0 empty, row 1 holds both entries
    monkeypatch.setattr(fast, "spec", None)
    np.testing.assert_allclose(k(W=W, x=x), [0.0, 31.0])
