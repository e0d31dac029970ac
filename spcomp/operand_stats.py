"""What a call's operands look like to a cost model: shapes and stored fractions.

The contraction planner (``contraction.py``) and a program's density variants
(``program_density.py``) both choose between plans of one computation from the
operands of a call; this is the measurement they share, and the key their plans
are cached by.
"""
from __future__ import annotations

import math

import numpy as np


def measure_operands(shape_of, operands):
    """``(cache key, shapes, densities)`` of the operands ``shape_of`` lists as
    ``(name, stored dense?, its indices)``: each one's shape and stored fraction
    (1 for a dense one), keyed by shapes and density buckets (powers of two); None
    when one cannot be measured (absent, an unknown kind, a shape of another order:
    the kernel's own checks say what is wrong)."""
    shapes, density, buckets = {}, {}, []
    for name, dense, indices in shape_of:
        value = operands.get(name)
        if value is None:
            return None
        shape = getattr(value, "shape", None)
        shape = tuple(shape) if shape is not None else np.shape(value)
        if len(shape) != len(indices):
            return None
        size = math.prod(shape)
        if dense or size == 0:
            d = 1.0
            buckets.append(0)
        else:
            nnz = getattr(value, "nnz", None)
            if nnz is None:
                if type(value) is not np.ndarray:
                    return None
                nnz = np.count_nonzero(value)
            d = int(nnz) / size
            buckets.append(math.floor(math.log2(d)) if d > 0 else -999)
        density[name] = d
        shapes[name] = tuple(int(n) for n in shape)
    return (tuple(shapes.values()), tuple(buckets)), shapes, density
