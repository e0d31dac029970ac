"""The workspace a sparse output row is gathered in (Gustavson): a dense row over the
output's last index, a bitmap of the coordinates touched and their list, used where
a reduction loop runs outside that index (the emitter drains it in order)."""
from __future__ import annotations

from ..errors import UnsupportedError
from ..ir import nodes as n
from ..ir.types import I64, ptr
from .emitter import BITS_PER_STEP
from .order import access_chain


def make_workspace(lhs, scatter, position, sizes, compute, fresh) -> dict:
    """The workspace's variables, prologue and epilogue, for output ``lhs`` whose
    loops ``scatter`` run outside its last index (``position``: loop -> its place)."""
    last = access_chain(lhs)[-1]
    first_scatter = min(position[r] for r in scatter)
    if position[last] < first_scatter:
        raise UnsupportedError("internal: workspace not needed")
    size = sizes[last]
    values = n.Var(fresh("workspace"), ptr(compute))
    bits = n.Var(fresh("workspace_bits"), ptr(I64))
    words = n.Var(fresh("workspace_words"), I64)
    touched = n.Var(fresh("workspace_list"), ptr(I64))
    count = n.Var(fresh("workspace_count"), I64)
    return {
        "index": last, "values": values, "bits": bits, "words": words, "touched": touched, "count": count,
        "prologue": [n.Comment(f"workspace: a dense row over {last.name}, a bitmap of the touched "
                               "coordinates and their list"),
                     n.Declare(words, n.Binary("/", n.Binary("+", size, n.i64(63)), n.i64(64))),
                     # (written before read: a coordinate's first touch stores, WorkspaceSink)
                     n.Allocate(values, n.Binary("max", size, n.i64(1)), zero=False),
                     n.Allocate(bits, n.Binary("max", words, n.i64(1)), zero=True),
                     # BITS_PER_STEP spare slots for the in-order refill (_bitmap_to_list)
                     n.Allocate(touched, n.Binary("+", size, n.i64(BITS_PER_STEP)), zero=False)],
        "epilogue": [n.Free(values), n.Free(bits), n.Free(touched)],
        "arrays": [values, bits, touched],  # heap arrays live throughout the nest
        "start": first_scatter,
    }
