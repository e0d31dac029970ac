"""Several lowered statements as one kernel function: consecutive loop nests, one launch.

A program's statements are lowered one by one (each with its own loop order,
sinks and passes); :func:`fuse` then joins their functions into one. Each
statement's variables are renamed apart (the first statement keeps its names,
later ones get ``_2``, ``_3`` ... where a name is taken), its body runs in its
own block in program order, and a temporary that one statement writes and a
later one reads becomes a single parameter: the reader's input array *is* the
writer's output array, so the reader sees the values just stored, and no two
parameters of the function alias (the backends mark pointers ``noalias``).
"""
from __future__ import annotations

import dataclasses

from ..ir import nodes as n
from ..ir.types import Type
from .context import Names


@dataclasses.dataclass(frozen=True)
class FusedParam:
    """Where one parameter of the fused function comes from: parameter ``position``
    of statement ``statement``'s own function."""
    statement: int
    position: int


def fuse(functions: list, bindings: list, links: list, name: str = "program", docs=(),
         share_loop=()) -> tuple:
    """``(Function, [FusedParam], merged)``: ``functions[k]`` (statement ``k``'s kernel
    function, its parameters described by ``bindings[k]``) run in order in one
    function. ``links[k]`` maps a storage statement ``k`` reads to the statement
    that writes it earlier in the same function (a dense temporary): the reader's
    ``vals`` parameter is replaced by the writer's output parameter.

    ``share_loop[k]``, when given, names the index of statement ``k``'s outer loop
    if the caller has checked that it may run inside statement ``k - 1``'s outer
    loop (same range; every temporary it reads is read at the row that loop is on,
    and was written at that row: see ``spcomp.program``). Where both functions are
    one loop over that index after declarations, the bodies are joined into one
    loop (``merged[k]`` True): the consumer reads each row while it is in cache."""
    names = Names()
    renamed: list = []      # per statement: old name -> new Var
    outputs: list = []      # per statement: tensor -> its output vals Var (after renaming)
    params, sources, body = [], [], []
    merged = [False] * len(functions)
    for k, fn in enumerate(functions):
        mapping: dict = {}
        shared = {}
        for pos, b in enumerate(bindings[k]):
            if b.role == "input" and b.storage in links[k] and b.array == "vals":
                writer = links[k][b.storage]
                shared[b.var.name] = outputs[writer][b.storage]
        for var in _variables(fn):
            if var.name in mapping:
                continue
            mapping[var.name] = shared.get(var.name) or n.Var(names(var.name), var.type)
        renamed.append(mapping)
        outs = {}
        for pos, (param, b) in enumerate(zip(fn.params, bindings[k])):
            new = mapping[param.name]
            if b.role == "output":
                outs[b.tensor] = new
            if param.name in shared:
                continue
            params.append(new)
            sources.append(FusedParam(k, pos))
        outputs.append(outs)
        stmts = list(fn.body.body)
        if stmts and isinstance(stmts[-1], n.Return) and stmts[-1].status == n.STATUS_OK:
            stmts.pop()
        note = [n.Comment(f"statement {k + 1}: {docs[k]}")] if k < len(docs) else []
        stmts = note + [_rename(s, mapping) for s in stmts]
        index = share_loop[k] if k < len(share_loop) else None
        if index is not None and body:
            joined = _join_loops(body[-1], stmts, mapping.get(index))
            if joined is not None:
                body[-1] = joined
                merged[k] = True
                continue
        body.append(n.Block(tuple(stmts)))
    body.append(n.Return(n.STATUS_OK))
    doc = "\n".join(docs)
    return n.Function(name, tuple(params), n.Block(tuple(body)), doc=doc), sources, merged


def _one_loop(stmts):
    """``(prefix, loop)`` when ``stmts`` are comments and declarations that read no
    array, then one sequential ``For`` from 0; else None."""
    if not stmts or not isinstance(stmts[-1], n.For):
        return None
    loop = stmts[-1]
    if loop.parallel is not None or loop.start != n.i64(0):
        return None
    for s in stmts[:-1]:
        if isinstance(s, n.Comment):
            continue
        if isinstance(s, n.Declare) and not any(isinstance(x, n.Load) for x in n.walk(s)):
            continue
        return None
    return list(stmts[:-1]), loop


def _join_loops(previous: n.Block, stmts: list, var) -> n.Block | None:
    """``previous`` (a statement's block, or blocks already joined) with ``stmts``'s
    loop over ``var`` run inside its loop, at the same iteration; None when either
    is not one loop over the index."""
    first, second = _one_loop(list(previous.body)), _one_loop(stmts)
    if first is None or second is None or var is None or second[1].var != var:
        return None
    (prefix1, loop1), (prefix2, loop2) = first, second
    inner = _rename(loop2.body, {var.name: loop1.var})
    loop = dataclasses.replace(loop1, body=n.Block(tuple(loop1.body.body) + (inner,)))
    return n.Block(tuple(prefix1 + prefix2 + [loop]))


def _variables(fn) -> list:
    """Every variable ``fn`` names, parameters first."""
    seen: dict = {}
    for p in fn.params:
        seen.setdefault(p.name, p)
    for node in n.walk(fn.body):
        if isinstance(node, n.Var):
            seen.setdefault(node.name, node)
        elif isinstance(node, n.PollInterrupt):
            for v in node.free:
                seen.setdefault(v.name, v)
    return list(seen.values())


def _rename(node, mapping: dict):
    """``node`` with every variable renamed by ``mapping`` (name -> Var)."""
    if isinstance(node, n.Var):
        return mapping.get(node.name, node)
    if isinstance(node, tuple):
        return tuple(_rename(x, mapping) for x in node)
    if isinstance(node, list):
        return [_rename(x, mapping) for x in node]
    if isinstance(node, Type) or not dataclasses.is_dataclass(node) or isinstance(node, type):
        return node
    changes = {}
    for f in dataclasses.fields(node):
        old = getattr(node, f.name)
        new = _rename(old, mapping)
        if new is not old:
            changes[f.name] = new
    return dataclasses.replace(node, **changes) if changes else node
