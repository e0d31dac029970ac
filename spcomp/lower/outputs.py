"""Where a computed value goes: output assembly (DESIGN §5).

A *sink* receives events from the loop nest: ``enter``/``exit`` around the
body of each loop (with the loop's index bound) and ``innermost`` with the
value. Dense outputs are located; sparse outputs are appended in one pass
(compressed levels in CSF or COO shape, packed-block tiles with a count),
inserted through the levels' insert hooks when every level inserts (bitmaps), or
gathered in a workspace — a dense row plus the list of touched coordinates —
when a reduction loop runs outside the output's last index (Gustavson).
"""
from __future__ import annotations

from ..errors import UnsupportedError
from ..formats.level import PosInfo
from ..ir import nodes as n
from ..ir.build import add, mul
from ..ir.types import I32, I64


# entries a growable output's arrays start with at least, whatever the capacity asked
MIN_CAPACITY = 16




def store_value(vals, index, value, accumulate: bool):
    """``vals[index] (+)= value``, casting through the storage type."""
    t = vals.type.elem
    if accumulate:
        old = n.Load(vals, index)
        if old.type != value.type:
            old = n.Cast(old, value.type)
        value = n.Binary("+", old, value)
    if value.type != t:
        value = n.Cast(value, t)
    return n.Store(vals, index, value)


def dense_prefix(fmt) -> int:
    """How many dense levels the format starts with."""
    d = 0
    while d < len(fmt.levels) and fmt.levels[d].is_dense:
        d += 1
    return d


def assembled_format(fmt):
    """The format the kernel assembles an output of ``fmt`` in: ``fmt`` itself (also when
    every level inserts: ``db``, ``bb``, ``bd``), or,
    when a dense level sits below a sparse one (``cd``, ``dcd``, ``ccd``, ``cdc``),
    the same levels with each such dense level compressed (and any level whose
    ``assembled_as`` says so: bitmap, a packed-block level above others, as in blocked
    ELL). The runtime then expands
    the result to ``fmt`` (``runtime/convert.expand_output``): every stored parent
    position gets its whole dense sub-block, zero-filled where nothing was computed.
    The stand-in keeps the mode order and the coordinates' order, so the expansion
    is one pass without a sort."""
    if all(kind.inserts for kind in fmt.levels):
        return fmt  # every level inserts: the kernel writes each in place (AppendSink 'insert')
    d = dense_prefix(fmt)
    last = len(fmt.levels) - 1
    levels = tuple(kind.assembled_as(l > d, l < last) for l, kind in enumerate(fmt.levels))
    if levels == fmt.levels:
        return fmt
    from ..formats import Format
    return Format(levels, fmt.order, blocks=fmt.blocks)


def rows_first(fmt):
    """A stand-in for ``fmt`` whose first level is dense, for a fused run's function
    over chunks of rows (each chunk appends its rows; a compressed first level is
    appended on one thread): a dense level, then unique compressed ones (a 2-d dcsr
    or coo -> csr, csf -> ``dss``). None when ``fmt`` is not stored compressed first
    in mode order, or a level below is not compressed or singleton. The stand-in
    holds the same entries in the same order, so ``runtime/convert.repack_below``
    gives ``fmt`` back in one pass without a sort."""
    from ..formats import Format
    from ..formats.compressed import Compressed
    from ..formats.dense import Dense
    from ..formats.singleton import Singleton
    if (fmt.blocks is not None or fmt.ndim < 2 or fmt.order != tuple(range(fmt.ndim))
            or type(fmt.levels[0]) is not Compressed or not fmt.levels[0].ordered
            or any(type(l) not in (Compressed, Singleton) or not l.ordered for l in fmt.levels[1:])):
        return None
    return Format.csr() if fmt.ndim == 2 else Format((Dense(),) + (Compressed(),) * (fmt.ndim - 1))


def applies(fmt) -> bool:
    """Whether ``fmt`` is dense levels (at least one) then unique compressed ones."""
    d = dense_prefix(fmt)
    rest = fmt.levels[d:]
    return d >= 1 and bool(rest) and all(l.segmented and l.unique for l in rest)


def _refusal(sparse, d, shown) -> str:
    """Which stored level of an output cannot be appended to, and why (``shown``: the
    levels as the user wrote them, where the lowerer appends a stand-in)."""
    for k, kind in enumerate(sparse):
        l = d + k + 1  # levels are counted from 1 in messages
        spec = shown[k].spec()
        if not kind.unique and not (k == 0 and all(x.aligned_with_parent for x in sparse[1:])):
            return (f"level {l} ({spec}) is non-unique: a coordinate list is one non-unique "
                    "compressed level then singletons only")
        if kind.aligned_with_parent and not (k > 0 and not sparse[0].unique):
            return (f"level {l} ({spec}) is a singleton under a unique level: a singleton is "
                    "appended with its non-unique parent (coo) only")
        if not kind.ordered:
            return f"level {l} ({spec}) is unordered"
    return "its levels mix kinds that are not appended together"


class Sink:
    def prologue(self) -> list:
        return []

    def epilogue(self) -> list:
        return []

    def enter(self, index, env) -> list:
        return []

    def exit(self, index, env) -> list:
        return []

    def innermost(self, value, env) -> list:
        raise NotImplementedError

    def reserve(self, index, bound) -> list:
        """Statements, before the innermost loop over ``index`` runs, that make room
        for the at most ``bound`` entries it appends; its appends then skip their
        own check until :meth:`release`. [] where the sink has no room to make."""
        return []

    def release(self, index) -> None:
        """The loop over ``index`` is built: appends check their room again."""


class ScalarSink(Sink):
    """Accumulate into a scalar temporary (a reduction computed in place)."""

    def __init__(self, var: n.Var):
        self.var = var

    def innermost(self, value, env):
        return [n.Assign(self.var, n.Binary("+", self.var, value))]


class ReduceSink(Sink):
    """Fold into a scalar temporary with ``max`` or ``min`` (an explicit reduction),
    counting the coordinates folded: the emitter folds in one 0 for the coordinates
    the loops skipped (unstored entries of a sparse operand). Not a ScalarSink, so
    no GPU team splits it as a sum."""

    def __init__(self, var: n.Var, op: str, count: n.Var):
        self.var = var
        self.op = op
        self.count = count

    def innermost(self, value, env):
        return [n.Assign(self.var, n.Binary(self.op, self.var, value)),
                n.Assign(self.count, n.Binary("+", self.count, n.i64(1)))]


class DenseSink(Sink):
    """Insert into an output whose levels all insert (dense ones):
    ``out[position(i, j, ...)] (+)= value``, the position and any marks each level's
    (``Level.insert_position``, ``insert_coord``): ``i * N_j + j`` for dense rows."""

    def __init__(self, params, chain, sizes, accumulate: bool):
        self.vals = params.vals
        self.levels = params.tensor.format.levels
        self.arrays = params.levels  # per level: {array: Var}
        self.chain = chain        # output indices in storage order
        self.sizes = sizes        # IndexVar -> size var
        self.accumulate = accumulate

    def linear(self, env):
        return self._insert(env)[0]

    def _insert(self, env):
        """(the value's position, the levels' statements that mark it stored)."""
        pos, marks = None, []
        for level, arrays, i in zip(self.levels, self.arrays, self.chain):
            c = env.bound[i]
            pos = level.insert_position(pos, self.sizes[i], c)
            marks += level.insert_coord(arrays, pos, c)
        return (pos if pos is not None else n.i64(0)), marks

    #: set by the lowerer when a parallel reduction loop adds into the output (GPU):
    #: every update is an ``AtomicAdd``
    atomic = False

    def innermost(self, value, env):
        at, marks = self._insert(env)
        if self.atomic:
            t = self.vals.type.elem
            return [*marks, n.AtomicAdd(self.vals, at, value if value.type == t else n.Cast(value, t))]
        return [*marks, store_value(self.vals, at, value, self.accumulate)]


class AppendSink(Sink):
    """Assemble a sparse output while the loops walk it in order.

    Supported shapes: dense levels, then either compressed levels (CSR, DCSR,
    CSF), or one non-unique compressed level and singletons (COO), or one
    packed-block level (TwELL/ELL), or levels that all insert (a bitmap: each
    value placed and marked through the levels' insert hooks)."""

    def __init__(self, params, lhs, drop_zeros: bool, fresh, sizes, capacity=None, index_limit=None,
                 asked=None):
        self.p = params
        # the format the user asked for, when lhs carries its stand-in (assembled_format): for messages
        self.asked = asked or lhs.tensor.format
        # the most entries a count may reach before its 32-bit positions wrap (None: 64-bit)
        self.index_limit = index_limit
        self.fresh = fresh          # Names: fresh variable names
        self.sizes = sizes          # IndexVar -> size parameter
        self.capacity = capacity    # the parameter giving the first capacity of growable arrays
        # whether the rows are split over threads, each chunk counting from 0 (Options.append_chunks);
        # set once the lowerer has chosen the parallel loop
        self.rows_in_parallel = False
        fmt = lhs.tensor.format
        self.levels = fmt.levels
        self.chain = [lhs.indices[d] for d in fmt.order]
        self.drop = drop_zeros
        self.d = 0
        while self.d < len(self.levels) and self.levels[self.d].is_dense:
            self.d += 1
        self.shape = self._classify(lhs)
        self.counters = {}
        self.caps = {}
        self.begins = {}
        self.grow_ptrs = {}   # (level, array) -> local pointer var
        self.out_params = {}  # (level, array) -> out param var
        self.overflow = None
        self.needed = None     # Options.bounded_appends: where the kernel reports the entries it needed
        self.reserved = set()  # indices whose loop made room for its appends (reserve)
        self.meet = None       # meet.Meet: chunks of rows sharing the arrays, meeting in the middle
        m = len(self.levels)
        name = params.var_name
        if self.shape in ("csf", "coo"):
            groups = range(self.d, m) if self.shape == "csf" else [self.d]
            for l in groups:
                self.counters[l] = n.Var(fresh(f"p{name}{l + 1}"), I64)
                self.caps[l] = n.Var(fresh(f"{name}{l + 1}_capacity"), I64)
        if self.shape == "packed":
            self.overflow = n.Var(fresh(f"{name}_overflow"), I32)

    # ------------------------------------------------------------ shape
    def _classify(self, lhs) -> str:
        """How the stored levels are written, from what they can do: every level inserts
        ('insert': positions and marks from ``insert_position`` / ``insert_coord``), one
        level of fixed slots last ('packed', the level's ``append_entry``), unique
        segmented levels ('csf'), or a non-unique segmented level over levels aligned
        with it ('coo')."""
        sparse = self.levels[self.d:]
        name = lhs.tensor.name
        if not sparse:
            raise UnsupportedError("internal: AppendSink on a dense output")
        if all(l.inserts for l in sparse):
            return "insert"
        if any(l.is_dense for l in sparse):
            lv = self.d + [l.is_dense for l in sparse].index(True)
            raise UnsupportedError(
                f"internal: output {name}: the lowerer assembles a dense level (level {lv + 1}) below a "
                "sparse one through outputs.assembled_format, not in the sink")
        if len(sparse) == 1 and sparse[0].fixed_slots:
            return "packed"
        if all(l.segmented and l.unique for l in sparse):
            return "csf"
        if (sparse[0].segmented and not sparse[0].unique
                and all(l.aligned_with_parent for l in sparse[1:]) and len(sparse) > 1):
            return "coo"
        raise UnsupportedError(
            f"output {name} in format {self.asked}: {_refusal(sparse, self.d, self.asked.levels[self.d:])}; spcomp "
            "assembles sparse outputs whose levels are dense then compressed (csr, dcsr, csf, with "
            "dense levels anywhere below: cd, dcd, cdc), coordinate lists (coo), packed-block levels "
            "(twell, ell, bell) or levels that all insert (db, bb)")

    def growable(self):
        """(level, array) pairs the kernel allocates and grows itself."""
        out = []
        m = len(self.levels)
        if self.shape == "csf":
            for l in range(self.d, m):
                if l > self.d:
                    out.append((l, "pos"))
                out.append((l, "crd"))
            out.append((-1, "vals"))
        elif self.shape == "coo":
            for l in range(self.d, m):
                out.append((l, "crd"))
            out.append((-1, "vals"))
        return out

    def _group_of(self, level, array):
        if self.shape == "coo":
            return self.d
        if array == "vals":
            return len(self.levels) - 1
        if array == "pos":
            return level - 1
        return level

    def bind_growable(self, out_params: dict, locals_: dict):
        self.out_params = out_params
        self.grow_ptrs = locals_

    def bind_bounded(self, needed):
        """Append into arrays the runtime allocated at ``capacity`` entries: store
        what fits, count everything, and write the largest group's count to ``needed``."""
        self.needed = needed

    def _fits(self, group, p, stores) -> list:
        """``stores`` at position ``p``; guarded by the capacity when it cannot grow."""
        if self.needed is None:
            return list(stores)
        return [n.If(n.Binary("<", p, self.caps[group]), n.block(*stores))]

    def _array(self, level, array):
        if (level, array) in self.grow_ptrs:
            return self.grow_ptrs[(level, array)]
        if array == "vals":
            return self.p.vals
        return self.p.array(level, array)

    def _regrow(self, group) -> list:
        """Reallocate the group's arrays to its capacity variable and publish them."""
        cap = self.caps[group]
        body = []
        for (l, a), var in self.grow_ptrs.items():
            if self._group_of(l, a) != group:
                continue
            count = add(cap, n.i64(1)) if a == "pos" else cap
            body += [n.Reallocate(var, count), n.Store(self.out_params[(l, a)], n.i64(0), var)]
        return body

    def _ensure(self, group, p) -> list:
        if self.needed is not None:
            return []  # bounded: the stores check the capacity themselves (_fits)
        cap = self.caps[group]
        return [n.If(n.Binary(">=", p, cap), n.block(n.Assign(cap, mul(cap, n.i64(2))), *self._regrow(group)))]

    def reserve(self, index, bound) -> list:
        """Room for a whole innermost loop's appends at once, when the loop walks the
        output's last index (one append per iteration at most): a test per row
        instead of per entry. Hand-written C of the CSR add: 3.9-4.4 ms against
        4.6-5.4 with a test per entry."""
        if self.shape not in ("csf", "coo") or index != self.chain[-1]:
            return []
        group = len(self.levels) - 1 if self.shape == "csf" else self.d
        if self.meet is not None:  # no growing: the row must fit the chunk's room (meet.py)
            self.reserved.add(index)
            return [n.Comment(f"does this loop's entries of {self.p.var_name} fit the chunk's room?"),
                    *self.meet.room_for(self.counters[group], bound)]
        if not self.grow_ptrs:
            return []
        cap = self.caps[group]
        need = n.Var(self.fresh(f"{self.p.var_name}{group + 1}_need"), I64)
        self.reserved.add(index)
        return [n.Comment(f"room for this loop's entries of {self.p.var_name}"),
                n.Declare(need, add(self.counters[group], bound)),
                n.If(n.Binary(">", need, cap), n.block(
                    n.Assign(cap, n.Binary("max", mul(cap, n.i64(2)), need)), *self._regrow(group)))]

    def release(self, index) -> None:
        self.reserved.discard(index)

    # ------------------------------------------------------- prologue
    def prologue(self):
        out = [] if self.meet is None else self.meet.prologue()
        cap0 = self.capacity
        for g, cap in self.caps.items():
            if self.meet is not None:  # no capacity: the chunk's room is the runtime's (meet.py)
                out.append(n.Declare(self.counters[g], self.meet.start()))
                continue
            out.append(n.Declare(self.counters[g], n.i64(0)))
            # bounded: the runtime allocated exactly cap0 entries
            out.append(n.Declare(cap, cap0 if self.needed is not None else n.Binary("max", cap0, n.i64(MIN_CAPACITY))))
        for (l, a), var in self.grow_ptrs.items():
            g = self._group_of(l, a)
            count = add(self.caps[g], n.i64(1)) if a == "pos" else self.caps[g]
            out += [n.Allocate(var, count, zero=(a == "pos")),
                    n.Store(self.out_params[(l, a)], n.i64(0), var)]
        if self.overflow is not None:
            out.append(n.Declare(self.overflow, n.Const(0, I32)))
        return out

    def epilogue(self):
        if self.meet is not None:  # the runtime kept every position inside the chunks' rooms
            return self.meet.epilogue(self.counters[len(self.levels) - 1])
        out = self.too_many_entries(self.counters.values())
        if self.shape in ("csf", "coo") and self.d == 0:
            out.append(n.Store(self._array(0, "pos"), n.i64(1),
                               n.Cast(self.counters[self.d], self._array(0, "pos").type.elem)))
        if self.shape in ("csf", "coo") and self.d > 0 and self.rows_in_parallel:
            # threads' chunks (Options.append_chunks) each count from 0: the runtime
            # stitches them and gives unvisited rows their ends (spcomp/chunks.py)
            out.append(n.Comment("rows no loop visited get their ends when the chunks are stitched"))
        elif self.shape in ("csf", "coo") and self.d > 0:
            # rows the loops never visited keep the previous row's end
            pos = self._array(self.d, "pos")
            q = n.Var(self.fresh("q"), I64)
            prev = n.Load(pos, q)
            nxt = add(q, n.i64(1))
            out.append(n.Comment("rows no loop visited end where the previous row ends"))
            out.append(n.For(q, n.i64(0), self._rows(), n.block(
                n.If(n.Binary("<", n.Load(pos, nxt), prev), n.block(n.Store(pos, nxt, prev))))))
        if self.needed is not None:
            out.append(n.Comment("the entries the largest group needed: the runtime runs again when they "
                                 "did not fit"))
            groups = [self.counters[g] for g in sorted(self.counters)]
            most = groups[0]
            for count in groups[1:]:
                most = n.Binary("max", most, count)
            out.append(n.Store(self.needed, n.i64(0), most))
        if self.overflow is not None:
            out.append(n.If(n.Binary("!=", self.overflow, n.Const(0, I32)),
                            n.block(n.Return(n.STATUS_PACKED_OVERFLOW))))
        return out

    def too_many_entries(self, counts) -> list:
        """``return STATUS_INDEX_OVERFLOW`` when a count passed what 32-bit positions
        hold: the positions stored on the way wrapped, so the runtime discards the
        output and runs the 64-bit kernel (counters only grow: the last is the largest)."""
        counts = list(counts)
        if self.index_limit is None or not counts:
            return []
        most = counts[0]
        for c in counts[1:]:
            most = n.Binary("max", most, c)
        return [n.If(n.Binary(">", most, n.i64(self.index_limit)), n.block(n.Return(n.STATUS_INDEX_OVERFLOW)))]

    def _rows(self):
        """The positions of the output's leading dense levels: the product of their sizes."""
        out = n.i64(1)
        for i in self.chain[:self.d]:
            out = self.sizes[i] if out == n.i64(1) else n.Binary("*", out, self.sizes[i])
        return out

    # ---------------------------------------------------------- events
    def _level_of(self, index):
        return self.chain.index(index) if index in self.chain else None

    @property
    def placed(self) -> int:
        """Leading levels whose positions enter() places: the dense ones, or, when every
        level inserts, all but the last (whose position and mark go with the value)."""
        return len(self.levels) - 1 if self.shape == "insert" else self.d

    def addresses(self, index) -> bool:
        """Whether a coordinate of ``index`` addresses the output's memory: it places a
        position (a leading dense level, any level of an inserted output) or a packed
        output's tile."""
        if index not in self.chain:
            return False
        return self.chain.index(index) < self.d or self.shape in ("packed", "insert")

    def _parent_pos(self, env, l):
        """The position of level ``l - 1`` (None above the first level)."""
        return env.pos.get(("out", l - 1), PosInfo(n.i64(0))).pos if l > 0 else None

    def enter(self, index, env):
        l = self._level_of(index)
        if l is None:
            return []
        if l < self.placed:  # a leading level that inserts: its position from its parent's
            parent = self._parent_pos(env, l)
            c = env.bound[index]
            pos = self.levels[l].insert_position(parent, self.sizes[index], c)
            var = n.Var(self.fresh(f"p{self.p.var_name}{l + 1}"), I64)
            env.pos[("out", l)] = PosInfo(var)
            return [n.Declare(var, pos), *self.levels[l].insert_coord(self.p.levels[l], var, c)]
        if self.shape == "csf" and l < len(self.levels) - 1:
            child = self.counters[l + 1]
            begin = n.Var(self.fresh(f"p{self.p.var_name}{l + 2}_begin"), I64)
            self.begins[(id(env), l)] = begin
            env.pos[("out_begin", l)] = begin
            return [n.Declare(begin, child)]
        return []

    def exit(self, index, env):
        l = self._level_of(index)
        if l is None:
            return []
        out = []
        if l == self.d - 1 and self.shape in ("csf", "coo"):
            q = env.pos[("out", l)].pos
            pos = self._array(self.d, "pos")
            out.append(n.Store(pos, add(q, n.i64(1)) if self.meet is None else self.meet.row_end(q),
                               n.Cast(self.counters[self.d], pos.type.elem)))
        if self.shape == "csf" and self.d <= l < len(self.levels) - 1:
            p = self.counters[l]
            child = self.counters[l + 1]
            begin = env.pos[("out_begin", l)]
            pos = self._array(l + 1, "pos")
            crd = self._array(l, "crd")
            out += self._ensure(l, p)
            out += self._fits(l, p, [n.Store(pos, add(p, n.i64(1)), n.Cast(child, pos.type.elem))])
            out.append(n.If(n.Binary(">", child, begin), n.block(
                *self._fits(l, p, [n.Store(crd, p, n.Cast(env.bound[index], crd.type.elem))]),
                n.Assign(p, add(p, n.i64(1))))))
        return out

    def innermost(self, value, env):
        t = n.Var(self.fresh("value"), value.type)
        body = self._append(t, env)
        stmts = [n.Declare(t, value)]
        if self.drop:
            zero = n.const(0, value.type)
            stmts.append(n.If(n.Binary("!=", t, zero), n.block(*body)))
        else:
            stmts += body
        return stmts

    def _append(self, value, env) -> list:
        m = len(self.levels)
        last = self.chain[-1]
        c = env.bound[last]
        if self.shape == "insert":
            level = self.levels[-1]
            at = level.insert_position(self._parent_pos(env, m - 1), self.sizes[last], c)
            return [*level.insert_coord(self.p.levels[m - 1], at, c), store_value(self.p.vals, at, value, False)]
        if self.shape == "packed":
            level = self.levels[-1]
            q = env.pos[("out", m - 2)].pos if m >= 2 else n.i64(0)
            arrays = {a: self._array(m - 1, a) for a in level.arrays}
            return level.append_entry(arrays, q, c, self.sizes[last],
                                      lambda at: store_value(self.p.vals, at, value, False), self.overflow,
                                      self.fresh)
        group = m - 1 if self.shape == "csf" else self.d
        p = self.counters[group]
        if self.meet is not None:  # one level below the rows: its coordinate and the value (meet.py)
            at, crd = self.meet.at(p), self._array(m - 1, "crd")
            return [*self.meet.guard([n.Store(crd, at, n.Cast(c, crd.type.elem)),
                                      store_value(self._array(-1, "vals"), at, value, False)]),
                    self.meet.advance(p)]
        out = [] if self.chain[-1] in self.reserved else self._ensure(group, p)
        levels = [m - 1] if self.shape == "csf" else range(self.d, m)
        stores = []
        for l in levels:
            crd = self._array(l, "crd")
            stores.append(n.Store(crd, p, n.Cast(env.bound[self.chain[l]], crd.type.elem)))
        stores.append(store_value(self._array(-1, "vals"), p, value, False))
        out += self._fits(group, p, stores)
        out.append(n.Assign(p, add(p, n.i64(1))))
        return out


class WorkspaceSink(Sink):
    """Scatter into a dense row of the output's last dimension, remembering
    which coordinates were touched; the lowerer drains it in order. A coordinate's
    first value of the row is stored, later ones added: the row's values are never
    read before they are written, so the drain leaves them as they are (one store
    and one load fewer per entry than clearing them and adding to 0)."""

    def __init__(self, values, bits, touched, count, index, fresh):
        # values None: only which coordinates are touched matters (a count phase)
        self.values, self.bits, self.touched, self.count = values, bits, touched, count
        self.index = index
        self.fresh = fresh  # names the variable holding a computed value both branches use

    def innermost(self, value, env):
        c = env.bound[self.index]
        word_at = n.Binary(">>", c, n.i64(6))
        bit = n.Binary("<<", n.i64(1), n.Binary("&", c, n.i64(63)))
        first = [n.Store(self.bits, word_at, n.Binary("|", n.Load(self.bits, word_at), bit)),
                 n.Store(self.touched, self.count, c),
                 n.Assign(self.count, add(self.count, n.i64(1)))]
        again, out = None, []
        if self.values is not None:
            if not isinstance(value, (n.Var, n.Const)):
                # computed once before the branch: LLVM does not merge the two branches' loads
                v = n.Var(self.fresh("product"), value.type)
                out, value = [n.Declare(v, value)], v
            first.append(n.Store(self.values, c, value))
            again = n.block(n.Store(self.values, c, n.Binary("+", n.Load(self.values, c), value)))
        return out + [n.If(n.Binary("==", n.Binary("&", n.Load(self.bits, word_at), bit), n.i64(0)),
                           n.block(*first), again)]
