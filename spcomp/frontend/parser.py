"""Text -> :class:`~spcomp.frontend.ast.Statement`.

The grammar is ``grammar/spcomp.lark`` (installed as ``spcomp.grammar``), read
by a Lark LALR parser. :class:`_Build` turns Lark's tree into AST nodes, one
short method per rule. Every Lark error becomes a :class:`~spcomp.errors.ParseError`
that says, in plain words, what was found and what was expected, and shows
the line with a caret under the culprit.
"""
from __future__ import annotations

import functools

from lark import Lark, Transformer_NonRecursive, v_args
from lark.exceptions import UnexpectedCharacters, UnexpectedInput, UnexpectedToken

from ..errors import ParseError
from ..grammar import grammar_text
from . import ast


@functools.lru_cache(maxsize=None)
def _lark() -> Lark:
    # cache=True keeps the built LALR tables in a temp file (keyed by the grammar's
    # hash): building them costs ~0.1 s of every process's first compile
    try:
        return Lark(grammar_text(), parser="lalr", start="statement",
                    propagate_positions=True, maybe_placeholders=True, cache=True)
    except OSError:
        return Lark(grammar_text(), parser="lalr", start="statement",
                    propagate_positions=True, maybe_placeholders=True)


def parse(text: str) -> ast.Statement:
    """Parse one statement (``lhs = rhs`` or ``lhs += rhs``) into its syntax tree."""
    if not isinstance(text, str):
        raise ParseError(f"an expression is a string, not {type(text).__name__}")
    if not text.strip():
        raise ParseError("empty expression; expected a statement such as 'y[i] = A[i,j] * x[j]'",
                         1, 1, text or " ")
    try:
        tree = _lark().parse(text)
    except UnexpectedInput as e:
        raise _parse_error(e, text) from None
    return _Build(text).transform(tree)


# --------------------------------------------------------------- tree -> AST

def _at(meta_or_token) -> dict:
    return {"line": meta_or_token.line, "column": meta_or_token.column}


def _binop(op: str):
    """The transformer method for one binary operator rule."""
    return lambda self, meta, lhs, rhs: ast.BinOp(op, lhs, rhs, **_at(meta))


@v_args(inline=True, meta=True)
class _Build(Transformer_NonRecursive):
    """One method per grammar rule, each building one AST node. Non-recursive: the
    tree of ``a + b + c + ...`` is as deep as the sum is long (limits.py)."""

    def __init__(self, text: str):
        super().__init__()
        self.text = text

    def statement(self, meta, lhs, assign, rhs):
        return ast.Statement(lhs, rhs, str(assign) == "+=", self.text, **_at(meta))

    def access(self, meta, name, indices):
        return ast.Access(str(name), indices, **_at(meta))

    def scalar(self, meta, name):
        return ast.Access(str(name), (), **_at(meta))

    def indices(self, meta, *names):
        return tuple(ast.Index(str(n), **_at(n)) for n in names)

    def number(self, meta, token):
        return ast.Number(str(token), **_at(meta))

    def call(self, meta, name, args):
        return ast.Call(str(name), args or (), **_at(meta))

    def args(self, meta, *exprs):
        return tuple(exprs)

    def neg(self, meta, operand):
        return ast.Neg(operand, **_at(meta))

    add, sub, mul, div = (_binop(op) for op in "+-*/")


# ------------------------------------------------------------ Lark errors

_WORDS = {"$END": ["the end of the statement"], "ASSIGN": ["'='", "'+='"]}
_OPERAND = {"NAME", "NUMBER", "LPAR", "MINUS"}
_OPERATOR = {"PLUS", "MINUS", "STAR", "SLASH"}
# the order in which the rest of an expected set is listed
_ORDER = ["LSQB", "LPAR", "COMMA", "RSQB", "RPAR", "ASSIGN", "$END"]


def _parse_error(e: UnexpectedInput, text: str) -> ParseError:
    if isinstance(e, UnexpectedToken) and e.token.type == "$END":
        offset, found = len(text.rstrip()), "end of input"
    elif isinstance(e, UnexpectedToken):
        offset, found = e.token.start_pos, _describe_token(e.token)
    elif isinstance(e, UnexpectedCharacters):
        offset, found = e.pos_in_stream, f"character {text[e.pos_in_stream]!r}"
    else:  # UnexpectedEOF: not raised by LALR, handled all the same
        offset, found = len(text.rstrip()), "end of input"
    # what the parser takes after the text before the culprit (Lark's own
    # `expected` can be off after LALR default reductions)
    expected = _accepts_after(text[:offset])
    line = text.count("\n", 0, offset) + 1
    column = offset - (text.rfind("\n", 0, offset) + 1) + 1
    message = f"unexpected {found}"
    if expected:
        message += f"; expected {_describe_expected(expected, at_start=not text[:offset].strip())}"
    if "=" not in text[:offset]:
        message += " (the left side names the output: a tensor access such as 'y[i]' or a bare name such as 's')"
    return ParseError(message, line, column, text)


def _accepts_after(prefix: str) -> set:
    """The terminals the parser would take after ``prefix`` (for a bad character)."""
    try:
        ip = _lark().parse_interactive(prefix)
        ip.exhaust_lexer()
        return set(ip.accepts())
    except UnexpectedInput:
        return set()


def _describe_token(token) -> str:
    if token.type == "NAME":
        return f"name {str(token)!r}"
    if token.type == "NUMBER":
        return f"number {str(token)!r}"
    return repr(str(token))


def _describe_expected(names, at_start: bool) -> str:
    names = set(names)
    parts = []
    if {"NAME", "NUMBER"} <= names:
        parts.append("an operand (a tensor, a scalar, a number, a function call or '(')")
        names -= _OPERAND
    if _OPERATOR <= names:
        parts.append("an operator (+ - * /)")
        names -= _OPERATOR
    if "NAME" in names:
        parts.append("the output tensor's name" if at_start else "an index name")
        names.discard("NAME")
    for name in sorted(names, key=lambda n: (_ORDER.index(n) if n in _ORDER else len(_ORDER), n)):
        parts += _WORDS.get(name) or [repr(_literal(name))]
    return parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " or " + parts[-1]


def _literal(terminal: str) -> str:
    """The text of an anonymous terminal such as RPAR -> ')'."""
    try:
        return _lark().get_terminal(terminal).pattern.value
    except KeyError:
        return terminal
