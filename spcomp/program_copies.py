"""A fused run's reads of its own sparse temporaries through transposed copies.

A statement that reads a 2-d sparse temporary against the order its writer stores
it in (``Z[k,i] = T[i,k]``, ``T`` csr; or ``T`` csc read by rows) reads a copy,
``T_T``. Inside a fused function that copy is made from the writer's arrays by a
counting sort (``lower/fused_transpose.py``), which always builds ``dc`` (a ``pos``
over the copy's outer index). The writer may store ``T`` as ``dc``, ``cc`` (dcsr)
or ``c q`` (coo), its top level ordered (:func:`copyable`). A reader whose own
lowering would ask for another copy format (``cc:1,0`` of a dcsr ``T``) is lowered
again seeing ``T`` as ``dc`` in ``T``'s mode order (:func:`stand_in`), so that the
copy it asks for is ``dc`` the other way round; the function reads ``T`` only
through that copy (:func:`reads_only_copies`), so what ``T`` looks like to it
otherwise does not matter. Anything else (a 3-d temporary read in another mode
order, a blocked or unordered one) keeps a kernel of its own, :func:`apart_reason`
saying why.
"""
from __future__ import annotations

from .formats import Compressed, Dense, Format, Singleton
from .lower.fuse import is_dense_compressed
from .notation import accesses


def copyable(fmt) -> bool:
    """Whether a 2-d sparse temporary stored in ``fmt`` can be transposed inside the
    fused function: ``dc`` (csr, csc), ``cc`` (dcsr) or ``c q`` (coo), unblocked, a
    compressed top level ordered (its rows are walked in order, so each column's rows
    come out ascending)."""
    if fmt.blocks is not None or len(fmt.levels) != 2:
        return False
    top, below = fmt.levels
    if type(top) is Dense:
        return type(below) is Compressed
    return type(top) is Compressed and top.ordered and type(below) in (Compressed, Singleton)


def stand_in(fmt) -> Format:
    """What a reader is lowered to see a copyable temporary as: ``dc`` in its mode
    order (the copy it then asks for is ``dc`` in the other one)."""
    return Format((Dense(), Compressed()), fmt.order)


def copy_recasts(low, copyables: dict) -> dict:
    """Name -> :func:`stand_in` for each temporary of ``copyables`` (name -> its
    declared format, each :func:`copyable`) that ``low`` reads through a transposed
    copy and that is not ``dc`` already: the formats the reader is lowered with."""
    return {op: stand_in(copyables[op]) for op, _fmt in low.operands.transposes.values()
            if op in copyables and not is_dense_compressed(copyables[op])}


def reads_only_copies(low, names) -> bool:
    """Whether ``low`` reads none of ``names`` but through a transposed copy."""
    return not any(b.role == "input" and b.storage in names for b in low.code.bindings)


def apart_reason(statement: int, low, written: dict, formats: dict) -> str:
    """Why statement ``statement`` (0-based; ``low`` its fusable lowering, or None)
    does not join the run before it, which writes ``written`` (name -> arrays),
    ``formats`` the tensors' declared formats."""
    if low is None:
        return "its output is not one a fused function writes (a row-major dense array, or a sparse tensor " \
               "assembled in one pass)"
    for d in low.operands.diagonals.values():
        if d.operand in written:
            return f"it reads {d.operand} through a diagonal copy"
    for op, fmt in low.operands.transposes.values():
        if op in written:
            return (f"it reads {op} ({formats[op].spec()}) through a copy stored {fmt.spec()!r}, which the fused "
                    "function makes only of a 2-d dc, cc (top level ordered) or coo temporary")
    return "it reads arrays the run's statements do not hand over"


def transposed_copies(statements, run: list, lows: list, links: list) -> list:
    """Per statement of a run: the storages it reads as a transposed copy of a
    temporary the run wrote, as ``lower.fuse.fuse`` takes them: storage -> (writer,
    tensor, index of the writer's rows, index of its columns: in its storage order)."""
    out = []
    for j, k in enumerate(run):
        mine = {}
        for storage, (op, _fmt) in lows[j].operands.transposes.items():
            if op in links[j]:
                writer = links[j][op]
                order = statements[run[writer]].lhs.tensor.format.order
                acc = next(a for a in accesses(statements[k].rhs) if a.tensor.name == op)
                mine[storage] = (writer, op, acc.indices[order[0]].name, acc.indices[order[1]].name)
        out.append(mine)
    return out
