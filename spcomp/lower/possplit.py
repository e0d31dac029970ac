"""Position loops: ``pos``, ``fuse`` and a split of positions (TACO's fuse + pos + split).

``pos("j", "jpos", "A")`` (or ``fuse("i", "j", "f")`` on a CSR ``A``) walks the
compressed level of ``A`` that stores ``j`` as one loop over *all* its positions:
``A``'s nonzeros, for a CSR. ``split("jpos", "c", "p", F)`` then cuts those positions
into chunks of ``F`` (``c`` over chunks, ``p`` within one): equal numbers of
nonzeros, whatever the rows' lengths. Run in parallel, threads take ranges of
chunks, so a power-law matrix's long rows no longer land on one thread.

The kernel takes a range of chunks ``[lo, hi)`` as positions ``[P0, P1)`` of level
``L`` (the level of ``j``) and finds the positions of each level above that hold
them by a binary search of that level's ``pos`` array (:func:`search`): ``[q0, q1)``
of level ``L-1``, and so on up to level 0. The loops over the chain's levels then
run as usual, each clamped to its range (:meth:`PositionPlan.clamp`): the first
row of a chunk and its last may be shared with the neighbouring chunks, the rows
between belong to it alone.

What this needs (:func:`check`, :meth:`PositionPlan.check_loop`): a dense output
(or a sparse one whose entries follow the positions: possparse.py);
levels 1..L of the operand compressed and unique, level 0 dense or compressed and
unique; the chain's loops outermost and in level order, each walking that operand
alone; and a right side *linear* in the operand (:func:`linear_in`: every term
a product with one of its values), so that the contributions of a row's pieces
add up to the row's. Every output update is then an add into a zeroed output.
Two chunks meet at a shared row: those updates race on threads, and the race
strategy (:func:`race_plan`) makes them atomic (only at the range's first and last
row, or everywhere when the output is not indexed by the top level) or gives each
thread its own copy of the output (runtime/partials.py).
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace

from ..errors import ScheduleError
from ..ir import nodes as n
from ..ir.build import as_i64
from ..ir.types import I64
from ..notation import Access, Add, Div, IndexVar, Mul, Neg, Reduce, Sub, Sum, accesses


@dataclass(frozen=True)
class PosSplit:
    """A position loop as the schedule asked for it (``Options.pos_split``)."""
    operand: str    # "" for a fuse: the operand whose levels store parent and index
    index: str      # the index of the compressed level whose positions are walked
    parent: str     # a fuse's outer index ("" for pos)
    outer: str      # the chunk loop's name (the position loop's, unsplit)
    inner: str      # the loop within a chunk ("" unsplit)
    factor: int     # positions per chunk; -P: P chunks (a divide); 1 unsplit
    what: str       # the directives, for messages
    # splits of the piece within a chunk (TACO's block > warp > thread chunks on the
    # GPU, gpupositions.py): (name, positions per sub-chunk) outermost first; ``inner``
    # is then the loop within the last one
    pieces: tuple = ()

    @property
    def names(self) -> tuple:
        return tuple(x for x in (self.outer, *(p[0] for p in self.pieces), self.inner) if x)


def from_directives(directives) -> tuple:
    """``(PosSplit or None, the other split/divide directives)`` from a schedule's
    directives: ``pos``/``fuse`` and any split or divide of the loop they make."""
    made = {}      # position-loop name -> [operand, index, parent, text]
    rest = []
    chosen = None
    for d in directives:
        kind = d[0]
        if kind == "fuse":
            _, outer, inner, fused = d
            made[fused] = ["", inner, outer, f"fuse({outer!r}, {inner!r}, {fused!r})"]
        elif kind == "pos":
            _, index, name, operand = d
            text = f"pos({index!r}, {name!r}, {operand!r})"
            if index in made:  # pos of a fused loop
                _o, inner, parent, t0 = made.pop(index)
                made[name] = [operand, inner, parent, f"{t0}.{text}"]
            else:
                made[name] = [operand, index, "", text]
        elif kind == "split" and chosen is not None and d[1] == chosen.inner:  # a chunk cut into sub-chunks
            _, base, outer, inner, count = d
            chosen = replace(chosen, inner=inner, pieces=chosen.pieces + ((outer, count),),
                             what=f"{chosen.what}.split({base!r}, {outer!r}, {inner!r}, {count})")
        elif kind in ("split", "divide") and d[1] in made:
            _, base, outer, inner, count = d
            operand, index, parent, text = made.pop(base)
            factor = count if kind == "split" else -count
            if chosen is not None:
                raise ScheduleError(f"{text}.{kind}(...): one position split per kernel")
            chosen = PosSplit(operand, index, parent, outer, inner, factor,
                              f"{text}.{kind}({base!r}, {outer!r}, {inner!r}, {count})")
        elif kind in ("split", "divide"):
            rest.append(d)
    for name, (operand, index, parent, text) in made.items():
        if chosen is not None:
            raise ScheduleError(f"{text}: one position loop per kernel ({chosen.what} is another)")
        chosen = PosSplit(operand, index, parent, name, "", 1, text)
    return chosen, tuple(rest)


def linear_in(e, tensor_name: str) -> bool:
    """Whether ``e`` is a sum of terms each a product with one value of the tensor
    (``A*x``, ``c*(A*x + A*z)``, ``-A``, ``A/d``): then the contributions of any
    partition of the tensor's nonzeros add up to ``e``. Functions, powers, the
    tensor twice in a product, and terms without it are not linear."""
    def has(x):
        return any(a.tensor.name == tensor_name for a in accesses(x))
    if isinstance(e, Access):
        return e.tensor.name == tensor_name
    if isinstance(e, (Add, Sub)):
        return linear_in(e.lhs, tensor_name) and linear_in(e.rhs, tensor_name)
    if isinstance(e, Neg):
        return linear_in(e.operand, tensor_name)
    if isinstance(e, Sum):
        return linear_in(e.body, tensor_name)
    if isinstance(e, Reduce):
        return False  # max/min do not add up
    if isinstance(e, Mul):
        left, right = linear_in(e.lhs, tensor_name), linear_in(e.rhs, tensor_name)
        return (left and not has(e.rhs)) or (right and not has(e.lhs))
    if isinstance(e, Div):
        return linear_in(e.lhs, tensor_name) and not has(e.rhs)
    return False


def find_operand(spec: PosSplit, rhs) -> Access:
    """The access whose compressed level the position loop walks; ScheduleError
    naming the directive when there is none or more than one."""
    found = []
    for acc in dict.fromkeys(accesses(rhs)):
        chain = [acc.indices[d] for d in acc.tensor.format.order]
        names = [i.name for i in chain]
        if spec.operand and acc.tensor.name != spec.operand:
            continue
        if spec.index not in names:
            continue
        level = names.index(spec.index)
        if spec.parent and (level == 0 or names[level - 1] != spec.parent):
            continue
        if not spec.operand and acc.tensor.format.levels[level].is_dense:
            continue
        found.append(acc)
    if not found:
        if spec.operand:
            raise ScheduleError(f"{spec.what}: no operand {spec.operand} indexed by {spec.index} on the right side"
                                + (f" with {spec.parent} stored just above {spec.index}" if spec.parent else ""))
        raise ScheduleError(f"{spec.what}: no operand stores {spec.index} in a compressed level directly under "
                            f"{spec.parent}'s level; fusing two dense loops is not supported (fuse a CSR's "
                            "row and column loops, or use split)")
    if len(set(a.tensor.name for a in found)) > 1 or len(found) > 1:
        names = ", ".join(sorted({repr(a) for a in found}))
        raise ScheduleError(f"{spec.what}: several accesses could give the positions ({names}); "
                            "name one with pos(index, name, operand)")
    return found[0]


def check(spec: PosSplit, acc: Access, lhs: Access, rhs, opt) -> int:
    """Refuse a position loop the lowerer cannot honour; the level it walks."""
    what, caps = spec.what, opt.caps
    fmt = acc.tensor.format
    chain = [acc.indices[d] for d in fmt.order]
    level = [i.name for i in chain].index(spec.index)
    kind = fmt.levels[level]
    if spec.pieces and caps.host_threads:
        raise ScheduleError(f"{what}: a chunk of positions cut into sub-chunks maps them to GPU blocks, warps and "
                            f"threads; backend {caps.name!r} runs one level of chunks (split the position loop once)")
    if spec.pieces and spec.factor < 0:
        raise ScheduleError(f"{what}: sub-chunks need a chunk of a fixed number of positions; split the position "
                            "loop instead of dividing it")
    if not kind.segmented or not kind.unique:
        raise ScheduleError(f"{what}: {acc.tensor.name}'s level {level + 1} ({kind.spec()}) storing {spec.index} "
                            "is not a compressed level with unique coordinates; only those have positions to split")
    for m in range(level):
        k = fmt.levels[m]
        if not ((m == 0 and k.is_dense) or (k.segmented and k.unique)):
            raise ScheduleError(f"{what}: {acc.tensor.name}'s level {m + 1} ({k.spec()}) above {spec.index}'s "
                                "level must be compressed and unique (or dense at the top) for positions "
                                "to find their rows")
    if len(set(chain[:level + 1])) != level + 1:
        raise ScheduleError(f"{what}: {acc!r} repeats an index; its positions cannot be split")
    if lhs.tensor.format.is_dense and not linear_in(rhs, acc.tensor.name):  # (a sparse output: possparse.py)
        raise ScheduleError(f"{what}: the right side is not linear in {acc.tensor.name} (every term a product "
                            f"with one value of {acc.tensor.name}, no function around it), so a row's pieces in "
                            "different chunks would not add up to the row's result")
    return level


@dataclass
class PositionPlan:
    """The position loop of one lowering: its operand and level, and once the
    prelude is emitted, the clamp ``[lo, hi)`` of every level of the chain."""
    spec: PosSplit
    acc: Access
    level: int
    chain: list                      # the operand's indices, levels 0..level
    params: object = None            # the operand's TensorParams
    ranges: dict = field(default_factory=dict)  # level -> (lo var, hi var)
    race: str = "none"               # none | boundary-atomics | atomics | partials | ignored
    current: tuple = ()              # the pass being emitted: (edge?, first, end) (passes())

    @property
    def name(self) -> str:
        return self.acc.tensor.name

    def total(self, sizes) -> n.Expr:
        """The number of positions of the walked level."""
        return self._count(self.level, sizes)

    def prelude(self, lo, hi, sizes, fresh, span=None) -> list:
        """Positions ``[P0, P1)`` of the chunks ``[lo, hi)`` (or the positions ``span``,
        a sub-chunk's: gpupositions.py) and, level by level up the chain, the
        positions of the parents that hold them (zero ranges when empty)."""
        spec = self.spec
        total = n.Var(fresh(f"{self.name}{self.level + 1}_positions"), I64)
        stmts = [n.Comment(f"{spec.what}: chunks [lo, hi) as positions of {self.name} level {self.level + 1}, "
                           "the rows holding them by binary search"),
                 n.Declare(total, self.total(sizes))]
        factor = n.Var(fresh("chunk"), I64)
        if span is not None:
            lo, hi, factor = span[0], span[1], n.i64(1)
        elif spec.factor > 0:
            stmts.append(n.Declare(factor, n.i64(spec.factor)))
        else:  # a divide into P chunks: ceil(total / P), at least 1
            parts = -spec.factor
            stmts.append(n.Declare(factor, n.Binary("max", n.i64(1), n.Binary(
                "/", n.Binary("+", total, n.i64(parts - 1)), n.i64(parts)))))
        bounds = {}
        for m in range(self.level + 1):
            bounds[m] = (n.Var(fresh(f"{self.name}{m + 1}_first"), I64),
                         n.Var(fresh(f"{self.name}{m + 1}_last"), I64))
            stmts += [n.Declare(bounds[m][0], n.i64(0)), n.Declare(bounds[m][1], n.i64(0))]
        p0, p1 = bounds[self.level]
        stmts += [n.Assign(p0, n.Binary("min", n.Binary("*", lo, factor), total)),
                  n.Assign(p1, total if hi is None else n.Binary("min", n.Binary("*", hi, factor), total))]
        found = []
        for m in range(self.level, 0, -1):  # positions of level m-1 holding [first, last) of level m
            first, last = bounds[m]
            pos = self.params.levels[m]["pos"]
            count = self._count(m - 1, sizes)
            up0, up1 = bounds[m - 1]
            found += search(pos, first, count, up0, fresh)
            found += search(pos, n.Binary("-", last, n.i64(1)), count, up1, fresh)
            found.append(n.Assign(up1, n.Binary("+", up1, n.i64(1))))
        if found:
            stmts.append(n.If(n.Binary("<", p0, p1), n.block(*found)))
        self.ranges = bounds
        return stmts

    def _count(self, m, sizes) -> n.Expr:
        """The number of positions of level ``m`` of the chain, each level saying its own
        from its parent's (``Level.positions_expr``)."""
        levels = self.acc.tensor.format.levels
        count = n.i64(1)
        for l in range(m + 1):
            count = levels[l].positions_expr(count, sizes[self.chain[l]], self.params.levels[l])
        return count

    def level_of(self, i: IndexVar):
        return self.chain.index(i) if i in self.chain else None

    def passes(self) -> list:
        """The nest runs three times: over the range's first row, the rows strictly
        inside it (wholly this range's: no clamps, no races on rows), its last row.
        ``(edge?, first, end)`` of the level-0 positions of each."""
        first, last = self.ranges[0]
        one = n.i64(1)
        after = n.Binary("+", first, one)
        return [(True, first, n.Binary("min", after, last)),
                (False, after, n.Binary("-", last, one)),
                (True, n.Binary("max", after, n.Binary("-", last, one)), last)]

    def clamp(self, loop: n.For, m: int) -> n.For:
        """The loop over level ``m``'s positions (or level 0's coordinates) kept in
        its range in the current pass (:meth:`passes`)."""
        edge, start, end = self.current
        if m == 0:
            return replace(loop, start=start, end=end)
        if not edge:
            return loop
        lo, hi = self.ranges[m]
        return replace(loop, start=n.Binary("max", loop.start, lo), end=n.Binary("min", loop.end, hi))

    def check_loop(self, i, keys, full) -> None:
        """The loop over chain index ``i`` must walk the operand's level alone."""
        m = self.level_of(i)
        dense_top = m == 0 and self.acc.tensor.format.levels[0].is_dense
        ok = (full and not keys) if dense_top else (not full and keys == [(self.acc, m)])
        if not ok:
            others = ", ".join(sorted({k[0].tensor.name for k in keys if k[0] != self.acc})) or "a dense loop"
            raise ScheduleError(f"{self.spec.what}: the loop over {i.name} also walks {others}; a position "
                                f"loop needs {self.name} to be the only sparse operand of the loops over "
                                f"{', '.join(x.name for x in self.chain)}")

    def describe(self, parallel: bool, kind: str) -> str:
        s = self.spec
        f = f"ceil(nnz/{-s.factor})" if s.factor < 0 else str(s.factor)
        where = f"{self.name} level {self.level + 1}"
        par = f" (parallel: {kind}, races: {self.race})" if parallel else ""
        subs = "".join(f"; {name} over sub-chunks of {size}" for name, size in s.pieces)
        if s.inner:
            return (f"for {s.outer} in chunks of {f} positions of {where}{par}{subs}; {s.inner} within a "
                    f"chunk: {', '.join(i.name for i in self.chain)} from the positions")
        return f"for {s.outer} in positions of {where}{par}: {', '.join(i.name for i in self.chain)} from the positions"


def plan_for(opt, lhs, rhs, user_order):
    """``(PositionPlan or None, the user order with the operand's chain first)``."""
    if not opt.pos_split:
        return None, user_order
    spec = PosSplit(*opt.pos_split)
    if spec.parent and not spec.operand and spec.factor == 1 and not spec.inner and not _stores_under(spec, rhs):
        from .densefuse import plan  # a lone fuse of two dense loops
        return plan(spec, lhs, rhs, opt.caps), [spec.parent, spec.index] + [
            x for x in (user_order or []) if x not in (spec.parent, spec.index, spec.outer)]
    acc = find_operand(spec, rhs)
    level = check(spec, acc, lhs, rhs, opt)
    chain = [acc.indices[d] for d in acc.tensor.format.order][:level + 1]
    names = [i.name for i in chain]
    for base, outer, inner, _f in opt.split:
        if base in names:
            raise ScheduleError(f"{spec.what}: split({base!r}, {outer!r}, {inner!r}, ...) splits a loop "
                                "the positions give; split the position loop instead")
    if user_order and (set(spec.names) & set(user_order)
                       or [x for x in user_order if x in names] != [x for x in names if x in user_order]):
        raise ScheduleError(f"{spec.what}: reorder({', '.join(map(repr, user_order))}) moves the position "
                            f"loop; it runs outermost, over {', '.join(names)} in level order")
    return PositionPlan(spec, acc, level, chain), names + [x for x in (user_order or []) if x not in names]


def _stores_under(spec, rhs) -> bool:
    """Whether some operand stores ``spec.index`` in a compressed level right under ``spec.parent``'s."""
    try:
        find_operand(spec, rhs)
    except ScheduleError as e:
        return "several accesses" in str(e)
    return True


def check_order(plan: PositionPlan, order, rhs) -> None:
    """The chain's loops outermost, the operand not read through a transposed copy."""
    if order[:len(plan.chain)] != plan.chain:
        raise ScheduleError(f"{plan.spec.what}: the loops over {', '.join(i.name for i in plan.chain)} must "
                            f"run outermost, but the loop order is {', '.join(i.name for i in order)}")
    if plan.acc not in accesses(rhs):
        raise ScheduleError(f"{plan.spec.what}: {plan.name} is read through a transposed copy in this loop "
                            "order; its positions cannot be split")


def race_plan(plan: PositionPlan, opt, lhs):
    """The chunk loop (an IndexVar) when it runs on threads -- asked for, or by
    default -- and ``plan.race``: the strategy for the output elements two chunks
    share (by default atomics at a range's first and last row of a row-indexed
    output, else per-thread copies)."""
    spec = plan.spec
    want = opt.parallel
    if want is None:
        return None
    if want != "auto" and want != spec.outer:
        loops = ", ".join(i.name for i in plan.chain) + (f", {spec.inner}" if spec.inner else "")
        raise ScheduleError(f"parallelize({want!r}): with {spec.what} only the loop over chunks of positions "
                            f"({spec.outer}) can run on threads ({loops} run inside it)")
    if not lhs.tensor.format.is_dense:  # only a range's edge rows' counts are shared (possparse.py)
        plan.race = "boundary-atomics"
        return IndexVar(spec.outer)
    race, insist = opt.race or (None, False)
    gpu = not opt.caps.host_threads
    who = spec.outer
    if gpu and spec.pieces:  # block > warp > thread chunks: the levels' strategies together
        from .gpupositions import chunk_race
        race, insist, who = chunk_race(spec, opt)
    shared_rows = plan.chain[0] in lhs.indices  # chunks share only their first and last rows
    bf16 = lhs.tensor.dtype == "bfloat16" and not gpu  # the GPU adds bfloat16 atomically (a CAS loop)
    shared = "rows at their ends" if shared_rows else "elements"
    if race is None:
        race = "Atomics" if (shared_rows or gpu) and not bf16 else "ParallelReduction"
    if race == "NoRaces":
        raise ScheduleError(f"parallelize({who!r}, race='NoRaces'): chunks of positions share the "
                            f"output's {shared}; use 'Atomics' or 'ParallelReduction'")
    if race == "IgnoreRaces":
        if not insist:
            raise ScheduleError(f"parallelize({who!r}, race='IgnoreRaces'): chunks of positions add into "
                                f"shared output {shared} of {lhs.tensor.name}: the result would be wrong; pass "
                                "insist=True to run it anyway")
        plan.race = "ignored"
    elif race == "Atomics":
        if bf16:
            raise ScheduleError(f"parallelize({who!r}, race='Atomics'): the CPU has no atomic add "
                                "on bfloat16; use 'ParallelReduction'")
        plan.race = "boundary-atomics" if shared_rows else "atomics"
    elif gpu:  # Temporary, ParallelReduction: a thread's partial sum of a shared row, added atomically
        if not shared_rows:
            raise ScheduleError(f"parallelize({who!r}, race={race!r}): chunks of positions scatter into "
                                f"elements of {lhs.tensor.name} that any chunk may share, and the GPU keeps no "
                                "per-thread copies of the output; use 'Atomics'")
        plan.race = "boundary-atomics"
    else:  # Temporary, ParallelReduction: a zeroed copy of the output per chunk
        plan.race = "partials"
    return IndexVar(spec.outer)


def search(pos, target, count, out, fresh) -> list:
    """``out = max{q in [0, count) : pos[q] <= target}`` by bisection, for
    ``pos[0] <= target < pos[count]`` (the parent position holding ``target``; of
    several empty segments before it, the last one, which holds it)."""
    a, b, mid = (n.Var(fresh(x), I64) for x in ("s_lo", "s_hi", "s_mid"))
    return [n.Declare(a, n.i64(0)), n.Declare(b, count),
            n.While(n.Binary(">", n.Binary("-", b, a), n.i64(1)), n.block(
                n.Declare(mid, n.Binary("/", n.Binary("+", a, b), n.i64(2))),
                n.If(n.Binary("<=", as_i64(n.Load(pos, mid)), target),
                     n.block(n.Assign(a, mid)), n.block(n.Assign(b, mid))))),
            n.Assign(out, a)]


def search_reference(pos, target: int) -> int:
    """:func:`search` in Python (unit tests compare the two)."""
    a, b = 0, len(pos) - 1
    while b - a > 1:
        mid = (a + b) // 2
        if pos[mid] <= target:
            a = mid
        else:
            b = mid
    return a


def chunk_rows(pos, factor: int, lo: int, hi: int) -> tuple:
    """The rows ``[first, last)`` that chunks ``[lo, hi)`` of ``factor`` positions
    touch, by :func:`search_reference` (the model the tests check the kernel's by)."""
    total = int(pos[-1])
    p0, p1 = min(lo * factor, total), min(hi * factor, total)
    if p0 >= p1:
        return 0, 0
    return search_reference(pos, p0), search_reference(pos, p1 - 1) + 1
