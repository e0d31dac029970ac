"""Questions about a kernel's loops that the lowerer, the backends and the default
GPU schedule all ask of the same IR."""
from __future__ import annotations

from . import nodes as n

_EXPRESSIONS = (n.Var, n.Const, n.Load, n.Binary, n.Unary, n.Call, n.Select, n.Cast)


def first_parallel(node) -> list:
    """The outermost parallel loops under ``node`` (not those nested in another)."""
    out = []

    def visit(x):
        if isinstance(x, n.For) and x.parallel:
            out.append(x)
            return
        for c in n.children(x):
            if not isinstance(c, _EXPRESSIONS):
                visit(c)
    visit(node)
    return out
