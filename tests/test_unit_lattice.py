"""Unit tests of the merge lattices (spcomp/lower/lattice.py), through its public
functions only: ``build``, ``Lattice`` and its ``points`` / ``full`` / ``empty`` /
``iterators()`` / ``ordered_points()``, ``union``, ``intersect``, ``EMPTY``, ``FULL``.

Most tests build index notation by hand over vectors indexed by ``i`` and use
the access itself as its iterator key (``key``: an access in a format with a
stored level is iterated, an all-dense one is located), so points read as sets of
accesses. A few use the lowerer's rule instead (the key of the *level* that stores
the loop index, None where that level is locatable), to show that a CSR row loop
is dense while a DCSR one co-iterates.

The hypothesis property checks ``build`` against a brute force that knows nothing
of unions and intersections: it evaluates the expression with every subset of the
sparse operands present (random nonzero values) and the rest absent (zero, not
stored), under the documented semantics (``*`` and ``/`` of stored values only).
"""
from __future__ import annotations

import itertools

import numpy as np
import pytest
from conftest import examples
from hypothesis import given, settings
from hypothesis import strategies as st

from spcomp.formats import Format
from spcomp.frontend import to_notation
from spcomp.lower.lattice import EMPTY, FULL, Lattice, build, intersect, union
from spcomp.lower.order import access_chain
from spcomp.notation import (Access, Add, Call, Div, IndexVar, Literal, Mul, Neg, Sub, Sum,
                             TensorVar, accesses)

i, j = IndexVar("i"), IndexVar("j")
SPARSE_VEC = Format.parse("c")
DENSE_VEC = Format.dense(1)


def sparse(name: str) -> Access:
    return Access(TensorVar(name, 1, SPARSE_VEC), (i,))


def dense(name: str) -> Access:
    return Access(TensorVar(name, 1, DENSE_VEC), (i,))


def key(acc: Access):
    """Iterator key: the access itself when its tensor has a stored (non-dense) level."""
    return None if acc.tensor.format.is_dense else acc


def level_key(index):
    """The lowerer's rule: the (access, level) that stores ``index``, unless that level
    can be located (dense), in which case the access is not iterated."""
    def k(acc):
        if acc.tensor.format.is_dense or index not in acc.indices:
            return None
        level = access_chain(acc).index(index)
        return None if acc.tensor.format.levels[level].locatable else (acc, level)
    return k


def pts(*groups) -> frozenset:
    return frozenset(frozenset(g) for g in groups)


a, b, c, e = sparse("a"), sparse("b"), sparse("c"), sparse("e")
d, f = dense("d"), dense("f")


# --------------------------------------------------------------- leaves

def test_sparse_access_is_one_point_not_full():
    L = build(a, i, key)
    assert L.points == pts({a})
    assert not L.full and not L.empty
    assert L.iterators() == {a}


def test_dense_access_is_full_with_no_points():
    L = build(d, i, key)
    assert L.points == frozenset() and L.full and not L.empty
    assert L == FULL
    assert L.iterators() == set()


def test_access_without_the_loop_index_is_full():
    # b[j] is not iterated by the loop over i: every i sees the same value
    bj = Access(TensorVar("b", 1, SPARSE_VEC), (j,))
    assert build(bj, i, key) == FULL
    assert build(Mul(a, bj), i, key).points == pts({a})


def test_literals():
    assert build(Literal(0.0), i, key) == EMPTY
    assert build(Literal(0.0), i, key).empty
    assert build(Literal(2.5), i, key) == FULL
    assert build(Literal(-1.0), i, key).full


# ------------------------------------------------------------- products

def test_product_of_two_sparse_is_their_intersection():
    L = build(Mul(a, b), i, key)
    assert L.points == pts({a, b})
    assert not L.full


def test_product_with_dense_keeps_only_the_sparse_point():
    for expr in (Mul(a, d), Mul(d, a)):
        L = build(expr, i, key)
        assert L.points == pts({a}) and not L.full, expr


def test_product_of_dense_operands_is_full():
    assert build(Mul(d, f), i, key) == FULL


def test_product_with_literal():
    assert build(Mul(Literal(2.0), a), i, key).points == pts({a})
    assert not build(Mul(Literal(2.0), a), i, key).full
    assert build(Mul(Literal(0.0), a), i, key) == EMPTY
    assert build(Mul(a, Literal(0.0)), i, key).empty


def test_product_distributes_over_sum():
    L = build(Mul(a, Add(b, c)), i, key)
    assert L.points == pts({a, b, c}, {a, b}, {a, c})
    assert not L.full


def test_product_of_two_sums():
    L = build(Mul(Add(a, b), Add(c, e)), i, key)
    assert L.points == pts({a, c}, {a, e}, {b, c}, {b, e},
                           {a, b, c}, {a, b, e}, {a, c, e}, {b, c, e}, {a, b, c, e})
    assert not L.full
    assert L.iterators() == {a, b, c, e}


def test_product_of_a_sum_with_dense_and_a_sparse():
    # (a + d) * b: b must be present; a may or may not be
    L = build(Mul(Add(a, d), b), i, key)
    assert L.points == pts({a, b}, {b})
    assert not L.full


def test_product_of_two_dense_unions():
    # (a + d) * (b + f): full, and each sparse operand alone is a point
    L = build(Mul(Add(a, d), Add(b, f)), i, key)
    assert L.points == pts({a, b}, {a}, {b})
    assert L.full


# ----------------------------------------------------------------- sums

def test_sum_of_two_sparse_is_their_union():
    L = build(Add(a, b), i, key)
    assert L.points == pts({a, b}, {a}, {b})
    assert not L.full


def test_subtraction_is_a_union_like_addition():
    assert build(Sub(a, b), i, key) == build(Add(a, b), i, key)
    assert build(Sub(a, d), i, key) == build(Add(a, d), i, key)


def test_sum_with_dense_is_full_plus_the_sparse_point():
    for expr in (Add(a, d), Add(d, a), Sub(d, a)):
        L = build(expr, i, key)
        assert L.full, expr
        assert L.points == pts({a}), expr


def test_sum_with_literal():
    L = build(Add(a, Literal(3.0)), i, key)
    assert L.full and L.points == pts({a})
    L = build(Add(a, Literal(0.0)), i, key)
    assert not L.full and L.points == pts({a})


def test_sum_of_products():
    L = build(Add(Mul(a, b), c), i, key)
    assert L.points == pts({a, b, c}, {a, b}, {c})
    assert not L.full


def test_negation_keeps_the_lattice():
    assert build(Neg(a), i, key) == build(a, i, key)
    assert build(Neg(Mul(a, b)), i, key) == build(Mul(a, b), i, key)
    assert build(Sub(a, Neg(b)), i, key).points == pts({a, b}, {a}, {b})


# ------------------------------------------------------------- division

def test_division_intersects_like_a_product():
    assert build(Div(a, b), i, key).points == pts({a, b})
    assert not build(Div(a, b), i, key).full


def test_division_by_an_absent_operand_is_zero_so_the_dense_numerator_is_not_full():
    # d / a is computed only where a stores a value (division of stored values)
    L = build(Div(d, a), i, key)
    assert L.points == pts({a}) and not L.full


def test_division_by_literals():
    assert build(Div(a, Literal(2.0)), i, key).points == pts({a})
    assert build(Div(a, Literal(0.0)), i, key) == EMPTY  # a literal 0 divisor counts as absent


# ------------------------------------------------------------ functions

def test_zero_preserving_function_keeps_its_argument_lattice():
    for fn in ("relu", "abs", "tanh", "sqrt", "gelu", "silu"):
        assert build(Call(fn, (a,)), i, key) == build(a, i, key), fn
        assert build(Call(fn, (Mul(a, b),)), i, key).points == pts({a, b}), fn


def test_function_that_does_not_keep_zero_makes_the_loop_full():
    for fn in ("exp", "log"):
        L = build(Call(fn, (a,)), i, key)
        assert L.full, fn
        assert L.points == pts({a}), fn  # the operand is still walked
    L = build(Call("exp", (Mul(a, b),)), i, key)
    assert L.full and L.points == pts({a, b})


def test_literal_arguments_of_a_zero_keeping_call_are_not_coordinates():
    # pow(a, 2) is absent where a is; pow(a, 0) = 1 everywhere
    assert build(Call("pow", (a, Literal(2.0))), i, key) == build(a, i, key)
    L = build(Call("pow", (a, Literal(0.0))), i, key)
    assert L.full and L.points == pts({a})
    # max(a, b) over two sparse operands is their union; max(a, 1) is everywhere
    assert build(Call("max", (a, b)), i, key).points == pts({a, b}, {a}, {b})
    assert build(Call("max", (a, Literal(1.0))), i, key).full


def test_exp_under_a_product_is_no_longer_full():
    L = build(Mul(b, Call("exp", (a,))), i, key)
    assert L.points == pts({a, b}, {b}) and not L.full


def test_max_and_min_unite_their_arguments():
    for fn in ("max", "min"):
        L = build(Call(fn, (a, b)), i, key)
        assert L.points == pts({a, b}, {a}, {b}) and not L.full, fn
    # the zero rule is asked of the call: max(0, 0.5) = 0.5 is everywhere, min(0, 0.5) = 0
    # is absent where a is
    L = build(Call("max", (a, Literal(0.5))), i, key)
    assert L.points == pts({a}) and L.full
    L = build(Call("min", (a, Literal(0.5))), i, key)
    assert L.points == pts({a}) and not L.full


def test_functions_of_literals():
    assert build(Call("relu", (Literal(0.0),)), i, key) == EMPTY
    assert build(Call("exp", (Literal(0.0),)), i, key) == FULL


# ---------------------------------------------------- reductions, levels

def test_reduction_is_transparent_for_the_inner_loop():
    B = Access(TensorVar("B", 2, Format.parse("csr")), (i, j))
    xj = Access(TensorVar("x", 1, SPARSE_VEC), (j,))
    expr = Sum(j, Mul(B, xj))
    L = build(expr, j, level_key(j))
    assert L.points == pts({(B, 1), (xj, 0)}) and not L.full


@pytest.mark.parametrize("fmt,iterated", [("csr", False), ("dcsr", True), ("csc", True), ("dense", False)])
def test_row_loop_iterates_only_a_compressed_row_level(fmt, iterated):
    B = Access(TensorVar("B", 2, Format.parse(fmt, 2)), (i, j))
    L = build(Sum(j, B), i, level_key(i))
    if iterated:
        level = access_chain(B).index(i)
        assert L.points == pts({(B, level)}) and not L.full
    else:
        assert L == FULL


def test_frontend_notation_gives_the_same_lattice():
    rhs = to_notation("y[i] = a[i] * (b[i] + d[i])", formats={"a": "c", "b": "c"}).rhs
    A, B, D = accesses(rhs)
    assert D.tensor.format.is_dense
    L = build(rhs, IndexVar("i"), key)
    assert L.points == pts({A, B}, {A}) and not L.full


def test_division_by_a_reduction_is_full():
    A = Access(TensorVar("A", 2, Format.parse("dcsr")), (i, j))
    L = build(Div(d, Sum(j, A)), i, level_key(i))
    assert L.full


# --------------------------------------------------------- ordered points

def test_ordered_points_largest_first_every_point_once():
    L = build(Mul(Add(a, b), Add(c, e)), i, key)
    order = L.ordered_points()
    assert sorted(map(len, order), reverse=True) == list(map(len, order))
    assert set(order) == set(L.points) and len(order) == len(L.points)
    assert order[0] == frozenset({a, b, c, e})
    # a point is tested before every point it contains (the case chain relies on it)
    for k, p in enumerate(order):
        for q in order[k + 1:]:
            assert not p < q


def test_ordered_points_ties_are_deterministic():
    L1 = build(Add(Add(a, b), c), i, key)
    L2 = build(Add(c, Add(b, a)), i, key)
    assert L1 == L2
    assert L1.ordered_points() == L2.ordered_points()
    assert [sorted(map(repr, p)) for p in L1.ordered_points()[-3:]] == [["a[i]"], ["b[i]"], ["c[i]"]]


# -------------------------------------------------------------- algebra

def test_union_and_intersect_identities():
    L = build(Add(a, Mul(b, c)), i, key)
    assert union(EMPTY, L) == L and union(L, EMPTY) == L
    assert intersect(EMPTY, L) == EMPTY and intersect(L, EMPTY) == EMPTY
    assert intersect(FULL, L) == L and intersect(L, FULL) == L
    assert union(FULL, L) == Lattice(L.points, True)


# ---------------------------------------------------------------- property
#
# Random expressions over distinct operands: sparse vectors s0.. (iterated), dense
# vectors d0.., an access that does not use i (o0..), literals (0 or not), and
# + - * / neg tanh silu gelu exp. Functions whose zeros depend on the sign of their
# argument (relu, abs, max, min) are left to the unit tests above: ``relu(-abs(a))``
# is identically 0 while its lattice conservatively keeps {a}.

FUNCS = ("tanh", "silu", "gelu", "exp")
DRAWS = 24


def _shapes():
    leaf = st.sampled_from(["sparse", "sparse", "sparse", "dense", "other", "lit0", "lit"])
    return st.recursive(
        leaf,
        lambda kids: st.one_of(
            st.tuples(st.sampled_from(["+", "-", "*", "*", "/"]), kids, kids),
            st.tuples(st.just("neg"), kids),
            st.tuples(st.sampled_from(FUNCS), kids)),
        max_leaves=6)


def _to_notation(shape):
    """A shape tree -> notation with a distinct tensor per leaf."""
    counts = {"s": 0, "d": 0, "o": 0}

    def go(s):
        if isinstance(s, str):
            if s == "lit0":
                return Literal(0.0)
            if s == "lit":
                return Literal(1.5)
            prefix = {"sparse": "s", "dense": "d", "other": "o"}[s]
            name = f"{prefix}{counts[prefix]}"
            counts[prefix] += 1
            if s == "sparse":
                return sparse(name)
            if s == "dense":
                return dense(name)
            return Access(TensorVar(name, 1, SPARSE_VEC), (j,))
        op = s[0]
        if op == "neg":
            return Neg(go(s[1]))
        if op in FUNCS:
            return Call(op, (go(s[1]),))
        lhs, rhs = go(s[1]), go(s[2])
        return {"+": Add, "-": Sub, "*": Mul, "/": Div}[op](lhs, rhs)
    return go(shape)


def _generic_eval(expr, present: set, rng_values: dict):
    """(value, stored) arrays over DRAWS random draws: present sparse operands and the
    operands the loop does not iterate hold nonzero values, absent ones 0 and store
    nothing. Nonzero literals and exp's value at 0 are *generic*: each node draws its own
    nonzero constant, so that ``1.5 - 1.5`` or ``exp(a) - exp(b)`` at a = b = 0 cannot
    cancel (the lattice reasons about which values are zero, not which constants are equal).
    """
    def value_of(node):
        return rng_values[id(node)]

    def go(x):
        if isinstance(x, Access):
            if x.tensor.format.is_dense or i not in x.indices:
                return value_of(x), np.ones(DRAWS, bool)
            if x in present:
                return value_of(x), np.ones(DRAWS, bool)
            return np.zeros(DRAWS), np.zeros(DRAWS, bool)
        if isinstance(x, Literal):
            if x.value == 0:
                return np.zeros(DRAWS), np.zeros(DRAWS, bool)
            return value_of(x), np.ones(DRAWS, bool)
        if isinstance(x, Neg):
            v, s = go(x.operand)
            return -v, s
        if isinstance(x, (Add, Sub)):
            (v1, s1), (v2, s2) = go(x.lhs), go(x.rhs)
            return (v1 + v2 if isinstance(x, Add) else v1 - v2), s1 | s2
        if isinstance(x, (Mul, Div)):
            (v1, s1), (v2, s2) = go(x.lhs), go(x.rhs)
            both = s1 & s2
            with np.errstate(all="ignore"):
                v = v1 * v2 if isinstance(x, Mul) else v1 / np.where(both, v2, 1.0)
            return np.where(both, v, 0.0), both
        if isinstance(x, Call):
            v, s = go(x.args[0])
            with np.errstate(all="ignore"):
                if x.func == "tanh":
                    return np.tanh(v), s
                if x.func == "silu":
                    return v / (1.0 + np.exp(-v)), s
                if x.func == "gelu":
                    from scipy.special import erf
                    return 0.5 * v * (1.0 + erf(v / np.sqrt(2.0))), s
                if x.func == "exp":
                    return np.exp(np.clip(v, -30, 30)) * value_of(x), np.ones(DRAWS, bool)
        raise TypeError(x)
    return go(expr)[0]


def sorted_repr(p):
    return sorted(map(repr, p))


def _all_nodes(expr):
    from spcomp.notation import children
    out = [expr]
    for ch in children(expr):
        out += _all_nodes(ch)
    return out


def _brute_force(expr):
    """-> (points, full): a nonempty set S of sparse operands is a point when, with
    exactly S present, the expression can be nonzero and every operand of S changes its
    value (a*b + c with only a and c present equals c, so {a, c} is not a point: the
    point {c} covers it); full when the value can be nonzero with none present."""
    rng = np.random.default_rng(12345)
    values = {}
    for node in _all_nodes(expr):
        mags = rng.uniform(0.5, 2.0, DRAWS)
        values[id(node)] = mags * rng.choice([-1.0, 1.0], DRAWS)
    ops = sorted({x for x in accesses(expr) if key(x) is not None and i in x.indices}, key=repr)

    def val(S):
        return _generic_eval(expr, set(S), values)

    def differs(u, v):
        same = (u == v) | (np.isnan(u) & np.isnan(v))
        return bool(np.any(~same))

    found = set()
    for n in range(1, len(ops) + 1):
        for S in itertools.combinations(ops, n):
            v = val(S)
            if not np.any(v != 0):
                continue
            if all(differs(v, val([o for o in S if o != s])) for s in S):
                found.add(frozenset(S))
    return frozenset(found), bool(np.any(val(()) != 0))


@settings(max_examples=examples(300))
@given(_shapes())
def test_lattice_points_are_the_operand_sets_that_matter(shape):
    expr = _to_notation(shape)
    L = build(expr, i, key)
    points, full = _brute_force(expr)
    assert L.points == points, (expr, sorted(map(sorted_repr, L.points)), sorted(map(sorted_repr, points)))
    assert L.full == full, expr
    assert L.empty == (not points and not full)
    # the same lattice from union/intersect in the other operand order
    if isinstance(expr, (Add, Mul)):
        assert build(type(expr)(expr.rhs, expr.lhs), i, key) == L
