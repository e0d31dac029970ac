"""Conversions between torch tensors and spcomp storages, sharing memory where the layouts agree.

The pieces ``Tensor.from_torch`` / ``to_torch`` and the call path
(``torch_bridge.py``) share: NumPy views of torch memory (``torch.bfloat16``
through an int16 view as ``ml_dtypes.bfloat16``), torch tensors over NumPy arrays,
a sparse torch tensor's buffers as level arrays, and a Tensor as the torch layout
of its format. torch is imported on first use; this module takes the Tensor class
as an argument instead of importing it (``tensor.py`` imports this module).
"""
from __future__ import annotations

import numpy as np

from spcomp.errors import DTypeError, OperandError
from spcomp.formats import Format

from .convert import BFLOAT16

_torch = None


def torch_module():
    """torch, imported on first use (a module global after that: this runs per operand)."""
    global _torch
    if _torch is None:
        import torch
        _torch = torch
    return _torch


# ------------------------------------------------------------------ dtypes

def numpy_view(t) -> np.ndarray:
    """The memory of a strided CPU tensor as a NumPy array (no copy; any strides).
    Kept to a few attribute reads: it runs for every torch operand of every call."""
    if t.requires_grad:
        t = t.detach()
    torch = torch_module()
    if t.dtype is torch.bfloat16:
        return t.view(torch.int16).numpy().view(BFLOAT16)
    try:
        return t.numpy()
    except RuntimeError:  # a lazy conjugate or negative bit: materialise it (a copy)
        return t.resolve_conj().resolve_neg().numpy()
    except TypeError as e:  # a dtype NumPy has no type for
        raise DTypeError(f"a torch tensor of dtype {t.dtype} cannot be an spcomp operand ({e})") from None


def from_numpy(a: np.ndarray):
    """A torch tensor sharing ``a``'s memory (bfloat16 through an int16 view)."""
    torch = torch_module()
    if a.dtype == BFLOAT16:
        return torch.from_numpy(a.view(np.int16)).view(torch.bfloat16)
    return torch.from_numpy(a)


def torch_dtype(dtype: np.dtype):
    """The torch dtype of a NumPy value dtype (ml_dtypes.bfloat16 -> torch.bfloat16)."""
    torch = torch_module()
    return torch.bfloat16 if dtype == BFLOAT16 else getattr(torch, np.dtype(dtype).name)


# ------------------------------------------------------------------ torch -> spcomp

def from_torch(cls, t, index_bits: int | None = None):
    """A torch tensor as a ``cls`` (spcomp Tensor) in the format of its layout: strided -> dense
    (row-major values; other strides copied), sparse_csr -> csr, sparse_csc -> csc, sparse_coo -> coo,
    sparse_bsr -> bsr(R,C), sparse_bsc -> bsc(R,C)."""
    torch = torch_module()
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"from_torch takes a torch.Tensor, not {type(t).__name__}")
    if t.device.type != "cpu":
        raise OperandError(f"a {t.device.type} tensor cannot become an spcomp.Tensor (host memory): "
                           "call .cpu() first, or pass it to a backend='cuda' kernel directly")
    if t.layout == torch.strided:
        a = numpy_view(t)
        if a.ndim and not a.flags.c_contiguous:
            a = np.ascontiguousarray(a)  # a Tensor's dense values are row-major
        return cls("dense", a.shape, [{} for _ in range(a.ndim)], a.reshape(-1), validated=True)
    return cls(*sparse_parts(t), index_bits=index_bits)


def sparse_parts(t) -> tuple:
    """``(format, shape, levels, vals)`` of a torch sparse tensor, the arrays NumPy
    views of its buffers (a ``sparse_coo`` tensor not coalesced is coalesced first: a copy)."""
    torch = torch_module()
    shape = tuple(int(s) for s in t.shape)
    if t.layout in (torch.sparse_csr, torch.sparse_csc):
        if t.ndim != 2 or t.values().ndim != 1:
            raise OperandError(f"a batched or hybrid {t.layout} tensor (shape {shape}, dense dims) "
                               "is not an spcomp operand: pass 2-D compressed tensors")
        csr = t.layout == torch.sparse_csr
        pos = numpy_view(t.crow_indices() if csr else t.ccol_indices())
        crd = numpy_view(t.col_indices() if csr else t.row_indices())
        vals = numpy_view(t.values())
        # torch keeps indices sorted within a row (and checks it with check_invariants);
        # validated on first use like a SciPy matrix passed zero-copy
        return ("csr" if csr else "csc"), shape, [{}, {"pos": pos, "crd": crd}], vals
    if t.layout == torch.sparse_coo:
        if t.dense_dim():
            raise OperandError(f"a hybrid sparse_coo tensor ({t.dense_dim()} dense dims) is not an "
                               "spcomp operand: pass t.to_dense() or a tensor with sparse dims only")
        if not t.is_coalesced():
            t = t.coalesce()  # sorted, duplicates summed: a copy, per call (coalesce it once yourself)
        idx = numpy_view(t.indices())
        vals = numpy_view(t.values())
        if len(shape) == 0:
            return "dense", (), [], vals.reshape(1) if vals.size else np.zeros(1, vals.dtype)
        levels = [{"pos": np.array([0, idx.shape[1]], dtype=idx.dtype), "crd": idx[0]}]
        levels += [{"crd": idx[d]} for d in range(1, len(shape))]
        return "coo", shape, levels, vals
    if t.layout in (torch.sparse_bsr, torch.sparse_bsc):
        return _block_parts(t, shape, torch)
    raise OperandError(f"torch layout {t.layout} is not an spcomp operand; pass strided, sparse_coo, "
                       "sparse_csr, sparse_csc, sparse_bsr or sparse_bsc tensors")


def _block_parts(t, shape, torch) -> tuple:
    """A ``sparse_bsr`` tensor is ``bsr(R,C)``'s arrays as they are (``crow_indices`` ->
    ``pos``, ``col_indices`` -> ``crd``, ``values`` of shape ``(nblocks, R, C)`` -> ``vals``:
    scipy's layout too). A ``sparse_bsc`` tensor's blocks are row-major R x C while
    ``bsc(R,C)`` stores each block column-major, so its values are copied once with
    each block transposed (its index arrays are used as they are)."""
    values = t.values()
    if t.ndim != 2 or values.ndim != 3:
        raise OperandError(f"a batched or hybrid {t.layout} tensor (shape {shape}, values "
                           f"{tuple(values.shape)}) is not an spcomp operand: pass 2-D block tensors")
    R, C = (int(s) for s in values.shape[1:])
    rows = t.layout == torch.sparse_bsr
    pos = numpy_view(t.crow_indices() if rows else t.ccol_indices())
    crd = numpy_view(t.col_indices() if rows else t.row_indices())
    vals = numpy_view(values)
    if not rows:
        vals = np.ascontiguousarray(vals.transpose(0, 2, 1))
    fmt = Format.bsr(R, C) if rows else Format.bsc(R, C)
    levels = [{}, {"pos": pos, "crd": crd}] + [{} for _ in fmt.levels[2:]]
    return fmt, shape, levels, vals.reshape(-1)


def is_bsr(fmt) -> bool:
    """Whether ``fmt`` is a ``bsr(R,C)`` preset (torch's ``sparse_bsr`` layout)."""
    return fmt.blocks is not None and fmt == Format.bsr(*fmt.blocks)


# ------------------------------------------------------------------ spcomp -> torch

def to_torch(t, layout=None):
    """A Tensor as torch (``Tensor.to_torch``): the layout of its format, sharing arrays."""
    torch = torch_module()
    fmt = t.format
    natural = natural_layout(t)
    want = layout if layout is not None else (natural or torch.sparse_coo)
    if want == torch.strided:
        return from_numpy(np.ascontiguousarray(t.to_numpy()) if not fmt.is_dense or fmt.order != tuple(
            range(t.ndim)) else t.vals.reshape(t.shape))
    t.validate()
    if want == natural and want in (torch.sparse_csr, torch.sparse_csc, torch.sparse_bsr):
        lv = t.levels[1]  # csr/csc/bsr: the compressed level's arrays are torch's indices
        pos, crd = lv["pos"], lv["crd"]
        if pos.dtype != crd.dtype or pos.dtype not in (np.int32, np.int64):
            pos, crd = pos.astype(np.int64), crd.astype(np.int64)
        if want == torch.sparse_bsr:
            vals, make = t.vals.reshape(-1, *fmt.blocks), torch.sparse_bsr_tensor
        else:
            vals, make = t.vals, (torch.sparse_csr_tensor if want == torch.sparse_csr else torch.sparse_csc_tensor)
        return make(from_numpy(pos), from_numpy(crd), from_numpy(vals), t.shape, check_invariants=False)
    if want == torch.sparse_coo:
        coords, values = t.to_coo()
        return torch.sparse_coo_tensor(from_numpy(coords), from_numpy(np.ascontiguousarray(values)), t.shape,
                                       check_invariants=False)
    return to_torch(t, torch.sparse_coo).to_sparse(layout=want)


def natural_layout(t):
    """The torch layout Tensor ``t``'s format is stored as (its arrays are that layout's
    buffers): strided, sparse_csr / sparse_csc / sparse_bsr, sparse_coo; None where
    torch has none (twell, ell, dcsr, csf, ...)."""
    torch = torch_module()
    fmt, levels = t.format, t.format.levels
    if fmt.is_dense:
        return torch.strided
    if is_bsr(fmt):
        return torch.sparse_bsr
    if fmt.blocks is None and t.ndim == 2 and levels[0].is_dense and levels[1].compressed_segments:
        return torch.sparse_csr if fmt.order == (0, 1) else torch.sparse_csc
    if coordinate_list(fmt):
        return torch.sparse_coo
    return None


def coordinate_list(fmt) -> bool:
    """A coordinate list (``coo``): one segmented level, then levels aligned with it
    (singletons), in dimension order."""
    lv = fmt.levels
    return (len(lv) >= 1 and lv[0].segmented and all(l.aligned_with_parent for l in lv[1:])
            and fmt.order == tuple(range(len(lv))))
