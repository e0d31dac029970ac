"""The runtime half of two-phase assembly (see :mod:`spcomp.lower.assembly`).

A call runs ``NAME_count`` over the rows (on threads / the GPU grid), turns the
per-row counts into row starts with an exclusive prefix sum here on the host,
allocates the output's coordinate and value arrays at their exact sizes, runs
``NAME_fill`` over the rows and wraps the arrays in a :class:`Tensor`. Both
phases go through the same launcher as any call, so they split rows exactly
like any parallel kernel (native driver, Python pool, or one call).
"""
from __future__ import annotations

import dataclasses

import numpy as np

from spcomp.errors import OperandError
from spcomp.lower.assembly import ROW_POS

from .launch import WiderIndices
from .memory import data_ptr
from .outputs import OutputLayout
from .plan import arg_plan, np_dtype, output_level_sizes


class Phase:
    """One phase's function, as the launcher wants it (a Variant look-alike), with
    its argument plan worked out once."""

    def __init__(self, target, compiled, lowered, name, bindings):
        self.lowered = dataclasses.replace(lowered, code=dataclasses.replace(lowered.code, entry=name,
                                                                             bindings=bindings))
        self.compiled = compiled
        self.function = target.entry(compiled, self.lowered)
        self.driver = None
        self.driver_checked = False
        self.arg_plan = arg_plan(lowered.inspection.notation, bindings)


def phases(target, variant):
    """(count, fill) for a variant, built once."""
    if variant.two_phase is None:
        low = variant.lowered
        plan = low.output.assembly
        variant.two_phase = (Phase(target, variant.compiled, low, plan.count, plan.count_bindings),
                             Phase(target, variant.compiled, low, plan.fill, low.code.bindings))
    return variant.two_phase


class Rows:
    """The output's arrays, sized row by row as the phases learn the sizes."""

    def __init__(self, low, sizes, bits):
        t = low.inspection.notation.lhs.tensor
        self.layout = OutputLayout(t.format, output_level_sizes(low.inspection.notation, sizes), bits,
                                   np_dtype(t.dtype))
        self.shape = tuple(sizes[i.name] for i in low.inspection.notation.lhs.indices)
        self.d = low.output.assembly.first
        self.index = self.layout.dtype_of(self.d, "pos")
        rows = self.layout.dense_positions
        # per-row counts, then row starts: level d's become the output pos
        self.per_row = {l: np.zeros(rows + 1, dtype=self.index) for l in range(self.d, len(t.format.levels))}
        self.arrays = {(self.d, "pos"): self.per_row[self.d]}

    def scan(self, limit: int):
        """Counts at ``[q+1]`` -> row starts (exclusive prefix sum), then exact
        allocations; WiderIndices when a level holds more than ``limit`` entries."""
        totals = {}
        for l, counts in self.per_row.items():
            starts = np.cumsum(counts, dtype=np.int64)
            total = int(starts[-1])
            if total > limit:
                raise WiderIndices(f"{total} entries at level {l + 1}")
            counts[:] = starts
            totals[l] = total
        levels = self.layout.fmt.levels
        for l in range(self.d, len(levels)):
            if l > self.d:
                self.arrays[(l, "pos")] = np.zeros(totals[l - 1] + 1, dtype=self.index)
            self.arrays[(l, "crd")] = np.empty(totals[l], dtype=self.index)
        self.arrays[(-1, "vals")] = np.empty(totals[len(levels) - 1], dtype=self.layout.dtype)

    def array(self, b):
        if b.role == ROW_POS:
            return self.per_row[b.level]
        return self.arrays[(b.level, b.array)]

    def result(self):
        return self.layout.tensor(self.shape, lambda key, n, dtype: self.arrays[key])


def run_two_phase(ctx, variant, storages, sizes, bits, given=None):
    """Count, scan, fill: the call path of a kernel whose ``OutputPlan.assembly`` is set."""
    if given is not None and not ctx.accumulate:
        raise OperandError(f"output {ctx.output_name} is sparse: the kernel assembles it, so do not "
                           "pass it (pass it only with +=)")
    count, fill = phases(ctx.target, variant)
    pointers = ctx.caps.pointers
    rows = Rows(variant.lowered, sizes, bits)

    def out_arg(b):
        arr = rows.array(b)
        return data_ptr(arr) if pointers else arr
    for phase in (count, fill):
        if phase is fill:
            limit = variant.lowered.output.index_limit
            rows.scan(np.iinfo(rows.index).max if limit is None else limit)
        args, lohi = ctx.args(phase.arg_plan, storages, sizes, bits, out_arg)
        for status in ctx.run(phase, args, lohi, phase.lowered, sizes, storages):
            if status != 0:
                ctx.fail(status)
    return rows.result()
