"""A compiled program: several statements, run by one call.

``spcomp.compile`` returns a :class:`ProgramKernel` for text with more than one
statement (``frontend/program.py`` splits and checks it). The statements run in
order; a run of consecutive statements that each write a dense row-major tensor
or a sparse one assembled in one pass (a temporary or an output) is lowered
statement by statement and joined into one native function (``lower/fuse.py``):
one launch, no Python between the statements, a dense temporary passed from one
loop nest to the next through the same array, a sparse one through the arrays
its writer grows (and frees at the end when nothing else sees it); a sparse
temporary read against its order through a copy the function makes (``dc`` for
2-d, a coordinate list above: ``program_copies.py``) or on a diagonal (gathered
there: ``lower/fused_diagonal.py``), a dense temporary declared column-major seen
row-major, a returned one written in its declared order into the array handed
back, a sparse statement after a dense ``+=`` too (such a run runs 64-bit at
once: ``runtime/program.py``). A statement that cannot join (a reader of a
copy of a blocked temporary; an output no fused function writes: one assembled in
another operand's blocks that a later statement reads on a diagonal) runs as a kernel of its
own, its result handed to the next one by the runtime (``k.loops`` says which is
which, and why; ``k.launches`` counts them). On a
backend without raw pointers (the CUDA backends) ``program_gpu.py`` plans instead:
runs of dense statements as one CUDA kernel, the others kernels of their own.

A fused run that is one loop over rows, each statement writing only its row,
runs that loop on threads. Another run whose statements each loop over the rows
they write (a dense ``+=`` adding into its rows), or sum over them into a copy of
their output per chunk (a scalar reduction), and read the run's tensors at that
row, also gets a function over each thread's chunk of rows (every statement over
those rows, csr-like temporaries appended per chunk: ``_chunk_lowerings``,
``runtime/program_chunks.py``; a dcsr, coo or csf tensor is stored rows first
there, csr or dcc, and converted back after the join where returned). Any other run
runs a call big enough for threads in phases cut wherever that join fails, all of
them one native call on a thread team where it can hand every tensor across
(``program_phases.team_plan``, ``runtime/program_team.py``); else one launch per phase
cut at each in-function copy, or per statement (``k.loops`` says which, and why). An
unreturned dense temporary touched only at the fused loop's row is one row of
workspace inside the function (``_row_temporaries``, ``_keep_rows``; in the
function over chunks of rows too), never the whole array; one whose reader keeps a
loop of its own is a tile of rows in the function over chunks (``program_tiles.py``).
Programs save, load and disk-cache as kernels do (``program_saved.py``).
"""
from __future__ import annotations

import dataclasses

import numpy as np

from .errors import OperandError
from .ir import nodes as irn
from .ir.printer import print_ir
from .kernel import Kernel
from .lower.fuse import fuse, made_arrays, parallel_rows, reads_plainly, row_workspace
from .lower.heap_exits import free_on_early_exits
from .lower.outputs import rows_first
from .lower.record import Code
from .lower.temporary_formats import with_formats
from .runtime.call import CallContext
from .runtime.launch import Variant
from .runtime.operands import refuse_overlap
from .program_copies import (apart_reason, copy_recasts, copyable_written, declared_in_warnings, expandable,
                             handed_arrays, reads_only_copies, row_major_temporaries, run_statements, in_function_copies)
from .program_density import DensityVariants
from .program_phases import copy_phases, phase_segments, team_plan
from .program_saved import SavedProgram
from .program_text import segment_lines, temporaries_line
from .program_tiles import keep_tiles, temporary_params
from .runtime.path_choice import PathChoice, run_one_launch, size_class
from .runtime.program import FusedBuild, FusedRun, FusedStep


class ProgramKernel(SavedProgram):
    """Several statements compiled together. Call it with the inputs by name; it
    returns the one output, or a dict of them (``outputs``)."""

    def __init__(self, expression: str, program, options, target, schedule=None, saved=None):
        self.expression = expression
        self.program = program
        self.schedule = schedule
        self._options = options
        self._target = target
        self.outputs = list(program.outputs)
        self.temporaries = list(program.temporaries)
        self.inputs = [n for n in program.inputs if n not in program.outputs]
        self._accumulated = [s.lhs.tensor.name for s in program.statements if s.accumulate]
        self._parallel_lows: dict = {}
        self._split_kernels: dict = {}
        self._phased: dict = {}  # a fused run's statements -> its segments on threads (program_phases.py)
        self._paths = PathChoice()  # a big call's one launch: team call or one thread, timed (path_choice.py)
        self.last_launches = 0  # native functions (kernels or fused runs) the last call ran
        self.apart: dict = {}  # statement -> why it does not join the fused run before it (planning)
        # dense temporaries declared in another mode order, row-major in fused functions
        self._row_major = row_major_temporaries(program) if target.capabilities.pointers else {}
        self.segments = self._restore(saved) if saved is not None else self._cached_plan()
        # the run of a program that fused whole, whose last call a call may repeat at once
        self._only_run = self.segments[0][1] if len(self.segments) == 1 and self.segments[0][0] == "fused" else None
        self._operand_names = frozenset(self.inputs) | frozenset(self._accumulated)
        # a dense variant for operands that would fill a chosen sparse temporary in
        self.density = DensityVariants(
            program, self.inputs, lambda p: ProgramKernel(expression, p, options, target, schedule)) \
            if program.chosen else None
        self.warnings = [w for kind, seg, _ in self.segments
                         for w in (seg.warnings if kind == "kernel" else
                                   [x for st in seg.steps for x in st.low.inspection.warnings])]

    # ------------------------------------------------------------ planning
    def _plan(self) -> list:
        """``(kind, object, statement numbers)`` per segment, in order: "fused" (a
        FusedRun of two or more statements) or "kernel" (one statement's Kernel)."""
        stmts = self.program.statements
        if not self._target.capabilities.pointers:  # the CUDA backends: one kernel per run (program_gpu.py)
            from .program_gpu import plan_gpu
            self._split_kernels = {k: self._kernel(k) for k in range(len(stmts))}
            return plan_gpu(self.program, [self._split_kernels[k] for k in range(len(stmts))],
                            self._options.index32_limit, self.expression,
                            lambda k, formats, drops: Kernel(
                                self.program.texts[k], with_formats([stmts[k]], formats)[0], dataclasses.replace(
                                    self._statement_options(k, False), drop_zeros=drops), self._target, self.schedule),
                            apart=self.apart)
        fusable = [self._fusable_lowering(k) for k in range(len(stmts))]
        segments, k = [], 0
        while k < len(stmts):
            run, lows = [k], [fusable[k]]
            written = {stmts[k].lhs.tensor.name: handed_arrays(fusable[k])} if fusable[k] is not None else {}
            while fusable[k] is not None and run[-1] + 1 < len(stmts):
                low = self._joining(run[-1] + 1, fusable[run[-1] + 1], written)
                if isinstance(low, str):
                    self.apart[run[-1] + 1] = low
                    break
                run.append(run[-1] + 1)
                lows.append(low)
                written[stmts[run[-1]].lhs.tensor.name] = handed_arrays(low)
            if len(run) >= 2 and fusable[k] is not None:
                segments.append(("fused", self._fused_run(run, lows), run))
            else:
                run = [k]
                if fusable[k] is None:  # (k.loops says so, as for a statement the run before it could not take)
                    self.apart.setdefault(k, apart_reason(k, None, {}, {}, stmts[k]))
                elif k:
                    self.apart.setdefault(k, "the statement before it joins no run, and none after it joins it")
                segments.append(("kernel", self._kernel(k), run))
            k = run[-1] + 1
        return segments

    def _statement_options(self, k: int, fused: bool, bits: int = 32):
        opts = dataclasses.replace(self._options, name=f"statement{k + 1}", index_bits=bits)
        if fused:  # one function, one thread; no copies the runtime would make between statements
            opts = dataclasses.replace(opts, parallel=None, auto_layout=False)
        return opts

    def _joining(self, k: int, low, written: dict):
        """Statement ``k``'s lowering for joining the run before it (which writes
        ``written``: name -> arrays; ``low`` its fusable lowering, or None), lowered
        again to read a sparse temporary of the run through a ``dc`` copy where that
        lets the function make the copy (``program_copies``); else why it cannot join."""
        copyables = copyable_written(self.program.tensors, written)
        if low is not None and not reads_plainly(low, written, copyables, True):
            recast = copy_recasts(low, copyables)
            alt = self._fusable_lowering(k, recast) if recast else None
            if alt is not None and reads_only_copies(alt, recast) and reads_plainly(alt, written, copyables, True):
                return declared_in_warnings(alt, recast, copyables)
        if low is not None and reads_plainly(low, written, copyables, True):
            return low
        return apart_reason(k, low, written, {n: t.format for n, t in self.program.tensors.items()},
                            self.program.statements[k])

    def _fusable_lowering(self, k: int, recast: dict | None = None):
        """Statement ``k`` lowered for a fused run, or None when it cannot join one:
        it must write a dense tensor (one in another mode order only anew), or a sparse one it assembles in one
        pass into arrays it grows itself or fixed ones (a packed-block level: the
        runtime allocates them; a blocked one in a stand-in laid out for each reader:
        ``program_copies.expandable``). (A run with a dense ``+=`` before a sparse statement
        runs 64-bit at once: ``FusedRun``; a sparse ``+=`` reads the caller's tensor and
        assembles a new one, ``C = C_old + ...``, so it may rerun.) ``recast``: formats
        the statement is lowered to see tensors in (``program_copies.copy_recasts``; a
        dense temporary declared column-major is seen row-major: ``row_major_temporaries``)."""
        caps = self._target.capabilities
        a = with_formats([self.program.statements[k]], {**self._row_major, **(recast or {})})[0]
        fmt = a.lhs.tensor.format
        if not (caps.pointers and caps.host_threads):
            return None
        if fmt.is_dense and fmt.order != tuple(range(fmt.ndim)) and fmt.blocks is not None:
            return None  # (one in another mode order is allocated, or a += one laid out, so: runtime/program.py)
        low = self._target.lower(a, self._statement_options(k, True))
        if fmt.is_dense:
            if (low.output.shape != "dense" or low.output.growable or low.output.bounded
                    or low.output.assembly is not None or low.append_chunks
                    or any(b.role not in ("size", "input", "output") for b in low.code.bindings)):
                return None
        elif (low.output.shape == "dense" or low.output.bounded or low.output.assembly is not None
              or low.append_chunks or (low.output.expand is not None and not expandable(low, self._later(k)))
              or any(b.role not in _SPARSE_ROLES for b in low.code.bindings)):
            return None
        return low

    def _later(self, k: int) -> str:
        name = self.program.statements[k].lhs.tensor.name
        reads = [acc for a in self.program.statements[k + 1:] for acc in _accesses(a) if acc.tensor.name == name]
        return "diagonal" if any(len(set(a.indices)) < len(a.indices) for a in reads) else "plain" if reads else "none"

    def _parallel_lowering(self, k: int):
        """Statement ``k`` lowered as a kernel of its own (threads allowed), once."""
        if k not in self._parallel_lows:
            a = with_formats([self.program.statements[k]], self._row_major)[0]
            self._parallel_lows[k] = self._target.lower(a, self._statement_options(k, False))
        return self._parallel_lows[k]

    def _split_kernel(self, k: int) -> Kernel:
        """Statement ``k`` of a fused run as a kernel of its own, compiled on first use."""
        if k not in self._split_kernels:
            self._split_kernels[k] = self._kernel(k)
        return self._split_kernels[k]

    def _phase_segments(self, run: list, phases) -> list:
        """A big call's launches of fused run ``run`` outside a team: its ``phases``
        (``program_phases.py``), else its statements' own kernels. Built on first use."""
        if tuple(run) not in self._phased:
            self._phased[tuple(run)] = phase_segments(phases or [[k] for k in run], self._split_kernel,
                                                  self._phase_run)
        return self._phased[tuple(run)]

    def _team(self, run: list, seg) -> tuple:
        """``(phases, TeamRun or why not)`` of fused run ``run`` (``seg``): ``program_phases.team_plan``."""
        if ("team",) + tuple(run) not in self._phased:
            lows = dict(zip(run, seg.compiled.lows))
            self._phased[("team",) + tuple(run)] = team_plan(run, lambda ks: not isinstance(
                self._chunk_lowerings(ks, 32, [lows[k] for k in ks]), str), self._phase_run, self._target)
        return self._phased[("team",) + tuple(run)]

    def _phase_run(self, phase: list):
        """The FusedRun of a phase's statements, none reading a copy of another's
        tensor (each reads the tensors of earlier phases as operands); None where they
        do not join so."""
        lows, written = [], {}
        for k in phase:
            low = self._fusable_lowering(k)
            low = self._joining(k, low, written) if lows else low
            if low is None or isinstance(low, str):
                return None
            lows.append(low)
            written[self.program.statements[k].lhs.tensor.name] = handed_arrays(low)
        return self._fused_run(phase, lows)

    def _kernel(self, k: int) -> Kernel:
        a = self.program.statements[k]
        return Kernel(self.program.texts[k], a, self._statement_options(k, False), self._target, self.schedule)

    def _internal(self, run: list) -> set:
        """Sparse tensors a run writes that nothing outside it sees: not returned and
        read by no later statement outside the run. The fused function frees them."""
        stmts = self.program.statements
        later = {acc.tensor.name for k in range(run[-1] + 1, len(stmts)) for acc in _accesses(stmts[k])}
        return {stmts[k].lhs.tensor.name for k in run
                if not stmts[k].lhs.tensor.format.is_dense
                and stmts[k].lhs.tensor.name not in self.outputs and stmts[k].lhs.tensor.name not in later}

    def _fused_run(self, run: list, lowerings: list, built: dict | None = None, sizing: dict | None = None,
                   chunked: dict | None = None):
        """The FusedRun of statements ``run`` (``lowerings[j]``: statement ``run[j]``'s
        32-bit lowering); ``built``, ``sizing`` and ``chunked`` are given when loaded
        from a record."""
        stmts = run_statements(self.program, run, lowerings, self._row_major)
        internal = self._internal(run)
        steps = []
        for k, low in zip(run, lowerings):
            a = stmts[k]
            name = a.lhs.tensor.name
            inputs = list(dict.fromkeys(acc.tensor.name for acc in _accesses(a)))
            ctx = CallContext(self.program.texts[k], a, low, self._target, name, inputs)
            sparse = not a.lhs.tensor.format.is_dense
            step = FusedStep(name, ctx, Variant(low, None, None).arg_plan, low, a.accumulate,
                             name in self.outputs, sparse=sparse, internal=name in internal)
            if sparse or k == run[0]:  # see FusedStep.parallel
                step.parallel = sizing[name] if sizing is not None else self._parallel_lowering(k)
            steps.append(step)
        if built is None:
            built = {32: self._build(run, list(lowerings), internal)}

        def build(bits):
            if bits not in built:
                lows = [self._target.lower(stmts[k], self._statement_options(k, True, bits)) for k in run]
                built[bits] = self._build(run, lows, internal)
            return built[bits]
        why = None
        if chunked is None:
            lows = self._chunk_lowerings(run, 32, lowerings) if built[32].variant is None else "rows on threads"
            why = lows if isinstance(lows, str) else None
            chunked = {32: self._chunk_build(run, lows, internal)} if why is None else {}

        def build_chunks(bits):
            if not chunked:
                return None
            if bits not in chunked:
                lows = self._chunk_lowerings(run, bits, build(bits).lows)
                chunked[bits] = None if isinstance(lows, str) else self._chunk_build(run, lows, internal)
            return chunked[bits]
        fused = FusedRun(steps, build, self._options.index32_limit, self.expression, build_chunks)
        fused.compiled = built[32]
        fused.variants = built  # every index width built so far (saved with the program)
        fused.chunk_variants = chunked  # ... and of the chunked function, where the run has one
        fused.why = why  # why it has none (None: it has one, or it was loaded)
        phases = copy_phases(self.program.statements, run, lowerings)
        fused.phases = phases if len(phases) > 1 and not chunked else None
        return fused

    def _chunk_lowerings(self, run: list, bits: int, fused: list):
        """The statements of a run lowered for chunks of rows (``lower.fuse``: every
        statement over each thread's ``[lo, hi)``, a sparse one appending its rows
        from 0), or the reason the run cannot be split so: each statement must run
        on threads over its outer loop, which is its output's first index or, for a
        reduction into per-chunk copies of a dense output (``ThreadPlan.partials``:
        a scalar sum, added up after the join), the row index it reads the run's
        tensors at; every sparse output must be stored rows first (a dense level,
        then a compressed one whose ``pos`` the statement sets at every row, or
        packed blocks, whose fixed arrays each chunk fills at its own rows) and every
        tensor the run writes must be read at the reader's row (a per-chunk copy not
        at all). Each reads its operands as its ``fused`` lowering does (the call
        binds them once for both functions). A tensor stored compressed first (dcsr,
        coo, csf) is stored rows first in this function (``_csr_stand_ins``), dropping
        computed zeros where its one-thread lowering does, so that both give the same entries."""
        if not self._target.capabilities.host_threads:
            return "no host threads"
        stmts = with_formats(self.program.statements, {**self._row_major, **self._csr_stand_ins(run)})
        lows, written, copies = [], {}, set()
        for k, plain in zip(run, fused):
            a, fmt, name = stmts[k], stmts[k].lhs.tensor.format, stmts[k].lhs.tensor.name
            opts = dataclasses.replace(self._statement_options(k, False, bits), auto_layout=False, append_chunks=True)
            if not fmt.is_dense:  # skip computed zeros where the one-thread function does (a stand-in's
                opts = dataclasses.replace(opts, drop_zeros=plain.output.drops_zeros)  # dense rows would not)
            low = self._target.lower(a, opts)
            plan = low.threads
            first = plan.parallel if plan.partials else (a.lhs.indices[0].name if a.lhs.indices else None)
            if not fmt.is_dense and not fmt.levels[0].is_dense:
                return (f"{name} is stored compressed first ({fmt.spec()}) with no rows-first stand-in "
                        "(or is given to the run): its rows are appended on one thread")
            if any(d.operand in written for d in low.operands.diagonals.values()):
                return f"statement {k + 1} reads a diagonal of a tensor the run writes, gathered whole before it"
            if (first is None or low.operands != plain.operands or plan.parallel != first or plan.split
                    or plan.positions is not None or plan.gpu_choice is not None or plan.fused is not None
                    or low.output.bounded or low.output.assembly is not None or low.output.expand is not None
                    or not reads_plainly(low, written)
                    or any(b.role not in _SPARSE_ROLES + ("lo", "hi") for b in low.code.bindings)):
                return f"statement {k + 1} does not run over rows the others share"
            if fmt.is_dense:
                if low.output.shape != "dense" or low.output.growable or fmt.order != tuple(range(fmt.ndim)):
                    return f"{name} is not a row-major dense array"
            elif plan.partials:
                return f"{name} is sparse and summed over rows"
            elif low.output.shape == "packed":  # fixed blocks per row: each chunk fills its own rows
                if low.output.growable or not fmt.levels[0].is_dense or fmt.order != tuple(range(fmt.ndim)):
                    return f"{name}'s blocks are not stored by rows"
            elif not (low.append_chunks and not fmt.levels[1].is_dense
                      and fmt.order == tuple(range(fmt.ndim)) and _sets_every_row(low)):
                return f"{name} is not appended row by row"
            for acc in _accesses(a):
                if acc.tensor.name in copies:
                    return f"statement {k + 1} reads {acc.tensor.name}, whole only after every chunk"
                if acc.tensor.name in written and (not acc.indices or acc.indices[0].name != first):
                    return f"statement {k + 1} reads {acc.tensor.name} away from the row it is on"
            written[name] = made_arrays(low)
            if plan.partials:
                copies.add(name)
            lows.append(low)
        return lows

    def _csr_stand_ins(self, run: list) -> dict:
        """Name -> its stand-in (``lower.outputs.rows_first``: csr for a 2-d dcsr or
        coo) for each sparse tensor of ``run`` stored compressed first: chunks of rows
        cannot append its top level, but in a format whose first level is dense each
        appends its rows. An unreturned one nobody sees so; a returned one, or one read
        after the run, is converted to its own format after the chunks (the runtime)."""
        stmts = self.program.statements
        out = {}
        for k in run:
            t = stmts[k].lhs.tensor
            stand_in = None if t.format.is_dense else rows_first(t.format)
            # never one the caller passes (+=: the function reads its arrays as given)
            given = stmts[k].accumulate or any(s.lhs.tensor.name == t.name for s in stmts if s is not stmts[k])
            if stand_in is not None and not given and not any(
                    acc.tensor.name == t.name for j in run if j <= k for acc in _accesses(stmts[j])):
                out[t.name] = stand_in
        return out

    def _chunk_build(self, run: list, lows: list, internal: set) -> FusedBuild:
        """The chunk lowerings of a run joined into one function over ``[lo, hi)`` and
        compiled: a statement that reads at its row what the previous one wrote there
        runs inside that one's row loop where both are one loop (dense outputs), and a
        dense temporary touched only so is a row workspace of each chunk's call, as in
        the one-thread function (the runtime allocates it whole for the function that
        does not keep it so)."""
        stmts = self.program.statements
        links, frees = self._links(run, internal)
        fn, sources, merged = fuse([low.entry_function for low in lows], [low.code.bindings for low in lows],
                                   links, name=f"{self._options.name}_chunks", docs=[repr(stmts[k]) for k in run],
                                   share_loop=self._shared_loops(run, lows), frees=frees)
        params = {(s.statement, s.position): p for s, p in zip(sources, fn.params)}
        fn, sources, kept = self._keep_rows(run, lows, merged, fn, sources, params)
        fn, sources, tiled, text = keep_tiles(self.program, self.outputs, run, lows, fn, sources, params, kept)
        return self._compiled(free_on_early_exits(fn), sources, merged, lows, lows[0].threads, rows=kept + tiled,
                              tiles={name: text for name in tiled})

    def _keep_rows(self, run: list, lows: list, merged: list, fn, sources: list, params: dict) -> tuple:
        """``(fn, sources, names)``: the fused function with each of ``_row_temporaries``
        kept as a row workspace where it can be (``params``: (statement, position) ->
        the parameter it became)."""
        rows = []
        for name, (j, widths) in self._row_temporaries(run, lows, merged).items():
            found = temporary_params(lows[j].code.bindings, j, params, name, widths)
            kept = row_workspace(fn, *found, not lows[j].output.overwrites) if found is not None else None
            if kept is not None:
                sources = [s for s in sources if params[(s.statement, s.position)] != found[0]]
                fn = kept
                rows.append(name)
        return fn, sources, rows

    def _links(self, run: list, internal: set) -> tuple:
        """``(links, frees)`` for ``lower.fuse.fuse``: per statement, the tensors it reads
        that an earlier statement of the run writes (name -> that statement's place),
        and the sparse tensors it writes that the function frees."""
        stmts = self.program.statements
        written: dict = {}
        links = []
        for j, k in enumerate(run):
            mine = {acc.tensor.name for acc in _accesses(stmts[k])}
            links.append({name: w for name, w in written.items() if name in mine})
            written[stmts[k].lhs.tensor.name] = j
        return links, [{stmts[k].lhs.tensor.name} & internal for k in run]

    def _build(self, run: list, lows: list, internal: set) -> FusedBuild:
        """Join the statements' functions and compile them (on threads where
        :meth:`_row_threads` allows)."""
        stmts = self.program.statements
        links, frees = self._links(run, internal)
        own_pos = [self._own_pos(k, low, internal) for k, low in zip(run, lows)]
        fn, sources, merged = fuse([low.entry_function for low in lows], [low.code.bindings for low in lows],
                                   links, name=self._options.name, docs=[repr(stmts[k]) for k in run],
                                   share_loop=self._shared_loops(run, lows), frees=frees,
                                   transposed=in_function_copies(self.program.statements, run, lows, links),
                                   own_pos=own_pos)
        threads = self._row_threads(run, lows, merged)
        params = {(s.statement, s.position): p for s, p in zip(sources, fn.params)}
        if threads is not None:
            fn = parallel_rows(fn)
            threads = threads if fn is not None else None
        fn, sources, rows = self._keep_rows(run, lows, merged, fn, sources, params)
        tiled, text = [], ""
        if threads is None:
            fn, sources, tiled, text = keep_tiles(self.program, self.outputs, run, lows, fn, sources, params, rows)
        return self._compiled(free_on_early_exits(fn), sources, merged, lows, threads, rows=rows + tiled,
                              own_pos=[stmts[k].lhs.tensor.name for k, o in zip(run, own_pos) if o],
                              tiles={name: text for name in tiled})

    def _own_pos(self, k: int, low, internal: set) -> dict:
        """``{tensor: rows index}`` when statement ``k`` writes a csr temporary the run
        frees whose row ends the fused function may allocate itself (``lower.fuse``),
        else {}: the runtime allocates a returned tensor's (it hands it back) and
        each thread's chunks share one (``_chunk_build``)."""
        a = self.program.statements[k]
        fmt = a.lhs.tensor.format
        if (a.lhs.tensor.name not in internal or len(fmt.levels) != 2 or not fmt.levels[0].is_dense
                or fmt.levels[1].is_dense or fmt.order != (0, 1) or low.output.expand is not None
                or (1, "pos") not in {(b.level, b.array) for b in low.code.bindings if b.role == "output"}):
            return {}
        return {a.lhs.tensor.name: a.lhs.indices[0].name}

    def _row_temporaries(self, run: list, lows: list, merged: list) -> dict:
        """Dense temporaries of a run that may live as one row (``lower.fuse.row_workspace``):
        name -> (its writer's place in the run, the indices after its first). Legal where
        nothing outside the run reads it, its writer stores row by row in its outer loop,
        and every reader runs inside that loop (merged) and reads it at the loop's row."""
        stmts = self.program.statements
        later = {acc.tensor.name for k in range(run[-1] + 1, len(stmts)) for acc in _accesses(stmts[k])}
        out = {}
        for j, k in enumerate(run):
            a, order = stmts[k], lows[j].inspection.order
            name, idx = a.lhs.tensor.name, a.lhs.indices
            if (not a.lhs.tensor.format.is_dense or name in self.outputs or name in later or a.accumulate
                    or len(idx) < 2 or len(set(idx)) != len(idx) or not order or idx[0] != order[0]
                    or any(acc.tensor.name == name for acc in _accesses(a))):
                continue
            readers = [r for r in range(j + 1, len(run)) if name in {x.tensor.name for x in _accesses(stmts[run[r]])}]
            if not readers or not all(merged[j + 1:readers[-1] + 1]):
                continue
            if all(acc.indices and lows[r].inspection.order and acc.indices[0] == lows[r].inspection.order[0]
                   for r in readers for acc in _accesses(stmts[run[r]]) if acc.tensor.name == name):
                out[name] = (j, [i.name for i in idx[1:]])
        return out

    def _compiled(self, fn, sources, merged, lows, threads, saved=None, rows=(), own_pos=(), tiles=None) -> FusedBuild:
        """The fused function compiled (or ``saved``'s object code loaded) into a FusedBuild."""
        module = irn.Module((fn,), fn.name)
        record = dataclasses.replace(lows[0], code=Code(module, fn.name, []))
        if threads is not None:
            record = dataclasses.replace(record, threads=threads)
        compiled = self._target.build(record) if saved is None else self._target.load(saved, record)
        function = self._target.entry(compiled, record)
        plans = [Variant(low, None, None).arg_plan for low in lows]
        variant = Variant(record, compiled, function) if threads is not None else None
        return FusedBuild(function, sources, plans, module, compiled, merged, lows, variant, rows, own_pos, tiles)

    def _row_threads(self, run: list, lows: list, merged: list):
        """The thread plan of a fused run whose statements all run in one loop over
        rows and each write only the row it is on (a dense output whose first index
        is the loop's): the first statement's own parallel plan when that loop is
        the one it would run on threads, unsplit and without per-thread copies;
        else None (the run stays on one thread). Each thread's chunk of rows runs
        the whole nest, so a temporary's row is written and read by one thread."""
        if len(run) < 2 or not all(merged[1:]) or not self._target.capabilities.host_threads:
            return None
        stmts = self.program.statements
        for k, low in zip(run, lows):
            lhs, order = stmts[k].lhs, low.inspection.order
            if not order or not lhs.indices or lhs.indices[0] != order[0] or not lhs.tensor.format.is_dense:
                return None
        plan = self._parallel_lowering(run[0]).threads
        if (plan.parallel != lows[0].inspection.order[0].name or plan.split or plan.positions is not None
                or plan.partials or plan.gpu_choice is not None):
            return None
        return plan

    def _shared_loops(self, run: list, lows: list) -> list:
        """Per statement of a run: the name of its outer loop's index when it may run
        inside the previous statement's outer loop, else None. It may when it reads
        what the statements of that loop wrote, each such tensor written row by row
        (its first index is its writer's outer loop) and read at the row the loop is
        on (its first index is this statement's outer loop)."""
        stmts = self.program.statements
        out: list = [None]
        rows: dict = {}   # tensor written in the current loop -> written row by row there
        first = lows[0].inspection.order
        a0 = stmts[run[0]]
        rows[a0.lhs.tensor.name] = bool(first) and bool(a0.lhs.indices) and a0.lhs.indices[0] == first[0]
        for j in range(1, len(run)):
            a, order = stmts[run[j]], lows[j].inspection.order
            reads = [acc for acc in _accesses(a) if acc.tensor.name in rows]
            ok = bool(order) and bool(reads) and stmts[run[j - 1]].lhs.tensor.name in {r.tensor.name for r in reads}
            ok = ok and all(rows[acc.tensor.name] and acc.indices and acc.indices[0] == order[0] for acc in reads)
            out.append(order[0].name if ok else None)
            if not ok:
                rows = {}
            rows[a.lhs.tensor.name] = bool(order) and bool(a.lhs.indices) and a.lhs.indices[0] == order[0]
        return out

    # ---------------------------------------------------------- inspection
    @property
    def index_notation(self) -> str:
        return repr(self.program)

    @property
    def loops(self) -> str:
        """Every statement's loop nest, grouped by the native function that runs it (the
        variant's, with the line that says why, where the last call ran one)."""
        variant = self.density.last_variant() if self.density is not None else None
        if variant is not None:  # what the last call ran: its program's variant
            return self.density.describe() + "\n" + variant.loops
        parts = segment_lines(self.program, self.segments, self.apart, self._team)
        parts.append(f"# returns {', '.join(self.outputs)}" + (f"; {self._temporaries_line}" if self.temporaries else ""))
        return "\n".join(parts)

    @property
    def _temporaries_line(self) -> str:
        return temporaries_line(self.program, self.temporaries)

    @property
    def ir(self) -> str:
        """The kernel IR of every native function the program runs, as C-like code (a
        fused run's function over chunks of rows, ``NAME_chunks``, after its own)."""
        parts = [f"// {self._temporaries_line}"] if self.temporaries else []
        for kind, seg, _ in self.segments:
            if kind != "fused":
                parts.append(seg.ir)
                continue
            parts.append(print_ir(seg.compiled.module))
            if seg.chunks(32) is not None:
                parts.append(print_ir(seg.chunks(32).module))
        return "\n".join(parts)

    @property
    def source(self) -> str:
        return "\n".join(self._target.source(seg.compiled.compiled) if kind == "fused" else seg.source
                         for kind, seg, _ in self.segments)

    @property
    def launches(self) -> int:
        """Native functions a call runs: 1 when the whole program fused (those of the
        dense variant the last call ran, where it ran one: program_density.py)."""
        variant = self.density.last_variant() if self.density is not None else None
        return variant.launches if variant is not None else len(self.segments)

    @property
    def backend(self) -> str:
        return self._target.name

    def __repr__(self) -> str:
        return f"<spcomp.ProgramKernel {self.expression!r} outputs={self.outputs} backend={self._target.name}>"

    # ---------------------------------------------------------------- call
    def __call__(self, **operands):
        """Run the program: inputs by name (and each ``+=`` output) -> the output, or a
        dict of outputs by name when there are several."""
        one = self._only_run
        if one is not None and one.repeat is not None and one.repeat.names == self._operand_names \
                and len(operands) == len(self._operand_names) and one.repeat.call(operands):
            # the last call's operands again, every name checked by the repeat itself
            self.last_launches = 1
            return self._returned(operands, ())
        allowed = self._operand_names
        unexpected = sorted(set(operands) - allowed)
        missing = sorted(allowed - set(operands))
        if unexpected or missing:
            raise OperandError(
                (f"unexpected operand(s) {', '.join(unexpected)}; " if unexpected else "")
                + (f"missing operand(s) {', '.join(missing)}; " if missing else "")
                + f"this program takes {', '.join(sorted(allowed))}")
        if self.density is not None:
            variant = self.density.kernel_for(operands)
            if variant is not None:
                result = variant(**operands)
                self.last_launches = variant.last_launches
                return result
        env = dict(operands)
        scalars = set()
        for name in self._accumulated:
            v = env[name]
            if self.program.tensors[name].order == 0 and _is_scalar(v):
                env[name] = np.array(v, dtype=_dtype(self.program.tensors[name].dtype))
                scalars.add(name)
            else:  # added to in place: an input sharing its memory would be read half-updated
                refuse_overlap(v, operands, name)
        self.last_launches = sum(self._run_segment(kind, seg, run, env) for kind, seg, run in self.segments)
        return self._returned(env, scalars)

    def _run_segment(self, kind: str, seg, run: list, env: dict) -> int:
        """Run one segment on ``env`` (its results put there by name); the launches it made."""
        if kind == "fused" and seg.repeated(env):  # the last call's operands again
            return 1
        if kind == "fused" and not seg.wants_threads(env):
            seg.run(env)
            return 1
        if kind == "fused":  # a call big enough for threads: one team call, or in phases, or statement by statement
            if not isinstance(team := self._team(run, seg)[1], str):  # team or one thread: measured (path_choice.py)
                key = (tuple(run), size_class(env, self._operand_names))
                if run_one_launch(self._paths, key, team, seg.run, env):
                    if self._paths.chosen(key) != "one":  # a repeat would replay one thread: timed, or not chosen
                        seg.repeat = None
                    return 1
            return sum(self._run_segment(*s, env) for s in self._phase_segments(run, getattr(seg, "phases", None)))
        a = self.program.statements[run[0]]
        name = a.lhs.tensor.name
        args = {n: env[n] for n in seg.inputs}
        if a.accumulate:
            args[name] = env[name]
        env[name] = seg(**args)
        return 1

    def _returned(self, env: dict, scalars) -> object:
        """The output of a call (a dict by name when there are several) from ``env``;
        ``scalars``: the ``+=`` outputs the caller passed as Python scalars."""
        out = {}
        for name in self.outputs:
            v = env[name]
            out[name] = v.item() if name in scalars or (isinstance(v, np.ndarray) and v.ndim == 0
                                                         and name not in self._accumulated) else v
        return out[self.outputs[0]] if len(self.outputs) == 1 else out


def _accesses(a) -> list:
    from .notation import accesses
    return accesses(a.rhs)


_SPARSE_ROLES = ("size", "input", "output", "output_grow", "capacity")
def _sets_every_row(low) -> bool:
    """Whether a chunk lowering's row loop stores its output's row-end ``pos`` at
    the top of every iteration (so a chunk's rows all end where it wrote them)."""
    pos = {b.var for b in low.code.bindings if b.role == "output" and b.array == "pos"}
    loops = [s for s in low.entry_function.body.body if isinstance(s, irn.For) and s.parallel == "threads"]
    return (len(pos) == 1 and len(loops) == 1
            and any(isinstance(s, irn.Store) and s.array in pos for s in loops[0].body.body))


def _is_scalar(value) -> bool:
    return isinstance(value, (int, float, np.floating, np.integer)) and not isinstance(value, (bool, np.bool_))


def _dtype(name: str):
    from .runtime.plan import np_dtype
    return np_dtype(name)
