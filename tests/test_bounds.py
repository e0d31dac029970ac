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


# ------------------------------------------------------------ 1. sizes past int64

@pytest.mark.parametrize("size", [BIG, BIG - 1, 2 ** 64 + 5, np.uint64(2 ** 64 - 1)])
def test_dimension_of_2_63_or_more_is_refused_everywhere(size):
    with pytest.raises(ShapeError, match=r"dimension 1 is \d+; spcomp takes sizes below 2\*\*63 - 1"):
        Tensor.from_coo(np.zeros((2, 0), np.int64), [], (3, size), "csr")
    with pytest.raises(ShapeError, match=r"dimension 1 is \d+; .*below 2\*\*63 - 1"):
        Tensor("csr", (1, size), _empty_csr((1,)), np.zeros(0))
    with pytest.raises(ShapeError, match="below 2\\*\\*63 - 1"):
        spcomp.runtime.validate_storage(spcomp.Format.parse("csr"), (1, size), _empty_csr((1,)),
                                        np.zeros(0))


def test_largest_size_is_accepted():
    t = Tensor.from_coo(np.array([[0], [BIG - 3]]), [2.0], (1, BIG - 2), "csr")
    assert t.shape == (1, BIG - 2) and t.to_coo()[0].tolist() == [[0], [BIG - 3]]


def test_kernel_refuses_an_index_size_of_2_63():
    # a Tensor can no longer be built with such a shape; one whose shape was changed
    # after it was built (an operand spcomp did not make) is caught when the kernel
    # binds its index sizes, before ctypes would wrap the size to a negative
    k = spcomp.compile("y[j] = x[j]", formats={"x": "c"})
    x = Tensor.from_coo(np.array([[5]]), [1.0], (8,), "c")
    x.shape = (BIG,)
    with pytest.raises(ShapeError, match=r"index j has size 9223372036854775808; .*below 2\*\*63 - 1"):
        k(x=x)


@pytest.mark.parametrize("shape,fmt", [((2 ** 62, 4), "dense"), ((2 ** 61, 2), "csr"),
                                        ((2 ** 31, 2 ** 31, 2 ** 31), "d d c"),
                                        ((2 ** 61, 64), "twell(B=64,K=8)")])
def test_dense_positions_past_int64_are_a_shape_error(shape, fmt):
    with pytest.raises(ShapeError, match=r"positions; spcomp stores at most \d+ \(2\*\*60 - 2\)"):
        Tensor.from_coo(np.zeros((len(shape), 0), np.int64), [], shape, fmt)
    t = Tensor(fmt, shape, [{} for _ in shape], np.zeros(0))
    with pytest.raises(ShapeError, match="positions"):
        t.validate()


def test_storage_that_cannot_be_allocated_is_a_shape_error():
    # a pos array of 2**50 + 1 entries (8 PiB) fits the bounds but no machine
    with pytest.raises(ShapeError, match=r"shape \(1125899906842624, 4\) in format 'csr': its storage "
                                         "cannot be allocated"):
        Tensor.from_coo(np.zeros((2, 0), np.int64), [], (2 ** 50, 4), "csr")


def test_dense_output_past_the_bound_is_refused_before_allocation():
    k = spcomp.compile("Y[i,j] = a[i] * b[j]", formats={"a": "c", "b": "c"})
    a = Tensor.from_coo(np.array([[1]]), [1.0], (2 ** 40,), "c")
    with pytest.raises(ShapeError, match=r"tensor Y \(the output\) of shape \(1099511627776, "
                                         r"1099511627776\).*positions"):
        k(a=a, b=a)


# ------------------------------------------------------------ 2. packed-block coordinates

def _packed(fmt, shape, count, crd, vals):
    return Tensor.from_arrays(fmt, shape, [{}, {"count": count, "crd": crd}], vals)


@pytest.mark.parametrize("fmt,shape,blocks", [("ell(K=1)", (1, 2 ** 32), 1),
                                              ("d p(4294967296,1)", (1, 2 ** 33), 2)])
def test_packed_block_wider_than_int32_coordinates_is_refused(fmt, shape, blocks):
    # the kernel reads these in-block coordinates as int32: 2**32 - 1 would read as -1
    count, crd = np.zeros(blocks, np.int32), np.zeros(blocks, np.int64)
    count[0], crd[0] = 1, 2 ** 32 - 1
    with pytest.raises(FormatError, match=r"blocks of 4294967296 coordinates, more than its in-block "
                                          r"coordinates \(int32, at most 2147483648 per block\)"):
        _packed(fmt, shape, count, crd, np.ones(blocks))
    with pytest.raises(FormatError, match="more than its in-block coordinates"):
        Tensor.from_coo(np.array([[0], [2 ** 32 - 1]]), [1.0], shape, fmt)


@pytest.mark.parametrize("crd,message", [
    (np.array([5, 0, 1, 0, 1, 0, 1, 0], np.int16), r"crd\[0\] = 5 \(slot 0 of block 0\) is out of range 0..3"),
    (np.array([1, 0, 3, 0, 1, 0, 1, 0], np.uint16), r"crd\[2\] = 3 \(slot 0 of block 1\) is out of range 0..1"),
    (np.array([1, 0, 1, 0, 1, 0, -1, 0], np.int64), r"crd\[6\] = -1"),
    (np.array([1, 0, 1, 0, 1, 0, 2 ** 64 - 1, 0], np.uint64), r"crd\[6\] = 18446744073709551615 does not fit"),
    (np.array([1, 0, 1, 0, 1, 0, 1, 0], np.float64), r"crd has dtype float64; index arrays must be signed or "
                                                     "unsigned integers"),
])
def test_packed_in_block_coordinates_are_checked(crd, message):
    # twell(B=4,K=2) over 6 columns: blocks 0..3 and 4..5 (the last one shorter)
    with pytest.raises(InvalidTensorError, match=message):
        _packed("twell(B=4,K=2)", (2, 6), np.array([1, 1, 1, 1], np.int32), crd, np.array([1., 0] * 4))


@pytest.mark.parametrize("count,message", [
    (np.array([3, 1], np.int32), r"count\[0\] = 3 is outside 0..2"),
    (np.array([2 ** 32 + 1, 1], np.int64), r"count\[0\] = 4294967297 is outside 0..2"),
    (np.array([2 ** 63 + 1, 1], np.uint64), r"count\[0\] = 9223372036854775809 does not fit in int64"),
    (np.array([True, True]), r"count has dtype bool"),
])
def test_packed_counts_are_checked(count, message):
    with pytest.raises(InvalidTensorError, match=message):
        _packed("twell(B=4,K=2)", (1, 6), count, np.array([1, 0, 1, 0], np.int16), np.array([1., 0, 1, 0]))


def test_packed_coordinates_in_a_wider_dtype_read_right():
    # ell over 50000 columns: in-block coordinates are int32 in the kernel; a uint16
    # array holding 40000 must not be read as int16 (-25536)
    k = spcomp.compile("y[i] = A[i,j] * x[j]", formats={"A": "ell(K=1)"})
    x = np.zeros(50000)
    x[40000] = 7.0
    for dtype in (np.uint16, np.int32, np.uint64, ">i4"):
        A = _packed("ell(K=1)", (1, 50000), np.array([1], np.int32), np.array([40000], dtype), np.ones(1))
        assert k(A=A, x=x).tolist() == [7.0]


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


# ------------------------------------------------------------ 4. scalars

@pytest.fixture(scope="module")
def scale():
    return {d: spcomp.compile("y[i] = a * x[i]", dtype=d) for d in ("float64", "float32", "bfloat16")}


def _ones(dtype):
    return np.ones(3, ml_dtypes.bfloat16 if dtype == "bfloat16" else dtype)


@pytest.mark.parametrize("value", [1 + 2j, np.complex128(3 + 0j), np.complex64(1j), np.clongdouble(2)])
@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_complex_scalar_is_refused(scale, value, dtype):
    with pytest.raises(DTypeError, match=r"operand a is the complex scalar .*spcomp computes with real"):
        scale[dtype](a=value, x=_ones(dtype))


@pytest.mark.parametrize("dtype,value", [
    ("float32", 1e300), ("float32", np.float64(-1e39)), ("float32", 2 ** 200),
    ("bfloat16", 3.4e38), ("bfloat16", np.float32(3.4e38)),
    ("float64", 2 ** 1100), ("float32", 2 ** 1100)])
def test_scalar_beyond_the_kernel_range_is_refused(scale, dtype, value):
    with pytest.raises(DTypeError, match=r"operand a = .* is beyond the range of (float64|float32|bfloat16)"):
        scale[dtype](a=value, x=_ones(dtype))


@pytest.mark.skipif(np.finfo(np.longdouble).max <= np.finfo(np.float64).max,
                    reason="long double is double here")
def test_long_double_beyond_float64_is_refused(scale):
    with pytest.raises(DTypeError, match=r"operand a = .* is beyond the range of float64"):
        scale["float64"](a=np.longdouble(2) ** 2000, x=_ones("float64"))


@pytest.mark.parametrize("dtype,value", [
    ("float32", 0.1), ("float32", 3e38), ("float32", 1e-300), ("float32", float("inf")),
    ("float32", np.float64(-2.5)), ("float64", 2 ** 70), ("float64", np.uint64(2 ** 64 - 1)),
    ("bfloat16", 1e38), ("float64", True), ("float32", np.int8(-3)), ("float64", np.longdouble(7))])
def test_scalars_in_range_are_converted(scale, dtype, value):
    y = scale[dtype](a=value, x=_ones(dtype))
    want = np.asarray(float(value)).astype(y.dtype)
    assert y.tolist() == [want.item()] * 3


def test_non_number_scalar_and_complex_array_operands_are_dtype_errors(scale):
    with pytest.raises(DTypeError, match="operand a"):
        scale["float64"](a="2", x=_ones("float64"))
    with pytest.raises(DTypeError, match="operand x: has dtype complex128"):
        scale["float64"](a=2.0, x=np.ones(3, complex))
    with pytest.raises(DTypeError, match="operand a: has dtype complex128"):
        scale["float64"](a=np.array(2 + 1j), x=_ones("float64"))


# ------------------------------------------------------------ 5. shapes are integers

@pytest.mark.parametrize("bad,message", [
    (2.5, r"size of dimension 0 is 2.5 \(float\); shape must be integers"),
    (3.0, r"size of dimension 0 is 3.0 \(float\); shape must be integers"),
    (np.float64(3), r"shape must be integers"),
    (True, r"is True \(bool\); shape must be integers"),
    ("3", r"is '3' \(str\); shape must be integers"),
    (None, r"is None \(NoneType\)"),
    (-4, r"size of dimension 0 is -4; sizes must be non-negative"),
])
def test_shape_must_be_non_negative_integers(bad, message):
    shape = (bad, 3)
    with pytest.raises(ShapeError, match=message):
        Tensor.from_coo(np.zeros((2, 0), np.int64), [], shape, "csr")
    with pytest.raises(ShapeError, match=message):
        Tensor.from_arrays("csr", shape, _empty_csr((3,)), np.zeros(0))
    with pytest.raises(ShapeError, match=message):
        Tensor("dense", shape, [{}, {}], np.zeros(9))
    with pytest.raises(ShapeError, match=message):
        spcomp.runtime.validate_storage(spcomp.Format.parse("csr"), shape, _empty_csr((3,)), np.zeros(0))


def test_shape_that_is_not_a_sequence_is_a_shape_error():
    for shape in (3, "33", None):
        with pytest.raises(ShapeError, match="not a sequence of sizes"):
            Tensor.from_coo(np.zeros((1, 0), np.int64), [], shape, "c")


def test_numpy_integer_shapes_are_plain_ints():
    t = Tensor.from_coo(np.array([[1], [2]]), [1.0], np.array([3, 4], np.uint8), "csr")
    assert t.shape == (3, 4) and all(type(s) is int for s in t.shape)


# ------------------------------------------------------------ 6. index array dtypes

def _mat(fmt="csr"):
    return sp.random(4, 5, density=0.5, format=fmt, random_state=1)


@pytest.mark.parametrize("kind", ["csr", "csc"])
@pytest.mark.parametrize("array", ["indices", "indptr"])
@pytest.mark.parametrize("dtype", [np.float64, np.float32, bool])
def test_float_or_bool_scipy_index_arrays_are_named(matvec, kind, array, dtype):
    m = _mat(kind)
    setattr(m, array, getattr(m, array).astype(dtype))
    message = (rf"scipy {kind} matrix: {array} has dtype {np.dtype(dtype)}; index arrays must be signed or "
               "unsigned integers whose values fit in int64")
    with pytest.raises(InvalidTensorError, match=message):
        matvec(A=m, x=np.ones(5))
    for fmt in ("csr", "coo", "dcsr"):
        with pytest.raises(InvalidTensorError, match=message):
            Tensor.from_scipy(m, fmt)


@pytest.mark.parametrize("kind", ["csr", "csc", "coo"])
@pytest.mark.parametrize("dtype", [np.uint64, np.uint32, np.int8, np.uint8, np.int16, ">i4", ">i8", "<u8"])
def test_other_integer_scipy_index_arrays_work(matvec, kind, dtype):
    m = _mat(kind)
    want, dense = m @ np.arange(5.0), m.toarray()  # (SciPy's own toarray refuses int8 indices)
    if kind == "coo":  # (SciPy's row/col setters would cast back to its index dtype)
        m.coords = tuple(c.astype(dtype) for c in m.coords)
    else:
        m.indices, m.indptr = m.indices.astype(dtype), m.indptr.astype(dtype)
    np.testing.assert_allclose(matvec(A=m, x=np.arange(5.0)), want)
    for fmt in ("csr", "csc", "coo"):
        np.testing.assert_allclose(Tensor.from_scipy(m, fmt).to_numpy(), dense)


def test_uint64_index_values_past_int64_are_refused_not_wrapped(matvec):
    m = _mat()
    m.indices = m.indices.astype(np.uint64)
    m.indices[2] = 2 ** 64 - 1  # -1 once wrapped
    with pytest.raises(InvalidTensorError, match=r"indices\[2\] = 18446744073709551615 does not fit in int64"):
        matvec(A=m, x=np.ones(5))
    with pytest.raises(InvalidTensorError, match=r"coords\[1\]\[0\] = 18446744073709551615 does not fit"):
        Tensor.from_coo(np.array([[0], [2 ** 64 - 1]], np.uint64), [1.0], (2, 3), "csr")
    pos = np.array([0, 1, 2 ** 63 + 2], np.uint64)  # pos[2] would wrap to a negative
    with pytest.raises(InvalidTensorError, match=r"pos\[2\] = 9223372036854775810 does not fit in int64"):
        Tensor.from_arrays("csr", (2, 3), [{}, {"pos": pos, "crd": np.array([0, 1])}], np.ones(2))


@pytest.mark.parametrize("coords,message", [
    (np.array([[0.5], [1]]), r"coords\[0\]\[0\] = .*0.5.* is not a whole number"),
    (np.array([[np.inf], [1]]), r"coords\[0\]\[0\] = .*inf.* is not a whole number"),
    (np.array([[np.nan], [1]]), r"coords\[0\]\[0\] = .*nan.* is not a whole number"),
    (np.array([[0], [1e20]]), r"coords\[1\]\[0\] = .*1e\+20.* is not a whole number that fits in int64"),
    (np.array([[True], [False]]), r"coords\[0\] has dtype bool; index arrays must be signed or unsigned"),
    (np.array([["a"], ["b"]]), r"coords\[0\] has dtype <U1"),
])
def test_coordinates_must_be_whole_numbers_in_int64(coords, message):
    with pytest.raises(InvalidTensorError, match=message):
        Tensor.from_coo(coords, [1.0], (2, 3), "csr")


def test_float_index_arrays_in_raw_storage_are_named():
    for key in ("pos", "crd"):
        levels = _empty_csr((2,))
        levels[1][key] = levels[1][key].astype(np.float64)
        with pytest.raises(InvalidTensorError, match=rf"level 1 \(compressed\): {key} has dtype float64; "
                                                     "index arrays must be signed or unsigned integers"):
            Tensor.from_arrays("csr", (2, 3), levels, np.zeros(0))


def test_a_raw_tensor_is_validated_before_it_is_converted():
    # to_format reads the arrays: an unvalidated bad pos made NumPy raise ValueError
    k = spcomp.compile("y[i] = A[i,j] * x[j]", formats={"A": "csc"})
    A = Tensor("csr", (2, 3), [{}, {"pos": np.array([0, 5, 1]), "crd": np.array([0, 1])}], np.ones(2))
    with pytest.raises(InvalidTensorError, match=r"operand A: .*pos\[2\] = 1 is less than pos\[1\] = 5"):
        k(A=A, x=np.ones(3))
    with pytest.raises(InvalidTensorError, match="pos must not decrease"):
        A.to_numpy()


# ------------------------------------------------------------ 7. byte order

def test_big_endian_operands_are_converted(matvec):
    m = _mat()
    x = np.arange(5.0)
    want = m.toarray() @ x
    np.testing.assert_allclose(matvec(A=m, x=x.astype(">f8")), want)        # dense operand
    big = sp.csr_matrix((m.data.astype(">f8"), m.indices.astype(">i4"), m.indptr.astype(">i8")),
                        shape=m.shape)
    np.testing.assert_allclose(matvec(A=big, x=x), want)                    # sparse operand
    np.testing.assert_allclose(matvec(A=big, x=x.astype(">f4")), want)
    dense = spcomp.compile("y[i] = A[i,j] * x[j]")
    np.testing.assert_allclose(dense(A=m.toarray().astype(">f8"), x=x.astype(">f8")), want)
    t = Tensor.from_numpy(m.toarray().astype(">f8"), "csr")
    assert t.dtype == np.dtype("<f8") and t.dtype.isnative
    t = Tensor.from_coo(np.array([[0, 1], [1, 2]], ">i8"), np.array([1.0, 2.0], ">f4"), (2, 3), "csr")
    assert t.dtype == np.float32 and t.to_numpy().tolist() == [[0, 1, 0], [0, 0, 2]]


def test_big_endian_values_of_a_raw_tensor_say_how_to_convert():
    with pytest.raises(DTypeError, match=r"vals is big-endian \(>f8\); .*convert with \.astype\('<f8'\)"):
        Tensor.from_arrays("csr", (2, 3), [{}, {"pos": np.array([0, 1, 1]), "crd": np.array([2])}],
                           np.ones(1, ">f8"))
    t = Tensor.from_arrays("csr", (2, 3), [{}, {"pos": np.array([0, 1, 1], ">i4"),
                                                "crd": np.array([2], ">i8")}], np.ones(1))
    assert t.to_numpy().tolist() == [[0, 0, 1], [0, 0, 0]]


# ------------------------------------------------------------ 8. output overlaps a Tensor

def test_output_sharing_memory_with_a_tensor_operand_is_refused():
    k = spcomp.compile("y[i] += A[i,j] * x[j]", formats={"A": "csr"})
    buf = np.ones(6)
    y = buf[:3]
    levels = [{}, {"pos": np.array([0, 1, 2, 3]), "crd": np.array([0, 1, 2])}]
    for vals in (buf[:3], buf[2:5]):  # the whole output, or one element of it
        A = Tensor.from_arrays("csr", (3, 3), levels, vals)
        with pytest.raises(OperandError, match="output y shares memory with input A"):
            k(A=A, x=np.ones(3), y=y)
    A = Tensor.from_arrays("csr", (3, 3), levels, buf[3:])  # next to y, not in it
    assert k(A=A, x=np.ones(3), y=y).tolist() == [2.0, 2.0, 2.0]
    # the repeated-call path (same A, an output that is now A's values)
    assert k(A=A, x=np.ones(3), y=np.zeros(3)).tolist() == [1.0, 1.0, 1.0]
    with pytest.raises(OperandError, match="output y shares memory with input A"):
        k(A=A, x=np.ones(3), y=buf[3:])
    pos = np.zeros(4, np.int64)  # an index array inside the output buffer
    out = pos.view(np.float64)[:3]
    pos[:] = [0, 1, 2, 3]
    A = Tensor.from_arrays("csr", (3, 3), [{}, {"pos": pos, "crd": np.array([0, 1, 2])}], np.ones(3))
    with pytest.raises(OperandError, match="output y shares memory with input A"):
        k(A=A, x=np.ones(3), y=out)


# ------------------------------------------------------------ properties

_INT_DTYPES = ["i1", "i2", "i4", "i8", "u1", "u2", "u4", "u8", "f4", "f8", "b1"]
_VAL_DTYPES = ["f2", "f4", "f8", "i4", "u8", "c16", "b1"]
_ORDERS = ["<", ">", "="]


def _dt(order, code):
    return np.dtype(code if code == "b1" else order + code)


@functools.cache
def _csr_matvec():
    return spcomp.compile("y[i] = A[i,j] * x[j]", formats={"A": "csr"})


@settings(max_examples=examples(60))
@given(st.sampled_from(_ORDERS), st.sampled_from(_VAL_DTYPES), st.sampled_from(_ORDERS),
       st.sampled_from(_INT_DTYPES), st.sampled_from(_INT_DTYPES), st.sampled_from(["csr", "csc", "coo"]))
def test_any_dtype_or_byte_order_works_or_is_a_spcomp_error(vorder, vcode, iorder, icode, pcode, kind):
    m = sp.random(4, 5, density=0.5, format=kind, random_state=2)
    m.data = m.data * 4 - 2  # (negative values too: unsigned dtypes must wrap them the same way)
    x = np.arange(5.0)
    with np.errstate(all="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # NumPy's ComplexWarning
        data = m.data.astype(_dt(vorder, vcode))
        ref = m.copy()
        ref.data = data.astype(np.float64)  # the values as the new dtype holds them
        want = ref.toarray() @ x
        m.data = data
        if kind == "coo":  # (SciPy's row/col setters would cast back to its index dtype)
            m.coords = (m.row.astype(_dt(iorder, icode)), m.col.astype(_dt(iorder, pcode)))
        else:
            m.indices, m.indptr = m.indices.astype(_dt(iorder, icode)), m.indptr.astype(_dt(iorder, pcode))
    try:
        got = _csr_matvec()(A=m, x=x.astype(_dt(vorder, "f8")))
    except SpcompError:
        return
    assert vcode != "c16", "complex values must be refused"
    refused = {"b1"} if kind == "coo" else {"b1", "f4", "f8"}  # (COO coordinates may be whole floats)
    assert not {icode, pcode} & refused, "float and bool index arrays must be refused"
    np.testing.assert_allclose(got, want, rtol=1e-6 if vcode != "f2" else 1e-3)


_SIZES = st.one_of(st.integers(-3, 6), st.integers(2 ** 62, 2 ** 64), st.floats(-2, 6),
                   st.booleans(), st.sampled_from([np.int32(3), np.uint64(2 ** 63), np.float32(2), "2", None]))


@settings(max_examples=examples(120))
@given(st.lists(_SIZES, min_size=1, max_size=3), st.sampled_from(["dense", "c", "p(2,1)"]),
       st.sampled_from(_INT_DTYPES), st.sampled_from(_ORDERS))
def test_any_shape_and_coordinate_dtype_works_or_is_a_spcomp_error(shape, level, code, order):
    fmt = " ".join(["d"] * (len(shape) - 1) + [level]) if level != "dense" else "dense"
    coords = np.zeros((len(shape), 1)).astype(_dt(order, code))
    try:
        t = Tensor.from_coo(coords, [2.0], tuple(shape), fmt)
    except SpcompError:
        return
    assert all(type(s) is int and 0 < s < 2 ** 63 - 1 for s in t.shape)
    assert code != "b1" and all(isinstance(s, (int, np.integer)) and not isinstance(s, bool) for s in shape)
    coords, values = t.to_coo(drop_zeros=True)
    assert coords.tolist() == [[0]] * len(shape) and values.tolist() == [2.0]
