"""``fuse`` of two dense loops: ``for f in 0..N_i*N_j`` with ``i = f / N_j``, ``j = f % N_j``.

A fuse of a CSR's row and column loops is a position loop (possplit.py). Where no
operand stores the inner index in a compressed level under the outer one, the two
loops are fused over their coordinates instead: one loop of ``N_i * N_j``
iterations, which threads split evenly (a dense output with few rows and many
columns, or the reverse, on all threads). Both indices must be indices of a dense
output (each iteration then stores its own element) and every access must locate
them (dense levels): a sparse level's loop has no fixed range to fuse.
"""
from __future__ import annotations

from dataclasses import dataclass

from ..errors import ScheduleError
from ..ir import nodes as n
from ..ir.types import I64
from ..notation import IndexVar, accesses


@dataclass
class DenseFuse:
    outer: IndexVar
    inner: IndexVar
    name: str       # the fused loop's name
    what: str       # the directive, for messages


def plan(spec, lhs, rhs, caps) -> DenseFuse:
    """The fuse of two dense loops ``spec`` names (possplit.PosSplit from a lone
    ``fuse``), checked; ScheduleError naming the directive otherwise."""
    by_name = {i.name: i for a in [lhs] + accesses(rhs) for i in a.indices}
    outer, inner = by_name[spec.parent], by_name[spec.index]
    what = spec.what
    if not lhs.tensor.format.is_dense or outer not in lhs.indices or inner not in lhs.indices:
        raise ScheduleError(f"{what}: fusing two dense loops needs both to be indices of a dense output "
                            f"({lhs!r} is {lhs.tensor.format.spec() or 'a scalar'}); fuse a CSR's row and column "
                            "loops to walk its nonzeros")
    for acc in accesses(rhs):
        fmt = acc.tensor.format
        for i in (outer, inner):
            if i in acc.indices and not fmt.is_dense:
                level = [acc.indices[d] for d in fmt.order].index(i)
                if not fmt.levels[level].locatable:
                    raise ScheduleError(f"{what}: {acc.tensor.name}'s level {level + 1} ({fmt.levels[level].spec()}) "
                                        f"stores {i.name} sparsely, so the loop over {i.name} has no fixed range "
                                        "to fuse")
    if not caps.host_threads:
        raise ScheduleError(f"{what}: fused loops run on the CPU backend only (backend {caps.name!r})")
    return DenseFuse(outer, inner, spec.outer, what)


def check_order(fuse: DenseFuse, order) -> None:
    """The inner loop directly inside the outer one."""
    k = order.index(fuse.outer)
    if k + 1 >= len(order) or order[k + 1] != fuse.inner:
        raise ScheduleError(f"{fuse.what}: the loop over {fuse.inner.name} must run directly inside the one over "
                            f"{fuse.outer.name}, but the loop order is {', '.join(i.name for i in order)}")


class DenseFuseEmission:
    """The LoopEmitter's step for a ``fuse`` of two dense loops (mixed into LoopEmitter,
    whose own steps it calls)."""

    def _emit_dense_fuse(self, fuse: DenseFuse, rest, expr, sink, env, depth) -> list:
        """The fused loop, for the LoopEmitter reaching the outer index."""
        i, j = fuse.outer, fuse.inner
        if not rest or rest[0] != j:
            raise ScheduleError(f"{fuse.what}: the loop over {j.name} must run directly inside the one over {i.name}")
        size_i, size_j = self.sizes[i], self.sizes[j]
        parallel = self.parallel is not None and i == self.parallel and depth == self.parallel_depth
        start, end = (self.lo, self.hi) if parallel else (n.i64(0), n.Binary("*", size_i, size_j))
        kind = self.opt.parallel_kind
        self._note(depth, f"for {fuse.name} in 0..N_{i.name}*N_{j.name}: {i.name} = {fuse.name} / N_{j.name}, "
                        f"{j.name} = {fuse.name} % N_{j.name}" + (f" (parallel: {kind})" if parallel else ""))
        f = n.Var(self.fresh(fuse.name), I64)
        ci, cj = n.Var(self.fresh(i.name), I64), n.Var(self.fresh(j.name), I64)
        inner = env.child()
        body = [n.Declare(ci, n.Binary("/", f, size_j)), n.Declare(cj, n.Binary("%", f, size_j))]
        for index, coord in ((i, ci), (j, cj)):
            inner.bound[index] = coord
            body += self._locates(index, expr, inner, coord)
            body += sink.enter(index, inner)
        body += self.nest(rest[1:], expr, sink, inner, depth + 1)
        body += sink.exit(j, inner) + sink.exit(i, inner)
        loop = [n.For(f, start, end, n.block(*body), parallel=kind if parallel else None)]
        return self._user_hints(loop, IndexVar(fuse.name))
