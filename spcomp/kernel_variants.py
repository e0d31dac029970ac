"""The compiled variants of one kernel: which a call runs, and building or loading them.

A kernel is lowered once per index width (32-bit first, 64-bit on demand) and,
for a sparse output assembled in parallel, in variants a call may pick instead:
"one-pass" (no parallel loop: a call too small to split), "chunks" (each
``[lo, hi)`` call appends its rows to arrays of its own, runtime/chunks.py) and
"meet" (chunks sharing the output's arrays, runtime/meet_chunks.py). Each is
compiled once, kept under ``(bits, tag)`` so that ``save`` ships it, and looked
up in the user's disk cache before it is built.
"""
from __future__ import annotations

import dataclasses

from .errors import SpcompError
from .runtime import chunks
from .runtime.launch import Variant


class KernelVariants:
    """What :class:`spcomp.kernel.Kernel` keeps of its compiled variants
    (``_variants``, ``_options``, ``_target``, ``notation``, ``expression``, ``runtime``)."""

    def _variant(self, bits: int) -> Variant:
        v = self._variants.get(bits)
        if v is None:
            v = self._variants[bits] = self._load_or_build(bits)
        return v

    def _variant_with(self, bits: int, tag: str, **changes) -> Variant:
        """The variant lowered with ``changes`` to this kernel's options, built once
        and kept under ``(bits, tag)`` (so ``save`` ships it): "one-pass" (no parallel
        loop: a sparse output appended in one pass, for calls too small to split) and
        "chunks" (each ``[lo, hi)`` call appends its rows to arrays of its own)."""
        key = (bits, tag)
        v = self._variants.get(key)
        if v is None:
            v = self._variants[key] = self._load_or_build(bits, dataclasses.replace(self._options, **changes))
        return v

    def _assembly_variant(self, variant, bits, sizes, storages):
        """For a sparse output assembled in parallel: the variant a call of this size
        runs -- one pass on one thread, chunks on host threads -- or None for the
        two-phase count and fill (the GPU, or rows the chunks cannot cover)."""
        caps = self.runtime.caps
        if caps.host_threads and not self.runtime.launcher.splits(variant.lowered, sizes, storages):
            return self._variant_with(bits, "one-pass", parallel=None)
        if caps.chunked_assembly and chunks.preferred(variant.lowered):
            return self._chunks_variant(bits)
        return None

    def _chunks_variant(self, bits: int):
        """The chunks a split call appends by: "meet" where they can share the output's
        arrays (runtime/meet_chunks.py; "chunks" its fallback), else "chunks"."""
        chunked = self._variant_with(bits, "chunks", append_chunks=True)
        if not chunked.lowered.append_chunks:
            return None
        if not (chunked.lowered.output.meetable and chunks.MEET):
            return chunked
        meet = self._variant_with(bits, "meet", append_chunks=True, meet_chunks=True)
        meet.fallback = chunked
        return meet

    def _load_or_build(self, bits: int, options=None) -> Variant:
        from .runtime import cache
        options = dataclasses.replace(options or self._options, index_bits=bits)
        target = self._target
        digest = None
        if target.capabilities.saveable:
            tensors = sorted((t.name, t.order, t.format.spec(), t.dtype) for t in self.notation.tensors.values())
            digest = cache.key_digest((self.expression, repr(self.notation), tensors, repr(options), bits,
                                       target.name) + target.cache_key())
            payload = cache.load_entry(digest)
            if payload is not None:
                try:
                    lowered = payload["lowered"]
                    compiled = target.load(payload["compiled"], lowered)
                    return Variant(lowered, compiled, target.entry(compiled, lowered))
                except (SpcompError, KeyError, TypeError, AttributeError):
                    pass  # unusable here: rebuild below
        lowered = target.lower(self.notation, options)
        compiled = target.build(lowered)
        if digest is not None:
            cache.store_entry(digest, {"lowered": lowered, "compiled": target.dump(compiled)})
        return Variant(lowered, compiled, target.entry(compiled, lowered))
