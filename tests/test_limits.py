"""Expressions at spcomp's size limits compile and compute; past them, a LimitError
that states the limit, never a RecursionError (spcomp/frontend/limits.py).

Each compile at a limit runs on a fresh thread (default stack size) under Python's
default recursion limit and again 200 frames below the test, as a caller deep in
its own code would call it.
"""
import sys
import threading

import numpy as np
import pytest

import spcomp
from spcomp.backends.cpu import abi
from spcomp.errors import LimitError
from spcomp.frontend import limits, to_notation, unparse
from spcomp.lower import lattice

N = 5  # vector length


def _vectors(names):
    return {name: np.linspace(-1.0, 1.0, N) * (1 + k % 7) + 0.25 * k for k, name in enumerate(names)}


def _in_thread(fn):
    """``fn()`` on a new thread with the default stack size; its result or its exception."""
    out = {}

    def run():
        try:
            out["value"] = fn()
        except BaseException as e:  # noqa: BLE001 - handed to the test
            out["error"] = e
    t = threading.Thread(target=run)
    t.start()
    t.join()
    if "error" in out:
        raise out["error"]
    return out["value"]


def _deep(frames, fn):
    return fn() if frames == 0 else _deep(frames - 1, fn)


def _compile(text, **kw):
    """Compile ``text`` on a fresh thread and, again, 200 frames deep on this one."""
    assert sys.getrecursionlimit() <= 1000
    k = _in_thread(lambda: spcomp.compile(text, **kw))
    spcomp.clear_cache()
    _deep(200, lambda: spcomp.compile(text, **kw))
    return k


# ----------------------------------------------------------------- operands

@pytest.mark.parametrize("n", [limits.MAX_OPERANDS - 1, limits.MAX_OPERANDS])
def test_a_sum_of_as_many_operands_as_the_limit_compiles_and_equals_numpy(n):
    names = [f"a{k % 10}" for k in range(n)]
    k = _compile("y[i] = " + " + ".join(f"{name}[i]" for name in names))
    ops = _vectors(sorted(set(names)))
    np.testing.assert_allclose(k(**ops), sum(ops[name] for name in names), rtol=1e-12)


@pytest.mark.parametrize("n", [limits.MAX_OPERANDS + 1, 3000])
def test_one_operand_past_the_limit_is_refused_with_the_limit(n):
    with pytest.raises(LimitError, match=f"has {n} operands.*at most {limits.MAX_OPERANDS}"):
        spcomp.compile("y[i] = " + " + ".join(f"a{k}[i]" for k in range(n)))


def test_long_chains_of_minus_and_times_and_right_nested_sums_equal_numpy():
    names = [f"a{k}" for k in range(40)]
    ops = _vectors(names)
    k = _compile("y[i] = " + " - ".join(f"{m}[i]" for m in names[:20]) + " + "
                 + " + ".join(f"{m}[i]" for m in names[20:]))
    want = ops["a0"] - sum(ops[m] for m in names[1:20]) + sum(ops[m] for m in names[20:])
    np.testing.assert_allclose(k(**ops), want, rtol=1e-12)

    small = {m: 1.0 + v / 50 for m, v in ops.items()}
    k = _compile("y[i] = " + " * ".join(f"{m}[i]" for m in names))
    np.testing.assert_allclose(k(**small), np.prod([small[m] for m in names], axis=0), rtol=1e-12)

    text = "y[i] = " + " + (".join(f"{m}[i]" for m in names[:500]) + ")" * (len(names[:500]) - 1)
    k = _compile(text)
    np.testing.assert_allclose(k(**ops), sum(ops.values()), rtol=1e-12)


def test_a_balanced_long_sum_keeps_its_implicit_sums_and_prints_back():
    # j is summed over the prefix up to its last use (the TACO rule on the tree as
    # parsed): b[j] and the a's are summed over j, c[i] is not
    text = "y[i] = b[j] + " + " + ".join(f"a{k}[i]" for k in range(30)) + " + d[j] + c[i]"
    a = to_notation(text)
    assert to_notation(unparse(a)) == a
    k = spcomp.compile(text)
    ops = _vectors(["b", "c", "d"] + [f"a{k}" for k in range(30)])
    total = ops["b"].sum() + ops["d"].sum() + N * sum(ops[f"a{k}"] for k in range(30))
    np.testing.assert_allclose(k(**ops), total + ops["c"], rtol=1e-12)


# ------------------------------------------------------------------ nesting

def _nested(kind, n):
    if kind == "calls":
        return "y[i] = " + "relu(" * n + "x[i]" + ")" * n, lambda x: np.maximum(x, 0)
    if kind == "minus":
        return "y[i] = " + "-" * n + "x[i]", lambda x: x * (-1) ** n
    return "y[i] = x[i]" + " / z[i]" * n, lambda x: x / 2.0 ** n


@pytest.mark.parametrize("kind", ["calls", "minus", "divisions"])
def test_nesting_at_the_depth_limit_compiles_and_one_more_level_is_refused(kind):
    at = limits.MAX_DEPTH - 1  # relu^n(x[i]) is n + 1 levels; so is -^n x[i] and x / z /...
    text, want = _nested(kind, at)
    x = np.linspace(-2.0, 2.0, N)
    k = _compile(text)
    np.testing.assert_allclose(k(x=x, **({"z": np.full(N, 2.0)} if "z[" in text else {})), want(x))
    with pytest.raises(LimitError, match=f"nests {at + 2} levels deep.*at most {limits.MAX_DEPTH}"):
        spcomp.compile(_nested(kind, at + 1)[0])
    with pytest.raises(LimitError, match="at most"):  # 3000 divisions: too many operands as well
        spcomp.compile(_nested(kind, 3000)[0])


def test_deep_parentheses_are_no_deeper_than_what_they_hold():
    x = np.linspace(-2.0, 2.0, N)
    k = _compile("y[i] = " + "(" * 3000 + "x[i] + 1" + ")" * 3000)
    np.testing.assert_allclose(k(x=x), x + 1)
    with pytest.raises(LimitError, match="at most"):
        spcomp.compile("y[i] = " + "relu((" * 3000 + "x[i]" + "))" * 3000)


def test_indices_past_the_limit_are_refused():
    n = limits.MAX_INDICES
    k = _compile("s = " + " * ".join(f"a{j}[i{j}]" for j in range(n)))
    ops = {f"a{j}": np.array([0.5, 0.5 + j / 64]) for j in range(n)}
    np.testing.assert_allclose(k(**ops), np.prod([v.sum() for v in ops.values()]))
    with pytest.raises(LimitError, match=f"{n + 1} index variables.*at most {n}"):
        spcomp.compile("s = " + " * ".join(f"a{j}[i{j}]" for j in range(n + 1)))


# ----------------------------------------------------- sparse unions, arguments

def test_a_union_of_sparse_operands_is_limited_by_its_cases():
    fits = 6  # 2**6 - 1 = 63 cases
    assert 2 ** fits - 1 < lattice.MAX_CASES_PER_LOOP <= 2 ** (fits + 1) - 1
    names = [f"a{k}" for k in range(fits)]
    k = _compile("y[i] = " + " + ".join(f"{m}[i]" for m in names), formats={m: "c" for m in names})
    ops = {m: np.where(np.arange(N) % (j + 2) == 0, 1.0 + j, 0.0) for j, m in enumerate(names)}
    np.testing.assert_allclose(k(**ops), sum(ops.values()))
    names.append("a6")
    with pytest.raises(LimitError, match=f"at most {lattice.MAX_CASES_PER_LOOP} cases"):
        spcomp.compile("y[i] = " + " + ".join(f"{m}[i]" for m in names), formats={m: "c" for m in names})
    with pytest.raises(LimitError, match="at most"):  # 2**400 cases: refused before they are built
        spcomp.compile("y[i] = " + " + ".join(f"A{k}[i,j]*x[j]" for k in range(400)),
                       formats={f"A{k}": "csr" for k in range(400)})


def test_more_kernel_arguments_than_ctypes_takes_is_a_limit_error(monkeypatch):
    monkeypatch.setattr(abi, "MAX_ARGUMENTS", 3)
    spcomp.clear_cache()
    with pytest.raises(LimitError, match="takes 7 arguments.*at most 3"):
        spcomp.compile("y[i] = a[i] + b[i] + c[i]", name="many_arguments")
