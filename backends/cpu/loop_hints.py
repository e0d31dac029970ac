"""The IR's loop hints as LLVM sees them: ``llvm.loop`` metadata and float flags.

A ``For``'s latch carries a distinct ``llvm.loop`` node: ``mustprogress``, the
vectorize hint (``vectorize.enable`` + ``width``; width 1 disables; a ``masked_tail``
loop adds ``vectorize.predicate.enable`` and ``interleave.count 1``, so its last
partial vector runs masked instead of in a scalar remainder loop) and the unroll hint
(``unroll.count``; 1 disables). Float arithmetic carries ``contract`` (``fast`` with
``fast_math``); a float sum inside a vectorised loop also carries ``reassoc``.
"""
from __future__ import annotations

from llvmlite import ir

from spcomp.ir import nodes as n

from .llvm_types import I1_T, I32_T


def float_flags(fast_math: bool) -> tuple:
    """The fast-math flags of every float operation."""
    return ("fast",) if fast_math else ("contract",)


def vector_sum_flags(fast_math: bool) -> tuple:
    """The flags of a float sum ``t = t + v`` in a loop with a vectorize hint.

    Its lanes are already summed out of order, and ``reassoc`` lets LLVM add them up as
    a tree (3 steps for 8 lanes) instead of one after another (SpMV: 8 dependent adds
    per row, 12 % of its time)."""
    return float_flags(fast_math) if fast_math else ("contract", "reassoc")


class LoopID(ir.values.MDValue):
    """A ``distinct`` metadata node whose first operand is itself: an ``llvm.loop`` ID."""

    def __init__(self, module: ir.Module, properties):
        super().__init__(module, properties, name=str(len(module.metadata)))

    def descr(self, buf):
        ops = [self.get_reference()] + [p.get_reference() for p in self.operands]
        buf += ("distinct !{{ {0} }}".format(", ".join(ops)), "\n")

    __eq__ = object.__eq__
    __ne__ = object.__ne__
    __hash__ = object.__hash__


def loop_id(module: ir.Module, loop: n.For) -> LoopID:
    """The ``llvm.loop`` node for ``loop``'s hints (a new one per loop)."""
    md = module.add_metadata
    props = [md(["llvm.loop.mustprogress"])]
    if loop.vectorize == 1:
        props.append(md(["llvm.loop.vectorize.width", ir.Constant(I32_T, 1)]))
    elif loop.vectorize > 1:
        props.append(md(["llvm.loop.vectorize.enable", ir.Constant(I1_T, 1)]))
        props.append(md(["llvm.loop.vectorize.width", ir.Constant(I32_T, loop.vectorize)]))
        if loop.masked_tail:
            props.append(md(["llvm.loop.vectorize.predicate.enable", ir.Constant(I1_T, 1)]))
            props.append(md(["llvm.loop.interleave.count", ir.Constant(I32_T, 1)]))
    if loop.unroll == 1:
        props.append(md(["llvm.loop.unroll.disable"]))
    elif loop.unroll > 1:
        props.append(md(["llvm.loop.unroll.count", ir.Constant(I32_T, loop.unroll)]))
    return LoopID(module, props)
