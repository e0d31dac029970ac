"""The kernel IR's own rules, checked once before either backend sees a module.

:func:`verify_module` walks every function and raises :class:`KernelIRError` naming
the function, the rule and the offending node (printed as C) at the first break of:

* **names**: functions, parameters and declared variables are C identifiers;
  function names are unique and do not use the sort helpers' prefix
  (:data:`spcomp.ir.sort.HELPER_PREFIX`); parameter names are unique, and
  ``per_chunk`` names parameters;
* **scopes**: a variable is declared before it is used (as a parameter, by
  ``Declare``, ``Allocate`` or as a ``For`` variable), with the type it was declared
  with, and not declared twice in one scope (a ``Block``, a loop or branch body, a
  ``For``'s variable); a ``Declare``'s initial value does not read the variable it
  declares (C would read the new, uninitialised one). Scopes nest as in C;
* **types**: both operands of a binary operator (and both branches of a
  ``Select``) have one type, the operator applies to it (``&&``/``||`` and
  conditions on ``bool``, shifts and bitwise operators on integers, no arithmetic
  on pointers or on the storage-only ``bf16``); a ``Load``/``Store``/``AtomicAdd``
  indexes a pointer with an integer and stores the element type; a ``Declare``,
  ``Assign`` or ``For`` bound has the variable's type; intrinsics take their
  argument types (:data:`~spcomp.ir.nodes.INTRINSICS` on f32/f64,
  :data:`~spcomp.ir.nodes.INT_INTRINSICS` on i64); ``Sort`` sorts integers, f32 or
  f64; ``Gemm`` multiplies three f32 or three f64 arrays; counts and sizes are integers;
* **loops**: a ``For``'s ``parallel`` is ``None`` or one of
  :data:`~spcomp.ir.nodes.PARALLEL_MAPPINGS`, its hints are not negative.

What one backend cannot do with valid IR (the CUDA emitter's nesting of parallel
mappings and team rules, the CPU's atomics on bf16, reserved symbol names) stays in
that backend and raises :class:`~spcomp.errors.UnsupportedError` or its own error.
"""
from __future__ import annotations

import re

from spcomp.errors import SpcompError

from . import nodes as n
from .sort import HELPER_PREFIX, sortable
from .types import BF16, BOOL, F32, F64, I64, PointerType, ScalarType


class KernelIRError(SpcompError, ValueError):
    """Kernel IR that breaks the IR's own rules (a type mismatch, an undeclared variable).

    It is a bug in the stage that built the IR, never in the user's input."""


NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")

# the operators of BINARY_OPS each kind of operand takes
_INT_OPS = frozenset(("+", "-", "*", "/", "%", "<", "<=", ">", ">=", "==", "!=", "min", "max",
                      "<<", ">>", "&", "|"))
_FLOAT_OPS = frozenset(("+", "-", "*", "/", "%", "<", "<=", ">", ">=", "==", "!=", "min", "max"))
_BOOL_OPS = frozenset(("==", "!=", "&", "|", "min", "max", "&&", "||"))


def verify_module(module: n.Module) -> None:
    """Raise :class:`KernelIRError` unless ``module`` follows the IR's rules (module docs)."""
    names = [f.name for f in module.functions]
    for name in names:
        if not isinstance(name, str) or not NAME.match(name) or name.startswith(HELPER_PREFIX):
            raise KernelIRError(f"function name {name!r} is not a valid name (a C identifier not "
                                f"starting with {HELPER_PREFIX})")
    if len(set(names)) != len(names):
        raise KernelIRError(f"duplicate function names in module: {names}")
    for f in module.functions:
        verify_function(f)


def verify_function(f: n.Function) -> None:
    """Raise :class:`KernelIRError` unless function ``f`` follows the IR's rules."""
    _Verifier(f).run()


_EXPRESSIONS = (n.Var, n.Const, n.Load, n.Binary, n.Unary, n.Call, n.Select, n.Cast)


def _is_int(t) -> bool:
    return isinstance(t, ScalarType) and t.is_int


def _text(node) -> str:
    from .printer import print_ir
    try:
        return print_ir(node)
    except Exception:  # a node too broken to print
        return repr(node)


class _Verifier:
    def __init__(self, f: n.Function):
        self.f = f
        self.scopes: list[dict] = [{}]
        self.statement = None  # the statement being checked, for messages

    def error(self, message: str, node=None) -> KernelIRError:
        where = f" in function {self.f.name!r}"
        if node is not None:
            where += f": {_text(node)}"
            if self.statement is not None and node is not self.statement and isinstance(node, _EXPRESSIONS):
                where += f" (in `{_text(self.statement).splitlines()[0].strip()}`)"
        return KernelIRError(message + where)

    # ------------------------------------------------------------ scopes
    def declare(self, var, node):
        if not isinstance(var, n.Var):
            raise self.error(f"declaring {type(var).__name__}, not a variable", node)
        if not isinstance(var.name, str) or not NAME.match(var.name):
            raise self.error(f"variable name {var.name!r} is not a C identifier", node)
        if not isinstance(var.type, (ScalarType, PointerType)):
            raise self.error(f"variable {var.name} has no IR type ({var.type!r})", node)
        scope = self.scopes[-1]
        if var.name in scope:
            raise self.error(f"variable {var.name} declared twice in one scope", node)
        scope[var.name] = var

    def lookup(self, var: n.Var, node=None):
        for scope in reversed(self.scopes):
            found = scope.get(var.name)
            if found is not None:
                if found.type != var.type:
                    raise self.error(f"variable {var.name} used as {var.type} but declared as "
                                     f"{found.type}", node)
                return
        raise self.error(f"variable {var.name} ({var.type}) used before it is declared", node)

    def nested(self, block, declare=()):
        """Check ``block`` (a Block) in a new scope holding ``declare`` first."""
        if not isinstance(block, n.Block):
            raise self.error(f"a body must be a Block, not {type(block).__name__}")
        self.scopes.append({})
        try:
            for v, node in declare:
                self.declare(v, node)
            for s in block.body:
                self.stmt(s)
        finally:
            self.scopes.pop()

    # ---------------------------------------------------------- function
    def run(self):
        f = self.f
        if not isinstance(f.body, n.Block):
            raise self.error("the body is not a Block")
        names = [getattr(p, "name", None) for p in f.params]
        if len(set(names)) != len(names):
            raise self.error(f"duplicate parameter names ({', '.join(map(str, names))})")
        for p in f.params:
            self.declare(p, None)
            if isinstance(p.type, PointerType) and not isinstance(p.type.elem, (ScalarType, PointerType)):
                raise self.error(f"parameter {p.name} points at {p.type.elem!r}")
        for name in f.per_chunk:
            if name not in names:
                raise self.error(f"per_chunk names {name!r}, which is not a parameter")
        self.nested(f.body)

    # -------------------------------------------------------- statements
    def stmt(self, s):
        method = getattr(self, "stmt_" + type(s).__name__, None)
        if method is None:
            raise self.error(f"not a statement: {type(s).__name__}")
        outer, self.statement = self.statement, s
        method(s)
        self.statement = outer

    def stmt_Comment(self, s: n.Comment):
        if not isinstance(s.text, str):
            raise self.error("a comment's text is not a string")

    def stmt_Block(self, s: n.Block):
        self.nested(s)

    def stmt_Declare(self, s: n.Declare):
        if s.init is not None:
            t = self.expr(s.init)
            if t != s.var.type:
                raise self.error(f"{s.var.name} is {s.var.type}, its initial value {t}", s)
            if any(isinstance(x, n.Var) and x.name == s.var.name for x in n.walk(s.init)):
                raise self.error(f"the initial value of {s.var.name} reads {s.var.name} (in C, the "
                                 "variable being declared)", s)
        self.declare(s.var, s)

    def stmt_Assign(self, s: n.Assign):
        self.lookup(s.var, s)
        t = self.expr(s.value)
        if t != s.var.type:
            raise self.error(f"{s.var.name} is {s.var.type}, the value {t}", s)

    def element(self, array, index, node) -> ScalarType:
        """The element type of ``array[index]`` (both checked)."""
        t = self.expr(array)
        if not isinstance(t, PointerType):
            raise self.error(f"indexing a non-pointer of type {t}", node)
        if not _is_int(self.expr(index)):
            raise self.error(f"index of type {index.type}", node)
        return t.elem

    def stmt_Store(self, s: n.Store):
        elem = self.element(s.array, s.index, s)
        t = self.expr(s.value)
        if t != elem:
            raise self.error(f"storing {t} into an array of {elem}", s)

    def stmt_AtomicAdd(self, s: n.AtomicAdd):
        elem = self.element(s.array, s.index, s)
        t = self.expr(s.value)
        if t != elem:
            raise self.error(f"adding {t} into an array of {elem}", s)

    def stmt_For(self, s: n.For):
        var = s.var
        if not _is_int(var.type):
            raise self.error(f"loop variable {var.name} is {var.type}, not an integer", s)
        for bound in (s.start, s.end):
            t = self.expr(bound)
            if t != var.type:
                raise self.error(f"loop {var.name} ({var.type}) has a bound of type {t}", bound)
        if s.parallel is not None and s.parallel not in n.PARALLEL_MAPPINGS:
            raise self.error(f"loop {var.name} has the unknown parallel mapping {s.parallel!r} "
                             f"(known: {', '.join(n.PARALLEL_MAPPINGS)})")
        for hint in ("vectorize", "unroll"):
            value = getattr(s, hint)
            if not isinstance(value, int) or value < 0:
                raise self.error(f"loop {var.name} has {hint}={value!r} (a count, 0 = the backend decides)")
        self.nested(s.body, declare=[(var, s)])

    def condition(self, cond, what):
        t = self.expr(cond)
        if t != BOOL:
            raise self.error(f"{what} condition of type {t}", cond)

    def stmt_While(self, s: n.While):
        self.condition(s.cond, "while")
        self.nested(s.body)

    def stmt_If(self, s: n.If):
        self.condition(s.cond, "if")
        self.nested(s.then)
        if s.otherwise is not None:
            self.nested(s.otherwise)

    def count(self, e, node):
        if not _is_int(self.expr(e)):
            raise self.error(f"element count of type {e.type}", node)

    def pointer_var(self, var, what, node):
        if not isinstance(var.type, PointerType):
            raise self.error(f"{what} {var.name} of non-pointer type {var.type}", node)

    def stmt_Allocate(self, s: n.Allocate):
        self.pointer_var(s.var, "allocating into", s)
        self.count(s.count, s)
        for v in s.free:
            self.pointer_var(v, "freeing", s)
            self.lookup(v, s)
        self.declare(s.var, s)

    def stmt_Reallocate(self, s: n.Reallocate):
        self.pointer_var(s.var, "reallocating", s)
        self.lookup(s.var, s)
        self.count(s.count, s)
        for v in s.free:
            self.pointer_var(v, "freeing", s)
            self.lookup(v, s)

    def stmt_Free(self, s: n.Free):
        self.pointer_var(s.var, "freeing", s)
        self.lookup(s.var, s)

    def stmt_Sort(self, s: n.Sort):
        t = self.expr(s.array)
        if not isinstance(t, PointerType) or not sortable(t.elem):
            raise self.error(f"sorting an array of {getattr(t, 'elem', t)}: Sort takes integers, f32 "
                             "or f64", s)
        for e in (s.start, s.count):
            if not _is_int(self.expr(e)):
                raise self.error(f"Sort's start and count must be integers, not {e.type}", s)

    def stmt_Prefetch(self, s: n.Prefetch):
        t = self.expr(s.array)
        if not isinstance(t, PointerType):
            raise self.error(f"prefetching from a non-pointer of type {t}", s)
        if not _is_int(self.expr(s.index)):
            raise self.error(f"index of type {s.index.type}", s)

    def stmt_Gemm(self, s: n.Gemm):
        types = [self.expr(x) for x in (s.c, s.a, s.b)]
        if types[0] not in (PointerType(F32), PointerType(F64)) or len(set(types)) != 1:
            raise self.error("Gemm needs three f32 or three f64 pointers", s)
        for name in ("m", "n", "k", "lda", "ldb", "ldc"):
            if not _is_int(self.expr(getattr(s, name))):
                raise self.error(f"Gemm's {name} must be an integer", s)

    def stmt_Return(self, s: n.Return):
        if not isinstance(s.status, int) or isinstance(s.status, bool):
            raise self.error(f"status {s.status!r} is not an integer", s)

    def stmt_PollInterrupt(self, s: n.PollInterrupt):
        for v in s.free:
            self.pointer_var(v, "freeing", s)
            self.lookup(v, s)

    # ------------------------------------------------------- expressions
    def expr(self, e):
        """The type of expression ``e``, after checking it."""
        method = getattr(self, "expr_" + type(e).__name__, None)
        if method is None:
            raise self.error(f"not an expression: {type(e).__name__}")
        return method(e)

    def expr_Var(self, e: n.Var):
        self.lookup(e, e)
        return e.type

    def expr_Const(self, e: n.Const):
        if not isinstance(e.type, ScalarType):
            raise self.error(f"a constant of type {e.type}", e)
        return e.type

    def expr_Load(self, e: n.Load):
        return self.element(e.array, e.index, e)

    def expr_Binary(self, e: n.Binary):
        op = e.op
        a, b = self.expr(e.lhs), self.expr(e.rhs)
        if a != b:
            raise self.error(f"operands of different types ({a}, {b})", e)
        if op in ("&&", "||") and a != BOOL:
            raise self.error(f"{op} on {a}", e)
        if isinstance(a, PointerType) or a == BF16:
            raise self.error(f"arithmetic on {a}" + (" (bf16 is storage-only: cast to f32)"
                                                      if a == BF16 else ""), e)
        ops = _BOOL_OPS if a == BOOL else _FLOAT_OPS if a.is_float else _INT_OPS
        if op not in ops:
            raise self.error(f"operator {op!r} on {a}", e)
        return e.type

    def expr_Unary(self, e: n.Unary):
        t = self.expr(e.operand)
        if isinstance(t, PointerType) or t == BF16:
            raise self.error(f"unary {e.op} on {t}", e)
        if not ((e.op == "-" and (t.is_float or t.is_int)) or (e.op == "!" and (t == BOOL or t.is_int))):
            raise self.error(f"unary {e.op!r} on {t}", e)
        return t

    def expr_Call(self, e: n.Call):
        t = e.type
        args = [self.expr(a) for a in e.args]
        if e.func in n.INT_INTRINSICS:
            arity = n.INT_ARITY.get(e.func, 1)
            if t != I64 or args != [I64] * arity:
                raise self.error(f"intrinsic {e.func} takes {arity} i64 and returns one", e)
        elif e.func not in n.INTRINSICS:
            raise self.error(f"unknown intrinsic {e.func!r}", e)
        elif t not in (F32, F64):
            raise self.error(f"intrinsic {e.func} on {t} (only f32 and f64)", e)
        elif args != [t] * (2 if e.func in n.BINARY_INTRINSICS else 1):
            count = "two" if e.func in n.BINARY_INTRINSICS else "one"
            raise self.error(f"intrinsic {e.func} takes {count} {t} argument(s)", e)
        return t

    def expr_Select(self, e: n.Select):
        if self.expr(e.cond) != BOOL:
            raise self.error(f"select condition of type {e.cond.type}", e)
        a, b = self.expr(e.if_true), self.expr(e.if_false)
        if a != b:
            raise self.error(f"operands of different types ({a}, {b})", e)
        return a

    def expr_Cast(self, e: n.Cast):
        src = self.expr(e.value)
        if isinstance(src, PointerType) or not isinstance(e.type, ScalarType):
            raise self.error(f"cast from {src} to {e.type}", e)
        return e.type
