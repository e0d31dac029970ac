"""The level protocol: what every level kind tells the runtime and the lowerer.

A tensor's storage is a stack of levels, one per stored dimension. Level ``l``
sits under a parent that has some number of *positions* (1 for the first
level); every level maps each parent position to a set of (coordinate,
position) pairs of its own. Values live in one array indexed by the positions
of the last level.

Concrete kinds live in one module each (``dense``, ``compressed``,
``singleton``, ``packed``, ``bitmap``) and ``registry.py`` maps a letter to its
kind. The runtime asks a level for its arrays (:class:`StorageArray`: name,
role, element type for an index width) and how many positions it has; the
lowerer asks it what it *can do* (``locatable``, ``full``, its iterator, what
an output of it is assembled as) and for the IR that does it, never what it *is*.

Storage hooks: ``pack`` (arrays from sorted coordinates), ``unpack`` (stored
positions and coordinates under given parent positions) and ``validate``. Every
kind implements them, and the runtime's packing (``runtime/convert.py``),
unpacking, validation (``runtime/validate.py``) and kernel arrays are one walk
over the levels that calls them.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar


@dataclass(frozen=True)
class StorageArray:
    """One array a level stores: its name (the key in the level's dict and in
    kernel parameter names), its role, and its element type rule in words."""
    name: str
    role: str    # 'segments' (pos) 'coordinates' (crd) 'counts' 'membership' ...
    dtype: str   # e.g. 'index' (int32 or int64 with the kernel's index width), 'int8'


@dataclass
class PackContext:
    """What a level's ``pack`` gets: the entries (unique, sorted by storage
    coordinates) as their coordinate at this level and their parent position."""
    N: int               # size of the dimension this level stores
    coords: object       # int64 array: each entry's coordinate at this level
    ppos: object         # int64 array: each entry's parent position
    P: int               # number of parent positions
    level: int = 0       # the level's number
    fmt: object = None   # the Format being packed (for messages)
    # group_starts(m): mask of the entries that open a new (parent, coordinates of this
    # level through level m) group, None when every entry does
    group_starts: object = None
    overflow: str = "error"  # a packed-block level's answer to a full block: 'error' or 'grow'
    # overflow_error(level, counts, largest, blocks): the exception for a full block
    overflow_error: object = None
    replaced: object = None  # set by pack when the level changes (a packed-block K grown)


@dataclass
class CheckContext:
    """What a level's ``validate`` gets: its arrays, sizes and how to fail."""
    arrays: dict
    N: int
    P: int               # number of parent positions
    parents: str         # the parent positions in words, for messages
    fail: object         # fail(text): raises InvalidTensorError naming tensor and level
    index_array: object  # index_array(key): the array as a 1-D integer ndarray (or fail)
    dim: int = 0         # the tensor dimension the level stores (for messages)
    level: int = 0       # the level's number
    fmt: object = None   # the Format
    tensor: str = ""     # the tensor, in words (for messages)
    last: bool = False   # the last level: its positions index vals
    vals: object = None
    check_vals: object = None  # check_vals(P): vals is a well-formed array of P values
    next_aligned: bool = False  # the level below is aligned_with_parent (a singleton)
    # per position: the same coordinates through the level above as the previous
    # position (set by a level whose child is aligned with it; None otherwise): the
    # hook reads its parent's and sets its own
    same: object = None


@dataclass(frozen=True)
class Level:
    """Base class of level kinds. Subclasses are frozen dataclasses."""

    letter: ClassVar[str] = "?"
    kind_name: ClassVar[str] = "?"  # what messages call the kind
    # Names of the integer arrays this level stores, in the kernel's parameter order.
    arrays: ClassVar[tuple] = ()

    # ----- facts the lowerer and runtime consult
    ordered = True  # plain class attributes here; kinds that vary them make them fields
    unique = True

    # The arrays in words (name, role, element type); kinds declare theirs.
    storage: ClassVar[tuple] = ()

    # A level with a fixed number of slots per parent (packed-block): it holds
    # only what fits, so outputs of this kind store nonzeros only, and a
    # transposed copy of it is stored compressed instead. Such a kind says its
    # geometry: ``block_size(N)``, ``num_blocks(N)`` and ``K`` slots per block
    # (``spcomp.testing.fit_packed`` trims data to fit through them); its output
    # appends through ``append_entry`` and a full block's error quotes
    # ``largest_fill(arrays)``, the most entries a block was given.
    fixed_slots = False

    # Some of its positions hold no entry (packed-block slots, bitmap bytes of 0):
    # the number of stored entries is not the length of ``vals``.
    has_unused_positions: ClassVar[bool] = False

    # Its number of positions follows from its parent's and the dimension's size alone
    # (num_positions reads no array): dense, packed-block, bitmap.
    shape_sized: ClassVar[bool] = False

    # Its positions are its coordinates laid out under the parent's (``parent * N + c``:
    # dense, bitmap), and its iterator's ``loop`` counts coordinates ``0..N`` with a
    # ``For`` (testing each one where not every coordinate is stored). Under the root
    # a position is a row, so threads split such a loop by ranges of coordinates as
    # they split a dense one (``lower/parallel.coordinate_rows``), and the level below
    # it is indexed by rows.
    coordinate_positions: ClassVar[bool] = False

    # Has exactly its parent's positions, one coordinate each (singleton): a parent
    # that validates tells it which positions hold equal coordinates (CheckContext.same).
    aligned_with_parent: ClassVar[bool] = False

    # Names of the integer arguments its spelling takes (``p(B,K)``: ("B", "K")); a
    # kind without any is spelled by its letter alone, so test strategies draw it
    # anywhere a level may stand without being told about it.
    parameters: ClassVar[tuple] = ()

    # Flags an input level of this kind may carry wherever it stands: the test strategies
    # (``spcomp.testing.formats``) add each now and then, ``unordered`` only when asked
    # (the compiler refuses to merge an unordered level).
    drawn_flags: ClassVar[tuple] = ()

    @classmethod
    def draw_parameters(cls, pick, largest: int, roomy: bool = False) -> tuple:
        """The integer arguments of a spelling the test strategies draw (``p(B,K)``'s),
        none above ``largest``, each from ``pick(lo, hi)`` (an integer in ``[lo, hi]``
        that Hypothesis draws); ``roomy``: ones that hold whatever an output level gets
        (K = B). () for a kind without ``parameters``."""
        return ()

    @classmethod
    def drawn_run(cls, length: int):
        """For a kind tied to its parent's positions: the spellings of the ``length``
        levels that end in it which the test strategies draw (a singleton's coordinate
        list, ``c(nonunique) q(nonunique) .. q``); None for any other kind."""
        return None

    @classmethod
    def from_spec(cls, words: list, numbers: list, text: str) -> "Level":
        """The level a format string spells with this kind's letter: ``words`` are its
        flags, ``numbers`` its integer arguments, ``text`` the whole format (for errors).
        By default a kind without parameters (dense, bitmap): any flag or number is refused."""
        if words or numbers:
            from ..errors import FormatError
            raise FormatError(f"format {text!r}: a {cls.kind_name} level ({cls.letter}) takes no flags")
        return cls()

    def array_type(self, array: str, index_bits: int):
        """The kernel's element type (an ``ir.types.ScalarType``) of one of its arrays:
        by default the index type of the width (int32 or int64)."""
        from ..ir.types import I32, I64
        return I32 if index_bits == 32 else I64

    def assembled_as(self, under_sparse: bool, levels_below: bool = False) -> "Level":
        """The level a kernel appends in place of this one when it is an output level
        (``under_sparse``: a sparse level is above it; ``levels_below``: it is not the
        last level); the runtime then packs the result into this kind
        (``lower/outputs.assembled_format``). Itself by default."""
        return self

    def pack(self, ctx: PackContext):
        """``(arrays, ppos, P)`` from the entries in ``ctx``: this level's arrays, each
        entry's position in it (None: the entry's own index) and its number of positions."""
        raise NotImplementedError

    def unpack(self, arrays: dict, cur, N: int):
        """``(positions, coords, counts)``: the stored positions under the parent positions
        ``cur`` in order, their coordinates, and how many each parent owns."""
        raise NotImplementedError

    def validate(self, ctx: CheckContext) -> int:
        """Check this level's arrays (``ctx.fail`` on the first defect); return its
        number of positions."""
        raise NotImplementedError

    def fixed_array_size(self, array: str, parent_positions: int, dim_size: int):
        """Entries of one of its arrays when they follow from its parent's positions and
        its dimension's size alone, so an output can allocate the array before the
        kernel runs; None when what the kernel appends decides. None by default."""
        return None

    @property
    def segmented(self) -> bool:
        """Stores one segment of ``pos`` per parent position and a coordinate per position
        in ``crd``: an output's kernel appends such a level by counting its positions and
        closing each parent's segment (CSF's levels, the top of a coordinate list), and
        a unique one gives each position its own coordinate, so its positions can be
        split over threads like rows."""
        return tuple((a.name, a.role) for a in self.storage) == (("pos", "segments"), ("crd", "coordinates"))

    @property
    def compressed_segments(self) -> bool:
        """Stores CSR's pair, one segment of ``pos`` per parent position and the ordered,
        unique coordinates in ``crd``: SciPy's indptr and indices, shared without a copy."""
        return self.segmented and self.ordered and self.unique

    def positions_expr(self, parent_count, dim, arrays):
        """IR for how many positions the level has under ``parent_count`` positions of its
        parent (``arrays``: its parameters), or None when no cheap expression says (the
        emitter then knows no last position for a loop below it). None by default."""
        return None

    def output_size_cap(self):
        """The largest dimension size an output level of this kind holds whatever the
        kernel computes there (an ELL level's K slots per row), or None: any size. Test
        data is drawn within it (``spcomp.testing.check``)."""
        return None

    def preset_name(self, name: str):
        """The name of preset ``name`` spelled with this level's parameters, when this
        level (the last one) carries them and packing changed them (a packed-block K
        grown by ``overflow='grow'``); None when the name does not follow the level."""
        return None

    # ----- insert side (TACO's insert capability: getSize, getInsertCoord,
    # getInsertInitCoords, getInsertFinalizeLevel): an output level whose positions follow
    # from its parent's position and the coordinate alone, written in any order. Output
    # sinks place and mark a value through these instead of knowing the layout.
    inserts: ClassVar[bool] = False

    def insert_size(self, parent_size, dim):
        """IR: the level's positions under ``parent_size`` positions of its parent."""
        raise NotImplementedError

    def insert_position(self, parent_pos, dim, coord):
        """IR: the position of ``coord`` under parent position ``parent_pos`` (None or
        0 at the first level)."""
        raise NotImplementedError

    def insert_init(self, arrays, begin, end, fresh) -> list:
        """Statements that make positions ``[begin, end)`` hold nothing before a kernel
        inserts into them (``arrays``: the level's parameters; ``fresh(name)``: a new
        variable name). [] where the runtime's zero-filled arrays already do."""
        return []

    def insert_coord(self, arrays, pos, coord) -> list:
        """Statements that record ``coord`` as stored at ``pos`` (a bitmap's byte)."""
        return []

    def insert_finalize(self, arrays, size) -> list:
        """Statements after the last insert, ``size`` the level's positions."""
        return []

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
        """This level in format-string syntax: by default its letter alone (the
        spelling the default :meth:`from_spec` reads)."""
        return self.letter

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

    def loop_between(self, coord, body, lo, hi) -> list:
        """The loop of a top level whose iterations threads split: ``loop`` with its
        ``For`` counting ``[lo, hi)`` only (positions, which a ``coordinate_positions``
        level's are its coordinates). A level whose ``loop`` ends in no ``For`` cannot
        be split and raises."""
        import dataclasses

        from ..ir import nodes as n
        *head, last = self.loop(coord, body)
        if not isinstance(last, n.For):
            raise NotImplementedError(f"{self.la.kind.kind_name} level: its loop is not a For, threads cannot split it")
        return [*head, dataclasses.replace(last, start=lo, end=hi)]

    def loop(self, coord, body) -> list:
        """A loop over every coordinate; ``body(PosInfo)`` gives its statements.
        The default drives the merge protocol with a while loop."""
        from ..ir import nodes as n
        return [*self.init(),
                n.While(self.valid(), n.block(n.Declare(coord), *self.load(coord),
                                              *body(self.position()), *self.advance()))]
