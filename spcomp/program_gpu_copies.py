"""Which copies of a fused GPU run's temporaries the launch makes, and their arrays.

A statement of a CUDA program run (``program_gpu.py``) that reads a temporary
written earlier in the run through a transposed copy or a diagonal would have the
host make that copy between two launches; where ``lower/device_copies.py`` can
make it on the device (a 2-d temporary copied into ``dc`` over its columns, or
its dense diagonal) the statement joins the launch, and the copy is one more block
before it (:func:`device_copies` decides, :func:`copy_function` builds the block).
The host allocates the copy's arrays before each launch (:func:`copy_args`): a
transposed copy holds at most the writer's capacity of entries (a writer that
counted more stops the launch before the copy runs), ``pos`` over the writer's
columns, and a scratch slot per column.
"""
from __future__ import annotations

import dataclasses

import numpy as np

from .errors import UnsupportedError
from .ir.types import F32, F64, I32
from .lower.device_copies import (COLS, ROWS, SCRATCH_ROLE, diagonal_function, gatherable, transposable,
                                  transpose_function)

TRANSPOSE, DIAGONAL = "transposed", "diagonal"
_VALUES = {F32: np.float32, F64: np.float64}  # the value types a copy is made of


@dataclasses.dataclass(frozen=True)
class DeviceCopy:
    """One copy a reader reads: its ``storage`` (``T_T``, ``T_diag``), the ``tensor``
    it is made from, ``kind`` (:data:`TRANSPOSE` or :data:`DIAGONAL`)."""
    storage: str
    tensor: str
    kind: str


def device_copies(low, written: set, formats: dict) -> list | None:
    """The copies ``low`` reads of tensors in ``written`` (stored ``formats[name]``),
    or None when one of them is not one the device makes."""
    out = []
    ops = low.operands
    read = {b.storage for b in low.code.bindings if b.role == "input"}
    for storage, (op, fmt) in ops.transposes.items():
        if op in ops.diagonals:  # a transposed copy of a diagonal
            if ops.diagonals[op].operand in written:
                return None
            continue
        if op not in written or storage not in read:
            continue
        if not transposable(formats[op], fmt):
            return None
        out.append(DeviceCopy(storage, op, TRANSPOSE))
    for storage, d in ops.diagonals.items():
        if d.operand not in written or storage not in read:
            continue
        if not gatherable(d, formats[d.operand]):
            return None
        out.append(DeviceCopy(storage, d.operand, DIAGONAL))
    return out


def copy_function(copy: DeviceCopy, name: str, reader_bindings: list, writer_vars: dict):
    """The copy's block as a function (``lower/device_copies.py``): its outputs are the
    reader's variables of ``copy.storage``, its inputs the writer's (``writer_vars``:
    (level, array) -> Var). UnsupportedError where the writer does not hand over the
    arrays it needs."""
    target = {(b.level, b.array): b.var for b in reader_bindings if b.role == "input" and b.storage == copy.storage}
    if (-1, "vals") not in target or target[(-1, "vals")].type.elem not in _VALUES:
        raise UnsupportedError(f"{copy.storage}: the launch makes copies of f32 and f64 values only")
    if copy.kind == TRANSPOSE:
        source = dict(writer_vars)  # dc's level-1 arrays, or cc's / c q's levels (fused_transpose._entries)
        if set(target) != {(1, "pos"), (1, "crd"), (-1, "vals")} or not {(1, "crd"), (-1, "vals")} <= set(source):
            raise UnsupportedError(f"{copy.storage}: not a dc copy of what the writer of {copy.tensor} hands over")
        return transpose_function(name, copy.tensor, copy.storage, source, target)
    if set(target) != {(-1, "vals")}:
        raise UnsupportedError(f"{copy.storage}: not a dense f32/f64 diagonal the launch gathers")
    keys = {(-1, "vals")} if (1, "pos") not in writer_vars else {(1, "pos"), (1, "crd"), (-1, "vals")}
    if not keys <= set(writer_vars):
        raise UnsupportedError(f"{copy.storage}: the writer of {copy.tensor} does not hand over its arrays")
    return diagonal_function(name, copy.tensor, copy.storage, {k: writer_vars[k] for k in keys}, target)


def copy_args(copy_fn, writer_fmt, shape: tuple, capacity: int) -> list:
    """One launch's arguments of a copy block: the writer's rows and columns (in its
    storage order), None for the writer's arrays (the fused function reads the
    writer's own), fresh zeroed arrays for the copy's (``capacity`` entries for a
    transposed copy) and its scratch."""
    order = tuple(writer_fmt.order)
    rows, cols = int(shape[order[0]]), int(shape[order[1]])
    diagonal = not any(b.role == SCRATCH_ROLE for b in copy_fn.bindings)
    args = []
    for b in copy_fn.bindings:
        if b.role == "size":
            args.append({ROWS: rows, COLS: cols}[b.index])
        elif b.role == "input":
            args.append(None)
        elif b.role == SCRATCH_ROLE:
            args.append(np.zeros(max(cols, 1), dtype=np.int64))
        elif b.array == "vals":
            args.append(np.zeros(max(rows if diagonal else capacity, 1), dtype=_VALUES[b.var.type.elem]))
        else:
            index = np.int32 if b.var.type.elem == I32 else np.int64
            args.append(np.zeros(cols + 1 if b.array == "pos" else max(capacity, 1), dtype=index))
    return args


__all__ = ["TRANSPOSE", "DIAGONAL", "DeviceCopy", "device_copies", "copy_function", "copy_args"]
