"""Which loop runs in parallel, and the facts the runtime needs to split it.

The lowerer asks two things before it emits a nest: may the outermost output
loop run on threads (or a GPU grid), and if so, what measures a call's work --
the ``pos`` array whose prefix sums balance the threads, the sparse levels and
dense loops nested under each balanced nonzero (``ThreadPlan.work_scale`` and
``work_dense``). Answers come from the loop order, the lattice each loop would
build and the output's format; nothing here emits code.
"""
from __future__ import annotations

from dataclasses import dataclass

from ..errors import ScheduleError
from ..notation import Access, accesses
from .normalize import split_sums
from . import lattice as lat
from . import split as split_mod
from .order import access_chain
from .outputs import applies
from .split import SplitPiece

# the loops a team-per-iteration mapping splits among its members
TEAM_MEMBERS = {"gpu-warp": "gpu-lane", "gpu-block": "gpu-thread"}


def probe_key(acc, i):
    """The iterator key of ``acc``'s level that stores ``i`` at the top of the nest
    (nothing bound yet), or None when that level is located or absent."""
    if acc.tensor.format.is_dense or i not in acc.indices:
        return None
    level = access_chain(acc).index(i)
    kind = acc.tensor.format.levels[level]
    return None if kind.locatable else (acc, level)


def probe_lattice(expr, i):
    """The lattice of loop ``i`` at the top of the nest."""
    return lat.build(expr, i, lambda a: probe_key(a, i))


@dataclass
class LoopFacts:
    """What the parallel choice reads from a lowering."""
    opt: object          # Options
    lhs: Access
    expr: object         # the expression the nest computes
    rhs: object          # the right side, every access (balance and work)
    outer: list          # the loops over output indices and scatters, outermost first
    loop_order: list
    position: dict       # IndexVar -> its place in the loop order
    has_gemms: bool = False

    def gpu_atomics(self) -> bool:
        return gpu_atomics(self.opt, self.lhs)


def gpu_atomics(opt, lhs) -> bool:
    """Whether a parallel loop over a reduction index may add into the output with
    atomics: where the backend has them, into a dense output."""
    return opt.parallel is not None and opt.caps.atomics and lhs.tensor.format.is_dense


def partials_ok(opt, lhs) -> bool:
    """Whether a parallel loop over a reduction index may give each host thread its
    own zeroed copy of the output (a scalar or a vector) for the runtime to add up
    at the end (TACO's ``ParallelReduction``/``Temporary`` strategies): where the
    backend runs host threads and has no atomics of its own, into a dense output of
    at most one index. The runtime splits such a call only where the copies cost
    little against its work (launch.py)."""
    return (opt.parallel is not None and opt.caps.host_threads and not opt.caps.atomics
            and lhs.tensor.format.is_dense and len(lhs.indices) <= 1)


def reduction_strategy(opt, lhs):
    """How iterations of a parallel loop over a reduction index keep apart, from the
    schedule's race strategy (``parallelize(..., race=)``, TACO's names) and the
    backend: "atomics", "partials" (per-thread copies, runtime/partials.py),
    "ignored" (plain adds: IgnoreRaces with insist=True), or None when they cannot
    (:func:`race_refusal` says why)."""
    race, insist = opt.race or (None, False)
    if race is None:
        return "atomics" if gpu_atomics(opt, lhs) else "partials" if partials_ok(opt, lhs) else None
    if race == "IgnoreRaces":
        return "ignored" if insist and opt.parallel is not None else None
    if race == "NoRaces" or opt.parallel is None or not lhs.tensor.format.is_dense:
        return None
    if race == "Atomics":
        return "atomics" if opt.caps.atomics or (opt.caps.host_threads and lhs.tensor.dtype != "bfloat16") else None
    return "partials" if opt.caps.host_threads else None  # Temporary, ParallelReduction


def race_refusal(opt, lhs, i) -> str:
    """Why iterations of the loop over reduction index ``i`` may not run in parallel."""
    race, _insist = opt.race or (None, False)
    out = lhs.tensor.name
    if race == "NoRaces":
        return f"race='NoRaces' is wrong here: iterations of {i.name} add into the same elements of {out}"
    if race == "IgnoreRaces":
        return (f"race='IgnoreRaces': iterations of {i.name} add into the same elements of {out}, so the result "
                "would be wrong; pass insist=True to run it anyway")
    if race is not None and not lhs.tensor.format.is_dense:
        return f"race={race!r}: the sparse output {out} is assembled in order; only dense outputs take it"
    if race == "Atomics":
        return f"race='Atomics': backend {opt.caps.name!r} has no atomic add on {lhs.tensor.dtype}"
    if race is not None:
        return f"race={race!r}: backend {opt.caps.name!r} has no per-thread copies (use 'Atomics')"
    return (f"{i.name} is a reduction index: iterations would race on the output "
            f"{out} (the GPU backends add into a dense output with atomics; "
            "CPU threads add up private copies of a scalar or vector output only); "
            "keep this loop sequential, or name a race strategy (parallelize(..., race='Atomics'))")


def scalar_sum_loop(f: LoopFacts):
    """The first loop of a scalar output's sum, when CPU threads may run it into
    per-thread partial sums (:func:`partials_ok`); else None. The sum keeps its
    register accumulator (and its vector lanes) within each thread's range."""
    if f.lhs.indices or not f.loop_order or reduction_strategy(f.opt, f.lhs) is None:
        return None
    top, _body = split_sums(f.expr)
    first = f.loop_order[0]
    # the whole right side must be one sum over the loop: ``sum(i, x[i]) + sum(j, y[j])``
    # split by i would add the j sum once per thread
    return first if split_mod.base_of(first) in top else None


def choose_parallel(f: LoopFacts, shape: str):
    """The loop to run in parallel for an output of ``shape``, or None; a
    ScheduleError when the schedule asks for one that would be wrong."""
    want = f.opt.parallel
    if want is None or f.has_gemms:
        return None  # with a matrix product, BLAS's own threads do the bulk of the work
    lhs, kind = f.lhs, f.opt.parallel_kind
    first = f.outer[0] if f.outer else scalar_sum_loop(f)
    if first is None:
        if want == "auto":
            return None
        raise ScheduleError(f"parallelize({want!r}): the output {lhs.tensor.name} has no loop to "
                            "split; iterations of a reduction into one value would race")
    if want != "auto" and want != first.name:
        return inner_parallel(f, want, shape, first)
    why = None
    if kind in TEAM_MEMBERS and shape != "dense":
        why = (f"parallelize({first.name!r}, {kind!r}): the {shape} output {lhs.tensor.name} is appended to "
               "one entry at a time per row, which a team of GPU threads would race on; use 'gpu-thread' "
               "(a thread per row)")
    elif isinstance(first, SplitPiece) and isinstance(first.base, SplitPiece):
        why = (f"parallelize({first.name!r}): a piece of a piece of a split loop does not run on threads "
               f"(its trip count varies); parallelize a piece of the first split ({split_mod.base_of(first).name})")
    else:
        ok, reason = _parallel_ok(f, split_mod.base_of(first), shape)
        if not ok:
            why = f"parallelize({first.name!r}) is not safe: {reason}"
    if why is None:
        return first
    if want == "auto":
        return None
    raise ScheduleError(why)


def inner_parallel(f: LoopFacts, want: str, shape: str, first):
    """A parallel loop below the outermost one (TACO's parallelize of an inner loop):
    each thread runs the loops outside it whole and its own range of this one. Only
    where that is right and pays: on CPU threads, a dense loop or one over a level
    whose positions are its coordinates (a bitmap: its range ``0..N`` the same in
    every iteration outside it) over an index of a dense output (each thread stores
    its own elements); else a ScheduleError saying why."""
    loop = next((x for x in f.loop_order if x.name == want), None)
    where = f"parallelize({want!r})"
    if loop is None:
        raise ScheduleError(f"{where}: no loop of that name runs in this nest")
    if isinstance(loop, SplitPiece):
        raise ScheduleError(f"{where}: a piece of a split loop runs on threads only as the outermost loop; "
                            f"only the outermost loop ({first.name}) can run on threads there; reorder it first")
    if not f.opt.caps.host_threads:
        raise ScheduleError(f"{where}: a parallel loop below the outermost one ({first.name}) runs on CPU threads "
                            f"only; backend {f.opt.caps.name!r} maps the outermost loop")
    if shape != "dense":
        raise ScheduleError(f"{where}: only the outermost loop ({first.name}) can run on threads; the sparse output "
                            f"{f.lhs.tensor.name} is assembled in loop order (reorder the loop outermost first)")
    if loop not in f.lhs.indices:
        raise ScheduleError(f"{where}: only the outermost loop ({first.name}) or, below it, a dense loop over an "
                            f"output index can run on threads; {want} is a reduction index whose iterations would "
                            f"race on {f.lhs.tensor.name}")
    for acc in accesses(f.rhs):
        fmt = acc.tensor.format
        if loop in acc.indices and not fmt.is_dense:
            level = access_chain(acc).index(loop)
            if not (fmt.levels[level].locatable or fmt.levels[level].coordinate_positions):
                raise ScheduleError(f"{where}: the loop over {want} walks {acc.tensor.name}'s level {level + 1} "
                                    f"({fmt.levels[level].spec()}), whose range changes with the loops outside it; "
                                    "only a dense loop runs in parallel below the outermost one")
    L = probe_lattice(f.expr, loop)
    if (not L.full or L.points) and lone_iterator(f.expr, loop) is None:
        raise ScheduleError(f"{where}: the loop over {want} merges sparse operands, and a merge's iterations "
                            "are not known up front; only a dense loop, or one walking a single bitmap level, runs "
                            "in parallel below the outermost one")
    return loop


def _parallel_ok(f: LoopFacts, i, shape):
    lhs = f.lhs
    if i not in lhs.indices and not (shape == "dense" and reduction_strategy(f.opt, lhs)):
        return False, race_refusal(f.opt, lhs, i)
    if shape in ("csf", "coo"):
        ok, why = splittable(lhs, i, shape)
        if not ok:
            return False, why
    if shape == "packed" and access_chain(lhs)[0] != i:
        return False, "packed output rows must be split by the outer index"
    L = probe_lattice(f.expr, i)
    if (not L.full or L.points) and coordinate_rows(f, i) is None and top_positions(f, i, shape) is None:
        return False, f"loop {i.name} co-iterates sparse operands"
    return True, ""


def lone_iterator(expr, i):
    """``(access, level)`` when the outer loop over ``i`` walks one operand's level
    and nothing else (no co-iteration, no dense loop over the whole range); else None."""
    L = probe_lattice(expr, i)
    if L.full or len(L.points) != 1:
        return None
    (point,) = L.points
    return next(iter(point)) if len(point) == 1 else None


def coordinate_rows(f: LoopFacts, i):
    """``(access, 0)`` when the outer loop over ``i`` walks one operand's top level
    whose positions are its coordinates (``Level.coordinate_positions``: a bitmap
    tests a byte per row) and nothing else: its iterations are rows as independent
    as a dense loop's, so threads or a GPU grid split them by ranges of ``i`` and an
    output takes them as it takes a dense loop's rows. None otherwise."""
    key = lone_iterator(f.expr, i)
    if key is None:
        return None
    acc, level = key
    return key if level == 0 and acc.tensor.format.levels[0].coordinate_positions else None


def top_positions(f: LoopFacts, i, shape):
    """``(access, 0)`` when the outer loop over ``i`` walks one operand's top
    compressed level and nothing else (a DCSR or CSF operand, no co-iteration):
    its positions can be split over host threads like rows, since a unique level
    gives every position its own coordinate and so its own rows of a dense
    output -- or, for a sparse output assembled in two phases (assembly.py), its own
    row of counts and entries. None otherwise."""
    if shape not in ("dense", "csf") or (shape == "csf" and f.opt.append_chunks):
        return None
    key = lone_iterator(f.expr, i)
    if key is None:
        return None
    acc, level = key
    kind = acc.tensor.format.levels[level]
    if level != 0 or not kind.segmented or not kind.unique:
        return None
    return acc, level


def parallel_positions(f: LoopFacts, parallel, shape):
    """``(access, 0)`` when the threads split a top compressed level's positions
    instead of rows (see :func:`top_positions`), else None."""
    if parallel is None:
        return None
    return top_positions(f, split_mod.base_of(parallel), shape)


def balance(f: LoopFacts, parallel, walked):
    """A pos array, as (storage, level), whose prefix sums measure the work of the
    parallel loop (``walked``: the positions the threads split, if any)."""
    if parallel is None:
        return None
    parallel = split_mod.base_of(parallel)  # a split piece: the whole loop's work (not its chunks')
    for acc in accesses(f.rhs):
        fmt = acc.tensor.format
        chain = access_chain(acc)
        if fmt.is_dense or chain[0] != parallel or len(chain) < 2:
            continue
        top_walked = walked is not None and walked[0] is acc
        if (fmt.levels[0].coordinate_positions or top_walked) and fmt.levels[1].segmented:
            return (acc.tensor.name, 1)  # indexed like the parallel loop: rows, or top positions
    return None


def work_scale(f: LoopFacts, balanced) -> tuple:
    """The compressed levels, as (storage, level), that the loops nested inside
    the balanced level's loop walk: the runtime multiplies a balanced nonzero's
    work by their mean segment lengths to decide whether a call is worth
    splitting (SpGEMM's nonzero of A walks a row of B). Nested dense loops are
    :func:`work_dense`."""
    scale = []
    for idx in _loops_under(f, balanced):
        for a in accesses(f.rhs):
            chain = access_chain(a)
            if idx in chain and a.tensor.format.levels:
                level = chain.index(idx)
                if level > 0 and a.tensor.format.levels[level].segmented:
                    scale.append((a.tensor.name, level))
                    break
    return tuple(scale)


def work_dense(f: LoopFacts, balanced) -> tuple:
    """Names of the indices nested inside the balanced level's loop that no operand
    stores sparsely: dense loops (SpMM's k, MTTKRP's j), whose sizes the runtime
    weighs into a balanced nonzero's work. A loop that merges a sparse level with
    a dense one runs densely but is left out: the estimate stays on the low side."""
    def stored_sparsely(idx):
        for a in accesses(f.rhs):
            chain, levels = access_chain(a), a.tensor.format.levels
            if idx in chain and not levels[chain.index(idx)].is_dense:
                return True
        return False
    return tuple(idx.name for idx in _loops_under(f, balanced) if not stored_sparsely(idx))


def _loops_under(f: LoopFacts, balanced) -> list:
    """The loop order's indices nested inside the loop over the balanced level."""
    if balanced is None:
        return []
    name, level = balanced
    acc = next(a for a in accesses(f.rhs) if a.tensor.name == name)
    index = access_chain(acc)[level]
    # the last loop running that index (a split index's inner piece), in the loop order with pieces
    at = max(k for k, x in enumerate(f.loop_order) if split_mod.base_of(x) == index)
    return list(dict.fromkeys(split_mod.base_of(x) for x in f.loop_order[at + 1:]))


def splittable(lhs, i, shape) -> tuple:
    """Whether the loop over ``i`` may run on threads although the output is
    sparse: only through two-phase assembly, over the output's first level."""
    fmt = lhs.tensor.format
    chain = [lhs.indices[d] for d in fmt.order]
    if shape != "csf" or not applies(fmt):
        return False, ("the output is appended to in order (a coo output, or a compressed first level: "
                       "only outputs whose first level is dense are assembled in parallel)")
    if chain[0] != i:
        return False, f"the output is assembled row by row over {chain[0].name}, not {i.name}"
    return True, ""
