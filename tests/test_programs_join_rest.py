"""The rest of issue 24 on one thread: bitmap and blocked ELL temporaries and
outputs, copies and diagonals of bitmap temporaries, an output assembled in a
blocked operand's blocks that nothing reads after, and a ``+=`` into a column-major
dense output join the one-thread fused function.

A writer of a bitmap tensor (``bc``, ``cb``: a ``b`` level over a sparse one) assembles
it compressed (``lower.outputs.assembled_format``); the fused function lays it out in
its bitmap levels for each reader (``fused_diagonal._Levels``: a byte set per entry)
and the runtime expands a returned one as after a kernel of its own. One whose levels
all insert (``db``, ``bb``) is written in place. Read against its order or on a
diagonal it is walked (set bytes only: ``fused_transpose.walk_entries``), gathered,
sorted and placed. A blocked ELL (``bell``) is laid out in its slots the same way (a
block past K: PackedOverflowError). A ``+=`` into a ``dd:1,0`` output adds into the
caller's array in place where it is column-major, else into a column-major copy added back.
Every result is checked against numpy.einsum, bitwise against the statements
compiled and run one by one, and for one launch on a one-thread call.
"""
from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp
from hypothesis import given, settings
from hypothesis import strategies as st

import spcomp
from spcomp.errors import DTypeError, OperandError, PackedOverflowError, ShapeError, UnsupportedError
from spcomp.lower import record
from spcomp.testing.programs import close, program_operands, programs, reference_program

from conftest import examples, spcomp_threads
from program_steps import compile_quiet as _compile, dense as _dense, one_by_one as _one_by_one

BITMAPS = ["bc", "cb", "bb", "db", "bc:1,0"]


def _ops(seed, n=8, m=6, density=0.35):
    rng = np.random.default_rng(seed)
    return {"A": sp.random(n, m, density=density, format="csr", random_state=seed),
            "B": sp.random(m, n, density=density, format="csr", random_state=seed + 1),
            "x": rng.standard_normal(m), "c": rng.standard_normal(n)}


def _check(text, formats, ops, want, out, outputs=None):
    """The program compiled: one launch on a one-thread call, ``out`` equal to
    ``want`` (einsum) and bitwise to the statements run one by one."""
    k = _compile(text, formats, **({"outputs": outputs} if outputs else {}))
    assert k.launches == 1, k.loops
    with spcomp_threads(1):
        got = k(**{n: ops[n] for n in k.inputs})
    assert k.last_launches == 1
    got = got[out] if isinstance(got, dict) else got
    by_one = _one_by_one([s.strip() for s in text.split(";")], formats, ops)
    assert np.allclose(_dense(got), want), k.loops
    assert np.array_equal(_dense(got), _dense(by_one[out])), k.loops
    with spcomp_threads(2, min_work=0):   # (a call big enough for threads: in phases or statement by statement)
        two = k(**{n: ops[n] for n in k.inputs})
    two = two[out] if isinstance(two, dict) else two
    assert np.array_equal(_dense(two), _dense(got)), k.loops
    return k, got


@pytest.mark.parametrize("t_format", BITMAPS)
def test_a_bitmap_temporary_joins(t_format):
    ops = _ops(1)
    text = "T[i,k] = A[i,j]*B[j,k]; y[i] = T[i,k]*c[k]"
    k, _ = _check(text, {"A": "csr", "B": "csr", "T": t_format}, ops, (ops["A"] @ ops["B"]) @ ops["c"], "y")
    assert "a kernel of its own" not in k.loops
    if t_format in ("bc", "cb", "bc:1,0"):   # assembled compressed, laid out in its bitmap levels
        assert "laid out as" in k.loops and "inside the function for each reader" in k.loops, k.loops


def test_a_bitmap_vector_temporary_joins():
    ops = _ops(2)
    text = "t[i] = A[i,j]*x[j]; y[i] = t[i]*c[i]"
    _check(text, {"A": "csr", "t": "b"}, ops, (ops["A"] @ ops["x"]) * ops["c"], "y")


@pytest.mark.parametrize("z_format", ["bc", "cb", "bb", "db"])
@pytest.mark.parametrize("t_format", ["csr", "bc", "cb"])
def test_a_bitmap_output_joins_and_comes_back_in_its_format(t_format, z_format):
    ops = _ops(3)
    text = "T[i,k] = A[i,j]*B[j,k]; Z[i,k] = T[i,k]*3"
    formats = {"A": "csr", "B": "csr", "T": t_format, "Z": z_format}
    k, got = _check(text, formats, ops, 3 * (ops["A"] @ ops["B"]).toarray(), "Z")
    assert str(got.format) == str(spcomp.Format.parse(z_format, 2))
    got.validate("Z")
    both = _compile(text, formats, outputs=["T", "Z"])
    with spcomp_threads(1):
        out = both(A=ops["A"], B=ops["B"])
    assert both.last_launches == 1, both.loops
    assert str(out["T"].format) == str(spcomp.Format.parse(t_format, 2))
    out["T"].validate("T")
    assert np.array_equal(_dense(out["T"]), (ops["A"] @ ops["B"]).toarray())


@pytest.mark.parametrize("t_format", BITMAPS)
@pytest.mark.parametrize("z_format", ["csr", "coo", "dense"])
def test_a_bitmap_temporary_read_transposed_is_copied_inside_the_function(t_format, z_format):
    ops = _ops(4)
    text = "T[i,k] = A[i,j]*B[j,k]; Z[k,i] = T[i,k]*3"
    k, got = _check(text, {"A": "csr", "B": "csr", "T": t_format, "Z": z_format}, ops,
                    3 * (ops["A"] @ ops["B"]).toarray().T, "Z")
    if t_format != "bc:1,0" and z_format != "dense":  # (read in its storage order: no copy)
        assert "reads T through a transposed copy made inside the function" in k.loops, k.loops
    if z_format != "dense":
        got.validate("Z")


@pytest.mark.parametrize("t_format", BITMAPS)
def test_a_diagonal_of_a_bitmap_temporary_is_gathered_inside_the_function(t_format):
    rng = np.random.default_rng(5)
    ops = {"A": sp.random(7, 7, density=0.4, format="csr", random_state=5),
           "B": sp.random(7, 7, density=0.4, format="csr", random_state=6), "c": rng.standard_normal(7)}
    text = "T[i,k] = A[i,j]*B[j,k]; y[i] = T[i,i]*c[i]"
    k, _ = _check(text, {"A": "csr", "B": "csr", "T": t_format}, ops,
                  np.diag((ops["A"] @ ops["B"]).toarray()) * ops["c"], "y")
    assert "reads T through a diagonal copy gathered inside the function" in k.loops, k.loops


def test_a_bitmap_temporary_of_order_3_joins():
    rng = np.random.default_rng(7)
    X = (rng.random((4, 5, 6)) < 0.3) * rng.standard_normal((4, 5, 6))
    for t_format, z_format in [("dbc", "csf"), ("cbc", "coo"), ("dcb", "dense"), ("bcc", "csf")]:
        text = "T[i,j,k] = X[i,j,k] * 2; Z[k,j,i] = T[i,j,k] * 3"
        ops = {"X": spcomp.Tensor.from_numpy(X, "csf")}
        _check(text, {"X": "csf", "T": t_format, "Z": z_format}, ops, np.einsum("ijk->kji", 6 * X), "Z")
        _check("T[i,j,k] = X[i,j,k] * 2; Z[i,j,k] = T[i,j,k] * 3", {"X": "csf", "T": t_format, "Z": z_format},
               ops, 6 * X, "Z")


def test_an_empty_bitmap_temporary():
    ops = {"A": sp.csr_matrix((5, 4)), "B": sp.csr_matrix((4, 3)), "c": np.ones(3)}
    for t_format in BITMAPS:
        for text in ("T[i,k] = A[i,j]*B[j,k]; y[i] = T[i,k]*c[k]", "T[i,k] = A[i,j]*B[j,k]; Z[k,i] = T[i,k]*2"):
            out = "y" if text.startswith("T[i,k] = A[i,j]*B[j,k]; y") else "Z"
            want = np.zeros(5) if out == "y" else np.zeros((3, 5))
            _check(text, {"A": "csr", "B": "csr", "T": t_format, "Z": "csr"} if out == "Z" else
                   {"A": "csr", "B": "csr", "T": t_format}, ops, want, out)


@pytest.mark.parametrize("layout", ["C", "F"])
def test_a_column_major_accumulated_output_joins(layout):
    rng = np.random.default_rng(8)
    A = sp.random(6, 5, density=0.4, format="csr", random_state=8)
    x, c = rng.standard_normal(5), rng.standard_normal(4)
    text = "t[i] = A[i,j]*x[j]; Y[i,k] += t[i]*c[k]; Z[i,k] = Y[i,k]*2"
    k = _compile(text, {"A": "csr", "Y": "dd:1,0"}, outputs=["Y", "Z"])
    assert k.launches == 1, k.loops
    assert "Y: declared dd:1,0, added (+=) in that order into your array" in k.loops
    Y0 = rng.standard_normal((6, 4))
    t = _compile("t[i] = A[i,j]*x[j]", {"A": "csr"})(A=A, x=x)
    for threads in (1, 1, 1, 2):  # (a repeat of the call too: such a run takes the general path each time)
        Y = np.array(Y0, order=layout)
        with spcomp_threads(threads, min_work=0 if threads > 1 else None):
            out = k(A=A, x=x, c=c, Y=Y)
        assert k.last_launches == 1 or threads > 1
        assert out["Y"] is Y and Y.flags.f_contiguous == (layout == "F")
        apart = _compile("Y[i,k] += t[i]*c[k]", {"Y": "dd:1,0"})(t=t, c=c, Y=np.array(Y0, order=layout))
        assert np.allclose(Y, Y0 + np.einsum("ij,j,k->ik", A.toarray(), x, c))
        assert np.array_equal(Y, apart)
        assert np.array_equal(out["Z"], 2 * apart)


def test_a_column_major_accumulated_output_refuses_what_a_kernel_refuses():
    A = sp.random(6, 5, density=0.4, format="csr", random_state=8)
    k = _compile("t[i] = A[i,j]*x[j]; Y[i,k] += t[i]*c[k]", {"A": "csr", "Y": "dd:1,0"})
    for bad in (np.ones((6, 4), dtype=np.float32), np.ones((4, 6)), [[1.0] * 4] * 6):
        with pytest.raises((OperandError, ShapeError, DTypeError)):
            k(A=A, x=np.ones(5), c=np.ones(4), Y=bad)
    frozen = np.ones((6, 4))
    frozen.flags.writeable = False
    with pytest.raises(OperandError):
        k(A=A, x=np.ones(5), c=np.ones(4), Y=frozen)


def test_a_compressed_first_vector_temporary_joins_on_one_thread():
    A = sp.random(9, 7, density=0.3, format="coo", random_state=9)
    x, c = np.arange(7.0), np.arange(9.0)
    k = _compile("t[i] = A[i,j]*x[j]; y[i] = t[i]*c[i]", {"A": "coo"})
    assert k.launches == 1 and "(c, chosen from A)" in k.loops, k.loops
    with spcomp_threads(1):
        got = k(A=A, x=x, c=c)
    assert k.last_launches == 1 and np.allclose(got, (A @ x) * c)


@pytest.mark.parametrize("t_format", ["bell(2,2,4)", "bell(4,2,4)", "bell(2,4,8)"])
@pytest.mark.parametrize("read", ["y[i] = T[i,k]*c[k]", "Z[i,k] = T[i,k]*3", "y[k] = T[i,k]*c[i]"])
def test_a_blocked_ell_temporary_is_laid_out_in_its_slots_inside_the_function(t_format, read):
    ops = _ops(10, n=8, m=8)
    P = (ops["A"] @ ops["B"]).toarray()
    out = read.split("[")[0]
    want = {"y[i] = T[i,k]*c[k]": P @ ops["c"], "Z[i,k] = T[i,k]*3": 3 * P,
            "y[k] = T[i,k]*c[i]": ops["c"] @ P}[read]
    formats = {"A": "csr", "B": "csr", "T": t_format, **({"Z": t_format} if out == "Z" else {})}
    k, got = _check(f"T[i,k] = A[i,j]*B[j,k]; {read}", formats, ops, want, out)
    assert f"laid out as {t_format}" in k.loops, k.loops
    if out == "Z":
        assert str(got.format) == t_format
        got.validate("Z")


def test_a_blocked_ell_block_past_its_slots_raises_packed_overflow():
    ops = _ops(11, n=8, m=8, density=0.6)
    k = _compile("T[i,k] = A[i,j]*B[j,k]; y[i] = T[i,k]*c[k]", {"A": "csr", "B": "csr", "T": "bell(2,2,1)"})
    assert k.launches == 1, k.loops
    for _ in range(2):
        with pytest.raises(PackedOverflowError, match=r"T \(bell\(2,2,1\)\).*larger K"):
            k(A=ops["A"], B=ops["B"], c=ops["c"])


@pytest.mark.parametrize("z_format", ["csr", "dcsr", "coo", "bc"])
def test_an_output_assembled_in_a_blocked_operands_blocks_joins_where_nothing_reads_it(z_format):
    ops = _ops(10, n=8, m=8)
    text = "T[i,k] = A[i,j]*B[j,k]; Z[k,i] = T[i,k]*3"
    k, got = _check(text, {"A": "csr", "B": "csr", "T": "bsr(2,2)", "Z": z_format}, ops,
                    3 * (ops["A"] @ ops["B"]).toarray().T, "Z")
    assert f"converted to {spcomp.Format.parse(z_format, 2)} by the runtime, handed back" in k.loops, k.loops
    assert str(got.format) == str(spcomp.Format.parse(z_format, 2))
    got.validate("Z")


@pytest.mark.parametrize("z_format", ["csr", "dcsr", "coo", "bc", "cd"])
@pytest.mark.parametrize("read", ["y[k] = Z[k,i]*c[i]", "W[i,k] = Z[k,i]*2"])
def test_an_output_assembled_in_a_blocked_operands_blocks_is_unblocked_for_its_readers(z_format, read):
    """Z (over indices T's blocks cut) is gathered from its blocks, sorted and placed
    in its declared levels for a plain reader, or into a copy for a transposed one."""
    ops = _ops(12, n=8, m=8)
    P = (ops["A"] @ ops["B"]).toarray()
    out = read.split("[")[0]
    want = 3 * P.T @ ops["c"] if out == "y" else 6 * P
    formats = {"A": "csr", "B": "csr", "T": "bsr(2,2)", "Z": z_format, **({"W": "csr"} if out == "W" else {})}
    k, _ = _check(f"T[i,k] = A[i,j]*B[j,k]; Z[k,i] = T[i,k]*3; {read}", formats, ops, want, out)
    assert f"laid out as {spcomp.Format.parse(z_format, 2)} inside the function for each reader" in k.loops, k.loops
    both = _compile(f"T[i,k] = A[i,j]*B[j,k]; Z[k,i] = T[i,k]*3; {read}", formats, outputs=[out, "Z"])
    with spcomp_threads(1):
        got = both(**{n: ops[n] for n in both.inputs})
    assert both.last_launches == 1 and np.allclose(_dense(got["Z"]), 3 * P.T)
    got["Z"].validate("Z")


def test_what_still_keeps_a_kernel_of_its_own_says_why():
    ops = _ops(10, n=8, m=8)
    k = _compile("T[i,k] = A[i,j]*B[j,k]; Z[k,i] = T[i,k]*3; y[k] = Z[k,k]*c[k]",
                 {"A": "csr", "B": "csr", "T": "bsr(2,2)", "Z": "csr"})
    assert k.launches == 3 and "has an index a blocked operand cuts" in k.loops and "not on a diagonal" in k.loops, \
        k.loops
    got = k(A=ops["A"], B=ops["B"], c=ops["c"])
    assert np.allclose(got, 3 * np.diag((ops["A"] @ ops["B"]).toarray()) * ops["c"])


_FORMATS = st.sampled_from(["bc", "cb", "bb", "db", "bc:1,0", "csr", "dcsr", "coo", "dense", "ell(K=8)", "cd"])


@settings(max_examples=examples(25), deadline=None)
@given(st.data())
def test_random_programs_with_bitmap_temporaries_are_one_launch(data):
    """Random programs whose written tensors of order 2 take bitmap, packed, blocked-like
    and other formats (a 2-d ``+=`` output sometimes ``dd:1,0``): numpy.einsum's
    results, in one launch on a one-thread call."""
    case = data.draw(programs(max_statements=4, accumulate=True, transposed_reads=True, input_kinds="dcq"))
    formats = dict(case.formats)
    for statement in case.text.replace("; ", "\n").split("\n"):
        lhs = statement.split("=")[0].strip(" +")
        name = lhs.split("[")[0]
        if name in formats and name not in case.accumulated and lhs.count(",") == 1:
            formats[name] = data.draw(_FORMATS, label=f"{name} format")
        elif name in case.accumulated and lhs.count(",") == 1 and data.draw(st.booleans(), label=f"{name} dd:1,0"):
            formats[name] = "dd:1,0"   # a += into a column-major output (your array row-major: a copy added back)
    ops = data.draw(program_operands(case))
    try:
        k = _compile(case.text, formats, outputs=list(case.outputs))
    except UnsupportedError as e:
        assert str(e)
        return
    with spcomp_threads(1):
        got = k(**{n: v[1] for n, v in ops.items()})
    if isinstance(k, spcomp.ProgramKernel):
        assert k.last_launches == 1, (str(case), formats, k.loops)
    want = reference_program(k.program, {n: v[0] for n, v in ops.items()})
    got = got if len(case.outputs) > 1 else {case.outputs[0]: got}
    for name in case.outputs:
        assert close(got[name], want[name]), (str(case), formats, name)


@pytest.mark.parametrize("t_format", ["bc", "db", "bell(2,2,8)"])
def test_past_32_bits_and_saved(monkeypatch, t_format):
    """T passes the (lowered) 32-bit limit: the run reruns 64-bit, the layout, the copy
    and the diagonal made again there; a saved and loaded program does the same."""
    monkeypatch.setattr(record, "INDEX32_LIMIT", 30)
    text = "T[i,k] = A[i,j]*B[j,k]; Z[k,i] = T[i,k] * 3; v[i] = T[i,k] * c[k]" if t_format.startswith("bell") \
        else "T[i,k] = A[i,j]*B[j,k]; Z[k,i] = T[i,k] * 3; v[k] = T[k,k] * 2"
    k = _compile(text, {"A": "csr", "B": "csr", "T": t_format, "Z": "dense" if t_format.startswith("bell") else "csr"},
                 outputs=["Z", "v"])
    loaded = spcomp.loads(k.to_bytes())
    assert k.launches == 1 and loaded.launches == 1 and loaded.loops == k.loops, k.loops
    ops = _ops(6, n=12, m=12, density=0.4)
    P = (ops["A"] @ ops["B"]).toarray()
    assert np.count_nonzero(P) > 30
    for kernel in (k, loaded):
        with spcomp_threads(1):
            got = kernel(**{n: ops[n] for n in kernel.inputs})
        assert np.allclose(_dense(got["Z"]), 3 * P.T)
        assert np.allclose(got["v"], P @ ops["c"] if t_format.startswith("bell") else 2 * np.diag(P))
        assert 64 in kernel.segments[0][1].variants
