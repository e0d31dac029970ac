"""Hypothesis strategies for spcomp: formats, tensors, random expressions, operands.

Everything here draws *valid* inputs: a format the compiler accepts for an
operand of the given order, data that fits it, an expression that parses and
checks. Combine them with :func:`spcomp.testing.check_kernel`::

    from hypothesis import given, strategies as st
    from spcomp.testing import check_kernel, expressions, operands

    @given(st.data())
    def test_random_kernels(data):
        case = data.draw(expressions(max_operands=3))
        ops = data.draw(operands(case))
        check_kernel(case.text, case.formats, ops)

Values are chosen so that float64 results are exact and float32 / bfloat16
results are close: nonzeros are small multiples of 1/2 (``±0.5 .. ±3``), which
every supported dtype stores exactly and whose sums and products stay exact
integers / halves far below 2**24. A computed zero is then a true zero in the
kernel and in the reference alike (no "almost cancelled" entries that one side
keeps and the other drops).

The strategies are ``@st.composite`` functions, so every argument that is
documented as "a value or a strategy" can be either.
"""
from __future__ import annotations

import functools
import itertools
import zlib
from dataclasses import dataclass, field

import numpy as np
from hypothesis import strategies as st

from ..errors import FormatError
from ..formats.format import Format
from ..formats.registry import LEVEL_KINDS
from .check import VALUES, np_dtype, fit_packed, random_tensor, random_values  # noqa: F401 (re-exported)

__all__ = [
    "ExpressionCase", "formats", "output_formats", "tensors", "expressions", "operands",
    "index_sizes", "fit_packed", "random_values", "random_tensor", "VALUES",
    "TENSOR_NAMES", "SCALAR_NAMES", "INDEX_NAMES", "DEFAULT_FUNCTIONS", "all_format_strings",
]

#: Names given to generated tensors (order >= 1), scalars (order 0) and indices.
TENSOR_NAMES = ("A", "B", "C", "D", "E", "F")
SCALAR_NAMES = ("alpha", "beta", "gamma", "delta")
INDEX_NAMES = ("i", "j", "k", "l", "m")

# sizes a generated index takes: small, with 0 (1 in 17) and 1 present but not dominant
_SIZES = (3, 1, 2, 4, 5, 6, 7, 0, 2, 3, 4, 5, 1, 3, 4, 5, 6)

# densities a generated operand takes: empty (1 in 9) and full included, dense-ish favoured
# (products of several sparse operands are mostly zero otherwise)
_DENSITIES = (0.7, 0.5, 1.0, 0.3, 0.9, 0.2, 0.0, 0.6, 0.8)


def _chance(draw, k: int) -> bool:
    """True with probability about 1/k. (Hypothesis draws the simplest choice, the
    first element or 0, more often than uniformly; the middle element is not
    favoured, so rare choices stay rare.)"""
    return draw(st.sampled_from(range(k))) == k // 2


def _strategy(x):
    """``x`` if it is a strategy, else ``st.just(x)``."""
    return x if isinstance(x, st.SearchStrategy) else st.just(x)


# ================================================================ formats

def _free_letters() -> str:
    """Letters of the registered level kinds spelled by the letter alone that may stand
    at any level (no parameters, not tied to a parent as a singleton is): the
    strategies draw a newly registered kind of that sort with no change here."""
    return "".join(k.letter for k in LEVEL_KINDS.values() if not k.parameters and not k.aligned_with_parent)


def _all_letters() -> str:
    """Every registered level letter (the default ``kinds``)."""
    return "".join(LEVEL_KINDS)


def _spell(draw, kind, largest: int, roomy: bool = False, unordered: bool = False, flags: bool = True) -> str:
    """A level of ``kind`` as a format spells it: the arguments the kind draws itself
    (``Level.draw_parameters``, none above ``largest``; ``roomy`` for an output), and
    now and then each of its ``drawn_flags`` (with ``flags``; ``unordered`` only with
    ``unordered``). The kind's own ``spec`` writes it, so no kind is spelled here."""
    numbers = kind.draw_parameters(lambda lo, hi: draw(st.integers(lo, hi)), largest, roomy)
    words = [f for f in kind.drawn_flags if flags and (unordered or f != "unordered") and _chance(draw, 4)]
    return kind.from_spec(words, list(numbers), kind.letter).spec()


@functools.lru_cache(maxsize=256)
def _letters(spec: str, ndim: int) -> frozenset:
    """The level letters a format (a preset, a run of levels) uses; empty when it does
    not fit ``ndim``."""
    try:
        fmt = Format.parse(spec, ndim=ndim)
    except FormatError:
        return frozenset()
    return frozenset(type(level).letter for level in fmt.levels) if fmt.ndim == ndim else frozenset()


def _runs(kinds: str, heads: bool = True) -> list:
    """The kinds in ``kinds`` tied to their parent (a singleton): drawn only as the run
    their ``drawn_run`` spells (COO's ``c(nonunique) q .. q``), which with ``heads``
    uses letters of ``kinds`` alone."""
    return [k for k in LEVEL_KINDS.values() if k.aligned_with_parent and k.letter in kinds
            and (not heads or _letters("".join(k.drawn_run(2)), 2) <= set(kinds))]


def _with_order(levels: list, order) -> str:
    text = "".join(levels)
    if order is not None and list(order) != sorted(order):
        text += ":" + ",".join(str(o) for o in order)
    return text


# presets drawn in place of level strings where their levels' kinds are allowed
_PRESETS = ("csr", "csc", "dcsr", "coo", "csf", "dense")


def _preset_fits(name: str, ndim: int, kinds: str, allow_order: bool) -> bool:
    used = _letters(name, ndim)
    return bool(used) and used <= set(kinds) and (allow_order or name != "csc")


@st.composite
def formats(draw, ndim: int, kinds: str | None = None, allow_packed: bool = True, allow_order: bool = True,
            allow_unordered: bool = False, presets: bool = True, max_block: int = 8, blocks=()):
    """A format string that the compiler accepts for an *input* of order ``ndim``.

    Each stored dimension gets a level whose letter is in ``kinds`` (default: every
    letter in ``formats.registry.LEVEL_KINDS``):

    * ``d`` dense, ``c`` compressed, ``b`` bitmap and any registered kind spelled by
      its letter alone, anywhere (``"cd"``, ``"dc"``, ``"bc"`` alike);
    * ``q`` singleton only as in COO: a run ``c(nonunique) q(nonunique) .. q`` that
      ends the format (singletons need a non-unique compressed parent);
    * ``p`` packed-block ``p(B,K)`` with small ``1 <= B <= max_block`` and
      ``1 <= K <= B``, sometimes the ELL form ``p(K)`` (one block per row); only when
      ``allow_packed``. Data drawn by :func:`tensors` is trimmed to fit K.

    With ``allow_order`` the format gets a random mode order (``"dc:1,0"``) a third
    of the time. ``allow_unordered`` adds the ``unordered`` flag to some compressed
    and packed levels (valid inputs, but the compiler refuses to *merge* such a
    level: expect :class:`~spcomp.errors.UnsupportedError`). With ``presets`` a
    preset name (``csr``, ``csc``, ``dcsr``, ``coo``, ``csf``, ``dense``) that fits
    ``ndim`` and ``kinds`` is sometimes drawn instead. ``ndim == 0`` gives
    ``"dense"`` (a scalar). With ``blocks`` (block sizes, e.g. ``(2,)``) a matrix is
    blocked half of the time, ``bsr(R,C)`` or ``bsc(R,C)`` with R and C drawn from ``blocks``
    (and blocked ELL ``bell(R,C,K)``, 1 <= K <= 3, when ``p`` is in ``kinds`` and ``allow_packed``)
    (:func:`operands` makes every index a blocked format cuts a multiple of its block).
    """
    if ndim == 0:
        return "dense"
    bell = kinds is None or _letters(_BLOCKED_ELL, 2) <= set(kinds)
    if blocks and ndim == 2 and _chance(draw, 2):
        return draw(_blocked(blocks, allow_order, allow_packed and bell))
    kinds = _all_letters() if kinds is None else kinds
    usable = [k for k in kinds if k in LEVEL_KINDS and not LEVEL_KINDS[k].aligned_with_parent
              and (allow_packed or not LEVEL_KINDS[k].fixed_slots)]
    if not usable:  # only kinds tied to a parent: the head of their run
        usable = sorted({x for k in _runs(kinds, heads=False) for x in _letters(k.drawn_run(1)[0], 1)}) or ["d"]
    if presets and _chance(draw, 5):
        fits = [p for p in _PRESETS if _preset_fits(p, ndim, kinds, allow_order)]
        if fits:
            return draw(st.sampled_from(fits))
    tail, runs = 0, _runs(kinds)
    if runs and ndim >= 2 and _chance(draw, 4):
        run = runs[0] if len(runs) == 1 else draw(st.sampled_from(runs))
        tail = draw(st.integers(2, ndim))
    levels = [_spell(draw, LEVEL_KINDS[draw(st.sampled_from(usable))], max_block, unordered=allow_unordered)
              for _ in range(ndim - tail)]
    levels += run.drawn_run(tail) if tail else []
    order = None
    if allow_order and ndim >= 2 and _chance(draw, 3):
        order = draw(st.permutations(range(ndim)))
    return _with_order(levels, order)


_BLOCKED_ELL = "bell(2,2,1)"  # the preset whose kinds decide whether blocked ELL is drawn


@st.composite
def _blocked(draw, blocks, allow_order: bool = True, allow_packed: bool = False):
    """``bsr(R,C)`` (or, with ``allow_order``, ``bsc(R,C)``; with ``allow_packed``, blocked
    ELL ``bell(R,C,K)`` with 1 <= K <= 3), R and C drawn from ``blocks``."""
    kind = draw(st.sampled_from(["bsr"] + ["bsc"] * allow_order + ["bell"] * allow_packed))
    sizes = f"{draw(st.sampled_from(blocks))},{draw(st.sampled_from(blocks))}"
    return f"bell({sizes},{draw(st.integers(1, 3))})" if kind == "bell" else f"{kind}({sizes})"


@st.composite
def output_formats(draw, ndim: int, allow_packed: bool = True, allow_order: bool = True,
                   packed_k: str = "full", max_block: int = 8, allow_dense: bool = True,
                   allow_bitmap: bool = True, blocks=()):
    """A format the compiler can *assemble* as an output of order ``ndim``.

    One of: all dense; dense levels then compressed levels (csr, dcsr, csf style);
    dense levels, a compressed level, then compressed or dense levels in any mix
    (``cd``, ``dcd``, ``cdc``: dense sub-blocks under stored positions); with
    ``allow_bitmap`` the kinds spelled by their letter alone (dense, compressed, bitmap
    and any newly registered one) in any order, one other than d and c at least;
    dense levels then a coordinate list (``c(nonunique) q .. q``); dense levels then
    one packed-block level ``p(B,K)`` / ``p(K)``. With ``allow_order`` a random mode
    order is added a third of the time (a transposed output).

    ``packed_k="full"`` (default) draws packed output levels with K = B, so no
    block can get more nonzeros than it has slots, and ELL levels ``p(K)`` with
    K = ``max_block`` (one block spans the whole row: :func:`operands` caps that
    dimension to K). ``packed_k="any"`` draws any 1 <= K <= B: then a
    :class:`~spcomp.errors.PackedOverflowError` is a legitimate outcome when a
    block gets more than K nonzeros. With ``blocks``, as in :func:`formats`, a matrix
    output is sometimes ``bsr(R,C)`` / ``bsc(R,C)`` (or ``bell(R,C,K)`` with ``allow_packed``:
    :func:`operands` caps its block columns to K, so no row of blocks overflows).
    """
    if ndim == 0:
        return "dense"
    if blocks and ndim == 2 and _chance(draw, 3):
        return draw(_blocked(blocks, allow_order, allow_packed))
    runs = _runs(_all_letters())
    parameterised = [k for k in LEVEL_KINDS.values() if k.parameters and not k.aligned_with_parent]
    shapes = (["csf"] + (["coo"] if runs else []) + (["dense"] if allow_dense else [])
              + (["packed"] if allow_packed and parameterised else []))
    if ndim >= 2:
        shapes.append("mixed")
    others = [k for k in _free_letters() if k not in "dc"]
    if allow_bitmap and others:
        shapes.append("bitmap")
    shape = draw(st.sampled_from(shapes))
    if shape == "dense":
        levels = ["d"] * ndim
    elif shape == "csf":
        lead = draw(st.integers(0, ndim - 1))
        levels = ["d"] * lead + ["c"] * (ndim - lead)
    elif shape == "mixed":
        lead = draw(st.integers(0, ndim - 2))
        below = [draw(st.sampled_from("dc")) for _ in range(ndim - lead - 1)]
        if "d" not in below:
            below[draw(st.integers(0, len(below) - 1))] = "d"
        levels = ["d"] * lead + ["c"] + below
    elif shape == "bitmap":
        levels = [draw(st.sampled_from(_free_letters())) for _ in range(ndim)]
        if not set(levels) & set(others):
            levels[draw(st.integers(0, ndim - 1))] = draw(st.sampled_from(others))
    elif shape == "coo":
        lead = draw(st.integers(0, ndim - 1))
        levels = ["d"] * lead + (runs[0] if len(runs) == 1 else draw(st.sampled_from(runs))).drawn_run(ndim - lead)
    else:
        kind = parameterised[0] if len(parameterised) == 1 else draw(st.sampled_from(parameterised))
        levels = ["d"] * (ndim - 1) + [_spell(draw, kind, max_block, roomy=packed_k == "full", flags=False)]
    order = None
    if allow_order and ndim >= 2 and _chance(draw, 3):
        order = draw(st.permutations(range(ndim)))
    return _with_order(levels, order)


# ================================================================ tensors

@st.composite
def tensors(draw, shape, format, density=None, dtype="float64", empty_rows=None):
    """``(dense, tensor)`` where ``tensor`` is a :class:`spcomp.Tensor` in ``format``
    with dtype ``dtype`` and ``dense`` the same values as a float64 ndarray.

    Every argument is a value or a strategy. ``density`` (default: one of
    :data:`_DENSITIES`, 0 to 1, dense-ish favoured) is the probability of an entry being nonzero; ``empty_rows``
    (default: 0 or 0.5) zeroes that fraction of the slices along the first axis.
    Values come from :data:`VALUES`; data is trimmed so that packed-block levels
    never overflow (``fmt`` is used as is: the tensor's format equals ``format``).
    Shapes may contain 0 and 1.
    """
    shape = tuple(draw(_strategy(shape)))
    fmt = draw(_strategy(format))
    if density is None:
        density = st.sampled_from(_DENSITIES)
    if empty_rows is None:
        empty_rows = st.sampled_from([0.0, 0.0, 0.5])
    d = draw(_strategy(density))
    e = draw(_strategy(empty_rows))
    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng([seed, zlib.crc32(str(fmt).encode()), *shape])
    return random_tensor(rng, shape, fmt, d, draw(_strategy(dtype)), e)


# ============================================================= expressions

@dataclass(frozen=True)
class ExpressionCase:
    """One generated kernel: its text, a format per tensor (output included, tensors
    not named are dense), the order of every tensor and the output's name."""
    text: str
    formats: dict = field(hash=False)
    orders: dict = field(hash=False)
    output: str = "Y"

    @property
    def inputs(self) -> list:
        return [n for n in self.orders if n != self.output]

    @property
    def accumulate(self) -> bool:
        return "+=" in self.text

    def __str__(self) -> str:
        return f"{self.text}  formats={self.formats}"


# Unary functions and how they are written around an argument. "exact" ones keep
# values that are exact in float64 (integers / halves); the others introduce
# rounding, so only ``gelu``/``silu``/``tanh``/``log1p(abs)`` may take a rounded
# argument: ``sqrt`` (unbounded slope at 0) and ``exp`` (overflow) take exact
# arguments, and ``exp`` only a single access, so its magnitude stays below e**3.
# Piecewise-constant ones (sign, floor ...) take only exact arguments: a rounded
# argument near a step would flip the result.
_EXACT_UNARY = ("relu", "abs", "square", "cube")
_PIECEWISE_UNARY = ("sign", "floor", "ceil", "round", "trunc")
_SMOOTH_UNARY = ("gelu", "silu", "tanh", "sin", "cos", "atan", "asinh", "erf", "sigmoid", "softplus")
DEFAULT_FUNCTIONS = ("relu", "abs", "max", "min", "gelu", "silu", "tanh", "exp", "sqrt", "log",
                     "square", "cube", "sign", "floor", "ceil", "round", "trunc", "sin", "cos", "atan",
                     "asinh", "erf", "sigmoid", "softplus", "pow", "mod", "heaviside")


@dataclass
class _Node:
    text: str
    indices: frozenset
    exact: bool = True       # value is exact in float64 (no transcendental rounding)
    leaf: bool = False       # a single access (possibly negated)
    precedence: int = 3      # 1 sum, 2 product, 3 atom

    def wrapped(self, level: int) -> str:
        return self.text if self.precedence >= level else f"({self.text})"


@st.composite
def _access(draw, tensors: dict, max_order: int, index_pool, reuse: bool, scalars: bool,
            diagonals: bool = False):
    """One access: reuse a tensor already drawn (same order, new indices) or a new one;
    with ``diagonals`` an access of order 2 or more sometimes repeats an index
    (``A[i,i]``, ``X[j,i,j]``: the diagonal)."""
    if reuse and tensors and _chance(draw, 6):
        name = draw(st.sampled_from(sorted(tensors)))
        order = tensors[name]
    else:
        top = min(max_order, len(index_pool))
        choices = list(range(1, top + 1)) * 2 + ([0] if scalars else [])  # scalars 1 time in 2*top+1
        order = draw(st.sampled_from(choices or [0]))
        pool = [n for n in (SCALAR_NAMES if order == 0 else TENSOR_NAMES) if n not in tensors]
        if not pool:
            order = 1
            pool = [n for n in TENSOR_NAMES if n not in tensors]
        name = pool[0]
        tensors[name] = order
    idx = draw(st.permutations(index_pool))[:order] if order else []
    if diagonals and order >= 2 and _chance(draw, 6):
        at = draw(st.integers(1, order - 1))
        idx[at] = idx[draw(st.integers(0, at - 1))]
    text = f"{name}[{','.join(idx)}]" if order else name
    return _Node(text, frozenset(idx), exact=True, leaf=True)


def _combine(op: str, a: _Node, b: _Node) -> _Node:
    if op == "*":
        text, prec = f"{a.wrapped(2)} * {b.wrapped(3)}", 2
    elif op == "/":  # a divisor that is never 0: inf and NaN have no place in the checks
        text, prec = f"{a.wrapped(2)} / (abs({b.text}) + 1)", 2
    elif op == "+":
        text, prec = f"{a.wrapped(1)} + {b.wrapped(2)}", 1
    else:
        text, prec = f"{a.wrapped(1)} - {b.wrapped(2)}", 1
    return _Node(text, a.indices | b.indices, a.exact and b.exact and op != "/", False, prec)


@st.composite
def _decorate(draw, node: _Node, functions, literals: bool) -> _Node:
    """Maybe wrap ``node`` in a unary minus, a function, or a literal product/sum."""
    choice = draw(st.integers(0, 9))
    fns = set(functions)
    if choice == 0:
        return _Node(f"-{node.wrapped(3)}", node.indices, node.exact, node.leaf, 3)
    if choice in (1, 2):
        options = [f for f in _EXACT_UNARY if f in fns]
        options += [f for f in _SMOOTH_UNARY if f in fns]
        if node.exact:
            options += [f for f in _PIECEWISE_UNARY if f in fns]
            options += [f for f in ("pow", "mod", "heaviside") if f in fns]
        if "log" in fns:
            options.append("log")
        if node.exact and "sqrt" in fns:
            options.append("sqrt")
        if node.leaf and "exp" in fns:
            options.append("exp")
        if not options:
            return node
        f = draw(st.sampled_from(options))
        if f == "sqrt":
            text = f"sqrt(abs({node.text}))"
        elif f == "log":
            text = f"log(abs({node.text}) + 1)"
        elif f in ("pow", "mod", "heaviside"):
            second = draw(st.sampled_from({"pow": ["2", "3", "0"], "mod": ["3", "1.5"],
                                           "heaviside": ["0", "0.5"]}[f]))
            text = f"{f}({node.text}, {second})"
            return _Node(text, node.indices, node.exact, False, 3)
        else:
            text = f"{f}({node.text})"
        return _Node(text, node.indices, node.exact and f in _EXACT_UNARY + _PIECEWISE_UNARY, False, 3)
    if choice == 3 and literals:
        lit = draw(st.sampled_from(["2", "0.5", "3", "1.5"]))
        form = draw(st.integers(0, 3))
        if form == 0:
            return _Node(f"{lit} * {node.wrapped(3)}", node.indices, node.exact, False, 2)
        if form == 1:
            return _Node(f"{node.wrapped(2)} / 2", node.indices, node.exact, False, 2)
        if form == 2:
            return _Node(f"{node.wrapped(1)} + {lit}", node.indices, node.exact, False, 1)
        if "max" in fns or "min" in fns:
            f = draw(st.sampled_from([f for f in ("max", "min") if f in fns]))
            return _Node(f"{f}({node.text}, {lit})", node.indices, node.exact, False, 3)
    return node


@st.composite
def expressions(draw, max_operands: int = 4, max_order: int = 3, functions=DEFAULT_FUNCTIONS,
                literals: bool = True, reductions: bool = True, scalars: bool = True,
                repeat_tensors: bool = True, transposed_outputs: bool = True, accumulate: bool = True,
                input_formats=True, output_format=True, kinds: str | None = None, allow_packed: bool = True,
                allow_order: bool = True, min_operands: int = 1, max_indices: int | None = None,
                min_output_order: int = 0, diagonals: bool = True, divisions: bool = True):
    """A random well-formed expression with a format per tensor: an :class:`ExpressionCase`.

    The right side has ``min_operands..max_operands`` accesses of order
    ``0..max_order`` (order 0 = a scalar such as ``alpha``; only with ``scalars``)
    joined by ``+ - *``, with unary minus, literals (``2 * x``, ``x / 2``, ``x + 3``,
    ``max(x, 0.5)``; with ``literals``) and the ``functions`` named (relu, abs, max,
    min, gelu, silu, tanh, exp, sqrt, log; written ``sqrt(abs(x))`` and
    ``log(abs(x) + 1)`` so they stay real, ``exp`` only of a single access so it
    cannot overflow). With ``repeat_tensors`` one tensor may be used twice, with
    other indices (``A[i,j] * A[j,i]``); with ``diagonals`` an access sometimes
    repeats an index (``A[i,i]``, dense or sparse); with ``divisions`` two
    sub-expressions are sometimes divided, as ``a / (abs(b) + 1)`` (a divisor that is
    never 0, so no check meets inf or NaN).

    The output takes a subset of the right side's indices (the others are summed;
    always all of them unless ``reductions``), in a random order when
    ``transposed_outputs`` (``Y[j,i] = ...``); with ``accumulate`` it is sometimes
    ``+=``. ``min_output_order`` asks for an output of at least that order (when the
    right side has that many indices). ``max_indices`` bounds how many distinct indices are used (default
    ``max_order + 1``).

    ``input_formats`` (True, False, or a callable ``ndim -> strategy``) draws a
    format per input: dense a third of the time, else :func:`formats` with
    ``kinds``, ``allow_packed`` and ``allow_order``. ``output_format`` (same
    choices) draws the output's from :func:`output_formats` two thirds of the time.
    """
    n_ops = draw(st.integers(min_operands, max_operands))
    n_idx = max_indices if max_indices is not None else max_order + 1
    pool = list(INDEX_NAMES[:max(1, min(n_idx, len(INDEX_NAMES)))])
    fns = tuple(functions or ())
    orders: dict = {}
    leaves = [draw(_access(orders, max_order, pool, repeat_tensors, scalars, diagonals)) for _ in range(n_ops)]
    nodes = [draw(_decorate(x, fns, literals)) if _chance(draw, 3) else x for x in leaves]
    while len(nodes) > 1:
        k = draw(st.integers(0, len(nodes) - 2))
        op = draw(st.sampled_from(["*", "*", "+", "-"]))
        if divisions and _chance(draw, 10):
            op = "/"
        if op == "+" and {"max", "min"} & set(fns) and _chance(draw, 6):
            f = draw(st.sampled_from([f for f in ("max", "min") if f in fns]))
            a, b = nodes[k], nodes[k + 1]
            node = _Node(f"{f}({a.text}, {b.text})", a.indices | b.indices, a.exact and b.exact, False, 3)
        else:
            node = _combine(op, nodes[k], nodes[k + 1])
        if _chance(draw, 4):
            node = draw(_decorate(node, fns, literals))
        nodes[k:k + 2] = [node]
    rhs = nodes[0]
    used = [i for i in pool if i in rhs.indices]
    lo = max(min_output_order, 0) if reductions else len(used)
    hi = min(len(used), max_order)
    lo = min(lo, hi)
    # the largest output about half of the time (reductions come from the other half)
    opts = list(range(lo, hi + 1))
    out_order = draw(st.sampled_from([hi] + opts + [hi]))  # hypothesis favours the first choice
    if transposed_outputs:
        out_idx = list(draw(st.permutations(used)))[:out_order]
    else:
        out_idx = sorted(draw(st.permutations(used))[:out_order], key=used.index)
    out_name = "Y" if out_order else "out"
    lhs = f"{out_name}[{','.join(out_idx)}]" if out_order else out_name
    op = "+=" if accumulate and _chance(draw, 10) else "="
    text = f"{lhs} {op} {rhs.text}"
    all_orders = {out_name: out_order, **orders}
    fmts: dict = {}
    for name, order in orders.items():
        if order == 0 or input_formats is False:
            continue
        if callable(input_formats) and input_formats is not True:
            fmt = draw(input_formats(order))
        elif _chance(draw, 3):
            continue
        else:
            fmt = draw(formats(order, kinds=kinds, allow_packed=allow_packed, allow_order=allow_order))
        if fmt != "dense":
            fmts[name] = fmt
    if out_order and output_format is not False:
        if callable(output_format) and output_format is not True:
            fmts[out_name] = draw(output_format(out_order))
        elif not _chance(draw, 3):
            fmt = draw(output_formats(out_order, allow_packed=allow_packed, allow_order=allow_order))
            if fmt.startswith("d") and set(fmt.split(":")[0]) == {"d"}:
                fmt = "dense" if ":" not in fmt else fmt
            if fmt != "dense":
                fmts[out_name] = fmt
    return ExpressionCase(text, fmts, all_orders, out_name)


# ================================================================ operands

@st.composite
def index_sizes(draw, names, sizes=_SIZES):
    """A size per index name, drawn from ``sizes`` (small, 0 and 1 included)."""
    return {n: draw(st.sampled_from(sizes)) for n in names}


@st.composite
def operands(draw, case: ExpressionCase, dtype="float64", sizes=None, density=None, scipy_inputs: bool = True,
             dtypes: dict | None = None, extra_fits: dict | None = None, empty_rows=None):
    """Operands for ``case``: a dict name -> value to pass to the kernel.

    Index sizes come from ``sizes`` (a dict or a strategy of one; missing ones are
    drawn from small sizes with 0 and 1 present); indices that one tensor ties
    together (``A[i,j] * A[j,k]``) get one size, and an ELL ``p(K)`` output row is
    capped to K so it cannot overflow. Each input gets its own ``density`` (a value
    or strategy; default one of 0 .. 1 as in :func:`tensors`) and ``empty_rows`` (fraction of
    all-zero slices along its first axis), values from :data:`VALUES` in ``dtype``
    (``dtypes`` overrides per tensor), trimmed to fit its packed levels and those of
    the formats in ``extra_fits[name]``. Inputs are passed as an ndarray when dense,
    a Python float when a float64 scalar (a 0-d array otherwise), sometimes a
    ``scipy.sparse`` matrix when csr/csc (``scipy_inputs``), else a
    :class:`spcomp.Tensor`. For ``+=`` the old output is included (an ndarray, 0-d
    for a scalar, or a Tensor in the output's format).
    """
    from .check import complete_sizes, make_operands
    from ..frontend import to_notation
    dtypes = dtypes or {}
    notation = to_notation(case.text, formats=case.formats, dtypes=dtypes, default_dtype=dtype)
    given = dict(draw(_strategy(sizes))) if sizes is not None else {}
    pool = list(_SIZES)
    sz = complete_sizes(notation, given, lambda: draw(st.sampled_from(pool)), cap_given=True)
    if density is None:
        density = st.sampled_from(_DENSITIES)
    if empty_rows is None:
        empty_rows = st.sampled_from([0.0, 0.0, 0.0, 0.5])
    dens = {name: draw(_strategy(density)) for name in notation.tensors}
    e = draw(_strategy(empty_rows))
    # hypothesis often draws seed 0: mix in the case so that cases do not share one data pattern
    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng([seed, zlib.crc32(case.text.encode()), *sorted(sz.values())])
    ops = make_operands(notation, sz, rng, dens, empty_rows=e, extra_fits=extra_fits)
    if scipy_inputs:
        import scipy.sparse as sp
        from ..runtime import Tensor
        for name, v in ops.items():
            if (isinstance(v, Tensor) and name != case.output and v.dtype in (np.float32, np.float64)
                    and v.format.spec() in ("dc", "dc:1,0") and draw(st.booleans())):
                dense = v.to_numpy()
                ops[name] = sp.csr_matrix(dense) if v.format.spec() == "dc" else sp.csc_matrix(dense)
    return ops


def all_format_strings(ndim: int, kinds: str = "dcq", blocks=((2, 2), (3, 1))) -> list:
    """Every input format of order ``ndim`` over ``kinds`` with identity mode order
    (packed levels from ``blocks``); handy for exhaustive parametrisation."""
    kinds_with_parameters = [LEVEL_KINDS[k] for k in kinds if k in LEVEL_KINDS and LEVEL_KINDS[k].parameters]
    letters = [k for k in kinds if k in _free_letters()] + [
        kind.from_spec([], list(b), kind.letter).spec()
        for kind in kinds_with_parameters for b in blocks if len(b) == len(kind.parameters)]
    out = ["".join(p) for p in itertools.product(letters, repeat=ndim)]
    for run in _runs(kinds, heads=False):
        for tail in range(2, ndim + 1):
            for p in itertools.product(letters, repeat=ndim - tail):
                out.append("".join(p) + "".join(run.drawn_run(tail)))
    return out
