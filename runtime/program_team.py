"""A fused run's phases on one libgomp team: one native call for a call big enough for threads.

A fused run with no function over chunks of rows of its own is cut into phases
(``spcomp/program_phases.team_cut``), each a FusedRun: *split* where it has a
function over ``[lo, hi)`` rows (every statement of the phase over each
thread's rows: ``program_chunks``), else *serial* (its one-thread function). A
big call binds every phase in order (each dense tensor a phase writes is
allocated then, so later phases bind against it), lays out their argument lists,
bounds and per-chunk copies in one frame, and calls the target's team driver
(``backends/cpu/team.py``) once: the phases in order on one team, a barrier
between them, a summed output's copies added natively after its phase, the
statuses shared (a failure stops every later phase). No Python runs between
phases. A sparse tensor a later phase reads is handed over inside the call: its
writer's fixed arrays by address, its grown ones through their slots (the driver
reads such an argument when the phase starts); one appended per chunk (csr) is
stitched by the driver after its phase, one read transposed is copied there
(:mod:`.program_team_copies`). Sparse outputs no later phase reads are stitched
after the call, as a chunked call's are. A run the driver cannot take so keeps the
per-phase path (``program_phases.phase_segments``); :func:`refusal` says why.
"""
from __future__ import annotations

import ctypes
import functools

import numpy as np

from spcomp.ir.types import I32, I64, from_numpy

from . import interrupt, partials
from .launch import WiderIndices, balance_pos, parallel_extent
from .memory import data_ptr, free
from .program_chunks import ChunkPlan, join_slots, per_chunk_params
from .program_team_copies import ARRAYS, copied, copies_before, copy_types
from .threads import get_num_threads


def refusal(runs: list, statements: list, target) -> str | None:
    """Why phases ``runs`` (FusedRuns; ``statements``: each one's statement numbers)
    cannot run as one team call, or None."""
    if getattr(target, "team_driver", None) is None or not target.team_available():
        return "no native team (libgomp) here"
    writers = {}  # sparse tensor -> (its writer's step, whether by chunks) of the phases before
    for run, ks in zip(runs, statements):
        for st, k in zip(run.steps, ks):
            for spec in st.ctx.plan.storages:
                if spec.operand not in writers:
                    continue
                writer, chunked = writers[spec.operand]
                if chunked is not None and not _joinable(writer, chunked):
                    return (f"statement {k + 1} reads {spec.operand}, sparse, appended per chunk by an earlier "
                            "phase in a layout the team does not join (stitched between phases by the runtime)")
                if writer.low.output.expand is not None or writer.low.inspection.notation.lhs.tensor.format != \
                        writer.ctx.plan.out_format:
                    return (f"statement {k + 1} reads {spec.operand}, sparse, which an earlier phase assembles in "
                            "another layout (laid out for its readers by the runtime)")
                if spec.storage != spec.operand and copied(st, spec, writer) and getattr(target, "team_copies", bool)():
                    continue
                if (spec.storage != spec.operand or spec.storage in st.ctx.plan.derived
                        or spec.format != writer.ctx.plan.out_format):
                    return (f"statement {k + 1} reads {spec.operand}, sparse, from an earlier phase through a copy "
                            "(made between phases by the runtime)")
        chunks = run.chunks(32)
        writers.update((st.name, (st, chunks.lows[j] if chunks is not None else None))
                       for j, st in enumerate(run.steps) if st.sparse)
        if chunks is not None:
            for at, j in per_chunk_params(chunks)[2].items():
                if not target.team_sums(partials.out_dtype(chunks.lows[j]).name):
                    return f"statement {ks[j] + 1} sums {run.steps[j].name} into copies of a dtype added in Python"
    return None


def _joinable(step, low) -> bool:
    """Whether the team driver stitches step's tensor, appended per chunk by chunk lowering
    ``low``, between phases: in its declared format, a dense level then a compressed one
    whose row ends the runtime allocates and whose coordinates and values grow."""
    fmt = low.inspection.notation.lhs.tensor.format
    return (fmt == step.ctx.plan.out_format and len(fmt.levels) == 2 and fmt.levels[0].is_dense
            and not fmt.levels[1].is_dense and list(low.output.growable) == [(1, "crd"), (-1, "vals")])


def _readers(runs: list) -> set:
    """``(phase, step)`` of each sparse statement of a chunked phase that a later phase reads."""
    out = set()
    for p, run in enumerate(runs):
        later = {spec.operand for r in runs[p + 1:] for st in r.steps for spec in st.ctx.plan.storages}
        if run.chunks(32) is not None:
            out.update((p, j) for j, st in enumerate(run.steps) if st.sparse and st.name in later)
    return out


class TeamRun:
    """Phases ``runs`` (FusedRuns, in order) run by one native team call."""

    def __init__(self, runs: list, target):
        self.runs = runs
        self.target = target
        self.drivers: dict = {}  # bits -> the compiled team driver
        self.joined = _readers(runs)  # (phase, step) the driver stitches between phases
        self.copies = copies_before(runs)  # per phase, the tensors transposed just before it
        self.steps = [item for p, names in enumerate(self.copies) for item in [("copy", t) for t in names] + [("run", p)]]
        self.copiers: dict = {}  # (bits, dtype) -> (address, owner) of the copy function

    def split(self, p: int) -> bool:
        """Whether phase ``p`` runs over the threads' chunks of rows: by its function over
        chunks, or its one loop over rows (its one-thread function split as a kernel's)."""
        return self.runs[p].chunks(32) is not None or self.runs[p].build(32).variant is not None

    @functools.cached_property
    def sums_over_rows(self) -> bool:
        """Whether a phase sums over rows into per-chunk copies: its bits then differ
        from the one-thread function's (``path_choice.py`` keeps such runs on the team).
        Asked by every big call: found once."""
        for run in self.runs:
            built = run.chunks(32)
            lows = built.lows if built is not None else (
                [run.build(32).variant.lowered] if run.build(32).variant is not None else [])
            if any(low.threads.partials for low in lows):
                return True
        return False

    def _build(self, p: int, bits: int):
        run = self.runs[p]
        return run.chunks(bits) if run.chunks(32) is not None else run.build(bits)

    def _driver(self, bits: int, builds: list) -> tuple:
        """``(driver, phases)``: the team driver of the ``bits``-wide builds, compiled once,
        and per phase what a call needs of it: whether it is split, by a function over
        chunks, its parameters' IR types (after ``lo``, ``hi``) and its summed copies,
        ``(argument position, statement, dtype, replaces)``."""
        if bits not in self.drivers:
            specs, phases = [], []
            for kind, what in self.steps:
                if kind == "copy":
                    types = copy_types(I32 if bits == 32 else I64, from_numpy(self._writer(what).ctx.plan.out_dtype))
                    specs.append((False, types, frozenset(), (), ()))
                    phases.append((False, False, types, []))
                    continue
                p, built = what, builds[what]
                fn = built.module.function(built.module.entry)
                split, chunked = self.split(p), self.runs[p].chunks(32) is not None
                types = tuple(q.type for q in (fn.params[2:] if split else fn.params))
                copies = [(at, j, partials.out_dtype(built.lows[j]), built.lows[j].output.overwrites)
                          for at, j in (per_chunk_params(built)[2].items() if chunked else ())]
                per_chunk = [at for where in per_chunk_params(built) for at in where] if chunked else []
                joins = tuple((bits // 8, bits // 8, partials.out_dtype(built.lows[j]).itemsize)
                              for j in range(len(built.lows)) if (p, j) in self.joined)
                specs.append((split, types, frozenset(at - 2 for at in per_chunk), tuple(c[2].name for c in copies),
                              joins))
                phases.append((split, chunked, types, copies))
            self.drivers[bits] = (self.target.team_driver(specs), phases)
        return self.drivers[bits]

    def _writer(self, name: str):
        return next(st for run in self.runs for st in run.steps if st.name == name)

    def _copier(self, bits: int, dtype) -> int:
        key = (bits, dtype)
        if key not in self.copiers:
            self.copiers[key] = self.target.team_transpose(I32 if bits == 32 else I64, from_numpy(dtype))
        return self.copiers[key][0]

    def run(self, env: dict) -> bool:
        """Run every phase on ``env`` (inputs and earlier results by name), one native call
        (False, nothing run: a phase's statements span different rows at this call);
        a sparse tensor outgrowing 32-bit positions runs the call again 64-bit (a run with
        a dense ``+=`` and a sparse statement runs 64-bit at once: a rerun would add twice)."""
        steps = [st for run in self.runs for st in run.steps]
        wide = any(st.sparse for st in steps) and any(st.accumulate and not st.sparse for st in steps)
        try:
            return self._run(env, 64 if wide else 32)
        except WiderIndices:
            return self._run(env, 64)

    def _run(self, env: dict, bits: int) -> bool:
        bound, work, pending, given = [], 0, {}, []
        for run in self.runs:  # each phase's dense results allocated before the next binds
            per_step, units, need, given_of = run.bind(env, bits, pending)
            bound.append(per_step)
            given.append(given_of)
            bits, work = max(bits, need), work + units
        builds = [self._build(p, bits) for p in range(len(self.runs))]
        if any(run.chunks(32) is not None and run.extent(built, per_step) is None
               for run, built, per_step in zip(self.runs, builds, bound)):
            return False  # (as FusedRun._chunked: such a call runs on one thread; here, in the per-phase path)
        driver, phases = self._driver(bits, builds)
        threads = get_num_threads()
        frame = np.zeros(driver.words, dtype=np.int64)
        keep, outs, joins = [], [], []  # arrays the frame points into; each phase's Outputs; chunked joins
        written = {}  # sparse tensor -> the Output an earlier phase assembles it in
        made = {}  # tensor -> the three slots its transposed copy's arrays are left in
        try:
            for i, (kind, p) in enumerate(self.steps):
                base = driver.bases[i]
                if kind == "copy":  # p: the tensor to transpose (program_team_copies.py)
                    out, slots = written[p], np.zeros(3, dtype=np.int64)
                    keep.append(slots)
                    made[p] = slots
                    frame[base] = self._copier(bits, out.dtype)
                    words = [_array_word(out, key) for key in ARRAYS] + [
                        (pending[p].shape[0], False), (pending[p].shape[1], False)] + [
                        (data_ptr(slots) + 8 * k, False) for k in range(3)]
                    frame[base + 3:base + 3 + len(words)] = [w for w, _f in words]
                    frame[base + 3 + len(words):base + 3 + 2 * len(words)] = [int(f) for _w, f in words]
                    continue
                run, built, per_step = self.runs[p], builds[p], bound[p]
                split, chunked, types, copies = phases[i]
                run.settle(built, per_step, chunked)
                args, mine = run.arg_list(built, per_step, chunked, bits)
                outs.append(mine)
                through = _handed_over(run, built, written, made, args)
                written.update(zip([st.name for st in run.steps if st.sparse], mine))
                frame[base] = ctypes.cast(built.function, ctypes.c_void_p).value
                if split:
                    storages, sizes = per_step[0][:2]
                    low = built.lows[0] if chunked else built.variant.lowered  # (rows: the first statement's plan)
                    launcher = run.steps[0].ctx.launcher
                    n = run.extent(built, per_step) if chunked else parallel_extent(low, sizes, storages)
                    bounds = launcher.bounds(n, threads, launcher.weights(low, storages, balance_pos(low, storages),
                                                                          sizes))
                    keep.append(bounds)
                    count = len(bounds) - 1
                    frame[base + 1], frame[base + 2] = count, data_ptr(bounds)
                    for s, (at, j, dtype, replaces) in enumerate(copies):
                        size = partials.out_size(built.lows[j], per_step[j][1])
                        table = np.zeros((count, size), dtype)
                        where = data_ptr(table) + table.strides[0] * np.arange(count, dtype=np.int64)
                        keep += [table, where]
                        frame[driver.sums[i][s]:driver.sums[i][s] + 5] = (args[at], data_ptr(table), count, size,
                                                                          int(replaces))
                        args[at] = data_ptr(where)
                    if chunked and any(st.sparse for st in run.steps):
                        joins.append(self._chunk_slots(p, run, built, per_step, args, bounds, work, keep, mine))
                        self._native_joins(driver.joins[i], frame, p, joins[-1], count, bounds)
                    if chunked:
                        args = args[2:]
                        through = {at - 2 for at in through}
                frame[base + 3:base + 3 + len(args)] = [_word(a, t) for a, t in zip(args, types)]
                for at in through:
                    frame[base + 3 + len(types) + at] = 1
            status = None
            try:
                status = interrupt.run(work, driver.function, threads, data_ptr(frame))
            finally:  # every chunk's arrays freed, the returned ones stitched first where all went well
                errors = []
                for join in joins:
                    try:
                        join_slots(*join, status == 0 and not errors)
                    except BaseException as e:  # (past 32 bits: the caller runs it 64-bit)
                        errors.append(e)
                for slots in made.values():  # the copies' arrays, the readers done with them
                    for address in slots.tolist():
                        if address:
                            free(address)
                if errors:
                    raise errors[0]
        except BaseException:
            for mine in outs:
                for out in mine:
                    out.discard()
            raise
        if status != 0:
            for mine in outs:
                for out in mine:
                    out.discard()
            self.runs[-1].fail(status, [o for mine in outs for o in mine], bits)
        for run, per_step, mine, given_of in zip(self.runs, bound, outs, given):
            run.put_results(per_step, mine, bits, env, given_of)
        return True

    def _native_joins(self, bases: list, frame, p: int, join: tuple, count: int, bounds) -> None:
        """The words (at ``bases``) of the stitches the driver makes after phase ``p``
        (``join``: its chunk plan, ranges, pointer rows and Outputs by step)."""
        plan, _ranges, pointers, by_step = join
        row_of = {key: r for r, key in enumerate(plan.slot_at.values())}
        for base, j in zip(bases, sorted(j for q, j in self.joined if q == p)):
            out = by_step[j]
            pos = out.arrays[(1, "pos")]
            limit = np.iinfo(pos.dtype).max if out.index_limit is None else out.index_limit
            frame[base:base + 4] = (data_ptr(pos), count, data_ptr(bounds), limit)
            for a, key in enumerate([(1, "crd"), (-1, "vals")]):
                frame[base + 4 + 2 * a] = data_ptr(pointers) + 8 * count * row_of[(j, key)]
                frame[base + 5 + 2 * a] = ctypes.addressof(out.grow[key])

    def _chunk_slots(self, p, run, built, per_step, args, bounds, work, keep, mine) -> tuple:
        """A chunked phase's sparse statements: each chunk's first capacities and the slots
        its grown arrays come back in, laid into ``args`` as the native drivers take them
        (one word per chunk); ``(plan, ranges, slot table, step -> Output)`` to join after."""
        sparse = [j for j, st in enumerate(run.steps) if st.sparse]
        plan = ChunkPlan(run.steps[0].ctx.launcher, built, int(bounds[-1]), per_step[0][1], per_step[0][0],
                         {j: per_step[j][3] for j in sparse},
                         {j for j in sparse if not run.steps[j].internal and built.lows[j].output.growable
                          and (p, j) not in self.joined}, work)  # (those the driver stitches: not again)
        ranges = [(int(lo), int(hi)) for lo, hi in zip(bounds[:-1], bounds[1:])]
        count = len(ranges)
        for at, step in plan.cap_at.items():
            caps = np.array([plan.capacity(step, lo, hi) for lo, hi in ranges], dtype=np.int64)
            keep.append(caps)
            args[at] = data_ptr(caps)
        g = len(plan.slot_at)
        table = np.zeros((2 * g, count), dtype=np.int64)  # a row of pointers per slot, then their addresses
        table[g:] = data_ptr(table) + 8 * np.arange(g * count, dtype=np.int64).reshape(g, count)
        keep.append(table)
        for r, at in enumerate(plan.slot_at):
            args[at] = data_ptr(table) + 8 * count * (g + r)
        return plan, ranges, table[:g], dict(zip(sparse, mine))


def _handed_over(run, built, written: dict, made: dict, args: list) -> set:
    """Lay into ``args`` the arrays of sparse tensors an earlier phase assembles (``written``:
    name -> Output) that ``built`` reads, or of their transposed copies (``made``: name ->
    the copy's slots): a fixed array's address, or, for one that is grown or copied in
    the call, the address of the slot it will be in (returned: those positions, which
    the driver reads through when the phase starts)."""
    through = set()
    for at, src in enumerate(built.sources):
        role, storage, slot = built.plans[src.statement][src.position]
        if role != "in":
            continue
        name = run.steps[src.statement].ctx.plan.operand_of[storage]
        out = written.get(name)
        if out is None:
            continue
        key = [(l, a) for l, kind in enumerate(out.fmt.levels) for a in kind.arrays][slot] \
            if slot < sum(len(kind.arrays) for kind in out.fmt.levels) else (-1, "vals")
        if storage != name:  # its transposed copy, made before this phase (csr-like: the same keys)
            args[at], indirect = data_ptr(made[name]) + 8 * ARRAYS.index(key), True
        else:
            args[at], indirect = _array_word(out, key)
        if indirect:
            through.add(at)
    return through


def _array_word(out, key) -> tuple:
    """``(word, through)``: an Output's array by address (fixed), or its slot's (grown)."""
    if key in out.grow:
        return ctypes.addressof(out.grow[key]), True
    return data_ptr(out.arrays[key]), False


def _word(value, ty) -> int:
    """An argument as the 64-bit frame word the driver reads it from (a float's bits)."""
    name = getattr(ty, "name", None)
    if name == "f64":
        return int(np.float64(value).view(np.int64))
    if name == "f32":
        return int(np.float32(value).view(np.int32))
    if isinstance(value, ctypes.c_void_p):
        return value.value or 0
    if type(value).__name__ == "CArgObject":  # ctypes.byref(slot): the slot's address
        return ctypes.addressof(value._obj)
    return int(value or 0)


__all__ = ["TeamRun", "refusal"]
