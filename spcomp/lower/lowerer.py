"""Index notation + schedule -> kernel IR (DESIGN §5): the driver.

:func:`lower` runs the stages in order and builds the :class:`Lowered` record in
one place (:meth:`Lowerer.record`):

1. sums lifted and pushed (``normalize.py``), diagonals read through their own
   storage (``diagonal.py``), the loop order chosen (``order.py``) with the
   transpositions and dense relayouts it needs, products handed to BLAS where
   they fit (``blas.py``);
2. the kernel's parameters and the output's sink (``outputs.py``; a sparse output
   counted then filled in parallel: ``assembly.py``), the parallel loop and its
   work facts (``parallel.py``), the workspace;
3. the loop nest (``emitter.py``), then the passes that rewrite it for the CPU
   (``regblock.py``, ``prefetch.py``, ``coverage.py``);
4. the function, its bindings and the record.
"""
from __future__ import annotations

import dataclasses

from ..errors import FormatError, ScheduleError, UnsupportedError
from ..formats import Format
from ..ir import nodes as n
from ..ir.types import F32, F64, I64, ptr
from ..notation import Access, Add, Assignment, TensorVar, accesses
from . import blocked
from . import gpumap, gpupositions, possparse, rowpos
from . import parallel as par
from . import split as split_mod
from .blas import direct_gemm, gemm_call, gemm_into_temporary, offload
from .context import Binding, Env, Names, TensorParams, level_array_type, value_type
from .coverage import writes_every_element, zero_rows
from .directives import LoopDirectives
from .diagonal import diagonal_storages
from .emitter import LoopEmitter, NestContext
from .normalize import lift_sums, push_sums, replace, split_sums
from .order import access_chain, choose_order
from .outputs import AppendSink, DenseSink, assembled_format
from .polls import poll_outer_loops
from .heap_exits import free_on_early_exits
from .prefetch import prefetch_rows
from .zeroskip import skip_zero_blocks
from .record import (Code, Inspection, Lowered, OperandPlan, Options, OutputPlan,  # noqa: F401
                     ThreadPlan)
from .regblock import block_rows
from .split import SplitPiece
from .workspace import make_workspace
from . import meet as meet_mod


def _dense_relayouts(rhs, order, enabled: bool, skip=frozenset()) -> dict:
    """Dense inputs (2-D and up) that the innermost of their loops would walk across
    rows: ``E[k,j]`` under ``for j: for k`` (SDDMM). A row-major copy with that
    index last is read contiguously; copying costs one pass over the operand per
    call, far less than a strided read per nonzero."""
    if not enabled:
        return {}
    pos = {i: k for k, i in enumerate(order)}
    out = {}
    for acc in dict.fromkeys(accesses(rhs)):
        fmt = acc.tensor.format
        if (not fmt.is_dense or len(acc.indices) < 2 or len(set(acc.indices)) != len(acc.indices)
                or acc.tensor in skip):
            continue
        innermost = max(acc.indices, key=lambda i: pos[i])
        last = acc.indices[fmt.order[-1]]
        if innermost != last:
            dims = sorted(range(len(acc.indices)), key=lambda d: pos[acc.indices[d]])
            out[acc] = Format(fmt.levels, tuple(dims))
    return out


def _free_before_error_returns(stmts: list, pointers: list) -> list:
    """``stmts`` with ``free(p)`` for each of ``pointers`` before every ``return``
    of an error status, so a kernel that stops early does not leak them."""
    if not pointers:
        return stmts

    def go(stmts):
        return [n.block(*[n.Free(p) for p in pointers], s)
                if isinstance(s, n.Return) and s.status != n.STATUS_OK else n.map_blocks(s, go)
                for s in stmts]
    return go(stmts)


def _transposable(fmt: Format) -> Format:
    """The storage of a transposed copy: packed-block levels become compressed ones
    (a transposed tile can hold more than K entries), other levels stay."""
    from ..formats import Compressed
    levels = tuple(Compressed() if kind.fixed_slots else kind for kind in fmt.levels)
    return Format(levels, fmt.order)


# lowerings of one statement with operands read from copies in the blocks (blocked.py)
MAX_REBLOCKS = 4


class Lowerer(LoopDirectives):
    def __init__(self, assignment: Assignment, options: Options | None = None):
        self.a = assignment
        self.opt = options or Options()
        self.loops_text: list = []
        self.warnings: list = []
        self.position_ends: dict = {}  # set by the nest's emitter: each compressed loop's last position
        self.members_placed: dict = {}  # GPU member loops the nest marked (gpumap.check_nesting)
        self.partials = False  # the parallel loop reduces into per-chunk copies of the output
        self.racy = False      # IgnoreRaces with insist=True: iterations add into the output unguarded
        self.inner_parallel = False  # the parallel loop runs below the outermost one (parallel.inner_parallel)
        self.fused = None      # densefuse.DenseFuse: two dense loops run as one

    # ================================================================ setup
    def run(self) -> Lowered:
        """Lower; a sparse operand read by blocks at its own levels whose order conflicts
        with the blocked operands' is read from a copy in the blocks instead (blocked.py)."""
        self.reblock, self.last_try = {}, False
        for attempt in range(MAX_REBLOCKS + 1):
            self.last_try = attempt == MAX_REBLOCKS  # then a conflict is refused, not retried
            try:
                return self._run()
            except blocked.Reblock as e:
                self.reblock = {**self.reblock, **e.wanted}
                self.warnings, self.loops_text = [], []

    def _run(self) -> Lowered:
        a = self.a
        lhs, rhs = a.lhs, a.rhs
        self.accumulate = a.accumulate
        self.compute = F64 if any(t.dtype == "float64" for t in a.tensors.values()) else F32
        out_sparse = not lhs.tensor.format.is_dense
        if out_sparse and a.accumulate:
            # C += E on a sparse C is C = C_old + E: a union with the old pattern
            old = TensorVar(lhs.tensor.name + "_old", lhs.tensor.order, lhs.tensor.format, lhs.tensor.dtype)
            self.old_alias = (old.name, lhs.tensor.name)
            rhs = Add(Access(old, lhs.indices), rhs)
            self.accumulate = False
        else:
            self.old_alias = None
        # a sparse output of an index a blocked operand cuts: assembled in the blocks,
        # converted by the runtime (blocked.py)
        own_format = lhs.tensor.format
        blocks = blocked.output_in_blocks(lhs, rhs)
        if blocks is not None:
            t = lhs.tensor
            lhs = Access(TensorVar(t.name, t.order, blocks, t.dtype), lhs.indices)
            self.warnings.append(f"output {t.name} ({own_format}) has indices a blocked operand cuts into "
                                 f"blocks: spcomp assembles it as {str(blocks)!r} and converts it at each call")
        # dense levels under sparse ones: assembled compressed, expanded by the runtime
        self.expand = None
        stand_in = assembled_format(lhs.tensor.format)
        if stand_in is not lhs.tensor.format or blocks is not None:
            self.expand = own_format
            t = lhs.tensor
            lhs = Access(TensorVar(t.name, t.order, stand_in, t.dtype), lhs.indices)
        # the runtime sees the operands' own accesses; the nest reads blocked ones by levels
        self.record_lhs = lhs
        self.blocking = blocked.rewrite(lhs, rhs, self.reblock)
        if self.blocking is not None:
            lhs, rhs = self.blocking.lhs, self.blocking.rhs
        # A[i,i] on a sparse A reads a diagonal storage the runtime builds (diagonal.py)
        rhs, self.diagonals = diagonal_storages(rhs, {t.name for t in a.tensors.values()}
                                                | {lhs.tensor.name + "_old"})
        lifted = lift_sums(rhs)
        pushed = push_sums(lifted, force=self.opt.precompute, allow=self.opt.auto_precompute
                           or bool(self.opt.precompute))
        self.gemms = []
        user_order = self._check_splits(lhs, rhs)
        user_order = self._position_loop(lhs, rhs, user_order)
        try:
            order, transposes = self._choose_order(lhs, pushed, user_order)
            rhs = pushed
        except UnsupportedError:
            if pushed == lifted:
                raise
            order, transposes = self._choose_order(lhs, lifted, user_order)
            rhs = lifted
        # the notation the runtime checks operands against keeps every access;
        # the nest may read matrix products from temporaries instead (blas.py)
        notation_rhs = rhs
        if self._blas_allowed():
            compute = "float64" if self.compute == F64 else "float32"
            offloaded, gemms = offload(rhs, lhs, compute, {t.name for t in a.tensors.values()})
            if gemms:
                try:
                    order, transposes = choose_order(lhs, offloaded, None)
                    rhs, self.gemms = offloaded, gemms
                except UnsupportedError:
                    pass
        self.order = order
        self.position = {i: k for k, i in enumerate(order)}
        # storage of transposed operands
        self.transposes = {}
        self.dense_relayouts = []
        taken = {t.name for t in a.tensors.values()} | set(self.diagonals)
        if self.blocking is not None:  # sparse operands read from copies in the blocks (blocked.py)
            taken |= set(self.blocking.converted)
            for storage, (operand, fmt) in self.blocking.converted.items():
                self.transposes[storage] = (operand, fmt)
                self.warnings.append(
                    f"operand {operand} is stored as {a.tensors[operand].format}, which the blocked loops cannot "
                    f"read (a sparse level holds an index a blocked operand cuts into blocks, or its level order "
                    f"conflicts with the loop order); spcomp converts it to {str(fmt)!r} at each call (pass it in "
                    f"that format to avoid the copy)")
        views = self.blocking.views if self.blocking is not None else set()
        relayout = _dense_relayouts(rhs, order, self.opt.auto_layout, skip={g.temp for g in self.gemms} | views)
        for acc in transposes:
            if acc.tensor in views:
                wanted = self.blocking.copies_for(acc, transposes[acc])
                if not self.last_try and any(self.reblock.get(user, False) != order
                                             for user, order in wanted.items()):
                    raise blocked.Reblock(wanted)  # lower again, reading copies in the blocks
                user = self.blocking.users[acc]
                raise FormatError(f"operand {user.tensor.name} ({user.tensor.format}) is read by blocks as "
                                  f"{user!r} over levels {acc.tensor.format.spec()} against the loop order "
                                  f"({', '.join(i.name for i in order)}), and no copy in the blocks fits the "
                                  "loops either (a block's inner coordinates come after every outer one); "
                                  "compute the reduction in a separate statement or store the operand unblocked")
        for acc, fmt in list(transposes.items()) + list(relayout.items()):
            t = acc.tensor
            fmt = _transposable(fmt)
            name = t.name + "_T"
            k = 2
            while name in taken:
                name, k = f"{t.name}_T{k}", k + 1
            taken.add(name)
            new = TensorVar(name, t.order, fmt, t.dtype)
            self.transposes[new.name] = (t.name, fmt)
            rhs = replace(rhs, acc, Access(new, acc.indices))
            notation_rhs = replace(notation_rhs, acc, Access(new, acc.indices))
            if acc in relayout:
                # a dense operand copied so the innermost loop reads it contiguously:
                # a layout choice, not a conflict with the user's format, so no warning
                self.dense_relayouts.append(f"{t.name} copied to {fmt.spec()!r} (innermost loop reads it "
                                            f"contiguously)")
                continue
            self.warnings.append(
                f"operand {t.name} is stored as {t.format} but the loop order "
                f"({', '.join(i.name for i in order)}) walks {acc!r} against it; spcomp converts it "
                f"to {fmt.spec()!r} at each call (pass it in that format to avoid the copy)")
        self.rhs = rhs
        self.notation_rhs = notation_rhs
        self._check_position_order(order, rhs)
        self.lhs = lhs
        # top-level reductions: scatter (outside an output index) or gather
        top, body = split_sums(rhs)
        out_pos = [self.position[i] for i in lhs.indices]
        last_out = max(out_pos) if out_pos else -1
        self.scatter = [r for r in top if self.position[r] < last_out]
        if not lhs.indices and order and order[0] in top and par.gpu_atomics(self.opt, lhs):
            # a scalar output on the GPU: the outermost sum runs in parallel, adding atomically
            # (on CPU threads the sum's first loop runs in parallel, parallel.scalar_sum_loop)
            self.scatter = [order[0]]
        gather = [r for r in top if r not in self.scatter]
        from .normalize import wrap_sums
        self.expr = wrap_sums(gather, body)
        self.outer = [i for i in order if i in set(lhs.indices) | set(self.scatter)]
        self._expand_splits(order)
        self.sum_order = order
        self._make_params()
        return self._build()

    # ----------------------------------------------------------- params
    def _make_params(self):
        opt = self.opt
        tensors = {}
        gemm_operands = [acc for g in self.gemms for acc in (g.a, g.b)]
        for acc in [self.lhs] + accesses(self.rhs) + gemm_operands:
            tensors.setdefault(acc.tensor.name, acc.tensor)
        temps = {g.temp.name for g in self.gemms}
        self.fresh = Names()
        self.bindings: list = []
        self.sizes = {}
        gemm_indices = {i for acc in gemm_operands for i in acc.indices} - set(self.order)
        self.block_sizes = []  # a block's inner size is a constant of the kernel (blocked.py)
        for i in sorted(list(self.order) + list(gemm_indices), key=lambda x: x.name):
            v = n.Var(self.fresh(f"N_{i.name}"), I64)
            self.sizes[i] = v
            if isinstance(i, blocked.BlockPiece) and not i.outer:
                self.block_sizes.append(n.Declare(v, n.i64(i.factor)))
            else:
                self.bindings.append(Binding(v, "size", index=i.name))
        self.coords = {}
        self.params: dict = {}
        self.out_name = self.lhs.tensor.name
        for name, t in tensors.items():
            operand = name
            if name in self.transposes:
                operand = self.transposes[name][0]
            if self.old_alias and name == self.old_alias[0]:
                operand = self.old_alias[1]
            is_out = t is self.lhs.tensor
            levels = []
            for l, kind in enumerate(t.format.levels):
                arrays = {}
                for arr in kind.arrays:
                    et = level_array_type(kind, arr, opt.index_bits)
                    v = n.Var(self.fresh(f"{name}{l + 1}_{arr}"), ptr(et))
                    arrays[arr] = v
                levels.append(arrays)
            vals = n.Var(self.fresh(f"{name}_vals"), ptr(value_type(t)))
            self.params[name] = TensorParams(name, t, levels, vals)
            if not is_out and name not in temps:
                own = self.blocking.own_level if self.blocking is not None else (lambda _t, l: l)
                for l, arrays in enumerate(levels):
                    for arr, v in arrays.items():
                        self.bindings.append(Binding(v, "input", operand, own(name, l), arr, storage=name))
                self.bindings.append(Binding(vals, "input", operand, -1, "vals", storage=name))

    # ------------------------------------------------------------ build
    def _build(self) -> Lowered:
        lhs = self.lhs
        out = self.params[self.out_name]
        fmt = lhs.tensor.format
        self.capacity_param = None
        self.bounded = ()
        self.drops_zeros = False
        self.accumulate_inside = False  # (_position_passes; a dense output's is set below)
        grow = []
        if not fmt.is_dense and (self.pos_plan is not None or not self.opt.append_chunks):
            from . import assembly
            # rows in parallel: count, scan, fill (by chunks of positions: possparse.py)
            two_phase = self._position_assembly() if self.pos_plan is not None else assembly.plan(self)
            if two_phase is not None:
                return two_phase
        if fmt.is_dense:
            shape = "dense"
            sink = DenseSink(out, access_chain(lhs), self.sizes,  # positions: rows in pieces, added up
                             accumulate=self.accumulate or bool(self.scatter) or self.pos_plan is not None)
            self.accumulate_inside = self.accumulate or bool(self.scatter)  # (_position_passes)
            self.out_sink = sink
            self.bindings.append(Binding(out.vals, "output", self.out_name, -1, "vals", storage=self.out_name))
        else:
            drop = self.opt.drop_zeros
            if drop is None:
                # a packed output stores nonzeros by definition; others keep the
                # iteration pattern unless a loop over the output is dense
                drop = fmt.levels[-1].fixed_slots or self.output_loops_dense()
            self.capacity_param = n.Var(self.fresh("capacity"), I64)
            self.bindings.append(Binding(self.capacity_param, "capacity"))
            sink = AppendSink(out, lhs, drop, self.fresh, self.sizes, self.capacity_param, self.opt.index_limit,
                              asked=self.expand)
            self.drops_zeros = drop
            shape = sink.shape
            grow = sink.growable()
            bounded = ()
            if self.opt.bounded_appends and grow:
                bounded, grow = tuple(grow), []
                needed = n.Var(self.fresh(f"{out.var_name}_needed"), ptr(I64))
                sink.bind_bounded(needed)
            out_params, locals_ = {}, {}
            for (l, arr) in grow:
                local = out.vals if arr == "vals" else out.array(l, arr)
                param = n.Var(self.fresh(local.name + "_out"), ptr(local.type))
                out_params[(l, arr)] = param
                locals_[(l, arr)] = local
            sink.bind_growable(out_params, locals_)
            for l, arrays in enumerate(out.levels):
                for arr, v in arrays.items():
                    if (l, arr) in out_params:
                        self.bindings.append(Binding(out_params[(l, arr)], "output_grow", self.out_name, l, arr,
                                                     storage=self.out_name))
                    else:
                        role = "output_bounded" if (l, arr) in bounded else "output"
                        self.bindings.append(Binding(v, role, self.out_name, l, arr, storage=self.out_name))
            if (-1, "vals") in out_params:
                self.bindings.append(Binding(out_params[(-1, "vals")], "output_grow", self.out_name, -1, "vals",
                                             storage=self.out_name))
            else:
                role = "output_bounded" if (-1, "vals") in bounded else "output"
                self.bindings.append(Binding(out.vals, role, self.out_name, -1, "vals", storage=self.out_name))
            if bounded:
                self.bindings.append(Binding(needed, "needed", self.out_name, storage=self.out_name))
            self.bounded = bounded
            self.out_sink = sink
        self.out_shape = shape
        # workspace when a reduction runs outside the output's last index
        self.workspace = None
        self.zeroes_rows = False  # set by _zero_rows when the nest clears each output row
        if shape != "dense" and self.scatter:
            self.workspace = self.make_workspace()
        # parallel outer loop
        if self.pos_plan is not None:
            self.parallel = self._position_parallel()
        else:
            self.parallel = par.choose_parallel(self.facts(), shape)
        # a parallel loop below the outermost (parallel.inner_parallel): the output is zeroed by the runtime
        self.inner_parallel = (self.pos_plan is None and self.parallel is not None
                               and self.parallel is not self.loop_order[0])
        if self.pos_plan is not None:
            self.partials = self.pos_plan.race == "partials"
        elif self.parallel is not None and split_mod.base_of(self.parallel) not in self.lhs.indices:
            strategy = par.reduction_strategy(self.opt, self.lhs)  # (parallel.py)
            if strategy == "atomics":
                self.out_sink.atomic = True  # iterations of a reduction loop add into the output concurrently
            elif strategy == "partials":  # each chunk adds into its own zeroed copy, summed by the runtime
                self.partials = True
            elif strategy == "ignored":  # IgnoreRaces, insisted on: plain adds into a zeroed output
                self.out_sink.accumulate = self.racy = True
        if isinstance(self.out_sink, AppendSink):
            self.out_sink.rows_in_parallel = self.parallel is not None
        # chunks of rows that share the output's arrays, meeting in the middle (meet.py)
        meetable = isinstance(self.out_sink, AppendSink) and meet_mod.applies(
            fmt, self.workspace, self.parallel, self.loop_order, self._appends_in_chunks(shape), self.expr)
        meet = (meet_mod.adopt(self.bindings, self.out_sink, out, self.fresh)
                if meetable and self.opt.meet_chunks else None)
        if meet is not None:
            grow = []
        self.lo = self.hi = None
        params_front = []
        if self.parallel is not None:
            self.lo = n.Var(self.fresh("lo"), I64)
            self.hi = n.Var(self.fresh("hi"), I64)
            params_front = [Binding(self.lo, "lo"), Binding(self.hi, "hi")]
        self.bindings = params_front + self.bindings
        env = Env()
        body = []
        body.append(n.Comment(f"{self.a!r}"))
        body += self.block_sizes
        body += self.out_sink.prologue()
        if self.workspace:
            body += self.workspace["prologue"]
        direct = direct_gemm(self.gemms, self.lhs, self.rhs)
        gemm_temps = [] if direct else [self.params[g.temp.name].vals for g in self.gemms]
        if direct:
            # the whole right side is one product and the output is laid out like it:
            # BLAS writes the output itself, no temporary and no loop nest
            g, alpha = direct
            beta = 1.0 if self.accumulate else 0.0
            self.loops_text.append(f"{self.lhs!r} {'+=' if self.accumulate else '='} "
                                   f"{'' if alpha == 1.0 else f'{alpha!r} * '}{g.access!r}: BLAS writes the output")
            body += [n.Comment(g.describe() + ", written into the output"),
                     gemm_call(g, out.vals, self.params, self.sizes, alpha, beta)]
        else:
            for g in self.gemms:
                body += gemm_into_temporary(g, self.params, self.sizes)
            nest = self.emit_nest(self.out_sink, env)
            if self.opt.caps.vector_units:  # a GPU thread has no vector registers to fill
                sizes = self.table_sizes()
                nest = block_rows(nest, self.fresh, self.position_ends, sizes)
                nest = prefetch_rows(nest, self.position_ends, self.fresh, sizes)
                nest = skip_zero_blocks(self._zero_rows(nest), self.fresh)
            if self.opt.caps.host_threads:  # Ctrl-C stops a long host call (polls.py)
                nest = poll_outer_loops(nest, gemm_temps + (self.workspace["arrays"] if self.workspace else []))
            body += _free_before_error_returns(nest, gemm_temps)
        if self.workspace:
            body += self.workspace["epilogue"]
        body += [n.Free(v) for v in gemm_temps]
        body += self.out_sink.epilogue()
        per_chunk = (tuple(b.var.name for b in self.bindings if b.role in ("capacity", "output_grow"))
                     if self._appends_in_chunks(shape) else ())
        if meet is not None:
            if not meet.walked:
                raise UnsupportedError("internal: the chunks meeting in the middle need the row loop walked back")
            per_chunk = tuple(v.name for v in meet.params)
        if self.partials:  # chunk c adds into copy c of the output
            per_chunk = (out.vals.name,)
        fn = n.Function(self.opt.name, tuple(b.var for b in self.bindings), n.block(*body),
                        doc=f"{self.a!r}\nloop order: {', '.join(i.name for i in self.loop_order)}",
                        per_chunk=per_chunk)
        gpumap.check_nesting(fn, self.opt, self.members_placed)
        module = n.Module((fn,), entry=self.opt.name)
        return self.record(module, self.opt.name, self.bindings,
                           OutputPlan(shape, grow, self.bounded, overwrites=self._overwrites_output(fn),
                                      index_limit=self.opt.index_limit,
                                      drops_zeros=self.drops_zeros, meetable=meetable,
                                      meet=meet.keys if meet is not None else ()),
                           Assignment(self.lhs, self.notation_rhs, self.accumulate),
                           [g.describe() for g in self.gemms] + self.loops_text)

    def record(self, module, entry, bindings, output: OutputPlan, notation, loops: list) -> Lowered:
        """The Lowered record of this lowering: the one place it is built."""
        output.expand = self.expand
        if self.opt.caps.host_threads:  # a failed allocation frees what the function already holds
            module = dataclasses.replace(module, functions=tuple(free_on_early_exits(f) for f in module.functions))
        if self.blocking is not None:  # the runtime checks the operands' own accesses (blocked.py)
            notation = Assignment(self.record_lhs, self.blocking.restore(notation.rhs), notation.accumulate)
        facts, walked = self.facts(), self.parallel_positions
        balance = par.balance(facts, self.parallel, walked)
        split, positions = split_mod.extent_rule(self.parallel), None
        if walked is not None:
            positions = (walked[0].tensor.name, walked[1])
        if self.pos_plan is not None and self.parallel is not None:  # chunks of positions (possplit.py)
            plan = self.pos_plan
            balance = positions = (plan.name, plan.level)
            split = (plan.spec.factor, True)
        # (storage, level) pairs name the operand's own levels (a block-read one's differ)
        own = (lambda p: p)  # noqa: E731
        if self.blocking is not None:
            own = (lambda p: None if p is None else (p[0], self.blocking.own_level(p[0], p[1])))
        threads = ThreadPlan(
            fused=self.fused.inner.name if self.fused is not None and self.parallel is not None else None,
            parallel=split_mod.base_of(self.parallel).name if self.parallel is not None else None,
            balance=own(balance), split=split, positions=own(positions),
            work_scale=tuple(own(p) for p in par.work_scale(facts, balance)),
            work_dense=par.work_dense(facts, balance), partials=self.partials,
            gpu_block=gpumap.check_block(module, self.opt))
        inspection = Inspection(notation=notation, order=self.order, warnings=self.warnings,
                                loops="\n".join(loops + [f"(layout: {r})" for r in self.dense_relayouts]),
                                blas=[g.describe() for g in self.gemms])
        return Lowered(Code(module, entry, bindings), OperandPlan(self.transposes, self.diagonals), output,
                       threads, inspection)

    def facts(self) -> par.LoopFacts:
        """What the parallel choice reads from this lowering."""
        return par.LoopFacts(self.opt, self.lhs, self.expr, self.rhs, self.outer, self.loop_order,
                             self.position, bool(self.gemms))

    @property
    def parallel_positions(self):
        """``(access, 0)`` when the threads split a top compressed level's positions."""
        if self.pos_plan is not None:
            return None  # a position loop's chunks: record() says so
        return par.parallel_positions(self.facts(), self.parallel, self.out_shape)

    def emitter(self, sink, text: bool = True) -> LoopEmitter:
        """A loop emitter for this lowering's nest, its values going to ``sink``."""
        ctx = NestContext(self.opt, self.lhs, self.params, self.sizes, self.fresh, self.compute,
                          self.position, self.loop_order, self.split_pieces, self.transposes,
                          None if self.pos_plan is not None else self.parallel, self.lo, self.hi,
                          self.out_shape, self.workspace,
                          "+=" if self.accumulate or self.scatter or self.pos_plan is not None else "=",
                          parallel_depth=None if self.inner_parallel else 0 if self.outer else 1,
                          positions=self.pos_plan, fused=self.fused)
        return LoopEmitter(ctx, sink, self.loops_text if text else [])

    def emit_nest(self, sink, env) -> list:
        """The loop nest over the outer loops, its values going to ``sink``."""
        if self.pos_plan is not None:
            return self._position_passes(sink, env)
        emitter = self.emitter(sink)
        nest = emitter.nest(self.outer, self.expr, sink, env, depth=0)
        self.position_ends = emitter.position_ends
        self.members_placed.update(emitter.members_placed)
        self._check_bounds(emitter.bounded)
        self.loops_text += rowpos.check_applied(self.opt, emitter.row_pos_done)
        return nest

    def _check_bounds(self, bounded) -> None:
        """Every Schedule.bound must have found its for loop."""
        for index, limit in self.opt.bounds:
            if index not in bounded:
                raise ScheduleError(f"bound({index!r}, {limit}): the loop over {index} is not a for loop with a "
                                    "trip count known on entry (it co-iterates sparse operands in a while loop, "
                                    "or the nest has no such loop); bound applies to for loops")

    def _position_passes(self, sink, env) -> list:
        """A position loop's nest (possplit.py): the chunks' positions and the rows
        holding them, then the nest over the first row, the inner rows and the last
        row; the first and last may be shared with neighbouring chunks, so their
        updates add (atomically where the race strategy says), while an inner row of
        a row-indexed output is this range's alone and stored. On the GPU that is
        the body of a loop over the chunks (gpupositions.py)."""
        plan = self.pos_plan
        plan.params = self.params[plan.name]
        self.loops_text.append(plan.describe(self.parallel is not None, self.opt.parallel_kind))
        bounded = None  # the bounds every pass checked

        def chunks(lo, hi, span=None):
            """One range of chunks' (or sub-chunk positions' ``span``) search and passes."""
            nonlocal bounded
            nest = plan.prelude(lo, hi, self.sizes, self.fresh, span)
            nest += possparse.skipped_entries(self, sink, env)  # a sparse output dropping zeros
            owned = plan.chain[0] in self.lhs.indices and plan.race != "ignored"
            for k, (edge, start, end) in enumerate(plan.passes()):
                plan.current = (edge, start, end)
                sink.atomic = plan.race == "atomics" or (edge and plan.race == "boundary-atomics")
                sink.accumulate = True if edge or not owned else self.accumulate_inside
                emitter = self.emitter(sink, text=k == 0 and bounded is None)  # k.loops shows the nest once
                nest.append(n.Comment(("the first row" if k == 0 else "the last row" if k == 2 else
                                       "the inner rows") + " of the range"))
                nest += emitter.nest(self.outer, self.expr, sink, env.child(), depth=1)
                self.position_ends.update(emitter.position_ends)
                self.members_placed.update(emitter.members_placed)
                bounded = emitter.bounded if bounded is None else bounded & emitter.bounded
            return nest

        if self.parallel is not None and not self.opt.caps.host_threads:  # a GPU thread per chunk
            nest = gpupositions.chunk_loops(plan.spec, self.opt, self.lo, self.hi, self.fresh, chunks,
                                            self.members_placed)
        else:
            nest = chunks(self.lo or n.i64(0), self.hi)
        self._check_bounds(bounded)
        return nest

    def table_sizes(self) -> dict:
        """The number of elements of each dense operand, by its values array: the
        prefetch pass hints rows of large tables only (prefetch.py)."""
        out = {}
        for acc in accesses(self.expr):
            params = self.params.get(acc.tensor.name)
            if params is None or not acc.tensor.format.is_dense or not acc.indices:
                continue
            if any(i not in self.sizes for i in acc.indices):
                continue
            count = self.sizes[acc.indices[0]]
            for i in acc.indices[1:]:
                count = n.Binary("*", count, self.sizes[i])
            out[params.vals] = count
        return out

    def _row_split(self):
        """``(index, lo, hi)`` when the parallel loop is a plain loop over an index's
        whole range split into ``[lo, hi)`` chunks (not positions, not a split piece)."""
        if (self.parallel is None or self.parallel_positions is not None
                or split_mod.base_of(self.parallel) is not self.parallel):
            return None
        return (self.parallel, self.lo, self.hi)

    def _fresh_dense_output(self) -> bool:
        """A dense ``=`` output that only this kernel's nest writes, one thread per element."""
        sink = self.out_sink
        return (self.out_shape == "dense" and isinstance(sink, DenseSink) and not self.accumulate
                and not sink.atomic and not (self.partials and self.scatter) and self.pos_plan is None
                and not self.racy and not self.inner_parallel and self.fused is None)

    def _zero_rows(self, nest: list) -> list:
        """The nest clearing each output row itself when it adds into them (coverage.py)."""
        if not self._fresh_dense_output():
            return nest
        sink, split = self.out_sink, self._row_split()
        fn = n.Function("nest", (), n.block(*nest))
        if writes_every_element(fn, sink.vals, sink.chain, sink.sizes, split):
            return nest  # stored whole already: nothing to clear
        nest, self.zeroes_rows = zero_rows(nest, sink.vals, sink.chain, sink.sizes, split, self.fresh)
        return nest

    def _appends_in_chunks(self, shape) -> bool:
        """Whether each ``[lo, hi)`` call appends a chunk of whole output rows from
        position 0, for the runtime to stitch (``Options.append_chunks``): the
        parallel loop walks the output's first index itself, not positions of an
        input's level nor a piece of a split loop."""
        return (self.opt.append_chunks and shape == "csf" and self.parallel is not None
                and not isinstance(self.parallel, SplitPiece) and self.parallel_positions is None)

    def _overwrites_output(self, fn) -> bool:
        """Whether the kernel stores every element of its dense output before the
        caller could see it: stored whole, or each row cleared first (coverage.py)."""
        if not self._fresh_dense_output():
            return False
        if self.zeroes_rows:
            return True
        sink = self.out_sink
        return writes_every_element(fn, sink.vals, sink.chain, sink.sizes, self._row_split())

    # ----------------------------------------------------- BLAS offload
    def _blas_allowed(self) -> bool:
        """Offload only on the CPU and under the default schedule: a schedule that
        names loops is about the loop nest, which the offload would take away."""
        o = self.opt
        return (o.blas and o.caps.blas and o.parallel in (None, "auto") and self.blocking is None
                and not (o.order or o.precompute or o.vectorize or o.unroll or o.split or o.pos_split
                         or o.bounds))

    def output_loops_dense(self) -> bool:
        """Whether a sparse output level's index is iterated over its whole range
        (then most of what the loop produces is zero and is not stored)."""
        fmt = self.lhs.tensor.format
        for l, kind in enumerate(fmt.levels):
            if kind.is_dense:
                continue
            i = access_chain(self.lhs)[l]
            L = par.probe_lattice(self.expr, i)
            if L.full:
                return True
        return False

    def make_workspace(self):
        """The dense row, bitmap and touched list a scattered output row is gathered in."""
        return make_workspace(self.lhs, self.scatter, self.position, self.sizes, self.compute, self.fresh)


def lower(assignment: Assignment, options: Options | None = None) -> Lowered:
    return Lowerer(assignment, options).run()
