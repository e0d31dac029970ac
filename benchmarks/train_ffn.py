"""One training step of a gated FFN at 1B-class shapes: TwELL-sparse (spcomp) vs dense PyTorch.

    python benchmarks/train_ffn.py                       # hidden 2048, FFN 5632, 256 tokens, 99 %
    python benchmarks/train_ffn.py --tokens 64,256 --sparsity 0.99,0.995 --threads 2

The block is ``down(relu(gate(x)) * up(x))`` (SparseLM-1B's shape, the TwELL paper's),
random weights with the gate's bias set so that the given fraction of ``relu(gate(x))``
is zero. A step is forward + backward of ``sum(out * dO)`` (every weight and ``x`` get
gradients): dense PyTorch (its autograd, BLAS) against :class:`spcomp.torch.TwellFFN`
(the ReLU's output packed as TwELL, the backward the derived kernels of
docs/autodiff.md), on the same threads, median of ``--rounds`` steps after a warm-up.
Gradients are checked against PyTorch's (relative error printed). Then the spcomp step
is taken apart: each forward kernel and each derived gradient kernel timed alone.
Timings on a shared machine are noisy: the other processes' load is printed.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

import numpy as np


def parse(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--hidden", type=int, default=2048)
    p.add_argument("--ffn", type=int, default=5632)
    p.add_argument("--tokens", default="256", help="comma list of token counts (256)")
    p.add_argument("--sparsity", default="0.99", help="comma list of activation sparsities (0.99)")
    p.add_argument("--rounds", type=int, default=5, help="timed steps per variant (median)")
    p.add_argument("--threads", type=int, default=None, help="torch and spcomp threads (default: all)")
    p.add_argument("--B", type=int, default=64, help="TwELL tile width")
    return p.parse_args(argv)


def load() -> str:
    try:
        return f"load average {os.getloadavg()[0]:.2f} on {os.cpu_count()} cores"
    except OSError:
        return "load unknown"


def median_time(fn, rounds: int) -> float:
    fn()  # warm-up (compiles spcomp's kernels on first use)
    times = []
    for _ in range(rounds):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def main(argv=None) -> int:
    args = parse(argv)
    import torch

    import spcomp
    import spcomp.torch as st
    if args.threads:
        torch.set_num_threads(args.threads)
        spcomp.set_num_threads(args.threads)
    D, Fw = args.hidden, args.ffn
    g = torch.Generator().manual_seed(0)

    def linear(i, o):
        lin = torch.nn.Linear(i, o)
        with torch.no_grad():
            lin.weight.copy_(torch.randn(o, i, generator=g) / i ** 0.5)
            lin.bias.copy_(0.1 * torch.randn(o, generator=g))
        return lin

    up, down, gate = linear(D, Fw), linear(Fw, D), linear(D, Fw)
    print(f"gated FFN hidden {D}, FFN {Fw}; torch threads {torch.get_num_threads()}, "
          f"spcomp threads {spcomp.get_num_threads()}; {load()}")
    for T in (int(t) for t in args.tokens.split(",")):
        x = torch.randn(T, D, generator=g)
        dO = torch.randn(T, D, generator=g)
        for sp in (float(s) for s in args.sparsity.split(",")):
            with torch.no_grad():
                pre = x @ gate.weight.T
                gate.bias.fill_(-float(np.quantile(pre.numpy(), sp)))
            ffn = st.TwellFFN.from_linears(up, down, gate=gate, B=args.B, K=8)
            dense_params = [p.detach().clone().requires_grad_() for p in
                            (gate.weight, gate.bias, up.weight, up.bias, down.weight, down.bias)]
            xd = x.clone().requires_grad_()
            xs = x.clone().requires_grad_()

            def dense_step():
                for p in dense_params + [xd]:
                    p.grad = None
                wg, bg, wu, bu, wd, bd = dense_params
                out = torch.nn.functional.linear(torch.relu(torch.nn.functional.linear(xd, wg, bg))
                                                 * torch.nn.functional.linear(xd, wu, bu), wd, bd)
                (out * dO).sum().backward()

            def sparse_step():
                ffn.zero_grad(set_to_none=True)
                xs.grad = None
                (ffn(xs) * dO).sum().backward()

            t_dense = median_time(dense_step, args.rounds)
            t_sparse = median_time(sparse_step, args.rounds)
            # the gradients agree
            names = ["w_gate", "b_gate", "w_up", "b_up", "w_down_t", "b_down"]
            errs = {"x": float((xs.grad - xd.grad).norm() / xd.grad.norm())}
            for n, p in zip(names, dense_params):
                q = getattr(ffn, n).grad
                q = q.T if n == "w_down_t" else q
                errs[n] = float((q - p.grad).norm() / max(p.grad.norm(), 1e-30))
            print(f"\n{T} tokens, activation sparsity {ffn.sparsity:.4f} (asked {sp}), TwELL K={ffn.K}; {load()}")
            print(f"  training step (forward + backward): dense PyTorch {t_dense * 1e3:8.1f} ms, "
                  f"spcomp TwELL {t_sparse * 1e3:8.1f} ms: {t_dense / t_sparse:.2f}x")
            print("  gradient relative error vs PyTorch: " + ", ".join(f"{k} {v:.1e}" for k, v in errs.items()))
            breakdown(ffn, x, dO, args.rounds)
    return 0


def breakdown(ffn, x, dO, rounds: int) -> None:
    """Each kernel of the spcomp step, timed alone on the step's operands."""
    from spcomp.torch.training import float32_array as _np
    act, down, vjp_act, vjp_down = ffn.block.kernels(ffn.K)
    X = _np(x)
    Wa, ba = _np(ffn.w_gate), _np(ffn.b_gate)
    H = act(X=X, Wa=Wa, ba=ba)
    ops = {"H": H, "Wd": _np(ffn.w_down_t), "X": X, "Wu": _np(ffn.w_up),
           "bu": _np(ffn.b_up)}
    dOn = _np(dO)
    dH = vjp_down.gradient("H", dOn, **ops)
    parts = [("forward: H = relu(X Wg + bg) -> TwELL", lambda: act(X=X, Wa=Wa, ba=ba)),
             ("forward: O = (H * (X Wu + bu)) Wd", lambda: down(**ops))]
    for name in vjp_down.gradients:
        parts.append((f"backward: {vjp_down.expressions[name][0][:60]}",
                      lambda name=name: vjp_down.gradient(name, dOn, **ops)))
    for name in vjp_act.gradients:
        parts.append((f"backward: {vjp_act.expressions[name][0][:60]}",
                      lambda name=name: vjp_act.gradient(name, dH, X=X, Wa=Wa, ba=ba)))
    rows = [(label, median_time(fn, rounds)) for label, fn in parts]
    total = sum(t for _, t in rows)
    print(f"  where the spcomp step's time goes (kernels timed alone, sum {total * 1e3:.1f} ms):")
    for label, t in rows:
        print(f"    {t * 1e3:8.1f} ms {t / total:6.1%}  {label}")


if __name__ == "__main__":
    sys.exit(main())
