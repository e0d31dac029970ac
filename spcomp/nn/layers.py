"""Sparse feed-forward layers whose arithmetic runs in spcomp kernels.

NumPy arrays in, NumPy arrays out, float32 throughout. Every multiply-add and
every activation function runs in a kernel from :func:`spcomp.compile`; NumPy
only moves data (transposes, slices, stacking packed tiles) and, in the
training-free sparsifier, selects which activations to keep.

:class:`SparseLinear`
    ``y = x W^T + b`` with ``W`` pruned by magnitude and stored ``csr``, ``csc``
    or ``dense``::

        Y[t,o] += X[t,i] * W[o,i]          # Y starts as the bias (or "=" without one)

    For ``csr``/``csc`` the activations are kept feature-major (format ``dd:1,0``,
    storage ``X^T``), so the kernel walks a stored weight and runs its innermost
    loop over tokens, contiguous: one AXPY over the token axis per stored weight.

:class:`SparseFFN`
    The two forms of the sparse-FFN literature.

    *weight-sparse* (``mode="weight"``): up, down (and gate) are SparseLinear
    layers; the activation is one elementwise kernel, ``H[t,n] = gelu(U[t,n])``
    or, gated, ``H[t,n] = silu(G[t,n]) * U[t,n]``.

    *activation-sparse* (``mode="activation"``, TwELL): the activations are packed
    per token row in ``twell(B,K)`` (tiles of B columns, K slots per tile) and only
    the stored ones cost work downstream::

        H[t,n] = relu(X[t,k]*Wg[n,k] + bg[n])                    # twell output, zeros dropped
        O[t,d] += H[t,n] * (X[t,k]*Wu[n,k] + bu[n]) * Wd[n,d]      # gated: fused up + down
        O[t,d] += H[t,n] * Wd[n,d]                                  # non-gated down

    For models trained with GELU/SiLU the activations are not exactly sparse; a
    training-free sparsifier keeps the ``topk`` largest activations of each token
    row (or those above ``threshold``): the dense activation comes from a spcomp
    kernel, NumPy's ``argpartition`` selects, :meth:`spcomp.Tensor.from_coo` packs
    the kept entries into twell, and the down projection is the twell kernel.

Two things the layers do around the compiler, for speed (see docs/ffn.md):

* The packed gate ``relu(X·Wgᵀ + b)`` is one kernel whose matrix product spcomp
  hands to BLAS (see ``Kernel.blas_calls``); the loop nest adds the bias, applies
  relu and packs. Under a schedule without BLAS it is computed one TwELL tile
  column at a time instead: a call per B rows of the gate weight, so that slice
  stays in cache while every token streams over it, on
  ``spcomp.get_num_threads()`` threads, the per-tile outputs stacked into one tensor.
* Kernels whose outer loop runs over tokens are called on row blocks from the
  same threads (the runtime keeps a call of a few hundred rows on one thread).
"""
from __future__ import annotations

import contextlib
import os
import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np

import spcomp
from spcomp.backends.cpu.blas import single_threaded_blas
from spcomp.errors import PackedOverflowError, ShapeError

__all__ = ["SparseLinear", "SparseFFN", "prune_magnitude", "ACTIVATIONS"]

DTYPE = np.float32
ACTIVATIONS = ("relu", "gelu", "silu")
WEIGHT_FORMATS = ("csr", "csc", "dense")

TOKEN_MAJOR = "dense"      # X[t,i] stored row by row (NumPy's C order)
COLUMN_MAJOR = "dc:1,0"    # H[t,n] compressed by columns (CSC): the consumer walks n, then t
# consume="auto" re-packs H by columns from this many tokens on: below it, the
# re-packing and the per-thread outputs cost more than the weight reuse saves
# (16 MiniLM tokens: 3.2 ms by columns, 2.5 ms by rows; 256 SparseLM-1B tokens on one
# thread: 8.4 ms by columns, 10.9 ms by rows)
COLUMNS_FROM_TOKENS = 64
FEATURE_MAJOR = "dd:1,0"   # X[t,i] stored as X^T: the token axis is contiguous


def _compile(expression: str, formats: dict | None = None, schedule=None) -> "spcomp.Kernel":
    """A float32 CPU kernel (a cache hit after the first build of a layer)."""
    return spcomp.compile(expression, formats=formats or {}, dtype="float32", schedule=schedule)


# --------------------------------------------------------------------- operands

def _order(layout: str) -> tuple:
    return (1, 0) if layout == FEATURE_MAJOR else (0, 1)


def _dense_operand(a: np.ndarray, layout: str) -> "spcomp.Tensor":
    """A 2-D array as a dense Tensor in ``layout``; no copy when it already is."""
    from spcomp.runtime import Tensor
    storage = np.transpose(a, _order(layout))
    if storage.dtype != DTYPE or not storage.flags.c_contiguous:
        storage = np.ascontiguousarray(storage, dtype=DTYPE)
    return Tensor(layout, a.shape, [{}, {}], storage.reshape(-1), validated=True)


def _empty(shape: tuple, layout: str) -> np.ndarray:
    """An uninitialised (rows, cols) array whose memory is laid out as ``layout``."""
    if layout == FEATURE_MAJOR:
        return np.empty(shape[::-1], DTYPE).T
    return np.empty(shape, DTYPE)


def _filled(shape: tuple, layout: str, row: np.ndarray | None) -> np.ndarray:
    """(rows, cols) in ``layout``, every row equal to ``row`` (zeros when None)."""
    out = _empty(shape, layout)
    out[...] = 0.0 if row is None else row
    return out


def _call(kernel, **operands):
    """Run a kernel, then drop the operands from its per-object conversion cache.

    The cache no longer keeps operands alive nor serves stale copies (both fixed
    since docs/ffn.md reported them); dropping the entries still frees a converted
    copy as soon as the call returns, where the layers pass fresh operands per call.
    """
    try:
        return kernel(**operands)
    finally:
        cache = getattr(kernel, "_tensor_cache", None)
        if cache is not None:
            ids = {id(v) for v in operands.values()}
            for key in list(cache):
                if key[0] in ids:
                    cache.pop(key, None)


# ---------------------------------------------------------------------- threads

_pool: ThreadPoolExecutor | None = None
_pool_size = 0
_pool_lock = threading.Lock()


def _after_fork_in_child():
    """The executor's threads do not exist in a child made by ``os.fork()`` (it would
    queue work nobody runs), and a lock another thread held stays held: new ones."""
    global _pool_lock, _pool
    _pool_lock = threading.Lock()
    _pool = None


os.register_at_fork(after_in_child=_after_fork_in_child)


def _threads() -> int:
    return spcomp.get_num_threads()


def _parallel(fn, items: list) -> list:
    """``[fn(item) for item in items]`` on the spcomp thread count (kernel calls release
    the GIL). Each item's kernel calls run on its own thread (``thread_limit(1)``): the
    items are the parallelism, a thread team per call would oversubscribe the cores."""
    global _pool, _pool_size
    n = _threads()
    if n <= 1 or len(items) <= 1:
        return [fn(it) for it in items]
    with _pool_lock:
        if _pool is None or _pool_size != n:
            _pool = ThreadPoolExecutor(max_workers=n - 1, thread_name_prefix="spcomp-nn")
            _pool_size = n
        pool = _pool

    def one_thread(item):
        with spcomp.thread_limit(1):
            return fn(item)
    futures = [pool.submit(one_thread, it) for it in items[1:]]
    results, errors = [], []
    try:
        results.append(one_thread(items[0]))
    except BaseException as e:  # still wait: workers write into buffers the caller owns
        errors.append(e)
    for f in futures:
        while True:
            try:
                results.append(f.result())
                break
            except BaseException as e:
                errors.append(e)
                if f.done():  # the item's own error, not a signal (Ctrl-C) while waiting
                    break
    if errors:
        raise errors[0]
    return results


def _serial_when_small(nonzero_work: int):
    """Keep a weight-sparse call on this thread when its rows + nonzeros are under the
    runtime's threshold, although its token loop makes the runtime's estimate larger.

    In a model such a call (~1 ms) sits between NumPy GEMMs: a libgomp team woken for
    it keeps spinning into the next GEMM while OpenBLAS's threads spin into the next
    kernel. Measured on the MiniLM encoder (examples/minilm_sparse.py --sweep, 2
    threads): a 10 %-density model's forward took 51-66 ms with these calls split,
    38-45 ms on one thread each (docs/ffn.md)."""
    from spcomp.runtime.threads import MIN_PARALLEL_WORK
    return spcomp.thread_limit(1) if nonzero_work < MIN_PARALLEL_WORK else contextlib.nullcontext()


def _row_ranges(n: int, work: np.ndarray | None = None, min_rows: int = 8) -> list:
    """Cut ``[0, n)`` into one range per thread (balanced by cumulative ``work``)."""
    from spcomp.runtime.threads import split
    parts = max(1, min(_threads(), n // min_rows))
    return split(n, parts, work)


def _chunks(n: int, parts: int) -> list:
    """``[0, n)`` as ``parts`` contiguous index lists of about equal length."""
    bounds = np.linspace(0, n, max(1, min(parts, n)) + 1).astype(int)
    return [list(range(a, b)) for a, b in zip(bounds[:-1], bounds[1:]) if b > a]


# ------------------------------------------------------------------------ twell

def twell_format(B: int, K: int) -> str:
    return f"twell(B={B},K={K})"


def _twell_rows(H, lo: int, hi: int):
    """Rows ``lo:hi`` of a twell tensor (views of its arrays)."""
    from spcomp.runtime import Tensor
    lvl = H.format.levels[1]
    nb = lvl.num_blocks(H.shape[1])
    K = lvl.K
    arr = H.levels[1]
    levels = [{}, {"count": arr["count"][lo * nb:hi * nb], "crd": arr["crd"][lo * nb * K:hi * nb * K]}]
    return Tensor(H.format, (hi - lo, H.shape[1]), levels, H.vals[lo * nb * K:hi * nb * K], validated=True)


def _twell_hstack(tiles: list, shape: tuple):
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


def _row_nnz(H) -> np.ndarray:
    """Cumulative stored entries per row of a twell tensor (length rows + 1)."""
    nb = H.format.levels[1].num_blocks(H.shape[1])
    per_row = H.levels[1]["count"].reshape(H.shape[0], nb).sum(axis=1, dtype=np.int64)
    return np.concatenate([[0], np.cumsum(per_row)])


def _twell_nnz(H) -> int:
    return int(H.levels[1]["count"].sum(dtype=np.int64))


def _next_pow2(n: int) -> int:
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
        K = min(B, _next_pow2(max(1, int(counts.max()))))
    return Tensor.from_coo((rows, cols), vals.astype(DTYPE, copy=False), shape, twell_format(B, K),
                           dtype=DTYPE, overflow="grow")


# ------------------------------------------------------------------------ prune

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


def _vector(b, n: int, what: str) -> np.ndarray | None:
    if b is None:
        return None
    b = np.ascontiguousarray(b, dtype=DTYPE).reshape(-1)
    if b.shape[0] != n:
        raise ShapeError(f"{what} has {b.shape[0]} entries; the layer has {n} outputs")
    return b


def _vector_operand(v: np.ndarray) -> "spcomp.Tensor":
    from spcomp.runtime import Tensor
    return Tensor("dense", v.shape, [{}], np.ascontiguousarray(v, dtype=DTYPE), validated=True)


def _matrix(w, what: str) -> np.ndarray:
    import scipy.sparse as sp
    if sp.issparse(w):
        w = w.toarray()
    w = np.ascontiguousarray(w, dtype=DTYPE)
    if w.ndim != 2:
        raise ShapeError(f"{what} is 2-D; this one has shape {w.shape}")
    return w


def _tokens(x, features: int) -> tuple:
    """``x`` as (tokens, features) plus the leading shape to restore."""
    x = np.asarray(x)
    if x.ndim == 0 or x.shape[-1] != features:
        raise ShapeError(f"input has shape {x.shape}; the layer takes (..., {features})")
    lead = x.shape[:-1]
    return x.reshape(-1, features), lead


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
        self.bias = _vector(bias, self.out_features, "bias")
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
        self.expression = f"Y[t,o] {op} X[t,i] * W[o,i]"
        self.kernel = _compile(self.expression, {"W": format, "X": self.layout, "Y": self.layout})

    @classmethod
    def from_dense(cls, weight, bias=None, density: float | None = None, format: str = "csr") -> "SparseLinear":
        """Prune a dense (out, in) weight by magnitude to ``density`` and store it in ``format``."""
        return cls(_matrix(weight, "weight"), bias, format=format, density=density)

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
        x2, lead = _tokens(x, self.in_features)
        y = self.forward(x2)
        return np.ascontiguousarray(y).reshape(*lead, self.out_features)

    def forward(self, x: np.ndarray) -> np.ndarray:
        """(tokens, in) -> (tokens, out); the result is laid out as ``self.layout``
        (a transposed view for csr/csc), ready for the next feature-major kernel."""
        T = x.shape[0]
        out = _filled((T, self.out_features), self.layout, self.bias)
        if self.layout == FEATURE_MAJOR:
            # one call: the runtime splits the outer loop over outputs (csr) by nonzeros
            with _serial_when_small(self.out_features + self.weight.nnz):
                _call(self.kernel, X=_dense_operand(x, self.layout), W=self.weight, Y=out)
            return out

        def run(r):
            lo, hi = r
            _call(self.kernel, X=_dense_operand(x[lo:hi], self.layout), W=self.weight, Y=out[lo:hi])
        _parallel(run, _row_ranges(T))
        return out


# ---------------------------------------------------------------------- SparseFFN

def _act_expr(act: str, arg: str) -> str:
    return f"{act}({arg})"


class SparseFFN:
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
        w_up = w_up if mode == "weight" else _matrix(w_up, "w_up")
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
        layout = self.up.layout
        if self.gated:
            self.act_kernel = _compile(f"H[t,n] = {_act_expr(self.activation, 'G[t,n]')} * U[t,n]",
                                       {"U": layout, "G": layout, "H": layout})
        else:
            self.act_kernel = _compile(f"H[t,n] = {_act_expr(self.activation, 'U[t,n]')}",
                                       {"U": layout, "H": layout})
        self.layers = [l for l in (self.gate, self.up, self.down) if l is not None]

    # --------------------------------------------- activation-sparse set-up
    def _init_activation(self, w_up, b_up, w_down, b_down, w_gate, b_gate):
        from spcomp.runtime import Tensor
        self.ffn, self.hidden = w_up.shape
        w_down = _matrix(w_down, "w_down")
        if w_down.shape != (self.hidden, self.ffn):
            raise ShapeError(f"w_down has shape {w_down.shape}; expected ({self.hidden}, {self.ffn})")
        self.b_up = _vector(b_up, self.ffn, "b_up")
        self.b_down = _vector(b_down, self.hidden, "b_down")
        self._wu_rows = np.ascontiguousarray(w_up, dtype=DTYPE)                  # (ffn, hidden)
        self._wd_rows = np.ascontiguousarray(w_down.T, dtype=DTYPE)              # (ffn, hidden)
        self.wu = Tensor.from_numpy(self._wu_rows, "dense", dtype=DTYPE)
        self._bu = None if self.b_up is None else Tensor.from_numpy(self.b_up, "dense")
        self.wd = Tensor.from_numpy(self._wd_rows, "dense", dtype=DTYPE)
        if self.gated:
            w_act = _matrix(w_gate, "w_gate")
            if w_act.shape != (self.ffn, self.hidden):
                raise ShapeError(f"w_gate has shape {w_act.shape}; expected ({self.ffn}, {self.hidden})")
            b_act = _vector(b_gate, self.ffn, "b_gate")
        else:
            w_act, b_act = w_up, self.b_up
        # the projection that decides sparsity (gate if gated, else up), cut in tiles of B rows
        self.act_whole = (Tensor.from_numpy(w_act, "dense", dtype=DTYPE),
                          None if b_act is None else Tensor.from_numpy(b_act, "dense"))
        self.act_tiles = [(Tensor.from_numpy(w_act[n0:n0 + self.B], "dense", dtype=DTYPE),
                           None if b_act is None else Tensor.from_numpy(b_act[n0:n0 + self.B], "dense"))
                          for n0 in range(0, self.ffn, self.B)]
        self.act_has_bias = b_act is not None
        self._w_act, self._b_act = w_act, b_act
        self._slabs: dict = {}
        self._packed_kernels: dict = {}
        self.sparsifier = "relu" if (self.activation == "relu" and self.topk is None
                                     and self.threshold is None) else ("topk" if self.topk is not None
                                                                       else "threshold")
        pre = "X[t,k]*Wa[n,k]" + (" + ba[n]" if self.act_has_bias else "")
        self.act_expression = f"A[t,n] = {_act_expr(self.activation, pre)}"
        if self.sparsifier != "relu":
            self.dense_act_kernel = _compile(self.act_expression)
        if self.compensate:
            if self.sparsifier == "relu" or self.gated:
                raise ValueError("compensate applies to a non-gated FFN with topk= or threshold=")
            self._rowsum_dense = _compile("r[t] = A[t,n]")
            self._compensation = _compile("O[t,d] += c[t] * S[d]")
            colsum = _call(_compile("S[d] = Wd[n,d]"), Wd=self.wd)
            self._wd_colsum = Tensor.from_numpy(colsum, "dense")
        self._kernels_for(self.K)

    def _kernels_for(self, K: int) -> tuple:
        """(packed activation kernel, consumer kernel) for twell(B, K) (compiled once each)."""
        hit = self._packed_kernels.get(K)
        if hit is not None:
            return hit
        tw = {"H": twell_format(self.B, K)}
        act = None
        if self.sparsifier == "relu":
            act = _compile(self.act_expression.replace("A[t,n]", "H[t,n]"), tw)
        self._packed_kernels[K] = (act, self._consumer(tw))
        return self._packed_kernels[K]

    def _consumer(self, formats: dict):
        """The down projection (fused with the up projection when gated) reading H
        in the format given; it adds into O, which starts as the bias or zero."""
        if self.gated:
            up = "(X[t,k]*Wu[n,k] + bu[n])" if self.b_up is not None else "X[t,k]*Wu[n,k]"
            return _compile(f"O[t,d] += H[t,n] * {up} * Wd[n,d]", formats)
        return _compile("O[t,d] += H[t,n] * Wd[n,d]", formats)

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
        x2, lead = _tokens(x, self.hidden)
        x2 = np.ascontiguousarray(x2, dtype=DTYPE)
        out = self._forward_weight(x2) if self.mode == "weight" else self._forward_activation(x2)
        return np.ascontiguousarray(out).reshape(*lead, self.hidden)

    # weight-sparse ---------------------------------------------------------
    def _forward_weight(self, x: np.ndarray) -> np.ndarray:
        u = self.up.forward(x)
        g = self.gate.forward(x) if self.gated else None
        h = _empty(u.shape, self.up.layout)
        layout = self.up.layout
        # elementwise kernel, split over the major axis of the storage
        axis = 1 if layout == FEATURE_MAJOR else 0
        length = u.shape[axis]

        def part(a, lo, hi):
            return a[:, lo:hi] if axis == 1 else a[lo:hi]

        def run(r):
            lo, hi = r
            ops = {"U": _dense_operand(part(u, lo, hi), layout), "H": part(h, lo, hi)}
            if g is not None:
                ops["G"] = _dense_operand(part(g, lo, hi), layout)
            _call(self.act_kernel, **ops)
        _parallel(run, _row_ranges(length))
        return self.down.forward(h)

    # activation-sparse -----------------------------------------------------
    def activations(self, x: np.ndarray):
        """The packed activation H (a twell Tensor) for tokens ``x`` (tokens, hidden)."""
        return self._activations(np.ascontiguousarray(x, dtype=DTYPE))[0]

    def _activations(self, x: np.ndarray) -> tuple:
        """``(H, c)``: the packed activation and, with ``compensate``, the per-row mean
        of the dropped activations (else None)."""
        X = _dense_operand(x, TOKEN_MAJOR)
        c = None
        if self.sparsifier == "relu":
            H = self._packed_relu(X, x.shape[0])
        else:
            A = self._dense_activation(X, x.shape[0])
            H = self._select(A)
            if self.compensate:
                c = self._dropped_mean(A, H)
        self.last_nnz = _twell_nnz(H)
        self.last_size = x.shape[0] * self.ffn
        return H, c

    def _dropped_mean(self, A: np.ndarray, H) -> np.ndarray:
        """Per token row: (sum of all activations - sum of kept) / number dropped."""
        total = _call(self._rowsum_dense, A=_dense_operand(A, TOKEN_MAJOR))
        kept = _call(_compile("q[t] = H[t,n]", {"H": str(H.format)}), H=H)
        dropped = self.ffn - np.diff(_row_nnz(H))
        return ((total - kept) / np.maximum(dropped, 1)).astype(DTYPE)

    def _tile_calls(self, kernel, X) -> list:
        """Call ``kernel`` once per weight tile (B rows), tiles spread over threads;
        or, when the kernel hands its matrix product to BLAS, once per thread on a
        slab of whole tiles (a slab is big enough for BLAS's cache blocking)."""
        def call(w, b):
            ops = {"X": X, "Wa": w}
            if b is not None:
                ops["ba"] = b
            return _call(kernel, **ops)

        if kernel.blas_calls:
            slabs = self._act_slabs(_threads())
            if len(slabs) == 1:
                return [call(*slabs[0])]
            # one weight slab per thread, each with a single-threaded BLAS call: the
            # relu + pack nests run in parallel too, and OpenBLAS's own workers get
            # no job, so they do not spin on the cores the consumer needs next
            with single_threaded_blas():
                return _parallel(lambda slab: call(*slab), slabs)

        def run(idx):
            return [call(*self.act_tiles[j]) for j in idx]
        groups = _chunks(len(self.act_tiles), _threads())
        return [r for part in _parallel(run, groups) for r in part]

    def _slab_cuts(self, parts: int) -> list:
        """``[(lo, hi), ...]``: ``parts`` row ranges of the FFN width, each whole
        B-row tiles (the last may be partial), none empty."""
        tiles = -(-self.ffn // self.B)
        cuts = [min(self.ffn, self.B * (tiles * p // parts)) for p in range(parts + 1)]
        return [(lo, hi) for lo, hi in zip(cuts[:-1], cuts[1:]) if hi > lo]

    def _act_slabs(self, parts: int) -> list:
        """The activation weight (and bias) as ``parts`` row slabs of whole B-row
        tiles (:meth:`_slab_cuts`), as Tensors (made once per thread count)."""
        from spcomp.runtime import Tensor
        if parts <= 1:
            return [self.act_whole]
        if parts not in self._slabs:
            w, b = self._w_act, self._b_act
            self._slabs[parts] = [(Tensor.from_numpy(w[lo:hi], "dense", dtype=DTYPE),
                                   None if b is None else Tensor.from_numpy(b[lo:hi], "dense"))
                                  for lo, hi in self._slab_cuts(parts)]
        return self._slabs[parts]

    def _packed_relu(self, X, T: int):
        while True:
            kernel, _ = self._kernels_for(self.K)
            try:
                tiles = self._tile_calls(kernel, X)
                break
            except PackedOverflowError as e:
                largest = e.largest_count or self.K + 1
                self.K = min(self.B, max(_next_pow2(largest), 2 * self.K))
        return tiles[0] if len(tiles) == 1 else _twell_hstack(tiles, (T, self.ffn))

    def _dense_activation(self, X, T: int) -> np.ndarray:
        tiles = self._tile_calls(self.dense_act_kernel, X)
        return np.concatenate(tiles, axis=1) if len(tiles) > 1 else tiles[0]

    def _select(self, a: np.ndarray):
        """Keep the top-k (by value) of each row, or the entries above the threshold."""
        T, N = a.shape
        if self.sparsifier == "topk":
            k = int(round(self.topk * N)) if self.topk < 1 else int(self.topk)
            k = max(1, min(k, N))
            score = np.abs(a) if self.select == "magnitude" else a
            if k < N:
                cols = np.argpartition(score, N - k, axis=1)[:, N - k:]
            else:
                cols = np.broadcast_to(np.arange(N), (T, N))
            rows = np.repeat(np.arange(T), k)
            cols = cols.reshape(-1)
            vals = a[rows, cols]
            K = min(self.B, _next_pow2(k))  # a tile never holds more than k of a row's entries
        else:
            score = np.abs(a) if self.select == "magnitude" else a
            rows, cols = np.nonzero(score > self.threshold)
            vals = a[rows, cols]
            K = None
        return pack_twell(rows, cols, vals, (T, N), self.B, K)

    def _forward_activation(self, x: np.ndarray) -> np.ndarray:
        T = x.shape[0]
        by_columns = self.consume == "columns" or (self.consume == "auto" and T >= COLUMNS_FROM_TOKENS)
        if by_columns and self.sparsifier == "relu":
            return self._forward_relu_columns(x)
        H, c = self._activations(x)
        out = _filled((T, self.hidden), TOKEN_MAJOR, self.b_down)
        if by_columns:
            self._consume_by_columns(H, x, out)
            if c is not None:
                _call(self._compensation, c=_vector_operand(c), S=self._wd_colsum, O=out)
            return out
        _, consumer = self._kernels_for(H.format.levels[1].K)

        def run(r):
            lo, hi = r
            ops = {"H": _twell_rows(H, lo, hi), "Wd": self.wd, "O": out[lo:hi]}
            if self.gated:
                ops["X"] = _dense_operand(x[lo:hi], TOKEN_MAJOR)
                ops["Wu"] = self.wu
                if self.b_up is not None:
                    ops["bu"] = self._bu
            _call(consumer, **ops)
            if c is not None:  # rank-1 mean compensation: O[t,d] += c[t] * sum_n Wd[n,d]
                _call(self._compensation, c=_vector_operand(c[lo:hi]), S=self._wd_colsum, O=out[lo:hi])
        _parallel(run, _row_ranges(T, _row_nnz(H)))
        return out

    def _forward_relu_columns(self, x: np.ndarray) -> np.ndarray:
        """The ReLU FFN with H compressed by columns, one weight slab per thread.

        Each thread runs the gate kernel on its slab of the gate weight, writing its
        columns of H as ``dc:1,0`` straight from the GEMM tile (no twell, no
        re-pack), then the consumer on those columns into its own output; the
        outputs are summed at the end. The slabs are the gate's (equal GEMM work);
        the consumer's share follows the slab's nonzeros."""
        T = x.shape[0]
        X = _dense_operand(x, TOKEN_MAJOR)
        slabs = self._column_slabs()
        out = _filled((T, self.hidden), TOKEN_MAJOR, self.b_down)
        outputs = [out] + [np.zeros_like(out) for _ in slabs[1:]]

        def run(p):
            H = self._gate_slab(slabs[p], X)
            self._consume_slab(slabs[p], H, X, outputs[p])
            return H.nnz
        nnz = self._on_slabs(run, slabs)
        self.last_nnz = int(sum(nnz))
        self.last_size = T * self.ffn
        self._sum_outputs(out, outputs[1:])
        return out

    def _column_slabs(self) -> list:
        """``[((lo, hi), (weight, bias)), ...]``: the gate weight's slab per thread."""
        parts = _threads()
        cuts = self._slab_cuts(parts) if parts > 1 else [(0, self.ffn)]
        return list(zip(cuts, self._act_slabs(parts)))

    def _gate_slab(self, slab, X):
        """H's columns ``lo:hi`` (``dc:1,0``) from the gate kernel on that slab."""
        _, (w, b) = slab
        ops = {"X": X, "Wa": w}
        if b is not None:
            ops["ba"] = b
        return _call(self._gate_by_columns(), **ops)

    def _consume_slab(self, slab, H, X, out: np.ndarray) -> None:
        """The fused consumer on a slab's columns of H, adding into ``out``."""
        (lo, hi), _ = slab
        _call(self._consumer({"H": COLUMN_MAJOR}), **self._column_operands(H, X, lo, hi, out))

    @staticmethod
    def _on_slabs(fn, slabs: list) -> list:
        """``[fn(p) for each slab p]``, a slab per thread, each thread's BLAS calls on
        that thread (see :meth:`_tile_calls`)."""
        if len(slabs) == 1:
            return [fn(0)]
        with single_threaded_blas():
            return _parallel(fn, list(range(len(slabs))))

    def _column_operands(self, H, X, lo: int, hi: int, out: np.ndarray) -> dict:
        """The consumer's operands for H's columns ``lo:hi`` of the FFN width (H
        holds just those columns): the same rows of ``Wd`` (and ``Wu``, ``bu``)."""
        ops = {"H": H, "Wd": self._wd_rows[lo:hi], "O": out}
        if self.gated:
            ops["X"] = X
            ops["Wu"] = self._wu_rows[lo:hi]
            if self.b_up is not None:
                ops["bu"] = self.b_up[lo:hi]
        return ops

    def _gate_by_columns(self):
        """The ReLU activation kernel writing H compressed by columns (``dc:1,0``)."""
        return _compile(self.act_expression.replace("A[t,n]", "H[t,n]"), {"H": COLUMN_MAJOR})

    @staticmethod
    def _sum_outputs(out: np.ndarray, parts: list) -> None:
        # summed on this thread: a libgomp team woken for this small add would keep
        # spinning afterwards and slow the next BLAS call (the next layer's gate)
        add = _compile("O[t,d] += P[t,d]", schedule=spcomp.Schedule().sequential())
        for part in parts:
            _call(add, O=out, P=part)

    def _consume_by_columns(self, H, x: np.ndarray, out: np.ndarray) -> None:
        """The consumer with H re-packed by columns (``dc:1,0``): each stored column
        ``n`` loads its rows of ``Wu`` and ``Wd`` once for all the tokens that use
        it, where the row-major twell walk loads them once per token. Threads take
        column ranges balanced by nonzeros, each into its own output, summed after."""
        from spcomp.runtime import Tensor
        from spcomp.runtime.threads import split
        coords, values = H.to_coo()
        Hc = Tensor.from_coo(coords, values, H.shape, COLUMN_MAJOR)
        pos, crd = Hc.levels[1]["pos"], Hc.levels[1]["crd"]
        consumer = self._consumer({"H": COLUMN_MAJOR})
        X = _dense_operand(x, TOKEN_MAJOR)
        ranges = split(self.ffn, max(1, min(_threads(), Hc.nnz // 64)), pos)
        outputs = [out] + [np.zeros_like(out) for _ in ranges[1:]]

        def run(p):
            lo, hi = ranges[p]
            a, b = int(pos[lo]), int(pos[hi])
            cols = Tensor(Hc.format, (H.shape[0], hi - lo), [{}, {"pos": pos[lo:hi + 1] - pos[lo], "crd": crd[a:b]}],
                          Hc.vals[a:b], validated=True)
            _call(consumer, **self._column_operands(cols, X, lo, hi, outputs[p]))
        _parallel(run, list(range(len(ranges))))
        self._sum_outputs(out, outputs[1:])
