"""Which writes of a team body (a gpu-block or gpu-warp iteration) the other members
must wait for: the analysis behind the emitter's barriers (``__syncthreads()`` /
``__syncwarp()``).

A guarded group of writes, or a member loop, needs a barrier after it when an array
it writes is read or written elsewhere in the team body, unless every access to that
array is owned by one member (:func:`owned`). Thread-private workspaces never need one.
Pure functions of the IR: the emitter passes the team body and its own facts.
"""
from __future__ import annotations

from spcomp.ir import nodes as n


def array_name(e) -> str:
    return e.name if isinstance(e, n.Var) else "?"  # '?': an address we cannot name


def accesses(node, skip=()):
    """(arrays loaded, arrays written) under ``node``, by name."""
    loads, writes = set(), set()
    for x in n.walk(node, skip):
        if isinstance(x, n.Load):
            loads.add(array_name(x.array))
        elif isinstance(x, (n.Store, n.AtomicAdd)):
            writes.add(array_name(x.array))
        elif isinstance(x, n.Sort):
            loads.add(array_name(x.array))
            writes.add(array_name(x.array))
    return loads, writes


def declared(node) -> set:
    """Names a statement declares (Declare, For variables, Allocate), itself included."""
    out = set()
    for x in n.walk(node):
        if isinstance(x, (n.Declare, n.Allocate)):
            out.add(x.var.name)
        elif isinstance(x, n.For):
            out.add(x.var.name)
    return out


def arrays_in(node):
    return [x.array for x in n.walk(node) if isinstance(x, (n.Load, n.Store, n.AtomicAdd, n.Sort))]


def needs_barrier(team_body: n.Block, stmts, private: set, team: str) -> bool:
    """Whether what ``stmts`` (part of ``team_body``) write is read or written elsewhere in
    the team body (by another member: arrays each member owns a part of need no barrier).

    ``private``: names of thread-private arrays; ``team``: ``"block"`` or ``"warp"``."""
    _, written = accesses(n.Block(tuple(stmts)))
    written = {w for w in written if w not in private}
    if not written:
        return False
    loads, _ = accesses(team_body)
    _, others = accesses(team_body, skip={id(s) for s in stmts})
    seen = loads | others
    if "?" in written or "?" in seen:
        return True
    return any(not owned(team_body, a, team) for a in written & seen)


def owned(team_body: n.Block, array: str, team: str) -> bool:
    """Whether every access to ``array`` in the team body is a Load or Store at the same
    index inside member loops that give each iteration to the same member (same loop
    variable, start and mapping), the index depending only on that variable and on
    values the team body never changes. Then each element belongs to one member and
    the member loops need no barrier between them for it."""
    member_kinds = ("gpu-thread", "threads") if team == "block" else ("gpu-lane",)
    changed = set()
    for x in n.walk(team_body):
        if isinstance(x, (n.Declare, n.Assign, n.Allocate, n.Reallocate)):
            changed.add(x.var.name)
        elif isinstance(x, n.For):
            changed.add(x.var.name)
    changed |= accesses(team_body)[1]  # an index that loads from a written array may change
    keys = set()
    ok = True

    def visit(node, loop):
        nonlocal ok
        if isinstance(node, n.For) and node.parallel:
            if node.parallel not in member_kinds:  # a nested team (the warps of a block)
                if any(array_name(a) == array for a in arrays_in(node)):
                    ok = False
                return
            loop = node
        if isinstance(node, (n.Load, n.Store, n.AtomicAdd, n.Sort)) and array_name(node.array) == array:
            if loop is None or not isinstance(node, (n.Load, n.Store)):
                ok = False
            else:
                free = {v.name for v in n.walk(node.index) if isinstance(v, n.Var)}
                start = {v.name for v in n.walk(loop.start) if isinstance(v, n.Var)}
                if loop.var.name not in free or ((free | start) - {loop.var.name}) & changed:
                    ok = False
                keys.add((loop.var.name, loop.start, loop.parallel, node.index))
        for c in n.children(node):
            visit(c, loop)

    visit(team_body, None)
    return ok and len(keys) == 1
