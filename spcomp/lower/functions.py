"""How each language function becomes kernel IR.

A function is either one math intrinsic of the IR (``n.INTRINSICS``: the C
library's functions, which both backends call by name) or a short formula of
intrinsics, comparisons and selects written here. The formulas follow the NumPy
meanings in :mod:`spcomp.notation.functions` down to NaN and ±inf: ``relu`` keeps
a NaN (``np.maximum`` does), ``round`` rounds half to even (``rint``), ``mod``
takes the divisor's sign.
"""
from __future__ import annotations

from ..errors import UnsupportedError
from ..ir import nodes as n

# language name -> IR intrinsic of the same meaning
_INTRINSIC = {name: name for name in (
    "exp", "expm1", "log", "log1p", "log2", "log10", "sqrt", "cbrt", "abs", "erf",
    "sin", "cos", "tan", "asin", "acos", "atan", "sinh", "cosh", "tanh", "asinh", "acosh", "atanh",
    "floor", "ceil", "trunc", "pow", "atan2")}
_INTRINSIC["round"] = "rint"


def lower_call(func: str, args: list, compute) -> object:
    """The IR expression of ``func(*args)``; ``args`` are IR expressions of type ``compute``."""
    def c(v):
        return n.const(v, compute)

    def call(name, *xs):
        return n.Call(name, tuple(xs), compute)

    def select(cond, a, b):
        return n.Select(cond, a, b)

    def cmp(op, a, b):
        return n.Binary(op, a, b)

    def op(o, a, b):
        return n.Binary(o, a, b)

    if func in _INTRINSIC:
        return call(_INTRINSIC[func], *args)
    x = args[0]
    if func == "relu":
        return select(cmp("<", x, c(0)), c(0), x)
    if func == "gelu":
        return op("*", op("*", c(0.5), x),
                  op("+", c(1), call("erf", op("*", x, c(0.7071067811865476)))))
    if func == "silu":
        return op("/", x, op("+", c(1), call("exp", n.Unary("-", x))))
    if func == "sigmoid":
        return op("/", c(1), op("+", c(1), call("exp", n.Unary("-", x))))
    if func == "softplus":
        return op("+", call("log1p", call("exp", n.Unary("-", call("abs", x)))),
                  select(cmp("<", x, c(0)), c(0), x))
    if func == "square":
        return op("*", x, x)
    if func == "cube":
        return op("*", op("*", x, x), x)
    if func == "sign":  # 0 and NaN are their own sign
        return select(cmp(">", x, c(0)), c(1), select(cmp("<", x, c(0)), c(-1), x))
    if func == "heaviside":
        h = args[1]
        return select(cmp("<", x, c(0)), c(0),
                      select(cmp(">", x, c(0)), c(1), select(cmp("==", x, x), h, x)))
    if func == "mod":
        m = args[1]
        r = op("%", x, m)  # C fmod: the dividend's sign
        wrong_sign = n.Binary("&&", cmp("!=", r, c(0)), n.Binary("!=", cmp("<", r, c(0)), cmp("<", m, c(0))))
        return select(wrong_sign, op("+", r, m), r)
    if func in ("max", "min"):
        a, b = args
        # NaN wins either way round, as np.maximum / np.minimum
        better = cmp("<" if func == "max" else ">", a, b)
        return select(cmp("!=", a, a), a, select(n.Binary("||", better, cmp("!=", b, b)), b, a))
    raise UnsupportedError(f"internal: function {func!r} has no lowering (spcomp/lower/functions.py)")
