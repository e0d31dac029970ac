"""Row workspaces: a fused run's unreturned dense temporary kept as one row.

Where every statement touching a temporary ``T`` accesses ``T[i, ...]`` at the
row the fused loop is on and nothing outside the run reads it, the fused
function allocates one row of it (per thread) instead of the runtime allocating
``N_i x N_k``. Checked against numpy.einsum at 1 and 2 threads (the split forced),
with the workspace observed in ``k.loops`` and ``k.ir`` (a row-sized malloc, no
parameter for the temporary) and in the runtime's allocations.
"""
from __future__ import annotations

import re

import numpy as np
import pytest
import scipy.sparse as sp
from hypothesis import given, settings
from hypothesis import strategies as st

import spcomp
from spcomp.runtime import program as runtime_program

from conftest import examples, spcomp_threads
from test_programs_parallel import splits

PROGRAMS = {
    "spmm-then-matvec": ("T[i,k] = A[i,j]*B[j,k]; y[i] = T[i,k]*c[k]", ["T"],
                         lambda e: np.einsum("ik,k->i", np.einsum("ij,jk->ik", e["A"], e["B"]), e["c"])),
    "ffn-epilogue": ("P[t,d] = H[t,n]*W[n,d]; O[t,d] = relu(P[t,d] + b[d])", ["P"],
                     lambda e: np.maximum(np.einsum("tn,nd->td", e["H"], e["W"]) + e["b"], 0)),
    "three-step-chain": ("T[i,k] = A[i,j]*B[j,k]\nU[i,k] = exp(-T[i,k]) + T[i,k]\ny[i] = U[i,k]*c[k]", ["T", "U"],
                         lambda e: (lambda t: np.einsum("ik,k->i", np.exp(-t) + t, e["c"]))(
                             np.einsum("ij,jk->ik", e["A"], e["B"]))),
}


def _operands(name, rows, inner, cols, density, seed):
    rng = np.random.default_rng(seed)
    if name == "ffn-epilogue":
        return {"H": rng.standard_normal((rows, inner)),
                "W": sp.random(inner, cols, density=density, format="csr", random_state=seed),
                "b": rng.standard_normal(cols)}
    return {"A": sp.random(rows, inner, density=density, format="csr", random_state=seed),
            "B": sp.random(inner, cols, density=density, format="csr", random_state=seed + 1),
            "c": rng.standard_normal(cols)}


def _formats(name):
    """The operands' formats; T dense as given (the compiler would choose csr for it)."""
    return {"H": "dense", "W": "csr"} if name == "ffn-epilogue" else {"A": "csr", "B": "csr", "T": "dense"}


def _row_sized(k, temp):
    """The IR allocates ``temp``'s row (one size, not a product with the row count)
    and takes no parameter for the whole array."""
    ir = k.ir
    m = re.search(rf"{temp}_row = \(double\*\)malloc\(sizeof\(double\) \* (\w+)\)", ir)
    return (m is not None and m.group(1).startswith("N_") and f"{temp}_vals[" not in ir
            and f"restrict {temp}_vals" not in ir)


@pytest.fixture
def allocations(monkeypatch):
    """The shapes of the arrays the fused-run runtime allocates with np.zeros."""
    shapes = []
    real = np.zeros

    def spy(shape, *a, **kw):
        shapes.append(tuple(np.atleast_1d(shape)) if not isinstance(shape, tuple) else shape)
        return real(shape, *a, **kw)
    monkeypatch.setattr(runtime_program.np, "zeros", spy)
    return shapes


@pytest.mark.parametrize("name", sorted(PROGRAMS))
def test_temporaries_become_row_workspaces(name, allocations):
    text, temps, _ref = PROGRAMS[name]
    k = spcomp.compile(text, formats=_formats(name))
    assert k.launches == 1
    for t in temps:
        assert f"# {t}: a row workspace" in k.loops, k.loops
        assert _row_sized(k, t), k.ir
    rows, cols = 300, 7
    k(**_operands(name, rows, 5, cols, 0.5, 1))
    # only the returned output is allocated by the runtime: nothing of rows x cols for a temporary
    assert allocations.count((rows, cols)) == (1 if name == "ffn-epilogue" else 0), allocations


@settings(max_examples=examples(20), deadline=None)
@given(st.data())
def test_row_workspaces_match_einsum_on_one_and_two_threads(data):
    name = data.draw(st.sampled_from(sorted(PROGRAMS)), label="program")
    rows = data.draw(st.integers(1, 40), label="rows")
    inner = data.draw(st.integers(1, 9), label="inner")
    cols = data.draw(st.integers(1, 9), label="cols")
    density = data.draw(st.sampled_from([0.0, 0.1, 0.5, 1.0]), label="density")
    seed = data.draw(st.integers(0, 2 ** 16), label="seed")
    text, temps, ref = PROGRAMS[name]
    k = spcomp.compile(text, formats=_formats(name))
    assert all(f"# {t}: a row workspace" in k.loops for t in temps)
    assert "its rows split over threads" in k.loops   # so each thread's call allocates its own row
    ops = _operands(name, rows, inner, cols, density, seed)
    want = ref({n: (v.toarray() if sp.issparse(v) else v) for n, v in ops.items()})
    for threads in (1, 2):
        with spcomp_threads(threads, min_work=0):
            got = k(**ops)
        assert np.allclose(got, want, rtol=1e-10, atol=1e-10), (name, threads)


@pytest.mark.parametrize("text, formats, why", [
    ("T[i,k] = A[i,j]*B[j,k]; y[i] = T[i,k]*c[k]", {"A": "csr", "B": "csr", "T": "csr"}, "sparse"),
    ("T[i,k] = A[i,j]*B[j,k]; y[i] = T[i,k]*c[k]\nz[k] = T[i,k]*c[i]", {"A": "csr", "B": "csr"}, "read later"),
    ("T[i,j] = A[i,j] * 2; y[j] = T[i,j] * c[i]", {"A": "csr"}, "read across rows"),
])
def test_temporaries_that_leave_the_row_stay_whole(text, formats, why):
    k = spcomp.compile(text, formats=formats)
    assert "row workspace" not in k.loops and "_row = " not in k.ir, why


def test_returned_temporary_stays_whole():
    k = spcomp.compile("P[t,d] = H[t,n]*W[n,d]; O[t,d] = relu(P[t,d] + b[d])",
                       formats={"H": "dense", "W": "csr"}, outputs=["P", "O"])
    assert "row workspace" not in k.loops
    ops = _operands("ffn-epilogue", 9, 4, 5, 0.5, 3)
    got = k(**ops)
    P = ops["H"] @ ops["W"].toarray()
    assert np.allclose(got["P"], P) and np.allclose(got["O"], np.maximum(P + ops["b"], 0))


def test_saved_program_keeps_its_row_workspace(tmp_path):
    k = spcomp.compile(PROGRAMS["ffn-epilogue"][0], formats=_formats("ffn-epilogue"))
    k.save(tmp_path / "p.spc")
    loaded = spcomp.load(tmp_path / "p.spc")
    assert "# P: a row workspace" in loaded.loops
    ops = _operands("ffn-epilogue", 11, 4, 6, 0.5, 2)
    assert np.allclose(loaded(**ops), PROGRAMS["ffn-epilogue"][2]({**ops, "W": ops["W"].toarray()}))


def heap_in_use():
    """Bytes glibc's malloc has handed out (heap and mmapped blocks), or None."""
    import ctypes

    class MallInfo2(ctypes.Structure):
        _fields_ = [(f, ctypes.c_size_t) for f in
                    "arena ordblks smblks hblks hblkhd usmblks fsmblks uordblks fordblks keepcost".split()]
    try:
        fn = ctypes.CDLL(None).mallinfo2
    except (OSError, AttributeError):
        return None
    fn.restype = MallInfo2
    info = fn()
    return info.hblkhd + info.uordblks


def test_failed_second_row_workspace_frees_the_first():
    """T's row (16 MB) is allocated, then U's row (2**58 doubles) fails: the function
    frees T's row before its out-of-memory return, call after call."""
    k = spcomp.compile("T[i,k] = A[i,j]*B[j,k]\nU[i,l] = T[i,k]*D[k,l]\ny[i] = U[i,l]",
                       formats={"A": "csr", "B": "csr", "D": "csr", "T": "dense", "U": "dense"})
    assert "# T: a row workspace" in k.loops and "# U: a row workspace" in k.loops
    assert "if (!U_row) { free(T_row); return 2; }" in k.ir, k.ir
    if heap_in_use() is None:
        pytest.skip("no glibc mallinfo2 to count the heap")
    width = 2_000_000
    ops = {"A": sp.random(2, 4, density=0.5, format="csr", random_state=0),
           "B": sp.random(4, width, density=1e-6, format="csr", random_state=1),
           "D": sp.csr_matrix((width, 2 ** 58))}
    with pytest.raises(spcomp.KernelRuntimeError, match="could not allocate"):
        k(**ops)
    before = heap_in_use()
    for _ in range(5):
        with pytest.raises(spcomp.KernelRuntimeError, match="could not allocate"):
            k(**ops)
    assert heap_in_use() - before < 8 * width // 2  # five leaked rows would be 80 MB


CHUNK_MIDDLE = [("D[i,k] = T[i,k] + E[i,k]", lambda e: e["T"] + e["E"]),
                ("D[i,k] = T[i,k] * E[i,k]", lambda e: e["T"] * e["E"]),
                ("D[i,k] = exp(-T[i,k]) * E[i,k]", lambda e: np.exp(-e["T"]) * e["E"])]
CHUNK_LAST = [("y[i] = D[i,k] * c[k]", lambda e: e["D"] @ e["c"]),
              ("Y[i,l] = D[i,k] * G[k,l]", lambda e: e["D"] @ e["G"]),
              ("Y[i,k] = relu(D[i,k]) + E[i,k]", lambda e: np.maximum(e["D"], 0) + e["E"])]


@settings(max_examples=examples(20), deadline=None)
@given(st.data())
def test_row_workspaces_in_the_function_over_chunks_of_rows(data):
    """A sparse T (rows appended per chunk), then a dense D that the last statement
    reads at its row: in the function over chunks of rows D's writer and reader share
    one loop and D is a row of each chunk's call; the runtime allocates no D. The
    results match NumPy and, bit for bit, the one-thread function."""
    t_fmt = data.draw(st.sampled_from(["csr", "dcsr"]), label="T's format")
    middle, middle_ref = data.draw(st.sampled_from(CHUNK_MIDDLE), label="D")
    last, last_ref = data.draw(st.sampled_from(CHUNK_LAST), label="last")
    rows = data.draw(st.integers(0, 40), label="rows")
    density = data.draw(st.sampled_from([0.0, 0.2, 0.6]), label="density")
    seed = data.draw(st.integers(0, 2 ** 16), label="seed")
    out = last.split("[")[0]
    text = f"T[i,k] = A[i,j]*B[j,k]\n{middle}\n{last}"
    k = spcomp.compile(text, formats={n: f for n, f in {"A": "csr", "B": "csr", "G": "csr", "T": t_fmt,
                                                        "D": "dense"}.items()
                                      if f"{n}[" in text})
    chunks = k.segments[0][1].chunks(32)
    assert chunks is not None and chunks.rows == ["D"], k.loops
    assert "# D: a row workspace" in k.loops and "whole array in the function over chunks" not in k.loops
    chunk_ir = k.ir.split("_chunks(")[1]
    assert "D_row = (double*)malloc(sizeof(double) * N_" in chunk_ir and "D_vals" not in chunk_ir
    rng = np.random.default_rng(seed)
    ops = {"A": sp.random(rows, 6, density=density, format="csr", random_state=seed),
           "B": sp.random(6, 7, density=0.5, format="csr", random_state=seed + 1),
           "E": rng.standard_normal((rows, 7)), "c": rng.standard_normal(7),
           "G": sp.random(7, 3, density=0.5, format="csr", random_state=seed + 2)}
    ops = {n: v for n, v in ops.items() if n in k.inputs}
    env = {n: (v.toarray() if sp.issparse(v) else v) for n, v in ops.items()}
    env["T"] = env["A"] @ env["B"]
    env["D"] = middle_ref(env)
    want = last_ref(env)
    with spcomp_threads(1):
        one = k(**ops)
    with pytest.MonkeyPatch.context() as mp:
        shapes = []
        real = np.zeros
        mp.setattr(runtime_program.np, "zeros", lambda shape, *a, **kw: shapes.append(shape) or real(shape, *a, **kw))
        with splits(2, mp) as calls:
            two = k(**ops)
    assert np.allclose(two, want, rtol=1e-10, atol=1e-10) and np.array_equal(one, two), out
    if rows >= 2:  # by chunks (a smaller call may run the one-thread function, D whole if T is dcsr)
        assert (rows, 2) in calls and k.last_launches == 1
        assert shapes.count((rows, 7)) == (1 if out == "Y" and want.shape == (rows, 7) else 0), shapes


def test_a_row_workspace_whose_reader_appends_stays_whole_in_the_chunks():
    """D's reader writes a sparse S, so it keeps a loop of its own: D is a whole array
    in both functions (never a row it would read after the row moved on)."""
    k = spcomp.compile("T[i,k] = A[i,j]*B[j,k]\nD[i,k] = T[i,k] + E[i,k]\nS[i,k] = D[i,k] * F[i,k]",
                       formats={"A": "csr", "B": "csr", "T": "csr", "F": "csr", "S": "csr"})
    assert k.segments[0][1].chunks(32) is not None and "row workspace" not in k.loops, k.loops
