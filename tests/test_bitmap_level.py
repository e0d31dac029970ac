"""The bitmap level ``b`` (spcomp/formats/bitmap.py) and the level registry: storage
round trips and corrupted arrays through the level's own hooks, kernels reading and
writing bitmap levels in every position against the float64 reference on the CPU
and cuda-sim (and nvcc where it is installed)."""
from __future__ import annotations

import itertools

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import spcomp
from spcomp.backends.cuda import nvcc
from spcomp.errors import FormatError, InvalidTensorError
from spcomp.formats import LEVEL_KINDS, Format
from spcomp.formats.bitmap import Bitmap
from spcomp.testing import check_kernel
from spcomp.testing.strategies import formats, tensors

from conftest import examples

# every 2-level format over d, c, b that has a bitmap level, with both mode orders
TWO_LEVEL = [a + b for a, b in itertools.product("dcb", repeat=2) if "b" in a + b]
TWO_LEVEL += [f + ":1,0" for f in TWO_LEVEL]
SIZES = {"i": 6, "j": 5, "k": 4}


def test_the_registry_maps_letters_to_kinds_that_declare_their_storage():
    assert LEVEL_KINDS["b"] is Bitmap and set("dcqp") <= set(LEVEL_KINDS)
    for letter, kind in LEVEL_KINDS.items():
        assert kind.letter == letter
        assert kind.kind_name != "?"
        if kind.arrays:
            assert tuple(a.name for a in kind.storage) == kind.arrays
    assert Format.parse("db").levels[1] == Bitmap()
    assert Format.parse("db:1,0").spec() == "db:1,0"


def test_a_bitmap_level_takes_no_flags():
    with pytest.raises(FormatError, match="bitmap level"):
        Format.parse("db(3)")


@pytest.mark.parametrize("spec", ["b", "db", "bd", "bc", "cb", "bb", "bcd", "dbc", "cbb", "bdb:2,0,1"])
def test_bitmap_storage_round_trips(spec):
    rng = np.random.default_rng(len(spec))
    ndim = len(spec.split(":")[0])
    shape = (4, 5, 3)[:ndim]
    a = rng.random(shape) * (rng.random(shape) < 0.4)
    t = spcomp.Tensor.from_numpy(a, spec)
    np.testing.assert_array_equal(t.to_numpy(), a)
    again = spcomp.Tensor(spec, shape, [dict(lv) for lv in t.levels], t.vals.copy()).validate()
    np.testing.assert_array_equal(again.to_numpy(), a)
    coords, values = t.to_coo(drop_zeros=True)
    assert values.size == np.count_nonzero(a)
    for lvl, arrays in zip(t.format.levels, t.levels):
        if isinstance(lvl, Bitmap):
            assert arrays["map"].dtype == np.int8 and set(np.unique(arrays["map"])) <= {0, 1}


def test_a_bitmap_row_stores_its_set_bytes_only():
    t = spcomp.Tensor.from_numpy(np.array([[0.0, 2.0, 0.0], [0.0, 0.0, 0.0], [1.0, 0.0, 3.0]]), "db")
    assert list(t.levels[1]["map"]) == [0, 1, 0, 0, 0, 0, 1, 0, 1]
    assert list(t.vals) == [0, 2, 0, 0, 0, 0, 1, 0, 3]
    assert t.nnz == 3


@pytest.mark.parametrize("mutate,message", [
    (lambda lv: lv[1].update(map=lv[1]["map"][:-1]), r"level 1 \(bitmap\): map has 8 entries but needs 9"),
    (lambda lv: lv[1]["map"].__setitem__(4, 2), r"level 1 \(bitmap\): map\[4\] = 2"),
    (lambda lv: lv[1].update(map=np.zeros(9, np.float64)), r"level 1 \(bitmap\): map"),
    (lambda lv: lv[1].pop("map"), r"missing array 'map'"),
])
def test_corrupted_bitmaps_are_clear_errors(mutate, message):
    a = np.array([[0.0, 2.0, 0.0], [0.0, 0.0, 0.0], [1.0, 0.0, 3.0]])
    t = spcomp.Tensor.from_numpy(a, "db")
    levels = [{k: v.copy() for k, v in lv.items()} for lv in t.levels]
    mutate(levels)
    with pytest.raises(InvalidTensorError, match=message):
        spcomp.Tensor("db", a.shape, levels, t.vals.copy()).validate("A")


@pytest.mark.filterwarnings("ignore::spcomp.errors.TranspositionWarning")
@pytest.mark.parametrize("spec", TWO_LEVEL)
def test_bitmap_inputs_and_outputs_in_every_position(spec):
    check_kernel("C[i,j] = A[i,j] * B[i,j] + A[i,j]", {"A": spec, "B": "csr", "C": spec},
                 sizes=SIZES, density=0.4, seed=1)
    check_kernel("y[i] = A[i,j] * x[j]", {"A": spec}, sizes=SIZES, density=0.5, seed=2)
    # cuda-sim builds with the host C++ compiler: one kernel a format
    check_kernel("C[i,j] = A[i,j] * B[i,j] + A[i,j]", {"A": spec, "B": "dcsr", "C": spec},
                 sizes=SIZES, density=0.4, seed=1, backend="cuda-sim")


def test_a_bitmap_output_of_a_product_and_an_accumulation():
    check_kernel("C[i,j] = A[i,k] * B[k,j]", {"A": "db", "B": "bb", "C": "db"}, sizes=SIZES, density=0.4)
    check_kernel("C[i,j] += A[i,j]", {"A": "csr", "C": "db"}, sizes=SIZES, density=0.4, seed=3)
    check_kernel("Y[i,j,k] = X[i,j,k] * 2", {"X": "bcb", "Y": "cbd"}, sizes=SIZES, density=0.3,
                 backend="cuda-sim")


@pytest.mark.skipif(not nvcc.nvcc_available(), reason="nvcc is not installed")
def test_a_bitmap_kernel_compiles_with_nvcc():
    k = spcomp.compile("C[i,j] = A[i,j] * B[i,j] + A[i,j]", formats={"A": "db", "B": "bb", "C": "csr"},
                       backend="cuda-sim")
    report = nvcc.check(k, arch=("sm_90",))["sm_90"]
    assert report and all(info["spill_stores"] == 0 for info in report.values())


@settings(max_examples=examples(30), deadline=None)
@given(st.data())
def test_random_bitmap_formats_round_trip(data):
    ndim = data.draw(st.integers(1, 3))
    spec = data.draw(formats(ndim, kinds="dcb", presets=False).filter(lambda s: "b" in s))
    shape = data.draw(st.tuples(*[st.integers(0, 5)] * ndim))
    dense, t = data.draw(tensors(shape, spec))
    np.testing.assert_array_equal(t.to_numpy(), dense)
    assert t.nnz == t.to_coo()[1].size


_KIND_FORMATS = {"d": "dd", "c": "dc", "q": "coo", "p": "dp(4,2)", "b": "db"}


@pytest.mark.parametrize("letter", sorted(LEVEL_KINDS))
def test_every_kind_round_trips_and_refuses_a_truncated_array(letter):
    """Every registered kind packs, unpacks and validates through its own hooks, and
    a level array cut short is an InvalidTensorError naming the level and its kind."""
    spec = _KIND_FORMATS[letter]
    rng = np.random.default_rng(7)
    a = rng.random((5, 8)) * (rng.random((5, 8)) < 0.2)
    t = spcomp.Tensor.from_numpy(a, spec)
    np.testing.assert_array_equal(spcomp.Tensor(spec, a.shape, t.levels, t.vals).to_numpy(), a)
    l = next(i for i, lv in enumerate(t.format.levels) if lv.letter == letter)
    kind = t.format.levels[l]
    if not kind.arrays:
        return  # dense: nothing to corrupt
    levels = [dict(lv) for lv in t.levels]
    name = kind.arrays[0]
    levels[l][name] = levels[l][name][:-1]
    with pytest.raises(InvalidTensorError, match=rf"level {l} \({kind.kind_name}\): {name} "):
        spcomp.Tensor(spec, a.shape, levels, t.vals).validate("A")


def test_a_bitmap_too_large_for_any_array_is_a_shape_error():
    """A bitmap's positions follow from the shape (Level.shape_sized), so the bound on
    positions applies before any array is read."""
    one = np.zeros(1, np.int8)
    with pytest.raises(spcomp.errors.ShapeError, match="hold 4611686018427387904 positions"):
        spcomp.Tensor("bb", (2**31, 2**31), [{"map": one}, {"map": one}], np.zeros(1)).validate("A")
