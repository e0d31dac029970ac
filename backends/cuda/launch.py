"""Launch geometry: the ``(grid, block)`` a kernel function runs with on given arguments.

Every parallel loop the emitter prints is grid-stride, so any grid is correct;
:func:`launch_config` sizes it from the trip count of the function's grid-level loop,
whose bounds it evaluates from the launch arguments (parameters, constants, loads from
parameter arrays). Both launchers (``sim.py``, ``device.py``) and the targets use it.
"""
from __future__ import annotations

import numpy as np

from spcomp import errors
from spcomp.ir import nodes as n
from spcomp.ir.loops import first_parallel
from spcomp.ir.types import ScalarType

from .contexts import describe_loop

MAX_GRID = 65535 * 64  # blocks; grid-stride loops cover any larger trip count


def _evaluate(e, args: dict, fn: str, loop: n.For):
    def bad(why):
        raise errors.UnsupportedError(
            f"cannot derive the launch configuration of `{fn}`: the bounds of {describe_loop(loop)} {why}; "
            "pass grid= explicitly")
    if isinstance(e, n.Const):
        return e.value
    if isinstance(e, n.Var):
        if e.name not in args:
            bad(f"use `{e.name}`, which is not a parameter given in the arguments")
        v = args[e.name]
        if isinstance(v, np.ndarray) and v.ndim == 0:
            v = v.item()
        if not isinstance(v, (int, float, np.integer, np.floating, bool, np.bool_)):
            bad(f"use `{e.name}`, which is not a scalar")
        return v.item() if hasattr(v, "item") else v
    if isinstance(e, n.Load):
        if not isinstance(e.array, n.Var) or e.array.name not in args:
            bad("load from an array that is not a parameter")
        arr = np.asarray(args[e.array.name]).reshape(-1)
        i = int(_evaluate(e.index, args, fn, loop))
        if not 0 <= i < arr.size:
            bad(f"load `{e.array.name}[{i}]`, out of bounds")
        return arr[i].item()
    if isinstance(e, n.Cast):
        v = _evaluate(e.value, args, fn, loop)
        return float(v) if e.type.is_float else int(v)
    if isinstance(e, n.Unary) and e.op == "-":
        return -_evaluate(e.operand, args, fn, loop)
    if isinstance(e, n.Binary) and e.op in ("+", "-", "*", "/", "%", "min", "max"):
        a, b = _evaluate(e.lhs, args, fn, loop), _evaluate(e.rhs, args, fn, loop)
        is_int = isinstance(e.type, ScalarType) and e.type.is_int
        if e.op == "+":
            return a + b
        if e.op == "-":
            return a - b
        if e.op == "*":
            return a * b
        if e.op == "min":
            return min(a, b)
        if e.op == "max":
            return max(a, b)
        if b == 0:
            bad("divide by zero")
        if e.op == "/":
            return int(a / b) if is_int else a / b  # C truncates toward zero
        return a - b * int(a / b) if is_int else float(np.fmod(a, b))
    bad(f"use an expression the launcher cannot evaluate ({type(e).__name__})")


def launch_config(function: n.Function, args_by_name: dict, block: int = 256,
                  max_grid: int = MAX_GRID) -> tuple[int, int]:
    """(grid, block) for launching ``function`` on the given arguments.

    The grid follows the trip count ``n`` of the grid-level parallel loop, whose
    bounds are evaluated from ``args_by_name`` (parameters, constants, loads from
    parameter arrays): "gpu-thread"/"threads": ceil(n / block) blocks;
    "gpu-block": n blocks; "gpu-warp": ceil(32 n / block) blocks; capped at
    ``max_grid`` (the loops are grid-stride) and at least 1. A function without a
    parallel loop runs as grid=1, block=1.
    """
    loops = first_parallel(function.body)
    if not loops:
        return 1, 1
    if len(loops) > 1:
        raise errors.UnsupportedError(f"cannot derive the launch configuration of `{function.name}`: it has "
                                      f"{len(loops)} grid-level parallel loops")
    loop = loops[0]
    block = int(block)
    if not 1 <= block <= 1024:
        raise errors.UnsupportedError(f"block size {block}: a CUDA block has 1 to 1024 threads")
    if loop.parallel in ("gpu-warp", "gpu-block") and block % 32:
        raise errors.UnsupportedError(f"block size {block} for {describe_loop(loop)} of `{function.name}`: warp and "
                                      "block mappings need a multiple of 32")
    start = _evaluate(loop.start, args_by_name, function.name, loop)
    end = _evaluate(loop.end, args_by_name, function.name, loop)
    trips = max(0, int(end) - int(start))
    if loop.parallel in ("gpu-thread", "threads"):
        grid = -(-trips // block)
    elif loop.parallel == "gpu-block":
        grid = trips
    elif loop.parallel == "gpu-warp":
        grid = -(-trips * 32 // block)
    else:
        raise errors.UnsupportedError(f"`{function.name}`: {describe_loop(loop)} cannot be the outermost parallel loop")
    return max(1, min(grid, int(max_grid))), block
