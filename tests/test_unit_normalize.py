"""Unit tests of the index-notation rewrites (spcomp/lower/normalize.py), through
its public functions only: ``lift_sums``, ``push_sums``, ``split_sums``,
``wrap_sums``, ``nested_sums``, ``factors``, ``product``, ``specialize``,
``simplify``, ``replace``, ``rebuild``, ``zero_preserving``, ``ZERO``.

The unit tests compare printed notation (``repr``), the form the lowerer's
loops are built from. The hypothesis properties check that the rewrites keep the
value: the original and the rewritten expression are evaluated densely by
``spcomp.testing.reference.evaluate`` (the reference every kernel is checked
against) on random small operands, and ``specialize`` is checked against the
original evaluated with the absent operands' data set to zero.
"""
from __future__ import annotations

import numpy as np
import pytest
from conftest import examples
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from spcomp.formats import Format
from spcomp.frontend import to_notation
from spcomp.lower.normalize import (ZERO, factors, lift_sums, nested_sums, product, push_sums,
                                    rebuild, replace, simplify, specialize, split_sums, wrap_sums,
                                    zero_preserving)
from spcomp.notation import (Access, Add, Call, Div, IndexVar, Literal, Mul, Neg, Sub, Sum,
                             TensorVar, accesses, children, free_indices)
from spcomp.testing import VALUES
from spcomp.testing.check import complete_sizes
from spcomp.testing.reference import evaluate
from spcomp.testing.strategies import expressions


def rhs(text, formats=None):
    return to_notation(text, formats=formats).rhs


def acc(e, text):
    found = {a for a in accesses(e) if repr(a) == text}
    assert len(found) == 1, (text, e)
    return found.pop()


# ------------------------------------------------------ where sums are put

@pytest.mark.parametrize("text,printed", [
    ("y[i] = A[i,j]*x[j]", "sum(j, A[i,j] * x[j])"),
    ("a[i] = b[i] + C[j,i]", "(b[i] + sum(j, C[j,i]))"),
    ("a[i] = relu(B[i,k]*c[k]) + d[i]", "(relu(sum(k, B[i,k] * c[k])) + d[i])"),
    ("s = a[i]*b[i] + c[j]", "(sum(i, a[i] * b[i]) + sum(j, c[j]))"),
    # (A*B)*c as parsed: j's uses meet at A*B, k's at the outer product (the
    # docstring of spcomp/frontend/check.py says both go on the outer product)
    ("y[i] = A[i,j]*B[j,k]*c[k]", "sum(k, sum(j, A[i,j] * B[j,k]) * c[k])"),
    ("y[i] = A[i,j]*(B[j,k]*c[k])", "sum(j, A[i,j] * sum(k, B[j,k] * c[k]))"),
    ("O[t,d] = H[t,n]*X[t,k]*Wu[n,k]*Wd[n,d]", "sum(n, sum(k, H[t,n] * X[t,k] * Wu[n,k]) * Wd[n,d])"),
])
def test_sums_are_placed_by_the_taco_rule(text, printed):
    assert repr(rhs(text)) == printed


# -------------------------------------------------------------- lift_sums

@pytest.mark.parametrize("text,printed", [
    # through a product, from either side
    ("O[t,d] = H[t,n]*X[t,k]*Wu[n,k]*Wd[n,d]", "sum(n, sum(k, H[t,n] * X[t,k] * Wu[n,k] * Wd[n,d]))"),
    ("y[i] = A[i,j]*(B[j,k]*c[k])", "sum(j, sum(k, A[i,j] * (B[j,k] * c[k])))"),
    ("y[i] = b[i]*A[i,j]*x[j]*c[k]", "sum(j, sum(k, b[i] * A[i,j] * x[j] * c[k]))"),
    ("y[i] = A[i,j]*x[j]*b[i]", "sum(j, A[i,j] * x[j] * b[i])"),
    # through a negation and a division by a literal
    ("y[i] = -(A[i,j]*x[j])", "sum(j, -(A[i,j] * x[j]))"),
    ("y[i] = A[i,j]*x[j]/2", "sum(j, A[i,j] * x[j] / 2)"),
    # not through a division by a tensor, a function or a sum
    ("y[i] = A[i,j]*x[j]/z[i]", "sum(j, A[i,j] * x[j]) / z[i]"),
    ("y[i] = relu(A[i,j]*x[j]) + b[i]", "(relu(sum(j, A[i,j] * x[j])) + b[i])"),
    ("s = a[i]*b[i] + c[j]", "(sum(i, a[i] * b[i]) + sum(j, c[j]))"),
    # but inside them
    ("y[i] = relu(b[i]*(A[i,j]*x[j]))", "relu(sum(j, b[i] * (A[i,j] * x[j])))"),
    ("y[i] = z[i] / (b[i]*(A[i,j]*x[j]))", "z[i] / sum(j, b[i] * (A[i,j] * x[j]))"),
])
def test_lift_sums(text, printed):
    assert repr(lift_sums(rhs(text))) == printed


def test_lift_sums_keeps_a_sum_over_a_tensor_divisor_where_it_divides_by_zero():
    # the module's example: (-3 + 2 - 0.25) / 0 is -inf, -3/0 + 2/0 - 0.25/0 is NaN
    note = to_notation("y[i] = A[i,j]*x[j] / z[i]")
    ops = {"A": np.array([[-3.0, 2.0, -0.25]]), "x": np.ones(3), "z": np.zeros(1)}
    sizes = {"i": 1, "j": 3}
    with np.errstate(all="ignore"):
        want = evaluate(note.rhs, ops, sizes)[0]
        got = evaluate(lift_sums(note.rhs), ops, sizes)[0]
        idx, body = split_sums(note.rhs.lhs)
        term_by_term = evaluate(wrap_sums(idx, Div(body, note.rhs.rhs)), ops, sizes)[0]
    assert list(want) == [-np.inf] and list(got) == [-np.inf]
    assert np.isnan(term_by_term).all()


def test_lift_sums_is_idempotent_and_leaves_leaves_alone():
    e = rhs("y[i] = b[i]*A[i,j]*x[j]*c[k] + relu(B[i,k]*c[k])")
    once = lift_sums(e)
    assert lift_sums(once) == once
    a = acc(e, "b[i]")
    assert lift_sums(a) is a and lift_sums(Literal(2.0)) == Literal(2.0)


# -------------------------------------------------------------- push_sums

def test_push_sums_hoists_the_k_sum_onto_the_factors_that_use_k():
    # O[t,d] = H*X*Wu*Wd: sum over k of X*Wu once per (t,n), not per (t,n,d)
    lifted = lift_sums(rhs("O[t,d] = H[t,n]*X[t,k]*Wu[n,k]*Wd[n,d]"))
    pushed = push_sums(lifted)
    assert repr(pushed) == "sum(n, H[t,n] * Wd[n,d] * sum(k, X[t,k] * Wu[n,k]))"
    (inner,) = [s for s in nested_sums(split_sums(pushed)[1])]
    assert repr(inner) == "sum(k, X[t,k] * Wu[n,k])"
    assert free_indices(inner) == {IndexVar("t"), IndexVar("n")}


def test_push_sums_on_three_factors():
    # H[t,n]*X[t,k]*Wu[n,k]: the brief's hoisting form, with k the only reduction
    e = lift_sums(rhs("O[t,n] = H[t,n]*X[t,k]*Wu[n,k]"))
    # the other factor (H) uses no index that X*Wu does not: nothing to gain
    assert repr(push_sums(e)) == "sum(k, H[t,n] * X[t,k] * Wu[n,k])"
    # unless asked for (Schedule.precompute)
    assert repr(push_sums(e, force=("k",))) == "H[t,n] * sum(k, X[t,k] * Wu[n,k])"
    # with n summed too, every factor shares an index with the others' users: no gain
    e = lift_sums(rhs("O[t] = H[t,n]*X[t,k]*Wu[n,k]"))
    assert repr(e) == "sum(n, sum(k, H[t,n] * X[t,k] * Wu[n,k]))"
    assert push_sums(e) == e


def test_push_sums_moves_each_reduction_to_its_users():
    e = lift_sums(rhs("y[i] = b[i]*A[i,j]*x[j]*c[k]"))
    assert repr(push_sums(e)) == "b[i] * sum(j, A[i,j] * x[j]) * sum(k, c[k])"


def test_push_sums_nests_pushed_sums():
    e = lift_sums(rhs("y[i] = b[i]*c[m]*A[i,j]*B[j,k]*x[k]"))
    assert repr(e) == "sum(k, sum(j, sum(m, b[i] * c[m] * A[i,j] * B[j,k] * x[k])))"
    # j moves onto A*B*x and takes k, which only those use, along; inside it k is
    # pushed again onto B*x (A does not use k)
    assert repr(push_sums(e)) == "b[i] * sum(j, A[i,j] * sum(k, B[j,k] * x[k])) * sum(m, c[m])"
    e = lift_sums(rhs("Y[i,l] = b[i]*A[i,j]*B[j,k]*C[k,l]"))
    assert repr(push_sums(e)) == "sum(j, b[i] * A[i,j] * sum(k, B[j,k] * C[k,l]))"


def test_push_sums_can_be_turned_off_and_folds_literals():
    e = lift_sums(rhs("O[t,d] = H[t,n]*X[t,k]*Wu[n,k]*Wd[n,d]"))
    assert push_sums(e, allow=False) == e
    e = lift_sums(rhs("y[i] = 2*A[i,j]*x[j]*3"))
    assert repr(e) == "sum(j, 2 * A[i,j] * x[j] * 3)"
    assert repr(push_sums(e)) == "sum(j, 6 * (A[i,j] * x[j]))"


def test_push_sums_leaves_sums_under_functions_and_additions_in_place():
    for text in ("y[i] = relu(A[i,j]*x[j]) + b[i]", "s = a[i]*b[i] + c[j]", "y[i] = A[i,j]*x[j]/z[i]"):
        e = lift_sums(rhs(text))
        assert push_sums(e) == e, text


# ------------------------------------------------------ small helpers

def test_split_and_wrap_sums_are_inverse():
    e = lift_sums(rhs("y[i] = b[i]*A[i,j]*x[j]*c[k]"))
    idx, body = split_sums(e)
    assert [x.name for x in idx] == ["j", "k"]
    assert repr(body) == "b[i] * A[i,j] * x[j] * c[k]"
    assert wrap_sums(idx, body) == e
    assert split_sums(body) == ([], body)
    assert wrap_sums([], body) is body


def test_nested_sums_are_the_outermost_ones():
    e = rhs("s = a[l]*b[l] + relu(A[i,j]*(B[j,k]*c[k]))")
    assert [repr(s) for s in nested_sums(e)] == [
        "sum(l, a[l] * b[l])", "sum(j, sum(i, A[i,j]) * sum(k, B[j,k] * c[k]))"]
    assert nested_sums(acc(e, "c[k]")) == []


def test_factors_flatten_products_and_negations():
    e = rhs("y[i] = -(2*a[i])*(b[i]*-c[i])")
    assert [repr(f) for f in factors(e)] == ["-1", "2", "a[i]", "b[i]", "-1", "c[i]"]
    assert factors(acc(e, "a[i]")) == [acc(e, "a[i]")]
    # a division and a sum are single factors
    assert len(factors(rhs("y[i] = a[i] / b[i]"))) == 1
    assert len(factors(rhs("y[i] = A[i,j]*x[j]"))) == 1


def test_product_folds_literals_in_front():
    e = rhs("y[i] = a[i]*b[i]*c[i]")
    a, b, c = accesses(e)
    assert repr(product([Literal(2.0), a, Literal(3.0), b])) == "6 * (a[i] * b[i])"
    assert repr(product([Literal(-1.0), a, b])) == "-(a[i] * b[i])"
    assert repr(product([Literal(-1.0), Literal(-1.0), a])) == "a[i]"
    assert product([a, Literal(0.0), b]) == ZERO
    assert product([Literal(2.0), Literal(0.5)]) == Literal(1.0)
    assert product(factors(e)) == e


def test_replace_and_rebuild():
    e = rhs("y[i] = A[i,j]*x[j] + A[i,k]*x[k]")
    A = acc(e, "x[j]")
    B = Access(TensorVar("B", 1, Format.dense(1)), A.indices)
    assert repr(replace(e, A, B)) == "(sum(j, A[i,j] * B[j]) + sum(k, A[i,k] * x[k]))"
    assert replace(e, B, A) == e  # nothing to replace
    assert rebuild(e, lambda c: c) == e
    assert repr(rebuild(e, lambda c: Neg(c))) == "(-sum(j, A[i,j] * x[j]) + -sum(k, A[i,k] * x[k]))"


def test_zero_preserving():
    x = Access(TensorVar("x", 1, None), (IndexVar("i"),))
    call = lambda f, *args: Call(f, args or (x,))  # noqa: E731
    for f in ("relu", "tanh", "sin", "atanh", "expm1", "sign", "round", "erf", "cube"):
        assert zero_preserving(call(f)), f
    for f in ("exp", "log", "cos", "acosh", "sigmoid", "softplus", "log10"):
        assert not zero_preserving(call(f)), f
    # literal arguments count as written: 0**2 = 0 but 0**0 = 1 and 0**-1 = inf
    assert zero_preserving(call("pow", x, Literal(2.0)))
    assert not zero_preserving(call("pow", x, Literal(0.0)))
    assert not zero_preserving(call("pow", x, Literal(-1.0)))
    assert zero_preserving(call("heaviside", x, Literal(0.0)))
    assert not zero_preserving(call("heaviside", x, Literal(0.5)))
    assert zero_preserving(call("max", x, x)) and not zero_preserving(call("max", x, Literal(1.0)))
    assert zero_preserving(call("mod", x, Literal(3.0)))
    assert not zero_preserving(call("mod", x, x))  # mod(0, 0) is NaN


# ------------------------------------------------------------- specialize

SPARSE = {"a": "c", "b": "c", "c": "c", "A": "csr", "B": "csr"}


def spec(text, absent):
    e = rhs(text, {n: f for n, f in SPARSE.items() if f"{n}[" in text})
    return repr(specialize(e, {acc(e, x) for x in absent}))


def test_specialize_a_product_with_an_absent_factor_is_zero():
    assert spec("y[i] = a[i]*b[i]", ["b[i]"]) == "0"
    e = rhs("y[i] = a[i]*b[i]", {"a": "c", "b": "c"})
    assert specialize(e, {acc(e, "a[i]")}) == ZERO
    assert spec("y[i] = a[i]*b[i]*d[i]", ["a[i]"]) == "0"
    assert spec("y[i] = A[i,j]*x[j]", ["A[i,j]"]) == "0"
    assert spec("y[i] = -(a[i]*b[i])", ["a[i]"]) == "0"


def test_specialize_a_sum_keeps_the_present_side():
    assert spec("y[i] = a[i] + b[i]", ["b[i]"]) == "a[i]"
    assert spec("y[i] = a[i] + b[i]", ["a[i]"]) == "b[i]"
    assert spec("y[i] = a[i] - b[i]", ["b[i]"]) == "a[i]"
    assert spec("y[i] = a[i] - b[i]", ["a[i]"]) == "-b[i]"
    assert spec("y[i] = a[i] + b[i]", ["a[i]", "b[i]"]) == "0"
    assert spec("y[i] = a[i]*b[i] + c[i]", ["b[i]"]) == "c[i]"
    assert spec("y[i] = a[i]*(b[i] + c[i])", ["c[i]"]) == "a[i] * b[i]"
    assert spec("y[i] = a[i] + b[i]", []) == "(a[i] + b[i])"


def test_specialize_functions_and_literals():
    assert spec("y[i] = relu(a[i]) + b[i]", ["a[i]"]) == "b[i]"
    assert spec("y[i] = exp(a[i]) * b[i]", ["a[i]"]) == "1 * b[i]"  # exp(0) = 1 is kept as a factor
    assert spec("y[i] = exp(a[i]) + 2", ["a[i]"]) == "3"
    assert spec("y[i] = max(a[i], b[i])", ["b[i]"]) == "max(a[i], 0)"
    assert spec("y[i] = max(a[i], 0.5)", ["a[i]"]) == "0.5"


def test_specialize_divisions_of_stored_values():
    # division is computed where both sides store a value: an absent side gives 0
    assert spec("y[i] = a[i] / b[i]", ["b[i]"]) == "0"
    assert spec("y[i] = d[i] / b[i]", ["b[i]"]) == "0"
    assert spec("y[i] = a[i] / d[i]", ["a[i]"]) == "0"
    assert spec("y[i] = (a[i] + c[i]) / b[i]", ["a[i]"]) == "c[i] / b[i]"


def test_specialize_a_reduction():
    assert spec("y[i] = A[i,j]*x[j] + a[i]", ["A[i,j]"]) == "a[i]"
    assert spec("y[i] = A[i,j]*x[j] + a[i]", ["a[i]"]) == "sum(j, A[i,j] * x[j])"


def test_simplify_folds_constants():
    assert simplify(Add(Literal(2.0), Literal(3.0))) == Literal(5.0)
    assert simplify(Sub(Literal(2.0), Literal(2.0))) == ZERO
    assert simplify(Call("exp", (Literal(0.0),))) == Literal(1.0)
    assert simplify(Call("relu", (Literal(-2.0),))) == ZERO
    assert simplify(Neg(ZERO)) == ZERO
    assert simplify(Div(Literal(1.0), ZERO)) == ZERO  # a literal 0 divisor counts as absent


def test_specialize_keeps_a_division_by_an_empty_reduction():
    e = rhs("y[i] = d[i] / A[i,j]", {"A": "dcsr"})
    assert repr(e) == "d[i] / sum(j, A[i,j])"
    assert specialize(e, {acc(e, "A[i,j]")}) != ZERO


# ---------------------------------------------------------------- properties

def _operands(note, data):
    rng = np.random.default_rng(data.draw(st.integers(0, 2**32 - 1), label="seed"))
    sizes = complete_sizes(note, {}, lambda: int(rng.integers(1, 4)))
    ops = {}
    for name, t in note.tensors.items():
        if name == note.lhs.tensor.name:
            continue
        shape = tuple(sizes[x.name] for x in next(a for a in accesses(note.rhs) if a.tensor.name == name).indices)
        vals = rng.choice(VALUES, size=shape)
        if not t.format.is_dense:  # sparse operands store their nonzeros: leave some out
            vals = np.where(rng.random(shape) < 0.6, vals, 0.0)
        ops[name] = vals
    return ops, sizes


def _value(e, ops, sizes, target):
    v, idx = evaluate(e, ops, sizes)
    v = np.asarray(v, dtype=np.float64)
    assert set(idx) <= set(target), (e, idx, target)
    for n in target:
        if n not in idx:
            v = v[..., None]
            idx = idx + [n]
    v = np.transpose(v, [idx.index(n) for n in target])
    return np.broadcast_to(v, tuple(sizes[n] for n in target))


def _case(data):
    case = data.draw(expressions(max_operands=4, max_order=2, accumulate=False, diagonals=False,
                                 allow_packed=False))
    return to_notation(case.text, formats=case.formats)


def _same(x, y):
    return np.allclose(x, y, rtol=1e-9, atol=1e-9, equal_nan=True)


def _no_sum_under_a_product(e) -> bool:
    if isinstance(e, (Mul, Neg)) and any(isinstance(c, Sum) for c in children(e)):
        return False
    if isinstance(e, Div) and isinstance(e.rhs, Literal) and isinstance(e.lhs, Sum):
        return False
    return all(_no_sum_under_a_product(c) for c in children(e))


@settings(max_examples=examples(100))
@given(st.data())
def test_lift_and_push_keep_the_value(data):
    note = _case(data)
    ops, sizes = _operands(note, data)
    target = sorted(x.name for x in free_indices(note.rhs))
    with np.errstate(all="ignore"):
        want = _value(note.rhs, ops, sizes, target)
    assume(np.all(np.isfinite(want)))
    lifted = lift_sums(note.rhs)
    assert _no_sum_under_a_product(lifted), lifted
    every = tuple(x.name for x in split_sums(lifted)[0])
    for e in (lifted, push_sums(lifted), push_sums(lifted, force=every), push_sums(note.rhs)):
        assert free_indices(e) == free_indices(note.rhs), e
        with np.errstate(all="ignore"):
            got = _value(e, ops, sizes, target)
        assert _same(got, want), (note.rhs, e)


@settings(max_examples=examples(100))
@given(st.data())
def test_specialize_is_the_expression_with_absent_operands_zero(data):
    note = _case(data)
    sparse_names = sorted({a.tensor.name for a in accesses(note.rhs)
                           if a.tensor.order and not a.tensor.format.is_dense})
    assume(sparse_names)
    gone = data.draw(st.sets(st.sampled_from(sparse_names), min_size=1), label="absent")
    ops, sizes = _operands(note, data)
    target = sorted(x.name for x in free_indices(note.rhs))
    zeroed = {n: (np.zeros_like(v) if n in gone else v) for n, v in ops.items()}
    absent = {a for a in accesses(note.rhs) if a.tensor.name in gone}
    for e in (note.rhs, lift_sums(note.rhs)):
        with np.errstate(all="ignore"):
            want = _value(e, zeroed, sizes, target)
        assume(np.all(np.isfinite(want)))
        s = specialize(e, absent)
        assert not {a.tensor.name for a in accesses(s)} & gone, s
        with np.errstate(all="ignore"):
            got = _value(s, ops, sizes, target)
        assert _same(got, want), (e, gone, s)
