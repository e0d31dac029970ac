"""Blocked formats in the lowering: each index a blocked operand cuts becomes two.

A ``bsr(R,C)`` operand ``A[i,j]`` stores levels over ``(i/R, j/C, i%R, j%C)``
(``Format.level_map``). Before anything else looks at the statement, the lowerer
renames every use of a cut index ``i`` into the pair of :class:`BlockPiece` indices
``(i_o, i_i)`` with ``i = i_o*R + i_i`` -- the pair split.py makes of a split loop,
with the same representation (``split.IndexPiece``: base, factor, outer), but here
the pieces are coordinates the operands' levels store, so they are indices of the
statement rather than loops of the schedule, and a dense operand's compound
coordinate comes from its two dense levels (``(q*N/R + i_o)*R + i_i``) rather than
from split.py's ``i0*f + i1`` at the inner loop; the shapes being whole blocks, no
remainder guard is needed:

* a blocked operand is read through its level view, ``A[i_o, j_o, i_i, j_i]`` over
  ``d c d d``: its own levels, nothing added;
* any other operand's *dense* level over ``i`` becomes two dense levels over
  ``(i_o, i_i)``. Its positions do not change (``q*N + i = (q*N/R + i_o)*R + i_i``),
  so a dense operand is read at the compound coordinate, with no copy and no new
  array, and a CSR operand's rows under a blocked row index stay where they are;
* a level that cannot be cut (compressed, singleton, packed-block or bitmap over a
  cut index: its coordinates are not ``i_o*R + i_i`` positions) is refused with a
  FormatError naming the operand and the level, as is a sparse output that is not
  blocked like its operands.

The rewritten statement has ordinary indices and unblocked formats only, so the
iteration graph, the merge lattices (a loop over ``j_o`` co-iterates the blocked
levels with every operand that does not use ``j``), the sinks, the parallel choice
and both backends work unchanged. The runtime binds the pieces' sizes from their
base's (``N/R`` and ``R``) and refuses shapes that are not multiples of the block
(``runtime/plan.py``). :meth:`Blocking.restore` gives the runtime back the
operands' own accesses for shape checks and argument slots.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from ..errors import FormatError
from ..formats import Format
from ..notation import Access, IndexVar, Reduce, Sum, TensorVar, accesses
from .normalize import rebuild, replace
from .split import IndexPiece


@dataclass(frozen=True)
class BlockPiece(IndexPiece):
    """One coordinate of a cut index (``base = outer*factor + inner``): an index of the
    statement, where split.py's ``SplitPiece`` is a loop of the schedule."""

    def __repr__(self) -> str:
        return self.name


def piece(base: IndexVar, factor: int, outer: bool) -> BlockPiece:
    return BlockPiece(f"{base.name}_{'o' if outer else 'i'}", base=base, factor=factor, outer=outer)


def level_indices(acc: Access) -> list:
    """The coordinate each level of ``acc``'s blocked format holds, as indices."""
    fmt = acc.tensor.format
    return [acc.indices[d] if part == "whole" else piece(acc.indices[d], fmt.blocks[d], part == "outer")
            for d, part in fmt.level_map()]


class Reblock(Exception):
    """The lowerer's signal to lower again with these accesses read from copies in the
    blocks: ``wanted`` maps an access of the statement to the mode order of its copy
    (None: the blocked operands' order)."""

    def __init__(self, wanted: dict):
        super().__init__(sorted(map(repr, wanted)))
        self.wanted = wanted


@dataclass
class Blocking:
    """The statement with cut indices renamed, and how to undo it for the runtime."""
    lhs: Access
    rhs: object
    cuts: dict                                      # base IndexVar -> block size
    originals: dict = field(default_factory=dict)   # view Access -> the operand's own Access
    level_maps: dict = field(default_factory=dict)  # tensor name -> view level -> its own level
    # storage -> (operand, blocked Format): sparse operands converted to the blocks at each call
    converted: dict = field(default_factory=dict)
    lhs_own: Access = None  # the statement's output access
    users: dict = field(default_factory=dict)  # view Access -> the statement's access it reads

    def restore(self, expr):
        """``expr`` with every view access replaced by the operand's own access."""
        for view, own in self.originals.items():
            expr = replace(expr, view, own)
        return expr

    def own_level(self, tensor: str, level: int) -> int:
        """The level of the operand's own format that view level ``level`` reads."""
        m = self.level_maps.get(tensor)
        return level if m is None else m[level]

    def copies_for(self, view: Access, wanted: Format) -> dict:
        """The copies in the blocks that may let the loop order read ``view``, which it
        would transpose (``wanted``: the view's format in that order), as
        :class:`Reblock`'s ``wanted``; empty when there are none (then refuse).

        First every sparse, unblocked input read at its own levels (dense ones cut in
        two): their level order, not the blocked operand's, is what usually conflicts,
        and a copy in the blocks orders its levels alike. Else a copy of ``view``'s
        operand in the order asked, when whole blocks can hold it (outer levels, then
        inner ones in the same order)."""
        split = {user: None for v, user in self.users.items() if user is not self.lhs_own
                 and self.originals[v].tensor.format.blocks is None
                 and not self.originals[v].tensor.format.is_dense}
        if split:
            return split
        user = self.users.get(view)
        if user is None or user is self.lhs_own:
            return {}
        order = _order_asked(view, wanted, user)
        return {} if order is None else {user: order}

    @property
    def views(self) -> set:
        return {v.tensor for v in self.originals}


def rewrite(lhs: Access, rhs, reblock=None) -> Blocking | None:
    """The statement in block pieces, or None when no operand is blocked; the accesses
    in ``reblock`` (access -> mode order or None) are read from copies in the blocks."""
    reblock = reblock or {}
    accs = [lhs] + list(dict.fromkeys(accesses(rhs)))
    cuts = _cuts(accs)
    if not cuts:
        return None
    names = {i.name for acc in accs for i in acc.indices}
    for i, f in cuts.items():
        for p in (piece(i, f, True), piece(i, f, False)):
            if p.name in names:
                raise FormatError(f"index {i.name} is cut into blocks, and its pieces are named "
                                  f"{i.name}_o and {i.name}_i, but the statement already has an index "
                                  f"{p.name}; rename it")
    b = Blocking(lhs, rhs, cuts, lhs_own=lhs)
    seen: dict = {}
    views: dict = {}  # the statement's access -> the access the nest reads
    taken = {acc.tensor.name for acc in accs}
    rank = _ranks(accs)
    for acc in accs:
        copy = acc is not lhs and (_needs_blocks(acc, cuts) or acc in reblock)
        own = _reblocked(acc, cuts, b, taken, rank, reblock.get(acc)) if copy else acc
        view = _view(own, cuts, b, is_output=acc is lhs)
        if view is None:
            continue
        other = seen.setdefault(own.tensor.name, view.tensor)
        if other != view.tensor:
            raise FormatError(f"operand {acc.tensor.name} is read with a cut index in one access and not "
                              f"in another ({acc!r}); spcomp reads one operand through one level view")
        b.originals[view] = own
        b.users[view] = acc
        views[acc] = view
    b.lhs = views.get(lhs, lhs)
    b.rhs = _renamed(rhs, views, cuts)
    return b


def _order_asked(view: Access, wanted: Format, user: Access):
    """The mode order of a copy in the blocks that stores ``user``'s dimensions in the
    order ``wanted`` first reaches them (its outer levels follow the loops; the inner
    ones come after, as whole blocks need), or None when that is the order it has."""
    held = [view.indices[d] for d in wanted.order]
    bases = list(dict.fromkeys(p.base if isinstance(p, BlockPiece) else p for p in held))
    if any(i not in bases for i in user.indices):
        return None
    order = tuple(user.indices.index(i) for i in bases)
    return None if order == tuple(user.tensor.format.order) else order


def _cuts(accs) -> dict:
    cuts: dict = {}
    by: dict = {}
    for acc in accs:
        fmt = acc.tensor.format
        if fmt.blocks is None:
            continue
        if len(set(acc.indices)) != len(acc.indices):
            raise FormatError(f"operand {acc.tensor.name} is stored as {fmt} and read as {acc!r}: a blocked "
                              "operand cannot repeat an index (a diagonal of blocks)")
        for d, f in enumerate(fmt.blocks):
            if f <= 1:
                continue
            i = acc.indices[d]
            if cuts.setdefault(i, f) != f:
                raise FormatError(f"index {i.name} is cut into blocks of {cuts[i]} by {by[i]} and of {f} "
                                  f"by operand {acc.tensor.name} ({fmt}): operands that share a blocked "
                                  "index need the same block size along it")
            by.setdefault(i, f"operand {acc.tensor.name} ({fmt})")
    return cuts


def _needs_blocks(acc: Access, cuts: dict) -> bool:
    """Whether a level that is not dense holds a whole index that another operand cuts."""
    fmt = acc.tensor.format
    return any(part == "whole" and acc.indices[d] in cuts and not kind.is_dense
               for (d, part), kind in zip(fmt.level_map(), fmt.levels))


def _ranks(accs) -> dict:
    """Index -> its place in the first blocked access's mode order: copies in the
    blocks order their dimensions alike."""
    first = next(acc for acc in accs if acc.tensor.format.blocks is not None)
    return {first.indices[d]: k for k, d in enumerate(first.tensor.format.order)}


def in_blocks(acc: Access, cuts: dict, rank: dict, order=None, output: bool = False) -> Format:
    """``acc``'s format over the blocks of ``cuts``: its levels over the blocks (a
    packed-block level compressed; for an ``output``, every sparse level, which any
    kernel can append to), dense levels inside them, dimensions in ``order`` or else
    ordered by ``rank`` (then by its own order)."""
    from .. import formats
    fmt = acc.tensor.format
    blocks = tuple(cuts.get(i, 1) for i in acc.indices)
    if order is None:
        order = tuple(sorted(fmt.order, key=lambda d: (rank.get(acc.indices[d], len(rank)), fmt.order.index(d))))
    outer = tuple(formats.Compressed() if kind.fixed_slots or (output and not kind.is_dense) else kind
                  for kind in fmt.levels[:fmt.ndim])
    inner = tuple(formats.Dense() for d in order if blocks[d] > 1)
    new = Format(outer + inner, order, blocks=blocks)
    if len(blocks) == 2 and new in (Format.bsr(*blocks), Format.bsc(*blocks)):
        new = Format.bsr(*blocks) if order == (0, 1) else Format.bsc(*blocks)  # its preset name
    return new


def output_in_blocks(lhs: Access, rhs) -> Format | None:
    """The format a sparse, unblocked output is assembled in when a blocked operand
    cuts one of its indices (the runtime converts the result to the output's own
    format), or None when the output is assembled as it is."""
    fmt = lhs.tensor.format
    if fmt.blocks is not None or fmt.is_dense:
        return None
    accs = [lhs] + list(dict.fromkeys(accesses(rhs)))
    cuts = _cuts(accs)
    if not any(i in cuts for i in lhs.indices):
        return None
    return in_blocks(lhs, cuts, _ranks(accs), output=True)


def _reblocked(acc: Access, cuts: dict, b: Blocking, taken: set, rank: dict, order=None) -> Access:
    """An operand read from a copy in the blocks (its levels over the blocks, dense
    levels inside them) that the runtime makes at each call, as it makes a transposed
    copy (``OperandPlan.transposes``): a sparse level of it holds a cut index, or its
    level order conflicts with the loop order (``order``: the copy's mode order)."""
    t = acc.tensor
    new = in_blocks(acc, cuts, rank, order)
    name, k = f"{t.name}_blocks", 2
    while name in taken:
        name, k = f"{t.name}_blocks{k}", k + 1
    taken.add(name)
    b.converted[name] = (t.name, new)
    return Access(TensorVar(name, t.order, new, t.dtype), acc.indices)


def _view(acc: Access, cuts: dict, b: Blocking, is_output: bool):
    """``acc`` read through its levels, each holding one plain or piece coordinate."""
    fmt, t = acc.tensor.format, acc.tensor
    if fmt.blocks is None and not any(i in cuts for i in acc.indices):
        return None
    who = f"output {t.name}" if is_output else f"operand {t.name}"
    if len(set(acc.indices)) != len(acc.indices):
        raise FormatError(f"{who} ({fmt}) is read as {acc!r}, repeating index(es) that a blocked operand "
                          "cuts into blocks; spcomp cannot read a diagonal across blocks")
    if is_output and fmt.blocks is None and not fmt.is_dense:
        cut = next(i for i in acc.indices if i in cuts)
        raise FormatError(f"output {t.name} is stored as {fmt}, but index {cut.name} is cut into blocks "
                          f"of {cuts[cut]} by a blocked operand: store {t.name} dense, or blocked with the "
                          "same blocks (e.g. bsr(R,C)), so its levels follow the blocks")
    levels, idx, lmap = [], [], []
    for l, ((d, part), kind) in enumerate(zip(fmt.level_map(), fmt.levels)):
        i = acc.indices[d]
        if part != "whole":
            levels.append(kind)
            idx.append(piece(i, cuts[i], part == "outer"))
            lmap.append(l)
        elif i in cuts:
            if not kind.is_dense:
                raise FormatError(
                    f"{who} is stored as {fmt}: its level {l + 1} ({kind.spec()}, a {kind.kind_name} level) "
                    f"holds index {i.name}, which a blocked operand cuts into blocks of {cuts[i]}; only a "
                    f"dense level can be read block by block. Store {t.name} blocked like that operand "
                    f"(e.g. bsr), or dense")
            levels += [kind, kind]
            idx += [piece(i, cuts[i], True), piece(i, cuts[i], False)]
            lmap += [l, l]
        else:
            levels.append(kind)
            idx.append(i)
            lmap.append(l)
    b.level_maps[t.name] = tuple(lmap)
    return Access(TensorVar(t.name, len(idx), Format(tuple(levels)), t.dtype), tuple(idx))


def _renamed(e, views: dict, cuts: dict):
    """``e`` with accesses read through their views and sums over a cut index nested
    over its two pieces (outer first)."""
    if isinstance(e, Access):
        return views.get(e, e)
    if isinstance(e, (Sum, Reduce)) and e.index in cuts:
        f = cuts[e.index]
        body = _renamed(e.body, views, cuts)
        o, i = piece(e.index, f, True), piece(e.index, f, False)
        if isinstance(e, Sum):
            return Sum(o, Sum(i, body))
        return Reduce(e.op, o, Reduce(e.op, i, body))
    return rebuild(e, lambda c: _renamed(c, views, cuts))
