"""Accesses that repeat an index on a sparse tensor (``A[i,i]``): the kernel reads
a diagonal storage the runtime gathers from the operand (spcomp/lower/diagonal.py).
Checked against numpy.einsum on the same data, on the CPU and on cuda-sim."""
from __future__ import annotations

import warnings

import numpy as np
import pytest
import scipy.sparse as sp
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import spcomp
from spcomp.errors import ShapeError
from spcomp.testing import check_kernel
from spcomp.testing.strategies import formats

CASES = [
    ("t = A[i,i]", {"A": "csr"}),
    ("t = A[i,i]", {"A": "csc"}),
    ("t = A[i,i]", {"A": "coo"}),
    ("d[i] = A[i,i]", {"A": "dcsr", "d": "c"}),
    ("y[i] = A[i,i] * x[i] + A[i,j] * x[j]", {"A": "csr"}),
    ("C[i,j] = A[i,i] * B[i,j]", {"A": "csr", "B": "csr", "C": "csr"}),
    ("Y[i,j] = X[i,j,i]", {"X": "csf"}),
    ("y[j] = X[i,j,i] * x[i]", {"X": "coo"}),
    ("t = X[i,i,i]", {"X": "csf"}),
    ("d[i] = H[i,i]", {"H": "twell(B=4,K=4)"}),
]


@pytest.mark.parametrize("backend", ["cpu", "cuda-sim"])
@pytest.mark.parametrize("expr,fmts", CASES)
def test_diagonals_match_einsum(expr, fmts, backend):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", spcomp.TranspositionWarning)
        for density in (0.0, 0.3, 1.0):
            check_kernel(expr, fmts, backend=backend, sizes={"i": 6, "j": 5}, density=density, seed=5)


@settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck))
@given(data=st.data(), order=st.integers(2, 3), n=st.integers(1, 7), density=st.floats(0, 1),
       seed=st.integers(0, 2**16))
def test_any_format_any_repeat_pattern(data, order, n, density, seed):
    """A random sparse format and a random repeat pattern of a random tensor: the
    diagonal, kept as a tensor or summed, is einsum's."""
    fmt = data.draw(formats(order, allow_packed=False), label="format")
    names = data.draw(st.lists(st.sampled_from("ijk"[:order]), min_size=order, max_size=order)
                      .filter(lambda xs: len(set(xs)) < len(xs)), label="indices")
    kept = list(dict.fromkeys(names))
    out = data.draw(st.permutations(kept), label="output")[:data.draw(st.integers(0, len(kept)))]
    lhs = f"Y[{','.join(out)}]" if out else "t"
    expr = f"{lhs} = X[{','.join(names)}]"
    check_kernel(expr, {"X": fmt}, sizes={i: n for i in "ijk"}, density=density, seed=seed)


def test_a_non_square_diagonal_is_a_shape_error():
    k = spcomp.compile("t = A[i,i]", formats={"A": "csr"})
    with pytest.raises(ShapeError, match="A: dimensions 0 and 1 are both indexed by i"):
        k(A=sp.random(5, 4, density=0.5, format="csr", random_state=0))


def test_the_diagonal_is_gathered_once_per_operand(monkeypatch):
    """The gathered storage is cached per operand object, like any conversion: a
    second call with the same matrix reuses it, a new matrix gets its own."""
    from spcomp.runtime import Tensor
    k = spcomp.compile("y[i] = A[i,i] * x[i]", formats={"A": "csr"})
    assert "diagonal: A_diag[i] = A[i,i]" in k.loops
    built = []
    real = Tensor.from_coo.__func__
    monkeypatch.setattr(Tensor, "from_coo", classmethod(lambda cls, *a, **kw: built.append(1) or real(cls, *a, **kw)))
    a = sp.random(8, 8, density=0.5, format="csr", random_state=1)
    x = np.arange(8.0)
    for _ in range(3):
        np.testing.assert_allclose(k(A=a, x=x), a.diagonal() * x)
    assert len(built) == 1
    b = sp.random(8, 8, density=0.5, format="csr", random_state=2)
    np.testing.assert_allclose(k(A=b, x=x), b.diagonal() * x)
    assert len(built) == 2


def test_saved_kernel_reads_diagonals(tmp_path):
    k = spcomp.compile("t = A[i,i] + B[i,i]", formats={"A": "csr", "B": "coo"})
    k.save(tmp_path / "trace.spk")
    loaded = spcomp.load(tmp_path / "trace.spk")
    a = sp.random(9, 9, density=0.4, format="csr", random_state=3)
    b = sp.random(9, 9, density=0.4, format="coo", random_state=4)
    assert loaded(A=a, B=b) == pytest.approx(a.diagonal().sum() + b.diagonal().sum(), rel=1e-12)
