"""The compound float intrinsics on the CPU: formulas over LLVM values.

``expand(b, libm, name, xs, lt)`` builds ``name(*xs)`` from values already
computed, so each argument is evaluated once however often the formula uses it.
``libm(name, arity)`` returns the callee of a math function for the value's type
(LLVM's intrinsic or the C library's symbol). The meanings are NumPy's
(spcomp/notation/functions.py), NaN included; no fast-math flags, so they hold.
"""
from __future__ import annotations

from llvmlite import ir


#: erf(x)/x ~ P(x^2)/Q(x^2) on |x| <= 4, lowest power first: a rational least-squares fit,
#: Lawson-reweighted toward minimax (relative error 2.0e-9 in double). Evaluated in double
#: and rounded to float32 it is within 0.534 ulp of erf over every float32 in [0, 4.5)
#: sampled at 1e-6 and at 1e-30..1 (98 % correctly rounded; tests/test_functions.py).
ERF32_P = (1.1283791693797651, 0.18520297386151346, 0.05431686406837586, 0.0038495994690051294,
           0.0003796079885425919, 4.684760282909564e-06, -1.3202124819197517e-08)
ERF32_Q = (1.0, 0.4974652759770126, 0.11395830091377883, 0.015462062667963341, 0.0013075662215892797,
           6.311041317995264e-05)


def erf(b: ir.IRBuilder, libm, x: ir.Value, lt) -> ir.Value:
    """erf(x): the C library's for double; for float32 the rational form above in double.

    glibc's ``erff`` (2.36 here) costs ~41 ns a value and is a call, so no loop that
    uses it vectorises: a float32 GELU over a 64 x 1536 FFN activation took 4.6 ms.
    The rational form is straight-line arithmetic (the loop vectorises) and as exact
    as float32 can hold. Past |x| = 4 erf rounds to +-1 in float32, so x is clamped
    there (a NaN passes the clamp and stays NaN; +-0 keeps its sign)."""
    if not isinstance(lt, ir.FloatType):
        return b.call(libm("erf", 1), [x], name="erf")
    v, d = _double(b, x)
    v = _clamp(b, v, d(-4), d(4))
    t = b.fmul(v, v)
    return b.fptrunc(b.fmul(v, b.fdiv(_horner(b, ERF32_P, t, d), _horner(b, ERF32_Q, t, d))), lt, name="erf")


#: e^r ~ sum EXP32_C[k] r^k on |r| <= ln2/2 (relative error 4.0e-11, a Lawson-reweighted
#: least-squares fit): with e^x = 2^k e^r it gives float32 exp within 0.5 ulp + rounding.
EXP32_C = (0.9999999999617003, 1.000000000243099, 0.5000000104504227, 0.1666666512574618,
           0.041666225505675766, 0.00833356120782471, 0.001394817845960573, 0.00019775094018456194)


def _double(b: ir.IRBuilder, x: ir.Value):
    """``x`` widened to double, and a maker of double constants."""
    dt = ir.DoubleType()
    return b.fpext(x, dt), (lambda v: ir.Constant(dt, float(v)))


def _clamp(b: ir.IRBuilder, v: ir.Value, lo: ir.Value, hi: ir.Value) -> ir.Value:
    """``v`` within [lo, hi]; a NaN passes through (ordered compares are false for it)."""
    return b.select(b.fcmp_ordered(">", v, hi), hi, b.select(b.fcmp_ordered("<", v, lo), lo, v))


def _double_intrinsic(b: ir.IRBuilder, name: str, arity: int) -> ir.Function:
    """The module's declaration of an LLVM double intrinsic, made on first use."""
    found = b.module.globals.get(name)
    if found is None:
        dt = ir.DoubleType()
        found = ir.Function(b.module, ir.FunctionType(dt, [dt] * arity), name)
    return found


def _horner(b: ir.IRBuilder, coefficients, t: ir.Value, d) -> ir.Value:
    acc = d(coefficients[-1])
    for k in reversed(coefficients[:-1]):
        acc = b.fadd(b.fmul(acc, t), d(k))
    return acc


def _exp_double(b: ir.IRBuilder, v: ir.Value, d) -> ir.Value:
    """e^v in double to ~4e-11 relative (float32's needs), for v finite in [-104, 89]:
    2^k e^r with k = rint(v / ln 2), |r| <= ln2/2."""
    k = b.call(_double_intrinsic(b, "llvm.rint.f64", 1), [b.fmul(v, d(1.4426950408889634))])
    r = b.fsub(v, b.fmul(k, d(0.6931471805599453)))
    # 2^k as a double: k + 1023 in the exponent field
    bits = b.shl(b.add(b.fptosi(k, ir.IntType(64)), ir.Constant(ir.IntType(64), 1023)),
                 ir.Constant(ir.IntType(64), 52))
    return b.fmul(_horner(b, EXP32_C, r, d), b.bitcast(bits, ir.DoubleType()))


def exp(b: ir.IRBuilder, libm, x: ir.Value, lt) -> ir.Value:
    """e^x: LLVM's intrinsic (the C library's ``exp``) for double; for float32 a
    vectorisable form in double (:func:`_exp_double`).

    ``expf`` is a call (~4.4 ns a value here) that keeps every loop using it --
    sigmoid, silu, softplus, the gated FFN's activations -- scalar. x is clamped to
    [-104, 89], where float32's e^x is already 0 or inf; a NaN is kept by a select
    around the arithmetic (which sees 0 in its place)."""
    if not isinstance(lt, ir.FloatType):
        return b.call(libm("exp", 1), [x], name="exp")
    v, d = _double(b, x)
    is_nan = b.fcmp_unordered("uno", v, v)
    v = b.select(is_nan, d(0), _clamp(b, v, d(-104), d(89)))
    return b.select(is_nan, x, b.fptrunc(_exp_double(b, v, d), lt), name="exp")


def tanh(b: ir.IRBuilder, libm, x: ir.Value, lt) -> ir.Value:
    """tanh(x): the C library's for double; for float32 ``1 - 2/(e^2|x| + 1)`` in double
    with x's sign, and the series ``x - x^3/3 + 2x^5/15 - 17x^7/315`` below |x| = 0.05
    (where the first form cancels). glibc 2.36's ``tanhf`` costs ~60 ns a value here.
    |x| is clamped at 20 (tanh is 1 in float32 well before); NaN and -0 are kept."""
    if not isinstance(lt, ir.FloatType):
        return b.call(libm("tanh", 1), [x], name="tanh")
    v, d = _double(b, x)
    is_nan = b.fcmp_unordered("uno", v, v)
    a = b.call(_double_intrinsic(b, "llvm.fabs.f64", 1), [b.select(is_nan, d(0), v)])
    a = b.select(b.fcmp_ordered(">", a, d(20)), d(20), a)
    far = b.fsub(d(1), b.fdiv(d(2), b.fadd(_exp_double(b, b.fmul(a, d(2)), d), d(1))))
    t = b.fmul(a, a)
    near = b.fmul(a, _horner(b, (1.0, -1 / 3, 2 / 15, -17 / 315), t, d))
    magnitude = b.select(b.fcmp_ordered("<", a, d(0.05)), near, far)
    y = b.fptrunc(b.call(_double_intrinsic(b, "llvm.copysign.f64", 2), [magnitude, v]), lt)
    return b.select(is_nan, x, y, name="tanh")


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
        inner = erf(b, libm, b.fmul(x, c(0.7071067811865476)), lt)
        return b.fmul(b.fmul(c(0.5), x), b.fadd(c(1), inner), name="gelu")
    if name == "sigmoid":
        return b.fdiv(c(1), b.fadd(c(1), exp(b, libm, b.fneg(x), lt)), name="sigmoid")
    if name == "silu":
        return b.fdiv(x, b.fadd(c(1), exp(b, libm, b.fneg(x), lt)), name="silu")
    if name == "softplus":  # log(1 + e^x) without overflow: log1p(e^-|x|) + max(x, 0)
        tail = call("log1p", exp(b, libm, b.fneg(call("abs", x)), lt))
        return b.fadd(tail, b.select(lt_(x, c(0)), c(0), x), name="softplus")
    if name == "square":
        return b.fmul(x, x, name="square")
    if name == "cube":
        return b.fmul(b.fmul(x, x), x, name="cube")
    raise KeyError(name)
