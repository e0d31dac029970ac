"""Copies of a 2-d tensor stored by rows (csr-like: a dense level, then a compressed
one), made in O(rows + entries) by compiled code, not through a coordinate list.

An operand read against its order, or on its diagonal, is copied by the operand
layer as a kernel binds it (``operands.py``): in general through its coordinate
list, sorted (``Tensor.to_format``, ``convert.pack_coo``). A program's fused run
on threads by phases (``spcomp/program_phases.py``) hands its csr temporary to
the next phase's reader this way, where its one-thread function copies it inside
(a counting sort: ``lower/fused_transpose.py``); at millions of entries the sort
costs several times the statements. For the common case these give the same
arrays the general path gives: :func:`swapped` transposes with SciPy's counting
sort (``tocsc``: each column's rows ascending, as the coordinate sort orders
them), :func:`diagonal_entries` gathers the entries on the diagonal row by row.
"""
from __future__ import annotations

import numpy as np

from spcomp.formats import Compressed, Dense

_SCIPY_DTYPES = frozenset(np.dtype(t) for t in ("float32", "float64", "int32", "int64", "complex64", "complex128"))


def by_rows(fmt) -> bool:
    """Whether ``fmt`` is a 2-d unblocked dense level, then a unique compressed one."""
    return (fmt.blocks is None and len(fmt.levels) == 2 and type(fmt.levels[0]) is Dense
            and type(fmt.levels[1]) is Compressed and fmt.levels[1].unique)


def swapped(t, fmt, drop_zeros: bool):
    """``t`` (a Tensor stored :func:`by_rows`) in ``fmt``, the same kind of levels in
    the other mode order (ordered), as ``t.to_format(fmt, drop_zeros=drop_zeros)``
    makes it; None where that case is not this one (then the general path runs)."""
    import scipy.sparse as sp
    if not (by_rows(t.format) and by_rows(fmt) and fmt.levels[1].ordered and fmt.order == t.format.order[::-1]
            and t.vals.dtype in _SCIPY_DTYPES):
        return None
    level = t.levels[1]
    pos = level["pos"]
    nnz = int(pos[-1])
    if drop_zeros and not np.all(t.vals[:nnz]):  # (zeros to drop: rare, the general path drops them)
        return None
    rows, cols = (t.shape[d] for d in t.format.order)
    crd = level["crd"][:nnz]
    # SciPy's counting sort indexes its counts by these coordinates unchecked: arrays
    # changed in place since the tensor was validated go the general (checked) way
    if (len(pos) != rows + 1 or pos[0] != 0 or nnz > len(level["crd"]) or nnz > len(t.vals)
            or np.any(pos[1:] < pos[:-1]) or (nnz and (crd.min() < 0 or crd.max() >= cols))):
        return None
    m = sp.csr_array((t.vals[:nnz], crd, pos), shape=(rows, cols), copy=False).tocsc()
    levels = [{}, {"pos": m.indptr.astype(level["pos"].dtype, copy=False),
                   "crd": m.indices.astype(level["crd"].dtype, copy=False)}]
    return type(t)(fmt, t.shape, levels, m.data, validated=True)


def diagonal_entries(t):
    """``(coords, values)`` of the entries of ``t`` (a square Tensor stored :func:`by_rows`)
    on its diagonal, in row order: what the general path keeps of its coordinate list."""
    level = t.levels[1]
    pos = level["pos"]
    crd = level["crd"][:int(pos[-1])]
    rows = np.repeat(np.arange(t.shape[t.format.order[0]], dtype=crd.dtype), np.diff(pos))
    keep = np.flatnonzero(crd == rows)
    return rows[keep].astype(np.int64)[None, :], t.vals[keep]


__all__ = ["by_rows", "diagonal_entries", "swapped"]
