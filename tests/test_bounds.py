"""Odd inputs are clear spcomp errors: never a crash, a silent wrong answer or another
library's exception (runtime/bounds.py, docs/guide.md "Limits").

One section per kind of input: sizes past int64, packed-block levels whose
coordinates a kernel cannot read, schedule numbers, scalar operands, float shapes,
index arrays of odd dtypes, big-endian data, and outputs that share memory with a
Tensor operand. The property tests at the end draw dtypes, byte orders and shapes:
every draw either works and equals NumPy or raises a SpcompError subclass.
"""
from __future__ import annotations

import functools
import warnings

import ml_dtypes
import numpy as np
import pytest
import scipy.sparse as sp
from hypothesis import given, settings
from hypothesis import strategies as st

import spcomp
from conftest import examples
from spcomp.errors import (DTypeError, FormatError, InvalidTensorError, OperandError, ScheduleError,
                           ShapeError, SpcompError)
from spcomp.runtime import Tensor

BIG = 2 ** 63


def _empty_csr(shape):
    return [{}, {"pos": np.zeros(shape[0] + 1, np.int64), "crd": np.zeros(0, np.int64)}]


@pytest.fixture(scope="module")
def matvec():
    return spcomp.compile("y[i] = A[i,j] * x[j]", formats={"A": "csr"})


# ------------------------------------------------------------ 3. schedule numbers

@pytest.mark.parametrize("make,message", [
    (lambda s: s.split("j", "j0", "j1", 2 ** 40), r"the factor must be in 1..2147483647, got 1099511627776"),
    (lambda s: s.split("j", "j0", "j1", 2 ** 63 - 1), r"the factor must be in 1..2147483647"),
    (lambda s: s.split("j", "j0", "j1", 0), r"the factor must be in 1..2147483647, got 0"),
    (lambda s: s.split("j", "j0", "j1", 4.0), r"the factor must be an integer, not float"),
    (lambda s: s.split("j", "j0", "j1", True), r"the factor must be an integer, not bool"),
    (lambda s: s.unroll("j", 2 ** 32), r"unroll\('j', 4294967296\): the factor must be in 1..64"),
    (lambda s: s.unroll("j", 2 ** 31), r"the factor must be in 1..64"),
    (lambda s: s.unroll("j", 65), r"the factor must be in 1..64"),
    (lambda s: s.unroll("j", 0), r"the factor must be in 1..64"),
    (lambda s: s.unroll("j", 2.5), r"the factor must be an integer, not float"),
    (lambda s: s.unroll("j", "4"), r"the factor must be an integer, not str"),
    (lambda s: s.unroll("j", False), r"the factor must be an integer, not bool"),
    (lambda s: s.unroll(3, 4), r"the index must be a name"),
    (lambda s: s.vectorize("j", 3), r"the width must be 0 or a power of two up to 64"),
    (lambda s: s.vectorize("j", 128), r"the width must be in 0..64"),
    (lambda s: s.vectorize("j", -4), r"the width must be in 0..64"),
    (lambda s: s.vectorize("j", 4.0), r"the width must be an integer, not float"),
    (lambda s: s.vectorize("j", True), r"the width must be an integer, not bool"),
])
def test_schedule_numbers_are_bounded(make, message):
    with pytest.raises(ScheduleError, match=message):
        make(spcomp.Schedule())


def test_schedule_numbers_in_bounds_are_taken():
    s = (spcomp.Schedule().split("i", "i0", "i1", np.int64(4)).unroll("i1", 64).vectorize("i1", 64)
         .vectorize("i0", 0).vectorize("i0", 1))
    assert s.get("split") == [("i", "i0", "i1", 4)] and isinstance(s.get("split")[0][3], int)


@pytest.mark.parametrize("index", ["i", "j"])
@pytest.mark.parametrize("factor", [5, 7, 2 ** 20, 2 ** 31 - 1])
def test_split_factor_at_least_the_dimension_computes_one_block(index, factor):
    # (a factor past the dimension, even near the bound, must not give zeros)
    A, x = np.arange(35.0).reshape(5, 7), np.arange(7.0)
    k = spcomp.compile("y[i] = A[i,j] * x[j]",
                       schedule=spcomp.Schedule().split(index, index + "0", index + "1", factor))
    np.testing.assert_allclose(k(A=A, x=x), A @ x)


