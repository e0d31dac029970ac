"""spcomp kernels and ``spcomp.nn`` layers as torch custom operators.

``torch.compile`` and ``torch.export`` see a kernel call as one operator when it
is a registered torch operator (``torch.library``) with a *fake* implementation
that says what it returns without running it. Two kinds are made here:

* :func:`op` (``KernelOp``): one compiled kernel, ``spcomp::k_<digest>``, the
  digest of its expression, formats, dtypes, backend and schedule (the same
  kernel compiled again gets the same operator). Its operands cross the boundary
  as dense tensors: a dense operand as itself, a sparse one as its level arrays
  (``pos``, ``crd``, ..., ``vals``) plus its shape in an ``int[]`` -- torch's
  compilers trace dense tensors only. Outputs are dense (or scalar): a sparse
  output's size is known only after the kernel ran, which needs unbacked
  symbolic sizes for every level array; not done (docs/torch.md, Limits).
* :func:`layer_op` (``spcomp::layer``): an ``spcomp.nn`` layer (``SparseLinear``,
  ``SparseFFN``), its weights held by spcomp, named by an integer handle; the
  layer's own call runs (threads, weight slabs, BLAS gate, top-k selection), so
  nothing of spcomp.nn is re-implemented for torch. The modules of
  :mod:`spcomp.torch.nn` call it.

Both are inference operators as made here; :func:`spcomp.torch.function`
(``autograd.py``) registers a kernel operator's autograd formula.
"""
from __future__ import annotations

import hashlib
import itertools
import threading
import typing
import weakref

import numpy as np
import torch

from spcomp.errors import OperandError
from spcomp.runtime import Tensor, torch_bridge
from spcomp.runtime.memory import malloc_view

__all__ = ["op", "KernelOp", "Levels", "layer_op", "register_layer"]


class Levels(typing.NamedTuple):
    """A sparse operand as the dense tensors that cross an operator boundary: its
    level arrays in the kernel format's parameter order, then its values, and its
    shape. Made once (``KernelOp.levels``) and kept, e.g. as module buffers, so a
    compiled graph passes them as they are."""
    arrays: tuple
    shape: tuple


_OPS: dict = {}         # operator name -> KernelOp (the newest with that name)
_LOCK = threading.Lock()


def op(kernel) -> "KernelOp":
    """``kernel`` as a torch custom operator (registered once per kernel digest).

    >>> k = spcomp.compile("y[i] = W[i,j] * x[j]", formats={"W": "csr"}, dtype="float32")
    >>> spmv = spcomp.torch.op(k)                                    # doctest: +SKIP
    >>> y = spmv(W=W_csr, x=x)          # eager: torch sparse, spcomp.Tensor or Levels
    >>> W = spmv.levels("W", W_csr)     # once; then torch.compile traces spmv(W=W, x=x)
    """
    name = "spcomp::k_" + digest(kernel)
    with _LOCK:
        existing = _OPS.get(name)
        if existing is not None:
            existing.kernel = kernel
            return existing
        made = _OPS[name] = KernelOp(kernel, name)
    return made


def digest(kernel) -> str:
    """A stable name part for ``kernel``: what decides its operands and results."""
    tensors = sorted((t.name, t.order, t.format.spec(), t.dtype) for t in kernel.notation.tensors.values())
    key = repr((kernel.index_notation, tensors, kernel.backend, repr(kernel.schedule)))
    return hashlib.sha1(key.encode()).hexdigest()[:16]


class KernelOp:
    """A kernel registered as ``torch.ops.spcomp.k_<digest>(Tensor[] arrays, int[] shapes)``.

    Call it with operands by name, like the kernel: torch tensors (dense, or
    sparse CSR/CSC/COO, flattened per call), ``spcomp.Tensor`` or :class:`Levels`
    for sparse operands. Under ``torch.compile`` pass sparse operands as
    :class:`Levels` (:meth:`levels`), which are plain tensors to the tracer."""

    def __init__(self, kernel, name: str):
        plan = kernel.runtime.plan
        low = kernel.lowered
        if low.output.shape != "dense" and kernel.notation.lhs.tensor.order:
            raise OperandError(f"{kernel!r}: spcomp.torch.op takes kernels with dense or scalar outputs; "
                               "a sparse output's size is data-dependent (call the kernel itself, which "
                               "returns a torch sparse tensor)")
        self.kernel = kernel
        self.name = name
        notation = kernel.notation
        self.accumulate = notation.accumulate
        self.output = kernel.output_name
        self.names = list(kernel.inputs) + ([self.output] if self.accumulate else [])
        self.formats = {n: notation.tensors[n].format for n in self.names}
        self.sparse = {n for n in self.names if not self.formats[n].is_dense}
        self.counts = {n: sum(len(k.arrays) for k in self.formats[n].levels) + 1 for n in self.sparse}
        self.out_dtype = torch_bridge.torch_dtype(plan.out_dtype)
        self.out_indices = [i.name for i in notation.lhs.indices]
        self.out_order = tuple(notation.lhs.tensor.format.order) or ()
        self.index_of = self._index_sources(notation)
        # (operand, level arrays or 0 for a dense operand, order) in argument order
        self._layout = [(n, self.counts.get(n, 0), self.formats[n].ndim) for n in self.names]
        self._out_np_dtype = plan.out_dtype
        self._cache: dict = {}
        _register(name, self)
        self.packet = getattr(torch.ops.spcomp, name.replace("spcomp::", "")).default

    def _index_sources(self, notation) -> dict:
        """index -> (operand, dimension) that gives its size."""
        from spcomp.notation import accesses
        where = {}
        for acc in accesses(notation.rhs):
            for d, i in enumerate(acc.indices):
                where.setdefault(i.name, (acc.tensor.name, d))
        if self.accumulate:
            for d, i in enumerate(notation.lhs.indices):
                where.setdefault(i.name, (self.output, d))
        return where

    @property
    def layout(self) -> list:
        """``(operand, number of level arrays or 0 when dense, order)`` in argument order."""
        return list(self._layout)

    def __repr__(self) -> str:
        return f"<spcomp.torch.KernelOp torch.ops.{self.name.replace('::', '.')} for {self.kernel.expression!r}>"

    # ------------------------------------------------------------ flattening
    def levels(self, name: str, value) -> Levels:
        """Sparse operand ``name`` (torch sparse, SciPy or spcomp.Tensor) as
        :class:`Levels` in the kernel's format for it (tensors sharing its arrays
        where the formats agree, else a converted copy)."""
        fmt = self.formats[name]
        if isinstance(value, Levels):
            return value
        if isinstance(value, torch.Tensor):
            t = Tensor.from_torch(value)
        elif isinstance(value, Tensor):
            t = value
        else:
            from spcomp.runtime import as_tensor
            t = as_tensor(value, fmt)
        if t.format != fmt:
            t = t.to_format(fmt)
        t.validate()
        arrays = [lv[a] for kind, lv in zip(fmt.levels, t.levels) for a in kind.arrays] + [t.vals]
        return Levels(tuple(torch_bridge.from_numpy(a if a.flags.writeable else a.copy()) for a in arrays),
                      tuple(int(s) for s in t.shape))

    def flatten(self, operands: dict) -> tuple:
        """``(arrays, shapes)``: the operator's two arguments for a call's operands."""
        arrays, shapes = [], []
        for n in self.names:
            v = operands[n]
            if n in self.sparse:
                if not isinstance(v, Levels):
                    v = self.levels(n, v)
                arrays.extend(v.arrays)
                shapes.extend(v.shape)
            else:
                if not isinstance(v, torch.Tensor):
                    v = torch.as_tensor(np.asarray(v))
                arrays.append(v)
        return arrays, shapes

    def __call__(self, **operands):
        if operands.keys() != set(self.names):
            missing = sorted(set(self.names) - operands.keys())
            extra = sorted(operands.keys() - set(self.names))
            raise OperandError(f"{self!r} takes {', '.join(self.names)}"
                               + (f"; missing {', '.join(missing)}" if missing else "")
                               + (f"; unexpected {', '.join(extra)}" if extra else ""))
        arrays, shapes = self.flatten(operands)
        return self.packet(arrays, shapes)

    # ------------------------------------------------------------ the implementation
    def unflatten(self, arrays, shapes) -> dict:
        """The kernel's operands from the operator's arguments: NumPy views of the
        dense tensors (device arrays for CUDA ones), Tensors over the level arrays."""
        ops, a, s = {}, 0, 0
        caps = self.kernel.runtime.caps
        for n, k, ndim in self._layout:
            if k:
                ops[n] = self._sparse_operand(n, arrays[a:a + k], tuple(shapes[s:s + ndim]))
                a += k
                s += ndim
            else:
                ops[n] = torch_bridge.host_value(arrays[a], caps)
                a += 1
        return ops

    def _sparse_operand(self, name, arrays, shape) -> Tensor:
        """A Tensor over level arrays, validated once per set of arrays: kept while
        the values tensor lives, over views of the raw memory (a view from
        ``Tensor.numpy()`` would keep the tensor alive from the cache itself), and
        made again when any array is another object, moved or changed in place
        (torch's version counter; a tensor's dtype and shape change only with its
        storage, ``x.data = ...``, which moves it)."""
        vals = arrays[-1]
        fp = tuple([x.data_ptr() for x in arrays] + [x._version for x in arrays]) + shape
        key = (name, id(vals))
        hit = self._cache.get(key)
        if hit is not None and all(r() is x for r, x in zip(hit[0], arrays)) and hit[1] == fp:
            return hit[2]
        fmt = self.formats[name]
        cacheable = all(x.is_contiguous() and x.device.type == "cpu" for x in arrays)
        views = [_raw_view(x) if cacheable else torch_bridge.numpy_view(x) for x in arrays]
        levels, k = [], 0
        wide = False
        for kind in fmt.levels:
            lv = {}
            for a in kind.arrays:
                lv[a] = views[k]
                # an array of the kernel's index type (pos, crd) given as int64: 64-bit kernel
                wide |= kind.array_type(a, 32) != kind.array_type(a, 64) and views[k].dtype == np.int64
                k += 1
            levels.append(lv)
        t = Tensor(fmt, shape, levels, views[-1], index_bits=64 if wide else None).validate(name)
        if cacheable:
            cache = self._cache
            refs = tuple(weakref.ref(x) for x in arrays[:-1]) + (
                weakref.ref(vals, lambda _r, key=key, cache=cache: cache.pop(key, None)),)
            cache[key] = (refs, fp, t)
        return t

    def run(self, arrays, shapes):
        """The operator's eager implementation: the kernel on views of the arrays."""
        if self.accumulate:  # functional: into a copy of the given output, which is returned
            arrays = list(arrays)
            given = arrays[self._output_position()] = arrays[self._output_position()].clone()
            self.kernel(**self.unflatten(arrays, shapes))
            return given
        return torch_bridge.result(self.kernel(**self.unflatten(arrays, shapes)), self._out_np_dtype)

    def fake(self, arrays, shapes):
        """The result's shape, dtype and strides, without running the kernel."""
        if self.accumulate:
            return torch.empty_like(arrays[self._output_position()])
        sizes = {}
        dims = {}
        a, s = 0, 0
        for n in self.names:
            if n in self.sparse:
                ndim = self.formats[n].ndim
                dims[n] = list(shapes[s:s + ndim])
                a += self.counts[n]
                s += ndim
            else:
                dims[n] = list(arrays[a].shape)
                a += 1
        for i, (n, d) in self.index_of.items():
            sizes[i] = dims[n][d]
        shape = [sizes[i] for i in self.out_indices]
        device = arrays[0].device if arrays else "cpu"
        if not shape:
            return torch.empty((), dtype=self.out_dtype, device=device)
        order = self.out_order or tuple(range(len(shape)))
        stored = torch.empty([shape[d] for d in order], dtype=self.out_dtype, device=device)
        return stored.permute(*np.argsort(order).tolist())

    def _output_position(self) -> int:
        a = 0
        for n in self.names:
            if n == self.output:
                return a
            a += self.counts.get(n, 1)
        raise AssertionError("the output is an operand of += kernels")


def _raw_view(x: torch.Tensor) -> np.ndarray:
    """A contiguous CPU tensor's memory as NumPy, holding no reference to it."""
    dtype = np.dtype(torch_bridge.BFLOAT16) if x.dtype is torch.bfloat16 else np.dtype(
        str(x.dtype).replace("torch.", ""))
    n = x.numel()
    if n == 0:
        return np.zeros(0, dtype)
    return malloc_view(x.data_ptr(), n, dtype).reshape(tuple(x.shape))


# The operators are defined with torch.library.Library (define + impl per dispatch
# key + register_fake) rather than the torch.library.custom_op decorator: the same
# operator to torch.compile and torch.export, but the decorator's Python dispatch
# added ~20 us per call against ~5 us here (docs/torch.md, "Overhead").
_LIB = torch.library.Library("spcomp", "FRAGMENT")


def define_operator(name: str, schema: str, impl, fake) -> None:
    """Define ``spcomp::name`` with ``impl`` for CPU and CUDA tensors and ``fake``
    for the tracers (fake and meta tensors)."""
    _LIB.define(name + schema)
    for key in ("CPU", "CUDA"):
        _LIB.impl(name, impl, key)
    torch.library.register_fake("spcomp::" + name, fake, lib=_LIB)


def _register(name: str, kop: KernelOp):
    """Define ``name`` as ``(Tensor[] arrays, int[] shapes) -> Tensor``, its
    implementation and fake looked up by name (so a kernel compiled again, with
    the same digest, serves the operator already defined)."""

    def impl(arrays, shapes):
        return _OPS[name].run(arrays, shapes)

    def fake(arrays, shapes):
        return _OPS[name].fake(arrays, shapes)

    define_operator(name.split("::")[1], "(Tensor[] arrays, int[] shapes) -> Tensor", impl, fake)


# ------------------------------------------------------------------ layers

_LAYERS: dict = {}      # handle -> weakref to an spcomp.nn layer
_HANDLES = itertools.count(1)


def register_layer(layer) -> int:
    """A handle for an ``spcomp.nn`` layer (kept while the layer lives) that
    :func:`layer_op` calls it by."""
    handle = next(_HANDLES)
    _LAYERS[handle] = weakref.ref(layer)
    weakref.finalize(layer, _LAYERS.pop, handle, None)
    return handle


def _layer_impl(x, handle, out_features):
    """``spcomp.nn`` layer ``handle`` on ``x`` (..., in) -> (..., out_features) float32."""
    ref = _LAYERS.get(handle)
    layer = ref() if ref is not None else None
    if layer is None:
        raise OperandError(f"spcomp layer {handle} no longer exists (its module was deleted)")
    a = torch_bridge.numpy_view(x)
    if x.dtype is not torch.float32 or not a.flags.c_contiguous:
        a = np.ascontiguousarray(a, dtype=np.float32)
    y = layer(a)
    return torch_bridge.from_numpy(np.ascontiguousarray(y, dtype=np.float32))


def _layer_fake(x, handle, out_features):
    return x.new_empty((*x.shape[:-1], out_features), dtype=torch.float32)


define_operator("layer", "(Tensor x, int handle, int out_features) -> Tensor", _layer_impl, _layer_fake)
layer_op = torch.ops.spcomp.layer.default
