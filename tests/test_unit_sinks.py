"""The sinks (spcomp/lower/outputs.py) and the output storage walk
(spcomp/runtime/outputs.OutputLayout) on their own, without a whole lowering:
each sink is built from IR variables, driven with the events a loop nest sends
(enter, innermost, exit), and the statements it returns are read as printed IR."""
from __future__ import annotations

import numpy as np
import pytest

from spcomp.errors import UnsupportedError
from spcomp.formats import Format
from spcomp.ir import nodes as n
from spcomp.ir.printer import print_ir
from spcomp.ir.types import F64, I32, I64, ptr
from spcomp.lower.context import Env, Names, TensorParams, level_array_type
from spcomp.lower.outputs import (MIN_CAPACITY, AppendSink, DenseSink, ScalarSink, WorkspaceSink,
                                  applies, dense_prefix)
from spcomp.notation import Access, IndexVar, TensorVar
from spcomp.runtime.outputs import OutputLayout

I, J, K = IndexVar("i"), IndexVar("j"), IndexVar("k")
SIZES = {i: n.Var(f"N_{i.name}", I64) for i in (I, J, K)}


def _text(stmts) -> str:
    return "\n".join(print_ir(s) for s in stmts)


def _params(name, fmt, bits=32) -> TensorParams:
    t = TensorVar(name, fmt.ndim, fmt)
    levels = [{a: n.Var(f"{name}{l + 1}_{a}", ptr(level_array_type(kind, a, bits))) for a in kind.arrays}
              for l, kind in enumerate(fmt.levels)]
    return TensorParams(name, t, levels, n.Var(f"{name}_vals", ptr(F64)))


def _out(fmt_spec, indices=(I, J)):
    fmt = Format.parse(fmt_spec, ndim=len(indices))
    p = _params("C", fmt)
    return p, Access(p.tensor, tuple(indices))


def _env(**bound):
    env = Env()
    for name, var in bound.items():
        env.bound[IndexVar(name)] = var
    return env


# ------------------------------------------------------------------ scalar, dense

def test_scalar_sink_adds_into_its_variable():
    t = n.Var("tj", F64)
    assert _text(ScalarSink(t).innermost(n.Var("v", F64), Env())) == "tj += v;"


@pytest.mark.parametrize("accumulate", [False, True])
def test_dense_sink_locates_row_major_and_accumulates_when_asked(accumulate):
    p, lhs = _out("dense")
    sink = DenseSink(p, [I, J], SIZES, accumulate=accumulate)
    text = _text(sink.innermost(n.Var("v", F64), _env(i=n.Var("i", I64), j=n.Var("j", I64))))
    assert text == ("C_vals[((i * N_j) + j)] += v;" if accumulate else "C_vals[((i * N_j) + j)] = v;")


def test_dense_sink_adds_atomically_when_a_reduction_loop_runs_in_parallel():
    p, _ = _out("dense")
    sink = DenseSink(p, [I, J], SIZES, accumulate=True)
    sink.atomic = True
    stmts = sink.innermost(n.Var("v", F64), _env(i=n.Var("i", I64), j=n.Var("j", I64)))
    assert len(stmts) == 1 and isinstance(stmts[0], n.AtomicAdd)


# ------------------------------------------------------------------ append

@pytest.mark.parametrize("spec,shape,growable", [
    ("csr", "csf", [(1, "crd"), (-1, "vals")]),
    ("dcsr", "csf", [(0, "crd"), (1, "pos"), (1, "crd"), (-1, "vals")]),
    ("coo", "coo", [(0, "crd"), (1, "crd"), (-1, "vals")]),
    ("twell(B=8,K=2)", "packed", []),
])
def test_append_sink_shapes_and_the_arrays_it_grows(spec, shape, growable):
    p, lhs = _out(spec)
    sink = AppendSink(p, lhs, False, Names(), SIZES, n.Var("capacity", I64))
    assert sink.shape == shape
    assert sink.growable() == growable


@pytest.mark.parametrize("spec,indices", [("dcd", (I, J, K)), ("cd", (I, J))])
def test_append_sink_leaves_a_dense_level_under_a_sparse_one_to_the_stand_in(spec, indices):
    """The lowerer hands the sink outputs.assembled_format's stand-in; given the
    format itself, the sink says that it is the lowerer's job."""
    p, lhs = _out(spec, indices)
    with pytest.raises(UnsupportedError, match="internal: .*dense level .* below a sparse one"):
        AppendSink(p, lhs, False, Names(), SIZES)


def test_append_sink_starts_its_counters_at_the_capacity_it_is_given():
    p, lhs = _out("csr")
    sink = AppendSink(p, lhs, False, Names(), SIZES, n.Var("capacity", I64))
    locals_ = {(1, "crd"): p.array(1, "crd"), (-1, "vals"): p.vals}
    sink.bind_growable({key: n.Var(f"{v.name}_out", ptr(v.type)) for key, v in locals_.items()}, locals_)
    text = _text(sink.prologue())
    assert "int64_t pC2 = 0;" in text
    assert f"max(capacity, {MIN_CAPACITY})" in text
    assert "C2_crd = (int32_t*)malloc" in text and "C_vals = (double*)malloc" in text


def test_append_sink_appends_only_nonzeros_when_it_drops_zeros():
    p, lhs = _out("csr")
    env = _env(i=n.Var("i", I64), j=n.Var("j", I64))
    env.pos[("out", 0)] = type("P", (), {"pos": n.Var("pC1", I64)})()
    kept = _text(AppendSink(p, lhs, False, Names(), SIZES).innermost(n.Var("v", F64), env))
    dropped = _text(AppendSink(p, lhs, True, Names(), SIZES).innermost(n.Var("v", F64), env))
    assert "!= 0.0" not in kept and "!= 0.0" in dropped
    assert "C2_crd[pC2] = (int32_t)j;" in kept


@pytest.mark.parametrize("limit", [None, 100])
def test_a_32_bit_append_sink_reports_counts_past_its_limit(limit):
    """Counts are 64-bit; what is stored into 32-bit positions is checked once, at the end."""
    p, lhs = _out("csr")
    sink = AppendSink(p, lhs, False, Names(), SIZES, n.Var("capacity", I64), index_limit=limit)
    text = _text(sink.epilogue())
    assert ("return 5;" in text) == (limit is not None)
    if limit is not None:
        assert "(pC2 > 100)" in text


def test_rows_of_a_parallel_append_are_left_to_the_stitch():
    p, lhs = _out("csr")
    one = AppendSink(p, lhs, False, Names(), SIZES)
    threads = AppendSink(p, lhs, False, Names(), SIZES)
    threads.rows_in_parallel = True
    assert "previous row ends" in _text(one.epilogue())
    assert "stitched" in _text(threads.epilogue())


def test_workspace_sink_marks_each_coordinate_once_stores_its_first_value_and_adds_the_rest():
    values, bits, touched = (n.Var(x, ptr(t)) for x, t in (("w", F64), ("bits", I64), ("list", I64)))
    count = n.Var("count", I64)
    sink = WorkspaceSink(values, bits, touched, count, J, lambda base: base + "_1")
    text = _text(sink.innermost(n.Var("v", F64), _env(j=n.Var("j", I64))))
    assert "list[count] = j;" in text and "w[j] += v;" in text
    assert text.index("bits[(j >> 6)]") < text.index("list[count]")  # tested before it is listed
    # the first touch stores (the drain leaves the row's values: never read before written)
    first, again = text.split("} else {")
    assert "w[j] = v;" in first and "w[j] +=" not in first and "w[j] += v;" in again
    # a computed value is computed once, before the branch (a variable is used as it is)
    assert "double" not in _text(sink.innermost(n.Var("v", F64), _env(j=n.Var("j", I64))))
    text = _text(sink.innermost(n.Binary("*", n.Var("a", F64), n.Var("b", F64)), _env(j=n.Var("j", I64))))
    assert text.startswith("double product_1 = (a * b);") and text.count("a * b") == 1
    assert "w[j] = product_1;" in text and "w[j] += product_1;" in text
    symbolic = WorkspaceSink(None, bits, touched, count, J, lambda base: base)  # a count phase: no values
    assert "w[" not in _text(symbolic.innermost(n.Var("v", F64), _env(j=n.Var("j", I64))))


@pytest.mark.parametrize("spec,prefix,two_phase", [("csr", 1, True), ("dcsr", 0, False), ("ddc", 2, True),
                                                   ("coo", 0, False), ("twell", 1, False)])
def test_output_shapes_for_two_phase_assembly(spec, prefix, two_phase):
    fmt = Format.parse(spec, ndim=3 if spec == "ddc" else 2)
    assert dense_prefix(fmt) == prefix
    assert applies(fmt) == two_phase


# ------------------------------------------------------------------ the storage walk

@pytest.mark.parametrize("spec,shape,keys", [
    ("csr", (4, 5), [(1, "pos"), (1, "crd"), (-1, "vals")]),
    ("dcsr", (4, 5), [(0, "pos"), (0, "crd"), (1, "pos"), (1, "crd"), (-1, "vals")]),
    ("coo", (4, 5), [(0, "pos"), (0, "crd"), (1, "crd"), (-1, "vals")]),
    ("twell(B=4,K=2)", (3, 8), [(1, "count"), (1, "crd"), (-1, "vals")]),
])
def test_output_layout_walks_each_stored_level(spec, shape, keys):
    fmt = Format.parse(spec, ndim=2)
    layout = OutputLayout(fmt, list(shape), 32, np.dtype(np.float64))
    assert layout.keys() == keys
    assert layout.first == dense_prefix(fmt)
    assert layout.dense_positions == (shape[0] if layout.first else 1)


def test_output_layout_sizes_fixed_arrays_and_builds_the_tensor():
    fmt = Format.parse("csr")
    layout = OutputLayout(fmt, [3, 4], 64, np.dtype(np.float32))
    assert layout.fixed_size(1, "pos") == 4
    assert layout.dtype_of(1, "crd") == np.int64 and layout.dtype_of(-1, "vals") == np.float32
    arrays = {(1, "pos"): np.array([0, 1, 1, 3]), (1, "crd"): np.array([2, 0, 3, 9, 9]),
              (-1, "vals"): np.array([1.0, 2.0, 3.0, 0.0, 0.0], np.float32)}
    t = layout.tensor((3, 4), lambda key, count, dtype: arrays[key][:count])
    np.testing.assert_array_equal(t.to_numpy(), [[0, 0, 1, 0], [0, 0, 0, 0], [2, 0, 0, 3]])
    packed = OutputLayout(Format.parse("twell(B=4,K=2)"), [3, 8], 32, np.dtype(np.float64))
    assert packed.fixed_size(1, "count") == 3 * 2 and packed.fixed_size(1, "crd") == 3 * 2 * 2
    assert packed.dtype_of(1, "crd") == np.int16 and packed.dtype_of(1, "count") == np.int32
    assert I32 == level_array_type(Format.parse("csr").levels[1], "pos", 32)
