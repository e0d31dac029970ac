"""spcomp.dask in one process (Dask's threaded scheduler): what apply computes and
refuses, how kernels are shipped and checked, the readers, and a property test
that ``apply`` over random chunkings equals the single-machine kernel."""
from __future__ import annotations

import subprocess
import sys
import warnings

import numpy as np
import pytest
import scipy.io
import scipy.sparse as sp
from hypothesis import given, settings
from hypothesis import strategies as st

pytest.importorskip("dask")

import dask  # noqa: E402
import dask.array as da  # noqa: E402
from conftest import examples  # noqa: E402

import spcomp  # noqa: E402
import spcomp.dask as sd  # noqa: E402
from spcomp.dask import ship  # noqa: E402


@pytest.fixture(autouse=True)
def threaded():
    with dask.config.set(scheduler="threads"), warnings.catch_warnings():
        warnings.simplefilter("ignore", sd.RechunkWarning)
        yield


def rand(shape, density, seed):
    return sp.random(*shape, density=density, format="csr", random_state=seed)


def vec(shape, seed):
    return np.random.default_rng(seed).standard_normal(shape)


def kernel_count(lazy) -> int:
    return sum(1 for key in dict(lazy.__dask_graph__()) if str(key).startswith("spcomp-kernel-"))


# ------------------------------------------------------------------ layers and bytes

def test_import_spcomp_never_imports_dask():
    code = ("import sys, numpy as np, spcomp\n"
            "k = spcomp.compile('y[i] = A[i,j] * x[j]', formats={'A': 'csr'})\n"
            "k(A=np.eye(3), x=np.ones(3)); k.to_bytes()\n"
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('dask', 'distributed')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


def test_kernel_bytes_round_trip_and_signing():
    k = spcomp.compile("y[i] = A[i,j] * x[j]", formats={"A": "csr"})
    key = b"k" * 32
    data = k.to_bytes(key)
    k2 = spcomp.loads(data, key=key)
    A = rand((30, 20), 0.2, 1)
    np.testing.assert_allclose(k2(A=A, x=np.ones(20)), A @ np.ones(20))
    with pytest.raises(spcomp.CacheError, match="signature does not match"):
        spcomp.loads(data, key=b"x" * 32)
    with pytest.raises(spcomp.CacheError, match="pass the key"):
        spcomp.loads(data)
    assert spcomp.loads(k.to_bytes()).expression == k.expression


def test_a_worker_refuses_kernel_bytes_that_fail_the_per_apply_key():
    k = spcomp.compile("y[i] = A[i,j] * x[j] * 2", formats={"A": "csr"})
    shipment = ship.Shipment(k)
    assert b"hmac-sha256 " in shipment.data[:64]  # signed under the apply's own key
    tampered = bytearray(shipment.data)
    tampered[-10] ^= 1
    with pytest.raises(spcomp.CacheError, match="signature"):
        ship.kernel_for(bytes(tampered), "not-cached-" + shipment.digest, shipment.key)
    with pytest.raises(spcomp.CacheError, match="signature"):
        ship.kernel_for(shipment.data, "not-cached-either", b"w" * 32)
    loads = ship.cache_info()["loads"]
    assert ship.kernel_for(shipment.data, "fresh-" + shipment.digest, shipment.key).expression == k.expression
    assert ship.cache_info()["loads"] == loads + 1
    assert ship.kernel_for(b"", "fresh-" + shipment.digest, b"").expression == k.expression  # cached: bytes unread


# ------------------------------------------------------------------ semantics

@pytest.mark.parametrize("text, formats, make, reference", [
    ("y[i] = relu(A[i,j] * x[j])", {"A": "csr"}, lambda: dict(A=rand((40, 30), 0.2, 2), x=vec(30, 3)),
     lambda A, x: np.maximum(A @ x, 0)),
    ("a[i] = b[i] + C[j,i]", {"C": "csr"}, lambda: dict(b=vec(30, 4), C=rand((40, 30), 0.2, 5)),
     lambda b, C: b + C.toarray().sum(axis=0)),
    ("y[i] = x[i] / (A[i,j] * w[j] + 3)", {"A": "csr"},
     lambda: dict(x=vec(40, 6), A=rand((40, 30), 0.2, 7), w=np.abs(vec(30, 8))),
     lambda x, A, w: x / (A @ w + 3)),
    ("y[i] = A[i,j] * relu(B[j,k] * x[k])", {"A": "csr", "B": "csr"},
     lambda: dict(A=rand((40, 30), 0.2, 9), B=rand((30, 20), 0.2, 10), x=vec(20, 11)),
     lambda A, B, x: A @ np.maximum(B @ x, 0)),
    ("s = a[i] * b[i] + c[j]", {}, lambda: dict(a=vec(40, 12), b=vec(40, 13), c=vec(30, 14)),
     lambda a, b, c: a @ b + c.sum()),
    ("C[i,k] = relu(A[i,j] * B[j,k])", {"A": "csr", "B": "csr", "C": "csr"},
     lambda: dict(A=rand((40, 30), 0.2, 15), B=rand((30, 20), 0.2, 16)),
     lambda A, B: np.maximum((A @ B).toarray(), 0)),
])
def test_sums_in_non_linear_positions_are_lifted(text, formats, make, reference):
    k = spcomp.compile(text, formats=formats)
    values = make()
    chunked = {n: (sd.from_scipy(v, 10) if sp.issparse(v) else da.from_array(v, chunks=10))
               for n, v in values.items()}
    lazy = sd.apply(k, **chunked)
    got = lazy.compute()
    got = got.to_numpy() if isinstance(got, spcomp.Tensor) else got.toarray() if sp.issparse(got) else got
    np.testing.assert_allclose(got, reference(**values), atol=1e-10)
    assert kernel_count(lazy) >= 2  # the lifted reduction runs as a kernel of its own


def test_a_non_linear_sum_in_one_chunk_runs_the_kernel_as_it_is():
    k = spcomp.compile("y[i] = relu(A[i,j] * x[j]) + b[i]", formats={"A": "csr"})
    A, x, b = rand((40, 30), 0.2, 17), vec(30, 18), vec(40, 19)
    lazy = sd.apply(k, A=sd.from_scipy(A, (10, 30)), x=x, b=b)
    assert kernel_count(lazy) == 1
    np.testing.assert_allclose(lazy.compute(), np.maximum(A @ x, 0) + b, atol=1e-12)


def test_linear_wrappers_of_a_split_sum_stay_one_kernel():
    k = spcomp.compile("y[i] = -(2 * A[i,j] * x[j]) * c[i] / d[i]", formats={"A": "csr"})
    A, x, c, d = rand((40, 30), 0.2, 20), vec(30, 21), vec(40, 22), np.abs(vec(40, 23)) + 1
    lazy = sd.apply(k, A=sd.from_scipy(A, 10), x=x, c=c, d=d)
    assert kernel_count(lazy) == 1
    np.testing.assert_allclose(lazy.compute(), -(2 * (A @ x)) * c / d, atol=1e-12)


def test_scalar_operands_and_sparse_accumulate():
    k = spcomp.compile("C[i,j] += alpha * A[i,j]", formats={"A": "csr", "C": "csr"})
    A, C0 = rand((30, 20), 0.2, 24), rand((30, 20), 0.2, 25)
    C = sd.apply(k, alpha=2.5, A=sd.from_scipy(A, 10), C=sd.from_scipy(C0, (15, 20))).compute()
    assert sp.issparse(C)
    np.testing.assert_allclose(C.toarray(), 2.5 * A.toarray() + C0.toarray(), atol=1e-12)


def test_nnz_is_lazy():
    k = spcomp.compile("C[i,j] = A[i,j] * B[i,j]", formats={"A": "csr", "B": "csr", "C": "csr"})
    A, B = rand((30, 20), 0.4, 26), rand((30, 20), 0.4, 27)
    C = sd.apply(k, A=sd.from_scipy(A, 10, format="csr"), B=sd.from_scipy(B, 10, format="csr"))
    n = sd.nnz(C)
    assert dask.is_dask_collection(n)
    assert n.compute() == A.multiply(B).nnz == C.compute().nnz


def test_rechunk_warning_names_the_index_and_sizes():
    k = spcomp.compile("y[i] = A[i,j] * x[j]", formats={"A": "csr"})
    with pytest.warns(sd.RechunkWarning, match=r"index j .*\(10, 10, 10\).*\(15, 15\).*\(10, 5, 5, 10\)"):
        sd.apply(k, A=sd.from_scipy(rand((20, 30), 0.2, 28), 10), x=da.from_array(vec(30, 29), chunks=15))


def test_refusals():
    A = sd.from_scipy(rand((20, 20), 0.2, 30), 10)
    with pytest.raises(spcomp.UnsupportedError, match=r"accessed as A\[i,j\] and A\[j,k\]"):
        sd.apply(spcomp.compile("y[i] = A[i,j] * A[j,k] * x[k]", formats={"A": "csr"}), A=A, x=vec(20, 1))
    with pytest.raises(spcomp.UnsupportedError, match="output index j is used by no operand"):
        sd.apply(spcomp.compile("C[i,j] = a[i]"), a=vec(20, 2))
    twell = spcomp.compile("C[i,j] = A[i,k] * B[k,j]", formats={"C": "ell(K=20)"})
    with pytest.raises(spcomp.UnsupportedError, match="packed-block.*index k"):
        sd.apply(twell, A=da.from_array(vec((20, 20), 3), chunks=10), B=vec((20, 20), 4))
    k = spcomp.compile("y[i] = A[i,j] * x[j]", formats={"A": "csr"})
    with pytest.raises(spcomp.OperandError, match="built by apply"):
        sd.apply(k, A=A, x=vec(20, 5), y=np.zeros(20))
    with pytest.raises(spcomp.OperandError, match="missing x"):
        sd.apply(k, A=A)
    with pytest.raises(spcomp.ShapeError, match="index j has size"):
        sd.apply(k, A=A, x=vec(21, 6))


# ------------------------------------------------------------------ readers

def test_from_scipy_tensor_chunks_and_npz(tmp_path):
    m = rand((50, 40), 0.1, 31)
    for kind in ("csr", "csc", "coo"):
        path = tmp_path / f"m-{kind}.npz"
        sp.save_npz(path, m.asformat(kind), compressed=(kind != "csr"))
        arr = sd.from_npz(path, (20, 15), entries=37)
        assert arr.chunks == ((20, 20, 10), (15, 15, 10))
        got = arr.compute()
        assert isinstance(got, spcomp.Tensor) and got.nnz == m.nnz
        np.testing.assert_allclose(got.to_numpy(), m.toarray())
    got = sd.from_npz(tmp_path / "m-csc.npz", 25, chunk_type="scipy").compute()
    assert sp.issparse(got) and abs(got - m).max() == 0
    t = sd.from_scipy(m, (30, 17), format="dcsr").compute()
    assert str(t.format) == "dcsr" and np.array_equal(t.to_numpy(), m.toarray())


def test_read_matrix_market_in_pieces(tmp_path):
    m = rand((60, 45), 0.1, 32)
    path = tmp_path / "m.mtx"
    scipy.io.mmwrite(path, m)
    arr = sd.read_matrix_market(path, (25, 20), blocksize=97)
    assert len([k for k in dict(arr.dask) if "read" in str(k[0])]) > 10  # many pieces
    np.testing.assert_allclose(arr.compute().to_numpy(), m.toarray())
    sym = m[:45, :45] + m[:45, :45].T
    scipy.io.mmwrite(tmp_path / "s.mtx", sp.tril(sym).tocoo(), symmetry="symmetric")
    got = sd.read_matrix_market(tmp_path / "s.mtx", 20, chunk_type="scipy", blocksize=64).compute()
    np.testing.assert_allclose(got.toarray(), sym.toarray())
    pattern = tmp_path / "p.mtx"
    pattern.write_text("%%MatrixMarket matrix coordinate pattern general\n% c\n3 4 3\n1 1\n3 4\n2 2\n")
    np.testing.assert_array_equal(sd.read_matrix_market(pattern, 2).compute().to_numpy(),
                                  [[1, 0, 0, 0], [0, 1, 0, 0], [0, 0, 0, 1]])
    with pytest.raises(spcomp.UnsupportedError, match="dense"):
        (tmp_path / "d.mtx").write_text("%%MatrixMarket matrix array real general\n1 1\n5\n")
        sd.read_matrix_market(tmp_path / "d.mtx", 1)


def test_read_tns_in_pieces_and_mttkrp(tmp_path):
    rng = np.random.default_rng(33)
    dense3 = rng.standard_normal((12, 9, 7)) * (rng.random((12, 9, 7)) < 0.15)
    coords = np.argwhere(dense3)
    path = tmp_path / "x.tns"
    lines = ["# a FROSTT tensor"] + [f"{i + 1} {j + 1} {k + 1} {float(dense3[i, j, k])!r}" for i, j, k in coords]
    path.write_text("\n".join(lines) + "\n")
    X = sd.read_tns(path, (5, 4, 7), blocksize=50)
    assert X.shape == tuple(int(c.max()) + 1 for c in coords.T)
    X = sd.read_tns(path, (5, 4, 7), shape=(12, 9, 7), blocksize=50)
    np.testing.assert_allclose(X.compute().to_numpy(), dense3)
    k = spcomp.compile("M[i,r] = X[i,j,k] * B[j,r] * C[k,r]", formats={"X": "csf"})
    B, C = vec((9, 3), 34), vec((7, 3), 35)
    np.testing.assert_allclose(sd.apply(k, X=X, B=B, C=C).compute(),
                               np.einsum("ijk,jr,kr->ir", dense3, B, C), atol=1e-12)


def test_pydata_sparse_chunks():
    sparse = pytest.importorskip("sparse")
    A = sparse.random((40, 30), density=0.2, random_state=36)
    k = spcomp.compile("C[i,k] = A[i,j] * B[j,k]", formats={"A": "csr", "B": "csr", "C": "csr"})
    B = sparse.random((30, 20), density=0.2, random_state=37)
    C = sd.apply(k, A=da.from_array(A, chunks=(20, 10), asarray=False),
                 B=da.from_array(B, chunks=(10, 10), asarray=False)).compute()
    assert type(C).__module__.split(".")[0] == "sparse"
    np.testing.assert_allclose(C.todense(), A.todense() @ B.todense(), atol=1e-12)


# ------------------------------------------------------------------ property

CASES = {
    "spmv": ("y[i] = A[i,j] * x[j]", {"A": "csr"}, {"A": (40, 30), "x": (30,)}),
    "spmm": ("C[i,k] = A[i,j] * B[j,k]", {"A": "csr"}, {"A": (40, 30), "B": (30, 6)}),
    "spgemm": ("C[i,k] = A[i,j] * B[j,k]", {"A": "csr", "B": "csr", "C": "csr"}, {"A": (40, 30), "B": (30, 20)}),
    "sddmm": ("C[i,j] = S[i,j] * U[i,k] * V[j,k]", {"S": "csr", "C": "csr"},
              {"S": (40, 30), "U": (40, 5), "V": (30, 5)}),
    "affine": ("y[i] = A[i,j] * x[j] + b[i]", {"A": "csr"}, {"A": (40, 30), "x": (30,), "b": (40,)}),
    "mttkrp": ("M[i,r] = X[i,j,k] * B[j,r] * C[k,r]", {"X": "csf"},
               {"X": (12, 10, 8), "B": (10, 4), "C": (8, 4)}),
}


@st.composite
def chunking(draw, size):
    cuts = draw(st.sets(st.integers(1, size - 1), max_size=3))
    bounds = [0, *sorted(cuts), size]
    return tuple(b - a for a, b in zip(bounds, bounds[1:]))


@settings(max_examples=examples(10))
@given(case=st.sampled_from(sorted(CASES)), data=st.data())
def test_apply_equals_the_single_machine_kernel(case, data):
    text, formats, shapes = CASES[case]
    k = spcomp.compile(text, formats=formats)
    values, chunked = {}, {}
    for seed, (name, shape) in enumerate(shapes.items()):
        rng = np.random.default_rng(seed)
        v = rng.standard_normal(shape) * (rng.random(shape) < 0.3 if name in formats else 1)
        values[name] = spcomp.Tensor.from_numpy(v, formats[name]) if name in formats else v
        chunks = tuple(data.draw(chunking(s)) for s in shape)
        chunked[name] = (sd.from_tensor(values[name], chunks) if name in formats
                         else da.from_array(v, chunks=chunks))
    want = k(**values)
    got = sd.apply(k, **chunked, split_every=data.draw(st.integers(2, 4))).compute()
    if isinstance(want, spcomp.Tensor):
        got, want = got.to_numpy(), want.to_numpy()
    np.testing.assert_allclose(got, want, atol=1e-10)
