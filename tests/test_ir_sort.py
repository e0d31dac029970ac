"""The IR's one sort (spcomp/ir/sort.py), run through both backends.

Each case sorts a slice ``a[start:start + count]`` of a padded array in place with an
IR ``Sort`` statement: on the CPU backend (the helper lowered to LLVM) and on cuda-sim
(the helper printed as a ``__device__`` function), one kernel per element type. Both
must give ``np.sort``'s result and leave the padding alone: empty and one-element
slices, the insertion/heap sort threshold (16, 17), duplicates, sorted and reversed
input, negative values and the types' extremes.
"""
from __future__ import annotations

import numpy as np
import pytest

from spcomp.backends.cpu import compile_module
from spcomp.backends.cuda import emit_module, sim
from spcomp.ir import F32, F64, I8, I16, I32, I64, Function, Module, Sort, Var, block, ptr
from spcomp.ir import nodes as n
from spcomp.ir.printer import print_ir
from spcomp.ir.sort import INSERTION_MAX, helper_name, sort_function, sortable, sorted_types
from spcomp.ir.types import BF16, BOOL, to_numpy
from spcomp.ir.verify import verify_function

TYPES = (I8, I16, I32, I64, F32, F64)
PAD = 3  # elements on each side of the sorted slice


def sort_module() -> Module:
    fns = []
    for t in TYPES:
        a, start, count = Var("a", ptr(t)), Var("start", I64), Var("count", I64)
        fns.append(Function(f"sort_{t}", (a, start, count), block(Sort(a, start, count))))
    return Module(tuple(fns))


def cases():
    rng = np.random.default_rng(20)
    out = []
    for t in TYPES:
        dtype = to_numpy(t)
        if t.is_int:
            info = np.iinfo(dtype)
            draw = lambda k, lo=int(info.min), hi=int(info.max): rng.integers(lo, hi, k, endpoint=True)
            extremes = [info.min, info.max, 0, -1, info.max, info.min]
        else:
            draw = lambda k: rng.standard_normal(k) * 1e3
            extremes = [np.inf, -np.inf, 0.0, -1.5, np.finfo(dtype).max, np.finfo(dtype).min]
        for k in (0, 1, 2, INSERTION_MAX, INSERTION_MAX + 1, 100, 1000):
            out.append((t, draw(k).astype(dtype)))
            out.append((t, (draw(k) % 4).astype(dtype)))  # few distinct values: many duplicates
        out.append((t, np.arange(300).astype(dtype)))            # sorted
        out.append((t, np.arange(300)[::-1].astype(dtype)))      # reversed
        out.append((t, np.full(50, 7).astype(dtype)))            # all equal
        out.append((t, np.array(extremes * 5, dtype=dtype)))     # the type's extremes
    return out


CASES = cases()


def padded(values):
    sentinel = np.array([5] * PAD, dtype=values.dtype)
    return np.concatenate([sentinel, values, sentinel])


def check(result, values):
    np.testing.assert_array_equal(result[PAD:PAD + len(values)], np.sort(values, kind="stable"))
    assert (result[:PAD] == 5).all() and (result[PAD + len(values):] == 5).all()


@pytest.mark.parametrize("t", TYPES + (BOOL, BF16), ids=str)
def test_the_helper_is_valid_ir_and_sortable_types_are_numbers(t):
    assert sortable(t) == (t not in (BOOL, BF16))
    if sortable(t):
        f = sort_function(t)
        verify_function(f)
        assert f.name == helper_name(t) and "while" in print_ir(f)
    assert sorted_types(sort_module()) == list(TYPES)


def test_sort_on_the_cpu():
    cm = compile_module(sort_module())
    for t, values in CASES:
        a = padded(values)
        assert cm.function(f"sort_{t}")(a.ctypes.data, PAD, len(values)) == 0
        check(a, values)


@pytest.mark.skipif(sim.compiler() is None, reason="cuda-sim needs a host C++ compiler (g++)")
def test_sort_on_cuda_sim():
    source = emit_module(sort_module())
    assert all(f"__device__ void spc_sort_{t}(" in source for t in TYPES)
    mod = sim.compile_sim(source)
    for t, values in CASES:
        a = padded(values)
        assert mod.launch(f"sort_{t}", [a, PAD, len(values)], grid=1, block=1) == 0
        check(a, values)


@pytest.mark.skipif(sim.compiler() is None, reason="cuda-sim needs a host C++ compiler (g++)")
def test_many_threads_sort_their_own_rows_on_cuda_sim():
    """A thread per row, rows of every length around the threshold and above, on
    several blocks at once: the helper keeps no state between calls."""
    nrows, pos, crd, i = Var("n", I64), Var("pos", ptr(I64)), Var("crd", ptr(I32)), Var("i", I64)
    row = n.Load(pos, i)
    body = block(n.For(i, n.i64(0), nrows, block(
        Sort(crd, row, n.Binary("-", n.Load(pos, n.Binary("+", i, n.i64(1))), row))), parallel="gpu-thread"))
    mod = sim.compile_sim(emit_module(Module((Function("sort_rows", (nrows, pos, crd), body),))))
    rng = np.random.default_rng(21)
    lens = rng.integers(0, 70, 300)
    indptr = np.concatenate([[0], np.cumsum(lens)]).astype(np.int64)
    values = rng.integers(-50, 50, int(indptr[-1])).astype(np.int32)
    got = values.copy()
    assert mod.launch("sort_rows", [len(lens), indptr, got], grid=5, block=64, workers=2) == 0
    want = np.concatenate([np.sort(values[a:b]) for a, b in zip(indptr[:-1], indptr[1:])])
    np.testing.assert_array_equal(got, want)
