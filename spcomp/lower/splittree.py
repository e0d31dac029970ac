"""Nested splits: a piece of a split loop split again (split.py does one level).

``split("i", "i0", "i1", 64).split("i1", "i10", "i11", 8)`` runs ``i`` as three
loops with ``i1 = i10*8 + i11`` and ``i = i0*64 + i1``: a tree whose root is the
expression's index and whose leaves are the loops. Each split node works as
split.py's: the piece emitted first runs its full share of its node's extent,
the second the rest (so no coordinate passes its node's end); a node's extent is
its own piece's trip count, taken with whatever is bound when its piece runs.
Once both pieces of a node are bound its value is computed and bound in turn, up
to the root, whose coordinate then binds the index (:func:`resolve`).

Refused: a ``divide`` of a piece (its factor would follow from a piece's extent,
which may differ between its two loops), and a ``reorder`` that names some but
not all of a nested tree's leaves.
"""
from __future__ import annotations

from ..errors import ScheduleError
from ..ir import nodes as n
from ..ir.types import I64
from . import gpumap
from . import lattice as lat
from . import split as split_mod
from .split import SplitPiece


def _what(s) -> str:
    base, outer, inner, factor = s
    return (f"split({base!r}, {outer!r}, {inner!r}, {factor})" if factor > 0
            else f"divide({base!r}, {outer!r}, {inner!r}, {-factor})")


def layers(splits, index_names) -> tuple:
    """(splits of expression indices, splits of pieces), each in schedule order."""
    top, nested = [], []
    for s in splits:
        (top if s[0] in index_names else nested).append(s)
    return top, nested


def check(splits, index_names, output_dense: bool) -> None:
    """split.py's checks for the top splits; a nested one must split a piece made
    before it, once, by a factor (not a divide)."""
    top, nested = layers(splits, index_names)
    made = {name for s in top for name in s[1:3]}
    taken = set(index_names) | made
    split_mod.check(top, index_names, output_dense)
    for s in nested:
        base, outer, inner, factor = s
        if base not in made:
            raise ScheduleError(f"{_what(s)}: the expression has no index {base!r}, and no split before it "
                                "made a loop of that name")
        made.discard(base)
        if factor < 0:
            raise ScheduleError(f"{_what(s)}: a piece of a split loop can be split by a factor, not divided "
                                "(its trip count differs between iterations)")
        for name in (outer, inner):
            if name in taken:
                raise ScheduleError(f"{_what(s)}: the name {name!r} is already an index")
            taken.add(name)
            made.add(name)


def pieces(splits, indices) -> dict:
    """node (an IndexVar or a SplitPiece) -> (outer piece, inner piece), every level."""
    names = {i.name for i in indices}
    top, nested = layers(splits, names)
    out = split_mod.pieces(top, indices)
    by_name = {p.name: p for pair in out.values() for p in pair}
    for base, outer, inner, factor in nested:
        b = by_name[base]
        pair = (SplitPiece(outer, base=b, factor=factor, outer=True, partner=inner),
                SplitPiece(inner, base=b, factor=factor, outer=False, partner=outer))
        out[b] = pair
        by_name.update({p.name: p for p in pair})
    return out


def order_for_graph(user_order, splits, index_names):
    """The user's order in expression indices: nested pieces stand where their
    later leaf stands, then split.py's rule for the top splits."""
    top, nested = layers(splits, index_names)
    if user_order is None or not nested:
        return split_mod.order_for_graph(user_order, top)
    names = list(user_order)
    for base, outer, inner, _f in nested:
        if base in names:
            raise ScheduleError(f"reorder names {base!r}, which split({base!r}, {outer!r}, {inner!r}, ...) "
                                f"replaced; name {outer!r} and {inner!r} instead")
    for base, outer, inner, _f in reversed(nested):
        at = [k for k, x in enumerate(names) if x in (outer, inner)]
        if at:
            names = [base if k == at[-1] else x for k, x in enumerate(names) if k == at[-1] or k not in at]
    return split_mod.order_for_graph(names, top)


def leaves(node, tree) -> list:
    """The loops a node runs as, outermost first (itself when not split)."""
    if node not in tree:
        return [node]
    outer, inner = tree[node]
    return leaves(outer, tree) + leaves(inner, tree)


def expand(order, tree, user_order) -> list:
    """The loop order with split indices replaced by their leaves: split.py's rule
    when no piece is split again; else a reorder names all of a nested tree's leaves
    (placed as named) or none (the leaves side by side in the index's place)."""
    nested = [node for node in tree if isinstance(node, SplitPiece)]
    if not nested:
        return split_mod.expand(order, tree, user_order)
    user = list(user_order or [])
    out, done = [], set()
    trees = {root: leaves(root, tree) for root in tree if not isinstance(root, SplitPiece)}
    leaf_root = {leaf.name: (leaf, root) for root, ls in trees.items() for leaf in ls}
    for name in user:
        if name in leaf_root:
            leaf, root = leaf_root[name]
            missing = [x.name for x in trees[root] if x.name not in user]
            if missing:
                raise ScheduleError(f"reorder({', '.join(map(repr, user))}) names some loops of {root.name}'s nested "
                                    f"splits but not {', '.join(missing)}; name all of them or none")
            out.append(leaf)
            done.add(root)
        else:
            i = next(x for x in order if x.name == name)
            out.append(i)
            done.add(i)
    for i in order:
        if i not in done:
            out += trees.get(i, [i])
    return out


def check_reductions_adjacent(loop_order, reductions) -> None:
    """A split reduction's loops run next to each other: a sum is computed in one place."""
    for r in reductions:
        at = [k for k, x in enumerate(loop_order) if split_mod.base_of(x) == r]
        if len(at) > 1 and at[-1] - at[0] != len(at) - 1:
            names = ", ".join(loop_order[k].name for k in at)
            raise ScheduleError(f"the pieces of split reduction index {r.name} must be adjacent "
                                f"in the loop order (other loops run between {names})")


def size_of(node, sizes, env_bound) -> n.Expr:
    """The extent of a node: the index's size, or a piece's trip count now."""
    if not isinstance(node, SplitPiece):
        return sizes[node]
    return split_mod.extent(node, size_of(node.base, sizes, env_bound), env_bound)


def resolve(piece, var, env_bound, sizes, fresh):
    """Bind ``piece`` to ``var`` and every node both of whose pieces are now bound:
    ``(declarations, the index's coordinate or None while a piece is unbound)``."""
    stmts = []
    node, value = piece, var
    split_mod.bind(node, value, env_bound)
    while split_mod.bound_partner(node, env_bound):
        parent = node.base
        total = split_mod.coordinate(node, value, env_bound, size_of(parent, sizes, env_bound))
        if not isinstance(parent, SplitPiece):
            return stmts, total
        value = n.Var(fresh(parent.name), I64)
        stmts.append(n.Declare(value, total))
        split_mod.bind(parent, value, env_bound)
        node = parent
    return stmts, None


def describe(piece) -> str:
    """A nested piece's range as the loop nest text shows it."""
    side = "blocks" if piece.outer else "within a block"
    return f"{side} of {piece.factor} of {piece.base.name}"


class SplitPieceEmission:
    """The LoopEmitter's step for one piece of a split loop (mixed into LoopEmitter,
    whose own steps it calls)."""

    def _emit_split_piece(self, piece, rest, expr, sink, env, depth) -> list:
        """One piece of a split loop (of a piece), for the LoopEmitter; the last of
        a tree's pieces binds the index, ``i = i0*f + i1``. A piece a ``parallelize``
        names below the GPU's grid-level loop is a member loop of its team (gpumap.py)."""
        base = split_mod.base_of(piece)
        L = lat.build(expr, base, lambda a: self._iter_key(a, base, env))
        if L.empty:
            return []
        keys = sorted(L.iterators(), key=repr)
        if keys or not L.full:
            acc, l = keys[0]
            raise ScheduleError(
                f"split({base.name!r}, ...): the loop over {base.name} walks {self._user_name(acc.tensor.name)}'s "
                f"level {l + 1} ({acc.tensor.format.levels[l].spec()}); only dense loops can be split")
        parallel = self.parallel is not None and piece == self.parallel and depth == self.parallel_depth
        start = n.i64(0)
        end = split_mod.extent(piece, size_of(piece.base, self.sizes, env.bound), env.bound)
        text = (describe(piece) if isinstance(piece.base, SplitPiece)
                else split_mod.describe(piece, split_mod.bound_partner(piece, env.bound)))
        on = f" (parallel: {self.opt.parallel_kind})" if parallel else ""
        self._note(depth, f"for {piece.name} in {text}{on}")
        if parallel:
            start, end = self.lo, self.hi
        var = n.Var(self.fresh(piece.name), I64)
        inner = env.child()
        member, racy = self._member(piece, sink, env) if piece.name in self.members else (None, False)
        body, total = resolve(piece, var, inner.bound, self.sizes, self.fresh)
        if total is not None:
            coord = n.Var(self.fresh(base.name), I64)
            body = body + [n.Declare(coord, total)] + gpumap.racing(
                sink, racy, lambda: self._body(base, rest, expr, sink, inner, coord, depth))
        else:
            body = body + gpumap.racing(sink, racy, lambda: self.nest(rest, expr, sink, inner, depth + 1))
        loop = [n.For(var, start, end, n.block(*body), parallel=self.opt.parallel_kind if parallel else None)]
        if member:
            loop = self._mark_member(loop, member, piece.name)
        if total is not None:
            loop = self._vector_hint(loop, sink, rest)
        return self._user_hints(loop, piece)
