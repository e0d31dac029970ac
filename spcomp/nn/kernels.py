"""The layers' side of the kernel interface: float32 arrays in the layouts the
kernels take, compiling and calling.

Every layer passes NumPy arrays through these helpers, so the dtype, the layouts
and the cache dropping after each call are decided in one place.
"""
from __future__ import annotations

import numpy as np

import spcomp
from spcomp.errors import ShapeError

DTYPE = np.float32
TOKEN_MAJOR = "dense"      # X[t,i] stored row by row (NumPy's C order)
FEATURE_MAJOR = "dd:1,0"   # X[t,i] stored as X^T: the token axis is contiguous
COLUMN_MAJOR = "dc:1,0"    # H[t,n] compressed by columns (CSC): the consumer walks n, then t


def compile_kernel(expression: str, formats: dict | None = None, schedule=None) -> "spcomp.Kernel":
    """A float32 CPU kernel (a cache hit after the first build of a layer)."""
    return spcomp.compile(expression, formats=formats or {}, dtype="float32", schedule=schedule)


def own_kernel(kernel) -> "spcomp.Kernel":
    """A Kernel sharing ``kernel``'s compiled code (no compile) with call state of its own.

    Each layer calls its own: the runtime's fast path replays a kernel's last calls
    (runtime/fastcall.py) while the same weight Tensor comes back with new activation
    arrays laid out as before, so one shared kernel alternating between the up and down
    weights (or the layers of a model) would take the ~40 us general path every call."""
    from spcomp.kernel import Kernel
    own = Kernel(kernel.expression, kernel.notation, kernel.options, kernel.target, kernel.schedule,
                 variants=kernel.variants)
    own.contraction, own.autotune, own.tuned_buckets = kernel.contraction, kernel.autotune, kernel.tuned_buckets
    return own


def call_kernel(kernel, **operands):
    """Run a kernel, then drop the operands from its per-object conversion cache.

    The cache no longer keeps operands alive nor serves stale copies (both fixed
    since docs/ffn.md reported them); dropping the entries still frees a converted
    copy as soon as the call returns, where the layers pass fresh operands per call.
    """
    try:
        return kernel(**operands)
    finally:
        kernel.forget(*operands.values())


# --------------------------------------------------------------------- operands

def _order(layout: str) -> tuple:
    return (1, 0) if layout == FEATURE_MAJOR else (0, 1)


def dense_operand(a: np.ndarray, layout: str) -> "spcomp.Tensor":
    """A 2-D array as a dense Tensor in ``layout``; no copy when it already is."""
    from spcomp.runtime import Tensor
    storage = np.transpose(a, _order(layout))
    if storage.dtype != DTYPE or not storage.flags.c_contiguous:
        storage = np.ascontiguousarray(storage, dtype=DTYPE)
    return Tensor(layout, a.shape, [{}, {}], storage.reshape(-1), validated=True)


def stored_rows(a: np.ndarray) -> np.ndarray:
    """The feature-major storage of a (tokens, features) array: ``a.T`` as a plain
    row-major float32 array (a view when ``a`` is already laid out so, else a copy),
    for the kernels written over stored arrays (``Yt[o,t] += Xt[i,t] * W[o,i]``)."""
    t = a.T
    if t.dtype != DTYPE or not t.flags.c_contiguous:
        t = transposed(a)
    return t


def transposed(a: np.ndarray, rows: int = 64) -> np.ndarray:
    """``a.T`` (2-D) as a new row-major float32 array, copied ``rows`` rows of ``a`` at
    a time: NumPy's one strided copy of a 256 x 384 float32 matrix takes ~90 us here,
    by blocks of 64 rows ~30 us (each block's reads stay in cache across its columns)."""
    out = np.empty(a.shape[::-1], DTYPE)
    for r in range(0, a.shape[0], rows):
        out[:, r:r + rows] = a[r:r + rows].T
    return out


def token_rows(a: np.ndarray) -> np.ndarray:
    """A (tokens, features) array as a row-major float32 one (a view when it is one)."""
    if a.dtype == DTYPE and a.flags.c_contiguous:
        return a
    return transposed(a.T) if a.T.flags.c_contiguous else np.ascontiguousarray(a, dtype=DTYPE)


def vector_operand(v: np.ndarray) -> "spcomp.Tensor":
    """A 1-D array as a dense Tensor."""
    from spcomp.runtime import Tensor
    return Tensor("dense", v.shape, [{}], np.ascontiguousarray(v, dtype=DTYPE), validated=True)


def empty(shape: tuple, layout: str) -> np.ndarray:
    """An uninitialised (rows, cols) array whose memory is laid out as ``layout``."""
    if layout == FEATURE_MAJOR:
        return np.empty(shape[::-1], DTYPE).T
    return np.empty(shape, DTYPE)


def filled(shape: tuple, layout: str, row: np.ndarray | None) -> np.ndarray:
    """(rows, cols) in ``layout``, every row equal to ``row`` (zeros when None)."""
    out = empty(shape, layout)
    out[...] = 0.0 if row is None else row
    return out


# -------------------------------------------------------------------- arguments

def as_vector(b, n: int, what: str) -> np.ndarray | None:
    """A bias as a float32 vector of ``n`` entries (None stays None)."""
    if b is None:
        return None
    b = np.ascontiguousarray(b, dtype=DTYPE).reshape(-1)
    if b.shape[0] != n:
        raise ShapeError(f"{what} has {b.shape[0]} entries; the layer has {n} outputs")
    return b


def as_matrix(w, what: str) -> np.ndarray:
    """A dense or ``scipy.sparse`` weight as a dense float32 2-D array."""
    import scipy.sparse as sp
    if sp.issparse(w):
        w = w.toarray()
    w = np.ascontiguousarray(w, dtype=DTYPE)
    if w.ndim != 2:
        raise ShapeError(f"{what} is 2-D; this one has shape {w.shape}")
    return w


def as_tokens(x, features: int) -> tuple:
    """``x`` as (tokens, features) plus the leading shape to restore."""
    x = np.asarray(x)
    if x.ndim == 0 or x.shape[-1] != features:
        raise ShapeError(f"input has shape {x.shape}; the layer takes (..., {features})")
    lead = x.shape[:-1]
    return x.reshape(-1, features), lead
