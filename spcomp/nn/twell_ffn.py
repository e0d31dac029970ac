"""SparseFFN's activation-sparse (TwELL) mode, ``mode="activation"``: only the
stored activations cost work downstream::

    H[t,n] = relu(X[t,k]*Wg[n,k] + bg[n])                    # twell output, zeros dropped
    O[t,d] += H[t,n] * (X[t,k]*Wu[n,k] + bu[n]) * Wd[n,d]      # gated: fused up + down
    O[t,d] += H[t,n] * Wd[n,d]                                  # non-gated down

A module of its own because most of it works around the compiler for speed (the
BLAS gate per weight slab and thread, calls per row block or TwELL tile, H walked
by columns from many tokens on): see docs/ffn.md, "Around the compiler".
"""
from __future__ import annotations

import numpy as np

import spcomp
from spcomp.backends.cpu.blas import single_threaded_blas
from spcomp.errors import PackedOverflowError, ShapeError

from .activations import activation_expr, keep_above, keep_topk
from .kernels import (COLUMN_MAJOR, DTYPE, TOKEN_MAJOR, as_matrix, as_vector, call_kernel, compile_kernel,
                      dense_operand, filled, vector_operand)
from .parallel import chunks, num_threads, parallel_map, row_ranges
from .twell import next_pow2, row_nnz, twell_format, twell_hstack, twell_nnz, twell_rows

# consume="auto" re-packs H by columns from this many tokens on: below it, the
# re-packing and the per-thread outputs cost more than the weight reuse saves
# (16 MiniLM tokens: 3.2 ms by columns, 2.5 ms by rows; 256 SparseLM-1B tokens on one
# thread: 8.4 ms by columns, 10.9 ms by rows)
COLUMNS_FROM_TOKENS = 64


class TwellMode:
    """The activation-sparse methods of :class:`~spcomp.nn.SparseFFN`, which mixes
    them in: it checks the options (``activation``, ``gated``, ``topk``,
    ``threshold``, ``select``, ``compensate``, ``consume``, ``B``, ``K``) and calls
    :meth:`_init_activation` and :meth:`_forward_activation`."""

    # ---------------------------------------------------------------- set-up
    def _init_activation(self, w_up, b_up, w_down, b_down, w_gate, b_gate):
        from spcomp.runtime import Tensor
        self.ffn, self.hidden = w_up.shape
        w_down = as_matrix(w_down, "w_down")
        if w_down.shape != (self.hidden, self.ffn):
            raise ShapeError(f"w_down has shape {w_down.shape}; expected ({self.hidden}, {self.ffn})")
        self.b_up = as_vector(b_up, self.ffn, "b_up")
        self.b_down = as_vector(b_down, self.hidden, "b_down")
        self._wu_rows = np.ascontiguousarray(w_up, dtype=DTYPE)                  # (ffn, hidden)
        self._wd_rows = np.ascontiguousarray(w_down.T, dtype=DTYPE)              # (ffn, hidden)
        self.wu = Tensor.from_numpy(self._wu_rows, "dense", dtype=DTYPE)
        self._bu = None if self.b_up is None else Tensor.from_numpy(self.b_up, "dense")
        self.wd = Tensor.from_numpy(self._wd_rows, "dense", dtype=DTYPE)
        if self.gated:
            w_act = as_matrix(w_gate, "w_gate")
            if w_act.shape != (self.ffn, self.hidden):
                raise ShapeError(f"w_gate has shape {w_act.shape}; expected ({self.ffn}, {self.hidden})")
            b_act = as_vector(b_gate, self.ffn, "b_gate")
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
        #: None, or ``f(x) -> A^T``: the dense pre-activation ``Wa x^T + ba`` (ffn, tokens) as
        #: a row-major float32 array, for the H-by-columns path (see _forward_relu_columns)
        self.gate_product = None
        #: None, or ``f(x) -> H``: the ReLU gate's stored entries (``dc:1,0``) found another
        #: way than the dense pre-activation (spcomp.torch's bfloat16 screen, torch/gate_screen.py)
        self.gate_entries = None
        self._product = None
        self._slabs: dict = {}
        self._packed_kernels: dict = {}
        self.sparsifier = "relu" if (self.activation == "relu" and self.topk is None
                                     and self.threshold is None) else ("topk" if self.topk is not None
                                                                       else "threshold")
        pre = "X[t,k]*Wa[n,k]" + (" + ba[n]" if self.act_has_bias else "")
        self.act_expression = f"A[t,n] = {activation_expr(self.activation, pre)}"
        if self.sparsifier != "relu":
            self.dense_act_kernel = compile_kernel(self.act_expression)
        if self.compensate:
            if self.sparsifier == "relu" or self.gated:
                raise ValueError("compensate applies to a non-gated FFN with topk= or threshold=")
            self._rowsum_dense = compile_kernel("r[t] = A[t,n]")
            self._compensation = compile_kernel("O[t,d] += c[t] * S[d]")
            colsum = call_kernel(compile_kernel("S[d] = Wd[n,d]"), Wd=self.wd)
            self._wd_colsum = Tensor.from_numpy(colsum, "dense")
        self._kernels_for(self.K)

    @property
    def act_weights(self) -> tuple:
        """``(weight, bias)`` of the projection that decides sparsity (the gate, else
        up), (ffn, hidden) and (ffn,) float32 arrays (bias None when absent)."""
        return self._w_act, self._b_act

    def _kernels_for(self, K: int) -> tuple:
        """(packed activation kernel, consumer kernel) for twell(B, K) (compiled once each)."""
        hit = self._packed_kernels.get(K)
        if hit is not None:
            return hit
        tw = {"H": twell_format(self.B, K)}
        act = None
        if self.sparsifier == "relu":
            act = compile_kernel(self.act_expression.replace("A[t,n]", "H[t,n]"), tw)
        self._packed_kernels[K] = (act, self._consumer(tw))
        return self._packed_kernels[K]

    def _consumer(self, formats: dict, schedule=None):
        """The down projection (fused with the up projection when gated) reading H
        in the format given; it adds into O, which starts as the bias or zero."""
        if self.gated:
            up = "(X[t,k]*Wu[n,k] + bu[n])" if self.b_up is not None else "X[t,k]*Wu[n,k]"
            return compile_kernel(f"O[t,d] += H[t,n] * {up} * Wd[n,d]", formats, schedule)
        return compile_kernel("O[t,d] += H[t,n] * Wd[n,d]", formats, schedule)

    # ---------------------------------------------------------------- call
    def activations(self, x: np.ndarray):
        """The packed activation H (a twell Tensor) for tokens ``x`` (tokens, hidden)."""
        return self._activations(np.ascontiguousarray(x, dtype=DTYPE))[0]

    def _activations(self, x: np.ndarray) -> tuple:
        """``(H, c)``: the packed activation and, with ``compensate``, the per-row mean
        of the dropped activations (else None)."""
        X = dense_operand(x, TOKEN_MAJOR)
        c = None
        if self.sparsifier == "relu":
            H = self._packed_relu(X, x.shape[0])
        else:
            A = self._dense_activation(X, x.shape[0])
            H = self._select(A)
            if self.compensate:
                c = self._dropped_mean(A, H)
        self.last_nnz = twell_nnz(H)
        self.last_size = x.shape[0] * self.ffn
        return H, c

    def _dropped_mean(self, A: np.ndarray, H) -> np.ndarray:
        """Per token row: (sum of all activations - sum of kept) / number dropped."""
        total = call_kernel(self._rowsum_dense, A=dense_operand(A, TOKEN_MAJOR))
        kept = call_kernel(compile_kernel("q[t] = H[t,n]", {"H": str(H.format)}), H=H)
        dropped = self.ffn - np.diff(row_nnz(H))
        return ((total - kept) / np.maximum(dropped, 1)).astype(DTYPE)

    def _tile_calls(self, kernel, X) -> list:
        """Call ``kernel`` once per weight tile (B rows), tiles spread over threads;
        or, when the kernel hands its matrix product to BLAS, once per thread on a
        slab of whole tiles (a slab is big enough for BLAS's cache blocking)."""
        def call(w, b):
            ops = {"X": X, "Wa": w}
            if b is not None:
                ops["ba"] = b
            return call_kernel(kernel, **ops)

        if kernel.blas_calls:
            slabs = self._act_slabs(num_threads())
            if len(slabs) == 1:
                return [call(*slabs[0])]
            # one weight slab per thread, each with a single-threaded BLAS call: the
            # relu + pack nests run in parallel too, and OpenBLAS's own workers get
            # no job, so they do not spin on the cores the consumer needs next
            with single_threaded_blas():
                return parallel_map(lambda slab: call(*slab), slabs)

        def run(idx):
            return [call(*self.act_tiles[j]) for j in idx]
        groups = chunks(len(self.act_tiles), num_threads())
        return [r for part in parallel_map(run, groups) for r in part]

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
                self.K = min(self.B, max(next_pow2(largest), 2 * self.K))
        return tiles[0] if len(tiles) == 1 else twell_hstack(tiles, (T, self.ffn))

    def _dense_activation(self, X, T: int) -> np.ndarray:
        tiles = self._tile_calls(self.dense_act_kernel, X)
        return np.concatenate(tiles, axis=1) if len(tiles) > 1 else tiles[0]

    def _select(self, a: np.ndarray):
        """Keep the top-k (by value) of each row, or the entries above the threshold."""
        if self.sparsifier == "topk":
            return keep_topk(a, self.topk, self.select, self.B)
        return keep_above(a, self.threshold, self.select, self.B)

    def _forward_activation(self, x: np.ndarray) -> np.ndarray:
        T = x.shape[0]
        by_columns = self.consume == "columns" or (self.consume == "auto" and T >= COLUMNS_FROM_TOKENS)
        if by_columns and self.sparsifier == "relu":
            return self._forward_relu_columns(x)
        H, c = self._activations(x)
        out = filled((T, self.hidden), TOKEN_MAJOR, self.b_down)
        if by_columns:
            self._consume_by_columns(H, x, out)
            if c is not None:
                call_kernel(self._compensation, c=vector_operand(c), S=self._wd_colsum, O=out)
            return out
        _, consumer = self._kernels_for(H.format.levels[1].K)

        def run(r):
            lo, hi = r
            ops = {"H": twell_rows(H, lo, hi), "Wd": self.wd, "O": out[lo:hi]}
            if self.gated:
                ops["X"] = dense_operand(x[lo:hi], TOKEN_MAJOR)
                ops["Wu"] = self.wu
                if self.b_up is not None:
                    ops["bu"] = self._bu
            call_kernel(consumer, **ops)
            if c is not None:  # rank-1 mean compensation: O[t,d] += c[t] * sum_n Wd[n,d]
                call_kernel(self._compensation, c=vector_operand(c[lo:hi]), S=self._wd_colsum, O=out[lo:hi])
        parallel_map(run, row_ranges(T, row_nnz(H)))
        return out

    def _forward_relu_columns(self, x: np.ndarray) -> np.ndarray:
        if self.gate_product is not None or self.gate_entries is not None:
            return self._forward_relu_product(x)
        return self._forward_relu_slabs(x)

    def _forward_relu_product(self, x: np.ndarray) -> np.ndarray:
        """The ReLU FFN by columns with the dense pre-activation from ``gate_product``
        (spcomp.torch: torch's own GEMM, the library of the dense baseline, on torch's
        threads), then two kernels over the whole FFN width that the runtime splits on
        the same libgomp team torch's GEMM just used: the ReLU's nonzeros compressed
        by columns from ``A^T``'s rows, and the consumer with its column loop parallel
        (each thread adds into its own copy of the output). No Python threads: after
        torch's GEMM its team's workers spin a while, and a thread of another pool
        would wait for the core they hold (a Python-threads prototype was no faster
        than OpenBLAS's gate, docs/torch.md)."""
        T = x.shape[0]
        relu, consumer = self._product_kernels()
        if self.gate_entries is not None:
            H = self.gate_entries(x)
        else:
            At = self.gate_product(x)
            if At.shape != (self.ffn, T) or At.dtype != DTYPE or not At.flags.c_contiguous:
                raise ShapeError(f"gate_product gave {At.dtype} {At.shape}; expected row-major float32 "
                                 f"({self.ffn}, {T})")
            H = call_kernel(relu, At=At)
        out = filled((T, self.hidden), TOKEN_MAJOR, self.b_down)
        call_kernel(consumer, **self._column_operands(H, dense_operand(x, TOKEN_MAJOR), 0, self.ffn, out))
        self.last_nnz = int(H.nnz)
        self.last_size = T * self.ffn
        return out

    def _product_kernels(self) -> tuple:
        """(ReLU compressing ``A^T``'s rows by columns, consumer parallel over columns)."""
        if self._product is None:
            relu = compile_kernel("H[t,n] = relu(At[n,t])", {"H": COLUMN_MAJOR})
            by_columns = spcomp.Schedule().parallelize("n", race="ParallelReduction")
            self._product = (relu, self._consumer({"H": COLUMN_MAJOR}, by_columns))
        return self._product

    def _forward_relu_slabs(self, x: np.ndarray) -> np.ndarray:
        """The ReLU FFN with H compressed by columns, one weight slab per thread.

        Each thread runs the gate kernel on its slab of the gate weight, writing its
        columns of H as ``dc:1,0`` straight from the GEMM tile (no twell, no
        re-pack), then the consumer on those columns into its own output; the
        outputs are summed at the end. The slabs are the gate's (equal GEMM work);
        the consumer's share follows the slab's nonzeros."""
        T = x.shape[0]
        X = dense_operand(x, TOKEN_MAJOR)
        slabs = self._column_slabs()
        out = filled((T, self.hidden), TOKEN_MAJOR, self.b_down)
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
        parts = num_threads()
        cuts = self._slab_cuts(parts) if parts > 1 else [(0, self.ffn)]
        return list(zip(cuts, self._act_slabs(parts)))

    def _gate_slab(self, slab, X):
        """H's columns ``lo:hi`` (``dc:1,0``) from the gate kernel on that slab."""
        _, (w, b) = slab
        ops = {"X": X, "Wa": w}
        if b is not None:
            ops["ba"] = b
        return call_kernel(self._gate_by_columns(), **ops)

    def _consume_slab(self, slab, H, X, out: np.ndarray) -> None:
        """The fused consumer on a slab's columns of H, adding into ``out``."""
        (lo, hi), _ = slab
        call_kernel(self._consumer({"H": COLUMN_MAJOR}), **self._column_operands(H, X, lo, hi, out))

    @staticmethod
    def _on_slabs(fn, slabs: list) -> list:
        """``[fn(p) for each slab p]``, a slab per thread, each thread's BLAS calls on
        that thread (see :meth:`_tile_calls`)."""
        if len(slabs) == 1:
            return [fn(0)]
        with single_threaded_blas():
            return parallel_map(fn, list(range(len(slabs))))

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
        return compile_kernel(self.act_expression.replace("A[t,n]", "H[t,n]"), {"H": COLUMN_MAJOR})

    @staticmethod
    def _sum_outputs(out: np.ndarray, parts: list) -> None:
        # summed on this thread: a libgomp team woken for this small add would keep
        # spinning afterwards and slow the next BLAS call (the next layer's gate)
        add = compile_kernel("O[t,d] += P[t,d]", schedule=spcomp.Schedule().sequential())
        for part in parts:
            call_kernel(add, O=out, P=part)

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
        X = dense_operand(x, TOKEN_MAJOR)
        ranges = split(self.ffn, max(1, min(num_threads(), Hc.nnz // 64)), pos)
        outputs = [out] + [np.zeros_like(out) for _ in ranges[1:]]

        def run(p):
            lo, hi = ranges[p]
            a, b = int(pos[lo]), int(pos[hi])
            cols = Tensor(Hc.format, (H.shape[0], hi - lo), [{}, {"pos": pos[lo:hi + 1] - pos[lo], "crd": crd[a:b]}],
                          Hc.vals[a:b], validated=True)
            call_kernel(consumer, **self._column_operands(cols, X, lo, hi, outputs[p]))
        parallel_map(run, list(range(len(ranges))))
        self._sum_outputs(out, outputs[1:])
