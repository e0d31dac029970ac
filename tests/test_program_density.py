"""A program's chosen sparse temporaries against the densities of a call's operands
(spcomp/program_density.py, lower/temporary_formats.expected_fills).

The fill estimate is checked on its own (the formula, chains, unions), then the
switch: operands that would fill a chosen csr temporary in run a variant with it
dense, sparse ones the program itself, and every result matches NumPy.
"""
from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.sparse as sp
from hypothesis import example, given, settings
from hypothesis import strategies as st

import spcomp
from spcomp import program_density  # (its measure_operands is patched below)
from spcomp.lower.temporary_formats import expected_fills

CHAIN = "t[i,k] = A[i,j]*B[j,k]; y[i] = t[i,k]*x[k]"


def _statements(text, formats):
    return spcomp.compile(text, formats=formats).program.statements


def test_expected_fill_of_a_product_follows_the_formula():
    stmts = _statements(CHAIN, {"A": "csr", "B": "csr"})
    fills = expected_fills(stmts, {"t"}, {"A": (50, 40), "B": (40, 30), "x": (30,)}, {"A": 0.1, "B": 0.2})
    assert fills["t"] == pytest.approx(1 - (1 - 0.1 * 0.2) ** 40)


def test_expected_fill_follows_a_chain():
    text = "t[i,k] = A[i,j]*B[j,k]; u[i,l] = t[i,k]*C[k,l]; y[i] = u[i,l]*x[l]"
    stmts = _statements(text, {"A": "csr", "B": "csr", "C": "csr"})
    shapes = {"A": (20, 10), "B": (10, 8), "C": (8, 6), "x": (6,)}
    fills = expected_fills(stmts, {"t", "u"}, shapes, {"A": 0.05, "B": 0.1, "C": 0.3})
    t = 1 - (1 - 0.005) ** 10
    assert fills["t"] == pytest.approx(t)
    assert fills["u"] == pytest.approx(1 - (1 - t * 0.3) ** 8)


def test_expected_fill_of_a_sum_is_bounded_by_the_union():
    stmts = _statements("t[i,j] = A[i,j] + B[i,j]; y[i] = t[i,j]*x[j]", {"A": "csr", "B": "csr"})
    fills = expected_fills(stmts, {"t"}, {"A": (9, 9), "B": (9, 9), "x": (9,)}, {"A": 0.1, "B": 0.15})
    assert fills["t"] == pytest.approx(0.25)


def test_operands_that_fill_the_temporary_in_run_it_dense():
    k = spcomp.compile(CHAIN, formats={"A": "csr", "B": "csr"})
    assert dict(k.program.chosen) and k.program.tensors["t"].format.spec() != "dense"
    A = sp.random(120, 120, density=0.2, format="csr", random_state=1)
    B = sp.random(120, 120, density=0.2, format="csr", random_state=2)
    x = np.arange(120.0)
    np.testing.assert_allclose(k(A=A, B=B, x=x), (A @ B) @ x)
    fills, variant = k.density.last
    assert fills["t"] > 0.9 and variant is not None
    assert variant.program.tensors["t"].format.is_dense
    assert "fill past" in k.loops and "temporaries t (dense)" in k.loops


def test_sparse_operands_keep_the_chosen_format():
    k = spcomp.compile(CHAIN, formats={"A": "csr", "B": "csr"})
    A = sp.random(400, 400, density=0.002, format="csr", random_state=1)
    B = sp.random(400, 400, density=0.002, format="csr", random_state=2)
    x = np.arange(400.0)
    np.testing.assert_allclose(k(A=A, B=B, x=x), (A @ B) @ x)
    assert k.density.last[1] is None and "fill past" not in k.loops


def test_the_same_operands_are_not_measured_again(monkeypatch):
    k = spcomp.compile(CHAIN, formats={"A": "csr", "B": "csr"})
    A = sp.random(60, 60, density=0.3, format="csr", random_state=3)
    x = np.ones(60)
    k(A=A, B=A, x=x)

    def refuse(*args):
        raise AssertionError("measured again")
    monkeypatch.setattr(program_density, "measure_operands", refuse)
    np.testing.assert_allclose(k(A=A, B=A, x=x), (A @ A) @ x)


def test_a_given_format_is_never_switched():
    k = spcomp.compile(CHAIN, formats={"A": "csr", "B": "csr", "t": "csr"})
    assert k.density is None
    A = sp.random(50, 50, density=0.5, format="csr", random_state=4)
    np.testing.assert_allclose(k(A=A, B=A, x=np.ones(50)), (A @ A) @ np.ones(50))


@settings(max_examples=20, deadline=None)
@example(1, 1, 1, 1.0, 1.0, 0)  # every product stored: fill 1 exactly
@given(st.integers(1, 40), st.integers(1, 40), st.integers(1, 40),
       st.sampled_from([0.0, 0.01, 0.1, 0.5, 1.0]), st.sampled_from([0.0, 0.05, 0.3, 1.0]), st.integers(0, 2 ** 16))
def test_random_densities_match_numpy(m, n, p, da, db, seed):
    """Whichever variant a call's densities pick, the answer is NumPy's."""
    k = spcomp.compile("t[i,k] = A[i,j]*B[j,k]; u[i,k] = t[i,k] * 2; y[i] = u[i,k]*x[k]",
                       formats={"A": "csr", "B": "dcsr"})
    A = sp.random(m, n, density=da, format="csr", random_state=seed)
    B = sp.random(n, p, density=db, format="csr", random_state=seed + 1)
    x = np.random.default_rng(seed).standard_normal(p)
    np.testing.assert_allclose(k(A=A, B=B, x=x), 2 * (A @ B) @ x, rtol=1e-10, atol=1e-10)
    fills, variant = k.density.last
    q = A.nnz / (m * n) * B.nnz / (n * p)  # a product's chance of being stored
    expected = 1.0 if q >= 1 else -math.expm1(n * math.log1p(-q))
    assert (variant is not None) == (fills["t"] > 0.25)
    assert fills["t"] == pytest.approx(expected, abs=1e-9)
