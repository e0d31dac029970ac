"""What ``k.loops`` says of a program's fused run: the native function's plan, then each statement.

A :class:`~spcomp.program.ProgramKernel` prints every segment of its program; a
fused run (``runtime/program.py``'s ``FusedRun``) gets the lines here: on what it
runs (one thread, its rows split, a function over chunks of rows, one call on a thread team in
phases, or in phases on threads), how each
sparse tensor and row or tile workspace lives inside the function, the transposed
and diagonal copies made there, a column-major dense temporary kept row-major, and which statements share an outer loop.
"""
from __future__ import annotations

from .program_phases import phases_text


def fused_run_lines(program, seg, run: list, team=None) -> list:
    """The ``k.loops`` lines of fused run ``seg`` (statements ``run`` of ``program``);
    ``team()``: its phases and TeamRun, or why it has none (``program_phases.team_plan``)."""
    parts = []
    which = ", ".join(str(k + 1) for k in run)
    chunks = seg.chunks(32)  # the function over chunks of rows, where the run has one
    if seg.compiled.variant is not None:
        on = "its rows split over threads"
    elif chunks is not None:
        on = ("one thread; a call big enough for threads runs it on each thread's chunk of rows, "
              "every statement over those rows"
              + (", a sparse temporary appended per chunk" if any(st.sparse for st in seg.steps) else "")
              + ("" if not any(low.threads.partials for low in chunks.lows) else
                 ", a sum over rows into a copy per chunk added up after them"))
    elif team is not None and not isinstance(team()[1], str):
        on = ("one thread" + (f", not by chunks of rows: {seg.why}" if seg.why else "")
              + "; a call whose first statement would split over threads runs as one native call "
              f"on a thread team, in phases, {phases_text(team()[0])} (cut where the statements do not join "
              "over chunks of rows: a phase over the threads' chunks of rows, or on one thread of the team; "
              "a barrier between phases, a sum into copies per chunk added natively after its phase"
              + "".join(f", a transposed copy of {t} made between phases by one thread of the team"
                        for names in team()[1].copies for t in names) + ")")
    elif seg.phases:
        on = ("one thread; a call whose first statement would split over threads runs it on threads in "
              f"phases, {phases_text(seg.phases)}, cut before each statement that reads a copy of a temporary "
              "the phase before wrote (the copy needs it whole: stitched, then copied as the reader binds it), "
              "each phase one launch: by chunks of rows where its statements have such a function, else "
              "statement by statement")
    else:
        on = ("one thread" + (f", not by chunks of rows: {seg.why}" if seg.why else "")
              + "; a call whose first statement would split over threads runs the "
              "statements as kernels of their own instead"
              + (f" (not one call on a thread team: {team()[1]})" if team is not None else ""))
    parts.append(f"# statements {which}: one native function, one after the other ({on})")
    for j, st in enumerate(seg.steps):
        if st.sparse and st.low.output.shape == "packed":
            parts.append(f"# {st.name}: packed blocks, filled inside the function into arrays "
                         "the runtime allocates" + ("" if st.internal else ", handed back"))
        elif st.sparse:
            fmt = program.tensors[st.name].format
            stand_in = None if chunks is None else chunks.lows[j].inspection.notation.lhs.tensor.format
            parts.append(f"# {st.name}: sparse, assembled inside the function"
                         + (" and freed there" if st.internal else ", handed back")
                         + ("" if stand_in in (None, fmt) else
                            f" (as {stand_in} in the function over chunks of rows"
                            + (")" if st.internal else f", converted to {fmt} after them)")))
            if st.low.output.expand is not None and st.low.inspection.notation.lhs.tensor.format.blocks != fmt.blocks:
                parts.append(f"# {st.name}: assembled in an operand's blocks as "
                             f"{st.low.inspection.notation.lhs.tensor.format.spec()}, laid out as {fmt} inside the "
                             "function for each reader (gathered, sorted, placed)"
                             + ("" if st.internal else f" and converted to {fmt} by the runtime, handed back"))
            elif st.low.output.expand is not None:
                parts.append(f"# {st.name}: assembled as {st.low.inspection.notation.lhs.tensor.format.spec()}, laid "
                             f"out as {fmt} inside the function for each reader"
                             + ("" if st.internal else " (and by the runtime, handed back)"))
    chunk_rows = chunks.rows if chunks is not None else []
    tiles = {**seg.compiled.tiles, **(chunks.tiles if chunks is not None else {})}
    for name in dict.fromkeys(seg.compiled.rows + chunk_rows):
        if name in tiles:
            parts.append(f"# {name}: a tile of {tiles[name]} rows (every statement over one tile, then "
                         "the next; allocated inside the function, per chunk's call on threads)"
                         + ("" if name in seg.compiled.tiles else
                            " in the function over chunks of rows, the whole array in the one-thread one"))
            continue
        if name not in seg.compiled.rows:
            parts.append(f"# {name}: a row workspace in the function over chunks of rows (one row "
                         "per chunk's call), the whole array in the one-thread function")
            continue
        parts.append(f"# {name}: a row workspace (one row, allocated and freed inside the function, "
                     "one per thread), never the whole array"
                     + ("" if name in chunk_rows or chunks is None else
                        " (but the whole array in the function over chunks of rows)"))
    written = set()
    for j, st in enumerate(seg.steps):
        declared = program.tensors[st.name].format
        if not st.sparse and declared.order != tuple(range(len(declared.levels))):
            parts.append(f"# {st.name}: declared {declared.spec()}, added (+=) in that order into your array "
                         "(into a copy laid out so and added back where yours is laid out otherwise)"
                         if st.accumulate else
                         f"# {st.name}: declared {declared.spec()}, written in that order into the array "
                         "handed back (an output)" if st.returned else
                         f"# {st.name}: declared {declared.spec()}, written and read row-major inside the "
                         "function (a temporary: no copy between its statements)")
        for op in sorted({op for op, _f in st.low.operands.transposes.values()} & written):
            parts.append(f"# statement {run[j] + 1} reads {op} through a transposed copy made inside "
                         "the function (and freed after it)")
        for op in sorted({d.operand for d in st.low.operands.diagonals.values()} & written):
            parts.append(f"# statement {run[j] + 1} reads {op} through a diagonal copy gathered inside "
                         "the function from its writer's arrays (and freed after it)")
        written.add(st.name)
    merged = seg.compiled.merged
    for j, st in enumerate(seg.steps):
        if merged[j]:
            parts.append(f"# statement {run[j] + 1} runs inside statement {run[j - 1] + 1}'s outer loop, "
                         "at the same iteration: the rows it reads were just written")
        parts.append(f"{st.low.inspection.notation!r}\n{st.low.inspection.loops}")
    return parts


def segment_lines(program, segments, apart: dict, team_of) -> list:
    """``k.loops``' lines for each segment of a program: a CUDA run's own description, a
    fused run's (``team_of(run, seg)``: its thread-team plan, asked only when printed),
    or a statement's kernel with why it stands apart (``apart``: statement -> reason)."""
    parts = []
    for kind, seg, run in segments:
        which = ", ".join(str(k + 1) for k in run)
        if kind == "fused" and hasattr(seg, "describe"):  # one CUDA kernel (program_gpu.py)
            parts.append(seg.describe())
        elif kind == "fused":
            parts.extend(fused_run_lines(program, seg, run, lambda run=run, seg=seg: team_of(run, seg)))
        else:
            lead = "not in the run before it" if run[0] else "in no fused run"
            why = f" ({lead}: {apart[run[0]]})" if run[0] in apart else ""
            parts.append(f"# statement {which}: a kernel of its own{why}\n{seg.loops}")
    return parts


def temporaries_line(program, temporaries) -> str:
    """``temporaries t (csr, chosen from A, B), u (dense)``: each temporary's format
    and, where the compiler chose it (``lower/temporary_formats.py``), the sparse
    operands whose zeros bound it."""
    chosen = dict(program.chosen)
    return "temporaries " + ", ".join(
        f"{n} ({program.tensors[n].format if program.tensors[n].order else 'scalar'}"
        + (f", chosen from {', '.join(chosen[n])})" if n in chosen else ")") for n in temporaries)
