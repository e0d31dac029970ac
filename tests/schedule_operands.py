"""Shared by the schedule-directive tests: a compile that hides the compiler's
warnings (a transposition it inserts), and operands drawn by axes."""
from __future__ import annotations

import warnings

import numpy as np

import spcomp


def compile_quiet(expr, formats, schedule=None, **kw):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return spcomp.compile(expr, formats=formats, schedule=schedule, **kw)


def operands_by_axes(axes, formats, dims, density, seed, long_rows=False):
    """``(operands, dense arrays in axes order)``: each ``{name: (axis, ...)}`` drawn at
    ``dims``, sparse (a Tensor of ``formats[name]``, about ``density`` stored) where
    ``formats`` names it; ``long_rows``: its first sixth of rows far denser."""
    rng = np.random.default_rng(seed)
    ops, dense = {}, []
    for name, ax in axes.items():
        shape = tuple(dims[a] for a in ax)
        a = rng.standard_normal(shape)
        if name in formats:
            keep = rng.random(shape) < density
            if long_rows:
                head = max(1, shape[0] // 6)
                keep[:head] |= rng.random((head,) + shape[1:]) < 0.8
            a = np.where(keep, a, 0.0)
            ops[name] = spcomp.Tensor.from_numpy(a, formats[name])
        else:
            ops[name] = a
        dense.append(a)
    return ops, dense
