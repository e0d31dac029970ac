"""A program's temporaries that ``formats=`` does not name get a format from their
writer's zero structure (``spcomp/lower/temporary_formats.py``, issue 24).

The rule on its own (a table of statements x operand formats -> chosen format),
then whole programs: random ones whose temporaries the compiler picks, checked
against the statement-by-statement float64 reference; the chosen format shown in
``k.loops`` and ``k.ir``; ``formats={"t": "dense"}`` keeping today's dense
temporary; and a product whose dense temporary would need n² doubles running
in memory bound by its entries.
"""
from __future__ import annotations

import warnings

import numpy as np
import pytest
import scipy.sparse as sp
from hypothesis import given, settings
from hypothesis import strategies as st

import spcomp
from spcomp.errors import TranspositionWarning, UnsupportedError
from spcomp.frontend.program import check_program, split_statements
from spcomp.lower.temporary_formats import choose_temporary_formats, sparse_bound
from spcomp.testing.programs import ProgramCase, close, program_operands, programs, reference_program

from conftest import examples

CHAIN = "t[i,k] = A[i,j]*B[j,k]; y[i] = t[i,k]*x[k]"


def chosen(text, formats):
    """temporary -> (format spec, operands) as the rule picks them."""
    p = check_program(split_statements(text), formats)
    return {n: (c.format.spec(), c.operands)
            for n, c in choose_temporary_formats(p.statements, p.temporaries, formats).items()}


@pytest.mark.parametrize("text, formats, want", [
    # products: sparse where a sparse operand stores the index compressed
    (CHAIN, {"A": "csr", "B": "csr"}, {"t": ("dc", ("B",))}),
    (CHAIN, {"A": "dcsr", "B": "csr"}, {"t": ("cc", ("A", "B"))}),
    (CHAIN, {"A": "dcsr", "B": "dcsr"}, {"t": ("cc", ("A", "B"))}),
    # the sum over j unites all of B's rows when A is dense in j: dense
    (CHAIN, {"B": "csr"}, {}),
    (CHAIN, {"A": "csr"}, {}),
    ("P[t,d] = H[t,n]*W[n,d]; O[t,d] = relu(P[t,d] + b[d])", {"W": "csr"}, {}),
    # element-wise: products intersect, sums unite
    ("t[i,j] = A[i,j]*D[i,j]; y[i] = t[i,j]", {"A": "csr"}, {"t": ("dc", ("A",))}),
    ("t[i,j] = A[i,j]+B[i,j]; y[i] = t[i,j]*x[j]", {"A": "csr", "B": "csr"}, {"t": ("dc", ("A", "B"))}),
    ("t[i,j] = A[i,j]+B[i,j]; y[i] = t[i,j]*x[j]", {"A": "csr", "B": "dcsr"}, {"t": ("dc", ("A", "B"))}),
    ("t[i,j] = A[i,j]+D[i,j]; y[i] = t[i,j]*x[j]", {"A": "csr"}, {}),
    ("t[i,j] = A[i,j]-B[i,j]; y[i] = t[i,j]*x[j]", {"A": "dcsr", "B": "dcsr"}, {"t": ("cc", ("A", "B"))}),
    # functions: f(0) = 0 keeps the structure, f(0) != 0 makes it dense
    ("t[i,j] = relu(A[i,j]); y[i] = t[i,j]*x[j]", {"A": "csr"}, {"t": ("dc", ("A",))}),
    ("t[i,j] = exp(A[i,j]); y[i] = t[i,j]*x[j]", {"A": "csr"}, {}),
    ("t[i,j] = exp(A[i,j])*B[i,j]; y[i] = t[i,j]*x[j]", {"A": "csr", "B": "csr"}, {"t": ("dc", ("B",))}),
    # a reader that applies f(0) != 0 to the temporary visits all of it: dense
    ("t[i,j] = A[i,j]*B[i,j]; y[i,j] = exp(t[i,j])", {"A": "csr", "B": "csr"}, {}),
    # the writer's loop order gives the mode order (csc in, csc temporary)
    ("t[i,j] = A[i,j]*x[j]; y[i] = t[i,j]*x[j]", {"A": "csc"}, {"t": ("dc:1,0", ("A",))}),
    # vectors: a dcsr's rows bound i, a csr's do not
    ("t[i] = A[i,j]*x[j]; y[i] = t[i]*2", {"A": "dcsr"}, {"t": ("c", ("A",))}),
    ("t[i] = A[i,j]*x[j]; y[i] = t[i]*2", {"A": "csr"}, {}),
    # 3-tensors: coo and csf give a csf temporary, a dense index stays dense
    ("t[i,j,k] = A[i,j,k]*2; y[i] = t[i,j,k]", {"A": "coo"}, {"t": ("ccc", ("A",))}),
    ("t[i,j,k] = A[i,j,k]*2; y[i] = t[i,j,k]", {"A": "csf"}, {"t": ("ccc", ("A",))}),
    ("t[i,j,k] = A[i,j,k]*2; y[i] = t[i,j,k]", {"A": "dcc"}, {"t": ("dcc", ("A",))}),
    ("t[i,j,k] = A[i,j,k]*x[k]; y[i] = t[i,j,k]", {"A": "ddc"}, {"t": ("ddc", ("A",))}),
    # dense operands only, a broadcast index, a scalar: dense
    ("t[i,k] = D[i,j]*E[j,k]; y[i] = t[i,k]*x[k]", {}, {}),
    ("t[i,j] = x[i]*A[i,k]; y[i] = t[i,j]", {"A": "csr"}, {}),
    ("s = A[i,j]*B[i,j]; y[i] = x[i]*s", {"A": "csr", "B": "csr"}, {}),
    # chains: a chosen temporary bounds the next one
    ("t[i,k] = A[i,j]*B[j,k]; u[i,l] = t[i,k]*C[k,l]; y[i] = u[i,l]*x[l]", {"A": "csr", "B": "csr", "C": "csr"},
     {"t": ("dc", ("B",)), "u": ("dc", ("C",))}),
    # given formats are kept: named temporaries are not chosen
    (CHAIN, {"A": "csr", "B": "csr", "t": "dense"}, {}),
])
def test_the_rule(text, formats, want):
    assert chosen(text, formats) == want


def test_sparse_bound_per_dimension():
    p = check_program(split_statements("t[i,k] = A[i,j]*B[j,k]; y[i] = t[i,k]"), {"A": "dcsr", "B": "csr"})
    assert sparse_bound(p.statements[0]) == [("A",), ("B",)]


def test_outputs_and_accumulated_outputs_stay_dense():
    p = check_program(split_statements("t[i,j] = A[i,j]*B[i,j]; y[i,j] = t[i,j]*2"), {"A": "csr", "B": "csr"},
                      outputs=["t", "y"])
    assert choose_temporary_formats(p.statements, p.temporaries) == {}


def _ops(n, density, seed=0):
    """csr A and B of about ``density`` (drawn directly: sp.random is slow at n²=4e8) and x."""
    rng = np.random.default_rng(seed)
    m = int(n * n * density)

    def matrix():
        return sp.csr_matrix((rng.standard_normal(m), (rng.integers(0, n, m), rng.integers(0, n, m))), shape=(n, n))
    return {"A": matrix(), "B": matrix(), "x": rng.standard_normal(n)}


def test_the_chain_runs_with_a_csr_temporary_and_says_so():
    k = spcomp.compile(CHAIN, formats={"A": "csr", "B": "csr"})
    assert str(k.program.tensors["t"].format) == "csr"
    ops = _ops(60, 0.05)  # sparse enough to keep t sparse (k.loops describes the last call)
    assert np.allclose(k(**ops), ops["A"] @ (ops["B"] @ ops["x"]))
    assert "# returns y; temporaries t (csr, chosen from B)" in k.loops
    assert k.ir.startswith("// temporaries t (csr, chosen from B)")
    assert "# t: sparse, assembled inside the function" in k.loops and k.launches == 1


def test_formats_dense_keeps_the_dense_temporary():
    k = spcomp.compile(CHAIN, formats={"A": "csr", "B": "csr", "t": "dense"})
    assert k.program.tensors["t"].format.is_dense and k.program.chosen == ()
    assert "# returns y; temporaries t (dense)" in k.loops and "chosen" not in k.ir
    ops = _ops(40, 0.1)
    assert np.allclose(k(**ops), ops["A"] @ (ops["B"] @ ops["x"]))


def test_a_saved_program_keeps_its_chosen_format(tmp_path):
    k = spcomp.compile(CHAIN, formats={"A": "csr", "B": "csr"})
    k.save(tmp_path / "p.spk")
    loaded = spcomp.load(tmp_path / "p.spk")
    ops = _ops(30, 0.1, seed=4)
    assert np.allclose(loaded(**ops), ops["A"] @ (ops["B"] @ ops["x"]))
    assert np.allclose(k(**ops), ops["A"] @ (ops["B"] @ ops["x"]))
    assert loaded.loops == k.loops and "(csr, chosen from B)" in loaded.ir


def test_a_product_too_big_to_store_densely_runs_in_its_entries():
    """n = 20000 at 0.01%: a dense t would be 3.2 GB (its reader walks it by columns,
    so no row workspace saves it); the csr one holds about 800 entries."""
    k = spcomp.compile("t[i,k] = A[i,j]*B[j,k]; y[k] = t[i,k]*x[i]", formats={"A": "csr", "B": "csr"})
    assert str(k.program.tensors["t"].format) == "csr"
    ops = _ops(20000, 1e-4, seed=2)
    assert np.allclose(k(**ops), (ops["A"] @ ops["B"]).T @ ops["x"])


def test_a_program_that_does_not_compile_with_the_choice_keeps_dense_temporaries(monkeypatch):
    """Where the picked program raises an spcomp error, the dense one is compiled."""
    from spcomp import program as program_module
    real = program_module.ProgramKernel.__init__

    def refuse_sparse(self, expression, program, *a, **kw):
        if program.chosen:
            raise UnsupportedError("no sparse temporaries here")
        real(self, expression, program, *a, **kw)
    monkeypatch.setattr(program_module.ProgramKernel, "__init__", refuse_sparse)
    spcomp.clear_cache()
    k = spcomp.compile(CHAIN, formats={"A": "csr", "B": "csr"})
    assert k.program.tensors["t"].format.is_dense and "t (dense)" in k.loops
    ops = _ops(20, 0.2)
    assert np.allclose(k(**ops), ops["A"] @ (ops["B"] @ ops["x"]))


FIRST = ("t[i,k] = A[i,j]*B[j,k]", "t[i,k] = A[i,k]*B[i,k]", "t[i,k] = A[i,k]+B[i,k]",
         "t[i,k] = relu(A[i,k])*x[k]", "t[i,k] = -(A[i,k]*x[i])", "t[i,k] = exp(A[i,k])*B[i,k]")
MIDDLE = ("u[i,k] = t[i,k]*C[i,k]", "u[i,k] = t[i,k]+C[i,k]", "u[i,k] = t[i,j]*C[j,k]", "u[i,k] = abs(t[i,k])")
LAST = ("y[i] = {p}[i,k]*x[k]", "y[k] = {p}[i,k]*x[i]", "Y[i,k] = {p}[i,k]*2", "Y[i,k] = relu({p}[i,k])")


@st.composite
def chains(draw):
    """A :class:`ProgramCase` of 2 or 3 statements over sparse matrices (csr, dcsr,
    csc, coo) whose temporaries ``t`` (and ``u``) have no format given."""
    texts = [draw(st.sampled_from(FIRST))]
    if draw(st.booleans()):
        texts.append(draw(st.sampled_from(MIDDLE)))
    texts.append(draw(st.sampled_from(LAST)).format(p="u" if len(texts) == 2 else "t"))
    text = "; ".join(texts)
    inputs = {n: idx for n, idx in {"A": ("i", "j"), "B": ("j", "k"), "C": ("j", "k"), "x": ("k",)}.items()
              if f"{n}[" in text}
    formats = {n: draw(st.sampled_from(["csr", "dcsr", "csc", "coo"])) for n in inputs if n != "x"}
    n = draw(st.integers(1, 7))
    out = texts[-1].split("[")[0]
    return ProgramCase(text, formats, inputs, dict.fromkeys("ijkl", n), (out,))


def _check_chosen_run(case, ops):
    """Compile ``case``: its chosen formats are the rule's (no fallback), shown in
    k.ir, and every output matches the float64 reference."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", TranspositionWarning)
        k = spcomp.compile(case.text, formats=case.formats, outputs=list(case.outputs))
    if not isinstance(k, spcomp.ProgramKernel):
        return
    p = check_program(split_statements(case.text), case.formats, outputs=list(case.outputs))
    rule = choose_temporary_formats(p.statements, p.temporaries, case.formats)
    assert dict(k.program.chosen) == {n: c.operands for n, c in rule.items()}, str(case)
    for name, c in rule.items():
        assert k.program.tensors[name].format == c.format and not c.format.is_dense
        # (k.ir: the program's own; k.loops describes what the last call ran, which
        # may be the dense variant for operands that fill a temporary in)
        assert f"{name} ({c.format}, chosen from" in k.ir.splitlines()[0]
    if rule:  # no operand read through a transposed copy that the dense temporaries did not need
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", TranspositionWarning)
            dense = spcomp.compile(case.text, formats={**case.formats, **dict.fromkeys(rule, "dense")},
                                   outputs=list(case.outputs))
        assert len(k.warnings) <= len(dense.warnings), (str(case), k.warnings, dense.warnings)
    got = k(**{n: v[1] for n, v in ops.items()})
    got = got if len(case.outputs) > 1 else {case.outputs[0]: got}
    want = reference_program(k.program, {n: v[0] for n, v in ops.items()})
    for name in case.outputs:
        assert close(got[name], want[name]), (str(case), name, got[name], want[name])


@settings(max_examples=examples(25), deadline=None)
@given(st.data())
def test_chains_with_chosen_temporaries_match_numpy(data):
    case = data.draw(chains())
    _check_chosen_run(case, data.draw(program_operands(case)))


@settings(max_examples=examples(15), deadline=None)
@given(st.data())
def test_random_programs_with_chosen_temporaries_match_numpy(data):
    """Random programs over sparse inputs (spcomp.testing.programs), no temporary's
    format given."""
    case = data.draw(programs(max_statements=3, sparse_temporaries=False, input_kinds="cq"))
    ops = data.draw(program_operands(case))
    try:
        _check_chosen_run(case, ops)
    except UnsupportedError as e:
        assert str(e)
