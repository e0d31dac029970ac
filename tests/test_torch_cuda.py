"""CUDA torch tensors with ``backend="cuda"``: device pointers reach the launch as they
are. No GPU (nor a CUDA build of torch, nor pycuda) here: a torch.Tensor subclass that
says it is on CUDA stands in for a device tensor, a fake pycuda GPUArray maps its
pointer, and the CUDA target's launch runs the same CUDA C through cuda-sim (as in
tests/test_cuda_device_arrays.py). Checked: the tensor's own memory is what the launch
gets, the launch runs fenced against torch's current stream (TorchStreamOrder, with fake
stream objects), results come back as (CUDA) torch."""
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


# ------------------------------------------------------------------ the stream order

class FakeTorchStream:
    """A torch stream that records which stream it was made to wait for."""

    def __init__(self, name, log):
        self.name, self.log = name, log

    def wait_stream(self, other):
        self.log.append((self.name, "waits for", other.name))


class FakePycudaStream:
    made = 0

    def __init__(self, flags=0):
        FakePycudaStream.made += 1
        self.handle = 0x1000 + FakePycudaStream.made
        self.synchronized = 0

    def synchronize(self):
        self.synchronized += 1


@pytest.fixture
def fake_streams(monkeypatch):
    """torch.cuda's stream functions and pycuda.driver's Stream, recording the waits."""
    log = []
    driver = types.ModuleType("pycuda.driver")
    driver.Stream = FakePycudaStream
    monkeypatch.setitem(sys.modules, "pycuda", types.ModuleType("pycuda"))
    monkeypatch.setitem(sys.modules, "pycuda.driver", driver)
    monkeypatch.setattr(torch.cuda, "current_stream", lambda device=None: FakeTorchStream("torch", log))
    monkeypatch.setattr(torch.cuda, "ExternalStream",
                        lambda handle, device=None: FakeTorchStream(f"external {handle:#x}", log))
    monkeypatch.setattr(torch_bridge.TorchStreamOrder, "_local", __import__("threading").local())
    return log


def test_the_torch_order_fences_the_launch_on_the_device(fake_streams):
    order = torch_bridge.TorchStreamOrder(torch.device("cuda", 0))
    stream = order.stream()
    order.before(stream)
    order.after(stream)
    external = f"external {stream.handle:#x}"
    # before: the launch's stream waits for torch's; after: torch's waits for the launch's
    assert fake_streams == [(external, "waits for", "torch"), ("torch", "waits for", external)]
    assert stream.synchronized == 0  # neither wait stalls the host
    again = torch_bridge.TorchStreamOrder(torch.device("cuda", 0)).stream()
    assert again is stream  # one pycuda stream per device and thread
    other = torch_bridge.TorchStreamOrder(torch.device("cuda", 1)).stream()
    assert other is not stream


def test_a_call_with_device_tensors_launches_inside_the_torch_order(device, fake_streams, monkeypatch):
    from spcomp.runtime import streams
    seen = []
    run = CudaTarget.run

    def recording(self, *args):
        seen.append(streams.current())
        return run(self, *args)
    monkeypatch.setattr(CudaTarget, "run", recording)
    W = sp.random(12, 9, density=0.4, format="csr", random_state=1)
    x = on_device(torch.randn(9, dtype=torch.float64))
    k = spcomp.compile("y[i] = W[i,j] * x[j]", formats={"W": "csr"}, backend="cuda")
    y = k(W=W, x=x)
    np.testing.assert_allclose(y.numpy(), W @ x.numpy(), rtol=1e-12, atol=1e-12)
    assert len(seen) == 1 and isinstance(seen[0], torch_bridge.TorchStreamOrder)
    assert seen[0].device == x.device
    assert streams.current() is None  # the order ends with the call
    k(W=W, x=x.numpy())  # host operands on the cuda backend: no torch order
    assert len(seen) == 2 and seen[-1] is None


def test_gpu_module_launches_on_the_order_stream(monkeypatch):
    """GpuModule.launch with fake pycuda: inside an order the kernel goes on the order's
    stream between before() and after(), and that stream -- not the context -- is waited for."""
    from spcomp.runtime import streams
    from spcomp.backends.cuda.device import GpuModule
    from spcomp.backends.cuda.signature import parse_kernels
    events = []

    class Handler:
        def __init__(self, array):
            self.array = array

    driver = types.ModuleType("pycuda.driver")
    driver.In = driver.InOut = Handler
    driver.Context = types.SimpleNamespace(synchronize=lambda: events.append("context synchronize"))
    gpuarray = types.ModuleType("pycuda.gpuarray")
    gpuarray.GPUArray = FakeGPUArray
    monkeypatch.setitem(sys.modules, "pycuda", types.ModuleType("pycuda"))
    monkeypatch.setitem(sys.modules, "pycuda.driver", driver)
    monkeypatch.setitem(sys.modules, "pycuda.gpuarray", gpuarray)
    source = 'extern "C" __global__ void scale(int n, double* y) { }'
    module = GpuModule.__new__(GpuModule)
    module.kernels = parse_kernels(source)
    module._functions = {"scale": lambda *args, **how: events.append(("launch", how.get("stream")))}

    class Order:
        own = FakePycudaStream()

        def stream(self):
            events.append("stream")
            return self.own

        def before(self, s):
            events.append(("before", s))

        def after(self, s):
            events.append(("after", s))

    y = np.zeros(4)
    assert module.launch("scale", [4, y]) == 0
    assert events == [("launch", None), "context synchronize"]  # outside an order: as before
    events.clear()
    order = Order()
    with streams.ordered(order):
        module.launch("scale", [4, y])
    assert events == ["stream", ("before", order.own), ("launch", order.own), ("after", order.own)]
    assert order.own.synchronized == 1
