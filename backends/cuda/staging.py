"""Shared-memory staging of a sparse row walked by a block (docs/cuda.md, "GPU schedules").

In a ``gpu-block`` team, a sequential loop over the positions ``p`` of a
compressed or packed level whose body holds a *member loop* (the block's
threads splitting a dense output row, e.g. the ``k`` loop of SpMM) makes every
thread read the row's coordinates and values -- ``A2_crd[p]``, ``A_vals[p]`` --
from global memory. The emitter instead copies them into ``__shared__`` arrays,
:data:`STAGE_ENTRIES` entries at a time, all threads cooperating, and the loop
body reads them from there::

    for (p0 = a; p0 < b; p0 += 64) {           // one chunk of the row
      for (s = threadIdx.x; s < n; s += blockDim.x) sh_crd[s] = A2_crd[p0 + s]; ...
      __syncthreads();                          // the chunk is staged
      for (s = 0; s < n; ++s) { p = p0 + s; <body, reading sh_crd[s]> }
      __syncthreads();                          // all done before the next chunk
    }

This module decides which loops qualify (:func:`plan`); the emitter prints them
(``CudaEmitter._staged_for``).
"""
from __future__ import annotations

from spcomp.ir import nodes as n
from spcomp.ir.loops import first_parallel

# entries staged per chunk: two warps' worth, so one pass of a block of >= 64
# threads fills it; 64 * (4 + 4) = 512 bytes of shared memory for an int32 crd
# and float32 vals
STAGE_ENTRIES = 64

_MEMBER_KINDS = ("gpu-thread", "threads")


def _vars(e) -> set:
    return {x.name for x in n.walk(e) if isinstance(x, n.Var)}


def plan(loop: n.For, readonly: set) -> list | None:
    """The arrays to stage for ``loop`` (a loop in a block's team-uniform code), or None.

    It qualifies when it is sequential, its body holds a member loop of the block
    (and no nested warp team), it loads at least one read-only parameter array at
    exactly its own variable, and nothing in the body changes its end bound, its
    variable, or leaves the kernel (the chunk barriers need every thread)."""
    if loop.parallel:
        return None
    body = list(n.walk(loop.body))
    if not any(isinstance(x, n.For) and x.parallel in _MEMBER_KINDS for x in body):
        return None
    if any(isinstance(x, n.For) and x.parallel and x.parallel not in _MEMBER_KINDS for x in body):
        return None
    if any(isinstance(x, (n.Return, n.Allocate, n.Free, n.Reallocate)) for x in body):
        return None
    changed = {x.var.name for x in body if isinstance(x, (n.Declare, n.Assign))}
    written = {x.array.name for x in body if isinstance(x, (n.Store, n.AtomicAdd, n.Sort))
               and isinstance(x.array, n.Var)}
    end_loads = {x.array.name for x in n.walk(loop.end) if isinstance(x, n.Load) and isinstance(x.array, n.Var)}
    if loop.var.name in changed or _vars(loop.end) & (changed | {loop.var.name}) or end_loads & written:
        return None
    arrays = []
    for x in body:
        if (isinstance(x, n.Load) and x.index == loop.var and isinstance(x.array, n.Var)
                and x.array.name in readonly and x.array not in arrays):
            arrays.append(x.array)
    return arrays or None


def staged_loops(function: n.Function, readonly: set) -> list:
    """The loops of ``function``'s gpu-block team body the emitter stages (for the
    default schedule, which prefers a block per row when there are some)."""
    grid = first_parallel(function.body)
    if len(grid) != 1 or grid[0].parallel != "gpu-block":
        return []
    out = []

    def visit(node):
        if isinstance(node, n.For):
            if node.parallel:
                return  # member loops are per-thread code
            if plan(node, readonly):
                out.append(node)
        if isinstance(node, (n.For, n.While, n.If, n.Block)):
            for c in (node.body,) if isinstance(node, (n.For, n.While)) else \
                    (node.then, node.otherwise) if isinstance(node, n.If) else node.body:
                if c is not None:
                    visit(c)
    visit(grid[0].body)
    return out
