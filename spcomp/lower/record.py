"""The lowering's input and output as records: :class:`Options` in, :class:`Lowered` out.

``Lowered`` is what every later stage reads -- the backends (code), the runtime
(operand, output and thread plans) and the user (inspection) -- and what the disk
cache and kernel files store (``runtime/record.py`` writes it as data). It is
built in one place (:func:`lowered_record`) and read, never patched, afterwards:
each part says what it is for, so a reader knows which stage depends on which
field. :data:`LOWERED_VERSION` is part of the stored schema.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from ..errors import ScheduleError
from ..ir import nodes as n
from ..ir.target import Capabilities
from ..notation import Assignment

# bump when a field keeps its name but changes its meaning
LOWERED_VERSION = 2
# the most entries (and the largest coordinate) a 32-bit index addresses; tests lower
# it to exercise the switch to 64-bit kernels at small sizes (then compile afresh)
INDEX32_LIMIT = 2**31 - 1


@dataclass
class Options:
    """How to lower: the schedule, as data (part of every cache key)."""
    index_bits: int = 32
    drop_zeros: bool | None = None   # None: only where an output loop is dense
    parallel: str | None = None      # index name to run in parallel, "auto", or None
    parallel_kind: str = "threads"   # threads | gpu-thread | gpu-block | gpu-warp
    order: list | None = None        # user loop order (names)
    precompute: tuple = ()           # reductions to push into temporaries
    vectorize: tuple = ()            # (index, width) hints
    unroll: tuple = ()               # (index, factor) hints
    auto_precompute: bool = True
    auto_layout: bool = True          # copy dense inputs whose inner loop would stride
    blas: bool = False                # dense matrix products by a BLAS gemm call (blas.py)
    vector_gathers: bool = True       # vectorise loops that gather (the CPU's gathers are fast)
    split: tuple = ()                 # (index, outer, inner, factor) per Schedule.split
    # a position loop (Schedule.pos / fuse, split or not): possplit.PosSplit's fields as a tuple
    pos_split: tuple = ()
    row_pos: tuple = ()               # TACO's pos within a row: rowpos.RowPos's fields as a tuple
    race: tuple = ()                  # (strategy, insist) per parallelize(..., race=)
    # GPU loops inside the parallel one that split its iterations among a team
    # (several parallelize directives: gpumap.py): (index, mapping, race, insist)
    members: tuple = ()
    bounds: tuple = ()                # (index, limit) per Schedule.bound
    gpu_block: int = 0                # CUDA threads per block (Schedule.gpu; 0: the backend's default)
    # CPU threads and a sparse output with dense rows: each chunk of rows appends to
    # arrays of its own and the runtime stitches them (runtime/chunks.py) instead of
    # the two-phase count and fill (assembly.py)
    append_chunks: bool = False
    # with append_chunks, for a csr-like output drained from a workspace: chunks share
    # the output's arrays, pairs meeting in the middle, so none is copied after the
    # join (lower/meet.py, runtime/meet_chunks.py)
    meet_chunks: bool = False
    # the GPU: a sparse output appended one entry at a time gets arrays the runtime
    # allocates at a capacity; the kernel stores what fits, counts the rest, reports
    # the entries it needed, and the runtime runs it again when they did not fit
    # (device code cannot realloc)
    bounded_appends: bool = False
    name: str = "kernel"
    caps: Capabilities = field(default_factory=lambda: Capabilities("cpu"))  # what the backend can do
    # the most entries a 32-bit index addresses (INDEX32_LIMIT when the options were made)
    index32_limit: int = field(default_factory=lambda: INDEX32_LIMIT)

    @property
    def index_limit(self) -> int | None:
        """The most entries an output of this kernel may count: its 32-bit indices'
        limit, or None for 64-bit indices."""
        return self.index32_limit if self.index_bits == 32 else None

    @classmethod
    def from_schedule(cls, schedule, drop_zeros, name, caps) -> "Options":
        """The options of a ``Schedule`` for a backend with capabilities ``caps``;
        ScheduleError for a parallel mapping the backend does not run."""
        from .gpumap import grid_and_members
        from .possplit import from_directives
        from .rowpos import take
        row, directives = take(schedule.directives, caps)
        schedule = type(schedule)(directives)
        spec, dense_splits = from_directives(directives)
        par, members = grid_and_members(schedule.get("parallelize"), caps)
        kind = caps.default_parallel_kind
        race = tuple(par[2:4]) if par is not None and len(par) > 2 else ()
        gpu = schedule.get("gpu")
        if gpu and caps.host_threads:
            raise ScheduleError(f"gpu(block={gpu[-1][0]}): a launch's block size is for the CUDA backends; "
                                f"backend {caps.name!r} runs CPU threads")
        if schedule.get("sequential"):
            parallel = None
        elif par is not None:
            parallel, kind = par[0], par[1]
            if kind not in caps.parallel_kinds:
                raise ScheduleError(f"parallelize({parallel!r}, {kind!r}) does not fit backend {caps.name!r}, "
                                    f"which runs {', '.join(caps.parallel_kinds)}")
        else:
            parallel = "auto"
        return cls(
            drop_zeros=drop_zeros,
            parallel=parallel,
            parallel_kind=kind,
            order=schedule.order,
            precompute=tuple(p[0] for p in schedule.get("precompute")),
            vectorize=tuple((_loop_of(v[0], spec), v[1]) for v in schedule.get("vectorize")),
            unroll=tuple((_loop_of(u[0], spec), u[1]) for u in schedule.get("unroll")),
            auto_precompute=not schedule.get("no_precompute"),
            blas=caps.blas and not schedule.get("no_blas"),
            auto_layout=not schedule.get("keep_layout"),
            bounded_appends=not caps.growable_outputs,
            vector_gathers=caps.vector_gathers,
            split=tuple(tuple(s[1:]) if s[0] == "split" else (s[1], s[2], s[3], -s[4])  # (lower/split.py)
                        for s in dense_splits),
            pos_split=() if spec is None else tuple(vars(spec).values()),
            row_pos=() if row is None else tuple(vars(row).values()),
            race=race,
            members=members if parallel is not None else (),
            bounds=tuple((_loop_of(b[0], spec), b[1]) for b in schedule.get("bound")),
            gpu_block=gpu[-1][0] if gpu else 0,
            name=name,
            caps=caps,
        )


def _loop_of(name: str, spec) -> str:
    """The loop a hint names: a position loop's pieces hint the loop over its level."""
    if spec is not None and name in (spec.inner or spec.outer,):
        return spec.index
    return name


@dataclass
class Code:
    """What the backends compile and the runtime calls."""
    module: n.Module
    entry: str                 # the function a call runs (a two-phase kernel's fill)
    bindings: list             # what the runtime passes for each of the entry's parameters


@dataclass
class OperandPlan:
    """Storages the runtime makes from operands before a call."""
    transposes: dict = field(default_factory=dict)  # storage name -> (operand name, Format)
    diagonals: dict = field(default_factory=dict)   # storage name -> diagonal.Diagonal (A_diag[i] = A[i,i])


@dataclass
class OutputPlan:
    """How the output is made."""
    shape: str                 # 'dense' 'csf' 'coo' 'packed'
    growable: list = field(default_factory=list)  # (level, array) the kernel allocates and grows
    bounded: tuple = ()        # (level, array) appended into runtime-allocated arrays (Options.bounded_appends)
    assembly: object = None    # assembly.TwoPhase when the output is counted, then filled
    overwrites: bool = False   # a dense output every element of which the kernel stores: not zeroed first
    index_limit: int | None = None  # the most entries a 32-bit kernel's output holds (None: 64-bit)
    # the format asked for, when the kernel assembles a stand-in with compressed levels
    # where it has dense ones under sparse ones (outputs.assembled_format); the runtime expands
    expand: object = None
    drops_zeros: bool = False  # a sparse output that skips computed zeros (its stored values are nonzero)
    meet: tuple = ()           # (level, array) the chunks share, pairs meeting in the middle (lower/meet.py)
    meetable: bool = False     # chunks of this lowering could meet (Options.meet_chunks would apply)


@dataclass
class ThreadPlan:
    """How a call's parallel loop is split, and what its work is."""
    parallel: str | None = None        # index run over threads, if any
    balance: tuple | None = None       # (storage name, level) whose pos balances threads
    split: tuple | None = None         # (factor, outer?) when the parallel loop is a split piece
    positions: tuple | None = None     # (storage, level): threads split that level's positions
    work_scale: tuple = ()     # (storage, level) walked under each balanced nonzero (Lowerer._work_scale)
    work_dense: tuple = ()     # indices of the dense loops under each balanced nonzero
    gpu_choice: object = None  # default_schedule.RowChoice: thread or warp per row, picked per call
    partials: bool = False     # the parallel loop reduces: each chunk adds into its own copy of the output
    # with ``positions`` and ``split``: the loop runs over chunks of ``factor`` positions (possplit.py)
    fused: str | None = None   # the parallel loop is fused with this inner index's (densefuse.py)
    gpu_block: int = 0         # CUDA threads per block (Schedule.gpu; 0: the backend's default)


@dataclass
class Inspection:
    """What ``k.loops``, ``k.index_notation``, warnings and the shape checks read."""
    notation: Assignment       # the notation operands are checked against (every access kept)
    order: list                # the loop order, as IndexVars
    loops: str = ""            # the concrete loop nest as text
    warnings: list = field(default_factory=list)
    blas: list = field(default_factory=list)  # matrix products done by gemm calls, described


@dataclass
class Lowered:
    code: Code
    operands: OperandPlan
    output: OutputPlan
    threads: ThreadPlan
    inspection: Inspection

    @property
    def append_chunks(self) -> bool:
        """Whether each ``[lo, hi)`` call appends its rows from position 0, for the
        runtime to stitch (runtime/chunks.py): the entry then has per-chunk parameters."""
        return bool(self.code.module.function(self.code.entry).per_chunk) and not self.threads.partials

    @property
    def entry_function(self) -> n.Function:
        return self.code.module.function(self.code.entry)
