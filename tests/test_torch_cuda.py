"""CUDA torch tensors with ``backend="cuda"``: device pointers reach the launch as they
are. No GPU (nor a CUDA build of torch, nor pycuda) here: a torch.Tensor subclass that
says it is on CUDA stands in for a device tensor, a fake pycuda GPUArray maps its
pointer, and the CUDA target's launch runs the same CUDA C through cuda-sim (as in
tests/test_cuda_device_arrays.py). Checked: the tensor's own memory is what the launch
gets, torch's stream is synchronised before it, results come back as (CUDA) torch."""
from __future__ import annotations

import sys
import types

import numpy as np
import pytest
import scipy.sparse as sp

import spcomp
from spcomp.backends.cuda import sim
from spcomp.backends.cuda.target import CudaSimTarget, CudaTarget
from spcomp.errors import OperandError
from spcomp.runtime import torch_bridge
from spcomp.runtime.memory import malloc_view

torch = pytest.importorskip("torch")
pytestmark = pytest.mark.skipif(sim.compiler() is None, reason="cuda-sim needs a host C++ compiler (g++)")


class FakeCudaTensor(torch.Tensor):
    """A CPU tensor that answers like a CUDA one where the bridge asks."""

    @property
    def is_cuda(self):
        return True

    @property
    def is_cpu(self):
        return False


FakeCudaTensor.__module__ = "torch.fake_cuda"


def on_device(t):
    return torch.Tensor._make_subclass(FakeCudaTensor, t)


class FakeGPUArray:
    """pycuda.gpuarray.GPUArray over a raw pointer (host memory here)."""

    def __init__(self, shape, dtype, gpudata=None, base=None, host=None):
        dtype = np.dtype(dtype)
        if host is None:
            n = int(np.prod(shape)) if shape else 1
            host = malloc_view(int(gpudata), n, dtype).reshape(shape)
        self.host, self.base = host, base
        self.shape, self.dtype, self.size, self.flags = host.shape, host.dtype, host.size, host.flags
        self.gpudata = host.ctypes.data

    def reshape(self, *shape):
        return FakeGPUArray(None, self.dtype, host=self.host.reshape(*shape), base=self)

    def fill(self, value):
        self.host.fill(value)
        return self


FakeGPUArray.__module__ = "pycuda.gpuarray"


@pytest.fixture
def device(monkeypatch):
    gpuarray = types.ModuleType("pycuda.gpuarray")
    gpuarray.GPUArray = FakeGPUArray
    gpuarray.zeros = lambda shape, dtype: FakeGPUArray(None, dtype, host=np.zeros(shape, dtype))
    pycuda = types.ModuleType("pycuda")
    pycuda.gpuarray = gpuarray
    monkeypatch.setitem(sys.modules, "pycuda", pycuda)
    monkeypatch.setitem(sys.modules, "pycuda.gpuarray", gpuarray)
    events = []
    monkeypatch.setattr(torch_bridge, "sync_stream", lambda t: events.append(("sync", t.data_ptr())))
    monkeypatch.setattr(torch_bridge, "device_result", lambda a: on_device(torch.from_numpy(a.host)))
    simulated, built = CudaSimTarget(), {}

    def run(self, compiled, lowered, args, grid, block):
        events.append(("launch", [a.gpudata if isinstance(a, FakeGPUArray) else None for a in args]))
        if compiled[0] not in built:
            built[compiled[0]] = simulated.build(lowered)
        host = [a.host if isinstance(a, FakeGPUArray) else a for a in args]
        return simulated.run(built[compiled[0]], lowered, host, grid, block)
    monkeypatch.setattr(CudaTarget, "run", run)
    spcomp.clear_cache()
    yield events
    spcomp.clear_cache()


def test_device_tensors_reach_the_launch_as_they_are(device):
    W = sp.random(30, 20, density=0.3, format="csr", random_state=0)
    x = on_device(torch.randn(20, dtype=torch.float64))
    k = spcomp.compile("y[i] = W[i,j] * x[j]", formats={"W": "csr"}, backend="cuda")
    y = k(W=W, x=x)
    assert isinstance(y, FakeCudaTensor)
    np.testing.assert_allclose(y.numpy(), W @ x.numpy(), rtol=1e-12, atol=1e-12)
    kinds = [e[0] for e in device]
    assert kinds.index("sync") < kinds.index("launch")  # torch's stream waited for first
    launched = device[kinds.index("launch")][1]
    assert x.data_ptr() in launched  # the tensor's memory itself, no copy


def test_accumulating_into_a_device_tensor_returns_it(device):
    A = on_device(torch.randn(6, 5, dtype=torch.float64))
    B = on_device(torch.randn(4, 5, dtype=torch.float64))
    C = on_device(torch.ones(6, 4, dtype=torch.float64))
    k = spcomp.compile("C[i,j] += A[i,k] * B[j,k]", backend="cuda")
    out = k(A=A, B=B, C=C)
    assert out is C
    np.testing.assert_allclose(C.numpy(), 1 + A.numpy() @ B.numpy().T, rtol=1e-12)


def test_device_tensors_refused_where_they_cannot_go(device):
    x = on_device(torch.ones(4, dtype=torch.float64))
    with pytest.raises(OperandError, match="backend='cuda' kernels only"):
        spcomp.compile("y[i] = x[i] * 2")(x=x)
    with pytest.raises(OperandError, match="contiguous"):
        spcomp.compile("y[i] = A[i,j] * x[j]", backend="cuda")(
            A=on_device(torch.ones(4, 8, dtype=torch.float64)[:, ::2]), x=x)
