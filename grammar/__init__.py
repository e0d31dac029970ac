"""The grammar of spcomp's index notation, kept as data in ``spcomp.lark``.

>>> from spcomp.grammar import grammar_text
>>> "statement" in grammar_text()
True
"""
from __future__ import annotations

from importlib import resources
from pathlib import Path

#: Where the grammar file lies (for tools that want a path, e.g. ``lark`` on the command line).
GRAMMAR_PATH = Path(__file__).with_name("spcomp.lark")


def grammar_text() -> str:
    """The text of ``spcomp.lark``."""
    return resources.files(__name__).joinpath("spcomp.lark").read_text(encoding="utf-8")


__all__ = ["GRAMMAR_PATH", "grammar_text"]
