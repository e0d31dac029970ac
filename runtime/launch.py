"""Running a call's machine code: how much work it is, how it is split, what its status means.

A parallel kernel takes its outer loop's bounds ``[lo, hi)``. A call either runs
it once over the whole range (small work, one thread, or a GPU grid), through
the kernel's native libgomp driver over balanced chunks, or on the Python pool.
The work estimate (:func:`work`) decides, from the thread plan the lowerer
recorded: rows, the nonzeros a ``pos`` array counts, and what each nonzero's
nested loops walk. The same facts size a growable output's first allocation.
"""
from __future__ import annotations

import weakref

import numpy as np

from spcomp.errors import KernelRuntimeError, PackedOverflowError
from spcomp.ir import nodes as irn
from spcomp.lower.split import run_time_factor as split_factor

from . import forksafe, interrupt, partials
from . import threads as _threads
from .memory import data_ptr
from .operands import Dense

# Work of one iteration of a dense loop nested under a sparse one, in units of a
# sparse nonzero's: such loops run vectorised (SpMM's k loop: 0.23 ns per nonzero
# and column against SpMV's 0.7 ns per nonzero on a Zen 4), so MTTKRP's R=16 loop
# makes each nonzero weigh 4 (docs/performance.md, "Threads").
DENSE_ITERATION_WORK = 0.25
# Work of starting one segment of a sparse level nested under a balanced nonzero (a
# CSF fiber: TTV's k loop for one (i, j)): the loop's start, its mispredicted exit
# and the store after it. Measured on TTV csf (Intel Xeon, 1 thread): ~3.5 ns a
# fiber against ~0.45 ns a nonzero and ~0.5 ns a calibration unit, so 200³ 1 %
# (80k nonzeros in 35k fibers of 2.3) is ~2.5x the work its nonzeros count
# (docs/performance.md, "csf kernels on threads"); 6 keeps the estimate a bit low.
SEGMENT_WORK = 6
# a growable output's first capacity counts at most this many times the inputs'
# stored entries from the products its loops form (initial_capacity)
PRODUCT_GUESS_CAP = 16


def parallel_extent(low, sizes, storages) -> int:
    """Trip count of the parallel loop: its index's size, a split piece's share, or
    the number of positions of the top compressed level it walks."""
    th = low.threads
    if th.positions is not None:
        pos = storages[th.positions[0]].levels[th.positions[1]]["pos"]
        n = int(pos[-1]) if len(pos) else 0
        if th.split:  # chunks of a position loop (lower/possplit.py)
            factor = split_factor(th.split[0], n)
            n = -(-n // factor)
        return n
    n = sizes[th.parallel]
    if th.fused is not None:  # two dense loops run as one (lower/densefuse.py)
        n *= sizes[th.fused]
    if th.split:
        factor, outer = th.split
        factor = split_factor(factor, n)
        n = -(-n // factor) if outer else min(factor, n)
    return n


def balance_pos(low, storages):
    """The pos array that measures each row's work, when the kernel names one (not
    for a split piece, whose chunks are blocks of rows)."""
    th = low.threads
    if th.balance is None or th.split:
        return None
    return _level_pos(th.balance, storages)


def _level_pos(balance, storages):
    name, level = balance
    t = storages.get(name)
    if t is None or isinstance(t, Dense):
        return None
    return t.levels[level].get("pos")


def segment_scale(low, storages) -> float:
    """The product of the mean segment lengths of the sparse levels a balanced
    nonzero's nested loops walk (``ThreadPlan.work_scale``); 1 when none."""
    return _segments(low, storages)[0]


def _segments(low, storages) -> tuple:
    """(the product of the nested levels' mean segment lengths, the segments a
    balanced nonzero starts in them: one of the first nested level, then one per
    entry of each level above a further one)."""
    per, started = 1.0, 0.0
    for name, level in low.threads.work_scale:
        t = storages.get(name)
        inner = t.levels[level].get("pos") if t is not None and not isinstance(t, Dense) else None
        if inner is not None and len(inner) > 1:
            started += per
            per *= max(int(inner[-1]) / (len(inner) - 1), 1.0)
    return per, started


def _nested_chain(low, storages, sizes) -> tuple:
    """The pos arrays of the levels of the balanced tensor nested right under its
    balanced level (a CSF tensor's fibers and their entries), and the weight of a
    leaf entry (its dense loops at DENSE_ITERATION_WORK each, at least 1)."""
    th = low.threads
    if not th.work_scale or th.balance is None:
        return (), 1.0
    name, level = th.balance
    t = storages.get(name)
    chain = []
    for depth, (inner_name, inner_level) in enumerate(th.work_scale):
        if inner_name != name or inner_level != level + 1 + depth or t is None or isinstance(t, Dense):
            break
        inner = t.levels[inner_level].get("pos")
        if inner is None or len(inner) == 0:
            break
        chain.append(inner)
    dense = 1
    for index in th.work_dense:
        dense *= max(int(sizes.get(index, 1)), 1)
    return tuple(chain), max(dense * DENSE_ITERATION_WORK, 1.0)


def nested_weights(low, storages, pos, sizes, chain=None):
    """Cumulative work at each index of the parallel loop, for cutting it into
    chunks: where the balanced level's entries head deeper levels of the same tensor
    (a CSF tensor's fibers under each top position), SEGMENT_WORK for each segment
    they start plus the leaf entries under them (times the dense loops inside), so a
    position with long fibers weighs more than one with as many short ones; else
    ``pos`` itself (a row weighs its entries)."""
    if pos is None:
        return None
    chain, leaf = chain or _nested_chain(low, storages, sizes)
    if not chain:
        return pos
    at, started = np.asarray(pos, dtype=np.int64), np.zeros(len(pos), dtype=np.float64)
    for inner in chain:
        started += at * SEGMENT_WORK  # each entry here starts a segment of the next level
        at = np.asarray(inner, dtype=np.int64)[at]
    return started + at * leaf


def work(n, pos, sizes, low, storages) -> int:
    """Work units of a call: with a balancing pos array, rows + its nonzeros times
    the mean length of the sparse segments each nonzero walks in its nested loops
    (``work_scale``, SpGEMM's rows of B, a CSF tensor's fibers) and times its nested
    dense loops' iterations (``work_dense``, SpMM's k) at DENSE_ITERATION_WORK each,
    plus SEGMENT_WORK for each nested segment it starts; else the
    dense iteration space. A split piece's chunks are not balanced by a pos array,
    but its whole loop's nonzeros still measure the call (else a split SpMV counted
    N_i*N_j units and always split)."""
    if pos is None and low.threads.split and low.threads.balance is not None:
        pos = _level_pos(low.threads.balance, storages)
        if pos is not None:
            n = max(len(pos) - 1, 0)
    if pos is not None:
        dense = 1
        for index in low.threads.work_dense:
            dense *= max(int(sizes.get(index, 1)), 1)
        scale, started = _segments(low, storages)
        per = scale * max(dense * DENSE_ITERATION_WORK, 1.0) + started * SEGMENT_WORK
        return n + int((int(pos[-1]) if len(pos) else 0) * per)
    total = 1  # no nonzero count to go by: the loop nest's dense iteration space bounds it
    for v in sizes.values():
        total *= max(int(v), 1)
    return total


def initial_capacity(low, sizes, storages, out_indices) -> int:
    """Entries to allocate for an output the kernel appends to (it doubles them
    when they run out; the output trims them when much is unused): at least the
    sparse inputs' stored entries, and the products a balanced nonzero's nested
    sparse loops form when known (SpGEMM: nnz(A) times B's mean row length, which
    is nnz(C) up to collisions), never more than the output's dense size.
    Starting at nnz(A) + nnz(B), SpGEMM's output grew three times a call."""
    sparse = [t.nnz for t in storages.values() if not isinstance(t, Dense) and not t.format.is_dense]
    # with a sparse operand the dense ones say nothing of the output's size (SDDMM's
    # D and E counted made 2.96M entries for 400k, trimmed and faulted in each call)
    guess = max(1024, sum(sparse) if sparse else sum(t.nnz for t in storages.values()))
    pos = balance_pos(low, storages) if low.threads.work_scale else None
    if pos is not None and len(pos):
        # products can far exceed the result (many collisions): past PRODUCT_GUESS_CAP
        # times the inputs the arrays grow instead of starting far above the result
        products = int(int(pos[-1]) * segment_scale(low, storages))
        guess = max(guess, min(products, PRODUCT_GUESS_CAP * guess))
    dense = 1
    for i in out_indices:
        dense *= max(int(sizes[i]), 1)
    return max(1, min(guess, dense))


# when set, every growable output starts at this many entries instead of the
# estimate (tests: force growth, or a second GPU launch)
FIRST_CAPACITY: int | None = None


def first_capacity(low, sizes, storages, out_indices) -> int:
    """The first capacity of a growable output: FIRST_CAPACITY, else initial_capacity."""
    if FIRST_CAPACITY is not None:
        return FIRST_CAPACITY
    return initial_capacity(low, sizes, storages, out_indices)


def call_work(caps, low, plain, sizes, storages) -> int:
    """A host-thread call's work units (:func:`work`), for :func:`interrupt.run`: 0
    where the target has no host threads (GPU kernels are neither stopped nor
    launched from another thread); a lowering without a parallel loop (the one-pass
    variant) is measured by the ``plain`` one's, the dense iteration space when
    neither has one."""
    if not caps.host_threads:
        return 0
    if low.threads.parallel is None:
        low = plain
    n = parallel_extent(low, sizes, storages) if low.threads.parallel is not None else 0
    return work(n, balance_pos(low, storages) if n else None, sizes, low, storages)


class WiderIndices(Exception):
    """A 32-bit kernel's output got more entries than its positions hold: the call
    is run again with the 64-bit kernel (Kernel.__call__). Never reaches the user."""


def raise_status(status, out, output_name: str, expression: str):
    """The exception a kernel's nonzero status stands for."""
    if status == irn.STATUS_INTERRUPTED:  # the interrupt flag was set: Ctrl-C (interrupt.py)
        raise KeyboardInterrupt
    if status == irn.STATUS_INDEX_OVERFLOW:
        raise WiderIndices(output_name)
    if status == irn.STATUS_PACKED_OVERFLOW and out is not None:
        largest = out.largest_count()
        raise PackedOverflowError(
            f"output {output_name}: a block got {largest} nonzeros but the packed-block level "
            f"has K={out.packed_k()} slots; compile with a larger K (e.g. twell(B=..,K={largest}))",
            largest_count=largest)
    raise KernelRuntimeError(f"kernel for {expression!r} failed: "
                             f"{irn.STATUS_CODES.get(status, f'status {status}')}")


# guards every Launcher's bounds cache (see Launcher.bounds)
_BOUNDS_LOCK = forksafe.Lock()


class Launcher:
    """Runs a kernel's parallel loop for one Kernel: the call's split, the native
    driver, and the row bounds it is handed (cached per pos array)."""

    def __init__(self, target):
        self.target = target
        self.caps = target.capabilities
        self.host_threads = self.caps.host_threads
        self.bounds_cache: dict = {}
        self.weights_cache: dict = {}  # (id(pos), nested levels, leaf weight) -> (weakref to pos, weights)
        calibrate = getattr(target, "split_threshold", None)
        if self.host_threads and calibrate is not None:
            _threads.set_calibrator(calibrate)

    def splits(self, low, sizes, storages) -> bool:
        """Whether a host-thread call of this lowering runs its parallel loop on several threads."""
        n = parallel_extent(low, sizes, storages)
        threads = _threads.get_num_threads()
        if n < 2 or threads <= 1:
            return False
        return self.worth_splitting(low, sizes, threads, work(n, balance_pos(low, storages), sizes, low, storages))

    @staticmethod
    def worth_splitting(low, sizes, threads: int, units: int) -> bool:
        """Whether ``units`` of work gain from ``threads`` threads: above the host's
        measured threshold, and for a reduction into per-thread copies of the output,
        with copies small against the work (partials.py)."""
        threshold = _threads.min_parallel_work(units, threads)
        if units < threshold:
            return False
        # (a fixed threshold of 0 splits every call, copies included: tests of the split)
        return not low.threads.partials or threshold == 0 or partials.worth(low, sizes, threads, units)

    def launch(self, variant, args, lohi, low, sizes, storages):
        """(function, arguments) that run the whole call from this thread: the kernel
        itself, or its native parallel driver; None when the Python pool must run it."""
        fn = variant.function
        if lohi is None:
            return fn, args
        n = parallel_extent(low, sizes, storages)
        host = self.host_threads
        pos = balance_pos(low, storages) if host and n >= 2 else None
        threads = _threads.get_num_threads()
        if not host or n < 2 or not self.worth_splitting(low, sizes, threads, work(n, pos, sizes, low, storages)):
            # the GPU grid covers the whole range; small host work runs on this thread
            a = list(args)
            a[lohi], a[lohi + 1] = 0, n
            return fn, a
        if self.driver_of(variant) is not None and threads > 1:
            bounds = self.bounds(n, threads, self.weights(low, storages, pos, sizes))
            call_args = [len(bounds) - 1, data_ptr(bounds)] + args[:lohi] + args[lohi + 2:]
            if low.threads.partials:
                slot = partials.out_slot(variant)
                slot = slot + 2 if slot < lohi else slot
                return partials.PartialDriver(variant.driver, slot, len(bounds) - 1, partials.out_size(low, sizes),
                                              partials.out_dtype(low), bounds, low.output.overwrites), call_args
            return variant.driver, call_args
        if threads <= 1:
            a = list(args)
            a[lohi], a[lohi + 1] = 0, n
            return fn, a
        return None

    def run(self, variant, args, lohi, low, sizes, storages, units=None) -> list:
        """Run a call; returns the status of each piece it ran as. ``units``: the
        call's :func:`call_work` when the caller has it; a long call made on the
        main thread runs where Ctrl-C can stop it (interrupt.py)."""
        if units is None:
            units = call_work(self.caps, low, low, sizes, storages)
        launch = self.launch(variant, args, lohi, low, sizes, storages)
        if launch is not None:
            fn, call_args = launch
            if fn is variant.function:
                return [interrupt.run(units, fn, *call_args)]
            return [_threads.run_split(units, interrupt.run, units, fn, *call_args, key=fn)]  # waited for a core?
        fn = variant.function
        n = parallel_extent(low, sizes, storages)
        pos = balance_pos(low, storages)
        if low.threads.partials:
            return interrupt.run(units, partials.on_pool, _threads.run_ranges, fn, args, lohi,
                                 partials.out_slot(variant), partials.out_size(low, sizes), partials.out_dtype(low),
                                 n, pos, work(n, pos, sizes, low, storages), low.output.overwrites)

        def call(lo, hi):
            a = list(args)
            a[lohi] = lo
            a[lohi + 1] = hi
            return fn(*a)
        return interrupt.run(units, _threads.run_ranges, call, n, nested_weights(low, storages, pos, sizes), None,
                             work(n, pos, sizes, low, storages))

    def driver_bounds(self, variant, fn, sizes, storages):
        """The bounds array a parallel-driver launch points at (kept alive with it)."""
        if fn is not variant.driver or fn is None:
            return None
        low = variant.lowered
        return self.bounds(parallel_extent(low, sizes, storages), _threads.get_num_threads(),
                           self.weights(low, storages, balance_pos(low, storages), sizes))

    def driver_of(self, variant):
        """The variant's native parallel driver (looked up once), or None; always None
        in a forked child, where libgomp's team is unusable (forksafe.py)."""
        if forksafe.forked():
            return None
        if not variant.driver_checked:
            finder = getattr(self.target, "parallel_driver", None)
            variant.driver = finder(variant.compiled, variant.lowered) if finder else None
            variant.driver_checked = True
        return variant.driver

    def split_driver(self, variant, n: int, units: int):
        """The variant's native driver when a call over ``n`` rows of ``units`` work
        splits (more than one row and thread, at or above the threshold), else None:
        for the chunked appends (chunks.py, meet_chunks.py), which run the driver
        themselves."""
        threads = _threads.get_num_threads()
        if n < 2 or threads <= 1 or units < _threads.min_parallel_work(units, threads):
            return None
        return self.driver_of(variant)

    def weights(self, low, storages, pos, sizes):
        """:func:`nested_weights` for a driver's bounds: one array object per ``pos``
        and nested levels, computed once and kept while ``pos`` lives -- the bounds
        cache is keyed by its identity and drops the bounds when it dies, and a call
        hands the driver only their address (as for ``pos`` itself, see bounds())."""
        if pos is None:
            return None
        chain, leaf = _nested_chain(low, storages, sizes)
        if not chain:
            return pos
        key = (id(pos), tuple(id(c) for c in chain), leaf)
        with _BOUNDS_LOCK:
            hit = self.weights_cache.get(key)
            if hit is not None and hit[0]() is pos:
                return hit[1]
            weights = nested_weights(low, storages, pos, sizes, (chain, leaf))
            cache = self.weights_cache
            cache[key] = (weakref.ref(pos, lambda _r, key=key, cache=cache: cache.pop(key, None)), weights)
            return weights

    def bounds(self, n, threads, pos):
        """Row bounds of the threads' chunks, balanced by ``pos``; cached per pos array
        (splitting costs O(rows), more than a small kernel's whole run)."""
        key = (n, threads, id(pos) if pos is not None else None)
        with _BOUNDS_LOCK:
            # under the lock: a call hands the driver only the array's address, so an
            # entry another thread is using must never be replaced (freeing its array);
            # only a stale entry (its pos array died, so no call uses it) is
            hit = self.bounds_cache.get(key)
            if hit is not None and (pos is None or hit[0]() is pos):
                return hit[1]
            ranges = _threads.split(n, threads, pos)
            bounds = np.array([r[0] for r in ranges] + [ranges[-1][1]], dtype=np.int64)
            cache = self.bounds_cache
            ref = (weakref.ref(pos, lambda _r, key=key, cache=cache: cache.pop(key, None))
                   if pos is not None else None)
            cache[key] = (ref, bounds)
            return bounds


class Variant:
    """One lowering + its machine code, for one index width (and options)."""

    def __init__(self, lowered, compiled, function):
        from .plan import arg_plan
        self.lowered = lowered
        self.compiled = compiled
        self.function = function
        self.arg_plan = arg_plan(lowered.inspection.notation, lowered.code.bindings)
        self.driver = None  # native parallel driver, looked up on first parallel call
        self.driver_checked = False
        self.two_phase = None  # the count and fill phases (assemble.py), built on first use
        self.chunk_slots = None  # where a chunked variant takes its per-chunk arguments (chunks.py)
        self.fallback = None  # a meeting chunks variant's: the chunks with arrays of their own (meet_chunks.py)
        self.meet_rooms = None  # meet_chunks.py: rooms each row split's chunks counted, for the next call

    def slots(self, make):
        """Where a chunked variant's argument list takes its per-chunk arguments
        (``make(arg_plan)``: chunks.py's or meet_chunks.py's), worked out once."""
        if self.chunk_slots is None:
            self.chunk_slots = make(self.arg_plan)
        return self.chunk_slots
