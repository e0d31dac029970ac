"""torch.Tensor operands and results (runtime/torch_bridge.py): what is shared, what is
copied, and that every layout and dtype computes what the NumPy/SciPy path computes."""
from __future__ import annotations

import subprocess
import sys
import warnings

import ml_dtypes
import numpy as np
import pytest
import scipy.sparse as sp
from hypothesis import given, settings
from hypothesis import strategies as hst

import spcomp
from spcomp import Tensor
from spcomp.errors import InvalidTensorError
from spcomp.runtime.memory import data_ptr

torch = pytest.importorskip("torch")
pytestmark = pytest.mark.filterwarnings("ignore:Sparse CSR tensor support is in beta state")

SPMV = "y[i] = W[i,j] * x[j]"


def kernel(expr=SPMV, **kw):
    kw.setdefault("dtype", "float32")
    return spcomp.compile(expr, **kw)


def rand_sparse(m, n, density=0.2, seed=0, dtype=np.float32):
    return sp.random(m, n, density=density, format="csr", dtype=dtype, random_state=seed)


def csr_torch(m, index_dtype=torch.int32):
    return torch.sparse_csr_tensor(torch.from_numpy(m.indptr).to(index_dtype),
                                   torch.from_numpy(m.indices).to(index_dtype), torch.from_numpy(m.data), m.shape)


def test_import_spcomp_never_imports_torch():
    code = ("import sys, numpy as np, spcomp\n"
            "k = spcomp.compile('y[i] = A[i,j] * x[j]')\n"
            "k(A=np.ones((3, 3)), x=np.ones(3))\n"
            "spcomp.Tensor.from_numpy(np.ones(3), 'dense')\n"
            "print('torch' in sys.modules)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "False"


def test_dense_row_major_tensor_is_the_storage():
    k = kernel("y[i] = A[i,j] * x[j]")
    A, x = torch.randn(7, 5), torch.randn(5)
    st = k.runtime.operands.storages({"A": A, "x": x})
    assert data_ptr(st["A"].array) == A.data_ptr()
    assert data_ptr(st["x"].array) == x.data_ptr()
    y = k(A=A, x=x)
    assert isinstance(y, torch.Tensor) and y.dtype == torch.float32
    np.testing.assert_allclose(y.numpy(), k(A=A.numpy(), x=x.numpy()), rtol=0, atol=0)


def test_a_transposed_tensor_is_the_storage_of_a_column_major_operand():
    k = kernel("Y[t,o] = X[t,i] * W[o,i]", formats={"W": "csr", "X": "dd:1,0"})
    X = torch.randn(6, 4).t().contiguous().t()  # X^T row-major: what dd:1,0 stores
    assert not X.is_contiguous()
    W = rand_sparse(3, 4, 0.5)
    st = k.runtime.operands.storages({"X": X, "W": W})
    assert data_ptr(st["X"].vals) == X.data_ptr()
    np.testing.assert_allclose(k(X=X, W=W).numpy(), X.numpy() @ W.toarray().T, rtol=1e-5, atol=1e-6)


def test_other_strides_are_copied_once_and_computed_right():
    k = kernel("y[i] = A[i,j] * x[j]")
    A = torch.randn(8, 10)[::2, 1::3]
    x = torch.randn(9)[::3]
    st = k.runtime.operands.storages({"A": A, "x": x})
    assert data_ptr(st["A"].vals if hasattr(st["A"], "vals") else st["A"].array) != A.data_ptr()
    np.testing.assert_allclose(k(A=A, x=x).numpy(), A.numpy() @ x.numpy(), rtol=1e-5, atol=1e-6)


def test_bfloat16_is_viewed_not_copied():
    k = kernel("y[i] = A[i,j] * x[j]", dtype="bfloat16")
    A, x = torch.randn(5, 4).bfloat16(), torch.randn(4).bfloat16()
    st = k.runtime.operands.storages({"A": A, "x": x})
    assert st["A"].array.dtype == ml_dtypes.bfloat16 and data_ptr(st["A"].array) == A.data_ptr()
    y = k(A=A, x=x)
    assert y.dtype == torch.bfloat16
    ref = k(A=A.float().numpy().astype(ml_dtypes.bfloat16), x=x.float().numpy().astype(ml_dtypes.bfloat16))
    np.testing.assert_array_equal(y.float().numpy(), ref.astype(np.float32))


@pytest.mark.parametrize("layout", ["csr", "csc", "coo"])
def test_sparse_layouts_share_their_buffers_and_match_scipy(layout):
    m = rand_sparse(9, 7, 0.3, seed=1)
    dense = torch.from_numpy(m.toarray())
    t = {"csr": dense.to_sparse_csr, "csc": dense.to_sparse_csc, "coo": dense.to_sparse}[layout]()
    k = kernel(formats={"W": layout})
    x = torch.randn(7)
    st = k.runtime.operands.storages({"W": t, "x": x})["W"]
    if layout == "coo":
        idx = t.indices()
        assert data_ptr(st.levels[0]["crd"]) == idx.data_ptr()
        assert data_ptr(st.levels[1]["crd"]) == idx[1].data_ptr()
    else:
        pos = t.crow_indices() if layout == "csr" else t.ccol_indices()
        crd = t.col_indices() if layout == "csr" else t.row_indices()
        assert data_ptr(st.levels[1]["pos"]) == pos.data_ptr() and data_ptr(st.levels[1]["crd"]) == crd.data_ptr()
    assert data_ptr(st.vals) == t.values().data_ptr()
    y = k(W=t, x=x)
    ref = kernel(formats={"W": layout})(W=m, x=x.numpy())
    np.testing.assert_allclose(y.numpy(), ref, rtol=1e-6, atol=1e-6)


def test_int32_csr_indices_reach_the_kernel_without_a_copy_int64_ones_once():
    m = rand_sparse(20, 20, 0.2)
    k = kernel(formats={"W": "csr"})
    t32 = csr_torch(m, torch.int32)
    W32 = k.runtime.operands.storages({"W": t32, "x": torch.ones(20)})["W"]
    arrays = W32.kernel_arrays(32)
    assert data_ptr(arrays[0]) == t32.crow_indices().data_ptr() and data_ptr(arrays[1]) == t32.col_indices().data_ptr()
    t64 = csr_torch(m, torch.int64)
    W64 = k.runtime.operands.storages({"W": t64, "x": torch.ones(20)})["W"]
    assert W64.index_bits_needed() == 32 and data_ptr(W64.kernel_arrays(32)[0]) != t64.crow_indices().data_ptr()
    # the same torch object again: the same converted Tensor (validated and narrowed once)
    assert k.runtime.operands.storages({"W": t64, "x": torch.ones(20)})["W"] is W64
    kept = Tensor.from_torch(t64, index_bits=64)
    assert kept.index_bits_needed() == 64
    assert data_ptr(kept.kernel_arrays(64)[1]) == t64.col_indices().data_ptr()
    x = np.ones(20, np.float32)
    np.testing.assert_allclose(k(W=kept, x=x), m @ x, rtol=1e-5)
    assert 64 in k.variants  # the kernel read them through its 64-bit variant


def test_a_sparse_tensor_changed_in_place_is_converted_and_validated_again():
    m = rand_sparse(6, 6, 0.5)
    t = csr_torch(m)
    k = kernel(formats={"W": "csr"})
    x = torch.ones(6)
    first = k(W=t, x=x)
    t.values().mul_(2)
    np.testing.assert_allclose(k(W=t, x=x).numpy(), 2 * first.numpy(), rtol=1e-6)
    t.col_indices()[0] = 99  # out of range: refused, not read
    with pytest.raises(InvalidTensorError):
        k(W=t, x=x)


def test_outputs_come_back_as_torch_in_the_matching_layout():
    m = rand_sparse(8, 8, 0.3)
    A = csr_torch(m)
    for fmt, layout in (("csr", torch.sparse_csr), ("csc", torch.sparse_csc), ("coo", torch.sparse_coo)):
        k = kernel("C[i,j] = A[i,j] * B[i,j]", formats={"A": "csr", "B": "csr", "C": fmt})
        C = k(A=A, B=A)
        assert C.layout == layout, fmt
        np.testing.assert_allclose(C.to_dense().numpy(), m.toarray() ** 2, rtol=1e-6)
    k = kernel("H[t,n] = relu(A[t,n])", formats={"H": "twell(B=4,K=4)"})
    H = k(A=torch.randn(3, 8))
    assert isinstance(H, Tensor) and H.format.spec() == "dp(4,4)"  # torch has no packed-block layout


def test_a_given_output_is_written_in_place_and_returned():
    k = kernel("y[i] += A[i,j] * x[j]")
    A, x, y = torch.randn(4, 3), torch.randn(3), torch.ones(4)
    expect = 1 + A.numpy() @ x.numpy()
    out = k(A=A, x=x, y=y)
    assert out is y
    np.testing.assert_allclose(y.numpy(), expect, rtol=1e-5)


def test_scalars_parameters_and_the_fast_path():
    k = kernel("s = a[i] * b[i]")
    a = torch.nn.Parameter(torch.randn(5))
    s = k(a=a, b=torch.ones(5))
    assert isinstance(s, torch.Tensor) and s.ndim == 0
    assert abs(float(s) - float(a.detach().sum())) < 1e-5
    k2 = kernel("y[i] = A[i,j] * x[j]")
    A = torch.randn(4, 4)
    for _ in range(3):  # a new view of a new tensor every call: the repeated-call path swaps its pointer
        x = torch.randn(4)
        np.testing.assert_allclose(k2(A=A, x=x).numpy(), A.numpy() @ x.numpy(), rtol=1e-5, atol=1e-6)
    assert k2._fast is not None


def test_tensor_from_torch_and_to_torch_share_arrays():
    m = rand_sparse(5, 6, 0.4)
    t = csr_torch(m)
    T = Tensor.from_torch(t)
    assert T.format.spec() == "dc" and data_ptr(T.vals) == t.values().data_ptr()
    back = T.to_torch()
    assert back.layout == torch.sparse_csr and back.values().data_ptr() == t.values().data_ptr()
    np.testing.assert_array_equal(back.to_dense().numpy(), m.toarray())
    D = Tensor.from_torch(torch.arange(6.0).reshape(2, 3))
    assert D.format.is_dense and D.to_torch().data_ptr() == D.vals.ctypes.data
    coo = Tensor.from_torch(t.to_dense().to_sparse(), format="csr")
    np.testing.assert_array_equal(coo.to_numpy(), m.toarray())
    tw = Tensor.from_numpy(m.toarray(), "twell(B=4,K=4)")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert tw.to_torch().layout == torch.sparse_coo
    np.testing.assert_array_equal(tw.to_torch().to_dense().numpy(), m.toarray())


@pytest.mark.filterwarnings("ignore:Sparse BSR tensor support is in beta state")
@pytest.mark.filterwarnings("ignore:Sparse BSC tensor support is in beta state")
@settings(max_examples=25, deadline=None)
@given(R=hst.sampled_from([1, 2, 3, 4]), C=hst.sampled_from([1, 2, 4]), mb=hst.integers(1, 5),
       nb=hst.integers(1, 5), density=hst.floats(0.1, 0.9), seed=hst.integers(0, 2**16))
def test_block_layouts_are_bsr_and_bsc_operands_and_bsr_results(R, C, mb, nb, density, seed):
    """torch sparse_bsr: bsr(R,C) over the very index and value buffers; sparse_bsc:
    bsc(R,C) (values copied, each block transposed); a bsr output returns sparse_bsr.
    Checked against einsum on the dense arrays, random block shapes and densities."""
    rng = np.random.default_rng(seed)
    shape = (mb * R, nb * C)
    blocks = rng.random((mb, nb)) < density
    A = np.kron(blocks, np.ones((R, C))) * rng.standard_normal(shape)
    x = rng.standard_normal(shape[1])
    tb = torch.from_numpy(A).to_sparse_bsr((R, C))
    k = spcomp.compile(SPMV, formats={"W": f"bsr({R},{C})"})
    st = k.runtime.operands.storages({"W": tb, "x": torch.from_numpy(x)})["W"]
    assert data_ptr(st.levels[1]["pos"]) == tb.crow_indices().data_ptr()
    if tb.values().numel():  # (an empty buffer has no address to share)
        assert data_ptr(st.levels[1]["crd"]) == tb.col_indices().data_ptr()
        assert data_ptr(st.vals) == tb.values().data_ptr()
    y = k(W=tb, x=torch.from_numpy(x))
    assert isinstance(y, torch.Tensor)
    np.testing.assert_allclose(y.numpy(), np.einsum("ij,j->i", A, x), rtol=1e-12, atol=1e-12)
    tc = torch.from_numpy(A).to_sparse_bsc((R, C))
    kc = spcomp.compile(SPMV, formats={"W": f"bsc({R},{C})"})
    np.testing.assert_allclose(kc(W=tc, x=x), np.einsum("ij,j->i", A, x), rtol=1e-12, atol=1e-12)
    mask = spcomp.compile("C[i,j] = W[i,j] * B[i,j]", formats={"W": f"bsr({R},{C})", "C": f"bsr({R},{C})"})
    out = mask(W=tb, B=torch.from_numpy(A))
    assert out.layout == torch.sparse_bsr and tuple(out.values().shape[1:]) == (R, C)
    np.testing.assert_allclose(out.to_dense().numpy(), A * A, rtol=1e-12, atol=1e-12)
    back = Tensor.from_torch(tb).to_torch()
    assert back.layout == torch.sparse_bsr
    assert not tb.values().numel() or back.values().data_ptr() == tb.values().data_ptr()


@pytest.mark.filterwarnings("ignore:Sparse BSR tensor support is in beta state")
def test_batched_block_tensors_are_refused_by_name():
    t = torch.ones(2, 4, 4).to_sparse_bsr((2, 2))  # a batch of two 4 x 4 BSR matrices
    with pytest.raises(spcomp.errors.OperandError, match="batched or hybrid"):
        Tensor.from_torch(t)
