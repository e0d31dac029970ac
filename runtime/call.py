"""One kernel call from storages to result: the output, the launch, the status.

:class:`CallContext` is what a Kernel's call machinery shares -- its target and
capabilities, call plan, operand converter and launcher -- so that the plain
call (here), the two-phase assembly (``assemble.py``) and the chunked append
(``chunks.py``) run through the same argument lists, launches and errors.
"""
from __future__ import annotations

from . import chunks, fastcall, interrupt, launch, sparsecall
from .launch import Launcher, call_work, raise_status
from .operands import Dense, Operands, is_device_array
from .outputs import DeviceOutput, Output, PlainOutput
from .plan import CallPlan, call_args


class CallContext:
    """A Kernel's call machinery, built once from its 32-bit lowering."""

    def __init__(self, expression, notation, low, target, output_name: str, inputs: list, relayout=None):
        self.expression = expression
        self.target = target
        self.caps = target.capabilities
        self.output_name = output_name
        self.accumulate = notation.accumulate
        self.plan = CallPlan(notation, low, output_name, inputs)
        self.operands = Operands(self.plan, self.caps, low.operands.diagonals,
                                 relayout if self.caps.relayout_on_threads else None)
        self.launcher = Launcher(target)

    def args(self, arg_plan, storages, sizes, bits, out_arg, capacity=None):
        """A call's argument list and where ``lo`` sits in it (see plan.call_args)."""
        return call_args(arg_plan, storages, sizes, bits, self.caps.pointers, self.operands.input_arg,
                         out_arg, capacity)

    def run(self, variant, args, lohi, low, sizes, storages, units=None) -> list:
        return self.launcher.run(variant, args, lohi, low, sizes, storages, units)

    def fail(self, status, out=None):
        """Raise the exception a nonzero status stands for."""
        raise_status(status, out, self.output_name, self.expression)

    def overwrites(self, low) -> bool:
        """Whether a fresh dense output of this lowering is left unzeroed (the kernel
        stores every element, lower/coverage.py), where the target allows it."""
        return self.caps.unzeroed_outputs and low.output.overwrites

    def output(self, low, sizes, given, bits, storages):
        """The output object of a call of ``low``."""
        plan = self.plan
        if self.caps.device_arrays and plan.plain_output and any(
                type(st) is Dense and is_device_array(st.array) for st in storages.values()):
            # device arrays in, a device array out: nothing leaves the device
            return DeviceOutput(tuple(sizes[i] for i in plan.out_indices), plan.out_dtype, given,
                                self.accumulate)
        if given is None and plan.plain_output:
            return PlainOutput(tuple(sizes[i] for i in plan.out_indices), plan.out_dtype, self.overwrites(low))
        return Output(low, sizes, given, bits, self.accumulate, self.overwrites(low))


def run(ctx: CallContext, variant, sizing, storages, sizes, bits, given, operands):
    """Run ``variant`` (its output one-pass or dense) and return ``(result, fast)``:
    ``fast`` the FastCall that repeats this call, when one can (else None): a
    dense output's by its argument list (fastcall.py), a sparse one's by what the
    call worked out from its operands (sparsecall.py).
    ``sizing`` is the lowering whose thread plan sizes a growable output."""
    low = variant.lowered
    out = ctx.output(low, sizes, given, bits, storages)
    capacity = None
    if any(role == "capacity" for role, _a, _b in variant.arg_plan):  # a growable output: an Output
        capacity = out.capacity = launch.first_capacity(sizing, sizes, storages, ctx.plan.out_indices)
    units = call_work(ctx.caps, low, sizing, sizes, storages)
    if capacity is not None and low.append_chunks:  # (only a growable output can be chunked)
        result = chunks.run_chunks(ctx, variant, storages, sizes, bits, out, capacity, units)
        return result, sparsecall.build(ctx, variant, out, storages, sizes, bits, capacity, units, given,
                                        operands, sizing)
    pointers, fast = ctx.caps.pointers, None
    while True:
        args, lohi = ctx.args(variant.arg_plan, storages, sizes, bits, lambda b: out.arg(b, pointers), capacity)
        if pointers and ctx.plan.plain_output:
            fast = fastcall.build(ctx.plan, ctx.operands, ctx.launcher, variant, operands, storages, args, lohi,
                                  sizes, given, output_name=ctx.output_name, accumulate=ctx.accumulate,
                                  overwrite=ctx.overwrites(low), fail=ctx.fail,
                                  wrap=lambda fn: interrupt.wrap(fn, units), units=units)
        try:
            statuses = ctx.run(variant, args, lohi, low, sizes, storages, units)
        except BaseException:  # Ctrl-C (interrupt.py): free what the kernel allocated
            out.discard()
            raise
        if capacity is None or not low.output.bounded or out.needed() <= capacity or any(statuses):
            break
        # the appends did not fit the arrays (device code cannot grow them): run
        # again with room for exactly what this run counted
        capacity = out.needed()
        out = Output(low, sizes, given, bits, ctx.accumulate, ctx.overwrites(low))
        out.capacity = capacity
    for s in statuses:
        if s != 0:
            out.discard()
            ctx.fail(s, out)
    if fast is None and type(out) is Output and out.capacity == capacity:  # a sparse output, not rerun
        fast = sparsecall.build(ctx, variant, out, storages, sizes, bits, capacity, units, given, operands, sizing)
    return out.result(), fast
