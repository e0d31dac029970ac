"""The level kinds by letter: the format parser builds levels through this table.

A new kind is one module (a :class:`~.level.Level` subclass with its storage and
lowering hooks) and one line here.
"""
from __future__ import annotations

from .bitmap import Bitmap
from .compressed import Compressed
from .dense import Dense
from .packed import PackedBlock
from .singleton import Singleton

LEVEL_KINDS = {kind.letter: kind for kind in (Dense, Compressed, Singleton, PackedBlock,
                                                Bitmap)}
