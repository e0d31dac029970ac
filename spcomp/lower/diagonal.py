"""Accesses that repeat an index on a sparse tensor: ``A[i,i]``, ``X[i,j,i]``.

A dense operand is simply read at the repeated coordinate. A sparse one has no
position to read there without searching its levels, so the lowerer reads a
*diagonal storage* instead: a tensor of lower order holding the entries whose
coordinates agree on every repeated index (``A_diag[i] = A[i,i]``), which the
runtime builds from the operand at each call (O(nnz), cached per operand object
like any conversion). The kernel then sees an ordinary access, so traces,
diagonal extraction and ``A[i,i] * x[i]`` co-iterate like everything else.
"""
from __future__ import annotations

from dataclasses import dataclass

from ..formats import Compressed, Format
from ..notation import Access, TensorVar, accesses
from .normalize import replace


@dataclass(frozen=True)
class Diagonal:
    """How a diagonal storage comes from its operand."""
    operand: str          # the user's tensor
    operand_format: Format
    dims: tuple           # per operand dimension: the diagonal's dimension it lands on
    indices: tuple        # the access's index names, per operand dimension (for messages)
    format: Format        # the diagonal storage's own format (diagonal_format)

    @property
    def kept(self) -> tuple:
        """Per diagonal dimension, the operand dimension it comes from (the first of
        those its index covers)."""
        return kept_dims(self.dims)


def kept_dims(dims: tuple) -> tuple:
    """For ``dims`` (operand dimension -> diagonal dimension), the first operand
    dimension of each diagonal dimension."""
    return tuple(dims.index(k) for k in range(max(dims) + 1))


def diagonal_format(fmt: Format, dims: tuple) -> Format:
    """The diagonal's storage: the operand's levels of the dimensions kept (each
    repeated index keeps its first dimension), in the operand's storage order, with
    coordinate-list and packed levels made compressed (the runtime sums duplicates)."""
    kept = kept_dims(dims)
    levels = [(level, dims[d]) for level, d in zip(fmt.levels, fmt.order) if kept[dims[d]] == d]
    return Format(tuple(level if level.is_dense else Compressed() for level, _ in levels),
                  tuple(k for _, k in levels))


def diagonal_storages(rhs, taken: set):
    """``rhs`` with every sparse access that repeats an index replaced by an access
    of a diagonal storage, and ``{storage name: Diagonal}``."""
    found = {}
    for acc in dict.fromkeys(accesses(rhs)):
        fmt = acc.tensor.format
        names = [i.name for i in acc.indices]
        if fmt.is_dense or len(set(names)) == len(names):
            continue
        unique = list(dict.fromkeys(acc.indices))
        dims = tuple(unique.index(i) for i in acc.indices)
        name, k = f"{acc.tensor.name}_diag", 2
        while name in taken:
            name, k = f"{acc.tensor.name}_diag{k}", k + 1
        taken.add(name)
        storage = TensorVar(name, len(unique), diagonal_format(fmt, dims), acc.tensor.dtype)
        found[name] = Diagonal(acc.tensor.name, fmt, dims, tuple(names), storage.format)
        rhs = replace(rhs, acc, Access(storage, tuple(unique)))
    return rhs, found
