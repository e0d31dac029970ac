"""Parallel reductions on host threads: each chunk adds into its own copy of the output.

A kernel whose parallel loop runs over a reduction index (``ThreadPlan.partials``:
a dot product's ``i``, the rows of a csr whose column sums it forms) would race on
its output if its chunks shared it. Instead the output's values parameter is a
per-chunk one (``Function.per_chunk``): chunk ``c`` adds into row ``c`` of a zeroed
``(chunks, size)`` array, and the rows are added into the output in chunk order
after the team joins (TACO's ``ParallelReduction`` / ``Temporary`` strategies).
The first chunk of a kernel that adds into its output (``+=``, or an output the
runtime zeroed) adds into the output itself: one copy fewer to zero and to add,
half the copies on two threads (a 64-token FFN's 512 KB output: ~0.1 ms a call).
The sum is reassociated against one thread's, so float results agree to rounding
(and are the same from call to call for one thread count). A call splits only
where zeroing and adding the copies costs little against its work
(:func:`worth`); on one thread the kernel adds into the output itself.
"""
from __future__ import annotations

import numpy as np

from .memory import data_ptr, malloc_view

# a call runs its copies only where zeroing and summing them (about two passes over
# ``chunks * size`` values) is at most this share of the call's work units
COPY_SHARE = 0.25


def out_slot(variant) -> int:
    """The position of the output's values among the kernel's parameters."""
    low = variant.lowered
    name = low.entry_function.per_chunk[0]
    for k, (role, b, _x) in enumerate(variant.arg_plan):
        if role == "out" and b.var.name == name:
            return k
    raise AssertionError(f"no output parameter {name}")  # pragma: no cover - lowerer's contract


def out_size(low, sizes) -> int:
    """The number of values the output holds (1 for a scalar)."""
    size = 1
    for i in low.inspection.notation.lhs.indices:
        size *= max(int(sizes[i.name]), 1)
    return size


def out_dtype(low) -> np.dtype:
    return np.dtype(low.inspection.notation.lhs.tensor.dtype)


def worth(low, sizes, threads: int, units: int) -> bool:
    """Whether copies of the output for ``threads`` chunks cost little against ``units``."""
    return 2 * out_size(low, sizes) * threads <= COPY_SHARE * units


def add_into(address: int, parts: np.ndarray, assign: bool = False) -> None:
    """Add the chunks' copies into the output at ``address``, in chunk order; with
    ``assign`` (a kernel that stores its whole output, ``OutputPlan.overwrites``: its
    output is not zeroed first) the sum replaces the output's values."""
    out = malloc_view(address, parts.shape[1], parts.dtype)
    if assign:
        out[...] = parts[0]
        parts = parts[1:]
    for row in parts:
        out += row


class PartialDriver:
    """Calls a native parallel driver with one zeroed copy of the output per chunk,
    then adds them into the output; takes the driver's own arguments (the output's
    address in ``slot``), so the fast path replays it like the driver."""
    __slots__ = ("driver", "slot", "count", "size", "dtype", "bounds", "assign")

    def __init__(self, driver, slot: int, count: int, size: int, dtype, bounds, assign: bool = False):
        self.driver, self.slot, self.count, self.size, self.dtype = driver, slot, count, size, dtype
        self.bounds = bounds  # the chunks' bounds array, whose address the arguments hold
        self.assign = assign  # the output is not zeroed: the sum replaces it (add_into)

    def __call__(self, *args):
        own = 0 if self.assign else 1  # chunks that add into the output itself (see module docstring)
        parts = np.zeros((self.count - own, self.size), self.dtype)
        where = np.empty(self.count, dtype=np.int64)
        where[:own] = args[self.slot]
        where[own:] = data_ptr(parts) + parts.strides[0] * np.arange(self.count - own, dtype=np.int64)
        a = list(args)
        a[self.slot] = data_ptr(where)
        status = self.driver(*a)
        if status == 0 and len(parts):
            add_into(args[self.slot], parts, self.assign)
        return status


def on_pool(run_ranges, fn, args, lohi, slot, size, dtype, n, pos, work, assign=False) -> list:
    """Run the chunks on the Python pool (no libgomp), each into its own copy."""
    copies = {}

    def call(lo, hi):
        a = list(args)
        a[lohi], a[lohi + 1] = lo, hi
        if lo > 0 or assign:  # the first chunk adds into the output itself (module docstring)
            part = np.zeros(size, dtype)
            copies[lo] = part
            a[slot] = data_ptr(part)
        return fn(*a)
    statuses = run_ranges(call, n, pos, None, work)
    if not any(statuses) and copies:
        add_into(args[slot], np.stack([copies[lo] for lo in sorted(copies)]), assign)
    return statuses
