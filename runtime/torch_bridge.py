"""``torch.Tensor`` operands and results: torch's buffers as spcomp storages, without copies.

Imported only when a call meets a torch tensor (``operands.is_torch``, which asks
the type's module name, so ``import spcomp`` never imports torch), or through
``Tensor.from_torch`` / ``to_torch``. What crosses how (docs/torch.md):

* a strided CPU tensor becomes a NumPy view of its memory (``Tensor.numpy()``;
  ``torch.bfloat16`` through an int16 view as ``ml_dtypes.bfloat16``): a row-major
  one is the kernel's storage itself, one whose strides are another dense layout
  the kernel reads (``dd:1,0`` and a transposed tensor) is wrapped as that layout
  (``operands.Operands.tensor``), anything else is copied once per call;
* ``sparse_csr`` / ``sparse_csc`` / coalesced ``sparse_coo`` / ``sparse_bsr`` become
  ``csr`` / ``csc`` / ``coo`` / ``bsr(R,C)`` Tensors over the same index and value buffers
  (``sparse_bsc``: ``bsc(R,C)``, its values copied with each block transposed), remembered per
  torch object (validated once, int64 indices narrowed to int32 once: the 32-bit
  kernel is 18-25 % faster on SpMV than the 64-bit one reading int64, measured in
  docs/torch.md; ``index_bits=64`` keeps them);
* CUDA tensors (``backend="cuda"``) become pycuda ``GPUArray`` views of the same
  device memory, and the launch is ordered on the device against torch's current
  stream (:class:`TorchStreamOrder`): it waits for what torch queued before the
  call and torch's later work waits for it; the host waits for this launch alone.

A result comes back as torch when any operand was: a dense array through
``torch.from_numpy`` (shared memory), a sparse Tensor as the torch layout of its
format where torch has one, else as the spcomp Tensor.
"""
from __future__ import annotations

import threading
import weakref

import numpy as np

from spcomp.errors import OperandError

from . import streams
from .convert import BFLOAT16
from .tensor import Tensor
from .torch_convert import (from_numpy, natural_layout, numpy_view, sparse_parts, to_torch, torch_dtype,
                            torch_module)

__all__ = ["call", "host_value", "sparse_tensor", "result", "numpy_view", "from_numpy", "torch_dtype",
           "torch_module", "BFLOAT16"]

# id(torch sparse tensor) -> (weakref, (version, shape), Tensor): a sparse operand
# passed again is the same Tensor, so its validation and int32 indices are done
# once. A sparse tensor's version counter is shared with its index and value
# buffers, so any in-place change to them (``t.col_indices().zero_()``,
# ``t.mul_(2)``) makes the next call convert and validate it again
_SPARSE: dict = {}
_LOCK = threading.Lock()


# ------------------------------------------------------------------ torch -> spcomp

def sparse_tensor(t, index_bits=None) -> Tensor:
    """A torch sparse tensor as a Tensor over its buffers, cached per torch object."""
    key = (id(t), index_bits)
    fp = (t._version, t.shape)
    hit = _SPARSE.get(key)
    if hit is not None and hit[0]() is t and hit[1] == fp:
        return hit[2]
    out = Tensor(*sparse_parts(t), index_bits=index_bits)
    try:
        ref = weakref.ref(t, lambda _r, key=key: _SPARSE.pop(key, None))
    except TypeError:
        return out
    with _LOCK:
        _SPARSE[key] = (ref, fp, out)
    return out


def host_value(t, caps=None):
    """What a kernel call takes for torch tensor ``t``: an ndarray view, a Tensor,
    or (CUDA tensor, device-array backend) a pycuda GPUArray over its memory."""
    torch = torch_module()
    if type(t) is torch.Tensor and t.is_cpu and t.layout is torch.strided and not t.requires_grad \
            and t.dtype is not torch.bfloat16:
        try:  # the common case first, in as few steps as possible: it runs per operand per call
            return t.numpy()
        except (RuntimeError, TypeError):
            pass  # a lazy conjugate or negative bit, a dtype NumPy lacks: numpy_view says or resolves
    if not isinstance(t, torch.Tensor):
        return t  # torch.Size and other torch objects: NumPy takes them as they are
    if not t.is_cpu:
        if t.is_cuda:
            return device_value(t, caps)
        raise OperandError(f"a {t.device} tensor is not an spcomp operand (CPU or CUDA only)")
    if t.layout is torch.strided:
        return numpy_view(t)
    return sparse_tensor(t)


def device_value(t, caps):
    """A CUDA tensor as a pycuda GPUArray over the same memory (``backend="cuda"``).

    Nothing is synchronised here: :func:`call` runs the launch under a
    :class:`TorchStreamOrder`, which fences it against torch's current stream."""
    if caps is None or not caps.device_arrays:
        raise OperandError("a CUDA tensor is an operand of backend='cuda' kernels only (this kernel's "
                           "backend runs on the host): call .cpu() first")
    torch = torch_module()
    if t.layout is not torch.strided:
        raise OperandError("sparse CUDA tensors are not taken: pass the sparse operand on the host "
                           "(the launch copies it to the device) and dense ones on the device")
    if not t.is_contiguous():
        raise OperandError("a CUDA tensor operand must be contiguous (call .contiguous())")
    import pycuda.gpuarray as gpuarray
    dtype = BFLOAT16 if t.dtype is torch.bfloat16 else np.dtype(str(t.dtype).replace("torch.", ""))
    return gpuarray.GPUArray(tuple(t.shape), dtype, gpudata=np.uintp(t.data_ptr()), base=t)


class TorchStreamOrder:
    """Orders a pycuda launch against torch's current stream on one device, on the device.

    pycuda launches on its own ``Stream`` objects only, so the launch goes on a
    pycuda stream that torch sees as an ``ExternalStream`` (one per device and
    thread, created on first use): before the launch that stream waits for torch's
    current stream (what torch queued on the operands is done first), after it
    torch's current stream waits for it (what torch queues next sees the result).
    Neither wait blocks the host (``wait_stream`` records an event and enqueues the
    wait). The protocol is :mod:`.streams`."""

    _local = threading.local()

    def __init__(self, device):
        self.device = device
        self.external = None

    def stream(self):
        torch = torch_module()
        made = getattr(self._local, "streams", None)
        if made is None:
            made = self._local.streams = {}
        key = str(self.device)
        if key not in made:
            import pycuda.driver as drv
            own = drv.Stream()
            made[key] = (own, torch.cuda.ExternalStream(own.handle, device=self.device))
        own, self.external = made[key]
        return own

    def before(self, stream) -> None:
        self.external.wait_stream(torch_module().cuda.current_stream(self.device))

    def after(self, stream) -> None:
        torch_module().cuda.current_stream(self.device).wait_stream(self.external)


def cuda_device(operands: dict):
    """The device of the first CUDA torch tensor among ``operands``, or None."""
    torch = torch_module()
    for v in operands.values():
        if isinstance(v, torch.Tensor) and v.is_cuda:
            return v.device
    return None


def result(value, out_dtype):
    """A kernel's result as torch: dense arrays shared, sparse in torch's layout
    when it has one (csr, csc, coo, bsr), else the spcomp Tensor; a scalar as a 0-d tensor."""
    if isinstance(value, np.ndarray):
        return from_numpy(value)
    if isinstance(value, Tensor):
        return value if natural_layout(value) is None else to_torch(value)
    if type(value).__module__.startswith("pycuda"):
        return device_result(value)
    if isinstance(value, (int, float)):
        return torch_module().tensor(value, dtype=torch_dtype(out_dtype))
    return value


def device_result(array):
    """A pycuda GPUArray result as a CUDA torch tensor over the same memory (torch
    keeps the GPUArray alive through ``__cuda_array_interface__``)."""
    return torch_module().as_tensor(array, device="cuda")


# ------------------------------------------------------------------ a call

def call(kernel, operands: dict, output_name: str, out_dtype, caps):
    """``kernel(**operands)`` with torch tensors among the operands: each becomes its
    host (or device) storage, the kernel runs (its repeated-call fast path included:
    a new view laid out like the last swaps a pointer), and the result comes back as
    torch -- the very tensor passed as the output when the kernel wrote into it."""
    host = {name: host_value(v, caps) if type(v).__module__.startswith("torch") else v
            for name, v in operands.items()}
    device = cuda_device(operands) if caps is not None and caps.device_arrays else None
    if device is None:
        out = kernel(**host)
    else:
        with streams.ordered(TorchStreamOrder(device)):
            out = kernel(**host)
    given = operands.get(output_name)
    if given is not None and out is host[output_name] and host[output_name] is not given:
        return given
    return result(out, out_dtype)
