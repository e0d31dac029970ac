"""lower/tiles.py on its own: a function over ``[lo, hi)`` of two row loops, its dense
temporary turned into a tile of rows, compiled and run; and the functions it refuses."""
from __future__ import annotations

import numpy as np
import pytest

from spcomp.backends.cpu import compile_module
from spcomp.ir import nodes as n
from spcomp.ir.types import F64, I64, ptr
from spcomp.ir.verify import verify_module
from spcomp.lower import tiles

LO, HI, N = n.Var("lo", I64), n.Var("hi", I64), n.Var("N", I64)
T, X, Y = n.Var("T_vals", ptr(F64)), n.Var("x_vals", ptr(F64)), n.Var("y_vals", ptr(F64))
I, I2, Q, Q2 = (n.Var(v, I64) for v in ("i", "i2", "q", "q2"))


def _at(row, col):
    return n.Binary("+", n.Binary("*", row, N), col)


ROWS = n.Var("N_rows", I64)


def _function(prefix2=(), suffix1=(), second_stores=None, chunks=True):
    """``T[i, q] += 2 x[i, q]`` (adding into T, so a tile must start zeroed), then
    ``y[i] += T[i, q]`` for each q: two loops over ``lo .. hi`` (else, a one-thread
    function, over ``0 .. N_rows``)."""
    lo, hi = (LO, HI) if chunks else (n.i64(0), ROWS)
    add = n.Store(T, _at(I, Q), n.Binary("+", n.Load(T, _at(I, Q)),
                                         n.Binary("*", n.Load(X, _at(I, Q)), n.const(2, F64))))
    first = n.Block((n.Comment("statement 1"), n.For(I, lo, hi, n.Block((n.For(Q, n.i64(0), N, n.Block((add,))),))),
                     *suffix1))
    into = second_stores or Y
    read = n.Store(into, I2, n.Binary("+", n.Load(into, I2), n.Load(T, _at(I2, Q2))))
    second = n.Block((*prefix2, n.For(I2, lo, hi, n.Block((n.For(Q2, n.i64(0), N, n.Block((read,))),)))))
    return n.Function("two", (LO, HI, N, T, X, Y) if chunks else (ROWS, N, T, X, Y),
                      n.Block((first, second, n.Return(n.STATUS_OK))))


@pytest.mark.parametrize("chunks", [True, False])
def test_a_tile_of_rows_gives_the_whole_arrays_result(monkeypatch, chunks):
    monkeypatch.setattr(tiles, "TILE_VALUES", 5)   # N = 2: tiles of 2 rows, the last one partial
    fn = tiles.tile_workspaces(_function(chunks=chunks), [(T, [N], True)])
    assert fn is not None and T not in fn.params
    assert [p.name for p in fn.params] == ["lo", "hi"] * chunks + ["N_rows"] * (not chunks) + ["N", "x_vals", "y_vals"]
    verify_module(n.Module((fn,), fn.name))
    run = compile_module(n.Module((fn,), fn.name)).function("two")
    x = np.arange(20.0).reshape(10, 2)
    y = np.zeros(10)
    lo, hi = (1, 8) if chunks else (0, 7)
    assert run(*((lo, hi) if chunks else (hi,)), 2, x.ctypes.data, y.ctypes.data) == 0
    want = np.zeros(10)
    want[lo:hi] = 2 * x[lo:hi].sum(axis=1)
    assert np.array_equal(y, want)


def test_refusals(monkeypatch):
    assert tiles.tile_workspaces(_function(), []) is None
    # code after a loop other than the last (it would run after every tile)
    check = n.If(n.Binary(">", N, n.i64(9)), n.Block((n.Return(5),)))
    assert tiles.tile_workspaces(_function(suffix1=(check,)), [(T, [N], True)]) is None
    # a later statement's declarations touching an array an earlier one uses
    touch = n.Declare(n.Var("first_x", F64), n.Load(X, n.i64(0)))
    assert tiles.tile_workspaces(_function(prefix2=(touch,)), [(T, [N], True)]) is None
    # a later loop storing into an array an earlier one reads
    assert tiles.tile_workspaces(_function(second_stores=X), [(T, [N], True)]) is None
    monkeypatch.setattr(tiles, "ENABLED", False)
    assert tiles.tile_workspaces(_function(), [(T, [N], True)]) is None


@pytest.mark.parametrize("widths,text", [([["N_k"]], "max(1, 16384 // (N_k))"),
                                         ([["N_j", "N_k"], []], "max(1, 16384 // (N_j*N_k + 1))")])
def test_rows_text(widths, text):
    assert tiles.tile_rows_text(widths) == text
