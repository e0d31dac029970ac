"""Skip blocks of zeros in a dense loop that keeps only its nonzero values.

A sparse output computed from dense operands (``H[t,n] = relu(At[n,t])``, the
ReLU of an FFN's gate that leaves 0.5 % of the values) is a dense loop whose
body computes a value and appends it when it is not zero::

    for t in 0..N_t:
        value = relu(At[n*N_t + t])
        if value != 0: <append>

The branch keeps the loop scalar, ~2 cycles a value, though almost every value is
dropped. Cut into blocks of :data:`BLOCK`, each block first asks whether any of
its values is nonzero -- a branch-free OR over the same expression, which LLVM
vectorises -- and runs the original body only where one is::

    for b in 0..(N_t + 15) / 16:
        lo = b*16; hi = min(lo + 16, N_t); hit = 0
        for t in lo..hi: hit |= (relu(At[n*N_t + t]) != 0)       # vectorised
        if hit != 0:
            for t in lo..hi: <the original body>

The values are computed twice in a block that holds a nonzero, so the pass pays
where at most a few blocks do; it changes no result (the second pass is the
original loop). It applies only to an innermost, sequential loop whose body is
pure declarations followed by that one test: loads from arrays the loop does
not write, arithmetic and math intrinsics, nothing that stores or allocates.
"""
from __future__ import annotations

import dataclasses

from ..ir import nodes as n
from ..ir.types import I32, I64
from .prefetch import substitute

BLOCK = 16

_PURE = (n.Var, n.Const, n.Load, n.Binary, n.Unary, n.Call, n.Select, n.Cast)


def skip_zero_blocks(stmts, fresh) -> list:
    """``stmts`` with every loop of the shape above cut into blocks that skip zeros."""
    def walk(stmts):
        out = []
        for s in stmts:
            s = n.map_blocks(s, walk)
            if isinstance(s, n.For):
                out += _blocked(s, fresh) or [s]
            else:
                out.append(s)
        return out
    return walk(stmts)


def _blocked(loop: n.For, fresh) -> list | None:
    """The statements replacing ``loop``, or None when it has not the shape."""
    if loop.parallel is not None:
        return None
    test = _shape(loop)
    if test is None:
        return None
    decls, value = test
    t = loop.var
    blocks, b, lo, hi = (n.Var(fresh(f"{t.name}_{part}"), I64) for part in ("blocks", "block", "lo", "hi"))
    hit = n.Var(fresh("hit"), I32)
    extent = loop.end if _is_zero(loop.start) else n.Binary("-", loop.end, loop.start)
    start = n.Binary("*", b, n.i64(BLOCK))
    if not _is_zero(loop.start):
        start = n.Binary("+", loop.start, start)
    # the scan: fresh names for the loop variable and the declarations (their twins
    # in the original body stay as they are)
    scan_var = n.Var(fresh(t.name), t.type)
    mapping = {t: scan_var}
    scan = []
    for d in decls:
        twin = n.Var(fresh(d.var.name), d.var.type)
        scan.append(n.Declare(twin, substitute(d.init, mapping)))
        mapping[d.var] = twin
    nonzero = n.Cast(n.Binary("!=", mapping.get(value, value), n.const(0, value.type)), I32)
    scan.append(n.Assign(hit, n.Binary("|", hit, nonzero)))
    return [
        n.Comment(f"blocks of {BLOCK} {t.name} whose values are all zero are skipped (the scan vectorises)"),
        n.Declare(blocks, n.Binary("/", n.Binary("+", extent, n.i64(BLOCK - 1)), n.i64(BLOCK))),
        n.For(b, n.i64(0), blocks, n.block(
            n.Declare(lo, start),
            n.Declare(hi, n.Binary("min", n.Binary("+", lo, n.i64(BLOCK)), loop.end)),
            n.Declare(hit, n.Const(0, I32)),
            n.For(scan_var, lo, hi, n.Block(tuple(scan))),
            n.If(n.Binary("!=", hit, n.Const(0, I32)), n.block(dataclasses.replace(loop, start=lo, end=hi))),
        )),
    ]


def _shape(loop: n.For):
    """``(declarations, tested variable)`` when ``loop``'s body is pure declarations
    then ``if (v != 0) {...}`` on one of them, and nothing else; else None."""
    body = [s for s in loop.body.body if not isinstance(s, n.Comment)]
    if len(body) < 2 or not isinstance(body[-1], n.If) or body[-1].otherwise is not None:
        return None
    test = body[-1].cond
    decls = body[:-1]
    if not (isinstance(test, n.Binary) and test.op == "!=" and isinstance(test.lhs, n.Var)
            and isinstance(test.rhs, n.Const) and test.rhs.value == 0):
        return None
    if not all(isinstance(d, n.Declare) and d.init is not None for d in decls):
        return None
    if test.lhs not in {d.var for d in decls} or not test.lhs.type.is_float:
        return None
    if any(isinstance(x, (n.For, n.While)) for x in n.walk(loop.body)):
        return None  # an innermost loop only
    written = {x.array for x in n.walk(loop.body) if isinstance(x, (n.Store, n.AtomicAdd))}
    for d in decls:
        for x in n.walk(d.init):
            if not isinstance(x, _PURE) or (isinstance(x, n.Load) and x.array in written):
                return None
    return decls, test.lhs


def _is_zero(e) -> bool:
    return isinstance(e, n.Const) and e.value == 0
