"""Does a kernel write every element of its dense output? Then the runtime need not zero it.

(:func:`zero_rows` makes a nest that adds into its output clear each row itself, to the same end.)

A dense output is handed to the kernel zeroed (``np.zeros``), because most nests
add into it or write only some of it (a DCSR row loop skips empty rows). When the
nest stores every element unconditionally (SpMV's ``y[i] = t`` under a loop over
all rows), the zeros are thrown away: clearing 160 KB costs a few microseconds, and
on two threads the cleared lines sit in the calling core's cache, so the other
core's stores must fetch them first (SpMV 20000², two threads: 116 -> 110 µs).

The check is structural and conservative. It answers yes only when

* nothing reads, atomically adds to, sorts or BLAS-writes the output array, and no
  early ``return 0`` can leave it half written;
* every store into it sits under ``For`` loops and ``Block`` s only (no ``If`` or
  ``While`` on the way), at index ``((v0 * N1) + v1) * N2 + ...`` over the output's
  indices in storage order, where each ``v`` is a distinct enclosing loop's variable
  that runs over the whole dimension: ``for v in [0, N)``, or the thread-parallel
  loop ``for v in [lo, hi)`` when the runtime splits that very index's range;
* and there is at least one such store.
"""
from __future__ import annotations

import dataclasses

from ..ir import nodes as n
from ..ir.types import BF16, F32, I64


def writes_every_element(fn: n.Function, vals: n.Var, chain: list, sizes: dict,
                         parallel=None) -> bool:
    """Whether ``fn`` stores every element of the dense output ``vals``.

    ``chain`` lists the output's index variables in storage order and ``sizes``
    maps each to the kernel's size variable. ``parallel`` is ``(index, lo, hi)``
    when the runtime splits that index's whole range into ``[lo, hi)`` chunks
    (None when there is no parallel loop or it walks something else)."""
    size_vars = [sizes.get(i) for i in chain]
    if any(s is None for s in size_vars):
        return False
    stores = []
    body = fn.body.body
    for k, s in enumerate(body):
        last = k == len(body) - 1
        if not _scan(s, vals, (), stores, last):
            return False
    if not stores:
        return False
    split = None
    if parallel is not None and parallel[0] in chain:
        split = (chain.index(parallel[0]), parallel[1], parallel[2])
    return all(_covers(store, loops, size_vars, split) for store, loops in stores)


def _scan(s, vals, loops: tuple, stores: list, last: bool) -> bool:
    """Walk statement ``s`` under the straight-line ``loops``; False on anything that
    reads or partly writes ``vals``. Stores found are appended as (store, loops),
    loops None when an ``If``/``While`` lies between them and the function body."""
    if isinstance(s, n.Block):
        return all(_scan(x, vals, loops, stores, last and k == len(s.body) - 1)
                   for k, x in enumerate(s.body))
    if isinstance(s, n.For):
        if _reads(s.start, vals) or _reads(s.end, vals):
            return False
        inner = None if loops is None else loops + (s,)
        return all(_scan(x, vals, inner, stores, False) for x in s.body.body)
    if isinstance(s, (n.If, n.While)):
        if _reads(s.cond, vals):
            return False
        blocks = [s.then, s.otherwise] if isinstance(s, n.If) else [s.body]
        return all(_scan(x, vals, None, stores, False) for b in blocks if b is not None for x in b.body)
    if isinstance(s, n.Store):
        if _reads(s.index, vals) or _reads(s.value, vals):
            return False
        if s.array == vals:
            stores.append((s, loops))
        return True
    if isinstance(s, n.AtomicAdd):
        return s.array != vals and not _reads(s.index, vals) and not _reads(s.value, vals)
    if isinstance(s, n.Gemm):
        return vals not in (s.a, s.b, s.c)
    if isinstance(s, n.Sort):
        return s.array != vals
    if isinstance(s, n.Prefetch):  # a cache hint: reads and writes nothing
        return True
    if isinstance(s, n.Return):
        return last or s.status != n.STATUS_OK  # an error return discards the output
    if isinstance(s, n.PollInterrupt):  # stops with an error status, which discards the output
        return True
    if isinstance(s, n.Declare):
        return s.var != vals and (s.init is None or not _reads(s.init, vals))
    if isinstance(s, n.Assign):
        return s.var != vals and not _reads(s.value, vals)
    if isinstance(s, (n.Allocate, n.Reallocate, n.Free)):
        return s.var != vals
    return isinstance(s, n.Comment)


def _reads(e, vals) -> bool:
    return any(x == vals for x in n.walk(e))


def _covers(store: n.Store, loops, size_vars: list, split) -> bool:
    """Whether the enclosing ``loops`` make ``store`` visit every linear index."""
    if loops is None:
        return False
    if not size_vars:  # a scalar output: element 0, written unconditionally
        return isinstance(store.index, n.Const) and store.index.value == 0
    terms = _linear_terms(store.index, size_vars)
    if terms is None or len(set(terms)) != len(terms):
        return False
    by_var = {loop.var: loop for loop in loops}
    for k, (v, size) in enumerate(zip(terms, size_vars)):
        loop = by_var.get(v)
        if loop is None or _assigned(loop, v):
            return False
        if not _spans(loop, size, split[1:] if split is not None and k == split[0] else None):
            return False
    return True


def _spans(loop: n.For, size, chunk) -> bool:
    """Whether ``loop`` visits every coordinate below ``size``: ``for v in [0, size)``,
    or the parallel loop over ``[lo, hi)`` when ``chunk`` is the ``(lo, hi)`` pair of
    the runtime's split of that range."""
    if isinstance(loop.start, n.Const) and loop.start.value == 0 and loop.end == size:
        return True
    return (chunk is not None and loop.parallel is not None
            and loop.start == chunk[0] and loop.end == chunk[1])


def _linear_terms(e, size_vars: list):
    """``[v0, v1, ...]`` when ``e`` is ``((v0 * N1) + v1) * N2 + v2 ...`` with ``N_k`` the
    given size variables and every ``v`` a variable; else None."""
    terms = []
    for k in range(len(size_vars) - 1, 0, -1):
        if not (isinstance(e, n.Binary) and e.op == "+"):
            return None
        if not isinstance(e.rhs, n.Var):
            return None
        terms.append(e.rhs)
        head = e.lhs
        if not (isinstance(head, n.Binary) and head.op == "*" and head.rhs == size_vars[k]):
            return None
        e = head.lhs
    if not isinstance(e, n.Var):
        return None
    terms.append(e)
    return terms[::-1]


def _assigned(loop: n.For, v) -> bool:
    return any(isinstance(x, n.Assign) and x.var == v for x in n.walk(loop.body))


def zero_rows(stmts: list, vals: n.Var, chain: list, sizes: dict, parallel=None, fresh=None):
    """``(stmts, True)`` with each output row zeroed at the top of the loop that owns
    it, or ``(stmts, False)`` when the nest is not that shape.

    For a nest that adds into its dense output (SpMM's register blocks load ``Y``'s
    row, add the row's products, store it) the runtime would otherwise zero the
    whole output first: a 10 MB ``memset`` on the calling thread before the kernel
    starts, whose lines the other thread must then fetch. Zeroed here, each thread
    clears the rows it is about to fill, in its own cache, and the runtime skips the
    zeros. It applies when the nest's only loop at the top is a loop over the
    output's first storage index covering its whole range (so it visits each row
    once and every store of iteration ``i`` lands in row ``i``), as
    :func:`writes_every_element` accepts it; the row is the contiguous block of the
    remaining output indices."""
    if not chain:
        return stmts, False
    loops = [s for s in stmts if not isinstance(s, (n.Comment, n.Declare))]
    if len(loops) != 1 or not isinstance(loops[0], n.For):
        return stmts, False
    row_loop = loops[0]
    size = sizes.get(chain[0])
    rest = [sizes.get(i) for i in chain[1:]]
    if size is None or any(r is None for r in rest) or row_loop.var.name != chain[0].name:
        return stmts, False
    chunk = parallel[1:] if parallel is not None and parallel[0] == chain[0] else None
    if not _spans(row_loop, size, chunk) or _assigned(row_loop, row_loop.var):
        return stmts, False
    from .outputs import store_value
    elem = vals.type.elem
    zero = n.const(0, F32 if elem == BF16 else elem)
    i = row_loop.var
    if not rest:
        fill = [store_value(vals, i, zero, accumulate=False)]
    else:
        width = rest[0]
        for r in rest[1:]:
            width = n.Binary("*", width, r)
        q = n.Var(fresh("q"), I64)
        first = n.Binary("*", i, width)
        fill = [n.For(q, first, n.Binary("+", first, width),
                      n.block(store_value(vals, q, zero, accumulate=False)))]
    body = (n.Comment(f"zero row {i.name} of {vals.name} here, so the caller need not zero it"),
            *fill, *row_loop.body.body)
    new = dataclasses.replace(row_loop, body=n.Block(body))
    return [new if s is row_loop else s for s in stmts], True
