"""Saving, loading and disk-caching a program (:class:`~spcomp.program.ProgramKernel`).

A program's record (runtime/record.py data, packed and signed by runtime/cache.py)
holds its checked statements and options and, per segment, a kernel's own bytes or
a fused run's lowerings, kernel IR and object code for every index width built
(its function over chunks of rows too), so loading runs no lowering and no LLVM.
The same record keys the user's disk cache. Kept apart from the planner in
``program.py``: this is the one place that knows the record's layout.
"""
from __future__ import annotations

from .errors import CacheError, SpcompError
from .kernel import Kernel
from .lower.fuse import FusedParam
from .lower.tiles import settings_key as tiles_key
from .runtime.program import FusedBuild


class SavedProgram:
    """What :class:`~spcomp.program.ProgramKernel` adds to save, load and cache itself;
    it plans (``_plan``), builds fused runs (``_fused_run``, ``_compiled``) and has
    ``program``, ``expression``, ``segments``, ``_options`` and ``_target``."""

    def save(self, path, key=None) -> None:
        """Write this program (every native function it runs, as :meth:`Kernel.save`
        writes a kernel) to ``path``; :func:`spcomp.load` reads it without compiling.
        The same rules as a kernel file: it holds machine code, so load only files
        you trust; with ``key`` it is signed (HMAC-SHA256) and loading needs the key."""
        from pathlib import Path

        from .runtime import cache
        cache.write_atomic(Path(path), self.to_bytes(key))

    def to_bytes(self, key=None) -> bytes:
        """The bytes :meth:`save` writes (``spcomp.loads`` reads them)."""
        from .runtime import cache, trust
        return cache.pack(self.payload(), trust.as_key(key))

    def payload(self) -> dict:
        """The program as record data (runtime/record.py): its checked statements, the
        options, and per segment a kernel's own bytes or the fused function's
        lowerings, kernel IR and object code for each index width built."""
        if not self._target.capabilities.saveable:
            raise SpcompError(f"programs of backend {self._target.name!r} cannot be saved")
        p = self.program
        segments = []
        for kind, seg, run in self.segments:
            if kind == "kernel":
                segments.append({"kind": "kernel", "run": list(run), "kernel": seg.to_bytes(),
                                 "apart": self.apart.get(run[0])})
                continue
            segments.append({"kind": "fused", "run": list(run), "variants": self._built_records(seg.variants),
                             "chunks": self._built_records(seg.chunk_variants),
                             "sizing": {st.name: st.parallel for st in seg.steps if st.parallel is not None},
                             "why": seg.why})
        return {"kind": "program", "expression": self.expression, "statements": p.statements,
                "texts": p.texts, "inputs": p.inputs, "outputs": p.outputs, "temporaries": p.temporaries,
                "chosen": p.chosen,
                "options": self._options, "backend": self._target.name, "machine": self._target.cache_key(),
                "segments": segments}

    def _built_records(self, builds: dict) -> dict:
        """Index width -> the record of that width's FusedBuild (None where it has none)."""
        return {bits: None if b is None else {
            "lowered": list(b.lows), "module": b.module, "compiled": self._target.dump(b.compiled),
            "sources": [[x.statement, x.position] for x in b.sources], "merged": list(b.merged), "rows": list(b.rows),
            "own_pos": list(b.own_pos), "tiles": dict(b.tiles),
            "threads": b.variant.lowered.threads if b.variant is not None else None} for bits, b in builds.items()}

    @classmethod
    def from_payload(cls, payload: dict, where: str) -> "SavedProgram":
        """The program a verified :meth:`payload` describes (``where`` names it in errors)."""
        from .backends import get_target
        from .frontend.program import Program
        target = get_target(payload["backend"])
        if payload["machine"] != target.cache_key():
            raise CacheError(f"{where} was compiled for another machine or library version "
                             f"({payload['machine'][0]}); recompile it here")
        program = Program(tuple(payload["statements"]), tuple(payload["texts"]), tuple(payload["inputs"]),
                          tuple(payload["outputs"]), tuple(payload["temporaries"]),
                          tuple(payload.get("chosen", ())))
        return cls(payload["expression"], program, payload["options"], target, None, saved=payload["segments"])

    def _restore(self, segments: list) -> list:
        """The segments of a saved program: kernels from their own bytes, fused runs
        from their records (no lowering, no LLVM for the widths saved)."""
        out = []
        for entry in segments:
            run = list(entry["run"])
            if entry["kind"] == "kernel":
                if entry.get("apart"):  # (k.loops: why it does not join the run before it)
                    self.apart[run[0]] = entry["apart"]
                out.append(("kernel", Kernel.from_bytes(entry["kernel"], None, "a saved program's kernel"), run))
                continue
            built = {bits: self._restore_built(v) for bits, v in entry["variants"].items()}
            chunked = ({bits: v and self._restore_built(v) for bits, v in entry["chunks"].items()}
                       if "chunks" in entry else None)  # (a record from before chunks: planned here)
            fused = self._fused_run(run, built[32].lows, built, entry["sizing"], chunked)
            fused.why = entry.get("why")  # (k.loops: why it has no chunked function)
            out.append(("fused", fused, run))
        return out

    def _restore_built(self, v: dict) -> FusedBuild:
        module = v["module"]
        sources = [FusedParam(int(a), int(b)) for a, b in v["sources"]]
        return self._compiled(module.function(module.entry), sources, list(v["merged"]), list(v["lowered"]),
                              v["threads"], saved=v["compiled"], rows=list(v.get("rows", ())),
                              own_pos=list(v.get("own_pos", ())), tiles=v.get("tiles"))

    def _cached_plan(self) -> list:
        """The segments from the disk cache (runtime/cache.py: a signed record under this
        user's key) when this program was compiled before, else planned and stored."""
        from .runtime import cache
        target = self._target
        if not target.capabilities.saveable:
            return self._plan()
        tensors = sorted((t.name, t.order, t.format.spec(), t.dtype) for t in self.program.tensors.values())
        digest = cache.key_digest(("program", self.expression, repr(self.program), tensors, self.outputs,
                                   repr(self._options), target.name) + target.cache_key() + tiles_key())
        payload = cache.load_entry(digest)
        if payload is not None:
            try:
                return self._restore(payload["segments"])
            except (SpcompError, KeyError, TypeError, AttributeError, ValueError, IndexError):
                pass  # unusable here: plan again below
        segments = self._plan()
        self.segments = segments
        try:
            cache.store_entry(digest, self.payload())
        except SpcompError:
            pass
        return segments
