"""The language's functions (spcomp/notation/functions.py, spcomp/lower/functions.py).

Each function against its NumPy meaning at ordinary and special values (0, ±0,
±inf, NaN) on the CPU (f64 and f32) and on cuda-sim; the zero rule seen from a
sparse operand (kept iteration or a DensifyWarning); every derivative in the table
against a central finite difference; random expressions using them are in the
property tests through ``spcomp.testing.DEFAULT_FUNCTIONS``.
"""
from __future__ import annotations

import warnings

import numpy as np
import pytest
import scipy.sparse as sp

import spcomp
from spcomp.frontend import to_notation
from spcomp.notation import FUNCTIONS, Call, maps_zero_to_zero
from spcomp.notation.functions import derivative
from spcomp.testing import check_kernel, reference
from spcomp.testing.reference import evaluate

SPECIAL = np.array([0.0, -0.0, 1.0, -1.0, 0.5, -0.5, 1.5, -2.5, 2.5, 0.3, -0.7, 3.0, 7.25, -7.25,
                    np.inf, -np.inf, np.nan, 1e-300, -1e-300, 1e300, 0.9999, -0.9999])
# second arguments of the two-argument functions
SECOND = {"pow": [2.0, 3.0, 0.5, 0.0, -1.0, -2.0], "atan2": [1.0, -1.0, 0.0, np.inf, np.nan],
          "heaviside": [0.0, 0.5, 1.0], "mod": [3.0, -3.0, 1.5, 0.0, np.inf], "max": [0.0, 1.0, np.nan],
          "min": [0.0, -1.0, np.nan]}
UNARY = sorted(f for f, spec in FUNCTIONS.items() if spec.arity == 1)
BINARY = sorted(f for f, spec in FUNCTIONS.items() if spec.arity == 2)


def _expected(f, *args):
    with np.errstate(all="ignore"):
        return FUNCTIONS[f].numpy(*[np.asarray(a, dtype=np.float64) for a in args])


def _assert_same(got, want, f, rtol, atol=0.0):
    got = np.asarray(got, dtype=np.float64)
    ok = np.isclose(got, want, rtol=rtol, atol=atol, equal_nan=True) | (got == want)
    assert ok.all(), (f, SPECIAL[~ok] if got.shape == SPECIAL.shape else None, got[~ok], want[~ok])


@pytest.mark.parametrize("f", UNARY)
@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_unary_function_matches_numpy_at_special_values(f, dtype):
    k = spcomp.compile(f"y[i] = {f}(x[i])", dtype=dtype)
    with np.errstate(over="ignore"):
        x = SPECIAL.astype(dtype)  # 1e300 is inf in float32
    want = _expected(f, x.astype(np.float64))
    if dtype == "float64":
        _assert_same(k(x=x), want, f, 1e-13)
    else:  # float32 libm: a few ulp, absolute near 0
        _assert_same(k(x=x), want.astype(np.float32).astype(np.float64), f, 2e-6, atol=1e-6)


def _ulps(got, want):
    """|got - want| in units of the float32 spacing at ``want`` (float64 reference)."""
    w32 = want.astype(np.float32)
    return np.abs(got.astype(np.float64) - want) / np.spacing(np.abs(w32)).astype(np.float64)


@pytest.mark.parametrize("f, lo, hi, limit", [("erf", -5, 5, 0.54), ("exp", -87, 88.7, 0.51),
                                              ("tanh", -12, 12, 0.51), ("tanh", -0.1, 0.1, 0.51),
                                              ("silu", -80, 80, 2.5), ("sigmoid", -80, 80, 2.5),
                                              # x < 0: 1 + erf cancels in float32 whatever erf
                                              # is (a correctly rounded erff gives 11.3 ulp)
                                              ("gelu", -2, 12, 11.3)])
def test_float32_erf_exp_tanh_forms_are_within_an_ulp_over_a_dense_grid(f, lo, hi, limit):
    """The CPU backend computes float32 erf, exp and tanh (and gelu, silu, sigmoid through them)
    with its own vectorisable forms (backends/cpu/math_functions.py), not libm: held to
    float32 rounding over ~10^6 points against the float64 NumPy meaning."""
    tiny = np.float32(10.0) ** np.arange(-37, 0, 0.05).astype(np.float32)
    x = np.concatenate([np.linspace(lo, hi, 1_000_003).astype(np.float32), tiny, -tiny])
    got = spcomp.compile(f"y[i] = {f}(x[i])", dtype="float32")(x=x)
    want = _expected(f, x.astype(np.float64))
    small = np.abs(want) < 1e-37  # subnormal results: absolute, as the formula's float32 steps give
    assert _ulps(got[~small], want[~small]).max() <= limit
    assert np.allclose(got[small], want[small], rtol=0, atol=1e-37)


def test_float32_erf_and_exp_are_not_libm_calls():
    """The point of the forms: no call to erff/expf, so the loop can vectorise."""
    for f in ("erf", "exp", "gelu", "silu", "tanh"):
        k = spcomp.compile(f"y[i] = {f}(x[i])", dtype="float32")
        for symbol in ("erff", "expf", "tanhf"):
            assert f'@"{symbol}"' not in k.source, (f, symbol)


@pytest.mark.parametrize("f", BINARY)
def test_binary_function_matches_numpy_at_special_values(f):
    k = spcomp.compile(f"y[i] = {f}(x[i], p[i])")
    for p in SECOND[f]:
        pv = np.full_like(SPECIAL, p)
        _assert_same(k(x=SPECIAL, p=pv), _expected(f, SPECIAL, pv), (f, p), 1e-13)
        # and with the arguments swapped: the special values in the second place
        _assert_same(k(x=pv, p=SPECIAL), _expected(f, pv, SPECIAL), (f, p, "swapped"), 1e-13)


@pytest.mark.parametrize("f", ["sin", "atan2", "mod", "heaviside", "sign", "round", "softplus", "cbrt"])
def test_functions_on_cuda_sim(f):
    text = f"y[i] = {f}(x[i], p[i])" if FUNCTIONS[f].arity == 2 else f"y[i] = {f}(x[i])"
    k = spcomp.compile(text, backend="cuda-sim")
    p = np.linspace(-3, 3, SPECIAL.size)
    got = k(x=SPECIAL, p=p) if FUNCTIONS[f].arity == 2 else k(x=SPECIAL)
    want = _expected(f, SPECIAL, p) if FUNCTIONS[f].arity == 2 else _expected(f, SPECIAL)
    _assert_same(got, want, f, 1e-13)


def test_constant_folding_uses_the_numpy_meaning():
    # a folded constant is what the reference computes (round half to even, NumPy's mod sign)
    for text, want in [("round(2.5)", 2.0), ("round(-0.5)", -0.0), ("mod(-1, 3)", 2.0), ("mod(1, -3)", -2.0),
                       ("sign(0)", 0.0), ("heaviside(0, 0.25)", 0.25), ("pow(2, 10)", 1024.0)]:
        k = spcomp.compile(f"y[i] = x[i] + {text}")
        assert k(x=np.zeros(3)).tolist() == [want] * 3, text


@pytest.mark.parametrize("text", ["y[i] = sin(x[i])", "y[i] = pow(x[i], 2)", "y[i] = heaviside(x[i], 0)",
                                  "y[i] = mod(x[i], 3)", "y[i] = atan2(x[i], z[i])", "y[i] = sign(x[i]) * 2"])
def test_zero_keeping_calls_keep_a_sparse_operand_sparse(text):
    with warnings.catch_warnings():
        warnings.simplefilter("error", spcomp.DensifyWarning)
        formats = {"x": "c", "y": "c"}
        if "z[" in text:
            formats["z"] = "c"
        res = check_kernel(text, formats=formats, sizes={"i": 40}, density=0.2, seed=3)
    assert res.result.nnz < 40  # only where x (or z) stores an entry


@pytest.mark.parametrize("text", ["y[i] = cos(x[i])", "y[i] = pow(x[i], 0)", "y[i] = exp(x[i]) + 1",
                                  "y[i] = heaviside(x[i], 0.5)"])
def test_calls_not_zero_at_zero_on_a_sparse_operand_warn_and_stay_right(text):
    with pytest.warns(spcomp.DensifyWarning, match="visits every coordinate"):
        check_kernel(text, formats={"x": "c"}, sizes={"i": 30}, density=0.2, seed=1)


def test_a_product_that_multiplies_the_call_away_does_not_warn():
    with warnings.catch_warnings():
        warnings.simplefilter("error", spcomp.DensifyWarning)
        check_kernel("y[i] = A[i,j] * exp(x[j])", formats={"x": "c", "A": "csr"}, density=0.3)


def test_unknown_function_and_wrong_arity_are_clear_errors():
    with pytest.raises(spcomp.UnknownFunctionError, match="sinc"):
        spcomp.compile("y[i] = sinc(x[i])")
    with pytest.raises(spcomp.NotationError, match="takes 2 arguments"):
        spcomp.compile("y[i] = pow(x[i])")


# ------------------------------------------------------------ derivatives

def _point(f):
    """Arguments where ``f`` is smooth (inside every domain, away from ties and steps)."""
    if f in ("acosh",):
        return [2.3]
    if f in ("asin", "acos", "atanh"):
        return [0.37]
    return [0.83, 1.7][:FUNCTIONS[f].arity]


@pytest.mark.parametrize("f", sorted(FUNCTIONS))
def test_derivative_matches_a_finite_difference(f):
    spec = FUNCTIONS[f]
    args = _point(f)
    names = ["a", "b"][:spec.arity]
    stmt = to_notation(f"y = {f}({', '.join(names)})")
    call = stmt.rhs
    assert isinstance(call, Call)
    for k in range(spec.arity):
        d = derivative(call, k)
        ops = dict(zip(names, args))
        got = float(evaluate(d, ops, {})[0])
        h = 1e-6
        up, down = list(args), list(args)
        up[k] += h
        down[k] -= h
        want = (spec.scalar(*up) - spec.scalar(*down)) / (2 * h)
        assert got == pytest.approx(want, rel=1e-6, abs=1e-8), (f, k, d)


def test_derivatives_are_expressions_the_compiler_accepts():
    # every derivative, written back as text, compiles and runs (what vjp relies on)
    x = np.array([0.83, 1.7, 2.3, 0.37])
    for f, spec in sorted(FUNCTIONS.items()):
        stmt = to_notation(f"y[i] = {f}({', '.join(['a[i]', 'b[i]'][:spec.arity])})")
        for k in range(spec.arity):
            d = derivative(stmt.rhs, k)
            text = f"y[i] = {d!r} + 0 * a[i]"
            kern = spcomp.compile(text)
            ops = {"a": x, "b": x[::-1].copy()} if "b[" in text else {"a": x}
            np.testing.assert_allclose(kern(**ops), reference(kern.notation, ops), rtol=1e-12, err_msg=text)


def test_zero_rule_agrees_with_the_numpy_meaning():
    # the compiler's rule is asked of the function itself: no table can drift from it
    for f, spec in FUNCTIONS.items():
        stmt = to_notation(f"y[i] = {f}({', '.join(['a[i]', 'b[i]'][:spec.arity])})")
        at_zero = spec.scalar(*[0.0] * spec.arity)
        assert maps_zero_to_zero(stmt.rhs) == (at_zero == 0.0), f


def test_sparse_matrix_operand_through_a_two_argument_function():
    A = sp.random(20, 15, density=0.2, format="csr", random_state=4)
    B = sp.random(20, 15, density=0.2, format="csr", random_state=5)
    res = check_kernel("C[i,j] = atan2(A[i,j], B[i,j])", formats={"A": "csr", "B": "csr", "C": "csr"},
                       operands={"A": A, "B": B})
    assert res.result.nnz == (abs(A) + abs(B)).nnz  # the union of the two patterns
