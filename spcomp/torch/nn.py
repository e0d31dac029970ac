"""``SparseLinear`` and ``SparseFFN`` as ``torch.nn.Module`` s.

Each module wraps the ``spcomp.nn`` layer of the same name (pruning, packing,
kernels, threads and the activation-sparse pipeline are all that layer's) and
calls it through the ``spcomp::layer`` custom operator (:func:`spcomp.torch.ops.layer_op`),
so ``torch.compile(model, fullgraph=True)`` traces a model holding them without
graph breaks. The weights are spcomp's (NumPy arrays and spcomp Tensors inside
the layer), not torch parameters: the modules are for inference on the CPU, in
float32 (other input dtypes are converted in and out), and have no backward:
``SparseLinear.trainable()`` gives the trainable twin (spcomp/torch/training.py).

>>> lin = SparseLinear.from_linear(torch_linear, density=0.05)          # doctest: +SKIP
>>> ffn = SparseFFN.from_linears(up, down, gate=gate, activation="silu", topk=0.05)
"""
from __future__ import annotations

import torch

from spcomp import nn as spnn

from . import gate_screen as screen
from .ops import layer_op, register_layer

__all__ = ["SparseLinear", "SparseFFN", "linear_weights", "torch_gate_product"]


def linear_weights(linear) -> tuple:
    """``(weight, bias)`` of an ``nn.Linear`` as float32 NumPy arrays (bias None when absent)."""
    w = linear.weight.detach().to(torch.float32).cpu().numpy()
    b = None if linear.bias is None else linear.bias.detach().to(torch.float32).cpu().numpy()
    return w, b


def split_small_calls(layer) -> None:
    """Let the runtime split a weight-sparse layer's calls over the threads however
    small (``SparseLinear.serial_small = False``). The NumPy layer keeps small calls on
    one thread so that no libgomp team spins into OpenBLAS's next GEMM; under torch
    the GEMMs around it run on that same libgomp team (torch/lib/libgomp.so.1 is the
    one both load), so there is no second pool to collide with."""
    layer.serial_small = False


def torch_gate_product(weight, bias):
    """``f(x) -> A^T = W x^T + b``, (out, tokens) float32 NumPy, by ``torch.addmm``.

    For the ReLU activation-sparse FFN (``SparseFFN.gate_product``): its dense gate
    product is then torch's own GEMM (MKL in the CPU wheel, torch's threads), the
    library the dense block runs on, where the NumPy layer calls SciPy's OpenBLAS per
    weight slab. The tensors share the layer's arrays (no copy)."""
    w = torch.from_numpy(weight)
    b = None if bias is None else torch.from_numpy(bias)[:, None]

    def product(x):
        xt = torch.from_numpy(x).T
        with torch.no_grad():
            at = torch.mm(w, xt) if b is None else torch.addmm(b, w, xt)
        return at.numpy()
    return product


class _LayerModule(torch.nn.Module):
    """A module over an ``spcomp.nn`` layer (``self.layer``), called through the operator."""

    def __init__(self, layer, in_features: int, out_features: int):
        super().__init__()
        self.layer = layer
        self.in_features = int(in_features)
        self.out_features = int(out_features)
        self.handle = register_layer(layer)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = layer_op(x.to(torch.float32), self.handle, self.out_features)
        return y if x.dtype == torch.float32 else y.to(x.dtype)


class SparseLinear(_LayerModule):
    """``y = x W^T + b`` with W pruned by magnitude (``spcomp.nn.SparseLinear``)."""

    def __init__(self, layer: "spnn.SparseLinear"):
        super().__init__(layer, layer.in_features, layer.out_features)
        split_small_calls(layer)

    @classmethod
    def from_linear(cls, linear, density: float | None = None, format: str = "csr") -> "SparseLinear":
        """From an ``nn.Linear``: its weight pruned to ``density`` (largest
        magnitudes kept; None keeps every nonzero), stored in ``format``."""
        w, b = linear_weights(linear)
        return cls(spnn.SparseLinear.from_dense(w, b, density=density, format=format))

    @property
    def sparsity(self) -> float:
        return self.layer.sparsity

    def trainable(self):
        """This layer as a :class:`~spcomp.torch.training.TrainableSparseLinear` (same
        stored weights and pattern, its values an ``nn.Parameter``; docs/autodiff.md)."""
        from .training import TrainableSparseLinear
        fmt = "csr" if self.layer.format == "dense" else self.layer.format
        w = self.layer.weight.to_numpy() if self.layer.format == "dense" else self.layer.weight
        return TrainableSparseLinear(w, self.layer.bias, format=fmt)

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, "
                f"format={self.layer.format!r}, sparsity={self.layer.sparsity:.3f}")


class SparseFFN(_LayerModule):
    """A transformer FFN block (``spcomp.nn.SparseFFN``): ``down(act(up(x)))``, or
    gated ``down(act(gate(x)) * up(x))``; weight-sparse (``density``) or
    activation-sparse TwELL (``topk`` / ``threshold``, or the zeros of a ReLU)."""

    def __init__(self, layer: "spnn.SparseFFN", gate_screen: bool | str = "auto"):
        super().__init__(layer, layer.hidden, layer.hidden)
        if layer.mode == "weight":
            for lin in layer.layers:
                split_small_calls(lin)
        elif layer.sparsifier == "relu":
            layer.gate_product = torch_gate_product(*layer.act_weights)
            if gate_screen not in ("auto", True, False):
                raise ValueError(f"gate_screen={gate_screen!r}: expected 'auto', True or False")
            if gate_screen is True and not screen.available():
                raise ValueError("gate_screen=True: this CPU or torch build has no float32-accumulating "
                                 "bfloat16 matrix product (AMX / AVX512-BF16)")
            if gate_screen is True or (gate_screen == "auto" and screen.available()):
                layer.gate_entries = screen.GateScreen(*layer.act_weights)

    @classmethod
    def from_linears(cls, up, down, gate=None, *, activation: str = "gelu", mode: str | None = None,
                     density: float | None = None, weight_format: str = "csr", topk=None, threshold=None,
                     select: str = "value", compensate: bool = False, B: int = 256, K: int = 32,
                     consume: str = "auto", gate_screen: bool | str = "auto") -> "SparseFFN":
        """From the block's ``nn.Linear`` s (``gate`` for gated MLPs); the options
        are ``spcomp.nn.SparseFFN.from_dense`` 's (``density`` is its
        ``weight_density``; the mode follows the options when not given).
        ``gate_screen``: for a ReLU activation-sparse block, find the gate's nonzeros
        with a bfloat16 screen and a float32 recompute of the entries it cannot rule
        out (exact to float32, torch/gate_screen.py); "auto" where the CPU has
        bfloat16 units, True to insist, False for the float32 gate."""
        w_up, b_up = linear_weights(up)
        w_down, b_down = linear_weights(down)
        w_gate, b_gate = linear_weights(gate) if gate is not None else (None, None)
        layer = spnn.SparseFFN.from_dense(w_up, b_up, w_down, b_down, w_gate=w_gate, b_gate=b_gate,
                                          activation=activation, weight_density=density,
                                          weight_format=weight_format, topk=topk, threshold=threshold, B=B, K=K,
                                          select=select, compensate=compensate, mode=mode, consume=consume)
        return cls(layer, gate_screen=gate_screen)

    @property
    def mode(self) -> str:
        return self.layer.mode

    @property
    def sparsity(self) -> float | None:
        """Of the weights (weight-sparse) or of the last call's activations."""
        return self.layer.sparsity

    def extra_repr(self) -> str:
        return f"hidden={self.layer.hidden}, ffn={self.layer.ffn}, {self.layer.describe()}"
