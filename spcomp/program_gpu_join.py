"""Which statements of a program can join a CUDA program run's one launch, and why not.

``program_gpu.plan_gpu`` joins consecutive statements that need no host work
before or after their launch (:func:`joinable`); :func:`apart_reason` says, for one
that cannot, what keeps it apart (``plan_gpu``'s ``apart`` reasons; the tests' sampler tallies them).
"""
from __future__ import annotations

from .formats import Compressed
from .notation import accesses

ROLES = ("lo", "hi", "size", "input", "output")
_SPARSE_ROLES = ROLES + ("row_pos",)  # a two-phase output's per-row counts of its lower levels
_BOUNDED_ROLES = ROLES + ("capacity", "output_bounded", "needed")  # a serial statement's bounded appends


def joinable(a, kernel) -> bool:
    """Whether statement ``a`` (compiled as ``kernel``) needs no host work before or
    after its one launch: a dense row-major output (``+=`` adds into the caller's
    array, uploaded and copied back with the others), written whole in the launch,
    or a sparse output of dense rows counted and filled in two phases
    (:func:`joinable_sparse`), appended by one thread (:func:`joinable_bounded`), or
    inserted into arrays of its whole size (:func:`joinable_inserted`). A serial
    statement joins too: one thread of the grid runs it between barriers."""
    fmt = a.lhs.tensor.format
    low = kernel.lowered
    out = low.output
    if out.assembly is not None:
        return joinable_sparse(a, kernel)
    if out.bounded:
        return joinable_bounded(a, kernel)
    if out.shape == "insert":
        return joinable_inserted(a, kernel)
    return (kernel.contraction is None and fmt.is_dense
            and fmt.order == tuple(range(fmt.ndim)) and out.shape == "dense" and not out.growable
            and not out.bounded and out.assembly is None and out.expand is None and not low.append_chunks
            and all(b.role in ROLES for b in low.code.bindings))


def joinable_sparse(a, kernel) -> bool:
    """Whether a two-phase statement's count, prefix sum and fill can run inside the
    launch (``lower/device_scan.py``): an output of dense rows (``first`` >= 1) whose
    rows are the parallel loop (not a split of positions). A ``+=`` one is lowered as
    ``S = S_old + ...`` (the caller's tensor an input): its count is of the union of
    the old and new entries per row, and the launch hands back new arrays."""
    low = kernel.lowered
    out = low.output
    if a.accumulate and not any(b.role == "input" and b.tensor == a.lhs.tensor.name for b in low.code.bindings):
        return False
    return (kernel.contraction is None and out.assembly.first >= 1
            and not out.growable and not out.bounded and out.expand is None and not low.append_chunks
            and rows_apart(low)
            and all(b.role in _SPARSE_ROLES for b in low.code.bindings)
            and all(b.role in _SPARSE_ROLES for b in low.output.assembly.count_bindings))


def rows_apart(low) -> bool:
    """Whether each output row of a two-phase statement is counted and filled by one
    thread: its rows are the parallel loop, or its threads split the top positions of an
    input whose top level is unique compressed (dcsr: one stored row each) whose
    coordinate is the output's row -- not a split of a row's nonzeros, whose threads
    would count one row together."""
    th = low.threads
    if th.split:
        return False
    if th.positions is None:
        return True
    storage, level = th.positions
    notation = low.inspection.notation
    fmt = low.operands.transposes.get(storage, (None, None))[1] or next(
        (acc.tensor.format for acc in accesses(notation.rhs) if acc.tensor.name == storage), None)
    out = notation.lhs
    return (level == 0 and fmt is not None and type(fmt.levels[0]) is Compressed and fmt.levels[0].unique
            and th.parallel == out.indices[out.tensor.format.order[0]].name)


def joinable_bounded(a, kernel) -> bool:
    """Whether a statement appending into arrays of a fixed capacity can run inside
    the launch: serial (one thread appends), assigned, nothing else to grow. One with
    dense levels under compressed ones (``cd``) appends their stand-in and the host
    expands it after the launch, as after a kernel of its own: no later statement of the
    launch reads it (``program_gpu._made``)."""
    low = kernel.lowered
    out = low.output
    return (kernel.contraction is None and not a.accumulate and low.threads.parallel is None
            and not out.growable and out.assembly is None and not low.append_chunks
            and (out.expand is None or not any(l.fixed_slots for l in out.expand.levels))
            and all(b.role in _BOUNDED_ROLES for b in low.code.bindings)
            and sum(b.role == "needed" for b in low.code.bindings) == 1
            and sum(b.role == "capacity" for b in low.code.bindings) == 1)


def joinable_inserted(a, kernel) -> bool:
    """Whether a statement inserting into arrays of a size known before the launch (every
    stored level inserts: a bitmap, ``b``; positions and marks, no appends) can run inside
    it: assigned, nothing to grow -- its arrays are allocated by the host like a dense output's
    (``program_gpu_sparse.BoundedAppends``), the kernel's threads write disjoint slots."""
    low = kernel.lowered
    out = low.output
    return (kernel.contraction is None and not a.accumulate and inserted(low)
            and not out.growable and out.assembly is None and out.expand is None and not low.append_chunks
            and all(b.role in ROLES + ("capacity",) for b in low.code.bindings))


def inserted(low) -> bool:
    """Whether ``low``'s output is inserted into fixed arrays (no fixed-slot level to overflow)."""
    return low.output.shape == "insert" and not any(l.fixed_slots for l in low.inspection.notation.lhs.tensor.format.levels)


def apart_reason(a, kernel) -> str | None:
    """Why statement ``a`` (compiled as ``kernel``) cannot join a launch (None when it can)."""
    if joinable(a, kernel):
        return None
    low, fmt = kernel.lowered, a.lhs.tensor.format
    out = low.output
    roles = {b.role for b in low.code.bindings} - set(_BOUNDED_ROLES) - set(_SPARSE_ROLES)
    checks = [
        (kernel.contraction is not None, "a contraction split into kernels of their own"),
        (out.expand is not None and out.bounded and low.threads.parallel is None and not a.accumulate,
         f"its {fmt} output has fixed-slot levels the host lays out after the kernel"),
        (out.expand is not None, f"its {fmt} output is expanded from its stored entries after the kernel"),
        (bool(out.growable) or bool(low.append_chunks), "its output grows between launches (host appends)"),
        (bool(roles), f"parameters a launch does not pass ({', '.join(sorted(roles))})"),
        (a.accumulate and not fmt.is_dense and out.assembly is None, "a sparse += not assembled in two phases"),
        (bool(out.bounded) and low.threads.parallel is not None, "parallel appends into a fixed capacity"),
        (out.assembly is not None and out.assembly.first < 1, f"its {fmt} output is compressed first"),
        (out.assembly is not None and not rows_apart(low), "threads that split a row's entries"),
        (fmt.is_dense and fmt.order != tuple(range(fmt.ndim)), f"a dense output in mode order {fmt.order}"),
        (fmt.is_dense and out.shape != "dense", f"a dense output of shape {out.shape!r}"),
    ]
    return next((why for cond, why in checks if cond), f"its {fmt} output is not assembled on the device")
