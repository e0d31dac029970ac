"""spcomp.runtime: tensor storage, conversions and validation (DESIGN §8).

* :class:`Tensor` — format, shape, value dtype and the NumPy arrays of each level;
  packing from dense / COO / SciPy, unpacking back, conversions between formats,
  validation and the arrays a kernel takes.
* :func:`as_tensor` — any operand a user passes (Tensor, ndarray, scipy.sparse) as a Tensor.
* :func:`validate_storage` — the structural checks, on raw arrays.
* :func:`read_matrix_market` / :func:`write_matrix_market`.
* :func:`resolve_dtype`, ``STORAGE_DTYPES`` — the value dtypes spcomp stores.
"""
from .convert import BFLOAT16, STORAGE_DTYPES, resolve_dtype
from .matrix_market import read_matrix_market, write_matrix_market
from .tensor import Tensor, as_tensor
from .validate import validate_storage

__all__ = ["Tensor", "as_tensor", "validate_storage", "read_matrix_market", "write_matrix_market",
           "resolve_dtype", "STORAGE_DTYPES", "BFLOAT16"]
