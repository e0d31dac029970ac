"""llvmlite 0.50 (LLVM 22.1) keeps memory for every new-pass-manager run: a reproducer.

Pure llvmlite, no spcomp, for an upstream report. Each mode parses a small CSR SpMV
function (LLVM IR below), optimises it with the O3 pipeline of
``create_pass_builder(tm, pto).getModulePassManager()``, closes everything llvmlite
lets us close, and reports what stays allocated per run (the slope of glibc's
``mallinfo2`` in-use bytes and of RSS between N = 100, 200 and 400 runs, after 50
warm-up runs), and the time per run.

Measured here (x86-64, 2 cores shared with other work, Python 3.11, llvmlite 0.50.0,
LLVM 22.1.0), malloc'd KiB kept per run (RSS grows by the same):

===========  ===================================================================  =====
mode         what each run does                                                   kept
===========  ===================================================================  =====
build        ``pb.getModulePassManager().close()``                                30.0
o3           build, ``mpm.run(mod, pb)``, ``mpm.close()``, ``mod.close()``        75.2
o3-free      the same, the manager freed by ``LLVMPY_DisposeNewModulePassManger``  0.1
o3-free-ctx  the same, the module parsed into ``create_context()``, closed after   0.1
newpb        o3-free-ctx with a new PassBuilder every run, the old one closed      1.5
===========  ===================================================================  =====

Three causes:

1. ``ModulePassManager.close()`` frees nothing (nor does ``__del__``): the class is
   ``ModulePassManager(ffi.ObjectRef, NewPassManager)``, so the no-op
   ``ObjectRef._dispose`` precedes ``NewPassManager._dispose`` in the MRO and
   ``LLVMPY_DisposeNewModulePassManger`` is never called. Same for
   ``FunctionPassManager``. An O3 pipeline is ~30 KB built and ~75 KB after a run.
   Fix: swap the bases, or define ``_dispose`` on each subclass.
2. ``LLVMPY_RunNewModulePassManager`` calls ``StandardInstrumentations::registerCallbacks``
   on the PassBuilder's ``PassInstrumentationCallbacks`` on every run and nothing
   removes them (they also capture the ``StandardInstrumentations`` on the stack,
   which dies when the run returns). Every pass of every later run calls all of
   them: with ``--time``, one PassBuilder went from 17.9 ms/run (runs 1-500) to
   61, 89 and 131.7 ms/run (runs 1501-2000); replaced every 100 runs it stayed at
   7-12 ms/run. (A few hundred bytes a run stay allocated too, hidden in the
   0.1 above.)
3. ``LLVMPY_CreatePassBuilder`` allocates the ``PassInstrumentationCallbacks`` with
   ``new`` and ``LLVMPY_DisposePassBuilder`` never deletes it (``newpb``: ~1.5 KB
   a builder).

(For this small function ``o3-free`` and ``o3-free-ctx`` keep the same; for
spcomp's kernels, whose vectorised loops make many constants and metadata nodes,
the global context kept ~2.4 KB a compile more. That is LLVM's design, not a leak:
spcomp parses each module into a context of its own.)

Run: ``python benchmarks/llvmlite_leak_repro.py [MODE ...] [--time]`` (all modes by
default, ~1 minute; ``--time`` adds the 2000-run timing, ~2 minutes).
"""
from __future__ import annotations

import ctypes
import gc
import os
import sys
import time

import llvmlite.binding as llvm

IR = r"""
define void @NAME(i32 %n, ptr noalias %pos, ptr noalias %crd, ptr noalias %val,
                  ptr noalias %x, ptr noalias %y) {
entry:
  %has_rows = icmp sgt i32 %n, 0
  br i1 %has_rows, label %row, label %done
row:
  %i = phi i32 [ 0, %entry ], [ %i1, %row_end ]
  %i64 = sext i32 %i to i64
  %pp = getelementptr i32, ptr %pos, i64 %i64
  %lo = load i32, ptr %pp
  %i1 = add i32 %i, 1
  %i164 = sext i32 %i1 to i64
  %pp1 = getelementptr i32, ptr %pos, i64 %i164
  %hi = load i32, ptr %pp1
  %any = icmp slt i32 %lo, %hi
  br i1 %any, label %inner, label %row_end
inner:
  %p = phi i32 [ %lo, %row ], [ %p1, %inner ]
  %acc = phi double [ 0.0, %row ], [ %acc1, %inner ]
  %p64 = sext i32 %p to i64
  %cp = getelementptr i32, ptr %crd, i64 %p64
  %j = load i32, ptr %cp
  %j64 = sext i32 %j to i64
  %vp = getelementptr double, ptr %val, i64 %p64
  %v = load double, ptr %vp
  %xp = getelementptr double, ptr %x, i64 %j64
  %xv = load double, ptr %xp
  %m = fmul double %v, %xv
  %acc1 = fadd double %acc, %m
  %p1 = add i32 %p, 1
  %more = icmp slt i32 %p1, %hi
  br i1 %more, label %inner, label %row_end
row_end:
  %sum = phi double [ 0.0, %row ], [ %acc1, %inner ]
  %yp = getelementptr double, ptr %y, i64 %i64
  store double %sum, ptr %yp
  %next = icmp slt i32 %i1, %n
  br i1 %next, label %row, label %done
done:
  ret void
}
"""

MODES = ("build", "o3", "o3-free", "o3-free-ctx", "newpb")

_libc = ctypes.CDLL("libc.so.6")


class _MallInfo2(ctypes.Structure):
    _fields_ = [(f, ctypes.c_size_t) for f in
                "arena ordblks smblks hblks hblkhd usmblks fsmblks uordblks fordblks keepcost".split()]


_libc.mallinfo2.restype = _MallInfo2


def malloc_in_use() -> int:
    m = _libc.mallinfo2()
    return m.uordblks + m.hblkhd


def rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def free_pass_manager(mpm) -> None:
    """What ``mpm.close()`` should do (cause 1)."""
    llvm.ffi.lib.LLVMPY_DisposeNewModulePassManger(mpm)
    mpm.detach()


class Runner:
    def __init__(self, mode: str):
        llvm.initialize_native_target()
        llvm.initialize_native_asmprinter()
        self.mode = mode
        self.tm = llvm.Target.from_default_triple().create_target_machine(opt=3)
        self.pto = llvm.create_pipeline_tuning_options(speed_level=3)
        self.pb = llvm.create_pass_builder(self.tm, self.pto)
        self.count = 0

    def run(self, renew_every: int = 0) -> None:
        self.count += 1
        mode = self.mode
        if mode == "build":
            self.pb.getModulePassManager().close()
            return
        if mode == "newpb" or (renew_every and self.count % renew_every == 0):
            self.pb.close()
            self.pb = llvm.create_pass_builder(self.tm, self.pto)
        context = llvm.create_context() if mode in ("o3-free-ctx", "newpb") else None
        module = llvm.parse_assembly(IR.replace("NAME", f"f{self.count}"), context=context)
        mpm = self.pb.getModulePassManager()
        mpm.run(module, self.pb)
        if mode == "o3":
            mpm.close()
        else:
            free_pass_manager(mpm)
        module.close()
        if context is not None:
            context.close()


def measure(mode: str) -> None:
    """Kept per run: the slope between 100 and 400 runs, after 50 warm-up runs."""
    runner = Runner(mode)
    points = {}
    for n in (0, 100, 200, 400):
        while runner.count < 50 + n:
            runner.run()
        gc.collect()
        points[n] = (malloc_in_use(), rss(), time.perf_counter())
    (m0, r0, _), (m1, r1, _), (m2, r2, t2) = points[100], points[200], points[400]
    per = 300
    print(f"{mode:12s} kept per run: {(m2 - m0) / per / 1024:6.1f} KiB malloc'd "
          f"(N=100..200: {(m1 - m0) / 100 / 1024:.1f}), {(r2 - r0) / per / 1024:6.1f} KiB RSS  "
          f"({(t2 - points[0][2]) / 400 * 1000:.1f} ms/run)", flush=True)


def timing(renew_every: int, runs: int = 2000, block: int = 500) -> None:
    runner = Runner("o3-free-ctx")
    t = time.perf_counter()
    for k in range(1, runs + 1):
        runner.run(renew_every)
        if k % block == 0:
            now = time.perf_counter()
            label = f"new PassBuilder every {renew_every}" if renew_every else "one PassBuilder"
            print(f"{label:28s} runs {k - block + 1:4d}-{k}: {(now - t) / block * 1000:6.1f} ms/run",
                  flush=True)
            t = now


def main(argv: list[str]) -> None:
    modes = [a for a in argv if not a.startswith("--")] or list(MODES)
    import llvmlite
    print(f"llvmlite {llvmlite.__version__}, LLVM {'.'.join(map(str, llvm.llvm_version_info))}")
    for mode in modes:
        measure(mode)
    if "--time" in argv:
        timing(0)
        timing(100)


if __name__ == "__main__":
    main(sys.argv[1:])
