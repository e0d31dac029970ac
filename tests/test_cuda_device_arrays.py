"""``backend="cuda"`` with pycuda ``GPUArray`` operands: kept on the device, and a
dense output comes back as a GPUArray.

There is no GPU (nor pycuda) here, so pycuda's array type is stood in for by a
small fake whose memory is host memory, and the CUDA target's launch runs the
very same CUDA C through cuda-sim. What is checked is the plumbing the real
device path relies on: which objects reach the launcher (the caller's arrays,
not copies), what the call returns, and the errors for arrays it cannot take.
"""
from __future__ import annotations

import sys
import types

import numpy as np
import pytest
import scipy.sparse as sp

import spcomp
from spcomp.errors import DTypeError, OperandError
from spcomp.backends.cuda.target import CudaSimTarget, CudaTarget

from spcomp.backends.cuda import sim

pytestmark = pytest.mark.skipif(sim.compiler() is None, reason="cuda-sim needs a host C++ compiler (g++)")


class FakeGPUArray:
    """Enough of pycuda.gpuarray.GPUArray for the runtime: host memory stands in."""

    def __init__(self, host: np.ndarray):
        self.host = host
        self.shape = host.shape
        self.dtype = host.dtype
        self.size = host.size
        self.flags = host.flags
        self.gpudata = host.ctypes.data

    def reshape(self, *shape):
        return FakeGPUArray(self.host.reshape(*shape))

    def fill(self, value):
        self.host.fill(value)
        return self

    def get(self):
        return self.host.copy()


FakeGPUArray.__module__ = "pycuda.gpuarray"


@pytest.fixture
def fake_device(monkeypatch):
    """A fake ``pycuda.gpuarray`` module and a CUDA target that runs on cuda-sim,
    recording the arguments each launch got."""
    gpuarray = types.ModuleType("pycuda.gpuarray")
    gpuarray.GPUArray = FakeGPUArray
    gpuarray.zeros = lambda shape, dtype: FakeGPUArray(np.zeros(shape, dtype))
    pycuda = types.ModuleType("pycuda")
    pycuda.gpuarray = gpuarray
    monkeypatch.setitem(sys.modules, "pycuda", pycuda)
    monkeypatch.setitem(sys.modules, "pycuda.gpuarray", gpuarray)
    launches = []
    sim = CudaSimTarget()
    built = {}

    def run(self, compiled, lowered, args, grid, block):
        launches.append(list(args))
        if compiled[0] not in built:
            built[compiled[0]] = sim.build(lowered)
        host = [a.host if isinstance(a, FakeGPUArray) else a for a in args]
        return sim.run(built[compiled[0]], lowered, host, grid, block)
    monkeypatch.setattr(CudaTarget, "run", run)
    spcomp.clear_cache()
    yield launches
    spcomp.clear_cache()


def test_device_operands_stay_on_the_device_and_the_output_is_a_device_array(fake_device):
    rng = np.random.default_rng(0)
    W = sp.random(50, 40, density=0.2, format="csr", random_state=1)
    x = FakeGPUArray(rng.standard_normal(40))
    k = spcomp.compile("y[i] = W[i,j] * x[j]", formats={"W": "csr"}, backend="cuda")
    y = k(W=W, x=x)
    assert isinstance(y, FakeGPUArray)
    np.testing.assert_allclose(y.get(), W @ x.host, rtol=1e-12, atol=1e-12)
    passed = [a for a in fake_device[-1] if isinstance(a, FakeGPUArray)]
    assert any(a.gpudata == x.gpudata for a in passed)           # the caller's array, not a copy
    assert any(a.gpudata == y.gpudata for a in passed)           # the output written in place


def test_dense_device_operands_and_accumulating_into_a_device_output(fake_device):
    rng = np.random.default_rng(1)
    A, B = rng.standard_normal((6, 5)), rng.standard_normal((4, 5))     # B row-major over k, as read
    C = FakeGPUArray(rng.standard_normal((6, 4)))
    before = C.get()
    k = spcomp.compile("C[i,j] += A[i,k] * B[j,k]", backend="cuda")
    out = k(A=FakeGPUArray(A), B=FakeGPUArray(B), C=C)
    assert out is C
    np.testing.assert_allclose(C.get(), before + A @ B.T, rtol=1e-12, atol=1e-12)
    k2 = spcomp.compile("C[i,j] = A[i,k] * B[j,k]", backend="cuda")
    out = k2(A=FakeGPUArray(A), B=FakeGPUArray(B), C=C)        # '=' into a given buffer: overwritten
    np.testing.assert_allclose(out.get(), A @ B.T, rtol=1e-12, atol=1e-12)
    # an operand the kernel would read through a transposed copy is refused, not copied to the host
    with pytest.raises(OperandError, match="transposed"):
        spcomp.compile("C[i,j] = A[i,k] * B[k,j]", backend="cuda")(A=FakeGPUArray(A), B=FakeGPUArray(B.T.copy()))


def test_device_arrays_refused_where_they_cannot_go(fake_device):
    x = FakeGPUArray(np.ones(4))
    with pytest.raises(OperandError, match="only backend='cuda'"):
        spcomp.compile("y[i] = x[i] * 2", backend="cuda-sim")(x=x)
    with pytest.raises(DTypeError, match="float32"):
        spcomp.compile("y[i] = x[i] * 2", backend="cuda")(x=FakeGPUArray(np.ones(4, np.float32)))
    with pytest.raises(OperandError, match="row-major dense"):
        spcomp.compile("y[i] = A[i,j] * x[j]", formats={"A": "csr"}, backend="cuda")(
            A=FakeGPUArray(np.ones((4, 4))), x=x)
    with pytest.raises(OperandError, match="C-contiguous"):
        spcomp.compile("y[i] = A[i,j] * x[j]", backend="cuda")(A=FakeGPUArray(np.ones((4, 8))[:, ::2]), x=x)
