"""spcomp.runtime: Tensor storage, conversions, validation, Matrix Market."""
from __future__ import annotations

import io
import weakref

import ml_dtypes
import numpy as np
import pytest
import scipy.sparse as sp
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from spcomp import Format
from spcomp.errors import (DTypeError, FormatError, InvalidTensorError, PackedOverflowError,
                           ShapeError, SpcompError)
from spcomp.formats import Compressed, PackedBlock, Singleton
from spcomp.runtime import (Tensor, as_tensor, read_matrix_market, resolve_dtype,
                            validate_storage, write_matrix_market)

BF16 = np.dtype(ml_dtypes.bfloat16)

FORMATS = {
    0: ["dense"],
    1: ["dense", "c", "coo", "p(3,2)", "p(2)", "p(8,8)", "c(unordered)"],
    2: ["dense", "csr", "csc", "coo", "dcsr", "ell(K=2)", "twell(B=2,K=2)", "twell(B=3,K=2)",
        "twell(B=16,K=4)", "dc:1,0", "d p(4,2):1,0", "cd", "c(nonunique)q", "p(3,2)d", "cc:1,0",
        "p(2,2)c", "d p(3,2,unordered)", "d c(unordered)", "c(nonunique)q:1,0", "p(2,1)p(3,1)",
        "dense:1,0"],
    3: ["dense", "csf", "coo", "ccc:2,0,1", "ddp(3,2)", "dcp(2,2):2,0,1", "dense:1,2,0", "cdc",
        "dcc:1,0,2", "c(nonunique)q(nonunique)q:2,1,0", "d c(nonunique) q"],
}

SETTINGS = settings(max_examples=120, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


@st.composite
def dense_arrays(draw, ndim: int):
    """Dense arrays with sizes 0..7, a density, and values exact in every storage dtype."""
    shape = draw(st.tuples(*[st.integers(0, 7)] * ndim))
    density = draw(st.sampled_from([0.0, 0.15, 0.5, 1.0]))
    dtype = draw(st.sampled_from(["float32", "float64", "bfloat16"]))
    rng = np.random.default_rng(draw(st.integers(0, 2 ** 32 - 1)))
    values = np.asarray(rng.integers(-8, 9, size=shape), np.float64) / 4
    a = np.where(np.asarray(rng.random(shape)) < density, values, 0.0)   # ndarray, also for ndim 0
    return a.astype(resolve_dtype(dtype))


def _fresh(t: Tensor) -> Tensor:
    """The same storage, not yet validated."""
    return Tensor(t.format, t.shape, t.levels, t.vals)


def _only_leading_dense(fmt: Format) -> bool:
    seen_sparse = False
    for lvl in fmt.levels:
        if lvl.is_dense and seen_sparse:
            return False
        seen_sparse |= not lvl.is_dense
    return True


def _check_roundtrip(a: np.ndarray, spec: str) -> Tensor:
    t = Tensor.from_numpy(a, spec, overflow="grow")
    assert t.shape == a.shape and t.dtype == a.dtype and t.ndim == a.ndim
    back = t.to_numpy()
    assert back.dtype == a.dtype and back.shape == a.shape
    np.testing.assert_array_equal(back.astype(np.float64), a.astype(np.float64))
    _fresh(t).validate()                                  # packers build well-formed storage
    coords, values = t.to_coo(drop_zeros=True)
    assert coords.shape == (a.ndim, np.count_nonzero(a))
    if a.ndim:
        np.testing.assert_array_equal(values.astype(np.float64), a[tuple(coords)].astype(np.float64))
    if not t.format.is_dense and _only_leading_dense(t.format) and \
            not any(isinstance(l, Singleton) for l in t.format.levels[1:]) or \
            t.format.levels and isinstance(t.format.levels[0], Compressed) and not t.format.levels[0].unique:
        assert t.nnz == np.count_nonzero(a)
    return t


# ------------------------------------------------------------------ round trips

@pytest.mark.parametrize("ndim", [0, 1, 2, 3])
def test_roundtrip_every_format(ndim):
    @SETTINGS
    @given(a=dense_arrays(ndim), spec=st.sampled_from(FORMATS[ndim]))
    def check(a, spec):
        _check_roundtrip(a, spec)
    check()


@SETTINGS
@given(a=dense_arrays(2), src=st.sampled_from(FORMATS[2]), dst=st.sampled_from(FORMATS[2]))
def test_to_format_any_to_any(a, src, dst):
    t = Tensor.from_numpy(a, src, overflow="grow")
    u = t.to_format(dst, overflow="grow")
    np.testing.assert_array_equal(u.to_numpy().astype(float), a.astype(float))
    assert u.dtype == a.dtype
    _fresh(u).validate()


@SETTINGS
@given(a=dense_arrays(3), src=st.sampled_from(FORMATS[3]), dst=st.sampled_from(FORMATS[3]))
def test_to_format_3d(a, src, dst):
    u = Tensor.from_numpy(a, src, overflow="grow").to_format(dst, overflow="grow")
    np.testing.assert_array_equal(u.to_numpy().astype(float), a.astype(float))


def test_to_format_same_returns_self_and_drops_zeros():
    a = np.array([[0, 1.0], [2, 0]])
    t = Tensor.from_numpy(a, "csr")
    assert t.to_format("csr") is t
    d = Tensor.from_numpy(a, "dense")
    assert d.to_format("csr").nnz == 2          # zeros of a dense tensor are not stored
    assert Tensor.from_numpy(a, "cd").to_format("coo").nnz == 2


# ------------------------------------------------------------------ exact layouts

def test_dense_layout_is_storage_order_flattening():
    a = np.arange(24, dtype=np.float64).reshape(2, 3, 4)
    t = Tensor.from_numpy(a, "dense:2,0,1")
    np.testing.assert_array_equal(t.vals, np.transpose(a, (2, 0, 1)).ravel())
    assert t.levels == [{}, {}, {}]
    s = Tensor.from_numpy(np.float64(2.5), "dense")
    assert s.vals.shape == (1,) and s.nnz == 1 and s.to_numpy() == 2.5


def test_csr_csc_layout_matches_scipy():
    rng = np.random.default_rng(3)
    a = rng.random((6, 9))
    a[a < 0.6] = 0
    t = Tensor.from_numpy(a, "csr")
    m = sp.csr_array(a)
    np.testing.assert_array_equal(t.levels[1]["pos"], m.indptr)
    np.testing.assert_array_equal(t.levels[1]["crd"], m.indices)
    np.testing.assert_array_equal(t.vals, m.data)
    assert t.levels[1]["pos"].dtype == np.int32 and t.levels[1]["crd"].dtype == np.int32
    c = Tensor.from_numpy(a, "csc")
    mc = sp.csc_array(a)
    np.testing.assert_array_equal(c.levels[1]["pos"], mc.indptr)
    np.testing.assert_array_equal(c.levels[1]["crd"], mc.indices)


def test_coo_layout():
    a = np.array([[0, 1.0, 0], [2, 0, 3]])
    t = Tensor.from_numpy(a, "coo")
    assert t.format == Format.coo(2)
    np.testing.assert_array_equal(t.levels[0]["pos"], [0, 3])
    np.testing.assert_array_equal(t.levels[0]["crd"], [0, 1, 1])
    np.testing.assert_array_equal(t.levels[1]["crd"], [1, 0, 2])
    np.testing.assert_array_equal(t.vals, [1, 2, 3])


def test_twell_layout_block_not_dividing():
    # N = 5, B = 3: blocks [0,3) and [3,5); K = 2 slots per (row, block)
    a = np.array([[0, 0, 1.0, 0, 0],
                  [4, 0, 2.0, 0, 3.0]])
    t = Tensor.from_numpy(a, "twell(B=3,K=2)")
    lv = t.levels[1]
    np.testing.assert_array_equal(lv["count"], [1, 0, 2, 1])
    np.testing.assert_array_equal(lv["crd"], [2, 0, 0, 0, 0, 2, 1, 0])   # in-block coordinates
    np.testing.assert_array_equal(t.vals, [1, 0, 0, 0, 4, 2, 3, 0])
    assert lv["count"].dtype == np.int32 and lv["crd"].dtype == np.int16
    assert t.nnz == 4


def test_packed_b_larger_than_n_ell_and_empty():
    a = np.zeros((3, 5))
    a[1, [0, 4]] = [1, 2]
    t = Tensor.from_numpy(a, "twell(B=64,K=4)")
    assert t.levels[1]["count"].tolist() == [0, 2, 0]
    assert t.levels[1]["crd"].reshape(3, 4)[1].tolist() == [0, 4, 0, 0]
    e = Tensor.from_numpy(a, "ell(K=3)")
    assert e.levels[1]["crd"].dtype == np.int32          # ELL: one block spans the row
    assert e.levels[1]["crd"].reshape(3, 3)[1].tolist() == [0, 4, 0]
    np.testing.assert_array_equal(e.to_numpy(), a)
    for shape in [(0, 5), (3, 0), (0, 0)]:
        z = Tensor.from_numpy(np.zeros(shape), "twell(B=4,K=2)")
        assert z.to_numpy().shape == shape and z.nnz == 0
        _fresh(z).validate()
    big = Tensor.from_numpy(np.ones((2, 40000)), "twell(B=40000,K=40000)")
    assert big.levels[1]["crd"].dtype == np.int32         # B > 32768: 32-bit in-block coordinates


def test_mode_ordered_packed():
    a = np.zeros((7, 3))
    a[[0, 2, 5, 6], 1] = [1, 2, 3, 4]
    t = Tensor.from_numpy(a, "d p(4,2):1,0")            # columns dense, rows packed in blocks of 4
    assert t.levels[1]["count"].tolist() == [0, 0, 2, 2, 0, 0]
    np.testing.assert_array_equal(t.to_numpy(), a)


# ------------------------------------------------------------------ packed overflow

def test_packed_overflow_error_names_largest_count():
    a = np.zeros((4, 16))
    a[2, :7] = 1
    a[1, 8:11] = 1
    with pytest.raises(PackedOverflowError) as err:
        Tensor.from_numpy(a, "twell(B=8,K=2)")
    msg = str(err.value)
    assert err.value.largest_count == 7
    assert "7" in msg and "level 1" in msg and "K=2" in msg and "overflow='grow'" in msg
    assert "twell(B=8,K=7)" in msg


def test_packed_overflow_grow():
    a = np.zeros((4, 16))
    a[2, :7] = 1
    t = Tensor.from_numpy(a, "twell(B=8,K=2)", overflow="grow")
    lvl = t.format.levels[1]
    assert isinstance(lvl, PackedBlock) and lvl.K == 7 and lvl.B == 8
    assert str(t.format) == "twell(B=8,K=7)"
    np.testing.assert_array_equal(t.to_numpy(), a)
    e = Tensor.from_coo([[0, 2, 4]], [1.0, 2.0, 3.0], (5,), "p(1)", overflow="grow")
    assert e.format.levels[0].K == 3
    with pytest.raises(ValueError):
        Tensor.from_numpy(a, "twell(B=8,K=2)", overflow="truncate")


# ------------------------------------------------------------------ from_coo

def test_from_coo_sums_duplicates_and_sorts():
    rng = np.random.default_rng(0)
    coords = rng.integers(0, 4, size=(2, 60))
    values = rng.random(60)
    want = np.zeros((4, 5))
    np.add.at(want, tuple(coords), values)
    for spec in ["csr", "csc", "coo", "dcsr", "twell(B=2,K=2)", "dense"]:
        t = Tensor.from_coo(coords, values, (4, 5), spec)
        np.testing.assert_allclose(t.to_numpy(), want)
        _fresh(t).validate()
    t = Tensor.from_coo((coords[0], coords[1]), values, (4, 5), "coo")
    assert t.nnz == len({tuple(c) for c in coords.T})


def test_from_coo_duplicates_rejected_when_not_summing():
    with pytest.raises(InvalidTensorError, match=r"\(1, 2\) appears more than once"):
        Tensor.from_coo([[1, 0, 1], [2, 0, 2]], [1.0, 2.0, 3.0], (3, 3), "csr", sum_duplicates=False)


def test_from_coo_bad_input():
    with pytest.raises(InvalidTensorError, match=r"coords\[1\]\[1\] = 9 is out of range for dimension 1 of size 3"):
        Tensor.from_coo([[0, 1], [0, 9]], [1.0, 2.0], (3, 3), "csr")
    with pytest.raises(ShapeError):
        Tensor.from_coo([[0, 1], [0, 1]], [1.0, 2.0, 3.0], (3, 3), "csr")
    with pytest.raises(InvalidTensorError, match="integers"):
        Tensor.from_coo([[0, 1], [0.5, 1]], [1.0, 2.0], (3, 3), "csr")
    with pytest.raises(FormatError):
        Tensor.from_coo([[0, 1], [0, 1]], [1.0, 2.0], (3, 3), "ccc")


def test_from_coo_keeps_explicit_zeros_and_does_not_alias_values():
    values = np.array([0.0, 2.0])
    t = Tensor.from_coo([[0, 1], [0, 1]], values, (2, 2), "csr")
    assert t.nnz == 2
    assert not np.shares_memory(t.vals, values)


def test_singleton_under_unique_parent_cannot_hold_two_entries():
    with pytest.raises(FormatError, match="singleton"):
        Tensor.from_numpy(np.ones((2, 2)), "dq")
    t = Tensor.from_numpy(np.eye(3), "dq")          # one entry per row fits
    np.testing.assert_array_equal(t.to_numpy(), np.eye(3))


# ------------------------------------------------------------------ scipy

def test_from_scipy_zero_copy_canonical_csr_and_csc():
    m = sp.random_array((30, 40), density=0.2, format="csr", random_state=1)
    assert m.has_canonical_format
    t = Tensor.from_scipy(m, "csr")
    assert np.shares_memory(t.levels[1]["pos"], m.indptr)
    assert np.shares_memory(t.levels[1]["crd"], m.indices)
    assert np.shares_memory(t.vals, m.data)
    assert not t.validated                      # user's arrays: validated on first use
    np.testing.assert_array_equal(t.to_numpy(), m.toarray())
    c = m.tocsc()
    tc = Tensor.from_scipy(c, "csc")
    assert np.shares_memory(tc.vals, c.data) and np.shares_memory(tc.levels[1]["crd"], c.indices)
    np.testing.assert_array_equal(tc.to_numpy(), m.toarray())
    mm = sp.csr_matrix(m)                        # spmatrix works as well
    assert np.shares_memory(Tensor.from_scipy(mm, "csr").vals, mm.data)


def test_from_scipy_non_canonical():
    data = np.array([1.0, 2, 3, 4])
    m = sp.csr_matrix((data, np.array([3, 1, 1, 0]), np.array([0, 3, 3, 4])), shape=(3, 4))
    assert not m.has_canonical_format
    want = np.zeros((3, 4))
    want[0, 3], want[0, 1], want[2, 0] = 1, 5, 4
    for spec in ["csr", "csc", "coo", "twell(B=2,K=2)"]:
        t = Tensor.from_scipy(m, spec)
        np.testing.assert_array_equal(t.to_numpy(), want)
        _fresh(t).validate()
    assert not np.shares_memory(Tensor.from_scipy(m, "csr").vals, m.data)
    # canonicalised on a copy: the caller's matrix keeps its order and duplicates
    np.testing.assert_array_equal(m.indices, [3, 1, 1, 0])
    np.testing.assert_array_equal(m.data, data)
    assert not m.has_canonical_format


def test_from_scipy_other_kinds_and_dtypes():
    m = sp.random_array((8, 12), density=0.3, format="coo", random_state=2)
    for kind in ["coo", "bsr", "lil", "dok", "dia", "csc"]:
        src = m.asformat(kind)
        t = Tensor.from_scipy(src, "dcsr")
        np.testing.assert_allclose(t.to_numpy(), m.toarray())
    t = Tensor.from_scipy(m.tocsr().astype(np.float32), "csr")
    assert t.dtype == np.float32
    b = Tensor.from_scipy(m.tocsr(), "csr", dtype="bfloat16")
    assert b.dtype == BF16
    i = Tensor.from_scipy(sp.csr_array(np.array([[1, 0], [0, 2]])), "csr")
    assert i.dtype == np.float64
    with pytest.raises(DTypeError, match="complex"):
        Tensor.from_scipy(sp.csr_array(np.array([[1j, 0]])), "csr")


def test_to_scipy_every_kind():
    rng = np.random.default_rng(5)
    a = rng.random((5, 7))
    a[a < 0.5] = 0
    for spec in ["csr", "csc", "coo", "twell(B=3,K=3)", "dense", "dcsr"]:
        t = Tensor.from_numpy(a, spec)
        for kind in ["csr", "csc", "coo", "bsr"]:
            m = t.to_scipy(kind)
            assert sp.issparse(m) and m.format == kind
            np.testing.assert_array_equal(m.toarray(), a)
    t = Tensor.from_numpy(a, "csr")
    assert np.shares_memory(t.to_scipy("csr").data, t.vals)
    assert Tensor.from_numpy(a, "csr", dtype="bfloat16").to_scipy().dtype == np.float32
    with pytest.raises(ShapeError):
        Tensor.from_numpy(np.ones(3), "dense").to_scipy()


# ------------------------------------------------------------------ dtypes

def test_dtype_rules():
    assert Tensor.from_numpy(np.ones(3, np.float32), "dense").dtype == np.float32
    assert Tensor.from_numpy(np.ones(3, np.int64), "dense").dtype == np.float64
    assert Tensor.from_numpy(np.ones(3, bool), "c").dtype == np.float64
    assert Tensor.from_numpy(np.ones(3), "c", dtype=np.float32).dtype == np.float32
    for bad in [np.ones(3, complex), np.array(["a", "b"]), np.array([object()])]:
        with pytest.raises(DTypeError, match=str(bad.dtype).lstrip("<")):
            Tensor.from_numpy(bad, "dense")
    with pytest.raises(DTypeError, match="int32"):
        Tensor.from_numpy(np.ones(3), "dense", dtype="int32")
    with pytest.raises(DTypeError, match="complex"):
        Tensor.from_numpy(np.ones(3, complex), "dense", dtype="float64")


def test_bfloat16_storage():
    a = np.array([[0, 1.5, 0], [-2.25, 0, 3.0]])
    for spec in ["csr", "twell(B=2,K=1)", "dense", "coo"]:
        t = Tensor.from_numpy(a, spec, dtype="bfloat16")
        assert t.dtype == BF16 and t.vals.dtype == BF16
        assert t.kernel_arrays()[-1].dtype == BF16
        back = t.to_numpy()
        assert back.dtype == BF16
        np.testing.assert_array_equal(back.astype(np.float64), a)
    t = Tensor.from_numpy(a, "csr").astype("bfloat16")
    assert t.dtype == BF16 and t.astype("bfloat16") is t
    np.testing.assert_array_equal(t.astype(np.float32).to_numpy(), a.astype(np.float32))
    assert Tensor.from_numpy(a.astype(BF16), "csr").dtype == BF16


# ------------------------------------------------------------------ kernel arrays

def test_kernel_arrays_dtypes_and_cache():
    a = np.zeros((3, 40))
    a[1, [2, 30]] = 1
    t = Tensor.from_numpy(a, "csr")
    k32 = t.kernel_arrays(32)
    assert [x.dtype for x in k32] == [np.int32, np.int32, np.float64]
    assert t.kernel_arrays(32) is k32
    k64 = t.kernel_arrays(64)
    assert [x.dtype for x in k64] == [np.int64, np.int64, np.float64]
    assert all(x.flags.c_contiguous for x in k64)
    tw = Tensor.from_numpy(a, "twell(B=16,K=2)", dtype=np.float32)
    assert [x.dtype for x in tw.kernel_arrays(64)] == [np.int32, np.int16, np.float32]
    el = Tensor.from_numpy(a, "ell(K=2)")
    assert [x.dtype for x in el.kernel_arrays(32)] == [np.int32, np.int32, np.float64]
    coo3 = Tensor.from_numpy(np.ones((2, 2, 2)), "coo")
    assert len(coo3.kernel_arrays()) == 2 + 1 + 1 + 1
    assert Tensor.from_numpy(np.ones((2, 2)), "dense").kernel_arrays()[0].shape == (4,)
    with pytest.raises(ValueError):
        t.kernel_arrays(16)


def test_kernel_arrays_64_bit_needed():
    n = 2 ** 31 + 10
    t = Tensor(Format.csr(), (2, n), [{}, {"pos": np.array([0, 1, 2]),
                                          "crd": np.array([5, n - 1], np.int64)}], np.ones(2))
    assert t.index_bits_needed() == 64
    with pytest.raises(ValueError, match="64"):
        t.kernel_arrays(32)
    assert [x.dtype for x in t.kernel_arrays(64)] == [np.int64, np.int64, np.float64]
    assert Tensor.from_numpy(np.eye(3), "csr").index_bits_needed() == 32


def test_kernel_arrays_validate_first():
    t = Tensor("csr", (2, 2), [{}, {"pos": np.array([0, 1, 1]), "crd": np.array([7])}], np.ones(1))
    with pytest.raises(InvalidTensorError, match="crd"):
        t.kernel_arrays()


# ------------------------------------------------------------------ validation

I32 = lambda *x: np.array(x, np.int32)  # noqa: E731
I16 = lambda *x: np.array(x, np.int16)  # noqa: E731
CSR_OK = dict(pos=I32(0, 2, 2, 3), crd=I32(0, 3, 1))
TW_OK = dict(count=I32(1, 0, 2, 1), crd=I16(2, 0, 0, 0, 0, 2, 1, 0))
TW_VALS = np.array([1, 0, 0, 0, 1, 2, 3, 0.0])


def _csr(**over):
    lv = {k: v.copy() for k, v in CSR_OK.items()}
    lv.update(over)
    return [{}, {k: v for k, v in lv.items() if v is not None}]


INVALID = [
    # (format, shape, levels, vals, expected message fragment)
    ("csr", (3, 4), _csr(crd=I32(0, 3, 9)), np.ones(3),
     r"tensor level 1 \(compressed\): crd\[2\] = 9 is out of range for dimension 1 of size 4"),
    ("csr", (3, 4), _csr(pos=I32(0, 2, 3)), np.ones(3), r"level 1 \(compressed\): pos has 3 entries but needs 4"),
    ("csr", (3, 4), _csr(pos=I32(1, 2, 2, 3)), np.ones(3), r"level 1 \(compressed\): pos\[0\] = 1"),
    ("csr", (3, 4), _csr(pos=I32(0, 2, 1, 3)), np.ones(3), r"level 1 \(compressed\): pos\[2\] = 1 is less than pos\[1\]"),
    ("csr", (3, 4), _csr(pos=I32(0, 2, 2, 2)), np.ones(3), r"pos\[3\] = 2 but crd has 3 entries"),
    ("csr", (3, 4), _csr(crd=I32(3, 0, 1)), np.ones(3), r"level 1 \(compressed\): crd\[1\] = 0 is not greater than crd\[0\] = 3"),
    ("csr", (3, 4), _csr(crd=I32(1, 1, 1)), np.ones(3), r"crd\[1\] = 1 is not greater than crd\[0\] = 1"),
    ("csr", (3, 4), _csr(crd=np.array([0.0, 3, 1])), np.ones(3), r"level 1 \(compressed\): crd has dtype float64"),
    ("csr", (3, 4), _csr(crd=None), np.ones(3), r"level 1 \(compressed\): missing array 'crd'"),
    ("csr", (3, 4), _csr(extra=I32(1)), np.ones(3), r"unexpected array 'extra'"),
    ("csr", (3, 4), _csr(crd=np.array([[0, 3, 1]])), np.ones(3), r"crd has shape \(1, 3\)"),
    ("csr", (3, 4), _csr(), np.ones(4), r"vals has 4 entries but the last level has 3 positions"),
    ("csr", (3, 4), _csr(), np.ones((3, 1)), r"vals has shape \(3, 1\)"),
    (Format.csr(), (3, 4, 5), _csr(), np.ones(3), r"shape \(3, 4, 5\) has 3 dimension\(s\)"),
    ("csr", (3, 4), [{}], np.ones(3), r"levels must be a list of 2"),
    ("c(unordered)", (5,), [dict(pos=I32(0, 3), crd=I32(3, 1, 3))], np.ones(3),
     r"level 0 \(compressed\): crd\[2\] = 3 repeats crd\[0\]"),
    ("c(nonunique)", (5,), [dict(pos=I32(0, 3), crd=I32(3, 1, 3))], np.ones(3),
     r"level 0 \(compressed\): crd\[1\] = 1 is less than crd\[0\] = 3"),
    ("coo", (3, 4), [dict(pos=I32(0, 3), crd=I32(0, 1, 0)), dict(crd=I32(0, 1, 2))], np.ones(3),
     r"level 0 \(compressed\): crd\[2\] = 0 is less than"),
    ("coo", (3, 4), [dict(pos=I32(0, 3), crd=I32(0, 1, 1)), dict(crd=I32(0, 2, 1))], np.ones(3),
     r"level 1 \(singleton\): crd\[2\] = 1 is not greater than crd\[1\] = 2"),
    ("coo", (3, 4), [dict(pos=I32(0, 3), crd=I32(0, 1, 1)), dict(crd=I32(0, 1))], np.ones(3),
     r"level 1 \(singleton\): crd has 2 entries but needs 3"),
    ("coo", (3, 4), [dict(pos=I32(0, 3), crd=I32(0, 1, 1)), dict(crd=I32(0, 1, 4))], np.ones(3),
     r"level 1 \(singleton\): crd\[2\] = 4 is out of range for dimension 1 of size 4"),
    ("coo", (3, 4, 5), [dict(pos=I32(0, 3), crd=I32(0, 1, 1)), dict(crd=I32(0, 2, 2)), dict(crd=I32(0, 3, 3))],
     np.ones(3), r"level 2 \(singleton\): crd\[2\] = 3 is not greater than crd\[1\] = 3"),
    ("twell(B=3,K=2)", (2, 5), [{}, dict(TW_OK, count=I32(1, 0, 2))], TW_VALS,
     r"level 1 \(packed-block\): count has 3 entries but needs 4"),
    ("twell(B=3,K=2)", (2, 5), [{}, dict(TW_OK, count=I32(1, 0, 2, 3))], TW_VALS,
     r"level 1 \(packed-block\): count\[3\] = 3 is outside 0..2"),
    ("twell(B=3,K=2)", (2, 5), [{}, dict(TW_OK, count=I32(1, -1, 2, 1))], TW_VALS, r"count\[1\] = -1"),
    ("twell(B=3,K=2)", (2, 5), [{}, dict(TW_OK, crd=I16(2, 0, 0, 0, 0, 2, 1))], TW_VALS[:7],
     r"level 1 \(packed-block\): crd has 7 entries but needs 8"),
    ("twell(B=3,K=2)", (2, 5), [{}, dict(TW_OK, crd=I16(2, 0, 0, 0, 0, 2, 2, 0))], TW_VALS,
     r"level 1 \(packed-block\): crd\[6\] = 2 \(slot 0 of block 1\) is out of range 0..1"),
    ("twell(B=3,K=2)", (2, 5), [{}, dict(TW_OK, crd=I16(3, 0, 0, 0, 0, 2, 1, 0))], TW_VALS,
     r"crd\[0\] = 3 \(slot 0 of block 0\) is out of range 0..2"),
    ("twell(B=3,K=2)", (2, 5), [{}, dict(TW_OK, crd=I16(2, 1, 0, 0, 0, 2, 1, 0))], TW_VALS,
     r"crd\[1\] = 1 is in an unused slot"),
    ("twell(B=3,K=2)", (2, 5), [{}, dict(TW_OK, crd=I16(2, 0, 0, 0, 2, 0, 1, 0))], TW_VALS,
     r"crd\[5\] = 0 is not greater than crd\[4\] = 2 within block 0 under parent position 1"),
    ("twell(B=3,K=2)", (2, 5), [{}, dict(TW_OK)], np.array([1, 9, 0, 0, 1, 2, 3, 0.0]),
     r"level 1 \(packed-block\): vals\[1\] = 9.0 is in an unused slot"),
    ("d p(3,2,unordered)", (2, 5), [{}, dict(TW_OK, crd=I16(2, 0, 0, 0, 2, 2, 1, 0))], TW_VALS,
     r"crd\[5\] = 2 repeats crd\[4\] within block 0"),
    ("dense", (2, 3), [{}, {}], np.ones(5), r"vals has 5 entries but the last level has 6"),
]


@pytest.mark.parametrize("spec,shape,levels,vals,message", INVALID)
def test_validation_failures_name_the_culprit(spec, shape, levels, vals, message):
    with pytest.raises(InvalidTensorError, match=message):
        Tensor.from_arrays(spec, shape, levels, vals)


def test_validation_dtype_of_vals():
    for vals in [np.ones(3, complex), np.ones(3, np.int64), np.ones(3, np.float16)]:
        with pytest.raises(DTypeError, match=str(vals.dtype)):
            Tensor.from_arrays("csr", (3, 4), _csr(), vals)


def test_validation_accepts_well_formed_and_unordered():
    Tensor.from_arrays("csr", (3, 4), _csr(), np.ones(3))
    t = Tensor.from_arrays("d p(3,2,unordered)", (2, 5), [{}, dict(TW_OK, crd=I16(2, 0, 0, 0, 2, 0, 1, 0))],
                           TW_VALS)
    assert t.to_numpy()[1].tolist() == [2, 0, 1, 0, 3]
    d = Tensor.from_arrays("d c(unordered)", (2, 4), [{}, dict(pos=[0, 2, 3], crd=[3, 1, 0])], [1.0, 2, 3])
    assert d.to_numpy().tolist() == [[0, 2, 0, 1], [3, 0, 0, 0]]
    u = Tensor.from_arrays("c(nonunique) q(nonunique)", (2, 2), [dict(pos=I32(0, 3), crd=I32(0, 0, 1)),
                                                                   dict(crd=I32(1, 1, 0))], np.ones(3))
    assert u.to_numpy().tolist() == [[0, 2], [1, 0]]            # duplicates add up


def test_validation_named_tensor_and_cached():
    t = Tensor("csr", (3, 4), _csr(crd=I32(0, 3, 9)), np.ones(3))
    with pytest.raises(InvalidTensorError, match="tensor W level 1"):
        t.validate(name="W")
    assert not t.validated
    good = Tensor("csr", (3, 4), _csr(), np.ones(3))
    assert good.validate() is good and good.validated
    good.levels[1]["crd"][2] = 99       # mutating after validation is not re-checked (documented)
    good.validate()


def test_validate_storage_function_and_error_hierarchy():
    validate_storage(Format.csr(), (3, 4), _csr(), np.ones(3))
    with pytest.raises(SpcompError):
        validate_storage(Format.csr(), (3, 4), _csr(crd=I32(0, 3, 4)), np.ones(3))


# ------------------------------------------------------------------ misc API

def test_repr_nnz_and_properties():
    a = np.array([[0, 1.0, 0], [2, 0, 3]])
    t = Tensor.from_numpy(a, "csr")
    assert repr(t) == "Tensor(format='csr', shape=(2, 3), dtype=float64, nnz=3)"
    assert weakref.ref(t)() is t                       # kernels cache converted operands weakly
    assert t.nnz == 3 and t.ndim == 2 and t.format == Format.csr()
    assert Tensor.from_numpy(a, "twell(B=2,K=2)").nnz == 3
    assert Tensor.from_numpy(a, "dense").nnz == 6
    coords, values = Tensor.from_numpy(a, "csc").to_coo()
    assert coords.tolist() == [[1, 0, 1], [0, 1, 2]] and values.tolist() == [2, 1, 3]


def test_as_tensor():
    a = np.array([[0, 1.0], [2, 0]])
    assert as_tensor(a).format.is_dense
    t = as_tensor(a, "csr")
    assert as_tensor(t) is t and as_tensor(t, "csr") is t
    assert as_tensor(t, "coo").format == Format.coo(2)
    assert as_tensor(sp.csr_array(a)).format == Format.csr()
    assert as_tensor([[1, 2]], "csr", dtype="float32").dtype == np.float32
    with pytest.raises(DTypeError):
        as_tensor(np.array([["x"]]))


# ------------------------------------------------------------------ Matrix Market

def test_matrix_market_roundtrip(tmp_path):
    rng = np.random.default_rng(11)
    a = rng.random((6, 5))
    a[a < 0.5] = 0
    path = tmp_path / "a.mtx"
    write_matrix_market(path, Tensor.from_numpy(a, "twell(B=2,K=2)"))
    t = read_matrix_market(path, "csr")
    assert t.format == Format.csr()
    np.testing.assert_allclose(t.to_numpy(), a)
    dense_path = tmp_path / "d.mtx"
    write_matrix_market(dense_path, Tensor.from_numpy(a, "dense", dtype="bfloat16"))
    d = read_matrix_market(dense_path, "dense")
    np.testing.assert_allclose(d.to_numpy(), a.astype(BF16).astype(np.float64))
    with pytest.raises(ShapeError):
        write_matrix_market(tmp_path / "x.mtx", Tensor.from_numpy(np.ones(3), "dense"))


def test_matrix_market_pattern_and_symmetric():
    text = ("%%MatrixMarket matrix coordinate pattern symmetric\n"
            "3 3 2\n2 1\n3 3\n")
    t = read_matrix_market(io.BytesIO(text.encode()), "coo")
    assert t.to_numpy().tolist() == [[0, 1, 0], [1, 0, 0], [0, 0, 1]]
    cx = "%%MatrixMarket matrix coordinate complex general\n2 2 1\n1 1 1.0 2.0\n"
    with pytest.raises(DTypeError):
        read_matrix_market(io.BytesIO(cx.encode()))


# ------------------------------------------------------------------ properties

@st.composite
def coo_inputs(draw, ndim: int):
    shape = draw(st.tuples(*[st.integers(1, 6)] * ndim))
    nnz = draw(st.integers(0, 40))
    rng = np.random.default_rng(draw(st.integers(0, 2 ** 32 - 1)))
    coords = np.stack([rng.integers(0, s, nnz) for s in shape]) if ndim else np.zeros((0, nnz), int)
    values = rng.integers(-4, 5, nnz).astype(np.float64)
    return shape, coords, values


@SETTINGS
@given(data=st.data(), ndim=st.sampled_from([1, 2, 3]))
def test_from_coo_matches_add_at(data, ndim):
    shape, coords, values = data.draw(coo_inputs(ndim))
    spec = data.draw(st.sampled_from(FORMATS[ndim]))
    want = np.zeros(shape)
    np.add.at(want, tuple(coords), values)
    t = Tensor.from_coo(coords, values, shape, spec, overflow="grow")
    np.testing.assert_array_equal(t.to_numpy(), want)
    _fresh(t).validate()


@SETTINGS
@given(data=st.data())
def test_corrupted_storage_is_caught_or_harmless(data):
    """Any single corruption of a valid tensor's arrays is either reported by validate()
    (InvalidTensorError) or leaves storage that unpacks without error."""
    ndim = data.draw(st.sampled_from([1, 2, 3]))
    a = data.draw(dense_arrays(ndim))
    spec = data.draw(st.sampled_from([s for s in FORMATS[ndim] if s != "dense"]))
    t = Tensor.from_numpy(a.astype(np.float64), spec, overflow="grow")
    names = [(l, k) for l, lv in enumerate(t.levels) for k in lv]
    if not names:
        return
    l, key = data.draw(st.sampled_from(names))
    levels = [{k: v.copy() for k, v in lv.items()} for lv in t.levels]
    arr = levels[l][key]
    how = data.draw(st.sampled_from(["set", "drop", "append"]))
    if how == "set" and arr.size:
        i = data.draw(st.integers(0, arr.size - 1))
        arr[i] = data.draw(st.integers(-3, max(t.shape) + 3))
    elif how == "drop" and arr.size:
        levels[l][key] = arr[:-1]
    else:
        levels[l][key] = np.append(arr, arr.dtype.type(data.draw(st.integers(0, 3))))
    bad = Tensor(t.format, t.shape, levels, t.vals.copy())
    try:
        bad.validate()
    except InvalidTensorError:
        return
    bad.to_numpy()
    bad.to_coo()
    bad.kernel_arrays(32)
