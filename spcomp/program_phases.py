"""A fused run with in-function copies, run in phases by a call big enough for threads.

A fused run whose statement reads a sparse temporary of the run through a copy the
function makes (a transposed copy: ``program_copies.py``; a diagonal gathered:
``lower/fused_diagonal.py``) has no function over chunks of rows: the copy needs
the whole temporary, every chunk's rows of it, before its reader starts -- a
barrier that a function over one ``[lo, hi)`` cannot hold. Its one-thread function
runs small calls. A call big enough for threads runs the run in phases instead
(:func:`copy_phases`): the run is cut before each statement that reads a copy of a
tensor its phase writes, and each phase runs on threads as one launch -- a fused
run of its own (by chunks of rows, every statement of the phase over each thread's
rows, where it has such a function) or, a phase of one statement, that statement's
own kernel (its parallel loop split over threads). The temporary crosses to the
next phase whole: its chunks stitched into one tensor, then copied (transposed, or
its diagonal gathered) by the operand layer as the reader binds it, as for an
operand read against its order. So Python runs between phases (the next phase's
call), never between the statements of one phase.

Any other run without a chunked function is cut by :func:`team_cut` wherever the
chunked join fails, and a big call runs all its phases as one native call on a
thread team (:func:`team_plan`, ``runtime/program_team.py``) unless a sparse
tensor crosses a phase in a way that call cannot hand over (a transposed copy of a
csr temporary it makes itself; a diagonal it does not yet).
"""
from __future__ import annotations


def copied_reads(low) -> set:
    """The tensors lowering ``low`` reads through a copy: transposed, or a diagonal."""
    return ({op for op, _fmt in low.operands.transposes.values()}
            | {d.operand for d in low.operands.diagonals.values()})


def copy_phases(statements, run: list, lows: list) -> list:
    """The statements of fused run ``run`` (``lows``: their lowerings in it) in phases:
    lists of statement numbers, a new one started at each statement that reads through
    a copy a tensor an earlier statement of the current phase writes. A run that reads
    no copy of its own tensors is one phase."""
    phases: list = []
    written: set = set()
    for k, low in zip(run, lows):
        if not phases or copied_reads(low) & written:
            phases.append([])
            written = set()
        phases[-1].append(k)
        written.add(statements[k].lhs.tensor.name)
    return phases


def phase_segments(phases: list, kernel_of, run_of) -> list:
    """``(kind, object, statements)`` per launch of a phased call, as a program's
    segments: a phase of several statements as the FusedRun ``run_of(phase)`` makes
    (None where they do not join without the copies: then each its own kernel), one
    of a single statement as its kernel ``kernel_of(k)``."""
    out = []
    for phase in phases:
        fused = run_of(phase) if len(phase) > 1 else None
        if fused is None:
            out.extend(("kernel", kernel_of(k), [k]) for k in phase)
        else:
            out.append(("fused", fused, phase))
    return out


def team_cut(run: list, joins) -> list:
    """The statements of fused run ``run`` in phases for one call on a thread team
    (``runtime/program_team.py``): from each statement, the longest stretch of them
    that ``joins`` (a function over chunks of rows: every statement of it over each
    thread's rows), else that statement alone (a serial phase, run by one thread of
    the team). The cut falls wherever the chunked join fails, whatever the reason."""
    phases, i = [], 0
    while i < len(run):
        j = i + 1
        if joins(run[i:j]):
            while j < len(run) and joins(run[i:j + 1]):
                j += 1
        phases.append(run[i:j])
        i = j
    return phases


def team_plan(run: list, joins, phase_run, target) -> tuple:
    """``(phases, TeamRun or why not)`` for fused run ``run``: its :func:`team_cut`, each
    phase the FusedRun ``phase_run(phase)`` makes (None: its statements do not join
    without the run's in-function copies), the reason from ``program_team.refusal``."""
    from .runtime.program_team import TeamRun, refusal
    phases = team_cut(run, joins)
    runs = [phase_run(phase) for phase in phases]
    if any(r is None for r in runs):
        return phases, "a phase's statements do not join without the run's in-function copies"
    why = refusal(runs, phases, target)
    return phases, why if why is not None else TeamRun(runs, target)


def phases_text(phases: list) -> str:
    """``statements 1 | 2, 3``: the phases as ``k.loops`` names them."""
    return "statements " + " | ".join(", ".join(str(k + 1) for k in phase) for phase in phases)


__all__ = ["copied_reads", "copy_phases", "phase_segments", "phases_text", "team_cut", "team_plan"]
