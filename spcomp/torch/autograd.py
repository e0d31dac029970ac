"""Kernels that torch can differentiate: :func:`function`.

The forward is the kernel's operator (``spcomp::k_<digest>``, :mod:`.ops`); its
autograd formula (``torch.library.register_autograd``, so eager autograd and
``torch.compile`` both use it) runs one more operator per operand,
``spcomp::g_<digest>_<operand>``, whose implementation is the derived gradient
kernel of that operand (:mod:`spcomp.autodiff`, compiled once and kept). A dense
operand's gradient is a dense tensor; a sparse operand's is the gradient of its
*values* array, at its stored pattern (docs/autodiff.md): the level arrays are
integers and get none. Pass a sparse operand as :class:`~.ops.Levels` whose values
tensor requires grad (``f.levels(name, value)``; a weight-sparse layer keeps it as
an ``nn.Parameter``).
"""
from __future__ import annotations

import threading

import torch

from spcomp.errors import OperandError
from spcomp.runtime import Tensor, torch_bridge

from .ops import Levels, define_operator, op

__all__ = ["KernelFunction", "function"]

_FUNCTIONS: dict = {}   # forward operator name -> KernelFunction
_LOCK = threading.Lock()


def function(kernel) -> "KernelFunction":
    """``kernel`` as a differentiable torch function (see the module docstring).

    >>> k = spcomp.compile("y[i] = W[i,j] * x[j]", formats={"W": "csr"})
    >>> f = spcomp.torch.function(k)                                 # doctest: +SKIP
    >>> W = f.levels("W", W_csr)._replace(...)   # values that require grad
    >>> f(W=W, x=x).sum().backward()
    """
    kop = op(kernel)
    with _LOCK:
        made = _FUNCTIONS.get(kop.name)
        if made is None:
            made = _FUNCTIONS[kop.name] = KernelFunction(kop)
        made.kop = kop
    return made


class KernelFunction:
    """A kernel operator with an autograd formula; call it with operands by name."""

    def __init__(self, kop):
        self.kop = kop
        kernel = kop.kernel
        self.vjp = kernel.vjp(wrt=list(kernel.inputs))
        self._grad_ops = {n: self._gradient_op(n) for n in kernel.inputs}
        torch.library.register_autograd(kop.name, self._backward, setup_context=self._setup)

    def __repr__(self) -> str:
        return f"<spcomp.torch.function for {self.kop.kernel.expression!r}>"

    def levels(self, name: str, value, requires_grad: bool = False) -> Levels:
        """Sparse operand ``name`` as :class:`Levels` (see ``KernelOp.levels``); with
        ``requires_grad`` its values tensor is a fresh leaf that collects the gradient."""
        lv = self.kop.levels(name, value)
        if requires_grad:
            vals = lv.arrays[-1].detach().clone().requires_grad_(True)
            lv = Levels(lv.arrays[:-1] + (vals,), lv.shape)
        return lv

    def __call__(self, **operands):
        return self.kop(**operands)

    apply = __call__

    # ---------------------------------------------------------------- autograd
    def _setup(self, ctx, inputs, output):
        arrays, shapes = inputs
        ctx.save_for_backward(*arrays)
        ctx.shapes = shapes

    def _backward(self, ctx, grad):
        arrays = list(ctx.saved_tensors)
        grads = [None] * len(arrays)
        needs = ctx.needs_input_grad[0]  # one flag per array
        a = 0
        for name, count, _ in self.kop.layout:
            k = count or 1
            if name in self._grad_ops and needs[a + k - 1]:
                g = self._grad_ops[name](arrays + [grad.contiguous()], ctx.shapes)
                grads[a + k - 1] = g  # a sparse operand: its values array, the last of its arrays
            elif name == self.kop.output and needs[a]:  # '+=': the old output passes through
                grads[a] = grad
            a += k
        return grads, (None if len(ctx.shapes) else [])  # the structure torch checks

    def _gradient_op(self, name: str):
        """``spcomp::g_<digest>_<name>(forward arrays + [cotangent], shapes)``: the
        gradient of operand ``name`` (dense, or the values of a sparse one)."""
        op_name = self.kop.name.split("::")[1].replace("k_", "g_", 1) + "_" + name
        full = "spcomp::" + op_name
        _GRADIENTS[full] = (self, name)
        if not hasattr(torch.ops.spcomp, op_name):
            define_operator(op_name, "(Tensor[] arrays, int[] shapes) -> Tensor",
                    lambda arrays, shapes, full=full: _run_gradient(full, arrays, shapes),
                    lambda arrays, shapes, full=full: _fake_gradient(full, arrays, shapes))
        return getattr(torch.ops.spcomp, op_name).default

    def _position(self, name: str) -> tuple:
        a = 0
        for n, count, _ in self.kop.layout:
            if n == name:
                return a, count or 1
            a += count or 1
        raise OperandError(f"{name!r} is not an operand of {self.kop!r}")


_GRADIENTS: dict = {}   # gradient operator name -> (KernelFunction, operand)


def _run_gradient(full: str, arrays, shapes):
    f, name = _GRADIENTS[full]
    kop = f.kop
    operands = kop.unflatten(list(arrays[:-1]), shapes)
    cot = torch_bridge.host_value(arrays[-1].detach(), kop.kernel.runtime.caps)
    value = f.vjp.gradient(name, cot, **operands)
    at, count = f._position(name)
    like = arrays[at + count - 1]
    if isinstance(value, Tensor):
        return torch_bridge.from_numpy(value.vals.copy()).to(like.dtype)
    import numpy as np
    return torch.as_tensor(np.ascontiguousarray(value)).to(like.dtype).reshape(like.shape)


def _fake_gradient(full: str, arrays, shapes):
    f, name = _GRADIENTS[full]
    at, count = f._position(name)
    return torch.empty_like(arrays[at + count - 1])
