"""``python -m spcomp EXPR -f NAME=FORMAT ...``: compile, run on random data,
check against NumPy, print the generated code and the time.

``--emit ir|llvm|loops|notation|cuda`` prints that stage only and runs nothing.
"""
from __future__ import annotations

import argparse
import sys
import time
import warnings

import numpy as np


def _parse_formats(items) -> dict:
    out = {}
    for item in items or []:
        if "=" not in item:
            raise SystemExit(f"spcomp: -f takes NAME=FORMAT, got {item!r}")
        name, fmt = item.split("=", 1)
        out[name.strip()] = fmt.strip()
    return out


def _random_operands(kernel, size: int, density: float, seed: int) -> dict:
    from .notation import accesses
    rng = np.random.default_rng(seed)
    notation = kernel.notation
    sizes: dict = {}
    operands = {}
    names = list(kernel.inputs)
    if notation.accumulate:
        names.append(kernel.output_name)
    for name in names:
        t = notation.tensors[name]
        acc = next((a for a in accesses(notation.rhs) if a.tensor.name == name), notation.lhs)
        shape = tuple(sizes.setdefault(i.name, size) for i in acc.indices)
        a = rng.standard_normal(shape)
        if not t.format.is_dense:
            a[rng.random(shape) >= density] = 0.0
        dtype = np.float32 if t.dtype != "float64" else np.float64
        if t.dtype == "bfloat16":
            import ml_dtypes
            dtype = ml_dtypes.bfloat16
        if not t.format.is_dense:
            # packed once, as a user would: the timed calls then measure the kernel
            from .runtime import Tensor
            operands[name] = Tensor.from_numpy(a, t.format, dtype=dtype, overflow="grow")
            continue
        operands[name] = a.astype(dtype) if a.ndim else dtype(a)
    return operands


def _dense(x):
    if hasattr(x, "to_numpy"):
        return np.asarray(x.to_numpy(), dtype=np.float64)
    return np.asarray(x, dtype=np.float64)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="spcomp", description=__doc__.split("\n\n")[0].replace("\n", " "))
    p.add_argument("expression", nargs="?", default="y[i] = W[i,j] * x[j]",
                   help="index notation, e.g. \"y[i] = W[i,j] * x[j]\" (default)")
    p.add_argument("-f", "--format", action="append", metavar="NAME=FORMAT",
                   help="format of a tensor, e.g. -f W=csr (others are dense)")
    p.add_argument("--dtype", default="float64", choices=["float32", "float64", "bfloat16"])
    p.add_argument("--size", type=int, default=1000, help="size of every index (default 1000)")
    p.add_argument("--density", type=float, default=0.01, help="density of sparse operands (default 0.01)")
    p.add_argument("--backend", default="cpu", choices=["cpu", "cuda", "cuda-sim"])
    p.add_argument("--emit", choices=["ir", "llvm", "cuda", "loops", "notation"],
                   help="print one stage and exit")
    p.add_argument("--repeat", type=int, default=20, help="timed calls (median reported)")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)

    import spcomp
    from .errors import SpcompError
    formats = _parse_formats(args.format)
    if args.expression == "y[i] = W[i,j] * x[j]" and not formats:
        formats = {"W": "csr"}
    try:
        t0 = time.perf_counter()
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            k = spcomp.compile(args.expression, formats=formats, dtype=args.dtype, backend=args.backend)
        compile_s = time.perf_counter() - t0
        for w in caught:
            print(f"warning: {w.message}", file=sys.stderr)
        if args.emit:
            print({"ir": k.ir, "llvm": k.source, "cuda": k.source, "loops": k.loops,
                   "notation": k.index_notation}[args.emit])
            return 0
        size = args.size
        if max((t.order for t in k.notation.tensors.values()), default=0) >= 3 and args.size == 1000:
            size = 100
        ops = _random_operands(k, size, args.density, args.seed)
        out = k(**{n: (v.copy() if isinstance(v, np.ndarray) else v) for n, v in ops.items()})
        times = []
        for _ in range(max(1, args.repeat)):
            call_ops = {n: (v.copy() if n == k.output_name and isinstance(v, np.ndarray) else v)
                        for n, v in ops.items()}
            t0 = time.perf_counter()
            k(**call_ops)
            times.append(time.perf_counter() - t0)
    except SpcompError as e:
        print(f"spcomp: {type(e).__name__}: {e}", file=sys.stderr)
        return 2
    from .testing.reference import reference
    dense_ops = {n: _dense(v) for n, v in ops.items()}
    ref = reference(k.notation, dense_ops, out=dense_ops.get(k.output_name))
    got = _dense(out)
    tol = {"float64": 1e-9, "float32": 1e-4, "bfloat16": 3e-2}[args.dtype]
    err = float(np.max(np.abs(got - ref))) if ref.size else 0.0
    scale = float(np.max(np.abs(ref))) if ref.size else 0.0
    ok = err <= tol * max(1.0, scale)
    print(f"# {k.index_notation}")
    print("# loops:\n" + "\n".join("#   " + line for line in k.loops.splitlines()))
    print(k.ir)
    print("# operands: " + ", ".join(f"{n}{tuple(np.shape(_dense(v)))}" for n, v in ops.items()))
    print(f"# compile {compile_s * 1e3:.1f} ms; run median {np.median(times) * 1e3:.3f} ms over {len(times)} calls")
    print(f"# check against numpy.einsum: {'OK' if ok else 'MISMATCH'} (max abs error {err:.3g})")
    return 0 if ok else 1


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
