"""The level protocol: what every level kind tells the runtime and the lowerer.

A tensor's storage is a stack of levels, one per stored dimension. Level ``l``
sits under a parent that has some number of *positions* (1 for the first
level); every level maps each parent position to a set of (coordinate,
position) pairs of its own. Values live in one array indexed by the positions
of the last level.

Concrete kinds live in one module each (``dense``, ``compressed``,
``singleton``, ``packed``). The runtime asks a level for its array names and
how many positions it has; the lowerer asks it what it *can do*
(``iterable``, ``locatable``, ``appendable`` ...) and for the IR that does it,
never what it *is*.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar


@dataclass(frozen=True)
class Level:
    """Base class of level kinds. Subclasses are frozen dataclasses."""

    letter: ClassVar[str] = "?"
    # Names of the integer arrays this level stores, in the kernel's parameter order.
    arrays: ClassVar[tuple] = ()

    # ----- facts the lowerer and runtime consult
    ordered = True  # plain class attributes here; kinds that vary them make them fields
    unique = True

    # A level with a fixed number of slots per parent (packed-block): it holds
    # only what fits, so outputs of this kind store nonzeros only, and a
    # transposed copy of it is stored compressed instead.
    fixed_slots = False

    @property
    def is_dense(self) -> bool:
        return False

    @property
    def locatable(self) -> bool:
        """Can find the position of a given coordinate in O(1)."""
        return False

    @property
    def full(self) -> bool:
        """Stores every coordinate of the dimension under every parent position."""
        return False

    def num_positions(self, parent_positions: int, dim_size: int, arrays: dict) -> int:
        """How many positions this level has, given its parent's and its arrays."""
        raise NotImplementedError

    def spec(self) -> str:
        """This level in format-string syntax."""
        raise NotImplementedError

    def __str__(self) -> str:
        return self.spec()


# ------------------------------------------------------------------ lowering
# What the lowerer hands a level when it asks for code. Kept here, next to the
# protocol, so a level module depends on the kernel IR and nothing else.

@dataclass(frozen=True)
class PosInfo:
    """A position in a level: ``pos``; for a non-unique level the run of equal
    coordinates ``[pos, seg_end)`` that its singleton child iterates."""
    pos: object
    seg_end: object = None


@dataclass
class LevelAccess:
    """One access's view of one of its tensor's levels, with IR variables."""
    name: str        # base name for generated variables, e.g. "A2"
    kind: Level
    arrays: dict     # array name -> ir.Var of the parameter
    dim: object      # ir expression: size of the dimension this level stores
    parent: PosInfo  # position in the parent level (0 for the first level)
    parent_unique: bool = True
    # whether the coordinates this level yields address memory in the loop's body (a
    # dense level of another operand, a dense output, a workspace): then they are kept
    # within the dimension (ir.build.clamp_coordinate); coordinates only compared and
    # stored need no clamp
    addressing: bool = True


class LevelIterator:
    """Walks the coordinates one parent position owns, in increasing order when
    the level is ordered. The lowerer drives it in two ways: ``loop`` when it is
    the only iterator of a loop, and init/valid/load/advance when it merges."""

    def __init__(self, la: LevelAccess, fresh):
        self.la = la
        self.fresh = fresh

    def init(self) -> list:
        raise NotImplementedError

    def valid(self):
        raise NotImplementedError

    def load(self, coord) -> list:
        """Statements that assign the current coordinate to ``coord`` (declared)."""
        raise NotImplementedError

    def position(self) -> PosInfo:
        raise NotImplementedError

    def advance(self) -> list:
        raise NotImplementedError

    def segment_length(self):
        """An expression bounding the coordinates this iterator yields under its
        parent (valid before ``init``), or None when the level cannot say cheaply."""
        return None

    def remaining(self):
        """After ``init``: an expression bounding the coordinates still to come, or None."""
        return None

    def loop(self, coord, body) -> list:
        """A loop over every coordinate; ``body(PosInfo)`` gives its statements.
        The default drives the merge protocol with a while loop."""
        from ..ir import nodes as n
        return [*self.init(),
                n.While(self.valid(), n.block(n.Declare(coord), *self.load(coord),
                                              *body(self.position()), *self.advance()))]
