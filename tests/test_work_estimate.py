"""When the runtime splits a call over threads: the work estimate's dense factor
(``Lowered.work_dense``) and the per-thread cap ``spcomp.thread_limit``."""
import threading

import numpy as np
import pytest
import scipy.sparse as sp

import spcomp
from spcomp.runtime.launch import DENSE_ITERATION_WORK
from spcomp.runtime import Tensor

from conftest import record_splits, spcomp_threads as threads

MTTKRP = "A[i,j] = B[i,k,l] * C[k,j] * D[l,j]"
# the runtime's split threshold these tests set (the default may move)
THRESHOLD = 250_000


def _tensor3(n, nnz, seed):
    rng = np.random.default_rng(seed)
    lin = np.unique(rng.integers(0, n ** 3, nnz))
    coords = np.stack(np.unravel_index(lin, (n, n, n)))
    return coords, rng.random(len(lin))


@pytest.mark.parametrize("fmt", ["csf", "dcc"])
def test_a_dense_loop_under_the_nonzeros_weighs_into_the_estimate(monkeypatch, fmt):
    """MTTKRP's j loop (R iterations per nonzero) counts at DENSE_ITERATION_WORK
    each: with R = 32 a tensor whose rows + nonzeros are far under the threshold
    splits on two threads, with the bits of the one-thread result; with R = 1 the
    same tensor stays on one thread."""
    n, R = 120, 32
    coords, vals = _tensor3(n, 40_000, seed=1)
    nnz = len(vals)
    assert n + nnz < THRESHOLD / 4
    assert nnz * R * DENSE_ITERATION_WORK > THRESHOLD
    B = Tensor.from_coo(coords, vals, (n, n, n), fmt)
    rng = np.random.default_rng(2)
    C, D = rng.random((n, R)), rng.random((n, R))
    k = spcomp.compile(MTTKRP, formats={"B": fmt}, dtype="float64")
    assert k.lowered.threads.work_dense == ("j",)
    split = record_splits(monkeypatch)
    with threads(2, THRESHOLD):
        two = k(B=B, C=C, D=D)
        assert split and set(split) == {2}
        split.clear()
        k(B=B, C=C[:, :1].copy(), D=D[:, :1].copy())
        assert split == []
    with threads(1, THRESHOLD):
        one = k(B=B, C=C, D=D)
    assert one.tobytes() == two.tobytes()
    ref = np.einsum("ikl,kj,lj->ij", B.to_numpy(), C, D)
    np.testing.assert_allclose(two, ref, rtol=1e-12, atol=1e-12)


def test_work_dense_names_only_loops_no_operand_stores_sparsely():
    """SpMM's k and SDDMM's k are dense loops under A's nonzeros; SpMV and SpGEMM
    have none (SpGEMM's j walks B's rows: that is ``work_scale``)."""
    cases = [("y[i] = A[i,j] * x[j]", {"A": "csr"}, ()),
             ("Y[i,k] = A[i,j] * X[j,k]", {"A": "csr"}, ("k",)),
             ("C[i,j] = B[i,j] * D[i,k] * E[k,j]", {"B": "csr", "C": "csr"}, ("k",)),
             ("C[i,j] = A[i,k] * B[k,j]", {"A": "csr", "B": "csr", "C": "csr"}, ())]
    for expr, formats, dense in cases:
        k = spcomp.compile(expr, formats=formats, dtype="float64")
        assert k.lowered.threads.work_dense == dense, expr


def test_thread_limit_caps_this_thread_only():
    with threads(2):
        assert spcomp.get_num_threads() == 2
        seen = {}
        with spcomp.thread_limit(1):
            assert spcomp.get_num_threads() == 1
            with spcomp.thread_limit(4):  # a nested limit never raises the cap
                assert spcomp.get_num_threads() == 1
            other = threading.Thread(target=lambda: seen.setdefault("other", spcomp.get_num_threads()))
            other.start()
            other.join()
        assert seen["other"] == 2
        assert spcomp.get_num_threads() == 2
        with spcomp.thread_limit(8):  # a limit above the process count changes nothing
            assert spcomp.get_num_threads() == 2
    with pytest.raises(ValueError, match="thread_limit"):
        with spcomp.thread_limit(0):
            pass


def test_a_call_under_thread_limit_runs_on_one_thread(monkeypatch):
    """The repeated-call fast path plans for a thread count: a call under the limit
    must not reuse the two-thread plan, and the call after the block must not keep
    the one-thread one. Results are the same bits either way."""
    rng = np.random.default_rng(3)
    A = sp.random(3000, 3000, density=0.01, format="csr", random_state=rng, dtype=np.float64)
    x = rng.random(3000)
    k = spcomp.compile("y[i] = A[i,j] * x[j]", formats={"A": "csr"}, dtype="float64")
    split = record_splits(monkeypatch)
    with threads(2, 0):
        outside = k(A=A, x=x)
        assert split and set(split) == {2}
        split.clear()
        with spcomp.thread_limit(1):
            inside = [k(A=A, x=x) for _ in range(3)]
        assert split == []
        after = k(A=A, x=x)
        assert split and set(split) == {2}
    for y in inside + [after]:
        assert y.tobytes() == outside.tobytes()
    np.testing.assert_allclose(outside, A @ x, rtol=1e-12)


def test_nn_items_run_their_kernels_on_their_own_thread():
    """spcomp.nn spreads items over its pool; each item's kernel calls see one thread
    (a libgomp team per item would put two teams on the same cores)."""
    from spcomp.nn.parallel import parallel_map
    with threads(2):
        counts = parallel_map(lambda _item: spcomp.get_num_threads(), list(range(4)))
        assert counts == [1, 1, 1, 1]
        assert spcomp.get_num_threads() == 2
