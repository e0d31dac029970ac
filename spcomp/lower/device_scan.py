"""A two-phase sparse statement as one function of three phases, for a fused GPU program.

On the CUDA backends a statement whose output is assembled in two phases
(:mod:`.assembly`: a dense first level, then unique compressed ones -- csr,
``dc``, dense-then-csf) normally runs as two kernels with the host between them:
``NAME_count``, an exclusive prefix sum of the row counts on the host, the
allocation of the coordinate and value arrays at their exact sizes, ``NAME_fill``.
A fused program kernel (``spcomp/program_gpu.py``) cannot leave the device in
between, so :func:`phased_function` joins the phases into one function of three
blocks, which the program emitter prints with a grid-wide barrier after each:

1. the count phase, as lowered (grid-stride over the rows);
2. the scan: one thread turns each compressed level's per-row counts into row
   starts in place (level ``first``'s become the output ``pos``), writes each
   level's total to ``needed``, and returns :data:`CAPACITY_STATUS` when a total
   exceeds the capacity the host allocated that level's arrays at -- every block
   then leaves after the barrier, nothing is filled, no later statement runs,
   and the host runs the launch again with room for exactly ``needed``;
3. the fill phase, as lowered, into arrays of at least the capacity.

The scan is serial (one thread of the grid): simple and correct; a block-wide
scan would be faster for many rows.
"""
from __future__ import annotations

import dataclasses

from ..errors import UnsupportedError
from ..ir import nodes as n
from ..ir.build import add
from ..ir.types import I64, ptr
from .assembly import ROW_POS
from .context import Binding

# the launch ran out of room for a sparse output's entries: the host runs it again
# (past the IR's statuses, ir/nodes.py, and the grid barrier's 7, backends/cuda/grid_sync.py)
CAPACITY_STATUS = 8
ROWS_ROLE = "rows"          # the number of rows (dense positions above the first compressed level)
CAPACITY_ROLE = "capacity"  # per compressed level: the entries its arrays were allocated for
NEEDED_ROLE = "needed"      # per compressed level: the entries the count phase found


@dataclasses.dataclass(frozen=True)
class Phased:
    """A two-phase statement as one function: its parameters are the fill's, then
    the rows, one capacity per compressed level (from ``first``), and ``needed``."""
    function: n.Function
    bindings: list
    first: int   # the first compressed level
    levels: int  # the output's levels


def phased_function(low, name: str) -> Phased:
    """The three phases of ``low`` (a two-phase lowering whose output is ``name``) as one
    function; UnsupportedError when its two phases name a variable with two types."""
    plan = low.output.assembly
    module = low.code.module
    count, fill = module.function(plan.count), module.function(plan.fill)
    _same_types(count, fill)
    bindings = list(low.code.bindings)
    first = plan.first
    per_row = {b.level: b.var for b in bindings
               if (b.role == ROW_POS) or (b.role == "output" and (b.level, b.array) == (first, "pos"))}
    levels = len(low.inspection.notation.lhs.tensor.format.levels)
    if sorted(per_row) != list(range(first, levels)):
        raise UnsupportedError(f"output {name}: the fill phase does not take every level's row counts")
    taken = {v.name for v in _variables(count) + _variables(fill)}

    def fresh(base: str) -> n.Var:
        k, text = 0, base
        while text in taken:
            k += 1
            text = f"{base}{k}"
        taken.add(text)
        return n.Var(text, I64)
    rows = fresh(f"{name}_rows")
    caps = {l: fresh(f"{name}{l + 1}_capacity") for l in range(first, levels)}
    needed = n.Var(fresh(f"{name}_needed").name, ptr(I64))
    extras = [Binding(rows, ROWS_ROLE, name, storage=name)]
    extras += [Binding(caps[l], CAPACITY_ROLE, name, l, storage=name) for l in caps]
    extras.append(Binding(needed, NEEDED_ROLE, name, storage=name))
    scan = _scan(per_row, rows, caps, needed, first, fresh)
    body = n.Block((_phase(count), scan, _phase(fill), n.Return(n.STATUS_OK)))
    doc = (f"{fill.doc}\nthree phases in one launch: count, a prefix sum on the device, fill "
           "(a grid-wide barrier after each)")
    fn = n.Function(f"{fill.name}_phased", tuple(fill.params) + tuple(b.var for b in extras), body, doc=doc)
    return Phased(fn, bindings + extras, first, levels)


def split_phases(stmts: tuple) -> list:
    """A fused statement block (:func:`spcomp.lower.fuse.fuse` of a phased function:
    a note and loads, then the three phase blocks) as three blocks, the note and
    loads kept with the count phase."""
    body = list(stmts)
    if len(body) < 3 or not all(isinstance(b, n.Block) for b in body[-3:]):
        raise ValueError("a phased statement ends with its three phase blocks")
    count = n.Block(tuple(body[:-3]) + tuple(body[-3].body))
    return [count, body[-2], body[-1]]


def _phase(fn: n.Function) -> n.Block:
    """``fn``'s body as a block, its final ``return 0`` dropped."""
    body = list(fn.body.body)
    if body and isinstance(body[-1], n.Return) and body[-1].status == n.STATUS_OK:
        body.pop()
    return n.Block(tuple(body))


def _scan(per_row: dict, rows, caps: dict, needed, first: int, fresh) -> n.Block:
    """Counts at ``[q + 1]`` -> row starts, level by level; each total to ``needed``;
    CAPACITY_STATUS when one exceeds its capacity (after every level is stored)."""
    out: list = [n.Comment("prefix sum of the row counts (one thread): row starts, each level's total")]
    totals = {}
    for l, arr in per_row.items():
        total, q = fresh(f"total{l + 1}"), fresh(f"q{l + 1}")
        at = add(q, n.i64(1))
        step = [n.Assign(total, add(total, n.Cast(n.Load(arr, at), I64))),
                n.Store(arr, at, n.Cast(total, arr.type.elem))]
        out += [n.Declare(total, n.i64(0)), n.For(q, n.i64(0), rows, n.Block(tuple(step))),
                n.Store(needed, n.i64(l - first), total)]
        totals[l] = total
    for l, total in totals.items():
        out.append(n.If(n.Binary(">", total, caps[l]), n.Block((n.Return(CAPACITY_STATUS),))))
    return n.Block(tuple(out))


def _variables(fn: n.Function) -> list:
    seen: dict = {p.name: p for p in fn.params}
    for x in n.walk(fn.body):
        if isinstance(x, n.Var):
            seen.setdefault(x.name, x)
    return list(seen.values())


def _same_types(count: n.Function, fill: n.Function) -> None:
    """UnsupportedError when a name stands for variables of two types in the two
    phases (the joined function declares each in its own block, but the program
    fuser renames by name)."""
    types = {}
    for fn in (count, fill):
        for x in n.walk(fn.body):
            if isinstance(x, n.Var):
                if types.setdefault(x.name, x.type) != x.type:
                    raise UnsupportedError(f"the two phases of {fill.name} name {x.name} with two types")


__all__ = ["CAPACITY_STATUS", "Phased", "phased_function", "split_phases", "ROWS_ROLE", "CAPACITY_ROLE",
           "NEEDED_ROLE"]
