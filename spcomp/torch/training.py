"""Trainable sparse layers: their backward passes are derived kernels (docs/autodiff.md).

* :class:`TrainableSparseLinear` -- ``y = x W^T + b`` with ``W`` sparse: its stored
  values are the ``nn.Parameter`` (pattern fixed; re-prune between steps by making a
  new layer), called through :func:`spcomp.torch.function`, so ``torch.compile`` works.
* :class:`TwellFFN` -- the activation-sparse FFN block trained through its packed
  activations: ``H = relu(X Wa^T + ba)`` is stored as TwELL (zeros dropped) and the
  down projection (fused with the up projection when gated) reads only the stored
  entries; the backward runs the gradient statements derived from those two
  statements, so every gradient through ``H`` costs what its stored entries cost and
  flows through the ReLU mask without a mask tensor. ``l1`` (set by each forward) is
  the mean activation, the paper's L1 penalty term, differentiable.
"""
from __future__ import annotations

import numpy as np
import torch

import spcomp
from spcomp.errors import PackedOverflowError, ShapeError
from spcomp.runtime import Tensor

from .autograd import function
from .ops import Levels

__all__ = ["TrainableSparseLinear", "TwellFFN"]

_F32 = "float32"


def float32_array(t: torch.Tensor) -> np.ndarray:
    """A tensor as a contiguous float32 NumPy array (a view when it already is one)."""
    return np.ascontiguousarray(t.detach().to(torch.float32).cpu().numpy())


class TrainableSparseLinear(torch.nn.Module):
    """``y = x W^T + b``, ``W`` sparse in ``format`` (see the module docstring)."""

    def __init__(self, weight, bias=None, format: str = "csr"):
        super().__init__()
        w = weight.detach().to(torch.float32).cpu().numpy() if isinstance(weight, torch.Tensor) else weight
        if not isinstance(w, Tensor) and not hasattr(w, "tocsr"):
            w = Tensor.from_numpy(np.asarray(w, dtype=np.float32), format)
        kernel = spcomp.compile("Y[t,o] = X[t,i]*W[o,i]", formats={"W": format}, dtype=_F32)
        self.fn = function(kernel)
        levels = self.fn.levels("W", w)
        self.out_features, self.in_features = levels.shape
        for k, a in enumerate(levels.arrays[:-1]):
            self.register_buffer(f"level{k}", a)
        self._n_levels = len(levels.arrays) - 1
        self.values = torch.nn.Parameter(levels.arrays[-1].to(torch.float32))
        self.bias = None if bias is None else torch.nn.Parameter(torch.as_tensor(bias, dtype=torch.float32).clone())

    @classmethod
    def from_linear(cls, linear, density: float | None = None, format: str = "csr") -> "TrainableSparseLinear":
        """From an ``nn.Linear``, its weight pruned to ``density`` by magnitude."""
        from spcomp.nn import prune_magnitude
        w = linear.weight.detach().to(torch.float32).numpy()
        if density is not None:
            w = prune_magnitude(w, density)
        w = w.toarray() if hasattr(w, "toarray") else w
        return cls(w, None if linear.bias is None else linear.bias.detach(), format)

    @property
    def weight_levels(self) -> Levels:
        arrays = tuple(getattr(self, f"level{k}") for k in range(self._n_levels)) + (self.values,)
        return Levels(arrays, (self.out_features, self.in_features))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        lead = x.shape[:-1]
        y = self.fn(X=x.reshape(-1, self.in_features).to(torch.float32), W=self.weight_levels)
        if self.bias is not None:
            y = y + self.bias
        return y.reshape(*lead, self.out_features)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, stored={self.values.numel()}"


class _Block:
    """The kernels and derived gradients of one TwELL FFN shape, per TwELL K."""

    def __init__(self, gated: bool, B: int):
        self.gated, self.B = gated, B
        self._by_K: dict = {}

    def kernels(self, K: int) -> tuple:
        hit = self._by_K.get(K)
        if hit is None:
            fm = {"H": f"twell(B={self.B},K={K})"}
            act = spcomp.compile("H[t,n] = relu(X[t,k]*Wa[n,k] + ba[n])", formats=fm, dtype=_F32)
            text = ("O[t,d] = H[t,n] * (X[t,k]*Wu[n,k] + bu[n]) * Wd[n,d]" if self.gated
                    else "O[t,d] = H[t,n] * Wd[n,d]")
            down = spcomp.compile(text, formats=fm, dtype=_F32)
            hit = self._by_K[K] = (act, down, act.vjp(), down.vjp())
        return hit


class _TwellFFNFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, module, x, wa, ba, wu, bu, wd):
        X, Wa, ba_ = float32_array(x), float32_array(wa), float32_array(ba)
        while True:
            act, down, vjp_act, vjp_down = module.block.kernels(module.K)
            try:
                H = act(X=X, Wa=Wa, ba=ba_)
                break
            except PackedOverflowError as e:
                largest = e.largest_count or module.K + 1
                module.K = min(module.B, max(1 << (max(1, largest) - 1).bit_length(), 2 * module.K))
        Wd = float32_array(wd)  # (ffn, hidden): the parameter is kept in the layout the kernels read
        ops = {"H": H, "Wd": Wd}
        if module.gated:
            ops.update(X=X, Wu=float32_array(wu), bu=float32_array(bu))
        out = down(**ops)
        nnz = int(H.levels[1]["count"].sum())
        module.stored = nnz
        module.sparsity = 1.0 - nnz / max(1, H.shape[0] * H.shape[1])
        l1 = float(np.asarray(H.vals, dtype=np.float64).sum()) / max(1, H.shape[0] * H.shape[1])
        ctx.state = (module, X, Wa, ba_, H, ops, vjp_act, vjp_down)
        return torch.from_numpy(np.asarray(out, dtype=np.float32)), torch.tensor(l1, dtype=torch.float32)

    @staticmethod
    def backward(ctx, d_out, d_l1):
        module, X, Wa, ba_, H, ops, vjp_act, vjp_down = ctx.state
        dO = float32_array(d_out)
        g2 = vjp_down(dO, **ops)
        dH = g2["H"]
        if d_l1 is not None and float(d_l1) != 0.0:  # d(mean H)/dH at the stored entries
            vals = np.array(dH.vals, dtype=np.float32)
            vals += np.float32(float(d_l1) / max(1, H.shape[0] * H.shape[1]))
            dH = Tensor(dH.format, dH.shape, dH.levels, vals, validated=True)
        g1 = vjp_act(dH, X=X, Wa=Wa, ba=ba_)
        dX = g1["X"] + (g2["X"] if module.gated else 0.0)
        t = torch.from_numpy
        out = [None, t(np.asarray(dX, np.float32)), t(np.asarray(g1["Wa"], np.float32)),
               t(np.asarray(g1["ba"], np.float32))]
        if module.gated:
            out += [t(np.asarray(g2["Wu"], np.float32)), t(np.asarray(g2["bu"], np.float32))]
        else:
            out += [None, None]
        out.append(t(np.asarray(g2["Wd"], np.float32)))
        ctx.state = None
        return tuple(out)


class TwellFFN(torch.nn.Module):
    """``down(relu(gate(x)) * up(x))`` (gated) or ``down(relu(up(x)))`` with the ReLU's
    output stored as TwELL(B, K) (see the module docstring). Weights are the
    ``nn.Linear`` layouts: ``w_up``/``w_gate`` (ffn, hidden), ``w_down`` (hidden, ffn); the
    down weight is kept transposed, as the parameter ``w_down_t`` (ffn, hidden), the
    layout its kernels read (no transposed copy per step); ``w_down`` is a view of it."""

    def __init__(self, w_up, b_up, w_down, b_down, w_gate=None, b_gate=None, B: int = 64, K: int = 8):
        super().__init__()

        def param(w):
            return None if w is None else torch.nn.Parameter(torch.as_tensor(w, dtype=torch.float32).clone())
        self.gated = w_gate is not None
        self.w_up, self.w_gate = param(w_up), param(w_gate)
        self.ffn, self.hidden = self.w_up.shape
        w_down = torch.as_tensor(w_down, dtype=torch.float32)
        if tuple(w_down.shape) != (self.hidden, self.ffn):
            raise ShapeError(f"w_down has shape {tuple(w_down.shape)}; expected ({self.hidden}, {self.ffn})")
        self.w_down_t = torch.nn.Parameter(w_down.T.contiguous())
        zeros = torch.zeros
        self.b_up = param(b_up if b_up is not None else zeros(self.ffn))
        self.b_down = param(b_down if b_down is not None else zeros(self.hidden))
        if self.gated:
            self.b_gate = param(b_gate if b_gate is not None else zeros(self.ffn))
        self.B, self.K = int(B), min(int(K), int(B))
        self.block = _Block(self.gated, self.B)
        self.l1 = None
        self.sparsity = None
        self.stored = None

    @classmethod
    def from_linears(cls, up, down, gate=None, **kw) -> "TwellFFN":
        def wb(lin):
            return (None, None) if lin is None else (lin.weight.detach(), None if lin.bias is None
                                                       else lin.bias.detach())
        (wu, bu), (wd, bd), (wg, bg) = wb(up), wb(down), wb(gate)
        return cls(wu, bu, wd, bd, wg, bg, **kw)

    @property
    def w_down(self) -> torch.Tensor:
        """The down weight in ``nn.Linear``'s layout (hidden, ffn): a view of ``w_down_t``."""
        return self.w_down_t.T

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        lead = x.shape[:-1]
        X = x.reshape(-1, self.hidden)
        if self.gated:
            out, self.l1 = _TwellFFNFunction.apply(self, X, self.w_gate, self.b_gate, self.w_up, self.b_up,
                                                   self.w_down_t)
        else:
            out, self.l1 = _TwellFFNFunction.apply(self, X, self.w_up, self.b_up, None, None, self.w_down_t)
        return (out + self.b_down).to(x.dtype).reshape(*lead, self.hidden)

    def extra_repr(self) -> str:
        return f"hidden={self.hidden}, ffn={self.ffn}, gated={self.gated}, twell(B={self.B}, K={self.K})"
