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
sparsity: nnz(A) iterations over A's stored entries). A dense temporary also
costs its size (it is zeroed, written, read). Counts, not times: the tests
assert them.
"""
from __future__ import annotations

import itertools
import math
from dataclasses import dataclass

from ..errors import UnsupportedError
from ..formats import Format
from ..notation import Access, Assignment, Literal, Mul, TensorVar, free_indices
from .normalize import factors, lift_sums, push_sums, split_sums, wrap_sums
from .order import choose_order

#: a factorised plan must save at least this fraction of the one-statement cost
MIN_SAVING = 0.5


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
        return "; ".join(repr(s) for s in self.statements)


def statement_cost(a: Assignment, sizes: dict, density: dict) -> float:
    """Estimated innermost iterations of ``a``'s loop nest (see the module docstring)."""
    rhs = push_sums(lift_sums(a.rhs))
    try:
        order, _ = choose_order(a.lhs, rhs, None)
    except UnsupportedError:
        return math.inf
    rank = {i: k for k, i in enumerate(order)}
    out = frozenset(a.lhs.indices)
    return _cost(rhs, out, frozenset(), 1.0, rank, sizes, density)


def _cost(e, free: frozenset, bound: frozenset, count: float, rank, sizes, density) -> float:
    idx, body = split_sums(e)
    fs = factors(body)
    here = (free | frozenset(idx) | _loop_indices(fs)) - bound
    accs = [f for f in fs if isinstance(f, Access)]
    subs = [f for f in fs if not isinstance(f, (Access, Literal))]
    inner = count
    for i in here:
        inner *= sizes.get(i.name, 1)
    for f in accs:
        inner *= density.get(f.tensor.name, 1.0)
    total = inner
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


def _loop_indices(fs) -> frozenset:
    out = set()
    for f in fs:
        if isinstance(f, Access):
            out |= set(f.indices)
    return frozenset(out)


def plans(a: Assignment, sizes: dict, density: dict, dtype: str) -> list:
    """Every plan for ``a`` -- the statement itself, and each sequence of pairwise
    contractions into dense temporaries ``t1``, ``t2`` ... -- with its cost."""
    fs = product_factors(a)
    if fs is None:
        return [Plan((a,), statement_cost(a, sizes, density))]
    out = [Plan((a,), statement_cost(a, sizes, density))]
    accs = [f for f in fs if isinstance(f, Access)]
    lits = [f for f in fs if isinstance(f, Literal)]
    taken = {t for t in a.tensors} | {i.name for f in accs for i in f.indices}
    for seq in _sequences(accs, a.lhs, taken, dtype, sizes, density):
        stmts, dens, cost = [], dict(density), 0.0
        for lhs, group in seq[:-1]:
            s = Assignment(lhs, _sum_over(lhs, group))
            stmts.append(s)
            cost += statement_cost(s, sizes, dens) + _size(lhs, sizes)
            dens[lhs.tensor.name] = 1.0
        last = Assignment(a.lhs, _sum_over(a.lhs, seq[-1][1] + lits), a.accumulate)
        stmts.append(last)
        cost += statement_cost(last, sizes, dens)
        out.append(Plan(tuple(stmts), cost, tuple(s.lhs.tensor.name for s in stmts[:-1])))
    return out


def best(a: Assignment, sizes: dict, density: dict, dtype: str) -> Plan:
    """The cheapest plan, keeping the one statement unless a factorised plan costs
    at most :data:`MIN_SAVING` of it."""
    options = plans(a, sizes, density, dtype)
    single = options[0]
    cheapest = min(options, key=lambda p: p.cost)
    if cheapest.factorised and cheapest.cost <= MIN_SAVING * single.cost:
        return cheapest
    return single


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
        name = _fresh("t", taken)
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
            name = _fresh("t", set(names))
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


def _fresh(base: str, taken: set) -> str:
    k = 1
    while f"{base}{k}" in taken:
        k += 1
    taken.add(f"{base}{k}")
    return f"{base}{k}"


__all__ = ["MIN_SAVING", "Plan", "best", "fixed", "plans", "product_factors", "statement_cost"]
