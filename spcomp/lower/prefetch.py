"""Software prefetch for the rows a sparse loop reads at jumping addresses.

In a loop over a compressed level's positions, a dense row read at the stored
coordinate (SDDMM's ``E_T[j*N_k + k]`` with ``j = crd[p]``, SpMM's ``X[j*N + k]``)
starts at an unpredictable address each iteration: the hardware prefetchers follow
a row once it is streaming but cannot guess which row comes next, so every
nonzero starts with a miss to L3. Knowing ``crd``, the kernel can ask for the row
of the nonzero ``PREFETCH_DISTANCE`` positions ahead while it works on this one:

    p_ahead = min(p + 8, last)        # last: the level's last position (pos[N_i] - 1)
    j_ahead = crd[p_ahead]            # the loop's prelude, recomputed at p_ahead
    for line in 0..min(lines of the row, MAX_LINES): prefetch(&E_T[j_ahead*N_k + line*8])

Hand-written C of SDDMM 20000² 0.1 %, K = 64 on a Zen 3: 29.7 -> 18.0 ms; spcomp's
SDDMM on two threads 10.9 -> 8.0 ms and SpMM with K = 16 6.9 -> 4.3 ms on one
(docs/performance.md). When the lowerer knows the table's size the hints run only
for a table larger than L1 (``MIN_TABLE_BYTES``). A prefetch never faults and
changes no value, so results are bitwise those without it.

Two users: :func:`prefetch_rows`, a pass over any nest (the plain row loops of the
CPU backend), and regblock.py, whose register-blocked loop asks for the lines of
its block only, through :func:`look_ahead`.
"""
from __future__ import annotations

import dataclasses

from ..ir import nodes as n
from ..ir.types import I64

# how many iterations of the sparse loop ahead the rows are requested
PREFETCH_DISTANCE = 8
# lines requested per row: after the first ones the hardware prefetcher follows the
# row by itself, and requesting a long row whole would evict what the loop is using
MAX_LINES = 16
LINE_BYTES = 64
# a table of rows smaller than this stays in L1 (32-48 KiB on the hosts measured)
MIN_TABLE_BYTES = 64 * 1024


def look_ahead(outer: n.For, prelude: list, last, fresh) -> tuple[list, dict]:
    """Declarations of ``outer``'s variable and ``prelude``'s variables at the
    position ``min(p + PREFETCH_DISTANCE, last)``, and the map from each variable
    to its look-ahead copy (for :func:`substitute`)."""
    t = outer.var.type
    ahead = n.Var(fresh(outer.var.name + "_ahead"), t)
    stmts = [n.Declare(ahead, n.Binary("min", n.Binary("+", outer.var, n.const(PREFETCH_DISTANCE, t)), last))]
    mapping = {outer.var: ahead}
    for d in prelude:
        later = n.Var(fresh(d.var.name + "_ahead"), d.var.type)
        stmts.append(n.Declare(later, substitute(d.init, mapping)))
        mapping[d.var] = later
    return stmts, mapping


def prefetch_rows(stmts, position_ends: dict, fresh, table_sizes: dict | None = None) -> list:
    """``stmts`` with row prefetches added to every loop over a compressed level's
    positions whose last position is known (``position_ends``: loop variable ->
    last position, from the lowerer) and which holds a dense loop reading a row at
    an address that follows the sparse loop's coordinate. Loops that already hold
    prefetches (register-blocked ones) are left as they are.

    ``table_sizes`` maps an array to its number of elements (the lowerer's dense
    operands): the hints for its rows then run only when it is larger than
    ``MIN_TABLE_BYTES`` -- rows that stay in L1 gain nothing from a hint, and its
    few instructions per nonzero cost 6-11 % (MTTKRP 200³, R = 16)."""
    sizes = table_sizes or {}

    def walk(stmts):
        out = []
        for s in stmts:
            s = n.map_blocks(s, walk)  # inner loops first
            if isinstance(s, n.For):
                s = _with_prefetches(s, position_ends.get(s.var), fresh, sizes) or s
            out.append(s)
        return out
    return walk(stmts)


def _with_prefetches(outer: n.For, last, fresh, sizes: dict) -> n.For | None:
    """``outer`` with prefetches at the top of its body, or None when there is
    nothing to prefetch."""
    if last is None or any(isinstance(x, n.Prefetch) for x in n.walk(outer.body)):
        return None
    body = list(outer.body.body)
    prelude = []
    for s in body:
        if isinstance(s, n.Comment):
            continue
        if not isinstance(s, n.Declare) or s.init is None:
            break
        prelude.append(s)
    written = {x.array for x in n.walk(outer.body) if isinstance(x, n.Store)}
    # variables the loop sets, loop counters of nested loops included (a row start that
    # reads one is not the dense loop's row: blocked kernels' D[(i_o*N_i_i + i_i)*N_j + j])
    assigned = {x.var for x in n.walk(outer.body) if isinstance(x, (n.Assign, n.Declare, n.For))}
    safe = _recomputable(outer, prelude, written, assigned)
    jumping = _jumping(prelude, safe)
    rows = {}  # (array, row start: an expression of the sparse loop's variables) -> the dense loop
    for inner in body:
        if not isinstance(inner, n.For) or inner.parallel is not None:
            continue
        if any(n.uses(e, assigned | {outer.var}) for e in (inner.start, inner.end)):
            continue
        for load in n.walk(inner.body):
            if not isinstance(load, n.Load) or load.array in written:
                continue
            base = _row_base(load.index, inner.var)
            if base is None or not n.uses(base, jumping) or not _only_uses(base, safe, assigned | {inner.var}):
                continue
            rows.setdefault((load.array, base), inner)
    if not rows:
        return None
    needed = _closure(rows, prelude)
    stmts, mapping = look_ahead(outer, [d for d in prelude if d.var in needed], last, fresh)
    for (array, base), inner in rows.items():
        stmts += _row_lines(array, substitute(base, mapping), inner, fresh)
    hint = [n.Comment(f"fetch the rows {PREFETCH_DISTANCE} nonzeros ahead: their addresses jump"),
            *when_large([array for array, _ in rows], stmts, sizes)]
    return dataclasses.replace(outer, body=n.Block(tuple(hint) + tuple(body)))


def when_large(arrays: list, stmts: list, sizes: dict) -> list:
    """``stmts`` (prefetches of rows of ``arrays``) under a test that one of the tables
    is larger than MIN_TABLE_BYTES, when every table's size is known (``sizes``:
    array variable -> element count); as they are otherwise."""
    arrays = list(dict.fromkeys(arrays))
    if not stmts or not arrays or any(a not in sizes for a in arrays):
        return list(stmts)
    cond = _larger_than_l1(arrays[0], sizes[arrays[0]])
    for a in arrays[1:]:
        cond = n.Binary("||", cond, _larger_than_l1(a, sizes[a]))
    return [n.If(cond, n.Block(tuple(stmts)))]


def _larger_than_l1(array, elements):
    """Whether ``array`` (``elements`` long) exceeds MIN_TABLE_BYTES: loop-invariant,
    so the branch costs nothing and LLVM may unswitch the loop on it."""
    elem = array.type.elem.bits // 8
    return n.Binary(">=", elements, n.i64(-(-MIN_TABLE_BYTES // elem)))


def _recomputable(outer: n.For, prelude: list, written: set, assigned: set) -> set:
    """The loop variable and the prelude variables whose value at another position
    can be recomputed safely: built from the loop variable, earlier such variables,
    loop-invariant values and loads from arrays the loop does not write (a valid
    position's ``crd``/``pos``/coordinate-indexed entries stay in bounds)."""
    ok = {outer.var}
    for d in prelude:
        if _only_uses(d.init, ok, assigned) and not any(
                isinstance(x, n.Load) and x.array in written for x in n.walk(d.init)):
            ok.add(d.var)
    return ok


def _jumping(prelude: list, safe: set) -> set:
    """The recomputable prelude variables whose value comes from a load (``j =
    crd[p]``), directly or through another: rows at them jump; rows at ``p`` itself
    are consecutive, which the hardware prefetchers follow."""
    out = set()
    for d in prelude:
        if d.var in safe and any(isinstance(x, n.Load) or (isinstance(x, n.Var) and x in out)
                                 for x in n.walk(d.init)):
            out.add(d.var)
    return out


def _closure(rows, prelude: list) -> set:
    """The prelude variables the row addresses need, directly or through others."""
    needed = set()
    frontier = [base for _, base in rows]
    by_var = {d.var: d for d in prelude}
    while frontier:
        e = frontier.pop()
        for x in n.walk(e):
            if isinstance(x, n.Var) and x in by_var and x not in needed:
                needed.add(x)
                frontier.append(by_var[x].init)
    return needed


def _row_lines(array, base, inner: n.For, fresh) -> list:
    """Prefetches of the first lines (at most MAX_LINES) of ``array[base + start ..
    base + end)``, ``start``/``end`` the dense loop's bounds."""
    elem = array.type.elem.bits // 8
    per_line = max(LINE_BYTES // elem, 1)
    zero_start = isinstance(inner.start, n.Const) and inner.start.value == 0
    first = base if zero_start else n.Binary("+", base, inner.start)
    if isinstance(inner.start, n.Const) and isinstance(inner.end, n.Const):  # a known row: unrolled
        length = min(inner.end.value - inner.start.value, MAX_LINES * per_line)
        offsets = sorted(set(range(0, length, per_line)) | ({length - 1} if length > 0 else set()))
        return [n.Prefetch(array, n.Binary("+", first, n.i64(o))) for o in offsets]
    lines = n.Var(fresh("lines"), I64)
    line = n.Var(fresh("line"), I64)
    extent = inner.end if zero_start else n.Binary("-", inner.end, inner.start)
    count = n.Binary("/", n.Binary("+", extent, n.i64(per_line - 1)), n.i64(per_line))
    return [
        n.Declare(lines, n.Binary("min", count, n.i64(MAX_LINES))),
        n.For(line, n.i64(0), lines, n.block(
            n.Prefetch(array, n.Binary("+", first, n.Binary("*", line, n.i64(per_line))))), unroll=1),
    ]


def _row_base(index, var):
    """``b`` when ``index`` is ``b + var`` (or ``var + b``) with ``var`` absent from
    ``b``: the loop reads consecutive elements, one row. None otherwise."""
    if isinstance(index, n.Binary) and index.op == "+":
        for base, other in ((index.lhs, index.rhs), (index.rhs, index.lhs)):
            if other == var and not n.uses(base, {var}):
                return base
    return None


def substitute(e, mapping: dict):
    """Expression ``e`` with variables replaced by ``mapping``'s expressions."""
    if isinstance(e, n.Var):
        return mapping.get(e, e)
    if isinstance(e, n.Const):
        return e
    changes = {}
    for f in dataclasses.fields(e):
        v = getattr(e, f.name)
        if isinstance(v, tuple):
            changes[f.name] = tuple(substitute(x, mapping) if _is_expr(x) else x for x in v)
        elif _is_expr(v):
            changes[f.name] = substitute(v, mapping)
    return dataclasses.replace(e, **changes)


def _is_expr(x) -> bool:
    return isinstance(x, (n.Var, n.Const, n.Load, n.Binary, n.Unary, n.Call, n.Select, n.Cast))


def _only_uses(e, ok: set, local: set) -> bool:
    """Whether every variable of ``e`` that the loop sets (``local``) is in ``ok``;
    the rest are invariant over the loop."""
    return all(x in ok for x in n.walk(e) if isinstance(x, n.Var) and x in local)
