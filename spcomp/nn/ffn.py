""":class:`SparseFFN`, the transformer FFN block: the options, constructors and
facts its two sparse forms share, and the weight-sparse form (``mode="weight"``:
up, down and gate are SparseLinear layers, the activation one elementwise kernel,
``H[t,n] = gelu(U[t,n])`` or, gated, ``H[t,n] = silu(G[t,n]) * U[t,n]``). The
activation-sparse form is :class:`~spcomp.nn.twell_ffn.TwellMode`, mixed in.
"""
from __future__ import annotations

import numpy as np

from spcomp.errors import ShapeError

from .activations import ACTIVATIONS, activation_expr
from .kernels import DTYPE, FEATURE_MAJOR, as_matrix, as_tokens, compile_kernel, empty, own_kernel, stored_rows, token_rows
from .linear import SparseLinear
from .twell_ffn import COLUMNS_FROM_TOKENS, TwellMode

__all__ = ["SparseFFN"]


class SparseFFN(TwellMode):
    """A transformer feed-forward block with sparse weights or sparse activations.

    Weights follow ``torch.nn.Linear``: ``w_up`` (ffn, hidden), ``w_down``
    (hidden, ffn), optional ``w_gate`` (ffn, hidden); biases are optional. Without a
    gate the block is ``down(act(up(x)))``; with one it is ``down(act(gate(x)) * up(x))``.

    ``mode="weight"``: up/down/gate pruned by magnitude to ``weight_density`` and
    stored in ``weight_format`` (SparseLinear each).

    ``mode="activation"``: the activation is packed in ``twell(B, K)`` per token
    row and only stored entries cost work. With ``activation="relu"`` and no
    ``topk``/``threshold`` the zeros of the ReLU are the sparsity (exact). With
    ``topk`` (a fraction of the FFN width if < 1, else a count per row) or
    ``threshold`` the dense activation is computed and only the kept entries are
    packed (training-free; approximate). ``K`` grows (powers of two, at most B)
    when a tile of a ReLU activation overflows it.

    ``select="magnitude"`` ranks activations by absolute value for ``topk`` and
    ``threshold`` (default: by value, "the k largest"). ``compensate=True`` (non-gated,
    topk/threshold) adds back, per token row, the mean of the dropped activations
    times the column sums of the down weight: a rank-1 correction for the systematic
    shift that dropping many small negative GELU values causes.

    ``consume`` is how the down projection (fused with up when gated) walks H:
    ``"columns"`` walks H by columns so each used row of ``Wu``/``Wd`` is read
    once for all tokens that need it (the weights, not the activations, are the
    memory traffic at 99 % sparsity): with a ReLU each thread's gate kernel writes
    its weight slab's columns of H compressed (``dc:1,0``) and the consumer walks
    them on the same thread; top-k/threshold twell is re-packed by columns.
    ``"rows"`` packs twell and reads its rows as packed, a token at a time;
    ``"auto"`` (default) takes columns from 64 tokens on.

    ``sparsity`` is the measured sparsity of the mode: of the weights, or of the last
    call's activations (``1 - nnz(H) / (tokens * ffn)``).
    """

    def __init__(self, w_up, b_up, w_down, b_down, *, w_gate=None, b_gate=None,
                 activation: str = "gelu", mode: str = "weight", weight_density: float | None = None,
                 weight_format: str = "csr", topk: float | None = None, threshold: float | None = None,
                 B: int = 256, K: int = 32, select: str = "value", compensate: bool = False,
                 consume: str = "auto"):
        if activation not in ACTIVATIONS:
            raise ValueError(f"activation must be one of {', '.join(ACTIVATIONS)}, not {activation!r}")
        if mode not in ("weight", "activation"):
            raise ValueError(f"mode must be 'weight' or 'activation', not {mode!r}")
        if topk is not None and threshold is not None:
            raise ValueError("give topk or threshold, not both")
        if mode == "activation" and activation != "relu" and topk is None and threshold is None:
            raise ValueError(f"{activation} activations are not sparse: give topk= or threshold= "
                             "(or use activation='relu')")
        w_up = w_up if mode == "weight" else as_matrix(w_up, "w_up")
        self.mode = mode
        self.activation = activation
        self.gated = w_gate is not None
        if select not in ("value", "magnitude"):
            raise ValueError(f"select must be 'value' or 'magnitude', not {select!r}")
        self.topk = topk
        self.threshold = threshold
        self.select = select
        self.compensate = bool(compensate)
        if consume not in ("auto", "columns", "rows"):
            raise ValueError(f"consume must be 'auto', 'columns' or 'rows', not {consume!r}")
        self.consume = consume
        self.B = int(B)
        self.K = int(K)
        self.last_nnz: int | None = None
        self.last_size: int | None = None
        if mode == "weight":
            self._init_weight(w_up, b_up, w_down, b_down, w_gate, b_gate, weight_density, weight_format)
        else:
            if weight_density is not None:
                raise ValueError("mode='activation' keeps dense weights; weight_density applies to mode='weight'")
            self._init_activation(w_up, b_up, w_down, b_down, w_gate, b_gate)

    # ------------------------------------------------------------- builders
    @classmethod
    def from_dense(cls, w_up, b_up, w_down, b_down, *, w_gate=None, b_gate=None, activation: str = "gelu",
                   weight_density: float | None = None, weight_format: str = "csr", topk=None,
                   threshold=None, B: int = 256, K: int = 32, select: str = "value",
                   compensate: bool = False, mode: str | None = None, consume: str = "auto") -> "SparseFFN":
        """Build from dense weights; the mode follows the arguments when not given:
        ``weight_density`` -> weight-sparse; ``topk``/``threshold`` or a ReLU
        activation -> activation-sparse (TwELL); otherwise weight-sparse keeping
        every weight."""
        if mode is None:
            if weight_density is not None:
                mode = "weight"
            elif topk is not None or threshold is not None or activation == "relu":
                mode = "activation"
            else:
                mode = "weight"
        return cls(w_up, b_up, w_down, b_down, w_gate=w_gate, b_gate=b_gate, activation=activation,
                   mode=mode, weight_density=weight_density, weight_format=weight_format, topk=topk,
                   threshold=threshold, B=B, K=K, select=select, compensate=compensate, consume=consume)

    @classmethod
    def weight_sparse(cls, w_up, b_up, w_down, b_down, *, density: float, w_gate=None, b_gate=None,
                      activation: str = "gelu", format: str = "csr") -> "SparseFFN":
        return cls(w_up, b_up, w_down, b_down, w_gate=w_gate, b_gate=b_gate, activation=activation,
                   mode="weight", weight_density=density, weight_format=format)

    @classmethod
    def activation_sparse(cls, w_up, b_up, w_down, b_down, *, w_gate=None, b_gate=None,
                          activation: str = "relu", topk=None, threshold=None, B: int = 256,
                          K: int = 32, select: str = "value", compensate: bool = False,
                          consume: str = "auto") -> "SparseFFN":
        return cls(w_up, b_up, w_down, b_down, w_gate=w_gate, b_gate=b_gate, activation=activation,
                   mode="activation", topk=topk, threshold=threshold, B=B, K=K, select=select,
                   compensate=compensate, consume=consume)

    # ------------------------------------------------- weight-sparse set-up
    def _init_weight(self, w_up, b_up, w_down, b_down, w_gate, b_gate, density, fmt):
        self.up = SparseLinear(w_up, b_up, format=fmt, density=density)
        self.down = SparseLinear(w_down, b_down, format=fmt, density=density)
        self.gate = SparseLinear(w_gate, b_gate, format=fmt, density=density) if self.gated else None
        self.hidden, self.ffn = self.up.in_features, self.up.out_features
        if self.down.in_features != self.ffn or self.down.out_features != self.hidden:
            raise ShapeError(f"w_down has shape ({self.down.out_features}, {self.down.in_features}); "
                             f"expected ({self.hidden}, {self.ffn})")
        # over the stored arrays (feature-major for csr/csc: U^T, H^T), plain row-major
        # operands either way, so repeated calls take the runtime's fast path (linear.py)
        if self.gated:
            act = compile_kernel(f"H[a,b] = {activation_expr(self.activation, 'G[a,b]')} * U[a,b]")
        else:
            act = compile_kernel(f"H[a,b] = {activation_expr(self.activation, 'U[a,b]')}")
        self.act_kernel = own_kernel(act)
        self.layers = [l for l in (self.gate, self.up, self.down) if l is not None]

    # ---------------------------------------------------------------- facts
    @property
    def weight_sparsity(self) -> float:
        if self.mode != "weight":
            return 0.0
        nnz = sum(l.nnz for l in self.layers)
        return 1.0 - nnz / sum(l.size for l in self.layers)

    @property
    def activation_sparsity(self) -> float | None:
        """1 - nnz(H) / (tokens * ffn) of the last call (None before the first)."""
        if self.last_nnz is None or not self.last_size:
            return None
        return 1.0 - self.last_nnz / self.last_size

    @property
    def sparsity(self) -> float | None:
        return self.weight_sparsity if self.mode == "weight" else self.activation_sparsity

    def describe(self) -> str:
        if self.mode == "weight":
            return (f"weight-sparse {self.activation}{' gated' if self.gated else ''} "
                    f"({self.up.format}, sparsity {self.weight_sparsity:.3f})")
        how = {"relu": "relu zeros", "topk": f"top-k {self.topk}",
               "threshold": f"threshold {self.threshold}"}[self.sparsifier]
        walk = {"rows": "twell rows", "columns": "by columns",
                "auto": f"twell rows, by columns from {COLUMNS_FROM_TOKENS} tokens"}[self.consume]
        return (f"activation-sparse {self.activation}{' gated' if self.gated else ''} "
                f"({how}; H {walk}, B={self.B})")

    def __repr__(self) -> str:
        return f"SparseFFN(hidden={self.hidden}, ffn={self.ffn}, {self.describe()})"

    # ---------------------------------------------------------------- call
    def __call__(self, x) -> np.ndarray:
        """``x`` (..., hidden) -> (..., hidden), float32."""
        x2, lead = as_tokens(x, self.hidden)
        x2 = np.ascontiguousarray(x2, dtype=DTYPE)
        out = self._forward_weight(x2) if self.mode == "weight" else self._forward_activation(x2)
        return token_rows(out).reshape(*lead, self.hidden)

    # weight-sparse ---------------------------------------------------------
    def _forward_weight(self, x: np.ndarray) -> np.ndarray:
        u = self.up.forward(x)
        g = self.gate.forward(x) if self.gated else None
        h = empty(u.shape, self.up.layout)
        stored = stored_rows if self.up.layout == FEATURE_MAJOR else np.asarray
        ops = {"U": stored(u), "H": stored(h)}
        if g is not None:
            ops["G"] = stored(g)
        # one call: the activation's float32 forms vectorise (backends/cpu/math_functions.py);
        # the runtime splits it over threads when it is large enough (a Python pool per
        # call cost more than the work at MiniLM's shapes)
        self.act_kernel(**ops)
        return self.down.forward(h)

