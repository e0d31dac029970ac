"""``spcomp.nn``: sparse feed-forward layers on spcomp kernels (DESIGN §9).

>>> from spcomp.nn import SparseLinear, SparseFFN
>>> lin = SparseLinear.from_dense(W, b, density=0.1)            # doctest: +SKIP
>>> ffn = SparseFFN.from_dense(w1, b1, w2, b2, topk=0.1)         # doctest: +SKIP

NumPy arrays in, NumPy arrays out, float32 throughout: every multiply-add and every
activation function runs in a compiled kernel; NumPy only moves data and, in the
training-free sparsifier, selects which activations to keep.

:mod:`spcomp.nn.minilm` loads all-MiniLM-L6-v2 (safetensors, no PyTorch) and runs
its encoder in NumPy with replaceable FFN blocks.
"""
from .activations import ACTIVATIONS
from .ffn import SparseFFN
from .linear import SparseLinear, prune_magnitude
from .twell import pack_twell

__all__ = ["ACTIVATIONS", "SparseFFN", "SparseLinear", "pack_twell", "prune_magnitude"]
