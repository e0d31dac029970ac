"""The weight-sparse linear layer, ``y = x W^T + b``, and magnitude pruning.

The weight is pruned once and stored ``csr``, ``csc`` or ``dense``; one kernel
does the product::

    Y[t,o] += X[t,i] * W[o,i]          # Y starts as the bias (or "=" without one)

For ``csr``/``csc`` the activations are kept feature-major (storage ``X^T``), so
the kernel walks a stored weight and runs its innermost loop over tokens,
contiguous: one AXPY over the token axis per stored weight. The kernel is written
over the stored arrays themselves, ``Yt[o,t] += Xt[i,t] * W[o,i]`` with plain
row-major ``Xt`` and ``Yt`` (the same loops as ``Y[t,o]`` in format ``dd:1,0``):
a plain output lets a repeated call take the runtime's fast path (runtime/fastcall.py),
~2 us of Python per call instead of ~40 us, which is most of a MiniLM-sized call.
"""
from __future__ import annotations

import numpy as np

from spcomp.errors import ShapeError

from .kernels import (DTYPE, FEATURE_MAJOR, TOKEN_MAJOR, as_matrix, as_tokens, as_vector, call_kernel,
                      compile_kernel, dense_operand, filled, own_kernel, stored_rows, token_rows)
from .parallel import parallel_map, row_ranges, serial_when_small

__all__ = ["SparseLinear", "prune_magnitude", "WEIGHT_FORMATS"]

WEIGHT_FORMATS = ("csr", "csc", "dense")

def prune_magnitude(weight, density: float | None):
    """Keep the ``round(density * size)`` largest-magnitude entries of a 2-D weight.

    ``weight`` is a dense array or a ``scipy.sparse`` matrix; the result is a float32
    ``scipy.sparse.csr_array`` (unstructured sparsity, one threshold per matrix).
    ``density=None`` keeps every nonzero.
    """
    import scipy.sparse as sp
    if sp.issparse(weight):
        coo = sp.coo_array(weight)
        coo.sum_duplicates()
        rows, cols, vals = coo.row, coo.col, coo.data.astype(DTYPE)
        shape = coo.shape
    else:
        w = np.asarray(weight, dtype=DTYPE)
        if w.ndim != 2:
            raise ShapeError(f"a linear weight is 2-D (out, in); this one has shape {w.shape}")
        rows, cols = np.nonzero(w)
        vals = w[rows, cols]
        shape = w.shape
    if density is not None:
        if not 0.0 <= density <= 1.0:
            raise ValueError(f"density must lie in [0, 1], not {density}")
        keep = int(round(density * shape[0] * shape[1]))
        if keep < vals.size:
            idx = np.argpartition(-np.abs(vals), keep - 1)[:keep] if keep > 0 else np.zeros(0, int)
            rows, cols, vals = rows[idx], cols[idx], vals[idx]
    m = sp.csr_array((vals, (rows, cols)), shape=shape, dtype=DTYPE)
    m.sum_duplicates()
    m.sort_indices()
    return m


# ------------------------------------------------------------------ SparseLinear

class SparseLinear:
    """``y = x W^T + b`` with a magnitude-pruned weight in a spcomp format.

    ``weight`` is (out, in) as in ``torch.nn.Linear``: a dense array or a
    ``scipy.sparse`` matrix. ``density`` prunes it to that fraction of stored
    entries (largest magnitudes); ``None`` keeps its nonzeros. ``format`` is how the
    weight is stored: ``"csr"`` (rows of W, parallel over outputs), ``"csc"``
    (columns of W, one thread) or ``"dense"`` (a dot product per (token, output)).

    >>> lin = SparseLinear.from_dense(W, b, density=0.1)       # doctest: +SKIP
    >>> y = lin(x)                                              # (tokens, out)
    >>> lin.sparsity                                            # 0.9
    """

    def __init__(self, weight, bias=None, format: str = "csr", density: float | None = None):
        from spcomp.runtime import Tensor
        if format not in WEIGHT_FORMATS:
            raise ValueError(f"format must be one of {', '.join(WEIGHT_FORMATS)}, not {format!r}")
        pruned = prune_magnitude(weight, density)
        self.out_features, self.in_features = pruned.shape
        self.format = format
        self.bias = as_vector(bias, self.out_features, "bias")
        self.nnz = int(pruned.nnz)
        if format == "dense":
            self.weight = Tensor.from_numpy(pruned.toarray(), "dense", dtype=DTYPE)
            self.layout = TOKEN_MAJOR
        elif format == "csr":
            self.weight = Tensor.from_scipy(pruned, "csr", dtype=DTYPE).validate()
            self.layout = FEATURE_MAJOR
        else:
            self.weight = Tensor.from_scipy(pruned.tocsc(), "csc", dtype=DTYPE).validate()
            self.layout = FEATURE_MAJOR
        op = "+=" if self.bias is not None else "="
        if self.layout == FEATURE_MAJOR:  # over the stored X^T and Y^T (module docstring)
            self.expression = f"Yt[o,t] {op} Xt[i,t] * W[o,i]"
            self.kernel = own_kernel(compile_kernel(self.expression, {"W": format}))
        else:
            self.expression = f"Y[t,o] {op} X[t,i] * W[o,i]"
            self.kernel = compile_kernel(self.expression, {"W": format, "X": self.layout, "Y": self.layout})
        #: keep a call under the runtime's work threshold on one thread (serial_when_small);
        #: spcomp.torch turns it off: there the kernels share torch's libgomp team
        self.serial_small = True

    @classmethod
    def from_dense(cls, weight, bias=None, density: float | None = None, format: str = "csr") -> "SparseLinear":
        """Prune a dense (out, in) weight by magnitude to ``density`` and store it in ``format``."""
        return cls(as_matrix(weight, "weight"), bias, format=format, density=density)

    # ---------------------------------------------------------------- facts
    @property
    def size(self) -> int:
        return self.out_features * self.in_features

    @property
    def density(self) -> float:
        """Stored weights / all weights."""
        return self.nnz / self.size if self.size else 0.0

    @property
    def sparsity(self) -> float:
        """Measured weight sparsity: 1 - nnz(W) / (out * in)."""
        return 1.0 - self.density

    def weight_numpy(self) -> np.ndarray:
        """The pruned weight as a dense (out, in) array."""
        return self.weight.to_numpy()

    def __repr__(self) -> str:
        return (f"SparseLinear(in={self.in_features}, out={self.out_features}, format={self.format!r}, "
                f"sparsity={self.sparsity:.3f}, bias={self.bias is not None})")

    # ---------------------------------------------------------------- call
    def __call__(self, x) -> np.ndarray:
        """``x`` (..., in) -> (..., out), float32."""
        x2, lead = as_tokens(x, self.in_features)
        y = self.forward(x2)
        return token_rows(y).reshape(*lead, self.out_features)

    def forward(self, x: np.ndarray) -> np.ndarray:
        """(tokens, in) -> (tokens, out); the result is laid out as ``self.layout``
        (a transposed view for csr/csc), ready for the next feature-major kernel."""
        T = x.shape[0]
        out = filled((T, self.out_features), self.layout, self.bias)
        if self.layout == FEATURE_MAJOR:
            # one call: the runtime splits the outer loop over outputs (csr) by nonzeros
            with serial_when_small(self.out_features + self.weight.nnz, self.serial_small):
                self.kernel(Xt=stored_rows(x), W=self.weight, Yt=out.T)
            return out

        def run(r):
            lo, hi = r
            call_kernel(self.kernel, X=dense_operand(x[lo:hi], self.layout), W=self.weight, Y=out[lo:hi])
        parallel_map(run, row_ranges(T))
        return out
