"""The fast path: a call's native call, repeated while the same operands come back.

A small kernel call is mostly Python: naming operands, converting, checking
shapes, building the argument list. When the operands of a call are the very
objects of an earlier one (or a new ndarray laid out like it: the next batch of
activations), :class:`FastCall` replays that call's argument list with only the
changed pointers swapped in, through one straight-line function generated for it
(about a microsecond over the ctypes call, against ~10 us for the general path).
:class:`Recent` keeps a kernel's FastCalls of its last few operand sets.
"""
from __future__ import annotations

import functools
import weakref

import numpy as np

from . import forksafe, native_entry, split_threshold, threads as _threads
from .memory import data_ptr, pointer_parts
from .operands import Dense, refuse_overlap, scipy_unchanged
from . import outputs

TENSOR, ARRAY, SCIPY, OUTPUT = 0, 1, 2, 3
OUT = object()  # marks the output's pointer in an argument template


class Slot:
    """Marks a dense operand's pointer in an argument list."""
    __slots__ = ("name", "value")

    def __init__(self, name, value):
        self.name = name
        self.value = value


def plain_output_array(v, shape_dtype) -> bool:
    """Whether ``v`` can be written by the kernel as it is: an ndarray of the output's
    shape and dtype, row-major and writeable."""
    return (type(v) is np.ndarray and (v.shape, v.dtype) == shape_dtype
            and v.flags.c_contiguous and v.flags.writeable)


class FastCall:
    """Each operand is checked for being the very object of the last call and
    unchanged where it could change without a copy: an ndarray's shape, strides
    and dtype (its data pointer moves only with its size), a SciPy matrix's
    arrays, shape and row extents; an spcomp Tensor is immutable. Its checks
    never change once built, so concurrent calls are safe.

    The checks are grouped by kind when it is built (Tensors, arrays, SciPy
    matrices, the given output); once it has served a call they run as one
    generated function (:func:`_specialise`): the whole Python side of a warm
    call is about a microsecond over the ctypes call (benchmarks/call_overhead.py)."""
    __slots__ = ("checks", "count", "fn", "args", "out_slots", "out_shape", "out_dtype",
                 "threads", "keep", "given", "zero_given", "overwrite", "fail", "apart", "new_out",
                 "tensors", "arrays", "scipys", "out_check", "single_out", "spec", "split_generation",
                 "split_threshold", "runner", "split_units", "native")

    def __init__(self, checks, fn, args, out_slots, out_shape, out_dtype, threads, keep,
                 given=None, zero_given=True, overwrite=False, fail=None, split_generation=None,
                 split_threshold=None, runner=None, split_units=None):
        self.checks = tuple(checks)
        # for a sparse output (sparsecall.py): what runs the call once the operands
        # passed, returning the result or MISS, in place of the argument list's call
        self.runner = runner
        self.count = len(self.checks)
        self.fn = fn
        self.args = args
        self.out_slots = out_slots
        self.single_out = out_slots[0] if len(out_slots) == 1 else None
        self.out_shape = out_shape
        self.out_dtype = out_dtype
        self.threads = threads  # thread count the launch was planned for, if it matters
        # threads.split_state's generation when the split was decided by the measured
        # threshold (None: it was not), and that threshold (its next sample's time): a
        # new threshold, or this one due for a sample, misses
        self.split_generation = split_generation
        self.split_threshold = split_threshold
        # the call's work units when the threshold made it split (``fn`` then times it
        # for a wait on a core another library holds: threads.run_split), else None
        self.split_units = split_units
        self.keep = keep  # the thread bounds array whose pointer is in args
        self.given = given  # name of the output operand when the caller passes it
        self.zero_given = zero_given and not overwrite  # "=" kernels clear a given output, "+=" ones add to it
        self.overwrite = overwrite  # the kernel stores every output element: a fresh one needs no zeros
        self.fail = fail  # status -> raises the matching exception
        # a weak reference to the last given output found to share no memory with this
        # call's inputs (the very objects, see bind): the overlap check runs once per
        # output object, not per call. Replaced whole, so concurrent calls stay safe.
        self.apart = [None]  # (a box the generated function shares: it holds no reference to self)
        self.new_out = outputs.fresh_maker(out_shape, out_dtype, overwrite)
        self.tensors = tuple((name, ref) for name, ref, kind, _fp, _s in self.checks if kind == TENSOR)
        self.arrays = tuple((name, ref, fp[0], fp[1], fp[2], slots)
                            for name, ref, kind, fp, slots in self.checks if kind == ARRAY)
        self.scipys = tuple((name, ref, fp) for name, ref, kind, fp, _s in self.checks if kind == SCIPY)
        self.out_check = next(((name, fp) for name, _r, kind, fp, _s in self.checks if kind == OUTPUT), None)
        self.spec = None  # the specialised function, made when the FastCall first serves a call
        self.native = None  # ... and its native entry (native_entry.py), where one can be made

    def call(self, operands):
        """The result of the call with ``operands``, or MISS when they are not the
        ones this FastCall repeats. The checks of :meth:`bind` until it first serves
        a call; from then on the specialised function (~20 us to make), so that a
        caller passing new objects every call never pays for one."""
        spec = self.spec
        if spec is not None:
            return spec(operands)
        args = self.bind(operands) if len(operands) == self.count else None
        if args is None:
            return MISS
        self.spec = _specialise(self)
        self.native = _native(self)
        return self.run(args, operands)

    def bind(self, operands):
        """The argument list for ``operands`` (output slot unset), or None."""
        if self.threads is not None and self.threads != _threads.get_num_threads():
            return None
        if self.split_generation is not None and _split_stale(self.split_generation, self.split_threshold):
            return None
        get = operands.get
        for name, ref in self.tensors:  # a missing name never matches (a dead ref gives None)
            if get(name, OUT) is not ref():
                return None
        args = None
        for name, ref, shape, strides, dtype, slots in self.arrays:
            v = get(name, OUT)
            # (an array's shape and dtype can be set in place: checked even for the same object)
            if (type(v) is not np.ndarray or v.shape != shape or v.strides != strides
                    or (v.dtype is not dtype and v.dtype != dtype)):
                return None
            if ref() is not v:  # a new array laid out like the last: its pointer changes
                if args is None:
                    args = list(self.args)
                p = data_ptr(v)
                for k in slots:
                    args[k] = p
        for name, ref, fp in self.scipys:
            v = get(name, OUT)
            if ref() is not v or fp[1]() is None or not scipy_unchanged(v, fp[0]):
                return None
        if self.out_check is not None:
            name, fp = self.out_check
            out = get(name, OUT)
            if not plain_output_array(out, fp):  # any array the kernel can write as it is
                return None
            # every input is the object checked before unless an array was swapped in
            apart = self.apart[0]
            if args is not None or apart is None or apart() is not out:
                refuse_overlap(out, operands, self.given)
                if args is None:
                    self.apart[0] = weakref.ref(out)
        return list(self.args) if args is None else args

    def run(self, args, operands):
        if self.runner is not None:
            return self.runner()
        if self.given is None:
            out = self.new_out()
        else:
            out = operands[self.given]
            if self.zero_given:
                out.fill(0)
        p = data_ptr(out)
        k = self.single_out
        if k is not None:
            args[k] = p
        else:
            for k in self.out_slots:
                args[k] = p
        status = self.fn(*args)
        if status != 0:
            self.fail(status)
        return out if self.out_shape or self.given is not None else out.item()


MISS = object()  # what FastCall.call returns when the operands are not the last call's


def _split_stale(generation: int, threshold) -> bool:
    """Whether a split decided under ``generation`` by ``threshold`` must be decided
    again: a threshold or the thread count changed since, or this threshold wants its
    next sample (taken by the general path, which a miss leads to)."""
    if _threads.split_state[0] != generation:
        return True
    due = threshold.due if threshold is not None else None
    return due is not None and split_threshold.now() >= due


def _specialise(fc: "FastCall"):
    """``fc``'s checks and native call as one straight-line Python function of the
    operands dict: each operand's check inlined with its constants as the
    function's globals, the argument list written out instead of copied and patched. It
    returns the result or MISS. Only fixed identifiers go into the source (the
    operand names are constants in the namespace), so no user string is ever
    compiled."""
    ns = {"MISS": MISS, "ndarray": np.ndarray, "data_ptr": data_ptr, "unchanged": scipy_unchanged,
          "plain": plain_output_array, "overlap": refuse_overlap, "wref": weakref.ref, "box": fc.apart,
          "fn": fc.fn, "fail": fc.fail, "nthreads": _threads.get_num_threads, "THREADS": fc.threads,
          "COUNT": fc.count, "KEEP": fc.keep}  # (KEEP: the array whose pointer is in the arguments)
    body = ["if len(operands) != COUNT: return MISS"]
    if fc.threads is not None:
        body.append("if nthreads() != THREADS: return MISS")
    if fc.split_generation is not None:  # (split_stale, inlined)
        ns.update({"SPLIT": _threads.split_state, "GEN": fc.split_generation, "TH": fc.split_threshold,
                   "clock": split_threshold.now})
        body.append("if SPLIT[0] != GEN: return MISS")
        ns["HOLD"] = _threads.hold  # (a hold's end: threads.note_split; 0 when none)
        body.append("if HOLD[0] and clock() >= HOLD[0]: return MISS")
        if fc.split_threshold is not None:
            body.append("due = TH.due\nif due is not None and clock() >= due: return MISS")
    body.append("get = operands.get")
    value = ["c%d" % k for k in range(len(fc.args))]  # the argument expressions, in order
    for k, v in enumerate(fc.args):
        ns["c%d" % k] = v
    swaps = []
    for j, (name, ref) in enumerate(fc.tensors):
        ns["tn%d" % j], ns["tr%d" % j] = name, ref
        # (a dead reference gives None: a None operand must not match it)
        body.append(f"v = get(tn{j})\nif v is None or v is not tr{j}(): return MISS")
    for j, (name, ref, shape, strides, dtype, slots) in enumerate(fc.arrays):
        ns.update({"an%d" % j: name, "ar%d" % j: ref, "ash%d" % j: shape, "ast%d" % j: strides,
                   "adt%d" % j: dtype, "ap%d" % j: fc.args[slots[0]] if slots else 0})
        # an array's shape and dtype can be set in place: checked even for the same object
        body.append(f"a{j} = get(an{j})\n"
                    f"if (type(a{j}) is not ndarray or a{j}.shape != ash{j} or a{j}.strides != ast{j}\n"
                    f"        or (a{j}.dtype is not adt{j} and a{j}.dtype != adt{j})): return MISS\n"
                    f"s{j} = ar{j}() is not a{j}\n"
                    f"p{j} = data_ptr(a{j}) if s{j} else ap{j}")
        swaps.append(f"s{j}")
        for k in slots:
            value[k] = "p%d" % j
    for j, (name, ref, fp) in enumerate(fc.scipys):
        data, indices, indptr, shape, extents = fp[0]
        ns.update({"sn%d" % j: name, "sr%d" % j: ref, "sf%d" % j: fp[0], "sw%d" % j: fp[1], "sd%d" % j: data,
                   "si%d" % j: indices, "sp%d" % j: indptr, "ssh%d" % j: shape, "sx%d" % j: extents})
        # the matrix's arrays and shape, and its row extents, as scipy_unchanged checks them
        same = (f"v.data is sd{j}() and v.indices is si{j}() and (ip := v.indptr) is sp{j}() "
                f"and v.shape == ssh{j} and ip.tobytes() == sx{j}" if type(extents) is bytes
                else f"unchanged(v, sf{j})")
        body.append(f"v = get(sn{j})\n"
                    f"if v is None or v is not sr{j}() or sw{j}() is None or not ({same}): return MISS")
    if fc.runner is not None:  # a sparse output: the runner allocates, calls and builds the result
        ns["RUN"] = fc.runner
        body.append("return RUN()")
        return _defined(body, ns)
    if fc.given is not None:
        name, check = fc.out_check
        ns.update({"on": name, "ocheck": check})
        swapped = " or ".join(swaps) or "False"
        body.append("out = get(on)\n"
                    "if not plain(out, ocheck): return MISS\n"
                    # every input is the object checked before unless an array was swapped in
                    f"swapped = {swapped}\n"
                    "apart = box[0]\n"
                    "if swapped or apart is None or apart() is not out:\n"
                    "    overlap(out, operands, on)\n"
                    "    if not swapped: box[0] = wref(out)")
        if fc.zero_given:
            body.append("out.fill(0)")
    else:
        new = fc.new_out  # a partial: its function called directly, one object less to touch
        ns["alloc"] = new.func
        ns.update({"oa%d" % i: a for i, a in enumerate(new.args)})
        body.append(f"out = alloc({', '.join('oa%d' % i for i in range(len(new.args)))})")
    parts = pointer_parts()
    if parts is not None:  # data_ptr's read, inlined: a Python call less
        ns["at"], ns["OFFSET"] = parts
        body.append("po = at(id(out) + OFFSET).value")
    else:
        body.append("po = data_ptr(out)")
    for k in fc.out_slots:
        value[k] = "po"
    body.append(f"status = fn({', '.join(value)})\nif status: fail(status)")
    body.append("return out" if fc.out_shape or fc.given is not None else "return out.item()")
    return _defined(body, ns)


def _native(fc: "FastCall"):
    """``fc``'s native entry (native_entry.py), or None: not for a sparse output's
    runner, a wrapped function (a long call watched for Ctrl-C, a split the
    threshold times) or a split whose threshold is due for samples."""
    if fc.runner is not None or fc.split_threshold is not None:
        return None
    checks = []  # (the kinds are fastentry.c's own numbers: TENSOR 0, ARRAY 1, SCIPY 2)
    for name, ref, kind, fp, slots in fc.checks:
        if kind == ARRAY:
            checks.append((name, ref, kind, fp[0], fp[1], fp[2], slots))
        elif kind == TENSOR:
            checks.append((name, ref, kind, (), (), None, slots))
        elif kind == SCIPY:
            data, indices, indptr, shape, extents = fp[0]
            if type(extents) is not bytes:  # (compared in Python, same_contents)
                return None
            checks.append((name, ref, kind, (), (), None, slots, (data, indices, indptr, fp[1], shape, extents)))
    return native_entry.make(fc.fn, list(fc.args), fc.count, checks, fc.new_out, fc.given, fc.out_shape,
                             fc.out_dtype, fc.zero_given, fc.apart, fc.out_slots,
                             not fc.out_shape and fc.given is None, fc.threads, fc.split_generation,
                             (fc.fn, fc.keep))


def _defined(body: list, ns: dict):
    """The function ``call(operands)`` whose body is ``body`` (lines of fixed
    identifiers), its names looked up in ``ns``."""
    src = "def call(operands):\n" + "".join("    " + line + "\n" for part in body for line in part.split("\n"))
    exec(_compiled(src), ns)  # noqa: S102 (fixed identifiers only, see _specialise)
    return ns["call"]


@functools.lru_cache(maxsize=256)
def _compiled(src: str):
    """The code of a generated source, compiled once: sources repeat across
    kernels and calls (they name slots, not values), and compiling costs ~100 us."""
    return compile(src, "<spcomp fastcall>", "exec")


_ADD_LOCK = forksafe.Lock()  # a child made by os.fork() finds it released


class Recent:
    """A kernel's FastCalls for its last few distinct sets of operand objects, so that
    calls alternating between operands (two matrices, one vector) stay on the fast
    path: the newest is tried first, then the one built for these very objects.
    Each still checks everything itself; the key (the operands' ids) only picks it."""
    __slots__ = ("latest", "by_ids")
    SIZE = 8

    def __init__(self, latest):
        self.latest = latest
        self.by_ids = {}

    def call(self, operands):
        fast = self.latest
        native = fast.native
        if native is not None:  # the checks and the call in C (native_entry.py)
            result = native_entry.run(native, operands)
            if result is not native_entry.MISS:
                if type(result) is tuple:
                    fast.fail(result[0])
                return result
        spec = fast.spec  # (its specialised function called here: one Python call less)
        result = spec(operands) if spec is not None else fast.call(operands)
        if result is not MISS:
            return result
        other = self.by_ids.get(tuple(map(id, operands.values())))
        if other is None or other is self.latest:
            return MISS
        self.latest = other
        return other.call(operands)

    def add(self, fast, operands):
        with _ADD_LOCK:  # (the general path only; readers never take it)
            self.by_ids[tuple(map(id, operands.values()))] = self.latest = fast
            while len(self.by_ids) > self.SIZE:
                del self.by_ids[next(iter(self.by_ids))]


def remember(recent, fast, operands):
    """``recent`` (a Recent, or None) with ``fast`` added as the newest."""
    if recent is None:
        recent = Recent(fast)
    recent.add(fast, operands)
    return recent


def operand_check(value, st, fmt, op_cache):
    """What a repeated call checks of one operand, ``(kind, fingerprint)``, given the
    storage ``st`` a call made of ``value``; None when ``st`` is a converted copy
    whose conversion must run on every call."""
    if type(st) is Dense and st.array is value:
        return ARRAY, (value.shape, value.strides, value.dtype)
    if st is value:  # a Tensor in the kernel's format and dtype
        return TENSOR, None
    hit = op_cache.cached(value, fmt)
    if hit is None or hit[1] is not st or hit[2] is None:
        return None
    return SCIPY, (hit[2], weakref.ref(st))


def _operand_checks(plan, op_cache, operands, storages, checks: dict):
    """``checks`` with each operand's ``(kind, fingerprint)`` added (what a repeated
    call checks of it), or None when one is a converted copy whose conversion must
    run on every call."""
    for storage, operand, fmt, _dtype, _plain in plan.storages:
        check = operand_check(operands[operand], storages[storage], fmt, op_cache)
        if check is None or checks.setdefault(operand, check)[0] != check[0]:
            return None
    return checks


def build_sparse(plan, op_cache, operands, storages, make_runner, units):
    """The FastCall that repeats a sparse output's call through ``make_runner()``'s
    runner (sparsecall.py) while the very operands come back, or None where one is an
    ndarray (a new one laid out alike passes the checks, but the runner keeps the
    old one's storage) or a converted copy. The thread count and the split's
    generation are checked as for any FastCall: they chose the call's variant."""
    checks = _operand_checks(plan, op_cache, operands, storages, {})
    if checks is None or any(kind == ARRAY for kind, _fp in checks.values()):
        return None
    runner = make_runner()
    if runner is None:
        return None
    generation = _threads.split_state[0] if _threads.threshold_decides(units) else None
    threads = _threads.get_num_threads()
    watched = _threads.measured_threshold(threads) if generation is not None else None
    entries = [(name, weakref.ref(operands[name]), kind, fp, ()) for name, (kind, fp) in checks.items()]
    return FastCall(entries, None, (), (), (), None, threads, None, split_generation=generation,
                    split_threshold=watched, runner=runner)


def build(plan, op_cache, launcher, variant, operands, storages, args, lohi, sizes, given, *,
          output_name, accumulate, overwrite, fail, wrap=None, units=None):
    """The FastCall that repeats this call, or None when an operand is a converted
    copy (its conversion must run on every call) or the given output is not a
    plain writeable row-major array of the output's shape. ``wrap(fn)`` is what a
    repeated call runs instead of ``fn`` (a long one: where Ctrl-C stops it)."""
    out_shape = tuple(sizes[i] for i in plan.out_indices)
    checks = {}
    if given is not None:
        out_check = (out_shape, plan.out_dtype)
        if not plain_output_array(given, out_check):
            return None
        checks[output_name] = (OUTPUT, out_check)
    checks = _operand_checks(plan, op_cache, operands, storages, checks)
    if checks is None:
        return None
    marked = list(args)
    for k, (role, a, _b) in enumerate(variant.arg_plan):
        if role == "out":
            marked[k] = OUT
        elif role == "in" and checks[plan.operand_of[a]][0] == ARRAY:
            marked[k] = Slot(plan.operand_of[a], args[k])
    launched = repeat_launch(launcher, variant, marked, lohi, sizes, storages, units, wrap)
    if launched is None:
        return None
    repeat, call_args, generation, watched, split_units, fn = launched
    template = [v.value if type(v) is Slot else v for v in call_args]
    entries = []
    for name, (kind, fp) in checks.items():
        slots = tuple(k for k, v in enumerate(call_args) if type(v) is Slot and v.name == name)
        entries.append((name, weakref.ref(operands[name]), kind, fp, slots))
    return FastCall(
        entries, repeat, template, tuple(k for k, v in enumerate(call_args) if v is OUT),
        out_shape, plan.out_dtype,
        _threads.get_num_threads() if lohi is not None else None,
        launcher.driver_bounds(variant, fn, sizes, storages),
        output_name if given is not None else None, not accumulate, overwrite, fail, generation, watched,
        split_units=split_units)


def repeat_launch(launcher, variant, marked, lohi, sizes, storages, units, wrap=None):
    """How a repeated call of ``variant`` runs: ``(function, its argument list,
    split generation, watched threshold, split units, the native function)``, the
    arguments being ``marked`` laid out as the launcher lays them out (markers kept,
    so the caller finds its slots); None when the Python pool must run it. The
    generation is that of the split the measured threshold decided (None: it did
    not); ``wrap(fn)`` is what runs instead of a long ``fn`` (where Ctrl-C stops it)."""
    # the generation the split is decided under, read first: a change after it only misses
    generation = _threads.split_state[0] if lohi is not None and _threads.threshold_decides(units) else None
    launch = launcher.launch(variant, marked, lohi, variant.lowered, sizes, storages)
    watched = _threads.measured_threshold(_threads.get_num_threads()) if generation is not None else None
    if launch is None:
        return None
    fn, call_args = launch
    split_units = units if generation is not None and fn is not variant.function else None
    repeat = fn if wrap is None else wrap(fn)
    if split_units is not None:  # a split the threshold decided: timed (threads.note_split)
        repeat = functools.partial(_threads.run_split, split_units, repeat, key=fn)
    return repeat, call_args, generation, watched, split_units, fn
