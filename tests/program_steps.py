"""Helpers of the tests that check fused programs against their statements run one by one."""
from __future__ import annotations

import warnings

import numpy as np

import spcomp
from spcomp.testing.check import densify


def compile_quiet(text, formats, **kw):
    """``spcomp.compile`` with its warnings (TranspositionWarning and the like) silenced."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return spcomp.compile(text, formats=formats, **kw)


def dense(v):
    """Any result (array, Tensor, SciPy matrix) as a float64 ndarray."""
    return np.asarray(densify(v), dtype=np.float64)


def one_by_one(statements: list, formats: dict, operands: dict) -> dict:
    """Each statement compiled as a kernel of its own and run in order, each
    result handed to the next by name: name -> result."""
    env = dict(operands)
    for text in statements:
        name = text.split("[")[0].strip()
        k = compile_quiet(text, {n: f for n, f in formats.items() if f"{n}[" in text})
        env[name] = k(**{n: env[n] for n in k.inputs})
    return env
