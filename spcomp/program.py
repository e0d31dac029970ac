"""A compiled program: several statements, run by one call.

``spcomp.compile`` returns a :class:`ProgramKernel` for text with more than one
statement (``frontend/program.py`` splits and checks it). The statements run in
order; a run of consecutive statements that each write a dense row-major tensor
(a temporary or an output) is lowered statement by statement and joined into
one native function (``lower/fuse.py``): one launch, no Python between the
statements, and a temporary passed from one loop nest to the next through the
same array. A statement that writes a sparse tensor, and any statement on a
backend without raw pointers (the CUDA backends), runs as a kernel of its own,
its result handed to the next one by the runtime (``k.loops`` says which is which).
"""
from __future__ import annotations

import dataclasses

import numpy as np

from .errors import OperandError, SpcompError
from .ir import nodes as irn
from .ir.printer import print_ir
from .kernel import Kernel
from .lower.fuse import fuse
from .lower.record import Code
from .runtime.call import CallContext
from .runtime.launch import Variant
from .runtime.program import FusedRun, FusedStep


class ProgramKernel:
    """Several statements compiled together. Call it with the inputs by name; it
    returns the one output, or a dict of them (``outputs``)."""

    def __init__(self, expression: str, program, options, target, schedule=None):
        self.expression = expression
        self.program = program
        self.schedule = schedule
        self._options = options
        self._target = target
        self.outputs = list(program.outputs)
        self.temporaries = list(program.temporaries)
        self.inputs = [n for n in program.inputs if n not in program.outputs]
        self._accumulated = [s.lhs.tensor.name for s in program.statements if s.accumulate]
        self.segments = self._plan()
        self.warnings = [w for kind, seg, _ in self.segments
                         for w in (seg.warnings if kind == "kernel" else
                                   [x for st in seg.steps for x in st.low.inspection.warnings])]

    # ------------------------------------------------------------ planning
    def _plan(self) -> list:
        """``(kind, object, statement numbers)`` per segment, in order: "fused" (a
        FusedRun of two or more statements) or "kernel" (one statement's Kernel)."""
        stmts = self.program.statements
        fusable = [self._fusable_lowering(k) for k in range(len(stmts))]
        segments, k = [], 0
        while k < len(stmts):
            run = [k]
            written = {stmts[k].lhs.tensor.name}
            while (fusable[k] is not None and run[-1] + 1 < len(stmts)
                   and fusable[run[-1] + 1] is not None
                   and _reads_plainly(fusable[run[-1] + 1], written)):
                run.append(run[-1] + 1)
                written.add(stmts[run[-1]].lhs.tensor.name)
            if len(run) >= 2 and fusable[k] is not None:
                segments.append(("fused", self._fused_run(run, fusable), run))
            else:
                run = [k]
                segments.append(("kernel", self._kernel(k), run))
            k = run[-1] + 1
        return segments

    def _statement_options(self, k: int, fused: bool, bits: int = 32):
        opts = dataclasses.replace(self._options, name=f"statement{k + 1}", index_bits=bits)
        if fused:  # one function, one thread; no copies the runtime would make between statements
            opts = dataclasses.replace(opts, parallel=None, auto_layout=False)
        return opts

    def _fusable_lowering(self, k: int):
        """Statement ``k`` lowered for a fused run, or None when it cannot join one."""
        caps = self._target.capabilities
        a = self.program.statements[k]
        fmt = a.lhs.tensor.format
        if not (caps.pointers and caps.host_threads) or not fmt.is_dense or fmt.order != tuple(range(fmt.ndim)):
            return None
        low = self._target.lower(a, self._statement_options(k, True))
        if (low.output.shape != "dense" or low.output.growable or low.output.bounded
                or low.output.assembly is not None or low.append_chunks
                or any(b.role not in ("size", "input", "output") for b in low.code.bindings)):
            return None
        return low

    def _kernel(self, k: int) -> Kernel:
        a = self.program.statements[k]
        return Kernel(self.program.texts[k], a, self._statement_options(k, False), self._target, self.schedule)

    def _fused_run(self, run: list, lowerings: list) -> FusedRun:
        stmts = self.program.statements
        steps = []
        for k in run:
            a, low = stmts[k], lowerings[k]
            name = a.lhs.tensor.name
            inputs = list(dict.fromkeys(acc.tensor.name for acc in _accesses(a)))
            ctx = CallContext(self.program.texts[k], a, low, self._target, name, inputs)
            steps.append(FusedStep(name, ctx, Variant(low, None, None).arg_plan, low, a.accumulate,
                                   name in self.outputs))
        built: dict = {32: self._build(run, [lowerings[k] for k in run])}

        def build(bits):
            if bits not in built:
                lows = [self._target.lower(stmts[k], self._statement_options(k, True, bits)) for k in run]
                built[bits] = self._build(run, lows)
            return built[bits][:3]
        fused = FusedRun(steps, build, self._options.index32_limit, self.expression)
        fused.compiled = built[32]
        return fused

    def _build(self, run: list, lows: list) -> tuple:
        """Join the statements' functions and compile them: (function, sources, arg
        plans, module, compiled)."""
        stmts = self.program.statements
        written: dict = {}
        links = []
        for j, k in enumerate(run):
            mine = {acc.tensor.name for acc in _accesses(stmts[k])}
            links.append({name: w for name, w in written.items() if name in mine})
            written[stmts[k].lhs.tensor.name] = j
        fn, sources, merged = fuse([low.entry_function for low in lows], [low.code.bindings for low in lows],
                                   links, name=self._options.name, docs=[repr(stmts[k]) for k in run],
                                   share_loop=self._shared_loops(run, lows))
        module = irn.Module((fn,), fn.name)
        record = dataclasses.replace(lows[0], code=Code(module, fn.name, []))
        compiled = self._target.build(record)
        function = self._target.entry(compiled, record)
        plans = [Variant(low, None, None).arg_plan for low in lows]
        return function, sources, plans, module, compiled, merged

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
        """Every statement's loop nest, grouped by the native function that runs it."""
        parts = []
        for kind, seg, run in self.segments:
            which = ", ".join(str(k + 1) for k in run)
            if kind == "fused":
                parts.append(f"# statements {which}: one native function, one after the other (one thread)")
                merged = seg.compiled[5]
                for j, st in enumerate(seg.steps):
                    if merged[j]:
                        parts.append(f"# statement {run[j] + 1} runs inside statement {run[j - 1] + 1}'s outer loop, "
                                     "at the same iteration: the rows it reads were just written")
                    parts.append(f"{st.low.inspection.notation!r}\n{st.low.inspection.loops}")
            else:
                parts.append(f"# statement {which}: a kernel of its own\n{seg.loops}")
        parts.append(f"# returns {', '.join(self.outputs)}"
                     + (f"; temporaries {', '.join(self.temporaries)}" if self.temporaries else ""))
        return "\n".join(parts)

    @property
    def ir(self) -> str:
        """The kernel IR of every native function the program runs, as C-like code."""
        return "\n".join(print_ir(seg.compiled[3]) if kind == "fused" else seg.ir
                         for kind, seg, _ in self.segments)

    @property
    def source(self) -> str:
        return "\n".join(self._target.source(seg.compiled[4]) if kind == "fused" else seg.source
                         for kind, seg, _ in self.segments)

    @property
    def launches(self) -> int:
        """Native functions a call runs: 1 when the whole program fused."""
        return len(self.segments)

    @property
    def backend(self) -> str:
        return self._target.name

    def save(self, path, key=None) -> None:
        """Programs are not saved yet: SpcompError (compile them in each process)."""
        raise SpcompError("a program of several statements cannot be saved yet; save each statement's "
                          "kernel, or compile the program in each process")

    def to_bytes(self, key=None) -> bytes:
        """Programs are not saved yet (see :meth:`save`)."""
        self.save(None, key)

    def __repr__(self) -> str:
        return f"<spcomp.ProgramKernel {self.expression!r} outputs={self.outputs} backend={self._target.name}>"

    # ---------------------------------------------------------------- call
    def __call__(self, **operands):
        """Run the program: inputs by name (and each ``+=`` output) -> the output, or a
        dict of outputs by name when there are several."""
        allowed = set(self.inputs) | set(self._accumulated)
        unexpected = sorted(set(operands) - allowed)
        missing = sorted(allowed - set(operands))
        if unexpected or missing:
            raise OperandError(
                (f"unexpected operand(s) {', '.join(unexpected)}; " if unexpected else "")
                + (f"missing operand(s) {', '.join(missing)}; " if missing else "")
                + f"this program takes {', '.join(sorted(allowed))}")
        env = dict(operands)
        scalars = set()
        for name in self._accumulated:
            v = env[name]
            if self.program.tensors[name].order == 0 and _is_scalar(v):
                env[name] = np.array(v, dtype=_dtype(self.program.tensors[name].dtype))
                scalars.add(name)
        for kind, seg, run in self.segments:
            if kind == "fused":
                seg.run(env)
            else:
                k = run[0]
                a = self.program.statements[k]
                name = a.lhs.tensor.name
                args = {n: env[n] for n in seg.inputs}
                if a.accumulate:
                    args[name] = env[name]
                env[name] = seg(**args)
        out = {}
        for name in self.outputs:
            v = env[name]
            out[name] = v.item() if name in scalars or (isinstance(v, np.ndarray) and v.ndim == 0
                                                         and name not in self._accumulated) else v
        return out[self.outputs[0]] if len(self.outputs) == 1 else out


def _accesses(a) -> list:
    from .notation import accesses
    return accesses(a.rhs)


def _reads_plainly(low, written: set) -> bool:
    """Whether a lowering reads every tensor of ``written`` as itself (a row-major
    dense array, no transposed or diagonal copy the runtime would have to make)."""
    ops = low.operands
    copied = {op for op, _f in ops.transposes.values()} | {d.operand for d in ops.diagonals.values()}
    if copied & written:
        return False
    for b in low.code.bindings:
        if b.role == "input" and b.storage in written and b.array != "vals":
            return False
    return True


def _is_scalar(value) -> bool:
    return isinstance(value, (int, float, np.floating, np.integer)) and not isinstance(value, (bool, np.bool_))


def _dtype(name: str):
    from .runtime.plan import np_dtype
    return np_dtype(name)
