"""Small constructors the lowerer and the level kinds share when they build IR."""
from __future__ import annotations

from . import nodes as n
from .types import I64


def as_i64(e):
    """``e`` as an i64 (positions and coordinates are computed in int64)."""
    return n.Cast(e, I64) if e.type != I64 else e


def add(a, b):
    return n.Binary("+", a, b)


def sub(a, b):
    return n.Binary("-", a, b)


def mul(a, b):
    return n.Binary("*", a, b)
