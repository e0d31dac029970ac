"""The ``twell(B,K)`` activation layout: packing, slicing and joining it.

TwELL stores each token row in tiles of B columns, at most K entries per tile.
The activation-sparse FFN builds, cuts and counts such tensors; these helpers do
it on the level arrays directly (views, no conversion).
"""
from __future__ import annotations

import numpy as np

from .kernels import DTYPE


def twell_format(B: int, K: int) -> str:
    return f"twell(B={B},K={K})"


def next_pow2(n: int) -> int:
    """The smallest power of two >= ``n`` (1 for n <= 1): K grows in these steps."""
    return 1 << max(0, int(n) - 1).bit_length()


def pack_twell(rows: np.ndarray, cols: np.ndarray, vals: np.ndarray, shape: tuple, B: int,
               K: int | None = None):
    """Pack kept activations ``(rows, cols, vals)`` into ``twell(B, K)``.

    ``K=None`` takes the smallest power of two that holds the fullest tile (at most
    B), so repeated calls reuse a handful of compiled down kernels.
    """
    from spcomp.runtime import Tensor
    T, N = shape
    nb = -(-N // B)
    if K is None:
        counts = np.bincount(rows * nb + cols // B, minlength=T * nb) if rows.size else np.zeros(1, int)
        K = min(B, next_pow2(max(1, int(counts.max()))))
    return Tensor.from_coo((rows, cols), vals.astype(DTYPE, copy=False), shape, twell_format(B, K),
                           dtype=DTYPE, overflow="grow")


def twell_rows(H, lo: int, hi: int):
    """Rows ``lo:hi`` of a twell tensor (views of its arrays)."""
    from spcomp.runtime import Tensor
    lvl = H.format.levels[1]
    nb = lvl.num_blocks(H.shape[1])
    K = lvl.K
    arr = H.levels[1]
    levels = [{}, {"count": arr["count"][lo * nb:hi * nb], "crd": arr["crd"][lo * nb * K:hi * nb * K]}]
    return Tensor(H.format, (hi - lo, H.shape[1]), levels, H.vals[lo * nb * K:hi * nb * K], validated=True)


def twell_hstack(tiles: list, shape: tuple):
    """Join twell tensors holding consecutive column ranges (whole blocks each)."""
    from spcomp.runtime import Tensor
    T = shape[0]
    fmt = tiles[0].format
    K = fmt.levels[1].K
    blocks = [fmt.levels[1].num_blocks(t.shape[1]) for t in tiles]  # explicit: T may be 0

    def join(arrays, width):
        return np.concatenate([a.reshape(T, nb * width) for a, nb in zip(arrays, blocks)], axis=1).reshape(-1)
    count = join([t.levels[1]["count"] for t in tiles], 1)
    crd = join([t.levels[1]["crd"] for t in tiles], K)
    vals = join([t.vals for t in tiles], K)
    return Tensor(fmt, shape, [{}, {"count": count, "crd": crd}], vals, validated=True)


def row_nnz(H) -> np.ndarray:
    """Cumulative stored entries per row of a twell tensor (length rows + 1)."""
    nb = H.format.levels[1].num_blocks(H.shape[1])
    per_row = H.levels[1]["count"].reshape(H.shape[0], nb).sum(axis=1, dtype=np.int64)
    return np.concatenate([[0], np.cumsum(per_row)])


def twell_nnz(H) -> int:
    """Stored entries of a twell tensor."""
    return int(H.levels[1]["count"].sum(dtype=np.int64))
