"""NumPy helpers the level kinds' storage hooks share (pack, unpack, validate)."""
from __future__ import annotations

import numpy as np

INT32_MAX = 2**31 - 1


def index_array(a: np.ndarray, bound: int | None = None) -> np.ndarray:
    """``a`` as int32 when every value fits (``bound`` is a known upper bound), else int64."""
    if bound is None:
        bound = int(a.max()) if a.size else 0
    return a.astype(np.int32 if bound <= INT32_MAX else np.int64, copy=False)


def coordinate_array(c: np.ndarray, N: int) -> np.ndarray:
    """Coordinates of a dimension of size ``N`` as int32 when N - 1 fits, else by their values."""
    return index_array(c, N - 1 if N - 1 <= INT32_MAX else None)


def ranges(starts: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """Concatenation of ``arange(s, s + n)`` for every (s, n), vectorised."""
    lengths = lengths.astype(np.int64, copy=False)
    total = int(lengths.sum()) if lengths.size else 0
    if total == 0:
        return np.zeros(0, np.int64)
    ends = np.cumsum(lengths)
    offsets = np.repeat(starts.astype(np.int64, copy=False) - (ends - lengths), lengths)
    return np.arange(total, dtype=np.int64) + offsets


def first(mask: np.ndarray):
    """Index of the first True in ``mask``, or None."""
    k = np.flatnonzero(mask)
    return int(k[0]) if k.size else None


def first_duplicate(segment: np.ndarray, crd: np.ndarray):
    """(earlier, later) indices of the first repeated (segment, crd) pair, or None."""
    if crd.size < 2:
        return None
    perm = np.lexsort((crd, segment))
    s, c = segment[perm], crd[perm]
    k = first((s[1:] == s[:-1]) & (c[1:] == c[:-1]))
    if k is None:
        return None
    a, b = int(perm[k]), int(perm[k + 1])
    return (min(a, b), max(a, b))


def grid(cur: np.ndarray, N: int) -> np.ndarray:
    """Positions ``q*N + c`` for every parent ``q`` in ``cur`` and every ``c < N``, in order."""
    return (cur[:, None] * N + np.arange(N, dtype=np.int64)).reshape(-1)
