"""A program's repeated call (runtime/program_repeat.py): the last call's argument
list replayed while the same operands come back.

Each test makes the general path unavailable after the first call where it
claims the repeat ran (so a repeat that silently fell back would fail), and
checks every result against NumPy: new arrays laid out alike swap their
pointers in, arrays changed in place are read afresh, anything else (another
shape, a changed SciPy matrix, another thread count, a read-only ``+=`` array,
a wrong operand name) takes the general path and its checks.
"""
from __future__ import annotations

import contextlib
import warnings

import numpy as np
import pytest
import scipy.sparse as sp
from hypothesis import given, settings
from hypothesis import strategies as st

import spcomp
from spcomp.errors import OperandError, TranspositionWarning, UnsupportedError
from spcomp.runtime import threads
from spcomp.runtime.program import FusedRun
from spcomp.testing.programs import close, program_operands, programs, reference_program

from conftest import examples


def forbid_general_path(mp):
    """Makes FusedRun's general path raise (``mp``: a MonkeyPatch): what runs after must repeat."""
    def refuse(self, env, bits):
        raise AssertionError("the general path ran where the repeat should have")
    mp.setattr(FusedRun, "_run", refuse)


@pytest.fixture
def no_general_path(monkeypatch):
    """Calling this makes FusedRun's general path raise: what runs after it must repeat."""
    return lambda: forbid_general_path(monkeypatch)


def _mv_program():
    return spcomp.compile("t[i] = A[i,j]*x[j]; y[i] = t[i] + b[i]", formats={"A": "csr"})


def _operands(seed=0, n=40):
    rng = np.random.default_rng(seed)
    return (sp.random(n, n, density=0.2, format="csr", random_state=seed),
            rng.standard_normal(n), rng.standard_normal(n))


def test_same_operands_repeat_and_return_new_arrays(no_general_path):
    k = _mv_program()
    A, x, b = _operands()
    first = k(A=A, x=x, b=b)
    run = k.segments[0][1]
    assert k.launches == 1 and run.repeat is not None
    assert run.repeat.names == {"A", "x", "b"}
    no_general_path()
    second = k(A=A, x=x, b=b)
    assert second is not first  # a fresh output each call: the caller may keep the last one
    np.testing.assert_allclose(second, A @ x + b)
    np.testing.assert_allclose(first, A @ x + b)
    x[:] = 2.0  # changed in place: read afresh
    np.testing.assert_allclose(k(A=A, x=x, b=b), A @ x + b)
    assert k.last_launches == 1


def test_new_arrays_laid_out_alike_swap_pointers(no_general_path):
    k = _mv_program()
    A, x, b = _operands()
    k(A=A, x=x, b=b)
    no_general_path()
    for seed in range(1, 4):
        _, x2, b2 = _operands(seed)
        np.testing.assert_allclose(k(A=A, x=x2, b=b2), A @ x2 + b2)


def test_other_layouts_and_changed_matrices_take_the_general_path():
    k = _mv_program()
    A, x, b = _operands()
    k(A=A, x=x, b=b)
    A2, x2, b2 = _operands(5, n=23)  # another shape
    np.testing.assert_allclose(k(A=A2, x=x2, b=b2), A2 @ x2 + b2)
    np.testing.assert_allclose(k(A=A, x=x, b=b), A @ x + b)
    A.data = A.data * 3.0  # a new data array in the same matrix object
    np.testing.assert_allclose(k(A=A, x=x, b=b), A @ x + b)
    xs = np.ascontiguousarray(np.stack([x, x], axis=1))[:, 0]  # strided: converted, never repeated
    np.testing.assert_allclose(k(A=A, x=xs, b=b), A @ x + b)
    np.testing.assert_allclose(k(A=A, x=x.astype(np.float32), b=b), A @ x + b, rtol=1e-6)


def test_wrong_names_still_raise_after_a_repeat():
    k = _mv_program()
    A, x, b = _operands()
    k(A=A, x=x, b=b)
    with pytest.raises(OperandError, match="missing operand"):
        k(A=A, x=x)
    with pytest.raises(OperandError, match="unexpected operand"):
        k(A=A, x=x, c=b)
    with pytest.raises(OperandError, match="unexpected operand"):
        k(A=A, x=x, b=b, t=b)


def test_thread_count_change_misses():
    k = _mv_program()
    A, x, b = _operands()
    k(A=A, x=x, b=b)
    with threads.thread_limit(1):
        np.testing.assert_allclose(k(A=A, x=x, b=b), A @ x + b)
    np.testing.assert_allclose(k(A=A, x=x, b=b), A @ x + b)


def test_accumulated_output_is_updated_in_place(no_general_path):
    k = spcomp.compile("t[i] = A[i,j]*x[j]; y[i] += t[i] * 2", formats={"A": "csr"})
    A, x, _ = _operands()
    y = np.ones(40)
    k(y=y, A=A, x=x)
    run = k.segments[0][1]
    assert k.launches == 1 and run.repeat is not None
    no_general_path()
    got = k(y=y, A=A, x=x)
    assert got is y
    np.testing.assert_allclose(y, 1 + 4 * (A @ x))
    y2 = np.zeros(40)
    k(y=y2, A=A, x=x)
    np.testing.assert_allclose(y2, 2 * (A @ x))


def test_read_only_accumulated_output_is_refused():
    k = spcomp.compile("t[i] = A[i,j]*x[j]; y[i] += t[i] * 2", formats={"A": "csr"})
    A, x, _ = _operands()
    y = np.ones(40)
    k(y=y, A=A, x=x)
    frozen = np.ones(40)
    frozen.flags.writeable = False
    with pytest.raises(OperandError, match="writeable"):
        k(y=frozen, A=A, x=x)
    np.testing.assert_array_equal(frozen, 1.0)


def test_scalar_output_repeats(no_general_path):
    k = spcomp.compile("t[i] = A[i,j]*x[j]; s = sum(i, abs(t[i]))", formats={"A": "csr"})
    A, x, _ = _operands()
    want = np.abs(A @ x).sum()
    assert k(A=A, x=x) == pytest.approx(want)
    no_general_path()
    got = k(A=A, x=x)
    assert isinstance(got, float) and got == pytest.approx(want)


def test_several_outputs_repeat(no_general_path):
    k = spcomp.compile("t[i] = A[i,j]*x[j]; y[i] = t[i] + b[i]", formats={"A": "csr"}, outputs=["t", "y"])
    A, x, b = _operands()
    k(A=A, x=x, b=b)
    no_general_path()
    got = k(A=A, x=x, b=b)
    np.testing.assert_allclose(got["t"], A @ x)
    np.testing.assert_allclose(got["y"], A @ x + b)


def test_row_split_run_repeats(monkeypatch, no_general_path):
    """A run whose one loop over rows is split over threads repeats the split."""
    monkeypatch.setattr(threads, "MIN_PARALLEL_WORK", 0)
    k = _mv_program()
    A, x, b = _operands(n=400)
    with threads.thread_limit(2):
        np.testing.assert_allclose(k(A=A, x=x, b=b), A @ x + b)
        assert k.segments[0][1].repeat.inputs.keep is not None  # the native driver's bounds: split
        no_general_path()
        for seed in range(3):
            _, x2, b2 = _operands(seed, n=400)
            np.testing.assert_allclose(k(A=A, x=x2, b=b2), A @ x2 + b2)


def call_with_new_and_changed_operands(data, around=contextlib.nullcontext):
    """A random program (at most 3 statements) called four times within ``around()``:
    the first operands, again, new ones of the same shapes, then the first again
    after one of its arrays changed in place; each result checked."""
    case = data.draw(programs(max_statements=3))
    first = data.draw(program_operands(case))
    second = data.draw(program_operands(case))
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", TranspositionWarning)
            k = spcomp.compile(case.text, formats=case.formats, outputs=list(case.outputs))
    except UnsupportedError as e:
        assert str(e)
        return

    def check(ops):
        got = k(**{n: v[1] for n, v in ops.items()})
        want = reference_program(k.program, {n: v[0] for n, v in ops.items()})
        got = {case.outputs[0]: got} if len(case.outputs) == 1 else got
        for name in case.outputs:
            assert close(got[name], want[name]), (str(case), name)
    with around():
        check(first)
        check(first)
        check(second)
        dense = [n for n, (_ref, v) in first.items() if isinstance(v, np.ndarray) and v.size]
        if dense:
            name = dense[0]
            ref, v = first[name]
            v *= -1.5
            first[name] = (ref * -1.5, v)
        check(first)


@settings(max_examples=examples(25), deadline=None)
@given(st.data())
def test_random_programs_repeat_with_new_and_changed_operands(data):
    """Random programs called three times: the first operands, new ones of the same
    shapes, then the first again after one of its arrays changed in place."""
    call_with_new_and_changed_operands(data)


def _chain_operands(seed=0, n=30):
    rng = np.random.default_rng(seed)
    return (sp.random(n, n, density=0.1, format="csr", random_state=seed),
            sp.random(n, n, density=0.1, format="csr", random_state=seed + 1), rng.standard_normal(n))


def test_sparse_temporary_repeats(no_general_path):
    k = spcomp.compile("T[i,k] = A[i,j]*B[j,k]; y[i] = T[i,k]*x[k]",
                       formats={"A": "csr", "B": "csr", "T": "csr"})
    A, B, x = _chain_operands()
    np.testing.assert_allclose(k(A=A, B=B, x=x), (A @ B) @ x)
    assert k.launches == 1 and k.segments[0][1].repeat is not None
    no_general_path()
    for seed in range(3):
        x2 = np.random.default_rng(seed).standard_normal(30)
        np.testing.assert_allclose(k(A=A, B=B, x=x2), (A @ B) @ x2)


@pytest.mark.parametrize("fmt", ["csr", "dcsr", "coo"])
def test_sparse_outputs_repeat_as_new_tensors(fmt, no_general_path):
    k = spcomp.compile("T[i,k] = A[i,j]*B[j,k]; U[i,k] = T[i,k]*s[k]",
                       formats={"A": "csr", "B": "csr", "T": "csr", "U": fmt}, outputs=["T", "U"])
    A, B, s = _chain_operands(3)
    first = k(A=A, B=B, s=s)
    assert k.segments[0][1].repeat is not None
    no_general_path()
    second = k(A=A, B=B, s=s)
    assert second["U"] is not first["U"] and second["T"] is not first["T"]
    want = (A @ B).toarray()
    for got in (first, second):
        np.testing.assert_allclose(got["T"].to_numpy(), want)
        np.testing.assert_allclose(got["U"].to_numpy(), want * s)
        assert got["U"].format == k.program.tensors["U"].format  # the declared format, stand-ins converted


def test_a_repeat_past_32_bit_positions_steps_aside(monkeypatch):
    """T's entries depend on d's values (zeros dropped): the first call fits 32-bit
    positions, a later one with new values laid out alike does not. The repeat
    must hand that call to the general path, which runs it at 64 bits."""
    from spcomp.lower import record as lower_record
    monkeypatch.setattr(lower_record, "INDEX32_LIMIT", 40)
    k = spcomp.compile("T[i,k] = A[i,j]*d[j]*B[j,k]; y[i] = T[i,k]*x[k]",
                       formats={"A": "csr", "B": "csr", "T": "csr"}, drop_zeros=True)
    n = 30
    A = sp.csr_matrix((np.ones(n), np.zeros(n, dtype=np.int32), np.arange(n + 1)), shape=(n, n))  # column 0
    B = sp.csr_matrix((np.ones(n), np.arange(n), np.r_[0, np.full(n, n)]), shape=(n, n))  # row 0
    x = np.arange(1.0, n + 1)
    d = np.zeros(n)  # A·diag(d)·B empty: nothing stored
    np.testing.assert_allclose(k(A=A, d=d, B=B, x=x), A @ (d[:, None] * B.toarray()) @ x)
    run = k.segments[0][1]
    assert k.launches == 1 and run.repeat is not None and run.repeat.bits == 32
    d2 = np.ones(n)  # all n² entries: past the limit of 40
    np.testing.assert_allclose(k(A=A, d=d2, B=B, x=x), A @ (d2[:, None] * B.toarray()) @ x)
    assert run.repeat.bits == 64  # the general path ran at 64 bits and recorded that call
    np.testing.assert_allclose(k(A=A, d=d2, B=B, x=x), A @ (d2[:, None] * B.toarray()) @ x)


def test_dense_accumulate_then_sparse_repeats_at_64_bits(no_general_path):
    """A dense += before a sparse statement runs at 64 bits from the start (a rerun
    would add twice): its repeat, at 64 bits, never steps aside."""
    k = spcomp.compile("Y[i,k] += A[i,k] * 2; T[i,k] = A[i,j]*B[j,k]; z[i] = T[i,k]*x[k]",
                       formats={"A": "csr", "B": "csr", "T": "csr"}, outputs=["Y", "z"])
    A, B, x = _chain_operands(5)
    Y = np.ones((30, 30))
    k(Y=Y, A=A, B=B, x=x)
    run = k.segments[0][1]
    assert k.launches == 1 and run.repeat is not None and run.repeat.bits == 64
    no_general_path()
    got = k(Y=Y, A=A, B=B, x=x)
    np.testing.assert_allclose(Y, 1 + 4 * A.toarray())
    np.testing.assert_allclose(got["z"], (A @ B) @ x)


def test_an_accumulated_output_sharing_memory_with_an_input_is_refused():
    """y is added to in place while x is read: y = x would read half-updated values.
    Refused on the general path and on the repeat alike."""
    k = spcomp.compile("t[i] = A[i,j]*x[j]; y[i] += t[i] * 2", formats={"A": "csr"})
    A, x, _ = _operands()
    y = np.ones(40)
    k(y=y, A=A, x=x)
    k(y=y, A=A, x=x)
    assert k.segments[0][1].repeat is not None
    with pytest.raises(OperandError, match="shares memory"):
        k(y=x, A=A, x=x)
    with pytest.raises(OperandError, match="shares memory"):
        k(y=x[:40], A=A, x=x)
    fresh = spcomp.compile("t[i] = A[i,j]*x[j]; z[i] += t[i] * 3", formats={"A": "csr"})
    with pytest.raises(OperandError, match="shares memory"):
        fresh(z=x, A=A, x=x)  # the general path


@settings(max_examples=examples(20), deadline=None)
@given(st.data())
def test_random_programs_with_adds_repeat(data):
    """Random programs with += statements on the CPU, called twice on fresh copies of
    the same starting values (the second call may repeat): both match the reference
    and the caller's arrays hold the sums."""
    case = data.draw(programs(max_statements=3, accumulate=True))
    ops = data.draw(program_operands(case))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", TranspositionWarning)
        try:
            k = spcomp.compile(case.text, formats=case.formats, outputs=list(case.outputs))
        except UnsupportedError as e:
            assert str(e)
            return
    want = reference_program(k.program, {n: v[0] for n, v in ops.items()})
    for _ in range(2):
        call = {n: v[1].copy() if isinstance(v[1], np.ndarray) else v[1] for n, v in ops.items()}
        got = k(**call)
        got = got if len(case.outputs) > 1 else {case.outputs[0]: got}
        for name in case.outputs:
            assert close(got[name], want[name]), (str(case), name, got[name], want[name])
        for name in case.accumulated:
            if isinstance(call[name], np.ndarray):
                assert got[name] is call[name]
