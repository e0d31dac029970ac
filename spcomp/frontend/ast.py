"""The syntax tree of one statement, as the parser builds it (DESIGN §1).

Every node is a frozen dataclass that keeps where it starts in the text
(``line`` and ``column``, 1-based). Positions are metadata: they take no part
in ``==`` or ``hash``, so two parses of the same expression written with
different spacing compare equal.

``repr(node)`` prints the node back as source text with the fewest parentheses
that keep its shape (``a - (b - c)`` keeps them, ``(a * b) * c`` loses them),
so ``parse(repr(stmt)) == stmt`` for every statement.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Union

# Binding strength, loosest first: + -, * /, unary minus, atoms.
_PREC = {"+": 1, "-": 1, "*": 2, "/": 2}
_UNARY = 3
_ATOM = 4


@dataclass(frozen=True)
class Node:
    line: int = field(default=0, compare=False, repr=False, kw_only=True)
    column: int = field(default=0, compare=False, repr=False, kw_only=True)

    @property
    def where(self) -> str:
        """The node's position, for messages: 'line 1, column 8'."""
        return f"line {self.line}, column {self.column}"

    def __repr__(self) -> str:
        return to_text(self)


@dataclass(frozen=True, repr=False)
class Index(Node):
    """An index variable as written in an access: the ``j`` of ``A[i,j]``."""
    name: str


@dataclass(frozen=True, repr=False)
class Number(Node):
    """A numeric literal; ``text`` is kept as written (``.5``, ``1e-3``)."""
    text: str

    @property
    def value(self) -> float:
        return float(self.text)


@dataclass(frozen=True, repr=False)
class Access(Node):
    """``A[i,j]``; a bare name ``s`` is an access with no indices (an order-0 tensor)."""
    name: str
    indices: tuple = ()  # of Index

    @property
    def order(self) -> int:
        return len(self.indices)


@dataclass(frozen=True, repr=False)
class Neg(Node):
    operand: "Expr"


@dataclass(frozen=True, repr=False)
class BinOp(Node):
    """``lhs op rhs`` with ``op`` one of ``+ - * /``."""
    op: str
    lhs: "Expr"
    rhs: "Expr"


@dataclass(frozen=True, repr=False)
class Call(Node):
    """``func(args...)``; whether ``func`` exists is the checker's business."""
    func: str
    args: tuple = ()  # of Expr


@dataclass(frozen=True, repr=False)
class Reduce(Node):
    """An explicit reduction ``op(index, body)``: ``sum(i, abs(x[i]))``. The parser
    reads it as a :class:`Call`; the checker makes it a Reduce when the first
    argument is a bare name the statement uses as an index."""
    op: str  # 'sum' 'max' 'min'
    index: Index
    body: "Expr"


@dataclass(frozen=True, repr=False)
class Statement(Node):
    """``lhs = rhs`` or, with ``accumulate``, ``lhs += rhs``; ``text`` is the source."""
    lhs: Access
    rhs: "Expr"
    accumulate: bool = False
    text: str = field(default="", compare=False)


Expr = Union[Access, Number, Neg, BinOp, Call, Reduce]


def children(node) -> tuple:
    """The sub-expressions of ``node``, left to right."""
    if isinstance(node, Neg):
        return (node.operand,)
    if isinstance(node, BinOp):
        return (node.lhs, node.rhs)
    if isinstance(node, Call):
        return tuple(node.args)
    if isinstance(node, Reduce):
        return (node.body,)
    return ()


def to_text(node) -> str:
    """``node`` as source text that parses back to an equal node."""
    return _text(node, 0)


def _prec(node) -> int:
    if isinstance(node, BinOp):
        return _PREC[node.op]
    if isinstance(node, Neg):
        return _UNARY
    return _ATOM


def _text(node, need: int) -> str:
    """``node`` printed where its context needs binding strength ``need``."""
    if isinstance(node, Statement):
        return f"{_text(node.lhs, 0)} {'+=' if node.accumulate else '='} {_text(node.rhs, 0)}"
    if isinstance(node, Index):
        return node.name
    if isinstance(node, Number):
        return node.text
    if isinstance(node, Access):
        return node.name + (f"[{','.join(i.name for i in node.indices)}]" if node.indices else "")
    if isinstance(node, Call):
        return f"{node.func}({', '.join(_text(a, 0) for a in node.args)})"
    if isinstance(node, Reduce):
        return f"{node.op}({node.index.name}, {_text(node.body, 0)})"
    if isinstance(node, Neg):
        out = "-" + _text(node.operand, _UNARY)
    elif isinstance(node, BinOp):
        p = _PREC[node.op]
        # left associative: the right operand must bind strictly tighter
        out = f"{_text(node.lhs, p)} {node.op} {_text(node.rhs, p + 1)}"
    else:
        raise TypeError(f"not a spcomp syntax node: {node!r}")
    return f"({out})" if _prec(node) < need else out
