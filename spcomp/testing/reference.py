"""The reference every kernel is checked against: the same index notation
evaluated densely with ``numpy.einsum`` in float64.

Semantics match the compiler's (DESIGN §4): sums wrap the sub-expression the
frontend placed them on, ``+``/``-`` broadcast, ``*`` contracts nothing by
itself (sums do), and ``a / b`` is computed where both sides store a value and
is 0 elsewhere (division of stored values, DESIGN §4): a dense operand stores
every coordinate (so a zero in it divides: ``1 / 0.0`` is inf), a sparse one its
nonzeros (for random data "stored" and "nonzero" coincide), a literal 0 nothing;
``+``, ``-``, ``max``, ``min`` store the union, ``*`` and ``/`` the intersection,
functions that map 0 to 0 their argument's pattern and the others everything,
and a sum everything (its value on an empty segment is a computed 0).
"""
from __future__ import annotations

import numpy as np

from ..notation import (FUNCTIONS, Access, Add, Call, Div, Literal, Mul, Neg, Sub, Sum, maps_zero_to_zero)


def _align(arr, idx, target, sizes):
    """``arr`` (axes ``idx``) as an array with axes ``target`` (broadcast)."""
    arr = np.asarray(arr, dtype=np.float64)
    if not idx:
        return np.broadcast_to(arr, tuple(sizes[i] for i in target))
    perm = [idx.index(i) for i in target if i in idx]
    arr = np.transpose(arr, perm)
    shape = [sizes[i] if i in idx else 1 for i in target]
    arr = arr.reshape(shape)
    return np.broadcast_to(arr, tuple(sizes[i] for i in target))


def _union(a, b):
    return a + [i for i in b if i not in a]


def evaluate(e, operands: dict, sizes: dict, masks: dict | None = None):
    """-> (float64 array, list of index names for its axes). ``masks``: where sparse
    operands store entries (name -> bool array); without one an operand in a sparse
    format stores its nonzeros."""
    if isinstance(e, Access):
        arr = np.asarray(operands[e.tensor.name], dtype=np.float64)
        names = [i.name for i in e.indices]
        uniq = []
        for n_ in names:
            if n_ not in uniq:
                uniq.append(n_)
        if len(uniq) != len(names):  # a repeated index takes the diagonal
            letters = {n_: chr(97 + k) for k, n_ in enumerate(uniq)}
            spec = "".join(letters[n_] for n_ in names) + "->" + "".join(letters[n_] for n_ in uniq)
            arr = np.einsum(spec, arr)
        return arr, uniq
    if isinstance(e, Literal):
        return np.float64(e.value), []
    if isinstance(e, Neg):
        a, ia = evaluate(e.operand, operands, sizes, masks)
        return -a, ia
    if isinstance(e, Sum):
        a, ia = evaluate(e.body, operands, sizes, masks)
        name = e.index.name
        if name not in ia:
            return a * sizes[name], ia
        return np.sum(a, axis=ia.index(name)), [i for i in ia if i != name]
    if isinstance(e, (Add, Sub, Mul, Div)):
        a, ia = evaluate(e.lhs, operands, sizes, masks)
        b, ib = evaluate(e.rhs, operands, sizes, masks)
        idx = _union(ia, ib)
        A, B = _align(a, ia, idx, sizes), _align(b, ib, idx, sizes)
        if isinstance(e, Add):
            return A + B, idx
        if isinstance(e, Sub):
            return A - B, idx
        sa, isa = stored(e.lhs, operands, sizes, masks)
        sb, isb = stored(e.rhs, operands, sizes, masks)
        both = (_align(sa, isa, idx, sizes) != 0) & (_align(sb, isb, idx, sizes) != 0)
        with np.errstate(divide="ignore", invalid="ignore"):
            if isinstance(e, Mul):  # intersects: an absent factor annihilates even inf
                return np.where(both, A * B, 0.0), idx
            return np.where(both, A / np.where(both, B, 1.0), 0.0), idx
    if isinstance(e, Call):
        vals = [evaluate(a, operands, sizes, masks) for a in e.args]
        idx = []
        for _, ia in vals:
            idx = _union(idx, ia)
        with np.errstate(all="ignore"):
            return FUNCTIONS[e.func].numpy(*(_align(a, ia, idx, sizes) for a, ia in vals)), idx
    raise TypeError(e)


def stored(e, operands: dict, sizes: dict, masks: dict | None = None):
    """-> (bool array, index names): where the kernel stores a value of ``e``
    (see the module docstring); what a division may divide."""
    if isinstance(e, Access):
        value, idx = evaluate(e, operands, sizes)
        if e.tensor.format is None or e.tensor.format.is_dense:
            return np.ones(np.shape(value), dtype=bool), idx
        if masks and e.tensor.name in masks:
            return evaluate(e, {e.tensor.name: masks[e.tensor.name]}, sizes)[0] != 0, idx
        return np.asarray(value) != 0, idx
    if isinstance(e, Literal):
        return np.bool_(e.value != 0), []
    if isinstance(e, Neg):
        return stored(e.operand, operands, sizes, masks)
    if isinstance(e, Sum):
        # a reduction is a computed value, 0 for an empty segment: stored everywhere
        # (so (Σ_j A[i,j] x[j]) / z[i] is 0/0 = NaN on an empty row where z[i] = 0,
        # as (A @ x) / z is in NumPy)
        m, im = stored(e.body, operands, sizes, masks)
        name = e.index.name
        return np.ones(tuple(sizes[i] for i in im if i != name), dtype=bool), [i for i in im if i != name]
    if isinstance(e, (Add, Sub, Mul, Div)):
        (a, ia), (b, ib) = (stored(x, operands, sizes, masks) for x in (e.lhs, e.rhs))
        idx = _union(ia, ib)
        A, B = _align(a, ia, idx, sizes) != 0, _align(b, ib, idx, sizes) != 0
        return (A & B if isinstance(e, (Mul, Div)) else A | B), idx
    if isinstance(e, Call):
        # stored where any tensor argument is, when f(0, ...) = 0; everywhere otherwise
        keeps_zero = maps_zero_to_zero(e)
        parts = [stored(x, operands, sizes, masks) for x in e.args
                 if not (keeps_zero and isinstance(x, Literal))]
        idx = []
        for _, ia in parts:
            idx = _union(idx, ia)
        shape = tuple(sizes[i] for i in idx)
        if not keeps_zero:
            return np.ones(shape, dtype=bool), idx
        out = np.zeros(shape, dtype=bool)
        for m, im in parts:
            out = out | (_align(m, im, idx, sizes) != 0)
        return out, idx
    raise TypeError(e)


def reference(assignment, operands: dict, out=None, masks: dict | None = None):
    """Evaluate ``assignment`` on dense float64 operands (name -> array).

    ``out`` is the output's old value for ``+=``; ``masks`` says where sparse
    operands store entries (see :func:`evaluate`). Returns a float64 array in the
    output's dimension order (a 0-d array for a scalar output)."""
    from ..notation import accesses
    sizes = {}
    for acc in accesses(assignment.rhs):
        arr = np.asarray(operands[acc.tensor.name])
        for d, i in enumerate(acc.indices):
            sizes.setdefault(i.name, arr.shape[d])
    lhs = assignment.lhs
    if out is not None:
        for d, i in enumerate(lhs.indices):
            sizes.setdefault(i.name, np.shape(out)[d])
    val, idx = evaluate(assignment.rhs, operands, sizes, masks)
    target = [i.name for i in lhs.indices]
    result = np.array(_align(val, idx, target, sizes), dtype=np.float64)
    if assignment.accumulate and out is not None:
        result = result + np.asarray(out, dtype=np.float64)
    return result
