"""Outputs with a dense level under a sparse one (``cd``, ``dcd``, ``ccd``, ``cdc``,
``cd:1,0``): the kernel assembles them with the dense levels compressed
(lower/outputs.assembled_format) and the runtime gives every stored parent position
its whole dense sub-block, zero-filled (runtime/convert.expand_output). Checked
against the float64 reference on the CPU (one thread and two), under ``+=``, on
cuda-sim and with nvcc where it is installed; a format that cannot be assembled
names its level."""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import spcomp
from spcomp.backends.cuda import nvcc
from spcomp.errors import UnsupportedError
from spcomp.lower.outputs import assembled_format
from spcomp.testing import check_kernel, random_operands
from spcomp.testing.strategies import output_formats

from conftest import examples, spcomp_threads

CASES = [
    # TACO's matrix_neg and tensora's s1d0 (a {Sparse,Dense} output, also transposed)
    ("A[i,j] = -B[i,j]", {"A": "cd", "B": "csr"}),
    ("A[i,j] = -B[i,j]", {"A": "cd:1,0", "B": "csc"}),
    ("A[i,j] = B[i,j] + C[i,j]", {"A": "cd", "B": "csr", "C": "dcsr"}),
    ("A[i,j] = B[i,k] * C[k,j]", {"A": "cd", "B": "dcsr", "C": "csr"}),
    # tensor_slicesum-like and 3-D orders of levels
    ("Y[i,j,k] = X[i,j,k] * 2", {"X": "csf", "Y": "dcd"}),
    ("Y[i,j,k] = X[i,j,k] + Z[i,j,k]", {"X": "csf", "Z": "ccd", "Y": "ccd"}),
    ("Y[i,j,k] = X[i,j,k] * 2", {"X": "csf", "Y": "cdc"}),
    ("Y[i,j,k] = X[i,j,k] * 2", {"X": "ccc:1,0,2", "Y": "cdc:1,0,2"}),
    ("Y[i,j,k] = X[i,j,k] * 2", {"X": "csf", "Y": "cdd"}),
]
SIZES = {"i": 9, "j": 7, "k": 5}


def test_assembled_format_compresses_only_dense_levels_under_sparse_ones():
    def f(s):
        return spcomp.Format.parse(s)
    csr = f("csr")
    assert assembled_format(csr) is csr
    assert assembled_format(f("cd")) == f("cc")
    assert assembled_format(f("dcd")) == f("dcc")
    assert assembled_format(f("cdc:1,0,2")) == f("ccc:1,0,2")
    assert assembled_format(f("dd")) == f("dd")


@pytest.mark.parametrize("expr,formats", CASES)
def test_dense_under_sparse_outputs_match_the_reference(expr, formats):
    for density in (0.0, 0.15, 0.6):
        r = check_kernel(expr, formats, sizes=SIZES, density=density, seed=2)
        out = formats["A"] if "A" in formats else formats["Y"]
        assert r.result.format == spcomp.Format.parse(out, r.result.ndim)


def test_a_stored_row_holds_its_whole_dense_block_zero_filled():
    import scipy.sparse as sp
    B = sp.csr_array(np.array([[0, 0, 0], [1.0, 0, 2.0], [0, 0, 0], [0, 3.0, 0]]))
    k = spcomp.compile("A[i,j] = -B[i,j]", formats={"A": "cd", "B": "csr"})
    A = k(B=B)
    assert A.format.spec() == "cd"
    assert list(A.levels[0]["pos"]) == [0, 2] and list(A.levels[0]["crd"]) == [1, 3]
    assert A.levels[1] == {}
    assert list(A.vals) == [-1.0, 0.0, -2.0, 0.0, -3.0, 0.0]


@pytest.mark.parametrize("expr,formats", [CASES[3], CASES[4], CASES[6]])
def test_rows_assembled_on_two_threads_are_the_same(expr, formats):
    k = spcomp.compile(expr, formats=formats)
    ops = random_operands(k, sizes={"i": 60, "j": 40, "k": 30}, density=0.2, seed=5)
    with spcomp_threads(1):
        one = k(**ops)
    with spcomp_threads(2, 0):
        two = k(**ops)
    for a, b in zip(one.levels, two.levels):
        assert a.keys() == b.keys()
        for name in a:
            np.testing.assert_array_equal(a[name], b[name])
    np.testing.assert_array_equal(one.vals, two.vals)
    check_kernel(expr, formats, ops)


def test_accumulating_into_a_dense_under_sparse_output():
    check_kernel("A[i,j] += B[i,j] * C[i,j]", {"A": "cd", "B": "csr", "C": "csr"}, sizes=SIZES,
                 density=0.4, seed=1)
    check_kernel("Y[i,j,k] += X[i,j,k]", {"X": "csf", "Y": "cdc"}, sizes=SIZES, density=0.3, seed=4)


@pytest.mark.parametrize("expr,formats", CASES)
def test_dense_under_sparse_outputs_on_cuda_sim(expr, formats):
    check_kernel(expr, formats, backend="cuda-sim", sizes=SIZES, density=0.3, seed=3)


@pytest.mark.skipif(not nvcc.nvcc_available(), reason="nvcc is not installed")
@pytest.mark.parametrize("expr,formats", CASES[:4])
def test_dense_under_sparse_kernels_compile_with_nvcc(expr, formats):
    k = spcomp.compile(expr, formats=formats, backend="cuda-sim")
    report = nvcc.check(k, arch=("sm_90",))["sm_90"]
    assert report and all(info["spill_stores"] == 0 for info in report.values())


@pytest.mark.parametrize("fmt,level", [("c(nonunique)qd", "level 1"), ("c(nonunique)cd", "level 1")])
def test_a_format_that_cannot_be_assembled_names_its_level(fmt, level):
    with pytest.raises(UnsupportedError, match=level):
        spcomp.compile("Y[i,j,k] = X[i,j,k] * 2", formats={"X": "csf", "Y": fmt})


def test_a_packed_block_level_above_others_is_appended_compressed_and_packed():
    """``PackedBlock.assembled_as``: above other levels (blocked ELL's block columns) the
    kernel appends it compressed and the runtime packs the slots, a block with more
    entries than K being a PackedOverflowError."""
    check_kernel("Y[i,j,k] = X[i,j,k] * 2", {"X": "csf", "Y": "dp(4,4)d"}, sizes=SIZES, density=0.4)
    k = spcomp.compile("Y[i,j,k] = X[i,j,k] * 2", formats={"X": "dense", "Y": "dp(4,1)d"})
    with pytest.raises(spcomp.errors.PackedOverflowError):
        k(X=np.ones((2, 4, 2)))


def _dense_under_sparse(spec: str) -> bool:
    levels = spcomp.Format.parse(spec).levels
    return any(lv.is_dense for lv in levels[[lv.is_dense for lv in levels].index(False):]) \
        if not all(lv.is_dense for lv in levels) else False


@pytest.mark.filterwarnings("ignore::spcomp.errors.TranspositionWarning")
@settings(max_examples=examples(25), deadline=None)
@given(st.data())
def test_random_dense_under_sparse_outputs_of_an_add(data):
    fmt = data.draw(output_formats(3, allow_packed=False).filter(_dense_under_sparse), label="Y")
    check_kernel("Y[i,j,k] = X[i,j,k] + Z[i,j,k]", {"X": "csf", "Z": "ccc:0,2,1", "Y": fmt}, sizes=SIZES,
                 density=data.draw(st.sampled_from([0.0, 0.2, 0.7])), seed=data.draw(st.integers(0, 9)))
