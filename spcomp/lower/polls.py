"""Where a kernel looks at the interrupt flag (``PollInterrupt``, runtime/interrupt.py).

A long kernel must notice Ctrl-C within a fraction of a second, and a test in a
hot loop must cost nothing. One poll at the top of each outermost loop that
holds another loop does both: it runs once per row (or per iteration of a
co-iteration ``while``), and the inner loops, the ones LLVM vectorises, stay
free of it. A kernel whose outermost loop holds no other loop walks each of its
elements once: fast enough to finish without polling. Each thread's ``[lo, hi)``
chunk polls on its own, so a parallel call stops on every thread.
"""
from __future__ import annotations

import dataclasses

from ..ir import nodes as n


def poll_outer_loops(stmts: list, owned=()) -> list:
    """``stmts`` (a loop nest) with a ``PollInterrupt`` first in the body of each
    outermost loop (``For`` or ``While``, through ``Block`` s and ``If`` s) that
    holds another loop. ``owned``: the kernel's heap arrays live throughout the
    nest (workspaces, BLAS temporaries), freed by a poll that stops the kernel."""
    poll = n.PollInterrupt(tuple(owned))

    def go(stmts):
        out = []
        for s in stmts:
            if isinstance(s, (n.For, n.While)):
                if any(isinstance(x, (n.For, n.While)) for x in n.walk(s.body)):
                    s = dataclasses.replace(s, body=n.Block((poll,) + s.body.body))
            else:
                s = n.map_blocks(s, go)
            out.append(s)
        return out
    return go(stmts)


__all__ = ["poll_outer_loops"]
