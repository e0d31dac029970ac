"""``spcomp.torch``: the PyTorch front door (docs/torch.md).

Kernels already take ``torch.Tensor`` operands and return torch tensors (that
needs nothing from here: ``runtime/torch_bridge.py``). This package adds what
needs torch itself:

* :func:`op` -- a kernel as a torch custom operator, traced by ``torch.compile``
  (``fullgraph=True``) and kept as one node by ``torch.export``;
* :func:`function` -- a kernel torch can differentiate: its operator with an
  autograd formula whose backward runs the derived gradient kernels
  (docs/autodiff.md), eager and under ``torch.compile``;
* :mod:`spcomp.torch.nn` -- ``SparseLinear`` and ``SparseFFN`` as ``torch.nn.Module``
  s over ``spcomp.nn``'s layers, called through the ``spcomp::layer`` operator;
* :class:`TrainableSparseLinear`, :class:`TwellFFN` -- trainable weight-sparse and
  activation-sparse (TwELL) layers whose backward passes are derived kernels;
* :func:`sparsify` -- swaps the MLP blocks of Hugging Face models (BERT family,
  LLaMA/Qwen/Mistral-style gated MLPs) for those modules, and reports what it did.

``import spcomp`` never imports torch; ``import spcomp.torch`` does (not transformers).
"""
from .autograd import KernelFunction, function
from .nn import SparseFFN, SparseLinear
from .ops import KernelOp, Levels, layer_op, op
from .sparsify import SparsifyReport, sparsify
from .training import TrainableSparseLinear, TwellFFN

__all__ = ["function", "KernelFunction", "op", "KernelOp", "Levels", "layer_op", "SparseLinear", "SparseFFN", "sparsify", "SparsifyReport",
           "TrainableSparseLinear", "TwellFFN"]
