"""Fused runs that return (or hand on) tensors stored compressed first, on threads.

A fused run's function over chunks of rows computes each dcsr, coo or csf tensor it
writes in a rows-first stand-in (csr; ``dcc`` for order 3: ``lower.outputs.rows_first``),
each chunk appending its rows; a returned one, or one a later kernel reads, is
converted to its own format after the join (``runtime/program_chunks.as_declared``).
Random 2- and 3-statement programs are checked against numpy.einsum and, bit for
bit (the same levels, index dtypes, coordinate order and values), against the
one-thread function, the split forced at 2 threads on the native driver and on
the Python pool.
"""
from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp
from hypothesis import given, settings
from hypothesis import strategies as st

import spcomp
from spcomp.lower import record
from spcomp.runtime import launch

from conftest import examples
from test_programs_chunks import call_split, chunked_case, compile_quietly, dense_of
from test_programs_parallel import splits

MATRIX = {
    "first": [
        ("T1[i,k] = A[i,j] * B[j,k]", lambda e: e["A"] @ e["B"]),
        ("T1[i,k] = D[i,k] * E[i,k]", lambda e: e["D"] * e["E"]),
        ("T1[i,k] = D[i,k] + A[i,j] * B[j,k]", lambda e: e["D"] + e["A"] @ e["B"]),
    ],
    "next": [
        ("{t}[i,k] = {p}[i,k] + D[i,k]", lambda e, p: e[p] + e["D"]),
        ("{t}[i,k] = {p}[i,k] * E[i,k]", lambda e, p: e[p] * e["E"]),
        ("{t}[i,k] = {p}[i,k] * 2", lambda e, p: 2 * e[p]),
    ],
    "last": [("y[i] = {p}[i,k] * c[k]", lambda e, p: e[p] @ e["c"])],
    "formats": ["dcsr", "coo", "csr"],
}
ORDER3 = {
    "first": [
        ("T1[i,j,k] = X[i,j,k] * 2", lambda e: 2 * e["X"]),
        ("T1[i,j,k] = X[i,j,k] * Y[i,j,k]", lambda e: e["X"] * e["Y"]),
        ("T1[i,j,k] = X[i,j,k] + Y[i,j,k]", lambda e: e["X"] + e["Y"]),
    ],
    "next": [
        ("{t}[i,j,k] = {p}[i,j,k] + Y[i,j,k]", lambda e, p: e[p] + e["Y"]),
        ("{t}[i,j,k] = {p}[i,j,k] * 3", lambda e, p: 3 * e[p]),
    ],
    "last": [("y[i] = {p}[i,j,k] * w[k]", lambda e, p: np.einsum("ijk,k->i", e[p], e["w"]))],
    "formats": ["csf", "coo", "dcc"],
}
INPUT_FORMATS = {"A": "csr", "B": "csr", "D": "csr", "X": "dcc", "Y": "dcc"}


@st.composite
def programs(draw):
    """``(text, formats, outputs, refs)``: 2 or 3 statements over rows, each writing a
    temporary of a random sparse format (compressed first or not) or, last, maybe a
    dense vector; the last one and some others returned, at least one of them
    stored compressed first."""
    kind = draw(st.sampled_from([MATRIX, ORDER3]))
    count = draw(st.integers(2, 3))
    text, ref = draw(st.sampled_from(kind["first"]))
    texts, refs, last = [text], [("T1", ref)], "T1"
    fmts = {"T1": draw(st.sampled_from(kind["formats"]))}
    for n in range(2, count + 1):
        if n == count and draw(st.booleans()):
            text, ref = kind["last"][0]
            name = "y"
        else:
            text, ref = draw(st.sampled_from(kind["next"]))
            name = f"T{n}"
            fmts[name] = draw(st.sampled_from(kind["formats"]))
        texts.append(text.format(t=name, p=last))
        refs.append((name, lambda e, ref=ref, p=last: ref(e, p)))
        last = name
    names = [name for name, _ in refs]
    outputs = sorted({last} | set(draw(st.lists(st.sampled_from(names[:-1]), max_size=2))))
    compressed_first = [n for n in outputs if fmts.get(n) in ("dcsr", "coo", "csf")]
    if not compressed_first:  # return one: what this file is about
        pick = draw(st.sampled_from(sorted(fmts)))
        fmts[pick] = "coo" if kind is ORDER3 else "dcsr"
        outputs = sorted(set(outputs) | {pick})
    return "\n".join(texts), fmts, outputs, refs


def random_inputs(draw, rows: int) -> dict:
    """Operands with ``rows`` rows, some of them empty (a band of rows zeroed)."""
    J, K = 6, 7
    seed = draw(st.integers(0, 2 ** 16), label="seed")
    density = draw(st.sampled_from([0.0, 0.1, 0.5]), label="density")
    rng = np.random.default_rng(seed)
    lo = draw(st.integers(0, rows), label="empty from")
    hi = draw(st.integers(lo, rows), label="empty to")

    def matrix(r, c, d, s):
        m = sp.random(r, c, density=d, format="lil", random_state=s)
        if r == rows:
            m[lo:hi] = 0
        return m.tocsr()

    def order3(s):
        a = np.random.default_rng(s).standard_normal((rows, 4, 5))
        a[np.random.default_rng(s + 1).random(a.shape) > density] = 0
        a[lo:hi] = 0
        return spcomp.Tensor.from_numpy(a, "dcc")
    E = rng.standard_normal((rows, K))
    E[rng.random(E.shape) < 0.3] = 0
    return {"A": matrix(rows, J, density, seed), "B": matrix(J, K, 0.4, seed + 1),
            "D": matrix(rows, K, density, seed + 2), "E": E, "c": rng.standard_normal(K),
            "X": order3(seed + 3), "Y": order3(seed + 5), "w": rng.standard_normal(5)}


def assert_identical(a, b, what):
    """The same tensor stored the same way: format, shape, every level array (with its
    dtype) and the values, bit for bit."""
    if isinstance(a, np.ndarray) or np.isscalar(a):
        assert np.array_equal(a, b), what
        return
    assert a.format == b.format and a.shape == b.shape, (what, a.format, b.format)
    for l, (la, lb) in enumerate(zip(a.levels, b.levels)):
        assert la.keys() == lb.keys(), (what, l)
        for key in la:
            assert la[key].dtype == lb[key].dtype and np.array_equal(la[key], lb[key]), (what, l, key)
    assert a.vals.dtype == b.vals.dtype and np.array_equal(a.vals, b.vals), what


@settings(max_examples=examples(30), deadline=None)
@given(st.data())
def test_compressed_first_outputs_run_by_chunks_bit_for_bit(data):
    k, formats, outputs, used, env, rows, pool = chunked_case(data, programs(), random_inputs, INPUT_FORMATS,
                                                              st.integers(0, 30))
    text = k.expression
    one, _ = call_split(k, used, 1, pool, outputs)   # the one-thread function
    two, calls = call_split(k, used, 2, pool, outputs)
    for name in outputs:
        assert np.allclose(dense_of(two[name]), env[name], rtol=1e-10, atol=1e-10), (text, name)
        assert_identical(one[name], two[name], (text, name))
        if not isinstance(two[name], np.ndarray):
            assert str(two[name].format) == str(spcomp.Format.parse(formats[name], two[name].ndim))
            two[name].validate(name)
    if rows >= 2:
        assert (rows, 2) in calls, calls   # the rows were split over two threads


@pytest.mark.parametrize("fmt", ["dcsr", "coo"])
def test_a_tensor_read_after_the_run_has_its_format(monkeypatch, fmt):
    """U (returned by the chunks as csr) is converted before statement 3, a kernel of
    its own (it returns a blocked tensor, which no fused function writes), sees it."""
    text = "T[i,k] = A[i,j]*B[j,k]\nU[i,k] = T[i,k] + D[i,k]\nv[k,i] = U[i,k] * 2"
    formats = {"A": "csr", "B": "csr", "D": "csr", "T": "csr", "U": fmt, "v": "bsr(2,2)"}
    k = compile_quietly(text, formats, ["U", "v"])
    assert k.launches == 2 and f"as csr in the function over chunks of rows, converted to {fmt}" in k.loops
    assert "statement 3: a kernel of its own (not in the run before it:" in k.loops, k.loops
    seen = []
    real = spcomp.Kernel.__call__

    def spy(self, **args):
        seen.extend(str(v.format) for n, v in args.items() if n == "U")
        return real(self, **args)
    monkeypatch.setattr(spcomp.Kernel, "__call__", spy)
    ops = {n: sp.random(50, 50, density=0.08, format="csr", random_state=s) for s, n in enumerate("ABD")}
    one = k(**ops)
    with splits(2, monkeypatch) as calls:
        two = k(**ops)
    assert (50, 2) in calls and seen == [fmt, fmt]
    want = (ops["A"] @ ops["B"] + ops["D"]).toarray()
    assert np.allclose(two["U"].to_numpy(), want) and np.allclose(two["v"].to_numpy(), 2 * want.T)
    assert_identical(one["U"], two["U"], "U")
    assert_identical(one["v"], two["v"], "v")


@pytest.mark.parametrize("pool", [False, True])
def test_stand_ins_grow_and_rerun_at_64_bits(monkeypatch, tmp_path, pool):
    """Chunks that start at one entry grow; past the 32-bit limit the 64-bit chunked
    function runs, and the converted dcsr has the 64-bit function's index arrays."""
    monkeypatch.setattr(record, "INDEX32_LIMIT", 300)
    monkeypatch.setattr(launch, "FIRST_CAPACITY", 1)
    monkeypatch.setenv("SPCOMP_CACHE_DIR", str(tmp_path / "cache"))
    if pool:
        monkeypatch.setattr(launch.Launcher, "driver_of", lambda self, variant: None)
    spcomp.clear_cache()
    try:
        k = spcomp.compile("T[i,k] = A[i,j]*B[j,k]\nC[i,k] = T[i,k] + D[i,k]",
                           formats={"A": "csr", "B": "csr", "D": "csr", "T": "dcsr", "C": "coo"},
                           outputs=["T", "C"])
        ops = {n: sp.random(60, 60, density=0.15, format="csr", random_state=s) for s, n in enumerate("ABD")}
        assert (ops["A"] @ ops["B"]).nnz > 300
        one = k(**ops)
        with splits(2, monkeypatch) as calls:
            two = k(**ops)
        assert (60, 2) in calls and k.segments[0][1].chunk_variants.get(64) is not None
        for name in ("T", "C"):
            assert_identical(one[name], two[name], name)
        assert two["T"].levels[1]["pos"].dtype == np.int64
        assert np.allclose(two["C"].to_numpy(), (ops["A"] @ ops["B"] + ops["D"]).toarray())
    finally:
        spcomp.clear_cache()



@pytest.mark.parametrize("spec, ndim, stand_in", [
    ("dcsr", 2, "dc"), ("coo", 2, "dc"), ("csf", 3, "dcc"), ("coo", 3, "dcc"), ("c c(nonunique) q", 3, "dcc"),
    ("csr", 2, None), ("csc", 2, None), ("cc:1,0", 2, None), ("bsr(2,2)", 2, None), ("c(unordered) c", 2, None),
    ("c", 1, None), ("cd", 2, None), ("ell(K=4)", 2, None),
])
def test_rows_first_stand_ins(spec, ndim, stand_in):
    from spcomp.lower.outputs import rows_first
    got = rows_first(spcomp.Format.parse(spec, ndim))
    assert (got and got.spec()) == stand_in


@settings(max_examples=examples(40), deadline=None)
@given(st.sampled_from([("dcsr", 2), ("coo", 2), ("csf", 3), ("coo", 3), ("c c(nonunique) q", 3)]),
       st.integers(0, 9), st.sampled_from([0.0, 0.2, 0.7]), st.integers(0, 2 ** 16), st.sampled_from([32, 64]))
def test_as_declared_packs_the_stand_in_as_the_format_would(spec, rows, density, seed, bits):
    """From a rows-first tensor (empty rows included), the declared format's arrays as
    packing the same entries gives them, in the kernel's index types."""
    from spcomp.ir.types import to_numpy
    from spcomp.lower.context import level_array_type
    from spcomp.lower.outputs import rows_first
    from spcomp.runtime.program_chunks import as_declared
    text, ndim = spec
    fmt = spcomp.Format.parse(text, ndim)
    rng = np.random.default_rng(seed)
    a = rng.standard_normal((rows,) + (4, 5)[:ndim - 1])
    a[rng.random(a.shape) > density] = 0
    a[rows // 2:rows // 2 + 2] = 0
    got = as_declared(spcomp.Tensor.from_numpy(a, rows_first(fmt)), fmt, bits)
    want = spcomp.Tensor.from_numpy(a, fmt)
    assert got.format == fmt and np.array_equal(got.to_numpy(), a)
    for kind, g, w in zip(fmt.levels, got.levels, want.levels):
        assert g.keys() == w.keys()
        for key in w:
            assert np.array_equal(g[key], w[key]) and g[key].dtype == to_numpy(level_array_type(kind, key, bits))
    assert np.array_equal(got.vals, want.vals)


def test_saved_program_returning_dcsr_runs_by_chunks(tmp_path, monkeypatch):
    k = spcomp.compile("T[i,k] = A[i,j]*B[j,k]\ny[i] = T[i,k]*c[k]",
                       formats={"A": "csr", "B": "csr", "T": "dcsr"}, outputs=["T", "y"])
    k.save(tmp_path / "p.spc")
    loaded = spcomp.load(tmp_path / "p.spc")
    assert "as csr in the function over chunks of rows, converted to dcsr after them" in loaded.loops
    ops = {n: sp.random(40, 40, density=0.1, format="csr", random_state=s) for s, n in enumerate("AB")}
    ops["c"] = np.arange(40.0)
    one = k(**ops)
    with splits(2, monkeypatch) as calls:
        two = loaded(**ops)
    assert (40, 2) in calls and loaded.last_launches == 1
    assert_identical(one["T"], two["T"], "T")
    assert np.array_equal(one["y"], two["y"])
