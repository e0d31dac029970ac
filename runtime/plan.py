"""What a call does, worked out once per kernel: operands, shapes, argument lists.

A lowered kernel lists its parameters as bindings (``lower/context.py``). From
them :class:`CallPlan` derives, once, how each operand becomes a storage (its
format and dtype, a transposed or diagonal copy), which shapes to check and which
output to make; :func:`arg_plan` turns a function's bindings into the recipe that
:func:`call_args` fills at every call. One recipe serves the plain call, the
two-phase count and fill and the chunked append.
"""
from __future__ import annotations

import numpy as np

from spcomp.errors import OperandError, ShapeError
from spcomp.lower.blocked import BlockPiece
from spcomp.lower.order import access_chain
from spcomp.notation import accesses

from .bounds import check_sizes
from .convert import BFLOAT16, FLOAT32, FLOAT64

# Binding roles that are arrays of the output (allocated by the runtime or the kernel)
OUTPUT_ROLES = ("output", "output_grow", "output_bounded", "output_meet", "needed", "row_pos")


def np_dtype(name: str) -> np.dtype:
    """The NumPy dtype of a value dtype name ("float32", "float64", "bfloat16")."""
    return _VALUE_DTYPES[name]


_VALUE_DTYPES = {"float32": FLOAT32, "float64": FLOAT64, "bfloat16": BFLOAT16}


class Storage(tuple):
    """One input storage: ``(storage, operand, format, dtype, plain)`` -- the storage
    name in the kernel, the operand the user passes, the storage's format and value
    dtype, and whether a row-major dense array is the storage itself."""
    __slots__ = ()

    storage = property(lambda self: self[0])
    operand = property(lambda self: self[1])
    format = property(lambda self: self[2])
    dtype = property(lambda self: self[3])
    plain = property(lambda self: self[4])


class CallPlan:
    """What a call does, worked out once from the lowered kernel."""

    def __init__(self, notation, low, output_name: str, inputs: list):
        out_t = notation.lhs.tensor
        self.storages = []
        self.derived = {}  # storage -> the diagonal storage it is read through (diagonal.py)
        diagonals = low.operands.diagonals
        transposes = low.operands.transposes
        seen = set()
        for b in low.code.bindings:
            if b.role != "input" or b.storage in seen:
                continue
            seen.add(b.storage)
            if b.storage in transposes:
                operand, fmt = transposes[b.storage]
                if operand in diagonals:  # a transposed copy of a diagonal storage
                    self.derived[b.storage] = operand
                    operand = diagonals[operand].operand
                dtype = np_dtype(notation.tensors[operand].dtype)
            elif b.storage in diagonals:
                operand, fmt = diagonals[b.storage].operand, diagonals[b.storage].format
                self.derived[b.storage] = b.storage
                dtype = np_dtype(notation.tensors[operand].dtype)
            elif b.tensor == output_name:
                operand, fmt, dtype = b.tensor, out_t.format, np_dtype(out_t.dtype)
            else:
                t = notation.tensors[b.storage]
                operand, fmt, dtype = b.storage, t.format, np_dtype(t.dtype)
            plain = fmt.is_dense and fmt.order == tuple(range(fmt.ndim)) and b.storage not in self.derived
            self.storages.append(Storage((b.storage, operand, fmt, dtype, plain)))
        self.operand_of = {st[0]: st[1] for st in self.storages}
        self.output_name = output_name
        self.accumulate = notation.accumulate
        self.names = frozenset(inputs) | ({output_name} if notation.accumulate else set())
        self.allowed = self.names | {output_name}
        self.shape_checks = []
        checked = set()
        for acc in accesses(low.inspection.notation.rhs):
            name = acc.tensor.name
            if name not in seen or acc in checked:
                continue
            checked.add(acc)
            shown = transposes.get(name, (name,))[0]
            diagonal = diagonals.get(shown)
            if diagonal is not None:
                shown = diagonal.operand
            if name.endswith("_old") and name[:-4] == output_name:
                shown = output_name
            self.shape_checks.append((name, len(acc.indices), [i.name for i in acc.indices], shown))
        self.index_names = [i.name for i in low.inspection.order]
        # indices a blocked operand cuts: (piece, base, block size, outer), and who cuts it
        self.pieces = [(i.name, i.base.name, i.factor, i.outer) for i in low.inspection.order
                       if isinstance(i, BlockPiece)]
        self.cut_by = {i.base.name: (acc.tensor.name, acc.tensor.format) for acc in
                       [notation.lhs] + accesses(low.inspection.notation.rhs)
                       if acc.tensor.format.blocks is not None for i in access_chain(acc)
                       if isinstance(i, BlockPiece)}
        ofmt = out_t.format
        self.plain_output = low.output.shape == "dense" and ofmt.order == tuple(range(ofmt.ndim))
        self.out_indices = [i.name for i in notation.lhs.indices]
        self.out_dtype = np_dtype(out_t.dtype)
        self.out_format = ofmt
        self.lhs_indices = [i.name for i in notation.lhs.indices]

    # ------------------------------------------------------------ names
    def check_names(self, operands, expression: str) -> None:
        """OperandError for a missing or unexpected operand name."""
        unexpected = sorted(set(operands) - self.allowed)
        if unexpected:
            raise OperandError(f"unexpected operand(s) {', '.join(unexpected)}; this kernel takes "
                               f"{', '.join(sorted(self.names))}"
                               + (f" (and optionally the output {self.output_name})"
                                  if not self.accumulate else ""))
        missing = sorted(self.names - set(operands))
        if missing:
            raise OperandError(f"missing operand(s) {', '.join(missing)} for {expression!r}")

    # ----------------------------------------------------------- shapes
    def bind_sizes(self, storages, operands) -> dict:
        """Each index's size, from the operands' shapes (and a given output's):
        ShapeError naming both sides where two disagree."""
        sizes = {}
        for storage, ndim, indices, shown in self.shape_checks:
            shape = storages[storage].shape
            if len(shape) != ndim:
                raise ShapeError(f"operand {shown} has {len(shape)} dimension(s) but the expression "
                                 f"indexes it with {ndim}")
            for i, size in zip(indices, shape):
                have = sizes.setdefault(i, size)
                if have != size:
                    self._size_mismatch(storages, i)
        out_val = operands.get(self.output_name)
        if out_val is not None:
            origin = self._size_origins()
            shape = tuple(np.shape(out_val)) if not hasattr(out_val, "shape") else tuple(out_val.shape)
            if len(shape) != len(self.lhs_indices):
                raise ShapeError(f"output {self.output_name} has {len(shape)} dimension(s) but the "
                                 f"expression indexes it with {len(self.lhs_indices)}")
            for d, i in enumerate(self.lhs_indices):
                if i in sizes and sizes[i] != shape[d]:
                    o_name, o_dim = origin[i]
                    raise ShapeError(f"output {self.output_name} dimension {d} (index {i}) has size "
                                     f"{shape[d]} but dimension {o_dim} of {o_name} has size {sizes[i]}")
                sizes.setdefault(i, int(shape[d]))
        for piece, base, factor, outer in self.pieces:
            if base not in sizes:
                continue
            if sizes[base] % factor:
                who, fmt = self.cut_by.get(base, ("an operand", "blocked"))
                raise ShapeError(f"index {base} has size {sizes[base]}, but {who} is stored as {fmt}, which "
                                 f"cuts it into blocks of {factor}: the size must be a multiple of {factor}")
            sizes[piece] = sizes[base] // factor if outer else factor
        for i in self.index_names:
            if i not in sizes:
                raise ShapeError(f"the size of index {i} cannot be inferred from the operands; pass "
                                 f"the output {self.output_name} to give it")
        check_sizes(sizes, self.output_name, self.out_format, self.out_indices)
        return sizes

    def _size_origins(self) -> dict:
        origin = {}
        for _storage, _ndim, indices, shown in self.shape_checks:
            for d, i in enumerate(indices):
                origin.setdefault(i, (shown, d))
        return origin

    def _size_mismatch(self, storages, index):
        """Raise the ShapeError that names both operands bound to ``index``."""
        first = None
        for storage, _ndim, indices, shown in self.shape_checks:
            shape = storages[storage].shape
            for d, i in enumerate(indices):
                if i != index:
                    continue
                if first is None:
                    first = (shown, d, shape[d])
                elif shape[d] != first[2]:
                    raise ShapeError(
                        f"index {index} is bound to dimension {d} of {shown} (size {shape[d]}) and to "
                        f"dimension {first[1]} of {first[0]} (size {first[2]})")


# ------------------------------------------------------------ argument lists

def array_slot(notation, storage: str, level: int, array: str) -> int:
    """Position of a storage's array in ``Tensor.kernel_arrays`` order."""
    t = notation.tensors.get(storage)
    if t is None:  # a storage not in the notation's tensor map (transposed copy)
        t = next(acc.tensor for acc in accesses(notation.rhs) if acc.tensor.name == storage)
    k = 0
    for l, kind in enumerate(t.format.levels):
        for a in kind.arrays:
            if l == level and a == array:
                return k
            k += 1
    return k  # vals


def arg_plan(notation, bindings) -> list:
    """``(role, a, b)`` per kernel parameter, in order: ``("in", storage, slot)``,
    ``("size", index, None)``, ``("out", binding, None)`` for an output array,
    ``("capacity" | "lo" | "hi", None, None)``."""
    plan = []
    for b in bindings:
        if b.role == "input":
            plan.append(("in", b.storage, array_slot(notation, b.storage, b.level, b.array)))
        elif b.role == "size":
            plan.append(("size", b.index, None))
        elif b.role in OUTPUT_ROLES:
            plan.append(("out", b, None))
        else:
            plan.append((b.role, None, None))
    return plan


def call_args(plan, storages, sizes, bits, pointers, input_arg, out_arg, capacity=None):
    """A call's argument list from an :func:`arg_plan` and where ``lo`` sits in it
    (``lo``/``hi`` are placeholders the launcher fills); ``input_arg(storage, bits,
    slot)`` gives an input array's argument, ``out_arg(binding)`` an output array's,
    ``capacity`` a growable output's first size."""
    args, lohi = [], None
    for role, a, b in plan:
        if role == "in":
            args.append(input_arg(storages[a], bits, b, pointers))
        elif role == "size":
            args.append(sizes[a])
        elif role == "out":
            args.append(out_arg(a))
        elif role == "capacity":
            args.append(capacity)
        else:  # lo, hi
            if role == "lo":
                lohi = len(args)
            args.append(0)
    return args, lohi


def output_level_sizes(notation, sizes) -> list:
    """The sizes of the output's stored dimensions, in level order."""
    return [sizes[i.name] for i in access_chain(notation.lhs)]
