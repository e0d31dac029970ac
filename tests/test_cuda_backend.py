"""The CUDA backend: emission, launch geometry, cuda-sim runs, nvcc checks, the GPU.

Kernels are built by hand from kernel-IR nodes, emitted as CUDA C, run on the
CPU under cuda-sim (several blocks of 64 threads, blocks on concurrent workers)
and compared with NumPy; the same text must compile with nvcc for sm_80 and
sm_90 (skipped without nvcc). GPU runs are skipped without pycuda and a device.
"""
from __future__ import annotations

import ml_dtypes
import numpy as np
import pytest
import scipy.sparse as sp

import spcomp
import spcomp.backends.cuda as cuda
from spcomp import Schedule, errors
from spcomp.backends.cuda import device, emit, launch, nvcc, sim
from spcomp.backends.cuda.emit import emit_module
from spcomp.backends.cuda.launch import launch_config
from spcomp.backends.cuda.signature import parse_kernels, signatures
from spcomp.ir import nodes as n
from spcomp.ir.types import BF16, F32, F64, I32, I64, ptr

BF = ml_dtypes.bfloat16
BLOCK = 64


# ------------------------------------------------------------ IR shorthands

def V(name, t):
    return n.Var(name, t)


def ld(a, i):
    return n.Load(a, i)


def add(a, b):
    return n.Binary("+", a, b)


def mul(a, b):
    return n.Binary("*", a, b)


def For(var, start, end, *body, parallel=None):
    return n.For(var, start, end, n.block(*body), parallel=parallel)


def acc_into(var, value):
    return n.Assign(var, add(var, value))


# CSR operands shared by the SpMV-like kernels
nrows = V("n", I64)
pos = V("pos", ptr(I64))
crd = V("crd", ptr(I32))
i, p, k, r, g = V("i", I64), V("p", I64), V("k", I64), V("r", I64), V("g", I64)
one = n.i64(1)


def row_start(row):
    return ld(pos, row)


def row_end(row):
    return ld(pos, add(row, one))


def column(pp):
    return n.Cast(ld(crd, pp), I64)


def spmv(name, t, outer, inner):
    """y[i] = sum_p vals[p] * x[crd[p]] with the given loop mappings."""
    vals, x, y, acc = V("vals", ptr(t)), V("x", ptr(t)), V("y", ptr(t)), V("acc", t)
    body = n.block(
        n.Comment("y[i] = A[i,j] * x[j]  (A in csr)"),
        For(i, n.i64(0), nrows,
            n.Declare(acc, n.const(0, t)),
            For(p, row_start(i), row_end(i), acc_into(acc, mul(ld(vals, p), ld(x, column(p)))), parallel=inner),
            n.Store(y, i, acc),
            parallel=outer))
    return n.Function(name, (nrows, pos, crd, vals, x, y), body, doc=f"csr spmv, {outer} / {inner}")


def rowmax_warp():
    vals, y, m = V("vals", ptr(F32)), V("y", ptr(F32)), V("m", F32)
    body = n.block(For(i, n.i64(0), nrows,
                       n.Declare(m, n.const(float("-inf"), F32)),
                       For(p, row_start(i), row_end(i), n.Assign(m, n.Binary("max", m, ld(vals, p))),
                           parallel="gpu-lane"),
                       n.Store(y, i, m),
                       parallel="gpu-warp"))
    return n.Function("rowmax_warp", (nrows, pos, vals, y), body)


def normalize_block():
    """Block per row: sum the row (block reduction), store it, then out[p] = vals[p] / sum."""
    vals, out, sums, s = V("vals", ptr(F32)), V("out", ptr(F32)), V("sums", ptr(F32)), V("s", F32)
    body = n.block(For(i, n.i64(0), nrows,
                       n.Declare(s, n.const(0, F32)),
                       For(p, row_start(i), row_end(i), acc_into(s, ld(vals, p)), parallel="gpu-thread"),
                       n.Comment("every thread of the block holds the row sum now"),
                       n.Store(sums, i, s),
                       For(p, row_start(i), row_end(i), n.Store(out, p, n.Binary("/", ld(vals, p), s)),
                           parallel="gpu-thread"),
                       parallel="gpu-block"))
    return n.Function("normalize_block", (nrows, pos, vals, out, sums), body)


def spmm_block():
    """Y[i,:] = sum_p vals[p] * X[crd[p], :]: block per row, threads over the K columns."""
    K = V("K", I64)
    vals, X, Y = V("vals", ptr(F32)), V("X", ptr(F32)), V("Y", ptr(F32))
    yi = add(mul(i, K), k)
    body = n.block(For(i, n.i64(0), nrows,
                       For(k, n.i64(0), K, n.Store(Y, yi, n.const(0, F32)), parallel="gpu-thread"),
                       For(p, row_start(i), row_end(i),
                           For(k, n.i64(0), K,
                               n.Store(Y, yi, add(ld(Y, yi), mul(ld(vals, p), ld(X, add(mul(column(p), K), k))))),
                               parallel="gpu-thread")),
                       parallel="gpu-block"))
    return n.Function("spmm_block", (nrows, K, pos, crd, vals, X, Y), body)


def reverse_block():
    """Block per row; one member loop writes tmp[i,k], the next reads tmp[i,K-1-k]:
    another thread's element, so a barrier must separate the loops."""
    K = V("K", I64)
    x, tmp, out = V("x", ptr(F32)), V("tmp", ptr(F32)), V("out", ptr(F32))
    at = add(mul(i, K), k)
    mirrored = add(mul(i, K), n.Binary("-", n.Binary("-", K, one), k))
    body = n.block(For(i, n.i64(0), nrows,
                       For(k, n.i64(0), K, n.Store(tmp, at, mul(ld(x, at), n.const(2, F32))), parallel="gpu-thread"),
                       For(k, n.i64(0), K, n.Store(out, at, ld(tmp, mirrored)), parallel="gpu-thread"),
                       parallel="gpu-block"))
    return n.Function("reverse_block", (nrows, K, x, tmp, out), body)


def reduce_types(team, member):
    """Per row, four reductions at once: f32 sum, f64 max, i32 sum (count), i64 min."""
    vals = V("vals", ptr(F32))
    s32, m64, c32, lo64 = V("s32", F32), V("m64", F64), V("c32", I32), V("lo64", I64)
    o32, o64, oc, olo = V("o32", ptr(F32)), V("o64", ptr(F64)), V("oc", ptr(I32)), V("olo", ptr(I64))
    body = n.block(For(i, n.i64(0), nrows,
                       n.Declare(s32, n.const(1, F32)),          # sums start from the uniform value
                       n.Declare(m64, n.const(float("-inf"), F64)),
                       n.Declare(c32, n.Const(0, I32)),
                       n.Declare(lo64, n.i64(2**40)),
                       For(p, row_start(i), row_end(i),
                           acc_into(s32, ld(vals, p)),
                           n.Assign(m64, n.Binary("max", n.Cast(ld(vals, p), F64), m64)),
                           n.If(n.Binary(">", ld(vals, p), n.const(0, F32)), n.block(acc_into(c32, n.Const(1, I32)))),
                           n.Assign(lo64, n.Binary("min", lo64, p)),
                           parallel=member),
                       n.Store(o32, i, s32), n.Store(o64, i, m64), n.Store(oc, i, c32), n.Store(olo, i, lo64),
                       parallel=team))
    return n.Function(f"reduce_types_{team.split('-')[1]}", (nrows, pos, vals, o32, o64, oc, olo), body)


def spmv_block_of_warps():
    """Blocks take groups of R rows, a warp per row of the group, lanes over the row."""
    R = V("R", I64)
    vals, x, y, acc = V("vals", ptr(F32)), V("x", ptr(F32)), V("y", ptr(F32)), V("acc", F32)
    ngroups = V("ngroups", I64)
    body = n.block(For(g, n.i64(0), ngroups,
                       For(r, mul(g, R), n.Binary("min", add(mul(g, R), R), nrows),
                           n.Declare(acc, n.const(0, F32)),
                           For(p, row_start(r), row_end(r), acc_into(acc, mul(ld(vals, p), ld(x, column(p)))),
                               parallel="gpu-lane"),
                           n.Store(y, r, acc),
                           parallel="gpu-warp"),
                       parallel="gpu-block"))
    return n.Function("spmv_block_of_warps", (nrows, R, ngroups, pos, crd, vals, x, y), body)


def scatter_atomic():
    """COO scatter from every thread of the grid: y[rows[q]] += vals[q] in four types."""
    nnz, q = V("nnz", I64), V("q", I64)
    rows, vals = V("rows", ptr(I32)), V("vals", ptr(F32))
    y32, y64, cnt32, cnt64, ybf = (V("y32", ptr(F32)), V("y64", ptr(F64)), V("cnt32", ptr(I32)),
                                   V("cnt64", ptr(I64)), V("ybf", ptr(BF16)))
    row = n.Cast(ld(rows, q), I64)
    body = n.block(For(q, n.i64(0), nnz,
                       n.AtomicAdd(y32, row, ld(vals, q)),
                       n.AtomicAdd(y64, row, n.Cast(ld(vals, q), F64)),
                       n.AtomicAdd(cnt32, row, n.Const(1, I32)),
                       n.AtomicAdd(cnt64, row, n.Cast(ld(vals, q), I64)),
                       n.AtomicAdd(ybf, row, n.Cast(ld(vals, q), BF16)),
                       parallel="gpu-thread"))
    return n.Function("scatter_atomic", (nnz, rows, vals, y32, y64, cnt32, cnt64, ybf), body)


def bf16_casts():
    m = V("m", I64)
    f32_in, f64_in, bf_in = V("f32_in", ptr(F32)), V("f64_in", ptr(F64)), V("bf_in", ptr(BF16))
    to_bf, from_bf, f64_to_bf, fma_bf = (V("to_bf", ptr(BF16)), V("from_bf", ptr(F32)),
                                         V("f64_to_bf", ptr(BF16)), V("fma_bf", ptr(BF16)))
    up = n.Cast(ld(bf_in, i), F32)
    body = n.block(For(i, n.i64(0), m,
                       n.Store(to_bf, i, n.Cast(ld(f32_in, i), BF16)),
                       n.Store(from_bf, i, up),
                       n.Store(f64_to_bf, i, n.Cast(ld(f64_in, i), BF16)),
                       n.Store(fma_bf, i, n.Cast(add(mul(up, n.const(2.5, F32)), n.const(-1.0, F32)), BF16)),
                       parallel="gpu-thread"))
    return n.Function("bf16_casts", (m, f32_in, f64_in, bf_in, to_bf, from_bf, f64_to_bf, fma_bf), body)


def check_limit():
    """Status codes: a thread that sees x[i] > limit reports 1 (packed overflow)."""
    m, limit, x = V("m", I64), V("limit", F32), V("x", ptr(F32))
    body = n.block(For(i, n.i64(0), m,
                       n.If(n.Binary(">", ld(x, i), limit), n.block(n.Return(n.STATUS_PACKED_OVERFLOW))),
                       parallel="gpu-thread"))
    return n.Function("check_limit", (m, limit, x), body)


def cumsum_serial():
    """No parallel loop: one thread computes an inclusive prefix sum."""
    m, x, out, run = V("m", I64), V("x", ptr(I64)), V("out", ptr(I64)), V("run", I64)
    body = n.block(n.Declare(run, n.i64(0)),
                   For(i, n.i64(0), m, acc_into(run, ld(x, i)), n.Store(out, i, run)))
    return n.Function("cumsum_serial", (m, x, out), body)


def sort_rows():
    """Per-thread Sort: each row's column indices sorted in place."""
    ccrd = V("ccrd", ptr(I32))
    body = n.block(For(i, n.i64(0), nrows,
                       n.Sort(ccrd, row_start(i), n.Binary("-", row_end(i), row_start(i))),
                       parallel="gpu-thread"))
    return n.Function("sort_rows", (nrows, pos, ccrd), body)


def combine_duplicates():
    """A per-thread dense workspace (Allocate at kernel level): out[p] = sum of the row's values
    at column crd[p] (duplicates combined)."""
    ncols, vals, out, w = V("ncols", I64), V("vals", ptr(F32)), V("out", ptr(F32)), V("w", ptr(F32))
    col = column(p)
    body = n.block(
        n.Comment("workspace: a dense row per thread"),
        n.Allocate(w, ncols, zero=True),
        For(i, n.i64(0), nrows,
            For(p, row_start(i), row_end(i), n.Store(w, col, add(ld(w, col), ld(vals, p)))),
            For(p, row_start(i), row_end(i), n.Store(out, p, ld(w, col))),
            For(p, row_start(i), row_end(i), n.Store(w, col, n.const(0, F32))),
            parallel="gpu-thread"),
        n.Free(w))
    return n.Function("combine_duplicates", (nrows, ncols, pos, crd, vals, out), body)


FUNCTIONS = [spmv("spmv_thread", F32, "gpu-thread", None),
             spmv("spmv_threads_cpu_mapping", F32, "threads", None),
             spmv("spmv_warp", F64, "gpu-warp", "gpu-lane"),
             spmv("spmv_block", F32, "gpu-block", "gpu-thread"),
             rowmax_warp(), reduce_types("gpu-warp", "gpu-lane"), reduce_types("gpu-block", "gpu-thread"),
             normalize_block(), spmm_block(), reverse_block(), spmv_block_of_warps(), scatter_atomic(),
             bf16_casts(), check_limit(), cumsum_serial(), sort_rows(), combine_duplicates()]
MODULE = n.Module(tuple(FUNCTIONS))


@pytest.fixture(scope="module")
def source():
    return emit_module(MODULE)


needs_cxx = pytest.mark.skipif(sim.compiler() is None, reason="cuda-sim needs a host C++ compiler (g++)")


@pytest.fixture(scope="module")
def simmod(source):
    if sim.compiler() is None:
        pytest.skip("cuda-sim needs a host C++ compiler (g++)")
    return sim.compile_sim(source, signatures(MODULE))  # the launchers' signatures from the IR


def run(simmod, name, block=BLOCK, grid=None, **args):
    f = MODULE.function(name)
    if grid is None:
        grid, block = launch_config(f, args, block)
    return simmod.launch(name, [args[q.name] for q in f.params], grid, block)


def csr(rng, lens, ncols, dtype=np.float32):
    indptr = np.concatenate([[0], np.cumsum(lens)]).astype(np.int64)
    ind = np.concatenate([np.sort(rng.choice(ncols, l, replace=False)) for l in lens] or [[]]).astype(np.int32)
    vals = rng.standard_normal(int(indptr[-1])).astype(dtype)
    return indptr, ind, vals


def dense(indptr, ind, vals, ncols):
    A = np.zeros((len(indptr) - 1, ncols), dtype=np.float64)
    for row in range(len(indptr) - 1):
        for q in range(indptr[row], indptr[row + 1]):
            A[row, ind[q]] += vals[q]
    return A


# rows of very different lengths: empty, shorter and longer than a warp / a block
LENS = [0, 1, 31, 32, 33, 500, 7, 64, 65, 3, 0, 200, 129] * 4
NCOLS = 600


# ------------------------------------------------------------------ emission

def test_emitted_text_is_readable_cuda(source):
    assert 'extern "C" __global__ void spmv_thread(' in source
    assert "const float* __restrict__ vals" in source           # read-only: const
    assert "float* __restrict__ y" in source and "const float* __restrict__ y" not in source
    assert "int32_t* __restrict__ spc_status" in source
    assert "// y[i] = A[i,j] * x[j]  (A in csr)" in source      # IR comments kept
    assert "// csr spmv, gpu-warp / gpu-lane" in source         # function docs kept
    assert "// parallel: gpu-lane" in source                    # loop annotations kept
    assert "__shfl_xor_sync" in source and "spc_warp_reduce<spc_sum_op>(acc)" in source
    assert "atomicMax(spc_status, 1); return;" in source
    text = emit.emit_function(MODULE.function("spmv_thread"))
    assert "for (int64_t i = spc_global_thread(); i < n; i += spc_grid_threads())" in text
    assert "  for (int64_t p = pos[i]; p < pos[(i + 1)]; ++p) {" in text.replace("    for", "  for")


def test_team_code_guards_writes_and_places_barriers(source):
    norm = emit.emit_function(MODULE.function("normalize_block"))
    assert "if (threadIdx.x == 0) {" in norm and "sums[i] = s;" in norm
    assert "spc_block_reduce<spc_sum_op>(s)" in norm
    assert "__syncthreads()" not in norm.split("spc_block_reduce")[1]  # nothing reads what is written
    spmm = emit.emit_function(MODULE.function("spmm_block"))
    # each thread owns the Y[i, k] of its k in every member loop: the only barriers stage the row's entries
    assert spmm.count("__syncthreads") == 2 and "__syncthreads();  // the chunk is staged" in spmm
    rev = emit.emit_function(MODULE.function("reverse_block"))
    assert rev.count("__syncthreads();") == 1  # tmp[i, K-1-k] belongs to another thread
    warp = emit.emit_function(MODULE.function("spmv_warp"))
    assert "if (spc_lane() == 0) {" in warp and "__syncwarp" not in warp
    assert "double spc_acc_" in warp
    serial = emit.emit_function(MODULE.function("cumsum_serial"))
    assert "if (blockIdx.x != 0 || threadIdx.x != 0) return;" in serial


def test_bf16_constants_and_casts():
    c = emit.CudaEmitter()
    assert c.expr(n.Const(1.0, BF16)).startswith("(uint16_t)0x3f80")
    assert c.expr(n.Cast(V("a", F32), BF16)) == "spc_f32_to_bf16(a)"
    assert c.expr(n.Cast(V("a", BF16), F32)) == "spc_bf16_to_f32(a)"
    assert c.expr(n.Cast(V("a", BF16), F64)) == "((double)spc_bf16_to_f32(a))"
    assert c.expr(n.Unary("-", n.Unary("-", V("a", F32)))) == "(-(-a))"
    assert c.expr(n.Const(float("inf"), F32)) == "SPC_INFINITY_F32"
    assert c.expr(n.Const(2**40, I64)) == f"{2**40}LL"
    assert c.expr(n.Binary("min", V("a", I64), n.i64(3))) == "spc_min<int64_t>(a, 3)"


def unsupported(body, params=(), match=""):
    f = n.Function("bad", tuple(params), n.block(*body))
    with pytest.raises(errors.UnsupportedError, match=match):
        emit_module(n.Module((f,)))


def test_unsupported_patterns_are_refused_clearly():
    x, y, s, cap = V("x", ptr(F32)), V("y", ptr(F32)), V("s", F32), V("cap", I64)
    w = V("w", ptr(F32))
    unsupported([n.Allocate(w, n.i64(4)), n.Reallocate(w, n.i64(8))], match="grow.*never with realloc")
    unsupported([], params=(V("out", ptr(ptr(F32))),), match="grow")
    unsupported([For(i, n.i64(0), nrows, For(k, n.i64(0), nrows, n.Store(y, k, n.const(0, F32)),
                                             parallel="gpu-thread"), parallel="gpu-thread")],
                params=(nrows, y), match="nested")
    unsupported([For(i, n.i64(0), nrows, n.Store(y, i, n.const(0, F32)), parallel="gpu-thread"),
                 For(i, n.i64(0), nrows, n.Store(y, i, n.const(1, F32)), parallel="gpu-thread")],
                params=(nrows, y), match="separate functions")
    unsupported([n.Store(y, n.i64(0), n.const(0, F32)),
                 For(i, n.i64(0), nrows, n.Store(y, i, n.const(0, F32)), parallel="gpu-thread")],
                params=(nrows, y), match="every GPU thread")
    unsupported([For(i, n.i64(0), nrows, n.Store(y, i, n.const(0, F32)), parallel="gpu-lane")],
                params=(nrows, y), match="gpu-lane")
    unsupported([For(i, n.i64(0), nrows, n.Declare(s, n.const(0, F32)),
                     For(p, n.i64(0), cap, n.Assign(s, ld(x, p)), parallel="gpu-lane"),
                     n.Store(y, i, s), parallel="gpu-warp")],
                params=(nrows, cap, x, y), match="accumulations")
    unsupported([For(i, n.i64(0), nrows, n.Declare(s, n.const(0, F32)),
                     For(p, n.i64(0), cap, acc_into(s, ld(x, p)), n.Store(y, p, s), parallel="gpu-lane"),
                     parallel="gpu-warp")],
                params=(nrows, cap, x, y), match="partial")
    unsupported([For(i, n.i64(0), nrows,
                     For(p, n.i64(0), cap, n.If(n.Binary(">", ld(x, p), n.const(0, F32)),
                                                n.block(n.Return(1))), parallel="gpu-lane"),
                     parallel="gpu-warp")],
                params=(nrows, cap, x), match="cannot leave")
    unsupported([For(k, n.i64(0), cap, For(i, n.i64(0), nrows, n.Store(y, i, n.const(0, F32)),
                                           parallel="gpu-thread"))],
                params=(nrows, cap, y), match="grid-wide barrier")


def test_launch_config():
    f = MODULE.function("spmv_thread")
    assert launch_config(f, {"n": 1000}, 256) == (4, 256)
    assert launch_config(f, {"n": 0}, 256) == (1, 256)
    assert launch_config(MODULE.function("spmv_warp"), {"n": 1000}, 256) == (125, 256)
    assert launch_config(MODULE.function("spmv_block"), {"n": 1000}, 128) == (1000, 128)
    assert launch_config(MODULE.function("spmv_block"), {"n": 10**9}, 128) == (launch.MAX_GRID, 128)
    assert launch_config(MODULE.function("cumsum_serial"), {"m": 5}, 256) == (1, 1)
    # the CPU mapping: the lowerer's lo/hi parameters
    lo, hi = V("lo", I64), V("hi", I64)
    cpu = n.Function("cpu", (lo, hi), n.block(For(i, lo, hi, parallel="threads")))
    assert launch_config(cpu, {"lo": 10, "hi": 300}, 64) == (5, 64)
    # bounds read from a parameter array
    f2 = n.Function("f2", (pos,), n.block(For(i, n.i64(0), ld(pos, n.i64(2)), parallel="gpu-thread")))
    assert launch_config(f2, {"pos": np.array([0, 5, 130])}, 64) == (3, 64)
    local = V("m", I64)
    f3 = n.Function("f3", (), n.block(n.Declare(local, n.i64(9)),
                                      For(i, n.i64(0), local, parallel="gpu-thread")))
    with pytest.raises(errors.UnsupportedError, match="`m`, which is not a parameter"):
        launch_config(f3, {}, 64)
    with pytest.raises(errors.UnsupportedError, match="multiple of 32"):
        launch_config(MODULE.function("spmv_warp"), {"n": 10}, 48)


def test_signatures_come_from_the_ir_and_agree_with_the_text(source):
    """The emitter prints each kernel's parameters from the same signature objects the
    launchers check arguments against; reading them back from the text (what
    compile_sim does for CUDA C spcomp did not emit) gives the same."""
    sigs = signatures(MODULE)
    assert sigs == parse_kernels(source)
    spmv = sigs["spmv_thread"]
    assert [p.ctype for p in spmv.params] == ["int64_t", "const int64_t*", "const int32_t*", "const float*",
                                              "const float*", "float*", "int32_t*"]
    assert spmv.has_status and [p.name for p in spmv.user_params] == ["n", "pos", "crd", "vals", "x", "y"]
    assert sigs["scatter_atomic"].params[-2].ctype == "uint16_t*"  # bf16 is stored as uint16_t
    with pytest.raises(errors.UnsupportedError, match="pointer to a pointer"):
        signatures(n.Module((n.Function("grow", (V("out", ptr(ptr(F32))),), n.block()),)))


def test_arguments_are_checked(simmod):
    y = np.zeros(3, np.float32)
    with pytest.raises(errors.OperandError, match="takes 6 arguments"):
        simmod.launch("spmv_thread", [3], 1, 32)
    with pytest.raises(errors.DTypeError, match="const float"):
        simmod.launch("spmv_thread", [3, np.zeros(4, np.int64), np.zeros(0, np.int32), np.zeros(0, np.float64),
                                      np.zeros(3, np.float32), y], 1, 32)
    ro = np.zeros(3, np.float32)
    ro.flags.writeable = False
    with pytest.raises(errors.OperandError, match="read-only"):
        simmod.launch("spmv_thread", [3, np.zeros(4, np.int64), np.zeros(0, np.int32), np.zeros(0, np.float32),
                                      np.zeros(3, np.float32), ro], 1, 32)
    with pytest.raises(errors.OperandError, match="no kernel `nope`"):
        simmod.launch("nope", [], 1, 1)


# ------------------------------------------------------------------ cuda-sim

@pytest.mark.parametrize("name", ["spmv_thread", "spmv_threads_cpu_mapping", "spmv_warp", "spmv_block"])
def test_spmv_mappings_match_numpy(simmod, name):
    rng = np.random.default_rng(1)
    t = np.float64 if name == "spmv_warp" else np.float32
    indptr, ind, vals = csr(rng, LENS, NCOLS, t)
    x = rng.standard_normal(NCOLS).astype(t)
    y = np.full(len(LENS), np.nan, t)
    grid = 5 if name != "spmv_block" else None  # fewer blocks than rows: grid-stride
    status = run(simmod, name, grid=grid, n=len(LENS), pos=indptr, crd=ind, vals=vals, x=x, y=y)
    assert status == 0
    ref = dense(indptr, ind, vals, NCOLS) @ x.astype(np.float64)
    np.testing.assert_allclose(y, ref, rtol=1e-5 if t == np.float32 else 1e-12, atol=1e-4 if t == np.float32 else 1e-12)


def test_rowmax_warp_max_reduction(simmod):
    rng = np.random.default_rng(2)
    lens = [l if l else 1 for l in LENS]
    indptr, ind, vals = csr(rng, lens, NCOLS)
    y = np.zeros(len(lens), np.float32)
    assert run(simmod, "rowmax_warp", n=len(lens), pos=indptr, vals=vals, y=y) == 0
    ref = [vals[indptr[q]:indptr[q + 1]].max() for q in range(len(lens))]
    np.testing.assert_array_equal(y, np.array(ref, np.float32))


@pytest.mark.parametrize("name", ["reduce_types_warp", "reduce_types_block"])
def test_reductions_of_every_type_and_operator(simmod, name):
    rng = np.random.default_rng(14)
    indptr, ind, vals = csr(rng, LENS, NCOLS)
    rows = len(LENS)
    o32, o64, oc, olo = np.zeros(rows, np.float32), np.zeros(rows), np.zeros(rows, np.int32), np.zeros(rows, np.int64)
    assert run(simmod, name, grid=3, n=rows, pos=indptr, vals=vals, o32=o32, o64=o64, oc=oc, olo=olo) == 0
    seg = [vals[indptr[q]:indptr[q + 1]] for q in range(rows)]
    np.testing.assert_allclose(o32, [1 + s.astype(np.float64).sum() for s in seg], rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(o64, [s.max() if len(s) else -np.inf for s in seg])
    np.testing.assert_array_equal(oc, [(s > 0).sum() for s in seg])
    np.testing.assert_array_equal(olo, [indptr[q] if len(seg[q]) else 2**40 for q in range(rows)])


def test_block_reduction_then_second_member_loop(simmod):
    rng = np.random.default_rng(3)
    indptr, ind, vals = csr(rng, LENS, NCOLS)
    vals = np.abs(vals) + 0.5
    out = np.zeros_like(vals)
    sums = np.zeros(len(LENS), np.float32)
    assert run(simmod, "normalize_block", grid=3, n=len(LENS), pos=indptr, vals=vals, out=out, sums=sums) == 0
    ref_sums = np.array([vals[indptr[q]:indptr[q + 1]].astype(np.float64).sum() for q in range(len(LENS))])
    np.testing.assert_allclose(sums, ref_sums, rtol=1e-5)
    ref = vals / np.repeat(ref_sums, np.diff(indptr))
    np.testing.assert_allclose(out, ref, rtol=1e-5)


def test_spmm_block_member_loops_inside_sequential_loop(simmod):
    rng = np.random.default_rng(4)
    indptr, ind, vals = csr(rng, [min(l, 90) for l in LENS[:13]], 90)
    K = 100  # more columns than threads in a block: each thread takes two
    X = rng.standard_normal((90, K)).astype(np.float32)
    Y = np.full((13, K), np.nan, np.float32)
    assert run(simmod, "spmm_block", grid=4, n=13, K=K, pos=indptr, crd=ind, vals=vals, X=X, Y=Y) == 0
    np.testing.assert_allclose(Y, dense(indptr, ind, vals, 90) @ X, rtol=1e-4, atol=1e-4)


def test_barrier_between_member_loops(simmod):
    rng = np.random.default_rng(13)
    rows, K = 9, 150
    x = rng.standard_normal((rows, K)).astype(np.float32)
    tmp, out = np.zeros_like(x), np.zeros_like(x)
    assert run(simmod, "reverse_block", grid=4, n=rows, K=K, x=x, tmp=tmp, out=out) == 0
    np.testing.assert_array_equal(out, 2 * x[:, ::-1])


def test_warps_nested_in_blocks(simmod):
    rng = np.random.default_rng(5)
    indptr, ind, vals = csr(rng, LENS, NCOLS)
    x = rng.standard_normal(NCOLS).astype(np.float32)
    y = np.full(len(LENS), np.nan, np.float32)
    R = 5  # 5 rows per block, 2 warps per block of 64: each warp takes two or three rows
    ngroups = -(-len(LENS) // R)
    assert run(simmod, "spmv_block_of_warps", grid=4, n=len(LENS), R=R, ngroups=ngroups, pos=indptr, crd=ind,
               vals=vals, x=x, y=y) == 0
    np.testing.assert_allclose(y, dense(indptr, ind, vals, NCOLS) @ x, rtol=1e-5, atol=1e-4)


def test_atomic_scatter_from_many_threads_and_blocks(simmod):
    """The race test: 20000 updates into 7 slots from 40 blocks on concurrent workers.
    Integer-valued data makes every sum exact, so one lost update shows."""
    rng = np.random.default_rng(6)
    nnz, slots = 20000, 7
    rows = rng.integers(0, slots, nnz).astype(np.int32)
    vals = rng.integers(-3, 4, nnz).astype(np.float32)
    y32, y64 = np.zeros(slots, np.float32), np.zeros(slots, np.float64)
    cnt32, cnt64 = np.zeros(slots, np.int32), np.zeros(slots, np.int64)
    ybf = np.zeros(slots + 1, BF)  # odd and even halves of 32-bit words
    f = MODULE.function("scatter_atomic")
    args = dict(nnz=nnz, rows=rows, vals=vals, y32=y32, y64=y64, cnt32=cnt32, cnt64=cnt64, ybf=ybf)
    grid, block = launch_config(f, args, 512)
    assert grid == 40
    assert simmod.launch("scatter_atomic", [args[q.name] for q in f.params], grid, block, workers=4) == 0
    ref = np.zeros(slots)
    np.add.at(ref, rows, vals)
    np.testing.assert_array_equal(y32, ref)
    np.testing.assert_array_equal(y64, ref)
    np.testing.assert_array_equal(cnt32, np.bincount(rows, minlength=slots))
    np.testing.assert_array_equal(cnt64, ref.astype(np.int64))
    # bf16 sums drift (8-bit mantissa); each must stay close and the extra slot untouched
    assert ybf[slots] == 0
    np.testing.assert_allclose(ybf[:slots].astype(np.float64), ref, atol=0.02 * np.abs(ref).max() + 8)


def test_bf16_casts_round_to_nearest_even(simmod):
    rng = np.random.default_rng(7)
    special = np.array([0.0, -0.0, 1.0, 1.00390625, 1.01171875, 3.0e38, 3.4e38, -3.4e38, np.inf, -np.inf,
                        1e-40, -1e-45, 65504.0, 0.1], np.float32)
    f32_in = np.concatenate([special, rng.standard_normal(300).astype(np.float32) * 10.0 ** rng.integers(-30, 30, 300)])
    f32_in = f32_in.astype(np.float32)
    m = len(f32_in)
    bits = rng.integers(0, 2**16, m, dtype=np.uint32).astype(np.uint16)
    bits[(bits & 0x7F80) == 0x7F80] = 0x3F80  # no NaN/inf inputs for the arithmetic check
    bf_in = bits.view(BF)
    f64_in = rng.standard_normal(m) * 10.0 ** rng.integers(-30, 30, m)
    # double-rounding cases: spcomp casts f64 -> f32 -> bf16 on every backend (the CPU backend
    # too); ml_dtypes >= 0.7 rounds f64 -> bf16 once, so the reference goes through f32 explicitly
    f64_in[:3] = [1.0 + 2.0 ** -8 + 2.0 ** -40, 1.0 + 2.0 ** -8, -(1.0 + 2.0 ** -8 + 2.0 ** -40)]
    outs = dict(to_bf=np.zeros(m, BF), from_bf=np.zeros(m, np.float32), f64_to_bf=np.zeros(m, BF),
                fma_bf=np.zeros(m, BF))
    assert run(simmod, "bf16_casts", m=m, f32_in=f32_in, f64_in=f64_in, bf_in=bf_in, **outs) == 0
    np.testing.assert_array_equal(outs["to_bf"].view(np.uint16), f32_in.astype(BF).view(np.uint16))
    np.testing.assert_array_equal(outs["from_bf"], bf_in.astype(np.float32))
    np.testing.assert_array_equal(outs["f64_to_bf"].view(np.uint16),
                                  f64_in.astype(np.float32).astype(BF).view(np.uint16))
    with np.errstate(over="ignore"):
        ref = (bf_in.astype(np.float32) * np.float32(2.5) + np.float32(-1.0)).astype(BF)
    np.testing.assert_array_equal(outs["fma_bf"].view(np.uint16), ref.view(np.uint16))
    nan = np.array([np.nan, -np.nan], np.float32)
    out = np.zeros(2, BF)
    run(simmod, "bf16_casts", m=2, f32_in=nan, f64_in=np.zeros(2), bf_in=np.zeros(2, BF), to_bf=out,
        from_bf=np.zeros(2, np.float32), f64_to_bf=np.zeros(2, BF), fma_bf=np.zeros(2, BF))
    assert np.isnan(out.astype(np.float32)).all()


def test_status_codes(simmod):
    x = np.linspace(0, 1, 1000).astype(np.float32)
    assert run(simmod, "check_limit", m=1000, limit=2.0, x=x) == 0
    assert run(simmod, "check_limit", m=1000, limit=0.5, x=x) == n.STATUS_PACKED_OVERFLOW


def test_serial_kernel_runs_once_whatever_the_grid(simmod):
    x = np.arange(1, 50, dtype=np.int64)
    out = np.zeros_like(x)
    assert run(simmod, "cumsum_serial", grid=3, block=64, m=len(x), x=x, out=out) == 0
    np.testing.assert_array_equal(out, np.cumsum(x))


def test_device_sort_per_thread(simmod):
    rng = np.random.default_rng(8)
    indptr, ind, _ = csr(rng, LENS, NCOLS)
    shuffled = ind.copy()
    for q in range(len(LENS)):
        rng.shuffle(shuffled[indptr[q]:indptr[q + 1]])
    assert run(simmod, "sort_rows", n=len(LENS), pos=indptr, ccrd=shuffled) == 0
    np.testing.assert_array_equal(shuffled, ind)


def test_per_thread_workspace(simmod):
    rng = np.random.default_rng(9)
    lens = [3, 0, 10, 40, 7] * 6
    indptr = np.concatenate([[0], np.cumsum(lens)]).astype(np.int64)
    ind = rng.integers(0, 12, indptr[-1]).astype(np.int32)  # duplicates within rows
    vals = rng.integers(1, 5, indptr[-1]).astype(np.float32)
    out = np.zeros_like(vals)
    assert run(simmod, "combine_duplicates", n=len(lens), ncols=12, pos=indptr, crd=ind, vals=vals, out=out) == 0
    A = dense(indptr, ind, vals, 12)
    np.testing.assert_array_equal(out, A[np.repeat(np.arange(len(lens)), lens), ind])


# ----------------------------------------------- the harness on its own

HARNESS_SRC = r"""
#include <stdint.h>
extern "C" __global__ void harness(const float* __restrict__ x, float* __restrict__ block_sums,
                                   int32_t* __restrict__ scan, uint32_t* __restrict__ ballots,
                                   int32_t* __restrict__ wrong_block, int32_t* __restrict__ bcast) {
  __shared__ float part[128];
  __shared__ unsigned int owner;
  const unsigned t = threadIdx.x, base = blockIdx.x * blockDim.x;
  if (t == 0) owner = blockIdx.x;
  part[t] = x[base + t];
  __syncthreads();
  for (unsigned s = blockDim.x / 2; s > 0; s >>= 1) {   // shared-memory tree reduction
    if (t < s) part[t] += part[t + s];
    __syncthreads();
  }
  if (t == 0) block_sums[blockIdx.x] = part[0];
  int v = (int)(t % 32) + 1;                            // inclusive warp scan with shfl_up
  for (int o = 1; o < 32; o <<= 1) {
    int u = __shfl_up_sync(0xffffffffu, v, o);
    if ((int)(t % 32) >= o) v += u;
  }
  scan[base + t] = v;
  unsigned b = __ballot_sync(0xffffffffu, x[base + t] > 0.0f);
  if (t % 32 == 0) ballots[(base + t) / 32] = b;
  bcast[base + t] = __shfl_sync(0xffffffffu, (int)(t * 7), 3) + __any_sync(0xffffffffu, t == 5)
                    + 10 * __all_sync(0xffffffffu, x[base + t] > -100.0f);
  if (owner != blockIdx.x) atomicAdd(wrong_block, 1);   // __shared__ is per block
}
extern "C" __global__ void deadlock(int32_t* __restrict__ out) {
  if (threadIdx.x == 0) __syncwarp(0x3u);   // lane 1 never comes: it waits at __syncthreads
  else __syncthreads();
  out[0] = 1;
}
extern "C" __global__ void partial_warp(int32_t* __restrict__ out) {
  out[threadIdx.x] = __shfl_down_sync(0xffffffffu, (int)threadIdx.x, 1);
}
"""


@needs_cxx
def test_harness_barriers_shared_memory_and_warp_votes():
    mod = sim.compile_sim(HARNESS_SRC)
    rng = np.random.default_rng(10)
    blocks, bs = 12, 128
    x = rng.standard_normal(blocks * bs).astype(np.float32)
    block_sums = np.zeros(blocks, np.float32)
    scan = np.zeros(blocks * bs, np.int32)
    ballots = np.zeros(blocks * bs // 32, np.uint32)
    wrong = np.zeros(1, np.int32)
    bcast = np.zeros(blocks * bs, np.int32)
    assert mod.launch("harness", [x, block_sums, scan, ballots, wrong, bcast], blocks, bs, workers=3) == 0
    np.testing.assert_allclose(block_sums, x.reshape(blocks, bs).sum(1), rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(scan, np.tile(np.cumsum(np.arange(1, 33)), blocks * bs // 32))
    want = [sum(1 << l for l in range(32) if x[w * 32 + l] > 0) for w in range(len(ballots))]
    np.testing.assert_array_equal(ballots, np.array(want, np.uint32))
    assert wrong[0] == 0
    warp = np.arange(blocks * bs) % bs // 32
    np.testing.assert_array_equal(bcast, 7 * (32 * warp + 3) + (warp == 0) + 10)


@needs_cxx
def test_harness_reports_deadlocks_and_bad_masks():
    mod = sim.compile_sim(HARNESS_SRC)
    with pytest.raises(sim.CudaSimError, match="deadlock"):
        mod.launch("deadlock", [np.zeros(1, np.int32)], 1, 32)
    with pytest.raises(sim.CudaSimError, match="not a multiple of 32"):
        mod.launch("partial_warp", [np.zeros(48, np.int32)], 1, 48)


@needs_cxx
def test_sim_compile_errors_are_clear():
    with pytest.raises(sim.CudaSimError, match="host compiler rejected"):
        sim.compile_sim('extern "C" __global__ void k(int32_t* __restrict__ o) { o[0] = undefined_name; }')


# ---------------------------------------------------------------------- nvcc

needs_nvcc = pytest.mark.skipif(not nvcc.nvcc_available(), reason="nvcc (the CUDA toolkit) is not installed")


@needs_nvcc
@pytest.mark.parametrize("arch", ["sm_80", "sm_90"])
def test_every_kernel_compiles_with_nvcc(source, arch):
    report = nvcc.check_source(source, arch)
    assert set(report) == {f.name for f in FUNCTIONS}
    for name, info in report.items():
        assert 0 < info["registers"] <= 255, name
        assert info["spill_stores"] == 0 and info["spill_loads"] == 0, (name, info)
    assert report["spmv_block"]["shared_bytes"] > 0 and report["spmv_block"]["barriers"] >= 1
    assert report["spmv_warp"]["shared_bytes"] == 0


@needs_nvcc
def test_nvcc_errors_carry_its_messages():
    with pytest.raises(nvcc.NvccError, match="undefined_name"):
        nvcc.check_source('extern "C" __global__ void k(int* o) { o[0] = undefined_name; }', "sm_90")


def test_nvcc_missing_is_backend_unavailable(monkeypatch):
    monkeypatch.setattr(nvcc, "nvcc_path", lambda: None)
    assert not nvcc.nvcc_available()
    with pytest.raises(errors.BackendUnavailableError, match="nvcc was not found"):
        nvcc.check_source("", "sm_90")


def test_ptxas_report_parsing():
    log = """ptxas info    : 0 bytes gmem
ptxas info    : Compiling entry function 'k1' for 'sm_90'
ptxas info    : Function properties for k1
    16 bytes stack frame, 8 bytes spill stores, 4 bytes spill loads
ptxas info    : Used 40 registers, used 1 barriers, 256 bytes smem, 400 bytes cmem[0]
ptxas info    : Function properties for _Z6helperv
    0 bytes stack frame, 0 bytes spill stores, 0 bytes spill loads
"""
    assert nvcc.parse_ptxas(log) == {"k1": {"registers": 40, "shared_bytes": 256, "spill_stores": 8,
                                            "spill_loads": 4, "stack_bytes": 16, "barriers": 1}}


# ----------------------------------------------------------------------- GPU

GPU_OK, GPU_WHY = device.gpu_available()
needs_gpu = pytest.mark.skipif(not GPU_OK, reason=f"no GPU: {GPU_WHY}")


@pytest.mark.skipif(GPU_OK, reason="a GPU is present")
def test_without_a_gpu_running_raises_backend_unavailable(source):
    ok, why = device.gpu_available()
    assert ok is False and why
    with pytest.raises(errors.BackendUnavailableError, match="cannot run kernels here"):
        device.compile_gpu(source)
    with pytest.raises(errors.BackendUnavailableError):
        device.run(MODULE, "spmv_thread", {"n": 0}, block=64)


@needs_gpu
@pytest.mark.parametrize("name", ["spmv_thread", "spmv_warp", "spmv_block"])
def test_spmv_on_the_gpu(source, name):
    rng = np.random.default_rng(11)
    t = np.float64 if name == "spmv_warp" else np.float32
    indptr, ind, vals = csr(rng, LENS, NCOLS, t)
    x = rng.standard_normal(NCOLS).astype(t)
    y = np.zeros(len(LENS), t)
    gpu = device.compile_gpu(source)
    f = MODULE.function(name)
    args = dict(n=len(LENS), pos=indptr, crd=ind, vals=vals, x=x, y=y)
    grid, block = launch_config(f, args, 128)
    assert gpu.launch(name, [args[q.name] for q in f.params], grid, block) == 0
    np.testing.assert_allclose(y, dense(indptr, ind, vals, NCOLS) @ x, rtol=1e-5, atol=1e-4)


@needs_gpu
def test_atomics_and_bf16_on_the_gpu(source):
    rng = np.random.default_rng(12)
    gpu = device.compile_gpu(source)
    nnz, slots = 20000, 7
    rows = rng.integers(0, slots, nnz).astype(np.int32)
    vals = rng.integers(-3, 4, nnz).astype(np.float32)
    y32, y64 = np.zeros(slots, np.float32), np.zeros(slots, np.float64)
    cnt32, cnt64, ybf = np.zeros(slots, np.int32), np.zeros(slots, np.int64), np.zeros(slots + 1, BF)
    assert gpu.launch("scatter_atomic", [nnz, rows, vals, y32, y64, cnt32, cnt64, ybf], 40, 512) == 0
    ref = np.zeros(slots)
    np.add.at(ref, rows, vals)
    np.testing.assert_array_equal(y64, ref)
    np.testing.assert_array_equal(cnt32, np.bincount(rows, minlength=slots))
    f32_in = rng.standard_normal(1000).astype(np.float32)
    m = len(f32_in)
    to_bf = np.zeros(m, BF)
    assert gpu.launch("bf16_casts", [m, f32_in, np.zeros(m), np.zeros(m, BF), to_bf, np.zeros(m, np.float32),
                                     np.zeros(m, BF), np.zeros(m, BF)], 4, 256) == 0
    np.testing.assert_array_equal(to_bf.view(np.uint16), f32_in.astype(BF).view(np.uint16))


# ------------------------------------------- atomics: parallel loops that scatter

SCATTER = {  # expression, formats, operands(rng, A) -> dict, reference(dense A, ops)
    "spmv_t": ("y[j] = A[i,j] * x[i]", lambda rng, m: {"x": rng.standard_normal(m.shape[0])},
               lambda a, o: a.T @ o["x"]),
    "colsum": ("y[j] = A[i,j]", lambda rng, m: {}, lambda a, o: a.sum(axis=0)),
    "dot": ("s = A[i,j] * B[i,j]", lambda rng, m: {"B": rng.standard_normal(m.shape)},
            lambda a, o: np.sum(a * o["B"])),
    "spmm_t": ("C[j,k] = A[i,j] * B[i,k]", lambda rng, m: {"B": rng.standard_normal((m.shape[0], 5))},
               lambda a, o: a.T @ o["B"]),
}
MAPPINGS = ("gpu-thread", "gpu-warp", "gpu-block")


@pytest.fixture
def forced_launch(monkeypatch):
    """Launch the kernels compiled in the test with grid 6 x block 256 (grid-stride loops)."""
    real = cuda.launch_config

    def forced(function, args_by_name, block=256, max_grid=launch.MAX_GRID):
        real(function, args_by_name, block, max_grid)
        return 6, 256

    spcomp.clear_cache()  # targets bind launch_config when a kernel is built
    monkeypatch.setattr(cuda, "launch_config", forced)
    yield
    spcomp.clear_cache()


def _scatter_kernel(name, how):
    expr = SCATTER[name][0]
    return spcomp.compile(expr, formats={"A": "csr"}, backend="cuda-sim",
                          schedule=Schedule() if how == "gpu-thread" else Schedule().parallelize("i", how))


def _check_scatter(name, k, A):
    _, draw, ref = SCATTER[name]
    ops = draw(np.random.default_rng(5), A)
    got = k(A=A, **ops)
    want = ref(A.toarray(), ops)
    np.testing.assert_allclose(got, np.asarray(want).reshape(np.shape(got)), rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("how", MAPPINGS)
@pytest.mark.parametrize("name", sorted(SCATTER))
def test_scatter_loops_run_in_parallel_with_atomics(forced_launch, name, how):
    """The outer loop over a reduction index runs on the GPU mapping, adding into the
    output with atomicAdd; many blocks of 256 threads agree with NumPy."""
    k = _scatter_kernel(name, how)
    body = k.source[k.source.index('extern "C"'):]
    assert f"parallel: {how}" in body and "atomicAdd(&" in body
    assert "serial kernel" not in body
    A = sp.random(300, 40, density=0.1, format="csr", random_state=3)
    _check_scatter(name, k, A)


@pytest.mark.parametrize("how", MAPPINGS)
@pytest.mark.parametrize("name", ["spmv_t", "colsum", "dot"])
def test_atomics_under_heavy_contention(forced_launch, name, how):
    """Every one of 3000 rows hits the same three columns: thousands of atomicAdds
    on three addresses (or one, for the dot product) from concurrent blocks."""
    rows, cols = 3000, 50
    rng = np.random.default_rng(7)
    hot = np.array([3, 17, 41])
    data = rng.choice([-2.0, -0.5, 0.25, 1.0, 3.0], size=(rows, 3)) + rng.standard_normal((rows, 3)) * 1e-3
    A = sp.csr_matrix((data.ravel(), np.tile(hot, rows), np.arange(0, 3 * rows + 1, 3)), shape=(rows, cols))
    _check_scatter(name, _scatter_kernel(name, how), A)


def test_cpu_runs_a_parallel_scatter_loop_into_partials():
    """On CPU threads (no atomics there) the same loop runs with a private copy of the
    output per thread, added up at the end (runtime/partials.py); one that would race
    with a matrix output is refused with the reason."""
    k = spcomp.compile("y[j] = A[i,j] * x[i]", formats={"A": "csr"}, schedule=Schedule().parallelize("i"))
    assert k.lowered.threads.partials
    k = spcomp.compile("s = A[i,j] * B[i,j]", formats={"A": "csr"}, schedule=Schedule().parallelize("i"))
    assert k.lowered.threads.partials
    with pytest.raises(errors.ScheduleError, match="reduction index: iterations would race on the output C"):
        spcomp.compile("C[j,k] = A[i,j] * B[i,k]", formats={"A": "csr"}, schedule=Schedule().parallelize("i"))


def test_sequential_schedule_keeps_gpu_scatter_serial():
    k = spcomp.compile("y[j] = A[i,j] * x[i]", formats={"A": "csr"}, backend="cuda-sim",
                       schedule=Schedule().sequential())
    assert "serial kernel" in k.source and "atomicAdd(&y_vals" not in k.source


@needs_nvcc
@pytest.mark.parametrize("how", MAPPINGS)
def test_atomic_kernels_compile_with_nvcc(how):
    """float64 and float32 atomicAdd build for sm_80 and sm_90; check() reports each arch."""
    for dtype in ("float64", "float32"):
        k = spcomp.compile("C[j,k] = A[i,j] * B[i,k]", formats={"A": "csr"}, dtype=dtype, backend="cuda-sim",
                           schedule=Schedule().parallelize("i", how))
        report = cuda.check(k)
        assert set(report) == {"sm_80", "sm_90"}
        for arch, kernels in report.items():
            assert set(kernels) == {"kernel"}, (arch, kernels)
            assert 0 < kernels["kernel"]["registers"] <= 255


def test_check_refuses_cpu_kernels_and_reports_nvcc_errors(monkeypatch):
    k = spcomp.compile("y[i] = A[i,j] * x[j]", formats={"A": "csr"})
    with pytest.raises(errors.UnsupportedError, match="backend='cuda-sim'"):
        cuda.check(k)
    g = spcomp.compile("y[i] = A[i,j] * x[j]", formats={"A": "csr"}, backend="cuda-sim")
    monkeypatch.setattr(nvcc, "nvcc_path", lambda: None)
    with pytest.raises(errors.BackendUnavailableError, match="nvcc was not found"):
        cuda.check(g)


@needs_nvcc
def test_check_names_the_kernel_when_nvcc_fails(monkeypatch):
    g = spcomp.compile("y[i] = A[i,j] * x[j]", formats={"A": "csr"}, backend="cuda-sim")
    monkeypatch.setattr(type(g.target), "source", lambda self, compiled: compiled[0] + "\nint broken = ;\n")
    with pytest.raises(nvcc.NvccError, match=r"y\[i\] = A\[i,j\] \* x\[j\].*sm_80") as e:
        cuda.check(g)
    assert e.value.arch == "sm_80" and "broken" in e.value.log


def test_a_cpu_prefetch_hint_is_dropped_from_cuda_source():
    """The register-blocking pass only runs for CPU threads, but a kernel IR with a
    ``Prefetch`` still emits valid CUDA C: the hint becomes a comment."""
    x, y, i, count = V("x", ptr(F32)), V("y", ptr(F32)), V("i", I64), V("count", I64)
    f = n.Function("hinted", (x, y, count), n.block(
        n.For(i, n.i64(0), count, n.block(
            n.Prefetch(x, n.Binary("+", i, n.i64(64))),
            n.Store(y, i, n.Load(x, i))), parallel="gpu-thread")))
    src = emit_module(n.Module((f,)))
    assert "prefetch of x dropped" in src and "__builtin_prefetch" not in src
    if nvcc.nvcc_available():
        nvcc.check_source(src)  # raises with nvcc's messages if the source does not compile
