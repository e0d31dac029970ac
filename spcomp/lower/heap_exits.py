"""Early exits of a joined function free the function's own heap arrays.

A fused run's function (``lower/fuse.py``) holds heap arrays that no statement
hands back: a statement's workspaces (SpGEMM's dense row and its lists), row
workspaces, transposed copies. Each statement's lowering frees them at its normal
end, but an allocation that fails later, a failed ``realloc`` of a growing output,
an interrupt poll or an error return leaves them behind unless its ``free`` list
(``Allocate.free``, ``Reallocate.free``, ``PollInterrupt.free``) or the return's
block names them. :func:`free_on_early_exits` adds every such array live at each
exit, by a walk in program order. It errs on the side of a leak, never a double
free: an array freed anywhere inside a loop or branch counts as freed after it,
and arrays stored anywhere (handed to the runtime through an output slot, which
the runtime frees) are not the function's own.
"""
from __future__ import annotations

import dataclasses

from ..ir import nodes as n


def free_on_early_exits(fn: n.Function) -> n.Function:
    """``fn`` with its own heap arrays freed at every exit before its normal end."""
    stored = {x.value.name for x in n.walk(fn.body) if isinstance(x, n.Store) and isinstance(x.value, n.Var)}
    freed = {x.var.name for x in n.walk(fn.body) if isinstance(x, n.Free)}
    own = {x.var.name for x in n.walk(fn.body)
           if isinstance(x, n.Allocate) and x.var.name in freed and x.var.name not in stored}
    body, _live = _block(fn.body, [], own)
    return dataclasses.replace(fn, body=body)


def _with_free(s, live: list):
    """``s`` (Allocate, Reallocate or PollInterrupt) also freeing ``live``, itself aside."""
    names = {v.name for v in s.free} | ({s.var.name} if hasattr(s, "var") else set())
    extra = tuple(v for v in live if v.name not in names)
    return dataclasses.replace(s, free=tuple(s.free) + extra) if extra else s


def _block(block: n.Block, live: list, own: set):
    out = []
    live = list(live)
    for s in block.body:
        s, live = _stmt(s, live, own)
        out.append(s)
    return n.Block(tuple(out)), live


def _freed_in(node) -> set:
    return {x.var.name for x in n.walk(node) if isinstance(x, n.Free)}


def _stmt(s, live: list, own: set):
    if isinstance(s, n.Block):
        return _block(s, live, own)
    if isinstance(s, (n.For, n.While)):
        body, _ = _block(s.body, live, own)
        gone = _freed_in(s.body)
        return dataclasses.replace(s, body=body), [v for v in live if v.name not in gone]
    if isinstance(s, n.If):
        then, _ = _block(s.then, live, own)
        other = _block(s.otherwise, live, own)[0] if s.otherwise is not None else None
        gone = _freed_in(s)
        return dataclasses.replace(s, then=then, otherwise=other), [v for v in live if v.name not in gone]
    if isinstance(s, n.Allocate):
        s = _with_free(s, live)
        return s, live + [s.var] if s.var.name in own else live
    if isinstance(s, (n.Reallocate, n.PollInterrupt)):
        return _with_free(s, live), live
    if isinstance(s, n.Free):
        return s, [v for v in live if v.name != s.var.name]
    if isinstance(s, n.Return) and s.status != n.STATUS_OK and live:
        return n.Block(tuple(n.Free(v) for v in live) + (s,)), live
    return s, live
