"""The runtime half of two-phase assembly (see :mod:`spcomp.lower.assembly`).

A call runs ``NAME_count`` over the rows (on threads / the GPU grid), turns the
per-row counts into row starts with an exclusive prefix sum here on the host,
allocates the output's coordinate and value arrays at their exact sizes, runs
``NAME_fill`` over the rows and wraps the arrays in a :class:`Tensor`. Both
phases go through :meth:`Kernel._run`, so they split rows exactly like any
parallel kernel (native driver, Python pool, or one call).
"""
from __future__ import annotations

import dataclasses

import numpy as np

from .errors import KernelRuntimeError, OperandError
from .ir.types import to_numpy
from .lower.assembly import ROW_POS
from .lower.context import level_array_type
from .lower.order import access_chain


class _Phase:
    """One phase's function, as :meth:`Kernel._run` wants it (a _Variant look-alike),
    with its argument plan worked out once."""

    def __init__(self, backend, compiled, lowered, name, bindings):
        from .kernel import _array_slot
        self.lowered = dataclasses.replace(lowered, entry=name, bindings=bindings)
        self.compiled = compiled
        self.function = backend.entry(compiled, self.lowered)
        self.driver = None
        self.driver_checked = False
        self.plan = []  # (role, key, slot) per parameter
        for b in bindings:
            if b.role == "input":
                self.plan.append(("in", b.storage, _array_slot(self.lowered, b)))
            elif b.role == "size":
                self.plan.append(("size", b.index, None))
            elif b.role in ("lo", "hi"):
                self.plan.append((b.role, None, None))
            else:  # an output array or a per-row array
                self.plan.append(("out", (b.level, ROW_POS if b.role == ROW_POS else b.array), None))


def _phases(kernel, variant):
    """(count, fill, layout) for a variant, built once."""
    phases = getattr(variant, "two_phase", None)
    if phases is None:
        low = variant.lowered
        plan = low.assembly
        backend = kernel._backend
        phases = (_Phase(backend, variant.compiled, low, plan.count, plan.count_bindings),
                  _Phase(backend, variant.compiled, low, plan.fill, low.bindings),
                  _Layout(low, _index_bits(low)))
        variant.two_phase = phases
    return phases


class _Layout:
    """What does not change between calls: the output's format, types and row levels."""

    def __init__(self, low, bits):
        from .kernel import _np_dtype
        t = low.notation.lhs.tensor
        self.fmt = t.format
        self.d = low.assembly.first
        self.out_indices = [i.name for i in low.notation.lhs.indices]
        self.row_indices = [i.name for i in access_chain(low.notation.lhs)[:self.d]]
        self.index = to_numpy(level_array_type(self.fmt.levels[self.d], "pos", bits))
        self.dtype = _np_dtype(t.dtype)


class _Rows:
    """The output's arrays, sized row by row as the phases learn the sizes."""

    def __init__(self, layout, sizes):
        self.fmt = layout.fmt
        self.d = layout.d
        self.index = layout.index
        self.dtype = layout.dtype
        self.shape = tuple(sizes[i] for i in layout.out_indices)
        rows = 1
        for i in layout.row_indices:
            rows *= sizes[i]
        # per-row counts, then row starts: level d's become the output pos
        self.per_row = {l: np.zeros(rows + 1, dtype=self.index) for l in range(self.d, len(self.fmt.levels))}
        self.arrays = {(self.d, "pos"): self.per_row[self.d]}

    def scan(self):
        """Counts at ``[q+1]`` -> row starts (exclusive prefix sum), then exact allocations."""
        limit = np.iinfo(self.index).max
        totals = {}
        for l, counts in self.per_row.items():
            starts = np.cumsum(counts, dtype=np.int64)
            total = int(starts[-1])
            if total > limit:
                raise KernelRuntimeError(
                    f"the output has {total} entries at level {l + 1}, more than {self.index.name} indices "
                    "address; pass operands with 64-bit indices")
            counts[:] = starts
            totals[l] = total
        for l in range(self.d, len(self.fmt.levels)):
            if l > self.d:
                self.arrays[(l, "pos")] = np.zeros(totals[l - 1] + 1, dtype=self.index)
            self.arrays[(l, "crd")] = np.empty(totals[l], dtype=self.index)
        self.arrays[(-1, "vals")] = np.empty(totals[len(self.fmt.levels) - 1], dtype=self.dtype)

    def array(self, key):
        if key[1] == ROW_POS:
            return self.per_row[key[0]]
        return self.arrays[key]

    def result(self):
        from .runtime import Tensor
        levels = [dict() for _ in self.fmt.levels]
        for (l, a), arr in self.arrays.items():
            if l >= 0:
                levels[l][a] = arr
        # built by the kernel, well formed by construction: no validation pass
        return Tensor(self.fmt, self.shape, levels, self.arrays[(-1, "vals")], validated=True)


def _args(kernel, phase, storages, sizes, bits, rows, pointers):
    """The phase's argument list and where ``lo`` sits in it."""
    from .kernel import _data_ptr

    def out_arg(key):
        arr = rows.array(key)
        return _data_ptr(arr) if pointers else arr
    return kernel._call_args(phase.plan, storages, sizes, bits, pointers, out_arg)


def _index_bits(low) -> int:
    """The variant's index width, read off the type of its output ``pos``."""
    for b in low.bindings:
        if b.role == "output" and b.array == "pos":
            return b.var.type.elem.bits
    return 32


def run_two_phase(kernel, variant, storages, sizes, bits, given=None):
    """Count, scan, fill: the call path of a kernel whose ``Lowered.assembly`` is set."""
    if given is not None and not kernel.notation.accumulate:
        raise OperandError(f"output {kernel.output_name} is sparse: the kernel assembles it, so do not "
                           "pass it (pass it only with +=)")
    count, fill, layout = _phases(kernel, variant)
    pointers = kernel._backend.name == "cpu"
    rows = _Rows(layout, sizes)
    for phase in (count, fill):
        if phase is fill:
            rows.scan()
        args, lohi = _args(kernel, phase, storages, sizes, bits, rows, pointers)
        for status in kernel._run(phase, args, lohi, phase.lowered, sizes, storages):
            if status != 0:
                kernel._raise_status(status, None)
    return rows.result()
