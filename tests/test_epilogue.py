"""A reduction under an element-wise epilogue runs as a statement of its own
(lower/epilogue.py): which statements split, and that the split program computes
what the statement as written does (against the NumPy reference)."""
from __future__ import annotations

import warnings

import numpy as np
import pytest
import scipy.sparse as sp
from hypothesis import given, settings
from hypothesis import strategies as st

import spcomp
from spcomp.errors import TranspositionWarning, UnsupportedError
from spcomp.frontend import to_notation
from spcomp.lower.epilogue import split
from spcomp.testing import densify, reference
from spcomp.testing.programs import close
from spcomp.testing.strategies import tensors

from conftest import examples


@pytest.mark.parametrize("text, formats, program", [
    ("O[t,d] = H[t,n]*Wd[n,d] + b[d]", {"H": "csr"},
     "t1[t,d] = sum(n, H[t,n] * Wd[n,d]); O[t,d] = (t1[t,d] + b[d])"),
    ("O[t,d] = gelu(H[t,n]*Wd[n,d] + b[d])", {"H": "csr"},
     "t1[t,d] = sum(n, H[t,n] * Wd[n,d]); O[t,d] = gelu((t1[t,d] + b[d]))"),
    ("O[t,d] += relu(H[t,n]*Wd[n,d]) * 2", {"H": "csr"},
     "t1[t,d] = sum(n, H[t,n] * Wd[n,d]); O[t,d] += relu(t1[t,d]) * 2"),
    # the sum alone loops i, j already: nothing to gain
    ("y[i] = A[i,j]*x[j] + z[i]", {"A": "csr"}, None),
    # the sum is the whole right side
    ("O[t,d] = H[t,n]*Wd[n,d]", {"H": "csr"}, None),
    # a scalar sum is computed once, outside every loop
    ("y[i] = x[i] / sum(j, x[j])", {}, None),
    # max is not split
    ("y[i] = max(j, A[i,j]*x[j]) + z[i]", {"A": "csr"}, None),
])
def test_which_reductions_split(text, formats, program):
    plan = split(to_notation(text, formats=formats))
    assert (plan.describe() if plan is not None else None) == program


def test_the_split_kernel_says_so_and_keeps_the_row_workspace():
    rng = np.random.default_rng(0)
    H = sp.random(40, 60, density=0.1, format="csr", random_state=1)
    Wd, b = rng.standard_normal((60, 24)), rng.standard_normal(24)
    k = spcomp.compile("O[t,d] = H[t,n]*Wd[n,d] + b[d]", formats={"H": "csr"})
    got = k(H=H, Wd=Wd, b=b)
    assert np.allclose(got, H @ Wd + b)
    assert "its reduction runs as a statement of its own" in k.loops
    assert "row workspace" in k.loops
    plain = spcomp.compile("O[t,d] = H[t,n]*Wd[n,d] + b[d]", formats={"H": "csr"},
                           schedule=spcomp.Schedule().factorize(False))
    assert plain.contraction is None and np.allclose(plain(H=H, Wd=Wd, b=b), got)
    # an output given to write into runs the statement as written
    out = np.empty((40, 24))
    k(H=H, Wd=Wd, b=b, O=out)
    assert np.allclose(out, got)


EPILOGUES = ["{s} + b[d]", "gelu({s} + b[d])", "relu({s}) * 2", "{s} - C[t,d]", "sigmoid({s}) * C[t,d]",
             "{s} / 4 + b[d]"]


@settings(max_examples=examples(25), deadline=None)
@given(st.data())
def test_split_programs_match_numpy(data):
    """Random epilogues on a sparse-times-dense sum, random formats for H, ``=`` and ``+=``."""
    t, n, d = (data.draw(st.integers(0, 6)) for _ in range(3))
    fmt = data.draw(st.sampled_from(["csr", "dcsr", "coo", "csc", "dense"]))
    epilogue = data.draw(st.sampled_from(EPILOGUES))
    accumulate = data.draw(st.booleans())
    text = f"O[t,d] {'+=' if accumulate else '='} " + epilogue.format(s="H[t,n]*Wd[n,d]")
    shapes = {"H": (t, n), "Wd": (n, d), "b": (d,), "C": (t, d)}
    used = {name: shape for name, shape in shapes.items() if f"{name}[" in text}
    ops = {name: data.draw(tensors(shape, fmt if name == "H" else "dense")) for name, shape in used.items()}
    values = {name: v[1] for name, v in ops.items()}
    old = np.asarray(data.draw(tensors((t, d), "dense"))[0])
    if accumulate:
        values["O"] = old.copy()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", TranspositionWarning)
            k = spcomp.compile(text, formats={"H": fmt})
            got = k(**values)
    except UnsupportedError as e:
        assert str(e)
        return
    want = reference(k.notation, {name: v[0] for name, v in ops.items()}, out=old if accumulate else None)
    if accumulate:
        got = values["O"]
    assert close(got, want), (text, fmt, densify(got), want)


def test_a_producer_over_stored_positions_does_not_share_its_loop():
    """t1's statement walks A's packed top level (the rows A stores), so the epilogue
    (every row of Y) must not run inside that loop: it did before lower/fuse.py checked
    that both loops run from 0 to a size, and rows A does not store came out empty."""
    A = np.zeros((4, 1, 4))
    A[:, 0, 1] = [1.0, 2.0, 0.0, 3.0]
    A[2, 0, 3] = 4.0
    B = np.arange(8.0).reshape(4, 1, 2) - 3
    fmts = {"A": "p(2,2)db:2,0,1", "Y": "bbd"}
    k = spcomp.compile("Y[i,j,k] = A[l,j,i] / (abs(B[i,j,k]) + 1)", formats=fmts)
    got = k(A=spcomp.Tensor.from_numpy(A, fmts["A"]), B=B).to_numpy()
    assert np.allclose(got, A.sum(axis=0).T[:, :, None] / (np.abs(B) + 1))
    assert "its reduction runs as a statement of its own" in k.loops


@pytest.mark.skipif(__import__("spcomp.backends.cuda.sim", fromlist=["compiler"]).compiler() is None,
                    reason="cuda-sim needs a host C++ compiler (g++)")
def test_the_split_runs_as_one_launch_on_cuda_sim():
    H = sp.random(30, 40, density=0.1, format="csr", random_state=1)
    rng = np.random.default_rng(1)
    Wd, b = rng.standard_normal((40, 8)), rng.standard_normal(8)
    k = spcomp.compile("O[t,d] = relu(H[t,n]*Wd[n,d] + b[d])", formats={"H": "csr"}, backend="cuda-sim")
    assert np.allclose(k(H=H, Wd=Wd, b=b), np.maximum(H @ Wd + b, 0))
    assert "its reduction runs as a statement of its own" in k.loops
    assert k.contraction.last[2].last_launches == 1
