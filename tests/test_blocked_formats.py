"""Blocked formats (dim→level maps): ``bsr(R,C)`` / ``bsc(R,C)`` and any ``levels/blocks``.

Kernels over blocked operands are property-tested against ``numpy.einsum`` on the
densified data, on the CPU backend and on cuda-sim (skipped without a host C++
compiler): block sizes, block counts, densities inside and across blocks and the
way an operand is passed are drawn. Round trips to and from scipy's BSR are
zero-copy (the buffers are shared); corrupted arrays and combinations the lowering
cannot read by blocks are clear errors, never a wrong answer.
"""
from __future__ import annotations

import re
import warnings

import numpy as np
import pytest
import scipy.sparse as sp
from hypothesis import given, settings
from hypothesis import strategies as st

import spcomp
from spcomp import Format, Tensor
from spcomp.backends.cuda import sim
from spcomp.errors import FormatError, InvalidTensorError, ShapeError, TranspositionWarning, UnsupportedError

from conftest import examples

needs_cxx = pytest.mark.skipif(sim.compiler() is None, reason="cuda-sim needs a host C++ compiler (g++)")
BACKENDS = ["cpu", pytest.param("cuda-sim", marks=needs_cxx)]


def block_matrix(rng, M, N, R, C, density, inner=0.8):
    """A dense (M, N) array whose nonzeros lie in a random set of R x C blocks, with
    zeros inside the blocks too (a stored block holds explicit zeros)."""
    mask = rng.random((M // R, N // C)) < density
    fill = np.kron(mask, np.ones((R, C)))
    return fill * rng.standard_normal((M, N)) * (rng.random((M, N)) < inner)


def as_operand(a, fmt: str, how: str):
    """``a`` passed as a dense array, a spcomp Tensor or (bsr only) a sorted scipy bsr_array."""
    if how == "numpy":
        return a
    if how == "scipy" and fmt.startswith("bsr"):
        R, C = Format.parse(fmt).blocks
        m = sp.bsr_array(a, blocksize=(R, C))
        m.sort_indices()
        return m
    return Tensor.from_numpy(a, fmt)


def dense_of(result):
    return result.to_numpy() if isinstance(result, Tensor) else np.asarray(result)


# Each case: (statement, formats, operands(rng, sizes, blocked) -> dict, reference einsum)
# ``blocked(M, N)`` draws a block-sparse (M, N) array in the case's blocks.
def _cases(bsr: str):
    return {
        "spmm": ("Y[i,k] = A[i,j] * X[j,k]", {"A": bsr},
                 lambda r, s, b: {"A": b(s["M"], s["N"]), "X": r.standard_normal((s["N"], s["K"]))},
                 lambda o: np.einsum("ij,jk->ik", o["A"], o["X"])),
        "spmv": ("y[i] = A[i,j] * x[j]", {"A": bsr},
                 lambda r, s, b: {"A": b(s["M"], s["N"]), "x": r.standard_normal(s["N"])},
                 lambda o: np.einsum("ij,j->i", o["A"], o["x"])),
        "spmv_t": ("y[j] = A[i,j] * z[i]", {"A": bsr},
                   lambda r, s, b: {"A": b(s["M"], s["N"]), "z": r.standard_normal(s["M"])},
                   lambda o: np.einsum("ij,i->j", o["A"], o["z"])),
        "add_bsr_out": ("C[i,j] = A[i,j] + B[i,j]", {"A": bsr, "B": bsr, "C": bsr},
                        lambda r, s, b: {"A": b(s["M"], s["N"]), "B": b(s["M"], s["N"])},
                        lambda o: o["A"] + o["B"]),
        "sub_dense_out": ("C[i,j] = A[i,j] - B[i,j]", {"A": bsr, "B": bsr},
                          lambda r, s, b: {"A": b(s["M"], s["N"]), "B": b(s["M"], s["N"])},
                          lambda o: o["A"] - o["B"]),
        "times_dense": ("C[i,j] = A[i,j] * D[i,j]", {"A": bsr, "C": bsr},
                        lambda r, s, b: {"A": b(s["M"], s["N"]), "D": r.standard_normal((s["M"], s["N"]))},
                        lambda o: o["A"] * o["D"]),
        "plus_dense": ("C[i,j] = A[i,j] + D[i,j]", {"A": bsr},
                       lambda r, s, b: {"A": b(s["M"], s["N"]), "D": r.standard_normal((s["M"], s["N"]))},
                       lambda o: o["A"] + o["D"]),
        "sddmm": ("C[i,j] = A[i,j] * U[i,k] * V[k,j]", {"A": bsr, "C": bsr},
                  lambda r, s, b: {"A": b(s["M"], s["N"]), "U": r.standard_normal((s["M"], s["K"])),
                                   "V": r.standard_normal((s["K"], s["N"]))},
                  lambda o: o["A"] * np.einsum("ik,kj->ij", o["U"], o["V"])),
        "times_csr": ("C[i,k] = A[i,j] * B[j,k]", {"A": bsr, "B": "csr"},
                      lambda r, s, b: {"A": b(s["M"], s["N"]),
                                       "B": r.standard_normal((s["N"], s["K"])) * (r.random((s["N"], s["K"])) < 0.4)},
                      lambda o: np.einsum("ij,jk->ik", o["A"], o["B"])),
        "plus_csr": ("C[i,j] = A[i,j] + B[i,j]", {"A": bsr, "B": "csr"},
                     lambda r, s, b: {"A": b(s["M"], s["N"]),
                                      "B": r.standard_normal((s["M"], s["N"])) * (r.random((s["M"], s["N"])) < 0.3)},
                     lambda o: o["A"] + o["B"]),
        "scalar": ("s = A[i,j] * D[i,j]", {"A": bsr},
                   lambda r, s, b: {"A": b(s["M"], s["N"]), "D": r.standard_normal((s["M"], s["N"]))},
                   lambda o: np.einsum("ij,ij->", o["A"], o["D"])),
    }


CASE_NAMES = sorted(_cases("bsr(2,2)"))


@st.composite
def blocked_cases(draw, name: str):
    """One statement's case: block sizes, block counts, density of stored blocks, how
    the operands are passed, bsr or bsc."""
    R, C = draw(st.sampled_from([1, 2, 3, 4])), draw(st.sampled_from([1, 2, 3, 4]))
    sizes = {"M": R * draw(st.integers(1, 4)), "N": C * draw(st.integers(1, 4)), "K": draw(st.integers(1, 5))}
    kind = draw(st.sampled_from(["bsr", "bsc"]))
    return dict(name=name, fmt=f"{kind}({R},{C})", R=R, C=C, sizes=sizes,
                density=draw(st.sampled_from([0.0, 0.3, 0.7, 1.0])),
                how=draw(st.sampled_from(["scipy", "tensor", "numpy"])), seed=draw(st.integers(0, 2 ** 16)))


def run_case(case, backend):
    text, formats, make, ref = _cases(case["fmt"])[case["name"]]
    rng = np.random.default_rng(case["seed"])
    dense = make(rng, case["sizes"],
                 lambda M, N: block_matrix(rng, M, N, case["R"], case["C"], case["density"]))
    ops = {name: as_operand(a, formats[name], case["how"]) if name in formats else a for name, a in dense.items()}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", TranspositionWarning)  # BSR + CSR converts B (tested below)
        k = spcomp.compile(text, formats=formats, dtype="float64", backend=backend)
        out = k(**ops)
    expect = ref(dense)
    np.testing.assert_allclose(dense_of(out), expect, rtol=1e-10, atol=1e-10)
    if "C" in formats and formats["C"] == case["fmt"]:
        assert isinstance(out, Tensor) and out.format == Format.parse(case["fmt"])
    return out


@pytest.mark.parametrize("name", CASE_NAMES)
@pytest.mark.parametrize("backend", BACKENDS)
def test_blocked_kernels_match_einsum(backend, name):
    @settings(max_examples=examples(10 if backend == "cpu" else 3))
    @given(blocked_cases(name))
    def check(case):
        run_case(case, backend)
    check()


@pytest.mark.parametrize("name", CASE_NAMES)
def test_every_case_on_fixed_blocks(name):
    """Each statement once with 2x3 blocks, 40% of blocks stored, passed as scipy BSR."""
    run_case(dict(name=name, fmt="bsr(2,3)", R=2, C=3, sizes={"M": 8, "N": 9, "K": 4}, density=0.4,
                  how="scipy", seed=7), "cpu")


def test_spmm_loops_walk_blocks_and_read_dense_rows_at_the_compound_coordinate():
    k = spcomp.compile("Y[i,k] = A[i,j] * X[j,k]", formats={"A": "bsr(4,4)"})
    loops = k.loops
    assert "for j_o in A level 2 (c)" in loops
    assert "X[j_o,j_i,k]" in loops and "Y[i_o,i_i,k]" in loops


def test_a_bsr_output_of_a_masked_dense_product_is_scipys_bsr():
    rng = np.random.default_rng(3)
    a = block_matrix(rng, 8, 12, 4, 4, 0.5)
    U, V = rng.standard_normal((8, 5)), rng.standard_normal((5, 12))
    k = spcomp.compile("C[i,j] = A[i,j] * U[i,k] * V[k,j]", formats={"A": "bsr(4,4)", "C": "bsr(4,4)"})
    m = sp.bsr_array(a, blocksize=(4, 4))
    m.sort_indices()
    out = k(A=m, U=U, V=V).to_scipy("bsr")
    assert out.blocksize == (4, 4) and out.nnz == m.nnz  # the mask's blocks, zeros inside kept
    np.testing.assert_array_equal(out.indices, m.indices)
    np.testing.assert_allclose(out.toarray(), a * (U @ V), atol=1e-12)


def test_a_transposed_blocked_operand_is_read_from_a_copy_in_the_other_block_order():
    rng = np.random.default_rng(4)
    a, b = block_matrix(rng, 6, 6, 2, 2, 0.5), block_matrix(rng, 6, 6, 2, 2, 0.5)
    for out in ("dense", "bsr(2,2)"):
        with pytest.warns(TranspositionWarning, match=r"converts it to 'bsc\(2,2\)'"):
            k = spcomp.compile("C[i,j] = A[i,j] + B[j,i]", formats={"A": "bsr(2,2)", "B": "bsr(2,2)", "C": out})
        np.testing.assert_allclose(dense_of(k(A=a, B=b)), a + b.T)


def test_a_sparse_output_of_a_cut_index_is_assembled_in_blocks_and_converted():
    rng = np.random.default_rng(5)
    a, b = block_matrix(rng, 6, 9, 2, 3, 0.5), rng.standard_normal((9, 4)) * (rng.random((9, 4)) < 0.4)
    with pytest.warns(TranspositionWarning, match=r"output C \(csr\).*assembles it as 'bsr\(2,1\)'"):
        k = spcomp.compile("C[i,k] = A[i,j] * B[j,k]", formats={"A": "bsr(2,3)", "B": "csr", "C": "csr"})
    out = k(A=a, B=b)
    assert out.format == Format.csr()
    np.testing.assert_allclose(out.to_numpy(), a @ b, atol=1e-12)


def test_bsr_plus_csr_converts_the_csr_operand_with_a_warning():
    rng = np.random.default_rng(1)
    a = block_matrix(rng, 6, 6, 2, 3, 0.5)
    b = sp.random(6, 6, density=0.3, format="csr", random_state=2)
    with pytest.warns(TranspositionWarning, match=r"operand B is stored as csr.*bsr\(2,3\)"):
        k = spcomp.compile("C[i,j] = A[i,j] + B[i,j]", formats={"A": "bsr(2,3)", "B": "csr"})
    np.testing.assert_allclose(k(A=a, B=b), a + b.toarray())


# ------------------------------------------- random statements (spcomp.testing)

def test_random_statements_with_blocked_operands_match_the_reference():
    """``spcomp.testing``'s random expressions with matrices sometimes drawn ``bsr`` /
    ``bsc`` (``formats(..., blocks=(2,))``; operands() makes cut indices multiples of
    2): each compiles and matches the reference, or is refused with a FormatError
    naming an operand or the output."""
    from spcomp.testing import check_kernel
    from spcomp.testing.strategies import expressions, formats, operands, output_formats
    outcomes = {"ok": 0, "refused": 0, "blocked": 0}

    @settings(max_examples=examples(60))
    @given(st.data())
    def check(data):
        case = data.draw(expressions(max_operands=3, max_order=2, min_output_order=1, functions=("relu", "abs"), diagonals=False,
                                     input_formats=lambda nd: formats(nd, kinds="dcb", blocks=(2,)),
                                     output_format=lambda nd: output_formats(nd, allow_packed=False, blocks=(2,))))
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", TranspositionWarning)
                spcomp.compile(case.text, formats=case.formats)
        except (FormatError, UnsupportedError) as e:
            assert re.search(r"(operand|output) \w+", str(e)), e
            outcomes["refused"] += 1
            return
        ops = data.draw(operands(case), label="operands")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", TranspositionWarning)
            check_kernel(case.text, case.formats, ops)
        outcomes["ok"] += 1
        outcomes["blocked"] += any(f.startswith("bs") for f in case.formats.values())
    check()
    # refusals are reductions a block cannot nest (sum over k of B[k,j] inside j's loops)
    assert outcomes["ok"] > 2 * outcomes["refused"] and outcomes["blocked"] >= examples(60) // 10, outcomes


# ------------------------------------------------------------------ round trips

def shared(a, b) -> bool:
    """The same buffer (arrays with no elements share none: then the same base)."""
    return np.shares_memory(a, b) if a.size else (a.base is b or a.base is b.base or a is b)


@given(st.sampled_from([1, 2, 3, 5]), st.sampled_from([1, 2, 4]), st.integers(1, 4), st.integers(1, 4),
       st.sampled_from([0.0, 0.4, 1.0]), st.integers(0, 1000))
@settings(max_examples=examples(40))
def test_scipy_bsr_round_trips_share_the_buffers(R, C, mb, nb, density, seed):
    a = block_matrix(np.random.default_rng(seed), R * mb, C * nb, R, C, density)
    for cls in (sp.bsr_array, sp.bsr_matrix):
        m = cls(a, blocksize=(R, C))
        m.sort_indices()
        t = Tensor.from_scipy(m, f"bsr({R},{C})")
        assert shared(t.vals, m.data)
        assert shared(t.levels[1]["pos"], m.indptr) and shared(t.levels[1]["crd"], m.indices)
        np.testing.assert_array_equal(t.validate().to_numpy(), a)
        back = t.to_scipy("bsr")
        assert back.blocksize == (R, C) and shared(back.data, m.data)
        np.testing.assert_array_equal(back.toarray(), a)
    for fmt in (f"bsr({R},{C})", f"bsc({R},{C})", "dcdd/2,2" if R == C == 2 else f"bsr({R},{C})"):
        t = Tensor.from_numpy(a, fmt)
        np.testing.assert_array_equal(t.to_numpy(), a)
        np.testing.assert_array_equal(t.to_format("csr").to_numpy(), a)
        np.testing.assert_array_equal(Tensor.from_numpy(a, "csr").to_format(fmt).to_numpy(), a)
        coords, values = t.to_coo()
        np.testing.assert_array_equal(Tensor.from_coo(coords, values, a.shape, fmt).to_numpy(), a)


def test_unsorted_scipy_bsr_is_sorted_on_a_copy():
    m = sp.bsr_array((np.arange(8.0).reshape(2, 2, 2), np.array([1, 0]), np.array([0, 2])), shape=(2, 4))
    assert not m.has_sorted_indices
    t = Tensor.from_scipy(m, "bsr(2,2)")
    np.testing.assert_array_equal(t.to_numpy(), m.toarray())
    assert list(t.levels[1]["crd"]) == [0, 1] and list(m.indices) == [1, 0]  # the caller's is unchanged


def test_format_strings_and_presets():
    f = Format.parse("bsr(4,2)")
    assert f.spec() == "dcdd/4,2" and Format.parse(f.spec()) == f and f.ndim == 2 and len(f.levels) == 4
    assert f.level_map() == ((0, "outer"), (1, "outer"), (0, "inner"), (1, "inner"))
    assert Format.parse("bsc(4,2)").level_map() == ((1, "outer"), (0, "outer"), (1, "inner"), (0, "inner"))
    assert Format.parse("bsr(4)") == Format.bsr(4, 4) and Format.parse("bsr(R=3,C=1)").levels == f.levels[:3]
    assert Format.parse("bsr(3,3)") != Format.parse("bsr(3,2)")
    for bad, words in [("dcdd/4", "needs 2 levels"), ("dddd/2,2", "only dense levels"), ("bsr", "needs its sizes"),
                       ("bsr(x,2)", "integer"), ("dcdd/0,2", "at least 1"), ("bsr(2,2)/2,2", "no '/blocks'")]:
        with pytest.raises(FormatError, match=words):
            Format.parse(bad)


# ------------------------------------------------------------ errors, refusals

def _bsr_parts():
    a = np.kron(np.array([[1.0, 0], [1, 1]]), np.ones((2, 2)))
    m = sp.bsr_array(a, blocksize=(2, 2))
    return a, m.indptr.copy(), m.indices.copy(), m.data.copy()


@pytest.mark.parametrize("corrupt,words", [
    (lambda p, i, d: (p[::-1].copy(), i, d), "indptr"),
    (lambda p, i, d: (p, i + 5, d), "indices"),
    (lambda p, i, d: (p, i, d[:-1]), "indptr ends at"),
    (lambda p, i, d: (p, i, d.reshape(-1)), "data has shape"),
    (lambda p, i, d: (p, i, d.reshape(-1, 4, 1)), "indptr has length"),
])
def test_corrupted_scipy_bsr_is_a_clear_error(corrupt, words):
    a, indptr, indices, data = _bsr_parts()
    p, i, d = corrupt(indptr, indices, data)
    m = sp.bsr_array((data, indices, indptr), shape=(4, 4))
    m.indptr, m.indices, m.data = p, i, d  # behind scipy's back, as a user's arrays could be
    with pytest.raises(InvalidTensorError, match=words):
        Tensor.from_scipy(m, "bsr(2,2)").validate()
    k = spcomp.compile("y[i] = A[i,j] * x[j]", formats={"A": "bsr(2,2)"})
    with pytest.raises(InvalidTensorError, match="operand A"):
        k(A=m, x=np.ones(4))


@pytest.mark.parametrize("levels,vals,words", [
    ([{}, {"pos": np.array([0, 1, 2]), "crd": np.array([1, 0])}, {}, {}], np.ones(7), "vals has 7 entries"),
    ([{}, {"pos": np.array([0, 2, 2]), "crd": np.array([1, 0])}, {}, {}], np.ones(8), "level 1"),
    ([{}, {"pos": np.array([0, 1, 2]), "crd": np.array([0, 2])}, {}, {}], np.ones(8), "level 1"),
    ([{}, {"pos": np.array([0, 1, 2])}, {}, {}], np.ones(8), "missing array 'crd'"),
])
def test_corrupted_bsr_level_arrays_are_a_clear_error(levels, vals, words):
    with pytest.raises(InvalidTensorError, match=words):
        Tensor.from_arrays("bsr(2,2)", (4, 4), levels, vals)


def test_shapes_not_a_multiple_of_the_block_are_refused_at_call_time():
    k = spcomp.compile("Y[i,k] = A[i,j] * X[j,k]", formats={"A": "bsr(2,3)"})
    with pytest.raises(ShapeError, match="operand A.*not a multiple of 2"):
        k(A=np.ones((5, 6)), X=np.ones((6, 2)))
    with pytest.raises(ShapeError, match="multiple of 3"):
        Tensor.from_numpy(np.ones((4, 4)), "bsr(2,3)")
    with pytest.raises(ShapeError):  # the dense operand disagrees with the blocked one
        k(A=np.ones((4, 6)), X=np.ones((7, 2)))


@pytest.mark.parametrize("text,formats,words", [
    ("C[i,j] = A[i,j] * B[i,j]", {"A": "bsr(2,2)", "B": "bsr(2,4)"}, "same block size"),
    ("y[i] = A[i,i] * x[i]", {"A": "bsr(2,2)"}, "cannot repeat an index"),
    ("y[i_o] = A[i_o,j] * B[i,j]", {"A": "dense", "B": "bsr(2,2)"}, "already has an index i_o"),
    ("Y[j] = A[j,i] * A[k,j]", {"A": "bsc(2,2)"}, r"operand A \(bsc\(2,2\)\) is read by blocks as A\[j,i\]"),
])
def test_combinations_that_cannot_be_read_by_blocks_name_the_operand(text, formats, words):
    with pytest.raises(FormatError, match=words):
        spcomp.compile(text, formats=formats)


# ------------------------------------------------------- N:M structured sparsity

def nm_matrix(rng, rows, cols, N, M, full=0.7):
    """A (rows, cols) array with at most N nonzeros in every M consecutive entries of a
    row (exactly N in a fraction ``full`` of the blocks), sorted as a pruner leaves it."""
    a = rng.standard_normal((rows, cols // M, M))
    keep = np.argsort(rng.random((rows, cols // M, M)), axis=2)
    count = np.where(rng.random((rows, cols // M)) < full, N, rng.integers(0, N + 1, (rows, cols // M)))
    mask = np.argsort(keep, axis=2) < count[..., None]
    return (a * mask).reshape(rows, cols)


@pytest.mark.parametrize("what", ["spmm", "spmv", "masked"])
@pytest.mark.parametrize("backend", BACKENDS)
def test_nm_kernels_match_einsum(backend, what):
    @settings(max_examples=examples(8 if backend == "cpu" else 3))
    @given(st.sampled_from([(1, 2), (2, 4), (1, 4), (4, 8), (3, 4)]), st.integers(1, 5), st.integers(1, 4),
           st.integers(1, 4), st.integers(0, 1000))
    def check(nm, rows, blocks, K, seed):
        N, M = nm
        rng = np.random.default_rng(seed)
        W = nm_matrix(rng, rows, blocks * M, N, M)
        fmt = {"W": f"nm({N},{M})"}
        if what == "spmm":
            X = rng.standard_normal((blocks * M, K))
            out, ref = spcomp.compile("Y[i,k] = W[i,j] * X[j,k]", formats=fmt, backend=backend)(W=W, X=X), W @ X
        elif what == "spmv":
            x = rng.standard_normal(blocks * M)
            out, ref = spcomp.compile("y[i] = W[i,j] * x[j]", formats=fmt, backend=backend)(W=W, x=x), W @ x
        else:  # the 2:4 weight's gradient pattern: an N:M output masked by W
            G, X = rng.standard_normal((rows, K)), rng.standard_normal((K, blocks * M))
            k = spcomp.compile("D[i,j] = W[i,j] * G[i,k] * X[k,j]", formats={**fmt, "D": f"nm({N},{M})"},
                               backend=backend)
            out, ref = dense_of(k(W=W, G=G, X=X)), W * (G @ X)
        np.testing.assert_allclose(dense_of(out), ref, rtol=1e-10, atol=1e-10)
    check()


def test_nm_arrays_are_the_usual_compressed_values_and_indices_zero_copy():
    """A pruner's 2:4 output -- values (rows, cols/2) and in-block indices -- wrapped as is."""
    rng = np.random.default_rng(0)
    W = nm_matrix(rng, 6, 16, 2, 4, full=1.0)
    blocks = W.reshape(6, 4, 4)
    idx = np.sort(np.argsort(blocks == 0, axis=2, kind="stable")[:, :, :2], axis=2)  # nonzeros first
    values = np.take_along_axis(blocks, idx, axis=2).reshape(6, 8)
    indices = idx.astype(np.int16).reshape(6, 8)
    count = np.full(6 * 4, 2, np.int32)
    t = Tensor.from_arrays("nm(2,4)", W.shape, [{}, {"count": count, "crd": indices.reshape(-1)}],
                           values.reshape(-1))
    assert np.shares_memory(t.vals, values) and np.shares_memory(t.levels[1]["crd"], indices)
    np.testing.assert_array_equal(t.to_numpy(), W)
    x = rng.standard_normal(16)
    np.testing.assert_allclose(spcomp.compile("y[i] = W[i,j] * x[j]", formats={"W": "nm(2,4)"})(W=t, x=x), W @ x)


def test_nm_refuses_a_block_with_more_than_n_entries_naming_it():
    W = np.array([[1.0, 2, 3, 0, 0, 0, 0, 1]])
    with pytest.raises(spcomp.errors.PackedOverflowError, match=r"block 0 \(coordinates 0\.\.3\).*3 nonzeros"):
        Tensor.from_numpy(W, "nm(2,4)")
    with pytest.raises(FormatError, match="1 <= N <= M"):
        Format.parse("nm(5,4)")
    assert Format.parse("nm(N=2,M=4)") == Format.nm(2, 4) and Format.parse("nm(2,4)").spec() == "dp(4,2)"


# ------------------------------------------------------------------ blocked ELL

def test_the_strategies_draw_blocked_ell_where_packed_levels_may_stand():
    from hypothesis import find
    from spcomp.testing.strategies import formats, output_formats
    once = settings(max_examples=2000, database=None)
    for drawn in (formats(2, kinds="dcp", blocks=(2,)), output_formats(2, blocks=(2,))):
        spec = find(drawn, lambda s: s.startswith("bell"), settings=once)
        assert Format.parse(spec, ndim=2).levels[1].fixed_slots
    never = st.one_of(formats(2, kinds="dc", blocks=(2,)), output_formats(2, allow_packed=False, blocks=(2,)))
    with pytest.raises(Exception, match="No examples"):
        find(never, lambda s: s.startswith("bell"), settings=settings(max_examples=300, database=None))


def test_blocked_ell_stores_k_block_slots_per_row_of_blocks():
    """``bell(R,C,K)`` is ``d p(K) d d`` over the blocks: per row of blocks a count and
    K block columns, per slot an R x C block of values (unused slots zero)."""
    fmt = Format.parse("bell(2,3,2)")
    assert str(fmt) == "bell(2,3,2)" and fmt.spec() == "dp(2)dd/2,3" and fmt.blocks == (2, 3)
    assert Format.parse("bell(R=2,C=3,K=2)") == fmt
    a = np.zeros((4, 9))
    a[0:2, 3:6] = 1.0
    a[0:2, 6:9] = 2.0
    a[3, 0] = 3.0
    t = Tensor.from_numpy(a, fmt)
    assert list(t.levels[1]["count"]) == [2, 1] and list(t.levels[1]["crd"]) == [1, 2, 0, 0]
    assert t.vals.shape == (2 * 2 * 2 * 3,)
    np.testing.assert_array_equal(t.to_numpy(), a)
    with pytest.raises(spcomp.errors.PackedOverflowError):
        Tensor.from_numpy(np.ones((2, 9)), "bell(2,3,2)")
    for bad in ("bell(2,2)", "bell(2,0,1)", "bell(2,2,x)"):
        with pytest.raises(FormatError, match="bell"):
            Format.parse(bad)


@pytest.mark.filterwarnings("ignore::spcomp.errors.TranspositionWarning")
@pytest.mark.parametrize("backend", BACKENDS)
def test_blocked_ell_inputs_and_outputs_match_einsum(backend):
    from spcomp.testing import check_kernel
    sizes = {"i": 4, "j": 6, "k": 5}
    check_kernel("y[i] = A[i,j] * x[j]", {"A": "bell(2,2,2)"}, sizes=sizes, backend=backend)
    check_kernel("C[i,j] = A[i,j] * 2 + B[i,j]", {"A": "bell(2,2,3)", "B": "bell(2,2,3)", "C": "bell(2,2,3)"},
                 sizes=sizes, backend=backend)
    check_kernel("C[i,k] = A[i,j] * B[j,k]", {"A": "bell(2,3,2)", "B": "csr", "C": "csr"},
                 sizes={"i": 4, "j": 6, "k": 5}, backend=backend)


def test_a_blocked_ell_output_with_too_many_blocks_in_a_row_is_an_overflow_error():
    k = spcomp.compile("C[i,j] = A[i,j]", formats={"A": "bsr(2,2)", "C": "bell(2,2,1)"})
    with pytest.raises(spcomp.errors.PackedOverflowError):
        k(A=np.ones((2, 4)))


@pytest.mark.parametrize("backend", BACKENDS)
def test_random_statements_with_blocked_ell_match_the_reference(backend):
    """``spcomp.testing`` draws ``bell(R,C,K)`` among the blocked formats where packed
    levels are allowed (inputs trimmed to K block slots, output block columns capped
    to K): each statement compiles and matches the reference, or is refused naming
    an operand or the output."""
    from spcomp.testing import check_kernel
    from spcomp.testing.strategies import expressions, formats, operands, output_formats
    seen = {"bell": 0, "ok": 0}
    # the strategies draw bell among many formats; a matrix here is bell half of the time
    bell = st.builds("bell({},{},{})".format, st.sampled_from([1, 2]), st.sampled_from([1, 2]), st.integers(1, 3))

    def often_bell(drawn):
        return lambda nd: st.one_of(bell, drawn(nd)) if nd == 2 else drawn(nd)

    @settings(max_examples=examples(40 if backend == "cpu" else 12), deadline=None)
    @given(st.data())
    def check(data):
        case = data.draw(expressions(
            max_operands=2, max_order=2, min_output_order=1, diagonals=False,
            input_formats=often_bell(lambda nd: formats(nd, kinds="dcp", blocks=(2,))),
            output_format=often_bell(lambda nd: output_formats(nd, blocks=(2,)))))
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", TranspositionWarning)
                spcomp.compile(case.text, formats=case.formats, backend=backend)
        except (FormatError, UnsupportedError) as e:
            assert re.search(r"(operand|output) \w+", str(e)), e
            return
        ops = data.draw(operands(case), label="operands")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", TranspositionWarning)
            check_kernel(case.text, case.formats, ops, backend=backend)
        seen["ok"] += 1
        seen["bell"] += any(f.startswith("bell") for f in case.formats.values())
    check()
    assert seen["ok"] and seen["bell"], seen
