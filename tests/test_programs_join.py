"""Statements that used to split a program into several kernels now join one function.

Two cases (issue 24): a sparse statement after a dense ``+=`` (such a run calls its
64-bit function at once, so a 32-bit overflow never reruns the ``+=``), and a
reader of a 2-d sparse temporary stored ``dc`` (csr, csc), ``cc`` (dcsr) or
``c q`` (coo) against its order, or of a 3-d one in another mode order (the copy
is made inside the function, ``lower/fused_transpose.py``,
``spcomp/program_copies.py``). Every result is checked against numpy.einsum; a
diagonal read joins too (``test_programs_join_more.py`` has more), and what still
cannot join runs as kernels of their own, ``k.loops`` saying why.
"""
from __future__ import annotations

import warnings

import numpy as np
import pytest
import scipy.sparse as sp
from hypothesis import given, settings
from hypothesis import strategies as st

import spcomp
from spcomp.errors import UnsupportedError
from spcomp.lower import record
from spcomp.testing.check import densify
from spcomp.testing.programs import close, program_operands, programs, reference_program

from conftest import examples, spcomp_threads


def _compile(text, formats, **kw):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")   # TranspositionWarning: the copy the function makes
        return spcomp.compile(text, formats=formats, **kw)


def _dense(v):
    return np.asarray(densify(v), dtype=np.float64)


def _ops(seed, I=13, J=11, K=9):
    rng = np.random.default_rng(seed)
    return {"A": sp.random(I, J, density=0.3, format="csr", random_state=seed),
            "B": sp.random(J, K, density=0.3, format="csr", random_state=seed + 1),
            "F": rng.standard_normal((K, I)), "x": rng.standard_normal(I), "w": rng.standard_normal(K)}


@pytest.mark.parametrize("t_format", ["csr", "dcsr", "coo"])
@pytest.mark.parametrize("z_format", ["csr", "dcsr", "coo", "dense"])
def test_a_transposed_read_of_a_sparse_temporary_joins(t_format, z_format):
    k = _compile("T[i,k] = A[i,j]*B[j,k]; Z[k,i] = T[i,k] + F[k,i]",
                 {"A": "csr", "B": "csr", "T": t_format, "Z": z_format})
    assert k.launches == 1, k.loops
    if z_format != "dense":   # (a dense Z is written in any order: T read as stored)
        # the warning names T's own format, not the csr-like one its reader was lowered to see
        assert any(f"operand T is stored as {t_format} " in w for w in k.warnings), k.warnings
    ops = _ops(7)
    want = np.einsum("ij,jk->ki", ops["A"].toarray(), ops["B"].toarray()) + ops["F"]
    for threads in (1, 2):
        with spcomp_threads(threads, min_work=0):
            assert np.allclose(_dense(k(A=ops["A"], B=ops["B"], F=ops["F"])), want)


def test_a_csc_temporary_read_by_rows_joins():
    k = _compile("T[i,k] = A[i,j]*B[j,k]; Z[i,k] = T[i,k] * 2; y[i] = Z[i,k]*w[k]",
                 {"A": "csr", "B": "csr", "T": "csc", "Z": "csr"})
    assert k.launches == 1 and "reads T through a transposed copy made inside the function" in k.loops, k.loops
    ops = _ops(3)
    assert np.allclose(k(A=ops["A"], B=ops["B"], w=ops["w"]), 2 * (ops["A"] @ ops["B"]) @ ops["w"])


@pytest.mark.parametrize("t_format", ["dcsr", "coo"])
def test_the_copy_of_a_grown_temporary(monkeypatch, t_format):
    """T's arrays grow by realloc (capacity 1 at first) before the copy reads them."""
    from spcomp.runtime import launch
    monkeypatch.setattr(launch, "FIRST_CAPACITY", 1)
    k = _compile("T[i,k] = A[i,j]*B[j,k]; Z[k,i] = T[i,k]*3", {"A": "csr", "B": "csr", "T": t_format, "Z": "csr"})
    assert k.launches == 1
    ops = _ops(11, I=40, J=30, K=35)
    assert np.allclose(_dense(k(A=ops["A"], B=ops["B"])), 3 * (ops["A"] @ ops["B"]).T.toarray())


@pytest.mark.parametrize("t_format", ["csf", "coo", "dcc"])
@pytest.mark.parametrize("z_index", ["k,j,i", "i,k,j", "j,i,k"])
@pytest.mark.parametrize("z_format", ["csf", "coo", "dense"])
def test_a_3d_temporary_read_in_another_mode_order_joins(monkeypatch, t_format, z_index, z_format):
    """The copy is a sorted coordinate list made inside the function (one counting
    sort per level but the last); T's arrays grown from a capacity of 1."""
    from spcomp.runtime import launch
    monkeypatch.setattr(launch, "FIRST_CAPACITY", 1)
    k = _compile(f"T[i,j,k] = A[i,j,k]*B[i,j,k]; Z[{z_index}] = T[i,j,k] * 3",
                 {"A": "csf", "B": "csf", "T": t_format, "Z": z_format})
    assert k.launches == 1, k.loops
    if z_format != "dense":
        assert "reads T through a transposed copy made inside the function" in k.loops, k.loops
    rng = np.random.default_rng(len(z_index + t_format + z_format))
    a, b = (rng.standard_normal((5, 6, 7)) * (rng.random((5, 6, 7)) < 0.4) for _ in range(2))
    got = _dense(k(A=spcomp.Tensor.from_numpy(a, "csf"), B=spcomp.Tensor.from_numpy(b, "csf")))
    assert np.allclose(got, 3 * np.einsum(f"ijk->{z_index.replace(',', '')}", a * b))


def test_a_diagonal_read_joins():
    k = _compile("T[i,k] = A[i,j]*B[j,k]; v[k] = T[k,k] * 2", {"A": "csr", "B": "csr", "T": "csr"})
    assert k.launches == 1
    assert "reads T through a diagonal copy gathered inside the function" in k.loops, k.loops
    ops = _ops(2, I=9, J=9, K=9)
    assert np.allclose(k(A=ops["A"], B=ops["B"]), 2 * np.diag((ops["A"] @ ops["B"]).toarray()))


def test_a_sparse_statement_after_a_dense_add_joins():
    k = _compile("Y[i,k] += A[i,j]*B[j,k]; T[i,k] = A[i,j]*B[j,k]; z[k] = T[i,k]*x[i]",
                 {"A": "csr", "B": "csr", "T": "csr"})
    assert k.launches == 1, k.loops
    ops = _ops(5)
    P = (ops["A"] @ ops["B"]).toarray()
    Y = np.ones(P.shape)
    got = k(A=ops["A"], B=ops["B"], x=ops["x"], Y=Y)
    assert got["Y"] is Y and np.allclose(Y, 1 + P)
    assert np.allclose(got["z"], np.einsum("ik,i->k", P, ops["x"]))
    assert k.segments[0][1].variants.get(64) is not None   # called 64-bit at once


def test_a_dense_add_before_an_overflowing_sparse_statement_adds_once(monkeypatch):
    """T passes the (lowered) 32-bit limit: a rerun of the whole run at 64 bits would
    add into Y twice; the run calls the 64-bit function from the start instead."""
    monkeypatch.setattr(record, "INDEX32_LIMIT", 30)
    k = _compile("Y[i,k] += A[i,k]*2; T[i,k] = A[i,j]*B[j,k]", {"A": "csr", "B": "csr", "T": "csr"},
                 outputs=["Y", "T"])
    assert k.launches == 1
    ops = _ops(1, I=12, J=12, K=12)
    P = (ops["A"] @ ops["B"]).toarray()
    assert np.count_nonzero(P) > 30
    Y = np.ones((12, 12))
    with spcomp_threads(1):
        got = k(A=ops["A"], B=ops["B"], Y=Y)
    assert np.allclose(Y, 1 + 2 * ops["A"].toarray()) and np.allclose(_dense(got["T"]), P)


@settings(max_examples=examples(25), deadline=None)
@given(st.data())
def test_random_chains_with_adds_and_transposed_reads(data):
    """A writer of a temporary in a random format, its reader (by rows or against
    them), a dense += before or after, and sometimes a statement reading the
    reader's output: checked against numpy.einsum at one and two threads."""
    t_format = data.draw(st.sampled_from(["csr", "csc", "dcsr", "coo", "dense"]), label="T")
    z_format = data.draw(st.sampled_from(["csr", "dcsr", "coo", "dense"]), label="Z")
    flip = data.draw(st.booleans(), label="Z is T transposed")
    add = data.draw(st.sampled_from([None, "before", "after"]), label="Y +=")
    then = data.draw(st.booleans(), label="then y = Z*v")
    I, J, K = (data.draw(st.integers(1, 8), label=n) for n in "IJK")
    seed = data.draw(st.integers(0, 2 ** 16), label="seed")
    ops = _ops(seed, I, J, K)
    rng = np.random.default_rng(seed)
    ops["G"] = rng.standard_normal((I, K))
    z_idx, g = ("k,i", "F[k,i]") if flip else ("i,k", "G[i,k]")
    stmts = ["T[i,k] = A[i,j]*B[j,k]", f"Z[{z_idx}] = T[i,k] * {g}"]
    if then:
        stmts.append(f"y[{z_idx[0]}] = Z[{z_idx}] * {'x' if flip else 'w'}[{z_idx[2]}]")
    if add == "before":
        stmts.insert(0, "Y[i,j] += A[i,j] * 3")
    elif add == "after":
        stmts.append("Y[i,j] += A[i,j] * 3")
    formats = {"A": "csr", "B": "csr", "T": t_format, "Z": z_format}
    k = _compile("; ".join(stmts), formats)
    if t_format != "dense":
        assert k.launches == 1, k.loops   # every statement joins one function
    T = ops["A"].toarray() @ ops["B"].toarray()
    Z = T.T * ops["F"] if flip else T * ops["G"]
    want = {"Z": Z}
    if then:
        want = {"y": Z @ (ops["x"] if flip else ops["w"])}
    args = {n: v for n, v in ops.items() if n in k.inputs}
    for threads in (1, 2):
        with spcomp_threads(threads, min_work=0):
            Y = np.ones((I, J))
            got = k(**args, **({"Y": Y} if add else {}))
        if add:
            assert np.allclose(Y, 1 + 3 * ops["A"].toarray())
            got = {n: v for n, v in got.items() if n != "Y"}
        got = got if isinstance(got, dict) else {k.outputs[0]: got}
        for name, value in want.items():
            assert np.allclose(_dense(got[name]), value), (stmts, formats, threads, name)


def test_a_loaded_program_lowers_its_reader_alike_at_64_bits(monkeypatch):
    """The reader of a dcsr T was lowered to see T as dc; a loaded program re-derives
    that from its saved 32-bit lowering when it first needs the 64-bit function (T
    passes the lowered 32-bit limit), and gathers Z's diagonal inside it as well."""
    monkeypatch.setattr(record, "INDEX32_LIMIT", 30)
    k = _compile("T[i,k] = A[i,j]*B[j,k]; Z[k,i] = T[i,k]*2; v[k] = Z[k,k]",
                 {"A": "csr", "B": "csr", "T": "dcsr", "Z": "csr"})
    loaded = spcomp.loads(k.to_bytes())
    assert loaded.launches == 1 and loaded.loops == k.loops and "reads Z through a diagonal copy" in loaded.loops
    ops = _ops(4, I=12, J=12, K=12)
    P = (ops["A"] @ ops["B"]).toarray()
    assert np.count_nonzero(P) > 30
    with spcomp_threads(1):
        got = loaded(A=ops["A"], B=ops["B"])
    assert np.allclose(got, 2 * np.diag(P)) and 64 in loaded.segments[0][1].variants


@settings(max_examples=examples(20), deadline=None)
@given(st.data())
def test_random_programs_of_order_3_match_numpy(data):
    """Random programs over tensors of order up to 3 (temporaries of random formats,
    read in whatever mode order their readers' outputs take: copies of any order made
    inside the function), at one and two threads."""
    case = data.draw(programs(max_statements=3, max_order=3, transposed_reads=True))
    ops = data.draw(program_operands(case))
    try:
        k = _compile(case.text, case.formats, outputs=list(case.outputs))
    except UnsupportedError as e:
        assert str(e)
        return
    assert k.loops.count("one native function") + k.loops.count("a kernel of its own") == k.launches
    want = reference_program(k.program, {n: v[0] for n, v in ops.items()})
    for threads in (1, 2):
        with spcomp_threads(threads, min_work=0):
            got = k(**{n: v[1] for n, v in ops.items()})
        got = got if len(case.outputs) > 1 else {case.outputs[0]: got}
        for name in case.outputs:
            assert close(got[name], want[name]), (str(case), name, threads)
