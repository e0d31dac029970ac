"""The block structure of a statement, read from its index notation.

``spcomp.dask.apply`` runs a kernel once per tuple of blocks: every index of every
operand is a block index, the output's indices are the block indices of the
result, and a *contracted* index (summed, absent on the left) that spans several
chunks makes partial results that are added afterwards. That addition is right
only where the statement is linear in the sum: ``y[i] = sum(j, A[i,j]*x[j]) * c[i]``
may be cut over ``j`` (each piece times ``c[i]``, then added), but
``y[i] = sum(j, A[i,j]*x[j]) + b[i]`` may not (``b[i]`` would be added once per
``j``-block), nor ``relu(sum(j, ...))``.

:func:`hoist` finds every sum over a split index that is not in a linear
position (reached from the root only through other sums, products, negations and
numerators) and lifts it out as a statement of its own, ``T[free] = sum(j, ...)``,
whose result the rest of the statement then reads as an operand: the reduction is
computed blockwise, the rest once per output block, by a second kernel. The
statements are printed back as text without their sums, fully parenthesised, so
the frontend places every sum where it was; the caller compiles them and checks
that it did.
"""
from __future__ import annotations

from dataclasses import dataclass

from spcomp.errors import UnsupportedError
from spcomp.notation import (Access, Add, Call, Div, Literal, Mul, Neg, Reduce, Sub, Sum, TensorVar, accesses,
                             free_indices)


@dataclass(frozen=True)
class Structure:
    """What blockwise needs of a statement: the output's indices, the contracted
    ones (first appearance order) and each tensor's indices (one access pattern)."""
    output: tuple
    contracted: tuple
    tensors: dict  # name -> tuple of index names, in the order of its access


def structure(notation, what: str = "spcomp.dask.apply") -> Structure:
    """The block structure of ``notation``; UnsupportedError for what blockwise
    cannot map: one tensor accessed with two index patterns, an output index that
    no operand on the right uses."""
    patterns: dict = {}
    for acc in accesses(notation.rhs):
        idx = tuple(i.name for i in acc.indices)
        seen = patterns.setdefault(acc.tensor.name, idx)
        if seen != idx:
            raise UnsupportedError(
                f"{what}: tensor {acc.tensor.name} is accessed as {acc.tensor.name}[{','.join(seen)}] and "
                f"{acc.tensor.name}[{','.join(idx)}]; a tensor is chunked once, so give each access "
                "pattern its own name (pass the same array twice)")
    out = tuple(i.name for i in notation.lhs.indices)
    used = {i for idx in patterns.values() for i in idx}
    for i in out:
        if i not in used:
            raise UnsupportedError(f"{what}: output index {i} is used by no operand on the right side, "
                                   "so nothing says how to chunk it")
    contracted = tuple(dict.fromkeys(i for idx in patterns.values() for i in idx if i not in out))
    return Structure(out, contracted, patterns)


@dataclass(frozen=True)
class Temp:
    """A lifted reduction: ``name[indices] = node`` (``node`` a Sum)."""
    name: str
    indices: tuple  # IndexVar
    node: Sum


def hoist(rhs, split: set, taken: set):
    """``rhs`` with every Sum over an index in ``split`` that sits in a non-linear
    position replaced by an access of a new tensor; returns ``(rhs, temps)``, the
    temps innermost first. ``taken`` holds the names in use (extended)."""
    temps: list = []

    def walk(e, linear: bool):
        if isinstance(e, Sum):
            if e.index.name in split and not linear:
                indices = _ordered_free(e)
                name = _fresh("T", taken)
                temps.append(Temp(name, indices, e))
                return Access(TensorVar(name, len(indices), None, None), indices)
            return Sum(e.index, walk(e.body, linear))
        if isinstance(e, (Access, Literal)):
            return e
        if isinstance(e, Neg):
            return Neg(walk(e.operand, linear))
        if isinstance(e, Mul):
            return Mul(walk(e.lhs, linear), walk(e.rhs, linear))
        if isinstance(e, Div):
            return Div(walk(e.lhs, linear), walk(e.rhs, False))
        if isinstance(e, (Add, Sub)):
            return type(e)(walk(e.lhs, False), walk(e.rhs, False))
        if isinstance(e, Call):
            return Call(e.func, tuple(walk(a, False) for a in e.args))
        if isinstance(e, Reduce):
            if e.index.name in split:
                raise UnsupportedError(f"spcomp.dask: {e.op}({e.index.name}, ...) over an index split into "
                                       "several chunks is not supported; keep that dimension in one chunk")
            return Reduce(e.op, e.index, walk(e.body, False))
        raise TypeError(f"not an index-notation expression: {e!r}")

    return walk(rhs, True), temps


def _ordered_free(e) -> tuple:
    """The free indices of ``e`` in order of first appearance."""
    free = free_indices(e)
    out = []
    for acc in accesses(e):
        for i in acc.indices:
            if i in free and i not in out:
                out.append(i)
    return tuple(out)


def _fresh(stem: str, taken: set) -> str:
    n = 0
    while f"{stem}{n}" in taken:
        n += 1
    taken.add(f"{stem}{n}")
    return f"{stem}{n}"


def text(e) -> str:
    """``e`` as source text without its sums, every operation parenthesised, so that
    parsing it gives back the same tree and the frontend the same sums."""
    if isinstance(e, (Access, Literal)):
        return repr(e)
    if isinstance(e, Sum):
        return text(e.body)
    if isinstance(e, Neg):
        return f"(-{text(e.operand)})"
    op = {Add: "+", Sub: "-", Mul: "*", Div: "/"}.get(type(e))
    if op is not None:
        return f"({text(e.lhs)} {op} {text(e.rhs)})"
    if isinstance(e, Call):
        return f"{e.func}({', '.join(text(a) for a in e.args)})"
    if isinstance(e, Reduce):
        return f"{e.op}({e.index.name}, {text(e.body)})"
    raise TypeError(f"not an index-notation expression: {e!r}")


def statement(name: str, indices, rhs) -> str:
    """``name[indices] = rhs`` as source text (``name = rhs`` for no indices)."""
    lhs = f"{name}[{','.join(i.name if hasattr(i, 'name') else i for i in indices)}]" if indices else name
    return f"{lhs} = {text(rhs)}"
