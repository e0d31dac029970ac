"""The contraction order a kernel's call runs: the statement as written, or a program.

A :class:`Kernel` whose statement multiplies three or more tensors, at least one
sparse, into a dense output gets a :class:`Contraction` (``spcomp.compile``
attaches it). At a call it measures the operands -- shapes, stored entries -- and
asks the cost model (``lower/contract.py``) for the cheapest plan; plans are
cached per shape and density bucket (a power of two), so a repeated call costs a
dictionary look-up, and a call with the very objects of the last call reuses its
plan without measuring (a plan only chooses the speed, never the answer). A factorised plan runs as a
:class:`~spcomp.program.ProgramKernel` (its dense temporaries in one native
function with the statements that read them); the plain plan falls through to
the kernel itself. ``Schedule().factorize(...)`` fixes the plan or turns this off.
"""
from __future__ import annotations

import math


from .errors import SpcompError
from .lower import contract
from .operand_stats import measure_operands


class Contraction:
    """Chooses, per call, between a kernel's statement and its factorised programs."""

    def __init__(self, kernel, groups=None, plan=None):
        self.kernel = kernel
        self.notation = kernel.notation
        self.dtype = "float64" if any(t.dtype == "float64" for t in self.notation.tensors.values()) \
            else "float32"
        # a plan fixed for every call: Schedule().factorize's groups, or an epilogue
        # split off its reduction (lower/epilogue.py), whose program is built once
        self.fixed = plan if plan is not None else (contract.fixed(self.notation, groups, self.dtype)
                                                    if groups else None)
        self._fixed_program = None
        self.epilogue = plan is not None
        self.cache: dict = {}   # (shapes, density buckets) -> (Plan, one-statement cost, ProgramKernel | None)
        self.last = None
        self._last_ids = None
        self.inputs = list(dict.fromkeys(a.tensor.name for a in _accesses(self.notation)))
        # per input: its name, whether its format is dense, and the index of each dimension
        dims: dict = {}
        for acc in _accesses(self.notation):
            dims.setdefault(acc.tensor.name, [i.name for i in acc.indices])
        self._shape_of = [(name, self.notation.tensors[name].format.is_dense, dims[name]) for name in self.inputs]

    @staticmethod
    def applies(notation) -> bool:
        """Whether a statement is a product this planner may factorise: three or more
        factors, one of them sparse (into a dense output or a sparse one)."""
        if contract.product_factors(notation) is None:
            return False
        return any(not a.tensor.format.is_dense for a in _accesses(notation))

    # ------------------------------------------------------------------ call
    def kernel_for(self, operands):
        """The ProgramKernel a call with these operands runs, or None for the kernel itself."""
        if self.kernel.output_name in operands and not self.notation.accumulate:
            return None  # an output given to write into: the kernel's own path
        if self.epilogue:  # the same program whatever the operands: nothing to measure
            self.last = (self.fixed, math.nan, self._fixed_kernel())
            return self.last[2]
        ids = tuple(id(operands.get(name)) for name, _d, _i in self._shape_of)
        if ids == self._last_ids and self.last is not None:
            return self.last[2]  # the same objects again (a plan is a speed choice: never a wrong answer)
        measured = self.measure(operands)
        if measured is None:
            return None
        key, sizes, density = measured
        hit = self.cache.get(key)
        if hit is None:
            hit = self.cache[key] = self._plan(sizes, density)
        self.last = hit
        self._last_ids = ids
        return hit[2]

    def plan(self, operands):
        """``(Plan, cost of the statement as written)`` for these operands (tests, k.loops)."""
        measured = self.measure(operands)
        if measured is None:
            return None
        _key, sizes, density = measured
        plan, single, _ = self._plan(sizes, density, build=False)
        return plan, single

    def _plan(self, sizes, density, build=True):
        """``(plan, cost as written, its ProgramKernel or None)``: the cheapest plan
        that compiles (a temporary's storage the lowerer refuses moves on to the next)."""
        lowered, dens = self._as_built(density)
        single = contract.statement_cost(self.notation, sizes, dens, lowered=lowered)
        if self.fixed is not None:
            plan = contract.Plan(self.fixed.statements, contract.program_cost(self.fixed.statements, sizes, density),
                                 self.fixed.temporaries)
            return plan, single, self._fixed_kernel() if build else None
        for plan in contract.ranked(self.notation, sizes, density, self.dtype, single):
            if not plan.factorised or not build:
                return plan, single, None
            try:
                return plan, single, self.program(plan)
            except SpcompError:
                continue  # (ranked ends with the statement as written)
        raise AssertionError("ranked plans end with the statement itself")

    def _fixed_kernel(self):
        """The fixed plan's ProgramKernel, compiled at its first use."""
        if self._fixed_program is None:
            self._fixed_program = self.program(self.fixed)
        return self._fixed_program

    def _as_built(self, density):
        """The kernel's own nest for the cost model: ``((right side, loop order, the
        storages it reads transposed), densities with those storages' added)``."""
        low = self.kernel.lowered
        dens = dict(density)
        for storage, (operand, _fmt) in low.operands.transposes.items():
            dens[storage] = density.get(operand, 1.0)
        return (low.inspection.notation.rhs, list(low.inspection.order), set(low.operands.transposes)), dens

    def program(self, plan):
        """The ProgramKernel that runs a factorised ``plan`` (compiled here, not cached)."""
        from .frontend.program import Program
        from .program import ProgramKernel
        a = self.notation
        out = a.lhs.tensor.name
        inputs = tuple(self.inputs) + ((out,) if a.accumulate else ())
        program = Program(plan.statements, tuple(repr(s) for s in plan.statements), inputs, (out,),
                          plan.temporaries)
        k = self.kernel
        return ProgramKernel(k.expression, program, k.options, k.target)

    def measure(self, operands):
        """``(cache key, index sizes, densities)`` of a call's operands, or None when
        one cannot be measured (an unknown kind of operand)."""
        measured = measure_operands(self._shape_of, operands)
        if measured is None:
            return None
        key, shapes, density = measured
        sizes = {}
        for (name, _dense, indices) in self._shape_of:
            for i, n in zip(indices, shapes[name]):
                sizes.setdefault(i, int(n))
        return key, sizes, density

    def describe(self) -> str:
        """What ``k.loops`` adds: the last call's plan when it was factorised ("" while
        the statement as written runs)."""
        if self.last is None or self.last[2] is None:
            return ""
        plan, single, program = self.last
        if self.epilogue:
            return (f"(its reduction runs as a statement of its own, in the loop order it would have alone, "
                    f"the epilogue after it: {plan.describe()})\n" + program.loops)
        return (f"(contraction order for the last call's operands: {plan.describe()} -- about "
                f"{plan.cost:.3g} iterations against {single:.3g} as written)\n" + program.loops)


def _accesses(a) -> list:
    from .notation import accesses
    return accesses(a.rhs)
