"""``sparsify(model, ...)``: swap a Hugging Face model's MLP blocks for spcomp ones, in place.

Two shapes of block are recognised by their attributes (no transformers import):

* BERT family (``BertLayer`` and its kin: all-MiniLM-L6-v2, RoBERTa, ...): a layer
  with ``intermediate`` (``dense`` + ``intermediate_act_fn``) and ``output``
  (``dense``, then dropout and ``LayerNorm(h + input)``). ``intermediate`` becomes
  a :class:`BertFFN` that computes the whole block ``down(act(up(x)))`` with one
  ``SparseFFN``, and ``output.dense`` an ``nn.Identity``: ``BertOutput`` then adds
  the residual and normalises as before.
* gated MLPs (LLaMA, Qwen, Mistral, Gemma ...): a module with ``gate_proj``,
  ``up_proj`` and ``down_proj`` ``nn.Linear`` s, replaced whole by a gated
  ``SparseFFN`` (``down(act(gate(x)) * up(x))``).

The activation is read from the block (``act_fn`` / ``intermediate_act_fn``) or
the model's ``config.hidden_act``: ReLU, SiLU and GELU map to spcomp's; GELU's
tanh approximations (``gelu_new``, ``gelu_pytorch_tanh``) run as exact GELU, and
the report says so.
"""
from __future__ import annotations

import dataclasses

import torch

from .nn import SparseFFN

__all__ = ["sparsify", "SparsifyReport", "BertFFN"]

_ACTS = {"relu": "relu", "silu": "silu", "swish": "silu", "gelu": "gelu", "geluactivation": "gelu",
         "gelu_new": "gelu~", "newgeluactivation": "gelu~", "gelu_pytorch_tanh": "gelu~",
         "pytorchgelutanh": "gelu~", "gelu_fast": "gelu~", "fastgeluactivation": "gelu~",
         "quickgeluactivation": "gelu~", "siluactivation": "silu", "reluactivation": "relu"}


class BertFFN(torch.nn.Module):
    """BERT's ``intermediate`` replaced by the whole FFN block (its ``output.dense``
    becomes an identity): ``x -> down(act(up(x)))`` through one SparseFFN."""

    def __init__(self, ffn: SparseFFN):
        super().__init__()
        self.ffn = ffn

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return self.ffn(hidden_states)


@dataclasses.dataclass
class Replaced:
    name: str            # the module path in the model
    kind: str            # "bert" or "gated"
    activation: str
    module: SparseFFN
    note: str = ""


@dataclasses.dataclass
class SparsifyReport:
    """What :func:`sparsify` replaced; :meth:`sparsity` measures it (weights now,
    activations after a forward pass)."""
    mode: str
    options: dict
    replaced: list

    def __len__(self) -> int:
        return len(self.replaced)

    def sparsity(self) -> dict:
        """Module path -> measured sparsity (weights, or the last call's
        activations: None before a forward)."""
        return {r.name: r.module.sparsity for r in self.replaced}

    def mean_sparsity(self) -> float | None:
        values = [s for s in self.sparsity().values() if s is not None]
        return sum(values) / len(values) if values else None

    def __str__(self) -> str:
        opts = ", ".join(f"{k}={v}" for k, v in self.options.items() if v is not None)
        lines = [f"spcomp.torch.sparsify: {len(self.replaced)} MLP block(s), mode={self.mode} ({opts})"]
        for r in self.replaced:
            s = r.module.sparsity
            what = "weight" if r.module.mode == "weight" else "activation"
            shown = f"{what} sparsity {s:.4f}" if s is not None else f"{what} sparsity: after a forward"
            lines.append(f"  {r.name:<40} {r.kind:<6} {r.activation:<5} hidden {r.module.layer.hidden} "
                         f"ffn {r.module.layer.ffn}  {shown}{'  (' + r.note + ')' if r.note else ''}")
        return "\n".join(lines)


def sparsify(model: torch.nn.Module, mode: str = "weight", density: float | None = None, topk=None,
             threshold=None, *, select: str = "value", compensate: bool = False, weight_format: str = "csr",
             B: int = 256, K: int = 32, consume: str = "auto", include=None) -> SparsifyReport:
    """Replace the MLP blocks of ``model`` in place and report them.

    ``mode="weight"``: every FFN weight pruned by magnitude to ``density``
    (``1.0`` keeps them all: the same function, through spcomp's kernels).
    ``mode="activation"``: TwELL activations, ``topk`` (a fraction of the FFN
    width, or a count) or ``threshold`` kept per token row; a ReLU block needs
    neither. ``select``, ``compensate``, ``B``, ``K``, ``consume`` as in
    ``spcomp.nn.SparseFFN``. ``include(name) -> bool`` limits which blocks are
    swapped. The model is put in eval mode (the blocks have no backward)."""
    if mode not in ("weight", "activation"):
        raise ValueError(f"mode must be 'weight' or 'activation', not {mode!r}")
    if mode == "weight" and (topk is not None or threshold is not None):
        raise ValueError("topk/threshold select activations: use mode='activation'")
    if mode == "activation" and density is not None:
        raise ValueError("density prunes weights: use mode='weight'")
    options = dict(density=density, topk=topk, threshold=threshold)
    config_act = getattr(getattr(model, "config", None), "hidden_act", None)
    found = []
    for name, module in model.named_modules():
        if include is not None and not include(name):
            continue
        if _is_bert_layer(module):
            found.append((name, module, "bert"))
        elif _is_gated_mlp(module):
            found.append((name, module, "gated"))
    replaced = []
    common = dict(mode=mode, density=density, weight_format=weight_format, topk=topk, threshold=threshold,
                  select=select, compensate=compensate, B=B, K=K, consume=consume)
    for name, module, kind in found:
        if kind == "bert":
            inter, out = module.intermediate, module.output
            act, note = _activation(getattr(inter, "intermediate_act_fn", None), config_act)
            ffn = SparseFFN.from_linears(inter.dense, out.dense, activation=act, **common)
            module.intermediate = BertFFN(ffn)
            out.dense = torch.nn.Identity()
        else:
            act, note = _activation(getattr(module, "act_fn", None), config_act)
            ffn = SparseFFN.from_linears(module.up_proj, module.down_proj, gate=module.gate_proj, activation=act,
                                         **common)
            _set_child(model, name, ffn)
        replaced.append(Replaced(name or "(model)", kind, act, ffn, note))
    model.eval()
    return SparsifyReport(mode, options, replaced)


def _is_bert_layer(m) -> bool:
    inter, out = getattr(m, "intermediate", None), getattr(m, "output", None)
    return (isinstance(getattr(inter, "dense", None), torch.nn.Linear)
            and isinstance(getattr(out, "dense", None), torch.nn.Linear) and hasattr(out, "LayerNorm"))


def _is_gated_mlp(m) -> bool:
    return all(isinstance(getattr(m, a, None), torch.nn.Linear) for a in ("gate_proj", "up_proj", "down_proj"))


def _activation(fn, config_act) -> tuple:
    """(spcomp activation, note) for a block's activation module or the config's name."""
    names = []
    if fn is not None:
        names.append(type(fn).__name__.lower())
        approx = getattr(fn, "approximate", None)
        if approx == "tanh":
            names.insert(0, "gelu_pytorch_tanh")
    if isinstance(config_act, str):
        names.append(config_act.lower())
    for n in names:
        act = _ACTS.get(n)
        if act is not None:
            if act.endswith("~"):
                return act[:-1], f"{n} runs as exact GELU"
            return act, ""
    raise ValueError(f"spcomp has no activation for {names or 'this block'}; it has relu, gelu and silu")


def _set_child(model, name: str, new) -> None:
    if not name:
        raise ValueError("the model itself is a gated MLP: sparsify replaces blocks inside a model "
                         "(use spcomp.torch.SparseFFN.from_linears for a lone block)")
    parent, _, attr = name.rpartition(".")
    owner = model.get_submodule(parent) if parent else model
    setattr(owner, attr, new)
