"""Loop order from the iteration graph (DESIGN §5).

Every access to a tensor with a sparse level orders its indices by its mode
ordering; a sum nested under a non-product node (``relu(Σ_k ...)``) orders its
free indices before its own; a sparse output orders its indices by its levels.
A topological order that respects all of these is the loop order. When there is
none, the cheapest fix is to store some sparse inputs in another mode order:
the compiler picks the fewest such transpositions and says so with a warning.
"""
from __future__ import annotations

import itertools
from dataclasses import dataclass, field

from ..errors import ScheduleError, UnsupportedError
from ..formats import Format
from ..notation import Access, accesses, free_indices
from .blocked import level_indices
from .normalize import split_sums


def access_chain(a: Access) -> list:
    """The indices of ``a`` in storage (level) order (block pieces for a blocked format)."""
    if a.tensor.format.blocks is not None:
        return level_indices(a)
    return [a.indices[d] for d in a.tensor.format.order]


def needs_order(a: Access) -> bool:
    """All-dense accesses are located at any loop order; others are not."""
    return not a.tensor.format.is_dense


@dataclass
class OrderProblem:
    indices: list                 # every index var, first appearance order
    dense_only: set               # indices used only by all-dense accesses
    output_indices: list          # output indices in output storage order
    top_reductions: list          # reductions at the top of the right side
    trailing: set = field(default_factory=set)  # dense-only indices some dense access has last
    structural: set = field(default_factory=set)   # edges that never move
    input_edges: dict = field(default_factory=dict)  # access -> set of edges


def _chain_edges(chain) -> set:
    return {(a, b) for a, b in zip(chain, chain[1:]) if a != b}


def _nested_sum_edges(e) -> set:
    """free(S) -> every index of S, for each chain of sums below the top."""
    from ..notation import Reduce, Sum, children
    edges = set()

    def visit(x):
        if isinstance(x, Reduce):
            for f in free_indices(x):
                edges.add((f, x.index))
            visit(x.body)
            return
        if isinstance(x, Sum):
            free = free_indices(x)
            idx, body = split_sums(x)
            for i in idx:
                for f in free:
                    edges.add((f, i))
            visit(body)
            return
        for c in children(x):
            visit(c)

    _, body = split_sums(e)
    visit(body)
    return edges


def build_problem(lhs: Access, rhs) -> OrderProblem:
    top, body = split_sums(rhs)
    all_acc = [lhs] + accesses(rhs)
    seen = []
    for a in all_acc:
        for i in a.indices:
            if i not in seen:
                seen.append(i)
    for s in _all_sums(rhs):
        if s.index not in seen:
            seen.append(s.index)
    sparse_users = set()
    for a in accesses(rhs):
        if needs_order(a):
            sparse_users |= set(a.indices)
    if not lhs.tensor.format.is_dense:
        sparse_users |= set(lhs.indices)
    problem = OrderProblem(
        indices=seen,
        dense_only={i for i in seen if i not in sparse_users},
        output_indices=access_chain(lhs),
        top_reductions=list(top),
    )
    for a in all_acc:
        chain = access_chain(a)
        if chain and a.tensor.format.is_dense:
            problem.trailing.add(chain[-1])
    problem.structural |= _nested_sum_edges(rhs)
    if not lhs.tensor.format.is_dense:
        out_chain = access_chain(lhs)
        problem.structural |= _chain_edges(out_chain)
        # all output levels but the last come before every top reduction, so at
        # most the last output level needs a workspace
        for o in out_chain[:-1]:
            for r in top:
                problem.structural.add((o, r))
    for a in accesses(rhs):
        if needs_order(a):
            problem.input_edges.setdefault(a, set()).update(_chain_edges(access_chain(a)))
    return problem


def _all_sums(e) -> list:
    out = []
    stack = [e]
    from ..notation import Reduce, Sum, children
    while stack:
        x = stack.pop()
        if isinstance(x, (Sum, Reduce)):
            out.append(x)
        stack.extend(children(x))
    return out


def _priority(problem: OrderProblem, i):
    """Smaller runs further out. An index only dense operands use goes innermost
    when it is some dense operand's last (contiguous) dimension — the j of SpMM —
    and outermost otherwise — the token index t of ``Y[t,o] = X[t,i]*W[o,i]`` —
    so dense operands are walked row by row."""
    if i in problem.output_indices:
        rank = problem.output_indices.index(i)
    else:
        rank = len(problem.output_indices) + problem.indices.index(i)
    if i not in problem.dense_only:
        bucket = 1
    else:
        bucket = 2 if i in problem.trailing else 0
    return (bucket, rank)


def topo_order(problem: OrderProblem, edges: set):
    """Kahn's algorithm, preferring sparse-constrained indices, then output order."""
    nodes = list(problem.indices)
    preds = {n: set() for n in nodes}
    for a, b in edges:
        if a in preds and b in preds:
            preds[b].add(a)
    order = []
    remaining = set(nodes)
    while remaining:
        ready = [n for n in remaining if not (preds[n] & remaining)]
        if not ready:
            return None
        n = min(ready, key=lambda x: _priority(problem, x))
        order.append(n)
        remaining.remove(n)
    return order


def _respects(order, edges) -> bool:
    pos = {n: k for k, n in enumerate(order)}
    return all(pos[a] < pos[b] for a, b in edges if a in pos and b in pos)


def transposed_format(a: Access, order) -> Format:
    """The format of ``a``'s tensor with its levels reordered to follow ``order``."""
    pos = {n: k for k, n in enumerate(order)}
    dims = sorted(range(len(a.indices)), key=lambda d: (pos[a.indices[d]], d))
    return Format(a.tensor.format.levels, tuple(dims))


def choose_order(lhs: Access, rhs, user_order=None):
    """-> (loop order over every index, {access: transposed Format})."""
    problem = build_problem(lhs, rhs)
    all_input = set().union(*problem.input_edges.values()) if problem.input_edges else set()
    if user_order is not None:
        order = _complete_user_order(problem, user_order)
        if not _respects(order, problem.structural):
            bad = [(a.name, b.name) for a, b in problem.structural if not _respects(order, {(a, b)})]
            raise ScheduleError(f"reorder {[i.name for i in order]} puts {bad[0][1]} before {bad[0][0]}, "
                                "which the output format or a nested sum requires the other way round")
        for a, e in problem.input_edges.items():
            if not _respects(order, e):
                raise ScheduleError(
                    f"reorder {[i.name for i in order]} is not concordant with {a!r}: "
                    f"{a.tensor.name} is stored as {a.tensor.format} and would have to be stored as "
                    f"{transposed_format(a, order).spec()!r} for that loop order")
        return order, {}
    order = topo_order(problem, problem.structural | all_input)
    if order is not None:
        return order, {}
    if topo_order(problem, problem.structural) is None:
        hint = _output_hint(lhs, rhs, problem)
        raise UnsupportedError(hint)
    accs = list(problem.input_edges)
    for size in range(1, len(accs) + 1):
        for drop in itertools.combinations(accs, size):
            kept = set()
            for a in accs:
                if a not in drop:
                    kept |= problem.input_edges[a]
            order = topo_order(problem, problem.structural | kept)
            if order is not None:
                return order, {a: transposed_format(a, order) for a in drop}
    raise UnsupportedError("no loop order is concordant with the operands' formats")  # unreachable


def _complete_user_order(problem, user_order):
    names = {i.name: i for i in problem.indices}
    order = []
    for n in user_order:
        name = n if isinstance(n, str) else n.name
        if name not in names:
            raise ScheduleError(f"reorder names index {name!r}, which the expression does not use "
                                f"(indices: {', '.join(names)})")
        order.append(names[name])
    missing = [i for i in problem.indices if i not in order]
    return order + missing


def _output_hint(lhs, rhs, problem) -> str:
    out = lhs.tensor
    all_input = set().union(*problem.input_edges.values()) if problem.input_edges else set()
    relaxed = {e for e in problem.structural
               if not (e[0] in lhs.indices and e[1] in lhs.indices)}
    order = topo_order(problem, relaxed | all_input) or topo_order(problem, relaxed)
    msg = (f"output {out.name} in format {out.format} is not concordant with the loop order the "
           f"expression needs")
    if order is not None:
        fmt = transposed_format(lhs, order)
        msg += f"; store {out.name} as {fmt.spec()!r} instead"
    return msg
