"""Fused runs that end in a sum over rows or add into a dense array, by chunks of rows.

(Their temporaries are csr, dense, or dcsr and coo, which are csr in the function
over chunks when the program does not return them.)

A statement summing over the rows the run's other statements write (a scalar
reduction, or a dense output indexed by something else) adds into a zeroed copy
of its output per chunk, the copies added up after the join; a dense ``+=`` adds
into its own rows of the caller's array. Random programs of such statements
after row-wise ones are checked against numpy.einsum at 1 and 2 threads, the
split forced and observed, on the native driver and on the Python pool.
"""
from __future__ import annotations

import warnings

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

import spcomp
from spcomp.errors import TranspositionWarning
from spcomp.lower import record
from spcomp.runtime import launch

from conftest import examples, spcomp_threads
from test_programs_chunks import FIRST, INPUT_FORMATS, NEXT, call_split, chain_inputs, dense_of
from test_programs_parallel import splits
from test_programs_sparse import chain_operands

# an unreturned dcsr or coo temporary is csr in the function over chunks of rows
TEMPORARY_FORMATS = ["csr", "csr", "dense", "dcsr", "coo"]
# statements reading the run's last tensor {p} (rows x K) that end it
ENDS = [
    ("s = sum(i, sum(k, {p}[i,k]))", lambda e, p: e[p].sum()),
    ("s = {p}[i,k] * E[i,k]", lambda e, p: (e[p] * e["E"]).sum()),
    ("s = sum(i, max(k, {p}[i,k]))", lambda e, p: e[p].max(axis=1).sum()),
    ("z[k] = {p}[i,k] * E[i,k]", lambda e, p: (e[p] * e["E"]).sum(axis=0)),
    ("Y[i,k] += {p}[i,k] * E[i,k]", lambda e, p: e["Y"] + e[p] * e["E"]),
    ("Y[i,k] += {p}[i,k] * 2", lambda e, p: e["Y"] + 2 * e[p]),
]


@st.composite
def ending_chains(draw):
    """``(text, formats, outputs, refs, end)``: 1 to 3 row-wise statements writing
    temporaries of TEMPORARY_FORMATS, then one statement of ENDS, returned."""
    count = draw(st.integers(1, 3))
    text, ref = draw(st.sampled_from(FIRST))
    texts, refs = [text], [("T1", lambda e, ref=ref: ref(e))]
    fmts, last = {"T1": draw(st.sampled_from(TEMPORARY_FORMATS))}, "T1"
    for n in range(2, count + 1):
        text, ref = draw(st.sampled_from(NEXT))
        name = f"T{n}"
        fmts[name] = draw(st.sampled_from(TEMPORARY_FORMATS))
        texts.append(text.format(t=name, p=last))
        refs.append((name, lambda e, ref=ref, p=last: ref(e, p)))
        last = name
    text, ref = draw(st.sampled_from(ENDS))
    end = text.split("[")[0].split(" ")[0]
    texts.append(text.format(p=last))
    refs.append((end, lambda e, ref=ref, p=last: ref(e, p)))
    names = [name for name, _ in refs[:-1] if fmts[name] in ("csr", "dense")]   # (dcsr, coo: csr stand-ins)
    outputs = sorted({end} | (set(draw(st.lists(st.sampled_from(names), max_size=1))) if names else set()))
    return "\n".join(texts), fmts, outputs, refs, end


@settings(max_examples=examples(25), deadline=None)
@given(st.data())
def test_runs_ending_in_a_sum_or_a_dense_add_run_by_chunks_and_match_numpy(data):
    text, fmts, outputs, refs, end = data.draw(ending_chains(), label="program")
    rows = data.draw(st.integers(1, 40), label="rows")
    pool = data.draw(st.booleans(), label="python pool")
    ops = chain_inputs(data.draw, rows)
    ops["Y"] = np.random.default_rng(rows).standard_normal((rows, 7))
    formats = {n: f for n, f in {**INPUT_FORMATS, **fmts}.items() if f"{n}[" in text}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", TranspositionWarning)   # B under D + A*B: an input's copy
        k = spcomp.compile(text, formats=formats, outputs=outputs)
    # (dense temporaries only, each statement at the shared loop's row: that loop on threads)
    assert k.launches == 1 and ("each thread's chunk of rows" in k.loops or "its rows split over threads" in k.loops), \
        k.loops
    used = {n: v for n, v in ops.items() if n in k.inputs or n == end == "Y"}
    env = {n: dense_of(v) for n, v in used.items()}
    for name, ref in refs:
        env[name] = ref(env)
    for threads in (1, 2):
        args = dict(used)
        if end == "Y":
            args["Y"] = ops["Y"].copy()
        got, calls = call_split(k, args, threads, pool, outputs)
        for name in outputs:
            assert np.allclose(dense_of(got[name]), env[name], rtol=1e-10, atol=1e-10), (text, name, threads)
        if end == "Y":
            assert got["Y"] is args["Y"]   # updated in place
        assert k.last_launches == 1
        if threads == 2 and rows >= 2:
            assert (rows, 2) in calls, calls   # the rows were split over two threads


def test_a_dense_add_by_chunks_runs_64_bit_at_once(monkeypatch, tmp_path):
    """T's chunks together pass the (lowered) 32-bit limit only when stitched, after
    every chunk added its rows into Y: a 64-bit rerun would add them twice, so a
    chunked call with a dense += runs the 64-bit function from the start."""
    monkeypatch.setattr(record, "INDEX32_LIMIT", 300)
    monkeypatch.setenv("SPCOMP_CACHE_DIR", str(tmp_path / "cache"))
    spcomp.clear_cache()
    try:
        k = spcomp.compile("T[i,k] = A[i,j]*B[j,k]\nY[i,k] += T[i,k]*2", formats={"A": "csr", "B": "csr", "T": "csr"},
                           outputs=["T", "Y"])
        ops = chain_operands(n=26, seed=2)   # 480 entries, 240 in each half of the rows
        T = (ops["A"] @ ops["B"]).toarray()
        assert np.count_nonzero(T) > 300
        Y = np.ones((26, 26))
        with splits(2, monkeypatch) as calls:
            got = k(A=ops["A"], B=ops["B"], Y=Y)
        assert (26, 2) in calls and k.segments[0][1].chunk_variants.get(64) is not None
        assert np.allclose(got["Y"], 1 + 2 * T) and np.allclose(got["T"].to_numpy(), T)
    finally:
        spcomp.clear_cache()


def test_a_sum_splits_only_where_its_copies_cost_little(monkeypatch):
    """z's copies (one per chunk) against the rows' work: above the measured threshold
    and with copies that cost more than a share of the work, the call keeps the
    one-thread function."""
    k = spcomp.compile("T[i,k] = A[i,j]*B[j,k]\nz[k] = T[i,k]*c[i]", formats={"A": "csr", "B": "csr", "T": "csr"})
    assert "a sum over rows into a copy per chunk" in k.loops
    ops = chain_operands(n=60)
    del ops["D"]
    want = (ops["A"] @ ops["B"]).T @ ops["c"]
    calls = []
    real = launch.Launcher.bounds
    monkeypatch.setattr(launch.Launcher, "bounds", lambda self, *a: calls.append(a) or real(self, *a))
    monkeypatch.setattr("spcomp.runtime.threads.min_parallel_work", lambda units, threads: 1)
    monkeypatch.setattr("spcomp.runtime.partials.COPY_SHARE", 0.0)   # no copies are cheap enough
    with spcomp_threads(2):
        assert np.allclose(k(**ops), want) and k.last_launches == 1
    assert not calls
    monkeypatch.setattr("spcomp.runtime.partials.COPY_SHARE", 1e9)
    with spcomp_threads(2):
        assert np.allclose(k(**ops), want) and k.last_launches == 1
    assert calls
