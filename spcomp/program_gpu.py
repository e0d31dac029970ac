"""A program's statements in one kernel launch on the CUDA backends (issue 24).

On ``cuda`` and ``cuda-sim`` a run of consecutive statements that each write a
dense row-major array, or a sparse one of dense rows counted and filled in two
phases, or one stored compressed first (dcsr, csf, a 2-d coo) whose dense-first
stand-in is (``lower/device_compact.py``: one more phase writes its first
level), in one launch -- no host work between them: no appends into arrays that
grow; a transposed copy (``dc`` over its columns, made by one thread) or a dense
diagonal (a thread per row) of a tensor the run writes is one more block of the
kernel before its reader (``program_gpu_copies.py``, ``lower/device_copies.py``),
any other copy keeps the reader a kernel of its own; a sparse ``+=`` is lowered as
``S = S_old + ...``: it reads the caller's tensor and assembles new arrays --
becomes one ``__global__`` kernel:
the statements' functions joined by :func:`spcomp.lower.fuse.fuse` (a temporary
is one parameter, its writer's output), printed with a grid-wide barrier between
them (:mod:`spcomp.backends.cuda.grid_sync`). The temporaries are device memory
the launch allocates like any output. A dense ``+=`` output is the caller's own
array (uploaded with the operands, the sums copied back into it; a row-major
copy written back for any other layout), so the statement adds into the old
values and a later statement of the run reads the sums after the barrier. A
two-phase sparse output is counted, prefix-summed on the device and filled
between barriers, into arrays the host allocated at an estimate before the
launch; when they were too small the host runs the launch again with room for
what it counted (``lower/device_scan.py``, ``program_gpu_sparse.py``). A
statement whose threads split the top positions of an output stored compressed
first earlier in the launch reads their count on the device (:func:`_hi_from_pos`).
A serial statement appending a sparse output into arrays of a fixed capacity
(bounded appends) joins too: it reports status 8 when its entries did not fit
(:func:`_refuse_overflow`) and the host runs the launch again with room. A
bitmap output (every level inserting: ``program_gpu_join.joinable_inserted``)
joins as a dense one does, its arrays allocated at their whole size; a serial
one with dense levels under compressed ones (``cd``) appends its stand-in and
the host expands it after the launch (no later statement of it reads it). A
serial statement (no grid-level loop) runs on one thread of the grid between
two barriers. Each statement keeps its own mapping: where
the default schedule leaves a thread or a warp per row to the call
(``RowChoice``), the call's rows pick it as for a kernel of its own, and the
kernel of that combination is built on first use. The grid is the largest any
statement asks for, at most the blocks the device (or the harness) keeps
resident at once -- the barrier needs every block running.

A call whose operands are GPU arrays or torch tensors runs the statements as
kernels of their own (their results stay where the operands are), as does any
statement the run cannot take (``k.loops`` says which).
"""
from __future__ import annotations

import dataclasses

import numpy as np

from .backends.cuda.grid_sync import (BARRIER_WORDS, GRID_SYNC_STATUS, emit_program, program_signature,
                                      sim_co_resident_blocks,
                                      with_barrier)
from .backends.cuda.launch import launch_config
from .backends.cuda.target import DEFAULT_BLOCK
from .errors import DTypeError, KernelRuntimeError, OperandError, ShapeError, UnsupportedError
from .ir import nodes as irn
from .lower.device_compact import stand_in
from .lower.device_scan import CAPACITY_STATUS, phased_function, split_phases
from .lower.fuse import fuse, made_arrays, reads_plainly
from .program_gpu_copies import TRANSPOSE, copy_args, copy_function, device_copies
from .program_gpu_join import apart_reason, inserted, joinable
from .program_gpu_sparse import BoundedAppends, SparseRows
from .runtime.launch import parallel_extent, raise_status
from .runtime.operands import index_bits, is_device_array, is_torch, refuse_overlap

SYNC_TIMEOUT_S = 60.0  # longest wait at the grid-wide barrier before the launch reports an error
# launches with more room for a sparse output before the run gives up (one suffices; one more
# for each further sparse output of the run, whose statement runs only once those before it fit)
RERUNS = 3
# what a joinable statement hands the next one: its dense values array itself (no
# transposed or diagonal copy of it, which the runtime would make between launches)
DENSE_ARRAYS = frozenset({(-1, "vals")})
EXPANDED = frozenset()  # what an output the host expands after the launch hands the later statements


def plan_gpu(program, kernels: list, index32_limit: int, expression: str, recompiled=None,
             apart: dict | None = None) -> list:
    """The segments (``spcomp.program.ProgramKernel._plan``'s form) of a program on
    a CUDA backend: runs of two or more joinable statements as one
    :class:`GpuProgramRun`, every other statement as its own kernel.
    ``recompiled(k, {name: format}, drop_zeros)``: statement ``k`` compiled with
    tensors stored so -- an output stored compressed first is joined through its dense-first
    stand-in (``lower/device_compact.py``). ``apart`` (statement -> why), filled for each
    statement that does not join the run before it (``ProgramKernel.apart``'s form)."""
    stmts = program.statements
    originals = kernels
    kernels, stored = _with_stand_ins(stmts, kernels, recompiled)
    reasons = apart if apart is not None else {}
    segments, k = [], 0
    while k < len(stmts):
        run, written = [k], {stmts[k].lhs.tensor.name: _made(kernels[k], stored[k])}
        formats = {a.lhs.tensor.name: a.lhs.tensor.format for a in stmts}
        if joinable(stmts[k], kernels[k]):
            block = kernels[k].lowered.threads.gpu_block
            j = k + 1
            while j < len(stmts):
                why = apart_reason(stmts[j], kernels[j]) or (
                    f"a block of {kernels[j].lowered.threads.gpu_block} threads, not {block}"
                    if kernels[j].lowered.threads.gpu_block != block else
                    _reads_in_run(kernels[j].lowered, written, formats))
                if why is not None:
                    reasons[j] = why
                    break
                run.append(j)
                written[stmts[j].lhs.tensor.name] = _made(kernels[j], stored[j])
                j += 1
        fused = None
        if len(run) >= 2:
            try:
                fused = GpuProgramRun(program, run, [kernels[j] for j in run], index32_limit, expression,
                                      [stored[j] for j in run])
            except UnsupportedError:
                fused = None  # the emitter refused the joined kernel: the statements run one by one
        if fused is not None:
            segments.append(("fused", fused, run))
        else:
            if len(run) >= 2:
                reasons[run[1]] = "the emitter refused the joined kernel"
            elif k not in reasons and k + 1 < len(stmts):
                reasons[k] = apart_reason(stmts[k], kernels[k]) or "the statement after it does not join it"
            run = [k]
            segments.append(("kernel", originals[k], run))
        k = run[-1] + 1
    return segments


def _with_stand_ins(stmts, kernels: list, recompiled) -> tuple:
    """``(kernels, stored)``: each statement's kernel for a run -- for an output stored
    compressed first that its own kernel cannot assemble in the launch, or only on one
    thread (bounded appends), its dense-first stand-in's kernel where that one can,
    ``stored[k]`` then the output's format (else None)."""
    out, stored = list(kernels), [None] * len(stmts)
    if recompiled is None or len(stmts) < 2:
        return out, stored
    for k, a in enumerate(stmts):
        fmt = a.lhs.tensor.format
        serial = not joinable(a, kernels[k]) or kernels[k].lowered.output.bounded  # (one thread appends)
        alt = stand_in(fmt) if not fmt.is_dense and serial and not a.accumulate else None
        if alt is None:
            continue
        try:
            # computed zeros skipped where the statement's own kernel skips them: the same entries
            kernel = recompiled(k, {a.lhs.tensor.name: alt}, kernels[k].lowered.output.drops_zeros)
        except UnsupportedError:
            continue
        if kernel.lowered.output.assembly is not None and joinable(a, kernel):
            out[k], stored[k] = kernel, fmt
    return out, stored


def _made(kernel, stored=None) -> frozenset:
    """The arrays a statement of a run hands the later ones: a dense output's values,
    a two-phase sparse output's arrays (its ``pos``, ``crd``, ``vals``; those of the
    format it is ``stored`` in, for a stand-in)."""
    low = kernel.lowered
    if low.output.expand is not None:  # expanded by the host after the launch: nothing a later statement reads
        return EXPANDED
    if low.output.bounded or inserted(low):
        return frozenset((b.level, b.array) for b in low.code.bindings if b.role in ("output", "output_bounded"))
    if stored is not None:
        return frozenset({(l, a) for l, kind in enumerate(stored.levels) for a in kind.arrays} | {(-1, "vals")})
    return frozenset(made_arrays(low)) if low.output.assembly is not None else DENSE_ARRAYS


def _reads_in_run(low, written: dict, formats: dict) -> str | None:
    """None when a statement reads the run's tensors as they are written (``reads_plainly``),
    or through a transposed copy or a diagonal the launch makes (``program_gpu_copies.py``),
    and does not split its rows by the positions of a sparse one or of such a copy (whose
    entries the host does not know before the launch) -- except the top positions of one
    stored compressed first, whole: the launch reads their count from its ``pos`` (:func:`_hi_from_pos`);
    else why not (``k.loops``' reason)."""
    expanded = {name for name, arrays in written.items() if arrays == EXPANDED}
    for b in low.code.bindings:
        if b.role == "input" and (b.tensor in expanded or b.storage in expanded):
            return f"it reads {b.tensor}, which the host expands only after the launch"
    copies = device_copies(low, set(written), formats)
    if copies is None:
        return "it reads a tensor of the run through a copy the launch does not make"
    positions = low.threads.positions
    sparse = {name for name, arrays in written.items() if arrays != DENSE_ARRAYS}
    transposed = {c.tensor for c in copies if c.kind == TRANSPOSE}
    if not reads_plainly(low, written, copies=transposed, diagonals=True):
        names = sorted(set(written) & {b.tensor for b in low.code.bindings if b.role == "input"})
        return f"it reads {', '.join(names) or 'a tensor of the run'} in a layout the launch does not make"
    if positions is not None and positions[0] in {c.storage for c in copies}:
        return f"its threads split the positions of a copy of {positions[0]} made in the launch"
    if positions is None or positions[0] not in sparse or _device_extent(low, written):
        return None
    return f"its threads split the positions of {positions[0]}, which the launch assembles"


def _device_extent(low, written: dict) -> bool:
    """Whether ``low``'s threads split the top positions of a run's output stored
    compressed first (it hands over level 0's ``pos``: a stand-in's or one thread's
    appends) whole, and a ``hi`` parameter bounds them."""
    th = low.threads
    return (th.positions[1] == 0 and not th.split and (0, "pos") in written[th.positions[0]]
            and any(b.role == "hi" for b in low.code.bindings)
            and any(b.role == "input" and b.storage == th.positions[0] and (b.level, b.array) == (0, "pos")
                    for b in low.code.bindings))


@dataclasses.dataclass
class GpuStep:
    """One statement of a GPU run: its output, its own kernel, its 32-bit lowering
    (``spcomp.program`` reads the warnings there)."""
    name: str
    kernel: object
    low: object
    returned: bool
    accumulate: bool  # ``+=``: it adds into the caller's array (a sparse one: reads it, assembles a new one)
    stored: object = None  # the output's format when ``kernel`` writes its dense-first stand-in

    @property
    def sparse(self) -> bool:
        """Whether its output is counted, scanned and filled in the launch (device_scan.py)."""
        return self.low.output.assembly is not None

    @property
    def bounded(self) -> bool:
        """Whether its output is appended into arrays of a fixed capacity (one thread), or
        inserted into arrays of a size known before the launch (a bitmap: ``inserted``)."""
        return bool(self.low.output.bounded) or inserted(self.low)


@dataclasses.dataclass
class GpuBuild:
    """One fused kernel: an index width and a mapping per statement."""
    function: irn.Function
    sources: list  # FusedParam per parameter before the barrier's two
    lows: list
    block: int
    compiled: tuple  # (CUDA C, cuda-sim module or None): ``k.source`` prints the first
    module: irn.Module  # ``k.ir`` prints it
    order: list = dataclasses.field(default_factory=list)  # per joined function: its step, or (step, copy, CopyFunction)


class GpuProgramRun:
    """Consecutive statements of a program as one kernel on a CUDA backend."""

    def __init__(self, program, run: list, kernels: list, index32_limit: int, expression: str, stored=None):
        self.program = program
        self.run_statements = run
        self.target = kernels[0].target
        self.limit = index32_limit
        self.expression = expression
        stmts = program.statements
        stored = stored or [None] * len(run)
        self.steps = [GpuStep(stmts[k].lhs.tensor.name, kern, kern.lowered, stmts[k].lhs.tensor.name in program.outputs,
                              stmts[k].accumulate, fmt) for k, kern, fmt in zip(run, kernels, stored)]
        self.formats = {a.lhs.tensor.name: a.lhs.tensor.format for a in stmts}
        self.built: dict = {}
        self.reruns = 0  # launches run again because a sparse output outgrew its arrays
        self.gave_up = 0  # launches in which a block gave up waiting at a barrier
        self.compiled = self.build(32, tuple(_default(kern.variant(32)) for kern in kernels))

    repeat = None  # no repeated-call record: a device call's arguments are built each call

    def chunks(self, bits):
        """No function over chunks of rows (``k.ir`` asks)."""
        return None

    def repeated(self, env: dict) -> bool:
        """Never: every call takes the general path (see ``repeat``)."""
        return False

    # ----------------------------------------------------------------- build
    def build(self, bits: int, hows: tuple) -> GpuBuild:
        """The kernel of ``bits``-bit indices with statement ``j`` mapped ``hows[j]``."""
        key = (bits, hows)
        if key not in self.built:
            lows = [_lowering(st.kernel.variant(bits), how) for st, how in zip(self.steps, hows)]
            self.built[key] = self._compile(lows)
        return self.built[key]

    def _compile(self, lows: list) -> GpuBuild:
        written, links, bindings, functions = {}, [], [], []  # a two-phase statement: its phased function
        phases, order, made = [], [], {}  # made: a step's output arrays, (level, array) -> its Var
        for j, low in enumerate(lows):
            before = {st.name for st in self.steps[:j]}
            for c in device_copies(low, before, self.formats) or []:  # (plan_gpu checked they are buildable)
                copy = copy_function(c, f"{c.storage}_copy{j + 1}", low.code.bindings, made[c.tensor])
                functions.append(copy.function)
                bindings.append(copy.bindings)
                links.append({c.tensor: written[c.tensor]})
                phases.append(0)
                order.append((j, c, copy))
                written[c.storage] = len(functions) - 1
            if self.steps[j].sparse:
                phased = phased_function(low, self.steps[j].name, self.steps[j].stored)
                function, own = phased.function, phased.bindings
                phases.append(phased.phases)
            else:
                function, own = low.entry_function, low.code.bindings
                phases.append(0)
            if self.steps[j].low.output.bounded:  # (its arrays are outputs a later statement reads, as any)
                function = _refuse_overflow(function, own)
                own = [dataclasses.replace(b, role="output") if b.role == "output_bounded" else b for b in own]
            top = low.threads.positions
            if top is not None and top[0] in written:  # (_reads_in_run let only top positions through)
                function, own = _hi_from_pos(function, own, top[0])
            functions.append(function)
            links.append({b.storage: written[b.storage] for b in own
                          if b.role == "input" and b.storage in written})
            # every statement has its own [lo, hi): fuse shares lo/hi, so they are passed as sizes
            bindings.append([dataclasses.replace(b, role="size", index=f"{b.role}{j}") if b.role in ("lo", "hi")
                             else b for b in own])
            written[self.steps[j].name] = len(functions) - 1
            order.append(j)
            made[self.steps[j].name] = {(b.level, b.array): b.var for b in own
                                        if b.role == "output" and b.tensor == self.steps[j].name}
        name = "statements_" + "_".join(str(k + 1) for k in self.run_statements)
        docs = [self.program.texts[k] for k in self.run_statements]
        fn, sources, _merged = fuse(functions, bindings, links, name, docs)
        fn = with_barrier(_phases_apart(fn, phases))
        blocks = {low.threads.gpu_block for low in lows}
        block = blocks.pop() if len(blocks) == 1 and 0 not in blocks else DEFAULT_BLOCK
        if block % 32 and any(st.sparse for st in self.steps):
            raise UnsupportedError(f"a block of {block} threads: the scan of a sparse output inside the launch "
                                   "needs whole warps (a multiple of 32)")
        source = emit_program(fn, block)
        sim = None
        if self.target.name == "cuda-sim":
            from .backends.cuda.sim import compile_sim
            sim = compile_sim(source, {fn.name: program_signature(fn)})
        return GpuBuild(fn, sources, lows, block, (source, sim), irn.Module((fn,), fn.name), order)

    # ------------------------------------------------------------------ call
    def wants_threads(self, env: dict) -> bool:
        """Whether this call runs the statements as kernels of their own instead:
        an operand is a GPU array or a torch tensor (results stay where they are)."""
        return any(is_device_array(env.get(name)) or is_torch(env.get(name))
                   for st in self.steps for name in st.kernel.runtime.plan.names)

    def run(self, env: dict) -> None:
        """Run the statements in one launch on ``env``'s values; each result is put
        in ``env`` under its name. A sparse output that outgrew its arrays runs the
        launch again with room for what it counted (``reruns`` counts those)."""
        self._refuse_shared_sums(env)
        per_step, bits, copied = [], 32, []
        for st in self.steps:
            ctx = st.kernel.runtime
            ops = {name: env[name] for name in ctx.plan.names if name != st.name or (st.sparse and st.accumulate)}
            storages = ctx.operands.storages(ops)  # (a sparse +=: the caller's tensor is its S_old)
            if st.accumulate:  # its sizes bind against the caller's array too
                ops[st.name] = env[st.name]
            sizes = ctx.plan.bind_sizes(storages, ops)
            shape, dtype = tuple(sizes[i] for i in ctx.plan.out_indices), ctx.plan.out_dtype
            if st.bounded:
                array = BoundedAppends(st.low, sizes, storages, ctx.plan.out_indices, 32, self.limit)
                env[st.name] = array.placeholder()
            elif st.sparse:
                array = SparseRows(st.low, sizes, storages, ctx.plan.out_indices, 32, self.limit, st.stored,
                                   _read_room(ctx.plan.names, self.steps, per_step))
                env[st.name] = array.placeholder()  # a later statement binds its sizes against it
            else:
                if st.accumulate:
                    array = self._added_into(st.name, env[st.name], shape, dtype, copied)
                else:
                    array = np.zeros(shape, dtype=dtype)
                env[st.name] = array  # a later statement binds its sizes against it (and reads it)
            per_step.append((storages, sizes, array))
            bits = max(bits, index_bits(storages, sizes, self.limit))
        rows = [array for _s, _z, array in per_step if isinstance(array, (SparseRows, BoundedAppends))]
        for r in rows:
            if bits != 32:  # an operand needs 64-bit indices: so do the outputs' arrays
                r.grow(bits)
        sums = {st.name: array.copy() for st, (_s, _z, array) in zip(self.steps, per_step)
                if st.accumulate and not (st.sparse or st.bounded) and rows}  # a launch run again adds into the old values again
        reruns = RERUNS + max(len(rows) - 1, 0)
        for launch in range(reruns + 1):
            status = self._launch_at(bits, per_step)
            if not rows or launch == reruns or status not in (CAPACITY_STATUS, irn.STATUS_INDEX_OVERFLOW):
                break
            # the sparse outputs' arrays were too small (or their positions too narrow):
            # run again with room for exactly what this launch counted
            if status == irn.STATUS_INDEX_OVERFLOW or any(r.most_needed() > self.limit for r in rows):
                bits = 64
            for r in rows:
                r.grow(bits)
            for st, (_s, _z, array) in zip(self.steps, per_step):
                if not (st.sparse or st.bounded):
                    array[...] = sums[st.name] if st.name in sums else 0
            self.reruns += 1
        if status == GRID_SYNC_STATUS:
            raise KernelRuntimeError(
                f"program {self.expression!r}: statements {', '.join(str(k + 1) for k in self.run_statements)} "
                f"run as one kernel, and a block waited more than {SYNC_TIMEOUT_S:g} s at the grid-wide barrier "
                "between them: the grid's blocks were not all resident at once")
        if status == CAPACITY_STATUS:  # (each launch had room for what the one before counted)
            raise KernelRuntimeError(f"program {self.expression!r}: a sparse output counted more entries than its "
                                     f"arrays held in {reruns + 1} launches, each given room for the last one's")
        if status != 0:
            raise_status(status, None, self.steps[-1].name, self.expression)
        for name, given, array in copied:  # a += array that was not row-major: its sums go back in place
            given[...] = array
            env[name] = given
        for st, (_s, _z, array) in zip(self.steps, per_step):
            if st.sparse or st.bounded:
                env[st.name] = array.result()
            elif array.ndim == 0 and st.returned and not st.accumulate:
                env[st.name] = array.item()

    def _launch_at(self, bits: int, per_step: list) -> int:
        """One launch of the ``bits``-bit kernel on the statements' arrays; its status."""
        lists, hows = [], []
        for st, (storages, sizes, array) in zip(self.steps, per_step):
            variant = st.kernel.variant(bits)
            out_arg = array.out_arg if st.sparse or st.bounded else (lambda b, a=array: a.reshape(-1))
            args, lohi = st.kernel.runtime.args(variant.arg_plan, storages, sizes, bits, out_arg,
                                                array.capacity if st.bounded else None)
            if lohi is not None:
                args[lohi], args[lohi + 1] = 0, parallel_extent(variant.lowered, sizes, storages)
            if st.sparse:
                args += array.extra_args()
            choice = variant.function.choice
            hows.append(choice.pick(args)[0] if choice is not None else _default(variant))
            lists.append(args)
        built = self.build(bits, tuple(hows))
        joined = [lists[at] if isinstance(at, int) else self._copy_args(at, per_step) for at in built.order]
        return self._launch(built, lists, joined, hows)

    def _copy_args(self, at: tuple, per_step: list) -> list:
        """A copy block's arguments (``program_gpu_copies.copy_args``): its writer's shape and room."""
        _j, c, copy = at
        w = next(i for i, st in enumerate(self.steps) if st.name == c.tensor)
        array = per_step[w][2]
        if isinstance(array, SparseRows):
            shape, room = array.shape, array.capacity[array.levels - 1]
        elif isinstance(array, BoundedAppends):
            shape, room = array.out.shape, array.capacity
        else:
            shape, room = array.shape, 0
        return copy_args(copy, self.formats[c.tensor], shape, room)

    def _refuse_shared_sums(self, env: dict) -> None:
        """OperandError where a ``+=`` array shares memory with an input of the run or
        with another ``+=`` array: the launch uploads each once and adds into its own
        copy, so the statements would not see each other's sums (as one by one)."""
        written = {st.name for st in self.steps}
        inputs = {name: env[name] for st in self.steps for name in st.kernel.runtime.plan.names
                  if name not in written}
        sums = {st.name: env[st.name] for st in self.steps if st.accumulate}
        for name, given in sums.items():
            if isinstance(given, np.ndarray):
                refuse_overlap(given, {**inputs, **sums}, name)

    def _added_into(self, name: str, given, shape: tuple, dtype, copied: list) -> np.ndarray:
        """The array a ``+=`` statement adds into: the caller's own (the launch uploads
        it and copies the sums back into it), or a row-major copy of it, noted in
        ``copied`` to be written back after the launch."""
        if not isinstance(given, np.ndarray):
            raise OperandError(f"output {name} (+=) must be a numpy.ndarray (or, for an order-0 output, "
                               f"a Python or NumPy scalar), not {type(given).__name__}")
        if given.shape != shape:
            raise ShapeError(f"output {name} has shape {given.shape}, the program computes {shape}")
        if given.dtype != dtype:
            raise DTypeError(f"output {name} has dtype {given.dtype} but the program writes {np.dtype(dtype)}")
        if not given.flags.writeable:
            raise OperandError(f"output {name} (+=) is read-only: it is updated in place")
        if given.flags.c_contiguous:
            return given
        array = np.ascontiguousarray(given)
        copied.append((name, given, array))
        return array

    def _launch(self, built: GpuBuild, lists: list, joined: list, hows: list) -> int:
        """Launch the kernel on the statements' argument lists (``joined``: every joined
        function's, the copies' too); returns its status."""
        grid = 1
        for low, args in zip(built.lows, lists):
            fn = low.entry_function  # a two-phase statement's fill: its parameters come first
            scalars = {p.name: a if isinstance(a, int) else 0 for p, a in zip(fn.params, args)}
            grid = max(grid, launch_config(fn, scalars, built.block)[0])
        args = [joined[s.statement][s.position] for s in built.sources]
        barrier = np.zeros(BARRIER_WORDS, dtype=np.int32)
        args += [barrier, int(SYNC_TIMEOUT_S * 1e9)]
        resident = co_resident_blocks(self.target, built)
        launch = min(grid, resident)
        self.target.last_launch = {"mapping": "one kernel: " + ", ".join(hows), "grid": launch,
                                   "block": built.block, "why": f"{grid} blocks wanted, {resident} resident at once"}
        name = built.function.name
        if built.compiled[1] is not None:
            status = built.compiled[1].launch(name, args, launch, built.block, workers=sim_co_resident_blocks())
        else:
            status = _gpu_module(self.target, built).launch(name, args, launch, built.block)
        self.gave_up += int(barrier[2] != 0)  # (pycuda copies the words back too)
        return status

    # ------------------------------------------------------------ inspection
    def describe(self) -> str:
        """``k.loops``' lines for this run."""
        which = ", ".join(str(k + 1) for k in self.run_statements)
        parts = [f"# statements {which}: one native function, one CUDA kernel launch (a grid-wide barrier "
                 "between the statements; the grid at most the blocks resident at once; a call with GPU arrays "
                 "or torch tensors runs them as kernels of their own)"]
        for j, (k, st) in enumerate(zip(self.run_statements, self.steps)):
            for _j, c, _copy in (at for at in self.compiled.order if not isinstance(at, int) and at[0] == j):
                parts.append(_copy_note(c))
            parts.append(f"# statement {k + 1}\n{st.low.inspection.notation!r}\n{st.low.inspection.loops}")
            if st.sparse:
                top = (f" (as {st.low.inspection.notation.lhs.tensor.format.spec()!r}), then its first level "
                       "written from the row starts" if st.stored is not None else "")
                parts.append(f"({st.name} inside the launch: counted, a two-level prefix sum, filled{top}, a barrier "
                             "after each step; its arrays are allocated before the launch at an estimate, and the "
                             "launch runs again with room for what it counted when they were too small)")
                if st.accumulate:
                    parts.append(f"({st.name} +=: the tensor you pass is read as {st.name}_old, each row's count is "
                                 "of the union of its old and new entries, and new arrays are handed back; yours "
                                 "are left as they were)")
            elif st.bounded and not st.low.output.bounded:
                parts.append(f"({st.name} inside the launch: inserted into arrays of its whole size, allocated "
                             "before the launch)")
            elif st.bounded:
                parts.append(f"({st.name} inside the launch: one thread appends it; when its entries did not fit "
                             "it reports so before any later statement reads it, and the launch runs again with "
                             "room for them)")
        return "\n".join(parts)


def _read_room(names, steps: list, per_step: list) -> int:
    """The entries the run's sparse temporaries among ``names`` have room for (their
    arrays' capacity): what a reader's estimate adds, since it sees them empty."""
    room = 0
    for st, (_s, _z, array) in zip(steps, per_step):
        if st.name in names and isinstance(array, SparseRows):
            room += array.capacity[array.levels - 1]
        elif st.name in names and isinstance(array, BoundedAppends):
            room += array.capacity
    return room


def _copy_note(c) -> str:
    """``k.loops``' line for a copy the launch makes before its reader (``program_gpu_copies.py``)."""
    if c.kind == TRANSPOSE:
        return (f"({c.storage}: {c.tensor} transposed inside the launch by ONE thread of the grid -- count per "
                "column, prefix sum, fill in row order, the host's copy exactly -- between two barriers, into "
                f"arrays the host allocated at {c.tensor}'s capacity)")
    return f"({c.storage}: {c.tensor}'s diagonal gathered inside the launch, a thread per row, between two barriers)"


def _phases_apart(fn: irn.Function, phases: list) -> irn.Function:
    """A fused function with each two-phase statement's block split into its count,
    scan and fill blocks (``phases[k]`` of them, 0 for other statements:
    device_scan.py): the emitter puts a barrier after each."""
    body = list(fn.body.body)
    blocks = []
    for k, block in enumerate(body[:len(phases)]):
        blocks += split_phases(block.body, phases[k]) if phases[k] else [block]
    return dataclasses.replace(fn, body=irn.Block(tuple(blocks + body[len(phases):])))


def _refuse_overflow(function: irn.Function, bindings: list) -> irn.Function:
    """A bounded-append statement's function that returns CAPACITY_STATUS after its
    appends when they needed more entries than its arrays hold: a later statement of
    the launch must not read a cut output (the host runs the launch again)."""
    needed = next(b.var for b in bindings if b.role == "needed")
    capacity = next(b.var for b in bindings if b.role == "capacity")
    body = list(function.body.body)
    if body and isinstance(body[-1], irn.Return) and body[-1].status == irn.STATUS_OK:
        body.pop()
    body += [irn.Comment("the appends did not fit: the host runs the launch again with room for them"),
             irn.If(irn.Binary(">", irn.Cast(irn.Load(needed, irn.i64(0)), capacity.type), capacity),
                    irn.Block((irn.Return(CAPACITY_STATUS),))),
             irn.Return(irn.STATUS_OK)]
    return dataclasses.replace(function, body=irn.Block(tuple(body)))


def _hi_from_pos(function: irn.Function, bindings: list, tensor: str) -> tuple:
    """``(function, bindings)`` of a statement whose threads split the top positions of
    ``tensor``, a sparse output of the same launch: its ``hi`` read from ``tensor``'s
    level-0 ``pos`` after the barrier (the host passes a ``hi`` it ignores: before the
    launch it does not know the count)."""
    hi = next(b.var for b in bindings if b.role == "hi")
    pos = next(b.var for b in bindings
               if b.role == "input" and b.storage == tensor and (b.level, b.array) == (0, "pos"))
    taken = {p.name for p in function.params}
    ignored = irn.Var(next(f"{hi.name}_host{k or ''}" for k in range(len(taken) + 1)
                           if f"{hi.name}_host{k or ''}" not in taken), hi.type)
    params = tuple(ignored if p.name == hi.name else p for p in function.params)
    read = irn.Declare(hi, irn.Cast(irn.Load(pos, irn.i64(1)), hi.type))
    body = irn.Block((irn.Comment(f"{hi.name}: {tensor}'s top positions, counted in this launch"), read)
                     + tuple(function.body.body))
    bindings = [dataclasses.replace(b, var=ignored) if b.role == "hi" else b for b in bindings]
    return dataclasses.replace(function, params=params, body=body), bindings


def co_resident_blocks(target, built: GpuBuild) -> int:
    """Blocks of ``built``'s kernel that run at once: the harness's worker threads
    on cuda-sim, the device's occupancy on a GPU."""
    if built.compiled[1] is not None:
        return sim_co_resident_blocks()
    return _gpu_module(target, built).co_resident_blocks(built.function.name, built.block)


def _gpu_module(target, built: GpuBuild):
    """The pycuda module of ``built`` (compiled on first use, kept by the target)."""
    from .backends.cuda.device import compile_gpu, gpu_available
    from .errors import BackendUnavailableError
    ok, why = gpu_available()
    if not ok:
        raise BackendUnavailableError(f"backend 'cuda' cannot run here: {why}")
    modules = target.program_modules
    source = built.compiled[0]
    if source not in modules:
        modules[source] = compile_gpu(source, kernels={built.function.name: program_signature(built.function)})
    return modules[source]


def _default(variant) -> str:
    return variant.function.default


def _lowering(variant, how: str):
    """The variant's lowering mapped ``how`` (its warp lowering where the call's rows pick one)."""
    call = variant.function
    return variant.lowered if how == call.default else call.choice.warp
