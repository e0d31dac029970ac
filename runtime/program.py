"""Calling a fused run of a program's statements: one native function, one launch.

Each statement keeps its own call plan (``CallContext``): its operands become
storages and its index sizes are bound exactly as for a one-statement kernel.
The dense arrays the statements write -- temporaries and outputs -- are
allocated here first, in program order, so that a later statement binds its
sizes against them; then the argument lists of all statements are laid out in
the fused function's parameter order (``spcomp.lower.fuse.FusedParam``) and the
function runs once. No Python runs between the statements.
"""
from __future__ import annotations

import numpy as np

from spcomp.errors import OperandError

from . import interrupt
from .launch import call_work, raise_status
from .memory import data_ptr
from .operands import index_bits
from .plan import call_args


class FusedStep:
    """One statement of a fused run: its output's name, call context and argument recipe."""

    def __init__(self, name: str, ctx, arg_plan, low, accumulate: bool, returned: bool):
        self.name = name
        self.ctx = ctx
        self.arg_plan = arg_plan
        self.low = low
        self.accumulate = accumulate
        self.returned = returned


class FusedRun:
    """Consecutive statements that write dense tensors, compiled into one function.
    ``build(bits)`` gives ``(function, [FusedParam], [arg plan per statement])`` for an
    index width, compiled on first use."""

    def __init__(self, steps: list, build, index32_limit: int, expression: str):
        self.steps = steps
        self.build = build
        self.limit = index32_limit
        self.expression = expression
        self.compiled = None  # what build(32) made, for inspection (set by spcomp.program)

    def run(self, env: dict) -> None:
        """Run the statements on the values in ``env`` (inputs and earlier results by
        name); each statement's result is put in ``env`` under its name."""
        per_step, bits, work = [], 32, 0
        for st in self.steps:
            ctx = st.ctx
            ops = {name: env[name] for name in ctx.plan.names if name != st.name}
            given = env.get(st.name) if st.accumulate else None
            if given is not None:
                ops[st.name] = given
            storages = ctx.operands.storages(ops)
            sizes = ctx.plan.bind_sizes(storages, ops)
            shape = tuple(sizes[i] for i in ctx.plan.out_indices)
            array = _accumulator(st.name, given, shape, ctx.plan.out_dtype) if st.accumulate else \
                np.zeros(shape, dtype=ctx.plan.out_dtype)
            env[st.name] = array
            per_step.append((storages, sizes, array))
            bits = max(bits, index_bits(storages, sizes, self.limit))
            work += call_work(ctx.caps, st.low, st.low, sizes, storages)
        function, sources, plans = self.build(bits)
        lists = []
        for st, plan, (storages, sizes, array) in zip(self.steps, plans, per_step):
            args, _ = call_args(plan, storages, sizes, bits, True, st.ctx.operands.input_arg,
                                lambda b, array=array: data_ptr(array))
            lists.append(args)
        args = [lists[s.statement][s.position] for s in sources]
        status = interrupt.run(work, function, *args)
        if status != 0:
            raise_status(status, None, self.steps[-1].name, self.expression)
        for st, (_s, _z, array) in zip(self.steps, per_step):
            env[st.name] = array.item() if array.ndim == 0 and st.returned and not st.accumulate else array


def _accumulator(name, given, shape, dtype) -> np.ndarray:
    """The array a ``+=`` statement adds into: the caller's own when it is a
    row-major array of the output's dtype and shape (updated in place)."""
    if not isinstance(given, np.ndarray):
        raise OperandError(f"output {name} (+=) must be a numpy.ndarray (or, for an order-0 output, "
                           f"a Python or NumPy scalar), not {type(given).__name__}")
    if given.shape != shape:
        raise OperandError(f"output {name} has shape {given.shape}, the program computes {shape}")
    if given.dtype != dtype or not given.flags.c_contiguous or not given.flags.writeable:
        raise OperandError(f"output {name} (+=) must be a writeable row-major {dtype} array to be "
                           f"updated in place; it is {given.dtype}")
    return given
