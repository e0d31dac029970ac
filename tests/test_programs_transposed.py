"""A fused run's csr temporary read through a transposed copy: made inside the function.

``C[k,i] = T[i,k]`` with ``T`` a csr temporary reads ``T`` against its order; the
fused function transposes ``T`` itself (count per column, scan, place:
lower/fused_transpose.py) right before the reader and frees the copy after it, so
the run stays one native function. Random chains ending in such a reader are
checked against numpy.einsum at 1 and 2 threads.
"""
from __future__ import annotations

import warnings

import numpy as np
import pytest
import scipy.sparse as sp
from hypothesis import given, settings
from hypothesis import strategies as st

import spcomp
from spcomp.errors import TranspositionWarning
from spcomp.runtime import launch
from spcomp.testing.check import densify

from conftest import examples, spcomp_threads

MAKERS = [
    ("T[i,k] = A[i,j] * B[j,k]", lambda e: e["A"] @ e["B"]),
    ("T[i,k] = D[i,k] * E[i,k]", lambda e: e["D"] * e["E"]),
    ("T[i,k] = D[i,k] + A[i,j] * B[j,k]", lambda e: e["D"] + e["A"] @ e["B"]),
]
READERS = [
    ("Z[k,i] = T[i,k] * 2", lambda e: 2 * e["T"].T),
    ("Z[k,i] = T[i,k] + F[k,i]", lambda e: e["T"].T + e["F"]),
    ("Z[k,i] = T[i,k] * F[k,i]", lambda e: e["T"].T * e["F"]),
]


@settings(max_examples=examples(25), deadline=None)
@given(st.data())
def test_transposed_reads_of_a_csr_temporary_stay_in_the_function(data):
    make, make_ref = data.draw(st.sampled_from(MAKERS), label="T")
    read, read_ref = data.draw(st.sampled_from(READERS), label="Z")
    z_format = data.draw(st.sampled_from(["csr", "dcsr", "dense"]), label="Z format")
    then = data.draw(st.booleans(), label="then y = Z*c")
    I, J, K = (data.draw(st.integers(1, 9), label=x) for x in "IJK")
    seed = data.draw(st.integers(0, 2 ** 16), label="seed")
    rng = np.random.default_rng(seed)
    ops = {"A": sp.random(I, J, density=0.4, format="csr", random_state=seed),
           "B": sp.random(J, K, density=0.4, format="csr", random_state=seed + 1),
           "D": sp.random(I, K, density=0.3, format="csr", random_state=seed + 2),
           "E": rng.standard_normal((I, K)), "F": rng.standard_normal((K, I)), "c": rng.standard_normal(I)}
    text = f"{make}\n{read}" + ("\ny[k] = Z[k,i] * c[i]" if then else "")
    out = "y" if then else "Z"
    formats = {n: "csr" for n in ("A", "B", "D", "T") if f"{n}[" in text}
    formats["Z"] = z_format
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", TranspositionWarning)
        k = spcomp.compile(text, formats=formats)
    assert k.launches == 1, k.loops
    if z_format != "dense":   # a sparse Z is appended row by row of k: T is read by columns
        assert "reads T through a transposed copy made inside the function" in k.loops, k.loops
        assert "copy_next" in k.ir and "restrict T_T" not in k.ir   # no parameter for the copy
        assert "in phases, statements 1 | 2" in k.loops, k.loops
    used = {n: v for n, v in ops.items() if n in k.inputs}
    env = {n: densify(v) for n, v in used.items()}
    env["T"] = make_ref(env)
    env["Z"] = read_ref(env)
    if then:
        env["y"] = env["Z"] @ env["c"]
    for threads in (1, 2):
        with spcomp_threads(threads, min_work=0):
            got = k(**used)
        assert np.allclose(np.asarray(densify(got)), env[out], rtol=1e-10, atol=1e-10), (text, threads)
        # on threads in phases (spcomp/program_phases.py): T's writer, then the rest as one launch
        split = 2 if z_format != "dense" else len(k.program.statements)   # (a dense Z reads no copy)
        assert k.last_launches in ((1,) if threads == 1 else (1, split))


def test_the_copy_survives_growth(monkeypatch):
    """T's arrays grow by realloc before the copy reads them (the copy loads them from
    the writer's slots after the writer ran)."""
    monkeypatch.setattr(launch, "FIRST_CAPACITY", 1)
    with pytest.warns(TranspositionWarning, match="operand T"):   # (the copy is still made, by the function)
        k = spcomp.compile("T[i,k] = A[i,j]*B[j,k]\nZ[k,i] = T[i,k] * 2",
                           formats={"A": "csr", "B": "csr", "T": "csr", "Z": "csr"})
    A = sp.random(40, 30, density=0.2, format="csr", random_state=5)
    B = sp.random(30, 50, density=0.2, format="csr", random_state=6)
    for _ in range(2):
        assert np.allclose(k(A=A, B=B).to_numpy(), 2 * (A @ B).toarray().T)


@pytest.mark.parametrize("shape, density", [((5, 7), 0.0), ((1, 1), 1.0), ((7, 1), 1.0), ((1, 9), 1.0)])
def test_the_copy_of_empty_and_one_line_temporaries(shape, density):
    """No entries (every column empty), one row, one column: the counting sort's edges."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", TranspositionWarning)
        k = spcomp.compile("T[i,k] = D[i,k] * 3\nZ[k,i] = T[i,k] + F[k,i]",
                           formats={"D": "csr", "T": "csr", "Z": "csr"})
    assert "copy_next" in k.ir
    D = sp.random(*shape, density=density, format="csr", random_state=0)
    F = np.arange(shape[0] * shape[1], dtype=float).reshape(shape[::-1])
    assert np.allclose(k(D=D, F=F).to_numpy(), 3 * D.toarray().T + F)

