"""Programs: several statements in one kernel, temporaries, outputs, explicit sums, scalars.

Random programs of 1 to 4 statements (temporaries of random formats) are checked
against the statement-by-statement float64 reference (spcomp.testing.programs);
examples pin the fused single function, the dict of outputs and the errors.
"""
from __future__ import annotations

import warnings

import numpy as np
import pytest
import scipy.sparse as sp
from hypothesis import given, settings
from hypothesis import strategies as st

import spcomp
from spcomp.errors import NotationError, OperandError, TranspositionWarning, UnsupportedError
from spcomp.frontend.program import split_statements
from spcomp.testing.programs import close, program_operands, programs, reference_program

from conftest import examples


def _run(case, ops, backend="cpu"):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", TranspositionWarning)
        k = spcomp.compile(case.text, formats=case.formats, outputs=list(case.outputs), backend=backend)
    got = k(**{n: v[1] for n, v in ops.items()})
    if isinstance(k, spcomp.ProgramKernel):  # what k.loops claims is what runs
        assert k.loops.count("one native function") + k.loops.count("a kernel of its own") == k.launches
        assert k.last_launches >= k.launches
    want = reference_program(k.program, {n: v[0] for n, v in ops.items()})
    if len(case.outputs) == 1:
        got = {case.outputs[0]: got}
    assert set(got) == set(case.outputs)
    for name in case.outputs:
        assert close(got[name], want[name]), (str(case), name, got[name], want[name])
    return k


@settings(max_examples=examples(40), deadline=None)
@given(st.data())
def test_random_programs_match_numpy(data):
    case = data.draw(programs(max_statements=4))
    ops = data.draw(program_operands(case))
    try:
        _run(case, ops)
    except UnsupportedError as e:
        assert str(e)


@settings(max_examples=examples(6), deadline=None)
@given(st.data())
def test_random_programs_cuda_sim(data):
    case = data.draw(programs(max_statements=3, sparse_temporaries=False))
    ops = data.draw(program_operands(case))
    try:
        _run(case, ops, backend="cuda-sim")
    except UnsupportedError as e:
        assert str(e)


def test_dense_statements_fuse_into_one_function():
    A = sp.random(30, 20, density=0.2, format="csr", random_state=1)
    B = sp.random(20, 10, density=0.2, format="csr", random_state=2)
    c = np.arange(10.0)
    k = spcomp.compile("t[j] = B[j,k]*c[k]\ny[i] = A[i,j]*t[j]", formats={"A": "csr", "B": "csr"})
    assert k.launches == 1 and k.outputs == ["y"] and k.temporaries == ["t"]
    assert k.ir.count("int32_t kernel(") == 1  # one native function
    assert "statement 1" in k.ir and "statement 2" in k.ir
    assert np.allclose(k(A=A, B=B, c=c), A @ (B @ c))


def test_sparse_temporary_runs_inside_one_function():
    A = sp.random(12, 9, density=0.3, format="csr", random_state=3)
    B = sp.random(9, 7, density=0.3, format="csr", random_state=4)
    c = np.arange(7.0)
    k = spcomp.compile("T[i,k] = A[i,j]*B[j,k]; y[i] = T[i,k]*c[k]",
                       formats={"A": "csr", "B": "csr", "T": "csr"})
    assert k.launches == 1 and "a kernel of its own" not in k.loops
    assert "T: sparse, assembled inside the function and freed there" in k.loops
    assert k.ir.count("int32_t kernel(") == 1
    assert "free(freed" in k.ir                    # the temporary's grown arrays freed natively
    for _ in range(3):
        assert np.allclose(k(A=A, B=B, c=c), (A @ B) @ c)


def test_sparse_output_and_kept_temporary_come_back_as_tensors():
    A = sp.random(12, 9, density=0.3, format="csr", random_state=3)
    B = sp.random(9, 7, density=0.3, format="csr", random_state=4)
    D = sp.random(12, 7, density=0.3, format="csr", random_state=5)
    fmts = {"A": "csr", "B": "csr", "T": "csr", "C": "csr", "D": "csr"}
    k = spcomp.compile("T[i,k] = A[i,j]*B[j,k]; C[i,k] = T[i,k] + D[i,k]", formats=fmts, outputs=["T", "C"])
    assert k.launches == 1 and "T: sparse, assembled inside the function, handed back" in k.loops
    out = k(A=A, B=B, D=D)
    assert np.allclose(out["T"].to_numpy(), (A @ B).toarray())
    assert np.allclose(out["C"].to_numpy(), (A @ B + D).toarray())


@pytest.mark.parametrize("t_format, launches", [("csr", 1), ("dcsr", 1), ("coo", 1), ("csc", 1)])
def test_sparse_temporary_read_transposed(t_format, launches):
    """A 2-d sparse temporary read through a transposed copy is transposed inside the
    fused function (test_programs_transposed.py, test_programs_join.py; a 3-d one read
    in another mode order keeps a kernel of its own)."""
    A = sp.random(12, 9, density=0.3, format="csr", random_state=3)
    B = sp.random(9, 7, density=0.3, format="csr", random_state=4)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", TranspositionWarning)
        k = spcomp.compile("T[i,k] = A[i,j]*B[j,k]; C[k,i] = T[i,k] * 2",
                           formats={"A": "csr", "B": "csr", "T": t_format, "C": "csr"})
    assert k.launches == launches and ("a kernel of its own" in k.loops) == (launches == 2)
    assert np.allclose(k(A=A, B=B).to_numpy(), 2 * (A @ B).toarray().T)


def test_several_outputs_come_back_as_a_dict():
    x = np.array([1.0, -2.0, 3.0])
    k = spcomp.compile("n = sum(i, abs(x[i])); y[i] = x[i] / n; z[i] = y[i] * 2", outputs=["n", "z"])
    out = k(x=x)
    assert set(out) == {"n", "z"} and out["n"] == 6.0
    assert np.allclose(out["z"], 2 * x / 6)
    assert k.temporaries == ["y"]


def test_default_outputs_are_the_names_no_later_statement_reads():
    k = spcomp.compile("a[i] = x[i] * 2; b[i] = a[i] + 1; c[i] = x[i] - 1")
    assert k.outputs == ["b", "c"] and k.temporaries == ["a"]


def test_accumulating_program_output_and_scalar():
    x = np.array([1.0, 2.0])
    k = spcomp.compile("s += x[i]*x[i]; z = s * 2", outputs=["s", "z"])
    assert k(x=x, s=1.0) == {"s": 6.0, "z": 12.0}
    y = np.ones(2)
    k2 = spcomp.compile("t[i] = x[i] * 3\ny[i] += t[i]")
    assert k2(x=x, y=y) is y and np.allclose(y, [4.0, 7.0])


def test_order0_accumulate_takes_a_scalar():
    k = spcomp.compile("s += a[i] * b[i]")
    a = np.array([1.0, 2.0])
    for start in (3, 3.0, np.float64(3.0), np.float32(3.0)):
        got = k(s=start, a=a, b=a)
        assert isinstance(got, float) and got == 8.0


def test_explicit_sum_matches_implicit():
    A = np.arange(12.0).reshape(3, 4)
    x = np.arange(4.0)
    k = spcomp.compile("y[i] = sum(j, A[i,j] * x[j]) + 1")
    assert np.allclose(k(A=A, x=x), A @ x + 1)
    k = spcomp.compile("n = sum(i, abs(x[i]))")
    assert k(x=-x) == x.sum()


@pytest.mark.parametrize("text, words", [
    ("y[i] = relu(sum(j, A[i,j]*x[j])) + c[j]", "also used outside"),
    ("y[i] = sum(i, x[i])", "output index"),
    ("n = max(i, max(i, x[i]))", "reduced twice"),
    ("t[i] = x[i]; t[i] = x[i] * 2", "written once"),
    ("y[i] = t[i] * 2; t[i] = x[i]", "before the statement"),
    ("t[i] = x[i]; y[i] = t[i,j]", "one order"),
])
def test_program_and_reduction_errors(text, words):
    with pytest.raises((NotationError, UnsupportedError)) as e:
        spcomp.compile(text)
    assert words in str(e.value)


def test_accumulating_into_a_temporary_is_refused():
    with pytest.raises(NotationError, match="temporary"):
        spcomp.compile("t[i] += x[i]; y[i] = t[i]")


def test_program_operand_names_checked():
    k = spcomp.compile("t[i] = x[i] * 2; y[i] = t[i] + 1")
    with pytest.raises(OperandError, match="missing"):
        k()
    with pytest.raises(OperandError, match="unexpected"):
        k(x=np.ones(2), t=np.ones(2))


def test_split_statements_keeps_continued_lines():
    assert split_statements("y[i] = A[i,j]*\n  x[j]") == ["y[i] = A[i,j]*\n  x[j]"]
    assert split_statements("t[i] = x[i]\ny[i] = t[i]; z = y[i]") == ["t[i] = x[i]", "y[i] = t[i]", "z = y[i]"]
    assert split_statements("s += a[i]\n\n") == ["s += a[i]"]


def test_epilogue_runs_inside_the_reduction_loop_and_keeps_hoisting():
    rng = np.random.default_rng(0)
    H = sp.random(16, 32, density=0.2, format="csr", random_state=5)
    X, Wu, Wd, b = rng.standard_normal((16, 8)), rng.standard_normal((32, 8)), rng.standard_normal((32, 8)), \
        rng.standard_normal(8)
    k = spcomp.compile("P[t,d] = H[t,n]*X[t,k]*Wu[n,k]*Wd[n,d]\nO[t,d] = relu(P[t,d] + b[d])",
                       formats={"H": "csr"})
    assert "runs inside statement 1's outer loop" in k.loops
    assert k.ir.count("for (int64_t t") == 1          # one loop over t for both statements
    assert "tk = sum(k, X[t,k] * Wu[n,k])" in k.loops  # the FFN's hoisted dot product is kept
    want = np.maximum((H.toarray() * (X @ Wu.T)) @ Wd + b, 0)
    assert np.allclose(k(H=H, X=X, Wu=Wu, Wd=Wd, b=b), want)


def test_loops_not_shared_when_a_row_is_read_elsewhere():
    x = np.arange(4.0)
    A = np.arange(16.0).reshape(4, 4)
    # y reads T at row j, not at the row its outer loop (i) is on: two loops
    k = spcomp.compile("T[i,j] = A[i,j] * 2; y[i] = T[j,i] * x[j]")
    assert "runs inside" not in k.loops
    assert np.allclose(k(A=A, x=x), (2 * A).T @ x)
