"""The host's part of a sparse output counted, scanned and filled inside a fused GPU launch.

A statement of a fused CUDA program run (``program_gpu.py``) whose output is
assembled in two phases runs them both, and the prefix sum between them, in the
run's one launch (:mod:`spcomp.lower.device_scan`). The host cannot allocate
between the phases, so it allocates before the launch: the per-row count arrays
(one ``rows + 1`` array per compressed level, the first of them the output's
``pos``), and the coordinate and value arrays at a capacity --
``runtime.launch.first_capacity``, the estimate a growable output starts at
(``launch.FIRST_CAPACITY`` forces it in tests). The launch writes each level's
total entries to ``needed``; when one exceeds its capacity the kernel fills
nothing and the host runs the launch again with room for exactly that many
(:meth:`SparseRows.grow`), as a bounded-append kernel is run again
(``runtime/call.py``). An output stored compressed first (``lower/device_compact.py``)
is allocated as its dense-first stand-in's arrays plus its own first level's
(``pos``, ``crd``, and level 1's ``pos`` and the row flags for unique levels),
and the result is cut in its own format. Before the launch a later statement of the run sees the
output as an empty tensor of its shape (it binds its sizes against it; its
arrays are the writer's own parameters in the kernel).
"""
from __future__ import annotations

import numpy as np

from .lower.assembly import ROW_POS
from .lower import device_scan
from .lower.device_compact import UNIQUE, first_kind
from .runtime.launch import first_capacity
from .runtime.outputs import Output, OutputLayout
from .runtime.plan import np_dtype, output_level_sizes
from .runtime.tensor import expand_output


class SparseRows:
    """A two-phase output's arrays for one fused launch, at a capacity per level."""

    def __init__(self, low, sizes: dict, storages: dict, out_indices, bits: int, limit: int, stored=None,
                 more: int = 0):
        notation = low.inspection.notation
        t = notation.lhs.tensor
        self.layout = OutputLayout(t.format, output_level_sizes(notation, sizes), bits, np_dtype(t.dtype))
        # an output stored compressed first (device_compact.py): ``low`` writes its dense-first stand-in
        self.stored = stored
        self.kind = first_kind(stored) if stored is not None else None
        flags = int(self.kind == UNIQUE)  # the row flags: their total and chunk sums follow the levels'
        self.shape = tuple(sizes[i.name] for i in notation.lhs.indices)
        self.first = low.output.assembly.first
        self.levels = len(t.format.levels)
        # ``more``: room for the entries of the run's sparse temporaries it reads, which the
        # estimate sees empty before the launch (their placeholders)
        capacity = first_capacity(low, sizes, storages, out_indices) + more
        if bits == 32:  # a level past the 32-bit limit overflows, and the launch runs again with 64-bit indices
            capacity = min(capacity, limit)
        self.capacity = {l: int(capacity) for l in range(self.first, self.levels)}
        self.needed = np.zeros(self.levels - self.first + flags, dtype=np.int64)
        self.chunk_rows = device_scan.SCAN_CHUNK
        self.chunks = max(-(-self.layout.dense_positions // self.chunk_rows), 1)
        self.chunk_sums = np.zeros((self.levels - self.first + flags) * self.chunks, dtype=np.int64)
        self._allocate()

    def _allocate(self) -> None:
        rows = self.layout.dense_positions
        index = self.layout.dtype_of(self.first, "pos")
        # per-row counts at [q + 1], then row starts: level first's are the output pos
        self.per_row = {l: np.zeros(rows + 1, dtype=index) for l in range(self.first, self.levels)}
        self.arrays = {(self.first, "pos"): self.per_row[self.first]}
        for l in range(self.first, self.levels):
            room = max(self.capacity[l], 1)  # no zero-length device arrays
            if l > self.first:
                self.arrays[(l, "pos")] = np.zeros(max(self.capacity[l - 1], 1) + 1, dtype=index)
            self.arrays[(l, "crd")] = np.zeros(room, dtype=index)
        self.arrays[(-1, "vals")] = np.zeros(max(self.capacity[self.levels - 1], 1), dtype=self.layout.dtype)
        self.top = {}  # the stored format's first level (and level 1's pos), written by the launch's last phase
        if self.kind is not None:
            crd = rows if self.kind == UNIQUE else self.capacity[self.first]
            self.top = {(0, "pos"): np.zeros(2, dtype=index), (0, "crd"): np.zeros(max(crd, 1), dtype=index)}
            if self.kind == UNIQUE:
                self.top[(1, "pos")] = np.zeros(rows + 1, dtype=index)
                self.top["flags"] = np.zeros(rows + 1, dtype=index)

    def out_arg(self, b):
        """The array of one of the fill's output parameters."""
        if b.role == ROW_POS:
            return self.per_row[b.level]
        return self.arrays[(b.level, b.array)]

    def extra_args(self) -> list:
        """The phased function's last arguments (``lower/device_scan.py``): rows, rows
        per chunk, chunks, each level's capacity, ``needed``, the chunk sums."""
        caps = [self.capacity[l] for l in sorted(self.capacity)]
        top = [self.top[key] for key in ((0, "pos"), (0, "crd"), (1, "pos"), "flags") if key in self.top]
        return [self.layout.dense_positions, self.chunk_rows, self.chunks, *caps, self.needed, self.chunk_sums, *top]

    def overflowed(self) -> bool:
        """Whether the launch counted more entries than a level holds."""
        return any(int(self.needed[l - self.first]) > self.capacity[l] for l in self.capacity)

    def most_needed(self) -> int:
        """The most entries a level counted (its positions must fit the index width)."""
        return int(self.needed[:self.levels - self.first].max())

    def grow(self, bits: int) -> None:
        """Room for exactly what the last launch counted (at least the room it had),
        zeroed again, at ``bits``-bit indices."""
        for l in self.capacity:
            self.capacity[l] = max(self.capacity[l], int(self.needed[l - self.first]))
        self.layout = OutputLayout(self.layout.fmt, self.layout.level_sizes, bits, self.layout.dtype)
        self.needed[:] = 0
        self._allocate()

    def result(self):
        """The output Tensor: each array cut to the entries the launch stored."""
        arrays = {**self.arrays, **self.top}
        return self._stored_layout().tensor(self.shape, lambda key, count, _dtype: arrays[key][:count])

    def placeholder(self):
        """An empty tensor of the output's shape and format (what a later statement of
        the run binds its sizes against before the launch)."""
        return self._stored_layout().tensor(self.shape, lambda key, count, dtype: np.zeros(count, dtype=dtype))

    def _stored_layout(self) -> OutputLayout:
        """The layout of the format the output is stored in (the stand-in's levels' sizes)."""
        if self.stored is None:
            return self.layout
        return OutputLayout(self.stored, self.layout.level_sizes, self.layout.bits, self.layout.dtype)


class BoundedAppends:
    """A serial statement's output appended into arrays of a fixed capacity (bounded
    appends, as a kernel of its own on the GPU: ``runtime/call.py``) in a fused launch:
    the statement stores what fits, counts every entry into ``needed``, and returns
    CAPACITY_STATUS when they did not fit (``program_gpu._refuse_overflow``), so the
    host runs the launch again with room for exactly that many."""

    def __init__(self, low, sizes: dict, storages: dict, out_indices, bits: int, limit: int):
        self.low, self.sizes = low, sizes
        capacity = first_capacity(low, sizes, storages, out_indices)
        self.capacity = int(min(capacity, limit) if bits == 32 else capacity)
        self.out = self._output(bits)

    def _output(self, bits: int) -> Output:
        out = Output(self.low, self.sizes, None, bits, False, False)
        out.capacity = self.capacity
        return out

    def out_arg(self, b):
        """The array of one of the statement's output parameters (``needed`` too)."""
        return self.out.arg(b, pointers=False)

    def extra_args(self) -> list:
        """None: the capacity is the statement's own ``capacity`` parameter."""
        return []

    def most_needed(self) -> int:
        """The entries the last launch counted."""
        return self.out.needed()

    def grow(self, bits: int) -> None:
        """Room for what the last launch counted, fresh arrays at ``bits``-bit indices."""
        self.capacity = max(self.capacity, self.out.needed())
        self.out = self._output(bits)

    def result(self):
        """The output Tensor, its arrays cut to the entries appended (dense levels under
        compressed ones expanded, as after a kernel of its own)."""
        expand = self.low.output.expand
        return self.out.result() if expand is None else expand_output(self.out.result(), expand)

    def placeholder(self):
        """An empty tensor of the output's shape and format."""
        return self.out.layout.tensor(self.out.shape, lambda key, count, dtype: np.zeros(count, dtype=dtype))


__all__ = ["SparseRows", "BoundedAppends"]
