"""Formats: one level kind per stored dimension plus a mode ordering (DESIGN §3).

``Format(levels, order)``: level ``l`` stores tensor dimension ``order[l]``.
Format strings: level letters (``registry.py``) ``d`` ``c`` ``q`` ``p(B,K)`` / ``p(K)`` ``b`` with
optional flags (``c(nonunique)``, ``q(unordered)``, ``p(256,32,unordered)``),
an optional mode order after a colon (``"dc:1,0"`` is CSC), optional block sizes
after a slash (``"dcdd/4,4"`` is ``bsr(4,4)``), or a preset name:
``dense csr csc coo dcsr csf ell(K=..) twell(B=..,K=..) bsr(R,C) bsc(R,C) bell(R,C,K) nm(N,M)``.

Blocked formats (MLIR's dim→level maps): ``blocks[d] = b > 1`` cuts dimension ``d``
into an outer level (``i floordiv b``, placed by ``order`` like any dimension) and an
inner level (``i mod b``, after every outer level, again in ``order``), so
``bsr(R,C)`` is ``d c d d`` over ``(i,j) -> (i/R, j/C, i%R, j%C)``: scipy's BSR arrays.
"""
from __future__ import annotations

import difflib
import functools
import re
from dataclasses import dataclass

from ..errors import FormatError
from .compressed import Compressed
from .dense import Dense
from .level import Level
from .packed import PackedBlock
from .registry import LEVEL_KINDS
from .singleton import Singleton


@dataclass(frozen=True)
class Format:
    levels: tuple
    order: tuple = None  # type: ignore[assignment]
    name: str | None = None  # the preset it came from, for printing
    blocks: tuple | None = None  # per dimension: its block size (None: one level per dimension)

    def __post_init__(self):
        levels = tuple(self.levels)
        object.__setattr__(self, "levels", levels)
        blocks = None if self.blocks is None else tuple(int(b) for b in self.blocks)
        object.__setattr__(self, "blocks", blocks)
        ndim = len(levels) if blocks is None else len(blocks)
        order = tuple(range(ndim)) if self.order is None else tuple(int(o) for o in self.order)
        object.__setattr__(self, "order", order)
        if sorted(order) != list(range(ndim)):
            raise FormatError(f"format {self.spec()!r}: mode order {order} is not a permutation "
                              f"of 0..{ndim - 1}")
        if blocks is not None:
            _check_blocks(self, levels, blocks)
        for lvl in levels:
            if not isinstance(lvl, Level):
                raise FormatError(f"format level {lvl!r} is not a Level")
        for l, lvl in enumerate(levels):
            if lvl.aligned_with_parent and l == 0:
                raise FormatError(f"format {self.spec()!r}: a singleton level (q) needs a parent level "
                                  "above it; use 'coo' = c(nonunique) q for coordinate lists")

    # ------------------------------------------------------------ facts
    @property
    def ndim(self) -> int:
        """The tensor's order (its number of dimensions; of levels too unless blocked)."""
        return len(self.levels) if self.blocks is None else len(self.blocks)

    @property
    def is_dense(self) -> bool:
        return all(l.is_dense for l in self.levels)

    # ----------------------------------------------------- blocked formats
    def level_map(self) -> tuple:
        """Per level ``(dim, part)``: ``part`` is 'whole', 'outer' (``i floordiv b``)
        or 'inner' (``i mod b``)."""
        if self.blocks is None:
            return tuple((d, "whole") for d in self.order)
        cut = [d for d in self.order if self.blocks[d] > 1]
        return (tuple((d, "outer" if self.blocks[d] > 1 else "whole") for d in self.order)
                + tuple((d, "inner") for d in cut))

    def level_view(self) -> "Format":
        """The levels as a plain format, one level per stored coordinate: a blocked
        tensor's arrays are exactly those of this format over :meth:`level_shape`."""
        return self if self.blocks is None else Format(self.levels)

    def level_shape(self, shape) -> tuple:
        """The size of each level's coordinates (floor division for outer levels)."""
        if self.blocks is None:
            return tuple(int(shape[d]) for d in self.order)
        b = self.blocks
        return tuple(int(shape[d]) if part == "whole" else
                     int(shape[d]) // b[d] if part == "outer" else b[d] for d, part in self.level_map())

    def block_misfit(self, shape):
        """``(dim, size, block)`` of the first dimension not a multiple of its block, or None."""
        for d, b in enumerate(self.blocks or ()):
            if b > 1 and int(shape[d]) % b:
                return d, int(shape[d]), b
        return None

    def to_level_coords(self, coords) -> list:
        """Per level, the coordinates (integer arrays, one per dimension in ``coords``)."""
        b = self.blocks
        return [coords[d] if part == "whole" else coords[d] // b[d] if part == "outer" else coords[d] % b[d]
                for d, part in self.level_map()]

    def from_level_coords(self, lcoords) -> list:
        """Per dimension, the coordinates of entries given per level."""
        out = [None] * self.ndim
        for (d, part), c in zip(self.level_map(), lcoords):
            if part == "whole":
                out[d] = c
            elif part == "outer":
                out[d] = c * self.blocks[d] if out[d] is None else c * self.blocks[d] + out[d]
            else:
                out[d] = c if out[d] is None else out[d] + c
        return out

    def level_of_dim(self, dim: int) -> int:
        return self.order.index(dim)

    def spec(self) -> str:
        text = "".join(l.spec() for l in self.levels)
        order = self.order or ()
        if tuple(order) != tuple(range(len(order))):
            text += ":" + ",".join(str(o) for o in order)
        if self.blocks is not None:
            text += "/" + ",".join(str(b) for b in self.blocks)
        return text

    def __str__(self) -> str:
        return self.name or self.spec()

    def __repr__(self) -> str:
        return f"Format({self.spec()!r})"

    def __eq__(self, other) -> bool:
        return (isinstance(other, Format) and self.levels == other.levels and self.order == other.order
                and self.blocks == other.blocks)

    def __hash__(self) -> int:
        return hash((self.levels, self.order, self.blocks))

    def with_order(self, order) -> "Format":
        return Format(self.levels, tuple(order), blocks=self.blocks)

    # ---------------------------------------------------------- presets
    @staticmethod
    def dense(ndim: int) -> "Format":
        return Format((Dense(),) * ndim, name="dense")

    @staticmethod
    def csr() -> "Format":
        return Format((Dense(), Compressed()), name="csr")

    @staticmethod
    def csc() -> "Format":
        return Format((Dense(), Compressed()), (1, 0), name="csc")

    @staticmethod
    def dcsr() -> "Format":
        return Format((Compressed(), Compressed()), name="dcsr")

    @staticmethod
    def coo(ndim: int = 2) -> "Format":
        if ndim == 1:
            return Format((Compressed(),), name="coo")
        levels = [Compressed(unique=False)] + [Singleton(unique=False)] * (ndim - 2) + [Singleton()]
        return Format(tuple(levels), name="coo")

    @staticmethod
    def csf(ndim: int = 3) -> "Format":
        return Format((Compressed(),) * ndim, name="csf")

    @staticmethod
    def twell(B: int = 256, K: int = 32, ndim: int = 2) -> "Format":
        """TwELL: dense rows, each cut in tiles of B columns with K slots per tile."""
        return Format((Dense(),) * (ndim - 1) + (PackedBlock(B, K),), name=f"twell(B={B},K={K})")

    @staticmethod
    def ell(K: int = 32, ndim: int = 2) -> "Format":
        """ELLPACK: dense rows with K slots each."""
        return Format((Dense(),) * (ndim - 1) + (PackedBlock(None, K),), name=f"ell(K={K})")

    @staticmethod
    def nm(N: int = 2, M: int = 4, ndim: int = 2) -> "Format":
        """N:M structured sparsity along the last dimension (2:4): dense rows, each cut
        into blocks of M coordinates holding at most N entries -- the packed-block level
        ``p(M,N)``: ``vals`` is the usual compressed ``(rows, cols*N/M)`` value array and
        ``crd`` the in-block index of each (int16), ``count`` the entries per block."""
        return Format((Dense(),) * (ndim - 1) + (PackedBlock(M, N),), name=f"nm({N},{M})")

    @staticmethod
    def bsr(R: int, C: int) -> "Format":
        """Block sparse rows: ``d c d d`` over ``(i/R, j/C, i%R, j%C)``, scipy's ``bsr_array``
        (``indptr``, ``indices``, ``data`` of shape ``(nblocks, R, C)``)."""
        inner = (Dense(),) * ((R > 1) + (C > 1))
        return Format((Dense(), Compressed()) + inner, (0, 1), name=f"bsr({R},{C})", blocks=(R, C))

    @staticmethod
    def bsc(R: int, C: int) -> "Format":
        """Block sparse columns: ``d c d d`` over ``(j/C, i/R, j%C, i%R)`` (blocks stored
        column-major: the BSR storage of the transpose)."""
        inner = (Dense(),) * ((R > 1) + (C > 1))
        return Format((Dense(), Compressed()) + inner, (1, 0), name=f"bsc({R},{C})", blocks=(R, C))

    @staticmethod
    def blocked_ell(R: int, C: int, K: int) -> "Format":
        """Blocked ELL (cuSPARSE's Blocked-ELL): ``d p(K) d d`` over ``(i/R, j/C, i%R, j%C)``,
        each row of blocks holding K block slots (``count`` used, ``crd`` their block
        columns) and each slot a dense R x C block of values."""
        inner = (Dense(),) * ((R > 1) + (C > 1))
        return Format((Dense(), PackedBlock(None, K)) + inner, (0, 1), name=f"bell({R},{C},{K})", blocks=(R, C))

    # ----------------------------------------------------------- parsing
    @staticmethod
    def parse(spec, ndim: int | None = None) -> "Format":
        """A Format from a string, a Format, or a sequence of level letters.

        ``ndim`` is the tensor's order; presets like ``dense`` and ``coo`` need it,
        and the result is checked against it.
        """
        if isinstance(spec, Format):
            fmt = spec
        elif isinstance(spec, str):
            fmt = _parse_string(spec.strip(), ndim)
        else:
            raise FormatError(f"a format is a string or spcomp.Format, not {type(spec).__name__}")
        if ndim is not None and fmt.ndim != ndim:
            raise FormatError(f"format {str(fmt)!r} has {fmt.ndim} level(s) but the tensor has "
                              f"{ndim} dimension(s)")
        return fmt


_PRESET_ARGS = re.compile(r"^(\w+)\s*(?:\((.*)\))?$")


def _numbers(name: str, args: str | None, keys: tuple, example: str) -> dict:
    """``name(a,b)`` or ``name(A=a,B=b)``: the numbers by key (``keys``, in order)."""
    parts = [p.strip() for p in (args or "").split(",") if p.strip()]
    values = {}
    for k, part in enumerate(parts):
        key, _, value = part.rpartition("=")
        key = key.strip() or keys[min(k, len(keys) - 1)]
        if key not in keys or key in values:
            raise FormatError(f"format {name}({args}): give {','.join(keys)} as numbers, e.g. {example}")
        try:
            values[key] = int(value)
        except ValueError:
            raise FormatError(f"format {name}({args}): {key} must be an integer, got {value.strip()!r}") from None
    if not values:
        raise FormatError(f"format {name!r} needs its sizes, e.g. {example}")
    return values


def _two_numbers(name: str, args: str | None, keys: tuple, example: str) -> tuple:
    values = _numbers(name, args, keys, example)
    if len(values) != 2:
        raise FormatError(f"format {name}({args}): give both {' and '.join(keys)}, e.g. {example}")
    return values[keys[0]], values[keys[1]]


def _block_preset(name: str, args: str | None) -> Format:
    """``bsr(R,C)`` / ``bsc(R,C)`` (also ``R=..,C=..``; one number is a square block)."""
    values = _numbers(name, args, ("R", "C"), f"{name}(4,4)")
    R = values.get("R", values.get("C"))
    C = values.get("C", R)
    return Format.bsr(R, C) if name == "bsr" else Format.bsc(R, C)


def _blocked_ell_preset(args: str | None) -> Format:
    """``bell(R,C,K)`` (also ``R=..,C=..,K=..``): all three sizes, each at least 1."""
    values = _numbers("bell", args, ("R", "C", "K"), "bell(2,2,4)")
    if len(values) != 3:
        raise FormatError(f"format bell({args}): give R, C and K, e.g. bell(2,2,4)")
    if min(values.values()) < 1:
        raise FormatError(f"format bell({args}): R, C and K must be at least 1")
    return Format.blocked_ell(values["R"], values["C"], values["K"])


def _check_blocks(fmt: Format, levels: tuple, blocks: tuple) -> None:
    """A blocked format's levels match its map: one per dimension plus one per cut one."""
    if any(b < 1 for b in blocks):
        raise FormatError(f"format {fmt.spec()!r}: block sizes must be at least 1, got {blocks}")
    want = len(blocks) + sum(1 for b in blocks if b > 1)
    if len(levels) != want:
        raise FormatError(f"format {fmt.spec()!r}: blocks {blocks} cut {want - len(blocks)} dimension(s), "
                          f"so it needs {want} levels (outer levels in mode order, then the inner ones), "
                          f"not {len(levels)}")
    if all(lvl.is_dense for lvl in levels):
        raise FormatError(f"format {fmt.spec()!r}: a blocked format with only dense levels is a dense "
                          "tensor; use 'dense'")


def _preset(name: str, args: str | None, ndim: int | None) -> Format | None:
    if name in ("bsr", "bsc"):
        return _block_preset(name, args)
    if name == "bell":
        return _blocked_ell_preset(args)
    if name == "nm":
        N, M = _two_numbers(name, args, ("N", "M"), "nm(2,4)")
        if not 1 <= N <= M:
            raise FormatError(f"format nm({args}): N:M sparsity keeps N of every M entries, 1 <= N <= M")
        return Format.nm(N, M, 2 if ndim is None else ndim)
    kwargs: dict = {}
    if args:
        for part in args.split(","):
            part = part.strip()
            if not part:
                continue
            if "=" not in part:
                raise FormatError(f"format {name}({args}): write parameters as NAME=VALUE, e.g. "
                                  f"twell(B=256,K=32)")
            key, value = (s.strip() for s in part.split("=", 1))
            if key not in ("B", "K"):
                raise FormatError(f"format {name}({args}): unknown parameter {key!r} (expected B or K)")
            try:
                kwargs[key] = int(value)
            except ValueError:
                raise FormatError(f"format {name}({args}): {key} must be an integer, got {value!r}") from None
    simple = {"csr": Format.csr, "csc": Format.csc, "dcsr": Format.dcsr}
    if name in simple:
        if args:
            raise FormatError(f"format {name!r} takes no parameters")
        return simple[name]()
    nd = 2 if ndim is None else ndim
    if name == "dense":
        if ndim is None:
            raise FormatError("format 'dense' needs the tensor's order")
        return Format.dense(ndim)
    if name == "coo":
        return Format.coo(nd)
    if name == "csf":
        return Format.csf(3 if ndim is None else ndim)
    if name == "twell":
        if "B" in kwargs and "K" not in kwargs:
            kwargs["K"] = max(1, kwargs["B"] // 8)
        return Format.twell(kwargs.get("B", 256), kwargs.get("K", 32), nd)
    if name == "ell":
        if "B" in kwargs:
            raise FormatError("format 'ell' has one block per row: give only K, e.g. ell(K=16)")
        return Format.ell(kwargs.get("K", 32), nd)
    return None


@functools.lru_cache(maxsize=8)
def _level_pattern(letters: str):
    """A level's spelling, one of ``letters`` with optional flags in parentheses."""
    return re.compile(r"\s*([" + re.escape(letters) + r"])(?:\(([^)]*)\))?")


def _parse_levels(text: str) -> tuple:
    levels = []
    pos = 0
    while pos < len(text):
        if text[pos].isspace():
            pos += 1
            continue
        m = _level_pattern("".join(LEVEL_KINDS)).match(text, pos)  # kinds registered now
        if not m:
            spelled = ", ".join(k.letter + (f"({','.join(k.parameters)})" if k.parameters else "")
                                for k in LEVEL_KINDS.values())
            raise FormatError(f"format {text!r}: cannot read a level at {text[pos:]!r}; levels are "
                              f"{spelled} or a preset ({' '.join(_PRESETS)})"
                              + _did_you_mean(text))
        letter, args = m.group(1), m.group(2)
        flags = [a.strip() for a in args.split(",")] if args is not None else []
        levels.append(_make_level(letter, flags, text))
        pos = m.end()
    if not levels:
        raise FormatError(f"format {text!r} has no levels")
    return tuple(levels)


_PRESETS = ("dense", "csr", "csc", "coo", "dcsr", "csf", "ell", "twell", "bsr", "bsc", "bell", "nm")


def _did_you_mean(text: str) -> str:
    """A hint for a misspelt preset (``CSR``, ``cssr``): such a string fails as level
    letters, and the level error alone would not tell the user which name they meant."""
    m = re.match(r"\s*([A-Za-z]+)(.*)$", text, re.S)
    if not m:
        return ""
    word, rest = m.group(1).lower(), m.group(2)
    close = difflib.get_close_matches(word, _PRESETS, n=1, cutoff=0.6)
    return f"; did you mean {close[0] + rest!r}?" if close else ""


def _make_level(letter: str, flags: list, text: str) -> Level:
    words = [f for f in flags if f and not f.lstrip("-").isdigit()]
    numbers = [int(f) for f in flags if f and f.lstrip("-").isdigit()]
    return LEVEL_KINDS[letter].from_spec(words, numbers, text)


def _parse_string(text: str, ndim: int | None) -> Format:
    if not text:
        raise FormatError("empty format string")
    text_nb, _, block_text = text.partition("/")
    body, _, order_text = text_nb.partition(":")
    m = _PRESET_ARGS.match(body.strip())
    if m and m.group(1) in _PRESETS:
        fmt = _preset(m.group(1), m.group(2), ndim)
        if block_text:
            raise FormatError(f"format {text!r}: a preset takes no '/blocks'; write its levels, e.g. 'dcdd/4,4'")
        if order_text:
            return Format(fmt.levels, _parse_order(order_text, text), name=None, blocks=fmt.blocks)
        return fmt
    levels = _parse_levels(body)
    order = _parse_order(order_text, text) if order_text else None
    blocks = _parse_order(block_text, text) if block_text else None
    dims = len(levels) if blocks is None else len(blocks)
    if order is not None and len(order) != dims:
        raise FormatError(f"format {text!r}: mode order has {len(order)} entries for {dims} dimension(s)")
    return Format(levels, order, blocks=blocks)


def _parse_order(order_text: str, text: str) -> tuple:
    try:
        return tuple(int(x) for x in order_text.split(","))
    except ValueError:
        raise FormatError(f"format {text!r}: the mode order after ':' is a comma-separated list "
                          "of dimensions, e.g. 'dc:1,0'") from None
