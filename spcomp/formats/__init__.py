"""Formats and the level kinds they are built from (DESIGN §3)."""
from .compressed import Compressed
from .dense import Dense
from .format import Format
from .level import Level
from .packed import PackedBlock
from .registry import LEVEL_KINDS
from .singleton import Singleton
