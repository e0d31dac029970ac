"""A fused run's call, repeated while the same operands come back.

A program's general call (:meth:`.program.FusedRun._run`) binds every statement's
sizes, converts and checks its operands, and lays out the fused function's
arguments: ~50 us of Python for a small run, against ~4 us for a one-statement
kernel on its fast path (:mod:`.fastcall`). When a run wrote only dense tensors on
this thread or through its row split (no sparse statement, no chunked function),
the next call with the very operands (or new ndarrays laid out alike: the next
batch) needs none of it again: the argument list is the last one with the
changed input pointers and fresh output arrays swapped in. :class:`RunRepeat`
keeps that list; its input checks are a :class:`~.fastcall.FastCall`'s (the very
Tensor, an unchanged SciPy matrix, an ndarray's shape, strides and dtype; the
thread count and the split threshold's generation the call was planned under).
A ``+=`` output must again be a writeable row-major array of its shape and dtype.
Every other array the run writes -- outputs and temporaries alike -- is new each
call, as on the general path, so concurrent calls never share one.
"""
from __future__ import annotations

import weakref

import numpy as np

from . import interrupt, threads as _threads
from .fastcall import ARRAY, FastCall, operand_check, plain_output_array, repeat_launch
from .memory import data_ptr
from .operands import Dense
from .plan import call_args


class Mark:
    """A named array's pointer in an argument list being recorded."""
    __slots__ = ("name",)

    def __init__(self, name):
        self.name = name


class RunRepeat:
    """What a repeated call of a fused run does: check, allocate, call."""
    __slots__ = ("inputs", "given", "fresh", "fail", "names")

    def __init__(self, inputs, given, fresh, fail):
        self.inputs = inputs  # a FastCall: the input checks and the argument template
        self.given = given    # ((name, (shape, dtype), slots), ...) of the += outputs
        self.fresh = fresh    # ((name, shape, dtype, slots, as_scalar), ...) of the arrays made each call
        self.fail = fail      # status -> raises
        # every operand name a call must pass: a caller whose names are exactly these
        # needs no check that it passed nothing else
        self.names = frozenset([e[0] for e in inputs.checks] + [g[0] for g in given])

    def call(self, env: dict) -> bool:
        """Run the call on ``env`` (inputs by name; the results are put there) when
        its operands are the recorded ones; False, having done nothing, when not."""
        args = self.inputs.bind(env)
        if args is None:
            return False
        for name, check, slots in self.given:
            v = env.get(name)
            if not plain_output_array(v, check):
                return False
            p = data_ptr(v)
            for k in slots:
                args[k] = p
        made = []
        for name, shape, dtype, slots, as_scalar in self.fresh:
            a = np.zeros(shape, dtype)
            p = data_ptr(a)
            for k in slots:
                args[k] = p
            made.append((name, a, as_scalar))
        status = self.inputs.fn(*args)
        if status:
            self.fail(status)
        for name, a, as_scalar in made:
            env[name] = a.item() if as_scalar else a
        return True


def record(run, built, per_step, bits: int, env: dict, work: int, fail, stand_in):
    """The :class:`RunRepeat` of the call just made of ``run`` with ``built`` (its
    steps' ``(storages, sizes, array, capacity)`` in ``per_step``; ``stand_in``: the
    type standing in for a tensor the function keeps itself), or None where
    a repeat could not be trusted: a sparse statement, an operand converted per
    call, an operand both read and written, or a launch the Python pool runs."""
    steps = run.steps
    if any(st.sparse for st in steps):
        return None
    written = {st.name for st in steps}
    accumulated = {st.name for st in steps if st.accumulate}
    checks, names_of = {}, {}
    for st, (storages, _sizes, _array, _cap) in zip(steps, per_step):
        for spec in st.ctx.plan.storages:
            storage = storages[spec.storage]
            names_of[id(storage)] = spec.operand
            if spec.operand in written:
                if type(storage) is not Dense and type(storage) is not stand_in:
                    return None  # a run-written tensor read through a conversion
                continue
            check = operand_check(env[spec.operand], storage, spec.format, st.ctx.operands)
            if check is None or checks.setdefault(spec.operand, check)[0] != check[0]:
                return None
    marked = _marked_args(run, built, per_step, bits, checks, names_of, written)
    variant = built.variant
    if variant is None:
        fn, call_list, generation, watched, split_units, keep = interrupt.wrap(built.function, work), marked, \
            None, None, None, None
    else:
        storages, sizes = per_step[0][0], per_step[0][1]
        launched = repeat_launch(steps[0].ctx.launcher, variant, [0, 0] + marked, 0, sizes, storages, work,
                                 lambda f: interrupt.wrap(f, work))
        if launched is None:
            return None
        fn, call_list, generation, watched, split_units, native = launched
        keep = steps[0].ctx.launcher.driver_bounds(variant, native, sizes, storages)
    # whether the run fused or split its statements, and how, was decided under this
    # thread count and threshold: a change misses
    if generation is None:
        generation = _threads.split_state[0]
    template = [0 if type(v) is Mark else v for v in call_list]
    slots_of: dict = {}
    for k, v in enumerate(call_list):
        if type(v) is Mark:
            slots_of.setdefault(v.name, []).append(k)
    for k, v in enumerate(call_list):  # an input array's recorded pointer, swapped when a new array comes
        if type(v) is Mark and v.name not in written:
            template[k] = data_ptr(env[v.name])
    entries = [(name, weakref.ref(env[name]), kind, fp, tuple(slots_of.get(name, ())))
               for name, (kind, fp) in checks.items()]
    inputs = FastCall(entries, fn, template, (), (), None, _threads.get_num_threads(), keep,
                      split_generation=generation, split_threshold=watched, split_units=split_units)
    given, fresh = [], []
    for st, (_s, sizes, array, _c) in zip(steps, per_step):
        if array is None:  # a row workspace the function keeps itself
            continue
        slots = tuple(slots_of.get(st.name, ()))
        if st.name in accumulated:
            given.append((st.name, (array.shape, array.dtype), slots))
        else:
            fresh.append((st.name, array.shape, array.dtype, slots,
                          array.ndim == 0 and st.returned))
    return RunRepeat(inputs, tuple(given), tuple(fresh), fail)


def _marked_args(run, built, per_step, bits, checks, names_of, written) -> list:
    """The fused function's argument list as the call just made laid it out, with a
    :class:`Mark` wherever a call may pass another pointer: a run-written array
    (new each call, or the caller's ``+=`` array) and an input ndarray."""
    lists = []
    for st, plan, (storages, sizes, array, capacity) in zip(run.steps, built.plans, per_step):
        ctx = st.ctx

        def in_arg(storage, b, k, pointers, ctx=ctx):
            name = names_of.get(id(storage))
            if type(storage) is Dense and (name in written or checks.get(name, (None,))[0] == ARRAY):
                return Mark(name)
            if name in written:  # a stand-in: the function reads its writer's parameters
                return 0
            return ctx.operands.input_arg(storage, b, k, pointers)

        def out_arg(binding, name=st.name, array=array):
            return 0 if array is None else Mark(name)
        args, _ = call_args(plan, storages, sizes, bits, True, in_arg, out_arg, capacity)
        lists.append(args)
    return [lists[s.statement][s.position] for s in built.sources]
