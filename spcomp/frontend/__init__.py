"""The frontend: text -> syntax tree -> checked index notation (DESIGN §1, §4).

>>> from spcomp.frontend import to_notation
>>> to_notation("y[i] = A[i,j] * x[j]", formats={"A": "csr"})
y[i] = sum(j, A[i,j] * x[j])

``parse`` reads one statement into a :mod:`~spcomp.frontend.ast` tree (syntax
errors raise :class:`~spcomp.errors.ParseError` with a caret under the
culprit); ``check`` turns it into a :class:`spcomp.notation.Assignment` with
formats, dtypes and explicit sums; ``unparse`` prints an Assignment back as text.
"""
from __future__ import annotations

from . import ast
from .check import DTYPES, check, dtype_name, unparse
from .parser import parse


def to_notation(text: str, formats: dict | None = None, dtypes: dict | None = None,
                default_dtype="float64"):
    """``check(parse(text), ...)``: one line of index notation as an Assignment."""
    return check(parse(text), formats=formats, dtypes=dtypes, default_dtype=default_dtype)


__all__ = ["DTYPES", "ast", "check", "dtype_name", "parse", "to_notation", "unparse"]
