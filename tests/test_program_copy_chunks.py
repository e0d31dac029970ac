"""A fused run with in-function copies on threads, in phases (spcomp/program_phases.py).

A run whose statement reads a sparse temporary of the run through a copy its
one-thread function makes (transposed, or a diagonal gathered) is cut before that
statement on a call big enough for threads: each phase one launch on threads (by
chunks of rows where it has such a function), the temporary handed to the next
phase whole and copied as the reader binds it (runtime/row_copies.py for a
csr-like one). Each test splits every call (a threshold of 0), counts the launches
and the chunked calls, and checks the result against numpy.einsum and, bit for
bit, against the one-thread function's.
"""
from __future__ import annotations

import warnings

import numpy as np
import pytest
import scipy.sparse as sp
from hypothesis import given, settings
from hypothesis import strategies as st

import spcomp
from spcomp.backends.cpu.target import CpuTarget
from spcomp.program_phases import copy_phases
from spcomp.runtime import program as runtime_program
from spcomp.runtime import row_copies
from spcomp.testing.check import densify

from conftest import examples, record_splits, spcomp_threads

TRANSPOSED = "T[i,k] = A[i,j]*B[j,k]; Z[k,i] = T[i,k]*2; y[k] = Z[k,i]*c[i]"
DIAGONAL = "T[i,k] = A[i,j]*B[j,k]; v[k] = T[k,k]*x[k]"


def _compile(text, formats):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")   # TranspositionWarning: T is read against its order
        return spcomp.compile(text, formats=formats)


def _operands(n: int, density: float, seed: int, inner: int | None = None, cols: int | None = None) -> dict:
    """``A`` n x inner, ``B`` inner x cols (square by default), ``c`` over A's rows, ``x`` over B's columns."""
    rng = np.random.default_rng(seed)
    inner, cols = inner or n, cols or n
    return {"A": sp.random(n, inner, density=density, format="csr", random_state=seed),
            "B": sp.random(inner, cols, density=density, format="csr", random_state=seed + 1),
            "c": rng.standard_normal(n), "x": rng.standard_normal(cols)}


def _expected(text: str, ops: dict):
    t = np.einsum("ij,jk->ik", ops["A"].toarray(), ops["B"].toarray())
    if text.startswith(TRANSPOSED.split(";")[0]) and "Z[k,i]" in text:
        return np.einsum("ki,i->k", 2 * t.T, ops["c"])
    return np.einsum("kk,k->k", t, ops["x"])


@pytest.fixture
def chunked_calls(monkeypatch):
    """Counts the fused runs' calls by chunks of rows (runtime/program.py's run_chunked)."""
    calls = []
    real = runtime_program.run_chunked
    monkeypatch.setattr(runtime_program, "run_chunked", lambda *a: calls.append(1) or real(*a))
    return calls


def _one_and_two_threads(k, ops: dict, monkeypatch) -> tuple:
    """``(one thread's result, two threads' result, the splits the two-thread call made)``."""
    inputs = {n: ops[n] for n in k.inputs}
    with spcomp_threads(1):
        one = k(**inputs)
    assert k.last_launches == 1
    splits = record_splits(monkeypatch)
    with spcomp_threads(2, min_work=0):
        two = k(**inputs)
    return one, two, splits


@pytest.mark.parametrize("team", [True, False])
@pytest.mark.parametrize("threads", [1, 2])
def test_a_transposed_read_runs_in_phases_on_threads(threads, team, chunked_calls, monkeypatch):
    """On threads: one team call (runtime/program_team.py: T stitched and transposed
    inside it), or, without a native team, a launch per phase."""
    if not team:
        monkeypatch.setattr(CpuTarget, "team_available", lambda self: False)
    k = _compile(TRANSPOSED, {"A": "csr", "B": "csr", "T": "csr", "Z": "csr"})
    monkeypatch.setattr(k, "_phased", {})  # (the same program compiled before: its plans made afresh here)
    assert k.launches == 1 and k.segments[0][1].phases == [[0], [1, 2]], k.loops
    assert ("one native call on a thread team, in phases, statements 1 | 2, 3" if team else
            "on threads in phases, statements 1 | 2, 3") in k.loops, k.loops
    ops = _operands(60, 0.08, 1)
    one, two, splits = _one_and_two_threads(k, ops, monkeypatch)
    with spcomp_threads(threads, min_work=0):
        got = k(A=ops["A"], B=ops["B"], c=ops["c"])
    np.testing.assert_allclose(got, _expected(TRANSPOSED, ops), rtol=1e-12, atol=1e-12)
    assert np.array_equal(two, one)  # the same sums in the same order
    # two launches on threads: T's writer, then statements 2 and 3 by chunks of rows
    assert splits and chunked_calls[:1] == ([] if team else [1])
    assert k.last_launches == (1 if threads == 1 or team else 2)


@pytest.mark.parametrize("threads", [1, 2])
def test_a_diagonal_read_runs_in_phases_on_threads(threads, monkeypatch):
    k = _compile(DIAGONAL, {"A": "csr", "B": "csr", "T": "csr"})
    assert k.segments[0][1].phases == [[0], [1]], k.loops
    assert "gathered whole before it" not in k.loops, k.loops
    ops = _operands(50, 0.1, 2)
    gathered = []
    real = row_copies.diagonal_entries
    monkeypatch.setattr("spcomp.runtime.operands.diagonal_entries", lambda t: gathered.append(1) or real(t))
    one, two, splits = _one_and_two_threads(k, ops, monkeypatch)
    assert np.array_equal(two, one) and splits and gathered == [1]   # T's rows split, its diagonal gathered
    with spcomp_threads(threads, min_work=0):
        got = k(A=ops["A"], B=ops["B"], x=ops["x"])
    np.testing.assert_allclose(got, _expected(DIAGONAL, ops), rtol=1e-12, atol=1e-12)
    assert k.last_launches == (1 if threads == 1 else 2)


def test_a_saved_program_runs_in_phases_after_loading(tmp_path, chunked_calls, monkeypatch):
    k = _compile(TRANSPOSED, {"A": "csr", "B": "csr", "T": "csr", "Z": "csr"})
    path = tmp_path / "copies.spk"
    k.save(path, key=b"a test key of 32 bytes, exactly!")
    loaded = spcomp.load(path, key=b"a test key of 32 bytes, exactly!")
    assert loaded.loops == k.loops and loaded.segments[0][1].phases == [[0], [1, 2]]
    ops = _operands(40, 0.1, 3)
    one, two, splits = _one_and_two_threads(loaded, ops, monkeypatch)
    assert loaded.last_launches == 1 and chunked_calls == [] and np.array_equal(one, two)  # one team call
    np.testing.assert_allclose(two, _expected(TRANSPOSED, ops), rtol=1e-12, atol=1e-12)


def test_copy_phases_cut_before_each_read_of_a_copy_of_the_phase():
    """Unit: a new phase at each statement that reads a copy of a tensor its phase
    wrote; a copy of an earlier phase's tensor is no cut."""
    class Low:
        def __init__(self, transposed=(), diagonal=()):
            ops = type("Ops", (), {})()
            ops.transposes = {f"{t}_T": (t, None) for t in transposed}
            ops.diagonals = {f"{d}_diag": type("D", (), {"operand": d})() for d in diagonal}
            self.operands = ops

    class Stmt:
        def __init__(self, name):
            self.lhs = type("L", (), {"tensor": type("V", (), {"name": name})()})()
    stmts = [Stmt(x) for x in "TUVW"]
    lows = [Low(), Low(transposed="T"), Low(), Low(diagonal="T")]
    assert copy_phases(stmts, [0, 1, 2, 3], lows) == [[0], [1, 2, 3]]
    lows = [Low(), Low(), Low(transposed="U"), Low(diagonal="T")]
    assert copy_phases(stmts, [0, 1, 2, 3], lows) == [[0, 1], [2, 3]]
    lows = [Low(), Low(), Low(transposed="U"), Low(diagonal="V")]
    assert copy_phases(stmts, [0, 1, 2, 3], lows) == [[0, 1], [2], [3]]
    assert copy_phases(stmts, [0, 1, 2], [Low(), Low(), Low(diagonal="V")]) == [[0, 1, 2]]


@pytest.mark.parametrize("t_format", ["csr", "csc"])
def test_row_copies_match_the_general_conversion(t_format):
    """Unit: the counting-sort transpose and the diagonal gather of runtime/row_copies.py
    give the arrays the coordinate-list path gives."""
    rng = np.random.default_rng(5)
    a = rng.standard_normal((30, 30)) * (rng.random((30, 30)) < 0.2)
    t = spcomp.Tensor.from_numpy(a, t_format)
    other = spcomp.Tensor.from_numpy(a, "csc" if t_format == "csr" else "csr").format
    fast = row_copies.swapped(t, other, True)
    slow = spcomp.Tensor.from_coo(*t.to_coo(drop_zeros=True), t.shape, other, dtype=t.dtype)
    assert fast is not None and np.array_equal(fast.vals, slow.vals)
    assert all(np.array_equal(fast.levels[1][x], slow.levels[1][x]) for x in ("pos", "crd"))
    coords, values = row_copies.diagonal_entries(t)
    assert np.array_equal(values, np.diag(a)[np.diag(a) != 0]) and np.array_equal(coords[0], np.flatnonzero(np.diag(a)))


def test_a_diagonal_of_a_non_square_temporary_is_refused_on_threads_too():
    k = _compile(DIAGONAL, {"A": "csr", "B": "csr", "T": "csr"})
    ops = _operands(12, 0.3, 4, cols=9)
    for threads in (1, 2):
        with spcomp_threads(threads, min_work=0), pytest.raises(spcomp.ShapeError, match="T"):
            k(A=ops["A"], B=ops["B"], x=ops["x"])


@settings(max_examples=examples(20), deadline=None)
@given(reader=st.sampled_from([TRANSPOSED, DIAGONAL]), t_format=st.sampled_from(["csr", "csc", "dcsr", "coo"]),
       n=st.integers(2, 40), inner=st.integers(1, 30), cols=st.integers(1, 30),
       density=st.floats(0.0, 0.5), seed=st.integers(0, 2 ** 16))
def test_phases_agree_with_einsum_and_one_thread(reader, t_format, n, inner, cols, density, seed):
    formats = {"A": "csr", "B": "csr", "T": t_format, "Z": "csr"}
    k = _compile(reader, {x: f for x, f in formats.items() if f"{x}[" in reader})
    ops = _operands(n, density, seed, inner, cols if reader == TRANSPOSED else n)
    inputs = {x: ops[x] for x in k.inputs}
    with spcomp_threads(1):
        one = k(**inputs)
    with spcomp_threads(2, min_work=0):
        two = k(**inputs)
    np.testing.assert_allclose(densify(two), _expected(reader, ops), rtol=1e-10, atol=1e-10)
    assert np.array_equal(densify(two), densify(one))
    phases = k.segments[0][1].phases if k.segments[0][0] == "fused" else None
    team = k._team(k.segments[0][2], k.segments[0][1])[1] if phases else "none"
    if not isinstance(team, str):  # one call on a thread team, the copy made inside it
        assert k.last_launches == 1, k.loops
    elif phases and (k.last_launches > 1 or t_format == "csr"):  # (a dcsr or coo T's own kernel stays on one
        # thread for its writer: so does the run) on threads in phases: a launch per phase, or per
        # statement of one that does not join
        assert len(phases) <= k.last_launches <= len(k.program.statements), k.loops
