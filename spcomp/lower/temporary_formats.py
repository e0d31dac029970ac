"""The format of a program's temporary that ``formats=`` does not name (issue 24).

A temporary written densely costs the whole index space: ``t = A·B`` of two csr
matrices would be an n×n array where the product has nnz ≪ n². So each such
temporary gets its format from the zero structure of the statement that writes
it, read off the same merge lattices the lowerer co-iterates by
(``lattice.build``): a dimension is *sparse-bound* when, for its index, the
right side is absent wherever some sparse operand stores nothing along it (its
lattice has no full point: products intersect, sums unite, a function with
f(0) ≠ 0 makes the point full). Sparse-bound dimensions are stored compressed,
the others dense, in the order the writer's loop order walks them (so the writer
appends in order and no input needs a transposed copy it did not need before):
``t = A·B`` of csr operands is csr, of dcsr ones dcsr, ``A + D`` with a dense
``D`` or ``exp(A)`` dense. A choice is dropped (the temporary stays dense) where
it would make a statement read some tensor through a transposed copy that the
dense temporary did not need, or where a reader applies a function with f(0) ≠ 0
to it (that reader visits every coordinate anyway).
Statements are taken in order, each seeing the formats chosen before it, so a
chain of sparse statements stays sparse. The choice is structural; at a call,
:func:`expected_fills` estimates from the operands' densities how full each chosen
temporary will be, and the program keeps a dense variant for operands that would
fill one (``spcomp/program_density.py``).
"""
from __future__ import annotations

import dataclasses

from ..errors import SpcompError
from ..formats import Format
from ..notation import Access, Assignment, Reduce, Sum, accesses, children, with_children
from ..notation.functions import densifying_calls
from . import lattice as lat
from .order import choose_order


@dataclasses.dataclass(frozen=True)
class Choice:
    """A temporary's chosen format and the sparse operands whose zeros bound it."""
    format: Format
    operands: tuple   # names, dimension by dimension, each in the order the writer reads them


def choose_temporary_formats(statements, temporaries, given=()) -> dict:
    """Temporary name -> :class:`Choice` for each temporary in ``temporaries`` not
    in ``given`` whose writer's zero structure makes some dimension sparse (the
    others keep their dense format). ``statements`` are checked Assignments."""
    stmts = list(statements)
    chosen: dict = {}
    for k in range(len(stmts)):
        a = stmts[k]  # as the choices before it left it
        name = a.lhs.tensor.name
        if name not in temporaries or name in given or a.accumulate:
            continue
        choice = _choice(a)
        if choice is None:
            continue
        trial = with_formats(stmts, {name: choice.format})
        if (all(_transposes(t) <= _transposes(s) for s, t in zip(stmts[k:], trial[k:]))
                and not any(acc.tensor.name == name for t in trial[k + 1:] for _, acc in densifying_calls(t.rhs))):
            chosen[name] = choice
            stmts = trial
    return chosen


def sparse_bound(a: Assignment) -> list:
    """Per dimension of ``a``'s left side: the names of the sparse operands the right
    side is zero without along that index (empty: the dimension is not sparse-bound).

    An operand bounds index ``k`` through a level that may leave ``k``'s coordinates
    out; where that level lies below a summed index ``j`` of the same operand, the
    temporary's ``k`` is the union of the operand's ``k`` over the ``j`` the sum
    visits, so it bounds ``k`` only where the sum's other factors are sparse in
    ``j`` too: ``Σ_j A[i,j]·B[j,k]`` of two sparse operands unites a few rows of
    ``B`` (sparse), ``Σ_n H[t,n]·W[n,d]`` with a dense ``H`` unites all of them
    (dense for any density that makes the n × d operand worth storing sparse)."""
    sums = _enclosing_sums(a.rhs)
    out = []
    for idx in a.lhs.indices:
        def key(acc, idx=idx):
            if _sparse_key(acc, idx) is None or any(_unites(acc, idx, s) for s in sums[id(acc)]):
                return None
            return acc.tensor.name, acc.indices
        L = lat.build(a.rhs, idx, key)
        if L.full or not L.points:
            out.append(())
            continue
        # the operands of its smallest points: B of {B, A·B} (exp(A)·B is zero wherever B is)
        names = {k[0] for p in L.points if not any(q < p for q in L.points) for k in p}
        out.append(tuple(dict.fromkeys(acc.tensor.name for acc in accesses(a.rhs) if acc.tensor.name in names)))
    return out


def _enclosing_sums(e, around=()) -> dict:
    """id(access) -> the Sum and Reduce nodes around it in ``e``."""
    if isinstance(e, Access):
        return {id(e): around}
    if isinstance(e, (Sum, Reduce)):
        around = around + (e,)
    out: dict = {}
    for c in children(e):
        out.update(_enclosing_sums(c, around))
    return out


def _unites(acc: Access, idx, s) -> bool:
    """Whether the sum ``s`` unites ``acc``'s ``idx`` coordinates over all of its
    index: ``acc`` stores ``idx`` below ``s.index``, and without ``acc`` the sum's
    body is not sparse in that index (some term has no sparse operand holding it)."""
    levels = [d for d, _part in acc.tensor.format.level_map()]
    mine = [acc.indices[d] for d in levels]
    if s.index not in mine or mine.index(s.index) > len(mine) - 1 - mine[::-1].index(idx):
        return False
    others = lat.build(s.body, s.index, lambda x: None if x is acc or x.tensor.format.is_dense
                       or s.index not in x.indices else (x.tensor.name, x.indices))
    return others.full


def with_formats(statements, formats: dict) -> list:
    """``statements`` with each tensor named in ``formats`` (name -> Format) stored so."""
    if not formats:
        return list(statements)

    def recast(e):
        if isinstance(e, Access):
            f = formats.get(e.tensor.name)
            return e if f is None else Access(dataclasses.replace(e.tensor, format=f), e.indices)
        return with_children(e, [recast(c) for c in children(e)])
    return [Assignment(recast(a.lhs), recast(a.rhs), a.accumulate) for a in statements]


def _choice(a: Assignment):
    """The Choice for the temporary ``a`` writes, or None (it stays dense)."""
    idx = a.lhs.indices
    if not idx or len(set(idx)) != len(idx):
        return None
    bound = sparse_bound(a)
    if not any(bound):
        return None
    try:
        order, _ = choose_order(a.lhs, a.rhs)
    except SpcompError:
        return None
    at = {i: n for n, i in enumerate(order)}
    dims = sorted(range(len(idx)), key=lambda d: at[idx[d]])
    spec = "".join("c" if bound[d] else "d" for d in dims)
    if dims != sorted(dims):
        spec += ":" + ",".join(map(str, dims))
    fmt = _named(Format.parse(spec))
    return Choice(fmt, tuple(dict.fromkeys(n for names in bound for n in names)))


def _sparse_key(acc: Access, idx):
    """The lattice key of ``acc`` for loop ``idx`` when a level storing ``idx`` may
    leave coordinates out (not full), else None (a dense dimension covers all)."""
    fmt = acc.tensor.format
    dims = {d for d, i in enumerate(acc.indices) if i == idx}
    if any(d in dims and not fmt.levels[l].full for l, (d, _part) in enumerate(fmt.level_map())):
        return (acc.tensor.name, acc.indices)
    return None


def _transposes(a: Assignment) -> set:
    """The tensors ``a``'s natural loop order reads through a transposed copy (or
    ``{None}`` when no loop order exists)."""
    try:
        _, transposed = choose_order(a.lhs, a.rhs)
    except SpcompError:
        return {None}
    return {acc.tensor.name for acc in transposed}


def _named(fmt: Format) -> Format:
    """``fmt`` under its preset name where it is one (csr, csc, dcsr, csf)."""
    for preset in (Format.csr(), Format.csc(), Format.dcsr()) + ((Format.csf(fmt.ndim),) if fmt.ndim > 2 else ()):
        if preset == fmt:
            return preset
    return fmt


def expected_fills(statements, names, shapes: dict, density: dict) -> dict:
    """Name -> the expected fraction of its coordinates that is stored, for each
    temporary in ``names`` (chosen sparse), from the inputs' ``shapes`` and
    ``density`` (stored / size; absent: 1), statement by statement so that a later
    temporary sees an earlier one's fill (each statement's index sizes are its
    own). A product summed over indices is
    :func:`~spcomp.lower.contract.product_density` (independent uniform nonzeros);
    anything else is bounded by the sum of its operands' densities (a union)."""
    from .contract import product_density
    from .normalize import factors, lift_sums, split_sums
    shapes, density = dict(shapes), dict(density)
    fills = {}
    for a in statements:
        sizes = {}
        for acc in accesses(a.rhs):
            for i, n in zip(acc.indices, shapes.get(acc.tensor.name, ())):
                sizes.setdefault(i.name, n)
        name = a.lhs.tensor.name
        shapes[name] = tuple(sizes.get(i.name, 1) for i in a.lhs.indices)
        if name not in names:
            continue
        _summed, body = split_sums(lift_sums(a.rhs))
        members = factors(body)
        if all(isinstance(f, Access) or not accesses(f) for f in members):
            fill = product_density([f for f in members if isinstance(f, Access)], a.lhs, sizes, density)
        else:
            fill = min(1.0, sum(density.get(acc.tensor.name, 1.0) for acc in accesses(a.rhs)))
        fills[name] = density[name] = fill
    return fills
