"""``python -m spcomp EXPR -f NAME=FORMAT ...``: compile, run on random data,
check against NumPy, print the generated code and the time.

``--emit ir|llvm|loops|notation|cuda`` prints that stage only and runs nothing.
``python -m spcomp cache --info`` / ``--clear`` shows or empties the disk cache.

Exit status: 0 the result matches NumPy, 1 it does not (a numeric mismatch and
nothing else), 2 anything else that stops the run: a bad command line, an spcomp
error, or an unexpected exception inside spcomp. Scripts and bisection tools read
1 as "the kernel computes the wrong numbers", so no other failure may exit 1, and
every failure prints one ``spcomp: ...`` message instead of a traceback.
"""
from __future__ import annotations

import argparse
import os
import sys
import traceback
import time
import warnings
from dataclasses import dataclass

import numpy as np

EXIT_MATCH, EXIT_MISMATCH, EXIT_ERROR = 0, 1, 2

DEFAULT_EXPRESSION = "y[i] = W[i,j] * x[j]"
DEFAULT_SIZE, DEFAULT_SIZE_ORDER3 = 1000, 100

# The run draws every operand densely (sparse ones are packed afterwards) and the
# NumPy reference is dense too, so the largest dense operand bounds the memory.
# 2**28 float64 elements are 2 GiB per array; a few such arrays are alive at once.
MAX_DENSE_ELEMENTS = 2 ** 28
MAX_DENSE_TEXT = "2**28 (268,435,456)"

EMIT_BACKENDS = {"cuda": ("cuda", "cuda-sim"), "llvm": ("cpu",)}


class UsageError(Exception):
    """A command line argparse accepts but spcomp cannot run; exits 2, like argparse's own errors."""


# ------------------------------------------------------------------ the parser
def build_parser() -> argparse.ArgumentParser:
    """The argument parser (public so that tests and docs can read its options and help)."""
    p = argparse.ArgumentParser(
        prog="spcomp", description=__doc__.split("\n\n")[0].replace("\n", " "),
        epilog="exit status: 0 the result matches NumPy, 1 numeric mismatch, "
               "2 usage, compile or run error")
    p.add_argument("expression", nargs="?", default=DEFAULT_EXPRESSION,
                   help=f"index notation, e.g. \"{DEFAULT_EXPRESSION}\" (the default, with W=csr)")
    p.add_argument("-f", "--format", action="append", metavar="NAME=FORMAT",
                   help="format of a tensor, e.g. -f W=csr; repeat for each tensor (others are dense)")
    p.add_argument("--dtype", default="float64", choices=["float32", "float64", "bfloat16"],
                   help="value type of every tensor (default float64)")
    p.add_argument("--size", type=int, default=None,
                   help=f"size of every index, at least 1 (default {DEFAULT_SIZE}; "
                        f"{DEFAULT_SIZE_ORDER3} when a tensor has order 3 or more); a size whose "
                        f"largest dense operand exceeds {MAX_DENSE_TEXT} elements is refused")
    p.add_argument("--density", type=float, default=0.01,
                   help="fraction of stored entries in sparse operands, in (0, 1] (default 0.01)")
    p.add_argument("--backend", default="cpu", choices=["cpu", "cuda", "cuda-sim"],
                   help="cpu (LLVM), cuda (needs a GPU and pycuda) or cuda-sim (the CUDA code "
                        "compiled for the CPU); default cpu")
    p.add_argument("--emit", choices=["ir", "llvm", "cuda", "loops", "notation"],
                   help="print one stage and exit without running: ir, llvm (cpu backend), "
                        "cuda (cuda or cuda-sim backend), loops or notation")
    p.add_argument("--repeat", type=int, default=20,
                   help="number of timed calls, at least 1; the median is reported (default 20)")
    p.add_argument("--seed", type=int, default=0,
                   help="seed of the random operands, at least 0 (default 0)")
    return p


def _parse_formats(items) -> dict:
    """``-f NAME=FORMAT`` items as a dict; a repeated NAME is an error, not a silent override."""
    out: dict = {}
    for item in items or []:
        name, eq, fmt = item.partition("=")
        name, fmt = name.strip(), fmt.strip()
        if not eq:
            raise UsageError(f"-f takes NAME=FORMAT, e.g. -f W=csr; got {item!r}")
        if not name or not fmt:
            raise UsageError(f"-f {item!r}: both the tensor name and the format are needed, e.g. -f W=csr")
        if name in out:
            raise UsageError(f"-f gives tensor {name!r} twice ({out[name]!r} and {fmt!r}); give it once")
        out[name] = fmt
    return out


def _check_ranges(args) -> None:
    """Refuse out-of-range numbers before compiling, so the message names the option."""
    if args.size is not None and args.size < 1:
        raise UsageError(f"--size must be at least 1, got {args.size}")
    if not 0.0 < args.density <= 1.0:
        raise UsageError(f"--density must be in (0, 1], got {args.density}")
    if args.repeat < 1:
        raise UsageError(f"--repeat must be at least 1, got {args.repeat}")
    if args.seed < 0:
        raise UsageError(f"--seed must be at least 0, got {args.seed}")


def _check_emit(args) -> None:
    """LLVM and CUDA source come from different backends; asking one for the other's is a usage error."""
    backends = EMIT_BACKENDS.get(args.emit)
    if backends and args.backend not in backends:
        wanted = " or ".join(f"--backend {b}" for b in backends)
        raise UsageError(f"--emit {args.emit} needs {wanted}; --backend {args.backend} "
                         f"does not produce {args.emit} code")


# ------------------------------------------------------------------ the run
def _run_size(kernel, size: int | None) -> int:
    """The index size to run with: the user's, else a default small enough for order-3 tensors."""
    if size is not None:
        return size
    orders = [t.order for t in kernel.notation.tensors.values()]
    return DEFAULT_SIZE_ORDER3 if max(orders, default=0) >= 3 else DEFAULT_SIZE


def _check_memory(kernel, size: int) -> None:
    """Refuse a size whose dense operands could not be allocated, instead of swapping or dying."""
    tensors = kernel.notation.tensors
    if not tensors:
        return
    name = max(tensors, key=lambda n: tensors[n].order)
    order = tensors[name].order
    elements = size ** order
    if elements > MAX_DENSE_ELEMENTS:
        raise UsageError(f"--size {size}: the dense copy of {name} ({order}-D) would hold "
                         f"{elements:.3g} elements, more than the limit of {MAX_DENSE_TEXT}; "
                         f"pass a smaller --size")


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


def _compile(args, formats: dict):
    """Compile, passing the compiler's warnings on to stderr; returns the kernel and the seconds taken."""
    import spcomp
    t0 = time.perf_counter()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        kernel = spcomp.compile(args.expression, formats=formats, dtype=args.dtype, backend=args.backend)
    seconds = time.perf_counter() - t0
    for w in caught:
        print(f"warning: {w.message}", file=sys.stderr)
    return kernel, seconds


def _time_calls(kernel, ops: dict, repeat: int):
    """One checked call, then ``repeat`` timed ones; an accumulated output gets a fresh copy each call."""
    out = kernel(**{n: (v.copy() if isinstance(v, np.ndarray) else v) for n, v in ops.items()})
    times = []
    for _ in range(repeat):
        call_ops = {n: (v.copy() if n == kernel.output_name and isinstance(v, np.ndarray) else v)
                    for n, v in ops.items()}
        t0 = time.perf_counter()
        kernel(**call_ops)
        times.append(time.perf_counter() - t0)
    return out, times


# ------------------------------------------------------------------ the check
@dataclass(frozen=True)
class Comparison:
    """How a kernel's result compares with the reference.

    ``max_error`` is over the entries finite on both sides; ``unmatched`` counts
    entries that are NaN or infinite on one side only (or opposite infinities);
    ``nonfinite`` counts entries that are NaN on both sides or the same infinity.
    """
    ok: bool
    max_error: float
    unmatched: int
    nonfinite: int

    def describe(self) -> str:
        text = f"{'OK' if self.ok else 'MISMATCH'} (max abs error {self.max_error:.3g}"
        if self.unmatched:
            text += f"; {self.unmatched} entries NaN or infinite on one side only"
        if self.nonfinite:
            text += f"; {self.nonfinite} NaN or infinite entries match"
        return text + ")"


def compare(got, ref, tol: float) -> Comparison:
    """Compare a result with the reference, NaN equal to NaN and each infinity to itself.

    The CLI's random data has negative values, so ``log`` and ``sqrt`` give NaN on
    both sides; that is agreement, not a mismatch. A NaN or infinity on one side
    only is a mismatch. Finite entries must agree within ``tol`` times the largest
    finite reference magnitude (at least 1).
    """
    got, ref = np.asarray(got, dtype=np.float64), np.asarray(ref, dtype=np.float64)
    finite = np.isfinite(got) & np.isfinite(ref)
    with np.errstate(invalid="ignore"):
        same = (np.isnan(got) & np.isnan(ref)) | (np.isinf(got) & (got == ref))
    unmatched = int(np.count_nonzero(~(finite | same)))
    diff = np.abs(got[finite] - ref[finite])
    err = float(diff.max()) if diff.size else 0.0
    scale = float(np.abs(ref[finite]).max()) if diff.size else 0.0
    ok = unmatched == 0 and err <= tol * max(1.0, scale)
    return Comparison(ok, err, unmatched, int(np.count_nonzero(same)))


def _check(kernel, ops: dict, out, dtype: str) -> Comparison:
    from .testing.reference import reference
    dense_ops = {n: _dense(v) for n, v in ops.items()}
    with np.errstate(all="ignore"):  # log/sqrt of negative data: NaN is the expected answer
        ref = reference(kernel.notation, dense_ops, out=dense_ops.get(kernel.output_name))
    tol = {"float64": 1e-9, "float32": 1e-4, "bfloat16": 3e-2}[dtype]
    return compare(_dense(out), ref, tol)


def _report(kernel, ops: dict, compile_s: float, times: list, result: Comparison) -> None:
    print(f"# {kernel.index_notation}")
    print("# loops:\n" + "\n".join("#   " + line for line in kernel.loops.splitlines()))
    print(kernel.ir)
    print("# operands: " + ", ".join(f"{n}{tuple(np.shape(_dense(v)))}" for n, v in ops.items()))
    print(f"# compile {compile_s * 1e3:.1f} ms; run median {np.median(times) * 1e3:.3f} ms "
          f"over {len(times)} calls")
    print(f"# check against numpy.einsum: {result.describe()}")


# ------------------------------------------------------------------ main
def _run(args) -> int:
    _check_ranges(args)
    _check_emit(args)
    formats = _parse_formats(args.format)
    if args.expression == DEFAULT_EXPRESSION and not formats:
        formats = {"W": "csr"}
    kernel, compile_s = _compile(args, formats)
    if args.emit:
        print({"ir": kernel.ir, "llvm": kernel.source, "cuda": kernel.source, "loops": kernel.loops,
               "notation": kernel.index_notation}[args.emit])
        return EXIT_MATCH
    size = _run_size(kernel, args.size)
    _check_memory(kernel, size)
    ops = _random_operands(kernel, size, args.density, args.seed)
    out, times = _time_calls(kernel, ops, args.repeat)
    result = _check(kernel, ops, out, args.dtype)
    _report(kernel, ops, compile_s, times, result)
    return EXIT_MATCH if result.ok else EXIT_MISMATCH


def _first_line(e: BaseException) -> str:
    lines = str(e).strip().splitlines()
    return lines[0] if lines else "(no message)"


def cache_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="spcomp cache", description="the disk cache of compiled kernels "
                                "(SPCOMP_CACHE_DIR, size limit SPCOMP_CACHE_MAX)")
    what = p.add_mutually_exclusive_group()
    what.add_argument("--info", action="store_true", help="print where it is, what it holds and its limit "
                      "(the default)")
    what.add_argument("--clear", action="store_true", help="remove every cached kernel and cuda-sim library")
    return p


def _cache_command(argv) -> int:
    from .runtime import cache
    args = cache_parser().parse_args(argv)
    if args.clear:
        print(f"removed {cache.clear()} files from {cache.cache_dir()}")
        return EXIT_MATCH
    info = cache.info()
    print(f"path     {info['path']}")
    print(f"usable   {'yes' if info['usable'] else 'no'}" + (f" ({info['why']})" if info["why"] else ""))
    print(f"kernels  {info['entries']}")
    print(f"cuda-sim {info['libraries']} libraries")
    print(f"size     {info['bytes'] / 2**20:.1f} MiB of {info['limit'] / 2**20:.0f} MiB")
    return EXIT_MATCH if info["usable"] else EXIT_ERROR


def main(argv=None) -> int:
    """Run the command line and return its exit status (see the module docstring)."""
    argv = sys.argv[1:] if argv is None else list(argv)
    try:
        if argv[:1] == ["cache"]:
            return _cache_command(argv[1:])
        args = build_parser().parse_args(argv)
    except SystemExit as e:  # argparse: --help exits 0, a usage error 2
        return e.code if isinstance(e.code, int) else EXIT_ERROR
    from .errors import SpcompError
    try:
        return _run(args)
    except UsageError as e:
        print(f"spcomp: {e}", file=sys.stderr)
    except SpcompError as e:  # the message may carry a caret line under the culprit; keep it
        print(f"spcomp: {type(e).__name__}: {e}", file=sys.stderr)
    except MemoryError:
        print("spcomp: out of memory while running the kernel; pass a smaller --size or --density",
              file=sys.stderr)
    except Exception as e:  # a bug in spcomp: say so, but never let it read as a mismatch (1)
        if os.environ.get("SPCOMP_TRACEBACK"):
            traceback.print_exc()
        print(f"spcomp: internal error: {type(e).__name__}: {_first_line(e)} "
              "(this is a bug in spcomp; please report it with the command line; "
              "SPCOMP_TRACEBACK=1 prints the traceback)", file=sys.stderr)
    return EXIT_ERROR


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
