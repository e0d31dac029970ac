"""Kernel IR -> CUDA C text (DESIGN §7).

:func:`emit_module` verifies a :class:`~spcomp.ir.nodes.Module`
(:func:`spcomp.ir.verify.verify_module`) and prints it as one CUDA C translation
unit: the prelude (:mod:`.prelude`), the sort helpers its ``Sort`` statements call,
then one kernel per IR ``Function``::

    extern "C" __global__ void NAME(<params>, int32_t* __restrict__ spc_status)

Pointer parameters become ``T* __restrict__`` (``const T* __restrict__`` when the
kernel only loads from them); ``i64`` scalars stay ``int64_t``. The IR's
``Return(s)`` becomes ``{ atomicMax(spc_status, s); return; }`` (``return;`` for
``s == 0``): the launcher zeroes ``*spc_status`` and reads back the largest status
any thread reported. The same text compiles under nvcc and under the CPU harness
``runtime/cuda_sim.h`` (see :mod:`spcomp.backends.cuda.sim`).

Names starting with ``spc_`` are reserved for the backend; IR variables must not
use them. The emitter is split by job: this module prints expressions, statements,
loops and functions; :mod:`.team` prints team bodies (guards, barriers, member loops
and their reductions, staged loops) with the hazard analysis of :mod:`.hazards`;
:mod:`.signature` is the kernels' C signatures, :mod:`.launch` their launch geometry.

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
* ``Sort`` -> ``spc_sort_<t>(array + start, count)``, the IR's own sort
  (:mod:`spcomp.ir.sort`: insertion sort up to 16 elements, heap sort above, the
  CPU backend's algorithm) printed as a ``__device__`` function after the prelude,
  one per element type the module sorts.
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

from spcomp import errors
from spcomp.ir import nodes as n
from spcomp.ir.loops import first_parallel
from spcomp.ir.printer import CPrinter
from spcomp.ir.sort import sort_function, sorted_types
from spcomp.ir.types import BF16, BOOL, F32, F64, I32, I64, PointerType, ScalarType, bf16_bits
from spcomp.ir.verify import verify_function, verify_module

from . import staging
from .contexts import GRID_MAPPINGS, Ctx, describe_loop
from .hazards import array_name
from .prelude import PRELUDE
from .signature import STATUS_PARAM, kernel_params, readonly_params
from .team import TeamEmission

__all__ = ["CudaEmitter", "emit_function", "emit_module", "readonly_params", "sort_helper_name"]

# what to do about a sparse output the lowerer could only append on one thread
GROWING_OUTPUT_HELP = (
    "spcomp lowers sparse outputs for the GPU in two phases (count, prefix sum, fill; a thread per row) or "
    "into arrays the runtime allocates at a capacity (Options.bounded_appends: the kernel reports the entries "
    "it needed and runs again when they did not fit), never with realloc; this kernel was lowered for the "
    "CPU: compile it with backend='cuda' or 'cuda-sim'")


def sort_helper_name(t: ScalarType) -> str:
    """The ``__device__`` function ``Sort`` on elements of ``t`` calls: ``spc_sort_i64``..."""
    return f"spc_sort_{t.name}"


class CudaEmitter(TeamEmission, CPrinter):
    """A :class:`~spcomp.ir.printer.CPrinter` that prints CUDA C (see the module docs)."""

    def __init__(self, block: int = 0):
        self.block = block  # threads per block of every launch (Schedule.gpu), 0: unknown
        self.ctx = Ctx("kernel")
        self.private: set[str] = set()
        self.counter = 0
        self.fn_name = ""
        self.readonly: set[str] = set()
        self.staged: dict = {}  # (array, loop variable) -> the __shared__ copy a staged loop reads

    # ------------------------------------------------------------ helpers
    def fail(self, msg: str):
        raise errors.UnsupportedError(f"cuda backend, function `{self.fn_name}`: {msg}")

    def fresh(self, base: str) -> str:
        self.counter += 1
        return f"spc_{base}_{self.counter}"

    # ---------------------------------------------------------- expressions
    def expr_Const(self, e: n.Const) -> str:
        if e.type == BF16:
            return f"(uint16_t)0x{bf16_bits(e.value):04x} /* bf16 {float(e.value)!r} */"
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
        if self.staged and isinstance(e.array, n.Var) and isinstance(e.index, n.Var):
            shared = self.staged.get((e.array.name, e.index.name))
            if shared is not None:  # a staged loop's entry: read the block's shared copy
                return f"{shared[0]}[{shared[1]}]"
        return super().expr_Load(e)

    def expr_Call(self, e: n.Call) -> str:
        if e.func in n.INT_INTRINSICS:
            return f"spc_{e.func}({', '.join(self.expr(a) for a in e.args)})"
        if e.func in n.COMPOUND_INTRINSICS:  # the prelude's overloads for float and double
            return f"spc_{e.func}({', '.join(self.expr(a) for a in e.args)})"
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
        ctx = self.ctx
        if ctx.member:
            self.fail(f"`return {s.status}` inside {ctx.where}: a member of a warp or block cannot leave "
                      "early (the team's shuffles and barriers wait for it); set a flag and return after the loop")
        if s.status == n.STATUS_OK:
            return [self.line(d, "return;")]
        return [self.line(d, f"{{ atomicMax({STATUS_PARAM}, {int(s.status)}); return; }}")]

    def is_private(self, array) -> bool:
        return isinstance(array, n.Var) and array.name in self.private

    def check_effect(self, array, what: str):
        if self.ctx.kind == "kernel" and not self.is_private(array):
            self.fail(f"{what} `{array_name(array)}` outside the parallel loop: every GPU thread would run it. "
                      "Move it into the parallel loop, or into a separate function")

    def stmt_Store(self, s: n.Store, d):
        self.check_effect(s.array, "a store into")
        return super().stmt_Store(s, d)

    def stmt_AtomicAdd(self, s: n.AtomicAdd, d):
        self.check_effect(s.array, "an atomic add into")
        target = f"{self.expr(s.array)}[{self.expr(s.index)}]"
        t = s.array.type.elem
        if self.is_private(s.array):  # a thread's own workspace: no other thread sees it
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
        self.fail(f"atomic add into `{array_name(s.array)}` of type {t}: the cuda backend has atomics for "
                  "f32, f64, bf16, i32 and i64 only")

    def stmt_Allocate(self, s: n.Allocate, d):
        ctx = self.ctx
        if ctx.kind in ("block", "warp", "single") or ctx.member:
            where = ctx.where or "a team"
            self.fail(f"allocating `{s.var.name}` in {where}: workspaces are per thread on the GPU; allocate them "
                      "at kernel level or inside a grid-level gpu-thread loop")
        self.private.add(s.var.name)
        t = self.type_name(s.var.type)
        elem = self.type_name(s.var.type.elem)
        zero = "true" if s.zero else "false"
        return [self.line(d, f"{t} {s.var.name} = spc_alloc<{elem}>({self.expr(s.count)}, {zero});"),
                self.line(d, f"if ({s.var.name} == NULL) {{ atomicMax({STATUS_PARAM}, {n.STATUS_OUT_OF_MEMORY}); "
                             "return; }  // the device heap is exhausted")]

    def stmt_Free(self, s: n.Free, d):
        if self.ctx.kind in ("block", "warp", "single") or self.ctx.member:
            self.fail(f"freeing `{s.var.name}` in {self.ctx.where or 'a team'}: free workspaces where they are allocated")
        return [self.line(d, f"free({s.var.name});")]

    def stmt_Reallocate(self, s: n.Reallocate, d):
        self.fail(f"reallocating `{s.var.name}`: sparse outputs that grow while the kernel runs are not supported "
                  f"on the cuda backend; {GROWING_OUTPUT_HELP}")

    def stmt_Sort(self, s: n.Sort, d):
        self.check_effect(s.array, "sorting")
        return [self.line(d, f"{sort_helper_name(s.array.type.elem)}({self.expr(s.array)} + "
                             f"{self.expr(s.start)}, {self.expr(s.count)});")]

    def stmt_Prefetch(self, s: n.Prefetch, d):
        # a CPU cache hint (the CPU register-blocking pass adds it): dropped, always correct
        return [self.line(d, f"// prefetch of {self.expr(s.array)} dropped")]

    def stmt_PollInterrupt(self, s: n.PollInterrupt, d):
        # the host's interrupt flag is not visible to device code: a GPU kernel runs to its end
        return [self.line(d, "// interrupt poll dropped (CPU only)")]

    # ------------------------------------------------------------ loops
    # loop_annotation is inherited from CPrinter

    def stmt_For(self, s: n.For, d):
        if s.parallel:
            return self.parallel_for(s, d)
        if self.ctx.kind == "block":
            arrays = staging.plan(s, self.readonly)
            if arrays:
                return self.staged_for(s, d, arrays)
        lines = [self.line(d, f"#pragma unroll {int(s.unroll)}")] if s.unroll and s.unroll > 1 else []
        v = s.var.name
        head = (f"for ({self.type_name(s.var.type)} {v} = {self.expr(s.start)}; "
                f"{v} < {self.expr(s.end)}; ++{v}) {{{self.loop_annotation(s)}")
        return lines + [self.line(d, head)] + self.block_lines(s.body, d + 1) + [self.line(d, "}")]

    def loop_head(self, s: n.For, offset: str, step: str, note: str) -> str:
        t = self.type_name(s.var.type)
        if s.var.type != I64:
            offset, step = f"({t})({offset})", f"({t})({step})"
        start = offset if s.start == n.Const(0, s.start.type) else f"{self.expr(s.start)} + {offset}"
        v = s.var.name
        return f"for ({t} {v} = {start}; {v} < {self.expr(s.end)}; {v} += {step}) {{  // parallel: {s.parallel} -- {note}"

    def loop_body(self, s: n.For, ctx: Ctx, d: int) -> list[str]:
        outer = self.ctx
        self.ctx = ctx
        try:
            return self.block_lines(s.body, d + 1)
        finally:
            self.ctx = outer

    def parallel_for(self, s: n.For, d):
        ctx = self.ctx
        kind = s.parallel  # one of n.PARALLEL_MAPPINGS (verified)
        if ctx.kind == "kernel" and kind in GRID_MAPPINGS:
            return self.grid_loop(s, d)
        if ctx.kind == "block" and kind in ("gpu-thread", "threads", "gpu-warp"):
            return self.member_loop(s, d)
        if ctx.kind == "warp" and kind == "gpu-lane":
            return self.member_loop(s, d)
        if kind == "gpu-lane":
            self.fail(f"{describe_loop(s)} is not directly inside a gpu-warp loop: gpu-lane loops split a warp's "
                      "iteration among its 32 lanes")
        where = ctx.where or "this loop"
        self.fail(f"{describe_loop(s)} is nested in {where}; the cuda backend maps gpu-block > gpu-thread, "
                  "gpu-block > gpu-warp > gpu-lane and gpu-warp > gpu-lane, one parallel loop of each kind")

    def grid_loop(self, s: n.For, d):
        kind = s.parallel
        if kind in ("gpu-thread", "threads"):
            head = self.loop_head(s, "spc_global_thread()", "spc_grid_threads()",
                                  "grid-stride, one iteration per GPU thread")
            ctx = Ctx("thread", where=describe_loop(s))
        elif kind == "gpu-block":
            head = self.loop_head(s, "blockIdx.x", "gridDim.x", "one iteration per block")
            ctx = Ctx("block", body=s.body, where=describe_loop(s))
        else:
            head = self.loop_head(s, "spc_global_warp()", "spc_grid_warps()", "one iteration per warp")
            ctx = Ctx("warp", body=s.body, where=describe_loop(s))
        return [self.line(d, head)] + self.loop_body(s, ctx, d) + [self.line(d, "}")]

    # --------------------------------------------------------- functions
    def params(self, f: n.Function) -> list[str]:
        """``f``'s parameters as declared (:mod:`.signature`, which the launchers read too)."""
        for p in f.params:
            if isinstance(p.type, PointerType) and isinstance(p.type.elem, PointerType):
                self.fail(f"parameter `{p.name}` is a pointer to a pointer (an output that grows while the kernel "
                          f"runs): sparse outputs that grow are not supported on the cuda backend; {GROWING_OUTPUT_HELP}")
        return [p.declaration for p in kernel_params(f)]

    def check_structure(self, f: n.Function):
        for x in [*f.params, *n.walk(f.body)]:
            if isinstance(x, (n.Var, n.Declare, n.Allocate)):
                name = x.name if isinstance(x, n.Var) else x.var.name
                if name.startswith("spc_"):
                    self.fail(f"the name `{name}` is reserved for the cuda backend (prefix spc_)")
        grid = first_parallel(f.body)
        if len(grid) > 1:
            self.fail(f"{len(grid)} grid-level parallel loops ({', '.join(describe_loop(l) for l in grid)}): a kernel "
                      "has no grid-wide barrier between them; lower them as separate functions")
        if grid:
            loop = grid[0]
            for x in n.walk(f.body, skip={id(loop)}):
                if isinstance(x, (n.For, n.While)) and any(y is loop for y in n.walk(x)):
                    self.fail(f"{describe_loop(loop)} sits inside a sequential loop: each of its rounds would need a "
                              "grid-wide barrier; lower the outer loop on the host (one launch per round)")
        return grid

    def start(self, f: n.Function):
        self.fn_name = f.name
        self.private = set()
        self.staged = {}
        self.counter = 0
        self.readonly = readonly_params(f)

    def function(self, f: n.Function) -> str:
        """The ``__global__`` kernel of ``f`` (verified IR)."""
        self.start(f)
        grid = self.check_structure(f)
        lines = [f"// {line}" for line in f.doc.splitlines()] if f.doc else []
        params = self.params(f) + [f"int32_t* __restrict__ {STATUS_PARAM}"]
        bounds = f"__launch_bounds__({self.block}) " if self.block and grid else ""
        lines.append(f'extern "C" __global__ void {bounds}{f.name}(\n    ' + ",\n    ".join(params) + ") {")
        if grid:
            self.ctx = Ctx("kernel")
        else:
            self.ctx = Ctx("serial")
            lines.append(self.line(1, "if (blockIdx.x != 0 || threadIdx.x != 0) return;  "
                                      "// serial kernel: one thread does all the work"))
        try:
            lines += self.block_lines(f.body, 1)
        finally:
            self.ctx = Ctx("kernel")
        lines.append("}")
        return "\n".join(lines)

    def device_function(self, f: n.Function) -> str:
        """A ``__device__`` helper the kernels call (the sort): per-thread code that returns
        nothing (its ``Return(0)`` is ``return;``)."""
        self.start(f)
        lines = [f"// {line}" for line in f.doc.splitlines()] if f.doc else []
        lines.append(f"__device__ void {f.name}({', '.join(self.params(f))}) {{")
        self.ctx = Ctx("thread", where=f"the helper `{f.name}`")
        try:
            lines += self.block_lines(f.body, 1)
        finally:
            self.ctx = Ctx("kernel")
        lines.append("}")
        return "\n".join(lines)

    def module(self, m: n.Module) -> str:
        verify_module(m)
        helpers = [self.device_function(sort_function(t, sort_helper_name(t))) for t in sorted_types(m)]
        return PRELUDE + "\n" + "\n\n".join(helpers + [self.function(f) for f in m.functions]) + "\n"


def emit_module(module: n.Module, block: int = 0) -> str:
    """CUDA C source for every function of ``module`` (a prelude, then one kernel each);
    ``block``: the threads per block every launch uses (``Schedule.gpu``), declared
    to nvcc as ``__launch_bounds__`` (0: not declared)."""
    return CudaEmitter(block).module(module)


def emit_function(function: n.Function) -> str:
    """CUDA C for one function, without the prelude (for reading and tests)."""
    verify_function(function)
    return CudaEmitter().function(function)
