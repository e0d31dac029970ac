"""A fused run's call, repeated while the same operands come back.

A program's general call (:meth:`.program.FusedRun._run`) binds every statement's
sizes, converts and checks its operands, guesses each sparse statement's entries
and lays out the fused function's arguments: ~50 us of Python for a small run,
against ~1 us for a one-statement kernel on its fast path (:mod:`.fastcall`).
The next call with the very operands (or new ndarrays laid out alike: the next
batch) needs none of it again: the argument list is the last one with the
changed input pointers and fresh outputs swapped in. :class:`RunRepeat` keeps
that list; its input checks are a :class:`~.fastcall.FastCall`'s (the very
Tensor, an unchanged SciPy matrix, an ndarray's shape, strides and dtype; the
thread count and the split threshold's generation the call was planned under).
Its launch is the function (or the row split's driver) on this thread; a call
that ran by chunks of rows repeats through :mod:`.program_repeat_chunks`, whose
launch runs the chunks again (:func:`replay_parts` builds both).
A ``+=`` output must again be a writeable row-major array of its shape and dtype.
Every array the run writes -- outputs and temporaries alike -- is new each call,
as on the general path, so concurrent calls never share one: a dense one zeroed
in its mode order (``outputs.zeros_in_order``), a sparse one as an
:class:`~.outputs.Output` made again from the last call's (``Output.again``: its
fixed arrays and the slots the kernel grows the others into), with the last
call's first capacity. A sparse tensor
that outgrew 32-bit positions makes the repeat step aside (the general path
runs it again at 64 bits, and records that call); a run with a dense ``+=``
before a sparse statement runs at 64 bits from the start, where nothing steps aside.
"""
from __future__ import annotations

import ctypes
import weakref

from spcomp.ir.nodes import STATUS_INDEX_OVERFLOW

from . import interrupt, threads as _threads
from .fastcall import ARRAY, FastCall, operand_check, plain_output_array, repeat_launch
from .launch import WiderIndices
from .memory import data_ptr
from .operands import Dense, refuse_overlap
from .outputs import zeros_in_order
from .plan import call_args
from .program_chunks import as_declared
from .sparsecall import call_settings
from .tensor import expand_output


class Mark:
    """A named array's pointer in an argument list being recorded."""
    __slots__ = ("name",)

    def __init__(self, name):
        self.name = name


class OutMark:
    """Argument ``binding`` of sparse step ``step``'s output, in a list being recorded."""
    __slots__ = ("step", "binding")

    def __init__(self, step, binding):
        self.step, self.binding = step, binding


class SparseStep:
    """How a repeat makes one sparse statement's output: ``step`` (a FusedStep) as
    the last call's Output ``out`` laid it out."""
    __slots__ = ("step", "proto", "capacity", "own_pos", "slots")

    def __init__(self, step, out, own_pos):
        self.step = step
        self.proto = out.again(allocate=False)  # (holds no arrays between calls)
        self.capacity = out.capacity
        self.own_pos = own_pos    # its row ends come back through a slot (own_pos_arg)
        self.slots = ()           # (argument position, binding) of its arguments


def sparse_result(out, step, bits: int, env: dict) -> None:
    """Put a sparse statement's finished Output ``out`` in ``env`` under its name:
    as it is, converted to its declared format where it was computed in a rows-first
    stand-in (dcsr as csr), laid out in its declared levels where its writer assembled
    it in one (``lower.outputs.assembled_format``: a bitmap or dense level below a
    sparse one, blocks), or nowhere where the function freed it itself."""
    if step.internal:
        out.discard()  # the kernel freed its arrays and emptied the slots: a no-op
    elif step.low.output.expand is not None and out.fmt == step.low.inspection.notation.lhs.tensor.format:
        env[step.name] = expand_output(out.result(), step.low.output.expand)
    elif out.fmt != step.ctx.plan.out_format:
        env[step.name] = as_declared(out.result(), step.ctx.plan.out_format, bits)
    else:
        env[step.name] = out.result()


def own_pos_arg(out):
    """An output's arguments where the function allocates its row ends: their slot."""
    def arg(b):
        if b.role == "output" and (b.level, b.array) == (1, "pos"):
            return ctypes.byref(out.grow[(1, "pos")])
        return out.arg(b)
    return arg


class RunRepeat:
    """What a repeated call of a fused run does: check, allocate, call."""
    __slots__ = ("inputs", "given", "fresh", "sparse", "bits", "fail", "names", "settings", "aside")

    def __init__(self, inputs, given, fresh, sparse, bits, fail, settings=None):
        self.inputs = inputs  # a FastCall: the input checks and the argument template
        self.given = given    # ((name, (shape, dtype), slots), ...) of the += outputs
        self.fresh = fresh    # ((name, shape, mode order, dtype, slots, as_scalar), ...) of the arrays made each call
        self.sparse = sparse  # SparseSteps, in program order
        self.bits = bits      # the index width of the function it calls
        self.fail = fail      # (status, the call's sparse Outputs, bits) -> raises
        # every operand name a call must pass: a caller whose names are exactly these
        # needs no check that it passed nothing else
        self.names = frozenset([e[0] for e in inputs.checks] + [g[0] for g in given])
        # the threshold settings the call was planned under where they chose between the
        # run's functions (a fixed threshold set or cleared since may choose another: ~1 us
        # a check, so only there); None elsewhere
        self.settings = settings
        # set once a call outgrew 32-bit positions: the general path records the 64-bit
        # call, and until then no caller runs this one again (ProgramKernel tries a
        # repeat twice when the first try misses)
        self.aside = False

    def call(self, env: dict) -> bool:
        """Run the call on ``env`` (inputs by name; the results are put there) when
        its operands are the recorded ones; False, having done nothing, when not."""
        if self.aside or (self.settings is not None and call_settings() != self.settings):
            return False
        args = self.inputs.bind(env)
        if args is None:
            return False
        for name, check, slots in self.given:
            v = env.get(name)
            if not plain_output_array(v, check):
                return False
            refuse_overlap(v, env, name)  # (added to in place: no input may share its memory)
            p = data_ptr(v)
            for k in slots:
                args[k] = p
        made = []
        for name, shape, order, dtype, slots, as_scalar in self.fresh:
            a = zeros_in_order(shape, order, dtype)
            p = data_ptr(a)
            for k in slots:
                args[k] = p
            made.append((name, a, as_scalar))
        outs = []
        for step in self.sparse:
            out = step.proto.again()
            out.capacity = step.capacity
            arg = own_pos_arg(out) if step.own_pos else out.arg
            for k, b in step.slots:
                args[k] = arg(b)
            outs.append(out)
        try:
            status = self.launch(args, outs)
        except BaseException as e:  # Ctrl-C (or a stitch past 32 bits): free what the kernel allocated
            for out in outs:
                out.discard()
            if type(e) is WiderIndices and self.bits == 32:
                self.aside = True
                return False  # the general path runs it at 64 bits
            raise
        if status:
            for out in outs:
                out.discard()
            if status == STATUS_INDEX_OVERFLOW and self.bits == 32:
                self.aside = True
                return False  # outgrew 32-bit positions: the general path runs it at 64 bits
            self.fail(status, outs, self.bits)
        for name, a, as_scalar in made:
            env[name] = a.item() if as_scalar else a
        for sparse, out in zip(self.sparse, outs):
            sparse_result(out, sparse.step, self.bits, env)
        return True

    def launch(self, args: list, outs: list) -> int:
        """The native call on ``args`` (``outs``: the sparse steps' Outputs); its status."""
        return self.inputs.fn(*args)


def record(run, built, per_step, outs: list, bits: int, env: dict, work: int, fail, stand_in):
    """The :class:`RunRepeat` of the call just made of ``run`` with ``built`` (its
    steps' ``(storages, sizes, array, capacity)`` in ``per_step``, its sparse steps'
    Outputs in ``outs``; ``stand_in``: the
    type standing in for a tensor the function keeps itself), or None where
    a repeat could not be trusted (see :func:`replay_parts`) or the Python pool
    runs the launch."""
    def launch(marked):
        variant = built.variant
        if variant is None:
            return interrupt.wrap(built.function, work), marked, None, None, None, None
        storages, sizes = per_step[0][0], per_step[0][1]
        launched = repeat_launch(run.steps[0].ctx.launcher, variant, [0, 0] + marked, 0, sizes, storages, work,
                                 lambda f: interrupt.wrap(f, work))
        if launched is None:
            return None
        fn, call_list, generation, watched, split_units, native = launched
        return fn, call_list, generation, watched, split_units, \
            run.steps[0].ctx.launcher.driver_bounds(variant, native, sizes, storages)
    parts = replay_parts(run, built, per_step, outs, bits, env, stand_in, launch)
    if parts is None:
        return None
    # (a run with a function over chunks of rows, or phases: the threshold chose the one-thread one)
    return RunRepeat(*parts, bits, fail, call_settings() if run.chunks(32) is not None or run.phases else None)


def replay_parts(run, built, per_step, outs: list, bits: int, env: dict, stand_in, launch):
    """``(inputs, given, fresh, sparse)`` of a :class:`RunRepeat` of the call just made
    (see :func:`record`); ``launch(marked)`` lays out the argument list ``marked``
    as the repeat calls it: ``(function, argument list, split generation, watched
    threshold, split units, the array whose pointer it holds)``, or None. None where
    a repeat could not be trusted: an operand converted per call, a dense ``+=``
    with a sparse statement at 32 bits (a repeat stepping aside would add twice) or
    into a tensor declared in another mode order (the general path lays it out),
    or no launch."""
    steps = run.steps
    if bits == 32 and any(st.sparse for st in steps) and any(st.accumulate and not st.sparse for st in steps):
        return None  # (the general path runs such a run at 64 bits from the start: program.py)
    if any(st.accumulate and not st.sparse and list(st.ctx.plan.out_format.order) != sorted(st.ctx.plan.out_format.order)
           for st in steps):
        return None  # a += into one declared in another mode order: its layout is checked per call
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
    sparse_of = {j: out for j, out in zip([j for j, st in enumerate(steps) if st.sparse], outs)}
    launched = launch(_marked_args(run, built, per_step, bits, checks, names_of, written, sparse_of))
    if launched is None:
        return None
    fn, call_list, generation, watched, split_units, keep = launched
    # whether the run fused or split its statements, and how, was decided under this
    # thread count and threshold: a change misses
    if generation is None:
        generation = _threads.split_state[0]
    # the argument list with every marker replaced: an input array's recorded pointer
    # (swapped when a new array comes), 0 where each call puts a fresh output's
    template, slots_of, out_slots = list(call_list), {}, {}
    for k, v in enumerate(call_list):
        if type(v) is Mark:
            slots_of.setdefault(v.name, []).append(k)
            template[k] = 0 if v.name in written else data_ptr(env[v.name])
        elif type(v) is OutMark:
            out_slots.setdefault(v.step, []).append((k, v.binding))
            template[k] = 0
    sparse = {j: SparseStep(steps[j], out, steps[j].name in built.own_pos) for j, out in sparse_of.items()}
    for j, step in sparse.items():
        step.slots = tuple(out_slots.get(j, ()))
    entries = [(name, weakref.ref(env[name]), kind, fp, tuple(slots_of.get(name, ())))
               for name, (kind, fp) in checks.items()]
    inputs = FastCall(entries, fn, template, (), (), None, _threads.get_num_threads(), keep,
                      split_generation=generation, split_threshold=watched, split_units=split_units)
    given, fresh = [], []
    for st, (_s, sizes, array, _c) in zip(steps, per_step):
        if array is None:  # a sparse tensor, or a row workspace the function keeps itself
            continue
        slots = tuple(slots_of.get(st.name, ()))
        if st.name in accumulated:
            given.append((st.name, (array.shape, array.dtype), slots))
        else:
            fresh.append((st.name, array.shape, st.ctx.plan.out_format.order, array.dtype, slots,
                          array.ndim == 0 and st.returned))
    return inputs, tuple(given), tuple(fresh), tuple(sparse[j] for j in sorted(sparse))


def _marked_args(run, built, per_step, bits, checks, names_of, written, sparse_of) -> list:
    """The fused function's argument list as the call just made laid it out, with a
    :class:`Mark` wherever a call may pass another pointer: a run-written array
    (new each call, or the caller's ``+=`` array) and an input ndarray; an
    :class:`OutMark` for each argument of a sparse output."""
    lists = []
    for j, (st, plan, (storages, sizes, array, capacity)) in enumerate(zip(run.steps, built.plans, per_step)):
        ctx = st.ctx

        def in_arg(storage, b, k, pointers, ctx=ctx):
            name = names_of.get(id(storage))
            if type(storage) is Dense and (name in written or checks.get(name, (None,))[0] == ARRAY):
                return Mark(name)
            if name in written:  # a stand-in: the function reads its writer's parameters
                return 0
            return ctx.operands.input_arg(storage, b, k, pointers)

        def out_arg(binding, name=st.name, array=array, j=j):
            if j in sparse_of:
                return OutMark(j, binding)
            return 0 if array is None else Mark(name)
        args, _ = call_args(plan, storages, sizes, bits, True, in_arg, out_arg, capacity)
        lists.append(args)
    return [lists[s.statement][s.position] for s in built.sources]
