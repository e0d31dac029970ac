"""Calling a fused run of a program's statements: one native function, one launch.

Each statement keeps its own call plan (``CallContext``): its operands become
storages and its index sizes are bound exactly as for a one-statement kernel.
The dense arrays the statements write -- temporaries and outputs -- are
allocated here first, in program order, so that a later statement binds its
sizes against them; a sparse tensor the run writes stands in as a
:class:`Pending` (its shape and a guess of its entries) until the kernel has
assembled it. Then the argument lists of all statements are laid out in the
fused function's parameter order (``spcomp.lower.fuse.FusedParam``) and the
function runs once. No Python runs between the statements. A dense temporary the
function keeps as one row (``FusedBuild.rows``: see ``spcomp.lower.fuse.row_workspace``)
is not allocated here at all; it stands in as a Pending for binding sizes.

A sparse statement's output is an :class:`~.outputs.Output` as in a one-statement
call: its fixed arrays (a csr's ``pos``) are allocated here, its growing arrays
by the kernel into slots. A sparse temporary nothing outside the run reads is
freed by the kernel itself; on an error status :meth:`Output.discard` frees
what the slots still hold. A 32-bit overflow (status 5) runs the whole run
again with the 64-bit function; a run with a dense ``+=`` before a sparse statement
calls its 64-bit function at once instead (a rerun would add twice). A call
big enough for threads of a run that has a chunked function runs that instead
(:mod:`.program_chunks`): the same arguments, per-chunk capacities, slots and
copies of summed outputs; with a dense ``+=`` (chunks add into the caller's rows
in place) it runs 64-bit at once, since a rerun would add some rows twice.
A run with neither may run as phases on one thread team (:mod:`.program_team`),
which binds and lays out each phase as :meth:`FusedRun.bind`, :meth:`FusedRun.settle`
and :meth:`FusedRun.arg_list` do for ``_run``.

A run keeps its last call (:mod:`.program_repeat`; by chunks,
:mod:`.program_repeat_chunks`): called again with the same operands it replays
the argument list with fresh outputs (and, by chunks, the same chunks), a few us
of Python instead of all of the above.
"""
from __future__ import annotations

import dataclasses

import numpy as np

from spcomp.errors import KernelRuntimeError, OperandError, PackedOverflowError, ShapeError
from spcomp.ir.nodes import STATUS_INDEX_OVERFLOW, STATUS_PACKED_OVERFLOW

from . import interrupt, partials, threads as _threads
from .launch import WiderIndices, call_work, first_capacity, parallel_extent, raise_status
from .memory import data_ptr
from .operands import Dense, index_bits
from .outputs import Output, zeros_in_order
from .plan import call_args
from .program_chunks import ChunkPlan, run_chunked
from .program_repeat import own_pos_arg, record, sparse_result
from .program_repeat_chunks import record_chunks
from .threads import get_num_threads


class Pending:
    """A sparse tensor a fused run writes, standing in for it before the call: its
    shape and format for binding sizes, a guess of its entries for sizing the
    arrays of statements that read it. Its arrays are the kernel's own."""
    __slots__ = ("shape", "format", "nnz", "levels")

    def __init__(self, shape, fmt, nnz):
        self.shape, self.format, self.nnz = tuple(shape), fmt, int(nnz)
        self.levels = [{} for _ in fmt.levels]

    def index_bits_needed(self) -> int:
        return 32


class FusedBuild:
    """One index width of a fused run, compiled: the entry ``function``, where each of
    its parameters comes from (``sources``: ``FusedParam`` s), each statement's
    argument recipe (``plans``) and lowering (``lows``), the kernel IR ``module``,
    the target's ``compiled`` object, which statements share the previous one's
    outer loop (``merged``), and, when that one loop runs on threads, the
    ``variant`` the launcher splits (its ``lowered.threads`` the first statement's
    thread plan; the function then takes ``lo``, ``hi`` first)."""

    def __init__(self, function, sources, plans, module, compiled, merged, lows, variant=None, rows=(), own_pos=(),
                 tiles=None):
        self.function, self.sources, self.plans = function, sources, plans
        self.module, self.compiled, self.merged, self.lows = module, compiled, merged, lows
        self.variant = variant
        self.rows = list(rows)  # dense temporaries the function keeps as one row of its own
        self.own_pos = list(own_pos)  # csr temporaries whose row ends the function allocates (a slot)
        self.tiles = dict(tiles or {})  # those of ``rows`` kept as a tile of rows -> how many (lower/tiles.py)


class FusedStep:
    """One statement of a fused run: its output's name, call context and argument recipe."""

    def __init__(self, name: str, ctx, arg_plan, low, accumulate: bool, returned: bool,
                 sparse: bool = False, internal: bool = False):
        self.name = name
        self.ctx = ctx
        self.arg_plan = arg_plan
        self.low = low
        self.accumulate = accumulate
        self.returned = returned
        self.sparse = sparse      # writes a sparse tensor (an Output the kernel appends to)
        self.internal = internal  # ... that the fused function frees itself
        # the statement lowered as a kernel of its own (threads allowed), kept for the
        # first statement and sparse ones: its thread plan guesses a sparse output's
        # entries and says whether a call is big enough for threads
        self.parallel = None


class FusedRun:
    """Consecutive statements compiled into one function. ``build(bits)`` gives the
    :class:`FusedBuild` of an index width, compiled on first use."""

    def __init__(self, steps: list, build, index32_limit: int, expression: str, chunks=None):
        self.steps = steps
        self.build = build
        # chunks(bits): the FusedBuild run over each thread's [lo, hi) rows, or None
        # where the run has none (program_chunks.py)
        self.chunks = chunks or (lambda bits: None)
        self.limit = index32_limit
        self.expression = expression
        self.compiled = None  # what build(32) made, for inspection (set by spcomp.program)
        self.why = None  # why the run has no chunked function, where the planner said
        self.phases = None  # statements in phases a call on threads runs, cut at in-function copies
        self.repeat = None  # the last call, repeatable while its operands come back (program_repeat.py)

    def repeated(self, env: dict) -> bool:
        """Whether the last call, repeated on ``env``, ran (its results are in ``env``)."""
        repeat = self.repeat
        return repeat is not None and repeat.call(env)

    def wants_threads(self, env: dict) -> bool:
        """Whether this call is better run as the statements' own kernels: the run is
        on one thread, and its first statement, as a kernel of its own, would split
        this call over several threads (the launcher's measured threshold)."""
        st = self.steps[0]
        low = st.parallel
        if (self.build(32).variant is not None or self.chunks(32) is not None or low is None
                or low.threads.parallel is None or get_num_threads() <= 1):
            return False
        ops = {name: env[name] for name in st.ctx.plan.names if name != st.name}
        if st.accumulate:
            ops[st.name] = env[st.name]
        storages = _storages(st.ctx, ops, {})
        return st.ctx.launcher.splits(low, st.ctx.plan.bind_sizes(storages, ops), storages)

    def run(self, env: dict) -> None:
        """Run the statements on the values in ``env`` (inputs and earlier results by
        name); each statement's result is put in ``env`` under its name (a sparse
        temporary the kernel freed is not)."""
        try:
            self._run(env, 32)
        except WiderIndices:  # a sparse tensor outgrew 32-bit positions
            self._run(env, 64)

    def _chunked(self, bits: int, per_step: list):
        """The chunked build when this call runs on threads: the run has one, several
        threads are set, every statement spans the same rows, and the first statement's
        work is worth splitting (the launcher's threshold); else None."""
        if get_num_threads() <= 1:
            return None
        built = self.chunks(bits)
        if built is None:
            return None
        extent = self.extent(built, per_step)
        if extent is None:
            return None
        storages, sizes = per_step[0][0], per_step[0][1]
        launcher = self.steps[0].ctx.launcher
        if not launcher.splits(built.lows[0], sizes, storages):
            return None
        # a sum into per-chunk copies splits only where the copies cost little (partials.py)
        return built if all(launcher.splits(low, z, s) for low, (s, z, _a, _c) in zip(built.lows, per_step)
                            if low.threads.partials) else None

    def fail(self, status: int, outs: list, bits: int):
        """Raise the error of a failed call of the ``bits``-bit function, its sparse
        outputs ``outs`` discarded (a 32-bit overflow raises WiderIndices)."""
        if status == STATUS_INDEX_OVERFLOW and bits == 64:
            raise KernelRuntimeError(f"program {self.expression!r}: a 64-bit sparse tensor overflowed")
        # a packed-block overflow names the output whose block outgrew its slots
        packed = [out for out in outs if any(l.fixed_slots for l in out.fmt.levels)
                  and out.largest_count() > out.packed_k()]
        laid = [st for st in self.steps if st.low.output.expand is not None
                and any(l.fixed_slots for l in st.low.output.expand.levels)]
        if status == STATUS_PACKED_OVERFLOW and not packed and laid:  # laid out in the function (blocked ELL)
            raise PackedOverflowError(
                f"{' or '.join(st.name for st in laid)} ({', '.join(str(st.low.output.expand) for st in laid)}): "
                "a block got more nonzeros than its packed-block level's K slots as the fused function laid it "
                "out; compile with a larger K")
        raise_status(status, packed[0] if packed else None, packed[0].name if packed else self.steps[-1].name,
                     self.expression)

    def _adds_before_assembling(self) -> bool:
        """Whether a dense ``+=`` runs before a sparse statement: that one's 32-bit
        overflow (status 5) would rerun the run 64-bit after the ``+=`` added into the
        caller's array, adding twice, so such a run calls its 64-bit function at once.
        (A sparse statement before the ``+=`` has finished, checks included, when it starts.)"""
        adds = [j for j, st in enumerate(self.steps) if st.accumulate and not st.sparse]
        return bool(adds) and any(st.sparse for st in self.steps[adds[0] + 1:])

    @staticmethod
    def extent(built, per_step):
        """The rows every statement of a chunked build loops over, or None when they differ."""
        extents = {parallel_extent(low, sizes, storages) for low, (storages, sizes, _a, _c) in zip(built.lows, per_step)}
        return extents.pop() if len(extents) == 1 else None

    def bind(self, env: dict, bits: int, pending: dict | None = None) -> tuple:
        """``(per_step, work, bits, given_of)``: each statement's storages, sizes, dense array
        (put in ``env``; None for a sparse or row-workspace one) and first capacity; the
        call's work; the index width it needs (at least ``bits``); each ``+=`` output's
        array as the caller gave it (see ``put_results``). ``pending``: name -> Pending of
        sparse tensors not assembled yet (an earlier phase's: program_team.py), to which
        this run's are added."""
        per_step, work, given_of = [], 0, {}
        pending = {} if pending is None else pending
        # row workspaces of either function (the same temporaries at every index width):
        # an array is allocated below for those the function run does not keep
        chunks = self.chunks(32)
        rows = set(self.build(32).rows) | set(chunks.rows if chunks is not None else ())
        for st in self.steps:
            ctx = st.ctx
            ops = {name: env[name] for name in ctx.plan.names if name != st.name and name not in pending}
            given = env.get(st.name) if st.accumulate else None
            if given is not None:
                ops[st.name] = given
            storages = _storages(ctx, ops, pending)
            sizes = ctx.plan.bind_sizes(storages, ops)
            shape = tuple(sizes[i] for i in ctx.plan.out_indices)
            capacity = None
            if st.sparse:
                capacity = first_capacity(st.parallel or st.low, sizes, storages, ctx.plan.out_indices)
                pending[st.name] = Pending(shape, ctx.plan.out_format, capacity)
                array = None
            elif st.name in rows:  # the function may allocate one row of it itself
                pending[st.name] = Pending(shape, ctx.plan.out_format, 0)
                array = None
            else:
                array = _accumulator(st.name, given, shape, ctx.plan.out_dtype, ctx.plan.out_format.order) \
                    if st.accumulate else zeros_in_order(shape, ctx.plan.out_format.order, ctx.plan.out_dtype)
                if st.accumulate:
                    given_of[st.name] = given
                env[st.name] = array
            per_step.append((storages, sizes, array, capacity))
            bits = max(bits, index_bits(storages, sizes, self.limit))
            work += call_work(ctx.caps, st.low, st.low, sizes, storages)
        return per_step, work, bits, given_of

    def settle(self, built, per_step: list, chunked: bool) -> None:
        """``per_step`` made fit for ``built`` (chunked: the function over chunks): an array
        for a row workspace the other function keeps but ``built`` does not, and a
        rows-first stand-in's first capacity guessed by its chunk lowering."""
        chunks = self.chunks(32)
        rows = set(self.build(32).rows) | set(chunks.rows if chunks is not None else ())
        for j, st in enumerate(self.steps):
            if st.name in rows and st.name not in built.rows:  # a whole array in this function
                storages, sizes, _a, capacity = per_step[j]
                shape = tuple(sizes[i] for i in st.ctx.plan.out_indices)
                per_step[j] = (storages, sizes, np.zeros(shape, dtype=st.ctx.plan.out_dtype), capacity)
            elif chunked and st.sparse and _stand_in(built.lows[j], st):
                # a stand-in's size is guessed by its chunk lowering (rows parallel, unlike a dcsr kernel's)
                storages, sizes, array, _c = per_step[j]
                per_step[j] = (storages, sizes, array,
                               first_capacity(built.lows[j], sizes, storages, st.ctx.plan.out_indices))

    def arg_list(self, built, per_step: list, chunked: bool, bits: int) -> tuple:
        """``(args, outs)``: ``built``'s argument list (``lo``, ``hi`` first where it takes them) for
        the bound ``per_step`` at ``bits``, and the Outputs of its sparse statements."""
        lists, outs = [], []
        for st, low, plan, (storages, sizes, array, capacity) in zip(self.steps, built.lows, built.plans, per_step):
            if st.sparse:
                low = low if chunked else st.low
                if st.name in built.own_pos:  # its row ends come back through a slot, as grown arrays do
                    low = dataclasses.replace(low, output=dataclasses.replace(
                        low.output, growable=list(low.output.growable) + [(1, "pos")]))
                out = Output(low, sizes, None, bits, False, False)
                out.capacity = capacity
                outs.append(out)
                out_arg = own_pos_arg(out) if st.name in built.own_pos else out.arg
            elif array is None:  # a row workspace: its parameter is gone from the function
                out_arg = (lambda b: 0)
            else:
                out_arg = (lambda b, array=array: data_ptr(array))
            args, _ = call_args(plan, storages, sizes, bits, True, _input_arg(st.ctx), out_arg, capacity)
            lists.append(args)
        args = [lists[s.statement][s.position] for s in built.sources]
        return args, outs

    def _run(self, env: dict, bits: int) -> None:
        per_step, work, bits, given_of = self.bind(env, bits)
        if bits == 32 and self._adds_before_assembling():
            bits = 64
        generation = _threads.split_state[0]  # (read before the split is decided: a later change misses)
        chunked = self._chunked(bits, per_step)
        if chunked is not None and bits == 32 and any(
                st.accumulate and not st.sparse and not low.threads.partials for st, low in zip(self.steps, chunked.lows)):
            # a dense += adds into the caller's rows chunk by chunk: a stitch past 32 bits
            # after some chunks added would rerun them, so such a call runs 64-bit at once
            bits = 64
            chunked = self._chunked(bits, per_step)
        built = chunked or self.build(bits)
        self.settle(built, per_step, chunked is not None)
        args, outs = self.arg_list(built, per_step, chunked is not None, bits)
        try:
            if chunked is not None:  # every statement over each thread's rows, one launch
                sparse = [j for j, st in enumerate(self.steps) if st.sparse]
                copies = {j: (partials.out_size(low, per_step[j][1]), partials.out_dtype(low), low.output.overwrites)
                          for j, low in enumerate(built.lows) if low.threads.partials}
                plan = ChunkPlan(self.steps[0].ctx.launcher, built, self.extent(built, per_step),
                                 per_step[0][1], per_step[0][0], {j: per_step[j][3] for j in sparse},
                                 {j for j in sparse if not self.steps[j].internal  # (packed: rows in place)
                                  and built.lows[j].output.growable}, work, copies)
                status = max(run_chunked(plan, args, dict(zip(sparse, outs))))
            elif built.variant is None:
                status = interrupt.run(work, built.function, *args)
            else:  # one loop nest over the rows: split over threads like a kernel's parallel loop
                storages, sizes = per_step[0][0], per_step[0][1]
                status = max(self.steps[0].ctx.launcher.run(built.variant, [0, 0] + args, 0,
                                                            built.variant.lowered, sizes, storages, work))
        except BaseException:  # Ctrl-C (or a stitch past 32 bits): free what the kernel allocated
            for out in outs:
                out.discard()
            raise
        if status != 0:
            for out in outs:
                out.discard()
            self.fail(status, outs, bits)
        self.repeat = record(self, built, per_step, outs, bits, env, work, self.fail, Pending) if chunked is None \
            else record_chunks(self, built, per_step, outs, bits, env, self.fail, Pending, plan, generation)
        self.put_results(per_step, outs, bits, env, given_of)

    def put_results(self, per_step: list, outs: list, bits: int, env: dict, given_of: dict) -> None:
        """Each statement's result in ``env`` after a successful call: a sparse one from its
        Output, a dense one's array (a ``+=`` into a copy laid out in its declared mode
        order added back into the caller's array, ``given_of``)."""
        it = iter(outs)
        for st, (_s, _z, array, _c) in zip(self.steps, per_step):
            if st.sparse:
                sparse_result(next(it), st, bits, env)
            elif array is not None and array is not given_of.get(st.name, array):
                given_of[st.name][...] = array  # added into a copy laid out in its mode order: back
                env[st.name] = given_of[st.name]
            elif array is not None:
                env[st.name] = array.item() if array.ndim == 0 and st.returned and not st.accumulate else array


def _stand_in(low, st) -> bool:
    """Whether a chunk lowering computes step ``st``'s tensor in a rows-first stand-in."""
    return low.inspection.notation.lhs.tensor.format != st.ctx.plan.out_format


def _storages(ctx, ops: dict, pending: dict) -> dict:
    """Storage name -> Dense, Tensor or Pending for each input storage of a step."""
    out = {}
    for spec in ctx.plan.storages:
        p = pending.get(spec.operand)
        if p is not None:
            out[spec.storage] = _diagonal_of(ctx, spec, p) if spec.storage in ctx.plan.derived else p
            continue
        value = ops[spec.operand]
        if spec.plain and type(value) is np.ndarray and value.dtype == spec.dtype and value.flags.c_contiguous:
            out[spec.storage] = Dense(value)
        else:
            out[spec.storage] = ctx.operands.operand(spec, value)
    return out


def _diagonal_of(ctx, spec, p: Pending) -> Pending:
    """The Pending diagonal storage (``lower/diagonal.py``) of a tensor ``p`` the run
    writes, which the fused function gathers itself (``lower/fused_diagonal.py``): a
    ShapeError where the dimensions a repeated index covers differ in size, as for
    an operand (``Operands.diagonal``)."""
    diag = ctx.operands.diagonals[ctx.plan.derived[spec.storage]]
    kept = diag.kept
    for d, k in enumerate(diag.dims):
        if p.shape[kept[k]] != p.shape[d]:
            raise ShapeError(f"tensor {spec.operand}: dimensions {kept[k]} and {d} are both indexed by "
                             f"{diag.indices[d]} but have sizes {p.shape[kept[k]]} and {p.shape[d]}")
    return Pending(tuple(p.shape[d] for d in kept), spec.format, p.nnz)


def _input_arg(ctx):
    """An input array's argument; none for a Pending tensor (the fused function
    reads it from its writer's parameters, so its argument is never passed)."""
    def arg(st, bits, k, pointers):
        return 0 if type(st) is Pending else ctx.operands.input_arg(st, bits, k, pointers)
    return arg


def _accumulator(name, given, shape, dtype, order=()) -> np.ndarray:
    """The array a ``+=`` statement adds into: the caller's own when it is laid out
    as the output's mode ``order`` stores it (row-major; column-major for ``dd:1,0``)
    in the output's dtype and shape (updated in place); for one declared in another
    mode order and passed otherwise, a copy in that order (added back by the caller)."""
    if not isinstance(given, np.ndarray):
        raise OperandError(f"output {name} (+=) must be a numpy.ndarray (or, for an order-0 output, "
                           f"a Python or NumPy scalar), not {type(given).__name__}")
    if given.shape != shape:
        raise OperandError(f"output {name} has shape {given.shape}, the program computes {shape}")
    if order and tuple(order) != tuple(range(len(order))) and given.dtype == dtype and given.flags.writeable:
        if np.transpose(given, order).flags.c_contiguous:
            return given
        copy = zeros_in_order(shape, order, dtype)
        copy[...] = given
        return copy
    if given.dtype != dtype or not given.flags.c_contiguous or not given.flags.writeable:
        raise OperandError(f"output {name} (+=) must be a writeable row-major {dtype} array to be "
                           f"updated in place; it is {given.dtype}")
    return given
