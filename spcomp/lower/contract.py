"""Contraction order: a product of three or more operands as a program with tensor temporaries.

One statement ``y[i] = A[i,j]*B[j,k]*c[k]`` runs as one loop nest; with the sums
pushed (normalize.push_sums) it computes ``Σ_k B[j,k]*c[k]`` as a scalar for
every stored ``A[i,j]``: nnz(A)·rowlen(B) multiply-adds. The program
``t[j] = B[j,k]*c[k]; y[i] = A[i,j]*t[j]`` costs nnz(B) + nnz(A). This module
counts both, from the sizes and densities of the operands a call brings, and
enumerates the ways of contracting the factors pairwise into temporaries.

The cost model counts the innermost iterations of each loop nest, the way the
lowerer builds it: the sums pushed as the lowerer pushes them, the loop order it
chooses (order.choose_order), a pushed sum evaluated once per iteration of the
loops down to the last index it depends on, and each loop's iterations thinned
by the densities of the sparse factors fully bound there (independent uniform
sparsity: nnz(A) iterations over A's stored entries). Where two or more sparse
factors are co-iterated at one loop (an intersection walked by a two-finger
merge), the walk costs the sum of their fibers' lengths, not the entries they
share; an operand the loop order reads against its storage costs a copy of its
entries. A temporary is dense (it costs its size: zeroed, written, read) or, where
the product is expected to be sparse, compressed (csr-like; it costs its expected
entries, from independent uniform sparsity: a sum over m products of density p
leaves ``1 - (1-p)^m``), in either order of its indices. Counts, not times: the
tests assert them.
"""
from __future__ import annotations

import itertools
import math
from dataclasses import dataclass

from ..errors import UnsupportedError
from ..formats import Format
from ..notation import Access, Assignment, Literal, Mul, Reduce, Sum, TensorVar, accesses, children, free_indices
from .normalize import factors, lift_sums, push_sums, split_sums, wrap_sums
from .order import choose_order

#: a factorised plan must save at least this fraction of the one-statement cost
MIN_SAVING = 0.5
#: a temporary expected denser than this is only tried dense
SPARSE_TEMPORARY = 0.25
#: what an entry of a compressed temporary costs against a dense one's element
#: (appended with its coordinate, its row's workspace drained)
SPARSE_ENTRY = 3.0
#: what copying an entry of an operand read against its storage costs (convert.py's sort)
TRANSPOSE_ENTRY = 4.0


def product_factors(a: Assignment) -> list | None:
    """The access factors of ``a`` when its right side is a (summed) product of
    tensor accesses with at least three of order >= 1, else None."""
    idx, body = split_sums(lift_sums(a.rhs))
    fs = factors(body)
    if any(not isinstance(f, (Access, Literal)) for f in fs):
        return None
    accs = [f for f in fs if isinstance(f, Access)]
    if len([f for f in accs if f.indices]) < 3 or len(set(accs)) != len(accs):
        return None
    if any(len(set(f.indices)) != len(f.indices) for f in accs):
        return None
    return fs


@dataclass(frozen=True)
class Plan:
    """Statements to run in order (the last writes the output) and their cost."""
    statements: tuple  # of Assignment
    cost: float
    temporaries: tuple = ()

    @property
    def factorised(self) -> bool:
        return len(self.statements) > 1

    def describe(self) -> str:
        """The statements, each temporary stored sparse marked with its format."""
        return "; ".join(repr(s) + ("" if s.lhs.tensor.format.is_dense or k == len(self.statements) - 1
                                    else f" ({s.lhs.tensor.name}: {s.lhs.tensor.format})")
                         for k, s in enumerate(self.statements))


def statement_cost(a: Assignment, sizes: dict, density: dict, *, lowered=None) -> float:
    """Estimated innermost iterations of ``a``'s loop nest (see the module docstring).
    ``lowered``: ``(right side, loop order, operands read transposed)`` of the nest
    the kernel really built, where there is one (the model then counts that nest,
    not the one it would pick)."""
    if lowered is not None:
        rhs, order, transposed = lowered
    else:
        rhs = push_sums(lift_sums(a.rhs))
        try:
            order, moved = choose_order(a.lhs, rhs, None)
        except UnsupportedError:
            return math.inf
        transposed = {acc.tensor.name for acc in moved}
    rank = {i: k for k, i in enumerate(order)}
    out = frozenset(a.lhs.indices)
    cost = _cost(rhs, out, frozenset(), 1.0, rank, sizes, density)
    for name in transposed:
        acc = next((f for f in accesses(rhs) if f.tensor.name == name), None)
        if acc is not None:
            cost += TRANSPOSE_ENTRY * _entries(acc, sizes, density)
    return cost


def _entries(acc: Access, sizes: dict, density: dict) -> float:
    n = density.get(acc.tensor.name, 1.0)
    for i in acc.indices:
        n *= sizes.get(i.name, 1)
    return n


def _cost(e, free: frozenset, bound: frozenset, count: float, rank, sizes, density) -> float:
    idx, body = split_sums(e)
    fs = factors(body)
    loose = []  # accesses under a sum, a function...: they add loops, they thin nothing
    while any(not isinstance(f, (Access, Literal, Sum, Reduce, Mul)) for f in fs):
        opened = []
        for f in fs:
            if isinstance(f, (Access, Literal, Sum, Reduce, Mul)):
                opened.append(f)
            else:
                for c in children(f):
                    (loose if isinstance(c, Access) else opened).append(c)
        fs = [x for f in opened for x in (factors(f) if isinstance(f, Mul) else [f])]
    here = (free | frozenset(idx) | _loop_indices(fs + loose)) - bound
    accs = [f for f in fs if isinstance(f, Access)]
    subs = [f for f in fs if not isinstance(f, (Access, Literal))]
    inner = count
    for i in here:
        inner *= sizes.get(i.name, 1)
    for f in accs:
        inner *= density.get(f.tensor.name, 1.0)
    total = inner + _merge_walks(accs, here, bound, count, rank, sizes, density)
    everything = bound | here
    for s in subs:
        deps = free_indices(s)
        last = max((rank.get(i, -1) for i in deps), default=-1)
        prefix = frozenset(i for i in everything if rank.get(i, -1) <= last)
        c = count
        for i in prefix - bound:
            c *= sizes.get(i.name, 1)
        for f in accs:
            if set(f.indices) <= prefix:
                c *= density.get(f.tensor.name, 1.0)
        total += _cost(s, frozenset(deps), prefix, c, rank, sizes, density)
    return total


def _merge_walks(accs, here: frozenset, bound: frozenset, count: float, rank, sizes, density) -> float:
    """Steps of the merges: at a loop where two or more sparse factors end (each one's
    last index in loop order), the lowerer walks their fibers side by side, which
    costs the sum of their lengths per visit of that loop, whatever they share."""
    ending: dict = {}
    for f in accs:
        if f.tensor.format.is_dense or not f.indices:
            continue
        last = max(f.indices, key=lambda i: rank.get(i, -1))
        if last in here:
            ending.setdefault(last, []).append(f)
    total = 0.0
    for x, group in ending.items():
        if len(group) < 2:
            continue
        above = [i for i in here if rank.get(i, -1) < rank.get(x, -1)]
        visits = count
        for i in above:
            visits *= sizes.get(i.name, 1)
        known = bound | frozenset(above)
        for f in accs:
            if set(f.indices) <= known:
                visits *= density.get(f.tensor.name, 1.0)
        total += visits * sizes.get(x.name, 1) * sum(density.get(f.tensor.name, 1.0) for f in group)
    return total


def _loop_indices(fs) -> frozenset:
    out = set()
    for f in fs:
        if isinstance(f, Access):
            out |= set(f.indices)
    return frozenset(out)


def plans(a: Assignment, sizes: dict, density: dict, dtype: str) -> list:
    """Every plan for ``a`` -- the statement itself, and each sequence of pairwise
    contractions into temporaries ``t1``, ``t2`` ..., each stored dense or
    compressed (in either order of its indices) -- with its cost."""
    out = [Plan((a,), statement_cost(a, sizes, density))]
    fs = product_factors(a)
    if fs is None:
        return out
    accs = [f for f in fs if isinstance(f, Access)]
    lits = [f for f in fs if isinstance(f, Literal)]
    taken = {t for t in a.tensors} | {i.name for f in accs for i in f.indices}
    for seq in _sequences(accs, a.lhs, taken, dtype, sizes, density):
        for storage in itertools.product(STORAGES, repeat=len(seq) - 1):
            plan = _priced(a, seq, storage, lits, sizes, density)
            if plan is not None:
                out.append(plan)
    return out


#: how a temporary may be stored: dense, compressed in its indices' order, or reversed
STORAGES = ("dense", "compressed", "compressed, reversed")


def _priced(a: Assignment, seq, storage, lits, sizes, density):
    """The plan of one contraction sequence with its temporaries stored as ``storage``
    says, or None where a storage does not apply (a dense product, a reversed vector)."""
    stmts, dens, cost, stored = [], dict(density), 0.0, {}
    for (lhs, group), how in zip(seq[:-1], storage):
        group = [stored.get(f, f) for f in group]
        placed = _stored(lhs, how, group, sizes, dens)
        if placed is None:
            return None
        target, fill = placed
        s = Assignment(target, _sum_over(target, group))
        stmts.append(s)
        cost += statement_cost(s, sizes, dens) + _temporary_cost(target, fill, sizes)
        dens[target.tensor.name] = 1.0 if target.tensor.format.is_dense else fill
        stored[lhs] = target
    last = Assignment(a.lhs, _sum_over(a.lhs, [stored.get(f, f) for f in seq[-1][1]] + lits), a.accumulate)
    stmts.append(last)
    cost += statement_cost(last, sizes, dens)
    return Plan(tuple(stmts), cost, tuple(s.lhs.tensor.name for s in stmts[:-1]))


def _stored(lhs: Access, how: str, members: list, sizes: dict, density: dict):
    """``(the temporary's access stored as ``how``, its expected fill)`` or None."""
    if how == "dense":
        return lhs, 1.0
    n = len(lhs.indices)
    if n == 0 or (how != "compressed" and n != 2):
        return None
    fill = product_density(members, lhs, sizes, density)
    if fill > SPARSE_TEMPORARY:
        return None
    indices = lhs.indices if how == "compressed" else lhs.indices[::-1]
    fmt = Format.parse("c" if n == 1 else "d" + "c" * (n - 1))
    t = lhs.tensor
    return Access(TensorVar(t.name, t.order, fmt, t.dtype), tuple(indices)), fill


def product_density(members: list, lhs: Access, sizes: dict, density: dict) -> float:
    """The expected fraction of ``lhs``'s coordinates that the product of ``members``
    summed over the indices ``lhs`` drops leaves nonzero, from independent uniform
    sparsity: each coordinate sums m products, each nonzero with probability p."""
    p = 1.0
    for f in members:
        if isinstance(f, Access):
            p *= density.get(f.tensor.name, 1.0)
    if p >= 1.0:
        return 1.0
    m = 1.0
    for i in dict.fromkeys(i for f in members if isinstance(f, Access) for i in f.indices):
        if i not in lhs.indices:
            m *= sizes.get(i.name, 1)
    return -math.expm1(m * math.log1p(-p))


def _temporary_cost(target: Access, fill: float, sizes: dict) -> float:
    if target.tensor.format.is_dense:
        return _size(target, sizes)
    return SPARSE_ENTRY * fill * _size(target, sizes)


def program_cost(statements, sizes: dict, density: dict) -> float:
    """The model's cost of a program of products (a fixed factorisation): each
    temporary dense, or compressed at its expected fill."""
    dens, cost = dict(density), 0.0
    for s in statements[:-1]:
        fill = 1.0
        if not s.lhs.tensor.format.is_dense:
            idx, body = split_sums(lift_sums(s.rhs))
            fill = product_density(factors(body), s.lhs, sizes, dens)
        cost += statement_cost(s, sizes, dens) + _temporary_cost(s.lhs, fill, sizes)
        dens[s.lhs.tensor.name] = fill
    return cost + statement_cost(statements[-1], sizes, dens)


def ranked(a: Assignment, sizes: dict, density: dict, dtype: str, single: float | None = None) -> list:
    """The plans worth running, best first: factorised ones that cost at most
    :data:`MIN_SAVING` of the statement as written (``single``: its cost when the
    caller counted the nest it really built), then the statement itself."""
    options = plans(a, sizes, density, dtype)
    own = options[0] if single is None else Plan(options[0].statements, single)
    cheaper = sorted((p for p in options[1:] if p.cost <= MIN_SAVING * own.cost), key=lambda p: p.cost)
    return cheaper + [own]


def best(a: Assignment, sizes: dict, density: dict, dtype: str) -> Plan:
    """The cheapest plan, keeping the one statement unless a factorised plan costs
    at most :data:`MIN_SAVING` of it."""
    return ranked(a, sizes, density, dtype)[0]


def fixed(a: Assignment, groups: tuple, dtype: str) -> Plan:
    """The plan ``Schedule().factorize(*groups)`` asks for: each group of operand
    names (earlier groups' temporaries are ``t1``, ``t2`` ...) contracted in turn."""
    fs = product_factors(a)
    if fs is None:
        raise UnsupportedError(f"factorize: {a!r} is not a product of three or more tensors")
    accs = {f.tensor.name: f for f in fs if isinstance(f, Access)}
    lits = [f for f in fs if isinstance(f, Literal)]
    stmts = []
    taken = set(a.tensors) | {i.name for f in accs.values() for i in f.indices}
    for k, group in enumerate(groups):
        missing = [g for g in group if g not in accs]
        if missing or len(group) < 2:
            raise UnsupportedError(f"factorize group {group!r}: names {', '.join(missing) or 'too few operands'}; "
                                   f"the operands left are {', '.join(accs)}")
        members = [accs.pop(g) for g in group]
        name = fresh_name("t", taken)
        rest = list(accs.values())
        lhs = _temporary(name, members, rest, a.lhs, dtype)
        stmts.append(Assignment(lhs, _sum_over(lhs, members)))
        accs[name] = lhs
    stmts.append(Assignment(a.lhs, _sum_over(a.lhs, list(accs.values()) + lits), a.accumulate))
    return Plan(tuple(stmts), math.nan, tuple(s.lhs.tensor.name for s in stmts[:-1]))


def _sequences(accs, out: Access, taken: set, dtype: str, sizes, density):
    """Each way to contract pairs of factors into temporaries until two remain,
    as ``[(temporary Access, its factors), ..., (None, the last statement's factors)]``."""
    def go(current, steps, names):
        if len(current) <= 2:
            if steps:
                yield steps + [(None, list(current))]
            return
        for x, y in itertools.combinations(range(len(current)), 2):
            pair = [current[x], current[y]]
            rest = [f for k, f in enumerate(current) if k not in (x, y)]
            name = fresh_name("t", set(names))
            lhs = _temporary(name, pair, rest, out, dtype)
            yield from go(rest + [lhs], steps + [(lhs, pair)], names | {name})
        if steps:  # stop early: the rest in one statement
            yield steps + [(None, list(current))]
    yield from go(list(accs), [], set(taken))


def _temporary(name: str, members: list, rest: list, out: Access, dtype: str) -> Access:
    """A dense temporary for the product of ``members``: it keeps the indices the
    rest of the product or the output still uses, in order of first use."""
    used = set(out.indices)
    for f in rest:
        used |= set(f.indices)
    keep = [i for i in dict.fromkeys(i for f in members for i in f.indices) if i in used]
    fmt = Format.dense(len(keep)) if keep else Format(())
    return Access(TensorVar(name, len(keep), fmt, dtype), tuple(keep))


def _sum_over(lhs: Access, members: list):
    body = members[0]
    for f in members[1:]:
        body = Mul(body, f)
    summed = [i for i in dict.fromkeys(i for f in members if isinstance(f, Access) for i in f.indices)
              if i not in lhs.indices]
    return wrap_sums(summed, body)


def _size(lhs: Access, sizes: dict) -> float:
    n = 1.0
    for i in lhs.indices:
        n *= sizes.get(i.name, 1)
    return n


def fresh_name(base: str, taken: set) -> str:
    """``base1``, ``base2`` ...: the first not in ``taken``, which then holds it too."""
    k = 1
    while f"{base}{k}" in taken:
        k += 1
    taken.add(f"{base}{k}")
    return f"{base}{k}"


__all__ = ["MIN_SAVING", "Plan", "best", "fixed", "fresh_name", "plans", "product_density", "product_factors", "program_cost",
           "ranked", "statement_cost"]
