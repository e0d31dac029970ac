"""How each language function becomes kernel IR: one intrinsic ``Call``.

Every function maps to one float intrinsic of the IR (``n.INTRINSICS``): the C math
library's functions by name, and the language's compound ones (relu, gelu, sign,
mod ...) as intrinsics the backends expand on their arguments' values. One call
node per function keeps the IR linear in the expression however the formula uses
its argument. The meanings follow NumPy (spcomp/notation/functions.py) down to NaN
and ±inf: ``round`` is ``rint`` (half to even), ``max``/``min`` propagate NaN.
"""
from __future__ import annotations

from ..errors import UnsupportedError
from ..ir import nodes as n

# language name -> IR intrinsic, where they differ
_RENAMED = {"round": "rint", "max": "maximum", "min": "minimum"}


def lower_call(func: str, args: list, compute) -> object:
    """The IR expression of ``func(*args)``; ``args`` are IR expressions of type ``compute``."""
    name = _RENAMED.get(func, func)
    if name not in n.INTRINSICS:
        raise UnsupportedError(f"internal: function {func!r} has no IR intrinsic (spcomp/lower/functions.py)")
    return n.Call(name, tuple(args), compute)
