"""An element-wise epilogue on a reduction, split off so that the reduction keeps its loop order.

``O[t,d] = H[t,n]*Wd[n,d] + b[d]`` nests the sum under the ``+``: the loops of the
sum's free indices (t, d) must then enclose its own (n), so the nest walks row t of
H once for every d and reads Wd by columns (a transposed copy of Wd at each call).
Written alone, ``t1[t,d] = H[t,n]*Wd[n,d]`` loops t, n, d: each stored H[t,n]
scales a row of Wd into row t of t1. :func:`split` finds the sums whose own
statement would loop a summed index above one of its free indices and returns the
program ``t1[t,d] = H[t,n]*Wd[n,d]; O[t,d] = t1[t,d] + b[d]``; a program runs the
epilogue inside the producer's loop over rows, on a row of workspace where nothing
else reads the temporary (spcomp/program.py), so no whole temporary is written.

A sum whose own order puts its free indices first (``y[i] = A[i,j]*x[j] + z[i]``)
loses nothing under the epilogue and is left where it is.
"""
from __future__ import annotations

from ..errors import SpcompError
from ..formats import Format
from ..notation import Access, Assignment, Sum, TensorVar, accesses, free_indices
from .contract import Plan, fresh_name
from .normalize import lift_sums, nested_sums, push_sums, replace, split_sums
from .order import choose_order


def split(a: Assignment) -> Plan | None:
    """The program that runs each reduction of ``a`` nested under an element-wise
    epilogue as a statement of its own (dense temporaries ``t1``, ``t2`` ...), or
    None when no reduction would loop differently alone."""
    rhs = lift_sums(a.rhs)
    if split_sums(rhs)[0]:
        return None  # the sum is the whole right side: nothing sits on top of it
    taken = set(a.tensors) | {i.name for i in a.lhs.indices}
    statements, final = [], rhs
    for s in nested_sums(rhs):
        if not isinstance(s, Sum) or not free_indices(s):
            continue  # max/min reductions, and scalars (hoisted out of every loop already)
        temporary = _temporary(s, a, taken)
        if temporary is None or not _reorders(temporary, s):
            continue
        statements.append(Assignment(temporary, s))
        final = replace(final, s, temporary)
    if not statements:
        return None
    statements.append(Assignment(a.lhs, final, a.accumulate))
    return Plan(tuple(statements), float("nan"), tuple(s.lhs.tensor.name for s in statements[:-1]))


def _temporary(s: Sum, a: Assignment, taken: set) -> Access | None:
    """A dense temporary for ``s``: its free indices in the output's order, then the
    others in order of appearance; the compute type of the statement."""
    free = free_indices(s)
    ordered = [i for i in a.lhs.indices if i in free]
    ordered += [i for i in dict.fromkeys(i for acc in accesses(s) for i in acc.indices)
                if i in free and i not in ordered]
    if len(ordered) != len(free):
        return None
    name = fresh_name("t", taken)
    dtype = "float64" if any(t.dtype == "float64" for t in a.tensors.values()) else "float32"
    return Access(TensorVar(name, len(ordered), Format.dense(len(ordered)), dtype), tuple(ordered))


def _reorders(temporary: Access, s: Sum) -> bool:
    """Whether ``temporary = s`` alone loops one of the summed indices above one of
    its free ones (what nesting ``s`` under an epilogue forbids)."""
    try:
        order, _ = choose_order(temporary, push_sums(lift_sums(s)), None)
    except SpcompError:
        return False
    rank = {i: k for k, i in enumerate(order)}
    summed, _body = split_sums(s)
    first_summed = min(rank.get(i, len(order)) for i in summed)
    return any(rank.get(i, -1) > first_summed for i in temporary.indices)


__all__ = ["split"]
