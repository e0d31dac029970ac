"""``Schedule.split``: one loop run as two (TACO's split).

``split("i", "i0", "i1", f)`` runs the loop over ``i`` as a loop over ``i0`` and
one over ``i1`` with ``i = i0*f + i1``. The two pieces are loops of their own in
the loop order (``reorder`` can put other loops between them: tiling), and the
coordinate ``i`` exists only inside the second of them. Its extent is bounded so
that ``i < N`` (the remainder guard): the outer piece runs ``ceil(N/f)`` times,
the inner one ``min(f, N - i0*f)`` times, so no iteration needs an ``if``.

Only a loop that visits every coordinate of ``i`` without walking a sparse
level (a dense loop: dense operands and dense levels located at ``i``) can be
split; positions of a compressed level are not split (no position splitting).
The lowerer calls :func:`check`, :func:`order_for_graph`, :func:`expand` and
:func:`emit`; the rest of the lowering sees the base index ``i``.

``divide("i", "i0", "i1", P)`` (TACO's divide) is a split into ``P`` blocks: its
factor is ``ceil(N/P)`` at run time (at least 1). Options carry it as a split
whose factor is ``-P`` (:func:`factor_expr` and the runtime's trip count read it).
"""
from __future__ import annotations

from dataclasses import dataclass

from ..errors import ScheduleError
from ..ir import nodes as n
from ..notation import IndexVar


@dataclass(frozen=True)
class IndexPiece(IndexVar):
    """One of the two pieces of index ``base`` with ``base = outer*factor + inner``:
    the ``outer`` piece counts blocks of ``factor`` coordinates, the other the place
    in a block. A :class:`SplitPiece` is a loop a schedule makes; a blocked format's
    pieces (``blocked.BlockPiece``) are coordinates its levels store."""
    base: IndexVar = None
    factor: int = 1
    outer: bool = True

    def __repr__(self) -> str:
        return self.name


@dataclass(frozen=True)
class SplitPiece(IndexPiece):
    """One of the two loops ``split`` makes of ``base`` (``partner``: the other's name)."""
    partner: str = ""

    def __repr__(self) -> str:
        return self.name


def check(splits, index_names, output_dense: bool) -> None:
    """Refuse splits the lowerer cannot honour, naming the directive."""
    taken = set(index_names)
    for base, outer, inner, factor in splits:
        what = (f"split({base!r}, {outer!r}, {inner!r}, {factor})" if factor > 0
                else f"divide({base!r}, {outer!r}, {inner!r}, {-factor})")
        if base not in index_names:
            raise ScheduleError(f"{what}: the expression has no index {base!r} (splitting a piece of a "
                                "split loop again is not supported)")
        if sum(1 for s in splits if s[0] == base) > 1:
            raise ScheduleError(f"{what}: index {base!r} is split twice")
        for name in (outer, inner):
            if name in taken:
                raise ScheduleError(f"{what}: the name {name!r} is already an index")
            taken.add(name)
        if not output_dense:
            raise ScheduleError(f"{what}: splitting loops is supported for dense outputs only "
                                "(a sparse output is assembled in loop order)")


def pieces(splits, indices) -> dict:
    """base IndexVar -> (outer piece, inner piece)."""
    by_name = {i.name: i for i in indices}
    out = {}
    for base, outer, inner, factor in splits:
        b = by_name[base]
        out[b] = (SplitPiece(outer, base=b, factor=factor, outer=True, partner=inner),
                  SplitPiece(inner, base=b, factor=factor, outer=False, partner=outer))
    return out


def order_for_graph(user_order, splits):
    """The user's loop order in base indices, for the iteration graph: a split
    index stands where its later piece stands (where its coordinate exists)."""
    if user_order is None:
        return None
    names = list(user_order)
    for base, outer, inner, _f in splits:
        if base in names:
            raise ScheduleError(f"reorder names {base!r}, which split({base!r}, {outer!r}, {inner!r}, ...) "
                                f"replaced; name {outer!r} and {inner!r} instead")
        at = [k for k, x in enumerate(names) if x in (outer, inner)]
        if not at:
            continue
        names = [base if k == at[-1] else x for k, x in enumerate(names) if k == at[-1] or k not in at]
    return names


def expand(order, split_pieces, user_order) -> list:
    """The loop order with each split index replaced by its two pieces: where the
    user's reorder puts them, else side by side (outer first) in its place.

    ``order`` is choose_order's answer to :func:`order_for_graph`, which keeps the
    user's loops first and in the user's order."""
    by_name = {p.name: p for pair in split_pieces.values() for p in pair}
    user = list(user_order or [])
    head = []
    for name in user:
        piece = by_name.get(name)
        if piece is None:
            head.append(next(i for i in order if i.name == name))
            continue
        outer, inner = split_pieces[piece.base]
        partner = inner if piece is outer else outer
        if partner.name not in user:
            head.append(partner)  # the unnamed piece goes just outside the named one
        head.append(piece)
    done = {x.base if isinstance(x, SplitPiece) else x for x in head}
    out = list(head)
    for i in order:
        if i in done:
            continue
        out += list(split_pieces[i]) if i in split_pieces else [i]
    return out


def restrict(loop_order, indices) -> list:
    """The loops of ``loop_order`` that run ``indices`` (pieces for split ones)."""
    wanted = set(indices)
    return [x for x in loop_order if base_of(x) in wanted]


def check_reductions_adjacent(loop_order, reductions) -> None:
    """A split reduction's pieces must be neighbours: a sum is computed in one place."""
    for k, x in enumerate(loop_order):
        if isinstance(x, SplitPiece) and x.base in reductions:
            nxt = loop_order[k + 1] if k + 1 < len(loop_order) else None
            prev = loop_order[k - 1] if k > 0 else None
            if not any(isinstance(y, SplitPiece) and y.base == x.base for y in (nxt, prev)):
                raise ScheduleError(f"the pieces of split reduction index {x.base.name} must be adjacent "
                                    f"in the loop order (other loops run between {x.name} and its partner)")


def factor_expr(piece: SplitPiece, size) -> n.Expr:
    """The block size: the split's factor, or ``max(1, ceil(N/P))`` for a divide into P."""
    if piece.factor > 0:
        return n.i64(piece.factor)
    parts = -piece.factor
    return n.Binary("max", n.i64(1), n.Binary("/", n.Binary("+", size, n.i64(parts - 1)), n.i64(parts)))


def run_time_factor(factor: int, size: int) -> int:
    """:func:`factor_expr` for the runtime, from the recorded factor and N."""
    return factor if factor > 0 else max(1, -(-size // -factor))


def extent(piece: SplitPiece, size, env_bound) -> n.Expr:
    """Trip count of ``piece``: exact, so that ``i0*f + i1 < N`` always holds."""
    f = factor_expr(piece, size)
    less = n.Binary("-", f, n.i64(1))
    partner = env_bound.get(_partner_key(piece))
    if piece.outer:
        if partner is None:  # ceil(N / f)
            return n.Binary("/", n.Binary("+", size, less), f)
        # inside i1: i0 < ceil((N - i1) / f); N - i1 + f - 1 >= 0 since i1 < min(f, N)
        return n.Binary("/", n.Binary("+", n.Binary("-", size, partner), less), f)
    if partner is None:
        return n.Binary("min", f, size)
    return n.Binary("min", f, n.Binary("-", size, n.Binary("*", partner, f)))


def _partner_key(piece: SplitPiece):
    return ("split", piece.base, not piece.outer)


def _own_key(piece: SplitPiece):
    return ("split", piece.base, piece.outer)


def bound_partner(piece: SplitPiece, env_bound) -> bool:
    return _partner_key(piece) in env_bound


def bind(piece: SplitPiece, var, env_bound) -> None:
    env_bound[_own_key(piece)] = var


def coordinate(piece: SplitPiece, var, env_bound, size) -> n.Expr:
    """``i0*f + i1`` once both pieces are bound (``piece`` is the second)."""
    partner = env_bound[_partner_key(piece)]
    outer, inner = (var, partner) if piece.outer else (partner, var)
    return n.Binary("+", n.Binary("*", outer, factor_expr(piece, size)), inner)


def base_of(i):
    """The index a loop runs over: the split index for a piece (of a piece: splittree.py)."""
    while isinstance(i, SplitPiece):
        i = i.base
    return i


def extent_rule(i):
    """For the runtime, how a parallel piece's trip count follows from N:
    (factor, True) = ceil(N/f), (factor, False) = min(f, N); None for a plain loop."""
    return (i.factor, i.outer) if isinstance(i, SplitPiece) else None


def describe(piece: SplitPiece, second: bool) -> str:
    """The piece's range as the loop nest text shows it."""
    i, f, other = piece.base.name, piece.factor, piece.partner
    if f < 0:
        f = f"ceil(N_{i}/{-f})"
    if piece.outer:
        text = f"0..ceil(N_{i}/{f})" if not second else f"0..ceil((N_{i}-{other})/{f})"
    else:
        text = f"0..min({f}, N_{i})" if not second else f"0..min({f}, N_{i}-{other}*{f})"
    if second:
        outer, inner = (piece.name, other) if piece.outer else (other, piece.name)
        text += f": {i} = {outer}*{f} + {inner}"
    return text
