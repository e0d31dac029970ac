"""Small constructors the lowerer and the level kinds share when they build IR."""
from __future__ import annotations

from . import nodes as n
from .types import I64


def as_i64(e):
    """``e`` as an i64 (positions and coordinates are computed in int64)."""
    return n.Cast(e, I64) if e.type != I64 else e


def clamp_coordinate(c, size):
    """``c`` kept within ``0 .. size-1`` (0 when ``size`` is 0): a coordinate read from
    an operand's ``crd`` and used to address other arrays can then never reach
    outside them, even if the caller changed the operand's indices after it was
    validated (a SciPy matrix mutated in place). One unsigned compare and a
    select per entry (the bound is loop-invariant); a coordinate of a valid
    operand passes unchanged."""
    last = n.Binary("max", n.Binary("-", size, n.i64(1)), n.i64(0))
    return n.Call("clamp_index", (c, last), I64)


def add(a, b):
    return n.Binary("+", a, b)


def sub(a, b):
    return n.Binary("-", a, b)


def mul(a, b):
    return n.Binary("*", a, b)
