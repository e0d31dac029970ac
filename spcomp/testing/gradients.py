"""Oracles for derived gradients (``spcomp.vjp``): finite differences and torch autograd.

Both differentiate ``L = Σ dY ⊙ Y`` where ``Y`` is the statement evaluated densely
(:func:`~.reference.reference`), so ``∂L/∂A`` is the vector–Jacobian product the
derived kernels compute. A sparse operand is a function of its *stored* values:
finite differences perturb those only, and torch's dense gradient is restricted to
them (the rule of docs/autodiff.md); ``dense=True`` keeps every entry.
"""
from __future__ import annotations

import numpy as np

from ..notation import Access, Add, Call, Div, Literal, Mul, Neg, Sub, Sum, accesses
from .check import densify, stored_masks
from .reference import reference


def jitter(ops: dict, rng: np.random.Generator, out_name: str | None = None) -> dict:
    """``ops`` with every nonzero value moved by up to ±0.2 (so no two values tie and no
    function meets its kink by construction); every stored pattern kept (a dense
    operand's zeros are moved too)."""
    import scipy.sparse as sp
    from ..runtime import Tensor
    out = {}
    for name, v in ops.items():
        if name == out_name:
            out[name] = v
        elif isinstance(v, Tensor):
            vals = np.asarray(v.vals, dtype=np.float64)
            new = np.where(vals != 0, vals + rng.uniform(-0.2, 0.2, vals.shape), 0.0).astype(v.vals.dtype)
            out[name] = Tensor(v.format, v.shape, v.levels, new)
        elif sp.issparse(v):
            m = v.copy()
            m.data = np.where(m.data != 0, m.data + rng.uniform(-0.2, 0.2, m.data.shape), 0.0)
            out[name] = m
        elif isinstance(v, float):
            out[name] = v + float(rng.uniform(-0.2, 0.2)) if v else v
        else:
            # a dense operand has no pattern: its zeros move too, off relu's and abs's kinks
            a = np.asarray(v)
            nudge = rng.uniform(-0.2, 0.2, a.shape)
            out[name] = np.where(a != 0, a + nudge, np.where(nudge < 0, nudge - 0.05, nudge + 0.05)).astype(a.dtype)
    return out


def dense_inputs(notation, ops: dict) -> tuple:
    """-> (name -> float64 array of every input, name -> stored mask of the sparse ones:
    where the operand stores an entry, explicit zeros included)."""
    import scipy.sparse as sp
    out_name = notation.lhs.tensor.name
    arrays = {n: densify(v) for n, v in ops.items() if n != out_name}
    masks = stored_masks(ops, out_name)
    for n, t in notation.tensors.items():
        if n == out_name or n in masks or t.format.is_dense:
            continue
        v = ops[n]
        if sp.issparse(v):
            c = v.tocoo()
            masks[n] = np.zeros(v.shape, dtype=bool)
            masks[n][c.row, c.col] = True
        else:
            masks[n] = arrays[n] != 0
    return arrays, masks


def numeric_vjp(notation, arrays: dict, masks: dict, cotangent, name: str, h: float = 1e-6,
                dense: bool = False) -> np.ndarray:
    """``∂(Σ dY ⊙ Y)/∂name`` by central differences in float64, at the stored entries
    of a sparse operand (every entry with ``dense``)."""
    cot = np.asarray(cotangent, dtype=np.float64)
    base = arrays[name]
    where = masks.get(name) if not dense else None
    if dense:  # the dense function: the operand's unstored entries are values too
        masks = {n: m for n, m in masks.items() if n != name}
    grad = np.zeros(np.shape(base))
    for pos in np.ndindex(np.shape(base)):
        if where is not None and not where[pos]:
            continue
        vals = []
        for step in (h, -h):
            a = np.array(base, dtype=np.float64)
            a[pos] += step
            y = reference(notation, {**arrays, name: a}, out=np.zeros(cot.shape), masks=masks)
            vals.append(float(np.sum(cot * y)))
        grad[pos] = (vals[0] - vals[1]) / (2 * h)
    return grad


# ------------------------------------------------------------------- torch

def _torch_function(name: str):
    """The torch function of a language function (the oracle's; torch derives it)."""
    import torch
    F = torch.nn.functional
    special = {
        "gelu": F.gelu, "silu": F.silu, "softplus": F.softplus, "relu": torch.relu,
        "max": torch.maximum, "min": torch.minimum, "mod": torch.remainder,
        "cube": lambda x: x * x * x, "cbrt": lambda x: torch.sign(x) * torch.abs(x) ** (1.0 / 3.0),
        "heaviside": lambda x, h: (x > 0).to(x.dtype) + (x == 0).to(x.dtype) * h,
    }
    return special.get(name) or getattr(torch, name)


def _align(t, idx: list, target: list, sizes: dict):
    import torch
    if not idx:
        return t.expand(tuple(sizes[i] for i in target)) if target else t
    t = t.permute([idx.index(i) for i in target if i in idx])
    t = t.reshape([sizes[i] if i in idx else 1 for i in target])
    return t.expand(tuple(sizes[i] for i in target)) if target else t + torch.zeros(())


def torch_evaluate(e, tensors: dict, sizes: dict):
    """``e`` evaluated with torch on dense float64 tensors (as :func:`reference` does
    for operands without infinities): -> (tensor, its index names)."""
    import torch
    if isinstance(e, Access):
        names = [i.name for i in e.indices]
        uniq = list(dict.fromkeys(names))
        t = tensors[e.tensor.name]
        if len(uniq) != len(names):
            letters = {n: chr(97 + k) for k, n in enumerate(uniq)}
            t = torch.einsum("".join(letters[n] for n in names) + "->" + "".join(letters[n] for n in uniq), t)
        return t, uniq
    if isinstance(e, Literal):
        return torch.tensor(float(e.value), dtype=torch.float64), []
    if isinstance(e, Neg):
        t, i = torch_evaluate(e.operand, tensors, sizes)
        return -t, i
    if isinstance(e, Sum):
        t, i = torch_evaluate(e.body, tensors, sizes)
        n = e.index.name
        return (t * sizes[n], i) if n not in i else (t.sum(i.index(n)), [x for x in i if x != n])
    if isinstance(e, Call):
        vals = [torch_evaluate(a, tensors, sizes) for a in e.args]
        idx = []
        for _, i in vals:
            idx += [x for x in i if x not in idx]
        args = [_align(t, i, idx, sizes) for t, i in vals]
        return _torch_function(e.func)(*args), idx
    (a, ia), (b, ib) = torch_evaluate(e.lhs, tensors, sizes), torch_evaluate(e.rhs, tensors, sizes)
    idx = ia + [x for x in ib if x not in ia]
    A, B = _align(a, ia, idx, sizes), _align(b, ib, idx, sizes)
    if isinstance(e, Add):
        return A + B, idx
    if isinstance(e, Sub):
        return A - B, idx
    if isinstance(e, Mul):
        return A * B, idx
    if isinstance(e, Div):
        return A / B, idx
    raise TypeError(e)


def torch_vjp(notation, arrays: dict, masks: dict, cotangent, names, dense=()) -> dict:
    """``{name: ∂(Σ dY ⊙ Y)/∂name}`` by torch autograd on the dense equivalent, a
    sparse operand's restricted to its stored entries (unless named in ``dense``)."""
    import torch
    sizes = {}
    for acc in accesses(notation.rhs):
        for d, i in enumerate(acc.indices):
            sizes.setdefault(i.name, np.shape(arrays[acc.tensor.name])[d])
    cot = torch.as_tensor(np.asarray(cotangent, dtype=np.float64))
    for d, i in enumerate(notation.lhs.indices):
        sizes.setdefault(i.name, cot.shape[d])
    leaves = {n: torch.tensor(np.asarray(a, dtype=np.float64), requires_grad=True) for n, a in arrays.items()}
    y, idx = torch_evaluate(notation.rhs, leaves, sizes)
    y = _align(y, idx, [i.name for i in notation.lhs.indices], sizes)
    grads = torch.autograd.grad((cot * y).sum(), [leaves[n] for n in names], allow_unused=True)
    out = {}
    for n, g in zip(names, grads):
        g = np.zeros(np.shape(arrays[n])) if g is None else g.detach().numpy()
        out[n] = np.where(masks[n], g, 0.0) if n in masks and n not in dense else g
    return out
