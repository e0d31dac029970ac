"""Unit tests of loop ordering (spcomp/lower/order.py), through its public
functions only: ``choose_order``, ``access_chain``, ``build_problem`` /
``OrderProblem`` and ``transposed_format``.

Expressions come from the frontend (``to_notation``) with their sums lifted as the
lowerer does (``lift_sums``). The hypothesis properties check ``choose_order``
against an independent statement of the rules in the module docstring: every access
to a tensor with a stored level is walked in its mode order, a sparse output in its
level order (all its levels but the last before the top reductions), a nested sum's
free indices before its own; transpositions are the fewest that allow an order,
found by trying every permutation of the indices.
"""
from __future__ import annotations

import itertools
import re

import pytest
from conftest import examples
from hypothesis import given, settings
from hypothesis import strategies as st

from spcomp.errors import ScheduleError, SpcompError
from spcomp.formats import Format
from spcomp.frontend import to_notation
from spcomp.lower.normalize import lift_sums, split_sums
from spcomp.lower.order import access_chain, build_problem, choose_order, transposed_format
from spcomp.notation import (Access, IndexVar, Sum, TensorVar, accesses, children,
                             free_indices)
from spcomp.testing.strategies import expressions


def notation(text, formats=None):
    a = to_notation(text, formats=formats)
    return a.lhs, lift_sums(a.rhs)


def order_of(text, formats=None, user=None):
    lhs, rhs = notation(text, formats)
    order, transposes = choose_order(lhs, rhs, user)
    return [x.name for x in order], {repr(k): v.spec() for k, v in transposes.items()}


def acc(rhs, text):
    (a,) = [x for x in accesses(rhs) if repr(x) == text]
    return a


# ----------------------------------------------------------- access_chain

def test_access_chain_follows_the_mode_order():
    i, j, k = IndexVar("i"), IndexVar("j"), IndexVar("k")
    chain = lambda fmt, idx: [x.name for x in access_chain(Access(TensorVar("A", len(idx), Format.parse(fmt, len(idx))), idx))]
    assert chain("csr", (i, j)) == ["i", "j"]
    assert chain("csc", (i, j)) == ["j", "i"]
    assert chain("dcsr", (j, i)) == ["j", "i"]
    assert chain("csf", (i, j, k)) == ["i", "j", "k"]
    assert chain("ccc:2,0,1", (i, j, k)) == ["k", "i", "j"]


# -------------------------------------------------------- concordant orders

@pytest.mark.parametrize("text,formats,expected", [
    ("y[i] = A[i,j]*x[j]", {"A": "csr"}, ["i", "j"]),
    ("y[i] = A[i,j]*x[j]", {"A": "csc"}, ["j", "i"]),
    ("y[i] = A[i,j]*x[j]", {"A": "dcsr"}, ["i", "j"]),
    ("y[i] = A[i,j]*x[j]", {"A": "coo"}, ["i", "j"]),
    ("y[j] = A[i,j]*x[i]", {"A": "csr"}, ["i", "j"]),
    ("y[i] = A[i,j,k]*x[k]", {"A": "csf"}, ["i", "j", "k"]),
    ("y[k] = A[i,j,k]*x[i]", {"A": "ccc:2,0,1"}, ["k", "i", "j"]),
    ("y[i] = A[i,j,k]*B[k,j]", {"A": "csf", "B": "csc"}, ["i", "j", "k"]),
    ("C[i,k] = A[i,j]*B[j,k]", {"A": "csr", "B": "csr"}, ["i", "j", "k"]),
    ("C[i,k] = A[i,j]*B[j,k]", {"A": "csr", "B": "csr", "C": "csr"}, ["i", "j", "k"]),
])
def test_concordant_order_needs_no_transposition(text, formats, expected):
    assert order_of(text, formats) == (expected, {})


def test_dense_only_index_goes_innermost_when_it_is_a_dense_operands_last_dimension():
    # SpMM: j only indexes dense B and C, and is B's contiguous dimension
    assert order_of("C[i,j] = A[i,k]*B[k,j]", {"A": "csr"}) == (["i", "k", "j"], {})


def test_dense_only_index_goes_outermost_otherwise():
    # Y[t,o] = X[t,i]*W[o,i]: the token index t only indexes dense operands
    assert order_of("Y[t,o] = X[t,i]*W[o,i]", {"W": "csr"}) == (["t", "o", "i"], {})
    assert order_of("Y[t,o] = X[t,i]*W[o,i]", {"W": "csc"}) == (["t", "i", "o"], {})


def test_order_problem_fields():
    lhs, rhs = notation("Y[t,o] = X[t,i]*W[o,i]", {"W": "csr"})
    p = build_problem(lhs, rhs)
    names = lambda xs: [x.name for x in xs]
    assert names(p.indices) == ["t", "o", "i"]
    assert {x.name for x in p.dense_only} == {"t"}
    assert names(p.output_indices) == ["t", "o"]
    assert names(p.top_reductions) == ["i"]
    assert p.structural == set()  # dense output, no nested sum
    ((a, edges),) = p.input_edges.items()
    assert repr(a) == "W[o,i]" and {(x.name, y.name) for x, y in edges} == {("o", "i")}


def test_sparse_output_orders_its_levels_before_the_top_reductions():
    lhs, rhs = notation("C[i,k] = A[i,j]*B[j,k]", {"A": "csr", "B": "csr", "C": "csc"})
    p = build_problem(lhs, rhs)
    assert {(x.name, y.name) for x, y in p.structural} == {("k", "i"), ("k", "j")}
    order, transposes = choose_order(lhs, rhs)
    assert [x.name for x in order] == ["k", "i", "j"]
    assert {repr(a): f.spec() for a, f in transposes.items()} == {"B[j,k]": "dc:1,0"}


def test_nested_sum_orders_its_free_indices_first():
    lhs, rhs = notation("y[i] = relu(A[i,k]*x[k])", {"A": "csr"})
    assert {(x.name, y.name) for x, y in build_problem(lhs, rhs).structural} == {("i", "k")}
    # a CSC A would need k before i: A is transposed instead of breaking the nested sum
    assert order_of("y[i] = relu(A[i,k]*x[k])", {"A": "csc"}) == (["i", "k"], {"A[i,k]": "dc"})


# ---------------------------------------------------------- transpositions

def test_conflicting_accesses_transpose_the_first_one():
    # A[i,j] wants i before j, B[j,i] the opposite: one of them is transposed, and of
    # equally few transpositions the first combination in expression order wins
    assert order_of("C[i,j] = A[i,j]*B[j,i]", {"A": "csr", "B": "csr"}) == (["j", "i"], {"A[i,j]": "dc:1,0"})
    assert order_of("C[i,j] = B[j,i]*A[i,j]", {"A": "csr", "B": "csr"}) == (["i", "j"], {"B[j,i]": "dc:1,0"})


def test_transposition_of_the_minority():
    # two accesses want i before j, one wants j before i: only that one is transposed
    assert order_of("C[i,j] = A[i,j]*B[j,i]*D[i,j]", {"A": "csr", "B": "csr", "D": "csr"}) == \
        (["i", "j"], {"B[j,i]": "dc:1,0"})


def test_sparse_output_decides_which_operand_is_transposed():
    assert order_of("C[i,j] = A[i,j]+B[j,i]", {"A": "csr", "B": "csr", "C": "csr"}) == \
        (["i", "j"], {"B[j,i]": "dc:1,0"})
    assert order_of("C[i,j] = A[i,j]+B[j,i]", {"A": "csr", "B": "csr", "C": "csc"}) == \
        (["j", "i"], {"A[i,j]": "dc:1,0"})


def test_cycle_of_three_accesses_breaks_one():
    order, transposes = order_of("C[i,j] = A[i,j]*B[j,k]*E[k,i]", {"A": "csr", "B": "csr", "E": "csr"})
    assert len(transposes) == 1
    assert order == ["j", "k", "i"] and transposes == {"A[i,j]": "dc:1,0"}


def test_transposed_format_keeps_the_levels_and_follows_the_order():
    lhs, rhs = notation("y[i] = A[i,j,k]*x[k]", {"A": "csf"})
    A = acc(rhs, "A[i,j,k]")
    i, j, k = A.indices
    f = transposed_format(A, [i, k, j])
    assert f.levels == A.tensor.format.levels and f.order == (0, 2, 1)
    assert transposed_format(A, [k, j, i]).spec() == "ccc:2,1,0"


# ------------------------------------------------------------- user orders

def test_legal_user_order_is_kept():
    assert order_of("y[i] = A[i,j,k]*x[k]", {"A": "csf"}, ["i", "j", "k"]) == (["i", "j", "k"], {})
    assert order_of("C[i,k] = A[i,j]*B[j,k]", {"A": "csr"}, ["i", "j", "k"]) == (["i", "j", "k"], {})
    # B dense: k may go anywhere after nothing; the user puts it first
    assert order_of("C[i,k] = A[i,j]*B[j,k]", {"A": "csr"}, ["k", "i", "j"]) == (["k", "i", "j"], {})


def test_partial_user_order_is_completed_in_first_appearance_order():
    assert order_of("y[i] = A[i,j,k]*x[k]", {"A": "csf"}, ["i", "j"]) == (["i", "j", "k"], {})
    assert order_of("C[i,k] = A[i,j]*B[j,k]", {"A": "csr"}, ["i"]) == (["i", "k", "j"], {})


@pytest.mark.parametrize("text,formats,user,tensor,fmt", [
    ("y[i] = A[i,j]*x[j]", {"A": "csr"}, ["j", "i"], "A", "dc:1,0"),
    ("y[i] = A[i,j]*x[j]", {"A": "csc"}, ["i", "j"], "A", "dc"),
    ("y[i] = A[i,j,k]*x[k]", {"A": "csf"}, ["i", "k", "j"], "A", "ccc:0,2,1"),
    ("y[i] = A[i,j,k]*x[k]", {"A": "csf"}, ["k", "j", "i"], "A", "ccc:2,1,0"),
    ("C[i,j] = A[i,j]*B[j,i]", {"A": "csr", "B": "csr"}, ["i", "j"], "B", "dc:1,0"),
])
def test_illegal_user_order_is_refused_naming_the_format_that_would_work(text, formats, user, tensor, fmt):
    with pytest.raises(ScheduleError) as info:
        order_of(text, formats, user)
    msg = str(info.value)
    assert f"not concordant with {tensor}[" in msg
    assert f"would have to be stored as {fmt!r}" in msg
    # and that format does work for that order
    lhs, rhs = notation(text, {**formats, tensor: fmt})
    assert [x.name for x in choose_order(lhs, rhs, user)[0]][:len(user)] == user


def test_user_order_against_the_sparse_output_is_refused():
    with pytest.raises(ScheduleError, match=r"puts j before i, which the output format"):
        order_of("C[i,j] = A[i,j]", {"A": "csr", "C": "csr"}, ["j", "i"])


def test_user_order_against_a_nested_sum_is_refused():
    with pytest.raises(ScheduleError, match=r"puts k before i, .*nested sum"):
        order_of("y[i] = relu(A[i,k]*x[k])", {"A": "csr"}, ["k", "i"])


def test_user_order_naming_an_unknown_index_is_refused():
    with pytest.raises(ScheduleError, match=r"'q', which the expression does not use \(indices: i, j\)"):
        order_of("y[i] = A[i,j]*x[j]", {"A": "csr"}, ["q"])


# ---------------------------------------------------------------- property

def _concordant(chain, order) -> bool:
    pos = {x: n for n, x in enumerate(order)}
    p = [pos[x] for x in chain]
    return p == sorted(p)


def _nested_sums(e, top=True):
    """Chains of sums below the top chain, as (free indices, summed indices): a chain
    ``sum(j, sum(k, ...))`` is one reduction over j and k."""
    if isinstance(e, Sum):
        idx, body = split_sums(e)
        out = [] if top else [(free_indices(e), idx)]
        return out + _nested_sums(body, top=False)
    out = []
    for c in children(e):
        out += _nested_sums(c, top=False)
    return out


def _structural_ok(lhs, rhs, order) -> bool:
    pos = {x: n for n, x in enumerate(order)}
    for free, summed in _nested_sums(rhs):
        if any(pos[f] > pos[s] for f in free for s in summed):
            return False
    if not lhs.tensor.format.is_dense:
        chain = access_chain(lhs)
        if not _concordant(chain, order):
            return False
        top, _ = split_sums(rhs)
        if any(pos[o] > pos[r] for o in chain[:-1] for r in top):
            return False
    return True


def _sparse_inputs(rhs):
    """The distinct sparse accesses: ``A[l,j] * A[l,j]`` needs one transposed copy, not two."""
    return list(dict.fromkeys(a for a in accesses(rhs) if not a.tensor.format.is_dense))


def _fewest_transpositions(lhs, rhs, indices) -> int:
    """By brute force over every permutation of the indices."""
    sparse = _sparse_inputs(rhs)
    best = len(sparse)
    for perm in itertools.permutations(indices):
        if not _structural_ok(lhs, rhs, perm):
            continue
        best = min(best, sum(not _concordant(access_chain(a), perm) for a in sparse))
    return best


def _case(data):
    case = data.draw(expressions(max_operands=3, max_order=3, diagonals=False, max_indices=4))
    a = to_notation(case.text, formats=case.formats)
    return a.lhs, lift_sums(a.rhs)


def _all_indices(lhs, rhs) -> set:
    out = set(lhs.indices)
    for x in accesses(rhs):
        out |= set(x.indices)
    stack = [rhs]
    while stack:
        x = stack.pop()
        if isinstance(x, Sum):
            out.add(x.index)
        stack.extend(children(x))
    return out


@settings(max_examples=examples(100))
@given(st.data())
def test_chosen_order_respects_every_untransposed_sparse_access(data):
    lhs, rhs = _case(data)
    order, transposes = choose_order(lhs, rhs)
    indices = _all_indices(lhs, rhs)
    assert sorted(order, key=repr) == sorted(indices, key=repr) and len(order) == len(indices)
    assert _structural_ok(lhs, rhs, order), order
    for a in _sparse_inputs(rhs):
        if a in transposes:
            fmt = transposes[a]
            assert fmt.levels == a.tensor.format.levels
            moved = Access(TensorVar(a.tensor.name, a.tensor.order, fmt), a.indices)
            assert _concordant(access_chain(moved), order), (a, fmt, order)
        else:
            assert _concordant(access_chain(a), order), (a, order)
    assert all(not x.tensor.format.is_dense for x in transposes)
    assert len(transposes) == _fewest_transpositions(lhs, rhs, sorted(indices, key=repr)), \
        (lhs, rhs, order, transposes)


@settings(max_examples=examples(100))
@given(st.data())
def test_user_order_is_kept_when_legal_and_refused_with_a_working_format_otherwise(data):
    lhs, rhs = _case(data)
    indices = sorted(_all_indices(lhs, rhs), key=repr)
    user = data.draw(st.permutations(indices))
    legal_structure = _structural_ok(lhs, rhs, user)
    bad = [a for a in _sparse_inputs(rhs) if not _concordant(access_chain(a), user)]
    if legal_structure and not bad:
        assert choose_order(lhs, rhs, [x.name for x in user]) == (list(user), {})
        return
    with pytest.raises(ScheduleError) as info:
        choose_order(lhs, rhs, [x.name for x in user])
    msg = str(info.value)
    if not legal_structure:
        assert "requires the other way round" in msg
        return
    m = re.search(r"not concordant with (\S+): (\w+) is stored as .* would have to be stored as '([^']+)'", msg)
    assert m, msg
    named = next((a for a in bad if repr(a) == m.group(1)), None)
    assert named is not None, (msg, bad)  # the access named is one that is not concordant
    fixed = Format.parse(m.group(3))
    moved = Access(TensorVar(named.tensor.name, named.tensor.order, fixed), named.indices)
    assert fixed.levels == named.tensor.format.levels
    assert _concordant(access_chain(moved), user), msg
    assert isinstance(info.value, SpcompError)
