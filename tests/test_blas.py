"""Matrix products handed to BLAS (spcomp/lower/blas.py): which kernels offload,
and that every offloaded kernel still matches numpy.einsum, for random layouts,
output orders, output formats, shapes (0 and 1 included) and both float dtypes."""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import spcomp
from spcomp.errors import KernelRuntimeError
from spcomp.testing import check_kernel

from conftest import examples


def _offloads(expr, formats=None, **kw) -> list:
    return spcomp.compile(expr, formats=formats or {}, **kw).blas_calls


# ------------------------------------------------------------ which kernels

@pytest.mark.parametrize("expr, formats, calls", [
    ("C[i,j] = A[i,k]*B[k,j]", {}, 1),
    ("C[i,j] = A[i,k]*B[j,k]", {}, 1),
    ("C[i,j] = A[i,k]*B[k,j]", {"A": "dd:1,0", "B": "dd:1,0"}, 1),
    ("D[i,l] = A[i,j]*B[j,k]*C[k,l]", {}, 2),                     # a chain: two calls
    ("H[t,n] = relu(X[t,k]*W[n,k] + b[n])", {"H": "twell(B=8,K=8)"}, 1),  # sparse output, dense loops
    ("C[i,j] = A[i,k]*B[k,j]", {"C": "csr"}, 1),
    ("C[i,j] = A[i,k]*B[k,j]", {"A": "csr"}, 0),                  # a sparse operand: the nest
    ("C[i,j] = M[i,j]*A[i,k]*B[k,j]", {"M": "csr"}, 0),           # SDDMM: only stored (i,j) wanted
    ("y[i] = A[i,k]*x[k]", {}, 0),                                # matrix-vector: not a gemm
    ("C[b,i,j] = A[b,i,k]*B[b,k,j]", {}, 0),                      # batch index
    ("s = A[i,k]*B[i,k]", {}, 0),                                 # no free index
    ("C[i,j] = A[i,k]*B[k,j]*2 + D[i,j]", {}, 1),
])
def test_which_kernels_offload(expr, formats, calls):
    assert len(_offloads(expr, formats)) == calls


def test_schedules_and_dtypes_that_keep_the_loop_nest():
    e = "C[i,j] = A[i,k]*B[k,j]"
    assert _offloads(e, schedule=spcomp.Schedule().no_blas()) == []
    assert _offloads(e, schedule=spcomp.Schedule().reorder("i", "k", "j")) == []
    assert _offloads(e, schedule=spcomp.Schedule().parallelize("i")) == []
    assert _offloads(e, dtype="bfloat16") == []
    assert _offloads(e, backend="cuda-sim") == []
    assert len(_offloads(e, dtype="float32")) == 1


def test_offloaded_kernel_shows_the_call():
    k = spcomp.compile("H[t,n] = relu(X[t,k]*W[n,k] + b[n])", formats={"H": "twell(B=8,K=8)"},
                       dtype="float32")
    assert "sgemm" in k.blas_calls[0]
    assert "cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans" in k.ir
    assert "spcomp_blas_sgemm" in k.source
    assert "G[t,n] = sum(k, X[t,k] * W[n,k])" in k.loops


@pytest.mark.parametrize("fmt, temp", [("csr", "G[t,n]"), ("dc:1,0", "G[n,t]"), ("dense", "G[t,n]"),
                                       ("dd:1,0", "G[n,t]")])
def test_product_temporary_is_laid_out_as_the_output_is_stored(fmt, temp):
    """The nest walks the output in its storage order (CSC: columns first), so the
    product's temporary is stored that way too and the nest reads it row by row: a
    column walk over a row-major temporary strides by its row length (on a
    2816-column slab every access missed L1: the CSC gate measured 2 ms slower)."""
    k = spcomp.compile("H[t,n] = relu(X[t,k]*W[n,k] + b[n])", formats={"H": fmt}, dtype="float32")
    assert k.blas_calls[0].startswith(temp)
    inner = k.ir[k.ir.index("for ("):]
    assert ("G_vals[((n * N_t) + t)]" if temp == "G[n,t]" else "G_vals[((t * N_n) + n)]") in inner
    check_kernel("H[t,n] = relu(X[t,k]*W[n,k] + b[n])", {"H": fmt}, dtype="float32",
                 sizes={"t": 7, "n": 33, "k": 5}, density=1.0)


# ------------------------------------------------------------ correctness

LAYOUTS = ["dd", "dd:1,0"]


@st.composite
def matrix_products(draw):
    """A random two-operand product with random index roles, operand order,
    layouts, output order and format, optionally inside relu(... + bias) or
    times a third factor (a chain), and random sizes (0 and 1 included)."""
    a_idx = draw(st.permutations(["i", "k"]))
    b_idx = draw(st.permutations(["k", "j"]))
    out = draw(st.permutations(["i", "j"]))
    lhs = f"C[{out[0]},{out[1]}]"
    a, b = f"A[{','.join(a_idx)}]", f"B[{','.join(b_idx)}]"
    if draw(st.booleans()):
        a, b = b, a
    shape = draw(st.sampled_from(["plain", "relu", "chain", "scaled"]))
    product = f"{a}*{b}"
    formats = {"A": draw(st.sampled_from(LAYOUTS)), "B": draw(st.sampled_from(LAYOUTS))}
    if shape == "relu":
        rhs = f"relu({product} + v[{out[1]}])"
    elif shape == "chain":
        rhs = f"{product}*E[j,l]"
        lhs = f"C[{out[0]},l]" if out[0] != "j" else "C[i,l]"
        formats["E"] = draw(st.sampled_from(LAYOUTS))
    elif shape == "scaled":
        rhs = f"-2*{product}"
    else:
        rhs = product
    formats["C"] = draw(st.sampled_from(["dense", "dd:1,0", "csr", "dc:1,0"]))
    sizes = {i: draw(st.sampled_from([0, 1, 2, 5, 17])) for i in "ijkl"}
    return f"{lhs} = {rhs}", formats, sizes


@settings(max_examples=examples(60), deadline=None)
@given(case=matrix_products(), dtype=st.sampled_from(["float32", "float64"]), seed=st.integers(0, 2**16))
def test_random_offloaded_products_match_numpy(case, dtype, seed):
    expr, formats, sizes = case
    k = spcomp.compile(expr, formats=formats, dtype=dtype)
    assert k.blas_calls, f"{expr} {formats} was expected to use BLAS"
    check_kernel(expr, formats, dtype=dtype, sizes=sizes, seed=seed, density=1.0)
    # the loop nest computes the same thing
    check_kernel(expr, formats, dtype=dtype, sizes=sizes, seed=seed, density=1.0,
                 schedule=spcomp.Schedule().no_blas())


def test_accumulate_into_a_given_output():
    rng = np.random.default_rng(1)
    A, B = rng.standard_normal((6, 4)), rng.standard_normal((4, 5))
    C = rng.standard_normal((6, 5))
    expected = C + A @ B
    k = spcomp.compile("C[i,j] += A[i,k]*B[k,j]")
    assert k.blas_calls
    out = k(A=A, B=B, C=C)
    assert out is C
    np.testing.assert_allclose(C, expected, rtol=1e-12, atol=1e-12)


def test_packed_overflow_is_reported_after_the_product():
    """A twell output too small for the gate's nonzeros raises the usual error (and the
    product's temporary is freed on that early return)."""
    rng = np.random.default_rng(2)
    X = rng.standard_normal((4, 8)).astype(np.float32)
    W = rng.standard_normal((16, 8)).astype(np.float32)
    k = spcomp.compile("H[t,n] = relu(X[t,k]*W[n,k])", formats={"H": "twell(B=16,K=1)"}, dtype="float32")
    assert k.blas_calls
    with pytest.raises(spcomp.PackedOverflowError):
        k(X=X, W=W)


def test_size_beyond_blas_int32_is_an_error_not_a_wrong_answer():
    """BLAS takes 32-bit sizes: a dimension over 2**31-1 gets a clear error. The
    operands here hold no elements (the other dimension is 0), so nothing is allocated."""
    k = spcomp.compile("C[i,j] = A[i,k]*B[k,j]", dtype="float32")
    A = np.zeros((0, 2**31), np.float32)
    B = np.zeros((2**31, 0), np.float32)
    with pytest.raises(KernelRuntimeError, match="no_blas"):
        k(A=A, B=B)


# ------------------------------------------------------------ BLAS threads

def test_single_threaded_blas_sets_one_thread_and_restores_it():
    """Nested and concurrent blocks: one thread inside any of them, the caller's
    count back when the last one ends (also when a block raises)."""
    import threading
    from spcomp.backends.cpu import blas
    fns = blas._openblas_thread_functions()
    if fns is None:
        pytest.skip("SciPy's BLAS is not OpenBLAS here: single_threaded_blas is a no-op")
    get, set_ = fns
    before = get()
    set_(2)
    try:
        with blas.single_threaded_blas():
            assert get() == 1
            with blas.single_threaded_blas():
                assert get() == 1
            assert get() == 1
        assert get() == 2
        with pytest.raises(RuntimeError):
            with blas.single_threaded_blas():
                raise RuntimeError("boom")
        assert get() == 2
        inside, gate = [], threading.Barrier(4)

        def work():
            with blas.single_threaded_blas():
                gate.wait()
                inside.append(get())
                gate.wait()
        threads = [threading.Thread(target=work) for _ in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert inside == [1, 1, 1, 1] and get() == 2
    finally:
        set_(before)


def test_single_threaded_blas_is_a_no_op_without_openblas(monkeypatch):
    from spcomp.backends.cpu import blas
    monkeypatch.setattr(blas, "_openblas_thread_functions", lambda: None)
    with blas.single_threaded_blas():
        pass
