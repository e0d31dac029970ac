"""The level protocol as the extension point (spcomp/formats/level.py): level kinds
written here, in a test, and registered for the test's duration only, are parsed,
packed, validated, read and written by generated kernels (CPU and cuda-sim) with no
edit anywhere in spcomp -- everything asks the level what it can do. ``g`` ("grid")
stores what a dense level stores and ``m`` ("mask") a byte per coordinate as a
bitmap does, with its own iterator; both are their own classes, so no code that
asks ``isinstance(level, Dense)`` or compares kind names would recognise them.
The insert hooks of the built-in kinds that insert are unit-tested here too."""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import spcomp
from spcomp.errors import FormatError
from spcomp.formats import LEVEL_KINDS, Format
from spcomp.formats.compressed import Compressed
from spcomp.formats.level import Level, LevelIterator, PosInfo, StorageArray
from spcomp.formats.packed import PackedBlock
from spcomp.ir import nodes as n
from spcomp.ir.printer import print_ir
from spcomp.ir.types import I8, I64, ptr
from spcomp.testing import check_kernel
from spcomp.testing.strategies import all_format_strings, formats, output_formats, tensors

from conftest import examples


@dataclass(frozen=True)
class Grid(Level):
    """Every coordinate ``0..N-1`` under every parent position, at ``parent * N + c``."""
    letter: ClassVar[str] = "g"
    kind_name: ClassVar[str] = "grid"
    shape_sized: ClassVar[bool] = True
    inserts: ClassVar[bool] = True

    is_dense = property(lambda self: True)
    locatable = property(lambda self: True)
    full = property(lambda self: True)

    def num_positions(self, parent_positions, dim_size, arrays):
        return parent_positions * dim_size

    def pack(self, ctx):
        return {}, ctx.ppos * ctx.N + ctx.coords, ctx.P * ctx.N

    def unpack(self, arrays, cur, N):
        positions = (cur[:, None] * N + np.arange(N, dtype=np.int64)).reshape(-1)
        return positions, positions - np.repeat(cur, N) * N, np.full(len(cur), N, np.int64)

    def validate(self, ctx):
        ctx.same = None
        return ctx.P * ctx.N

    def assembled_as(self, under_sparse, levels_below=False):
        """Appended compressed under a sparse level, as a dense level is."""
        return Compressed() if under_sparse else self

    def positions_expr(self, parent_count, dim, arrays):
        return self.insert_size(parent_count, dim)

    def insert_size(self, parent_size, dim):
        return n.Binary("*", parent_size, dim)

    def insert_position(self, parent_pos, dim, coord):
        return coord if parent_pos is None else n.Binary("+", n.Binary("*", parent_pos, dim), coord)

    def locate(self, la, coord):
        return PosInfo(self.insert_position(la.parent.pos, la.dim, coord))


@dataclass(frozen=True)
class Mask(Level):
    """A sparse kind: ``keep[q * N + c]`` is 1 where coordinate ``c`` of parent ``q`` is
    stored; values exist at every position (those of unset bytes are 0 and unread)."""
    letter: ClassVar[str] = "m"
    kind_name: ClassVar[str] = "mask"
    arrays: ClassVar[tuple] = ("keep",)
    storage: ClassVar[tuple] = (StorageArray("keep", "membership", "int8: 1 stored, 0 not"),)
    has_unused_positions: ClassVar[bool] = True
    shape_sized: ClassVar[bool] = True

    def num_positions(self, parent_positions, dim_size, arrays):
        return parent_positions * dim_size

    def fixed_array_size(self, array, parent_positions, dim_size):
        return parent_positions * dim_size if array == "keep" else None

    def array_type(self, array, index_bits):
        return I8

    def assembled_as(self, under_sparse, levels_below=False):
        return Compressed()

    def pack(self, ctx):
        positions = ctx.ppos * ctx.N + ctx.coords
        keep = np.zeros(ctx.P * ctx.N, np.int8)
        keep[positions] = 1
        return {"keep": keep}, positions, ctx.P * ctx.N

    def unpack(self, arrays, cur, N):
        every = (cur[:, None] * N + np.arange(N, dtype=np.int64)).reshape(-1)
        kept = np.asarray(arrays["keep"])[every] != 0
        counts = kept.reshape(len(cur), N).sum(axis=1) if len(cur) else np.zeros(0, np.int64)
        return every[kept], every[kept] - np.repeat(cur, counts) * N, counts

    def validate(self, ctx):
        keep = ctx.index_array("keep")
        if keep.shape[0] != ctx.P * ctx.N:
            ctx.fail(f"keep has {keep.shape[0]} entries but needs {ctx.P * ctx.N}")
        if ((keep != 0) & (keep != 1)).any():
            ctx.fail("keep holds only 0 and 1")
        ctx.same = None
        return ctx.P * ctx.N

    def positions_expr(self, parent_count, dim, arrays):
        return n.Binary("*", parent_count, dim)

    def iterator(self, la, fresh):
        return MaskIterator(la, fresh)


class MaskIterator(LevelIterator):
    """Coordinates ``c`` of parent ``q`` whose byte is set, in order (the protocol's
    init/valid/load/position/advance; ``loop`` is the base class's)."""

    def __init__(self, la, fresh):
        super().__init__(la, fresh)
        self.c = n.Var(fresh("c" + la.name), I64)
        self.base = n.Var(fresh("p" + la.name + "_base"), I64)

    def _skip(self):
        at = n.Binary("+", self.base, self.c)
        unset = n.Binary("==", n.Load(self.la.arrays["keep"], at), n.Const(0, I8))
        return n.While(n.Binary("&&", n.Binary("<", self.c, self.la.dim), unset),
                       n.block(n.Assign(self.c, n.Binary("+", self.c, n.i64(1)))))

    def init(self):
        return [n.Declare(self.base, n.Binary("*", self.la.parent.pos, self.la.dim)),
                n.Declare(self.c, n.i64(0)), self._skip()]

    def valid(self):
        return n.Binary("<", self.c, self.la.dim)

    def load(self, coord):
        return [n.Assign(coord, self.c)]

    def position(self):
        return PosInfo(n.Binary("+", self.base, self.c))

    def advance(self):
        return [n.Assign(self.c, n.Binary("+", self.c, n.i64(1))), self._skip()]


TEST_KINDS = {"g": Grid, "m": Mask}


@pytest.fixture
def grid(monkeypatch):
    """The test kinds (grid ``g``, mask ``m``) registered for one test."""
    for letter, kind in TEST_KINDS.items():
        monkeypatch.setitem(LEVEL_KINDS, letter, kind)
    return Grid


SIZES = {"i": 5, "j": 4, "k": 3}


def test_an_unregistered_letter_is_refused_and_a_registered_one_parses(monkeypatch):
    with pytest.raises(FormatError, match="cannot read a level"):
        Format.parse("dg")
    monkeypatch.setitem(LEVEL_KINDS, "g", Grid)
    assert Format.parse("dg").levels == (LEVEL_KINDS["d"](), Grid())
    assert Format.parse("gc:1,0").spec() == "gc:1,0"
    with pytest.raises(FormatError, match="g"):
        Format.parse("dx")


@pytest.mark.parametrize("spec", ["g", "dg", "gd", "gc", "cg", "gg:1,0", "gcg", "m", "dm", "md", "cm:1,0", "gmc"])
def test_test_kinds_round_trip(grid, spec):
    ndim = len(spec.split(":")[0])
    rng = np.random.default_rng(ndim)
    a = rng.random((4, 3, 5)[:ndim]) * (rng.random((4, 3, 5)[:ndim]) < 0.5)
    t = spcomp.Tensor.from_numpy(a, spec)
    np.testing.assert_array_equal(t.to_numpy(), a)
    again = spcomp.Tensor(spec, a.shape, [dict(lv) for lv in t.levels], t.vals.copy()).validate()
    np.testing.assert_array_equal(again.to_numpy(), a)


@pytest.mark.filterwarnings("ignore::spcomp.errors.TranspositionWarning")
@pytest.mark.parametrize("spec", ["dg", "gd", "gg", "gc", "cg", "gg:1,0", "cg:1,0", "dm", "mc", "mm", "gm:1,0"])
def test_kernels_read_and_write_test_kinds(grid, spec):
    check_kernel("C[i,j] = A[i,j] * B[i,j] + A[i,j]", {"A": spec, "B": "csr", "C": spec},
                 sizes=SIZES, density=0.4, seed=1)
    check_kernel("y[i] = A[i,j] * x[j]", {"A": spec, "x": "g"}, sizes=SIZES, density=0.5, seed=2)
    check_kernel("C[i,j] = A[i,k] * B[k,j]", {"A": spec, "B": "dc", "C": spec}, sizes=SIZES, density=0.5)
    check_kernel("C[i,j] = A[i,j] * B[i,j] + A[i,j]", {"A": spec, "B": "dcsr", "C": spec},
                 sizes=SIZES, density=0.4, seed=1, backend="cuda-sim")


@pytest.mark.filterwarnings("ignore::spcomp.errors.TranspositionWarning")
@settings(max_examples=examples(25), deadline=None)
@given(data=st.data())
def test_random_formats_with_the_registered_kind_match_einsum(data):
    """The test strategies draw the new kind (registered: spelled by its letter alone)
    in input and output formats, and kernels over them match einsum."""
    with pytest.MonkeyPatch.context() as mp:
        for letter, kind in TEST_KINDS.items():
            mp.setitem(LEVEL_KINDS, letter, kind)
        a_fmt = data.draw(formats(2, kinds="dcgm", presets=False))
        c_fmt = data.draw(output_formats(2, allow_packed=False))
        i, j = data.draw(st.integers(0, 5)), data.draw(st.integers(0, 5))
        dense, a = data.draw(tensors((i, j), a_fmt))
        check_kernel("C[i,j] = A[i,j] * 2 + B[i,j]", {"A": a_fmt, "B": "csr", "C": c_fmt},
                     operands={"A": a}, sizes={"i": i, "j": j}, seed=3)


# ------------------------------------------------------- kinds with parameters

@dataclass(frozen=True)
class Slots(PackedBlock):
    """Packed-block storage under its own letter and class, ``s(B,K)`` / ``s(K)``: a kind
    whose spelling takes parameters and an ``unordered`` flag, which the strategies draw
    through the kind's own ``draw_parameters`` and ``drawn_flags`` without knowing it."""
    letter: ClassVar[str] = "s"
    kind_name: ClassVar[str] = "slots"

    def spec(self) -> str:
        return "s" + super().spec()[1:]


@pytest.fixture
def slots(monkeypatch):
    monkeypatch.setitem(LEVEL_KINDS, "s", Slots)
    return Slots


def test_strategies_draw_a_registered_kind_with_parameters_and_flags(slots):
    """Input formats over ``d`` and ``s`` hold only those kinds, in both spellings
    (``s(B,K)``, ELL ``s(K)``), with and without the flag; output formats put a roomy
    one (K = B: no block can overflow) last under dense levels; the exhaustive lists
    spell it from the block sizes given."""
    seen, outputs = set(), set()

    @settings(max_examples=150, deadline=None, database=None)
    @given(data=st.data())
    def draw(data):
        spec = data.draw(formats(2, kinds="ds", allow_unordered=True, presets=False, max_block=4))
        levels = Format.parse(spec, ndim=2).levels
        assert {type(x) for x in levels} <= {LEVEL_KINDS["d"], Slots}, spec
        for x in levels:
            if isinstance(x, Slots):
                assert 1 <= x.K <= (x.B or 4) <= 4, spec
                seen.add((x.B is None, x.ordered))
        out = Format.parse(data.draw(output_formats(2, allow_order=False, max_block=4)), ndim=2)
        if any(isinstance(x, Slots) for x in out.levels):
            last = out.levels[-1]
            assert isinstance(last, Slots) and last.K == (last.B or 4), out
            outputs.add(last.B is None)

    draw()
    assert seen == {(True, True), (True, False), (False, True), (False, False)}
    assert outputs
    assert all_format_strings(1, kinds="s", blocks=((2, 2), (3, 1))) == ["s(2,2)", "s(3,1)"]


@settings(max_examples=examples(15), deadline=None)
@given(data=st.data())
def test_kernels_over_a_drawn_kind_with_parameters_match_einsum(data):
    with pytest.MonkeyPatch.context() as mp:
        mp.setitem(LEVEL_KINDS, "s", Slots)
        a_fmt = data.draw(formats(2, kinds="dcs", presets=False, max_block=4))
        c_fmt = data.draw(output_formats(2, max_block=4, allow_order=False))
        i, j = data.draw(st.integers(0, 5)), data.draw(st.integers(0, 4))  # j: an ELL s(4) row's slots
        _dense, a = data.draw(tensors((i, j), a_fmt))
        check_kernel("C[i,j] = A[i,j] * 2 + B[i,j]", {"A": a_fmt, "B": "csr", "C": c_fmt},
                     operands={"A": a}, sizes={"i": i, "j": j}, seed=4)


@pytest.mark.parametrize("a_fmt, c_fmt", [("ds(2,1)", "ds(4,4)"), ("s(3,2)c", "ds(4)"), ("cs(2,unordered)", "dd")])
def test_kernels_read_and_write_a_registered_kind_with_parameters(slots, a_fmt, c_fmt):
    """(An unordered level is walked alone: the compiler refuses to merge it.)"""
    if Format.parse(a_fmt).levels[-1].ordered:
        check_kernel("C[i,j] = A[i,j] * 2 + B[i,j]", {"A": a_fmt, "B": "csr", "C": c_fmt},
                     sizes={"i": 5, "j": 4}, density=0.6, seed=5)
    else:
        check_kernel("C[i,j] = A[i,j] * 2", {"A": a_fmt, "C": c_fmt}, sizes={"i": 5, "j": 4}, density=0.6, seed=5)


# ------------------------------------------------------------------ insert hooks

def _text(stmts) -> str:
    return "\n".join(print_ir(s) for s in stmts)


P, N, C = n.Var("p", I64), n.Var("N", I64), n.Var("c", I64)


@pytest.mark.parametrize("letter", sorted(k for k, kind in LEVEL_KINDS.items() if kind.inserts))
def test_inserting_levels_place_a_coordinate_row_major(letter):
    """Every kind that inserts (dense, bitmap) puts coordinate ``c`` of parent position
    ``p`` at ``p * N + c`` (``c`` under the root) among ``p * N`` positions."""
    level = LEVEL_KINDS[letter]()
    assert print_ir(level.insert_position(P, N, C)) == "((p * N) + c)"
    assert level.insert_position(None, N, C) is C
    assert print_ir(level.insert_size(P, N)) == "(p * N)"


def test_a_dense_level_inserts_without_marks():
    dense = LEVEL_KINDS["d"]()
    assert dense.insert_coord({}, P, C) == [] and dense.insert_init({}, P, N, str) == []
    assert dense.insert_finalize({}, N) == []


def test_a_bitmap_level_marks_what_it_inserts_and_clears_its_range():
    bitmap = LEVEL_KINDS["b"]()
    arrays = {"map": n.Var("map", ptr(I8))}
    assert _text(bitmap.insert_coord(arrays, P, C)) == "map[p] = 1;"
    init = _text(bitmap.insert_init(arrays, n.i64(0), N, lambda name: name))
    assert "map[p_map] = 0;" in init and "N" in init


def test_kinds_that_cannot_insert_say_so():
    assert {k for k, kind in LEVEL_KINDS.items() if kind.inserts} == {"d", "b"}
    with pytest.raises(NotImplementedError):
        LEVEL_KINDS["c"]().insert_position(P, N, C)


def test_the_dense_sink_asks_each_level_where_to_insert_and_what_to_mark():
    """An output whose levels all insert is written through the levels: a bitmap level
    marks its byte beside the value's store, a dense one only places it."""
    from spcomp.lower.context import Env, TensorParams, level_array_type
    from spcomp.lower.outputs import DenseSink
    from spcomp.notation import IndexVar, TensorVar
    from spcomp.ir.types import F64
    fmt = Format.parse("db")
    levels = [{a: n.Var(f"C{l + 1}_{a}", ptr(level_array_type(kind, a, 32))) for a in kind.arrays}
              for l, kind in enumerate(fmt.levels)]
    p = TensorParams("C", TensorVar("C", 2, fmt), levels, n.Var("C_vals", ptr(F64)))
    i, j = IndexVar("i"), IndexVar("j")
    env = Env()
    env.bound[i], env.bound[j] = n.Var("i", I64), n.Var("j", I64)
    sink = DenseSink(p, [i, j], {i: n.Var("N_i", I64), j: n.Var("N_j", I64)}, accumulate=False)
    assert _text(sink.innermost(n.Var("v", F64), env)) == ("C2_map[((i * N_j) + j)] = 1;\n"
                                                           "C_vals[((i * N_j) + j)] = v;")


def test_an_output_whose_levels_all_insert_is_written_in_place():
    """``db``: the append sink's 'insert' shape places the value through the levels and
    marks its byte, grows nothing and keeps the format (no stand-in, no repacking)."""
    from spcomp.lower.context import Env, Names, TensorParams, level_array_type
    from spcomp.lower.outputs import AppendSink, assembled_format
    from spcomp.notation import Access, IndexVar, TensorVar
    from spcomp.ir.types import F64
    fmt = Format.parse("db")
    assert assembled_format(fmt) is fmt and assembled_format(Format.parse("cb")) != Format.parse("cb")
    levels = [{a: n.Var(f"C{l + 1}_{a}", ptr(level_array_type(kind, a, 32))) for a in kind.arrays}
              for l, kind in enumerate(fmt.levels)]
    p = TensorParams("C", TensorVar("C", 2, fmt), levels, n.Var("C_vals", ptr(F64)))
    i, j = IndexVar("i"), IndexVar("j")
    sizes = {i: n.Var("N_i", I64), j: n.Var("N_j", I64)}
    sink = AppendSink(p, Access(p.tensor, (i, j)), False, Names(), sizes, n.Var("capacity", I64))
    assert sink.shape == "insert" and sink.growable() == [] and sink.addresses(j)
    env = Env()
    env.bound[i], env.bound[j] = n.Var("i", I64), n.Var("j", I64)
    text = _text(sink.enter(i, env) + sink.innermost(n.Var("v", F64), env))
    assert "C2_map[((pC1 * N_j) + j)] = 1;" in text and "C_vals[((pC1 * N_j) + j)] = value" in text
