"""Matrix Market files to and from :class:`~spcomp.runtime.Tensor` (through ``scipy.io``).

``read_matrix_market(source, format="csr")`` reads a coordinate file (real, integer
or pattern; symmetric files come back expanded by SciPy) or a dense ``array`` file
and packs it into any 2-D format. ``write_matrix_market(target, tensor)`` writes a
coordinate file for a sparse format and an ``array`` file for a dense one.
bfloat16 values are written as float32. Complex files raise ``DTypeError``.
"""
from __future__ import annotations

import numpy as np
import scipy.sparse as sp

from spcomp.errors import ShapeError

from .convert import BFLOAT16


def _mmio():
    import scipy.io  # imported on use: it costs ~0.1 s at startup
    return scipy.io
from .tensor import Tensor

__all__ = ["read_matrix_market", "write_matrix_market"]


def read_matrix_market(source, format="csr", dtype=None, overflow: str = "error") -> Tensor:
    """A Tensor from a Matrix Market file name or file-like object."""
    m = _mmio().mmread(source)
    if sp.issparse(m):
        return Tensor.from_scipy(m, format, dtype=dtype, overflow=overflow)
    return Tensor.from_numpy(np.asarray(m), format, dtype=dtype, overflow=overflow)


def write_matrix_market(target, tensor: Tensor, comment: str | None = None,
                        precision: int | None = None, symmetry: str = "general") -> None:
    """Write a 2-D Tensor: coordinate format when it is sparse, array format when dense."""
    if not isinstance(tensor, Tensor):
        raise TypeError(f"write_matrix_market takes a spcomp Tensor, not {type(tensor).__name__}")
    if tensor.ndim != 2:
        raise ShapeError(f"Matrix Market files hold matrices; this tensor has shape {tensor.shape}")
    if tensor.format.is_dense:
        a = tensor.to_numpy()
        if a.dtype == BFLOAT16:
            a = a.astype(np.float32)
    else:
        a = tensor.to_scipy("coo")
    _mmio().mmwrite(target, a, comment=comment or "", field="real", precision=precision,
                     symmetry=symmetry)
