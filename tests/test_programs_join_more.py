"""More statements join one fused function (issue 24): diagonal reads of a run's
temporaries and column-major dense temporaries.

A statement that reads a sparse temporary of its run on a diagonal (``v[k] =
T[k,k]``, ``Z[i,j] = T[i,i,j]``) reads a diagonal storage the fused function now
gathers itself from the writer's arrays (``lower/fused_diagonal.py``); a dense
temporary declared column-major (``dd:1,0``) is written and read row-major inside
the function (``program_copies.row_major_temporaries``). Every result is checked
against numpy.einsum and against the statements compiled and run one by one; what
still cannot join keeps a kernel of its own, ``k.loops`` saying why.
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

DIAGONAL = "reads T through a diagonal copy gathered inside the function"


def _square(seed, n=9, density=0.35):
    rng = np.random.default_rng(seed)
    return {"A": sp.random(n, n, density=density, format="csr", random_state=seed),
            "B": sp.random(n, n, density=density, format="csr", random_state=seed + 1),
            "x": rng.standard_normal(n), "w": rng.standard_normal(n)}


@pytest.mark.parametrize("t_format", ["csr", "csc", "dcsr", "coo", "dc(unordered)"])
@pytest.mark.parametrize("reader", ["v[k] = T[k,k] * 2", "v[i] = T[i,i] * x[i] + w[i]"])
@pytest.mark.parametrize("v_format", ["dense", "c"])
def test_a_diagonal_read_of_a_sparse_temporary_joins(t_format, reader, v_format):
    text = f"T[i,k] = A[i,j]*B[j,k]; {reader}"
    formats = {"A": "csr", "B": "csr", "T": t_format, "v": v_format}
    k = _compile(text, formats)
    assert k.launches == 1 and DIAGONAL in k.loops, k.loops
    if (t_format, v_format) == ("csr", "dense"):  # (else a statement's own plan rules out chunks first)
        assert "on threads in phases, statements 1 | 2, cut before each statement that reads a copy" in k.loops, \
            k.loops
    ops = _square(len(t_format + reader + v_format))
    d = np.diag((ops["A"] @ ops["B"]).toarray())
    want = 2 * d if "x" not in reader else d * ops["x"] + ops["w"]
    by_one = _one_by_one([s.strip() for s in text.split(";")], formats, ops)["v"]
    for threads in (1, 2):
        with spcomp_threads(threads, min_work=0):
            got = k(**{n: ops[n] for n in k.inputs})
        assert np.allclose(_dense(got), want) and np.allclose(_dense(got), _dense(by_one))


@pytest.mark.parametrize("t_format", ["csf", "coo", "dcc", "ccc:0,2,1"])
@pytest.mark.parametrize("read", [("i,i,j", "i,j"), ("i,j,i", "i,j"), ("i,i,i", "i"), ("j,i,i", "j,i")])
def test_a_diagonal_of_a_3d_temporary_joins(monkeypatch, t_format, read):
    """Diagonals of order 1 and 2 (a compressed level opened whenever its parent or
    coordinate changes, a dense one at parent * N + coordinate), T's arrays grown
    from a capacity of 1 before the diagonal reads them."""
    from spcomp.runtime import launch
    monkeypatch.setattr(launch, "FIRST_CAPACITY", 1)
    acc, out = read
    k = _compile(f"T[i,j,k] = A[i,j,k]*B[i,j,k]; Z[{out}] = T[{acc}] * 3",
                 {"A": "csf", "B": "csf", "T": t_format, "Z": "dense"})
    assert k.launches == 1 and DIAGONAL in k.loops, k.loops
    rng = np.random.default_rng(len(t_format + acc))
    a, b = (rng.standard_normal((6, 6, 6)) * (rng.random((6, 6, 6)) < 0.5) for _ in range(2))
    got = k(A=spcomp.Tensor.from_numpy(a, "csf"), B=spcomp.Tensor.from_numpy(b, "csf"))
    assert np.allclose(got, 3 * np.einsum(f"{acc.replace(',', '')}->{out.replace(',', '')}", a * b))


def test_a_column_major_dense_temporary_joins():
    text = "T[i,k] = A[i,j]*B[j,k]; v[i] = T[i,k] * w[k]; u[k] = T[i,k] * x[i]"
    formats = {"A": "csr", "B": "csr", "T": "dd:1,0"}
    k = _compile(text, formats)
    assert k.launches == 1, k.loops
    assert "T: declared dd:1,0, written and read row-major inside the function" in k.loops, k.loops
    ops = _square(5, n=12)
    P = (ops["A"] @ ops["B"]).toarray()
    by_one = _one_by_one([s.strip() for s in text.split(";")], formats, ops)
    for threads in (1, 2):
        with spcomp_threads(threads, min_work=0):
            got = k(A=ops["A"], B=ops["B"], w=ops["w"], x=ops["x"])
        assert np.allclose(got["v"], P @ ops["w"]) and np.allclose(got["u"], ops["x"] @ P)
        assert np.allclose(got["v"], by_one["v"]) and np.allclose(got["u"], by_one["u"])


def test_a_returned_column_major_output_keeps_its_layout():
    """A returned dense tensor is the caller's to see in its declared layout: the
    fused function writes it column-major into the array it hands back (one launch),
    and the result comes back column-major, as its kernel of its own returns it."""
    text = "T[i,k] = A[i,j]*B[j,k]; v[i] = T[i,k] * w[k]"
    formats = {"A": "csr", "B": "csr", "T": "dd:1,0"}
    k = _compile(text, formats, outputs=["T", "v"])
    assert k.launches == 1 and "T: declared dd:1,0, written in that order into the array handed back" in k.loops, \
        k.loops
    ops = _square(8)
    got = k(A=ops["A"], B=ops["B"], w=ops["w"])
    P = (ops["A"] @ ops["B"]).toarray()
    assert np.allclose(got["T"], P) and got["T"].flags.f_contiguous
    assert np.allclose(got["v"], P @ ops["w"])


@pytest.mark.parametrize("t_format", ["csf", "ccc:2,1,0", "ccc:1,2,0", "c(unordered)cc"])
@pytest.mark.parametrize("read", ["j,i,i", "i,j,i"])
def test_a_diagonal_asked_in_another_order_is_sorted_inside_the_function(t_format, read):
    """A csr Z asks for T's diagonal rows first: a transposed copy of the diagonal,
    or a T whose storage order (or unordered level) meets its entries out of order.
    The kept entries are counting-sorted inside the function."""
    k = _compile(f"T[i,j,k] = A[i,j,k]*B[i,j,k]; Z[i,j] = T[{read}] * 2",
                 {"A": "csf", "B": "csf", "T": t_format, "Z": "csr"})
    assert k.launches == 1 and DIAGONAL in k.loops, k.loops
    rng = np.random.default_rng(3)
    a, b = (rng.standard_normal((7, 7, 7)) * (rng.random((7, 7, 7)) < 0.5) for _ in range(2))
    got = _dense(k(A=spcomp.Tensor.from_numpy(a, "csf"), B=spcomp.Tensor.from_numpy(b, "csf")))
    assert np.allclose(got, 2 * np.einsum(f"{read.replace(',', '')}->ij", a * b))


def test_a_diagonal_of_a_bitmap_temporary_is_gathered_too():
    """A bitmap (db) temporary: its set bytes are walked inside the function (once a
    kernel of its own; more in test_programs_join_rest.py)."""
    k = _compile("T[i,k] = A[i,j]*B[j,k]; v[k] = T[k,k] * 2", {"A": "csr", "B": "csr", "T": "db"})
    assert k.launches == 1 and "reads T through a diagonal copy gathered inside the function" in k.loops, k.loops
    ops = _square(6)
    assert np.allclose(k(A=ops["A"], B=ops["B"]), 2 * np.diag((ops["A"] @ ops["B"]).toarray()))


def test_a_diagonal_read_past_32_bits_and_saved(monkeypatch):
    """T passes the (lowered) 32-bit limit: the run reruns 64-bit, the diagonal
    gathered again there; a saved and loaded program does the same."""
    monkeypatch.setattr(record, "INDEX32_LIMIT", 30)
    k = _compile("T[i,k] = A[i,j]*B[j,k]; v[k] = T[k,k] * 2", {"A": "csr", "B": "csr", "T": "dcsr"})
    loaded = spcomp.loads(k.to_bytes())
    assert k.launches == 1 and loaded.launches == 1 and loaded.loops == k.loops
    ops = _square(4, n=12, density=0.4)
    P = (ops["A"] @ ops["B"]).toarray()
    assert np.count_nonzero(P) > 30
    for kernel in (k, loaded):
        with spcomp_threads(1):
            got = kernel(A=ops["A"], B=ops["B"])
        assert np.allclose(got, 2 * np.diag(P)) and 64 in kernel.segments[0][1].variants


def test_bad_input_still_gives_spcomp_errors():
    k = _compile("T[i,k] = A[i,j]*B[j,k]; v[k] = T[k,k] * 2", {"A": "csr", "B": "csr", "T": "csr"})
    A, B = sp.random(9, 7, density=0.4, format="csr", random_state=1), sp.random(7, 8, density=0.4, random_state=2)
    with pytest.raises(ShapeError, match="T: dimensions 0 and 1 are both indexed by k"):
        k(A=A, B=B.tocsr())           # T is 9 x 8: no diagonal
    with pytest.raises(ShapeError):
        k(A=A, B=sp.random(6, 9, density=0.4, format="csr"))
    with pytest.raises(OperandError, match="missing operand"):
        k(A=A)
    c = _compile("T[i,k] = A[i,j]*B[j,k]; v[i] = T[i,k] * w[k]", {"A": "csr", "B": "csr", "T": "dd:1,0"})
    with pytest.raises(ShapeError):
        c(A=A, B=B.tocsr(), w=np.ones(5))


@settings(max_examples=examples(25), deadline=None)
@given(st.data())
def test_random_programs_with_diagonals_and_column_major_temporaries(data):
    """A writer of T in a random format (sparse, dense, column-major dense), random
    readers of it (its diagonal, its rows, its columns), sometimes a statement
    reading a reader's output: every statement joins one function, and matches
    numpy.einsum and the statements run one by one, at one and two threads."""
    t_format = data.draw(st.sampled_from(["csr", "csc", "dcsr", "coo", "dense", "dd:1,0"]), label="T")
    readers = data.draw(st.lists(st.sampled_from([
        ("v", "v[k] = T[k,k] * 2", "kk->k"), ("y", "y[i] = T[i,i] * x[i]", "ii,i->i"),
        ("r", "r[i] = T[i,k] * w[k]", "ik,k->i"), ("c", "c[k] = T[i,k] * x[i]", "ik,i->k"),
        ("d", "d[i] = T[i,i] + T[i,k] * w[k]", None)]), min_size=1, max_size=3, unique=True), label="readers")
    out_format = data.draw(st.sampled_from(["dense", "c"]), label="reader outputs")
    then = data.draw(st.booleans(), label="then s = first reader's output * 3")
    n = data.draw(st.integers(1, 9), label="n")
    density = data.draw(st.sampled_from([0.0, 0.2, 0.6]), label="density")
    a_format = data.draw(st.sampled_from(["csr", "csc", "dcsr", "coo", "dense"]), label="A")
    seed = data.draw(st.integers(0, 2 ** 16), label="seed")
    ops = _square(seed, n=n, density=density)
    stmts = ["T[i,k] = A[i,j]*B[j,k]"] + [text for _n, text, _e in readers]
    if then:
        stmts.append(f"s[i] = {readers[0][0]}[i] * 3")
    formats = {"A": a_format, "B": "csr", "T": t_format, **{name: out_format for name, _t, _e in readers}}
    outputs = [name for name, _t, _e in readers] + (["s"] if then else [])
    k = _compile("; ".join(stmts), formats, outputs=outputs)
    assert k.launches == 1, k.loops
    P = ops["A"].toarray() @ ops["B"].toarray()
    args = {name: ops[name] for name in k.inputs}
    by_one = _one_by_one(stmts, formats, ops)
    for threads in (1, 2):
        with spcomp_threads(threads, min_work=0):
            got = k(**args)
        got = got if len(outputs) > 1 else {outputs[0]: got}
        for name, _text, spec in readers:
            want = np.diag(P) + P @ ops["w"] if spec is None else \
                np.einsum(spec, P, *([ops["x"]] if "x" in _text else [ops["w"]] if "w" in _text else []))
            if name == "v":
                want = 2 * want
            assert np.allclose(_dense(got[name]), want), (stmts, formats, threads, name)
            assert np.allclose(_dense(got[name]), _dense(by_one[name])), (stmts, formats, threads, name)
        if then:
            assert np.allclose(_dense(got["s"]), 3 * _dense(by_one[readers[0][0]]))


def test_a_column_major_temporary_read_by_rows_is_a_row_workspace():
    """Seen row-major, T is written and read at the fused loop's row: one row of
    workspace per thread, the rows split over threads."""
    k = _compile("T[i,k] = A[i,j]*B[j,k]; v[i] = T[i,k] * w[k]", {"A": "csr", "B": "csr", "T": "dd:1,0"})
    assert k.launches == 1 and "T: a row workspace" in k.loops and "rows split over threads" in k.loops, k.loops
    ops = _square(9, n=40)
    with spcomp_threads(2, min_work=0):
        got = k(A=ops["A"], B=ops["B"], w=ops["w"])
    assert np.allclose(got, (ops["A"] @ ops["B"]) @ ops["w"])


@settings(max_examples=examples(20), deadline=None)
@given(st.data())
def test_random_diagonals_of_3d_temporaries(data):
    """T of order 3 in a random format and mode order, read on a random diagonal
    into an output of a random format: it joins (the diagonal gathered inside the
    function) or keeps a kernel of its own that ``k.loops`` says why; either way
    the result matches numpy.einsum, at one and two threads."""
    order = data.draw(st.permutations([0, 1, 2]), label="T's mode order")
    levels = data.draw(st.sampled_from(["ccc", "dcc", "coo", "c(unordered)cc", "dc(unordered)c"]),
                       label="T's levels")
    t_format = f"{'c(nonunique)q(nonunique)q' if levels == 'coo' else levels}:{','.join(map(str, order))}"
    acc = data.draw(st.sampled_from(["i,i,j", "i,j,i", "j,i,i", "i,i,i"]), label="T read at")
    out = data.draw(st.permutations(sorted(set(acc.split(",")))), label="output indices")
    z_format = data.draw(st.sampled_from(["dense", "sparse"]), label="Z")
    z_format = "dense" if z_format == "dense" else ("c" if len(out) == 1 else "csr")
    n = data.draw(st.integers(1, 6), label="n")
    rng = np.random.default_rng(data.draw(st.integers(0, 2 ** 16), label="seed"))
    a, b = (rng.standard_normal((n, n, n)) * (rng.random((n, n, n)) < 0.5) for _ in range(2))
    text = f"T[i,j,k] = A[i,j,k]*B[i,j,k]; Z[{','.join(out)}] = T[{acc}] * 3"
    k = _compile(text, {"A": "csf", "B": "csf", "T": t_format, "Z": z_format})
    if k.launches == 1:
        assert DIAGONAL in k.loops, k.loops
    else:
        assert "statement 2: a kernel of its own (not in the run before it: " in k.loops \
            or "statement 1: a kernel of its own" in k.loops, k.loops
    want = 3 * np.einsum(f"{acc.replace(',', '')}->{''.join(out)}", a * b)
    for threads in (1, 2):
        with spcomp_threads(threads, min_work=0):
            got = k(A=spcomp.Tensor.from_numpy(a, "csf"), B=spcomp.Tensor.from_numpy(b, "csf"))
        assert np.allclose(_dense(got), want), (text, t_format, z_format, threads)


@pytest.mark.parametrize("text, t_format, shape", [
    ("T[i,j,k] = A[i,j,l]*B[l,k]; Z[j,i,k] = T[i,j,k] * 3", "dcc(unordered)", (6, 5, 7, 8)),
    ("T[i,j,k] = A[i,j,l]*B[l,k]; Z[k,j,i] = T[i,j,k] * 3", "dcc(unordered)", (6, 5, 7, 8)),
    ("T[i,k] = A[i,l]*B[l,k]; Z[k,i] = T[i,k] * 3", "dc(unordered)", (9, 7, 8)),
    ("T[i,k] = A[i,l]*B[l,k]; Z[k,i] = T[i,k] * 3", "c(unordered)c", (9, 7, 8)),
])
def test_a_transposed_read_of_an_unordered_temporary_joins(text, t_format, shape):
    """T's entries come as touched (a workspace appended unordered): the copy made
    inside the function is sorted by every level, so Z (coo) comes out sorted."""
    k = _compile(text, {"A": "csf" if len(shape) == 4 else "csr", "B": "csr", "T": t_format, "Z": "coo"})
    assert k.launches == 1 and "reads T through a transposed copy made inside the function" in k.loops, k.loops
    rng = np.random.default_rng(len(text))
    a = rng.standard_normal(shape[:-1]) * (rng.random(shape[:-1]) < 0.4)
    b = rng.standard_normal(shape[-2:]) * (rng.random(shape[-2:]) < 0.4)
    got = k(A=spcomp.Tensor.from_numpy(a, "csf" if a.ndim == 3 else "csr"), B=spcomp.Tensor.from_numpy(b, "csr"))
    got.validate("Z")
    coords, _values = got.to_coo()
    keys = list(zip(*coords))
    assert keys == sorted(keys) and len(set(keys)) == len(keys)
    lhs = text.split("; Z[")[1].split("]")[0].replace(",", "")
    t_idx = "ijk" if a.ndim == 3 else "ik"
    want = 3 * np.einsum(f"{'ijl' if a.ndim == 3 else 'il'},lk->{t_idx}", a, b)
    assert np.allclose(_dense(got), np.einsum(f"{t_idx}->{lhs}", want))


def test_diagonal_read_plans_one_walk_or_a_sort():
    """``lower.fused_diagonal.diagonal_read``: which writer level each diagonal level
    keeps, which levels must agree, and whether one walk meets the entries in order."""
    from spcomp.formats import Format
    from spcomp.lower.diagonal import Diagonal, diagonal_format
    from spcomp.lower.fused_diagonal import buildable, diagonal_read

    def read(fmt, dims, asked=None):
        fmt = Format.parse(fmt, len(dims))
        d = Diagonal("T", fmt, dims, tuple("jik"[x] for x in dims), diagonal_format(fmt, dims))
        asked = asked or d.format
        return buildable(d, asked), diagonal_read(0, d, list(d.indices), list("abc"[:len(dims)]), asked)
    ok, r = read("csc", (0, 0))           # T[k,k], columns first: keeps the row level (compressed)
    assert ok and r.first == (0, 0) and r.kept == (0,) and r.kinds == ("compressed",) and r.in_order
    ok, r = read("csr", (0, 0))           # rows first: the dense level is kept
    assert ok and r.kept == (0,) and r.kinds == ("dense",) and r.in_order
    ok, r = read("ccc:2,1,0", (0, 1, 0))  # T[j,i,j] stored k, i, j: the diagonal is i, j; the walk meets j, i
    assert ok and r.first == (0, 1, 0) and r.kept == (1, 0) and not r.in_order
    ok, r = read("csf", (0, 1, 1), Format.parse("cc:1,0", 2))  # T[j,i,i] asked i first: sorted
    assert ok and not r.in_order and r.kept == (1, 0)
    assert read("ell", (0, 0))[0] and read("ell", (0, 0))[1].packed[1].K == 32  # a packed level is walked
    assert read("db", (0, 0))[0]          # a bitmap one too (its set bytes)
    assert not read("bsr(2,2)", (0, 1))[0]  # a blocked one is not
