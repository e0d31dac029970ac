"""spcomp next to TACO's generated C (and SciPy), same data, same threads, one process.

    python -m benchmarks.taco --build [--source DIR] [--quick] [--threads 1,2] [--keep]
    python -m benchmarks.taco --taco PATH/TO/bin/taco          # a taco built before (--keep)

With ``--build``, TACO is built from source in a private temporary directory
(mode 0700, removed at the end unless ``--keep``): cmake (Release, OpenMP on,
Python bindings off), then ``make taco-tool``. The source is ``--source DIR``,
else ``$SPCOMP_TACO_SOURCE``, else a git mirror found at one of ``MIRRORS``; a
git directory (bare or not) is exported with ``git archive HEAD``. The ``taco``
command-line tool then writes the C of each kernel (its ``evaluate``: compute
and assembly, allocating the output as an spcomp call does), which is compiled
with ``gcc -O3 -march=native -fopenmp`` into a shared library and called through
ctypes with ``taco_tensor_t`` structs over the very arrays spcomp and SciPy read.
Each result is checked against SciPy / NumPy before anything is timed; the three
are timed in interleaved rounds (benchmarks/common.py) at each thread count.
TACO's parallel loops run with OpenMP's static schedule and the thread count set
before each call, as TACO's own runtime does (``Module::callFuncPacked``).

It is optional and not part of CI: without cmake, gcc, make or the source it
prints why and exits 0. Nothing of TACO is kept in this repository.
"""
from __future__ import annotations

import argparse
import ctypes
import ctypes.util
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field

import numpy as np
import scipy.sparse as sp

import spcomp

from . import common as C

# where a git mirror of tensor-compiler/taco may be found when no --source is given
MIRRORS = ("/work/.mirror/tensor-compiler+taco/repo",)
CFLAGS = ("-O3", "-march=native", "-fopenmp", "-fPIC", "-shared")


class Skip(Exception):
    """The comparison cannot run here; the message says why."""


# ------------------------------------------------------------ building TACO

def find_source(given: str | None) -> str:
    """The TACO source to build: ``given``, ``$SPCOMP_TACO_SOURCE`` or a known mirror."""
    candidates = [given] if given else [os.environ.get("SPCOMP_TACO_SOURCE")] + list(MIRRORS)
    for path in candidates:
        if path and (is_tree(path) or is_git_dir(path)):
            return path
    if given:
        raise Skip(f"{given} is neither a TACO source tree (CMakeLists.txt, src/, tools/taco.cpp) "
                   "nor a git directory of one")
    raise Skip("no TACO source: pass --source DIR (a checkout of github.com/tensor-compiler/taco) "
               "or set SPCOMP_TACO_SOURCE")


def is_tree(path: str) -> bool:
    return all(os.path.exists(os.path.join(path, p)) for p in ("CMakeLists.txt", "src", "tools/taco.cpp"))


def is_git_dir(path: str) -> bool:
    return all(os.path.exists(os.path.join(path, p)) for p in ("HEAD", "objects", "refs"))


def missing_tools(*names) -> list:
    return [n for n in names if shutil.which(n) is None]


def build_taco(source: str, workdir: str, jobs: int) -> str:
    """Build TACO's command-line tool from ``source`` under ``workdir``; its path."""
    lacking = missing_tools("cmake", "make", "gcc", "g++") + ([] if is_tree(source) else missing_tools("git"))
    if lacking:
        raise Skip(f"cannot build TACO: {', '.join(lacking)} not found on PATH")
    tree = os.path.join(workdir, "src")
    os.mkdir(tree)
    if is_tree(source):
        shutil.copytree(source, tree, dirs_exist_ok=True, ignore=shutil.ignore_patterns(".git", "build"))
    else:
        archive = subprocess.run(["git", f"--git-dir={source}", "archive", "HEAD"], capture_output=True)
        if archive.returncode != 0:
            raise Skip(f"git archive of {source} failed: {archive.stderr.decode(errors='replace')[-500:]}")
        subprocess.run(["tar", "-x", "-C", tree], input=archive.stdout, check=True)
    # TACO's CMakeLists stops unless the pybind11 submodule is checked out, even with
    # the Python bindings off (a git archive has no submodules): an empty stand-in
    stand_in = os.path.join(tree, "python_bindings", "pybind11", "CMakeLists.txt")
    if not os.path.exists(stand_in):
        os.makedirs(os.path.dirname(stand_in), exist_ok=True)
        open(stand_in, "w").close()
    build = os.path.join(workdir, "build")
    os.mkdir(build)
    steps = [["cmake", "-DCMAKE_BUILD_TYPE=Release", "-DOPENMP=ON", "-DPYTHON=OFF", tree],
             ["make", f"-j{jobs}", "taco-tool"]]
    for cmd in steps:
        C.eprint(f"[taco] {' '.join(cmd)}")
        t0 = time.perf_counter()
        done = subprocess.run(cmd, cwd=build, capture_output=True, text=True)
        if done.returncode != 0:
            raise Skip(f"building TACO failed at `{' '.join(cmd)}` (exit {done.returncode}):\n"
                       f"{(done.stdout + done.stderr)[-3000:]}")
        C.eprint(f"[taco]   {time.perf_counter() - t0:.0f} s")
    tool = os.path.join(build, "bin", "taco")
    if not os.path.exists(tool):
        raise Skip(f"the TACO build finished but {tool} is missing")
    return tool


# ------------------------------------------------------ TACO's C through ctypes

class TacoTensor(ctypes.Structure):
    """TACO's ``taco_tensor_t`` (include/taco/taco_tensor_t.h)."""
    _fields_ = [("order", ctypes.c_int32), ("dimensions", ctypes.POINTER(ctypes.c_int32)),
                ("csize", ctypes.c_int32), ("mode_ordering", ctypes.POINTER(ctypes.c_int32)),
                ("mode_types", ctypes.POINTER(ctypes.c_int)), ("indices", ctypes.c_void_p),
                ("vals", ctypes.c_void_p), ("fill_value", ctypes.c_void_p), ("vals_size", ctypes.c_int32)]


DENSE, SPARSE = 0, 1  # taco_mode_t


def _ptr(a: np.ndarray) -> int:
    return a.ctypes.data


class Operand:
    """A ``taco_tensor_t`` over NumPy arrays (kept alive here): ``levels[l]`` is None
    for a dense mode, ``(pos, crd)`` int32 arrays for a compressed one."""

    def __init__(self, shape, levels, vals):
        order = len(shape)
        self.keep = [np.ascontiguousarray(vals, np.float64)]
        self.dims = np.array(shape, np.int32)
        self.ordering = np.arange(order, dtype=np.int32)
        self.types = np.array([DENSE if lv is None else SPARSE for lv in levels], np.intc)
        self.per_mode = []
        for d, lv in enumerate(levels):
            if lv is None:  # a dense mode's one "index array" holds its size
                arrays = [np.array([shape[d]], np.int32)]
            else:
                arrays = [np.ascontiguousarray(a, np.int32) for a in lv]
            self.keep += arrays
            self.per_mode.append((ctypes.c_void_p * 2)(*[_ptr(a) for a in arrays] + [0] * (2 - len(arrays))))
        self.indices = (ctypes.c_void_p * max(order, 1))(*[ctypes.addressof(m) for m in self.per_mode])
        self.fill = np.zeros(1)
        self.struct = TacoTensor(order, self.dims.ctypes.data_as(ctypes.POINTER(ctypes.c_int32)), 8,
                                 self.ordering.ctypes.data_as(ctypes.POINTER(ctypes.c_int32)),
                                 self.types.ctypes.data_as(ctypes.POINTER(ctypes.c_int)),
                                 ctypes.addressof(self.indices), _ptr(self.keep[0]), _ptr(self.fill),
                                 self.keep[0].size)

    @classmethod
    def dense(cls, a: np.ndarray):
        return cls(a.shape, [None] * a.ndim, a.reshape(-1))

    @classmethod
    def csr(cls, m):
        return cls(m.shape, [None, (m.indptr, m.indices)], m.data)

    @classmethod
    def csf(cls, t):
        return cls(t.shape, [(lv["pos"], lv["crd"]) for lv in t.levels], t.vals)

    @classmethod
    def output(cls, shape, sparse_levels=()):
        """An output: its arrays are left for ``evaluate`` to allocate (malloc)."""
        out = cls(shape, [(np.zeros(0), np.zeros(0)) if d in sparse_levels else None
                          for d in range(len(shape))], np.zeros(0))
        out.struct.vals = None
        for d in sparse_levels:
            out.per_mode[d][0] = out.per_mode[d][1] = None
        return out


_libc = ctypes.CDLL(ctypes.util.find_library("c"))
_libc.free.argtypes = [ctypes.c_void_p]


def _view(ptr, n, dtype) -> np.ndarray:
    """A copy of ``n`` items at ``ptr``."""
    if n == 0:
        return np.zeros(0, dtype)
    buf = (ctypes.c_char * (n * np.dtype(dtype).itemsize)).from_address(ptr)
    return np.frombuffer(buf, dtype=dtype, count=n).copy()


class TacoKernel:
    """One kernel's ``evaluate`` compiled from TACO's C, callable on prepared operands."""

    def __init__(self, tool: str, workdir: str, key: str, expr: str, flags: list):
        base = os.path.join(workdir, key)
        cmd = [tool, expr, *flags, f"-write-source={base}.c"]
        done = subprocess.run(cmd, capture_output=True, text=True)
        if done.returncode != 0 or not os.path.exists(base + ".c"):
            raise Skip(f"taco could not emit {expr!r}: {(done.stdout + done.stderr).strip()[-800:]}")
        self.command = " ".join(cmd[1:-1])
        source = open(base + ".c").read()
        sig = re.search(r"int evaluate\(([^)]*)\)", source)
        self.names = [p.split("*")[-1].strip() for p in sig.group(1).split(",")]
        self.parallel = "#pragma omp parallel" in source.split("int evaluate(")[-1].split("\n}\n")[0]
        args = ", ".join(f"t[{i}]" for i in range(len(self.names)))
        with open(base + ".c", "a") as f:  # our entry: TACO's runtime's schedule and thread count, then evaluate
            f.write("\n#include <omp.h>\nint spcomp_bench_evaluate(int nthreads, taco_tensor_t **t) {\n"
                    "  omp_set_schedule(omp_sched_static, 0);\n  omp_set_num_threads(nthreads);\n"
                    f"  return evaluate({args});\n}}\n")
        done = subprocess.run(["gcc", *CFLAGS, "-o", base + ".so", base + ".c", "-lm"], capture_output=True,
                              text=True)
        if done.returncode != 0:
            raise Skip(f"gcc could not compile TACO's C for {expr!r}: {done.stderr[-1500:]}")
        self.fn = ctypes.CDLL(base + ".so").spcomp_bench_evaluate
        self.fn.argtypes = [ctypes.c_int, ctypes.c_void_p]
        self.fn.restype = ctypes.c_int

    def bind(self, out: Operand, operands: dict, threads: int, read):
        """A function of no arguments running ``evaluate`` on ``operands`` (by TACO's
        names, the output under its own) with ``threads``; it frees what TACO
        allocated and returns ``read(out)`` of it only when asked (the check)."""
        structs = [out.struct if n == self.names[0] else operands[n].struct for n in self.names]
        table = (ctypes.c_void_p * len(structs))(*[ctypes.addressof(s) for s in structs])
        fn, keep = self.fn, (operands, structs)

        def run(result=False):
            status = fn(threads, table)
            if status != 0:
                raise RuntimeError(f"TACO's evaluate returned {status}")
            value = read(out) if result else None
            _free_output(out)
            return value
        run.keep = keep
        return run


def _free_output(out: Operand) -> None:
    _libc.free(out.struct.vals)
    out.struct.vals = None
    for kind, mode in zip(out.types, out.per_mode):
        if kind == SPARSE:
            for s in (0, 1):
                _libc.free(mode[s])
                mode[s] = None


def read_dense(out: Operand) -> np.ndarray:
    shape = tuple(int(d) for d in out.dims)
    return _view(out.struct.vals, int(np.prod(shape)), np.float64).reshape(shape)


def read_csr(out: Operand):
    n, m = (int(d) for d in out.dims)
    pos = _view(out.per_mode[1][0], n + 1, np.int32)
    nnz = int(pos[-1])
    return sp.csr_matrix((_view(out.struct.vals, nnz, np.float64), _view(out.per_mode[1][1], nnz, np.int32), pos),
                         shape=(n, m))


# ----------------------------------------------------------------- the kernels

@dataclass
class Case:
    key: str
    name: str
    size: str
    taco_expr: str
    taco_flags: list
    run_spcomp: object
    taco_operands: dict
    out: Operand
    read: object
    check: object                 # result (SciPy / NumPy) -> (ok, message)
    scipy: object = None
    notes: list = field(default_factory=list)


class Data:
    """The data of every case, from one fixed seed (sizes of benchmarks/kernels.py)."""

    def __init__(self, sizes):
        self.s = sizes
        self.rng = np.random.default_rng(20240604)

    def csr(self, n, m, density):
        a = sp.random(n, m, density=density, format="csr", random_state=self.rng, dtype=np.float64)
        a.sum_duplicates()
        a.sort_indices()
        return a

    def tensor3(self):
        """A ``t_n``³ CSF tensor at ``t_density``: its coordinates, values and Tensor (made once)."""
        if not hasattr(self, "_t3"):
            tn = self.s.t_n
            nnz = int(round(self.s.t_density * tn ** 3))
            lin = np.sort(self.rng.choice(tn ** 3, size=nnz, replace=False))
            i, rem = np.divmod(lin, tn * tn)
            j, l = np.divmod(rem, tn)
            vals = self.rng.random(nnz)
            self._t3 = (i, j, l), vals, spcomp.Tensor.from_coo(np.stack([i, j, l]), vals, (tn,) * 3, "csf")
        return self._t3


# TACO's schedule for a sparse output on threads: count each row, scan, fill (its
# default appends in one pass and refuses to parallelise that: "must support inserts")
PARALLEL_ASSEMBLY = ["-s=assemble(C,Insert)", "-s=parallelize(i,CPUThread,NoRaces)"]


def case_spmv(d: Data) -> Case:
    n, s = d.s.n, d.s
    A, x = d.csr(n, n, s.density), d.rng.random(n)
    ref = A @ x
    k = spcomp.compile("y[i] = A[i,j] * x[j]", formats={"A": "csr"})
    return Case("spmv", "SpMV csr", f"{n}² {s.density:.1%}", "y(i) = A(i,j)*x(j)", ["-f=A:ds"],
                lambda: k(A=A, x=x), {"A": Operand.csr(A), "x": Operand.dense(x)}, Operand.output((n,)),
                read_dense, lambda r: C.check_dense(r, ref), lambda: A @ x)


def case_spmm(d: Data) -> Case:
    n, s = d.s.n, d.s
    A, X = d.csr(n, n, s.density), d.rng.random((n, s.k))
    ref = A @ X
    k = spcomp.compile("Y[i,k] = A[i,j] * X[j,k]", formats={"A": "csr"})
    return Case("spmm", f"SpMM (K={s.k})", f"{n}² {s.density:.1%}", "Y(i,k) = A(i,j)*X(j,k)", ["-f=A:ds"],
                lambda: k(A=A, X=X), {"A": Operand.csr(A), "X": Operand.dense(X)}, Operand.output((n, s.k)),
                read_dense, lambda r: C.check_dense(r, ref), lambda: A @ X)


def case_add(d: Data) -> Case:
    n, s = d.s.n, d.s
    A, B = d.csr(n, n, s.density), d.csr(n, n, s.density)
    ref = A + B
    k = spcomp.compile("C[i,j] = A[i,j] + B[i,j]", formats={"A": "csr", "B": "csr", "C": "csr"})
    return Case("add", "add csr+csr→csr", f"{n}² {s.density:.1%}", "C(i,j) = A(i,j)+B(i,j)",
                ["-f=A:ds", "-f=B:ds", "-f=C:ds"] + PARALLEL_ASSEMBLY, lambda: k(A=A, B=B),
                {"A": Operand.csr(A), "B": Operand.csr(B)}, Operand.output((n, n), (1,)), read_csr,
                lambda r: C.check_sparse(_scipy(r), ref), lambda: A + B)


def case_spgemm(d: Data) -> Case:
    gn, s = d.s.g_n, d.s
    A, B = d.csr(gn, gn, s.g_density), d.csr(gn, gn, s.g_density)
    ref = (A @ B).tocsr()
    k = spcomp.compile("C[i,j] = A[i,k] * B[k,j]", formats={"A": "csr", "B": "csr", "C": "csr"})
    return Case("spgemm", "SpGEMM csr·csr→csr", f"{gn}² {s.g_density:.1%}", "C(i,j) = A(i,k)*B(k,j)",
                ["-f=A:ds", "-f=B:ds", "-f=C:ds", "-s=reorder(i,k,j)", "-s=precompute(A(i,k)*B(k,j),j,j)"]
                + PARALLEL_ASSEMBLY,
                lambda: k(A=A, B=B), {"A": Operand.csr(A), "B": Operand.csr(B)}, Operand.output((gn, gn), (1,)),
                read_csr, lambda r: C.check_sparse(_scipy(r), ref), lambda: A @ B,
                ["spcomp's and TACO's results are sorted (TACO's workspace schedule sorts each row's "
                 "coordinates with qsort); SciPy's is not (A @ B leaves each row's columns in discovery order)"])


def case_sddmm(d: Data) -> Case:
    n, s = d.s.n, d.s
    B, D, E = d.csr(n, n, s.density), d.rng.random((n, s.k)), d.rng.random((s.k, n))
    rows = np.repeat(np.arange(n), np.diff(B.indptr))
    ref = sp.csr_matrix((B.data * (D[rows] * E.T[B.indices]).sum(axis=1), B.indices, B.indptr), shape=B.shape)
    k = spcomp.compile("C[i,j] = B[i,j] * D[i,k] * E[k,j]", formats={"B": "csr", "C": "csr"})
    return Case("sddmm", f"SDDMM (K={s.k})", f"{n}² {s.density:.1%}", "C(i,j) = B(i,j)*D(i,k)*E(k,j)",
                ["-f=B:ds", "-f=C:ds", "-s=reorder(i,j,k)"] + PARALLEL_ASSEMBLY, lambda: k(B=B, D=D, E=E),
                {"B": Operand.csr(B), "D": Operand.dense(D), "E": Operand.dense(E)},
                Operand.output((n, n), (1,)), read_csr, lambda r: C.check_sparse(_scipy(r), ref),
                notes=["TACO: loops i,j,k (its default order i,k,j appends a copy of each row per k into a "
                       "sparse output: wrong results), so each entry reads a column of the row-major E "
                       "(stride n): the same data as spcomp's; E stored column-major would be a copy"])


def case_ttv(d: Data) -> Case:
    tn, s = d.s.t_n, d.s
    (i, j, l), vals, Bt = d.tensor3()
    c = d.rng.random(tn)
    ref = np.zeros((tn, tn))
    np.add.at(ref, (i, j), vals * c[l])
    k = spcomp.compile("A[i,j] = B[i,j,k] * c[k]", formats={"B": "csf"})
    return Case("ttv", "TTV csf→dense", f"{tn}³ {s.t_density:.0%}", "A(i,j) = B(i,j,k)*c(k)", ["-f=B:sss"],
                lambda: k(B=Bt, c=c), {"B": Operand.csf(Bt), "c": Operand.dense(c)},
                Operand.output((tn, tn)), read_dense, lambda r: C.check_dense(r, ref))


def case_mttkrp(d: Data) -> Case:
    tn, s = d.s.t_n, d.s
    (i, j, l), vals, Bt = d.tensor3()
    Cm, Dm = d.rng.random((tn, s.rank)), d.rng.random((tn, s.rank))
    ref = np.zeros((tn, s.rank))
    np.add.at(ref, i, vals[:, None] * Cm[j] * Dm[l])
    k = spcomp.compile("A[i,j] = B[i,k,l] * C[k,j] * D[l,j]", formats={"B": "csf"})
    return Case("mttkrp", f"MTTKRP csf (R={s.rank})", f"{tn}³ {s.t_density:.0%}", "A(i,j) = B(i,k,l)*C(k,j)*D(l,j)",
                ["-f=B:sss"], lambda: k(B=Bt, C=Cm, D=Dm),
                {"B": Operand.csf(Bt), "C": Operand.dense(Cm), "D": Operand.dense(Dm)},
                Operand.output((tn, s.rank)), read_dense, lambda r: C.check_dense(r, ref))


CASES = {"spmv": case_spmv, "spmm": case_spmm, "add": case_add, "spgemm": case_spgemm, "sddmm": case_sddmm,
         "ttv": case_ttv, "mttkrp": case_mttkrp}


def make_cases(sizes, only) -> list:
    """The kernels of benchmarks/kernels.py and TTV, at its sizes, from a fixed seed."""
    data = Data(sizes)
    return [make(data) for key, make in CASES.items() if only is None or key in only]


def _scipy(r):
    return r if sp.issparse(r) else r.to_scipy("csr")


# ----------------------------------------------------------------- running

COLUMNS = [C.Column("bench", "kernel", "left"), C.Column("size", "size", "left"), C.Column("threads", "thr"),
           C.Column("spcomp", "spcomp ms"), C.Column("taco", "TACO ms"), C.Column("scipy", "SciPy ms"),
           C.Column("x_taco", "spcomp/TACO"), C.Column("x_scipy", "spcomp/SciPy"), C.Column("check", "check", "left")]


def ratio(ours, peer) -> str:
    """spcomp time / peer time (below 1 spcomp is faster)."""
    return f"{ours / peer:.2f}" if isinstance(ours, float) and isinstance(peer, float) and peer > 0 else "—"


def run_case(case: Case, kernel: TacoKernel, n: int, policy, failures: list) -> dict:
    spcomp.set_num_threads(n)
    impls = {"spcomp": case.run_spcomp, "taco": kernel.bind(case.out, case.taco_operands, n, case.read)}
    if case.scipy is not None:
        impls["scipy"] = case.scipy
    checks, timed = [], {}
    for name, fn in impls.items():
        try:
            ok, msg = case.check(fn(True) if name == "taco" else fn())
        except Exception as e:  # report, do not time
            ok, msg = False, f"raised {type(e).__name__}: {e}"
        if ok:
            timed[name] = fn
        else:
            checks.append(f"{name} FAIL")
            failures.append(f"{case.name}, {n} thread(s), {name}: {msg}")
    times = {name: t.median_s for name, t in C.measure_interleaved(timed, policy).items()}
    row = {"bench": case.name, "size": case.size, "threads": str(n), "check": "; ".join(checks) or "ok"}
    for name in ("spcomp", "taco", "scipy"):
        row[name] = C.fmt_time(times.get(name)) if name in times else "—"
    row["x_taco"] = ratio(times.get("spcomp"), times.get("taco"))
    row["x_scipy"] = ratio(times.get("spcomp"), times.get("scipy"))
    return row


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.taco", description=__doc__.split("\n")[0])
    ap.add_argument("--build", action="store_true", help="build TACO from source in a temporary directory")
    ap.add_argument("--source", help="TACO's source: a checkout or a git directory (default: "
                    "$SPCOMP_TACO_SOURCE, then a known mirror)")
    ap.add_argument("--taco", help="an already built taco command-line tool (instead of --build)")
    ap.add_argument("--keep", action="store_true", help="keep the build directory (reuse it with --taco)")
    ap.add_argument("--jobs", type=int, default=2, help="make -j for the build (default 2)")
    ap.add_argument("--quick", action="store_true", help="benchmarks.kernels' quick sizes and fewer samples")
    ap.add_argument("--threads", help="comma-separated thread counts (default: 1 and all cores)")
    ap.add_argument("--only", help="comma-separated subset of: spmv,spmm,add,spgemm,sddmm,ttv,mttkrp")
    ap.add_argument("--markdown", metavar="FILE", help="also write the table as Markdown")
    args = ap.parse_args(argv)
    from .kernels import FULL, FULL_POLICY, QUICK, QUICK_POLICY
    workdir = tempfile.mkdtemp(prefix="spcomp-taco-")  # mode 0700: nobody else writes what we run
    try:
        try:
            tool = args.taco or os.environ.get("SPCOMP_TACO_BIN")
            if tool is None and not args.build:
                raise Skip("no taco tool: pass --build (builds TACO from source with cmake; see --source) "
                           "or --taco PATH")
            if tool is None:
                tool = build_taco(find_source(args.source), workdir, args.jobs)
            elif not os.access(tool, os.X_OK):
                raise Skip(f"{tool} is not an executable taco tool")
            if missing_tools("gcc"):
                raise Skip("gcc not found on PATH: TACO's C cannot be compiled")
            return compare(tool, workdir, args, QUICK if args.quick else FULL,
                           QUICK_POLICY if args.quick else FULL_POLICY)
        except Skip as e:
            print(f"skipped: {e}")
            return 0
    finally:
        if args.keep:
            C.eprint(f"[taco] kept {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)


def compare(tool, workdir, args, sizes, policy) -> int:
    only = None if not args.only else {s.strip() for s in args.only.split(",") if s.strip()}
    thread_list = C.parse_threads(args.threads)
    load = C.LoadMonitor()
    t_start = time.perf_counter()
    cases = make_cases(sizes, only)
    rows, failures, notes = [], [], []
    for case in cases:
        kernel = TacoKernel(tool, workdir, case.key, case.taco_expr, case.taco_flags)
        notes.append(f"{case.name}: taco \"{case.taco_expr}\" {' '.join(case.taco_flags)}"
                     + ("" if kernel.parallel else " — TACO's evaluate has no parallel loop"))
        notes += [f"{case.name}: {n}" for n in case.notes]
        for n in thread_list:
            C.eprint(f"[run] {case.key}, {n} thread(s)")
            rows.append(run_case(case, kernel, n, policy, failures))
    others = load.share()
    from spcomp.runtime.threads import min_parallel_work
    split = "; ".join(f"{n} threads: {min_parallel_work(threads=n):,} units" for n in thread_list if n > 1)
    lines = [f"spcomp vs TACO's generated C vs SciPy ({'quick' if args.quick else 'full'} run, "
             f"{time.perf_counter() - t_start:.0f} s; times are medians, ratios spcomp/peer: below 1 "
             "spcomp is faster)",
             f"CPU: {C.cpu_model()}; gcc {' '.join(CFLAGS[:3])}; " + (
                 f"other processes used {others:.0%} of the CPU during the run" if others is not None else "")]
    if split:  # a call below it stays on one thread (measured once per process: runtime/threads.py)
        lines.append(f"spcomp's one-thread threshold (SPCOMP_MIN_PARALLEL_WORK, else measured here): {split}")
    print("\n".join(lines) + "\n\n" + C.render_text(COLUMNS, rows) + "\n")
    for line in notes + [f"FAILED: {f}" for f in failures]:
        print("- " + line)
    if args.markdown:
        with open(args.markdown, "w", encoding="utf-8") as f:
            f.write("\n".join(lines) + "\n\n" + C.render_markdown(COLUMNS, rows) + "\n\n"
                    + "\n".join(f"- {line}" for line in notes + [f"FAILED: {x}" for x in failures]) + "\n")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
