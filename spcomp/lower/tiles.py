"""Tile workspaces: a dense temporary kept as a few rows of a fused function.

A fused run's function (``spcomp.lower.fuse``: over a chunk's ``[lo, hi)``, a chunk
lowering per statement, or the one-thread function over all rows) runs its
statements one after another, each over every row. A dense temporary that a later
statement reads from a loop of its own (one that could not join the writer's row
loop: a sparse output appended row by row) would need the whole chunk's rows of it,
so the runtime allocates the whole array.
:func:`tile_workspaces` instead runs the statements over tiles of ``R`` rows (for
each tile every statement over its rows, in program order) with the temporary a
local array of ``R`` rows, indexed from the tile's first row: memory stays at
``R`` rows per thread and a tile is read back while it is in cache. ``R`` is
``max(1, TILE_VALUES // row width)`` (the widths of every tiled temporary summed),
computed in the function from the sizes it is called with.

Each statement's declarations (before its row loop) run once, before the tiles:
counters that a sparse output appends with carry on from tile to tile. Legal only
where that changes nothing: every statement reads what an earlier one wrote only
at the row it is on (the caller's checks), a later statement's declarations
touch no array an earlier statement touches, a later statement only reads arrays
an earlier one touches, and no statement but the last has code after its loop
(but frees, which move after the tiles).
"""
from __future__ import annotations

import dataclasses

from ..ir import nodes as n
from ..ir.types import I64, PointerType, Type

ENABLED = True        # tests flip it to compare with the whole-array function
TILE_VALUES = 16384   # values per tile, all tiled temporaries together (128 KB of float64)


def settings_key() -> tuple:
    """What the functions built here depend on (a part of a program's cache key)."""
    return ("tiles", ENABLED, TILE_VALUES)


def tile_rows_text(widths: list) -> str:
    """How many rows a tile has, for ``k.loops`` (``widths``: the size names of
    every tiled temporary's indices after its first)."""
    width = " + ".join("*".join(w) or "1" for w in widths) or "1"
    return f"max(1, {TILE_VALUES} // ({width}))"


def tile_workspaces(fn: n.Function, temps: list):
    """``fn`` with each temporary of ``temps`` (``(vals parameter, [its sizes after
    the first], zero)``: ``zero`` when its writer does not store every element of
    its rows) kept as a tile of rows, its parameter gone. ``fn`` is a function over
    ``lo``, ``hi`` (its first two parameters: every statement loops over those
    rows) or a one-thread function whose statements each loop from 0 to a size
    parameter and touch a temporary of ``temps`` there (at the loop's row: the
    caller's check), so that all run over its rows. None when ``fn`` is not
    statements each made of declarations, that loop and (the last only) code
    after it, or those cannot be interleaved by tiles (module docstring), or a
    temporary is used other than element by element inside those loops."""
    if not ENABLED or not temps:
        return None
    vals = {t[0] for t in temps}
    chunks = len(fn.params) >= 2 and [p.name for p in fn.params[:2]] == ["lo", "hi"]
    lo, hi = fn.params[:2] if chunks else (n.i64(0), None)
    body = list(fn.body.body)
    blocks = []
    while len(blocks) < len(body) and isinstance(body[len(blocks)], n.Block):
        split = _split(body[len(blocks)])
        if split is None:
            break
        loop = split[1]
        if hi is None and isinstance(loop.end, n.Var) and loop.end in fn.params:
            hi = loop.end  # the one-thread function: the first statement's rows
        if loop.start != lo or (loop.end != hi if chunks else not (
                isinstance(loop.end, n.Var) and loop.end in fn.params and _pointers(loop) & vals)):
            break
        blocks.append(split)
    tail = body[len(blocks):]
    if len(blocks) < 2 or not _interleaves(blocks) or any(_pointers(x) & vals for x in tail):
        return None
    if any(_pointers(s) & vals for prefix, _loop, suffix in blocks for s in prefix + suffix):
        return None
    taken = {v.name for v in n.walk(fn.body) if isinstance(v, n.Var)} | {p.name for p in fn.params}
    fresh = _Fresh(taken)
    widths = [_product(w) for _v, w, _z in temps]
    rows = fresh("tile_rows")
    total = widths[0]
    for w in widths[1:]:
        total = n.Binary("+", total, w)
    tiles, tile = fresh("tiles"), fresh("tile")
    first, last = fresh("tile_lo"), fresh("tile_hi")
    arrays, bases, inner = {}, {}, [n.Declare(first, n.Binary("+", lo, n.Binary("*", tile, rows))),
                                    n.Declare(last, n.Binary("min", n.Binary("+", first, rows), hi))]
    names = ", ".join(v.name.replace("_vals", "") for v, _w, _z in temps)
    setup = [n.Comment(f"{names}: a tile of {rows.name} rows each, not the whole array; "
                       "every statement runs over one tile's rows before the next tile"),
             n.Declare(rows, n.Binary("max", n.i64(1), n.Binary("/", n.i64(TILE_VALUES),
                                                                 n.Binary("max", total, n.i64(1)))))]
    for (v, _w, zero), width in zip(temps, widths):
        ws = n.Var(fresh(v.name.replace("_vals", "") + "_tile").name, v.type)
        arrays[v], bases[v] = ws, fresh(f"{ws.name}_base")
        setup.append(n.Allocate(ws, n.Binary("*", rows, width)))
        inner.append(n.Declare(bases[v], n.Binary("*", first, width)))
        if zero:
            q = fresh(f"q_{ws.name}")
            count = n.Binary("*", n.Binary("-", last, first), width)
            inner.append(n.For(q, n.i64(0), count, n.Block((n.Store(ws, q, n.const(0, v.type.elem)),))))
    for _prefix, loop, _suffix in blocks:
        moved = _Tiled(arrays, bases).node(loop.body)
        if _pointers(moved) & vals:
            return None  # read other than element by element (a Gemm, a pointer handed on)
        inner.append(dataclasses.replace(loop, start=first, end=last, parallel=None, body=moved))
    count = n.Binary("/", n.Binary("+", n.Binary("-", hi, lo), n.Binary("-", rows, n.i64(1))), rows)
    setup += [n.Declare(tiles, count), n.For(tile, n.i64(0), tiles, n.Block(tuple(inner)))]
    setup += [n.Free(a) for a in arrays.values()]
    prefixes = [s for prefix, _l, _s in blocks for s in prefix]
    stmts = n.Block(tuple(prefixes + setup + [s for _p, _l, suffix in blocks for s in suffix]))
    params = tuple(p for p in fn.params if p not in vals)
    return dataclasses.replace(fn, params=params, body=n.Block((stmts, *tail)))


def _split(block: n.Block):
    """``(prefix, loop, suffix)`` of a statement's block: its first top-level loop,
    the declarations before it (no loop among them) and what follows; else None."""
    stmts = list(block.body)
    at = [k for k, s in enumerate(stmts) if isinstance(s, n.For)]
    if not at or any(_has_loop(s) for s in stmts[:at[0]]):
        return None
    return stmts[:at[0]], stmts[at[0]], stmts[at[0] + 1:]


def _has_loop(s) -> bool:
    return any(isinstance(x, (n.For, n.While)) for x in n.walk(s))


def _interleaves(blocks: list) -> bool:
    """Whether the statements may run tile by tile: no code after any loop but the
    last's except frees (of a row workspace: they move after the tiles), and a later
    statement's declarations touch no array an earlier one does, its loop only reads
    those."""
    seen: set = set()
    for b, (prefix, loop, suffix) in enumerate(blocks):
        if b < len(blocks) - 1 and any(not isinstance(s, (n.Comment, n.Free)) for s in suffix):
            return False
        if b > 0:
            if any(_pointers(s) & seen for s in prefix):
                return False
            shared = _pointers(loop) & seen
            loads = [x.array for x in n.walk(loop) if isinstance(x, n.Load) and x.array in shared]
            uses = [x for x in n.walk(loop) if isinstance(x, n.Var) and x in shared]
            if len(loads) != len(uses):
                return False
        seen |= set().union(*(_pointers(s) for s in prefix + [loop] + suffix))
    return True


def _pointers(node) -> set:
    return {x for x in n.walk(node) if isinstance(x, n.Var) and isinstance(x.type, PointerType)}


def _product(widths: list):
    out = n.i64(1)
    for w in widths:
        out = w if out == n.i64(1) else n.Binary("*", out, w)
    return out


class _Fresh:
    """New I64 variables named apart from ``taken``."""

    def __init__(self, taken: set):
        self.taken = set(taken)

    def __call__(self, base: str) -> n.Var:
        name, k = base, 2
        while name in self.taken:
            name, k = f"{base}_{k}", k + 1
        self.taken.add(name)
        return n.Var(name, I64)


class _Tiled:
    """Loads and stores of each temporary moved to its tile, at the same element
    counted from the tile's first row (``index - base``, base = tile_lo * width)."""

    def __init__(self, arrays: dict, bases: dict):
        self.arrays, self.bases = arrays, bases

    def node(self, x):
        if isinstance(x, (n.Load, n.Store, n.AtomicAdd, n.Prefetch)) and x.array in self.arrays:
            changes = {"array": self.arrays[x.array],
                       "index": n.Binary("-", self.node(x.index), self.bases[x.array])}
            if hasattr(x, "value"):
                changes["value"] = self.node(x.value)
            return dataclasses.replace(x, **changes)
        if isinstance(x, n.Comment):  # the lowerer's notes name the array
            text = x.text
            for v, ws in self.arrays.items():
                text = text.replace(v.name, ws.name)
            return x if text == x.text else n.Comment(text)
        if isinstance(x, tuple):
            return tuple(self.node(y) for y in x)
        if isinstance(x, (n.Var, n.Const, Type)) or not dataclasses.is_dataclass(x) or isinstance(x, type):
            return x
        changes = {}
        for f in dataclasses.fields(x):
            old = getattr(x, f.name)
            new = self.node(old)
            if new is not old:
                changes[f.name] = new
        return dataclasses.replace(x, **changes) if changes else x
