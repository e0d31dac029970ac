"""Several loops mapped to the GPU's levels: TACO's ``parallelize(block, GPUBlock)``,
``parallelize(warp, GPUWarp)``, ``parallelize(thread, GPUThread)`` in one schedule.

One ``parallelize`` directive names the *grid-level* loop (``Options.parallel``):
the one of the highest level (block, then warp, then thread). The others are
*member* loops (``Options.members``): nested in it, they split each of its
iterations among the team that runs it. TACO's names map onto the CUDA
backend's loop mappings (backends/cuda/emit.py) by what encloses them:

=============  =================  ==========================================
grid level     member asked for   member mapping
=============  =================  ==========================================
gpu-block      gpu-warp           ``gpu-warp`` (a warp of the block per iteration)
gpu-block      gpu-thread         ``gpu-thread`` (the block's threads), or
                                  ``gpu-lane`` when a gpu-warp member encloses it
gpu-warp       gpu-thread         ``gpu-lane`` (the warp's 32 lanes)
=============  =================  ==========================================

Two loops on one level are refused (a gpu-thread loop, one thread, has no members).

Races among a member loop's iterations (:func:`member_race`): a loop over an
output index writes its own elements; a loop over a reduction index either
accumulates a scalar (the team combines the members' partial values with
shuffles: ``ParallelReduction``/``Temporary``, and what ``Atomics`` gets too) or
adds into the output directly (``Atomics``: atomic adds; ``ParallelReduction``:
a scalar the team sums and adds once, where the output element is fixed outside
the loop, :func:`partial_sum`). ``NoRaces`` and
``IgnoreRaces`` are refused where the iterations race (``insist=True`` runs
``IgnoreRaces`` anyway, as on the CPU). :func:`check_nesting` refuses member
loops the lowered nest does not place inside their team.
"""
from __future__ import annotations

from dataclasses import dataclass

from ..errors import ScheduleError
from ..ir import nodes as n
from . import split as split_mod
from .outputs import DenseSink, ReduceSink, ScalarSink

# the GPU levels, outermost first
LEVELS = ("gpu-block", "gpu-warp", "gpu-thread")


@dataclass(frozen=True)
class Member:
    """A member loop: ``index`` runs as ``mapping`` inside the grid-level loop."""
    index: str
    mapping: str      # gpu-warp | gpu-thread | gpu-lane (an IR For's parallel)
    race: str | None  # TACO's strategy asked for (None: the compiler chooses)
    insist: bool

    @property
    def what(self) -> str:
        asked = "gpu-thread" if self.mapping == "gpu-lane" else self.mapping
        extra = f", race={self.race!r}" if self.race else ""
        return f"parallelize({self.index!r}, {asked!r}{extra})"


def grid_and_members(directives: list, caps) -> tuple:
    """``(grid directive or None, members)`` from a schedule's ``parallelize``
    directives (their arguments). On a backend of host threads, or with one loop
    named, the last directive is the grid-level loop and there are no members."""
    if not directives:
        return None, ()
    if caps.host_threads or len({d[0] for d in directives}) == 1:
        return directives[-1], ()
    latest = {d[0]: d for d in directives}  # a loop named again: the last word counts (as on the CPU)
    by_level = {}
    for d in latest.values():
        if d[1] not in LEVELS:
            raise ScheduleError(f"parallelize({d[0]!r}, {d[1]!r}): several loops on the GPU take "
                                f"{', '.join(LEVELS)}")
        if d[1] in by_level:
            raise ScheduleError(f"parallelize({d[0]!r}, {d[1]!r}): {by_level[d[1]][0]} already runs as {d[1]}; "
                                "one loop per GPU level")
        by_level[d[1]] = d
    levels = [lv for lv in LEVELS if lv in by_level]
    grid = by_level[levels[0]]  # (a gpu-thread grid loop has no members: one loop per level)
    members = []
    for lv in levels[1:]:
        d = by_level[lv]
        mapping = lv
        if lv == "gpu-thread" and (grid[1] == "gpu-warp" or "gpu-warp" in by_level):
            mapping = "gpu-lane"
        race, insist = (d[2], d[3]) if len(d) > 2 else (None, False)
        members.append((d[0], mapping, race, insist))
    return grid, tuple(members)


def members_of(opt) -> dict:
    """``{index name: Member}`` of the options' member loops."""
    return {m[0]: Member(*m) for m in opt.members}


def member_race(member: Member, writes_output: bool, owns_elements: bool) -> str:
    """How the iterations of ``member``'s loop keep apart: "none" (each writes its own
    output elements, or only scalars the team reduces), "atomics" (adds into shared
    output elements), "ignored" (IgnoreRaces insisted on); a ScheduleError when the
    strategy asked for cannot be right. ``writes_output``: the loop's body adds into
    the output itself (not into a scalar); ``owns_elements``: its index is an output
    index, so iterations write distinct elements."""
    race, what = member.race, member.what
    if owns_elements:
        return "none"
    if not writes_output:  # a scalar accumulated in each member, combined by the team after the loop
        if race == "NoRaces":
            raise ScheduleError(f"{what}: race='NoRaces' is wrong here: the iterations of {member.index} add "
                                "into one value; use 'ParallelReduction' (the team combines partial sums)")
        if race == "IgnoreRaces" and not member.insist:
            raise ScheduleError(f"{what}: race='IgnoreRaces': the iterations of {member.index} add into one "
                                "value; use 'ParallelReduction', or pass insist=True")
        return "none"
    if race in (None, "Atomics"):
        return "atomics"
    if race == "IgnoreRaces" and member.insist:
        return "ignored"
    if race in ("Temporary", "ParallelReduction"):
        raise ScheduleError(f"{what}: the iterations of {member.index} add into output elements that change "
                            "inside the loop (no single sum for the team to combine); use race='Atomics', or "
                            f"reorder so that {member.index} is the innermost loop")
    raise ScheduleError(f"{what}: race={race!r}: the iterations of {member.index} add into the same output "
                        "elements" + (", so the result would be wrong; pass insist=True to run it anyway"
                                      if race == "IgnoreRaces" else "; use 'Atomics'"))


def asked_member(member: Member, i, sink, lhs) -> tuple:
    """``(mapping, racy)`` of the loop over ``i`` that ``member`` names, its values going
    to ``sink`` (outputs.py): racy when its iterations add into shared output elements."""
    if not isinstance(sink, (ScalarSink, ReduceSink, DenseSink)):
        raise ScheduleError(f"{member.what}: the loop over {i.name} appends to the sparse output "
                            f"{lhs.tensor.name} in order; a team of GPU threads would race on it")
    owns = isinstance(sink, DenseSink) and split_mod.base_of(i) in lhs.indices
    if member.mapping == "gpu-warp" and not isinstance(sink, DenseSink):
        raise ScheduleError(f"{member.what}: the loop over {i.name} sums into a value of the block's iteration, "
                            "which the block's warps cannot combine; map it to 'gpu-thread' (the block's threads)")
    return member.mapping, member_race(member, isinstance(sink, DenseSink), owns) == "atomics"


def partial_sum(member: Member, i, sink, env, lhs) -> bool:
    """Whether the member loop over reduction index ``i`` sums into a scalar that the
    team combines and adds into the output once (``ParallelReduction``/``Temporary``:
    a block's partial dot product, one atomic add per block), instead of adding into
    the output at each iteration: where the output element is fixed outside the loop."""
    return (member.race in ("ParallelReduction", "Temporary") and isinstance(sink, DenseSink)
            and split_mod.base_of(i) not in lhs.indices and all(x in env.bound for x in lhs.indices))


def racing(sink, racy: bool, emit):
    """``emit()`` with ``sink``'s updates atomic when ``racy`` (a member loop over a
    reduction index adding into the output)."""
    if not racy:
        return emit()
    saved, sink.atomic = sink.atomic, True
    try:
        return emit()
    finally:
        sink.atomic = saved


def check_nesting(fn: n.Function, opt, placed: dict) -> None:
    """Every member loop placed, inside the grid-level loop and its team (gpu-lane in a
    warp, a block's members directly in the block); a ScheduleError naming the
    directive otherwise. ``placed``: loop variable name -> the index it runs, for the
    loops the nest marked as members."""
    members = members_of(opt)
    if not members:
        return
    found = {}

    def visit(node, stack):
        if isinstance(node, n.For) and node.parallel:
            if node.var.name in placed:
                found.setdefault(placed[node.var.name], []).append(stack[-1] if stack else None)
            stack = stack + [node.parallel]
        for c in n.children(node):
            visit(c, stack)

    visit(fn.body, [])
    for m in members.values():
        if m.index not in found:
            raise ScheduleError(f"{m.what}: no for loop over {m.index} runs inside the {opt.parallel_kind} loop "
                                f"over {opt.parallel} (it runs outside it, co-iterates sparse operands in a while "
                                "loop, or is not a loop of this nest)")
        need = "gpu-warp" if m.mapping == "gpu-lane" else "gpu-block"
        for team in found[m.index]:
            if team != need:
                where = f"inside a {team} loop" if team else "outside every parallel loop"
                raise ScheduleError(f"{m.what}: the loop over {m.index} runs {where}; a {m.mapping} member "
                                    f"must sit directly in a {need} loop's iteration (reorder it there)")


#: the IR loop mappings that need whole warps in a block (a warp per iteration, a
#: block's team, the lanes of a warp; a block's reduction combines per-warp sums)
WARP_MAPPINGS = ("gpu-warp", "gpu-block", "gpu-lane")


def check_block(module: n.Module, opt) -> int:
    """``opt.gpu_block`` (Schedule.gpu), refused when it is not a multiple of 32 and
    the kernel maps warps or blocks: a warp's lanes and a block's per-warp partial
    sums need whole warps."""
    block = opt.gpu_block
    if not block or block % 32 == 0:
        return block
    for f in module.functions:
        for x in n.walk(f.body):
            if isinstance(x, n.For) and x.parallel in WARP_MAPPINGS:
                raise ScheduleError(f"gpu(block={block}): the kernel maps loop {x.var.name} to {x.parallel!r}, "
                                    "which needs whole warps in a block: use a multiple of 32")
    return block
