"""Team bodies: the CUDA C of a gpu-block or gpu-warp iteration (emit.py's docstring,
"team", is the contract).

:class:`TeamEmission` is mixed into :class:`~.emit.CudaEmitter`. In a team body it
groups the statements with side effects into guarded runs (one member does them for
the team) followed by a barrier where :mod:`.hazards` finds one is needed; it prints
member loops (threads of a block, warps of a block, lanes of a warp) with the
reductions that combine their members' partial values, and a block's loops over a
row's entries staged through ``__shared__`` memory (:mod:`.staging`).
"""
from __future__ import annotations

from spcomp.ir import nodes as n
from spcomp.ir.types import F32, F64, I32, I64

from . import staging
from .contexts import Ctx, describe_loop
from .hazards import declared, needs_barrier

# the types a team may reduce a scalar of across its members
REDUCIBLE = (F32, F64, I32, I64)


class TeamEmission:
    """The team half of the CUDA emitter (reads and sets ``self.ctx``)."""

    def block_lines(self, b: n.Block, depth: int) -> list[str]:
        if self.ctx.kind not in ("block", "warp"):
            return super().block_lines(b, depth)
        out: list[str] = []
        group: list = []
        comments: list = []

        def flush():
            if group:
                out.extend(self.guarded(group, depth))
                group.clear()
            for c in comments:
                out.extend(self.stmt(c, depth))
            comments.clear()

        for s in b.body:
            if isinstance(s, n.Comment):
                comments.append(s)
                continue
            if self.guardable(s):
                group.extend(comments)
                comments.clear()
                group.append(s)
                continue
            flush()
            out.extend(self.stmt(s, depth))
        flush()
        return out

    def has_effects(self, s) -> bool:
        for x in n.walk(s):
            if isinstance(x, (n.Store, n.AtomicAdd, n.Sort)) and not self.is_private(x.array):
                return True
        return False

    def guardable(self, s) -> bool:
        """Whether one member may run ``s`` for the whole team (see the module docs)."""
        if isinstance(s, (n.Declare, n.Assign, n.Return, n.Comment)):
            return False
        if not self.has_effects(s):
            return False
        inner = declared(s)
        for x in n.walk(s):
            if isinstance(x, n.For) and x.parallel:
                return False
            if isinstance(x, (n.Return, n.Allocate, n.Free, n.Reallocate)):
                return False
            if isinstance(x, n.Assign) and x.var.name not in inner:
                return False
        return True

    def team_guard(self) -> tuple[str, str, str]:
        if self.ctx.kind == "block":
            return "threadIdx.x == 0", "__syncthreads();", "thread 0 of the block"
        return "spc_lane() == 0", "__syncwarp();", "lane 0 of the warp"

    def barrier_needed(self, stmts) -> bool:
        """Whether the team must wait for what ``stmts`` write (:mod:`.hazards`)."""
        return needs_barrier(self.ctx.body, stmts, self.private, self.ctx.kind)

    def guarded(self, stmts, depth) -> list[str]:
        cond, barrier, who = self.team_guard()
        outer = self.ctx
        lines = [self.line(depth, f"if ({cond}) {{  // team-uniform writes: {who} does them once")]
        self.ctx = Ctx("single", where=outer.where, body=outer.body)
        try:
            for s in stmts:
                lines.extend(self.stmt(s, depth + 1))
        finally:
            self.ctx = outer
        lines.append(self.line(depth, "}"))
        if self.barrier_needed(stmts):
            lines.append(self.line(depth, barrier + "  // the team sees those writes"))
        return lines

    # ---------------------------------------------------- block loops
    def staged_for(self, s: n.For, d, arrays) -> list[str]:
        """A block's sequential loop over a row's entries, read through shared memory
        in chunks (see :mod:`spcomp.backends.cuda.staging`)."""
        t, v, size = self.type_name(s.var.type), s.var.name, staging.STAGE_ENTRIES
        tag = self.fresh("p0")[len("spc_p0_"):]
        p0, end, count, k = f"spc_p0_{tag}", f"spc_end_{tag}", f"spc_n_{tag}", f"spc_s_{tag}"
        shared = {a.name: f"spc_{a.name}_{tag}" for a in arrays}
        names = ", ".join(f"{a.name}[{v}]" for a in arrays)
        lines = [self.line(d, f"// {names} staged in shared memory: the block copies {size} entries at a "
                              "time, then every thread reads them there")]
        lines += [self.line(d, f"__shared__ {self.type_name(a.type.elem)} {shared[a.name]}[{size}];")
                  for a in arrays]
        lines += [self.line(d, f"const {t} {end} = {self.expr(s.end)};"),
                  self.line(d, f"for ({t} {p0} = {self.expr(s.start)}; {p0} < {end}; {p0} += {size}) {{"),
                  self.line(d + 1, f"const {t} {count} = spc_min<{t}>({size}, {end} - {p0});"),
                  self.line(d + 1, f"for ({t} {k} = threadIdx.x; {k} < {count}; {k} += blockDim.x) {{  "
                                   "// stage: the block's threads copy the chunk")]
        lines += [self.line(d + 2, f"{shared[a.name]}[{k}] = {a.name}[{p0} + {k}];") for a in arrays]
        lines += [self.line(d + 1, "}"),
                  self.line(d + 1, "__syncthreads();  // the chunk is staged"),
                  self.line(d + 1, f"for ({t} {k} = 0; {k} < {count}; ++{k}) {{"),
                  self.line(d + 2, f"{t} {v} = {p0} + {k};")]
        saved = dict(self.staged)
        self.staged.update({(a.name, v): (shared[a.name], k) for a in arrays})
        try:
            lines += self.block_lines(s.body, d + 2)
        finally:
            self.staged = saved
        return lines + [self.line(d + 1, "}"),
                        self.line(d + 1, "__syncthreads();  // every thread is done with the chunk before the "
                                         "next one is staged"),
                        self.line(d, "}")]

    # --------------------------------------------------- member loops
    def reductions(self, s: n.For) -> dict:
        """{var name: (Var, op)} for the outer scalars a member loop accumulates."""
        inner = declared(s.body) | {s.var.name}
        assigns: dict[str, list] = {}
        for x in n.walk(s.body):
            if isinstance(x, n.Assign) and x.var.name not in inner:
                assigns.setdefault(x.var.name, []).append(x)
        if not assigns:
            return {}
        if s.parallel == "gpu-warp":
            self.fail(f"{describe_loop(s)} assigns `{sorted(assigns)[0]}`, a scalar of the enclosing gpu-block "
                      "iteration: warps of a block cannot reduce into it; store per-warp results instead")
        out = {}
        for name, list_ in assigns.items():
            var = list_[0].var
            ops = set()
            for a in list_:
                v = a.value
                op = None
                if isinstance(v, n.Binary) and v.op in ("+", "min", "max"):
                    if v.lhs == var and var not in set(n.walk(v.rhs)):
                        op = v.op
                    elif v.rhs == var and var not in set(n.walk(v.lhs)):
                        op = v.op
                if op is None:
                    self.fail(f"{describe_loop(s)} assigns `{name}`, declared outside it, as `{name} = "
                              f"{self.expr(v)}`: across the members of a team only accumulations "
                              f"`{name} = {name} + x`, `max({name}, x)` or `min({name}, x)` can be combined")
                ops.add(op)
            if len(ops) > 1:
                self.fail(f"{describe_loop(s)} accumulates `{name}` with different operators ({', '.join(sorted(ops))})")
            uses = sum(1 for x in n.walk(s.body) if x == var)
            if uses != 2 * len(list_):  # each accumulation names it twice: target and operand
                self.fail(f"{describe_loop(s)} reads `{name}`, which its members accumulate: inside the loop each "
                          "member only holds a partial value")
            if var.type not in REDUCIBLE:
                self.fail(f"{describe_loop(s)} accumulates `{name}` of type {var.type}; reductions across a team "
                          "take f32, f64, i32 or i64")
            out[name] = (var, ops.pop())
        return out

    def scan_of(self, s: n.For) -> str | None:
        """The scalar a block's member loop scans, or None: its body starts with the
        loop's one assignment of an outer i64 ``v = v + x`` (``x`` not naming ``v``)
        and the rest reads ``v`` -- each iteration sees the sum up to it, in order."""
        body = s.body.body
        if s.parallel not in ("gpu-thread", "threads") or self.ctx.kind != "block" or not body:
            return None
        a = body[0]
        if not (isinstance(a, n.Assign) and a.var.type == I64 and isinstance(a.value, n.Binary)
                and a.value.op == "+" and a.value.lhs == a.var and a.var not in set(n.walk(a.value.rhs))):
            return None
        if a.var.name in declared(s.body) | {s.var.name}:
            return None
        rest = n.Block(tuple(body[1:]))
        inner = declared(s.body) | {s.var.name}
        if any(isinstance(x, n.Assign) and x.var.name not in inner for x in n.walk(rest)):
            return None  # it assigns the scalar again, or accumulates another
        return a.var.name if a.var in set(n.walk(rest)) else None

    def scan_loop(self, s: n.For, d) -> list:
        """A block's member loop that scans a scalar (:meth:`scan_of`), in rounds of
        ``blockDim.x`` iterations that every thread of the block runs: each thread
        computes its iteration's addend, ``spc_block_scan`` gives it the inclusive
        sum of the round's addends up to it, the rest of the body runs with the
        scalar at that sum plus the rounds before; after the loop the scalar holds
        the whole sum, as in the sequential loop. Neighbouring threads take
        neighbouring iterations: an array indexed by the loop is read coalesced."""
        team = self.ctx
        assign = s.body.body[0]
        var, t = assign.var, self.type_name(assign.var.type)
        carry, base, addend, total = self.fresh("carry"), self.fresh("base"), self.fresh("addend"), self.fresh("round")
        it, it_t = s.var.name, self.type_name(s.var.type)
        end = self.expr(s.end)
        lines = [self.line(d, f"{t} {carry} = {var.name};  // the scan: the sum before each round"),
                 self.line(d, f"for ({it_t} {base} = {self.expr(s.start)}; {base} < {end}; {base} += blockDim.x) {{  "
                              f"// parallel: {s.parallel} -- a round of the block's threads, one iteration each, "
                              "scanned together"),
                 self.line(d + 1, f"const {it_t} {it} = {base} + threadIdx.x;"),
                 self.line(d + 1, f"{t} {addend} = 0;")]
        self.ctx = Ctx("thread", member=True, where=describe_loop(s))
        try:
            lines.append(self.line(d + 1, f"if ({it} < {end}) {addend} = {self.expr(assign.value.rhs)};"))
            lines += [self.line(d + 1, f"{t} {total};"),
                      self.line(d + 1, f"{var.name} = {carry} + spc_block_scan({addend}, &{total});  "
                                       "// the inclusive sum up to this iteration"),
                      self.line(d + 1, f"if ({it} < {end}) {{")]
            lines += self.block_lines(n.Block(tuple(s.body.body[1:])), d + 2)
        finally:
            self.ctx = team
        lines += [self.line(d + 1, "}"), self.line(d + 1, f"{carry} += {total};"), self.line(d, "}"),
                  self.line(d, f"{var.name} = {carry};  // every thread of the block gets the total")]
        if self.barrier_needed([s]):
            lines.append(self.line(d, "__syncthreads();  // the block sees what the loop wrote"))
        return lines

    def member_loop(self, s: n.For, d):
        team = self.ctx
        kind = s.parallel
        if self.scan_of(s) is not None:
            return self.scan_loop(s, d)
        if kind == "gpu-lane":
            head = self.loop_head(s, "spc_lane()", "32", "the warp's 32 lanes split the iterations")
            combine, who = "spc_warp_reduce", "warp"
            ctx = Ctx("thread", member=True, where=describe_loop(s))
        elif kind == "gpu-warp":
            head = self.loop_head(s, "spc_warp_in_block()", "spc_block_warps()",
                                  "one iteration per warp of the block")
            combine, who = None, "block"
            ctx = Ctx("warp", member=True, body=s.body, where=describe_loop(s))
        else:
            head = self.loop_head(s, "threadIdx.x", "blockDim.x", "the block's threads split the iterations")
            combine, who = "spc_block_reduce", "block"
            ctx = Ctx("thread", member=True, where=describe_loop(s))
        reductions = self.reductions(s)
        lines = []
        saved = {}
        for name, (var, op) in reductions.items():
            if op == "+":
                keep = self.fresh(name)
                saved[name] = keep
                zero = self.expr(n.const(0, var.type))
                lines.append(self.line(d, f"{self.type_name(var.type)} {keep} = {name};  "
                                          f"// each member sums a partial `{name}` from 0; combined after the loop"))
                lines.append(self.line(d, f"{name} = {zero};"))
        lines.append(self.line(d, head))
        lines += self.loop_body(s, ctx, d)
        lines.append(self.line(d, "}"))
        opname = {"+": "spc_sum_op", "min": "spc_min_op", "max": "spc_max_op"}
        for name, (var, op) in reductions.items():
            total = f"{combine}<{opname[op]}>({name})"
            if op == "+":
                lines.append(self.line(d, f"{name} = {saved[name]} + {total};  // every member of the {who} "
                                          "gets the total"))
            else:
                lines.append(self.line(d, f"{name} = {total};  // every member of the {who} gets the result"))
        self.ctx = team
        if self.barrier_needed([s]):
            barrier = "__syncthreads();" if team.kind == "block" else "__syncwarp();"
            lines.append(self.line(d, f"{barrier}  // the {who} sees what the loop wrote"))
        return lines
