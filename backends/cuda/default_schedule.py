"""The default GPU schedule per kernel class (docs/cuda.md, "The default schedule").

Without ``parallelize`` (and without ``sequential``) the GPU backends map the
outer parallel loop by what the kernel does with it:

* **a block per row, entries staged in shared memory** -- when a ``gpu-block``
  mapping has a sequential loop over a compressed or packed row with the
  block's threads splitting a dense output row inside (SpMM
  ``C[i,k] = A[i,j]*B[j,k]``, the TwELL down projection ``O[t,d] = H[t,n]*Wd[n,d]``):
  the emitter stages the row's coordinates and values
  (``backends/cuda/staging.py``), and every thread reads them from there;
* **a thread or a warp per row, chosen from the data at each call** -- when the
  outer loop walks the rows of a compressed operand (the lowered kernel's
  ``balance``: under a dense or bitmap level, or the stored rows of a DCSR's top
  level, whose positions the grid splits as CPU threads do) and a warp can split a
  row (SpMV, SDDMM with a dense output, Aᵀx):
  rows averaging at least :data:`WARP_ROW_THRESHOLD` stored entries run a warp
  each, shorter rows a thread each. The thread variant is built with the kernel,
  the warp variant on the first call that picks it;
* otherwise a thread per iteration (the only legal team-free mapping: sparse
  and packed outputs, outer loops over dense operands or a bitmap's rows).
"""
from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from spcomp.errors import SpcompError
from spcomp.ir.loops import first_parallel
from spcomp.ir.nodes import walk
from spcomp.lower.lowerer import lower
from spcomp.lower.parallel import TEAM_MEMBERS

from .emit import emit_module
from .signature import readonly_params
from .staging import staged_loops

# Average stored entries per row from which a warp per row beats a thread per
# row: with 16 a warp's single pass over the row keeps at least half of its 32
# lanes busy, while below it most lanes idle and a thread per row does the same
# work with 32x fewer rows in flight (CSR-scalar vs CSR-vector, Bell & Garland).
WARP_ROW_THRESHOLD = 16


@dataclass
class RowChoice:
    """Thread or warp per row, picked per call from the rows' average length."""
    pos_param: int        # index of the balancing operand's pos array among the kernel's parameters
    operand: str          # that operand's name, for the explanation
    warp: object          # the gpu-warp Lowered (same parameters), compiled on first need
    threshold: float = WARP_ROW_THRESHOLD

    def pick(self, args) -> tuple[str, str]:
        """('gpu-thread' or 'gpu-warp', why) for a launch with these kernel arguments."""
        pos = args[self.pos_param]
        if not isinstance(pos, np.ndarray):
            return "gpu-thread", f"the row lengths of {self.operand} are not readable on the host"
        rows = pos.size - 1
        avg = (int(pos[-1]) - int(pos[0])) / rows if rows > 0 else 0.0
        if avg >= self.threshold:
            return "gpu-warp", f"{self.operand} has {avg:.1f} entries per row on average (>= {self.threshold:g})"
        return "gpu-thread", f"{self.operand} has {avg:.1f} entries per row on average (< {self.threshold:g})"


def is_default(opt) -> bool:
    """Whether the schedule left the GPU mapping to us (api.options_from_schedule)."""
    return opt.parallel == "auto" and opt.parallel_kind == "gpu-thread"


def lower_default(notation, opt):
    """The Lowered a GPU kernel runs by default (see the module docs); with an
    explicit schedule, the plain lowering."""
    base = lower(notation, opt)
    threads = base.threads
    if (not is_default(opt) or threads.parallel is None or base.output.shape != "dense"
            or threads.split or base.output.assembly is not None or opt.gpu_block % 32):
        return base
    block = _team_lowering(notation, opt, "gpu-block", base)
    if block is not None and _stages(block):
        return _noted(block, f"(GPU default: a block per {threads.parallel}; the row's entries are staged "
                             "in shared memory)")
    if threads.balance is None:
        return base
    warp = _team_lowering(notation, opt, "gpu-warp", base)
    pos_param = _pos_param(base)
    if warp is None or pos_param is None:
        return base
    chosen = replace(base, threads=replace(threads, gpu_choice=RowChoice(pos_param, threads.balance[0], warp)))
    return _noted(chosen, f"(GPU default: a warp per {threads.parallel} when {threads.balance[0]} has >= "
                          f"{WARP_ROW_THRESHOLD} entries per row on average, else a thread; see Kernel.last_launch)")


def _noted(low, line: str):
    """``low`` with ``line`` added to its loop-nest text."""
    return replace(low, inspection=replace(low.inspection, loops=low.inspection.loops + "\n" + line))


def mapping(lowered) -> str:
    """The mapping of a lowered kernel's grid-level loop ('serial' without one)."""
    loops = first_parallel(lowered.entry_function.body)
    return loops[0].parallel if loops else "serial"


def _team_lowering(notation, opt, kind, base):
    """``notation`` lowered with a ``kind`` team per outer iteration, or None when
    that is refused, parallelises another loop, splits nothing among the team,
    takes other parameters than ``base`` or does not emit."""
    try:
        low = lower(notation, replace(opt, parallel_kind=kind))
        if (low.threads.parallel != base.threads.parallel or mapping(low) != kind
                or not _has_member(low, TEAM_MEMBERS[kind])):
            return None
        if _param_names(low) != _param_names(base):
            return None
        emit_module(low.code.module)
    except SpcompError:
        return None
    return low


def _has_member(low, member: str) -> bool:
    return any(getattr(x, "parallel", None) == member for x in walk(low.entry_function.body))


def _stages(low) -> bool:
    fn = low.entry_function
    return bool(staged_loops(fn, readonly_params(fn)))


def _param_names(low) -> list:
    return [p.name for p in low.entry_function.params]


def _pos_param(low) -> int | None:
    name, level = low.threads.balance
    for k, b in enumerate(low.code.bindings):
        if b.storage == name and b.level == level and b.array == "pos" and b.role == "input":
            return k
    return None
