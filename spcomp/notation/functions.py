"""The functions of the language: one row each, everything the compiler knows of them.

A :class:`Function` says how many arguments it takes, what it computes (a NumPy
implementation: the reference the tests check kernels against, and constant
folding, so the two never disagree), and its derivative with respect to each
argument as an index-notation expression (what ``spcomp.vjp`` differentiates
through). How it becomes machine code is in :mod:`spcomp.lower.functions`.

**Zero behaviour** is not a flag per function but a question asked of the call:
:func:`maps_zero_to_zero` evaluates the function with its tensor arguments at 0
and its literal arguments as written. ``pow(x[i], 2)`` keeps a sparse ``x``'s
iteration (0² = 0); ``pow(x[i], 0)`` and ``exp(x[i])`` do not (the compiler then
visits every coordinate, and says so in a warning when an operand is sparse).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import numpy as np

from .nodes import Add, Call, Div, Literal, Mul, Neg, Sub, Sum, accesses, children


@dataclass(frozen=True)
class Function:
    """One language function. ``numpy(*arrays)`` is its meaning (float64 in, float64
    out, NaN and ±inf as NumPy gives them); ``derivative(args, k)`` is
    ∂f/∂args[k] as an index-notation expression of the same arguments (0 where the
    function is piecewise constant: sign, floor, heaviside ...)."""
    name: str
    arity: int
    numpy: Callable[..., np.ndarray]
    derivative: Callable[[tuple, int], object]
    summary: str

    def scalar(self, *values: float) -> float:
        """The function on Python floats (constant folding; the zero rule)."""
        with np.errstate(all="ignore"):
            return float(self.numpy(*(np.float64(v) for v in values)))


# ----------------------------------------------------------- expression helpers
# (small constructors so the derivative table reads like the formulas)

def _c(v: float) -> Literal:
    return Literal(float(v))


def _f(name: str, *args) -> Call:
    return Call(name, tuple(args))


def _sq(x):
    return _f("square", x)


def _zero(args, k):
    return _c(0.0)


def _unary(rule):
    """A derivative rule for a one-argument function: ``rule(x)``."""
    return lambda args, k: rule(args[0])


_SQRT_2_OVER_PI = 2.0 / math.sqrt(math.pi)
_INV_SQRT_2PI = 1.0 / math.sqrt(2.0 * math.pi)
_INV_SQRT_2 = 1.0 / math.sqrt(2.0)


def _pow_rule(args, k):
    x, p = args
    if k == 0:
        return Mul(p, _f("pow", x, Sub(p, _c(1.0))))
    return Mul(_f("log", x), _f("pow", x, p))


def _atan2_rule(args, k):
    y, x = args
    r2 = Add(_sq(x), _sq(y))
    return Div(x, r2) if k == 0 else Neg(Div(y, r2))


def _mod_rule(args, k):
    x, m = args
    return _c(1.0) if k == 0 else Neg(_f("floor", Div(x, m)))


def _max_rule(args, k):
    # a tie splits the gradient evenly, as torch.maximum does
    a, b = args
    return _f("heaviside", Sub(a, b) if k == 0 else Sub(b, a), _c(0.5))


def _min_rule(args, k):
    a, b = args
    return _f("heaviside", Sub(b, a) if k == 0 else Sub(a, b), _c(0.5))


def _heaviside_rule(args, k):
    return _c(0.0)


# ----------------------------------------------------------- NumPy meanings

def _erf(x):
    from scipy.special import erf  # SciPy is a dependency; imported when first used
    return erf(x)


def _gelu(x):
    return 0.5 * x * (1.0 + _erf(x * _INV_SQRT_2))


def _sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


def _softplus(x):
    return np.log1p(np.exp(-np.abs(x))) + np.maximum(x, 0.0)


def _relu(x):
    return np.where(x < 0.0, 0.0, x)  # NaN stays NaN, as np.maximum(x, 0) gives


_TABLE = [
    # activations
    Function("relu", 1, _relu, _unary(lambda x: _f("heaviside", x, _c(0.0))), "max(x, 0)"),
    Function("gelu", 1, _gelu,
        _unary(lambda x: Add(Mul(_c(0.5), Add(_c(1.0), _f("erf", Mul(x, _c(_INV_SQRT_2))))),
                             Mul(Mul(x, _c(_INV_SQRT_2PI)), _f("exp", Mul(_c(-0.5), _sq(x)))))),
        "x·Φ(x), the exact (erf) GELU"),
    Function("silu", 1, lambda x: x / (1.0 + np.exp(-x)),
        _unary(lambda x: Mul(_f("sigmoid", x), Add(_c(1.0), Mul(x, Sub(_c(1.0), _f("sigmoid", x)))))),
        "x·sigmoid(x)"),
    Function("sigmoid", 1, _sigmoid,
        _unary(lambda x: Mul(_f("sigmoid", x), Sub(_c(1.0), _f("sigmoid", x)))), "1 / (1 + exp(-x))"),
    Function("softplus", 1, _softplus, _unary(lambda x: _f("sigmoid", x)), "log(1 + exp(x)), computed stably"),
    # powers and roots
    Function("abs", 1, np.abs, _unary(lambda x: _f("sign", x)), "|x|"),
    Function("sqrt", 1, np.sqrt, _unary(lambda x: Div(_c(0.5), _f("sqrt", x))), "√x (NaN below 0)"),
    Function("cbrt", 1, np.cbrt, _unary(lambda x: Div(_c(1.0), Mul(_c(3.0), _sq(_f("cbrt", x))))), "∛x"),
    Function("square", 1, np.square, _unary(lambda x: Mul(_c(2.0), x)), "x²"),
    Function("cube", 1, lambda x: x * x * x, _unary(lambda x: Mul(_c(3.0), _sq(x))), "x³"),
    Function("pow", 2, np.power, _pow_rule, "x to the power p"),
    # exponentials and logarithms
    Function("exp", 1, np.exp, _unary(lambda x: _f("exp", x)), "eˣ"),
    Function("expm1", 1, np.expm1, _unary(lambda x: _f("exp", x)), "eˣ - 1, exact near 0"),
    Function("log", 1, np.log, _unary(lambda x: Div(_c(1.0), x)), "natural logarithm"),
    Function("log1p", 1, np.log1p, _unary(lambda x: Div(_c(1.0), Add(_c(1.0), x))), "log(1 + x), exact near 0"),
    Function("log2", 1, np.log2, _unary(lambda x: Div(_c(1.0 / math.log(2.0)), x)), "base-2 logarithm"),
    Function("log10", 1, np.log10, _unary(lambda x: Div(_c(1.0 / math.log(10.0)), x)), "base-10 logarithm"),
    # trigonometric and hyperbolic
    Function("sin", 1, np.sin, _unary(lambda x: _f("cos", x)), "sine"),
    Function("cos", 1, np.cos, _unary(lambda x: Neg(_f("sin", x))), "cosine"),
    Function("tan", 1, np.tan, _unary(lambda x: Add(_c(1.0), _sq(_f("tan", x)))), "tangent"),
    Function("asin", 1, np.arcsin, _unary(lambda x: Div(_c(1.0), _f("sqrt", Sub(_c(1.0), _sq(x))))), "arc sine"),
    Function("acos", 1, np.arccos, _unary(lambda x: Neg(Div(_c(1.0), _f("sqrt", Sub(_c(1.0), _sq(x)))))),
        "arc cosine"),
    Function("atan", 1, np.arctan, _unary(lambda x: Div(_c(1.0), Add(_c(1.0), _sq(x)))), "arc tangent"),
    Function("atan2", 2, np.arctan2, _atan2_rule, "angle of the point (x, y): atan2(y, x)"),
    Function("sinh", 1, np.sinh, _unary(lambda x: _f("cosh", x)), "hyperbolic sine"),
    Function("cosh", 1, np.cosh, _unary(lambda x: _f("sinh", x)), "hyperbolic cosine"),
    Function("tanh", 1, np.tanh, _unary(lambda x: Sub(_c(1.0), _sq(_f("tanh", x)))), "hyperbolic tangent"),
    Function("asinh", 1, np.arcsinh, _unary(lambda x: Div(_c(1.0), _f("sqrt", Add(_sq(x), _c(1.0))))),
        "inverse hyperbolic sine"),
    Function("acosh", 1, np.arccosh,
        _unary(lambda x: Div(_c(1.0), Mul(_f("sqrt", Sub(x, _c(1.0))), _f("sqrt", Add(x, _c(1.0)))))),
        "inverse hyperbolic cosine"),
    Function("atanh", 1, np.arctanh, _unary(lambda x: Div(_c(1.0), Sub(_c(1.0), _sq(x)))),
        "inverse hyperbolic tangent"),
    Function("erf", 1, _erf, _unary(lambda x: Mul(_c(_SQRT_2_OVER_PI), _f("exp", Neg(_sq(x))))), "error function"),
    # piecewise
    Function("sign", 1, np.sign, _zero, "-1, 0 or 1 (NaN stays NaN)"),
    Function("floor", 1, np.floor, _zero, "round down"),
    Function("ceil", 1, np.ceil, _zero, "round up"),
    Function("round", 1, np.round, _zero, "round half to even, as NumPy"),
    Function("trunc", 1, np.trunc, _zero, "round toward 0"),
    Function("heaviside", 2, np.heaviside, _heaviside_rule, "0 below 0, h at 0, 1 above: heaviside(x, h)"),
    Function("mod", 2, np.mod, _mod_rule, "x mod m with the sign of m, as NumPy's mod"),
    Function("max", 2, np.maximum, _max_rule, "the larger (NaN wins, as np.maximum)"),
    Function("min", 2, np.minimum, _min_rule, "the smaller (NaN wins, as np.minimum)"),
]

FUNCTIONS: dict = {f.name: f for f in _TABLE}


def maps_zero_to_zero(call: Call) -> bool:
    """True when ``call`` is 0 wherever its tensor arguments are all 0 (literal
    arguments taken as written): then it is absent where they all are, and a loop
    over a sparse argument may skip what is not stored."""
    values = [a.value if isinstance(a, Literal) else 0.0 for a in call.args]
    return FUNCTIONS[call.func].scalar(*values) == 0.0


def derivative(call: Call, k: int):
    """∂call/∂(its k-th argument), an index-notation expression."""
    return FUNCTIONS[call.func].derivative(call.args, k)


def densifying_calls(e) -> list:
    """``(call, access)`` pairs where a call that is not 0 at 0 takes a sparsely
    stored ``access`` and only sums, differences and other calls lie between it and
    the statement's root: nothing multiplies the call's value away where the access
    stores nothing, so every coordinate of its loops is visited."""
    found = []

    def walk(x):
        if isinstance(x, Call) and not maps_zero_to_zero(x):
            for acc in accesses(x):
                fmt = acc.tensor.format
                if fmt is not None and not fmt.is_dense:
                    found.append((x, acc))
            return
        if isinstance(x, (Add, Sub, Neg, Call, Sum)):
            for c in children(x):
                walk(c)
    walk(e)
    return found
