"""Rewrites of index notation before loop ordering.

* :func:`lift_sums` moves sums up through products (Σ_j a·b = a·Σ_j b read right
  to left), so a product term is ``Σ_{r...} (f1 * f2 * ...)``.
* :func:`push_sums` then pushes a reduction down onto the factors that use it
  when the other factors use an index those factors do not: that is the
  precompute/hoisting of DESIGN §5, which makes
  ``O[t,d] = H[t,n]*X[t,k]*Wu[n,k]*Wd[n,d]`` cost nnz(H)·(K+D), not nnz(H)·K·D.
* :func:`specialize` replaces absent sparse operands by zero and simplifies,
  which is how one lattice point's sub-expression is formed.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

from ..notation import (FUNCTIONS, Access, maps_zero_to_zero, Add, Call, Div, Literal, Mul, Neg,
                        Sub, Sum, chains, children, free_indices)

ZERO = Literal(0.0)


@dataclass(frozen=True)
class ComputedZero(Literal):
    """The value of a sum over an empty segment: a stored 0 (reference.py), unlike
    ZERO, an absent operand. The two differ only as a divisor: ``d / ZERO`` is
    absent (division of stored values), ``d / Σ_j A[i,j]`` over an empty row is
    ``d / 0``, inf. Everywhere else simplify treats it as ZERO."""
    value: float = 0.0


COMPUTED_ZERO = ComputedZero()


def _zero(e) -> bool:
    return e == ZERO or isinstance(e, ComputedZero)


# ------------------------------------------------------------------ walking

def rebuild(e, f):
    """``e`` with ``f`` applied to each direct child (leaves come back as they are)."""
    if isinstance(e, (Access, Literal)):
        return e
    if isinstance(e, Sum):
        return Sum(e.index, f(e.body))
    if isinstance(e, Neg):
        return Neg(f(e.operand))
    if isinstance(e, (Add, Sub, Mul, Div)):
        return type(e)(f(e.lhs), f(e.rhs))
    if isinstance(e, Call):
        return Call(e.func, tuple(f(a) for a in e.args))
    raise TypeError(f"not an index-notation expression: {e!r}")


# ----------------------------------------------------------------- products

def factors(e) -> list:
    """The factors of a product tree (Mul/Neg flattened; Neg becomes a -1 literal)."""
    if isinstance(e, Mul):
        return factors(e.lhs) + factors(e.rhs)
    if isinstance(e, Neg):
        return [Literal(-1.0)] + factors(e.operand)
    return [e]


def product(fs: list):
    """Rebuild a product from factors (literals folded, first): left associated, or
    balanced from ``chains.BALANCE_FROM`` factors."""
    coeff = 1.0
    rest = []
    for f in fs:
        if isinstance(f, Literal):
            coeff *= f.value
        else:
            rest.append(f)
    if coeff == 0.0:
        return ZERO
    if not rest:
        return Literal(coeff)
    out = chains.product(rest)  # balanced when long: see notation/chains.py
    if coeff == -1.0:
        return Neg(out)
    if coeff != 1.0:
        return Mul(Literal(coeff), out)
    return out


def wrap_sums(indices, body):
    for i in reversed(list(indices)):
        body = Sum(i, body)
    return body


def split_sums(e):
    """``Σ_a Σ_b body`` -> ([a, b], body)."""
    idx = []
    while isinstance(e, Sum):
        idx.append(e.index)
        e = e.body
    return idx, e


# -------------------------------------------------------------------- lift

def lift_sums(e):
    """Move sums up through Mul, Neg and the numerator of a division by a literal.

    Not through the numerator of a division by a tensor: ``(Σ_j a) / z`` and
    ``Σ_j (a / z)`` differ where ``z`` is 0 (``-1.25 / 0`` is ``-inf``, while
    ``-3/0 + 2/0 - 0.25/0`` is NaN), so the sum stays where the expression put it."""
    if isinstance(e, (Access, Literal)):
        return e
    if isinstance(e, Sum):
        return Sum(e.index, lift_sums(e.body))
    if isinstance(e, Neg):
        inner = lift_sums(e.operand)
        idx, body = split_sums(inner)
        return wrap_sums(idx, Neg(body)) if idx else Neg(inner)
    if isinstance(e, Mul):
        li, lb = split_sums(lift_sums(e.lhs))
        ri, rb = split_sums(lift_sums(e.rhs))
        return wrap_sums(li + ri, Mul(lb, rb))
    if isinstance(e, Div):
        if not isinstance(e.rhs, Literal):
            return Div(lift_sums(e.lhs), lift_sums(e.rhs))
        ni, nb = split_sums(lift_sums(e.lhs))
        return wrap_sums(ni, Div(nb, e.rhs))
    if isinstance(e, (Add, Sub)):
        return type(e)(lift_sums(e.lhs), lift_sums(e.rhs))
    if isinstance(e, Call):
        return Call(e.func, tuple(lift_sums(a) for a in e.args))
    raise TypeError(e)


# -------------------------------------------------------------------- push

def _indices_of(fs) -> set:
    out = set()
    for f in fs:
        out |= free_indices(f)
    return out


def push_sums(e, force=(), allow=True):
    """Push reductions onto the factors that use them where that saves work.

    A reduction over ``r`` of a product is split as ``rest * Σ_r (users of r)``
    when ``rest`` uses an index that the users of ``r`` do not (the temporary is
    then computed once per combination of fewer indices). ``force`` names
    indices to push whenever possible (``Schedule.precompute``).
    """
    if isinstance(e, (Access, Literal)):
        return e
    if isinstance(e, Sum):
        idx, body = split_sums(e)
        body = push_sums(body, force, allow)
        if not allow or not isinstance(body, (Mul, Neg)):
            return wrap_sums(idx, body)
        fs = factors(body)
        remaining = list(idx)
        changed = True
        while changed:
            changed = False
            for r in list(remaining):
                users = [f for f in fs if r in free_indices(f)]
                rest = [f for f in fs if r not in free_indices(f)]
                if not users or not [f for f in rest if not isinstance(f, Literal)]:
                    continue
                users_idx = _indices_of(users)
                gain = not (_indices_of(rest) <= users_idx)
                if not gain and r.name not in force:
                    continue
                # reductions used only by `users` move inside with r
                inner = [r] + [s for s in remaining if s != r and s in users_idx
                               and s not in _indices_of(rest)]
                nested = wrap_sums(inner, push_sums(product(users), force, allow))
                fs = rest + [nested]
                remaining = [s for s in remaining if s not in inner]
                changed = True
                break
        return wrap_sums(remaining, product(fs))
    return rebuild(e, lambda c: push_sums(c, force, allow))


# -------------------------------------------------------------- specialize

def apply_function(func: str, args: list) -> float:
    """Evaluate a language function on Python floats (constant folding): its NumPy
    meaning, so a folded constant is what the reference computes."""
    return FUNCTIONS[func].scalar(*args)


def simplify(e):
    """Fold zeros and constants: 0*x = 0, 0+x = x, relu(0) = 0, exp(0) = 1 ..."""
    if isinstance(e, (Access, Literal)):
        return e
    if isinstance(e, Sum):
        b = simplify(e.body)
        return COMPUTED_ZERO if _zero(b) else Sum(e.index, b)
    if isinstance(e, Neg):
        o = simplify(e.operand)
        if isinstance(o, Literal):
            return Literal(-o.value) if o.value != 0 else ZERO
        return Neg(o)
    if isinstance(e, (Add, Sub, Mul, Div)):
        a, b = simplify(e.lhs), simplify(e.rhs)
        if isinstance(e, Mul):
            if _zero(a) or _zero(b):
                return ZERO
            if isinstance(a, Literal) and isinstance(b, Literal):
                return Literal(a.value * b.value)
            return Mul(a, b)
        if isinstance(e, Div):
            # division is defined on stored values only: an absent operand gives 0, but
            # an empty sum is a stored 0 (ComputedZero): d / 0 is inf
            if _zero(a) or b == ZERO:
                return ZERO
            if isinstance(a, Literal) and isinstance(b, Literal):
                return Literal(_divide(a.value, b.value))
            return Div(a, b)
        if isinstance(e, Add):
            if _zero(a):
                return b
            if _zero(b):
                return a
            if isinstance(a, Literal) and isinstance(b, Literal):
                return Literal(a.value + b.value)
            return Add(a, b)
        if _zero(b):
            return a
        if _zero(a):
            return simplify(Neg(b))
        if isinstance(a, Literal) and isinstance(b, Literal):
            return Literal(a.value - b.value)
        return Sub(a, b)
    if isinstance(e, Call):
        args = tuple(simplify(a) for a in e.args)
        if all(isinstance(a, Literal) for a in args):
            return Literal(apply_function(e.func, [a.value for a in args]))
        return Call(e.func, args)
    raise TypeError(e)


def specialize(e, absent: set):
    """``e`` with every access in ``absent`` replaced by zero, simplified (ZERO when
    nothing is left to compute)."""
    def go(x):
        if isinstance(x, Access):
            return ZERO if x in absent else x
        return rebuild(x, go)
    out = simplify(go(e))
    return ZERO if isinstance(out, ComputedZero) else out


def _divide(a: float, b: float) -> float:
    """IEEE division of two constants (Python raises on a zero divisor)."""
    if b != 0:
        return a / b
    return math.nan if a == 0 or math.isnan(a) else math.copysign(math.inf, a) * math.copysign(1.0, b)


def zero_preserving(call: Call) -> bool:
    """Whether ``call`` is absent where its tensor arguments all are (see
    :func:`spcomp.notation.maps_zero_to_zero`)."""
    return maps_zero_to_zero(call)


def nested_sums(e) -> list:
    """Sum nodes in ``e`` that are not inside another Sum (outermost first)."""
    if isinstance(e, Sum):
        return [e]
    out = []
    for c in children(e):
        out.extend(nested_sums(c))
    return out


def replace(e, old, new):
    """``e`` with every occurrence of the node ``old`` replaced by ``new``."""
    if e == old:
        return new
    return rebuild(e, lambda c: replace(c, old, new))
