"""The kernel IR: a small imperative language both backends consume.

Expressions and statements are frozen dataclasses. A kernel is a
:class:`Module` of :class:`Function` s; every function returns an ``i32``
status (0 = success, see :data:`STATUS_CODES`). Parameters are scalars
(``i64``) or pointers to typed arrays; pointer parameters never alias each
other (the runtime guarantees it), so backends may mark them ``noalias`` /
``__restrict__``.

Conventions every backend follows (:func:`spcomp.ir.verify.verify_module` checks the
IR against them before either backend sees it):

* Integer arithmetic is in the type of the operands; the lowerer inserts
  :class:`Cast` where types differ, so backends never guess.
* ``Load``/``Store`` index arrays by element, not byte.
* ``&&``, ``||`` and ``Select`` have C semantics: the right operand of ``&&``
  is not evaluated when the left is false, so ``p < end && crd[p] == i`` never
  reads ``crd[end]``.
* ``For`` runs ``var`` from ``start`` (inclusive) to ``end`` (exclusive) by 1;
  ``end`` must not change inside the body (backends may evaluate it once).
  ``parallel`` is ``None`` or a mapping name: ``"threads"`` (CPU: the runtime
  calls the function over sub-ranges ``[lo, hi)``; the lowerer only puts it on
  the outermost loop, whose bounds are then the ``lo``/``hi`` params),
  ``"gpu-block"``, ``"gpu-thread"``, ``"gpu-warp"``, ``"gpu-lane"``
  (:data:`PARALLEL_MAPPINGS`; backends/cuda/emit.py says how they nest).
* ``Allocate``/``Reallocate``/``Free`` manage heap arrays held in pointer
  variables (CPU: malloc/realloc/free from libc; ``zero`` means calloc). A failed
  allocation returns ``STATUS_OUT_OF_MEMORY``, an ``Allocate`` after freeing its
  ``free`` pointers (arrays allocated before it that nothing else would free).
* ``Sort`` sorts ``count`` elements (integers, f32 or f64) of ``array`` starting at
  ``start`` ascending; both backends run the heap sort of :mod:`spcomp.ir.sort`.
* ``Prefetch`` asks the cache for the line holding ``array[index]``: it reads and
  writes nothing and never faults, even past the array's end (computing ``index``
  must still stay in bounds); dropping it is a correct implementation.
* ``Return`` leaves the function with a status code.
* ``PollInterrupt`` leaves the function with ``STATUS_INTERRUPTED``, after freeing
  its ``free`` pointers, when the process's interrupt flag is set (Ctrl-C during a
  long call: runtime/interrupt.py); otherwise it does nothing. The CPU reads the
  flag with an atomic load; a backend that cannot see it (the GPU) drops the
  statement. The lowerer puts one at the top of each outermost loop that holds
  another loop (lower/polls.py), so inner, vectorised loops never test it.
"""
from __future__ import annotations

from dataclasses import dataclass
from dataclasses import replace as _replace
from typing import Union

from .types import BOOL, I64, ScalarType, Type

STATUS_OK = 0
STATUS_PACKED_OVERFLOW = 1
STATUS_OUT_OF_MEMORY = 2
STATUS_TOO_LARGE_FOR_BLAS = 3
STATUS_INTERRUPTED = 4
STATUS_INDEX_OVERFLOW = 5
STATUS_BOUND_EXCEEDED = 6
# (7: the CUDA grid barrier's timeout, backends/cuda/grid_sync.py)
# an output's arrays, or a chunk's room in them, were too small (lower/meet.py, lower/device_scan.py)
STATUS_NO_ROOM = 8
STATUS_CODES = {
    STATUS_OK: "ok",
    STATUS_PACKED_OVERFLOW: "a packed-block level got more nonzeros in a block than it has slots",
    STATUS_OUT_OF_MEMORY: "the kernel could not allocate memory",
    STATUS_TOO_LARGE_FOR_BLAS: "a matrix product has a dimension over 2**31-1, more than BLAS's "
                               "32-bit sizes allow; compile with Schedule().no_blas()",
    STATUS_INTERRUPTED: "interrupted (the process's interrupt flag was set: Ctrl-C)",
    STATUS_INDEX_OVERFLOW: "a sparse output got more entries than its 32-bit positions hold (the runtime "
                           "runs the 64-bit kernel then)",
    STATUS_BOUND_EXCEEDED: "a loop would run more iterations than its Schedule.bound allows (the kernel "
                           "stopped before running it; the data break the declared bound)",
    STATUS_NO_ROOM: "an output's arrays (or a chunk of rows' share of them) were too small for its entries "
                    "(the runtime runs the call again with the room it counted)",
}


# ---------------------------------------------------------------- expressions

@dataclass(frozen=True)
class Var:
    name: str
    type: Type

    def __repr__(self) -> str:
        return self.name


@dataclass(frozen=True)
class Const:
    value: Union[int, float, bool]
    type: ScalarType

    def __repr__(self) -> str:
        return repr(self.value)


@dataclass(frozen=True)
class Load:
    array: "Expr"  # of PointerType
    index: "Expr"

    @property
    def type(self) -> Type:
        return self.array.type.elem


BINARY_OPS = ("+", "-", "*", "/", "%", "<", "<=", ">", ">=", "==", "!=",
              "&&", "||", "min", "max", "<<", ">>", "&", "|")
COMPARISONS = ("<", "<=", ">", ">=", "==", "!=", "&&", "||")


@dataclass(frozen=True)
class Binary:
    op: str
    lhs: "Expr"
    rhs: "Expr"

    @property
    def type(self) -> Type:
        return BOOL if self.op in COMPARISONS else self.lhs.type


@dataclass(frozen=True)
class Unary:
    op: str  # '-' or '!'
    operand: "Expr"

    @property
    def type(self) -> Type:
        return self.operand.type


# Float intrinsics. The C math library's functions (f32 calls the ``f`` variant) and
# the language's compound functions, which each backend expands on its arguments'
# values, so an argument is computed once however often the formula uses it
# (``sign(sign(...))`` stays linear in size): ``relu``, NaN-propagating
# ``maximum``/``minimum`` (np.maximum), ``sign``, ``heaviside``, ``mod`` (np.mod),
# ``gelu`` (erf form), ``silu``, ``sigmoid``, ``softplus``, ``square``, ``cube``.
LIBM_INTRINSICS = ("exp", "expm1", "log", "log1p", "log2", "log10", "sqrt", "cbrt", "abs", "erf",
                   "sin", "cos", "tan", "asin", "acos", "atan", "sinh", "cosh", "tanh", "asinh",
                   "acosh", "atanh", "floor", "ceil", "rint", "trunc", "pow", "atan2")
COMPOUND_INTRINSICS = ("relu", "maximum", "minimum", "sign", "heaviside", "mod", "gelu", "silu",
                       "sigmoid", "softplus", "square", "cube")
INTRINSICS = LIBM_INTRINSICS + COMPOUND_INTRINSICS
BINARY_INTRINSICS = ("pow", "atan2", "maximum", "minimum", "heaviside", "mod")
# on an i64, to walk bitmaps: ``ctz`` the index of its lowest set bit (64 for 0),
# ``popcount`` the number of set bits, ``clear_lowest`` the word without its lowest set
# bit (``x & (x - 1)`` in wrapping arithmetic: integer ``-`` may not overflow, and
# ``x - 1`` does for a word holding only bit 63); and, on two, ``clamp_index(c, last)``
# ``c`` where ``0 <= c <= last``, else ``last``: one unsigned compare and a select (a
# negative ``c`` is a huge unsigned one), for coordinates read from an operand
# (ir.build.clamp_coordinate)
INT_INTRINSICS = ("ctz", "popcount", "clear_lowest", "clamp_index")
INT_ARITY = {"clamp_index": 2}


@dataclass(frozen=True)
class Call:
    """A math intrinsic on a float value (one of :data:`INTRINSICS`) or an integer
    one on an ``i64`` (:data:`INT_INTRINSICS`)."""
    func: str
    args: tuple
    type: ScalarType


@dataclass(frozen=True)
class Select:
    cond: "Expr"
    if_true: "Expr"
    if_false: "Expr"

    @property
    def type(self) -> Type:
        return self.if_true.type


@dataclass(frozen=True)
class Cast:
    value: "Expr"
    type: ScalarType


Expr = Union[Var, Const, Load, Binary, Unary, Call, Select, Cast]


# ----------------------------------------------------------------- statements

@dataclass(frozen=True)
class Comment:
    text: str


@dataclass(frozen=True)
class Declare:
    var: Var
    init: Expr | None = None


@dataclass(frozen=True)
class Assign:
    var: Var
    value: Expr


@dataclass(frozen=True)
class Store:
    array: Expr
    index: Expr
    value: Expr


@dataclass(frozen=True)
class AtomicAdd:
    array: Expr
    index: Expr
    value: Expr


@dataclass(frozen=True)
class Block:
    body: tuple = ()


# the mappings a ``For`` may name in ``parallel`` ("gpu-lane": the lanes of a gpu-warp loop)
PARALLEL_MAPPINGS = ("threads", "gpu-block", "gpu-thread", "gpu-warp", "gpu-lane")


@dataclass(frozen=True)
class For:
    var: Var
    start: Expr
    end: Expr
    body: Block
    parallel: str | None = None
    vectorize: int = 0  # preferred vector width hint; 0 = backend decides
    unroll: int = 0     # unroll factor hint; 0 = backend decides
    masked_tail: bool = False  # with ``vectorize``: mask the last partial vector, no scalar remainder


@dataclass(frozen=True)
class While:
    cond: Expr
    body: Block


@dataclass(frozen=True)
class If:
    cond: Expr
    then: Block
    otherwise: Block | None = None


@dataclass(frozen=True)
class Allocate:
    var: Var  # of PointerType; declared by this statement
    count: Expr
    zero: bool = False
    # heap arrays already live here that a failed allocation frees before its status-2
    # return (the CPU backend): a function's second workspace failing frees the first
    free: tuple = ()  # of Var


@dataclass(frozen=True)
class Reallocate:
    var: Var
    count: Expr
    # the function's own heap arrays live here (a transposed copy, row workspaces) that
    # a failed reallocation frees before its status-2 return, as Allocate.free
    free: tuple = ()  # of Var


@dataclass(frozen=True)
class Free:
    var: Var


@dataclass(frozen=True)
class Sort:
    array: Expr
    start: Expr
    count: Expr


@dataclass(frozen=True)
class Prefetch:
    array: Expr
    index: Expr


@dataclass(frozen=True)
class Gemm:
    """``c = op(a) · op(b)`` over row-major matrices by the process's BLAS (CPU only).

    ``c`` is ``m × n`` with row stride ``ldc``; ``a`` is ``m × k`` (``k × m`` when
    ``trans_a``) with row stride ``lda``; ``b`` is ``k × n`` (``n × k`` when
    ``trans_b``). The backend returns status 3 when a size exceeds BLAS's int32.
    """
    c: Expr
    a: Expr
    b: Expr
    m: Expr
    n: Expr
    k: Expr
    lda: Expr
    ldb: Expr
    ldc: Expr
    trans_a: bool
    trans_b: bool
    alpha: float = 1.0   # c = alpha * op(a)·op(b) + beta * c
    beta: float = 0.0


@dataclass(frozen=True)
class Return:
    status: int = STATUS_OK


@dataclass(frozen=True)
class PollInterrupt:
    """``if (interrupt flag) { free(each of free); return STATUS_INTERRUPTED; }``.

    ``free`` lists the kernel's own heap arrays live at the poll (workspaces, BLAS
    temporaries): arrays it publishes to the runtime are freed by the runtime."""
    free: tuple = ()  # of Var


Stmt = Union[Comment, Declare, Assign, Store, AtomicAdd, Block, For, While, If,
             Allocate, Reallocate, Free, Sort, Prefetch, Gemm, Return, PollInterrupt]


@dataclass(frozen=True)
class Function:
    name: str
    params: tuple  # of Var
    body: Block
    doc: str = ""
    # parameters a native parallel driver takes as arrays, one value per chunk of
    # [lo, hi) (a chunked append's capacity and output pointers: spcomp/chunks.py)
    per_chunk: tuple = ()


@dataclass(frozen=True)
class Module:
    functions: tuple  # of Function
    entry: str = ""

    def function(self, name: str) -> Function:
        for f in self.functions:
            if f.name == name:
                return f
        raise KeyError(name)


# -------------------------------------------------------------- small helpers

def const(value, type_: ScalarType) -> Const:
    if type_.is_float:
        return Const(float(value), type_)
    if type_ == BOOL:
        return Const(bool(value), type_)
    return Const(int(value), type_)


def i64(value: int) -> Const:
    return Const(int(value), I64)


def block(*stmts) -> Block:
    """A Block from statements, flattening lists and dropping Nones.

    A Block given as a statement stays a nested scope."""
    out = []
    for s in stmts:
        if s is None:
            continue
        if isinstance(s, (list, tuple)):
            out.extend(block(*s).body)
        else:
            out.append(s)
    return Block(tuple(out))


def children(node) -> tuple:
    """The statement and expression children of an IR node, in order."""
    if isinstance(node, (Var, Const, Comment, Return)):
        return ()
    if isinstance(node, Load):
        return (node.array, node.index)
    if isinstance(node, Binary):
        return (node.lhs, node.rhs)
    if isinstance(node, Unary):
        return (node.operand,)
    if isinstance(node, Call):
        return tuple(node.args)
    if isinstance(node, Select):
        return (node.cond, node.if_true, node.if_false)
    if isinstance(node, Cast):
        return (node.value,)
    if isinstance(node, Declare):
        return (node.var,) if node.init is None else (node.var, node.init)
    if isinstance(node, Assign):
        return (node.var, node.value)
    if isinstance(node, (Store, AtomicAdd)):
        return (node.array, node.index, node.value)
    if isinstance(node, Block):
        return tuple(node.body)
    if isinstance(node, For):
        return (node.var, node.start, node.end, node.body)
    if isinstance(node, While):
        return (node.cond, node.body)
    if isinstance(node, If):
        return (node.cond, node.then) + ((node.otherwise,) if node.otherwise is not None else ())
    if isinstance(node, Allocate):
        return (node.var, node.count) + tuple(node.free)
    if isinstance(node, Reallocate):
        return (node.var, node.count) + tuple(node.free)
    if isinstance(node, Free):
        return (node.var,)
    if isinstance(node, Sort):
        return (node.array, node.start, node.count)
    if isinstance(node, Prefetch):
        return (node.array, node.index)
    if isinstance(node, PollInterrupt):
        return tuple(node.free)
    if isinstance(node, Function):
        return tuple(node.params) + (node.body,)
    return ()


def walk(node, skip=()):
    """Every node under ``node`` (pre-order), skipping subtrees whose id is in ``skip``."""
    stack = [node]
    while stack:
        x = stack.pop()
        if id(x) in skip:
            continue
        yield x
        stack.extend(reversed(children(x)))


def uses(e, names) -> bool:
    """Whether expression ``e`` reads any of the variables ``names``."""
    return any(isinstance(x, Var) and x in names for x in walk(e))


def map_blocks(s, f):
    """``s`` with ``f`` (statement list -> statement list) applied to each statement
    list it holds directly: a loop's body, an if's branches, a nested block. Other
    statements come back as they are. The recursion step of the passes that rewrite
    a nest (register blocking, prefetch, frees before error returns)."""
    def each(b):
        return Block(tuple(f(list(b.body))))
    if isinstance(s, Block):
        return each(s)
    if isinstance(s, (For, While)):
        return _replace(s, body=each(s.body))
    if isinstance(s, If):
        return _replace(s, then=each(s.then), otherwise=None if s.otherwise is None else each(s.otherwise))
    return s
