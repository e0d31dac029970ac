"""Which dense temporaries of a fused run live as a tile of rows.

A fused run's function keeps an unreturned dense temporary as one row where every
reader runs inside its writer's row loop (``ProgramKernel._keep_rows``). Where a
reader keeps a loop of its own (a sparse output appended row by row), the temporary
would be the whole array; :func:`keep_tiles` makes it a tile of rows instead in the
function over chunks of rows and, where it can, the one-thread one
(``lower.tiles.tile_workspaces``). Its checks are the program's: the temporary is
dense, written by one statement of the run (not ``+=``, not a sum over rows) at the
row its loop is on, read by a later one of the run, and nothing after the run or
returned sees it, and every reader reads it at the row its outer loop is on. The
one-thread function (``ProgramKernel._build``) gets the same tiles where its loops
allow (``tile_workspaces``: each from 0 to a size).
"""
from __future__ import annotations

from .lower.tiles import tile_rows_text, tile_workspaces
from .notation import accesses


def temporary_params(bindings, j: int, params: dict, name: str, widths: list):
    """``(vals, [size vars])``: the fused function's parameters for temporary
    ``name``'s values and its sizes after the first (from its writer ``j``;
    ``params``: (statement, position) -> the parameter it became), or None."""
    vals, sizes = None, {}
    for pos, b in enumerate(bindings):
        p = params.get((j, pos))
        if b.role == "output" and b.tensor == name and b.array == "vals":
            vals = p
        elif b.role == "size":
            sizes[b.index] = p
    if vals is None or any(sizes.get(w) is None for w in widths):
        return None
    return vals, [sizes[w] for w in widths]


def tile_temporaries(program, outputs: list, run: list, lows: list, kept: list) -> dict:
    """Name -> (its writer's place in the run, the index names after its first) for
    each dense temporary of a run that a tile may hold (``kept``: those already row
    workspaces): written at the row its writer's outer loop is on, read by later
    statements of the run at the row their outer loops are on."""
    stmts = program.statements
    later = {acc.tensor.name for k in range(run[-1] + 1, len(stmts)) for acc in accesses(stmts[k].rhs)}
    out = {}
    for j, k in enumerate(run):
        a, low = stmts[k], lows[j]
        name, idx = a.lhs.tensor.name, a.lhs.indices
        writers = [s for s in stmts if s.lhs.tensor.name == name]
        order = low.inspection.order
        if (not a.lhs.tensor.format.is_dense or name in outputs or name in later or name in kept or a.accumulate
                or len(writers) != 1 or not idx or len(set(idx)) != len(idx) or low.threads.partials
                or not order or order[0] != idx[0] or any(acc.tensor.name == name for acc in accesses(a.rhs))):
            continue
        reads = [(r, acc) for r in range(j + 1, len(run)) for acc in accesses(stmts[run[r]].rhs)
                 if acc.tensor.name == name]
        if reads and all(acc.indices and lows[r].inspection.order and acc.indices[0] == lows[r].inspection.order[0]
                         for r, acc in reads):
            out[name] = (j, [i.name for i in idx[1:]])
    return out


def keep_tiles(program, outputs: list, run: list, lows: list, fn, sources: list, params: dict, kept: list) -> tuple:
    """``(fn, sources, names, rows text)``: the function over chunks of rows with
    :func:`tile_temporaries` kept as tiles where it can be (all or none), their
    parameters dropped from ``sources``; ``rows text`` says how many rows a tile has."""
    temps, names, widths = [], [], []
    for name, (j, idx) in tile_temporaries(program, outputs, run, lows, kept).items():
        found = temporary_params(lows[j].code.bindings, j, params, name, idx)
        if found is None:
            continue
        temps.append((found[0], found[1], not lows[j].output.overwrites))
        names.append(name)
        widths.append([f"N_{i}" for i in idx])
    tiled = tile_workspaces(fn, temps) if temps else None
    if tiled is None:
        return fn, sources, [], ""
    gone = {t[0] for t in temps}
    sources = [s for s in sources if params[(s.statement, s.position)] not in gone]
    return tiled, sources, names, tile_rows_text(widths)
