"""Bad input: every case raises the right spcomp.errors class with a message that
names the culprit (token, tensor, dimension, level, loop), and nothing crashes
the process. A new bug goes in as a strict xfail (it turns red once fixed)."""
from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp

import spcomp
from spcomp import errors
from spcomp.runtime import Tensor


@pytest.fixture(scope="module")
def spmv():
    return spcomp.compile("y[i] = A[i,j] * x[j]", formats={"A": "csr"})


def csr_arrays(pos, crd, vals=None, shape=(3, 4)):
    crd = np.asarray(crd)
    vals = np.ones(len(crd)) if vals is None else np.asarray(vals)
    return dict(format="csr", shape=shape, levels=[{}, {"pos": np.asarray(pos), "crd": crd}], vals=vals)


# ================================================================== parsing / checking

def test_parse_error_has_caret_and_column():
    with pytest.raises(errors.ParseError) as e:
        spcomp.compile("y[i] = A[i,j] * * x[j]")
    msg = str(e.value)
    assert e.value.column == 17 and e.value.line == 1
    assert "column 17" in msg and "'*'" in msg
    caret_line = msg.splitlines()[-1]
    source_line = msg.splitlines()[-2]
    assert caret_line.strip() == "^"
    assert source_line.strip() == "y[i] = A[i,j] * * x[j]"
    assert source_line[caret_line.index("^")] == "*"  # the caret sits under the culprit


def test_parse_error_unclosed_bracket():
    with pytest.raises(errors.ParseError) as e:
        spcomp.compile("y[i] = A[i,j x[j]")
    assert "'x'" in str(e.value) and e.value.column == 14


def test_unknown_function():
    with pytest.raises(errors.UnknownFunctionError) as e:
        spcomp.compile("y[i] = foo(x[i])")
    assert "'foo'" in str(e.value) and "^" in str(e.value)
    assert isinstance(e.value, errors.NotationError)


def test_function_wrong_arity():
    with pytest.raises(errors.NotationError, match="'max' takes 2 arguments"):
        spcomp.compile("y[i] = max(x[i])")


def test_tensor_used_with_two_orders():
    with pytest.raises(errors.NotationError) as e:
        spcomp.compile("y[i] = A[i,j] * A[i]")
    assert "'A'" in str(e.value) and "2 indices" in str(e.value) and "1 index" in str(e.value)


def test_output_read_on_the_right():
    with pytest.raises(errors.NotationError, match="'y'"):
        spcomp.compile("y[i] = y[i] + x[i]")


# ================================================================== shapes

def test_index_bound_to_two_sizes_names_both_tensors(spmv):
    with pytest.raises(errors.ShapeError) as e:
        spmv(A=np.ones((3, 4)), x=np.ones(5))
    msg = str(e.value)
    assert "index j" in msg and " A " in msg and " x " in msg and "4" in msg and "5" in msg


def test_index_bound_to_two_sizes_within_one_tensor():
    k = spcomp.compile("s = A[i,j] * A[j,i]")
    with pytest.raises(errors.ShapeError, match="A"):
        k(A=np.ones((2, 3)))


def test_wrong_number_of_dimensions_dense(spmv):
    with pytest.raises(errors.ShapeError) as e:
        spmv(A=np.ones((3, 4)), x=np.ones((4, 2)))
    assert "operand x" in str(e.value) and "2 dimension" in str(e.value)


def test_wrong_number_of_dimensions_sparse(spmv):
    with pytest.raises(errors.SpcompError) as e:  # a FormatError: csr cannot hold 3 dimensions
        spmv(A=np.ones((3, 4, 2)), x=np.ones(4))
    assert isinstance(e.value, (errors.FormatError, errors.ShapeError))
    assert "A" in str(e.value) and "3 dimension" in str(e.value)


def test_accumulated_output_with_wrong_shape():
    k = spcomp.compile("y[i] += x[i]")
    with pytest.raises(errors.ShapeError, match="output y"):
        k(x=np.ones(3), y=np.ones(4))


# ================================================================== operands

def test_missing_operand(spmv):
    with pytest.raises(errors.OperandError, match=r"missing operand\(s\) x"):
        spmv(A=np.ones((3, 4)))


def test_unexpected_operand(spmv):
    with pytest.raises(errors.OperandError, match=r"unexpected operand\(s\) z"):
        spmv(A=np.ones((3, 4)), x=np.ones(4), z=1.0)


def test_sparse_output_must_not_be_passed():
    k = spcomp.compile("C[i,j] = A[i,j]", formats={"C": "csr"})
    with pytest.raises(errors.OperandError, match="output C"):
        k(A=np.ones((2, 2)), C=np.ones((2, 2)))


def test_complex_operand(spmv):
    with pytest.raises(errors.DTypeError) as e:
        spmv(A=np.ones((3, 4)), x=np.ones(4) + 1j)
    assert "x" in str(e.value) and "complex128" in str(e.value)


def test_string_operand(spmv):
    with pytest.raises(errors.DTypeError, match="x"):
        spmv(A=np.ones((3, 4)), x=np.array(["a", "b", "c", "d"]))


def test_float64_operand_to_float32_kernel():
    k = spcomp.compile("y[i] = A[i,j] * x[j]", formats={"A": "csr"}, dtype="float32")
    with pytest.raises(errors.DTypeError) as e:
        k(A=np.ones((3, 4), np.float32), x=np.ones(4))
    assert "operand x" in str(e.value) and "float64" in str(e.value) and "float32" in str(e.value)


def test_unsupported_compile_dtype():
    with pytest.raises(errors.DTypeError, match="int32"):
        spcomp.compile("y[i] = x[i]", dtype="int32")


# ================================================================== invalid sparse storage

def test_from_arrays_pos_not_monotone():
    with pytest.raises(errors.InvalidTensorError) as e:
        Tensor.from_arrays(**csr_arrays([0, 2, 1, 3], [0, 1, 2]))
    assert "level 1" in str(e.value) and "pos[2]" in str(e.value)


def test_from_arrays_crd_out_of_range():
    with pytest.raises(errors.InvalidTensorError) as e:
        Tensor.from_arrays(**csr_arrays([0, 1, 2, 3], [0, 1, 7]))
    assert "crd[2] = 7" in str(e.value) and "size 4" in str(e.value)


def test_from_arrays_unsorted_crd_in_ordered_level():
    with pytest.raises(errors.InvalidTensorError) as e:
        Tensor.from_arrays(**csr_arrays([0, 2, 2, 3], [1, 0, 2]))
    assert "crd[1]" in str(e.value) and "ordered" in str(e.value)


def test_from_arrays_unsorted_coo():
    with pytest.raises(errors.InvalidTensorError, match="level 0"):
        Tensor.from_arrays("coo", (3, 3), [{"pos": np.array([0, 2]), "crd": np.array([2, 1])},
                                           {"crd": np.array([0, 0])}], np.ones(2))


def test_from_arrays_vals_length_inconsistent():
    with pytest.raises(errors.InvalidTensorError, match="vals has 5 entries"):
        Tensor.from_arrays(**csr_arrays([0, 1, 2, 3], [0, 1, 2], vals=np.ones(5)))


def test_from_arrays_pos_length_inconsistent():
    with pytest.raises(errors.InvalidTensorError, match="pos has 3 entries but needs 4"):
        Tensor.from_arrays(**csr_arrays([0, 1, 3], [0, 1, 2]))


def test_from_arrays_packed_count_above_k():
    with pytest.raises(errors.InvalidTensorError, match="count"):
        Tensor.from_arrays("dp(2,1)", (2, 4), [{}, {"count": np.array([2, 0, 0, 0], np.int32),
                                                    "crd": np.zeros(4, np.int16)}], np.ones(4))


def test_invalid_tensor_passed_to_kernel_is_named(spmv):
    t = Tensor("csr", (3, 4), [{}, {"pos": np.array([0, 1, 2, 3]), "crd": np.array([0, 1, 7])}], np.ones(3))
    with pytest.raises(errors.InvalidTensorError) as e:
        spmv(A=t, x=np.ones(4))
    assert "operand A" in str(e.value) and "crd[2] = 7" in str(e.value)


@pytest.mark.parametrize("indices", [[0, 1, 9], [0, 1, -1]])
def test_scipy_indices_out_of_range(spmv, indices):
    m = sp.csr_matrix((np.ones(3), np.array(indices), np.array([0, 1, 2, 3])), shape=(3, 4))
    with pytest.raises(errors.InvalidTensorError) as e:
        spmv(A=m, x=np.ones(4))
    assert "operand A" in str(e.value) and "out of range" in str(e.value)


@pytest.mark.parametrize("indptr", [[0, 2, 1, 3], [0, 2, 3, 2]], ids=["decreasing", "bad-end"])
def test_scipy_indptr_invalid(spmv, indptr):
    """Regression: a non-canonical scipy matrix used to go through tocoo() unchecked."""
    m = sp.csr_matrix((np.ones(3), np.array([0, 1, 2]), np.array(indptr)), shape=(3, 4))
    with pytest.raises(errors.InvalidTensorError, match="A"):
        spmv(A=m, x=np.ones(4))


def test_scipy_unsorted_indices_are_valid(spmv):
    """Unsorted column indices are legal in SciPy: they are sorted, not refused."""
    m = sp.csr_matrix((np.array([1.0, 2.0, 3.0]), np.array([1, 0, 2]), np.array([0, 2, 2, 3])), shape=(3, 4))
    x = np.arange(1.0, 5.0)
    np.testing.assert_allclose(spmv(A=m, x=x), m.toarray() @ x)


# ================================================================== formats

def test_merge_of_an_unordered_level_is_refused():
    with pytest.raises(errors.UnsupportedError) as e:
        spcomp.compile("C[i,j] = A[i,j] + B[i,j]", formats={"A": "d c(unordered)", "B": "csr"})
    msg = str(e.value)
    assert "A" in msg and "unordered" in msg and "level 2" in msg and "loop j" in msg


def test_merge_of_a_transposed_unordered_level_names_the_user_tensor():
    """Regression: the refusal used to name the internal storage A_T."""
    with pytest.raises(errors.UnsupportedError) as e:
        spcomp.compile("C[i,j] = A[j,i] + B[i,j]", formats={"A": "d c(unordered)", "B": "csr", "C": "csr"})
    assert "A_T" not in str(e.value) and "A" in str(e.value) and "unordered" in str(e.value)


def test_diagonal_of_a_sparse_operand_needs_equal_sizes():
    """A[i,i] on a sparse A compiles (tests/test_diagonal.py); a non-square A is a
    ShapeError naming A, both dimensions and the index."""
    import scipy.sparse as sp
    k = spcomp.compile("y[i] = A[i,i]", formats={"A": "csr"})
    with pytest.raises(errors.ShapeError) as e:
        k(A=sp.random(4, 6, density=0.5, format="csr", random_state=0))
    assert "operand A" in str(e.value) and "dimensions 0 and 1" in str(e.value) and " i " in str(e.value)


def test_sparse_output_with_dense_level_below_sparse_one_compiles():
    """``cd`` used to be refused; it is assembled now (tests/test_dense_under_sparse.py)."""
    k = spcomp.compile("C[i,j] = A[i,j]", formats={"A": "csr", "C": "cd"})
    assert k.notation.lhs.tensor.format.spec() == "cd"


def test_sparse_output_refusal_names_the_level_and_why():
    with pytest.raises(errors.UnsupportedError) as e:
        spcomp.compile("C[i,j] = A[i,j]", formats={"A": "csr", "C": "c(nonunique)c"})
    assert "output C" in str(e.value) and "level 1 (c(nonunique))" in str(e.value) and "non-unique" in str(e.value)


def test_sparse_output_of_unassemblable_format():
    """A singleton under a unique level (packed-block levels above others are appended
    compressed and packed since blocked ELL: tests/test_dense_under_sparse.py)."""
    with pytest.raises(errors.UnsupportedError, match="output C.*singleton under a unique level"):
        spcomp.compile("C[i,j] = A[i,j]", formats={"A": "csr", "C": "cq"})


@pytest.mark.parametrize("spec,culprit", [("crs", "'crs'"), ("dz", "'z'"), ("c(sorted)", "'sorted'"),
                                          ("twell(Q=4)", "'Q'"), ("twell(B=4,K=8)", "K must not exceed B"),
                                          ("qc", "singleton"), ("dcc", "3 level")])
def test_bad_format_string(spec, culprit):
    with pytest.raises(errors.FormatError) as e:
        spcomp.compile("y[i] = A[i,j] * x[j]", formats={"A": spec})
    assert "'A'" in str(e.value) and culprit in str(e.value)


def test_format_for_unknown_tensor():
    with pytest.raises(errors.NotationError, match="'Z'"):
        spcomp.compile("y[i] = A[i,j] * x[j]", formats={"Z": "csr"})


def test_format_object_of_wrong_type():
    with pytest.raises(errors.FormatError, match="int"):
        spcomp.compile("y[i] = A[i,j] * x[j]", formats={"A": 3})


# ================================================================== schedules

def test_parallelize_a_reduction():
    """Into a matrix output a parallel reduction loop would race (a vector or scalar
    output gets per-thread copies, tests/test_parallel_reductions.py)."""
    with pytest.raises(errors.ScheduleError) as e:
        spcomp.compile("C[i,k] = A[i,j] * B[j,k]", schedule=spcomp.Schedule().reorder("j", "i", "k").parallelize("j"))
    assert "'j'" in str(e.value) and "reduction" in str(e.value)


def test_parallelize_an_inner_loop():
    with pytest.raises(errors.ScheduleError) as e:
        spcomp.compile("y[i] = A[i,j] * x[j]", formats={"A": "csr"}, schedule=spcomp.Schedule().parallelize("j"))
    assert "'j'" in str(e.value)


def test_parallelize_the_reduction_of_a_scalar():
    """Regression: parallelize() with no output loop used to be silently ignored; it
    runs the sum on threads into per-thread partial sums, or is refused."""
    k = spcomp.compile("s = x[j] * z[j]", schedule=spcomp.Schedule().parallelize("j"))
    assert k.lowered.threads.parallel == "j" and k.lowered.threads.partials
    with pytest.raises(errors.ScheduleError, match="only the outermost loop"):
        spcomp.compile("s = A[i,j]", schedule=spcomp.Schedule().parallelize("j"))


def test_reorder_names_a_missing_index():
    with pytest.raises(errors.ScheduleError) as e:
        spcomp.compile("y[i] = A[i,j] * x[j]", formats={"A": "csr"}, schedule=spcomp.Schedule().reorder("i", "q"))
    assert "'q'" in str(e.value)


def test_reorder_discordant_with_a_format():
    with pytest.raises(errors.ScheduleError) as e:
        spcomp.compile("y[i] = A[i,j] * x[j]", formats={"A": "dp(4,1)"}, schedule=spcomp.Schedule().reorder("j", "i"))
    assert "A" in str(e.value)


@pytest.mark.parametrize("make", [lambda: spcomp.Schedule().parallelize("i", "gpu-magic"),
                                  lambda: spcomp.Schedule().unroll("i", 0),
                                  lambda: spcomp.Schedule().reorder()])
def test_malformed_schedule_directive(make):
    with pytest.raises(errors.ScheduleError):
        make()


# ================================================================== every error is an SpcompError

def test_every_public_error_is_an_spcomp_error():
    for name in dir(errors):
        obj = getattr(errors, name)
        if (isinstance(obj, type) and issubclass(obj, Exception) and not issubclass(obj, Warning)
                and obj.__module__ == errors.__name__):
            assert issubclass(obj, errors.SpcompError), name
    assert issubclass(errors.TranspositionWarning, UserWarning)


def test_unique_compressed_over_singleton_output_is_refused():
    """``cq`` (a unique compressed level over a singleton) cannot be assembled as a
    coordinate list without repeating coordinates in the unique level: refused,
    naming the formats that work, instead of returning a tensor that does not validate."""
    with pytest.raises(spcomp.UnsupportedError, match="coo"):
        spcomp.compile("C[i,j] = A[i,j] * 2", formats={"A": "csr", "C": "cq"})
