"""Index notation: the typed, checked form of an expression (DESIGN §4).

The frontend turns parsed text into one :class:`Assignment`. Implicit sums
are explicit :class:`Sum` nodes, placed by the TACO rule: a sum wraps the
smallest sub-expression that holds every use of its index. Tensors carry
their format and value dtype; dimension sizes stay symbolic until a kernel
is called.
"""
from __future__ import annotations

import weakref
from dataclasses import dataclass
from typing import Union

@dataclass(frozen=True)
class IndexVar:
    name: str

    def __repr__(self) -> str:
        return self.name


@dataclass(frozen=True)
class TensorVar:
    name: str
    order: int
    format: "object"  # spcomp.formats.Format
    dtype: str = "float64"  # numpy dtype name of stored values ('bfloat16' allowed)

    def __repr__(self) -> str:
        return self.name


@dataclass(frozen=True)
class Access:
    tensor: TensorVar
    indices: tuple  # of IndexVar

    def __repr__(self) -> str:
        if not self.indices:
            return self.tensor.name
        return f"{self.tensor.name}[{','.join(i.name for i in self.indices)}]"


@dataclass(frozen=True)
class Literal:
    value: float

    def __repr__(self) -> str:
        v = float(self.value)
        return repr(int(v)) if v.is_integer() and abs(v) < 1e16 else repr(v)


@dataclass(frozen=True)
class Neg:
    operand: "Expr"

    def __repr__(self) -> str:
        o = self.operand
        return f"-({o!r})" if isinstance(o, (Mul, Div)) else f"-{o!r}"


@dataclass(frozen=True)
class Add:
    lhs: "Expr"
    rhs: "Expr"

    def __repr__(self) -> str:
        return f"({self.lhs!r} + {self.rhs!r})"


@dataclass(frozen=True)
class Sub:
    lhs: "Expr"
    rhs: "Expr"

    def __repr__(self) -> str:
        return f"({self.lhs!r} - {self.rhs!r})"


@dataclass(frozen=True)
class Mul:
    lhs: "Expr"
    rhs: "Expr"

    def __repr__(self) -> str:
        r = f"({self.rhs!r})" if isinstance(self.rhs, (Mul, Div)) else repr(self.rhs)
        return f"{self.lhs!r} * {r}"


@dataclass(frozen=True)
class Div:
    lhs: "Expr"
    rhs: "Expr"

    def __repr__(self) -> str:
        r = f"({self.rhs!r})" if isinstance(self.rhs, (Mul, Div)) else repr(self.rhs)
        return f"{self.lhs!r} / {r}"


@dataclass(frozen=True)
class Call:
    func: str
    args: tuple

    def __repr__(self) -> str:
        return f"{self.func}({', '.join(repr(a) for a in self.args)})"


@dataclass(frozen=True)
class Sum:
    index: IndexVar
    body: "Expr"

    def __repr__(self) -> str:
        return f"sum({self.index.name}, {self.body!r})"


Expr = Union[Access, Literal, Neg, Add, Sub, Mul, Div, Call, Sum]


@dataclass(frozen=True)
class Assignment:
    lhs: Access
    rhs: Expr
    accumulate: bool = False  # '+=' instead of '='

    def __repr__(self) -> str:
        return f"{self.lhs!r} {'+=' if self.accumulate else '='} {self.rhs!r}"

    @property
    def tensors(self) -> dict:
        """Every tensor by name, output first (do not change it: it is computed once
        per Assignment and shared, since the runtime asks for it once per operand,
        which made a 1000-operand sum quadratic)."""
        hit = _TENSORS.get(id(self))
        if hit is not None and hit[0]() is self:
            return hit[1]
        out = {self.lhs.tensor.name: self.lhs.tensor}
        for a in accesses(self.rhs):
            out.setdefault(a.tensor.name, a.tensor)
        key = id(self)
        _TENSORS[key] = (weakref.ref(self, lambda _, key=key: _TENSORS.pop(key, None)), out)
        return out


# id(Assignment) -> (weak reference to it, its tensors). Kept outside the instance:
# a frozen dataclass's __dict__ holds its fields and nothing else (runtime/record.py
# refuses more), and a dict keyed by the Assignment itself would hash the whole tree.
_TENSORS: dict = {}


def children(e) -> tuple:
    if isinstance(e, (Access, Literal)):
        return ()
    if isinstance(e, (Neg,)):
        return (e.operand,)
    if isinstance(e, (Add, Sub, Mul, Div)):
        return (e.lhs, e.rhs)
    if isinstance(e, Call):
        return tuple(e.args)
    if isinstance(e, Sum):
        return (e.body,)
    raise TypeError(f"not an index-notation expression: {e!r}")


def with_children(e, kids):
    """``e`` with its direct children (as :func:`children` lists them) replaced by ``kids``."""
    if isinstance(e, (Access, Literal)):
        return e
    if isinstance(e, Neg):
        return Neg(kids[0])
    if isinstance(e, (Add, Sub, Mul, Div)):
        return type(e)(kids[0], kids[1])
    if isinstance(e, Call):
        return Call(e.func, tuple(kids))
    if isinstance(e, Sum):
        return Sum(e.index, kids[0])
    raise TypeError(f"not an index-notation expression: {e!r}")


def accesses(e) -> list:
    """Every Access in ``e``, left to right. Iterative, like :func:`free_indices`:
    the frontend calls both on trees as deep as the expression is long, before it
    balances them (see :mod:`.chains`)."""
    out, stack = [], [e]
    while stack:
        node = stack.pop()
        if isinstance(node, Access):
            out.append(node)
        else:
            stack.extend(reversed(children(node)))
    return out


def free_indices(e) -> set:
    """Indices used in ``e`` and not summed inside it."""
    out = set()
    stack = [(e, frozenset())]
    while stack:
        node, bound = stack.pop()
        if isinstance(node, Access):
            out.update(i for i in node.indices if i not in bound)
        elif isinstance(node, Sum):
            stack.append((node.body, bound | {node.index}))
        else:
            stack.extend((c, bound) for c in children(node))
    return out
