"""Index notation + schedule -> kernel IR (DESIGN §5).

The lowerer walks the loop order. At each loop it builds the merge lattice of
the expression for that index and emits one of three loop shapes:

* one sparse iterator: the level's own ``for`` loop;
* a lattice with the all-coordinates point: ``for i in 0..N`` that advances each
  sparse iterator whose coordinate equals ``i``;
* otherwise TACO's co-iteration: one ``while`` loop per lattice point, each
  taking the smallest coordinate and dispatching to the sub-points present.

In each case the body is the expression *specialised* to the operands present,
so ``A + B`` computes ``A`` alone where ``B`` has no entry. Sums whose free
indices are all bound are computed into temporaries before going deeper
(precompute/hoisting). Output assembly is delegated to a sink (outputs.py).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from ..errors import ScheduleError, UnsupportedError
from ..formats import Compressed, Format
from ..formats.singleton import Singleton
from ..formats.level import LevelAccess, PosInfo
from ..ir import nodes as n
from ..ir.types import BOOL, F32, F64, I64, ptr
from ..notation import (Access, Add, Assignment, Call, Div, Literal, Mul, Neg,
                        Sub, Sum, TensorVar, accesses, free_indices)
from . import lattice as lat
from .context import (Binding, Env, Names, TensorParams,
                      level_array_type, value_type)
from .normalize import (ZERO, factors, lift_sums, nested_sums, push_sums, replace,
                        specialize, split_sums)
from .blas import offload
from . import split as split_mod
from .order import access_chain, choose_order
from .split import SplitPiece
from .regblock import block_rows
from .prefetch import prefetch_rows
from .coverage import writes_every_element, zero_rows
from .outputs import AppendSink, DenseSink, ScalarSink, WorkspaceSink
from .diagonal import diagonal_storages
from .polls import poll_outer_loops

TEMP_FORMAT = Format(())
# a workspace row whose bitmap has at most SCAN_WORDS words per touched coordinate
# is drained in order by scanning the bitmap (lowest set bit first) instead of
# sorting the touched list: 64 coordinates per word cost one load and a test
SCAN_WORDS = 16
# set bits of a bitmap word taken without a test when the list is refilled in order
BITS_PER_STEP = 4
# the loops a team-per-iteration mapping splits among its members
TEAM_MEMBERS = {"gpu-warp": "gpu-lane", "gpu-block": "gpu-thread"}


@dataclass
class Options:
    index_bits: int = 32
    drop_zeros: bool | None = None   # None: only where an output loop is dense
    parallel: str | None = None      # index name to run in parallel, "auto", or None
    parallel_kind: str = "threads"   # threads | gpu-thread | gpu-block | gpu-warp
    order: list | None = None        # user loop order (names)
    precompute: tuple = ()           # reductions to push into temporaries
    vectorize: tuple = ()            # (index, width) hints
    unroll: tuple = ()               # (index, factor) hints
    auto_precompute: bool = True
    auto_layout: bool = True          # copy dense inputs whose inner loop would stride
    blas: bool = False                # dense matrix products by a BLAS gemm call (blas.py)
    vector_gathers: bool = True       # vectorise loops that gather (the CPU's gathers are fast)
    split: tuple = ()                 # (index, outer, inner, factor) per Schedule.split
    # CPU threads and a sparse output with dense rows: each chunk of rows appends to
    # arrays of its own and the runtime stitches them (spcomp/chunks.py) instead of
    # the two-phase count and fill (assembly.py)
    append_chunks: bool = False
    # the GPU: a sparse output appended one entry at a time gets arrays the runtime
    # allocates at a capacity; the kernel stores what fits, counts the rest, reports
    # the entries it needed, and the runtime runs it again when they did not fit
    # (device code cannot realloc)
    bounded_appends: bool = False
    name: str = "kernel"


@dataclass
class Lowered:
    module: n.Module
    entry: str
    bindings: list
    order: list
    transposes: dict           # storage name -> (operand name, Format)
    output_shape: str          # 'dense' 'csf' 'coo' 'packed'
    growable: list             # (level, array) the kernel allocates
    parallel: str | None       # index run over threads, if any
    balance: tuple | None      # (storage name, level) whose pos balances threads
    loops: str                 # the concrete loop nest as text
    notation: Assignment
    warnings: list = field(default_factory=list)
    blas: list = field(default_factory=list)  # matrix products done by gemm calls, described
    parallel_split: tuple | None = None  # (factor, outer?) when the parallel loop is a split piece
    parallel_positions: tuple | None = None  # (storage, level): threads split that level's positions
    assembly: object = None    # assembly.TwoPhase when the output is counted, then filled
    gpu_choice: object = None  # gpu_default.RowChoice: thread or warp per row, picked per call
    work_scale: tuple = ()     # (storage, level) walked under each balanced nonzero (Lowerer._work_scale)
    work_dense: tuple = ()     # indices of the dense loops under each balanced nonzero (Lowerer._work_dense)
    overwrites_output: bool = False  # a dense output every element of which the kernel stores: not zeroed first
    bounded: tuple = ()        # (level, array) appended into runtime-allocated arrays (Options.bounded_appends)
    diagonals: dict = field(default_factory=dict)  # storage name -> diagonal.Diagonal (A_diag[i] = A[i,i])

    @property
    def append_chunks(self) -> bool:
        """Whether each ``[lo, hi)`` call appends its rows from position 0, for the
        runtime to stitch (spcomp/chunks.py): the entry then has per-chunk parameters."""
        return bool(self.module.function(self.entry).per_chunk)


def _idx(e):
    return n.Cast(e, I64) if e.type != I64 else e


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


class Lowerer:
    def __init__(self, assignment: Assignment, options: Options | None = None):
        self.a = assignment
        self.opt = options or Options()
        self.loops_text: list = []
        self.warnings: list = []
        self.position_ends: dict = {}  # position loop var -> its level's last position (_note_position_end)

    # ================================================================ setup
    def run(self) -> Lowered:
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
        # A[i,i] on a sparse A reads a diagonal storage the runtime builds (diagonal.py)
        rhs, self.diagonals = diagonal_storages(rhs, {t.name for t in a.tensors.values()}
                                                | {lhs.tensor.name + "_old"})
        lifted = lift_sums(rhs)
        pushed = push_sums(lifted, force=self.opt.precompute, allow=self.opt.auto_precompute
                           or bool(self.opt.precompute))
        self.gemms = []
        user_order = self._check_splits(lhs, rhs)
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
        relayout = _dense_relayouts(rhs, order, self.opt.auto_layout, skip={g.temp for g in self.gemms})
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
        self.lhs = lhs
        # top-level reductions: scatter (outside an output index) or gather
        top, body = split_sums(rhs)
        out_pos = [self.position[i] for i in lhs.indices]
        last_out = max(out_pos) if out_pos else -1
        self.scatter = [r for r in top if self.position[r] < last_out]
        if not lhs.indices and order and order[0] in top and self._gpu_atomics():
            # a scalar output on the GPU: the outermost sum runs in parallel, adding atomically
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
        for i in sorted(list(self.order) + list(gemm_indices), key=lambda x: x.name):
            v = n.Var(self.fresh(f"N_{i.name}"), I64)
            self.sizes[i] = v
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
                for l, arrays in enumerate(levels):
                    for arr, v in arrays.items():
                        self.bindings.append(Binding(v, "input", operand, l, arr, storage=name))
                self.bindings.append(Binding(vals, "input", operand, -1, "vals", storage=name))

    # ------------------------------------------------------------ build
    def _build(self) -> Lowered:
        lhs = self.lhs
        out = self.params[self.out_name]
        fmt = lhs.tensor.format
        self.capacity_param = None
        self.bounded = ()
        grow = []
        if not fmt.is_dense and not self.opt.append_chunks:
            from . import assembly
            two_phase = assembly.plan(self)  # rows in parallel: count, scan, fill
            if two_phase is not None:
                return two_phase
        if fmt.is_dense:
            shape = "dense"
            sink = DenseSink(out, access_chain(lhs), self.sizes,
                             accumulate=self.accumulate or bool(self.scatter))
            self.out_sink = sink
            self.bindings.append(Binding(out.vals, "output", self.out_name, -1, "vals", storage=self.out_name))
        else:
            drop = self.opt.drop_zeros
            if drop is None:
                # a packed output stores nonzeros by definition; others keep the
                # iteration pattern unless a loop over the output is dense
                drop = fmt.levels[-1].fixed_slots or self._output_loops_dense()
            self.capacity_param = n.Var(self.fresh("capacity"), I64)
            self.bindings.append(Binding(self.capacity_param, "capacity"))
            sink = AppendSink(self, out, lhs, drop_zeros=drop)
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
            self.workspace = self._make_workspace()
        # parallel outer loop
        self.parallel = self._choose_parallel(shape)
        if self.parallel is not None and split_mod.base_of(self.parallel) not in self.lhs.indices:
            self.out_sink.atomic = True  # iterations of a reduction loop add into the output concurrently
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
        body += self.out_sink.prologue()
        if self.workspace:
            body += self.workspace["prologue"]
        direct = self._direct_gemm()
        gemm_temps = [] if direct else [self.params[g.temp.name].vals for g in self.gemms]
        if direct:
            # the whole right side is one product and the output is laid out like it:
            # BLAS writes the output itself, no temporary and no loop nest
            g, alpha = direct
            beta = 1.0 if self.accumulate else 0.0
            self.loops_text.append(f"{self.lhs!r} {'+=' if self.accumulate else '='} "
                                   f"{'' if alpha == 1.0 else f'{alpha!r} * '}{g.access!r}: BLAS writes the output")
            body += [n.Comment(g.describe() + ", written into the output"),
                     self._gemm_call(g, out.vals, alpha, beta)]
        else:
            for g in self.gemms:
                body += self._gemm(g)
            nest = self.nest(self.outer, self.expr, self.out_sink, env, depth=0)
            if self.opt.parallel_kind == "threads":  # a GPU thread has no vector registers to fill
                sizes = self.table_sizes()
                nest = block_rows(nest, self.fresh, self.position_ends, sizes)
                nest = prefetch_rows(nest, self.position_ends, self.fresh, sizes)
                nest = self._zero_rows(nest)
                nest = poll_outer_loops(nest, gemm_temps + (self.workspace["arrays"] if self.workspace else []))
            body += _free_before_error_returns(nest, gemm_temps)
        if self.workspace:
            body += self.workspace["epilogue"]
        body += [n.Free(v) for v in gemm_temps]
        body += self.out_sink.epilogue()
        per_chunk = (tuple(b.var.name for b in self.bindings if b.role in ("capacity", "output_grow"))
                     if self._appends_in_chunks(shape) else ())
        fn = n.Function(self.opt.name, tuple(b.var for b in self.bindings), n.block(*body),
                        doc=f"{self.a!r}\nloop order: {', '.join(i.name for i in self.loop_order)}",
                        per_chunk=per_chunk)
        module = n.Module((fn,), entry=self.opt.name)
        balance, walked = self._balance(), self.parallel_positions
        return Lowered(module=module, entry=self.opt.name, bindings=self.bindings, order=self.order,
                       transposes=self.transposes, output_shape=shape, growable=grow,
                       bounded=self.bounded, diagonals=self.diagonals,
                       parallel=split_mod.base_of(self.parallel).name if self.parallel is not None else None,
                       parallel_split=split_mod.extent_rule(self.parallel),
                       parallel_positions=None if walked is None else (walked[0].tensor.name, walked[1]),
                       balance=balance, work_scale=self._work_scale(balance),
                       work_dense=self._work_dense(balance),
                       loops="\n".join([g.describe() for g in self.gemms] + self.loops_text
                                       + [f"(layout: {r})" for r in self.dense_relayouts]),
                       notation=Assignment(self.lhs, self.notation_rhs, self.accumulate), warnings=self.warnings,
                       blas=[g.describe() for g in self.gemms],
                       overwrites_output=self._overwrites_output(fn))

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

    def _note_position_end(self, loop: list, key) -> None:
        """Remember the last position of a compressed level (CSR's ``pos[N_i] - 1``,
        CSF's third level ``pos3[pos2[pos1[1]]] - 1``) for the loop walking it: the
        prefetch passes clamp their look-ahead reads of ``crd`` there (prefetch.py).
        The count of the parent level's positions is built level by level: a dense
        level multiplies it by its size, a compressed one reads it from its ``pos``,
        a singleton keeps it; under any other kind it is not known. A singleton level
        (COO's second) has its parent's positions, so it ends where the compressed
        level above its run of singletons ends."""
        acc, l = key
        levels = acc.tensor.format.levels
        if len(loop) != 1 or not isinstance(loop[0], n.For):
            return
        while l > 0 and isinstance(levels[l], Singleton):
            l -= 1
        if "pos" not in levels[l].arrays:
            return
        chain = access_chain(acc)
        arrays = self.params[acc.tensor.name].levels
        count = n.i64(1)
        for m in range(l):
            kind = levels[m]
            if kind.is_dense:
                size = self.sizes[chain[m]]
                count = size if count == n.i64(1) else n.Binary("*", count, size)
            elif isinstance(kind, Compressed):
                count = _idx(n.Load(arrays[m]["pos"], count))
            elif not isinstance(kind, Singleton):
                return
        self.position_ends[loop[0].var] = n.Binary("-", _idx(n.Load(arrays[l]["pos"], count)), n.i64(1))

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
                and not sink.atomic)

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
        return (o.blas and o.parallel_kind == "threads" and o.parallel in (None, "auto")
                and not (o.order or o.precompute or o.vectorize or o.unroll or o.split))

    def _gemm(self, g) -> list:
        """Allocate the product's temporary and fill it with one gemm call."""
        c = self.params[g.temp.name].vals
        return [n.Comment(g.describe()),
                n.Allocate(c, n.Binary("*", self.sizes[g.m], self.sizes[g.n])),  # beta = 0 writes every entry
                self._gemm_call(g, c)]

    def _gemm_call(self, g, c, alpha: float = 1.0, beta: float = 0.0):
        """``c = alpha * a·b + beta * c`` for product ``g``, ``c`` row-major ``m × n``."""
        def row_stride(acc):
            return n.Binary("max", self.sizes[acc.indices[acc.tensor.format.order[1]]], n.i64(1))
        m, n_ = self.sizes[g.m], self.sizes[g.n]
        return n.Gemm(c, self.params[g.a.tensor.name].vals, self.params[g.b.tensor.name].vals,
                      m, n_, self.sizes[g.k], row_stride(g.a), row_stride(g.b),
                      n.Binary("max", n_, n.i64(1)), g.trans_a, g.trans_b, alpha, beta)

    def _direct_gemm(self):
        """``(gemm, alpha)`` when the right side is ``alpha`` times one product and the
        dense output is stored row-major over the product's ``(m, n)``, else None."""
        if len(self.gemms) != 1:
            return None
        g = self.gemms[0]
        fmt = self.lhs.tensor.format
        if (not fmt.is_dense or fmt.order != tuple(range(fmt.ndim)) or tuple(self.lhs.indices) != (g.m, g.n)
                or self.lhs.tensor.dtype != g.temp.dtype):
            return None
        alpha, rest = 1.0, []
        for f in factors(self.rhs):
            if isinstance(f, Literal):
                alpha *= f.value
            else:
                rest.append(f)
        return (g, alpha) if rest == [g.access] else None

    def _output_loops_dense(self) -> bool:
        """Whether a sparse output level's index is iterated over its whole range
        (then most of what the loop produces is zero and is not stored)."""
        fmt = self.lhs.tensor.format
        for l, kind in enumerate(fmt.levels):
            if kind.is_dense:
                continue
            i = access_chain(self.lhs)[l]
            L = lat.build(self.expr, i, lambda a: self._probe_key(a, i))
            if L.full:
                return True
        return False

    def _probe_key(self, acc, i):
        if acc.tensor.format.is_dense or acc.tensor in self._temp_tensors() or i not in acc.indices:
            return None
        l = access_chain(acc).index(i)
        kind = acc.tensor.format.levels[l]
        return None if kind.locatable else (acc, l)

    def _temp_tensors(self):
        return getattr(self, "_temps", set())

    def _make_workspace(self):
        lhs = self.lhs
        last = access_chain(lhs)[-1]
        first_scatter = min(self.position[r] for r in self.scatter)
        if self.position[last] < first_scatter:
            raise UnsupportedError("internal: workspace not needed")
        size = self.sizes[last]
        values = n.Var(self.fresh("workspace"), ptr(self.compute))
        bits = n.Var(self.fresh("workspace_bits"), ptr(I64))
        words = n.Var(self.fresh("workspace_words"), I64)
        touched = n.Var(self.fresh("workspace_list"), ptr(I64))
        count = n.Var(self.fresh("workspace_count"), I64)
        return {
            "index": last, "values": values, "bits": bits, "words": words, "touched": touched, "count": count,
            "prologue": [n.Comment(f"workspace: a dense row over {last.name}, a bitmap of the touched "
                                   "coordinates and their list"),
                         n.Declare(words, n.Binary("/", n.Binary("+", size, n.i64(63)), n.i64(64))),
                         n.Allocate(values, n.Binary("max", size, n.i64(1)), zero=True),
                         n.Allocate(bits, n.Binary("max", words, n.i64(1)), zero=True),
                         # BITS_PER_STEP spare slots for the in-order refill (_bitmap_to_list)
                         n.Allocate(touched, n.Binary("+", size, n.i64(BITS_PER_STEP)), zero=False)],
            "epilogue": [n.Free(values), n.Free(bits), n.Free(touched)],
            "arrays": [values, bits, touched],  # heap arrays live throughout the nest
            "start": first_scatter,
        }

    def _choose_parallel(self, shape):
        want = self.opt.parallel
        if want is None or self.gemms:
            return None  # with a matrix product, BLAS's own threads do the bulk of the work
        if not self.outer:
            if want == "auto":
                return None
            raise ScheduleError(f"parallelize({want!r}): the output {self.lhs.tensor.name} has no loop to "
                                "split; iterations of a reduction into one value would race")
        first = self.outer[0]
        if want != "auto" and want != first.name:
            raise ScheduleError(f"parallelize({want!r}): only the outermost loop ({first.name}) can run "
                                "on threads; reorder it first")
        if self.opt.parallel_kind in TEAM_MEMBERS and shape != "dense":
            if want == "auto":
                return None
            raise ScheduleError(
                f"parallelize({first.name!r}, {self.opt.parallel_kind!r}): the {shape} output "
                f"{self.lhs.tensor.name} is appended to one entry at a time per row, which a team of "
                "GPU threads would race on; use 'gpu-thread' (a thread per row)")
        if isinstance(first, SplitPiece) and self.opt.parallel_kind != "threads":
            if want == "auto":
                return None
            raise ScheduleError(f"parallelize({first.name!r}, {self.opt.parallel_kind!r}): a piece of a split "
                                "loop runs on CPU threads only")
        ok, why = self._parallel_ok(split_mod.base_of(first), shape)
        if not ok:
            if want == "auto":
                return None
            raise ScheduleError(f"parallelize({first.name!r}) is not safe: {why}")
        return first

    def _gpu_atomics(self) -> bool:
        """Whether a parallel loop over a reduction index may add into the output with
        atomics: on a GPU backend, into a dense output."""
        return (self.opt.parallel is not None and self.opt.parallel_kind != "threads"
                and self.lhs.tensor.format.is_dense)

    def _parallel_ok(self, i, shape):
        if i not in self.lhs.indices and not (shape == "dense" and self._gpu_atomics()):
            return False, (f"{i.name} is a reduction index: iterations would race on the output "
                           f"{self.lhs.tensor.name} (only the GPU backends add into a dense output with "
                           "atomics); keep this loop sequential")
        if shape in ("csf", "coo"):
            from .assembly import splittable
            ok, why = splittable(self, i, shape)
            if not ok:
                return False, why
        if shape == "packed" and access_chain(self.lhs)[0] != i:
            return False, "packed output rows must be split by the outer index"
        L = self._probe_lattice(i)
        if (not L.full or L.points) and self._top_positions(i, shape) is None:
            return False, f"loop {i.name} co-iterates sparse operands"
        return True, ""

    @property
    def parallel_positions(self):
        """``(access, 0)`` when the threads split a top compressed level's positions
        instead of rows (see :meth:`_top_positions`), else None."""
        if self.parallel is None:
            return None
        return self._top_positions(split_mod.base_of(self.parallel), self.out_shape)

    def _probe_lattice(self, i):
        """The lattice of loop ``i`` at the top of the nest (nothing bound yet)."""
        return lat.build(self.expr, i, lambda a: self._probe_key(a, i) if i in a.indices else None)

    def _top_positions(self, i, shape):
        """``(access, 0)`` when the outer loop over ``i`` walks one operand's top
        compressed level and nothing else (a DCSR or CSF operand, no co-iteration):
        its positions can be split over CPU threads like rows, since a unique level
        gives every position its own coordinate and so its own rows of a dense
        output. None otherwise."""
        if shape != "dense" or self.opt.parallel_kind != "threads":
            return None
        L = self._probe_lattice(i)
        if L.full or len(L.points) != 1:
            return None
        (point,) = L.points
        if len(point) != 1:
            return None
        acc, level = next(iter(point))
        kind = acc.tensor.format.levels[level]
        if level != 0 or not isinstance(kind, Compressed) or not kind.unique:
            return None
        return acc, level

    def _balance(self):
        """A pos array whose prefix sums measure the work of the parallel loop."""
        if self.parallel is None:
            return None
        i = self.parallel
        walked = self.parallel_positions
        for acc in accesses(self.rhs):
            fmt = acc.tensor.format
            chain = access_chain(acc)
            if fmt.is_dense or chain[0] != i or len(chain) < 2:
                continue
            top_walked = walked is not None and walked[0] is acc
            if (fmt.levels[0].is_dense or top_walked) and "pos" in fmt.levels[1].arrays:
                return (acc.tensor.name, 1)  # indexed like the parallel loop: rows, or top positions
        return None

    def _work_scale(self, balance):
        """The compressed levels, as (storage, level), that the loops nested inside
        the balanced level's loop (``balance``, from :meth:`_balance`) walk: the
        runtime multiplies a balanced nonzero's work by their mean segment lengths
        to decide whether a call is worth splitting (SpGEMM's nonzero of A walks a
        row of B). Nested dense loops are :meth:`_work_dense`."""
        scale = []
        for idx in self._loops_under(balance):
            for a in accesses(self.rhs):
                chain = access_chain(a)
                if idx in chain and a.tensor.format.levels:
                    l = chain.index(idx)
                    if l > 0 and "pos" in a.tensor.format.levels[l].arrays:
                        scale.append((a.tensor.name, l))
                        break
        return tuple(scale)

    def _work_dense(self, balance):
        """Names of the indices nested inside the balanced level's loop that no operand
        stores sparsely: dense loops (SpMM's k, MTTKRP's j), whose sizes the runtime
        weighs into a balanced nonzero's work. A loop that merges a sparse level with
        a dense one runs densely but is left out: the estimate stays on the low side."""
        def stored_sparsely(idx):
            for a in accesses(self.rhs):
                chain, levels = access_chain(a), a.tensor.format.levels
                if idx in chain and not levels[chain.index(idx)].is_dense:
                    return True
            return False
        return tuple(idx.name for idx in self._loops_under(balance) if not stored_sparsely(idx))

    def _loops_under(self, balance) -> list:
        """The loop order's indices nested inside the loop over the balanced level."""
        if balance is None:
            return []
        name, level = balance
        acc = next(a for a in accesses(self.rhs) if a.tensor.name == name)
        return self.loop_order[self.position[access_chain(acc)[level]] + 1:]

    # ============================================================ the nest
    def nest(self, order, expr, sink, env: Env, depth: int) -> list:
        stmts, expr = self.hoist(expr, env, depth)
        if expr == ZERO:
            return stmts
        if not order:
            self._note(depth, f"{sink_label(sink, self)} {expr!r}")
            return stmts + sink.innermost(self.value(expr, env), env)
        i = order[0]
        if self.workspace and sink is self.out_sink and self.position[i] == self.workspace["start"]:
            return stmts + self.workspace_region(order, expr, env, depth)
        return stmts + self.loop(i, order[1:], expr, sink, env, depth)

    def hoist(self, expr, env, depth):
        """Compute every sum whose free indices are bound into a temporary."""
        stmts = []
        for s in nested_sums(expr):
            if not free_indices(s) <= set(env.bound):
                continue
            idx, body = split_sums(s)
            t = n.Var(self.fresh("t" + "".join(i.name for i in idx)), self.compute)
            tv = TensorVar(t.name, 0, TEMP_FORMAT, "float64")
            self._temps = self._temp_tensors() | {tv}
            env.temps[tv] = t
            inner = sorted(idx, key=lambda x: self.position[x])
            if self.split_pieces:
                inner = split_mod.restrict(self.loop_order, inner)
            self._note(depth, f"{t.name} = {s!r}")
            stmts.append(n.Comment(f"{t.name} = {s!r}"))
            stmts.append(n.Declare(t, n.const(0, self.compute)))
            stmts += self.nest(inner, body, ScalarSink(t), env.child(), depth + 1)
            expr = replace(expr, s, Access(tv, ()))
        return stmts, expr

    def workspace_region(self, order, expr, env, depth):
        w = self.workspace
        c = w["count"]
        last = w["index"]
        self._note(depth, f"workspace over {last.name}:")
        stmts = [n.Declare(c, n.i64(0))]
        symbolic = getattr(self.out_sink, "symbolic", False)  # a count phase needs no values
        inner = WorkspaceSink(None if symbolic else w["values"], w["bits"], w["touched"], c, last)
        stmts += self.nest(order, expr, inner, env.child(), depth + 1)
        # drain in coordinate order: scan the bitmap when it is short enough for the
        # number of touched coordinates, else sort the touched list
        value = n.Var(self.fresh("v"), self.compute)

        def drain(coord):
            drain_env = env.child()
            drain_env.bound[last] = coord
            body = [n.Declare(value, n.Load(w["values"], coord)),
                    n.Store(w["values"], coord, n.const(0, self.compute))] if not symbolic else []
            body += self.out_sink.enter(last, drain_env)
            body += self.out_sink.innermost(value, drain_env)
            body += self.out_sink.exit(last, drain_env)
            return body

        def from_list(clear_bits=True):
            t = n.Var(self.fresh("k"), I64)
            coord = n.Var(self.fresh(last.name), I64)
            clear = [n.Store(w["bits"], n.Binary(">>", coord, n.i64(6)), n.i64(0))] if clear_bits else []
            return n.For(t, n.i64(0), c, n.block(
                n.Declare(coord, n.Load(w["touched"], t)),
                *clear,  # its whole word: all drained
                *drain(coord)))
        stmts += self.out_sink.reserve(last, c)  # the drain appends at most the touched count
        if not self.lhs.tensor.format.levels[-1].ordered or getattr(self.out_sink, "order_free", False):
            # an unordered output level takes the coordinates as they were touched
            self._note(depth, f"append the workspace's {last.name} as touched (unordered output)")
            stmts.append(from_list())
            self.out_sink.release(last)
            return stmts
        by_scan = n.block(*self._bitmap_to_list(w), from_list(clear_bits=False))
        by_sort = n.block(n.Sort(w["touched"], n.i64(0), c), from_list())
        self.out_sink.release(last)
        short_enough = n.Binary("<=", w["words"], n.Binary("*", c, n.i64(SCAN_WORDS)))
        self._note(depth, f"append the workspace's {last.name} in order")
        stmts.append(n.If(short_enough, by_scan, by_sort))
        return stmts

    def _bitmap_to_list(self, w) -> list:
        """Refill the touched list in coordinate order from the bitmap, clearing it.

        Each word's first BITS_PER_STEP set bits are written without a test (a zero
        word writes coordinate ``base + 64`` into slots the next word or the end of
        the list overwrites: the list has BITS_PER_STEP spare slots), then a loop
        takes any further ones; the list advances by the word's popcount. The
        loop that took one bit per iteration, with a branch per bit and per word,
        mispredicted on most words of a sparse row (a word holds ~1.3 touched
        columns in the SpGEMM benchmark): hand-written C of both, 4.35 vs 3.40 ms."""
        word_at, word, at, filled, base = (n.Var(self.fresh(x), I64)
                                           for x in ("word_at", "word", "at", "filled", "base"))
        one = n.i64(1)

        def take_lowest():  # touched[at] = base + ctz(word); drop that bit; at += 1
            return [n.Store(w["touched"], at, n.Binary("+", base, n.Call("ctz", (word,), I64))),
                    n.Assign(word, n.Call("clear_lowest", (word,), I64)),
                    n.Assign(at, n.Binary("+", at, one))]
        step = [s for _ in range(BITS_PER_STEP) for s in take_lowest()]
        return [n.Comment(f"the touched {w['index'].name} in order: the bitmap's set bits, word by word"),
                n.Declare(filled, n.i64(0)),
                n.For(word_at, n.i64(0), w["words"], n.block(
                    n.Declare(word, n.Load(w["bits"], word_at)),
                    n.Store(w["bits"], word_at, n.i64(0)),
                    n.Declare(at, filled),
                    n.Assign(filled, n.Binary("+", filled, n.Call("popcount", (word,), I64))),
                    n.Declare(base, n.Binary("*", word_at, n.i64(64))),
                    *step,
                    n.While(n.Binary("!=", word, n.i64(0)), n.block(*take_lowest()))))]

    # --------------------------------------------------------------- loops
    def _level_of(self, acc, i):
        chain = access_chain(acc)
        return chain.index(i)

    def _iter_key(self, acc, i, env):
        """Iterator key for acc's level that stores i, or None when located."""
        fmt = acc.tensor.format
        if fmt.is_dense or acc.tensor in self._temp_tensors() or i not in acc.indices:
            return None
        l = self._level_of(acc, i)
        kind = fmt.levels[l]
        if kind.locatable:
            return None
        return (acc, l)

    def _level_access(self, acc, l, env) -> LevelAccess:
        t = acc.tensor
        p = self.params[t.name]
        kind = t.format.levels[l]
        chain = access_chain(acc)
        if l == 0:
            parent, parent_unique = PosInfo(n.i64(0)), True
        else:
            if (acc, l - 1) not in env.pos:
                raise UnsupportedError(f"internal: {acc!r} level {l + 1} reached before its parent")
            parent = env.pos[(acc, l - 1)]
            parent_unique = t.format.levels[l - 1].unique
        return LevelAccess(name=f"{t.name}{l + 1}", kind=kind, arrays=p.levels[l],
                           dim=self.sizes[chain[l]], parent=parent, parent_unique=parent_unique)

    def _locates(self, i, expr, env, coord):
        """Positions of dense levels that store ``i`` under a bound parent."""
        stmts = []
        for acc in dict.fromkeys(accesses(expr)):
            fmt = acc.tensor.format
            if fmt.is_dense or acc.tensor in self._temp_tensors() or i not in acc.indices:
                continue
            l = self._level_of(acc, i)
            kind = fmt.levels[l]
            if not kind.locatable or (acc, l) in env.pos:
                continue
            if l > 0 and (acc, l - 1) not in env.pos:
                continue
            la = self._level_access(acc, l, env)
            info = kind.locate(la, coord)
            var = n.Var(self.fresh(f"p{acc.tensor.name}{l + 1}"), I64)
            stmts.append(n.Declare(var, info.pos))
            env.pos[(acc, l)] = PosInfo(var)
        return stmts

    def _body(self, i, rest, expr, sink, env, coord, depth, present=None):
        env.bound[i] = coord
        stmts = self._locates(i, expr, env, coord)
        stmts += sink.enter(i, env)
        stmts += self.nest(rest, expr, sink, env, depth + 1)
        stmts += sink.exit(i, env)
        return stmts

    def loop(self, i, rest, expr, sink, env, depth) -> list:
        if isinstance(i, SplitPiece):
            return self._split_loop(i, rest, expr, sink, env, depth)
        L = lat.build(expr, i, lambda a: self._iter_key(a, i, env))
        if L.empty:
            return []
        keys = sorted(L.iterators(), key=lambda k: (k[0].tensor.name, repr(k[0]), k[1]))
        iters = {}
        for k in keys:
            acc, l = k
            la = self._level_access(acc, l, env)
            iters[k] = la.kind.iterator(la, self.fresh)
        size = self.sizes[i]
        parallel = self.parallel is not None and i == self.parallel and depth == 0
        # --- one sparse iterator, nothing else
        if not L.full and len(keys) == 1:
            k = keys[0]
            it = iters[k]
            coord = n.Var(self.fresh(i.name), I64)
            self._note(depth, f"for {i.name} in {k[0].tensor.name} level {k[1] + 1} ({k[0].tensor.format.levels[k[1]].spec()})"
                              + (f" (parallel: {self.opt.parallel_kind}, by positions)" if parallel else ""))

            member = self._member(i, sink, env)

            def body(info, k=k):
                e = env.child()
                e.pos[k] = info
                if member:
                    e.team = None
                return self._body(i, rest, expr, sink, e, coord, depth)
            grow = [] if parallel else self._reserve(i, rest, sink, it.segment_length())
            loop = it.loop(coord, body)
            sink.release(i)
            self._note_position_end(loop, k)
            if parallel:  # threads take ranges of the level's positions (_top_positions)
                assert len(loop) == 1 and isinstance(loop[0], n.For), "a unique compressed level loops with For"
                loop = [dataclasses.replace(loop[0], start=self.lo, end=self.hi, parallel=self.opt.parallel_kind)]
            loop = self._vector_hint(loop, sink, rest, gathers=self._gathers(expr, k[0], i))
            loop = self._user_hints(loop, i)
            if member:
                loop = self._mark_member(loop, member)
            return [*grow, n.Comment(f"loop over {i.name}: {k[0]!r} level {k[1] + 1}"), *loop]
        # --- the whole dimension
        if L.full:
            coord = n.Var(self.fresh(i.name), I64)
            start, end = (self.lo, self.hi) if parallel else (n.i64(0), size)
            kind = self.opt.parallel_kind
            where = f"0..{size.name}" + (f" (parallel: {kind})" if parallel else "")
            if not keys:
                self._note(depth, f"for {i.name} in {where}")
                inner = env.child()
                if parallel and kind in TEAM_MEMBERS and self.out_shape == "dense":
                    inner.team = TEAM_MEMBERS[kind]
                member = self._member(i, sink, env)
                if member:
                    inner.team = None
                grow = [] if parallel else self._reserve(i, rest, sink, size)
                body = self._body(i, rest, expr, sink, inner, coord, depth)
                sink.release(i)
                loop = [n.For(coord, start, end, n.block(*body),
                              parallel=kind if parallel else member)]
                return grow + self._user_hints(self._vector_hint(loop, sink, rest), i)
            for k in keys:
                self._require_ordered(k, i)
            self._note(depth, f"for {i.name} in {where}, co-iterating "
                              + ", ".join(f"{k[0].tensor.name} level {k[1] + 1}" for k in keys))
            pre = [] if parallel else self._reserve(i, rest, sink, size)
            matches = {}
            loop_body = []
            for k in keys:
                it = iters[k]
                pre += it.init()
                c = n.Var(self.fresh(f"{i.name}{k[0].tensor.name}"), I64)
                m = n.Var(self.fresh(f"at_{k[0].tensor.name}{k[1] + 1}"), BOOL)
                loop_body += [n.Declare(c, size), n.If(it.valid(), n.block(*it.load(c))),
                              n.Declare(m, n.Binary("==", c, coord))]
                matches[k] = m
            loop_body += self._cases(i, rest, expr, sink, env, coord, depth, L, keys, iters, matches,
                                     with_full=True)
            sink.release(i)
            for k in keys:
                loop_body.append(n.If(matches[k], n.block(*iters[k].advance())))
            return [*pre, n.For(coord, n.i64(0), size, n.block(*loop_body))]
        # --- co-iteration: one while loop per lattice point
        for k in keys:
            self._require_ordered(k, i)
        stmts = []
        for k in keys:
            stmts += iters[k].init()
        lengths = [iters[k].remaining() for k in keys]
        if None not in lengths:  # each iteration advances one iterator at least
            bound = lengths[0]
            for length in lengths[1:]:
                bound = n.Binary("+", bound, length)
            stmts += self._reserve(i, rest, sink, bound)
        self._note(depth, f"co-iterate {i.name} over " + " | ".join(
            "∩".join(f"{k[0].tensor.name}{k[1] + 1}" for k in sorted(p, key=repr)) for p in L.ordered_points()))
        for point in L.ordered_points():
            pkeys = [k for k in keys if k in point]
            # operands outside this point are exhausted: they count as zero
            exhausted = {k[0] for k in keys if k not in point}
            point_expr = specialize(expr, exhausted)
            if len(pkeys) == 1:
                stmts.append(self._remainder(i, rest, point_expr, sink, env, depth, pkeys[0], iters[pkeys[0]]))
                continue
            coord = n.Var(self.fresh(i.name), I64)
            body = []
            cvars = {}
            for k in pkeys:
                c = n.Var(self.fresh(f"{i.name}{k[0].tensor.name}"), I64)
                body += [n.Declare(c), *iters[k].load(c)]
                cvars[k] = c
            mn = None
            for k in pkeys:
                mn = cvars[k] if mn is None else n.Binary("min", mn, cvars[k])
            body.append(n.Declare(coord, mn))
            matches = {}
            for k in pkeys:
                m = n.Var(self.fresh(f"at_{k[0].tensor.name}{k[1] + 1}"), BOOL)
                body.append(n.Declare(m, n.Binary("==", cvars[k], coord)))
                matches[k] = m
            sub = lat.Lattice(frozenset(p for p in L.points if p <= point), False)
            body += self._cases(i, rest, point_expr, sink, env, coord, depth, sub, pkeys, iters, matches,
                                with_full=False)
            for k in pkeys:
                body.append(n.If(matches[k], n.block(*iters[k].advance())))
            cond = None
            for k in pkeys:
                v = iters[k].valid()
                cond = v if cond is None else n.Binary("&&", cond, v)
            stmts.append(n.While(cond, n.block(*body)))
        sink.release(i)
        return stmts

    @staticmethod
    def _reserve(i, rest, sink, bound) -> list:
        """The sink's room for the appends of the loop over ``i`` when it is the
        innermost loop (each iteration then appends at most once)."""
        if rest or bound is None:
            return []
        return sink.reserve(i, bound)

    # ---------------------------------------------------------------- split
    def _check_splits(self, lhs, rhs):
        """Refuse splits that cannot apply; the user order in base indices."""
        self.split_pieces = {}
        if not self.opt.split:
            return self.opt.order
        names = {i.name for acc in [lhs] + accesses(rhs) for i in acc.indices}
        split_mod.check(self.opt.split, names, lhs.tensor.format.is_dense)
        return split_mod.order_for_graph(self.opt.order, self.opt.split)

    def _choose_order(self, lhs, rhs, user_order):
        """choose_order, with a refused reorder explained in terms of split pieces."""
        try:
            return choose_order(lhs, rhs, user_order)
        except ScheduleError as e:
            if not self.opt.split:
                raise
            pieces = ", ".join(f"{b} runs where the later of {o}, {i} runs" for b, o, i, _f in self.opt.split)
            raise ScheduleError(f"{e} (the schedule splits loops: {pieces})") from None

    def _expand_splits(self, order):
        """Put the pieces of split indices into the loop order and the outer loops."""
        self.loop_order = list(order)
        if not self.opt.split:
            return
        self.split_pieces = split_mod.pieces(self.opt.split, order)
        self.loop_order = split_mod.expand(order, self.split_pieces, self.opt.order)
        split_mod.check_reductions_adjacent(self.loop_order, set(order) - set(self.lhs.indices))
        self.outer = split_mod.restrict(self.loop_order, self.outer)

    def _split_loop(self, piece, rest, expr, sink, env, depth) -> list:
        """One piece of a split loop; the second binds ``i = i0*f + i1``."""
        base = piece.base
        L = lat.build(expr, base, lambda a: self._iter_key(a, base, env))
        if L.empty:
            return []
        keys = sorted(L.iterators(), key=repr)
        if keys or not L.full:
            acc, l = keys[0]
            raise ScheduleError(
                f"split({base.name!r}, ...): the loop over {base.name} walks {self._user_name(acc.tensor.name)}'s "
                f"level {l + 1} ({acc.tensor.format.levels[l].spec()}); only dense loops can be split")
        parallel = self.parallel is not None and piece == self.parallel and depth == 0
        second = split_mod.bound_partner(piece, env.bound)
        start, end = n.i64(0), split_mod.extent(piece, self.sizes[base], env.bound)
        self._note(depth, f"for {piece.name} in {split_mod.describe(piece, second)}"
                          + (f" (parallel: {self.opt.parallel_kind})" if parallel else ""))
        if parallel:
            start, end = self.lo, self.hi
        var = n.Var(self.fresh(piece.name), I64)
        inner = env.child()
        split_mod.bind(piece, var, inner.bound)
        if second:
            coord = n.Var(self.fresh(base.name), I64)
            body = [n.Declare(coord, split_mod.coordinate(piece, var, env.bound))]
            body += self._body(base, rest, expr, sink, inner, coord, depth)
        else:
            body = self.nest(rest, expr, sink, inner, depth + 1)
        loop = [n.For(var, start, end, n.block(*body), parallel=self.opt.parallel_kind if parallel else None)]
        if second:
            loop = self._vector_hint(loop, sink, rest)
        return self._user_hints(loop, piece)

    def _remainder(self, i, rest, expr, sink, env, depth, k, it):
        """The tail of a merge where one iterator is left: walk it to its end."""
        coord = n.Var(self.fresh(i.name), I64)
        e = env.child()
        e.pos[k] = it.position()
        body = [n.Declare(coord), *it.load(coord)]
        if expr != ZERO:
            body += self._body(i, rest, expr, sink, e, coord, depth)
        body += it.advance()
        return n.While(it.valid(), n.block(*body))

    def _member(self, i, sink, env):
        """Inside a GPU team loop (a block or warp per iteration), the first loop
        whose iterations are independent is split among the team: a reduction
        into a temporary, or a loop over an index of the dense output."""
        if env.team is None:
            return None
        if isinstance(sink, ScalarSink) or (isinstance(sink, DenseSink) and i in self.lhs.indices):
            return env.team
        return None

    def _mark_member(self, stmts, member):
        out, done = [], False
        for s in stmts:
            if not done and isinstance(s, n.For):
                s = dataclasses.replace(s, parallel=member, vectorize=0)
                done = True
            out.append(s)
        return out

    def _user_hints(self, stmts, i):
        """Schedule.vectorize / unroll: hints on the loop over ``i``."""
        vec = dict(self.opt.vectorize).get(i.name)
        unr = dict(self.opt.unroll).get(i.name)
        if vec is None and unr is None:
            return stmts
        out, done = [], False
        for s in stmts:
            if not done and isinstance(s, n.For):
                s = dataclasses.replace(s, vectorize=s.vectorize if vec is None else (vec or 8),
                                        unroll=s.unroll if unr is None else unr)
                done = True
            out.append(s)
        return out

    @staticmethod
    def _gathers(expr, iterated, i) -> bool:
        """Whether a loop over ``iterated``'s stored coordinates of ``i`` reads another
        operand at those coordinates: an indirect load per entry (SpMV's ``x[j]``)."""
        return any(i in acc.indices for acc in accesses(expr) if acc is not iterated)

    def _vector_hint(self, stmts, sink, rest, gathers=False):
        """Let the innermost loop of a reduction be vectorised: the hint allows
        LLVM to reassociate the float sum (deterministic for a given kernel).

        A loop that gathers (SpMV's ``x[crd[p]]``) runs 8 lanes with its last partial
        vector masked: its trip count is a row's length, often below LLVM's unrolled
        vector body (32 entries), whose scalar remainder loop then did all the work.
        Masked, a 20-entry row is three vector iterations (float64 SpMV 1.06x -> 1.35x
        SciPy on one thread of an AVX-512 Xeon; docs/performance.md). Where the CPU's
        gather instructions are slow (AMD Zen: ``vector_gathers`` off) such a loop
        gets no hint and stays a scalar loop, which measured fastest there (float64
        SpMV 1.05x SciPy against 0.6-0.8x for every vector form on a Zen 4)."""
        if rest or not isinstance(sink, ScalarSink):
            return stmts
        if gathers and not self.opt.vector_gathers:
            return stmts
        width = 8 if gathers or self.compute == F32 else 4
        out = []
        for s in stmts:
            if isinstance(s, n.For) and not any(isinstance(x, (n.For, n.While)) for x in s.body.body):
                s = dataclasses.replace(s, vectorize=width, masked_tail=gathers)
            out.append(s)
        return out

    def _user_name(self, tensor_name: str) -> str:
        if tensor_name in self.transposes:
            return self.transposes[tensor_name][0]
        return tensor_name

    def _require_ordered(self, k, i):
        acc, l = k
        kind = acc.tensor.format.levels[l]
        if not kind.ordered:
            name = self._user_name(acc.tensor.name)
            raise UnsupportedError(
                f"loop {i.name} must merge {name}'s level {l + 1} ({kind.spec()}) with other operands, "
                f"but that level is unordered; store {name} with ordered levels "
                f"(e.g. {kind.spec().replace(',unordered', '').replace('(unordered)', '')})")

    def _cases(self, i, rest, expr, sink, env, coord, depth, L, keys, iters, matches, with_full):
        """An if/else chain over the lattice points, each with its sub-expression."""
        all_accs = {k[0] for k in keys}
        branches = []
        for point in L.ordered_points():
            present = {k[0] for k in point}
            absent = {a for a in all_accs if a not in present}
            sub = specialize(expr, absent)
            if sub == ZERO:
                continue
            cond = None
            for k in keys:
                if k in point:
                    cond = matches[k] if cond is None else n.Binary("&&", cond, matches[k])
            e = env.child()
            for k in point:
                e.pos[k] = iters[k].position()
            body = self._body(i, rest, sub, sink, e, coord, depth)
            branches.append((cond, body))
        otherwise = None
        if with_full and L.full:
            sub = specialize(expr, all_accs)
            if sub != ZERO:
                otherwise = self._body(i, rest, sub, sink, env.child(), coord, depth)
        # build the chain from the end
        tail = n.block(*otherwise) if otherwise else None
        for cond, body in reversed(branches):
            tail = n.block(n.If(cond, n.block(*body), tail))
        return list(tail.body) if tail is not None else []

    # --------------------------------------------------------------- values
    def value(self, e, env):
        ct = self.compute
        if isinstance(e, Access):
            if e.tensor in env.temps:
                return env.temps[e.tensor]
            return self._load(e, env)
        if isinstance(e, Literal):
            return n.const(e.value, ct)
        if isinstance(e, Neg):
            return n.Unary("-", self.value(e.operand, env))
        if isinstance(e, (Add, Sub, Mul, Div)):
            op = {Add: "+", Sub: "-", Mul: "*", Div: "/"}[type(e)]
            return n.Binary(op, self.value(e.lhs, env), self.value(e.rhs, env))
        if isinstance(e, Call):
            args = [self.value(x, env) for x in e.args]
            return self._call(e.func, args)
        if isinstance(e, Sum):
            raise UnsupportedError(f"internal: sum {e!r} reached the innermost loop unevaluated")
        raise TypeError(e)

    def _call(self, func, args):
        ct = self.compute
        x = args[0]
        c = lambda v: n.const(v, ct)  # noqa: E731
        if func == "relu":
            return n.Binary("max", x, c(0))
        if func in ("max", "min"):
            return n.Binary(func, args[0], args[1])
        if func == "gelu":
            return n.Binary("*", n.Binary("*", c(0.5), x),
                            n.Binary("+", c(1), n.Call("erf", (n.Binary("*", x, c(0.7071067811865476)),), ct)))
        if func == "silu":
            return n.Binary("/", x, n.Binary("+", c(1), n.Call("exp", (n.Unary("-", x),), ct)))
        return n.Call(func, (x,), ct)

    def _load(self, acc, env):
        t = acc.tensor
        p = self.params[t.name]
        fmt = t.format
        if fmt.is_dense:
            lin = None
            for d in fmt.order:
                i = acc.indices[d]
                cv = env.bound[i]
                lin = cv if lin is None else n.Binary("+", n.Binary("*", lin, self.sizes[i]), cv)
            pos = lin if lin is not None else n.i64(0)
        else:
            last = len(fmt.levels) - 1
            pos = env.pos[(acc, last)].pos
        v = n.Load(p.vals, pos)
        return n.Cast(v, self.compute) if v.type != self.compute else v

    def dense_positions(self, indices):
        """Number of positions of dense levels over ``indices``: the product of sizes."""
        out = n.i64(1)
        for i in indices:
            out = self.sizes[i] if out == n.i64(1) else n.Binary("*", out, self.sizes[i])
        return out

    # ------------------------------------------------------------- printing
    def _note(self, depth, text):
        self.loops_text.append("  " * depth + text)


def sink_label(sink, lw) -> str:
    if isinstance(sink, ScalarSink):
        return f"{sink.var.name} +="
    if isinstance(sink, WorkspaceSink):
        return f"workspace[{sink.index.name}] +="
    lhs = lw.lhs
    op = "+=" if (lw.accumulate or lw.scatter) and isinstance(sink, DenseSink) else "="
    if isinstance(sink, AppendSink):
        op = "append"
    return f"{lhs!r} {op}"


def lower(assignment: Assignment, options: Options | None = None) -> Lowered:
    return Lowerer(assignment, options).run()
