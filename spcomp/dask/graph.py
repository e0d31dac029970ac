"""``apply``: a compiled kernel over Dask arrays, as a blockwise step and a tree of sums.

The statement's index notation gives the graph (see :mod:`.plan`): each index is a
block index; operands whose chunks along a shared index differ are cut to the
common refinement of their chunkings (a warning says so, with the sizes), so that
every new chunk is a slice of one old chunk and nothing is concatenated; one task
runs the kernel per tuple of blocks of the output's *and* the contracted indices
(``dask.array.blockwise``); the partial results for one output block are then
added in a tree of at most ``split_every`` parts a node: NumPy addition for dense
outputs and scalars, the compiled sparse-add kernel ``C = P + Q`` in the output's
format for sparse ones. A statement that is not linear in a split sum has that sum
lifted into a statement of its own first (:func:`.plan.hoist`); ``+=`` is computed
as ``=`` and the old value added once, at the end, by the same add kernel.
"""
from __future__ import annotations

import uuid
import warnings
from itertools import product

import numpy as np

from spcomp.errors import OperandError, ShapeError, UnsupportedError
from spcomp.formats import Format
from spcomp.notation import accesses
from spcomp.runtime import Tensor, resolve_dtype

from . import blocks, plan, ship

WHAT = "spcomp.dask.apply"


class RechunkWarning(UserWarning):
    """Operands of ``spcomp.dask.apply`` were cut to a common chunking (the message
    gives each operand's chunk sizes along the index, and the new ones)."""


def apply(kernel, *, threads: int = 1, split_every: int = 8, chunk_type: str | None = None, **operands):
    """The kernel over Dask arrays: a lazy Dask array (0-d for a scalar output).
    See :func:`spcomp.dask.apply` for the parameters."""
    import dask.array as da

    notation = kernel.notation
    out = kernel.output_name
    _check_names(kernel, operands)
    if split_every < 2:
        raise ValueError("split_every must be at least 2")
    order = len(notation.lhs.indices)
    out_format = notation.lhs.tensor.format
    if chunk_type is None:
        chunk_type, matrix = _inferred_kind(operands, order)
    else:
        chunk_type, matrix = _given_kind(chunk_type, operands, order)
    options = dict(threads=threads, split_every=split_every, chunk_type=chunk_type)
    if notation.accumulate:
        old = operands.pop(out)
        fresh = _recompile(kernel, plan.statement(out, notation.lhs.indices, notation.rhs), notation.rhs, {})
        new = apply(fresh, **options, **operands)
        adder = add_kernel(out_format, notation.lhs.tensor.dtype, order)
        return apply(adder, **options, P=old, Q=new)

    st = plan.structure(notation, WHAT)
    arrays = {name: _as_dask(value, name, notation.tensors[name].order, da) for name, value in operands.items()}
    chunks = _unify(st, arrays, {n for n, v in operands.items() if _is_dask(v)})
    for name, idx in st.tensors.items():
        if _is_dask(arrays[name]):
            arrays[name] = refine(arrays[name], tuple(chunks[i] for i in idx))
    split = {c for c in st.contracted if len(chunks[c]) > 1}
    rhs, temps = plan.hoist(notation.rhs, split, set(notation.tensors))
    if temps:
        return _lifted(kernel, rhs, temps, arrays, options)
    if split and any(lv.fixed_slots for lv in out_format.levels):
        raise UnsupportedError(f"{WHAT}: the output {out} is packed-block ({out_format.spec()}), whose "
                               "partial results cannot be added; keep the contracted index "
                               f"{sorted(split)[0]} in one chunk")
    return _blockwise(kernel, st, arrays, chunks, chunk_type, matrix, threads, split_every, da)


# ------------------------------------------------------------------ operands

def _check_names(kernel, operands) -> None:
    want = list(kernel.inputs) + ([kernel.output_name] if kernel.notation.accumulate else [])
    missing = [n for n in want if n not in operands]
    extra = [n for n in operands if n not in want]
    if kernel.output_name in extra:
        raise OperandError(f"{WHAT}: the output {kernel.output_name} is built by apply; do not pass it "
                           "(only a += kernel takes its old value)")
    if missing or extra:
        raise OperandError(f"{WHAT}: kernel {kernel.expression!r} takes {', '.join(want)}"
                           + (f"; missing {', '.join(missing)}" if missing else "")
                           + (f"; unknown {', '.join(extra)}" if extra else ""))


def _is_dask(x) -> bool:
    return type(x).__module__.startswith("dask.") and hasattr(x, "chunks") and hasattr(x, "dask")


def _as_dask(value, name: str, order: int, da):
    """An operand as a Dask array (one chunk when it was not one); a number for an
    order-0 operand stays a number."""
    if _is_dask(value):
        if value.ndim != order:
            raise ShapeError(f"{WHAT}: operand {name} has {value.ndim} dimensions, the kernel's {name} {order}")
        if any(np.isnan(c) for dim in value.chunks for c in dim):
            raise ShapeError(f"{WHAT}: operand {name} has chunks of unknown size; call "
                             f"{name}.compute_chunk_sizes() first")
        return value
    if order == 0 and np.ndim(value) == 0 and not isinstance(value, Tensor):
        return value
    import scipy.sparse as sp
    if isinstance(value, Tensor) or sp.issparse(value) or blocks.is_pydata(value):
        if len(value.shape) != order:
            raise ShapeError(f"{WHAT}: operand {name} has shape {value.shape}, the kernel's {name} "
                             f"has {order} dimensions")
        return single_chunk(value)
    value = np.asarray(value)
    if value.ndim != order:
        raise ShapeError(f"{WHAT}: operand {name} has shape {value.shape}, the kernel's {name} has "
                         f"{order} dimensions")
    return da.from_array(value, chunks=value.shape or ())


def meta_of(chunk):
    """The Dask meta for an array of chunks like ``chunk``."""
    import scipy.sparse as sp
    if isinstance(chunk, Tensor):
        return blocks.TensorMeta(chunk.ndim, chunk.dtype, chunk.format)
    if sp.issparse(chunk):
        return type(chunk)((0, 0), dtype=chunk.dtype)
    return chunk[tuple(slice(0, 0) for _ in chunk.shape)]


def single_chunk(value):
    """A Dask array of one chunk, ``value`` (a Tensor, SciPy or pydata matrix)."""
    import dask.array as da
    from dask.highlevelgraph import HighLevelGraph
    name = f"spcomp-operand-{uuid.uuid4().hex}"
    graph = HighLevelGraph.from_collections(name, {(name,) + (0,) * len(value.shape): value})
    return da.Array(graph, name, chunks=tuple((s,) for s in value.shape), meta=meta_of(value))


def _inferred_kind(operands, order: int):
    """The chunk kind of a sparse output, as the inputs were: Tensors if any input's
    chunks are Tensors, else SciPy (2-D outputs) if any are SciPy, else pydata if any
    are, else Tensors; and whether SciPy inputs were matrices (not arrays)."""
    import scipy.sparse as sp
    metas = [v._meta if _is_dask(v) else v for v in operands.values()]
    kinds = [blocks.kind_of(m) for m in metas]
    matrix = any(isinstance(m, sp.spmatrix) for m in metas)
    if blocks.TENSOR in kinds:
        return blocks.TENSOR, matrix
    if blocks.SCIPY in kinds and order == 2:
        return blocks.SCIPY, matrix
    if blocks.PYDATA in kinds:
        return blocks.PYDATA, matrix
    return blocks.TENSOR, matrix


def _given_kind(kind: str, operands, order: int):
    if kind not in (blocks.TENSOR, blocks.SCIPY, blocks.PYDATA):
        raise ValueError(f"chunk_type is 'tensor', 'scipy' or 'pydata', not {kind!r}")
    if kind == blocks.SCIPY and order != 2:
        raise ValueError(f"chunk_type='scipy' needs a 2-D output; this one has {order} dimensions")
    return kind, _inferred_kind(operands, order)[1]


# ------------------------------------------------------------------ chunks

def _unify(st, arrays, users: set) -> dict:
    """Each index's chunking: the one every operand has, or the common refinement of
    theirs (with a RechunkWarning when an operand the user chunked is cut)."""
    seen: dict = {}
    for name, idx in st.tensors.items():
        a = arrays[name]
        if not _is_dask(a):
            continue
        for d, i in enumerate(idx):
            seen.setdefault(i, []).append((name, idx, a.chunks[d]))
    chunks = {}
    for i, entries in seen.items():
        other = [e for e in entries if sum(e[2]) != sum(entries[0][2])]
        if other:
            raise ShapeError(f"{WHAT}: index {i} has size {sum(entries[0][2])} in {entries[0][0]} and "
                             f"{sum(other[0][2])} in {other[0][0]}")
        distinct = list(dict.fromkeys(c for _, _, c in entries))
        if len(distinct) == 1:
            chunks[i] = distinct[0]
            continue
        cuts = sorted({int(b) for c in distinct for b in np.cumsum((0,) + tuple(c))})
        target = tuple(b - a for a, b in zip(cuts, cuts[1:])) or (0,)
        chunks[i] = target
        cut = [(n, idx, c) for n, idx, c in entries if c != target and n in users]
        if cut:
            shown = "; ".join(f"{n}[{','.join(idx)}] has {_sizes(c)}" for n, idx, c in
                              dict.fromkeys(entries))
            warnings.warn(f"{WHAT}: operands are chunked differently along index {i} ({shown}); "
                          f"{', '.join(dict.fromkeys(n for n, _, _ in cut))} rechunked to {_sizes(target)} "
                          "(the common refinement: each new chunk is a slice of an old one)",
                          RechunkWarning, stacklevel=4)
    return chunks


def _sizes(c: tuple) -> str:
    if len(c) <= 8:
        return f"chunks {c}"
    return f"{len(c)} chunks ({', '.join(map(str, c[:4]))}, ..., {', '.join(map(str, c[-2:]))})"


def refine(arr, target: tuple):
    """``arr`` cut to ``target`` chunks, a refinement of its own: each new chunk is a
    slice of one old chunk (:func:`.blocks.slice_block`, any chunk kind)."""
    if tuple(arr.chunks) == target:
        return arr
    import dask.array as da
    from dask.highlevelgraph import HighLevelGraph
    maps = []
    for old, new in zip(arr.chunks, target):
        starts = np.cumsum((0,) + tuple(old))
        pos, out = 0, []
        for size in new:
            o = int(np.searchsorted(starts, pos, side="right") - 1)
            o = min(o, len(old) - 1)
            lo = pos - int(starts[o])
            out.append((o, slice(lo, lo + size)))
            pos += size
        maps.append(out)
    name = f"spcomp-rechunk-{uuid.uuid4().hex}"
    dsk = {}
    for b in product(*(range(len(m)) for m in maps)):
        picks = [maps[d][k] for d, k in enumerate(b)]
        dsk[(name,) + b] = (blocks.slice_block, (arr.name,) + tuple(p[0] for p in picks),
                            tuple(p[1] for p in picks))
    graph = HighLevelGraph.from_collections(name, dsk, dependencies=[arr])
    return da.Array(graph, name, chunks=target, meta=arr._meta)


# ------------------------------------------------------------------ graphs

def _blockwise(kernel, st, arrays, chunks, kind, matrix, threads, split_every, da):
    from dask.base import tokenize
    from dask.highlevelgraph import HighLevelGraph

    notation = kernel.notation
    out_tensor = notation.lhs.tensor
    order = len(st.output)
    dtype = resolve_dtype(out_tensor.dtype)
    mode = "scalar" if order == 0 else "dense" if out_tensor.format.is_dense else "sparse"
    shipment = ship.Shipment(kernel)
    names = tuple(kernel.inputs)
    spec = (names, tuple(kernel.formats[n] for n in names), int(threads))
    pairs = []
    for n in names:
        v = arrays[n]
        pairs += [v, st.tensors[n] if _is_dask(v) else None]
    token = tokenize(shipment.digest, [(n, getattr(arrays[n], "name", arrays[n])) for n in names],
                     threads, split_every, kind, matrix)
    partial_ind = st.output + st.contracted
    partial_meta = (blocks.TensorMeta(len(partial_ind), dtype, out_tensor.format) if mode == "sparse"
                    else np.empty((0,) * len(partial_ind), dtype))
    partials = da.blockwise(ship.run_block, partial_ind, shipment.node(), None, shipment.digest, None,
                            shipment.key, None, spec, None, *pairs,
                            adjust_chunks={c: 1 for c in st.contracted}, meta=partial_meta,
                            align_arrays=False, concatenate=True, name=f"spcomp-partial-{token}")
    dependencies = [partials]
    add = (None, None, None)
    reduces = any(len(chunks[c]) > 1 for c in st.contracted)
    if mode == "sparse" and reduces:
        adder = ship.Shipment(add_kernel(out_tensor.format, out_tensor.dtype, order))
        node = adder.node()
        dependencies.append(node)
        add = (node.key, adder.digest, adder.key)
    name = f"spcomp-{token}"
    finish = (kind, bool(matrix), dtype)
    dsk = {}
    contracted_blocks = list(product(*(range(len(chunks[c])) for c in st.contracted)))
    for ob in product(*(range(len(chunks[i])) for i in st.output)):
        parts = [(partials.name,) + ob + cb for cb in contracted_blocks]
        level = 0
        while len(parts) > split_every:
            grouped = []
            for g in range(0, len(parts), split_every):
                key = (f"spcomp-sum-{token}", level) + ob + (g // split_every,)
                dsk[key] = (ship.reduce_blocks, mode, None, threads, *add, *parts[g:g + split_every])
                grouped.append(key)
            parts, level = grouped, level + 1
        dsk[(name,) + ob] = (ship.reduce_blocks, mode, finish, threads, *add, *parts)
    graph = HighLevelGraph.from_collections(name, dsk, dependencies=dependencies)
    return da.Array(graph, name, chunks=tuple(chunks[i] for i in st.output),
                    meta=_output_meta(mode, kind, matrix, out_tensor.format, order, dtype))


def _output_meta(mode, kind, matrix, format, order, dtype):
    if mode != "sparse":
        return np.empty((0,) * order, dtype)
    if kind == blocks.SCIPY:
        return blocks.scipy_meta(format, dtype, matrix)
    if kind == blocks.PYDATA:
        import sparse
        return sparse.COO(np.empty((order, 0), np.int64), np.empty(0, dtype), shape=(0,) * order)
    return blocks.TensorMeta(order, dtype, format)


def add_kernel(format, dtype, order: int):
    """The compiled ``C = P + Q`` for outputs of ``format`` and ``dtype``: how sparse
    partial results, and a ``+=`` kernel's old value, are added."""
    import spcomp
    idx = ",".join(f"i{d}" for d in range(order))
    text = f"C[{idx}] = P[{idx}] + Q[{idx}]" if order else "C = P + Q"
    return spcomp.compile(text, formats={n: format for n in "CPQ"}, dtype=dtype)


# ------------------------------------------------------------------ lifted sums

def _lifted(kernel, rhs, temps, arrays, options):
    """The statement with its non-linearly placed split sums computed first, each by
    a kernel of its own (``T = sum(...)``), then the rest once, reading the temps."""
    notation = kernel.notation
    tensors = notation.tensors
    lhs = notation.lhs
    wide = "float64" if any(str(t.dtype) == "float64" for t in tensors.values()) else "float32"
    values = dict(arrays)
    extra_formats, extra_dtypes = {}, {}
    for t in temps:
        same = tuple(i.name for i in t.indices) == tuple(i.name for i in lhs.indices)
        fmt = lhs.tensor.format if same and not lhs.tensor.format.is_dense else Format.dense(len(t.indices))
        extra_formats[t.name], extra_dtypes[t.name] = fmt, wide
        sub = _recompile(kernel, plan.statement(t.name, t.indices, t.node), t.node,
                         {t.name: (fmt, wide)}, index=t.node.index.name)
        values[t.name] = apply(sub, **{**options, "chunk_type": blocks.TENSOR},
                               **{n: values[n] for n in sub.inputs})
    outer = _recompile(kernel, plan.statement(lhs.tensor.name, lhs.indices, rhs), rhs,
                       {n: (extra_formats[n], extra_dtypes[n]) for n in extra_formats},
                       index=temps[0].node.index.name)
    return apply(outer, **options, **{n: values[n] for n in outer.inputs})


def _recompile(kernel, text: str, expect, extra: dict, index: str | None = None):
    """``text`` compiled with the formats and dtypes ``kernel`` gave its tensors (and
    ``extra``: name -> (format, dtype)); UnsupportedError unless the frontend put
    every sum where ``expect`` has it."""
    import spcomp
    tensors = kernel.notation.tensors
    formats = {n: t.format for n, t in tensors.items()}
    dtypes = {n: t.dtype for n, t in tensors.items()}
    for n, (f, d) in extra.items():
        formats[n], dtypes[n] = f, d
    lhs = text.split("=", 1)[0].strip()
    name = lhs.split("[", 1)[0]
    names = {name} | {a.tensor.name for a in accesses(expect)}
    out = spcomp.compile(text, formats={n: formats[n] for n in names if n in formats},
                         dtypes={n: dtypes[n] for n in names if n in dtypes}, backend=kernel.backend)
    if repr(out.notation.rhs) != repr(expect):
        raise UnsupportedError(f"{WHAT}: cannot split {kernel.expression!r} over the chunks of "
                               f"{index or 'its contracted index'}: the statement rewritten as {text!r} "
                               f"reads {out.notation.rhs!r}, not {expect!r}; keep {index} in one chunk")
    return out
