"""The lowerer's steps for the schedule's loop directives: ``split`` (nested too),
``pos`` / ``fuse`` position loops and dense fuses, and the loop order they shape.

A mixin of :class:`~spcomp.lower.lowerer.Lowerer`, kept apart so that file stays
about the nest it builds; the algorithms are in ``splittree.py``, ``possplit.py``
and ``densefuse.py``, these methods only keep the lowerer's state in step.
"""
from __future__ import annotations

import dataclasses

from ..errors import ScheduleError
from ..notation import accesses
from . import possparse, possplit
from . import split as split_mod
from . import splittree
from .densefuse import DenseFuse
from .densefuse import check_order as densefuse_check_order
from .order import choose_order


class LoopDirectives:
    """Split and position-loop steps of the lowering (state lives on the Lowerer)."""

    # ---------------------------------------------------------------- split
    def _check_splits(self, lhs, rhs):
        """Refuse splits that cannot apply; the user order in base indices."""
        self.split_pieces = {}
        if not self.opt.split:
            return self.opt.order
        names = {i.name for acc in [lhs] + accesses(rhs) for i in acc.indices}
        splittree.check(self.opt.split, names, lhs.tensor.format.is_dense)
        return splittree.order_for_graph(self.opt.order, self.opt.split, names)

    # ----------------------------------------------------- position loops
    def _position_loop(self, lhs, rhs, user_order):
        """The position loop's plan, checked; the user order with the operand's
        chain of loops first (possplit.plan_for). A lone fuse of two dense loops
        is a densefuse.DenseFuse instead (kept as ``fused``)."""
        self.pos_plan, order = possplit.plan_for(self.opt, lhs, rhs, user_order)
        self.fused = None
        if self.pos_plan is not None and not isinstance(self.pos_plan, DenseFuse) \
                and not lhs.tensor.format.is_dense:  # entries that follow the positions
            p = self.pos_plan
            possparse.check(p.spec, p.acc, lhs, p.level, self.opt, self.a.accumulate)
        if isinstance(self.pos_plan, DenseFuse):
            self.fused, self.pos_plan = self.pos_plan, None
            if self.opt.parallel == self.fused.name:  # the fused loop runs where its outer index's would
                self.opt = dataclasses.replace(self.opt, parallel=self.fused.outer.name)
        return order

    def _check_position_order(self, order, rhs) -> None:
        if self.pos_plan is not None:
            possplit.check_order(self.pos_plan, order, rhs)
        if self.fused is not None:
            densefuse_check_order(self.fused, order)

    def _position_parallel(self):
        """The chunk loop when it runs on threads, with its race strategy (possplit.race_plan)."""
        return possplit.race_plan(self.pos_plan, self.opt, self.lhs)

    def _position_assembly(self):
        """A sparse output's two phases by chunks of positions when they run on
        threads (possparse.build); None for one pass in order on one thread."""
        return possparse.build(self)

    def _choose_order(self, lhs, rhs, user_order):
        """choose_order, with a refused reorder explained in terms of split pieces."""
        try:
            return choose_order(lhs, rhs, user_order)
        except ScheduleError as e:
            if not self.opt.split:
                raise
            pieces = ", ".join(f"{b} runs where the later of {o}, {i} runs" for b, o, i, _f in self.opt.split)
            raise ScheduleError(f"{e} (the schedule splits loops: {pieces})") from None

    def _expand_splits(self, order):
        """Put the pieces of split indices into the loop order and the outer loops."""
        self.loop_order = list(order)
        if not self.opt.split:
            return
        self.split_pieces = splittree.pieces(self.opt.split, order)  # pieces of pieces too
        self.loop_order = splittree.expand(order, self.split_pieces, self.opt.order)
        splittree.check_reductions_adjacent(self.loop_order, set(order) - set(self.lhs.indices))
        self.outer = split_mod.restrict(self.loop_order, self.outer)
