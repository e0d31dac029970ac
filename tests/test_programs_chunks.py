"""Fused runs with sparse temporaries on threads, by chunks of rows.

A fused run whose statements each write only their outer loop's row, its sparse
temporaries stored rows first (csr), also compiles a function over ``[lo, hi)``:
each thread runs every statement over its rows, a sparse statement appending
its rows to arrays of its own, a later one reading them in the same call; the
runtime stitches returned sparse outputs from the chunks (runtime/program_chunks.py).
Random row-wise chains are checked against numpy.einsum at 1 and 2 threads (the
split forced and observed), on the native driver and on the Python pool.
"""
from __future__ import annotations

import warnings

import numpy as np
import pytest
import scipy.sparse as sp
from hypothesis import given, settings
from hypothesis import strategies as st

import spcomp
from spcomp.errors import TranspositionWarning
from spcomp.lower import record
from spcomp.runtime import launch
from spcomp.runtime import program as runtime_program
from spcomp.testing.check import densify

from conftest import examples, spcomp_threads
from test_programs_parallel import splits
from test_programs_sparse import chain_operands

FIRST = [
    ("T1[i,k] = A[i,j] * B[j,k]", lambda e: e["A"] @ e["B"]),
    ("T1[i,k] = D[i,k] * E[i,k]", lambda e: e["D"] * e["E"]),
    ("T1[i,k] = D[i,k] + A[i,j] * B[j,k]", lambda e: e["D"] + e["A"] @ e["B"]),
]
NEXT = [
    ("{t}[i,k] = {p}[i,k] + D[i,k]", lambda e, p: e[p] + e["D"]),
    ("{t}[i,k] = {p}[i,k] * E[i,k]", lambda e, p: e[p] * e["E"]),
    ("{t}[i,k] = relu({p}[i,k]) * 2", lambda e, p: 2 * np.maximum(e[p], 0)),
    ("{t}[i,k] = {p}[i,k] - A[i,j] * B[j,k]", lambda e, p: e[p] - e["A"] @ e["B"]),
]
LAST = [
    ("y[i] = {p}[i,k] * c[k]", lambda e, p: e[p] @ e["c"]),
    ("Y[i,l] = {p}[i,k] * G[k,l]", lambda e, p: e[p] @ e["G"]),
]
INPUT_FORMATS = {"A": "csr", "B": "csr", "D": "csr", "G": "csr"}


@st.composite
def chunk_chains(draw):
    """``(text, formats, outputs, refs)``: 2 to 4 row-wise statements, the first
    writing a csr temporary, later ones csr or dense, some of them returned."""
    count = draw(st.integers(2, 4))
    text, ref = draw(st.sampled_from(FIRST))
    texts, refs, fmts, last = [text], [("T1", lambda e, ref=ref: ref(e))], {"T1": "csr"}, "T1"
    for n in range(2, count + 1):
        if n == count and draw(st.booleans()):
            text, ref = draw(st.sampled_from(LAST))
            name = text.split("[")[0]
        else:
            text, ref = draw(st.sampled_from(NEXT))
            name = f"T{n}"
            fmts[name] = draw(st.sampled_from(["csr", "dense"]))
        texts.append(text.format(t=name, p=last))
        refs.append((name, lambda e, ref=ref, p=last: ref(e, p)))
        last = name
    names = [name for name, _ in refs]
    outputs = sorted({last} | set(draw(st.lists(st.sampled_from(names[:-1]), max_size=2))))
    return "\n".join(texts), fmts, outputs, refs


def chain_inputs(draw, rows):
    J, K, L = 6, 7, 3
    seed = draw(st.integers(0, 2 ** 16), label="seed")
    density = draw(st.sampled_from([0.0, 0.2, 0.6]), label="density")
    rng = np.random.default_rng(seed)
    return {"A": sp.random(rows, J, density=density, format="csr", random_state=seed),
            "B": sp.random(J, K, density=0.4, format="csr", random_state=seed + 1),
            "D": sp.random(rows, K, density=0.3, format="csr", random_state=seed + 2),
            "G": sp.random(K, L, density=0.5, format="csr", random_state=seed + 3),
            "E": rng.standard_normal((rows, K)), "c": rng.standard_normal(K)}


def dense_of(x):
    return np.asarray(densify(x))


def call_split(k, args: dict, threads: int, pool: bool, outputs: list):
    """``k(**args)`` on ``threads`` threads, every call split (by the Python pool when
    ``pool``): (the outputs by name, the splits made)."""
    with pytest.MonkeyPatch.context() as mp:
        if pool:
            mp.setattr(launch.Launcher, "driver_of", lambda self, variant: None)
        with splits(threads, mp) as calls:
            got = k(**args)
    return (got if isinstance(got, dict) else {outputs[0]: got}), calls


def compile_quietly(text, formats, outputs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", TranspositionWarning)   # B under D + A*B: an input's copy
        return spcomp.compile(text, formats=formats, outputs=outputs)


def chunked_case(data, programs, inputs, input_formats: dict, rows):
    """One drawn program (``programs``: (text, formats, outputs, refs)) compiled, with
    operands of ``rows`` rows (``inputs(draw, rows)``) and NumPy's results:
    ``(k, formats, outputs, used operands, expected by name, rows, pool)``; the run
    must be one launch with a function over chunks of rows."""
    text, fmts, outputs, refs = data.draw(programs, label="program")
    rows = data.draw(rows, label="rows")
    pool = data.draw(st.booleans(), label="python pool")
    ops = inputs(data.draw, rows)
    formats = {n: f for n, f in {**input_formats, **fmts}.items() if f"{n}[" in text}
    k = compile_quietly(text, formats, outputs)
    assert k.launches == 1 and "each thread's chunk of rows" in k.loops, k.loops
    used = {n: v for n, v in ops.items() if n in k.inputs}
    env = {n: dense_of(v) for n, v in used.items()}
    for name, ref in refs:
        env[name] = ref(env)
    return k, formats, outputs, used, env, rows, pool


@settings(max_examples=examples(25), deadline=None)
@given(st.data())
def test_sparse_row_chains_run_by_chunks_and_match_numpy(data):
    k, formats, outputs, used, env, rows, pool = chunked_case(data, chunk_chains(), chain_inputs, INPUT_FORMATS,
                                                              st.integers(1, 40))
    text = k.expression
    for threads in (1, 2):
        got, calls = call_split(k, used, threads, pool, outputs)
        for name in outputs:
            assert np.allclose(dense_of(got[name]), env[name], rtol=1e-10, atol=1e-10), (text, name, threads)
            if formats.get(name) == "csr":
                s = got[name].to_scipy()
                s.check_format(full_check=True)   # the stitched arrays are a valid csr
                assert s.has_sorted_indices
        assert k.last_launches == 1
        if threads == 2 and rows >= 2:
            assert (rows, 2) in calls, calls   # the rows were split over two threads


def _chain(outputs=("y",)):
    return spcomp.compile("T[i,k] = A[i,j]*B[j,k]\nU[i,k] = T[i,k] + D[i,k]\ny[i] = U[i,k]*c[k]",
                          formats={"A": "csr", "B": "csr", "D": "csr", "T": "csr", "U": "csr"},
                          outputs=list(outputs))


def _check(got, ops):
    T = ops["A"] @ ops["B"]
    assert np.allclose(got["T"].to_numpy(), T.toarray())
    assert np.allclose(got["U"].to_numpy(), (T + ops["D"]).toarray())
    assert np.allclose(got["y"], (T + ops["D"]) @ ops["c"])


@pytest.mark.parametrize("pool", [False, True])
def test_chunks_grow_their_arrays_inside_the_function(monkeypatch, pool):
    """Every chunk starts at one entry and grows by realloc; returned temporaries are
    stitched, unreturned ones freed, call after call."""
    monkeypatch.setattr(launch, "FIRST_CAPACITY", 1)
    if pool:
        monkeypatch.setattr(launch.Launcher, "driver_of", lambda self, variant: None)
    k = _chain(("T", "U", "y"))
    ops = chain_operands(n=60)
    with spcomp_threads(2, min_work=0):
        for _ in range(3):
            _check(k(**ops), ops)
            assert k.last_launches == 1


def test_chunks_past_the_32_bit_limit_rerun_at_64_bits(monkeypatch, tmp_path):
    """T's chunks each fit 32-bit positions but not all together: the stitch asks for
    the 64-bit function, which runs by chunks too."""
    monkeypatch.setattr(record, "INDEX32_LIMIT", 300)
    monkeypatch.setenv("SPCOMP_CACHE_DIR", str(tmp_path / "cache"))
    spcomp.clear_cache()
    try:
        k = _chain(("T", "U", "y"))
        ops = chain_operands(n=60)
        assert (ops["A"] @ ops["B"]).nnz > 300
        with spcomp_threads(2, min_work=0):
            _check(k(**ops), ops)
        seg = k.segments[0][1]
        assert seg.chunk_variants.get(64) is not None   # the 64-bit chunked function ran
        small = chain_operands(n=8)
        with spcomp_threads(2, min_work=0):
            _check(k(**small), small)
    finally:
        spcomp.clear_cache()


def test_small_calls_keep_the_one_thread_function(monkeypatch):
    k = _chain(("T", "U", "y"))
    ops = chain_operands(n=60)

    def no_chunks(*a, **kw):
        raise AssertionError("a call too small to split ran by chunks")
    monkeypatch.setattr(runtime_program, "run_chunked", no_chunks)
    with spcomp_threads(2, min_work=10 ** 12):
        _check(k(**ops), ops)
    assert k.last_launches == 1 and k.segments[0][1].chunks(32) is not None


def test_saved_program_runs_by_chunks(tmp_path, monkeypatch):
    k = _chain(("T", "U", "y"))
    k.save(tmp_path / "p.spc")
    loaded = spcomp.load(tmp_path / "p.spc")
    assert "each thread's chunk of rows" in loaded.loops
    ops = chain_operands(n=60, seed=3)
    with splits(2, monkeypatch) as calls:
        _check(loaded(**ops), ops)
    assert (60, 2) in calls and loaded.last_launches == 1


@pytest.mark.parametrize("text, formats, outputs, why", [
    ("T[i,k] = A[i,j]*B[j,k]\nz[k] = T[i,k]*c[i]\ny[i] = T[i,k]*z[k]", {"T": "csr"}, None,
     "statement 3 reads z, whole only after every chunk"),
    ("T[i,k] = A[i,j]*B[j,k]\nC[i,k] += T[i,k]", {"T": "csr", "C": "dcsr"}, None,
     "C is stored compressed first (cc) with no rows-first stand-in"),
    ("T[i,k] = A[i,j]*B[j,k]\nU[k,i] = T[i,k]*2", {"T": "csr"}, None, "statement 2 does not run over rows"),
])
def test_runs_not_split_by_rows_have_no_chunked_function(text, formats, outputs, why):
    """k.loops says why such a run stays on one thread."""
    k = spcomp.compile(text, formats={"A": "csr", "B": "csr", **formats}, outputs=outputs)
    assert k.launches == 1 and "chunk of rows" not in k.loops and why in k.loops, k.loops
    assert k.segments[0][1].chunks(32) is None


@pytest.mark.parametrize("fmt", ["dcsr", "coo"])
def test_an_unreturned_dcsr_or_coo_temporary_is_csr_in_the_chunked_function(monkeypatch, fmt):
    k = spcomp.compile("T[i,k] = A[i,j]*B[j,k]\nU[i,k] = T[i,k] + D[i,k]\ny[i] = U[i,k]*c[k]",
                       formats={"A": "csr", "B": "csr", "D": "csr", "T": fmt, "U": fmt})
    assert "# T: sparse, assembled inside the function and freed there (as csr in the function over chunks" in k.loops
    chunks = k.ir.split("int32_t kernel_chunks(")[1]
    assert "T1_crd" not in chunks and "T2_pos" in chunks   # no top-level coordinates: rows first
    ops = chain_operands(n=60)
    with splits(2, monkeypatch) as calls:
        assert np.allclose(k(**ops), (ops["A"] @ ops["B"] + ops["D"]) @ ops["c"])
    assert (60, 2) in calls and k.last_launches == 1
