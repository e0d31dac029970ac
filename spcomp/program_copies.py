"""A fused run's reads of its own sparse temporaries through transposed copies.

A statement that reads a 2-d sparse temporary against the order its writer stores
it in (``Z[k,i] = T[i,k]``, ``T`` csr; or ``T`` csc read by rows) reads a copy,
``T_T``. Inside a fused function that copy is made from the writer's arrays by a
counting sort (``lower/fused_transpose.py``), which builds ``dc`` (a ``pos`` over
the copy's outer index) for a 2-d ``T`` stored ``dc``, ``cc`` (dcsr) or ``c q``
(coo), its top level ordered, and a sorted coordinate list for any other of dense,
compressed or singleton levels (:func:`copyable`: a larger one, or one with an
unordered top level; sorted by every level where the writer has an unordered
one). A reader whose
own lowering would ask for another copy format (``cc:1,0`` of a dcsr ``T``,
``ccc:2,1,0`` of a csf one) is lowered again seeing ``T`` as ``dc`` (or a
coordinate list) in ``T``'s mode order (:func:`stand_in`), so that the copy it asks
for is of that kind in the other order; the function reads ``T`` only through that
copy (:func:`reads_only_copies`), so what ``T`` looks like to it otherwise does not
matter. A diagonal of a temporary is gathered inside the function too
(``lower/fused_diagonal.py``, :func:`in_function_copies`), and so is a copy of a
temporary with a packed-block level (its used slots walked, sorted and placed:
``fused_diagonal.copy_read``); a temporary its writer assembles in a stand-in (a
blocked one, blocked ELL too, or one with a dense or bitmap level below a sparse one,
or a bitmap above one) is laid out in its declared levels for each reader there
(:func:`expandable`, :func:`handed_arrays`), and a bitmap one read through a copy
has its set bytes walked. Anything else (a blocked temporary read through a copy,
an output assembled in another operand's blocks) keeps a kernel of its own,
:func:`apart_reason` saying why. A dense temporary declared in another
mode order is seen row-major by every fused lowering (:func:`row_major_temporaries`).
"""
from __future__ import annotations

import dataclasses

from .formats import Compressed, Dense, Format, PackedBlock, Singleton
from .formats.bitmap import Bitmap
from .lower.fused_diagonal import (buildable, copy_read, diagonal_read, diagonal_storages, expand_read, placeable,
                                   unblock_read, walkable)
from .lower.blocked import output_in_blocks
from .lower.fuse import made_arrays
from .lower.temporary_formats import with_formats
from .notation import accesses


def copyable(fmt) -> bool:
    """Whether a sparse temporary stored in ``fmt`` can be copied in another mode order
    inside the fused function: dense, bitmap, compressed, singleton or packed-block
    levels, unblocked, the top one not a singleton. A 2-d one whose rows are walked in order
    (``dc``, or a compressed top level ordered) is copied as ``dc`` (each column's rows
    come out ascending); any other as a sorted coordinate list (``sorted_copy_block``:
    sorted by every level where the writer has an unordered one). One with a
    packed-block or bitmap level has its used slots (set bytes) gathered and sorted into either
    (``fused_diagonal.copy_read``)."""
    if fmt.blocks is not None or len(fmt.levels) < 2:
        return False
    if any(type(lvl) in (PackedBlock, Bitmap) for lvl in fmt.levels):
        return walkable(fmt)
    kinds = [type(lvl) for lvl in fmt.levels]
    if len(kinds) == 2 and kinds[0] is Dense:
        return kinds[1] is Compressed
    return kinds[0] is not Singleton and all(k in (Dense, Compressed, Singleton) for k in kinds)


def stand_in(fmt) -> Format:
    """What a reader is lowered to see a copyable temporary as, in its mode order:
    ``dc`` for order 2 (the copy it then asks for is ``dc`` the other way), a
    coordinate list otherwise, or for an order-2 one whose top level is unordered
    (its rows come in no order: the copy is sorted by both levels)."""
    if len(fmt.levels) == 2 and (type(fmt.levels[0]) is Dense or fmt.levels[0].ordered):
        return Format((Dense(), Compressed()), fmt.order)
    return Format((Compressed(unique=False),) + (Singleton(unique=False),) * (len(fmt.levels) - 2)
                  + (Singleton(),), fmt.order)


def copy_recasts(low, copyables: dict) -> dict:
    """Name -> :func:`stand_in` for each temporary of ``copyables`` (name -> its
    declared format, each :func:`copyable`) that ``low`` reads through a transposed
    copy and that is not its stand-in already: the formats the reader is lowered with."""
    return {op: stand_in(copyables[op]) for op, _fmt in low.operands.transposes.values()
            if op in copyables and stand_in(copyables[op]) != copyables[op]}


def declared_in_warnings(low, recast: dict, copyables: dict):
    """``low`` (lowered with ``recast``) with its warnings naming each recast tensor's
    declared format (``copyables``), not the stand-in it was lowered to see."""
    warnings = list(low.inspection.warnings)
    for op, fmt in recast.items():
        warnings = [w.replace(f"operand {op} is stored as {fmt}", f"operand {op} is stored as {copyables[op]}")
                    for w in warnings]
    return dataclasses.replace(low, inspection=dataclasses.replace(low.inspection, warnings=warnings))


def reads_only_copies(low, names) -> bool:
    """Whether ``low`` reads none of ``names`` but through a transposed copy."""
    return not any(b.role == "input" and b.storage in names for b in low.code.bindings)


def apart_reason(statement: int, low, written: dict, formats: dict, assignment=None) -> str:
    """Why statement ``statement`` (0-based; ``low`` its fusable lowering, or None;
    ``assignment`` the statement, where known) does not join the run before it,
    which writes ``written`` (name -> arrays), ``formats`` the tensors' declared formats."""
    if low is None:
        fmt = assignment.lhs.tensor.format if assignment is not None else None
        if fmt is not None and fmt.blocks is not None:
            return (f"its output is not one a fused function writes (blocked, {fmt}: its kernel assembles it "
                    "in a stand-in the fused function does not lay out so, converted by the runtime afterwards)")
        blocks = output_in_blocks(assignment.lhs, assignment.rhs) if assignment is not None else None
        if blocks is not None:
            return (f"its output ({fmt}) has an index a blocked operand cuts: its kernel assembles it in that "
                    f"operand's blocks ({blocks}), converted by the runtime afterwards; the fused "
                    "function lays it out for a later statement only to read plainly or through a copy, "
                    "not on a diagonal")
        return "its output is not one a fused function writes (a dense array, or a sparse tensor " \
               "assembled in one pass)"
    for _storage, diagonal, fmt in diagonal_storages(low):
        d = low.operands.diagonals[diagonal]
        if d.operand in written and not buildable(d, fmt):
            return (f"it reads {d.operand} ({formats[d.operand].spec()}) through a diagonal copy stored "
                    f"{fmt.spec()!r}, which the fused function makes only of an unblocked temporary of dense, "
                    "bitmap, compressed, singleton or packed-block levels, into dense, bitmap, compressed, "
                    "singleton or packed-block levels")
    for op, fmt in low.operands.transposes.values():
        if op in written:
            return (f"it reads {op} ({formats[op].spec()}) through a copy stored {fmt.spec()!r}, which the fused "
                    "function makes only of an unblocked temporary of dense, bitmap, compressed, singleton "
                    "or packed-block levels")
    return "it reads arrays the run's statements do not hand over"


def expandable(low, later: str = "plain") -> bool:
    """Whether a fused function can lay out the sparse output ``low`` assembles in a
    stand-in (``low.output.expand``: dense levels below sparse ones, blocks included,
    stored compressed; after a kernel of its own the runtime expands it) in its
    declared format for the run's readers (``fused_diagonal.expand_read``): the same
    levels, mode order and blocks, the stand-in's walkable, the declared ones placeable.
    One assembled in another operand's blocks (a csr ``Z`` over indices a bsr operand
    cuts) is unblocked for each reader (``fused_diagonal.unblock_read``: gathered,
    sorted, placed; ``later``: how later statements read it, "none", "plain" or
    "diagonal", which refuses), the runtime converting it handed back as after a
    kernel of its own."""
    stand, fmt = low.inspection.notation.lhs.tensor.format, low.output.expand
    if stand.blocks != fmt.blocks:  # in an operand's blocks: unblocked for each reader
        return later == "none" or (later == "plain" and stand.blocks is not None and fmt.blocks is None
                                   and walkable(stand.level_view()) and placeable(fmt))
    return (stand.blocks == fmt.blocks and stand.order == fmt.order and len(stand.levels) == len(fmt.levels)
            and walkable(stand.level_view()) and placeable(fmt.level_view()))


def handed_arrays(low) -> set:
    """``(level, array)`` of what a fused writer hands its run's readers: the arrays it
    makes (``lower.fuse.made_arrays``), and, for one assembled in a stand-in
    (:func:`expandable`), those of its declared levels, which the function lays out
    for each reader (a bitmap's ``map`` too)."""
    out = made_arrays(low)
    fmt = low.output.expand
    if fmt is not None and expandable(low):
        out |= {(level, array) for level, lvl in enumerate(fmt.levels) for array in lvl.arrays} | {(-1, "vals")}
    return out


def in_function_copies(statements, run: list, lows: list, links: list) -> list:
    """Per statement of a run: the storages it reads as a transposed copy of a
    temporary the run wrote, as ``lower.fuse.fuse`` takes them: storage -> (writer,
    tensor, the index of each of the writer's levels, the writer's level of each of
    the copy's, whether the writer has an unordered level); and those it reads as a
    diagonal of one, or as a tensor whose writer assembled it in a stand-in
    (:func:`expandable`): storage -> its ``lower.fused_diagonal.DiagonalRead``."""
    out = []
    for j, k in enumerate(run):
        mine = {}
        for storage in {b.storage for b in lows[j].code.bindings if b.role == "input"} & set(links[j]):
            writer = lows[links[j][storage]]
            stand = writer.inspection.notation.lhs.tensor.format
            if writer.output.expand is not None and stand.blocks != writer.output.expand.blocks:
                acc = next(a for a in accesses(statements[k].rhs) if a.tensor.name == storage)
                mine[storage] = unblock_read(links[j][storage], storage, stand, [i.name for i in acc.indices],
                                             [i.name for i in statements[run[links[j][storage]]].lhs.indices],
                                             writer.output.expand)
            elif writer.output.expand is not None:
                acc = next(a for a in accesses(statements[k].rhs) if a.tensor.name == storage)
                mine[storage] = expand_read(links[j][storage], storage, writer.inspection.notation.lhs.tensor.format,
                                            [i.name for i in acc.indices],
                                            [i.name for i in statements[run[links[j][storage]]].lhs.indices],
                                            writer.output.expand)
        for storage, diagonal, fmt in diagonal_storages(lows[j]):
            d = lows[j].operands.diagonals[diagonal]
            if d.operand in links[j]:
                writer = links[j][d.operand]
                mine[storage] = diagonal_read(writer, d, list(d.indices),
                                              [i.name for i in statements[run[writer]].lhs.indices], fmt)
        for storage, (op, fmt) in lows[j].operands.transposes.items():
            if op in links[j]:
                writer = links[j][op]
                order = statements[run[writer]].lhs.tensor.format.order
                acc = next(a for a in accesses(statements[k].rhs) if a.tensor.name == op)
                wfmt = statements[run[writer]].lhs.tensor.format
                stand, expand = lows[writer].inspection.notation.lhs.tensor.format, lows[writer].output.expand
                if expand is not None and stand.blocks != expand.blocks:  # copied from its blocks
                    mine[storage] = unblock_read(writer, op, stand, [i.name for i in acc.indices],
                                                 [i.name for i in statements[run[writer]].lhs.indices], fmt)
                    continue
                if any(type(lvl) in (PackedBlock, Bitmap) for lvl in wfmt.levels):
                    mine[storage] = copy_read(writer, op, wfmt, [i.name for i in acc.indices],
                                              [i.name for i in statements[run[writer]].lhs.indices], fmt)
                    continue
                mine[storage] = (writer, op, [acc.indices[d].name for d in order], [order.index(d) for d in fmt.order],
                                 not all(lvl.ordered for lvl in wfmt.levels))
        out.append(mine)
    return out


def copyable_written(tensors: dict, written) -> dict:
    """Name -> declared format of each sparse tensor of ``written`` (names; ``tensors``
    the program's, name -> TensorVar) a fused function can copy (:func:`copyable`)."""
    return {n: tensors[n].format for n in written if not tensors[n].format.is_dense and copyable(tensors[n].format)}


def row_major_temporaries(program) -> dict:
    """Name -> the row-major dense format of each unblocked dense temporary declared
    in another mode order (``dd:1,0``). The fused planning lowers its writer and
    readers seeing it so: nothing outside the program sees a temporary, and
    row-major it is one more array the fused function hands from loop nest to loop
    nest (a row workspace, rows on threads) with no copy between its statements."""
    out = {}
    for name in program.temporaries:
        fmt = program.tensors[name].format
        if fmt.is_dense and fmt.blocks is None and fmt.order != tuple(range(len(fmt.levels))):
            out[name] = Format(tuple(Dense() for _ in fmt.levels), tuple(range(len(fmt.levels))))
    return out


def run_statements(program, run: list, lows: list, row_major: dict) -> list:
    """The program's statements, each of ``run`` seeing the temporaries it reads
    through an in-function copy as ``lows`` (its 32-bit lowering) does, and the
    ``row_major`` ones (:func:`row_major_temporaries`) row-major: what its
    64-bit lowering and its call plan are made from (``ProgramKernel._joining``)."""
    stmts = with_formats(program.statements, row_major)
    written: list = []
    for k, low in zip(run, lows):
        recast = copy_recasts(low, copyable_written(program.tensors, written))
        if recast:
            stmts[k] = with_formats([stmts[k]], recast)[0]
        written.append(stmts[k].lhs.tensor.name)
    return stmts
