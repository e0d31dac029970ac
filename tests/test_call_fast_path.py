"""The call path's fast path (Kernel._fast): a repeated call reuses the last
call's argument list. It must never serve stale data or skip a check: every
test below changes something between two calls and checks the second result
(or the error) against a fresh computation."""
from __future__ import annotations

import gc
import threading

import numpy as np
import pytest
import scipy.sparse as sp

import spcomp
from spcomp.errors import DTypeError, InvalidTensorError, OperandError, ShapeError
from spcomp.runtime import Tensor

SPMV = "y[i] = W[i,j] * x[j]"


@pytest.fixture(scope="module")
def spmv():
    return spcomp.compile(SPMV, formats={"W": "csr"})


def _W(seed=0, shape=(10, 10)):
    return sp.random(*shape, density=0.3, format="csr", random_state=seed)


def _twice(k, **ops):
    """Call twice so the second call takes the fast path."""
    k(**ops)
    return k(**ops)


def test_repeated_call_takes_the_fast_path(spmv):
    W, x = _W(), np.arange(10.0)
    np.testing.assert_allclose(_twice(spmv, W=W, x=x), W @ x)
    assert spmv._fast is not None


def test_ndarray_changed_in_place_is_seen(spmv):
    W, x = _W(), np.arange(10.0)
    _twice(spmv, W=W, x=x)
    x[:] = 3.0
    np.testing.assert_allclose(spmv(W=W, x=x), W @ x)


def test_new_ndarray_of_the_same_shape(spmv):
    W = _W()
    for seed in range(4):
        x = np.random.default_rng(seed).standard_normal(10)
        np.testing.assert_allclose(spmv(W=W, x=x), W @ x)


def test_a_dead_arrays_id_reused_is_not_confused(spmv):
    W = _W()
    for v in range(20):
        x = np.full(10, float(v))
        np.testing.assert_allclose(spmv(W=W, x=x), W @ x)
        del x
        gc.collect()


def test_strided_view_of_the_same_shape(spmv):
    W, x = _W(), np.arange(10.0)
    _twice(spmv, W=W, x=x)
    y = np.arange(20.0)[::2]
    np.testing.assert_allclose(spmv(W=W, x=y), W @ y)


def test_other_dtype_converted_or_refused(spmv):
    W, x = _W(), np.arange(10.0)
    _twice(spmv, W=W, x=x)
    np.testing.assert_allclose(spmv(W=W, x=x.astype(np.float32)), W @ x)
    with pytest.raises(DTypeError):
        spmv(W=W, x=x.astype(np.complex128))


def test_shape_change_is_checked(spmv):
    W, x = _W(), np.arange(10.0)
    _twice(spmv, W=W, x=x)
    with pytest.raises(ShapeError):
        spmv(W=W, x=np.arange(11.0))
    x2 = np.arange(20.0)
    _twice(spmv, W=_W(1, (10, 20)), x=x2)
    x2.shape = (2, 10)  # same object, same data pointer, new shape
    with pytest.raises(ShapeError):
        spmv(W=_W(1, (10, 20)), x=x2)


def test_operand_names_still_checked(spmv):
    W, x = _W(), np.arange(10.0)
    _twice(spmv, W=W, x=x)
    with pytest.raises(OperandError):
        spmv(W=W, z=x)
    with pytest.raises(OperandError):
        spmv(W=W)


def test_scipy_values_changed_in_place_are_seen(spmv):
    W, x = _W(), np.arange(10.0)
    _twice(spmv, W=W, x=x)
    W.data *= 2
    np.testing.assert_allclose(spmv(W=W, x=x), W @ x)


def test_scipy_arrays_reassigned_are_seen(spmv):
    W, x = _W(), np.arange(10.0)
    _twice(spmv, W=W, x=x)
    W.data = W.data * 3
    np.testing.assert_allclose(spmv(W=W, x=x), W @ x)
    W2 = _W(5)  # another pattern, same nnz count not required
    W.data, W.indices, W.indptr = W2.data.copy(), W2.indices.copy(), W2.indptr.copy()
    np.testing.assert_allclose(spmv(W=W, x=x), W2 @ x)


def test_scipy_reassigned_to_invalid_storage_is_validated(spmv):
    W, x = _W(), np.arange(10.0)
    _twice(spmv, W=W, x=x)
    bad = W.indices.copy()
    bad[0] = 1000  # out of range: must never reach the machine code
    W.indices = bad
    with pytest.raises(InvalidTensorError):
        spmv(W=W, x=x)


def test_tensor_then_another_tensor(spmv):
    x = np.arange(10.0)
    for seed in range(3):
        W = _W(seed)
        T = Tensor.from_scipy(W, "csr")
        np.testing.assert_allclose(_twice(spmv, W=T, x=x), W @ x)


def test_tensor_values_changed_in_place_are_seen(spmv):
    W, x = _W(), np.arange(10.0)
    T = Tensor.from_scipy(W, "csr")
    _twice(spmv, W=T, x=x)
    T.vals[:] = 1.0
    np.testing.assert_allclose(spmv(W=T, x=x), T.to_scipy() @ x)


def test_given_output_and_scalar_output():
    k = spcomp.compile("s = x[i] * y[i]")
    x, y = np.arange(5.0), np.ones(5)
    assert _twice(k, x=x, y=y) == pytest.approx(10.0)
    y[:] = 2
    assert k(x=x, y=y) == pytest.approx(20.0)
    m = spcomp.compile("z[i] = x[i] * y[i]")
    out = np.empty(5)
    _twice(m, x=x, y=y)
    assert m(x=x, y=y, z=out) is out
    np.testing.assert_allclose(out, x * y)


def test_thread_count_change_between_calls():
    W = sp.random(3000, 3000, density=0.05, format="csr", random_state=2)  # above the parallel threshold
    x = np.random.default_rng(0).standard_normal(3000)
    k = spcomp.compile(SPMV, formats={"W": "csr"})
    previous = spcomp.runtime.threads.get_num_threads()
    try:
        for n in (2, 1, 2):
            spcomp.set_num_threads(n)
            np.testing.assert_allclose(_twice(k, W=W, x=x), W @ x)
    finally:
        spcomp.set_num_threads(previous)


def test_concurrent_calls_with_different_vectors(spmv):
    W = _W(3)
    errors = []

    def work(seed):
        rng = np.random.default_rng(seed)
        for _ in range(200):
            x = rng.standard_normal(10)
            if not np.allclose(spmv(W=W, x=x), W @ x):
                errors.append(seed)
                return
    threads = [threading.Thread(target=work, args=(s,)) for s in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors


def test_missing_operand_with_a_dead_tensor_is_not_served(spmv):
    x = np.arange(10.0)
    T = Tensor.from_scipy(_W(), "csr")
    _twice(spmv, W=T, x=x)
    del T
    gc.collect()
    with pytest.raises(OperandError):
        spmv(V=x, x=x)


def test_given_output_is_cleared_written_and_returned(spmv):
    W, x = _W(), np.arange(10.0)
    out = np.full(10, 99.0)
    for _ in range(3):
        assert spmv(W=W, x=x, y=out) is out
        np.testing.assert_allclose(out, W @ x)
        out[:] = 99.0
    other = np.full(10, -1.0)
    assert spmv(W=W, x=x, y=other) is other  # another array of the same shape
    np.testing.assert_allclose(other, W @ x)


def test_given_output_that_cannot_be_written_as_is(spmv):
    W, x = _W(), np.arange(10.0)
    out = np.zeros(10)
    _twice(spmv, W=W, x=x, y=out)
    strided = np.zeros(20)[::2]  # not contiguous: written through a copy
    assert spmv(W=W, x=x, y=strided) is strided
    np.testing.assert_allclose(strided, W @ x)
    read_only = np.zeros(10)
    read_only.flags.writeable = False
    with pytest.raises(OperandError):
        spmv(W=W, x=x, y=read_only)
    with pytest.raises(DTypeError):
        spmv(W=W, x=x, y=np.zeros(10, np.float32))
    with pytest.raises(ShapeError):
        spmv(W=W, x=x, y=np.zeros(11))


def test_accumulating_kernel_adds_into_the_given_output():
    k = spcomp.compile("y[i] += W[i,j] * x[j]", formats={"W": "csr"})
    W, x = _W(), np.arange(10.0)
    y = np.ones(10)
    for n in range(1, 4):
        k(W=W, x=x, y=y)
        np.testing.assert_allclose(y, 1 + n * (W @ x))


@pytest.mark.parametrize("kind", ["tensor", "scipy"])
def test_none_in_place_of_a_dead_operand_is_not_served(spmv, kind):
    """A dead weak reference reads as None: an operand passed as None must not match
    it, or the call would run on the freed operand's arrays."""
    W, x = _W(), np.arange(10.0)
    if kind == "tensor":
        W = Tensor.from_scipy(W, "csr")
    _twice(spmv, W=W, x=x)
    del W
    gc.collect()
    with pytest.raises(spcomp.SpcompError):
        spmv(W=None, x=x)


def test_repeated_call_runs_the_specialised_function(spmv):
    """The fast path is one generated function of the operands; it serves only the
    operands it was built for and says MISS for others."""
    from spcomp.runtime.fastcall import MISS
    W, x = _W(), np.arange(10.0)
    _twice(spmv, W=W, x=x)
    fast = spmv._fast
    np.testing.assert_allclose(fast.call({"W": W, "x": x}), W @ x)
    assert fast.call({"W": _W(1), "x": x}) is MISS
    assert fast.call({"W": W, "x": x, "z": x}) is MISS
    assert fast.call({"W": W, "x": x.astype(np.float32)}) is MISS


def test_calls_alternating_between_operands_each_get_their_own_result(spmv):
    """The fast paths of the last few operand sets are kept (fastcall.Recent): each
    serves only its own objects, and more sets than it keeps still compute right."""
    x = np.arange(10.0)
    Ws = [_W(seed) for seed in range(12)]
    for _ in range(3):
        for W in Ws[:2]:
            np.testing.assert_allclose(spmv(W=W, x=x), W @ x)
    recent = spmv._fast
    assert len(recent.by_ids) >= 2 and all(f.spec is not None for f in recent.by_ids.values())
    for _ in range(2):
        for W in Ws:  # more than it keeps: the oldest go
            np.testing.assert_allclose(spmv(W=W, x=x), W @ x)
    assert len(recent.by_ids) <= recent.SIZE
    Ws[3].data *= 2  # changed in place while its fast path is kept
    np.testing.assert_allclose(spmv(W=Ws[3], x=x), Ws[3] @ x)


def test_a_fast_path_is_specialised_only_once_it_serves_a_call():
    k = spcomp.compile(SPMV, formats={"W": "csr"})
    x = np.arange(10.0)
    k(W=_W(0), x=x)
    k(W=_W(1), x=x)  # new objects each call: nothing generated for them
    assert all(f.spec is None for f in k._fast.by_ids.values())
