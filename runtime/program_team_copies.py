"""Transposed copies made inside a team call, between the phases (runtime/program_team.py).

A phase that reads a csr-like temporary of an earlier phase against its order
(``Z[k,i] = T[i,k]``) reads a copy stored the other way (a dense level over the
columns, then the rows, each column's rows ascending): the operand layer would
make it between two launches (``row_copies.swapped``). In one team call it is a
serial step of its own, run by thread 0 after the writer's phase (and its stitch)
and a barrier: the function ``lower/fused_transpose.transpose_function`` makes
(the counting sort the one-thread fused function runs inside, so the reader gets
the same arrays), reading the writer's arrays through their slots and leaving the
copy's in three slots of its own that the readers read through and that the
runtime frees after the call. A diagonal read still keeps the old path.
"""
from __future__ import annotations

from spcomp.ir.types import I64, ptr

from .row_copies import by_rows

ARRAYS = [(1, "pos"), (1, "crd"), (-1, "vals")]  # a csr-like copy's arrays, in parameter order


def copied(st, spec, writer) -> bool:
    """Whether step ``st``'s storage ``spec`` is a transposed copy of ``writer``'s csr-like
    tensor that the team driver can make between phases."""
    ours = writer.ctx.plan.out_format
    made = st.low.operands.transposes.get(spec.storage)
    return (made is not None and made[0] == spec.operand and spec.storage not in st.ctx.plan.derived
            and by_rows(ours) and ours.order == (0, 1) and by_rows(spec.format)
            and spec.format.order == (1, 0) and spec.format.levels[1].ordered and spec.dtype == writer.ctx.plan.out_dtype)


def copies_before(runs: list) -> list:
    """Per phase, the tensors whose transposed copy is made just before it (each once,
    before its first reader)."""
    written, made, out = set(), set(), []
    for run in runs:
        need = []
        for st in run.steps:
            for spec in st.ctx.plan.storages:
                if spec.operand in written and spec.storage != spec.operand and spec.operand not in made:
                    need.append(spec.operand)
                    made.add(spec.operand)
        out.append(list(dict.fromkeys(need)))
        written.update(st.name for st in run.steps if st.sparse)
    return out


def copy_types(index, value) -> tuple:
    """The IR types of the copy function's parameters (``transpose_function``)."""
    return (ptr(index), ptr(index), ptr(value), I64, I64, ptr(ptr(index)), ptr(ptr(index)), ptr(ptr(value)))


__all__ = ["ARRAYS", "copied", "copies_before", "copy_types"]
