"""Derivatives of index-notation statements, as index-notation statements.

:func:`~.derive.derive` turns ``Y[o] = rhs`` into the vector–Jacobian statement of
one operand (framework-free: notation in, notation out); :class:`~.program.VJP`
compiles and runs them (``spcomp.vjp``, ``Kernel.vjp``). See docs/autodiff.md.
"""
from .derive import Gradient, derive
from .program import VJP, pattern_of

__all__ = ["Gradient", "VJP", "derive", "pattern_of"]
