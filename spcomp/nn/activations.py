"""Activation functions and the training-free sparsifier of the activation-sparse FFN.

Models trained with GELU/SiLU have activations that are not exactly sparse; the
sparsifier keeps the largest ones of each token row (top-k) or those above a
threshold, and packs them into twell. NumPy selects; the kernels do the math.
"""
from __future__ import annotations

import numpy as np

from .twell import next_pow2, pack_twell

ACTIVATIONS = ("relu", "gelu", "silu")


def activation_expr(act: str, arg: str) -> str:
    """``act`` applied to ``arg`` in a kernel expression."""
    return f"{act}({arg})"


def _score(a: np.ndarray, select: str) -> np.ndarray:
    return np.abs(a) if select == "magnitude" else a


def keep_topk(a: np.ndarray, topk: float, select: str, B: int):
    """The ``topk`` largest entries of each row of ``a`` (a fraction of the row if < 1,
    else a count), ranked by value or, with ``select="magnitude"``, by absolute value;
    packed in ``twell(B, K)`` with K the smallest power of two that holds k."""
    T, N = a.shape
    k = int(round(topk * N)) if topk < 1 else int(topk)
    k = max(1, min(k, N))
    score = _score(a, select)
    if k < N:
        cols = np.argpartition(score, N - k, axis=1)[:, N - k:]
    else:
        cols = np.broadcast_to(np.arange(N), (T, N))
    rows = np.repeat(np.arange(T), k)
    cols = cols.reshape(-1)
    vals = a[rows, cols]
    K = min(B, next_pow2(k))  # a tile never holds more than k of a row's entries
    return pack_twell(rows, cols, vals, (T, N), B, K)


def keep_above(a: np.ndarray, threshold: float, select: str, B: int):
    """The entries of ``a`` above ``threshold`` (by value or magnitude), in ``twell(B, K)``
    with K fitted to the fullest tile."""
    rows, cols = np.nonzero(_score(a, select) > threshold)
    vals = a[rows, cols]
    return pack_twell(rows, cols, vals, a.shape, B, None)
