"""The compound float intrinsics on the CPU: formulas over LLVM values.

``expand(b, libm, name, xs, lt)`` builds ``name(*xs)`` from values already
computed, so each argument is evaluated once however often the formula uses it.
``libm(name, arity)`` returns the callee of a math function for the value's type
(LLVM's intrinsic or the C library's symbol). The meanings are NumPy's
(spcomp/notation/functions.py), NaN included; no fast-math flags, so they hold.
"""
from __future__ import annotations

from llvmlite import ir


def expand(b: ir.IRBuilder, libm, name: str, xs: list, lt) -> ir.Value:
    def c(v):
        return ir.Constant(lt, float(v))

    def lt_(a, y):
        return b.fcmp_ordered("<", a, y)

    def gt_(a, y):
        return b.fcmp_ordered(">", a, y)

    def nan(a):
        return b.fcmp_unordered("uno", a, a)

    def call(fn, *args):
        return b.call(libm(fn, len(args)), list(args))

    x = xs[0]
    if name == "relu":  # a NaN stays NaN
        return b.select(lt_(x, c(0)), c(0), x, name="relu")
    if name in ("maximum", "minimum"):  # NaN wins, either side
        y = xs[1]
        take_y = b.or_(lt_(x, y) if name == "maximum" else gt_(x, y), nan(y))
        return b.select(nan(x), x, b.select(take_y, y, x), name=name)
    if name == "sign":  # 0, -0 and NaN are their own sign
        return b.select(gt_(x, c(0)), c(1), b.select(lt_(x, c(0)), c(-1), x), name="sign")
    if name == "heaviside":
        h = xs[1]
        at_zero = b.select(nan(x), x, h)
        return b.select(lt_(x, c(0)), c(0), b.select(gt_(x, c(0)), c(1), at_zero), name="heaviside")
    if name == "mod":  # C's fmod has the dividend's sign; NumPy's mod the divisor's
        m = xs[1]
        r = b.frem(x, m)
        wrong = b.and_(b.fcmp_ordered("!=", r, c(0)), b.xor(lt_(r, c(0)), lt_(m, c(0))))
        return b.select(wrong, b.fadd(r, m), r, name="mod")
    if name == "gelu":
        inner = call("erf", b.fmul(x, c(0.7071067811865476)))
        return b.fmul(b.fmul(c(0.5), x), b.fadd(c(1), inner), name="gelu")
    if name == "sigmoid":
        return b.fdiv(c(1), b.fadd(c(1), call("exp", b.fneg(x))), name="sigmoid")
    if name == "silu":
        return b.fdiv(x, b.fadd(c(1), call("exp", b.fneg(x))), name="silu")
    if name == "softplus":  # log(1 + e^x) without overflow: log1p(e^-|x|) + max(x, 0)
        tail = call("log1p", call("exp", b.fneg(call("abs", x))))
        return b.fadd(tail, b.select(lt_(x, c(0)), c(0), x), name="softplus")
    if name == "square":
        return b.fmul(x, x, name="square")
    if name == "cube":
        return b.fmul(b.fmul(x, x), x, name="cube")
    raise KeyError(name)
