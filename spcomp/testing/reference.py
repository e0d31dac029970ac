"""The reference every kernel is checked against: the same index notation
evaluated densely with ``numpy.einsum`` in float64.

Semantics match the compiler's (DESIGN §4): sums wrap the sub-expression the
frontend placed them on, ``+``/``-`` broadcast, ``*`` contracts nothing by
itself (sums do), and ``a / b`` is ``a / b`` where ``b`` is nonzero and 0
elsewhere (division of stored values; with sparse operands "stored" and
"nonzero" coincide for random data).
"""
from __future__ import annotations

import numpy as np
from scipy.special import erf

from ..notation import (Access, Add, Call, Div, Literal, Mul, Neg, Sub, Sum)

_FUNCS = {
    "relu": lambda x: np.maximum(x, 0.0),
    "gelu": lambda x: 0.5 * x * (1.0 + erf(x / np.sqrt(2.0))),
    "silu": lambda x: x / (1.0 + np.exp(-x)),
    "abs": np.abs,
    "sqrt": np.sqrt,
    "tanh": np.tanh,
    "exp": np.exp,
    "log": np.log,
}


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


def evaluate(e, operands: dict, sizes: dict):
    """-> (float64 array, list of index names for its axes)."""
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
        a, ia = evaluate(e.operand, operands, sizes)
        return -a, ia
    if isinstance(e, Sum):
        a, ia = evaluate(e.body, operands, sizes)
        name = e.index.name
        if name not in ia:
            return a * sizes[name], ia
        return np.sum(a, axis=ia.index(name)), [i for i in ia if i != name]
    if isinstance(e, (Add, Sub, Mul, Div)):
        a, ia = evaluate(e.lhs, operands, sizes)
        b, ib = evaluate(e.rhs, operands, sizes)
        idx = _union(ia, ib)
        A, B = _align(a, ia, idx, sizes), _align(b, ib, idx, sizes)
        if isinstance(e, Add):
            return A + B, idx
        if isinstance(e, Sub):
            return A - B, idx
        if isinstance(e, Mul):
            return A * B, idx
        with np.errstate(divide="ignore", invalid="ignore"):
            return np.where(B != 0, A / np.where(B != 0, B, 1.0), 0.0), idx
    if isinstance(e, Call):
        vals = [evaluate(a, operands, sizes) for a in e.args]
        if e.func in ("max", "min"):
            (a, ia), (b, ib) = vals
            idx = _union(ia, ib)
            f = np.maximum if e.func == "max" else np.minimum
            return f(_align(a, ia, idx, sizes), _align(b, ib, idx, sizes)), idx
        a, ia = vals[0]
        with np.errstate(all="ignore"):
            return _FUNCS[e.func](a), ia
    raise TypeError(e)


def reference(assignment, operands: dict, out=None):
    """Evaluate ``assignment`` on dense float64 operands (name -> array).

    ``out`` is the output's old value for ``+=``. Returns a float64 array in the
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
    val, idx = evaluate(assignment.rhs, operands, sizes)
    target = [i.name for i in lhs.indices]
    result = np.array(_align(val, idx, target, sizes), dtype=np.float64)
    if assignment.accumulate and out is not None:
        result = result + np.asarray(out, dtype=np.float64)
    return result
