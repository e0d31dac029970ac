"""The IR's ``Sort`` statement as plain kernel IR: one helper function per element type
that both backends compile, so a kernel sorts the same way on the CPU and the GPU.

``Sort(array, start, count)`` is a call ``helper(array + start, count)`` of
:func:`sort_function`: insertion sort up to :data:`INSERTION_MAX` elements (the short
segments a workspace drain usually sorts), an in-place heap sort above (O(n log n) in
the worst case, no recursion and no extra memory, which matters for a GPU thread).
The CPU backend lowers the helper to an internal LLVM function
(``__spcomp_sort_i64``...), the CUDA emitter prints it as a ``__device__`` function
(``spc_sort_i64``...).
"""
from __future__ import annotations

from . import nodes as n
from .types import BOOL, I64, ScalarType, ptr

HELPER_PREFIX = "__spcomp_sort_"  # kernel functions may not use it (ir/verify.py)
INSERTION_MAX = 16


def sortable(t) -> bool:
    """Whether ``Sort`` takes arrays of ``t``: integers, f32 and f64 (bool and the
    storage-only bf16 have no order in the IR)."""
    return isinstance(t, ScalarType) and (t.is_int or t.name in ("f32", "f64"))


def helper_name(t: ScalarType) -> str:
    return HELPER_PREFIX + t.name


def sorted_types(module: n.Module) -> list:
    """The element types ``module``'s ``Sort`` statements sort, in order of first use."""
    out = []
    for f in module.functions:
        for x in n.walk(f.body):
            if isinstance(x, n.Sort) and x.array.type.elem not in out:
                out.append(x.array.type.elem)
    return out


def sort_function(t: ScalarType, name: str | None = None) -> n.Function:
    """``name(a, count)``: sort ``a[0:count]`` ascending, in kernel IR (default name
    :func:`helper_name`). Insertion sort up to 16 elements, heap sort above."""
    a, count = n.Var("a", ptr(t)), n.Var("count", I64)
    one, zero = n.i64(1), n.i64(0)

    def v(name, type_=I64):
        return n.Var(name, type_)

    def at(i):
        return n.Load(a, i)

    def add(x, y):
        return n.Binary("+", x, y)

    def sub(x, y):
        return n.Binary("-", x, y)

    def swap(i, j):
        tmp = v("tmp", t)
        return n.Block((n.Declare(tmp, at(i)), n.Store(a, i, at(j)), n.Store(a, j, tmp)))

    def sift_down(root_init, end):
        root, child, go = v("root"), v("child"), v("go", BOOL)
        first_child = add(n.Binary("*", root, n.i64(2)), one)
        return n.Block((
            n.Declare(root, root_init),
            n.Declare(go, n.Const(True, BOOL)),
            n.While(n.Binary("&&", go, n.Binary("<", first_child, end)), n.block(
                n.Declare(child, first_child),
                n.If(n.Binary("&&", n.Binary("<", add(child, one), end),
                              n.Binary("<", at(child), at(add(child, one)))),
                     n.block(n.Assign(child, add(child, one)))),
                n.If(n.Binary("<", at(root), at(child)),
                     n.block(swap(root, child), n.Assign(root, child)),
                     n.block(n.Assign(go, n.Const(False, BOOL)))),
            )),
        ))

    i, j, key = v("i"), v("j"), v("key", t)
    insertion = n.block(
        n.For(i, one, count, n.block(
            n.Declare(key, at(i)),
            n.Declare(j, sub(i, one)),
            n.While(n.Binary("&&", n.Binary(">=", j, zero), n.Binary(">", at(j), key)),
                    n.block(n.Store(a, add(j, one), at(j)), n.Assign(j, sub(j, one)))),
            n.Store(a, add(j, one), key),
        )))
    start, end = v("start"), v("end")
    heapsort = n.block(
        n.Declare(start, n.Binary("/", count, n.i64(2))),
        n.While(n.Binary(">", start, zero), n.block(
            n.Assign(start, sub(start, one)), sift_down(start, count))),
        n.Declare(end, count),
        n.While(n.Binary(">", end, one), n.block(
            n.Assign(end, sub(end, one)), swap(zero, end), sift_down(zero, end))),
    )
    return n.Function(name or helper_name(t), (a, count), n.block(
        n.If(n.Binary("<=", count, n.i64(INSERTION_MAX)), insertion, heapsort), n.Return(n.STATUS_OK)),
        doc=f"sort {t}[0:count] ascending")
