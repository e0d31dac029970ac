"""A fused run's phases as one native call on a thread team (runtime/program_team.py).

A fused run with no function over chunks of rows is cut wherever the chunked join
fails (spcomp/program_phases.team_cut); a call big enough for threads runs every
phase in one call of the team driver (backends/cpu/team.py): a barrier between
phases, a sum into per-chunk copies added natively in chunk order. Each call here
is split (a threshold of 0) and checked against NumPy, bit for bit against the one
thread function (or, where a phase sums into copies per chunk, against the same
phases run one launch each, whose copies Python adds in the same order), and for
its single launch.
"""
from __future__ import annotations

import os
import warnings

import numpy as np
import pytest
import scipy.sparse as sp
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from llvmlite import ir

import spcomp
from spcomp.backends.cpu.jit import compile_llvm
from spcomp.backends.cpu.team import PhaseSpec, TeamDriver
from spcomp.errors import UnsupportedError
from spcomp.ir.types import F64, I64, PointerType
from spcomp.program_phases import team_cut
from spcomp.runtime import program_team
from spcomp.testing.programs import program_operands, programs, reference_program

from conftest import examples, spcomp_threads

SUMMED = "t[i] = A[i,j]*x[j]; y[j] = A[i,j]*t[i]; z[i] = A[i,j]*y[j]"


def _compile(text, formats, outputs=None):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return spcomp.compile(text, formats=formats, outputs=outputs)


@pytest.fixture
def team_calls(monkeypatch):
    """Counts the team driver's calls."""
    calls = []
    real = program_team.TeamRun.run
    monkeypatch.setattr(program_team.TeamRun, "run", lambda self, env: calls.append(1) or real(self, env))
    return calls


def _one_thread_then_team(k, ops, team_calls) -> tuple:
    """``k``'s results on one thread, then on two threads as one team call (asserted)."""
    with spcomp_threads(1):
        one = k(**ops)
    with spcomp_threads(2, min_work=0):
        two = k(**ops)
        assert k.last_launches == 1 and team_calls == [1]
    return one, two


# ---------------------------------------------------------------- the cut
def test_the_cut_takes_the_longest_joining_stretch_and_leaves_the_rest_alone():
    joins = lambda ks: ks in ([0], [0, 1], [2], [3], [2, 3], [5])  # noqa: E731
    assert team_cut([0, 1, 2, 3, 4, 5], joins) == [[0, 1], [2, 3], [4], [5]]
    assert team_cut([0, 1], lambda ks: False) == [[0], [1]]
    assert team_cut([0, 1, 2], lambda ks: True) == [[0, 1, 2]]


# ------------------------------------------------------- the native driver
def _functions():
    """``serial(out, status)``: stores 7 at out[0], returns status; ``split(lo, hi, out, v)``:
    out[i] = v + i over its rows, returns 0."""
    mod = ir.Module()
    i32, i64, f64, ptr = ir.IntType(32), ir.IntType(64), ir.DoubleType(), ir.PointerType()
    f = ir.Function(mod, ir.FunctionType(i32, [ptr, i64]), name="serial")
    b = ir.IRBuilder(f.append_basic_block())
    b.store(ir.Constant(f64, 7.0), f.args[0])
    b.ret(b.trunc(f.args[1], i32))
    g = ir.Function(mod, ir.FunctionType(i32, [i64, i64, ptr, f64]), name="split")
    entry, loop, done = (g.append_basic_block(x) for x in ("e", "l", "d"))
    b = ir.IRBuilder(entry)
    b.cbranch(b.icmp_signed("<", g.args[0], g.args[1]), loop, done)
    b.position_at_end(loop)
    i = b.phi(i64)
    i.add_incoming(g.args[0], entry)
    b.store(b.fadd(g.args[3], b.sitofp(i, f64)), b.gep(g.args[2], [i], source_etype=f64))
    nxt = b.add(i, ir.Constant(i64, 1))
    i.add_incoming(nxt, loop)
    b.cbranch(b.icmp_signed("<", nxt, g.args[1]), loop, done)
    b.position_at_end(done)
    b.ret(ir.Constant(i32, 0))
    return compile_llvm(mod, ["serial", "split"])


@pytest.mark.parametrize("threads", [1, 2, 3])
@pytest.mark.parametrize("status", [0, 3])
def test_the_driver_runs_phases_in_order_and_a_status_stops_the_later_ones(threads, status):
    _engine, at = _functions()
    ptr = PointerType(F64)
    d = TeamDriver([PhaseSpec(False, (ptr, I64)), PhaseSpec(True, (ptr, F64), frozenset(), ("float64",))])
    marker, out = np.zeros(1), np.full(10, -1.0)
    bounds = np.array([0, 3, 7, 10], np.int64)
    copies = np.arange(30, dtype=np.float64).reshape(3, 10) / 7
    frame = np.zeros(d.words, np.int64)
    frame[d.bases[0]], frame[d.bases[0] + 3], frame[d.bases[0] + 4] = at["serial"], marker.ctypes.data, status
    p = d.bases[1]
    frame[p:p + 5] = (at["split"], 3, bounds.ctypes.data, out.ctypes.data, np.float64(0.5).view(np.int64))
    s = d.sums[1][0]
    frame[s:s + 5] = (out.ctypes.data, copies.ctypes.data, 3, 10, 0)
    assert d.function(threads, frame.ctypes.data) == status
    assert marker[0] == 7.0
    if status:  # the split phase and the sum never ran
        assert (out == -1).all()
        return
    want = np.arange(10) + 0.5
    for row in copies:  # in chunk order, as runtime/partials.add_into
        want += row
    assert np.array_equal(out, want)


@pytest.mark.parametrize("dtype", ["float32", "int64", "int32"])
def test_the_driver_replaces_an_output_with_the_sum_of_its_copies(dtype):
    _engine, at = _functions()
    d = TeamDriver([PhaseSpec(False, (PointerType(F64), I64), frozenset(), (dtype,))])
    marker, out = np.zeros(1), np.full(5, 100, dtype)
    copies = (np.arange(15) % 4).astype(dtype).reshape(3, 5)
    frame = np.zeros(d.words, np.int64)
    frame[d.bases[0]], frame[d.bases[0] + 3] = at["serial"], marker.ctypes.data
    s = d.sums[0][0]
    frame[s:s + 5] = (out.ctypes.data, copies.ctypes.data, 3, 5, 1)
    assert d.function(2, frame.ctypes.data) == 0
    assert np.array_equal(out, copies.sum(axis=0))


# ---------------------------------------------------------------- programs
def _summed_operands(n=300, seed=1):
    return {"A": sp.random(n, n, density=0.05, format="csr", random_state=seed),
            "x": np.random.default_rng(seed).standard_normal(n)}


def test_a_run_reading_a_sum_over_rows_runs_as_one_team_call(team_calls):
    k = _compile(SUMMED, {"A": "csr"})
    assert "one native call on a thread team, in phases, statements 1, 2 | 3" in k.loops, k.loops
    ops = _summed_operands()
    with spcomp_threads(1):
        one = k(**ops)
    assert not team_calls
    with spcomp_threads(2, min_work=0):
        two = k(**ops)
        assert k.last_launches == 1 and team_calls == [1]
        again = k(**ops)
        # the same phases one launch each (Python adds the copies, in the same chunk order)
        (_kind, seg, run), = k.segments
        env = dict(ops)
        for r in k._team(run, seg)[1].runs:
            r.run(env)
    a = ops["A"].toarray()
    assert np.allclose(two, a @ (a.T @ (a @ ops["x"])))
    assert np.allclose(two, one)
    assert np.array_equal(two, again) and np.array_equal(two, env["z"])


def test_a_forked_child_runs_the_team_call_on_its_own_thread():
    k = _compile(SUMMED, {"A": "csr"})
    ops = _summed_operands(200, 2)
    with spcomp_threads(2, min_work=0):
        want = k(**ops)
        pid = os.fork()
        if pid == 0:  # pragma: no cover - the child
            ok = False
            try:
                got = k(**ops)
                ok = k.last_launches == 1 and np.allclose(got, want)
            finally:
                os._exit(0 if ok else 1)
        _pid, code = os.waitpid(pid, 0)
    assert os.WEXITSTATUS(code) == 0


@pytest.mark.parametrize("fmt", ["csr", "dcsr"])
def test_a_sparse_tensor_one_thread_of_the_team_assembles_is_read_by_later_phases(fmt, team_calls):
    """``Y`` is assembled by a serial phase (its writer walks a dcsr operand's
    positions); the later phases get its grown arrays through their slots, read by
    the driver when each phase starts, and its row ends directly."""
    k = _compile("t[i] = A[i,j]*x[j]; Y[i,j] = D[i,j]*t[i]; z[i] = Y[i,j]*x[j]; V[i,j] = Y[i,j]*z[i]",
                 {"A": "csr", "D": "dcsr", "Y": fmt, "V": fmt})
    assert "one native call on a thread team, in phases, statements 1 | 2 | 3" in k.loops, k.loops
    n = 230
    ops = {"A": sp.random(n, n, density=0.05, format="csr", random_state=1),
           "D": sp.random(n, n, density=0.05, format="csr", random_state=2),
           "x": np.random.default_rng(3).standard_normal(n)}
    one, two = _one_thread_then_team(k, ops, team_calls)
    y = ops["D"].toarray() * (ops["A"] @ ops["x"])[:, None]
    assert np.allclose(np.asarray(spcomp.testing.check.densify(two)), y * (y @ ops["x"])[:, None])
    assert two.format.spec() == one.format.spec()  # no sum over rows: bit for bit, entries in the same order
    assert all(np.array_equal(p, q) for l1, l2 in zip(one.levels, two.levels) for p, q in zip(l1.values(), l2.values()))
    assert np.array_equal(one.vals, two.vals)


@pytest.mark.parametrize("fmt", ["csr", "dcsr"])
def test_a_transposed_copy_is_made_inside_the_team_call(fmt, team_calls):
    """``T`` (appended per chunk, or on one thread: dcsr) is stitched and transposed
    by one thread of the team between the phases, the reader taking the copy's arrays
    through their slots: one launch, bit for bit the one-thread function's result."""
    k = _compile("T[i,k] = A[i,j]*B[j,k]; Z[k,i] = T[i,k]*2; y[k] = Z[k,i]*c[i]",
                 {"A": "csr", "B": "csr", "T": "csr", "Z": "csr"} if fmt == "csr" else
                 {"A": "dcsr", "B": "csr", "T": "dcsr", "Z": "csr"})
    (_kind, seg, run), = k.segments
    team = k._team(run, seg)[1]
    if fmt == "dcsr":  # (a dcsr T's writer walks A's stored rows: T is copied by the runtime)
        assert isinstance(team, str) and "through a copy" in team, team
        return
    assert team.copies == [[], ["T"]] and "transposed copy of T made between phases" in k.loops, k.loops
    n = 150
    ops = {"A": sp.random(n, n, density=0.04, format="csr", random_state=1),
           "B": sp.random(n, n, density=0.04, format="csr", random_state=2),
           "c": np.random.default_rng(3).standard_normal(n)}
    one, two = _one_thread_then_team(k, ops, team_calls)
    assert np.allclose(two, 2 * (ops["A"] @ ops["B"]).toarray().T @ ops["c"])
    assert np.array_equal(one, two)


def test_a_diagonal_read_keeps_the_phases_at_copies(team_calls):
    """A diagonal is not gathered inside the team call yet: a launch per phase."""
    k = _compile("T[i,k] = A[i,j]*B[j,k]; v[k] = T[k,k]*x[k]", {"A": "csr", "B": "csr", "T": "csr"})
    (_kind, seg, run), = k.segments
    why = k._team(run, seg)[1]
    assert isinstance(why, str) and "statement 2 reads T, sparse, from an earlier phase through a copy" in why, why
    n = 120
    ops = {"A": sp.random(n, n, density=0.05, format="csr", random_state=1),
           "B": sp.random(n, n, density=0.05, format="csr", random_state=2), "x": np.ones(n)}
    with spcomp_threads(2, min_work=0):
        got = k(**ops)
        assert k.last_launches == 2 and not team_calls
    assert np.allclose(got, np.diag((ops["A"] @ ops["B"]).toarray()))


@settings(max_examples=examples(40), deadline=None, suppress_health_check=list(HealthCheck))
@given(st.data())
def test_random_programs_on_a_team_match_numpy_and_one_thread(data):
    case = data.draw(programs(max_statements=4, accumulate=True, transposed_reads=True), label="program")
    try:
        k = _compile(case.text, case.formats, list(case.outputs))
    except UnsupportedError:
        return
    operands = data.draw(program_operands(case), label="operands")

    def call(threads, min_work=None):
        args = {n: (v[1].copy() if isinstance(v[1], np.ndarray) else v[1]) for n, v in operands.items()}
        with spcomp_threads(threads, min_work):
            got = k(**args)
        return got if isinstance(got, dict) else {k.outputs[0]: got}
    one = call(1)
    two = call(2, 0)
    teams = [k._team(run, seg) for kind, seg, run in k.segments
             if kind == "fused" and seg.compiled.variant is None and seg.chunks(32) is None]
    covered = [t for _p, t in teams if not isinstance(t, str)]
    # (a covered run is one launch unless its chunked phase spans different rows at this
    # call: then the per-phase path runs, as FusedRun._chunked falls back to one thread)
    assert k.last_launches <= len(k.program.statements)
    want = reference_program(k.program, {n: v[0] for n, v in operands.items()})
    sums = any(low.threads.partials for t in covered for r in t.runs if r.chunks(32) is not None
               for low in r.chunks(32).lows)
    for name in k.outputs:
        got = np.asarray(spcomp.testing.check.densify(two[name]))
        assert np.allclose(got, want[name], rtol=1e-9, atol=1e-9), (case, name)
        if not sums:
            assert np.array_equal(got, np.asarray(spcomp.testing.check.densify(one[name])), equal_nan=True), \
                (case, name)


@pytest.mark.parametrize("text, formats, phases", [
    ("t[i] = A[i,j]*x[j]; y[i] = D[i,j]*t[i]", {"A": "csr", "D": "dcsr"}, "statements 1 | 2"),
    ("t[j] = B[i,j]*x[i]; u[i] = A[i,j]*t[j]; w[i] = u[i]*u[i]", {"A": "csr", "B": "csr"}, "statements 1 | 2, 3"),
])
def test_runs_that_once_ran_statement_by_statement_are_one_team_call(text, formats, phases, team_calls):
    """A statement over positions (dcsr) runs on one thread of the team; a phase whose
    one-thread function splits its rows as one loop runs over the team's chunks."""
    k = _compile(text, formats)
    assert f"one native call on a thread team, in phases, {phases}" in k.loops, k.loops
    n = 240
    rng = np.random.default_rng(3)
    ops = {"A": sp.random(n, n, density=0.05, format="csr", random_state=4),
           "B": sp.random(n, n, density=0.05, format="csr", random_state=5),
           "D": sp.random(n, n, density=0.05, format="csr", random_state=6),
           "x": rng.standard_normal(n)}
    ops = {name: ops[name] for name in k.inputs}
    one, two = _one_thread_then_team(k, ops, team_calls)
    dense = {name: np.asarray(spcomp.testing.check.densify(v)) for name, v in ops.items()}
    if "D" in dense:
        want = dense["D"].sum(axis=1) * (dense["A"] @ dense["x"])
        assert np.allclose(two, want) and np.array_equal(one, two)  # no sum over rows: bit for bit
    else:
        u = dense["A"] @ (dense["B"].T @ dense["x"])
        assert np.allclose(two, u * u) and np.allclose(one, two)


@pytest.mark.parametrize("text, formats, returned", [
    # a csr output appended per chunk in the last phase, stitched after the team call
    ("y[j] = A[i,j]*x[i]; Z[i,j] = A[i,j]*y[j]", {"A": "csr", "Z": "csr"}, "dc"),
    # a dcsr output assembled on one thread of the team
    ("t[i] = A[i,j]*x[j]; Y[i,j] = D[i,j]*t[i]", {"A": "csr", "D": "dcsr", "Y": "dcsr"}, "cc"),
    # a dcsr temporary computed as csr per chunk inside its phase, freed there
    ("y[j] = A[i,j]*x[i]; Z[i,j] = A[i,j]*y[j]; w[i] = Z[i,j]*x[j]", {"A": "csr", "Z": "dcsr"}, None),
])
def test_sparse_tensors_inside_a_phase_run_in_the_team_call(text, formats, returned, team_calls):
    k = _compile(text, formats)
    assert "one native call on a thread team" in k.loops, k.loops
    n = 260
    ops = {"A": sp.random(n, n, density=0.05, format="csr", random_state=7),
           "D": sp.random(n, n, density=0.05, format="csr", random_state=8),
           "x": np.random.default_rng(9).standard_normal(n)}
    ops = {name: ops[name] for name in k.inputs}
    with spcomp_threads(1):
        one = k(**ops)
    with spcomp_threads(2, min_work=0):
        two = k(**ops)
        assert k.last_launches == 1 and team_calls == [1]
        again = k(**ops)
    a, x = ops["A"].toarray(), ops["x"]
    if "D" in ops:
        want = ops["D"].toarray() * (a @ x)[:, None]
    else:
        want = a * (a.T @ x)[None, :]
        want = want @ x if returned is None else want
    got = np.asarray(spcomp.testing.check.densify(two))
    assert np.allclose(got, want)
    assert np.allclose(got, np.asarray(spcomp.testing.check.densify(one)))
    assert np.array_equal(got, np.asarray(spcomp.testing.check.densify(again)))
    if returned is not None:
        assert two.format.spec() == returned, two.format
        if "D" in ops:  # no sum over rows: bit for bit, entries in the same order
            assert all(np.array_equal(p, q) for l1, l2 in zip(one.levels, two.levels) for p, q in
                       zip(l1.values(), l2.values())) and np.array_equal(one.vals, two.vals)


CROSSING = "Z[i,j] = A[i,j]*x[j]; Y[i,j] = D[i,j]*x[i]; u[i] = Z[i,j]*x[j] + Y[i,j]*x[j]; V[i,j] = Z[i,j]*u[i]"


def _crossing_operands(n: int):
    return {"A": sp.random(n, n, density=0.05, format="csr", random_state=11),
            "D": sp.random(n, n, density=0.05, format="csr", random_state=12),
            "x": np.random.default_rng(13).standard_normal(n)}


def _crossing_expected(ops):
    a, d, x = ops["A"].toarray(), ops["D"].toarray(), ops["x"]
    z = a * x[None, :]
    return z * (z @ x + (d * x[:, None]) @ x)[:, None]


def test_a_csr_tensor_appended_per_chunk_is_stitched_by_the_team_for_a_later_phase(team_calls):
    """``Z`` is appended per chunk in phase 1, read by phase 3: the driver stitches it
    between them (row ends shifted, the first chunk's arrays grown, the others copied
    in), on one thread of the team; bit for bit the one-thread function's result."""
    k = _compile(CROSSING, {"A": "csr", "D": "dcsr", "Z": "csr", "Y": "csr", "V": "csr"})
    assert "one native call on a thread team, in phases, statements 1 | 2 | 3, 4" in k.loops, k.loops
    ops = _crossing_operands(250)
    with spcomp_threads(1):
        one = k(**ops)
    with spcomp_threads(3, min_work=0):
        two = k(**ops)
        assert k.last_launches == 1 and team_calls == [1]
    assert np.allclose(np.asarray(spcomp.testing.check.densify(two)), _crossing_expected(ops))
    assert all(np.array_equal(p, q) for l1, l2 in zip(one.levels, two.levels) for p, q in zip(l1.values(), l2.values()))
    assert np.array_equal(one.vals, two.vals)


def test_a_stitch_past_32_bits_runs_the_team_call_again_64_bit(monkeypatch, tmp_path):
    from spcomp.lower import record
    monkeypatch.setattr(record, "INDEX32_LIMIT", 300)
    monkeypatch.setenv("SPCOMP_CACHE_DIR", str(tmp_path / "cache"))
    spcomp.clear_cache()
    try:
        # only Z outgrows the limit, and only when its two chunks are joined (by the driver)
        k = _compile(CROSSING.rsplit(";", 1)[0], {"A": "csr", "D": "dcsr", "Z": "csr", "Y": "csr"})
        ops = {"A": sp.random(120, 120, density=0.03, format="csr", random_state=1),
               "D": sp.random(120, 120, density=0.002, format="csr", random_state=2), "x": np.ones(120)}
        assert 300 < ops["A"].nnz < 500
        with spcomp_threads(2, min_work=0):
            got = k(**ops)
            assert k.last_launches == 1
        (_kind, seg, run), = k.segments
        assert set(k._team(run, seg)[1].drivers) == {32, 64}
        a, d = ops["A"].toarray(), ops["D"].toarray()
        assert np.allclose(got, a.sum(axis=1) + d.sum(axis=1))
    finally:
        spcomp.clear_cache()


def test_an_interrupted_phase_stops_the_team_call_and_the_next_call_runs_whole(team_calls):
    """Ctrl-C's flag set: the first phase returns its status, no later phase starts, the
    call raises KeyboardInterrupt with every array the phases grew freed; the next
    call (flag clear) runs as before."""
    from spcomp.runtime import flags
    k = _compile(CROSSING, {"A": "csr", "D": "dcsr", "Z": "csr", "Y": "csr", "V": "csr"})
    ops = _crossing_operands(150)
    with spcomp_threads(2, min_work=0):
        flags.interrupt.value = 1
        try:
            with pytest.raises(KeyboardInterrupt):
                k(**ops)
        finally:
            flags.interrupt.value = 0
        got = k(**ops)
        assert k.last_launches == 1 and team_calls == [1, 1]
    assert np.allclose(np.asarray(spcomp.testing.check.densify(got)), _crossing_expected(ops))
