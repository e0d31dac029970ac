"""Native parallel drivers: run a kernel's ``[lo, hi)`` loop on libgomp's thread pool.

A kernel whose outer loop is ``parallel="threads"`` takes its bounds as its first
two parameters (``lo``, ``hi``). For each such function this module adds

    int32_t NAME__omp(int64_t nthreads, const int64_t* bounds, <the other params>)

which runs ``NAME(bounds[c], bounds[c+1], ...)`` for every chunk ``c`` on an
OpenMP team (``GOMP_parallel`` from libgomp, whose threads stay parked between
calls), thread ``t`` of a team of ``T`` taking chunks ``C-1-t, C-1-t-T, ...``
of the ``C`` (the calling thread, 0, the last one; libgomp may give fewer threads
than asked: then no chunk is skipped), and returns the largest status.
Dispatching from Python threads costs a few GIL hand-overs per call (~0.2 ms
here); this costs a few microseconds. When libgomp cannot be loaded no driver is
generated and the runtime falls back to Python threads.

In a process made by ``os.fork()`` libgomp's team is unusable (runtime/forksafe.py):
there the driver reads the runtime's ``spcomp_forked`` word (runtime/flags.py) as set and runs every
chunk on the calling thread, one after another, instead of calling ``GOMP_parallel``.
"""
from __future__ import annotations

import ctypes
import ctypes.util

from llvmlite import ir

from spcomp.ir import nodes as n
from spcomp.ir.types import I64
from spcomp.runtime.flags import FORKED_SYMBOL

from .abi import ctypes_signature

DRIVER_SUFFIX = "__omp"
_I32 = ir.IntType(32)
_I64 = ir.IntType(64)
_PTR = ir.PointerType()
_VOID = ir.VoidType()

_gomp_path: str | None | bool = False


def gomp_library() -> str | None:
    """Path of libgomp when it can be loaded into this process, else None.

    ``SPCOMP_LIBGOMP=0`` (read once, at the first compile) runs parallel kernels on
    spcomp's Python thread pool instead, as on a machine without libgomp."""
    global _gomp_path
    if _gomp_path is False:
        import os
        path = None if os.environ.get("SPCOMP_LIBGOMP", "1") == "0" else ctypes.util.find_library("gomp")
        try:
            if path:
                ctypes.CDLL(path)
        except OSError:
            path = None
        _gomp_path = path
    return _gomp_path


def is_parallel(f: n.Function) -> bool:
    """The lowerer's convention: a parallel kernel starts with params lo, hi."""
    p = f.params
    return (len(p) >= 2 and p[0].name == "lo" and p[1].name == "hi"
            and p[0].type == I64 and p[1].type == I64)


def add_drivers(llmod: ir.Module, module: n.Module) -> list:
    """Add ``NAME__omp`` for every parallel function; returns their names."""
    if gomp_library() is None:
        return []
    names = []
    gomp = ir.Function(llmod, ir.FunctionType(_VOID, [_PTR, _PTR, _I32, _I32]), name="GOMP_parallel")
    tid_fn = ir.Function(llmod, ir.FunctionType(_I32, []), name="omp_get_thread_num")
    team_fn = ir.Function(llmod, ir.FunctionType(_I32, []), name="omp_get_num_threads")
    for f in module.functions:
        if is_parallel(f):
            per_chunk = {k for k, p in enumerate(f.params[2:]) if p.name in f.per_chunk}
            names.append(_add_driver(llmod, llmod.get_global(f.name), gomp, tid_fn, team_fn, per_chunk))
    return names


FIRST_PARAM_SLOT = 3  # frame slots: bounds, status, chunk count, then the kernel's other parameters


def _add_driver(llmod, kernel, gomp, tid_fn, team_fn, per_chunk=frozenset()) -> str:
    """``per_chunk``: indices (among the parameters after lo, hi) that the driver
    takes as a pointer to one 64-bit value per chunk (an integer, or an address):
    chunk ``c`` gets element ``c``."""
    rest = [a.type for a in kernel.args[2:]]
    # the frame handed to every team thread: i64 slots holding bounds, status, the
    # number of chunks and the other parameters (pointers as integers)
    nslots = ir.Constant(_I64, FIRST_PARAM_SLOT + len(rest))

    def slot(b, base, k):
        return b.gep(base, [ir.Constant(_I64, k)], inbounds=True, source_etype=_I64)

    def to_slot(b, value):
        return b.ptrtoint(value, _I64) if isinstance(value.type, ir.PointerType) else value

    def from_slot(b, value, ty):
        return b.inttoptr(value, ty) if isinstance(ty, ir.PointerType) else value

    # the body each team thread runs: chunks C-1-tid, C-1-tid-team, ... of the C bounds
    body = ir.Function(llmod, ir.FunctionType(_VOID, [_PTR]), name=kernel.name + "__omp_body")
    body.linkage = "internal"
    body.attributes.add("noinline")  # called directly only in a forked child: not worth a copy
    b = ir.IRBuilder(body.append_basic_block("entry"))
    data = body.args[0]
    t = b.sext(b.call(tid_fn, []), _I64)
    team = b.sext(b.call(team_fn, []), _I64)
    chunks = b.load(slot(b, data, 2), typ=_I64)
    bounds = from_slot(b, b.load(slot(b, data, 0), typ=_I64), _PTR)
    params = [b.load(slot(b, data, FIRST_PARAM_SLOT + k), typ=_I64) for k in range(len(rest))]
    params = [p if k in per_chunk else from_slot(b, p, rest[k]) for k, p in enumerate(params)]
    for c, lo, hi in thread_chunks(b, chunks, bounds, t, team):
        args = list(params)
        for k in per_chunk:  # element c of the array the slot points at
            values = b.inttoptr(params[k], _PTR)
            args[k] = from_slot(b, b.load(b.gep(values, [c], inbounds=True, source_etype=_I64), typ=_I64), rest[k])
        status = b.sext(b.call(kernel, [lo, hi] + args), _I64)
        b.atomic_rmw("max", slot(b, data, 1), status, "monotonic")
    b.ret_void()

    # the driver the runtime calls
    name = kernel.name + DRIVER_SUFFIX
    drv = ir.Function(llmod, ir.FunctionType(_I32, [_I64, _PTR] + [_PTR if k in per_chunk else ty
                                                                   for k, ty in enumerate(rest)]), name=name)
    b = ir.IRBuilder(drv.append_basic_block("entry"))
    nthreads, bounds_arg = drv.args[0], drv.args[1]
    frame = b.alloca(_I64, size=nslots)
    b.store(to_slot(b, bounds_arg), slot(b, frame, 0))
    b.store(ir.Constant(_I64, 0), slot(b, frame, 1))
    b.store(nthreads, slot(b, frame, 2))
    for k, arg in enumerate(drv.args[2:]):
        b.store(to_slot(b, arg), slot(b, frame, FIRST_PARAM_SLOT + k))
    run_on_team(b, llmod, gomp, body, frame, nthreads)
    b.ret(b.trunc(b.load(slot(b, frame, 1), typ=_I64), _I32))
    return name


def thread_chunks(b, chunks, bounds, t, team):
    """Thread ``t`` of a team of ``team``'s chunks of the ``chunks`` in ``bounds`` (i64
    row bounds, ``chunks + 1`` of them): yields ``(c, lo, hi)`` with the builder in the
    loop's body, once per chunk ``C-1-t, C-1-t-T, ...`` down to 0. The calling thread
    (0) runs the last chunk, so of a chunked append's chunks (runtime/chunks.py), the
    ones it stitches after the join, the last is in its own cache (SpGEMM 2000² on 2
    threads, one process, interleaved: 0.826-0.917 ms against 0.863-0.949 taking t,
    t+T, ...). The team driver (team.py) takes its phases' chunks so too."""
    zero, one = ir.Constant(_I64, 0), ir.Constant(_I64, 1)
    head = b.block
    loop = b.append_basic_block("chunk")
    done = b.append_basic_block("chunks.done")
    first = b.sub(b.sub(chunks, one), t)
    b.cbranch(b.icmp_signed(">=", first, zero), loop, done)
    b.position_at_end(loop)
    c = b.phi(_I64, name="c")
    c.add_incoming(first, head)
    lo = b.load(b.gep(bounds, [c], inbounds=True, source_etype=_I64), typ=_I64)
    hi = b.load(b.gep(bounds, [b.add(c, one)], inbounds=True, source_etype=_I64), typ=_I64)
    yield c, lo, hi
    nxt = b.sub(c, team, name="c.next")
    c.add_incoming(nxt, b.block)
    b.cbranch(b.icmp_signed(">=", nxt, zero), loop, done)
    b.position_at_end(done)


def run_on_team(b, llmod, gomp, body, frame, nthreads) -> None:
    """Call ``body(frame)`` on a libgomp team of ``nthreads`` (``GOMP_parallel``), or, in
    a process made by ``os.fork()`` (the runtime's ``spcomp_forked`` word set), on the
    calling thread alone, a team of one; the builder is left after the call."""
    fn = b.function
    forked = llmod.globals.get(FORKED_SYMBOL) or ir.GlobalVariable(llmod, _I32, name=FORKED_SYMBOL)
    alone, team, done = (fn.append_basic_block(x) for x in ("forked", "team", "done"))
    b.cbranch(b.icmp_signed("!=", b.load(forked, typ=_I32), ir.Constant(_I32, 0)), alone, team)
    b.position_at_end(alone)  # outside a parallel region the body is thread 0 of a team of 1
    b.call(body, [frame])
    b.branch(done)
    b.position_at_end(team)
    b.call(gomp, [body, frame, b.trunc(nthreads, _I32), ir.Constant(_I32, 0)])
    b.branch(done)
    b.position_at_end(done)


def driver_signature(f: n.Function):
    """ctypes prototype of ``NAME__omp``."""
    base = ctypes_signature(f)
    rest = [ctypes.c_void_p if p.name in f.per_chunk else t for p, t in zip(f.params[2:], base._argtypes_[2:])]
    return ctypes.CFUNCTYPE(ctypes.c_int32, ctypes.c_int64, ctypes.c_void_p, *rest)
