"""Two-phase assembly of a sparse output whose rows are split among threads.

An output whose first level is dense and whose other levels are unique
compressed ones (csr, dense-then-csf) can be assembled in parallel over its
rows, the way TACO and MLIR's sparsifier do it:

1. ``NAME_count(lo, hi, ...)`` runs the loop nest once and stores, for every
   output row (dense position ``q``), how many entries each compressed level
   gets under it, at ``count[q + 1]``;
2. the runtime turns the counts into row starts by an exclusive prefix sum (in
   place: level 1's counts become the output's ``pos``) and allocates the
   coordinate and value arrays at their exact sizes;
3. ``NAME_fill(lo, hi, ...)`` runs the nest again and writes each row's entries
   from its row start on.

Rows never share a position, so any split of ``[lo, hi)`` among CPU threads or
GPU threads gives the same arrays bit for bit. Workspaces (SpGEMM's dense row)
are allocated in each function's prologue, which runs once per thread (CPU: one
call per chunk; CUDA: kernel level is per thread).

The one-pass :class:`~.outputs.AppendSink` stays for everything else (COO and
packed outputs, a sparse first level, serial kernels).
"""
from __future__ import annotations

from dataclasses import dataclass

from ..ir import nodes as n
from ..ir.build import add
from ..ir.types import I64, ptr
from .context import Binding, level_array_type
from .outputs import AppendSink, applies, dense_prefix
from .parallel import choose_parallel
from .polls import poll_outer_loops
from .prefetch import prefetch_rows
from .zeroskip import skip_zero_blocks

ROW_POS = "row_pos"  # binding role / array name: per-row starts of a lower level


@dataclass
class TwoPhase:
    """What the runtime needs to run a two-phase kernel (kept in ``Lowered.assembly``)."""
    count: str            # name of the counting function
    fill: str             # name of the filling function
    count_bindings: list  # its parameters' bindings (the fill's are Lowered.bindings)
    first: int            # the first compressed level (= number of leading dense levels)


def plan(lw):
    """A two-phase ``Lowered`` when the output fits and its row loop is parallel, else None."""
    fmt = lw.lhs.tensor.format
    if lw.opt.parallel is None or not applies(fmt):
        return None
    lw.out_shape = "csf"
    if lw.scatter:
        lw.workspace = lw.make_workspace()
    else:
        lw.workspace = None
    parallel = choose_parallel(lw.facts(), "csf")
    if parallel is None:
        lw.workspace = None
        return None
    lw.parallel = parallel
    return build(lw)


# ----------------------------------------------------------------- sinks

class _RowSink(AppendSink):
    """Shared by both phases: a counter per compressed level, set at the start of
    every output row (the last dense level), and the CSF commit of a parent
    entry when its child segment is non-empty."""

    counter_prefix = "p"
    order_free = False   # whether the workspace may be drained in any order

    def __init__(self, params, lhs, drop_zeros, fresh, sizes, index_limit=None):  # (no growth state)
        self.p = params
        self.index_limit = index_limit
        self.fresh = fresh
        self.sizes = sizes
        self.levels = lhs.tensor.format.levels
        self.chain = [lhs.indices[d] for d in lhs.tensor.format.order]
        self.drop = drop_zeros
        self.d = dense_prefix(lhs.tensor.format)
        self.shape = "csf"
        self.begins, self.grow_ptrs, self.out_params, self.caps = {}, {}, {}, {}
        self.overflow = None
        name = params.var_name
        self.counters = {l: n.Var(fresh(f"{self.counter_prefix}{name}{l + 1}"), I64)
                         for l in range(self.d, len(self.levels))}

    def prologue(self):
        return [n.Declare(c, n.i64(0)) for c in self.counters.values()]

    def epilogue(self):
        return []

    def reserve(self, index, bound):
        return []  # the arrays have their exact sizes (fill) or there are none (count)

    def release(self, index):
        pass

    def enter(self, index, env):
        out = super().enter(index, env)
        if self._level_of(index) == self.d - 1:
            out += self.row_start(env.pos[("out", self.d - 1)].pos)
        return out

    def row_start(self, q) -> list:
        raise NotImplementedError

    def commit(self, l, coord, p, child) -> list:
        raise NotImplementedError

    def exit(self, index, env):
        l = self._level_of(index)
        if l is None:
            return []
        if l == self.d - 1:
            return self.row_end(env.pos[("out", l)].pos)
        if self.d <= l < len(self.levels) - 1:
            child = self.counters[l + 1]
            begin = env.pos[("out_begin", l)]
            return [n.If(n.Binary(">", child, begin),
                         n.block(*self.commit(l, env.bound[index], self.counters[l], child)))]
        return []

    def row_end(self, q) -> list:
        return []


class CountSink(_RowSink):
    """Step 1 (``NAME_count``): count each row's entries per compressed level into ``count[q+1]``."""

    counter_prefix = "n"
    order_free = True

    @property
    def symbolic(self) -> bool:
        """Whether counting needs no values: only when computed zeros are kept."""
        return not self.drop

    def __init__(self, params, lhs, drop_zeros, fresh, sizes, counts: dict, index_limit=None):
        super().__init__(params, lhs, drop_zeros, fresh, sizes, index_limit)
        self.counts = counts  # level -> array parameter (level d's is the output pos)
        # the largest count a row got: one row past 32-bit positions wraps its count
        self.largest = n.Var(fresh(f"n{params.var_name}_largest"), I64) if index_limit is not None else None

    def prologue(self):
        return super().prologue() + ([n.Declare(self.largest, n.i64(0))] if self.largest is not None else [])

    def epilogue(self):
        return self.too_many_entries([self.largest] if self.largest is not None else [])

    def row_start(self, q):
        return [n.Assign(c, n.i64(0)) for c in self.counters.values()]

    def row_end(self, q):
        nxt = add(q, n.i64(1))
        out = [n.Store(arr, nxt, n.Cast(self.counters[l], arr.type.elem)) for l, arr in self.counts.items()]
        if self.largest is not None:
            out += [n.Assign(self.largest, n.Binary("max", self.largest, c)) for c in self.counters.values()]
        return out

    def commit(self, l, coord, p, child):
        return [n.Assign(p, add(p, n.i64(1)))]

    def innermost(self, value, env):
        if self.drop:
            return super().innermost(value, env)  # only nonzero values count
        return self._append(value, env)  # the value is not needed to count it

    def _append(self, value, env):
        p = self.counters[len(self.levels) - 1]
        return [n.Assign(p, add(p, n.i64(1)))]


class FillSink(_RowSink):
    """Step 3 (``NAME_fill``): write each row's entries from the row starts the scan produced."""

    def __init__(self, params, lhs, drop_zeros, fresh, sizes, starts: dict):
        super().__init__(params, lhs, drop_zeros, fresh, sizes)
        self.starts = starts  # level -> array of row starts (level d's is the output pos)

    def row_start(self, q):
        return [n.Assign(self.counters[l], n.Cast(n.Load(arr, q), I64)) for l, arr in self.starts.items()]

    def commit(self, l, coord, p, child):
        crd = self.p.array(l, "crd")
        pos = self.p.array(l + 1, "pos")
        return [n.Store(crd, p, n.Cast(coord, crd.type.elem)),
                n.Store(pos, add(p, n.i64(1)), n.Cast(child, pos.type.elem)),
                n.Assign(p, add(p, n.i64(1)))]

    def _append(self, value, env):
        from .outputs import store_value
        m = len(self.levels)
        p = self.counters[m - 1]
        crd = self.p.array(m - 1, "crd")
        return [n.Store(crd, p, n.Cast(env.bound[self.chain[-1]], crd.type.elem)),
                store_value(self.p.vals, p, value, False),
                n.Assign(p, add(p, n.i64(1)))]


# ----------------------------------------------------------------- build

def _drop(lw) -> bool:
    drop = lw.opt.drop_zeros
    return lw.output_loops_dense() if drop is None else drop


def _row_arrays(lw, out, d):
    """Per-row arrays of the levels below the first compressed one (``C3_row_pos``)."""
    arrays = {}
    for l in range(d + 1, len(out.levels)):
        et = level_array_type(lw.lhs.tensor.format.levels[l], "pos", lw.opt.index_bits)
        arrays[l] = n.Var(lw.fresh(f"{out.var_name}{l + 1}_{ROW_POS}"), ptr(et))
    return arrays


def build(lw, make_sinks=None):
    """The two functions and their Lowered record; ``make_sinks(lw, out, drop,
    per_row)`` gives other (count, fill) sinks (a position loop's: possparse.py)."""
    lhs = lw.lhs
    out = lw.params[lw.out_name]
    d = dense_prefix(lhs.tensor.format)
    name = lw.out_name
    drop = _drop(lw)
    lw.capacity_param = None
    lw.lo = n.Var(lw.fresh("lo"), I64)
    lw.hi = n.Var(lw.fresh("hi"), I64)
    front = [Binding(lw.lo, "lo"), Binding(lw.hi, "hi")]
    common = front + [b for b in lw.bindings if b.role in ("size", "input")]
    rows = _row_arrays(lw, out, d)
    pos_d = out.array(d, "pos")
    per_row = {d: pos_d, **rows}

    def out_binding(l, arr, var):
        return Binding(var, "output", name, l, arr, storage=name)

    count_bindings = common + [out_binding(d, "pos", pos_d)] + [
        Binding(v, ROW_POS, name, l, ROW_POS, storage=name) for l, v in rows.items()]
    fill_bindings = list(common)
    for l in range(d, len(out.levels)):
        if l in rows:
            fill_bindings.append(Binding(rows[l], ROW_POS, name, l, ROW_POS, storage=name))
        for arr, var in out.levels[l].items():
            fill_bindings.append(out_binding(l, arr, var))
    fill_bindings.append(out_binding(-1, "vals", out.vals))

    names = set(lw.fresh.used)  # both nests start from the same names: the functions read alike
    if make_sinks is None:
        count_sink = CountSink(out, lhs, drop, lw.fresh, lw.sizes, per_row, lw.opt.index_limit)
        fill_sink = FillSink(out, lhs, drop, lw.fresh, lw.sizes, per_row)
    else:
        count_sink, fill_sink = make_sinks(lw, out, drop, per_row)
    mark = len(lw.loops_text)
    count_body = _function_body(lw, count_sink, "count")
    del lw.loops_text[mark:]
    lw.fresh.used = set(names) | {c.name for c in fill_sink.counters.values()} | {
        c.name for c in count_sink.counters.values()}
    fill_body = _function_body(lw, fill_sink, "fill")
    lw.bindings = fill_bindings
    base = lw.opt.name
    doc = f"{lw.a!r}\nloop order: {', '.join(i.name for i in lw.order)}"
    count_fn = n.Function(f"{base}_count", tuple(b.var for b in count_bindings), n.block(*count_body),
                          doc=doc + f"\nphase 1 of 2: count {name}'s entries per row (the runtime scans the counts)")
    fill_fn = n.Function(f"{base}_fill", tuple(b.var for b in fill_bindings), n.block(*fill_body),
                         doc=doc + f"\nphase 2 of 2: write {name}'s entries from each row's start")
    module = n.Module((count_fn, fill_fn), entry=fill_fn.name)
    rows = "chunk's rows" if lw.pos_plan is not None else f"{lw.parallel.name} row"
    lw.loops_text.insert(mark, f"(two-phase assembly of {name}: {count_fn.name} counts each {rows}, "
                               f"a prefix sum gives the row starts, {fill_fn.name} writes the rows)")
    from ..notation import Assignment
    from .record import OutputPlan
    return lw.record(module, fill_fn.name, fill_bindings,
                     OutputPlan("csf", assembly=TwoPhase(count_fn.name, fill_fn.name, count_bindings, d),
                                index_limit=lw.opt.index_limit, drops_zeros=drop),
                     Assignment(lw.lhs, lw.rhs, lw.accumulate), list(lw.loops_text))


def _function_body(lw, sink, phase) -> list:
    from .context import Env
    lw.out_sink = sink
    body = [n.Comment(f"{lw.a!r}  ({phase} phase)"), *lw.block_sizes]
    body += sink.prologue()
    if lw.workspace:
        body += lw.workspace["prologue"]
    nest = lw.emit_nest(sink, Env())
    if phase == "fill" and lw.opt.caps.vector_units:  # the count phase reads no rows
        nest = prefetch_rows(nest, lw.position_ends, lw.fresh, lw.table_sizes())
    if lw.opt.caps.vector_units:
        nest = skip_zero_blocks(nest, lw.fresh)
    if lw.opt.caps.host_threads:  # Ctrl-C stops a long host call (polls.py)
        nest = poll_outer_loops(nest, lw.workspace["arrays"] if lw.workspace else [])
    body += nest
    if lw.workspace:
        body += lw.workspace["epilogue"]
    return body


__all__ = ["TwoPhase", "CountSink", "FillSink", "plan", "build", "ROW_POS"]
