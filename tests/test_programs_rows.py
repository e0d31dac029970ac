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
    return {"H": "dense", "W": "csr"} if name == "ffn-epilogue" else {"A": "csr", "B": "csr"}


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
                       formats={"A": "csr", "B": "csr", "D": "csr"})
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
