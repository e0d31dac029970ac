"""The last gaps of issue 24: packed temporaries read against their order or on a
diagonal, and returned column-major dense outputs, join one fused function.

A packed-block temporary (``ell``, ``twell``, ``dp(B,K)`` in any mode order, of
order 3 too) read through a transposed copy or on a diagonal has its used slots
walked inside the function (``fused_transpose.walk_entries``), gathered, sorted and
placed into the copy (``fused_diagonal.copy_read``); a dense output declared in
another mode order (``dd:1,0``) is written in that order straight into the array
handed back, which the runtime allocates so (``runtime.outputs.zeros_in_order``);
a blocked temporary (``bsr``, ``bsc``, ``cd``...), which its writer assembles with
its dense levels compressed, is laid out in its blocks for each reader inside the
function (``fused_diagonal.expand_read``). What still cannot join (blocked ELL, a
blocked temporary read against its block order) keeps a kernel of its own, ``k.loops`` saying why.
Every result is checked against numpy.einsum and against the statements compiled
and run one by one, at one and two threads, 32- and 64-bit indices, after save/load.
"""
from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp
from hypothesis import given, settings
from hypothesis import strategies as st

import spcomp
from spcomp.errors import OperandError, ShapeError
from spcomp.lower import record

from conftest import examples, spcomp_threads
from program_steps import compile_quiet as _compile, dense as _dense, one_by_one as _one_by_one

COPY = "reads T through a transposed copy made inside the function"
DIAGONAL = "reads T through a diagonal copy gathered inside the function"


def _ops(seed, n=8, m=6, density=0.35):
    rng = np.random.default_rng(seed)
    return {"A": sp.random(n, m, density=density, format="csr", random_state=seed),
            "B": sp.random(m, n, density=density, format="csr", random_state=seed + 1),
            "x": rng.standard_normal(n), "w": rng.standard_normal(m)}


def _same(a, b) -> bool:
    """Equal dense values, bitwise."""
    return np.array_equal(_dense(a), _dense(b))


@pytest.mark.parametrize("t_format", ["ell(K=8)", "twell(B=4,K=4)", "dp(2,2,unordered)", "dp(8):1,0",
                                      "twell(B=3,K=3)"])
@pytest.mark.parametrize("z_format", ["csr", "dcsr", "coo", "dense"])
def test_a_packed_temporary_read_transposed_is_copied_inside_the_function(t_format, z_format):
    text = "T[i,k] = A[i,j]*B[j,k]; Z[k,i] = T[i,k] * 3"
    formats = {"A": "csr", "B": "csr", "T": t_format, "Z": z_format}
    k = _compile(text, formats)
    assert k.launches == 1, k.loops
    ops = _ops(3)
    want = 3 * (ops["A"] @ ops["B"]).toarray().T
    by_one = _one_by_one([s.strip() for s in text.split(";")], formats, ops)
    if t_format != "dp(8):1,0" and z_format != "dense":   # (T read in its own order, or a dense Z)
        assert COPY in k.loops, k.loops
    for threads in (1, 2):
        with spcomp_threads(threads, min_work=0):
            got = k(A=ops["A"], B=ops["B"])
        assert np.allclose(_dense(got), want) and _same(got, by_one["Z"]), (threads, k.loops)
        if z_format != "dense":
            assert str(got.format) == str(spcomp.Format.parse(z_format, 2))
            got.validate("Z")


def test_a_packed_temporary_of_order_3_is_copied_as_a_sorted_coordinate_list():
    rng = np.random.default_rng(5)
    X = (rng.random((4, 5, 6)) < 0.3) * rng.standard_normal((4, 5, 6))
    for t_format, z_format in [("ddp(2,2)", "csf"), ("ddp(6)", "coo"), ("ddp(3,3):2,0,1", "csf"),
                               ("ddp(2,2,unordered)", "ccc:1,0,2")]:
        formats = {"X": "csf", "T": t_format, "Z": z_format}
        k = _compile("T[i,j,k] = X[i,j,k] * 2; Z[k,j,i] = T[i,j,k] * 3", formats)
        assert k.launches == 1, k.loops
        got = k(X=spcomp.Tensor.from_numpy(X, "csf"))
        assert np.allclose(got.to_numpy(), np.einsum("ijk->kji", 6 * X)), t_format
        got.validate("Z")


@pytest.mark.parametrize("t_format", ["ell(K=8)", "twell(B=4,K=4)", "dp(3,3,unordered)"])
def test_a_diagonal_of_a_packed_temporary_is_gathered_inside_the_function(t_format):
    text = "T[i,k] = A[i,j]*B[j,k]; v[k] = T[k,k] * x[k]"
    formats = {"A": "csr", "B": "csr", "T": t_format}
    k = _compile(text, formats)
    assert k.launches == 1 and DIAGONAL in k.loops, k.loops
    ops = _ops(4, n=8, m=8)
    want = np.diag((ops["A"] @ ops["B"]).toarray()) * ops["x"]
    by_one = _one_by_one([s.strip() for s in text.split(";")], formats, ops)
    for threads in (1, 2):
        with spcomp_threads(threads, min_work=0):
            got = k(A=ops["A"], B=ops["B"], x=ops["x"])
        assert np.allclose(got, want) and np.array_equal(got, by_one["v"])


def test_packed_copies_past_32_bits_and_saved(monkeypatch):
    """T passes the (lowered) 32-bit limit: the run reruns 64-bit, the copy and the
    diagonal made again there; a saved and loaded program does the same."""
    monkeypatch.setattr(record, "INDEX32_LIMIT", 30)
    text = "T[i,k] = A[i,j]*B[j,k]; Z[k,i] = T[i,k] * 3; v[k] = T[k,k] * 2"
    k = _compile(text, {"A": "csr", "B": "csr", "T": "twell(B=4,K=4)", "Z": "csr"}, outputs=["Z", "v"])
    loaded = spcomp.loads(k.to_bytes())
    assert k.launches == 1 and loaded.launches == 1 and loaded.loops == k.loops, k.loops
    ops = _ops(6, n=12, m=12, density=0.4)
    P = (ops["A"] @ ops["B"]).toarray()
    assert np.count_nonzero(P) > 30
    for kernel in (k, loaded):
        with spcomp_threads(1):
            got = kernel(A=ops["A"], B=ops["B"])
        assert np.allclose(got["Z"].to_numpy(), 3 * P.T) and np.allclose(got["v"], 2 * np.diag(P))
        assert 64 in kernel.segments[0][1].variants


@pytest.mark.parametrize("y_format, idx", [("dd:1,0", "i,k"), ("ddd:2,0,1", "i,k,m"), ("ddd:1,2,0", "i,k,m")])
def test_a_returned_column_major_output_is_written_in_its_order(y_format, idx):
    """The output comes back in its declared layout (a transposed view of its
    storage, as a kernel of its own returns it), on the first call and on the
    repeated ones (``program_repeat``), bitwise equal to the statements one by one."""
    rng = np.random.default_rng(2)
    mid = "*W[m]" if idx.count(",") == 2 else ""
    text = f"T[i,k] = A[i,j]*B[j,k]; Y[{idx}] = T[i,k] * 2{mid}"
    formats = {"A": "csr", "B": "csr", "T": "csr", "Y": y_format}
    k = _compile(text, formats)
    assert k.launches == 1 and f"Y: declared {y_format}, written in that order into the array handed back" \
        in k.loops, k.loops
    ops = _ops(7, n=8, m=8)
    ops["W"] = rng.standard_normal(3)
    inputs = {n: ops[n] for n in k.inputs}
    by_one = _one_by_one([s.strip() for s in text.split(";")], formats, ops)["Y"]
    order = list(spcomp.Format.parse(y_format, len(idx.split(","))).order)
    for threads in (1, 2, 1):
        with spcomp_threads(threads, min_work=0):
            for _ in range(2):
                got = k(**inputs)
                assert np.array_equal(got, by_one), threads
                assert np.transpose(got, order).flags.c_contiguous == np.transpose(by_one, order).flags.c_contiguous
                assert np.transpose(got, order).flags.c_contiguous
    P = (ops["A"] @ ops["B"]).toarray() * 2
    want = P if not mid else np.einsum("ik,m->ikm", P, ops["W"])
    assert np.allclose(got, want)
    loaded = spcomp.loads(k.to_bytes())
    assert loaded.launches == 1 and np.array_equal(loaded(**inputs), by_one)


@pytest.mark.parametrize("t_format", ["bsr(2,2)", "bsc(2,4)", "ccdd/2,2", "cd", "dcdd:1,0/4,2"])
@pytest.mark.parametrize("returned", [False, True])
def test_a_blocked_temporary_is_laid_out_in_its_blocks_inside_the_function(t_format, returned):
    """Its writer assembles it in a stand-in (dense levels below sparse ones stored
    compressed); the function lays it out in its declared blocks for each reader,
    the runtime (as after a kernel of its own) where it is handed back."""
    text = "T[i,k] = A[i,k]*3; y[i] = T[i,k] * x[k]; Y[k,i] = T[i,k] * G[k,i]"   # (A*B into bsc: refused)
    formats = {"A": "csr", "T": t_format}
    outputs = ["T", "y", "Y"] if returned else ["y", "Y"]
    k = _compile(text, formats, outputs=outputs)
    assert k.launches == 1 and "laid out as" in k.loops, k.loops
    ops = _ops(8, n=8, m=8)
    ops["G"] = np.random.default_rng(8).standard_normal((8, 8))
    by_one = _one_by_one([s.strip() for s in text.split(";")], formats, ops)
    P = 3 * ops["A"].toarray()
    for threads in (1, 2):
        with spcomp_threads(threads, min_work=0):
            got = k(A=ops["A"], x=ops["x"], G=ops["G"])
        assert np.allclose(got["y"], P @ ops["x"]) and np.allclose(got["Y"], P.T * ops["G"])
        assert _same(got["y"], by_one["y"]) and _same(got["Y"], by_one["Y"])
        if returned:
            assert str(got["T"].format) == str(spcomp.Format.parse(t_format, 2)) and _same(got["T"], by_one["T"])
            got["T"].validate("T")


def test_a_blocked_temporary_past_32_bits_and_saved(monkeypatch):
    monkeypatch.setattr(record, "INDEX32_LIMIT", 30)
    k = _compile("T[i,k] = A[i,j]*B[j,k]; y[i] = T[i,k] * x[k]", {"A": "csr", "B": "csr", "T": "bsr(2,3)"})
    loaded = spcomp.loads(k.to_bytes())
    assert k.launches == 1 and loaded.launches == 1 and loaded.loops == k.loops, k.loops
    ops = _ops(6, n=12, m=12, density=0.4)
    P = (ops["A"] @ ops["B"]).toarray()
    for kernel in (k, loaded):
        with spcomp_threads(1):
            got = kernel(A=ops["A"], B=ops["B"], x=ops["x"])
        assert np.allclose(got, P @ ops["x"]) and 64 in kernel.segments[0][1].variants


@settings(max_examples=examples(20), deadline=None)
@given(st.data())
def test_random_blocked_temporaries_match_numpy(data):
    """A temporary of random blocks (R, C dividing the shape), block order and
    levels, read as itself by a dense and a sparse statement: one launch, equal to
    numpy.einsum at one and two threads and to the statements run one by one."""
    R, C = data.draw(st.integers(1, 3), label="R"), data.draw(st.integers(1, 3), label="C")
    I, K, J = R * data.draw(st.integers(1, 3), label="I/R"), C * data.draw(st.integers(1, 3), label="K/C"), \
        data.draw(st.integers(1, 5), label="J")
    top = data.draw(st.sampled_from(["dc", "cc"]), label="block levels")
    order = data.draw(st.sampled_from(["", ":1,0"]), label="block order")
    cut = [b for b in (R, C) if b > 1] if not order else [b for b in (C, R) if b > 1]
    t_format = top + "d" * len(cut) + order + (f"/{R},{C}" if cut else "")
    z_format = data.draw(st.sampled_from(["csr", "dcsr", "dd", "dd:1,0"]), label="Z")
    density = data.draw(st.sampled_from([0.0, 0.3, 0.7]), label="density")
    seed = data.draw(st.integers(0, 2 ** 16), label="seed")
    rng = np.random.default_rng(seed)
    ops = {"A": sp.random(I, J, density=density, format="csr", random_state=seed),
           "B": sp.random(J, K, density=density, format="csr", random_state=seed + 1),
           "C": sp.random(I, K, density=density, format="csr", random_state=seed + 2),
           "x": rng.standard_normal(K), "G": rng.standard_normal((I, K))}
    product = not order and data.draw(st.booleans(), label="T = A*B (else C*3)")  # (A*B into bsc: refused)
    write = "T[i,k] = A[i,j]*B[j,k]" if product else "T[i,k] = C[i,k]*3"
    text = f"{write}; y[i] = T[i,k] * x[k]; Z[i,k] = T[i,k] * G[i,k]"
    formats = {n: f for n, f in {"A": "csr", "B": "csr", "C": "csr", "T": t_format, "Z": z_format}.items()
               if f"{n}[" in text}
    k = _compile(text, formats, outputs=["y", "Z"])
    # (a sparse Z over T's cut indices is assembled in blocks and converted: a kernel of its own)
    assert ("laid out as" in k.loops or not cut) and (k.launches == 1 or z_format in ("csr", "dcsr")), k.loops
    P = ops["A"].toarray() @ ops["B"].toarray() if product else 3 * ops["C"].toarray()
    by_one = _one_by_one([s.strip() for s in text.split(";")], formats, ops)
    for threads in (1, 2):
        with spcomp_threads(threads, min_work=0):
            got = k(**{n: ops[n] for n in k.inputs})
        assert np.allclose(got["y"], P @ ops["x"]) and np.allclose(_dense(got["Z"]), P * ops["G"]), t_format
        assert _same(got["y"], by_one["y"]) and _same(got["Z"], by_one["Z"]), (t_format, z_format, threads)


def test_what_still_cannot_join_says_why():
    # (blocked ELL and a += into a dd:1,0 output join now: tests/test_programs_join_rest.py)
    k = _compile("T[i,k] = A[i,j]*B[j,k]; y[i] = T[i,k] * x[k]", {"A": "csr", "B": "csr", "T": "bell(R=2,C=2,K=4)"})
    assert k.launches == 1 and "laid out as bell(2,2,4)" in k.loops, k.loops
    ops = _ops(1, n=8, m=8)
    assert np.allclose(k(A=ops["A"], B=ops["B"], x=ops["x"]), (ops["A"] @ ops["B"]).toarray() @ ops["x"])
    k = _compile("T[i,k] = A[i,j]*B[j,k]; Z[k,i] = T[i,k] * 3; W[k] = Z[k,k] * 2",
                 {"A": "csr", "B": "csr", "T": "bsr(2,2)", "Z": "csr"}, outputs=["Z", "W"])
    # (Z, csr over T's cut indices, is assembled in T's blocks and converted by the runtime: W reads its diagonal)
    assert k.launches == 3 and "statement 2: a kernel of its own (not in the run before it: its output (csr) has " \
        "an index a blocked operand cuts: its kernel assembles it in that operand's blocks" in k.loops, k.loops
    assert np.allclose(k(A=ops["A"], B=ops["B"])["Z"].to_numpy(), 3 * (ops["A"] @ ops["B"]).toarray().T)
    k = _compile("T[i,k] = A[i,j]*B[j,k]; Y[i,k] += T[i,k] * 3", {"A": "csr", "B": "csr", "Y": "dd:1,0"})
    assert k.launches == 1, k.loops


def test_bad_input_still_gives_spcomp_errors():
    k = _compile("T[i,k] = A[i,j]*B[j,k]; Z[k,i] = T[i,k] * 3", {"A": "csr", "B": "csr", "T": "twell(B=4,K=4)",
                                                                  "Z": "csr"})
    ops = _ops(2)
    with pytest.raises(ShapeError):
        k(A=ops["A"], B=ops["A"])
    with pytest.raises(OperandError, match="missing operand"):
        k(A=ops["A"])
    k = _compile("T[i,k] = A[i,j]*B[j,k]; Y[i,k] = T[i,k] * 2", {"A": "csr", "B": "csr", "Y": "dd:1,0"})
    with pytest.raises(ShapeError):
        k(A=ops["A"], B=ops["A"])


@settings(max_examples=examples(25), deadline=None)
@given(st.data())
def test_random_packed_temporaries_and_column_major_outputs_match_numpy(data):
    """A packed temporary of random block size, slots, order flag and mode order,
    read by rows, against them or on its diagonal into an output of a random format
    (a dense one in a random mode order too): one launch, equal to numpy.einsum at
    one and two threads and to the statements run one by one."""
    n = data.draw(st.integers(1, 9), label="n")
    B = data.draw(st.integers(1, n), label="B")
    ell = data.draw(st.booleans(), label="ell (one block per row)")
    level = f"p({n})" if ell else f"p({B},{B}{',unordered' if data.draw(st.booleans(), label='unordered') else ''})"
    t_format = "d" + level + data.draw(st.sampled_from(["", ":1,0"]), label="T's mode order")
    read = data.draw(st.sampled_from(["Z[i,k] = T[i,k] * 3", "Z[k,i] = T[i,k] * 3", "z[k] = T[k,k] * x[k]",
                                      "Z[k,i] = T[i,k] * G[i,k]"]), label="reader")
    z_format = data.draw(st.sampled_from(["csr", "dcsr", "coo", "dd", "dd:1,0"]), label="Z")
    density = data.draw(st.sampled_from([0.0, 0.2, 0.6]), label="density")
    seed = data.draw(st.integers(0, 2 ** 16), label="seed")
    ops = _ops(seed, n=n, m=n, density=density)
    ops["G"] = np.random.default_rng(seed).standard_normal((n, n))
    text = f"T[i,k] = A[i,j]*B[j,k]; {read}"
    formats = {"A": "csr", "B": "csr", "T": t_format}
    if read.startswith("Z"):
        formats["Z"] = z_format
    k = _compile(text, formats)
    assert k.launches == 1, k.loops
    P = ops["A"].toarray() @ ops["B"].toarray()
    want = {"Z[i,k] = T[i,k] * 3": lambda: 3 * P, "Z[k,i] = T[i,k] * 3": lambda: 3 * P.T,
            "z[k] = T[k,k] * x[k]": lambda: np.diag(P) * ops["x"],
            "Z[k,i] = T[i,k] * G[i,k]": lambda: (P * ops["G"]).T}[read]()
    inputs = {name: ops[name] for name in k.inputs}
    by_one = _one_by_one([s.strip() for s in text.split(";")], formats, ops)[read.split("[")[0]]
    for threads in (1, 2):
        with spcomp_threads(threads, min_work=0):
            got = k(**inputs)
        assert np.allclose(_dense(got), want, atol=1e-12), (text, formats, threads)
        assert _same(got, by_one), (text, formats, threads)   # the same products and sums, in the same order
        if isinstance(got, np.ndarray) and formats.get("Z") == "dd:1,0":
            assert got.flags.f_contiguous


def test_copy_read_plans_a_copy_of_a_packed_temporary():
    """``copy_read``: every entry kept (no repeated index), the copy's levels taken
    from the writer's in the copy's order, each packed writer level named."""
    from spcomp.formats import Format
    from spcomp.lower.fused_diagonal import copy_read, placeable, walkable
    src = Format.parse("ddp(2,2)", 3)
    coo = Format.parse("c(nonunique)q(nonunique)q:2,1,0", 3)
    r = copy_read(0, "T", src, ["k", "j", "i"], ["i", "j", "k"], coo)
    assert r.first == (0, 1, 2) and r.kept == (2, 1, 0) and not r.in_order
    assert r.kinds == ("repeated", "singleton", "singleton") and r.levels == (("i", "k"), ("j", "j"), ("k", "i"))
    assert r.packed[:2] == (None, None) and (r.packed[2].B, r.packed[2].K) == (2, 2)
    dc = Format.parse("dc:1,0", 2)
    r = copy_read(1, "T", Format.parse("dp(4):1,0", 2), ["a", "b"], ["i", "k"], dc)
    assert r.kept == (0, 1) and r.kinds == ("dense", "compressed") and r.in_order  # T's own order: one walk
    assert walkable(Format.parse("twell(B=4,K=2)", 2)) and not walkable(Format.parse("bsr(2,2)", 2))
    # (bitmap levels are walked, and bitmap and packed ones placed, since test_programs_join_rest.py)
    assert walkable(Format.parse("db", 2)) and placeable(coo) and placeable(Format.parse("dp(4)", 2))
    assert not placeable(Format.parse("bsr(2,2)", 2))
