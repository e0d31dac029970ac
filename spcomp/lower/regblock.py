"""Register blocking: keep a dense output row in registers across a sparse loop.

SpMM's nest, ``for p in A's row: for k in 0..N: Y[i*N + k] += A[p] * X[j*N + k]``,
loads and stores the whole row of ``Y`` once per nonzero: ``N`` is known only at
run time, so LLVM cannot keep the row in registers, and each nonzero waits on the
store-to-load round trip of the one before. Rewritten as

    for kb in blocks of B:            # B = 32 float64 / 64 float32: 256 bytes
        for p in A's row:             # the same loop, re-walked per block (it is short)
            for k in kb..kb+B:        # a constant trip count: unrolled and vectorised
                Y[i*N + k] += A[p] * X[j*N + k]
    for p in A's row:                 # the last N mod B columns, as before
        for k in (N/B)*B..N: ...

the block's addresses no longer depend on ``p``, so LLVM promotes the row block to
registers for the whole ``p`` loop (float64 SpMM 20000² 0.1 %, K = 64, one thread
of an AVX-512 Xeon: 12.6 -> 10.4 ms; docs/performance.md). Given the last valid
position of the sparse level, the blocked loop also prefetches the rows a few
nonzeros ahead (:func:`_prefetches`; 6-8 % more on the same matrix).

The rewrite applies to a loop ``L`` (not parallel) whose body is declarations of
its own variables followed by one loop ``K`` whose body is a single accumulation
``Y[idx] = Y[idx] + v``, where ``K``'s bounds and ``idx`` (apart from ``K``'s
variable, which it must use) do not depend on ``L``, and nothing in ``L`` reads
``Y`` elsewhere. With ``idx`` naming a different element for each ``k`` (a row of
``Y``: the lowerer's dense sinks), each element receives the same terms in the
same order as before, so the result is bitwise unchanged.
"""
from __future__ import annotations

import dataclasses

from ..ir import nodes as n
from ..ir.types import I64
from .prefetch import LINE_BYTES, PREFETCH_DISTANCE, look_ahead, substitute, when_large

# bytes of output kept in registers per block: four 512-bit or eight 256-bit vectors,
# which leaves registers free on a 16-register AVX2 machine (512 bytes measured no faster)
BLOCK_BYTES = 256


def block_rows(stmts, fresh, position_ends=None, table_sizes=None) -> list:
    """``stmts`` with every accumulation nest of the shape above register-blocked.
    ``fresh`` makes new variable names (the lowerer's :class:`Names`);
    ``position_ends`` maps a sparse loop's variable to the last valid position of
    the level it walks, which lets the blocked loop prefetch rows ahead (see
    :func:`_prefetches`); ``table_sizes`` (array -> element count) lets those hints
    run only for a table larger than L1, as prefetch.py's do."""
    ends, sizes = position_ends or {}, table_sizes or {}
    out = []
    for s in stmts:
        if isinstance(s, n.For):
            done = _blocked(s, fresh, ends, sizes)
            if done is not None:
                out.extend(done)
                continue
        out.append(n.map_blocks(s, lambda body: block_rows(body, fresh, ends, sizes)))
    return out


def _blocked(outer: n.For, fresh, ends: dict, sizes: dict) -> list | None:
    """The blocked statements replacing ``outer``, or None when it is not the shape."""
    if outer.parallel is not None:
        return None
    body = [s for s in outer.body.body if not isinstance(s, n.Comment)]
    if not body or not isinstance(body[-1], n.For):
        return None
    inner = body[-1]
    prelude = body[:-1]
    if inner.parallel is not None or inner.vectorize or inner.unroll:
        return None
    if not all(isinstance(s, n.Declare) for s in prelude):
        return None
    acc = [s for s in inner.body.body if not isinstance(s, n.Comment)]
    if len(acc) != 1 or not isinstance(acc[0], n.Store):
        return None
    store = acc[0]
    value = store.value
    if not (isinstance(value, n.Binary) and value.op == "+" and isinstance(value.lhs, n.Load)
            and value.lhs.array == store.array and value.lhs.index == store.index):
        return None
    if not isinstance(store.array, n.Var) or not store.value.type.is_float:
        return None
    local = {outer.var} | {s.var for s in prelude}
    if any(n.uses(e, local) for e in (inner.start, inner.end, store.index)):
        return None
    if not n.uses(store.index, {inner.var}):  # one element for every k: a sum, not a row
        return None
    if any(_loads_from(e, store.array) for e in [value.rhs] + [s.init for s in prelude if s.init is not None]):
        return None
    width = BLOCK_BYTES * 8 // store.value.type.bits
    start, end = inner.start, inner.end
    blocks = n.Var(fresh("blocks"), I64)
    block = n.Var(fresh("b"), I64)
    first = n.Var(fresh(inner.var.name + "0"), I64)
    rest = n.Var(fresh(inner.var.name + "_rest"), I64)
    w = n.i64(width)
    blocked_inner = dataclasses.replace(inner, start=first, end=n.Binary("+", first, w))
    hints = _prefetches(outer, prelude, inner, value.rhs, first, width,
                        store.value.type.bits // 8, ends.get(outer.var), fresh, sizes)
    by_block = dataclasses.replace(outer, body=_with_inner(outer.body, inner, blocked_inner, hints))
    remainder = dataclasses.replace(outer, body=_with_inner(outer.body, inner, dataclasses.replace(
        inner, start=rest)))
    return [
        n.Comment(f"{inner.var.name} in blocks of {width}: the block of {store.array.name} "
                  f"stays in registers across the {outer.var.name} loop"),
        n.Declare(blocks, n.Binary("max", n.Binary("/", n.Binary("-", end, start), w), n.i64(0))),
        n.For(block, n.i64(0), blocks, n.block(
            n.Declare(first, n.Binary("+", start, n.Binary("*", block, w))),
            by_block)),
        n.Comment(f"the last {inner.var.name} columns, fewer than {width}"),
        n.Declare(rest, n.Binary("+", start, n.Binary("*", blocks, w))),
        n.If(n.Binary("<", rest, end), n.block(remainder)),
    ]


def _with_inner(body: n.Block, old: n.For, new: n.For, before=()) -> n.Block:
    out = []
    for s in body.body:
        if s is old:
            out.extend(before)
        out.append(new if s is old else s)
    return n.Block(tuple(out))


def _prefetches(outer: n.For, prelude: list, inner: n.For, rhs, first, width: int,
                elem_bytes: int, last, fresh, sizes: dict) -> list:
    """Prefetch hints for the block-row reads of a later iteration of ``outer``.

    A read whose address depends on the sparse loop's variables (``X[j*N + k]`` with
    ``j = crd[p]``) jumps to an unpredictable row each iteration, which the hardware
    prefetchers cannot follow. Each of the block's cache lines is requested for
    ``p' = min(p + PREFETCH_DISTANCE, last)``, the prelude recomputed at ``p'``
    (prefetch.py). ``last`` is the level's last position (None: unknown, no hints);
    clamping to the row's own end instead would keep ``crd`` in bounds too, but then
    the next row's first nonzeros, the ones that miss, are never fetched early
    (measured: no gain).
    """
    if last is None or any(d.init is None for d in prelude):
        return []
    local = {outer.var} | {d.var for d in prelude}
    reads = [x for x in n.walk(rhs) if isinstance(x, n.Load)
             and n.uses(x.index, local) and n.uses(x.index, {inner.var})]
    if not reads:
        return []
    ahead, mapping = look_ahead(outer, prelude, last, fresh)
    stmts = list(ahead)
    per_line = max(LINE_BYTES // elem_bytes, 1)
    offsets = sorted(set(range(0, width, per_line)) | {width - 1})  # every line, aligned or not
    for load in dict.fromkeys(reads):
        for off in offsets:
            at = dict(mapping)
            at[inner.var] = n.Binary("+", first, n.i64(off))
            stmts.append(n.Prefetch(load.array, substitute(load.index, at)))
    return [n.Comment(f"fetch the rows {PREFETCH_DISTANCE} nonzeros ahead: their addresses jump"),
            *when_large([load.array for load in reads], stmts, sizes)]


def _loads_from(e, array) -> bool:
    return any(isinstance(x, n.Load) and x.array == array for x in n.walk(e))
