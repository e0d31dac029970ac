"""The classic sparse kernels, each checked against the float64 reference with
spcomp.testing.check_kernel, plus calling conventions (shapes, threads, scipy
inputs, in-place +=, inspection), large outputs, and regression tests for the
lowering bugs the property tests found.

A new bug goes here as a minimal reproduction marked
``pytest.mark.xfail(strict=True, reason=...)`` (with, if the property tests hit
it, an entry in KNOWN_BUGS of test_properties.py); the mark comes off with the fix."""
from __future__ import annotations

import warnings

import numpy as np
import pytest
import scipy.sparse as sp

import spcomp
from spcomp.errors import PackedOverflowError, TranspositionWarning
from spcomp.testing import check_kernel, densify, random_tensor

def sparse_tensor(shape, fmt, density=0.3, seed=0):
    return random_tensor(np.random.default_rng(seed), shape, fmt, density)[1]


# ================================================================== SpMV / SpMM

@pytest.mark.parametrize("fmt", ["csr", "csc", "coo", "dcsr", "dc", "cc", "d p(4,4)", "ell(K=6)"])
def test_spmv(fmt):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", TranspositionWarning)  # csc is transposed for row order
        check_kernel("y[i] = A[i,j] * x[j]", {"A": fmt}, sizes={"i": 9, "j": 6})


@pytest.mark.parametrize("fmt", ["csr", "csc", "coo", "dcsr"])
def test_spmv_transposed_access(fmt):
    """y = A^T x: the access order is j, i."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", TranspositionWarning)
        check_kernel("y[j] = A[i,j] * x[i]", {"A": fmt}, sizes={"i": 9, "j": 6})


@pytest.mark.parametrize("fmt", ["csr", "dcsr", "coo"])
def test_spmm(fmt):
    check_kernel("C[i,k] = A[i,j] * B[j,k]", {"A": fmt}, sizes={"i": 8, "j": 7, "k": 5})


def test_spmm_dense_times_sparse():
    check_kernel("C[i,k] = B[i,j] * A[j,k]", {"A": "csr"}, sizes={"i": 4, "j": 7, "k": 6})


# ================================================================== add / sub

@pytest.mark.parametrize("op", ["+", "-"])
@pytest.mark.parametrize("out", ["csr", "dense", "dcsr", "coo"])
def test_sparse_add_sub(op, out):
    fmts = {"A": "csr", "B": "csr"}
    if out != "dense":
        fmts["C"] = out
    check_kernel(f"C[i,j] = A[i,j] {op} B[i,j]", fmts, sizes={"i": 7, "j": 9}, density=0.3)


def test_sparse_sub_of_itself_gives_explicit_or_no_zeros():
    """A - A: every value is 0; whether zeros are stored or not, densified it is 0."""
    A = sparse_tensor((6, 5), "csr", 0.5)
    r = check_kernel("C[i,j] = A[i,j] - B[i,j]", {"A": "csr", "B": "csr", "C": "csr"}, {"A": A, "B": A})
    assert not np.any(densify(r.result))


@pytest.mark.parametrize("fb", ["dcsr", "csr", "coo"])
def test_sparse_add_mixed_formats(fb):
    check_kernel("C[i,j] = A[i,j] + B[i,j] + D[i,j]", {"A": "csr", "B": fb, "D": "dcsr", "C": "csr"},
                 sizes={"i": 6, "j": 8})


# ================================================================== SpGEMM / SDDMM

def test_spgemm_csr_csr_to_csr():
    r = check_kernel("C[i,j] = A[i,k] * B[k,j]", {"A": "csr", "B": "csr", "C": "csr"},
                     sizes={"i": 12, "k": 10, "j": 11}, density=0.2)
    assert isinstance(r.result, spcomp.Tensor) and r.result.format == spcomp.Format.parse("csr")


def test_spgemm_matches_scipy():
    a = sp.random(30, 20, density=0.1, format="csr", random_state=1)
    b = sp.random(20, 25, density=0.1, format="csr", random_state=2)
    k = spcomp.compile("C[i,j] = A[i,k] * B[k,j]", formats={"A": "csr", "B": "csr", "C": "csr"})
    np.testing.assert_allclose(k(A=a, B=b).to_numpy(), (a @ b).toarray(), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("backend", ["cpu", "cuda-sim"])
def test_spgemm_sorted_rows_by_bitmap_scan_and_by_sort(backend):
    """An ordered CSR product drains each row's workspace in column order, by scanning
    its bitmap (lowest set bit first) when the row touched enough columns for its
    width, else by sorting the touched list. Both paths, columns on every bit of a
    word (0, 63, 64, 127: the sign bit), a width that is not a multiple of 64, and an
    empty row: the stored columns are strictly increasing and the values are
    scipy's."""
    k = spcomp.compile("C[i,j] = A[i,k] * B[k,j]", formats={"A": "csr", "B": "csr", "C": "csr"},
                       backend=backend)
    rng = np.random.default_rng(5)
    for width, per_row in ((200, 40), (20000, 2)):  # bitmap 4 words vs 40 hits; 313 words vs 2
        cols = [[0, 63, 64, 127, width - 1]] + [rng.choice(width, per_row, replace=False).tolist()
                                                 for _ in range(6)] + [[]]
        B = sp.csr_matrix((rng.standard_normal(sum(map(len, cols))), np.concatenate(cols).astype(int),
                           np.cumsum([0] + [len(c) for c in cols])), shape=(len(cols), width))
        A = sp.csr_matrix(np.vstack([np.eye(len(cols)), rng.random((3, len(cols))) < 0.5, np.zeros(len(cols))]))
        got = k(A=A, B=B).to_scipy()
        for r in range(got.shape[0]):
            row = got.indices[got.indptr[r]:got.indptr[r + 1]]
            assert np.all(np.diff(row) > 0), (width, r, row)
        np.testing.assert_allclose(got.toarray(), (A @ B).toarray(), rtol=1e-12, atol=1e-12)


def test_sddmm():
    check_kernel("C[i,j] = S[i,j] * U[i,k] * V[j,k]", {"S": "csr", "C": "csr"}, sizes={"i": 9, "j": 8, "k": 4})


def test_sddmm_dense_output():
    check_kernel("C[i,j] = S[i,j] * U[i,k] * V[k,j]", {"S": "csr"}, sizes={"i": 9, "j": 8, "k": 4})


# ================================================================== tensors (CSF)

def test_mttkrp_csf():
    check_kernel("A[i,r] = T[i,j,k] * B[j,r] * C[k,r]", {"T": "csf"}, sizes={"i": 6, "j": 5, "k": 7, "r": 3})


def test_ttm_csf():
    check_kernel("Y[i,j,r] = T[i,j,k] * M[r,k]", {"T": "csf"}, sizes={"i": 5, "j": 4, "k": 6, "r": 3})


def test_ttm_csf_sparse_output():
    check_kernel("Y[i,j,r] = T[i,j,k] * M[r,k]", {"T": "csf", "Y": "ccc"},
                 sizes={"i": 5, "j": 4, "k": 6, "r": 3})


def test_ttv_csf():
    check_kernel("Y[i,j] = T[i,j,k] * v[k]", {"T": "csf"}, sizes={"i": 5, "j": 4, "k": 6})


def test_ttv_csf_sparse_output():
    check_kernel("Y[i,j] = T[i,j,k] * v[k]", {"T": "csf", "Y": "dcsr"}, sizes={"i": 5, "j": 4, "k": 6})


# ================================================================== vectors, scalars

@pytest.mark.parametrize("fa,fb", [("c", "c"), ("c", "d"), ("d", "c"), ("coo", "p(4,4)")])
def test_inner_product(fa, fb):
    r = check_kernel("s = a[i] * b[i]", {"a": fa, "b": fb}, sizes={"i": 11})
    assert isinstance(r.result, float)


@pytest.mark.parametrize("out", ["csr", "dcsr", "coo", "dense"])
def test_outer_product_sparse_sparse(out):
    fmts = {"a": "c", "b": "c"}
    if out != "dense":
        fmts["C"] = out
    check_kernel("C[i,j] = a[i] * b[j]", fmts, sizes={"i": 7, "j": 6})


@pytest.mark.parametrize("out", ["dense", "csc", "dc:1,0", "dcsr"])
def test_transposed_output(out):
    fmts = {"A": "csr"}
    if out != "dense":
        fmts["B"] = out
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", TranspositionWarning)
        check_kernel("B[j,i] = A[i,j]", fmts, sizes={"i": 6, "j": 8})


@pytest.mark.parametrize("fmt", ["d", "c", "p(4,2)"])
def test_scalar_broadcast(fmt):
    r = check_kernel("y[i] = alpha * x[i]", {"x": fmt}, {"alpha": 2.5}, sizes={"i": 10})
    if fmt != "d":
        check_kernel("y[i] = alpha * x[i]", {"x": fmt, "y": fmt}, {"alpha": -1.5, "x": r.operands["x"]})


def test_scalar_times_matrix_sparse_output():
    check_kernel("B[i,j] = alpha * A[i,j]", {"A": "csr", "B": "csr"}, {"alpha": 3.0})


@pytest.mark.parametrize("fmt", ["csr", "coo", "dcsr", "csc"])
def test_row_sums(fmt):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", TranspositionWarning)
        check_kernel("r[i] = A[i,j]", {"A": fmt}, sizes={"i": 9, "j": 5})


def test_total_sum():
    r = check_kernel("s = A[i,j]", {"A": "csr"})
    assert isinstance(r.result, float)


# ================================================================== more shapes of expressions

@pytest.mark.parametrize("expr,fmts", [
    ("Y[i,j] = A[i,j] / B[i,j]", {"A": "csr", "B": "csr"}),          # division of stored values
    ("Y[i,j] = A[i,j] / B[i,j]", {"A": "csr", "B": "coo", "Y": "coo"}),
    ("y[i] = A[i,j] / x[j]", {"A": "csr", "x": "c"}),
    ("Y[i,j] = (A[i,j] + B[i,j]) / 2", {"A": "csr", "B": "csr", "Y": "csr"}),
    ("y[i] = A[i,i] * x[i]", {"x": "c"}),                             # diagonal of a dense operand
    ("Y[i,j] = A[i,j] * B[j,j]", {"A": "csr"}),
    ("y[i] = A[i,j]*x[j] + A[i,k]*z[k]", {"A": "csr"}),               # one tensor, two sums
    ("y[i] = A[i,j]*x[j] - A[i,j]*z[j]", {"A": "csr", "x": "c", "z": "c"}),
    ("Y[i,j] = A[i,k]*B[k,j] + C[i,j]", {"A": "csr", "B": "csr", "C": "coo", "Y": "coo"}),
    ("Y[i,j] = exp(A[i,k]*B[k,j])", {"A": "csr", "B": "csr", "Y": "csr"}),
    ("s = A[i,j]*B[j,k]*C[k,i]", {"A": "csr", "B": "csr", "C": "csr"}),  # trace of a product
    ("y[i] = A[i,j]*(B[j,k]*x[k])", {"A": "csr", "B": "csr"}),
    ("Y[i,j] = A[i,j] * (B[i,k] * C[k,j])", {"A": "csr", "B": "csr", "C": "csc", "Y": "csr"}),
    ("Y[i,j] = min(A[i,j], -1) + max(B[i,j], 0.5)", {"A": "csr", "B": "dcsr", "Y": "csr"}),
])
def test_expression_shapes(expr, fmts):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", TranspositionWarning)
        check_kernel(expr, fmts, density=0.5, seed=3)


# ================================================================== +=

def test_accumulate_dense_output_in_place():
    A = sparse_tensor((8, 6), "csr", 0.4)
    x = np.arange(6.0)
    y = np.full(8, 10.0)
    old = y.copy()
    k = spcomp.compile("y[i] += A[i,j] * x[j]", formats={"A": "csr"})
    out = k(A=A, x=x, y=y)
    assert out is y
    np.testing.assert_allclose(y, old + A.to_numpy() @ x)


def test_accumulate_via_check_kernel():
    check_kernel("y[i] += A[i,j] * x[j]", {"A": "csr"}, {"y": np.ones(7)}, sizes={"i": 7, "j": 5})


def test_accumulate_sparse_output():
    check_kernel("C[i,j] += A[i,j]", {"A": "csr", "C": "csr"})


def test_accumulate_scalar():
    s = np.array(5.0)
    r = check_kernel("s += a[i] * b[i]", {"a": "c"}, {"s": s})
    assert r.result is s


def test_accumulate_requires_output():
    k = spcomp.compile("y[i] += A[i,j] * x[j]", formats={"A": "csr"})
    with pytest.raises(spcomp.OperandError, match="y"):
        k(A=sparse_tensor((3, 4), "csr"), x=np.ones(4))


# ================================================================== functions

def test_exp_of_sparse_vector_densifies():
    r = check_kernel("y[i] = exp(x[i])", {"x": "c"}, sizes={"i": 12}, density=0.3)
    assert np.all(r.result > 0)  # exp(0) = 1 where x has no entry


def test_exp_of_sparse_matrix_to_sparse_output():
    r = check_kernel("Y[i,j] = exp(A[i,j])", {"A": "csr", "Y": "csr"}, sizes={"i": 5, "j": 4}, density=0.3)
    assert np.all(densify(r.result) > 0)


@pytest.mark.parametrize("f", ["relu", "gelu", "silu", "abs", "tanh"])
@pytest.mark.parametrize("out", ["dense", "csr"])
def test_activation_functions(f, out):
    fmts = {"A": "csr"}
    if out != "dense":
        fmts["Y"] = out
    check_kernel(f"Y[i,j] = {f}(A[i,j])", fmts, sizes={"i": 6, "j": 7})


@pytest.mark.parametrize("f", ["relu", "gelu", "silu"])
def test_activation_of_a_product(f):
    check_kernel(f"y[i] = {f}(A[i,j] * x[j]) + b[i]", {"A": "csr"}, sizes={"i": 9, "j": 6})


@pytest.mark.parametrize("fb", ["dcsr", "coo"])
def test_sqrt_and_max_min(fb):
    check_kernel("Y[i,j] = sqrt(abs(A[i,j])) + max(A[i,j], B[i,j]) - min(A[i,j], 0.5)",
                 {"A": "csr", "B": fb})


def test_float32_and_bfloat16_spmv():
    check_kernel("y[i] = A[i,j] * x[j]", {"A": "csr"}, dtype="float32")
    check_kernel("y[i] = A[i,j] * x[j]", {"A": "csr"}, dtype="bfloat16")
    check_kernel("y[i] = A[i,j] * x[j]", {"A": "csr"}, dtype="bfloat16", dtypes={"y": "float32"})


# ================================================================== TwELL (sparse FFN)

@pytest.mark.parametrize("B", [4, 5, 8])
def test_twell_gate_relu_packed_output(B):
    """H = relu(X Wg^T) packed per tile of B columns; K = B cannot overflow."""
    r = check_kernel("H[t,n] = relu(X[t,k] * Wg[n,k])", {"H": f"twell(B={B},K={B})"},
                     sizes={"t": 5, "k": 6, "n": 19})
    H = r.result
    assert H.format == spcomp.Format.parse(f"twell(B={B},K={B})", 2)
    assert np.all(densify(H) >= 0)


def test_twell_gate_overflow_is_reported():
    """With K smaller than a tile's nonzeros the kernel raises PackedOverflowError
    naming the largest count (and does not crash or truncate silently)."""
    X = np.ones((3, 4))
    Wg = np.ones((8, 4))  # every gate output is 4 > 0: tiles of 4 are full
    k = spcomp.compile("H[t,n] = relu(X[t,k] * Wg[n,k])", formats={"H": "twell(B=4,K=2)"})
    with pytest.raises(PackedOverflowError) as e:
        k(X=X, Wg=Wg)
    assert e.value.largest_count == 4
    assert "K=" in str(e.value) and "H" in str(e.value)


def test_twell_down_projection():
    check_kernel("O[t,d] = H[t,n] * Wd[n,d]", {"H": "twell(B=4,K=3)"}, sizes={"t": 6, "n": 11, "d": 5},
                 density=0.4)


def test_twell_fused_up_down():
    """O = (H * (X Wu^T)) Wd with the X Wu^T product computed only where H is nonzero."""
    r = check_kernel("O[t,d] = H[t,n] * X[t,k] * Wu[n,k] * Wd[n,d]", {"H": "twell(B=4,K=2)"},
                     sizes={"t": 5, "n": 10, "k": 6, "d": 3}, density=0.4)
    assert "Wu" in r.kernel.loops and "Wd" in r.kernel.loops


def test_twell_pipeline_gate_then_down():
    """The gate kernel's packed output feeds the down projection directly."""
    g = np.random.default_rng(3)
    X, Wg, Wd = g.standard_normal((4, 8)), g.standard_normal((12, 8)), g.standard_normal((12, 5))
    gate = spcomp.compile("H[t,n] = relu(X[t,k] * Wg[n,k])", formats={"H": "twell(B=4,K=4)"})
    down = spcomp.compile("O[t,d] = H[t,n] * Wd[n,d]", formats={"H": "twell(B=4,K=4)"})
    H = gate(X=X, Wg=Wg)
    np.testing.assert_allclose(down(H=H, Wd=Wd), np.maximum(X @ Wg.T, 0) @ Wd, rtol=1e-10, atol=1e-10)


# ================================================================== calling conventions

def test_kernel_compiled_once_called_with_several_shapes():
    k = spcomp.compile("y[i] = A[i,j] * x[j]", formats={"A": "csr"})
    for shape in [(5, 3), (1, 1), (0, 4), (4, 0), (17, 9)]:
        A = sparse_tensor(shape, "csr", 0.5)
        r = check_kernel("y[i] = A[i,j] * x[j]", {"A": "csr"}, {"A": A}, sizes={"j": shape[1]})
        assert r.kernel is k  # the compile cache gives back the same kernel
        assert r.result.shape == (shape[0],)


def test_sparse_output_kernel_with_several_shapes():
    for shape in [(3, 4), (0, 2), (6, 1), (2, 9)]:
        check_kernel("C[i,j] = A[i,j] * B[i,j]", {"A": "csr", "B": "coo", "C": "csr"},
                     sizes={"i": shape[0], "j": shape[1]})


def _big_csr(n=3000, density=0.04, seed=7):
    m = sp.random(n, n, density=density, format="csr", random_state=seed)
    m.data = np.random.default_rng(seed).standard_normal(m.nnz)
    return m


@pytest.mark.parametrize("expr,extra", [("y[i] = A[i,j] * x[j]", {"x": (3000,)}),
                                        ("C[i,k] = A[i,j] * B[j,k]", {"B": (3000, 8)})])
def test_thread_count_independence(expr, extra):
    """1 and 2 threads give bitwise-equal float64 results."""
    from spcomp.runtime.threads import FALLBACK_PARALLEL_WORK as MIN_PARALLEL_WORK
    A = _big_csr()
    assert A.shape[0] + A.nnz >= MIN_PARALLEL_WORK  # big enough to really run on 2 threads
    g = np.random.default_rng(1)
    ops = {"A": A, **{n: g.standard_normal(s) for n, s in extra.items()}}
    k = spcomp.compile(expr, formats={"A": "csr"})
    before = spcomp.get_num_threads()
    try:
        spcomp.set_num_threads(1)
        one = k(**ops)
        spcomp.set_num_threads(2)
        two = k(**ops)
    finally:
        spcomp.set_num_threads(before)
    assert one.tobytes() == two.tobytes()
    ref = A @ ops["x"] if "x" in ops else A @ ops["B"]
    np.testing.assert_allclose(one, ref, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("kind", ["csr", "csc", "coo"])
def test_scipy_inputs_with_int64_indices(kind):
    m = sp.random(40, 30, density=0.1, format=kind, random_state=3)
    if kind == "coo":
        m.row, m.col = m.row.astype(np.int64), m.col.astype(np.int64)
    else:
        m.indices, m.indptr = m.indices.astype(np.int64), m.indptr.astype(np.int64)
    fmt = {"coo": "coo", "csr": "csr", "csc": "csc"}[kind]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", TranspositionWarning)
        r = check_kernel("y[i] = A[i,j] * x[j]", {"A": fmt}, {"A": m})
    np.testing.assert_allclose(r.result, m @ r.operands["x"], rtol=1e-12)


def test_scipy_sparse_array_input():
    m = sp.csr_array(sp.random(10, 8, density=0.3, random_state=4))
    check_kernel("y[i] = A[i,j] * x[j]", {"A": "csr"}, {"A": m})


def test_kernel_inspection_strings_name_the_tensors():
    k = spcomp.compile("y[i] = W[i,j] * x[j]", formats={"W": "csr"})
    for text in (k.index_notation, k.loops, k.ir, k.source):
        assert isinstance(text, str) and text.strip()
    for name in ("W", "x", "y"):
        assert name in k.loops and name in k.ir and name in k.source
    assert k.output_name == "y" and set(k.inputs) == {"W", "x"}


def test_vector_gathers_guess_and_its_override(monkeypatch):
    """The gather policy follows the LLVM CPU name (AMD Zen: scalar) unless
    SPCOMP_VECTOR_GATHERS says otherwise."""
    from spcomp.backends.cpu import jit
    monkeypatch.delenv("SPCOMP_VECTOR_GATHERS", raising=False)
    assert jit.host_gathers_fast() == (not jit._get_host().cpu.startswith(jit.SLOW_GATHER_CPUS))
    for value, fast in (("1", True), ("0", False)):
        monkeypatch.setenv("SPCOMP_VECTOR_GATHERS", value)
        assert jit.host_gathers_fast() is fast
        from spcomp.api import options_from_schedule
        from spcomp.backends import get_target
        opts = options_from_schedule(spcomp.Schedule(), None, "k", get_target("cpu").capabilities)
        assert opts.vector_gathers is fast


@pytest.mark.parametrize("fast_gathers", [True, False], ids=["fast-gathers", "slow-gathers"])
def test_gather_loops_get_a_masked_tail_vector_hint(monkeypatch, fast_gathers):
    """A reduction loop that reads another operand at stored coordinates (x[j] in
    SpMV) is vectorised 8 wide with its last partial vector masked, and the LLVM
    loop metadata says so, on a CPU with fast gathers; on one without (AMD Zen) it
    gets no hint and stays scalar. A reduction over contiguous data (the dense k loop
    of a row sum) keeps the plain hint either way. Rows of every length from 0 to 19
    (below, at and across multiples of the width) still match einsum."""
    monkeypatch.setattr("spcomp.backends.cpu.jit.host_gathers_fast", lambda: fast_gathers)
    spcomp.clear_cache()
    spmv = spcomp.compile("y[i] = W[i,j] * x[j]", formats={"W": "csr"}, dtype="float32",
                          name=f"gathers_{fast_gathers}")
    assert ("vectorize: 8, masked tail" in spmv.ir) == fast_gathers
    assert ("llvm.loop.vectorize.predicate.enable" in spmv.source) == fast_gathers
    if not fast_gathers:
        assert "vectorize" not in spmv.ir and "llvm.loop.vectorize.enable" not in spmv.source
    rowsum = spcomp.compile("y[i] = W[i,j]", formats={"W": "csr"}, dtype="float32",
                            name=f"gathers_{fast_gathers}")
    assert "vectorize: 8" in rowsum.ir and "masked tail" not in rowsum.ir
    assert "predicate.enable" not in rowsum.source
    dots = spcomp.compile("y[i] = A[i,k] * B[i,k]", formats={"A": "csr", "B": "dense"},
                          dtype="float64", schedule=spcomp.Schedule().no_blas(), name=f"gathers_{fast_gathers}")
    assert ("vectorize: 8, masked tail" in dots.ir) == fast_gathers  # B[i,k] is read at A's stored coordinates
    sddmm = spcomp.compile("C[i,j] = S[i,j] * D[i,k] * E[k,j]", formats={"S": "csr", "C": "csr"},
                           name=f"gathers_{fast_gathers}")
    assert "vectorize: 4" in sddmm.ir and "masked tail" not in sddmm.ir
    rng = np.random.default_rng(3)
    rows = [np.sort(rng.choice(40, size=n, replace=False)) for n in range(20)]
    for dtype, rtol in (("float32", 1e-5), ("float64", 1e-12)):
        W = sp.csr_matrix((rng.standard_normal(sum(map(len, rows))).astype(dtype),
                           np.concatenate(rows), np.cumsum([0] + [len(r) for r in rows])),
                          shape=(20, 40))
        x = rng.standard_normal(40).astype(dtype)
        B = rng.standard_normal((20, 40)).astype(dtype)
        k = spcomp.compile("y[i] = W[i,j] * x[j]", formats={"W": "csr"}, dtype=dtype,
                           name=f"gathers_{fast_gathers}")
        np.testing.assert_allclose(k(W=W, x=x), np.einsum("ij,j->i", W.toarray(), x), rtol=rtol, atol=rtol)
        k = spcomp.compile("y[i] = A[i,k] * B[i,k]", formats={"A": "csr", "B": "dense"},
                           dtype=dtype, schedule=spcomp.Schedule().no_blas(), name=f"gathers_{fast_gathers}")
        np.testing.assert_allclose(k(A=W, B=B), np.einsum("ik,ik->i", W.toarray(), B), rtol=rtol, atol=rtol)
    np.testing.assert_allclose(rowsum(W=W.astype(np.float32)), W.toarray().sum(1), rtol=1e-5)


# ================================================================== regressions
# Bugs the property tests found (fixed in d69bf95); each test is the minimal reproduction.

def test_regression_two_transposes_of_one_tensor():
    """Two accesses of one tensor needing two different transposed formats used to
    share the storage name A_T: one access read the other's layout (wrong result)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", TranspositionWarning)
        check_kernel("s = A[i,j,k] * A[i,k,j] - x[j]", {"A": "ccc"}, sizes={"i": 3, "j": 3, "k": 3})


def test_regression_coo_in_full_loop():
    """A COO level co-iterated in a loop over the whole dimension declared its
    segment end inside `if (valid)`: KernelIRError at compile time."""
    check_kernel("y[i] = A[i,j] + x[i]", {"A": "coo"}, sizes={"i": 5, "j": 4})


def test_regression_packed_transpose_overflow():
    """A packed operand the compiler transposes used to keep its K, so valid input
    raised PackedOverflowError for a format the user never gave (dp(4,1):1,0)."""
    A = spcomp.Tensor.from_numpy(np.array([[1.0, 0.0], [1.0, 0.0]]), "dp(4,1)")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", TranspositionWarning)
        check_kernel("Y[j,i] = A[i,j]", {"A": "dp(4,1)", "Y": "csr"}, {"A": A})


# ================================================================== large outputs

@pytest.mark.parametrize("out", ["csr", "coo", "dcsr"])
def test_sparse_output_grows_past_its_initial_capacity(out):
    """An outer product with ~20k entries from ~300 input nonzeros: the kernel's
    output arrays must grow (initial capacity is about max(1024, nnz of inputs))."""
    r = check_kernel("C[i,j] = a[i] * b[j]", {"a": "c", "b": "c", "C": out}, sizes={"i": 300, "j": 300},
                     density=0.5)
    assert r.result.nnz > 10000


def test_spgemm_with_fill_in_and_csf_output():
    check_kernel("C[i,j] = A[i,k] * B[k,j]", {"A": "csr", "B": "csr", "C": "csr"},
                 sizes={"i": 200, "j": 200, "k": 50}, density=0.1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", TranspositionWarning)  # C[i,j,k] walks B[k,j] column-wise
        check_kernel("C[i,j,k] = A[i,k] * B[k,j]", {"A": "csr", "B": "csr", "C": "csf"},
                     sizes={"i": 60, "j": 60, "k": 50}, density=0.3)


def _record_capacities(monkeypatch) -> list:
    """A list that collects the first capacity of every growable output a call sizes."""
    from spcomp.runtime import launch
    capacities = []
    real_capacity = launch.initial_capacity

    def capacity(*args):
        capacities.append(real_capacity(*args))
        return capacities[-1]
    monkeypatch.setattr(launch, "initial_capacity", capacity)
    return capacities


def _rows_of_every_fill(n=150, m=200, seed=7):
    """A (n, n) whose rows range from empty to full, and B (n, m), m not a multiple
    of 64: rows of A @ B whose bitmap words hold 0, 1-4 and many touched columns."""
    rng = np.random.default_rng(seed)
    dens = np.concatenate([[0.0, 1.0, 0.5], rng.choice([0.002, 0.01, 0.05, 0.3], n - 3)])
    A = sp.csr_matrix((rng.random((n, n)) < dens[:, None]) * rng.random((n, n)))
    B = sp.random(n, m, density=0.03, format="csr", random_state=rng)
    return A, B


@pytest.mark.parametrize("threads", [1, 2])
def test_ordered_workspace_refill_with_words_of_every_fill(threads):
    """The in-order refill of a workspace's touched list from its bitmap (four bits a
    word without a test, a loop for more, unused slots overwritten): exactly SciPy's
    sorted pattern, on one thread (one pass) and two (count, then fill)."""
    from conftest import spcomp_threads
    A, B = _rows_of_every_fill()
    want = (A @ B).tocsr()
    want.sort_indices()
    k = spcomp.compile("C[i,j] = A[i,k] * B[k,j]", formats={"A": "csr", "B": "csr", "C": "csr"},
                       dtype="float64")
    with spcomp_threads(threads, 0):
        got = k(A=A, B=B).to_scipy("csr")
    np.testing.assert_array_equal(got.indptr, want.indptr)
    np.testing.assert_array_equal(got.indices, want.indices)
    np.testing.assert_allclose(got.data, want.data, rtol=1e-13)


def test_one_pass_output_starts_at_the_product_count_and_is_kept_whole(monkeypatch):
    """On one thread SpGEMM appends to arrays sized by the products its loops form,
    nnz(A) times B's mean row length (nnz(C) up to collisions): here they never grow,
    and with under a quarter unused the runtime hands them out without trimming them
    (trimming left malloc handing out fresh pages every call). A capacity far above
    the result is trimmed; one far below grows. Every result is SciPy's."""
    from conftest import spcomp_threads
    from spcomp.runtime import launch, memory
    rng = np.random.default_rng(11)
    A = sp.random(400, 400, density=0.02, format="csr", random_state=rng)
    B = sp.random(400, 400, density=0.02, format="csr", random_state=rng)
    want = (A @ B).tocsr()
    want.sort_indices()
    products = int(A.nnz * (B.nnz / B.shape[0]))
    assert products >= want.nnz > 0.75 * products
    k = spcomp.compile("C[i,j] = A[i,k] * B[k,j]", formats={"A": "csr", "B": "csr", "C": "csr"},
                       dtype="float64")
    trims, real_realloc = [], memory.realloc
    monkeypatch.setattr(memory, "realloc", lambda p, nbytes: trims.append(nbytes) or real_realloc(p, nbytes))
    capacities = _record_capacities(monkeypatch)
    for forced, trimmed in [(None, False), (10 * products, True), (16, True)]:
        if forced is not None:
            monkeypatch.setattr(launch, "FIRST_CAPACITY", forced)
        trims.clear()
        with spcomp_threads(1):
            got = k(A=A, B=B).to_scipy("csr")
        np.testing.assert_array_equal(got.indices, want.indices)
        np.testing.assert_allclose(got.data, want.data, rtol=1e-13)
        assert bool(trims) == trimmed, (forced, trims)
    assert capacities == [products]


def test_a_product_with_many_collisions_starts_at_a_capped_capacity(monkeypatch):
    """Products far above the inputs' entries (an outer-product-like SpGEMM whose
    result is nearly dense) start the output at PRODUCT_GUESS_CAP times the inputs,
    not at the products, and grow from there; the result is still SciPy's."""
    from conftest import spcomp_threads
    from spcomp.runtime import launch
    rng = np.random.default_rng(9)
    A = sp.random(600, 20, density=0.5, format="csr", random_state=rng)
    B = sp.random(20, 600, density=0.5, format="csr", random_state=rng)
    stored = A.nnz + B.nnz
    assert A.nnz * B.nnz / B.shape[0] > 2 * launch.PRODUCT_GUESS_CAP * stored
    capacities = _record_capacities(monkeypatch)
    k = spcomp.compile("C[i,j] = A[i,k] * B[k,j]", formats={"A": "csr", "B": "csr", "C": "csr"},
                       dtype="float64")
    with spcomp_threads(1):
        got = k(A=A, B=B).to_scipy("csr")
    want = (A @ B).tocsr()
    want.sort_indices()
    np.testing.assert_array_equal(got.indices, want.indices)
    np.testing.assert_allclose(got.data, want.data, rtol=1e-13)
    assert capacities == [min(launch.PRODUCT_GUESS_CAP * stored, 600 * 600)]
    assert want.nnz > capacities[0]  # it grew


def test_dense_operands_do_not_inflate_a_sparse_outputs_capacity(monkeypatch):
    """SDDMM's output holds at most B's entries: its one-pass arrays start there, not
    at nnz(B) plus D's and E's sizes (which were trimmed, and faulted in afresh, on
    every call). With only dense operands the output's dense size bounds it."""
    from conftest import spcomp_threads
    capacities = _record_capacities(monkeypatch)
    rng = np.random.default_rng(5)
    B = sp.random(300, 200, density=0.2, format="csr", random_state=rng)
    D, E = rng.random((300, 16)), rng.random((16, 200))
    k = spcomp.compile("C[i,j] = B[i,j] * D[i,k] * E[k,j]", formats={"B": "csr", "C": "csr"}, dtype="float64")
    with spcomp_threads(1):
        got = k(B=B, D=D, E=E).to_numpy()
    np.testing.assert_allclose(got, B.toarray() * (D @ E), rtol=1e-12)
    assert capacities == [max(1024, B.nnz)]
    relu = spcomp.compile("C[i,j] = relu(X[i,j])", formats={"C": "csr"}, dtype="float64")
    X = rng.standard_normal((40, 30))
    with spcomp_threads(1):
        np.testing.assert_array_equal(relu(X=X).to_numpy(), np.maximum(X, 0))
    assert capacities[1] == 40 * 30


def test_large_packed_output():
    check_kernel("Y[i,j] = relu(A[i,j] - B[i,j])", {"A": "csr", "B": "csr", "Y": "twell(B=64,K=64)"},
                 sizes={"i": 500, "j": 300}, density=0.05)


# ================================================================== spcomp.testing itself

def test_check_kernel_reports_a_wrong_result_clearly(monkeypatch):
    import spcomp.testing.check as check
    real = check.reference
    monkeypatch.setattr(check, "reference", lambda *a, **k: real(*a, **k) + 1.0)
    with pytest.raises(AssertionError) as e:
        check_kernel("y[i] = A[i,j] * x[j]", {"A": "csr"}, sizes={"i": 4, "j": 3})
    msg = str(e.value)
    for part in ("y[i] = A[i,j] * x[j]", "'A': 'dc'", "'i': 4", "'j': 3", "max |error| = 1", "loops:"):
        assert part in msg, part


def test_tolerance_follows_the_least_precise_dtype():
    from spcomp.testing import TOLERANCES, tolerance
    assert tolerance(["float64", "float32"]) == TOLERANCES["float32"]
    assert tolerance(["float32", "bfloat16", "float64"]) == TOLERANCES["bfloat16"]
    assert tolerance("float64") == TOLERANCES["float64"]


def test_fit_packed_makes_any_data_fit():
    from spcomp.testing import fit_packed
    a = np.ones((3, 10, 4))
    for spec in ["d p(4,1) d", "p(3,2) c p(2,1)", "d d p(3)", "c(nonunique) q(nonunique) q"]:
        fitted = fit_packed(a, spec)
        t = spcomp.Tensor.from_numpy(fitted, spec)  # overflow="error": raises if it does not fit
        np.testing.assert_array_equal(t.to_numpy(), fitted)
        assert np.count_nonzero(fitted) > 0


def test_random_operands_ties_sizes_of_a_repeated_tensor():
    from spcomp.testing import random_operands
    k = spcomp.compile("s = A[i,j] * A[j,k] * x[k]")
    ops = random_operands(k, seed=5)
    n = ops["A"].shape[0]
    assert ops["A"].shape == (n, n) and ops["x"].shape == (n,)


def test_bfloat16_ndarray_converted_to_another_layout():
    """A bfloat16 ndarray read across its rows is copied to the kernel's layout (its
    ``.data`` memoryview cannot be made: the conversion cache must not ask for it)."""
    import ml_dtypes
    A = np.arange(12, dtype=np.float32).reshape(3, 4).astype(ml_dtypes.bfloat16)
    k = spcomp.compile("Y[j,i] = A[i,j]", dtype="bfloat16")
    out = np.asarray(k(A=A), np.float32)
    np.testing.assert_array_equal(out, A.T.astype(np.float32))


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_register_blocked_spmm_is_bitwise_the_unblocked_nest(dtype):
    """SpMM's dense k loop runs in blocks whose output row stays in registers across
    the sparse j loop (lower/regblock.py), plus a remainder loop. Every K around the
    block width (and a row with no entries, and += into a given output) gives the
    bitwise result of the unblocked nest, which a vectorize hint on k keeps, and
    matches einsum."""
    blocked = spcomp.compile("Y[i,k] = A[i,j] * X[j,k]", formats={"A": "csr"}, dtype=dtype)
    plain = spcomp.compile("Y[i,k] = A[i,j] * X[j,k]", formats={"A": "csr"}, dtype=dtype,
                           schedule=spcomp.Schedule().vectorize("k", 4))
    width = 64 if dtype == "float32" else 32
    assert f"k in blocks of {width}" in blocked.ir and "blocks of" not in plain.ir
    adding = spcomp.compile("Y[i,k] += A[i,j] * X[j,k]", formats={"A": "csr"}, dtype=dtype)
    assert "blocks of" in adding.ir
    rng = np.random.default_rng(11)
    A = sp.random(30, 25, density=0.3, format="csr", random_state=rng, dtype=dtype)
    A = sp.csr_matrix(A.multiply(np.arange(30)[:, None] % 7 != 3))  # empty rows
    for K in (0, 1, width - 1, width, width + 1, 2 * width + 5):
        X = rng.standard_normal((25, K)).astype(dtype)
        got = blocked(A=A, X=X)
        np.testing.assert_array_equal(got, plain(A=A, X=X))
        np.testing.assert_allclose(got, np.einsum("ij,jk->ik", A.toarray(), X),
                                   rtol=1e-5 if dtype == "float32" else 1e-12, atol=1e-5)
        Y0 = rng.standard_normal((30, K)).astype(dtype)
        Y = Y0.copy()
        adding(A=A, X=X, Y=Y)
        np.testing.assert_allclose(Y, Y0 + got, rtol=1e-5 if dtype == "float32" else 1e-12, atol=1e-5)


def test_register_blocking_is_cpu_only_and_skips_user_hinted_loops():
    """The GPU lowering keeps the plain nest (a thread has no vector registers to
    fill); a user's unroll hint on k keeps it too."""
    gpu = spcomp.compile("Y[i,k] = A[i,j] * X[j,k]", formats={"A": "csr"}, backend="cuda-sim")
    assert "blocks of" not in gpu.ir
    hinted = spcomp.compile("Y[i,k] = A[i,j] * X[j,k]", formats={"A": "csr"},
                            schedule=spcomp.Schedule().unroll("k", 2))
    assert "blocks of" not in hinted.ir


def test_division_divides_stored_values_only():
    """``a / b`` is computed where both sides store a value (DESIGN §4): a dense zero
    divisor is stored (inf), an absent sparse one gives 0, an absent factor of a
    product annihilates even inf, and a sum written in the numerator stays there
    ((-3 + 2 - 0.25) / 0 is -inf, not the NaN of summing -inf, inf and -inf)."""
    import scipy.sparse as sp
    x, z = np.array([1.0, 2.0, 3.0]), np.array([0.0, 2.0, 0.0])
    assert list(spcomp.compile("y[i] = x[i] / z[i]")(x=x, z=z)) == [np.inf, 1.0, np.inf]
    k = spcomp.compile("y[i] = x[i] / z[i]", formats={"z": "c"})
    np.testing.assert_array_equal(k(x=x, z=spcomp.Tensor.from_numpy(z, "c")), [0.0, 1.0, 0.0])
    # a sum wraps the smallest sub-expression holding its index: x[j] / (sum_i Z[i,j])
    zs = sp.csr_matrix(np.array([[0.0, 2.0, 0.0]]))
    k = spcomp.compile("y[j] = x[j] / Z[i,j]", formats={"Z": "csc"})
    np.testing.assert_array_equal(k(x=x, Z=zs), [np.inf, 1.0, np.inf])
    a = sp.csr_matrix(np.array([[-3.0, 2.0, 0.0, -0.5]]))
    k = spcomp.compile("y[i] = A[i,j] * v[j] / w[i]", formats={"A": "csr"})
    assert k(A=a, v=np.array([1.0, 1.0, 0.0, 0.5]), w=np.array([0.0]))[0] == -np.inf
    k = spcomp.compile("y[i] = x[i] / z[i] * C[i]", formats={"C": "c"})
    c = spcomp.Tensor.from_numpy(np.array([0.0, 1.0, 0.0]), "c")
    np.testing.assert_array_equal(k(x=np.zeros(3), z=np.zeros(3), C=c)[[0, 2]], [0.0, 0.0])
    for expr, fmts in [("y[i] = A[i,j] * x[j] / z[i]", {"A": "csr"}),
                       ("Y[i,j] = A[i] / B[i,j]", {"B": "cd"})]:
        check_kernel(expr, fmts, sizes={"i": 7, "j": 6}, density=0.4, seed=2)  # zeros in dense divisors
