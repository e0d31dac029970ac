"""A fused GPU run's transposed and diagonal copies of its own temporaries, made on the device.

On the CUDA backends a statement that reads a temporary written earlier in the
same launch through a transposed copy (``Z[j,i] = T[i,j]``, ``T`` csr: it reads
``T_T``, stored ``dc:1,0``) or through its diagonal (``v[i] = T[i,i]``: ``T_diag``,
a dense vector) would need the host between two launches to make that copy. In
a fused program kernel (``spcomp/program_gpu.py``) the copy is one more block of
the function, run between the grid-wide barriers after the writer and before the
reader, into arrays the host allocated before the launch (the writer's capacity
of entries; the host knows no count): the reader's own arrays of the copy are
that block's outputs (:func:`spcomp.lower.fuse.fuse` links them).

* :func:`transpose_function`: the counting sort of ``lower/fused_transpose.py``
  (count each column's entries, prefix-sum them into ``pos``, walk the entries
  row by row and drop each into its column's next slot, so each column's rows
  come out ascending: the host's copy exactly), without its allocations -- run by
  **one thread** of the grid (a serial block: no grid-level loop).
* :func:`diagonal_function`: a 2-d temporary's diagonal as a dense vector, a
  thread per row (grid-stride): the row's entry whose column is the row, or 0.
"""
from __future__ import annotations

import dataclasses

from ..formats import Compressed, Dense, Singleton
from ..ir import nodes as n
from ..ir.types import I64, ptr
from .context import Binding
from .fused_transpose import TransposedCopy, transpose_block

SCRATCH_ROLE = "copy_scratch"  # a copy's per-column next free slot (int64, one per column)
ROWS, COLS = "copy_rows", "copy_cols"  # the size parameters of a copy block: the writer's rows and columns


def transposable(writer_fmt, copy_fmt) -> bool:
    """Whether a 2-d temporary stored ``writer_fmt`` (``dc``; ``cc`` or ``c q`` with an
    ordered top level) can be copied on the device into ``copy_fmt``: ``dc`` over the
    writer's columns (the writer's mode order reversed)."""
    if writer_fmt.blocks is not None or copy_fmt.blocks is not None or writer_fmt.ndim != 2:
        return False
    if not _is_dc(copy_fmt) or tuple(copy_fmt.order) != tuple(reversed(writer_fmt.order)):
        return False
    top, second = writer_fmt.levels
    if type(top) is Dense:
        return type(second) is Compressed
    return (type(top) is Compressed and top.ordered and type(second) in (Compressed, Singleton)
            and (type(second) is Singleton) == (not top.unique))


def gatherable(diag, writer_fmt) -> bool:
    """Whether the diagonal ``diag`` (``lower/diagonal.py``) of a temporary stored
    ``writer_fmt`` is gathered on the device: the dense vector of a 2-d temporary's
    ``T[i,i]``, the temporary dense row-major or ``dc``."""
    if writer_fmt.blocks is not None or writer_fmt.ndim != 2 or tuple(diag.dims) != (0, 0):
        return False
    if not (len(diag.format.levels) == 1 and type(diag.format.levels[0]) is Dense):
        return False
    return (writer_fmt.is_dense and tuple(writer_fmt.order) == (0, 1)) or _is_dc(writer_fmt)


def _is_dc(fmt) -> bool:
    return (len(fmt.levels) == 2 and type(fmt.levels[0]) is Dense and type(fmt.levels[1]) is Compressed
            and fmt.levels[1].unique)


@dataclasses.dataclass
class CopyFunction:
    """A copy block as a function of its own for ``fuse``: its parameters are the
    writer's and the copy's sizes (``ROWS``, ``COLS``), the writer's arrays it reads
    (``input`` of the writer's tensor), the copy's arrays (``output`` of the reader's
    storage), then the scratch column slots for a transposed copy."""
    function: n.Function
    bindings: list


def transpose_function(name: str, tensor: str, storage: str, source: dict, target: dict) -> CopyFunction:
    """The block that makes ``storage`` (a ``dc`` copy, its arrays' variables
    ``target``: (level, array) -> Var, the reader's) from ``tensor``'s arrays as the
    writer leaves them (``source``: (level, array) -> the writer's Var), on one thread."""
    rows, cols = n.Var(f"{storage}_{ROWS}", I64), n.Var(f"{storage}_{COLS}", I64)
    copy = TransposedCopy(target[(1, "pos")], target[(1, "crd")], target[(-1, "vals")], dict(source), rows, cols)
    taken = {v.name for v in list(source.values()) + list(target.values())} | {rows.name, cols.name}
    stmts = transpose_block(copy, _namer(taken))
    made = {copy.pos.name, copy.crd.name, copy.vals.name}
    scratch = [s.var for s in stmts if isinstance(s, n.Allocate) and s.var.name not in made]
    if len(scratch) != 1 or scratch[0].type != ptr(I64):
        raise ValueError("transpose_block allocates the copy's three arrays and one scratch array")
    q = n.Var(f"{storage}_zero", I64)
    zero = n.For(q, n.i64(0), n.Binary("+", cols, n.i64(1)), n.Block((
        n.Store(copy.pos, q, n.const(0, copy.pos.type.elem)),)))
    body = [zero] + [s for s in stmts if not isinstance(s, (n.Allocate, n.Free))]
    bindings = _sizes(tensor, rows, cols) + _inputs(tensor, source) + _outputs(storage, target)
    bindings.append(Binding(scratch[0], SCRATCH_ROLE, storage, storage=storage))
    return _function(name, bindings, body, f"{storage}: {tensor} transposed in the launch by one thread")


def diagonal_function(name: str, tensor: str, storage: str, source: dict, target: dict) -> CopyFunction:
    """The block that gathers ``storage`` (``T_diag``, its values ``target[(-1, "vals")]``)
    from ``tensor``'s arrays (``source``: dense values, or ``dc``'s ``pos``, ``crd`` and
    ``vals``), a thread per row: ``rows`` entries, the writer's rows ``cols`` long."""
    rows, cols = n.Var(f"{storage}_{ROWS}", I64), n.Var(f"{storage}_{COLS}", I64)
    out = target[(-1, "vals")]
    vals = source[(-1, "vals")]
    q = n.Var(f"{storage}_q", I64)
    if (1, "pos") not in source:  # dense row-major
        value = n.Load(vals, n.Binary("+", n.Binary("*", q, cols), q))
        row = [n.Store(out, q, value)]
    else:
        pos, crd = source[(1, "pos")], source[(1, "crd")]
        p, acc = n.Var(f"{storage}_p", I64), n.Var(f"{storage}_sum", out.type.elem)
        hit = n.Binary("==", n.Cast(n.Load(crd, p), I64), q)
        row = [n.Declare(acc, n.const(0, out.type.elem)),
               n.For(p, n.Cast(n.Load(pos, q), I64), n.Cast(n.Load(pos, n.Binary("+", q, n.i64(1))), I64),
                     n.Block((n.If(hit, n.Block((n.Assign(acc, n.Binary("+", acc, n.Load(vals, p))),))),))),
               n.Store(out, q, acc)]
    body = [n.For(q, n.i64(0), rows, n.Block(tuple(row)), parallel="gpu-thread")]
    bindings = _sizes(tensor, rows, cols) + _inputs(tensor, source) + _outputs(storage, target)
    return _function(name, bindings, body, f"{storage}: {tensor}'s diagonal gathered in the launch, a thread per row")


def _sizes(tensor, rows, cols) -> list:
    return [Binding(rows, "size", tensor, index=ROWS, storage=tensor),
            Binding(cols, "size", tensor, index=COLS, storage=tensor)]


def _inputs(tensor: str, source: dict) -> list:
    return [Binding(var, "input", tensor, level, array, storage=tensor) for (level, array), var in source.items()]


def _outputs(storage: str, target: dict) -> list:
    return [Binding(var, "output", storage, level, array, storage=storage) for (level, array), var in target.items()]


def _function(name: str, bindings: list, body: list, doc: str) -> CopyFunction:
    fn = n.Function(name, tuple(b.var for b in bindings), n.Block(tuple(body) + (n.Return(n.STATUS_OK),)), doc=doc)
    return CopyFunction(fn, bindings)


def _namer(taken: set):
    def fresh(base: str) -> str:
        k, text = 0, base
        while text in taken:
            k += 1
            text = f"{base}{k}"
        taken.add(text)
        return text
    return fresh


__all__ = ["SCRATCH_ROLE", "ROWS", "COLS", "transposable", "gatherable", "CopyFunction", "transpose_function",
           "diagonal_function"]
