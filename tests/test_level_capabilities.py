"""The capabilities a level declares in place of its kind name (spcomp/formats/level.py):
``fixed_array_size``, ``compressed_segments`` and ``parameters``, checked for every kind
in the registry against what its own ``pack`` stores, so a newly registered kind is
covered without a line here; and the test strategies draw every registered kind."""
from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp
from hypothesis import given, settings
from hypothesis import strategies as st

import spcomp
from spcomp.errors import FormatError, PackedOverflowError
from spcomp.formats import LEVEL_KINDS, Format
from spcomp.testing.strategies import all_format_strings, fit_packed, formats, output_formats

KINDS = sorted(LEVEL_KINDS)


def example_level(letter: str):
    """A small instance of a kind: its parameters all 2 (``p(2,2)``)."""
    kind = LEVEL_KINDS[letter]
    return kind.from_spec([], [2] * len(kind.parameters), letter)


def matrix_format(level) -> str:
    """A 2-level format whose second level is ``level``: under a dense level, or, for a
    kind tied to its parent's positions (a singleton), under a non-unique compressed one."""
    return ("c(nonunique)" if level.aligned_with_parent else "d") + level.spec()


A = np.array([[0, 1.5, 0, 2, 0], [0, 0, 0, 0, 0], [3, 0, 0, 0, -1], [0, 0.5, 0.5, 0, 0]])


@pytest.mark.parametrize("letter", KINDS)
def test_fixed_array_sizes_are_what_pack_stores(letter):
    """Every array a level says is sized by shape alone has that many entries once packed,
    and a shape-sized last level owns exactly its vals."""
    level = example_level(letter)
    fmt = Format.parse(matrix_format(level), ndim=2)
    t = spcomp.Tensor.from_numpy(A, format=fmt)
    np.testing.assert_array_equal(t.to_numpy(), A)
    top, below = t.format.levels
    P = top.num_positions(1, A.shape[0], t.levels[0])
    for array in below.arrays:
        n = below.fixed_array_size(array, P, A.shape[1])
        assert n is None or n == len(t.levels[1][array]), (letter, array, n)
    assert below.fixed_array_size("no-such-array", P, A.shape[1]) is None
    if below.shape_sized:
        assert below.num_positions(P, A.shape[1], {}) == len(t.vals)


@pytest.mark.parametrize("letter", KINDS)
def test_compressed_segments_is_what_scipy_shares(letter):
    """A dense-over-``level`` matrix hands SciPy its own arrays exactly when the level
    says it stores CSR's segments; otherwise to_scipy copies, with the same values."""
    level = example_level(letter)
    if level.aligned_with_parent:
        assert not level.compressed_segments
        return
    t = spcomp.Tensor.from_scipy(sp.csr_array(A), format="d" + level.spec())
    m = t.to_scipy("csr")
    np.testing.assert_array_equal(m.toarray(), A)
    shared = "crd" in t.levels[1] and np.shares_memory(m.indices, t.levels[1]["crd"])
    assert shared == level.compressed_segments, letter


@pytest.mark.parametrize("letter", KINDS)
def test_parameters_are_what_the_spelling_takes(letter):
    """A kind with no parameters refuses a number; one with parameters needs them; the
    spelling of the example level parses back to it."""
    kind = LEVEL_KINDS[letter]
    level = example_level(letter)
    assert Format.parse(("d" if not level.aligned_with_parent else "c(nonunique)") + level.spec(),
                        ndim=2).levels[1] == level
    with pytest.raises(FormatError):
        kind.from_spec([], [] if kind.parameters else [2], letter)


def test_only_compressed_stores_csr_segments_among_the_builtin_kinds():
    assert {k for k in KINDS if example_level(k).compressed_segments} == {"c"}
    assert not LEVEL_KINDS["c"].from_spec(["unordered"], [], "c(unordered)").compressed_segments


@pytest.mark.parametrize("letter", [k for k in KINDS if not LEVEL_KINDS[k].aligned_with_parent])
@settings(max_examples=25, deadline=None)
@given(data=st.data())
def test_formats_draw_every_registered_kind(letter, data):
    """``formats(kinds=letter)`` gives a level of that kind, whatever was registered."""
    spec = data.draw(formats(2, kinds=letter, presets=False, allow_order=False))
    assert {type(l) for l in Format.parse(spec, ndim=2).levels} == {LEVEL_KINDS[letter]}


def test_default_kinds_and_exhaustive_lists_come_from_the_registry():
    free = [k for k, kind in LEVEL_KINDS.items() if not kind.parameters and not kind.aligned_with_parent]
    assert sorted(all_format_strings(1, kinds="".join(LEVEL_KINDS), blocks=((2, 2),))) == sorted(free + ["p(2,2)"])
    assert set(all_format_strings(2, kinds="".join(free), blocks=())) == {a + b for a in free for b in free}


@settings(max_examples=60, deadline=None)
@given(data=st.data())
def test_output_formats_parse_and_use_registered_letters(data):
    spec = data.draw(output_formats(2))
    for level in Format.parse(spec, ndim=2).levels:
        assert LEVEL_KINDS[level.spec()[0]] is type(level)


@pytest.mark.parametrize("letter", [k for k in KINDS if not LEVEL_KINDS[k].aligned_with_parent])
def test_fit_packed_trims_exactly_the_fixed_slot_kinds(letter):
    """``fit_packed`` keeps a full matrix whole unless the level has fixed slots; then it
    drops just enough that the level packs without overflow."""
    kind = LEVEL_KINDS[letter]
    try:  # few slots (p(3,1)) where the kind takes parameters, so a full row overflows
        level = kind.from_spec([], [3] + [1] * (len(kind.parameters) - 1), letter) if kind.parameters \
            else example_level(letter)
    except FormatError:
        level = example_level(letter)
    spec = "d" + level.spec()
    full = np.arange(1.0, 16.0).reshape(3, 5)
    kept = fit_packed(full, spec)
    assert set(np.flatnonzero(kept)) <= set(np.flatnonzero(full))
    if not level.fixed_slots:
        np.testing.assert_array_equal(kept, full)
        return
    with pytest.raises(PackedOverflowError):
        spcomp.Tensor.from_numpy(full, format=spec)
    np.testing.assert_array_equal(spcomp.Tensor.from_numpy(kept, format=spec).to_numpy(), kept)
