"""Kernel IR -> CUDA C text (DESIGN §7).

:func:`emit_module` prints a :class:`~spcomp.ir.nodes.Module` as one CUDA C
translation unit: a small prelude, then one kernel per IR ``Function``::

    extern "C" __global__ void NAME(<params>, int32_t* __restrict__ spc_status)

Pointer parameters become ``T* __restrict__`` (``const T* __restrict__`` when the
kernel only loads from them); ``i64`` scalars stay ``int64_t``. The IR's
``Return(s)`` becomes ``{ atomicMax(spc_status, s); return; }`` (``return;`` for
``s == 0``): the launcher zeroes ``*spc_status`` and reads back the largest status
any thread reported. The same text compiles under nvcc and under the CPU harness
``runtime/cuda_sim.h`` (see :mod:`spcomp.backends.cuda.sim`).

Names starting with ``spc_`` are reserved for the backend; IR variables must not
use them.

The contract with the lowerer: which IR patterns map to what
---------------------------------------------------------------

Code lives in one of four *contexts*.

**kernel** -- the function body outside any parallel loop. Every GPU thread of
the grid runs it. It may declare and compute scalars, branch on them, allocate
and free per-thread workspaces (``Allocate``/``Free``; the pointer is private to
the thread), store into those workspaces and ``Return``. It must not store into
or ``AtomicAdd`` to a parameter array when the function has a parallel loop
(every thread would do it): :class:`~spcomp.errors.UnsupportedError`.
A function without any parallel loop is a *serial kernel*: its body runs on
thread 0 of block 0 only (the others return at once), and any statement goes
except those refused under "Other statements" below.

**grid-level parallel loop** -- at most one per function, at kernel level (it
may sit inside an ``If``, not inside a sequential loop, which would need a
grid-wide barrier: lower that as two functions)::

    For(i, a, b, parallel="gpu-thread")   one iteration per thread of the grid
        for (i = a + spc_global_thread(); i < b; i += spc_grid_threads())
    For(i, a, b, parallel="threads")      the CPU mapping: same as "gpu-thread"
    For(i, a, b, parallel="gpu-block")    one iteration per block
        for (i = a + blockIdx.x; i < b; i += gridDim.x)
    For(i, a, b, parallel="gpu-warp")     one iteration per warp (32 lanes)
        for (i = a + spc_global_warp(); i < b; i += spc_grid_warps())

All loops are grid-stride, so any grid size is correct; :func:`launch_config`
picks one from the trip count. ``a`` is evaluated once, ``b`` every iteration.

**per-thread** -- the body of a "gpu-thread"/"threads" grid-level loop, of a
member loop (below) and of a serial kernel: ordinary sequential code. Another
parallel loop inside is an error. A kernel-level scalar assigned in a grid-level
loop is per thread (e.g. an overflow flag each thread sets and then checks after
the loop to ``Return`` a status). Workspaces allocated at kernel level are per
thread too: team code may use them (every member keeps its own copy in step),
but members must not pass data to each other through them.

**team** -- the body of a "gpu-block" loop (the team is the block) or of a
"gpu-warp" loop (the team is the warp). Every member of the team runs the same
iteration, so the body is *team-uniform* code with these rules:

* ``Declare``/``Assign`` of scalars, ``If``/``While``/sequential ``For``,
  ``Comment`` and ``Return`` run in every member, redundantly. Conditions and
  loop bounds must therefore be team-uniform (computed from parameters, the team
  loop's variable, uniform scalars, loads); members never diverge around a
  barrier. A ``Return`` leaves the kernel in every member (the team stops).
* Side effects -- ``Store``, ``AtomicAdd``, ``Sort`` into arrays that are not
  thread-private -- run once per team: on thread 0 of the block or lane 0 of the
  warp (``if (threadIdx.x == 0)`` / ``if (spc_lane() == 0)``). Consecutive such
  statements, and ``If``/sequential ``For`` statements made only of them (no
  assignment to an outer scalar, no ``Return``, no member loop), share one guard.
* A barrier (``__syncthreads()`` / ``__syncwarp()``) follows a guarded group or
  a member loop when the arrays it writes are read or written elsewhere in the
  team body -- unless every access to such an array is a ``Load``/``Store`` at
  one and the same index inside member loops with the same variable, start and
  mapping, the index depending only on that variable and on values the team body
  never changes (``Y[i*K + k]`` in every ``k`` loop: each element belongs to one
  member). Otherwise no barrier is needed and none is emitted.
* ``Allocate``/``Free``/``Reallocate`` in team-uniform code are errors.
* *Member loops* split the team's work among its members::

      inside "gpu-block": For(j, a, b, parallel="gpu-thread")   (or "threads")
          for (j = a + threadIdx.x; j < b; j += blockDim.x)
      inside "gpu-block": For(j, a, b, parallel="gpu-warp")     a warp per iteration
          for (j = a + spc_warp_in_block(); j < b; j += spc_block_warps())
          (its body is a warp team with "gpu-lane" member loops)
      inside "gpu-warp":  For(j, a, b, parallel="gpu-lane")
          for (j = a + spc_lane(); j < b; j += 32)

  The member loop may sit anywhere in the team body (inside uniform ``If``,
  ``While`` or sequential ``For``). Its body is per-thread code, except that
  ``Return`` and ``Allocate`` are errors there (a member leaving early would
  break the team's barriers).
* **Reductions.** A scalar declared outside a "gpu-lane" / block-member
  "gpu-thread" loop and assigned inside it must be assigned only as
  ``Assign(v, v + x)`` (or ``x + v``), ``Assign(v, max(v, x))`` or
  ``Assign(v, min(v, x))``, and not read otherwise inside the loop. The emitter
  gives each member a partial value and combines the partials after the loop:
  across the warp with a ``__shfl_xor_sync`` butterfly, across the block with a
  butterfly per warp plus a ``__shared__`` array of per-warp partials. Every
  member ends with the same total (bitwise: the butterfly is symmetric), so
  team-uniform code after the loop may use it; the stores after the loop run on
  lane 0 / thread 0 by the rule above (``y[i] = acc`` is stored once).
  ``v`` must be f32, f64, i32 or i64. A "gpu-warp" member loop of a block may
  not assign the block's scalars at all.
* **Staging.** A sequential loop in a block's team-uniform code whose body holds
  a member loop and loads read-only parameter arrays at exactly the loop's
  variable (``A2_crd[p]``, ``A_vals[p]``: a sparse row walked by the block) is
  printed in chunks of ``staging.STAGE_ENTRIES``: the block's threads copy a
  chunk of those arrays into ``__shared__`` arrays, ``__syncthreads()``, every
  thread runs the body over the chunk reading the copies, ``__syncthreads()``.
  Its end bound must not change inside it (see :mod:`.staging`).

Launch geometry is 1-D (``block = (n, 1, 1)``); "gpu-warp" and "gpu-block"
mappings need a block size that is a multiple of 32.

Other statements
----------------

* ``AtomicAdd`` -> ``atomicAdd`` for f32, f64 (sm_60+) and i32; i64 through
  ``unsigned long long``; bf16 through a 32-bit compare-and-swap loop
  (``spc_atomic_add_bf16``). Into a thread-private workspace it is a plain ``+=``.
* ``Allocate`` -> device ``malloc`` (zeroed when ``zero``), per thread; a NULL
  result reports status 2 (out of memory) and leaves the thread. The device heap
  is 8 MiB unless the launcher raises it. ``Free`` -> ``free``.
* ``Sort`` -> ``spc_sort_ascending``, a device insertion sort (fine for the short
  segments a thread sorts).
* ``Reallocate`` (sparse outputs that grow) and pointer-to-pointer parameters
  raise :class:`~spcomp.errors.UnsupportedError`.
* ``Cast`` to or from bf16 goes through ``spc_bf16_to_f32`` /
  ``spc_f32_to_bf16`` (round to nearest even; f64 goes through f32 first, as the
  CPU backend does, so both backends agree bit for bit).
* ``min``/``max`` -> ``spc_min<T>``/``spc_max<T>`` (``fminf``/``fmaxf`` for
  floats: a NaN operand yields the other operand).
* Loop hints: ``unroll`` -> ``#pragma unroll N``; ``vectorize`` and the parallel
  mapping are kept as comments. ``Comment`` nodes are kept.
"""
from __future__ import annotations

import re
import struct
from dataclasses import dataclass

import numpy as np

from spcomp import errors
from spcomp.ir import nodes as n
from spcomp.ir.loops import first_parallel
from spcomp.ir.printer import CPrinter
from spcomp.ir.types import BF16, BOOL, F32, F64, I32, I64, PointerType, ScalarType

from . import staging

STATUS_PARAM = "spc_status"

GRID_MAPPINGS = ("gpu-thread", "threads", "gpu-block", "gpu-warp")
PARALLEL_KINDS = ("gpu-thread", "threads", "gpu-block", "gpu-warp", "gpu-lane")
REDUCIBLE = (F32, F64, I32, I64)
# what to do about a sparse output the lowerer could only append on one thread
GROWING_OUTPUT_HELP = (
    "spcomp lowers sparse outputs for the GPU in two phases (count, prefix sum, fill; a thread per row) or "
    "into arrays the runtime allocates at a capacity (Options.bounded_appends: the kernel reports the entries "
    "it needed and runs again when they did not fit), never with realloc; this kernel was lowered for the "
    "CPU: compile it with backend='cuda' or 'cuda-sim'")

PRELUDE = r"""// ---- spcomp CUDA prelude (the same text compiles under nvcc and runtime/cuda_sim.h) ----
#include <stdint.h>
#include <stddef.h>

// global thread / warp numbering for grid-stride loops (1-D launches)
__device__ __forceinline__ int64_t spc_global_thread(void) { return (int64_t)blockIdx.x * blockDim.x + threadIdx.x; }
__device__ __forceinline__ int64_t spc_grid_threads(void) { return (int64_t)gridDim.x * blockDim.x; }
__device__ __forceinline__ int64_t spc_global_warp(void) { return spc_global_thread() / 32; }
__device__ __forceinline__ int64_t spc_grid_warps(void) { return spc_grid_threads() / 32; }
__device__ __forceinline__ int spc_lane(void) { return (int)(threadIdx.x % 32u); }
__device__ __forceinline__ int spc_warp_in_block(void) { return (int)(threadIdx.x / 32u); }
__device__ __forceinline__ int spc_block_warps(void) { return (int)(blockDim.x / 32u); }

// bf16 is stored as the upper 16 bits of an IEEE float32
__device__ __forceinline__ float spc_bf16_to_f32(uint16_t h) { return __uint_as_float(((uint32_t)h) << 16); }
__device__ __forceinline__ uint16_t spc_f32_to_bf16(float f) {  // round to nearest, ties to even
  uint32_t u = __float_as_uint(f);
  if ((u & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((u >> 16) | 0x40u);  // NaN stays a (quiet) NaN
  u += 0x7fffu + ((u >> 16) & 1u);
  return (uint16_t)(u >> 16);
}
#define SPC_INFINITY_F32 __int_as_float(0x7f800000)
#define SPC_NAN_F32 __int_as_float(0x7fc00000)
#define SPC_INFINITY_F64 __longlong_as_double(0x7ff0000000000000LL)
#define SPC_NAN_F64 __longlong_as_double(0x7ff8000000000000LL)

// index of the lowest set bit of a word, 64 for 0, and its set bits (workspace bitmaps)
__device__ __forceinline__ int64_t spc_ctz(int64_t x) { return x == 0 ? 64 : (int64_t)__ffsll((long long)x) - 1; }
__device__ __forceinline__ int64_t spc_popcount(int64_t x) { return (int64_t)__popcll((unsigned long long)x); }
__device__ __forceinline__ int64_t spc_clear_lowest(int64_t x) { unsigned long long u = (unsigned long long)x; return (int64_t)(u & (u - 1ULL)); }

template <typename T> __device__ __forceinline__ T spc_min(T a, T b) { return b < a ? b : a; }
template <typename T> __device__ __forceinline__ T spc_max(T a, T b) { return a < b ? b : a; }
template <> __device__ __forceinline__ float spc_min<float>(float a, float b) { return fminf(a, b); }
template <> __device__ __forceinline__ float spc_max<float>(float a, float b) { return fmaxf(a, b); }
template <> __device__ __forceinline__ double spc_min<double>(double a, double b) { return fmin(a, b); }
template <> __device__ __forceinline__ double spc_max<double>(double a, double b) { return fmax(a, b); }

// reductions across a warp (xor butterfly: every lane gets the same total) and a block
struct spc_sum_op { template <typename T> __device__ __forceinline__ T operator()(T a, T b) const { return a + b; } };
struct spc_min_op { template <typename T> __device__ __forceinline__ T operator()(T a, T b) const { return spc_min<T>(a, b); } };
struct spc_max_op { template <typename T> __device__ __forceinline__ T operator()(T a, T b) const { return spc_max<T>(a, b); } };
template <typename Op, typename T> __device__ __forceinline__ T spc_warp_reduce(T v) {
  for (int offset = 16; offset > 0; offset >>= 1) v = Op()(v, __shfl_xor_sync(0xffffffffu, v, offset));
  return v;
}
template <typename Op, typename T> __device__ T spc_block_reduce(T v) {  // blockDim.x % 32 == 0
  __shared__ T spc_partials[32];
  v = spc_warp_reduce<Op>(v);
  __syncthreads();  // an earlier reduction has finished reading spc_partials
  if (threadIdx.x % 32u == 0) spc_partials[threadIdx.x / 32u] = v;
  __syncthreads();
  T total = spc_partials[0];
  for (unsigned w = 1; w < blockDim.x / 32u; ++w) total = Op()(total, spc_partials[w]);
  return total;
}

// atomics the hardware lacks
__device__ __forceinline__ void spc_atomic_add_bf16(uint16_t* p, float v) {
  unsigned int* word = (unsigned int*)((uintptr_t)p & ~(uintptr_t)3);
  const unsigned int shift = ((uintptr_t)p & 2) ? 16u : 0u;
  unsigned int old = *word, assumed;
  do {
    assumed = old;
    const uint16_t h = spc_f32_to_bf16(spc_bf16_to_f32((uint16_t)(assumed >> shift)) + v);
    old = atomicCAS(word, assumed, (assumed & ~(0xffffu << shift)) | ((unsigned int)h << shift));
  } while (old != assumed);
}

// per-thread workspaces and sorting
template <typename T> __device__ __forceinline__ T* spc_alloc(int64_t count, bool zero) {
  T* p = (T*)malloc(sizeof(T) * (size_t)(count > 0 ? count : 1));
  if (p != NULL && zero) for (int64_t k = 0; k < count; ++k) p[k] = (T)0;
  return p;
}
template <typename T> __device__ void spc_sort_ascending(T* a, int64_t count) {  // insertion sort
  for (int64_t k = 1; k < count; ++k) {
    T key = a[k];
    int64_t j = k - 1;
    while (j >= 0 && a[j] > key) { a[j + 1] = a[j]; --j; }
    a[j + 1] = key;
  }
}
// ---- end of prelude ----
"""


# ---------------------------------------------------------------- IR walking

def _array_name(e) -> str:
    return e.name if isinstance(e, n.Var) else "?"  # '?': an address we cannot name


def _accesses(node, skip=()):
    """(arrays loaded, arrays written) under ``node``, by name."""
    loads, writes = set(), set()
    for x in n.walk(node, skip):
        if isinstance(x, n.Load):
            loads.add(_array_name(x.array))
        elif isinstance(x, (n.Store, n.AtomicAdd)):
            writes.add(_array_name(x.array))
        elif isinstance(x, n.Sort):
            loads.add(_array_name(x.array))
            writes.add(_array_name(x.array))
    return loads, writes


def _declared(node) -> set:
    """Names a statement declares (Declare, For variables, Allocate), itself included."""
    out = set()
    for x in n.walk(node):
        if isinstance(x, (n.Declare, n.Allocate)):
            out.add(x.var.name)
        elif isinstance(x, n.For):
            out.add(x.var.name)
    return out


def _arrays_in(node):
    return [x.array for x in n.walk(node) if isinstance(x, (n.Load, n.Store, n.AtomicAdd, n.Sort))]


# ------------------------------------------------------------------ contexts

@dataclass
class _Ctx:
    kind: str                 # 'serial' | 'kernel' | 'thread' | 'block' | 'warp' | 'single'
    member: bool = False      # per-thread code inside a member loop (no Return, no Allocate)
    body: n.Block | None = None   # for teams: the team loop's body (hazard analysis)
    where: str = ""           # for messages: the loop we are in


def _fmt_loop(s: n.For) -> str:
    return f"the {s.parallel} loop over `{s.var.name}`" if s.parallel else f"the loop over `{s.var.name}`"


class CudaEmitter(CPrinter):
    """A :class:`~spcomp.ir.printer.CPrinter` that prints CUDA C (see the module docs)."""

    def __init__(self):
        self._ctx = _Ctx("kernel")
        self._private: set[str] = set()
        self._counter = 0
        self._fn = ""
        self._readonly: set[str] = set()
        self._staged: dict = {}  # (array, loop variable) -> the __shared__ copy a staged loop reads

    # ------------------------------------------------------------ helpers
    def _fail(self, msg: str):
        raise errors.UnsupportedError(f"cuda backend, function `{self._fn}`: {msg}")

    def _fresh(self, base: str) -> str:
        self._counter += 1
        return f"spc_{base}_{self._counter}"

    # ---------------------------------------------------------- expressions
    def expr_Const(self, e: n.Const) -> str:
        if e.type == BF16:
            bits = struct.unpack("<I", struct.pack("<f", float(e.value)))[0]
            h = (bits + 0x7FFF + ((bits >> 16) & 1)) >> 16 if (bits & 0x7FFFFFFF) <= 0x7F800000 else (bits >> 16) | 0x40
            return f"(uint16_t)0x{h & 0xFFFF:04x} /* bf16 {float(e.value)!r} */"
        if e.type.is_float:
            v = float(e.value)
            suffix = "F32" if e.type == F32 else "F64"
            if v != v:
                return f"SPC_NAN_{suffix}"
            if v in (float("inf"), float("-inf")):
                return f"SPC_INFINITY_{suffix}" if v > 0 else f"(-SPC_INFINITY_{suffix})"
            return super().expr_Const(e)
        if e.type == BOOL:
            return super().expr_Const(e)
        v = int(e.value)
        if e.type.bits == 64 and not -2**31 < v < 2**31:
            return f"{v}LL" if v != -2**63 else "(-9223372036854775807LL - 1)"
        if v == -2**31:
            return "(-2147483647 - 1)"
        return str(v)

    def expr_Unary(self, e: n.Unary) -> str:
        return f"({e.op}{self.expr(e.operand)})"

    def expr_Load(self, e: n.Load) -> str:
        if self._staged and isinstance(e.array, n.Var) and isinstance(e.index, n.Var):
            shared = self._staged.get((e.array.name, e.index.name))
            if shared is not None:  # a staged loop's entry: read the block's shared copy
                return f"{shared[0]}[{shared[1]}]"
        return super().expr_Load(e)

    def expr_Call(self, e: n.Call) -> str:
        if e.func in n.INT_INTRINSICS:
            return f"spc_{e.func}({self.expr(e.args[0])})"
        return super().expr_Call(e)

    def expr_Binary(self, e: n.Binary) -> str:
        a, b = self.expr(e.lhs), self.expr(e.rhs)
        if e.op in ("min", "max"):
            return f"spc_{e.op}<{self.type_name(e.lhs.type)}>({a}, {b})"
        if e.op == "%" and isinstance(e.lhs.type, ScalarType) and e.lhs.type.is_float:
            return f"{'fmodf' if e.lhs.type == F32 else 'fmod'}({a}, {b})"
        if e.op == "<<" and isinstance(e.lhs, n.Const):
            a = f"(({self.type_name(e.lhs.type)}){a})"
        return f"({a} {e.op} {b})"

    def expr_Cast(self, e: n.Cast) -> str:
        src, dst = e.value.type, e.type
        v = self.expr(e.value)
        if src == dst:
            return v
        if dst == BF16:
            if src == F32:
                return f"spc_f32_to_bf16({v})"
            return f"spc_f32_to_bf16((float)({v}))"
        if src == BF16:
            if dst == F32:
                return f"spc_bf16_to_f32({v})"
            return f"(({self.type_name(dst)})spc_bf16_to_f32({v}))"
        return f"(({self.type_name(dst)}){v})"

    # ----------------------------------------------------------- statements
    def stmt_Return(self, s: n.Return, d):
        ctx = self._ctx
        if ctx.member:
            self._fail(f"`return {s.status}` inside {ctx.where}: a member of a warp or block cannot leave "
                       "early (the team's shuffles and barriers wait for it); set a flag and return after the loop")
        if s.status == n.STATUS_OK:
            return [self.line(d, "return;")]
        return [self.line(d, f"{{ atomicMax({STATUS_PARAM}, {int(s.status)}); return; }}")]

    def _is_private(self, array) -> bool:
        return isinstance(array, n.Var) and array.name in self._private

    def _check_effect(self, array, what: str):
        if self._ctx.kind == "kernel" and not self._is_private(array):
            self._fail(f"{what} `{_array_name(array)}` outside the parallel loop: every GPU thread would run it. "
                       "Move it into the parallel loop, or into a separate function")

    def stmt_Store(self, s: n.Store, d):
        self._check_effect(s.array, "a store into")
        return super().stmt_Store(s, d)

    def stmt_AtomicAdd(self, s: n.AtomicAdd, d):
        self._check_effect(s.array, "an atomic add into")
        target = f"{self.expr(s.array)}[{self.expr(s.index)}]"
        t = s.array.type.elem
        if self._is_private(s.array):  # a thread's own workspace: no other thread sees it
            return [self.line(d, f"{target} += {self.expr(s.value)};")]
        if t in (F32, F64, I32):
            return [self.line(d, f"atomicAdd(&{target}, {self.expr(s.value)});")]
        if t == I64:
            return [self.line(d, f"atomicAdd((unsigned long long*)&{target}, "
                                 f"(unsigned long long)({self.expr(s.value)}));")]
        if t == BF16:
            v = s.value
            if isinstance(v, n.Cast) and v.type == BF16 and v.value.type == F32:
                fv = self.expr(v.value)
            elif v.type == BF16:
                fv = f"spc_bf16_to_f32({self.expr(v)})"
            else:
                fv = f"(float)({self.expr(v)})"
            return [self.line(d, f"spc_atomic_add_bf16(&{target}, {fv});")]
        self._fail(f"atomic add into `{_array_name(s.array)}` of type {t}: the cuda backend has atomics for "
                   "f32, f64, bf16, i32 and i64 only")

    def stmt_Allocate(self, s: n.Allocate, d):
        ctx = self._ctx
        if ctx.kind in ("block", "warp", "single") or ctx.member:
            where = ctx.where or "a team"
            self._fail(f"allocating `{s.var.name}` in {where}: workspaces are per thread on the GPU; allocate them "
                       "at kernel level or inside a grid-level gpu-thread loop")
        self._private.add(s.var.name)
        t = self.type_name(s.var.type)
        elem = self.type_name(s.var.type.elem)
        zero = "true" if s.zero else "false"
        return [self.line(d, f"{t} {s.var.name} = spc_alloc<{elem}>({self.expr(s.count)}, {zero});"),
                self.line(d, f"if ({s.var.name} == NULL) {{ atomicMax({STATUS_PARAM}, {n.STATUS_OUT_OF_MEMORY}); "
                             "return; }  // the device heap is exhausted")]

    def stmt_Free(self, s: n.Free, d):
        if self._ctx.kind in ("block", "warp", "single") or self._ctx.member:
            self._fail(f"freeing `{s.var.name}` in {self._ctx.where or 'a team'}: free workspaces where they are allocated")
        return [self.line(d, f"free({s.var.name});")]

    def stmt_Reallocate(self, s: n.Reallocate, d):
        self._fail(f"reallocating `{s.var.name}`: sparse outputs that grow while the kernel runs are not supported "
                   f"on the cuda backend; {GROWING_OUTPUT_HELP}")

    def stmt_Sort(self, s: n.Sort, d):
        self._check_effect(s.array, "sorting")
        return [self.line(d, f"spc_sort_ascending({self.expr(s.array)} + {self.expr(s.start)}, "
                             f"{self.expr(s.count)});")]

    def stmt_Prefetch(self, s: n.Prefetch, d):
        # a CPU cache hint (the CPU register-blocking pass adds it): dropped, always correct
        return [self.line(d, f"// prefetch of {self.expr(s.array)} dropped")]

    def stmt_PollInterrupt(self, s: n.PollInterrupt, d):
        # the host's interrupt flag is not visible to device code: a GPU kernel runs to its end
        return [self.line(d, "// interrupt poll dropped (CPU only)")]

    # ----------------------------------------------------- team bodies
    def block_lines(self, b: n.Block, depth: int) -> list[str]:
        if self._ctx.kind not in ("block", "warp"):
            return super().block_lines(b, depth)
        out: list[str] = []
        group: list = []
        comments: list = []

        def flush():
            if group:
                out.extend(self._guarded(group, depth))
                group.clear()
            for c in comments:
                out.extend(self.stmt(c, depth))
            comments.clear()

        for s in b.body:
            if isinstance(s, n.Comment):
                comments.append(s)
                continue
            if self._guardable(s):
                group.extend(comments)
                comments.clear()
                group.append(s)
                continue
            flush()
            out.extend(self.stmt(s, depth))
        flush()
        return out

    def _has_effects(self, s) -> bool:
        for x in n.walk(s):
            if isinstance(x, (n.Store, n.AtomicAdd, n.Sort)) and not self._is_private(x.array):
                return True
        return False

    def _guardable(self, s) -> bool:
        """Whether one member may run ``s`` for the whole team (see the module docs)."""
        if isinstance(s, (n.Declare, n.Assign, n.Return, n.Comment)):
            return False
        if not self._has_effects(s):
            return False
        inner = _declared(s)
        for x in n.walk(s):
            if isinstance(x, n.For) and x.parallel:
                return False
            if isinstance(x, (n.Return, n.Allocate, n.Free, n.Reallocate)):
                return False
            if isinstance(x, n.Assign) and x.var.name not in inner:
                return False
        return True

    def _team_guard(self) -> tuple[str, str, str]:
        if self._ctx.kind == "block":
            return "threadIdx.x == 0", "__syncthreads();", "thread 0 of the block"
        return "spc_lane() == 0", "__syncwarp();", "lane 0 of the warp"

    def _needs_barrier(self, stmts) -> bool:
        """Whether what ``stmts`` write is read or written elsewhere in the team body
        (by another member: arrays each member owns a part of need no barrier)."""
        body = self._ctx.body
        _, written = _accesses(n.Block(tuple(stmts)))
        written = {w for w in written if w not in self._private}
        if not written:
            return False
        loads, _ = _accesses(body)
        _, others = _accesses(body, skip={id(s) for s in stmts})
        seen = loads | others
        if "?" in written or "?" in seen:
            return True
        return any(not self._owned(a) for a in written & seen)

    def _owned(self, array: str) -> bool:
        """Whether every access to ``array`` in the team body is a Load or Store at the same
        index inside member loops that give each iteration to the same member (same loop
        variable, start and mapping), the index depending only on that variable and on
        values the team body never changes. Then each element belongs to one member and
        the member loops need no barrier between them for it."""
        body = self._ctx.body
        member_kinds = ("gpu-thread", "threads") if self._ctx.kind == "block" else ("gpu-lane",)
        changed = set()
        for x in n.walk(body):
            if isinstance(x, (n.Declare, n.Assign, n.Allocate, n.Reallocate)):
                changed.add(x.var.name)
            elif isinstance(x, n.For):
                changed.add(x.var.name)
        changed |= _accesses(body)[1]  # an index that loads from a written array may change
        keys = set()
        ok = True

        def visit(node, loop):
            nonlocal ok
            if isinstance(node, n.For) and node.parallel:
                if node.parallel not in member_kinds:  # a nested team (the warps of a block)
                    if any(_array_name(a) == array for a in _arrays_in(node)):
                        ok = False
                    return
                loop = node
            if isinstance(node, (n.Load, n.Store, n.AtomicAdd, n.Sort)) and _array_name(node.array) == array:
                if loop is None or not isinstance(node, (n.Load, n.Store)):
                    ok = False
                else:
                    free = {v.name for v in n.walk(node.index) if isinstance(v, n.Var)}
                    start = {v.name for v in n.walk(loop.start) if isinstance(v, n.Var)}
                    if loop.var.name not in free or ((free | start) - {loop.var.name}) & changed:
                        ok = False
                    keys.add((loop.var.name, loop.start, loop.parallel, node.index))
            for c in n.children(node):
                visit(c, loop)

        visit(body, None)
        return ok and len(keys) == 1

    def _guarded(self, stmts, depth) -> list[str]:
        cond, barrier, who = self._team_guard()
        outer = self._ctx
        lines = [self.line(depth, f"if ({cond}) {{  // team-uniform writes: {who} does them once")]
        self._ctx = _Ctx("single", where=outer.where, body=outer.body)
        try:
            for s in stmts:
                lines.extend(self.stmt(s, depth + 1))
        finally:
            self._ctx = outer
        lines.append(self.line(depth, "}"))
        if self._needs_barrier(stmts):
            lines.append(self.line(depth, barrier + "  // the team sees those writes"))
        return lines

    # ------------------------------------------------------------ loops
    # loop_annotation is inherited from CPrinter

    def stmt_For(self, s: n.For, d):
        if s.parallel:
            return self._parallel_for(s, d)
        if self._ctx.kind == "block":
            arrays = staging.plan(s, self._readonly)
            if arrays:
                return self._staged_for(s, d, arrays)
        lines = [self.line(d, f"#pragma unroll {int(s.unroll)}")] if s.unroll and s.unroll > 1 else []
        v = s.var.name
        head = (f"for ({self.type_name(s.var.type)} {v} = {self.expr(s.start)}; "
                f"{v} < {self.expr(s.end)}; ++{v}) {{{self.loop_annotation(s)}")
        return lines + [self.line(d, head)] + self.block_lines(s.body, d + 1) + [self.line(d, "}")]

    def _staged_for(self, s: n.For, d, arrays) -> list[str]:
        """A block's sequential loop over a row's entries, read through shared memory
        in chunks (see :mod:`spcomp.backends.cuda.staging`)."""
        t, v, size = self.type_name(s.var.type), s.var.name, staging.STAGE_ENTRIES
        tag = self._fresh("p0")[len("spc_p0_"):]
        p0, end, count, k = f"spc_p0_{tag}", f"spc_end_{tag}", f"spc_n_{tag}", f"spc_s_{tag}"
        shared = {a.name: f"spc_{a.name}_{tag}" for a in arrays}
        names = ", ".join(f"{a.name}[{v}]" for a in arrays)
        lines = [self.line(d, f"// {names} staged in shared memory: the block copies {size} entries at a "
                              "time, then every thread reads them there")]
        lines += [self.line(d, f"__shared__ {self.type_name(a.type.elem)} {shared[a.name]}[{size}];")
                  for a in arrays]
        lines += [self.line(d, f"const {t} {end} = {self.expr(s.end)};"),
                  self.line(d, f"for ({t} {p0} = {self.expr(s.start)}; {p0} < {end}; {p0} += {size}) {{"),
                  self.line(d + 1, f"const {t} {count} = spc_min<{t}>({size}, {end} - {p0});"),
                  self.line(d + 1, f"for ({t} {k} = threadIdx.x; {k} < {count}; {k} += blockDim.x) {{  "
                                   "// stage: the block's threads copy the chunk")]
        lines += [self.line(d + 2, f"{shared[a.name]}[{k}] = {a.name}[{p0} + {k}];") for a in arrays]
        lines += [self.line(d + 1, "}"),
                  self.line(d + 1, "__syncthreads();  // the chunk is staged"),
                  self.line(d + 1, f"for ({t} {k} = 0; {k} < {count}; ++{k}) {{"),
                  self.line(d + 2, f"{t} {v} = {p0} + {k};")]
        saved = dict(self._staged)
        self._staged.update({(a.name, v): (shared[a.name], k) for a in arrays})
        try:
            lines += self.block_lines(s.body, d + 2)
        finally:
            self._staged = saved
        return lines + [self.line(d + 1, "}"),
                        self.line(d + 1, "__syncthreads();  // every thread is done with the chunk before the "
                                         "next one is staged"),
                        self.line(d, "}")]

    def _loop_head(self, s: n.For, offset: str, step: str, note: str) -> str:
        t = self.type_name(s.var.type)
        if s.var.type != I64:
            offset, step = f"({t})({offset})", f"({t})({step})"
        start = offset if s.start == n.Const(0, s.start.type) else f"{self.expr(s.start)} + {offset}"
        v = s.var.name
        return f"for ({t} {v} = {start}; {v} < {self.expr(s.end)}; {v} += {step}) {{  // parallel: {s.parallel} -- {note}"

    def _body(self, s: n.For, ctx: _Ctx, d: int) -> list[str]:
        outer = self._ctx
        self._ctx = ctx
        try:
            return self.block_lines(s.body, d + 1)
        finally:
            self._ctx = outer

    def _parallel_for(self, s: n.For, d):
        ctx = self._ctx
        kind = s.parallel
        if kind not in PARALLEL_KINDS:
            self._fail(f"{_fmt_loop(s)}: unknown parallel mapping {kind!r}; the cuda backend knows "
                       f"{', '.join(PARALLEL_KINDS)}")
        if ctx.kind == "kernel" and kind in GRID_MAPPINGS:
            return self._grid_loop(s, d)
        if ctx.kind == "block" and kind in ("gpu-thread", "threads", "gpu-warp"):
            return self._member_loop(s, d)
        if ctx.kind == "warp" and kind == "gpu-lane":
            return self._member_loop(s, d)
        if kind == "gpu-lane":
            self._fail(f"{_fmt_loop(s)} is not directly inside a gpu-warp loop: gpu-lane loops split a warp's "
                       "iteration among its 32 lanes")
        where = ctx.where or "this loop"
        self._fail(f"{_fmt_loop(s)} is nested in {where}; the cuda backend maps gpu-block > gpu-thread, "
                   "gpu-block > gpu-warp > gpu-lane and gpu-warp > gpu-lane, one parallel loop of each kind")

    def _grid_loop(self, s: n.For, d):
        kind = s.parallel
        if kind in ("gpu-thread", "threads"):
            head = self._loop_head(s, "spc_global_thread()", "spc_grid_threads()",
                                   "grid-stride, one iteration per GPU thread")
            ctx = _Ctx("thread", where=_fmt_loop(s))
        elif kind == "gpu-block":
            head = self._loop_head(s, "blockIdx.x", "gridDim.x", "one iteration per block")
            ctx = _Ctx("block", body=s.body, where=_fmt_loop(s))
        else:
            head = self._loop_head(s, "spc_global_warp()", "spc_grid_warps()", "one iteration per warp")
            ctx = _Ctx("warp", body=s.body, where=_fmt_loop(s))
        return [self.line(d, head)] + self._body(s, ctx, d) + [self.line(d, "}")]

    def _reductions(self, s: n.For) -> dict:
        """{var name: (Var, op)} for the outer scalars a member loop accumulates."""
        inner = _declared(s.body) | {s.var.name}
        assigns: dict[str, list] = {}
        for x in n.walk(s.body):
            if isinstance(x, n.Assign) and x.var.name not in inner:
                assigns.setdefault(x.var.name, []).append(x)
        if not assigns:
            return {}
        if s.parallel == "gpu-warp":
            self._fail(f"{_fmt_loop(s)} assigns `{sorted(assigns)[0]}`, a scalar of the enclosing gpu-block "
                       "iteration: warps of a block cannot reduce into it; store per-warp results instead")
        out = {}
        for name, list_ in assigns.items():
            var = list_[0].var
            ops = set()
            for a in list_:
                v = a.value
                op = None
                if isinstance(v, n.Binary) and v.op in ("+", "min", "max"):
                    if v.lhs == var and var not in set(n.walk(v.rhs)):
                        op = v.op
                    elif v.rhs == var and var not in set(n.walk(v.lhs)):
                        op = v.op
                if op is None:
                    self._fail(f"{_fmt_loop(s)} assigns `{name}`, declared outside it, as `{name} = "
                               f"{self.expr(v)}`: across the members of a team only accumulations "
                               f"`{name} = {name} + x`, `max({name}, x)` or `min({name}, x)` can be combined")
                ops.add(op)
            if len(ops) > 1:
                self._fail(f"{_fmt_loop(s)} accumulates `{name}` with different operators ({', '.join(sorted(ops))})")
            uses = sum(1 for x in n.walk(s.body) if x == var)
            if uses != 2 * len(list_):  # each accumulation names it twice: target and operand
                self._fail(f"{_fmt_loop(s)} reads `{name}`, which its members accumulate: inside the loop each "
                           "member only holds a partial value")
            if var.type not in REDUCIBLE:
                self._fail(f"{_fmt_loop(s)} accumulates `{name}` of type {var.type}; reductions across a team "
                           "take f32, f64, i32 or i64")
            out[name] = (var, ops.pop())
        return out

    def _member_loop(self, s: n.For, d):
        team = self._ctx
        kind = s.parallel
        if kind == "gpu-lane":
            head = self._loop_head(s, "spc_lane()", "32", "the warp's 32 lanes split the iterations")
            combine, who = "spc_warp_reduce", "warp"
            ctx = _Ctx("thread", member=True, where=_fmt_loop(s))
        elif kind == "gpu-warp":
            head = self._loop_head(s, "spc_warp_in_block()", "spc_block_warps()",
                                   "one iteration per warp of the block")
            combine, who = None, "block"
            ctx = _Ctx("warp", member=True, body=s.body, where=_fmt_loop(s))
        else:
            head = self._loop_head(s, "threadIdx.x", "blockDim.x", "the block's threads split the iterations")
            combine, who = "spc_block_reduce", "block"
            ctx = _Ctx("thread", member=True, where=_fmt_loop(s))
        reductions = self._reductions(s)
        lines = []
        saved = {}
        for name, (var, op) in reductions.items():
            if op == "+":
                keep = self._fresh(name)
                saved[name] = keep
                zero = self.expr(n.const(0, var.type))
                lines.append(self.line(d, f"{self.type_name(var.type)} {keep} = {name};  "
                                          f"// each member sums a partial `{name}` from 0; combined after the loop"))
                lines.append(self.line(d, f"{name} = {zero};"))
        lines.append(self.line(d, head))
        lines += self._body(s, ctx, d)
        lines.append(self.line(d, "}"))
        opname = {"+": "spc_sum_op", "min": "spc_min_op", "max": "spc_max_op"}
        for name, (var, op) in reductions.items():
            total = f"{combine}<{opname[op]}>({name})"
            if op == "+":
                lines.append(self.line(d, f"{name} = {saved[name]} + {total};  // every member of the {who} "
                                          "gets the total"))
            else:
                lines.append(self.line(d, f"{name} = {total};  // every member of the {who} gets the result"))
        self._ctx = team
        if self._needs_barrier([s]):
            barrier = "__syncthreads();" if team.kind == "block" else "__syncwarp();"
            lines.append(self.line(d, f"{barrier}  // the {who} sees what the loop wrote"))
        return lines

    # --------------------------------------------------------- functions
    def param(self, p: n.Var) -> str:
        if isinstance(p.type, PointerType):
            if isinstance(p.type.elem, PointerType):
                self._fail(f"parameter `{p.name}` is a pointer to a pointer (an output that grows while the kernel "
                           f"runs): sparse outputs that grow are not supported on the cuda backend; {GROWING_OUTPUT_HELP}")
            const = "const " if p.name in self._readonly else ""
            return f"{const}{self.type_name(p.type)} __restrict__ {p.name}"
        return f"{self.type_name(p.type)} {p.name}"

    def _check_structure(self, f: n.Function):
        for x in [*f.params, *n.walk(f.body)]:
            if isinstance(x, (n.Var, n.Declare, n.Allocate)):
                name = x.name if isinstance(x, n.Var) else x.var.name
                if name.startswith("spc_"):
                    self._fail(f"the name `{name}` is reserved for the cuda backend (prefix spc_)")
        grid = first_parallel(f.body)
        if len(grid) > 1:
            self._fail(f"{len(grid)} grid-level parallel loops ({', '.join(_fmt_loop(l) for l in grid)}): a kernel "
                       "has no grid-wide barrier between them; lower them as separate functions")
        if grid:
            loop = grid[0]
            for x in n.walk(f.body, skip={id(loop)}):
                if isinstance(x, (n.For, n.While)) and any(y is loop for y in n.walk(x)):
                    self._fail(f"{_fmt_loop(loop)} sits inside a sequential loop: each of its rounds would need a "
                               "grid-wide barrier; lower the outer loop on the host (one launch per round)")
        return grid

    def function(self, f: n.Function) -> str:
        self._fn = f.name
        self._private = set()
        self._staged = {}
        self._counter = 0
        grid = self._check_structure(f)
        self._readonly = readonly_params(f)
        lines = [f"// {line}" for line in f.doc.splitlines()] if f.doc else []
        params = [self.param(p) for p in f.params] + [f"int32_t* __restrict__ {STATUS_PARAM}"]
        lines.append(f'extern "C" __global__ void {f.name}(\n    ' + ",\n    ".join(params) + ") {")
        if grid:
            self._ctx = _Ctx("kernel")
        else:
            self._ctx = _Ctx("serial")
            lines.append(self.line(1, "if (blockIdx.x != 0 || threadIdx.x != 0) return;  "
                                      "// serial kernel: one thread does all the work"))
        try:
            lines += self.block_lines(f.body, 1)
        finally:
            self._ctx = _Ctx("kernel")
        lines.append("}")
        return "\n".join(lines)

    def module(self, m: n.Module) -> str:
        return PRELUDE + "\n" + "\n\n".join(self.function(f) for f in m.functions) + "\n"


def readonly_params(f: n.Function) -> set:
    """Pointer parameters the function only loads from (they become ``const T*``)."""
    ptrs = {p.name for p in f.params if isinstance(p.type, PointerType)}
    seen: dict[str, int] = {}
    loaded: dict[str, int] = {}
    for x in n.walk(f.body):
        if isinstance(x, n.Var) and x.name in ptrs:
            seen[x.name] = seen.get(x.name, 0) + 1
        elif isinstance(x, n.Load) and isinstance(x.array, n.Var) and x.array.name in ptrs:
            loaded[x.array.name] = loaded.get(x.array.name, 0) + 1
    return {p for p in ptrs if seen.get(p, 0) == loaded.get(p, 0)}


def emit_module(module: n.Module) -> str:
    """CUDA C source for every function of ``module`` (a prelude, then one kernel each)."""
    return CudaEmitter().module(module)


def emit_function(function: n.Function) -> str:
    """CUDA C for one function, without the prelude (for reading and tests)."""
    return CudaEmitter().function(function)


# ------------------------------------------------------------ launch geometry

MAX_GRID = 65535 * 64  # blocks; grid-stride loops cover any larger trip count


def _evaluate(e, args: dict, fn: str, loop: n.For):
    def bad(why):
        raise errors.UnsupportedError(
            f"cannot derive the launch configuration of `{fn}`: the bounds of {_fmt_loop(loop)} {why}; "
            "pass grid= explicitly")
    if isinstance(e, n.Const):
        return e.value
    if isinstance(e, n.Var):
        if e.name not in args:
            bad(f"use `{e.name}`, which is not a parameter given in the arguments")
        v = args[e.name]
        if isinstance(v, np.ndarray) and v.ndim == 0:
            v = v.item()
        if not isinstance(v, (int, float, np.integer, np.floating, bool, np.bool_)):
            bad(f"use `{e.name}`, which is not a scalar")
        return v.item() if hasattr(v, "item") else v
    if isinstance(e, n.Load):
        if not isinstance(e.array, n.Var) or e.array.name not in args:
            bad("load from an array that is not a parameter")
        arr = np.asarray(args[e.array.name]).reshape(-1)
        i = int(_evaluate(e.index, args, fn, loop))
        if not 0 <= i < arr.size:
            bad(f"load `{e.array.name}[{i}]`, out of bounds")
        return arr[i].item()
    if isinstance(e, n.Cast):
        v = _evaluate(e.value, args, fn, loop)
        return float(v) if e.type.is_float else int(v)
    if isinstance(e, n.Unary) and e.op == "-":
        return -_evaluate(e.operand, args, fn, loop)
    if isinstance(e, n.Binary) and e.op in ("+", "-", "*", "/", "%", "min", "max"):
        a, b = _evaluate(e.lhs, args, fn, loop), _evaluate(e.rhs, args, fn, loop)
        is_int = isinstance(e.type, ScalarType) and e.type.is_int
        if e.op == "+":
            return a + b
        if e.op == "-":
            return a - b
        if e.op == "*":
            return a * b
        if e.op == "min":
            return min(a, b)
        if e.op == "max":
            return max(a, b)
        if b == 0:
            bad("divide by zero")
        if e.op == "/":
            return int(a / b) if is_int else a / b  # C truncates toward zero
        return a - b * int(a / b) if is_int else float(np.fmod(a, b))
    bad(f"use an expression the launcher cannot evaluate ({type(e).__name__})")


def launch_config(function: n.Function, args_by_name: dict, block: int = 256,
                  max_grid: int = MAX_GRID) -> tuple[int, int]:
    """(grid, block) for launching ``function`` on the given arguments.

    The grid follows the trip count ``n`` of the grid-level parallel loop, whose
    bounds are evaluated from ``args_by_name`` (parameters, constants, loads from
    parameter arrays): "gpu-thread"/"threads": ceil(n / block) blocks;
    "gpu-block": n blocks; "gpu-warp": ceil(32 n / block) blocks; capped at
    ``max_grid`` (the loops are grid-stride) and at least 1. A function without a
    parallel loop runs as grid=1, block=1.
    """
    loops = first_parallel(function.body)
    if not loops:
        return 1, 1
    if len(loops) > 1:
        raise errors.UnsupportedError(f"cannot derive the launch configuration of `{function.name}`: it has "
                                      f"{len(loops)} grid-level parallel loops")
    loop = loops[0]
    block = int(block)
    if not 1 <= block <= 1024:
        raise errors.UnsupportedError(f"block size {block}: a CUDA block has 1 to 1024 threads")
    if loop.parallel in ("gpu-warp", "gpu-block") and block % 32:
        raise errors.UnsupportedError(f"block size {block} for {_fmt_loop(loop)} of `{function.name}`: warp and "
                                      "block mappings need a multiple of 32")
    start = _evaluate(loop.start, args_by_name, function.name, loop)
    end = _evaluate(loop.end, args_by_name, function.name, loop)
    trips = max(0, int(end) - int(start))
    if loop.parallel in ("gpu-thread", "threads"):
        grid = -(-trips // block)
    elif loop.parallel == "gpu-block":
        grid = trips
    elif loop.parallel == "gpu-warp":
        grid = -(-trips * 32 // block)
    else:
        raise errors.UnsupportedError(f"`{function.name}`: {_fmt_loop(loop)} cannot be the outermost parallel loop")
    return max(1, min(grid, int(max_grid))), block


# ------------------------------------------------------- kernel signatures

C_TYPES = {
    "bool": "bool", "char": "int8", "signed char": "int8", "unsigned char": "uint8",
    "int8_t": "int8", "uint8_t": "uint8", "short": "int16", "int16_t": "int16",
    "unsigned short": "uint16", "uint16_t": "uint16", "int": "int32", "int32_t": "int32",
    "unsigned": "uint32", "unsigned int": "uint32", "uint32_t": "uint32",
    "long": "int64", "long long": "int64", "int64_t": "int64",
    "unsigned long": "uint64", "unsigned long long": "uint64", "uint64_t": "uint64", "size_t": "uint64",
    "float": "float32", "double": "float64",
}


@dataclass(frozen=True)
class KernelParam:
    name: str
    base: str        # the C element / scalar type, e.g. 'float', 'int64_t'
    pointer: bool
    const: bool

    @property
    def ctype(self) -> str:
        """The C type to cast a launch argument to, e.g. ``const float*``."""
        return ("const " if self.const else "") + self.base + ("*" if self.pointer else "")

    @property
    def dtype(self) -> np.dtype:
        return np.dtype(C_TYPES[self.base])


@dataclass(frozen=True)
class KernelSignature:
    name: str
    params: tuple    # of KernelParam, the status parameter included

    @property
    def has_status(self) -> bool:
        return bool(self.params) and self.params[-1].name == STATUS_PARAM

    @property
    def user_params(self) -> tuple:
        return self.params[:-1] if self.has_status else self.params


_KERNEL = re.compile(r"__global__\s+(?:__launch_bounds__\s*\([^)]*\)\s*)?void\s+"
                     r"(?:__launch_bounds__\s*\([^)]*\)\s*)?(\w+)\s*\(([^)]*)\)")


def parse_kernels(source: str) -> dict:
    """{name: KernelSignature} for every ``__global__`` function of a CUDA source."""
    text = re.sub(r"/\*.*?\*/", " ", source, flags=re.S)
    text = re.sub(r"//[^\n]*", " ", text)
    out = {}
    for m in _KERNEL.finditer(text):
        name, plist = m.group(1), m.group(2).strip()
        params = []
        if plist and plist != "void":
            for raw in plist.split(","):
                words = raw.replace("*", " * ").split()
                words = [w for w in words if w not in ("__restrict__", "restrict", "__restrict")]
                if len(words) < 2:
                    raise errors.SpcompError(f"cannot read the parameter {raw.strip()!r} of kernel `{name}`")
                pname = words[-1]
                words = words[:-1]
                pointer = words.count("*")
                const = "const" in words
                base = " ".join(w for w in words if w not in ("*", "const"))
                if pointer > 1 or base not in C_TYPES:
                    raise errors.SpcompError(f"kernel `{name}`: parameter `{pname}` has a type ({raw.strip()}) "
                                             "the launchers do not handle")
                params.append(KernelParam(pname, base, bool(pointer), const))
        out[name] = KernelSignature(name, tuple(params))
    return out


def _dtype_matches(param: KernelParam, dtype: np.dtype) -> bool:
    want = param.dtype
    if dtype == want:
        return True
    if param.base in ("uint16_t", "unsigned short") and dtype.name == "bfloat16":
        return True
    if dtype.kind == want.kind and dtype.itemsize == want.itemsize and dtype.kind in "iuf":
        return True  # e.g. int64 'l' vs 'q'
    return False


def coerce_args(sig: KernelSignature, args, device_arrays=()) -> list:
    """Check launch arguments against a kernel signature and normalise them.

    ``args`` are the kernel's parameters in order, the status parameter left out
    (the launchers add it). Arrays must be C-contiguous NumPy arrays of the
    parameter's element type (bf16 arrays may be ml_dtypes.bfloat16 or uint16),
    writable unless the parameter is ``const``; scalars become NumPy scalars of
    the parameter's type. Objects whose type is in ``device_arrays`` (GPU arrays)
    are checked by dtype only and passed through.
    """
    params = sig.user_params
    args = list(args)
    if len(args) != len(params):
        raise errors.OperandError(f"kernel `{sig.name}` takes {len(params)} arguments "
                                  f"({', '.join(p.name for p in params)}), got {len(args)}")
    out = []
    for p, a in zip(params, args):
        if p.pointer:
            if device_arrays and isinstance(a, device_arrays):
                if not _dtype_matches(p, np.dtype(a.dtype)):
                    raise errors.DTypeError(f"kernel `{sig.name}`: `{p.name}` is {p.ctype}, got a GPU array of "
                                            f"{a.dtype}")
                out.append(a)
                continue
            if not isinstance(a, np.ndarray):
                raise errors.OperandError(f"kernel `{sig.name}`: `{p.name}` is {p.ctype} and needs a NumPy array, "
                                          f"got {type(a).__name__}")
            if not _dtype_matches(p, a.dtype):
                raise errors.DTypeError(f"kernel `{sig.name}`: `{p.name}` is {p.ctype}, got an array of {a.dtype}")
            if not a.flags.c_contiguous:
                raise errors.OperandError(f"kernel `{sig.name}`: the array for `{p.name}` is not C-contiguous")
            if not p.const and not a.flags.writeable:
                raise errors.OperandError(f"kernel `{sig.name}`: the kernel writes `{p.name}`, but its array is "
                                          "read-only")
            out.append(a)
        else:
            if isinstance(a, np.ndarray):
                if a.size != 1:
                    raise errors.OperandError(f"kernel `{sig.name}`: `{p.name}` is a scalar {p.base}, got an array")
                a = a.reshape(()).item()
            if p.dtype.kind in "iub" and isinstance(a, (float, np.floating)) and float(a) != int(a):
                raise errors.OperandError(f"kernel `{sig.name}`: `{p.name}` is {p.base}, got {a!r}")
            try:
                if p.dtype.kind in "iu":
                    info = np.iinfo(p.dtype)
                    if not info.min <= int(a) <= info.max:
                        raise OverflowError
                    out.append(p.dtype.type(int(a)))
                else:
                    out.append(p.dtype.type(a))
            except (OverflowError, TypeError, ValueError):
                raise errors.OperandError(f"kernel `{sig.name}`: `{p.name}` is {p.base}, got {a!r}") from None
    return out
