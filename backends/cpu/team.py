"""The team driver: a fused run's phases as one native call on one libgomp team.

A fused run that a big call cannot split into one function over chunks of rows
runs in phases (runtime/program_team.py): each phase a compiled function of its
own, over ``[lo, hi)`` rows (split) or whole (serial). This module generates,
for one run's list of phases, the function

    int32_t spcomp_team(int64_t nthreads, int64_t* frame)

that opens one ``GOMP_parallel`` region and, on every thread of the team, goes
through the phases in order: a split phase's chunks taken as parallel.py's
drivers take them (thread ``t`` of ``T``: chunks ``C-1-t, C-1-t-T, ...``), a
serial phase run by thread 0 alone, then ``GOMP_barrier()`` so that the next
phase reads what this one wrote. A phase that summed into a copy of its output
per chunk is followed by the sum: each thread adds a slice of the output's
elements, every element over the chunks in chunk order (the same additions, in
the same order, as ``runtime/partials.add_into``: bit for bit), then a barrier.
A csr-like output appended per chunk that a later phase reads is stitched after
its phase by thread 0 (:func:`_join`), then a barrier. Every phase checks the shared status first: a non-zero status (an error, an
interrupt) skips the work of every later phase, the barriers still met.

The functions are called through pointers held in ``frame`` (i64 words: the
status, then per phase its function's address, chunk count, bounds and
parameters, a per-chunk one as the address of one word per chunk, then a flag
per parameter: set, the word is the address the argument is read from when the
phase starts -- the slot an earlier phase grew a sparse tensor's array into; per sum the
output, the copies, their count and size and whether the sum replaces the
output): the driver is compiled once per run and index width, its phases'
code is where it was compiled. In a process made by ``os.fork()`` the driver
runs the body on the calling thread alone, a team of one (no barrier needed).
"""
from __future__ import annotations

import ctypes
from dataclasses import dataclass

from llvmlite import ir

from spcomp.ir.types import PointerType

from .llvm_types import register_type
from .parallel import run_on_team, thread_chunks

_I32, _I64, _PTR, _VOID = ir.IntType(32), ir.IntType(64), ir.PointerType(), ir.VoidType()
HEAD = 3  # a phase's words before its parameters: function, chunk count, bounds
SUM = 5   # a sum's words: output, copies, count, size, replace
JOIN = 4  # a join's words: row ends, chunk count, bounds, index limit; then per array: chunks' pointers, slot
_SUM_TYPES = {"float64": ir.DoubleType(), "float32": ir.FloatType(), "int64": _I64, "int32": _I32}


@dataclass(frozen=True)
class PhaseSpec:
    """One phase: ``split`` (its function takes ``lo``, ``hi`` first), the IR types
    of its other parameters, those among them taking one word per chunk, and the
    dtypes (NumPy names) of the per-chunk copies summed after it."""
    split: bool
    params: tuple
    per_chunk: frozenset = frozenset()
    sums: tuple = ()
    joins: tuple = ()  # per csr-like output appended per chunk and read later: (pos bytes, array bytes...)


def summable(dtype_name: str) -> bool:
    """Whether the driver adds copies of this dtype natively."""
    return dtype_name in _SUM_TYPES


def layout(phases: list) -> tuple:
    """``(phase bases, sum bases, join bases, words)``: where each phase's, each sum's
    and each join's words start in the frame (lists per phase), and its length."""
    at, bases, sums, joins = 1, [], [], []
    for p in phases:
        bases.append(at)
        at += HEAD + 2 * len(p.params)
        sums.append([])
        for _ in p.sums:
            sums[-1].append(at)
            at += SUM
        joins.append([])
        for widths in p.joins:
            joins[-1].append(at)
            at += JOIN + 2 * (len(widths) - 1)
    return bases, sums, joins, at


def build_team(phases: list) -> ir.Module:
    """The llvmlite module of the driver ``spcomp_team`` for ``phases``."""
    mod = ir.Module(name="spcomp_team")
    gomp = ir.Function(mod, ir.FunctionType(_VOID, [_PTR, _PTR, _I32, _I32]), name="GOMP_parallel")
    barrier = ir.Function(mod, ir.FunctionType(_VOID, []), name="GOMP_barrier")
    tid_fn = ir.Function(mod, ir.FunctionType(_I32, []), name="omp_get_thread_num")
    team_fn = ir.Function(mod, ir.FunctionType(_I32, []), name="omp_get_num_threads")
    body = ir.Function(mod, ir.FunctionType(_VOID, [_PTR]), name="spcomp_team_body")
    body.linkage = "internal"
    b = ir.IRBuilder(body.append_basic_block("entry"))
    frame = body.args[0]
    t = b.sext(b.call(tid_fn, []), _I64)
    team = b.sext(b.call(team_fn, []), _I64)
    status_at = _word(b, frame, 0)
    bases, sum_bases, join_bases, _n = layout(phases)
    c_fns = _c_functions(mod)
    for p, spec in enumerate(phases):
        _phase(b, frame, spec, bases[p], t, team, status_at)
        _barrier(b, barrier, team)
        for dtype, base in zip(spec.sums, sum_bases[p]):
            _sum(b, frame, _SUM_TYPES[dtype], base, t, team, status_at)
            _barrier(b, barrier, team)
        for widths, base in zip(spec.joins, join_bases[p]):
            with b.if_then(b.icmp_signed("==", t, ir.Constant(_I64, 0))):
                with b.if_then(_ok(b, status_at)):
                    _join(b, frame, widths, base, status_at, c_fns)
            _barrier(b, barrier, team)
    b.ret_void()

    drv = ir.Function(mod, ir.FunctionType(_I32, [_I64, _PTR]), name="spcomp_team")
    b = ir.IRBuilder(drv.append_basic_block("entry"))
    run_on_team(b, mod, gomp, body, drv.args[1], drv.args[0])
    b.ret(b.trunc(b.load(_word(b, drv.args[1], 0), typ=_I64), _I32))
    return mod


def _word(b, base, k):
    return b.gep(base, [k if isinstance(k, ir.Value) else ir.Constant(_I64, k)], inbounds=True, source_etype=_I64)


def _barrier(b, barrier, team):
    """``GOMP_barrier()`` when the team has more than one thread (alone, none is needed)."""
    with b.if_then(b.icmp_signed(">", team, ir.Constant(_I64, 1))):
        b.call(barrier, [])


def _ok(b, status_at):
    return b.icmp_signed("==", b.load_atomic(status_at, "monotonic", 8, typ=_I64), ir.Constant(_I64, 0))


def _as(b, word, ty):
    """A frame word as a value of LLVM type ``ty``."""
    if isinstance(ty, ir.PointerType):
        return b.inttoptr(word, ty)
    if isinstance(ty, ir.DoubleType):
        return b.bitcast(word, ty)
    if isinstance(ty, ir.FloatType):
        return b.bitcast(b.trunc(word, _I32), ty)
    return word if ty.width == 64 else b.trunc(word, ty)


def _phase(b, frame, spec: PhaseSpec, base: int, t, team, status_at):
    """One phase's work on thread ``t``: its chunks, or (serial) the whole call on thread 0."""
    types = [_PTR if isinstance(x, PointerType) else register_type(x) for x in spec.params]
    fnty = ir.FunctionType(_I32, ([_I64, _I64] if spec.split else []) + types)
    zero = ir.Constant(_I64, 0)
    with b.if_then(_ok(b, status_at)):
        # (a pointer typed with the function's type: llvmlite reads the callee's type from it)
        fn = b.inttoptr(b.load(_word(b, frame, base), typ=_I64), fnty.as_pointer())
        # a parameter whose flag word is set is read through its word: the slot where an
        # earlier phase left an array it grew (a sparse tensor handed over)
        words = []
        for k in range(len(types)):
            at = _word(b, frame, base + HEAD + k)
            flag = b.load(_word(b, frame, base + HEAD + len(types) + k), typ=_I64)
            through = b.icmp_signed("!=", flag, zero)
            words.append(b.load(b.select(through, b.inttoptr(b.load(at, typ=_I64), _PTR), at), typ=_I64))
        if not spec.split:
            with b.if_then(b.icmp_signed("==", t, zero)):
                status = b.call(fn, [_as(b, w, ty) for w, ty in zip(words, types)])
                b.atomic_rmw("max", status_at, b.sext(status, _I64), "monotonic")
            return
        chunks = b.load(_word(b, frame, base + 1), typ=_I64)
        bounds = b.inttoptr(b.load(_word(b, frame, base + 2), typ=_I64), _PTR)
        for c, lo, hi in thread_chunks(b, chunks, bounds, t, team):
            args = []
            for k, (w, ty) in enumerate(zip(words, types)):
                if k in spec.per_chunk:  # element c of the words the parameter points at
                    w = b.load(_word(b, b.inttoptr(w, _PTR), c), typ=_I64)
                args.append(_as(b, w, ty))
            status = b.call(fn, [lo, hi] + args)
            b.atomic_rmw("max", status_at, b.sext(status, _I64), "monotonic")


def _sum(b, frame, ty, base: int, t, team, status_at):
    """Thread ``t``'s slice of the elements of a summed output: each the output (or,
    replacing it, copy 0) plus copy 1, 2, ... in chunk order."""
    zero, one = ir.Constant(_I64, 0), ir.Constant(_I64, 1)
    with b.if_then(_ok(b, status_at)):
        out = b.inttoptr(b.load(_word(b, frame, base), typ=_I64), _PTR)
        table = b.inttoptr(b.load(_word(b, frame, base + 1), typ=_I64), _PTR)
        count = b.load(_word(b, frame, base + 2), typ=_I64)
        size = b.load(_word(b, frame, base + 3), typ=_I64)
        replace = b.icmp_signed("!=", b.load(_word(b, frame, base + 4), typ=_I64), zero)
        lo = b.sdiv(b.mul(size, t), team)
        hi = b.sdiv(b.mul(size, b.add(t, one)), team)
        for e in _loop(b, lo, hi, "sum"):
            _sum_element(b, ty, out, table, count, size, replace, e)


def _sum_element(b, ty, out, table, count, size, replace, e):
    """Element ``e`` of a summed output: the output (or, replacing it, copy 0) plus
    copies 1 .. count-1 added one after another."""
    one = ir.Constant(_I64, 1)
    at_out = b.gep(out, [e], inbounds=True, source_etype=ty)
    first = b.load(b.gep(table, [e], inbounds=True, source_etype=ty), typ=ty)
    add = b.fadd if isinstance(ty, (ir.DoubleType, ir.FloatType)) else b.add
    start = b.select(replace, first, add(b.load(at_out, typ=ty), first))
    # copies 1 .. count-1 added one after another
    inner_head = b.block
    inner = b.append_basic_block("sum.copies")
    inner_done = b.append_basic_block("sum.copies.done")
    b.cbranch(b.icmp_signed(">", count, one), inner, inner_done)
    b.position_at_end(inner)
    c = b.phi(_I64)
    v = b.phi(ty)
    c.add_incoming(one, inner_head)
    v.add_incoming(start, inner_head)
    x = b.load(b.gep(table, [b.add(b.mul(c, size), e)], inbounds=True, source_etype=ty), typ=ty)
    v2 = add(v, x)
    c2 = b.add(c, one)
    c.add_incoming(c2, b.block)
    v.add_incoming(v2, b.block)
    b.cbranch(b.icmp_signed("<", c2, count), inner, inner_done)
    b.position_at_end(inner_done)
    total = b.phi(ty)
    total.add_incoming(start, inner_head)
    total.add_incoming(v2, inner)
    b.store(total, at_out)


def _c_functions(mod) -> dict:
    return {"realloc": ir.Function(mod, ir.FunctionType(_PTR, [_PTR, _I64]), name="realloc"),
            "free": ir.Function(mod, ir.FunctionType(_VOID, [_PTR]), name="free"),
            "memcpy": ir.Function(mod, ir.FunctionType(_PTR, [_PTR, _PTR, _I64]), name="memcpy")}


def _loop(b, start, stop, name):
    """``for (i = start; i < stop; i++)``: yields ``i`` with the builder in the body."""
    head = b.block
    body = b.append_basic_block(name)
    after = b.append_basic_block(name + ".done")
    b.cbranch(b.icmp_signed("<", start, stop), body, after)
    b.position_at_end(body)
    i = b.phi(_I64)
    i.add_incoming(start, head)
    yield i
    nxt = b.add(i, ir.Constant(_I64, 1))
    i.add_incoming(nxt, b.block)
    b.cbranch(b.icmp_signed("<", nxt, stop), body, after)
    b.position_at_end(after)


def _join(b, frame, widths: tuple, base: int, status_at, c):
    """One thread stitches a rows-first output (a dense level, then a compressed one)
    the phase's chunks appended, as ``runtime/chunks.py`` does: each chunk's row ends
    made non-decreasing and shifted by the entries of the chunks before it, each
    grown array the first chunk's reallocated to the whole, the others' copied in
    after it and freed (their slots emptied), the result in the output's slot. An
    index past the limit sets status 5 (the call runs again 64-bit), a failed
    realloc status 2; nothing is moved then."""
    one = ir.Constant(_I64, 1)
    pty = ir.IntType(8 * widths[0])
    pos = b.inttoptr(b.load(_word(b, frame, base), typ=_I64), _PTR)
    count = b.load(_word(b, frame, base + 1), typ=_I64)
    bounds = b.inttoptr(b.load(_word(b, frame, base + 2), typ=_I64), _PTR)
    limit = b.load(_word(b, frame, base + 3), typ=_I64)
    starts = b.alloca(_I64, size=b.add(count, one))  # the chunks' first entries, then the total
    b.store(ir.Constant(_I64, 0), starts)
    running = b.alloca(_I64)
    for c_ in _loop(b, ir.Constant(_I64, 0), count, "join.count"):
        lo = b.load(_word(b, bounds, c_), typ=_I64)
        hi = b.load(_word(b, bounds, b.add(c_, one)), typ=_I64)
        b.store(ir.Constant(_I64, 0), running)
        for i in _loop(b, b.add(lo, one), b.add(hi, one), "join.max"):
            at = b.gep(pos, [i], inbounds=True, source_etype=pty)
            v = b.sext(b.load(at, typ=pty), _I64)
            m = b.load(running, typ=_I64)
            m = b.select(b.icmp_signed(">", v, m), v, m)
            b.store(m, running)
            b.store(b.trunc(m, pty) if pty.width < 64 else m, at)
        first = b.load(b.gep(starts, [c_], source_etype=_I64), typ=_I64)
        b.store(b.add(first, b.load(running, typ=_I64)), b.gep(starts, [b.add(c_, one)], source_etype=_I64))
    total = b.load(b.gep(starts, [count], source_etype=_I64), typ=_I64)
    with b.if_else(b.icmp_signed(">", total, limit)) as (past, fits):
        with past:
            b.atomic_rmw("max", status_at, ir.Constant(_I64, 5), "monotonic")
        with fits:
            for c_ in _loop(b, one, count, "join.shift"):
                lo = b.load(_word(b, bounds, c_), typ=_I64)
                hi = b.load(_word(b, bounds, b.add(c_, one)), typ=_I64)
                shift = b.load(b.gep(starts, [c_], source_etype=_I64), typ=_I64)
                for i in _loop(b, b.add(lo, one), b.add(hi, one), "join.add"):
                    at = b.gep(pos, [i], inbounds=True, source_etype=pty)
                    v = b.add(b.sext(b.load(at, typ=pty), _I64), shift)
                    b.store(b.trunc(v, pty) if pty.width < 64 else v, at)
            for a, size in enumerate(widths[1:]):
                _join_array(b, frame, base + JOIN + 2 * a, size, count, starts, total, status_at, c)


def _join_array(b, frame, base: int, size: int, count, starts, total, status_at, c):
    one = ir.Constant(_I64, 1)
    rows = b.inttoptr(b.load(_word(b, frame, base), typ=_I64), _PTR)  # each chunk's pointer
    slot = b.inttoptr(b.load(_word(b, frame, base + 1), typ=_I64), _PTR)
    nbytes = b.mul(b.select(b.icmp_signed(">", total, one), total, one), ir.Constant(_I64, size))
    first = b.inttoptr(b.load(rows, typ=_I64), _PTR)
    whole = b.call(c["realloc"], [first, nbytes])
    with b.if_else(b.icmp_unsigned("==", b.ptrtoint(whole, _I64), ir.Constant(_I64, 0))) as (failed, done):
        with failed:
            b.atomic_rmw("max", status_at, ir.Constant(_I64, 2), "monotonic")
        with done:
            b.store(ir.Constant(_I64, 0), rows)  # the output owns it now
            for c_ in _loop(b, one, count, "join.copy"):
                at = _word(b, rows, c_)
                part = b.inttoptr(b.load(at, typ=_I64), _PTR)
                start = b.load(b.gep(starts, [c_], source_etype=_I64), typ=_I64)
                n = b.sub(b.load(b.gep(starts, [b.add(c_, one)], source_etype=_I64), typ=_I64), start)
                with b.if_then(b.icmp_signed(">", n, ir.Constant(_I64, 0))):
                    dest = b.gep(whole, [b.mul(start, ir.Constant(_I64, size))], source_etype=ir.IntType(8))
                    b.call(c["memcpy"], [dest, part, b.mul(n, ir.Constant(_I64, size))])
                with b.if_then(b.icmp_unsigned("!=", b.ptrtoint(part, _I64), ir.Constant(_I64, 0))):
                    b.call(c["free"], [part])
                b.store(ir.Constant(_I64, 0), at)
            b.store(b.ptrtoint(whole, _I64), slot)


class TeamDriver:
    """The compiled driver of one list of phases: ``driver(nthreads, frame)``."""

    def __init__(self, phases: list):
        from .jit import compile_llvm
        self.phases = list(phases)
        self.bases, self.sums, self.joins, self.words = layout(self.phases)
        self._engine, addresses = compile_llvm(build_team(self.phases), ["spcomp_team"])
        self.function = ctypes.CFUNCTYPE(ctypes.c_int32, ctypes.c_int64, ctypes.c_void_p)(addresses["spcomp_team"])


__all__ = ["HEAD", "JOIN", "SUM", "PhaseSpec", "TeamDriver", "build_team", "layout", "summable"]
