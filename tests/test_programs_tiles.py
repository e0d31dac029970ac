"""Tile workspaces: a dense temporary whose reader keeps a loop of its own, as tiles of rows.

In a fused run's function over chunks of rows, a dense temporary ``T`` read by a
statement that appends a sparse output row by row (its loop not joined to the
writer's) is a local array of a few rows (``lower/tiles.py``): every statement
runs over one tile of rows, then the next. Random 2- and 3-statement programs are
checked against numpy.einsum and, bit for bit, against the same program built
with tiles off (``lower.tiles.ENABLED``), at 1 and 2 threads (the split forced,
native driver or Python pool: the function over chunks of rows; one thread, or
too few rows to split: the one-thread function, tiled too), with tiles of 1 to 4 rows (``TILE_VALUES`` made
small) so that chunks hold several tiles and a last partial one; the runtime's
allocations show that the whole temporary is no longer allocated.
"""
from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp
from hypothesis import given, settings
from hypothesis import strategies as st

import spcomp
from spcomp.lower import tiles
from spcomp.runtime import program as runtime_program

from conftest import examples
from test_programs_chunk_formats import assert_identical
from test_programs_chunks import call_split, compile_quietly, dense_of

J, K = 6, 7
FIRST = [("T[i,k] = A[i,j] * B[j,k]", lambda e: e["A"] @ e["B"]),
         ("T[i,k] = D[i,k] * E[i,k]", lambda e: e["D"] * e["E"])]
MIDDLE = [("U[i,k] = T[i,k] * 2", lambda e: 2 * e["T"]),
          ("U[i,k] = T[i,k] + E[i,k]", lambda e: e["T"] + e["E"])]
LAST = [("C[i,k] = {p}[i,k] * D[i,k]", lambda e, p: e[p] * e["D"]),
        ("C[i,k] = {p}[i,k] * D[i,k] + F[i,k]", lambda e, p: e[p] * e["D"] + e["F"])]
INPUTS = {"A": "csr", "D": "csr", "F": "csr"}


@st.composite
def programs(draw):
    """``(text, formats, temporary, reference)``: a dense temporary written row by
    row (maybe a second one computed from it in the same loop), read by a last
    statement whose output is csr, dcsr, coo or dense."""
    (first, ref1), three = draw(st.sampled_from(FIRST)), draw(st.booleans())
    texts, refs, last = [first], [("T", ref1)], "T"
    if three:
        middle, ref2 = draw(st.sampled_from(MIDDLE))
        texts.append(middle)
        refs.append(("U", ref2))
        last = "U"
    text, ref = draw(st.sampled_from(LAST))
    texts.append(text.format(p=last))
    refs.append(("C", lambda e, ref=ref, p=last: ref(e, p)))
    fmt = draw(st.sampled_from(["csr", "dcsr", "coo", "dense"]))
    text = "\n".join(texts)
    given = {**INPUTS, "C": fmt, "T": "dense", "U": "dense"}  # dense temporaries as given (D*E would be csr)
    return text, {n: f for n, f in given.items() if f"{n}[" in text}, last, refs


def operands(seed: int, rows: int, density: float) -> dict:
    rng = np.random.default_rng(seed)
    E = rng.standard_normal((rows, K))
    E[rng.random(E.shape) < 0.3] = 0
    return {"A": sp.random(rows, J, density=density, format="csr", random_state=seed),
            "B": rng.standard_normal((J, K)), "E": E,
            "D": sp.random(rows, K, density=density, format="csr", random_state=seed + 1),
            "F": sp.random(rows, K, density=density, format="csr", random_state=seed + 2)}


def compiled(text, formats, enabled: bool, tile_values: int):
    """The program built with tiles on or off (and ``tile_values`` values a tile)."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(tiles, "ENABLED", enabled)
        mp.setattr(tiles, "TILE_VALUES", tile_values)
        spcomp.clear_cache()
        try:
            return compile_quietly(text, formats, ["C"])
        finally:
            spcomp.clear_cache()


def run_spied(k, args: dict, threads: int, pool: bool):
    """``(C, the shapes the fused-run runtime allocated with np.zeros, splits made)``."""
    shapes = []
    real = np.zeros

    def spy(shape, *a, **kw):
        shapes.append(tuple(np.atleast_1d(shape)))
        return real(shape, *a, **kw)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(runtime_program.np, "zeros", spy)
        got, calls = call_split(k, args, threads, pool, ["C"])
    return got["C"], shapes, calls


@settings(max_examples=examples(20), deadline=None)
@given(programs(), st.integers(0, 40), st.sampled_from([0.0, 0.2, 0.6]), st.integers(0, 2 ** 16),
       st.integers(1, 30), st.booleans())
def test_tiled_temporaries_match_numpy_and_the_whole_array(program, rows, density, seed, tile_values, pool):
    text, formats, temp, refs = program
    tiled = compiled(text, formats, True, tile_values)
    whole = compiled(text, formats, False, tile_values)
    sparse = formats["C"] != "dense"
    assert (f"# {temp}: a tile of max(1, {tile_values} // (N_k)) rows" in tiled.loops) == sparse, tiled.loops
    assert "a tile of" not in whole.loops
    ops = operands(seed, rows, density)
    args = {n: v for n, v in ops.items() if n in tiled.inputs}
    env = {n: dense_of(v) for n, v in args.items()}
    for name, ref in refs:
        env[name] = ref(env)
    for threads in (1, 2):
        got, shapes, calls = run_spied(tiled, args, threads, pool)
        want, whole_shapes, _ = run_spied(whole, args, threads, pool)
        assert np.allclose(dense_of(got), env["C"], rtol=1e-10, atol=1e-10), (text, threads)
        assert_identical(got, want, (text, threads))
        if threads == 2 and rows >= 2:  # split: the function over chunks of rows ran
            assert (rows, 2) in calls, calls
        if sparse:  # in either function
            assert (rows, K) in whole_shapes          # the whole temporary, tiles off
            assert (rows, K) not in shapes, shapes    # ... no longer allocated


def test_the_example_keeps_a_tile_and_frees_it(monkeypatch):
    """The issue's example: T as a tile in both functions (the IR allocates
    tile_rows x N_k values and takes no parameter for T), the result the same as
    the whole array's on rows that fill several tiles."""
    text = "T[i,k] = A[i,j]*B[j,k]; C[i,k] = T[i,k] * D[i,k]"
    formats = {"A": "csr", "D": "csr", "C": "csr"}
    k = compiled(text, formats, True, 64)
    assert "T_vals" not in k.ir and k.ir.count("free(T_tile);\n") == 2, k.ir
    assert k.ir.count("T_tile = (double*)malloc(sizeof(double) * (tile_rows * N_k))") == 2
    ops = operands(3, 300, 0.3)
    args = {n: v for n, v in ops.items() if n in k.inputs}
    want = (ops["A"] @ ops["B"]) * ops["D"].toarray()
    for threads in (1, 2):
        got, shapes, calls = run_spied(k, args, threads, False)
        assert (300, K) not in shapes and ((300, 2) in calls) == (threads == 2)
        assert np.allclose(got.to_numpy(), want)


def test_a_saved_program_keeps_its_tiles(tmp_path):
    """The tile is in the saved record (``FusedBuild.tiles``): a loaded program says so
    and gives the same entries."""
    k = compiled("T[i,k] = D[i,k] * E[i,k]; C[i,k] = T[i,k] * F[i,k]", {"D": "csr", "F": "csr", "C": "csr", "T": "dense"},
                 True, 10)
    k.save(tmp_path / "p.spk")
    loaded = spcomp.load(tmp_path / "p.spk")
    assert "# T: a tile of max(1, 10 // (N_k)) rows" in loaded.loops and loaded.loops == k.loops
    ops = operands(5, 33, 0.4)
    args = {n: v for n, v in ops.items() if n in k.inputs}
    got, shapes, calls = run_spied(loaded, args, 2, False)
    assert (33, 2) in calls and (33, K) not in shapes
    assert_identical(got, run_spied(k, args, 2, False)[0], "C")
    assert np.allclose(got.to_numpy(), ops["D"].toarray() * ops["E"] * ops["F"].toarray())
