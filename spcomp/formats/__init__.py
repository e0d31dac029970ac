"""Formats and the level kinds they are built from (DESIGN §3)."""
from .bitmap import Bitmap
from .compressed import Compressed
from .dense import Dense
from .format import Format
from .level import Level
from .registry import LEVEL_KINDS
from .packed import PackedBlock
from .singleton import Singleton
