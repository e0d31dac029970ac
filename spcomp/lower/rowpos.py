"""TACO's ``pos`` within a row: a loop over the positions of one segment.

``pos("j", "jpos", "A", within="i")`` names the loop over ``j``, nested in the one
over ``i``, by ``A``'s positions of the compressed level storing ``j``: for a CSR
``A``, ``jpos`` runs over ``A.pos[i] .. A.pos[i+1]`` -- one row's nonzeros. It is
the loop the default nest already runs there, so alone it changes nothing;
``split("jpos", "j0", "j1", F)`` strip-mines it (``j0`` over blocks of ``F`` of the
row's positions, ``j1`` within one: the order of the positions is kept, so the
result is the default schedule's bit for bit), and ``unroll``/``vectorize`` may
name ``jpos``, ``j0`` or ``j1``, and ``bound("jpos", n)`` bounds a row's length. On the GPU, ``parallelize("j1", "gpu-thread")``
with ``F = 32`` under a warp per row hands the row's positions to the warp's lanes
32 apart (TACO's ``split(jpos, thread_nz, thread, WARP_SIZE)``): the lane mapping
``parallelize("j", "gpu-thread")`` already runs (gpumap.py), so it is rewritten to
that. (Without ``within``, ``pos`` is TACO's ``fuse`` + ``pos``: possplit.py.)

Refused with the reason (:func:`take`, :func:`strip`): a row's positions on CPU
threads (their iterations add into the same output element, or are a row too
short to share), lanes other than 32 apart, ``within`` not the index stored just
above, and a loop over ``j`` that does not walk ``A``'s level alone (a merge with
another sparse operand has no positions of ``A`` to split).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from ..errors import ScheduleError
from ..ir import nodes as n
from ..ir.types import I64

#: lanes of a GPU warp: a row's positions go to them this far apart
WARP = 32


@dataclass(frozen=True)
class RowPos:
    """A within-row position loop as the schedule asked for it (``Options.row_pos``)."""
    operand: str
    index: str      # the index of the compressed level whose segment is walked
    parent: str     # the index of the level above (``within``)
    name: str       # the position loop's name
    outer: str = ""  # split: blocks of ``factor`` positions
    inner: str = ""  # split: within a block
    factor: int = 1
    what: str = ""

    def names(self) -> tuple:
        return tuple(x for x in (self.name, self.outer, self.inner) if x)


def take(directives, caps) -> tuple:
    """``(RowPos or None, the other directives)``: the within-row ``pos`` and its
    split taken out, reorders naming its loops put in terms of the index, and a
    lane mapping of its inner piece rewritten to the lane mapping of the index."""
    spec, rest = None, []
    for d in directives:
        if d[0] == "pos" and len(d) == 5:
            _, index, name, operand, within = d
            text = f"pos({index!r}, {name!r}, {operand!r}, within={within!r})"
            if spec is not None:
                raise ScheduleError(f"{text}: one position loop per kernel ({spec.what} is another)")
            spec = RowPos(operand, index, within, name, what=text)
        elif d[0] in ("split", "divide") and spec is not None and d[1] == spec.name and not spec.outer:
            if d[0] == "divide":
                raise ScheduleError(f"{spec.what}.divide(...): a row's positions are split into blocks of a "
                                    "fixed size (split); divide cuts a loop whose length a call knows up front")
            _, base, outer, inner, factor = d
            spec = dataclasses.replace(spec, outer=outer, inner=inner, factor=factor,
                                       what=f"{spec.what}.split({base!r}, {outer!r}, {inner!r}, {factor})")
        else:
            rest.append(d)
    if spec is None:
        return None, tuple(directives)
    out = []
    for d in rest:
        if d[0] in ("pos", "fuse"):
            raise ScheduleError(f"{spec.what}: one position loop per kernel ({d[0]}({d[1]!r}, ...) is another)")
        if d[0] in ("split", "divide", "pos", "fuse") and d[1] in spec.names():
            raise ScheduleError(f"{spec.what}: {d[0]}({d[1]!r}, ...) names a piece of the row's position loop; "
                                "split the position loop once")
        if d[0] == "reorder":
            d = ("reorder", _reorder(spec, d[1]))
        elif d[0] == "bound" and d[1] == spec.name:  # a bound on a row's positions: its length
            d = ("bound", spec.index, *d[2:])
        elif d[0] == "parallelize" and d[1] in spec.names():
            d = _lanes(spec, d, caps)
            spec = dataclasses.replace(spec, outer="", inner="", factor=1)  # the lanes stride it
        out.append(d)
    return spec, tuple(out)


def _reorder(spec, names) -> tuple:
    """A reorder with the row's position loop (or its pieces, outer then inner,
    adjacent) put as its index."""
    mine = [k for k, x in enumerate(names) if x in spec.names()]
    pieces = [names[k] for k in mine]
    if len(mine) > 1 and (pieces != [spec.outer, spec.inner] or mine[1] != mine[0] + 1):
        raise ScheduleError(f"{spec.what}: reorder({', '.join(map(repr, names))}) separates the pieces of the "
                            f"row's position loop; {spec.outer} runs directly around {spec.inner}")
    out = [spec.index if x in spec.names() else x for x in names]
    return tuple(dict.fromkeys(out))


def _lanes(spec, d, caps) -> tuple:
    """A ``parallelize`` of the row's position loop: the GPU's lanes 32 apart, or refused."""
    name, how = d[1], d[2]
    call = f"parallelize({name!r}, {how!r})"
    if caps.host_threads:
        raise ScheduleError(f"{call}: with {spec.what} the loop over one {spec.parent}'s positions runs on one "
                            f"thread (CPU threads take the outermost loop, here {spec.parent}'s, or a dense loop "
                            f"below it); a segment's positions are shared by a GPU warp's lanes")
    lanes = (name == spec.inner and spec.factor == WARP) if spec.outer else name == spec.name
    if how != "gpu-thread" or not lanes:
        raise ScheduleError(f"{call}: with {spec.what} a GPU warp's lanes take the row's positions {WARP} apart: "
                            f"split({spec.name!r}, ..., ..., {WARP}) and parallelize the inner piece on "
                            "'gpu-thread' (under parallelize of the row loop on 'gpu-warp')")
    return ("parallelize", spec.index, *d[2:])


def strip(opt, loop: list, i, key, fresh, done: set) -> list:
    """The loop over ``i`` (statements ending in its ``For``) with the within-row
    position loop's split and hints applied, when ``opt.row_pos`` names ``i``."""
    if not opt.row_pos:
        return loop
    spec = RowPos(*opt.row_pos)
    if i.name != spec.index:
        return loop
    acc, level = key
    chain = [acc.indices[d] for d in acc.tensor.format.order]
    kind = acc.tensor.format.levels[level]
    if acc.tensor.name != spec.operand:
        return loop  # the loop walks another operand alone: check_applied refuses
    if level == 0 or chain[level - 1].name != spec.parent or not kind.segmented:
        raise ScheduleError(f"{spec.what}: {spec.operand}'s level {level + 1} ({kind.spec()}) storing {spec.index} "
                            f"is not a compressed level under {spec.parent}'s; within names the index stored "
                            "just above (TACO's pos(j, jpos, A(i,j)))")
    if not loop or not isinstance(loop[-1], n.For):
        raise ScheduleError(f"{spec.what}: {spec.operand}'s level {level + 1} is not walked by a loop over "
                            "positions here")
    done.add(spec.index)
    hints = {name: (dict(opt.vectorize).get(name), dict(opt.unroll).get(name)) for name in spec.names()}
    f = loop[-1]
    if not spec.outer:
        return [*loop[:-1], _hinted(f, *hints[spec.name])]
    first, last = n.Var(fresh(f"{spec.name}_first"), I64), n.Var(fresh(f"{spec.name}_end"), I64)
    block = n.Var(fresh(spec.outer), I64)
    size = n.i64(spec.factor)
    begin = n.Binary("+", first, n.Binary("*", block, size))
    inner = dataclasses.replace(f, start=begin, end=n.Binary("min", n.Binary("+", begin, size), last))
    blocks = n.Binary("/", n.Binary("+", n.Binary("-", last, first), n.i64(spec.factor - 1)), size)
    outer = n.For(block, n.i64(0), blocks, n.block(_hinted(inner, *hints[spec.inner])))
    return [*loop[:-1], n.Comment(f"{spec.what}: blocks of {spec.factor} of the segment's positions"),
            n.Declare(first, f.start), n.Declare(last, f.end), _hinted(outer, *hints[spec.outer])]


def _hinted(loop: n.For, vec, unroll) -> n.For:
    if vec is None and unroll is None:
        return loop
    return dataclasses.replace(loop, vectorize=loop.vectorize if vec is None else (vec or 8),
                               unroll=loop.unroll if unroll is None else unroll)


def check_applied(opt, done: set) -> list:
    """Every within-row position loop must have found its loop; the line ``k.loops``
    shows for it."""
    spec = RowPos(*opt.row_pos) if opt.row_pos else None
    if spec is None:
        return []
    if spec.index not in done:
        raise ScheduleError(f"{spec.what}: the loop over {spec.index} does not walk {spec.operand}'s positions "
                            f"alone in this nest (it merges other sparse operands, runs densely, or is not "
                            f"nested in {spec.parent}'s loop); only such a loop has a segment of positions to walk")
    pieces = f": {spec.outer} over blocks of {spec.factor}, {spec.inner} within one" if spec.outer else ""
    return [f"({spec.what}: {spec.name} over one segment of {spec.operand}'s positions, under {spec.parent}"
            f"{pieces})"]


__all__ = ["RowPos", "WARP", "take", "strip", "check_applied"]
