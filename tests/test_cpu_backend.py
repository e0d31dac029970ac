"""The CPU backend: kernel IR built by hand, compiled to machine code, checked against NumPy."""
from __future__ import annotations

import ctypes
import ctypes.util
import mmap
import threading

import ml_dtypes
import numpy as np
import pytest
import scipy.sparse
import scipy.special
from hypothesis import given, settings
from hypothesis import strategies as st

from spcomp.backends import get_backend
from spcomp.backends.cpu import (KernelIRError, compile_module, host_cpu_key, load_object,
                                 to_llvm_ir)
from spcomp.errors import CacheError, UnsupportedError
from spcomp.ir import (BF16, BOOL, F32, F64, I8, I16, I32, I64, AtomicAdd, Allocate, Assign,
                       Binary, Block, Call, Cast, Comment, Const, Declare, For, Free, Function,
                       If, Load, Module, Prefetch, Reallocate, Return, Select, Sort, Store, Unary,
                       Var, While, block, i64, ptr)
from spcomp.ir.nodes import STATUS_OUT_OF_MEMORY

LIBC = ctypes.CDLL(ctypes.util.find_library("c"))
LIBC.free.argtypes = [ctypes.c_void_p]


# ------------------------------------------------------------------ helpers

def add(a, b):
    return Binary("+", a, b)


def mul(a, b):
    return Binary("*", a, b)


def c(value, t):
    return Const(value, t)


def addr(a: np.ndarray) -> int:
    return a.ctypes.data


def elementwise(name, src_t, dst_t, fn):
    """dst[i] = fn(src[i]) for i in [0, n)."""
    src, dst, n_, i = Var("src", ptr(src_t)), Var("dst", ptr(dst_t)), Var("n", I64), Var("i", I64)
    return Function(name, (src, dst, n_), block(
        For(i, i64(0), n_, block(Store(dst, i, fn(Load(src, i)))))))


def run_elementwise(cm, name, src, dst_dtype):
    dst = np.zeros(len(src), dtype=dst_dtype)
    assert cm.function(name)(addr(src), addr(dst), len(src)) == 0
    return dst


def saxpy(t):
    x, y, n_, a, i = (Var("x", ptr(t)), Var("y", ptr(t)), Var("n", I64), Var("a", t),
                      Var("i", I64))
    return Function(f"axpy_{t}", (x, y, n_, a), block(
        Comment("y[i] += a * x[i]"),
        For(i, i64(0), n_, block(Store(y, i, add(mul(a, Load(x, i)), Load(y, i)))))))


def dot(t, vectorize=0, unroll=0):
    x, y, out, n_, i, acc = (Var("x", ptr(t)), Var("y", ptr(t)), Var("out", ptr(t)),
                             Var("n", I64), Var("i", I64), Var("acc", t))
    return Function(f"dot_{t}", (x, y, out, n_), block(
        Declare(acc, c(0.0, t)),
        For(i, i64(0), n_, block(Assign(acc, add(acc, mul(Load(x, i), Load(y, i))))),
            vectorize=vectorize, unroll=unroll),
        Store(out, i64(0), acc)))


def spmv_csr(name="spmv", parallel=False):
    """y[i] = sum_p vals[p] * x[crd[p]] over rows [lo, hi), int32 pos/crd."""
    pos, crd, vals, x, y = (Var("pos", ptr(I32)), Var("crd", ptr(I32)), Var("vals", ptr(F64)),
                            Var("x", ptr(F64)), Var("y", ptr(F64)))
    lo, hi, i, p, acc = Var("lo", I64), Var("hi", I64), Var("i", I64), Var("p", I32), Var("acc", F64)
    return Function(name, (pos, crd, vals, x, y, lo, hi), block(
        For(i, lo, hi, block(
            Declare(acc, c(0.0, F64)),
            For(p, Load(pos, i), Load(pos, add(i, i64(1))), block(
                Assign(acc, add(acc, mul(Load(vals, p), Load(x, Load(crd, p))))))),
            Store(y, i, acc)), parallel="threads" if parallel else None)))


@pytest.fixture(scope="module")
def dense_cm():
    return compile_module(Module((saxpy(F32), saxpy(F64), dot(F32, vectorize=8, unroll=2),
                                  dot(F64))))


# ------------------------------------------------------------- dense loops

@pytest.mark.parametrize("t,dtype", [(F32, np.float32), (F64, np.float64)])
def test_saxpy(dense_cm, t, dtype):
    rng = np.random.default_rng(0)
    for n_ in (0, 1, 7, 1000, 1027):
        x, y = rng.standard_normal(n_).astype(dtype), rng.standard_normal(n_).astype(dtype)
        expect = 2.5 * x.astype(np.float64) + y  # FMA contraction may round once, not twice
        assert dense_cm.function(f"axpy_{t}")(addr(x), addr(y), n_, 2.5) == 0
        np.testing.assert_allclose(y, expect, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("t,dtype", [(F32, np.float32), (F64, np.float64)])
def test_dot(dense_cm, t, dtype):
    rng = np.random.default_rng(1)
    for n_ in (0, 1, 15, 4099):
        x, y = rng.standard_normal(n_).astype(dtype), rng.standard_normal(n_).astype(dtype)
        out = np.full(1, np.nan, dtype=dtype)
        assert dense_cm.function(f"dot_{t}")(addr(x), addr(y), addr(out), n_) == 0
        assert out[0] == pytest.approx(np.dot(x.astype(np.float64), y), rel=1e-4, abs=1e-4)


def test_float_loop_is_vectorised(dense_cm):
    asm = dense_cm.assembly
    assert "ymm" in asm or "zmm" in asm
    assert "axpy_f32" in asm


def test_llvm_ir_is_readable_and_carries_loop_hints(dense_cm):
    text = dense_cm.llvm_ir
    assert 'define i32 @"axpy_f32"(ptr captures(none) noalias %"x"' in text
    assert "for.i.header" in text and '%"acc" = alloca float' in text
    assert "; y[i] += a * x[i]" in text and "; for i in [0, n)  (vectorize 8, unroll 2)" in text
    assert '!"llvm.loop.vectorize.width", i32 8' in text
    assert '!"llvm.loop.unroll.count", i32 2' in text
    assert '!"llvm.loop.mustprogress"' in text and "distinct !{" in text
    assert "alloca" not in dense_cm.optimized_ir  # promoted to registers
    assert host_cpu_key() and isinstance(dense_cm.object_code, bytes)


def test_width_one_and_unroll_one_turn_the_optimisations_off():
    plain = Function("axpy_plain", saxpy(F32).params, block(
        For(Var("i", I64), i64(0), Var("n", I64), saxpy(F32).body.body[1].body,
            vectorize=1, unroll=1)))
    cm = compile_module(Module((plain,)))
    assert '!"llvm.loop.vectorize.width", i32 1' in cm.llvm_ir
    assert '!"llvm.loop.unroll.disable"' in cm.llvm_ir
    assert "<8 x float>" not in cm.optimized_ir and "x float>" not in cm.optimized_ir


# -------------------------------------------------------------- sparse loops

def test_csr_spmv_and_parallel_ranges():
    cm = compile_module(Module((spmv_csr(parallel=True),)))
    A = scipy.sparse.random(300, 200, density=0.05, format="csr", random_state=3, dtype=np.float64)
    A.indptr, A.indices = A.indptr.astype(np.int32), A.indices.astype(np.int32)
    x = np.random.default_rng(3).standard_normal(200)
    y = np.full(300, np.nan)
    f = cm.function("spmv")
    args = (addr(A.indptr), addr(A.indices), addr(A.data), addr(x), addr(y))
    assert f(*args, 0, 300) == 0
    np.testing.assert_allclose(y, A @ x, rtol=1e-12, atol=1e-12)
    # the runtime's way: sub-ranges [lo, hi) on threads
    y[:] = np.nan
    threads = [threading.Thread(target=f, args=(*args, lo, hi)) for lo, hi in ((0, 150), (150, 300))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    np.testing.assert_allclose(y, A @ x, rtol=1e-12, atol=1e-12)


def intersection_count():
    a, b, out, na, nb = (Var("a", ptr(I32)), Var("b", ptr(I32)), Var("out", ptr(I64)),
                         Var("na", I64), Var("nb", I64))
    pa, pb, cnt, va, vb = Var("pa", I64), Var("pb", I64), Var("cnt", I64), Var("va", I32), Var("vb", I32)
    one = i64(1)
    return Function("intersect", (a, b, out, na, nb), block(
        Declare(pa, i64(0)), Declare(pb, i64(0)), Declare(cnt, i64(0)),
        While(Binary("&&", Binary("<", pa, na), Binary("<", pb, nb)), block(
            Declare(va, Load(a, pa)), Declare(vb, Load(b, pb)),
            If(Binary("==", va, vb),
               block(Assign(cnt, add(cnt, one)), Assign(pa, add(pa, one)), Assign(pb, add(pb, one))),
               block(If(Binary("<", va, vb), block(Assign(pa, add(pa, one))),
                        block(Assign(pb, add(pb, one)))))))),
        Store(out, i64(0), cnt)))


@pytest.fixture(scope="module")
def merge_cm():
    return compile_module(Module((intersection_count(),)))


@given(st.lists(st.integers(-50, 50), max_size=60), st.lists(st.integers(-50, 50), max_size=60))
@settings(max_examples=60, deadline=None)
def test_while_merge_counts_intersection(merge_cm, xs, ys):
    a = np.array(sorted(set(xs)), dtype=np.int32)
    b = np.array(sorted(set(ys)), dtype=np.int32)
    out = np.zeros(1, dtype=np.int64)
    assert merge_cm.function("intersect")(addr(a), addr(b), addr(out), len(a), len(b)) == 0
    assert out[0] == len(set(xs) & set(ys))


# ----------------------------------------------------- short-circuit and lazy select

@pytest.fixture
def guarded_int32_array():
    """(address, n) of n int32 values that end exactly where an unreadable page begins."""
    page = mmap.PAGESIZE
    mm = mmap.mmap(-1, 2 * page)
    buf = ctypes.c_char.from_buffer(mm)
    base = ctypes.addressof(buf)
    libc = ctypes.CDLL(None, use_errno=True)
    libc.mprotect.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    assert libc.mprotect(base + page, page, 0) == 0  # PROT_NONE
    n_ = 8
    start = base + page - 4 * n_
    (ctypes.c_int32 * n_).from_address(start)[:] = list(range(n_))
    yield start, n_
    libc.mprotect(base + page, page, 3)
    del buf
    mm.close()


def test_and_or_select_skip_operands_that_would_fault(guarded_int32_array):
    a, out, n_, p, limit = (Var("a", ptr(I32)), Var("out", ptr(I64)), Var("n", I64), Var("p", I64),
                            Var("limit", I32))
    count_below = Function("count_below", (a, out, n_, limit), block(
        Declare(p, i64(0)),
        While(Binary("&&", Binary("<", p, n_), Binary("<", Load(a, p), limit)),
              block(Assign(p, add(p, i64(1))))),
        Store(out, i64(0), p),
        # a[n] only when p < n, else -1: must not read a[n]
        Store(out, i64(1), Cast(Select(Binary("<", p, n_), Load(a, p), c(-1, I32)), I64)),
        Store(out, i64(2), Cast(Binary("||", Binary(">=", p, n_), Binary("==", Load(a, p), limit)),
                                I64))))
    cm = compile_module(Module((count_below,)))
    assert "and.rhs" in cm.llvm_ir and "or.rhs" in cm.llvm_ir and "select.true" in cm.llvm_ir
    start, size = guarded_int32_array
    out = np.zeros(3, dtype=np.int64)
    assert cm.function("count_below")(start, addr(out), size, 100) == 0
    assert out.tolist() == [8, -1, 1]
    assert cm.function("count_below")(start, addr(out), size, 5) == 0
    assert out.tolist() == [5, 5, 1]


# ------------------------------------------------------------ control flow

def test_nested_if_else_chains_and_status_codes():
    x, out, n_, i, v = Var("x", ptr(F64)), Var("out", ptr(I32)), Var("n", I64), Var("i", I64), Var("v", F64)
    classify = Function("classify", (x, out, n_), block(
        For(i, i64(0), n_, block(
            Declare(v, Load(x, i)),
            If(Binary("!=", v, v), block(Return(7))),  # NaN: status 7
            If(Binary("<", v, c(0.0, F64)), block(Store(out, i, c(-1, I32))),
               block(If(Binary("==", v, c(0.0, F64)), block(Store(out, i, c(0, I32))),
                        block(If(Binary("<", v, c(10.0, F64)), block(Store(out, i, c(1, I32))),
                                 block(Store(out, i, c(2, I32))))))))))))
    cm = compile_module(Module((classify,)))
    xs = np.array([-3.0, 0.0, 2.5, 10.0, 1e9, -0.0])
    out = np.zeros(len(xs), dtype=np.int32)
    assert cm.function("classify")(addr(xs), addr(out), len(xs)) == 0
    assert out.tolist() == [-1, 0, 1, 2, 2, 0]
    xs = np.array([1.0, np.nan, -1.0])
    out[:] = 9
    assert cm.function("classify")(addr(xs), addr(out), len(xs)) == 7
    assert out[:3].tolist() == [1, 9, 9]


def test_scopes_shadow_like_c():
    out, x = Var("out", ptr(I32)), Var("x", I32)
    f = Function("shadow", (out,), block(
        Declare(x, c(1, I32)),
        Block((Declare(x, c(2, I32)), Store(out, i64(0), x))),
        Store(out, i64(1), x),
        Return(3),
        Store(out, i64(2), c(99, I32))))  # unreachable after the return
    cm = compile_module(Module((f,)))
    out = np.zeros(3, dtype=np.int32)
    assert cm.function("shadow")(addr(out)) == 3
    assert out.tolist() == [2, 1, 0]


# ---------------------------------------------------------- arithmetic

def test_select_min_max_and_integer_ops():
    t_f = lambda op: (lambda e: Binary(op, e, c(0.5, F32)))  # noqa: E731
    t_i = lambda op, k: (lambda e: Binary(op, e, c(k, I32)))  # noqa: E731
    fns = [
        elementwise("fmin", F32, F32, t_f("min")),
        elementwise("fmax", F32, F32, t_f("max")),
        elementwise("imin", I32, I32, t_i("min", 3)),
        elementwise("imax", I32, I32, t_i("max", 3)),
        elementwise("idiv", I32, I32, t_i("/", 4)),
        elementwise("irem", I32, I32, t_i("%", 4)),
        elementwise("ishl", I32, I32, t_i("<<", 2)),
        elementwise("ishr", I32, I32, t_i(">>", 1)),
        elementwise("iand", I32, I32, t_i("&", 6)),
        elementwise("ior", I32, I32, t_i("|", 1)),
        elementwise("ineg", I32, I32, lambda e: Unary("-", e)),
        elementwise("fneg", F32, F32, lambda e: Unary("-", e)),
        elementwise("fsel", F32, F32, lambda e: Select(Binary(">", e, c(0.0, F32)), e,
                                                        mul(e, c(0.25, F32)))),
        elementwise("bnot", BOOL, BOOL, lambda e: Unary("!", e)),
        elementwise("bxor", BOOL, BOOL, lambda e: Binary("!=", e, c(True, BOOL))),
    ]
    cm = compile_module(Module(tuple(fns)))
    xf = np.array([-2.0, 0.25, 0.5, 0.75, 3.0], dtype=np.float32)
    xi = np.array([-9, -7, -1, 0, 3, 5, 17], dtype=np.int32)
    xb = np.array([True, False, True])
    np.testing.assert_array_equal(run_elementwise(cm, "fmin", xf, np.float32), np.minimum(xf, 0.5))
    np.testing.assert_array_equal(run_elementwise(cm, "fmax", xf, np.float32), np.maximum(xf, 0.5))
    np.testing.assert_array_equal(run_elementwise(cm, "imin", xi, np.int32), np.minimum(xi, 3))
    np.testing.assert_array_equal(run_elementwise(cm, "imax", xi, np.int32), np.maximum(xi, 3))
    np.testing.assert_array_equal(run_elementwise(cm, "idiv", xi, np.int32), np.fix(xi / 4))  # C: toward 0
    np.testing.assert_array_equal(run_elementwise(cm, "irem", xi, np.int32), np.fmod(xi, 4))
    np.testing.assert_array_equal(run_elementwise(cm, "ishl", xi, np.int32), xi << 2)
    np.testing.assert_array_equal(run_elementwise(cm, "ishr", xi, np.int32), xi >> 1)
    np.testing.assert_array_equal(run_elementwise(cm, "iand", xi, np.int32), xi & 6)
    np.testing.assert_array_equal(run_elementwise(cm, "ior", xi, np.int32), xi | 1)
    np.testing.assert_array_equal(run_elementwise(cm, "ineg", xi, np.int32), -xi)
    np.testing.assert_array_equal(run_elementwise(cm, "fneg", xf, np.float32), -xf)
    np.testing.assert_array_equal(run_elementwise(cm, "fsel", xf, np.float32),
                                  np.where(xf > 0, xf, xf * np.float32(0.25)))
    np.testing.assert_array_equal(run_elementwise(cm, "bnot", xb, np.bool_), ~xb)
    np.testing.assert_array_equal(run_elementwise(cm, "bxor", xb, np.bool_), ~xb)


@pytest.mark.parametrize("t,dtype,rtol", [(F32, np.float32, 2e-6), (F64, np.float64, 1e-13)])
def test_intrinsics(t, dtype, rtol):
    funcs = {"exp": np.exp, "log": np.log, "sqrt": np.sqrt, "abs": np.abs, "tanh": np.tanh,
             "erf": scipy.special.erf}
    cm = compile_module(Module(tuple(
        elementwise("f_" + name, t, t, lambda e, name=name: Call(name, (e,), t)) for name in funcs)))
    x = np.concatenate([np.linspace(-6, 6, 97), [-0.0, 1e-30, 80.0]]).astype(dtype)
    for name, ref in funcs.items():
        src = np.abs(x) if name in ("log", "sqrt") else x
        got = run_elementwise(cm, "f_" + name, src, dtype)
        with np.errstate(divide="ignore"):
            want = ref(src.astype(np.float64))
        np.testing.assert_allclose(got, want.astype(dtype), rtol=rtol, atol=0, err_msg=name)


def test_bit_intrinsics_on_i64_including_the_sign_bit_and_zero():
    """``ctz`` (lowest set bit, 64 for 0), ``popcount`` (set bits) and ``clear_lowest``
    (the word without its lowest set bit) of an i64, for the workspace bitmaps: bit 63
    alone (where ``x - 1`` would overflow), single high bits and 0 included. A float or
    i32 argument is refused."""
    cm = compile_module(Module((elementwise("lowbit", I64, I64, lambda e: Call("ctz", (e,), I64)),
                                elementwise("bits", I64, I64, lambda e: Call("popcount", (e,), I64)),
                                elementwise("drop", I64, I64, lambda e: Call("clear_lowest", (e,), I64)))))
    x = np.array([1, 2, 3, 8, 12, 1 << 40, (1 << 62) + (1 << 5), -(1 << 63), -1, -2, 7 << 60, 0],
                 dtype=np.int64)
    values = [int(v) for v in x.tolist()]
    want = np.array([(v & -v).bit_length() - 1 if v else 64 for v in values], dtype=np.int64)
    np.testing.assert_array_equal(run_elementwise(cm, "lowbit", x, np.int64), want)
    ones = np.array([bin(v & (2 ** 64 - 1)).count("1") for v in values], dtype=np.int64)
    np.testing.assert_array_equal(run_elementwise(cm, "bits", x, np.int64), ones)
    dropped = [(v & (v - 1)) if v != -(1 << 63) else 0 for v in values]  # Python ints do not wrap
    np.testing.assert_array_equal(run_elementwise(cm, "drop", x, np.int64), np.array(dropped, dtype=np.int64))
    for name in ("ctz", "popcount", "clear_lowest"):
        with pytest.raises(KernelIRError, match=name):
            compile_module(Module((elementwise("bad", I32, I32, lambda e: Call(name, (e,), I32)),)))


@pytest.mark.parametrize("last", [0, 9, (1 << 62)])
def test_clamp_index_keeps_coordinates_within_0_to_last(last):
    """``clamp_index(c, last)`` (ir.build.clamp_coordinate's one compare): a coordinate
    in ``0..last`` passes unchanged; a negative one (a huge unsigned one) and one past
    ``last`` become ``last``, so an address formed from it stays inside the array."""
    from spcomp.ir.nodes import Const
    cm = compile_module(Module((elementwise("clamp", I64, I64,
                                            lambda e: Call("clamp_index", (e, Const(last, I64)), I64)),)))
    x = np.array([0, 1, 5, 9, 10, last, last + 1, -1, -(1 << 63), (1 << 63) - 1, -last], dtype=np.int64)
    want = np.array([v if 0 <= v <= last else last for v in x.tolist()], dtype=np.int64)
    np.testing.assert_array_equal(run_elementwise(cm, "clamp", x, np.int64), want)
    with pytest.raises(KernelIRError, match="clamp_index takes 2 i64"):
        compile_module(Module((elementwise("bad", I64, I64, lambda e: Call("clamp_index", (e,), I64)),)))


def test_casts():
    pairs = [(F64, I32), (F32, I64), (I32, F64), (I64, F32), (I32, I64), (I64, I8), (I16, I32),
             (F32, F64), (F64, F32), (I32, BOOL), (F64, BOOL), (BOOL, I32), (BOOL, F32)]
    cm = compile_module(Module(tuple(
        elementwise(f"cast_{s}_{d}", s, d, lambda e, d=d: Cast(e, d)) for s, d in pairs)))
    samples = {
        "f": np.array([-3.75, -1.0, -0.5, 0.0, 0.5, 2.999, 1e6, np.nan]),
        "i": np.array([-300, -1, 0, 1, 127, 128, 255, 70000]),
        "b": np.array([True, False, True]),
    }
    np_types = {F32: np.float32, F64: np.float64, I8: np.int8, I16: np.int16, I32: np.int32,
                I64: np.int64, BOOL: np.bool_}
    for s, d in pairs:
        src = samples["b" if s == BOOL else ("f" if s.is_float else "i")]
        if d.is_int and s.is_float:
            src = src[~np.isnan(src)]  # fptosi of NaN is undefined, as in C
        src = src.astype(np_types[s])
        got = run_elementwise(cm, f"cast_{s}_{d}", src, np_types[d])
        with np.errstate(invalid="ignore"):
            want = (src != 0) if d == BOOL else src.astype(np_types[d])
        np.testing.assert_array_equal(got, want, err_msg=f"{s} -> {d}")


def test_bf16_round_trip_matches_ml_dtypes():
    cm = compile_module(Module((
        elementwise("to_bf16", F32, BF16, lambda e: Cast(e, BF16)),
        elementwise("from_bf16", BF16, F32, lambda e: Cast(e, F32)),
        elementwise("f64_to_bf16", F64, BF16, lambda e: Cast(e, BF16)),
        elementwise("bf16_add_half", BF16, BF16,
                    lambda e: Cast(add(Cast(e, F32), Cast(Const(0.5, BF16), F32)), BF16)),
    )))
    rng = np.random.default_rng(5)
    upper = rng.integers(0, 1 << 16, 2000, dtype=np.uint32)
    halfway = (upper << 16) | 0x8000  # exactly between two bf16 values: ties to even
    near = np.concatenate([(upper << 16) | 0x7FFF, (upper << 16) | 0x8001])
    special = np.array([0, 0x80000000, 0x7F800000, 0xFF800000, 0x7F7FFFFF, 0x00000001,
                        0x7FC00000, 0x7F800001, 0xFFC12345], dtype=np.uint32)
    bits = np.concatenate([halfway, near, special, rng.integers(0, 1 << 32, 2000, dtype=np.uint32)])
    x = bits.view(np.float32)
    got = run_elementwise(cm, "to_bf16", x, np.uint16)
    with np.errstate(invalid="ignore"):
        want = x.astype(ml_dtypes.bfloat16).view(np.uint16)
    nan = np.isnan(x)
    np.testing.assert_array_equal(got[~nan], want[~nan])
    assert np.isnan(got[nan].view(ml_dtypes.bfloat16).astype(np.float32)).all()
    # and back up: exact
    b = rng.integers(0, 1 << 16, 5000, dtype=np.uint16)
    up = run_elementwise(cm, "from_bf16", b, np.float32)
    ref = b.view(ml_dtypes.bfloat16).astype(np.float32)
    np.testing.assert_array_equal(up.view(np.uint32)[~np.isnan(ref)],
                                  ref.view(np.uint32)[~np.isnan(ref)])
    xd = rng.standard_normal(500) * 1e3
    np.testing.assert_array_equal(run_elementwise(cm, "f64_to_bf16", xd, np.uint16),
                                  xd.astype(np.float32).astype(ml_dtypes.bfloat16).view(np.uint16))
    vals = np.array([1.0, -2.0, 3.0], dtype=ml_dtypes.bfloat16)
    got = run_elementwise(cm, "bf16_add_half", vals.view(np.uint16), np.uint16)
    np.testing.assert_array_equal(got.view(ml_dtypes.bfloat16).astype(np.float32), [1.5, -1.5, 3.5])


# ------------------------------------------------------------- memory

def growing_buffer():
    out, out_n, count = Var("out", ptr(ptr(I32))), Var("out_cap", ptr(I64)), Var("count", I64)
    buf, cap, i = Var("buf", ptr(I32)), Var("cap", I64), Var("i", I64)
    return Function("grow", (out, out_n, count), block(
        Declare(cap, i64(1)),
        Allocate(buf, cap),
        For(i, i64(0), count, block(
            If(Binary(">=", i, cap), block(
                Assign(cap, mul(cap, i64(2))),
                Reallocate(buf, cap))),
            Store(buf, i, Cast(mul(i, i64(3)), I32)))),
        Store(out, i64(0), buf),
        Store(out_n, i64(0), cap)))


def test_allocate_reallocate_growth_and_out_pointer():
    cm = compile_module(Module((growing_buffer(),)))
    assert "captures(none) noalias" in cm.llvm_ir
    out, cap = ctypes.c_void_p(), np.zeros(1, dtype=np.int64)
    assert cm.function("grow")(ctypes.addressof(out), addr(cap), 10000) == 0
    assert cap[0] == 16384 and out.value
    got = np.ctypeslib.as_array((ctypes.c_int32 * 10000).from_address(out.value)).copy()
    LIBC.free(out.value)
    np.testing.assert_array_equal(got, np.arange(10000, dtype=np.int32) * 3)


def test_calloc_free_and_out_of_memory():
    out, count, buf, i, acc = (Var("out", ptr(F64)), Var("count", I64), Var("buf", ptr(F64)),
                               Var("i", I64), Var("acc", F64))
    zeros = Function("zeros", (out, count), block(
        Allocate(buf, count, zero=True),
        Declare(acc, c(1.0, F64)),
        For(i, i64(0), count, block(Assign(acc, add(acc, Load(buf, i))))),
        Free(buf),
        Store(out, i64(0), acc)))
    fresh = Var("fresh", ptr(I32))
    realloc_fresh = Function("realloc_fresh", (count,), block(
        Declare(fresh), Reallocate(fresh, count), Store(fresh, i64(0), c(1, I32)), Free(fresh)))
    fns = [zeros, realloc_fresh]
    for zero in (False, True):
        pp = Var("out", ptr(ptr(F64)))
        fns.append(Function(f"alloc_{int(zero)}", (pp, count), block(
            Allocate(buf, count, zero=zero), Store(pp, i64(0), buf))))
    cm = compile_module(Module(tuple(fns)))
    res = np.zeros(1)
    for k in (0, 1, 100000):
        assert cm.function("zeros")(addr(res), k) == 0 and res[0] == 1.0
    assert cm.function("realloc_fresh")(10) == 0  # a declared pointer starts null
    for name in ("alloc_0", "alloc_1"):
        p = ctypes.c_void_p()
        assert cm.function(name)(ctypes.addressof(p), 10) == 0 and p.value
        LIBC.free(p.value)
        for k in (1 << 60, 1 << 50, -1):  # bytes overflow i64, malloc fails, negative
            assert cm.function(name)(ctypes.addressof(p), k) == STATUS_OUT_OF_MEMORY


@pytest.fixture(scope="module")
def sort_cm():
    fns = []
    for t in (I32, I64):
        a, start, count = Var("a", ptr(t)), Var("start", I64), Var("count", I64)
        fns.append(Function(f"sort_{t}", (a, start, count), block(Sort(a, start, count))))
    return compile_module(Module(tuple(fns)))


@given(st.sampled_from([0, 1, 2, 17, 1000]).flatmap(
           lambda k: st.tuples(st.lists(st.integers(-2**31, 2**31 - 1), min_size=k, max_size=k),
                               st.sampled_from(["int32", "int64"]), st.booleans())))
@settings(max_examples=60, deadline=None)
def test_sort(sort_cm, case):
    values, dtype, few_distinct = case
    a = np.array(values, dtype=np.int64)
    if few_distinct:
        a %= 5
    a = a.astype(dtype)
    padded = np.concatenate([[7, -7], a, [3]]).astype(dtype)  # sort the slice [2, 2 + len)
    assert sort_cm.function(f"sort_{'i32' if dtype == 'int32' else 'i64'}")(
        addr(padded), 2, len(a)) == 0
    np.testing.assert_array_equal(padded[2:2 + len(a)], np.sort(a))
    assert padded[:2].tolist() == [7, -7] and padded[-1] == 3


def test_atomic_add():
    fns = []
    for t in (F32, F64, I32, I64):
        idx, hist, n_, i = Var("idx", ptr(I32)), Var("hist", ptr(t)), Var("n", I64), Var("i", I64)
        fns.append(Function(f"hist_{t}", (idx, hist, n_), block(
            For(i, i64(0), n_, block(AtomicAdd(hist, Load(idx, i), c(1, t)))))))
    cm = compile_module(Module(tuple(fns)))
    assert "atomicrmw fadd" in cm.llvm_ir and "atomicrmw add" in cm.llvm_ir
    idx = np.random.default_rng(2).integers(0, 10, 5000).astype(np.int32)
    for t, dtype in ((F32, np.float32), (F64, np.float64), (I32, np.int32), (I64, np.int64)):
        hist = np.zeros(10, dtype=dtype)
        f = cm.function(f"hist_{t}")
        threads = [threading.Thread(target=f, args=(addr(idx), addr(hist), len(idx)))
                   for _ in range(4)]
        for th in threads:
            th.start()
        for th in threads:
            th.join()
        np.testing.assert_array_equal(hist, 4 * np.bincount(idx, minlength=10))


# ------------------------------------------------------------ object code

def test_load_object_gives_same_results(dense_cm):
    module = dense_cm.ir_module
    cm2 = load_object(dense_cm.object_code, module)
    assert cm2.optimized_ir is None and cm2.assembly is None
    x = np.arange(100, dtype=np.float64)
    y1, y2 = np.ones(100), np.ones(100)
    dense_cm.function("axpy_f64")(addr(x), addr(y1), 100, 0.5)
    cm2.function("axpy_f64")(addr(x), addr(y2), 100, 0.5)
    np.testing.assert_array_equal(y1, y2)
    f = cm2.function("axpy_f64")
    del cm2  # the ctypes function keeps its module alive
    f(addr(x), addr(y2), 100, 0.5)
    np.testing.assert_array_equal(y2, y1 + 0.5 * x)


def test_load_object_refuses_bad_bytes(dense_cm):
    with pytest.raises(CacheError):
        load_object(b"not an object file" * 10, dense_cm.ir_module)
    with pytest.raises(CacheError):
        load_object(dense_cm.object_code[: len(dense_cm.object_code) // 2], dense_cm.ir_module)
    other = Module((Function("not_in_object", (Var("x", I64),), block()),))
    with pytest.raises(CacheError, match="not_in_object"):
        load_object(dense_cm.object_code, other)


# ----------------------------------------------------------------- errors

def test_malformed_ir_is_reported():
    x = Var("x", I32)
    with pytest.raises(KernelIRError, match="different types"):
        to_llvm_ir(Module((Function("f", (x,), block(Declare(Var("y", I32), add(x, i64(1))))),)))
    with pytest.raises(KernelIRError, match="before it is declared"):
        to_llvm_ir(Module((Function("f", (), block(Assign(x, c(1, I32)))),)))
    with pytest.raises(KernelIRError, match="not a valid or free"):
        to_llvm_ir(Module((Function("malloc", (), block()),)))
    h = Var("h", ptr(BF16))
    with pytest.raises(UnsupportedError, match="atomic add on bf16"):
        to_llvm_ir(Module((Function("f", (h,), block(AtomicAdd(h, i64(0), Const(1.0, BF16)))),)))


def test_get_backend():
    assert get_backend("cpu").compile_module is compile_module


# ------------------------------------------------------------ native parallel driver

_DRIVER_SCRIPT = r"""
import numpy as np, scipy.sparse as sp, spcomp
spcomp.set_num_threads(4)
A = sp.random(3000, 3000, density=0.05, format="csr", random_state=1)  # work above the threshold
x = np.random.default_rng(2).standard_normal(3000)
k = spcomp.compile("y[i] = A[i,j] * x[j]", formats={"A": "csr"})
assert k.variant().compiled.parallel_driver("kernel") is not None, "no native driver"
y = k(A=A, x=x)
spcomp.set_num_threads(1)
assert np.array_equal(y, k(A=A, x=x)), "driver result differs from one thread"
print("max error", float(np.abs(y - A @ x).max()))
"""


@pytest.mark.parametrize("limit", ["1", "2"])
def test_driver_runs_every_chunk_when_libgomp_gives_fewer_threads(limit):
    """libgomp may give a team fewer threads than the chunks asked for (here
    OMP_THREAD_LIMIT): each team thread then takes several chunks, none is skipped."""
    import os
    import subprocess
    import sys
    env = dict(os.environ, OMP_THREAD_LIMIT=limit)
    run = subprocess.run([sys.executable, "-c", _DRIVER_SCRIPT], env=env, capture_output=True, text=True,
                         timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    assert float(run.stdout.split()[-1]) < 1e-10


def test_concurrent_first_calls_share_one_bounds_array(monkeypatch):
    """Threads calling one parallel kernel at once with a new size all miss the
    bounds cache together. The driver gets the array's address only, so they must
    all get the same array: a second insertion replacing the first would free the
    array the first call is using. ``split`` is slowed so both threads are in it
    at once unless the cache serialises them."""
    import numpy as np

    import spcomp
    from spcomp.runtime import threads as threads_module
    k = spcomp.compile("y[i] = A[i,j] * x[j]", formats={"A": "csr"})
    barrier = threading.Barrier(2)
    real_split = threads_module.split

    def slow_split(*args, **kw):
        try:
            barrier.wait(timeout=0.5)  # meets the other thread only if it got in too
        except threading.BrokenBarrierError:
            pass
        return real_split(*args, **kw)
    monkeypatch.setattr(threads_module, "split", slow_split)
    got = []
    workers = [threading.Thread(target=lambda: got.append(k.runtime.launcher.bounds(5000, 2, None))) for _ in range(2)]
    for t in workers:
        t.start()
    for t in workers:
        t.join()
    assert len(got) == 2 and got[0] is got[1]
    assert k.runtime.launcher.bounds_cache[(5000, 2, None)][1] is got[0]
    np.testing.assert_array_equal(got[0], [0, 2500, 5000])


def _row_sums(vectorize: int) -> Function:
    """y[i] = sum of vals[pos[i]:pos[i+1]], the sum in a scalar (SpMV's shape)."""
    pos, vals, y = Var("pos", ptr(I64)), Var("vals", ptr(F64)), Var("y", ptr(F64))
    rows, i, p, t = Var("rows", I64), Var("i", I64), Var("p", I64), Var("t", F64)
    return Function(f"row_sums_{vectorize}", (pos, vals, y, rows), block(
        For(i, i64(0), rows, block(
            Declare(t, c(0.0, F64)),
            For(p, Load(pos, i), Load(pos, add(i, i64(1))),
                block(Assign(t, add(t, Load(vals, p)))), vectorize=vectorize),
            Store(y, i, t)))))


def test_a_sum_in_a_vectorised_loop_may_add_its_lanes_as_a_tree():
    """Only the reduction of a loop with a vectorize hint (whose lanes are summed out
    of order anyway) gets ``reassoc``; a scalar loop keeps C's order exactly."""
    cm = compile_module(Module((_row_sums(8), _row_sums(1))))
    text = cm.llvm_ir
    vector = text[text.index('@"row_sums_8"'):text.index('@"row_sums_1"')]
    scalar = text[text.index('@"row_sums_1"'):]
    assert "fadd contract reassoc double" in vector
    assert "reassoc" not in scalar and "fadd contract double" in scalar
    rng = np.random.default_rng(0)
    pos = np.array([0, 0, 1, 9, 40, 41], dtype=np.int64)
    vals = rng.standard_normal(41)
    for name in ("row_sums_8", "row_sums_1"):
        y = np.full(5, np.nan)
        assert cm.function(name)(addr(pos), addr(vals), addr(y), 5) == 0
        np.testing.assert_allclose(y, np.add.reduceat(vals, pos[:-1]) * (np.diff(pos) > 0), rtol=1e-13)


def test_a_prefetch_past_the_end_of_an_array_is_harmless():
    """``Prefetch`` is a hint: LLVM's ``llvm.prefetch``, which never faults, and no
    ``inbounds`` on its address (the look-ahead may point past the array)."""
    x, y, n_, i = Var("x", ptr(F64)), Var("y", ptr(F64)), Var("n", I64), Var("i", I64)
    f = Function("copy_with_hints", (x, y, n_), block(
        For(i, i64(0), n_, block(
            Prefetch(x, add(i, i64(1 << 30))),  # 8 GiB past the end
            Store(y, i, Load(x, i))))))
    cm = compile_module(Module((f,)))
    assert "call void @\"llvm.prefetch.p0\"" in cm.llvm_ir
    src = np.arange(100.0)
    assert np.array_equal(run_elementwise_like(cm, src), src)


def run_elementwise_like(cm, src):
    dst = np.zeros_like(src)
    assert cm.function("copy_with_hints")(addr(src), addr(dst), len(src)) == 0
    return dst
