"""``spcomp.nn``: sparse feed-forward layers on spcomp kernels (DESIGN §9).

>>> from spcomp.nn import SparseLinear, SparseFFN
>>> lin = SparseLinear.from_dense(W, b, density=0.1)            # doctest: +SKIP
>>> ffn = SparseFFN.from_dense(w1, b1, w2, b2, topk=0.1)         # doctest: +SKIP

:mod:`spcomp.nn.minilm` loads all-MiniLM-L6-v2 (safetensors, no PyTorch) and runs
its encoder in NumPy with replaceable FFN blocks.
"""
from .layers import ACTIVATIONS, SparseFFN, SparseLinear, pack_twell, prune_magnitude

__all__ = ["ACTIVATIONS", "SparseFFN", "SparseLinear", "pack_twell", "prune_magnitude"]
