"""Kernels over a CSF operand on threads under the default schedule (issue 25).

TTV, MTTKRP and a CSF SpMV-like contraction walk B's top compressed level into a
dense output: the default schedule splits its positions over threads, balanced by
the next level's ``pos``. Each position owns its own output rows, so a split call
gives the bits of the one-thread call. The runtime splits a call only when its
work estimate clears the threshold; a CSF fiber (a nested segment) weighs
``SEGMENT_WORK`` there besides its nonzeros, else short-fiber tensors were judged
~3x too small to split (docs/performance.md, "csf kernels on threads").
"""
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

import spcomp
from spcomp.runtime import Tensor
from spcomp.runtime.launch import SEGMENT_WORK

from conftest import examples, record_splits, spcomp_threads as threads

KERNELS = {
    "ttv": ("A[i,j] = B[i,j,k] * c[k]", "ijk,k->ij"),
    "mttkrp": ("A[i,j] = B[i,k,l] * C[k,j] * D[l,j]", "ikl,kj,lj->ij"),
    "csf-spmv": ("y[i] = B[i,j,k] * X[j,k]", "ijk,jk->i"),
}
_compiled: dict = {}


def kernel(name):
    """Each kernel compiled once for the module (compiling dominates a small call)."""
    if name not in _compiled:
        _compiled[name] = spcomp.compile(KERNELS[name][0], formats={"B": "csf"}, dtype="float64")
    return _compiled[name]


def csf_tensor(shape, density, rng):
    """A random CSF tensor with about ``density`` of its entries stored."""
    size = int(np.prod(shape))
    nnz = int(round(density * size))
    lin = np.sort(rng.choice(size, size=nnz, replace=False)) if size else np.zeros(0, np.int64)
    coords = np.stack(np.unravel_index(lin, shape)) if nnz else np.zeros((3, 0), np.int64)
    return Tensor.from_coo(coords, rng.random(nnz), shape, "csf"), coords


def operands(name, B, rank, rng):
    """B and the dense factors kernel ``name`` reads with it."""
    _ni, nj, nk = B.shape
    if name == "ttv":
        return {"B": B, "c": rng.random(nk)}
    if name == "mttkrp":
        return {"B": B, "C": rng.random((nj, rank)), "D": rng.random((nk, rank))}
    return {"B": B, "X": rng.random((nj, nk))}


@pytest.mark.parametrize("name", list(KERNELS))
def test_the_default_schedule_splits_the_top_level_positions(name):
    plan = kernel(name).lowered.threads
    assert plan.parallel == "i"
    assert plan.positions == ("B", 0)  # the threads split B's top positions, not rows
    assert plan.balance == ("B", 1)  # balanced by the nonzeros under each position


@settings(max_examples=examples(30), deadline=None)
@given(name=st.sampled_from(list(KERNELS)),
       shape=st.tuples(*[st.integers(1, 14)] * 3),
       density=st.sampled_from([0.02, 0.2, 0.7]),
       rank=st.integers(1, 9),
       seed=st.integers(0, 2**16))
def test_csf_kernels_on_two_threads_match_einsum_and_one_thread(name, shape, density, rank, seed):
    rng = np.random.default_rng(seed)
    B, coords = csf_tensor(shape, density, rng)
    ops = operands(name, B, rank, rng)
    k = kernel(name)
    with pytest.MonkeyPatch.context() as mp:
        split = record_splits(mp)
        with threads(1, 0):
            one = k(**ops)
        assert split == []
        with threads(2, 0):
            two = k(**ops)
    tops = len(np.unique(coords[0]))
    if tops >= 2:  # two or more stored top positions: the call ran in two pieces
        assert 2 in split, (name, shape, tops, split)
    assert one.tobytes() == two.tobytes()  # each position's output rows are written by one thread
    dense = [ops["B"].to_numpy()] + [v for n, v in ops.items() if n != "B"]
    np.testing.assert_allclose(two, np.einsum(KERNELS[name][1], *dense), rtol=1e-12, atol=1e-12)


def _fibers(shape, nnz, fiber_len, rng):
    """A CSF tensor of ``nnz`` entries in fibers of ``fiber_len`` (along k)."""
    ni, nj, nk = shape
    fibers = rng.choice(ni * nj, size=nnz // fiber_len, replace=False)
    i, j = np.divmod(np.repeat(np.sort(fibers), fiber_len), nj)
    k = np.tile(np.arange(fiber_len), len(fibers))
    coords = np.stack([i, j, k])
    return Tensor.from_coo(coords, rng.random(coords.shape[1]), shape, "csf")


def test_short_fibers_weigh_into_the_estimate(monkeypatch):
    """Two TTVs with the same 80k nonzeros, far under a fixed threshold of 250k as
    rows + nonzeros: in fibers of 2 (40k fibers at SEGMENT_WORK each) the call
    splits over two threads; in fibers of 60 (1.3k fibers) it stays on one."""
    threshold, nnz = 250_000, 80_000
    rng = np.random.default_rng(3)
    short = _fibers((300, 300, 60), nnz, 2, rng)
    long = _fibers((300, 300, 60), nnz, 60, rng)
    assert 300 + nnz < threshold < nnz + (nnz // 2) * SEGMENT_WORK
    assert 300 + nnz + (nnz // 60) * SEGMENT_WORK < threshold
    c = rng.random(60)
    k = kernel("ttv")
    split = record_splits(monkeypatch)
    with threads(2, threshold):
        got = k(B=short, c=c)
        assert split and set(split) == {2}
        split.clear()
        got_long = k(B=long, c=c)
        assert split == []
    np.testing.assert_allclose(got, np.einsum("ijk,k->ij", short.to_numpy(), c), rtol=1e-12)
    np.testing.assert_allclose(got_long, np.einsum("ijk,k->ij", long.to_numpy(), c), rtol=1e-12)


def test_the_split_is_balanced_by_the_entries_under_each_position(monkeypatch):
    """One top position (i = 0) holding half of the fibers gets a chunk of its own:
    an even cut of the 41 positions would give one thread ~3/4 of the work. (The
    fibers here are alike, one nonzero each.)"""
    from spcomp.runtime.launch import Launcher
    rng = np.random.default_rng(5)
    nj, nk = 440, 10
    heavy = np.stack([np.zeros(nj, np.int64), np.arange(nj), np.zeros(nj, np.int64)])  # i = 0: 440 fibers
    light = np.stack([np.repeat(np.arange(1, 41), 10), np.tile(np.arange(10), 40), np.zeros(400, np.int64)])
    coords = np.concatenate([heavy, light], axis=1)
    B = Tensor.from_coo(coords, rng.random(coords.shape[1]), (41, nj, nk), "csf")
    c = rng.random(nk)
    cuts = []
    real = Launcher.bounds
    monkeypatch.setattr(Launcher, "bounds", lambda self, n, t, pos: cuts.append(real(self, n, t, pos)) or cuts[-1])
    with threads(2, 0):
        got = kernel("ttv")(B=B, c=c)
    assert cuts and {tuple(int(x) for x in b) for b in cuts} == {(0, 1, 41)}  # position 0 alone, then the other 40
    np.testing.assert_allclose(got, np.einsum("ijk,k->ij", B.to_numpy(), c), rtol=1e-12)


def test_long_fibers_weigh_more_than_short_ones_in_the_cut(monkeypatch):
    """Position 0 holds 10 fibers of 100 nonzeros, positions 1..40 10 fibers of 1:
    cut by fibers (each position ~alike) the first thread would get ~5x the second's
    nonzeros; cut by SEGMENT_WORK per fiber plus the nonzeros under it, the two
    chunks' work differs by at most one light position's."""
    from spcomp.runtime.launch import Launcher
    rng = np.random.default_rng(6)
    heavy = np.stack([np.zeros(1000, np.int64), np.repeat(np.arange(10), 100), np.tile(np.arange(100), 10)])
    light = np.stack([np.repeat(np.arange(1, 41), 10), np.tile(np.arange(10), 40), np.zeros(400, np.int64)])
    coords = np.concatenate([heavy, light], axis=1)
    B = Tensor.from_coo(coords, rng.random(coords.shape[1]), (41, 10, 100), "csf")
    c = rng.random(100)
    cuts = []
    real = Launcher.bounds
    monkeypatch.setattr(Launcher, "bounds", lambda self, n, t, pos: cuts.append(real(self, n, t, pos)) or cuts[-1])
    with threads(2, 0):
        got = kernel("ttv")(B=B, c=c)
    assert cuts and len({tuple(int(x) for x in b) for b in cuts}) == 1
    _lo, cut, hi = (int(x) for x in cuts[0])
    assert hi == 41
    per_position = 1 + np.array([1000 + 10 * SEGMENT_WORK] + [10 + 10 * SEGMENT_WORK] * 40)  # (+1: a position)
    first, second = per_position[:cut].sum(), per_position[cut:].sum()
    assert abs(int(first) - int(second)) <= per_position[1], (cut, first, second)
    np.testing.assert_allclose(got, np.einsum("ijk,k->ij", B.to_numpy(), c), rtol=1e-12)
