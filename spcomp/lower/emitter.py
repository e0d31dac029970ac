"""Loop emission: a concrete loop order and an expression in, kernel IR statements out.

At each loop the emitter builds the merge lattice of the expression for that
index and emits one of three loop shapes:

* one sparse iterator: the level's own ``for`` loop;
* a lattice with the all-coordinates point: ``for i in 0..N`` that advances each
  sparse iterator whose coordinate equals ``i``;
* otherwise TACO's co-iteration: one ``while`` loop per lattice point, each
  taking the smallest coordinate and dispatching to the sub-points present.

In each case the body is the expression *specialised* to the operands present,
so ``A + B`` computes ``A`` alone where ``B`` has no entry. Sums whose free
indices are all bound are computed into temporaries before going deeper
(precompute/hoisting). Values go to a sink (outputs.py).

The emitter sees a :class:`NestContext` -- the decisions the driver made before
the nest (parameters, sizes, loop order, the parallel loop, the workspace) --
and records what the nest tells later passes: the ``k.loops`` text and where
each compressed level's positions end (for prefetching).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from ..errors import UnsupportedError
from ..formats import Format
from ..formats.level import LevelAccess, PosInfo
from ..ir import nodes as n
from ..ir.types import BOOL, F32, I64
from ..notation import (Access, Add, Call, Div, Literal, Mul, Neg, Reduce, Sub, Sum, TensorVar, accesses,
                        free_indices)
from . import lattice as lat
from .context import Env
from .functions import lower_call
from . import split as split_mod
from . import gpumap, rowpos
from .densefuse import DenseFuseEmission
from .splittree import SplitPieceEmission
from .normalize import ZERO, nested_sums, replace, specialize, split_sums
from .order import access_chain
from .outputs import AppendSink, DenseSink, ReduceSink, ScalarSink, WorkspaceSink
from .parallel import TEAM_MEMBERS
from .split import SplitPiece

TEMP_FORMAT = Format(())
# a workspace row whose bitmap has at most SCAN_WORDS words per touched coordinate
# is drained in order by scanning the bitmap (lowest set bit first) instead of
# sorting the touched list: 64 coordinates per word cost one load and a test
SCAN_WORDS = 16
# set bits of a bitmap word taken without a test when the list is refilled in order
BITS_PER_STEP = 4


@dataclass
class NestContext:
    """What loop emission reads, fixed by the driver before the nest is emitted."""
    opt: object              # Options
    lhs: Access
    params: dict             # storage name -> TensorParams
    sizes: dict              # IndexVar -> the size parameter
    fresh: object            # Names: fresh variable names
    compute: object          # the scalar type arithmetic happens in
    position: dict           # IndexVar -> its place in the loop order
    loop_order: list         # the loops, split pieces included
    split_pieces: dict
    transposes: dict         # storage -> (operand, Format), to name the user's operand in messages
    parallel: object = None  # the IndexVar run in parallel, if any
    lo: object = None        # its range's bounds, parameters of the function
    hi: object = None
    out_shape: str = "dense"
    workspace: dict | None = None
    output_op: str = "="     # how the nest's note shows a dense output's update ("=" or "+=")
    parallel_depth: int | None = 0  # the parallel loop's nest depth: 1 for a scalar's sum, None: any (inner)
    positions: object = None  # possplit.PositionPlan: the chain's loops clamped to a chunk's rows
    fused: object = None      # densefuse.DenseFuse: two dense loops run as one


class LoopEmitter(SplitPieceEmission, DenseFuseEmission):
    """Emits the loop nest of one function; ``out_sink`` receives the output's values."""

    def __init__(self, ctx: NestContext, out_sink, loops_text: list | None = None):
        for f in dataclasses.fields(ctx):
            setattr(self, f.name, getattr(ctx, f.name))
        self.out_sink = out_sink
        self.loops_text = [] if loops_text is None else loops_text  # k.loops, one loop a line
        self.position_ends: dict = {}  # position loop var -> its level's last position (prefetch.py)
        self._temps: set = set()       # the scalar temporaries hoisting made
        self.cases = 0                 # if/else cases the loops emitted so far (lattice.count_cases)
        self.bounded: set = set()      # loops whose Schedule.bound was checked (the lowerer asks)
        self.row_pos_done: set = set()  # the within-row position loop, once found (rowpos.py)
        self.members = gpumap.members_of(ctx.opt)  # loops parallelize names inside the GPU team loop
        self.members_placed: dict = {}  # member loop variable -> the index it runs (gpumap.check_nesting)

    def nest(self, order, expr, sink, env: Env, depth: int) -> list:
        stmts, expr = self.hoist(expr, env, depth)
        if expr == ZERO:
            return stmts
        if not order:
            self._note(depth, f"{self.sink_label(sink)} {expr!r}")
            return stmts + sink.innermost(self.value(expr, env), env)
        i = order[0]
        if self.workspace and sink is self.out_sink and self.position[i] == self.workspace["start"]:
            return stmts + self.workspace_region(order, expr, env, depth)
        if i.name in self.members and gpumap.partial_sum(self.members[i.name], i, sink, env, self.lhs):
            t = n.Var(self.fresh("t" + i.name), self.compute)  # the team's sum, added once (gpumap.py)
            return stmts + [n.Declare(t, n.const(0, self.compute)), *self.loop(
                i, order[1:], expr, ScalarSink(t), env, depth), *sink.innermost(t, env)]
        return stmts + self.loop(i, order[1:], expr, sink, env, depth)

    def hoist(self, expr, env, depth):
        """Compute every sum whose free indices are bound into a temporary."""
        stmts = []
        for s in nested_sums(expr):
            if not free_indices(s) <= set(env.bound):
                continue
            idx, body = ([s.index], s.body) if isinstance(s, Reduce) else split_sums(s)
            t = n.Var(self.fresh(("m" if isinstance(s, Reduce) else "t") + "".join(i.name for i in idx)),
                      self.compute)
            tv = TensorVar(t.name, 0, TEMP_FORMAT, "float64")
            self._temps = self._temp_tensors() | {tv}
            env.temps[tv] = t
            inner = sorted(idx, key=lambda x: self.position[x])
            if self.split_pieces:
                inner = split_mod.restrict(self.loop_order, inner)
            self._note(depth, f"{t.name} = {s!r}")
            stmts.append(n.Comment(f"{t.name} = {s!r}"))
            if isinstance(s, Reduce):
                stmts += self._fold(s, t, inner, body, env, depth)
            else:
                stmts.append(n.Declare(t, n.const(0, self.compute)))
                stmts += self.nest(inner, body, ScalarSink(t), env.child(), depth + 1)
            expr = replace(expr, s, Access(tv, ()))
        return stmts, expr

    def _fold(self, s, t, inner, body, env, depth) -> list:
        """A max or min reduction into ``t``: the loops fold every value they visit
        and count them; when fewer than the index's size were visited (a sparse
        operand's unstored entries) -- or none -- a 0 is folded in too, so the result
        is the dense reference's (and 0 over an empty range, as a sum's)."""
        ident = float("-inf") if s.op == "max" else float("inf")
        count = n.Var(self.fresh("n" + s.index.name), I64)
        stmts = [n.Declare(t, n.const(ident, self.compute)), n.Declare(count, n.i64(0))]
        stmts += self.nest(inner, body, ReduceSink(t, s.op, count), env.child(), depth + 1)
        missing = n.Binary("||", n.Binary("<", count, self.sizes[s.index]), n.Binary("==", count, n.i64(0)))
        self._note(depth + 1, f"{t.name} = {s.op}({t.name}, 0) when a coordinate of {s.index.name} was not visited")
        stmts.append(n.If(missing, n.block(n.Assign(t, n.Binary(s.op, t, n.const(0, self.compute))))))
        return stmts

    def workspace_region(self, order, expr, env, depth):
        w = self.workspace
        c = w["count"]
        last = w["index"]
        self._note(depth, f"workspace over {last.name}:")
        stmts = [n.Declare(c, n.i64(0))]
        symbolic = getattr(self.out_sink, "symbolic", False)  # a count phase needs no values
        inner = WorkspaceSink(None if symbolic else w["values"], w["bits"], w["touched"], c, last, self.fresh)
        stmts += self.nest(order, expr, inner, env.child(), depth + 1)
        # drain in coordinate order: scan the bitmap when it is short enough for the
        # number of touched coordinates, else sort the touched list
        value = n.Var(self.fresh("v"), self.compute)

        def drain(coord):
            drain_env = env.child()
            drain_env.bound[last] = coord
            # (the row's values stay: the next row's first touch stores, WorkspaceSink)
            body = [n.Declare(value, n.Load(w["values"], coord))] if not symbolic else []
            body += self.out_sink.enter(last, drain_env)
            body += self.out_sink.innermost(value, drain_env)
            body += self.out_sink.exit(last, drain_env)
            return body

        meet = getattr(self.out_sink, "meet", None)  # a chunk going down drains from the end (meet.py)

        def from_list(clear_bits=True):
            t = n.Var(self.fresh("k"), I64)
            coord = n.Var(self.fresh(last.name), I64)
            clear = [n.Store(w["bits"], n.Binary(">>", coord, n.i64(6)), n.i64(0))] if clear_bits else []
            return n.For(t, n.i64(0), c, n.block(
                n.Declare(coord, n.Load(w["touched"], t if meet is None else meet.nth(t, c))),
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

    def _level_access(self, acc, l, env, addressing: bool = True) -> LevelAccess:
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
                           dim=self.sizes[chain[l]], parent=parent, parent_unique=parent_unique,
                           addressing=addressing)

    def _addresses(self, i, expr, sink, keys) -> bool:
        """Whether a coordinate of ``i`` read from an operand's ``crd`` would address
        memory in the loop's body: it locates a level of an operand that is not
        iterated here (a dense level), indexes a dense output, a workspace, a packed
        output's tile or the rows of an appended output. Conservative: True unless the
        coordinate is only merged, compared and stored (a sparse add's)."""
        iterated = {k[0] for k in keys}
        for acc in accesses(expr):
            if i in acc.indices and acc.tensor not in self._temps and acc not in iterated:
                return True
        if isinstance(sink, ScalarSink):
            return False
        if isinstance(sink, AppendSink):
            return sink.addresses(i)
        return True

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
            return self._emit_split_piece(i, rest, expr, sink, env, depth)
        if self.fused is not None and i == self.fused.outer:
            return self._emit_dense_fuse(self.fused, rest, expr, sink, env, depth)
        L = lat.build(expr, i, lambda a: self._iter_key(a, i, env))
        if L.empty:
            return []
        self.cases = lat.count_cases(L, self.cases)
        keys = sorted(L.iterators(), key=lambda k: (k[0].tensor.name, repr(k[0]), k[1]))
        iters = {}
        # a full loop's coordinate is its own counter: the iterators' are only compared to it
        addressing = not L.full and self._addresses(i, expr, sink, keys)
        for k in keys:
            acc, l = k
            la = self._level_access(acc, l, env, addressing)
            iters[k] = la.kind.iterator(la, self.fresh)
        size = self.sizes[i]
        parallel = (self.parallel is not None and i == self.parallel
                    and (self.parallel_depth is None or depth == self.parallel_depth))
        chained = self.positions.level_of(i) if self.positions is not None else None
        if chained is not None:  # a loop the position loop's chunks give (possplit.py)
            self.positions.check_loop(i, keys, L.full)
        if not L.full and len(keys) == 1:
            k = keys[0]
            it = iters[k]
            coord = n.Var(self.fresh(i.name), I64)
            rows = k[0].tensor.format.levels[k[1]].coordinate_positions  # its positions are rows
            self._note(depth, f"for {i.name} in {k[0].tensor.name} level {k[1] + 1} ({k[0].tensor.format.levels[k[1]].spec()})"
                              + (f" (parallel: {self.opt.parallel_kind}{'' if rows else ', by positions'})"
                                 if parallel else ""))

            member, racy = self._member(i, sink, env)
            team = (self.opt.parallel_kind if parallel and self.out_shape == "dense" and not self.opt.members
                    else None)

            def body(info, k=k):
                e = env.child()
                e.pos[k] = info
                if team in TEAM_MEMBERS:  # a team per row: its members split a loop inside
                    e.team = TEAM_MEMBERS[team]
                if member:
                    e.team = None
                return self._body(i, rest, expr, sink, e, coord, depth)
            grow = [] if parallel else self._reserve(i, rest, sink, it.segment_length())
            # threads take ranges of the level's positions (parallel.top_positions, coordinate_rows)
            loop = gpumap.racing(sink, racy, lambda: it.loop_between(coord, body, self.lo, self.hi) if parallel
                                 else it.loop(coord, body))
            sink.release(i)
            if chained is not None:
                loop = [self.positions.clamp(loop[0], chained)]
            self._note_position_end(loop, k)
            if parallel:
                loop = [*loop[:-1], dataclasses.replace(loop[-1], parallel=self.opt.parallel_kind)]
            loop = self._vector_hint(loop, sink, rest, gathers=self._gathers(expr, k[0], i))
            loop = rowpos.strip(self.opt, self._user_hints(loop, i), i, k, self.fresh, self.row_pos_done)
            if member:
                loop = self._mark_member(loop, member, i.name)
            return [*grow, n.Comment(f"loop over {i.name}: {k[0]!r} level {k[1] + 1}"), *loop]
        if L.full:
            coord = n.Var(self.fresh(i.name), I64)
            start, end = (self.lo, self.hi) if parallel else (n.i64(0), size)
            if chained is not None:
                start, end = self.positions.current[1:]  # this pass's rows
            kind = self.opt.parallel_kind
            where = ("the range's rows" if chained is not None else f"0..{size.name}") + (
                f" (parallel: {kind})" if parallel else "")
            if not keys:
                self._note(depth, f"for {i.name} in {where}")
                inner = env.child()
                if parallel and kind in TEAM_MEMBERS and self.out_shape == "dense" and not self.opt.members:
                    inner.team = TEAM_MEMBERS[kind]
                member, racy = self._member(i, sink, env)
                if member:
                    inner.team = None
                grow = [] if parallel else self._reserve(i, rest, sink, size)
                stmts = gpumap.racing(sink, racy, lambda: self._body(i, rest, expr, sink, inner, coord, depth))
                sink.release(i)
                meet = getattr(sink, "meet", None) if parallel else None
                if meet is not None:  # a chunk going down walks its rows last to first (meet.py)
                    walk = n.Var(self.fresh(i.name + "_walk"), I64)
                    stmts = [n.Declare(coord, meet.row(walk, start, end)), *stmts]
                    coord = walk
                loop = [n.For(coord, start, end, n.block(*stmts), parallel=kind if parallel else None)]
                if member:
                    loop = self._mark_member(loop, member, i.name)
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
        # co-iteration: one while loop per lattice point (above: one sparse iterator; the whole dimension)
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

    def _member(self, i, sink, env) -> tuple:
        """``(mapping or None, racy)`` of the loop over ``i``: one a ``parallelize`` names
        (gpumap.asked_member); else, inside a GPU team loop, the first loop whose
        iterations are independent: a reduction into a temporary, or a dense output's index."""
        asked = self.members.get(i.name)
        if asked is not None:
            return gpumap.asked_member(asked, i, sink, self.lhs)
        if env.team is None:
            return None, False
        if isinstance(sink, ScalarSink) or (isinstance(sink, DenseSink) and i in self.lhs.indices):
            return env.team, False
        return None, False

    def _mark_member(self, stmts, member, index: str):
        out, done = [], False
        for s in stmts:
            if not done and isinstance(s, n.For):
                s = dataclasses.replace(s, parallel=member, vectorize=0)
                self.members_placed[s.var.name] = index
                done = True
            out.append(s)
        return out

    def _user_hints(self, stmts, i):
        """vectorize / unroll hints on the loop over ``i``; bound: a trip-count check before it."""
        vec = dict(self.opt.vectorize).get(i.name)
        unr = dict(self.opt.unroll).get(i.name)
        limit = dict(self.opt.bounds).get(i.name)
        unr = limit if unr is None and limit is not None and limit <= 64 else unr
        if vec is None and unr is None and limit is None:
            return stmts
        out, done = [], False
        for s in stmts:
            if not done and isinstance(s, n.For):
                if limit is not None:  # a violated bound stops the kernel before the loop runs
                    out.append(n.If(n.Binary(">", n.Binary("-", s.end, s.start), n.i64(limit)),
                                    n.block(n.Return(n.STATUS_BOUND_EXCEEDED))))
                    self.bounded.add(i.name)
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
            return lower_call(e.func, args, self.compute)
        if isinstance(e, (Sum, Reduce)):
            raise UnsupportedError(f"internal: reduction {e!r} reached the innermost loop unevaluated")
        raise TypeError(e)

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

    def _note(self, depth, text):
        self.loops_text.append("  " * depth + text)

    def _note_position_end(self, loop: list, key) -> None:
        """Remember the last position of a segmented level (CSR's ``pos[N_i] - 1``,
        CSF's third level ``pos3[pos2[pos1[1]]] - 1``) for the loop walking it: the
        prefetch passes clamp their look-ahead reads of ``crd`` there (prefetch.py).
        The count of the parent level's positions is built level by level, each level
        saying its own (``Level.positions_expr``: a dense level multiplies by its size,
        a compressed one reads its ``pos``); under a level that cannot say it is not
        known. A level aligned with its parent (COO's singletons) walks its parent's
        positions, so it ends where the segmented level above its run ends."""
        acc, l = key
        levels = acc.tensor.format.levels
        if len(loop) != 1 or not isinstance(loop[0], n.For):
            return
        while l > 0 and levels[l].aligned_with_parent:
            l -= 1
        if not levels[l].segmented:
            return
        chain = access_chain(acc)
        arrays = self.params[acc.tensor.name].levels
        count = n.i64(1)
        for m in range(l + 1):
            count = levels[m].positions_expr(count, self.sizes[chain[m]], arrays[m])
            if count is None:
                return
        self.position_ends[loop[0].var] = n.Binary("-", count, n.i64(1))

    def _temp_tensors(self):
        return self._temps

    def sink_label(self, sink) -> str:
        if isinstance(sink, ScalarSink):
            return f"{sink.var.name} +="
        if isinstance(sink, ReduceSink):
            return f"{sink.var.name} {sink.op}="
        if isinstance(sink, WorkspaceSink):
            return f"workspace[{sink.index.name}] +="
        if isinstance(sink, AppendSink):
            return f"{self.lhs!r} append"
        return f"{self.lhs!r} {self.output_op if isinstance(sink, DenseSink) else '='}"
