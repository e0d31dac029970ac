"""Fused programs on threads: one loop over rows, each thread's chunk runs the whole nest.

A fused run whose statements all share one outer loop, each writing only the
row it is on, runs that loop split over threads (the first statement's own
thread plan balances it); a temporary's row is written and read by the same
thread. Random row-wise chains are checked against numpy.einsum at 1 and 2
threads with the split forced (``MIN_PARALLEL_WORK = 0``), and the split is
observed, not assumed.
"""
from __future__ import annotations

import contextlib

import numpy as np
import pytest
import scipy.sparse as sp
from hypothesis import given, settings
from hypothesis import strategies as st

import spcomp
from spcomp.runtime import launch
from spcomp.runtime import threads as _threads

from conftest import examples, spcomp_threads

FIRST = [
    ("T1[i,k] = A[i,j] * B[j,k]", lambda e: e["A"] @ e["B"]),
    ("T1[i,k] = A[i,j] * X[i,l] * W[j,l] * B[j,k]", lambda e: (e["A"] * (e["X"] @ e["W"].T)) @ e["B"]),
    ("T1[i,k] = E[i,k] * 2", lambda e: 2 * e["E"]),
]
NEXT = [
    ("{t}[i,k] = relu({p}[i,k] + b[k])", lambda e, p: np.maximum(e[p] + e["b"], 0)),
    ("{t}[i,k] = {p}[i,k] * E[i,k]", lambda e, p: e[p] * e["E"]),
    ("{t}[i,k] = exp(-{p}[i,k]) + {p}[i,k]", lambda e, p: np.exp(-e[p]) + e[p]),
]
LAST = [
    ("y[i] = {p}[i,k] * c[k]", lambda e, p: e[p] @ e["c"]),
    ("y[i] = sum(k, abs({p}[i,k]))", lambda e, p: np.abs(e[p]).sum(axis=1)),
]


@contextlib.contextmanager
def splits(n, monkeypatch):
    """``n`` threads, every call split; yields the (extent, parts) of each split (by
    the Python pool, or bounds handed to the native driver, cached or not)."""
    calls = []
    real, bounds = _threads.split, launch.Launcher.bounds

    def spy(extent, parts, pos=None):
        calls.append((extent, parts))
        return real(extent, parts, pos)

    def spy_bounds(self, extent, parts, pos):
        calls.append((extent, parts))
        return bounds(self, extent, parts, pos)
    monkeypatch.setattr(_threads, "split", spy)
    monkeypatch.setattr(launch.Launcher, "bounds", spy_bounds)
    with spcomp_threads(n, min_work=0):
        yield calls


@st.composite
def row_chains(draw):
    count = draw(st.integers(2, 4))
    text, ref = draw(st.sampled_from(FIRST))
    texts, refs, last = [text], [("T1", lambda e, ref=ref: ref(e))], "T1"
    for n in range(2, count + 1):
        if n == count and draw(st.booleans()):
            text, ref = draw(st.sampled_from(LAST))
            texts.append(text.format(p=last))
            refs.append(("y", lambda e, ref=ref, p=last: ref(e, p)))
            last = "y"
            break
        text, ref = draw(st.sampled_from(NEXT))
        name = f"T{n}"
        texts.append(text.format(t=name, p=last))
        refs.append((name, lambda e, ref=ref, p=last: ref(e, p)))
        last = name
    return "\n".join(texts), refs, last


@settings(max_examples=examples(20), deadline=None)
@given(st.data())
def test_row_chains_run_on_threads_and_match_numpy(data):
    text, refs, out = data.draw(row_chains(), label="program")
    rows = data.draw(st.integers(1, 40), label="rows")
    seed = data.draw(st.integers(0, 2 ** 16), label="seed")
    rng = np.random.default_rng(seed)
    J, K, L = 6, 5, 3
    ops = {"A": sp.random(rows, J, density=0.4, format="csr", random_state=seed), "B": rng.standard_normal((J, K)),
           "X": rng.standard_normal((rows, L)), "W": rng.standard_normal((J, L)), "E": rng.standard_normal((rows, K)),
           "b": rng.standard_normal(K), "c": rng.standard_normal(K)}
    k = spcomp.compile(text, formats={"A": "csr"} if "A[" in text else None)
    used = {n: v for n, v in ops.items() if n in k.inputs}
    env = {n: (v.toarray() if sp.issparse(v) else v) for n, v in used.items()}
    for name, ref in refs:
        env[name] = ref(env)
    assert k.launches == 1 and "its rows split over threads" in k.loops, k.loops
    assert k.ir.count("// parallel: threads") == 1
    with pytest.MonkeyPatch.context() as mp:
        for threads in (1, 2):
            with splits(threads, mp) as calls:
                got = k(**used)
            assert np.allclose(got, env[out], rtol=1e-10, atol=1e-10), (text, threads)
            if threads == 2 and rows >= 2:
                assert (rows, 2) in calls, calls   # the rows were split over two threads


def test_epilogue_runs_on_threads():
    rng = np.random.default_rng(0)
    H = sp.random(64, 32, density=0.2, format="csr", random_state=5)
    X, Wu, Wd, b = (rng.standard_normal((64, 8)), rng.standard_normal((32, 8)), rng.standard_normal((32, 8)),
                    rng.standard_normal(8))
    k = spcomp.compile("P[t,d] = H[t,n]*X[t,k]*Wu[n,k]*Wd[n,d]\nO[t,d] = relu(P[t,d] + b[d])",
                       formats={"H": "csr"})
    assert "its rows split over threads" in k.loops
    want = np.maximum((H.toarray() * (X @ Wu.T)) @ Wd + b, 0)
    for threads in (1, 2):
        with spcomp_threads(threads, min_work=0):
            assert np.allclose(k(H=H, X=X, Wu=Wu, Wd=Wd, b=b), want)


@pytest.mark.parametrize("text, formats", [
    ("t[j] = B[j,k]*c[k]\ny[i] = A[i,j]*t[j]", {"A": "csr", "B": "csr"}),   # t is read whole, not by row
    ("T[i,j] = A[i,j] * 2; y[j] = T[i,j] * c[i]; w[i] = T[i,j] * y[j]", {"A": "csr"}),  # y is whole after all rows
])
def test_runs_that_are_not_row_wise_stay_on_one_thread(text, formats):
    """(A run appending a sparse temporary or summing over rows runs by chunks
    instead: test_programs_chunks.py, test_programs_reduce.py.)"""
    k = spcomp.compile(text, formats=formats)
    assert "(one thread, not by chunks of rows" in k.loops and "parallel: threads" not in k.ir
