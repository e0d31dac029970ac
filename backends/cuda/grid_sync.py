"""One CUDA kernel for several statements of a program: their bodies in order,
a grid-wide barrier between them (issue 24, docs/cuda.md "Programs").

A program's consecutive statements that each write a dense array are joined at
the IR level by :func:`spcomp.lower.fuse.fuse` (renamed apart, a temporary one
statement writes and a later one reads made one parameter); this module prints
the joined function as one ``__global__`` kernel. Every statement's body keeps
its own grid-stride loop and mapping (a thread, a warp or a block per row), so
any grid computes it whole. Between two statements every thread of the grid
waits at :data:`GRID_SYNC`'s ``spc_grid_sync``: a software barrier (pycuda has
no cooperative launch) on a small array the runtime zeroes before each launch --
blocks arrived, generation, a give-up flag, the status word as the last block
to arrive saw it. It is correct only when every block of the grid is resident
at once, so the runtime launches at most that many
(:func:`sim_co_resident_blocks`, ``device.GpuModule.co_resident_blocks``).
The wait is bounded (the kernel's ``spc_sync_ns`` argument, a wall clock on
both the GPU and the harness): a block that waits longer raises the give-up
flag, every block leaves with :data:`GRID_SYNC_STATUS`, and the runtime raises
an error naming the program instead of hanging.

A serial statement (no grid-level loop: one thread does it all, as in a serial
kernel) is guarded by :data:`SERIAL_THREAD`: thread 0 of block 0 runs it and
every other thread goes straight on to the barrier, which then makes its
results visible to the next statement.

A statement's ``Return`` leaves only that statement (``goto`` to its end, where
every thread meets the barrier); after the barrier every thread reads the
status the barrier copied (:data:`STATUS_WORD`) and the kernel stops when a
statement reported one. Not the live status word: a faster block may already
have left the barrier and reported a status in the next statement, and a slower
block that saw it would leave while the others wait at the next barrier.
"""
from __future__ import annotations

import dataclasses
import os

from spcomp.ir import nodes as n
from spcomp.ir.sort import sort_function, sorted_types
from spcomp.ir.types import I32, I64, ptr
from spcomp.ir.verify import verify_function

from .contexts import Ctx
from .emit import CudaEmitter, sort_helper_name
from .prelude import PRELUDE
from .signature import STATUS_PARAM, KernelParam, KernelSignature, kernel_params, readonly_params

GRID_SYNC_STATUS = 7  # a block waited longer than the bound at the barrier (past the IR's statuses, ir/nodes.py)
BARRIER_PARAM = "spc_grid_barrier"
TIMEOUT_PARAM = "spc_sync_ns"
BARRIER_WORDS = 4
STATUS_WORD = 3  # the barrier word holding the status as the last block to arrive saw it
SERIAL_THREAD = "blockIdx.x == 0 && threadIdx.x == 0"  # the one thread of the grid that runs a serial statement

GRID_SYNC = r"""// ---- grid-wide barrier of a fused program kernel (spcomp/backends/cuda/grid_sync.py) ----
#ifdef SPCOMP_CUDA_SIM
#include <chrono>
#include <thread>
static inline int64_t spc_now_ns(void) {
  return (int64_t)std::chrono::duration_cast<std::chrono::nanoseconds>(
      std::chrono::steady_clock::now().time_since_epoch()).count();
}
static inline void spc_spin_pause(void) { std::this_thread::yield(); }
#else
__device__ __forceinline__ int64_t spc_now_ns(void) {
  uint64_t t;
  asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(t));
  return (int64_t)t;
}
__device__ __forceinline__ void spc_spin_pause(void) {
#if __CUDA_ARCH__ >= 700
  __nanosleep(128);
#endif
}
#endif
// bar[0]: blocks arrived, bar[1]: generation, bar[2]: a block gave up waiting,
// bar[3]: the status word as the last block to arrive saw it (with `status`).
// Every block of the grid must be resident; returns nonzero (in every thread of
// the block) when this block waited more than limit_ns or another gave up.
__device__ int spc_grid_sync(unsigned int* bar, int64_t limit_ns, const int32_t* status = nullptr) {
  __shared__ int spc_sync_failed;
  __syncthreads();
  if (threadIdx.x == 0) {
    volatile unsigned int* v = bar;
    const unsigned int gen = v[1];
    const unsigned int blocks = gridDim.x * gridDim.y * gridDim.z;
    int failed = 0;
    __threadfence();
    if (atomicAdd(&bar[0], 1u) == blocks - 1u) {
      atomicExch(&bar[0], 0u);
      // what the statements before this barrier reported, the same for every block: a
      // block's later statement may set the live word before a slow block reads it
      if (status != nullptr) atomicExch(&bar[3], (unsigned int)*(volatile const int32_t*)status);
      __threadfence();
      atomicAdd(&bar[1], 1u);
    } else {
      const int64_t start = spc_now_ns();
      while (v[1] == gen) {
        if (v[2] != 0u || spc_now_ns() - start > limit_ns) { atomicExch(&bar[2], 1u); failed = 1; break; }
        spc_spin_pause();
      }
    }
    __threadfence();
    spc_sync_failed = failed;
  }
  __syncthreads();
  return spc_sync_failed;
}
// ---- end of the grid-wide barrier ----
"""


def with_barrier(fn: n.Function) -> n.Function:
    """``fn`` (a :func:`~spcomp.lower.fuse.fuse` d program) with the barrier's two
    parameters last: the zeroed word array and the wait bound in nanoseconds."""
    extra = (n.Var(BARRIER_PARAM, ptr(I32)), n.Var(TIMEOUT_PARAM, I64))
    return n.Function(fn.name, tuple(fn.params) + extra, fn.body, doc=fn.doc)


def program_signature(fn: n.Function) -> KernelSignature:
    """The C signature of a fused program kernel (:func:`with_barrier` applied): the
    statements' parameters, the barrier's words (written, never ``const``), the
    wait bound, the status."""
    params = tuple(dataclasses.replace(p, const=False) if p.name == BARRIER_PARAM else p for p in kernel_params(fn))
    return KernelSignature(fn.name, params + (KernelParam(STATUS_PARAM, "int32_t", True, False),))


def parts(fn: n.Function) -> list:
    """The statements' blocks of a fused function, in order (its final ``return`` dropped)."""
    body = list(fn.body.body)
    if body and isinstance(body[-1], n.Return) and body[-1].status == n.STATUS_OK:
        body.pop()
    if not all(isinstance(b, n.Block) for b in body):
        raise ValueError("a fused program function is one block per statement")
    return body


class ProgramEmitter(CudaEmitter):
    """Prints a fused program function: each statement's block, then the barrier.
    A ``Return`` leaves its statement only (``goto`` its end label)."""

    def __init__(self, block: int):
        super().__init__(block)
        self.end_label = None

    def stmt_Return(self, s: n.Return, d):
        return self._to_end(super().stmt_Return(s, d))

    def stmt_Allocate(self, s: n.Allocate, d):
        return self._to_end(super().stmt_Allocate(s, d))

    def _to_end(self, lines: list) -> list:
        """``return;`` as a jump to the statement's end (in a helper, outside any
        statement -- the sort -- it stays a return)."""
        if self.end_label is None:
            return lines
        return [line.replace("return;", f"goto {self.end_label};") for line in lines]

    def program(self, fn: n.Function) -> str:
        verify_function(fn)
        self.fn_name = fn.name
        statements = parts(fn)
        readonly = readonly_params(fn)
        lines = [f"// {line}" for line in fn.doc.splitlines()] if fn.doc else []
        params = [p.declaration for p in program_signature(fn).params]
        bounds = f"__launch_bounds__({self.block}) " if self.block else ""
        lines.append(f'extern "C" __global__ void {bounds}{fn.name}(\n    ' + ",\n    ".join(params) + ") {")
        for k, block in enumerate(statements):
            part = n.Function(f"{fn.name} (statement block {k + 1})", fn.params[:-2], block)
            self.start(part)
            self.readonly = readonly  # staged copies only of arrays no statement writes
            serial = not self.check_structure(part)
            self.end_label = f"spc_statement_{k + 1}_done"
            self.ctx = Ctx("serial" if serial else "kernel")
            try:
                lines.append(self.line(1, "{"))
                if serial:  # the other threads go straight to the barrier below
                    lines.append(self.line(2, f"if ({SERIAL_THREAD}) {{  // a serial statement: one thread runs it"))
                lines += self.block_lines(block, 3 if serial else 2)
                if serial:
                    lines.append(self.line(2, "}"))
                lines.append(self.line(1, "}"))
            finally:
                self.ctx = Ctx("kernel")
            lines.append(f"  {self.end_label}: ;")
            if k + 1 < len(statements):
                sync = f"spc_grid_sync((unsigned int*){BARRIER_PARAM}, {TIMEOUT_PARAM}, {STATUS_PARAM})"
                lines.append(self.line(1, f"if ({sync}) {{ atomicMax({STATUS_PARAM}, {GRID_SYNC_STATUS}); return; }}"))
                # the status as the barrier saw it (not the live word a faster block may
                # already have set in the next statement): every block leaves, or none
                lines.append(self.line(1, f"if (((volatile int32_t*){BARRIER_PARAM})[{STATUS_WORD}] != 0) return;  "
                                          "// a statement failed: the later ones do not run"))
        lines.append("}")
        self.end_label = None
        return "\n".join(lines)


def emit_program(fn: n.Function, block: int) -> str:
    """CUDA C of a fused program function (:func:`with_barrier` applied): the
    prelude, the barrier, the sort helpers, the one kernel."""
    emitter = ProgramEmitter(block)
    module = n.Module((fn,), fn.name)
    helpers = [emitter.device_function(sort_function(t, sort_helper_name(t))) for t in sorted_types(module)]
    return PRELUDE + GRID_SYNC + "\n" + "\n\n".join(helpers + [emitter.program(fn)]) + "\n"


def sim_co_resident_blocks() -> int:
    """Blocks that run at once under cuda-sim: its worker threads
    ($SPCOMP_SIM_WORKERS, else one per CPU, at most 8, as the harness counts)."""
    workers = int(os.environ.get("SPCOMP_SIM_WORKERS", "0") or 0)
    return workers if workers >= 1 else max(1, min(os.cpu_count() or 2, 8))
