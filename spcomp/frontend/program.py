"""Several statements as one program: split, check, name the inputs, outputs and temporaries.

A program is statements separated by ``;`` or by a newline that starts a new
statement (a line beginning ``name =``, ``name[..] =`` or ``... +=``; any other
line break continues the statement, as it always did). Later statements read
what earlier ones wrote. Each name is written by one statement; the names a
program returns are its ``outputs`` (by default every written name no later
statement reads) and the others are temporaries. ``+=`` writes a name the caller
passes in, so it must be an output and written nowhere else.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

from .. import notation as nt
from ..errors import NotationError
from . import ast
from .check import check, explicit_reductions
from .parser import parse

# a line that starts a statement: an output name, its optional brackets, then = or +=
_STARTS = re.compile(r"^\s*[A-Za-z_][A-Za-z0-9_]*\s*(\[[^\]]*\])?\s*\+?=(?!=)")


def split_statements(text: str) -> list:
    """The statements of ``text`` as separate texts (blank pieces dropped)."""
    pieces = []
    for part in text.split(";"):
        current: list = []
        for line in part.split("\n"):
            if current and _STARTS.match(line):
                pieces.append("\n".join(current))
                current = []
            current.append(line)
        pieces.append("\n".join(current))
    return [p.strip() for p in pieces if p.strip()]


def is_program(text: str) -> bool:
    """Whether ``text`` holds more than one statement."""
    return isinstance(text, str) and len(split_statements(text)) > 1


@dataclass(frozen=True)
class Program:
    """Checked statements in order, with the names the caller passes and gets back."""
    statements: tuple   # of notation.Assignment
    texts: tuple        # each statement's text
    inputs: tuple       # names read and never written: operands the caller passes
    outputs: tuple      # names returned, in order of writing
    temporaries: tuple  # names written and not returned
    chosen: tuple = ()  # (temporary, sparse operands) per temporary whose format the compiler chose

    def __repr__(self) -> str:
        return "\n".join(repr(s) for s in self.statements)

    @property
    def tensors(self) -> dict:
        out: dict = {}
        for s in self.statements:
            for name, t in s.tensors.items():
                out.setdefault(name, t)
        return out


def check_program(texts: list, formats: dict | None = None, dtypes: dict | None = None,
                  default_dtype="float64", outputs=None) -> Program:
    """Parse and check each statement, then the program's names (see the module docstring)."""
    formats, dtypes = dict(formats or {}), dict(dtypes or {})
    parsed = [explicit_reductions(parse(t)) for t in texts]
    written: dict = {}   # name -> statement number
    orders: dict = {}    # name -> (order, statement text)
    for k, stmt in enumerate(parsed):
        name = stmt.lhs.name
        if name in written:
            raise NotationError(f"statement {k + 1} ({texts[k]!r}) writes {name!r}, which statement "
                                f"{written[name] + 1} already wrote; each name is written once in a program")
        for acc in _accesses(stmt):
            have = orders.setdefault(acc.name, (acc.order, texts[k]))
            if have[0] != acc.order:
                raise NotationError(f"tensor {acc.name!r} has {have[0]} indices in {have[1]!r} and "
                                    f"{acc.order} in {texts[k]!r}; a tensor has one order")
            if acc is not stmt.lhs and acc.name in written:
                continue
            if acc is not stmt.lhs and any(p.lhs.name == acc.name for p in parsed[k + 1:]):
                raise NotationError(f"statement {k + 1} ({texts[k]!r}) reads {acc.name!r} before the "
                                    "statement that writes it")
        if stmt.accumulate and any(_reads(p, name) for p in parsed[:k]):
            raise NotationError(f"statement {k + 1} accumulates into {name!r}, which an earlier "
                                "statement reads; write the sum to a new name")
        written[name] = k
    names = set(orders)
    for what, given in (("formats", formats), ("dtypes", dtypes)):
        for name in given:
            if name not in names:
                raise NotationError(f"{what} names {name!r}, which is not a tensor of the program; "
                                    f"its tensors are {', '.join(orders)}")
    read_later = {n for k, stmt in enumerate(parsed) for n in written
                  if written[n] < k and _reads(stmt, n)}
    if outputs is None:
        outs = tuple(n for n in written if n not in read_later)
    else:
        outs = (outputs,) if isinstance(outputs, str) else tuple(outputs)
        for n in outs:
            if n not in written:
                raise NotationError(f"outputs names {n!r}, which no statement writes; the program writes "
                                    f"{', '.join(written)}")
        outs = tuple(n for n in written if n in outs)
    for k, stmt in enumerate(parsed):
        if stmt.accumulate and stmt.lhs.name not in outs:
            raise NotationError(f"statement {k + 1} ({texts[k]!r}) accumulates into {stmt.lhs.name!r}, "
                                "which is a temporary; '+=' adds to a tensor the caller passes and gets back")
    statements = []
    for stmt, text in zip(parsed, texts):
        mine = {a.name for a in _accesses(stmt)}
        statements.append(check(stmt, formats={n: f for n, f in formats.items() if n in mine},
                                dtypes={n: d for n, d in dtypes.items() if n in mine},
                                default_dtype=default_dtype))
    inputs = tuple(dict.fromkeys(a.tensor.name for s in statements for a in nt.accesses(s.rhs)
                                 if a.tensor.name not in written))
    inputs += tuple(s.lhs.tensor.name for s in statements if s.accumulate)
    temps = tuple(n for n in written if n not in outs)
    return Program(tuple(statements), tuple(texts), inputs, outs, temps)


def _accesses(stmt: ast.Statement) -> list:
    out, stack = [stmt.lhs], [stmt.rhs]
    while stack:
        node = stack.pop()
        if isinstance(node, ast.Access):
            out.append(node)
        stack.extend(ast.children(node))
    return out


def _reads(stmt: ast.Statement, name: str) -> bool:
    return any(a.name == name for a in _accesses(stmt)[1:])
