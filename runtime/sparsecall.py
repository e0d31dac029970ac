"""A sparse output's call repeated with the same operands, with the per-call Python cut.

A call that assembles a sparse output (SpGEMM into CSR, a sparse sum) goes
through the general path every time: operands converted and looked up, sizes
bound and checked, the variant chosen (one pass or chunks), the first capacity
and the call's work estimated, the argument list built: ~100 us of Python per
call on the session-14 host, a tenth of a 2000² SpGEMM. All of it depends on the
operands alone, so when the very operand objects come back (fastcall.py checks
them) :class:`SparseRepeat` reuses it and does only what each call must: a fresh
output (``Output.again``), the native call, the result.
"""
from __future__ import annotations

import os
import weakref

from . import chunks, launch, threads as _threads
from .fastcall import MISS, build_sparse
from .launch import WiderIndices


def call_settings() -> tuple:
    """The module settings (tests set them) that decide a call's variant, its split
    or its first capacity besides the operands: a repeat made under others misses."""
    return (_threads.MIN_PARALLEL_WORK, os.environ.get("SPCOMP_MIN_PARALLEL_WORK"), chunks.MODE,
            chunks.MEET, launch.FIRST_CAPACITY)


class SparseRepeat:
    """What one call worked out from its operands, to run it again: the variant, the
    storages (held weakly: the operand cache and the operands own them), sizes,
    capacity, work units, the argument list with the output's slots to fill, and an
    output to copy the layout of."""

    __slots__ = ("ctx", "variant", "refs", "sizes", "bits", "capacity", "units", "proto", "settings",
                 "template", "out_slots", "lohi", "__weakref__")

    def __init__(self, ctx, variant, out, storages, sizes, bits, capacity, units):
        self.ctx, self.variant, self.sizes, self.bits = ctx, variant, sizes, bits
        self.capacity, self.units = capacity, units
        self.refs = tuple((name, weakref.ref(st)) for name, st in storages.items())
        self.proto = out.again(allocate=False)  # (holds no arrays between calls)
        self.settings = call_settings()
        self.template, self.out_slots, self.lohi = None, (), None
        if ctx.caps.pointers:
            # inputs' pointers, sizes and capacity are the operands'; only the output's change
            args, self.lohi = ctx.args(variant.arg_plan, storages, sizes, bits, lambda b: 0, capacity)
            self.template = tuple(args)
            self.out_slots = tuple((k, b) for k, (role, b, _x) in enumerate(variant.arg_plan) if role == "out")

    def __call__(self):
        if call_settings() != self.settings:
            return MISS
        storages = {}
        for name, ref in self.refs:
            st = ref()
            if st is None:
                return MISS
            storages[name] = st
        out = self.proto.again()
        capacity = out.capacity = self.capacity
        variant, ctx = self.variant, self.ctx
        low = variant.lowered
        try:
            if self.template is not None:
                args, lohi = list(self.template), self.lohi
                for k, b in self.out_slots:
                    args[k] = out.arg(b, True)
                if capacity is not None and low.append_chunks:
                    return chunks.run_chunks(ctx, variant, storages, self.sizes, self.bits, out, capacity,
                                             self.units, (args, lohi))
            elif capacity is not None and low.append_chunks:
                return chunks.run_chunks(ctx, variant, storages, self.sizes, self.bits, out, capacity, self.units)
            else:
                args, lohi = ctx.args(variant.arg_plan, storages, self.sizes, self.bits,
                                      lambda b: out.arg(b, ctx.caps.pointers), capacity)
            try:
                statuses = ctx.run(variant, args, lohi, low, self.sizes, storages, self.units)
            except BaseException:  # Ctrl-C (interrupt.py): free what the kernel allocated
                out.discard()
                raise
            for s in statuses:
                if s != 0:
                    out.discard()
                    ctx.fail(s, out)
            return out.result()
        except WiderIndices:  # the general path runs the 64-bit kernel
            return MISS


def build(ctx, variant, out, storages, sizes, bits, capacity, units, given, operands, sizing):
    """The FastCall (fastcall.py) that repeats this sparse output's call, or None:
    an output given (``+=``), one assembled by bounded appends (the GPU's rerun
    when they overflow), dense levels expanded afterwards, or operands the
    FastCall cannot check."""
    low = variant.lowered
    if given is not None or out.dense_out or low.output.bounded or low.output.expand is not None \
            or sizing.output.expand is not None:
        return None

    def make():
        try:
            return SparseRepeat(ctx, variant, out, storages, sizes, bits, capacity, units)
        except TypeError:  # a storage that cannot be referenced weakly
            return None
    return build_sparse(ctx.plan, ctx.operands, operands, storages, make, units)


__all__ = ["SparseRepeat", "build"]
