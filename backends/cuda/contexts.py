"""The contexts CUDA code is emitted in (emit.py's docstring: kernel, per-thread,
team, single) and the mappings a grid-level loop may have."""
from __future__ import annotations

from dataclasses import dataclass

from spcomp.ir import nodes as n

# the mappings a grid-level loop may have (of ir.nodes.PARALLEL_MAPPINGS; "gpu-lane" is a member loop's)
GRID_MAPPINGS = ("gpu-thread", "threads", "gpu-block", "gpu-warp")


@dataclass
class Ctx:
    kind: str                 # 'serial' | 'kernel' | 'thread' | 'block' | 'warp' | 'single'
    member: bool = False      # per-thread code inside a member loop (no Return, no Allocate)
    body: n.Block | None = None   # for teams: the team loop's body (hazard analysis)
    where: str = ""           # for messages: the loop we are in


def describe_loop(s: n.For) -> str:
    """``the gpu-block loop over `i``` (for messages)."""
    return f"the {s.parallel} loop over `{s.var.name}`" if s.parallel else f"the loop over `{s.var.name}`"
