"""The ReLU gate's nonzeros found by a bfloat16 screen, exact to float32.

The activation-sparse FFN keeps ``H = relu(X Wg^T + bg)`` where ~0.5 % of the
entries are positive, and its dense float32 gate GEMM is most of its time (the
consumer reads only the kept columns). On a CPU with bfloat16 matrix units (AMX,
AVX512-BF16) a bfloat16 GEMM costs a fraction of it, but its values are rounded.
So the bfloat16 product only *screens*, with a rigorous error bound, and the
entries it cannot rule out are recomputed in float32:

    Ĝ = bf16(Wg) · bf16(X)^T                       (torch, fp32 accumulation, bf16 out)
    C[t,n] = [Ĝ + |Ĝ|/128 + A[t]·P[n] + B[t]·Q[n] + bg'[n] ≥ 0]     (kernel: candidates)
    H[t,n] = C[t,n] · relu(X[t,k]·Wg[n,k] + bg[n])                  (kernel: fp32, candidates only)

With x̂ = bf16(x), δx = x - x̂ (and ŵ, δw the same for a weight row), exactly
``x·w = x̂·ŵ + δx·ŵ + x̂·δw + δx·δw``; Cauchy-Schwarz bounds each correction by norms
known before the call (the weights') or in O(tokens x hidden) (the tokens'), and
float32 summation of K products errs by at most γ_K = K u / (1 - K u) of Σ|x||w|
(u = 2^-24), once in the GEMM and once in the recompute. With ``A = ‖δx‖ + 3γ‖x̂‖ +
3γ‖δx‖``, ``P = ‖ŵ‖ + ‖δw‖``, ``B = ‖x̂‖``, ``Q = ‖δw‖`` (each rounded up) and the
bias raised by ``3γ|bg|`` (a recompute may start its sum at the bias), the screen's
margin covers them, and ``|Ĝ|/128`` covers Ĝ's rounding to bfloat16
(2^-8) and the screen's own float32 arithmetic (``+ 1e-30``, and ``2^-100`` in A
and in Q: subnormals the matrix units read or write as zero; an infinite Ĝ makes
the test NaN through ``|Ĝ|``, which keeps the entry). An entry left out therefore has
``fl32(x·w) + b ≤ 0``: H is what the float32 gate followed by ReLU keeps,
entry for entry. Infinities and NaN make a norm infinite and the test NaN or
+inf, which keeps the entry (the recompute then gives float32's answer).

The bound assumes torch's bfloat16 GEMM accumulates in float32 (oneDNN and MKL
do); :func:`accumulates_in_float32` checks it once with a sum that a bfloat16
accumulator cannot reach, and :func:`available` also asks for the CPU's
bfloat16 units (without them a bfloat16 GEMM is no faster than float32).
"""
from __future__ import annotations

import functools

import numpy as np
import torch

import spcomp
from spcomp.nn.kernels import own_kernel

# Ĝ's rounding to bfloat16 (2^-8 relative) and the screen's float32 sum, over-covered
_ROUNDING = 2.0 ** -7
_UP = 1.0 + 2.0 ** -20  # norms rounded up (computed in float64, stored as float32)
_CANDIDATES = "dc:1,0"  # by FFN column, tokens inside: the consumer's order


def _gamma(k: int) -> float:
    u = 2.0 ** -24
    return k * u / (1.0 - k * u)


@functools.lru_cache(maxsize=1)
def accumulates_in_float32() -> bool:
    """Whether torch's bfloat16 matrix product sums in float32: 4096 ones add up
    to 4096 there, where a bfloat16 accumulator stops at 256."""
    ones = torch.ones(1, 4096, dtype=torch.bfloat16)
    return float(torch.mm(ones, ones.T)[0, 0]) == 4096.0


@functools.lru_cache(maxsize=1)
def bfloat16_units() -> bool:
    """Whether this CPU has bfloat16 dot-product units (AMX or AVX512-BF16)."""
    try:
        with open("/proc/cpuinfo") as f:
            flags = f.read()
    except OSError:
        return False
    return " amx_bf16" in flags or " avx512_bf16" in flags


def available() -> bool:
    """Whether the screen is both fast here and exact."""
    return bfloat16_units() and accumulates_in_float32()


def _rounded_up(norms: np.ndarray) -> np.ndarray:
    """float64 norms as float32 no smaller (inf where they overflow, NaN stays)."""
    with np.errstate(over="ignore", invalid="ignore"):
        return np.nextafter((norms * _UP).astype(np.float32), np.float32(np.inf))


def _row_norms(m: np.ndarray) -> np.ndarray:
    """Euclidean norms of the rows, summed in float64, rounded up to float32."""
    with np.errstate(over="ignore", invalid="ignore"):
        return _rounded_up(np.sqrt(np.einsum("ij,ij->i", m, m, dtype=np.float64)))


class GateScreen:
    """``f(x) -> H``: the ReLU gate's stored entries (a ``dc:1,0`` spcomp Tensor) for
    tokens ``x`` (tokens, hidden) float32, by the screen above. ``weight`` (ffn,
    hidden) and ``bias`` (ffn,) are float32 arrays; the weight is shared, not copied
    (its bfloat16 copy is the screen's, half its size)."""

    def __init__(self, weight: np.ndarray, bias: np.ndarray | None):
        self.weight = np.ascontiguousarray(weight, dtype=np.float32)
        self.ffn, self.hidden = self.weight.shape
        self.bias = (np.zeros(self.ffn, np.float32) if bias is None
                     else np.ascontiguousarray(bias, dtype=np.float32))
        w = torch.from_numpy(self.weight)
        w_hat = w.to(torch.bfloat16)
        self.w_hat = w_hat
        w_hat32 = w_hat.to(torch.float32).numpy()
        with np.errstate(invalid="ignore"):  # inf - inf: a NaN norm keeps every entry of the row
            hat, rest = _row_norms(w_hat32), _row_norms(self.weight - w_hat32)
        self.P = np.nextafter(hat + rest, np.float32(np.inf))
        # (+ 2^-100, here and in A: bfloat16 subnormals the matrix units read as zero change
        # a product by at most 2^-126 times the other factor, sqrt(K) 2^-126 times a norm)
        self.Q = np.nextafter(rest + np.float32(2.0 ** -100), np.float32(np.inf))
        self.gamma3 = 3.0 * _gamma(self.hidden + 1)
        # the recompute may start its sum at the bias: its error also scales with |b|
        with np.errstate(over="ignore", invalid="ignore"):
            self.screen_bias = np.nextafter(
                (self.bias.astype(np.float64) * (1.0 + np.sign(self.bias) * self.gamma3)).astype(np.float32),
                np.float32(np.inf))
        # kernels of this layer's own (shared code): the repeated-call fast path keeps
        # each layer's weights and norms (nn/kernels.own_kernel)
        self.screen = own_kernel(spcomp.compile(
            f"C[t,n] = heaviside(Gt[n,t] + abs(Gt[n,t]) * {_ROUNDING!r} + A[t]*P[n] + B[t]*Q[n] + b[n] + 1e-30, 1.0)",
            formats={"C": _CANDIDATES}, dtype="float32"))
        self.recompute = spcomp.compile("H[t,n] = C[t,n] * relu(X[t,k]*W[n,k] + b[n])",
                                        formats={"C": _CANDIDATES, "H": _CANDIDATES}, dtype="float32",
                                        drop_zeros=True)
        self.last_candidates = 0

    def __call__(self, x: np.ndarray):
        x = np.ascontiguousarray(x, dtype=np.float32)
        xt = torch.from_numpy(x)
        with torch.no_grad():
            x_hat = xt.to(torch.bfloat16)
            g = torch.mm(self.w_hat, x_hat.T).to(torch.float32).numpy()
            # the tokens' norms on torch's threads, summed in float64 (no under- or overflow
            # of float32 squares: a norm of 1e-30-sized values must not come out 0)
            hat = _rounded_up(torch.linalg.vector_norm(x_hat, dim=1, dtype=torch.float64).numpy())
            rest = _rounded_up(torch.linalg.vector_norm(xt - x_hat.to(torch.float32), dim=1,
                                                        dtype=torch.float64).numpy())
        with np.errstate(over="ignore", invalid="ignore"):
            A = (rest.astype(np.float64) + self.gamma3 * (hat.astype(np.float64) + rest)) * _UP + 2.0 ** -100
        A = np.nextafter(A.astype(np.float32), np.float32(np.inf))
        C = self.screen(Gt=g, A=A, P=self.P, B=hat, Q=self.Q, b=self.screen_bias)
        C.vals.fill(1.0)  # a NaN test value (kept: an infinity is involved) must not reach H
        self.last_candidates = int(C.nnz)
        return self.recompute(C=C, X=x, W=self.weight, b=self.bias)
