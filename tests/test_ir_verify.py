"""The IR verifier (spcomp/ir/verify.py): one set of rules both backends run first.

Each malformed function is refused with a KernelIRError whose message names the
problem and the function, by the verifier itself and by both backends' entry points
(CPU ``generate``, CUDA ``emit_module``). What only one backend cannot do stays in
that backend: the CPU reserves libc's names and has no bf16 atomics, the CUDA emitter
reserves ``spc_`` names and refuses ``realloc``.
"""
from __future__ import annotations

import pytest

from spcomp.backends.cpu import KernelIRError as CpuKernelIRError
from spcomp.backends.cpu import to_llvm_ir
from spcomp.backends.cuda import emit_function, emit_module
from spcomp.errors import UnsupportedError
from spcomp.ir import nodes as n
from spcomp.ir.types import BF16, BOOL, F32, F64, I32, I64, ptr
from spcomp.ir.verify import KernelIRError, verify_function, verify_module

x, y = n.Var("x", ptr(F32)), n.Var("y", ptr(F32))
size, i, t = n.Var("n", I64), n.Var("i", I64), n.Var("t", F32)
zero = n.i64(0)


def fn(*body, params=(size, x, y), name="f", **kw):
    return n.Function(name, tuple(params), n.block(*body), **kw)


def loop(*body, parallel=None, var=i, start=zero, end=size):
    return n.For(var, start, end, n.block(*body), parallel=parallel)


MALFORMED = {
    "undeclared": (fn(n.Assign(t, n.const(1, F32))), r"variable t \(f32\) used before it is declared"),
    "out of scope": (fn(loop(n.Declare(t, n.const(0, F32))), n.Store(y, zero, t)),
                     "variable t .* used before it is declared"),
    "wrong type": (fn(loop(n.Store(y, n.Var("i", I32), n.const(0, F32)))),
                   "variable i used as i32 but declared as i64"),
    "mixed operands": (fn(n.Declare(t, n.Binary("+", n.Load(x, zero), n.const(1, F64)))),
                       r"operands of different types \(f32, f64\)"),
    "store type": (fn(n.Store(y, zero, n.const(1, F64))), "storing f64 into an array of f32"),
    "declare type": (fn(n.Declare(t, n.i64(1))), "t is f32, its initial value i64"),
    "twice in a scope": (fn(n.Declare(t, n.const(0, F32)), n.Declare(t, n.const(1, F32))),
                         "variable t declared twice in one scope"),
    "reads itself": (fn(n.Declare(t, n.const(0, F32)), n.Block((n.Declare(t, n.Binary("+", t, t)),))),
                     "the initial value of t reads t"),
    "condition": (fn(n.If(n.Load(x, zero), n.block())), "if condition of type f32"),
    "loop bound": (fn(loop(end=n.Const(4, I32))), r"loop i \(i64\) has a bound of type i32"),
    "bf16 arithmetic": (fn(n.Declare(n.Var("h", BF16), n.Binary("*", n.Const(1.0, BF16), n.Const(2.0, BF16)))),
                        "arithmetic on bf16 .*storage-only"),
    "shift a float": (fn(n.Declare(t, n.Binary("<<", n.const(1, F32), n.const(1, F32)))),
                      "operator '<<' on f32"),
    "intrinsic": (fn(n.Declare(t, n.Call("ctz", (n.const(1, F32),), F32))), "intrinsic ctz takes 1 i64 and returns one"),
    "index a scalar": (fn(n.Declare(t, n.Load(size, zero))), "indexing a non-pointer of type i64"),
    "sort bools": (fn(n.Sort(n.Var("b", ptr(BOOL)), zero, size), params=(size, n.Var("b", ptr(BOOL)))),
                   "sorting an array of bool"),
    "mapping": (fn(loop(parallel="gpu-grid")), "unknown parallel mapping 'gpu-grid'"),
    "hint": (fn(n.For(i, zero, size, n.block(), unroll=-2)), "unroll=-2"),
    "parameter names": (fn(params=(size, n.Var("n", I32))), "duplicate parameter names"),
    "variable name": (fn(n.Declare(n.Var("2x", F32), n.const(0, F32))), "'2x' is not a C identifier"),
    "per_chunk": (fn(per_chunk=("capacity",)), "per_chunk names 'capacity', which is not a parameter"),
}


@pytest.mark.parametrize("name", sorted(MALFORMED))
def test_malformed_functions_are_refused_naming_the_problem(name):
    f, message = MALFORMED[name]
    with pytest.raises(KernelIRError, match=message) as e:
        verify_function(f)
    assert "in function 'f'" in str(e.value)
    # both backends run the verifier first and refuse it the same way
    with pytest.raises(KernelIRError, match=message):
        to_llvm_ir(n.Module((f,)))
    with pytest.raises(KernelIRError, match=message):
        emit_module(n.Module((f,)))
    with pytest.raises(KernelIRError, match=message):
        emit_function(f)


def test_module_names():
    good = fn()
    with pytest.raises(KernelIRError, match="duplicate function names"):
        verify_module(n.Module((good, good)))
    with pytest.raises(KernelIRError, match="'__spcomp_sort_i64' is not a valid name"):
        verify_module(n.Module((fn(name="__spcomp_sort_i64"),)))
    with pytest.raises(KernelIRError, match="'a b' is not a valid name"):
        emit_module(n.Module((fn(name="a b"),)))
    assert CpuKernelIRError is KernelIRError  # the CPU backend's name for it is the IR's class


def test_valid_ir_passes():
    """Scopes as in C: a name may be declared again in an inner scope (shadowing) and in
    sibling scopes; a Declare may read an outer variable of another name."""
    s = n.Var("s", F32)
    f = fn(n.Declare(s, n.const(0, F32)),
           loop(n.Declare(t, n.Load(x, i)), n.Assign(s, n.Binary("+", s, t)),
                n.Block((n.Declare(t, n.const(2, F32)), n.Store(y, i, t)))),
           loop(n.Declare(t, n.Load(x, i)), n.Store(y, i, n.Binary("max", s, t))),
           n.If(n.Binary(">", s, n.const(0, F32)), n.block(n.Return(n.STATUS_PACKED_OVERFLOW))))
    verify_module(n.Module((f,)))
    to_llvm_ir(n.Module((f,)))
    emit_module(n.Module((f,)))


def test_backend_specific_checks_stay_in_their_backend():
    # the CPU: libc's names and bf16 atomics; the verifier and the CUDA emitter accept them
    libc = fn(name="malloc")
    verify_module(n.Module((libc,)))
    emit_module(n.Module((libc,)))
    with pytest.raises(KernelIRError, match="not a valid or free symbol name"):
        to_llvm_ir(n.Module((libc,)))
    h = n.Var("h", ptr(BF16))
    atomic = fn(loop(n.AtomicAdd(h, i, n.Const(1.0, BF16)), parallel="gpu-thread"), params=(size, h))
    verify_module(n.Module((atomic,)))
    assert "spc_atomic_add_bf16" in emit_module(n.Module((atomic,)))
    with pytest.raises(UnsupportedError, match="atomic add on bf16"):
        to_llvm_ir(n.Module((atomic,)))
    # the CUDA emitter: its spc_ names and realloc; valid IR, compiled by the CPU
    reserved = fn(n.Declare(n.Var("spc_t", F32), n.const(0, F32)))
    verify_module(n.Module((reserved,)))
    to_llvm_ir(n.Module((reserved,)))
    with pytest.raises(UnsupportedError, match="reserved for the cuda backend"):
        emit_module(n.Module((reserved,)))
    w = n.Var("w", ptr(F32))
    grow = fn(n.Allocate(w, n.i64(4)), n.Reallocate(w, n.i64(8)), n.Free(w))
    verify_module(n.Module((grow,)))
    to_llvm_ir(n.Module((grow,)))
    with pytest.raises(UnsupportedError, match="realloc"):
        emit_module(n.Module((grow,)))
