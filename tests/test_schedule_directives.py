"""The scheduling directives of issue 25: position loops (``pos``, ``fuse``, a split of
positions), ``bound``, nested splits, race strategies, parallel loops below the
outermost. Every kernel is checked against numpy.einsum on one thread and on two
threads with splitting forced (``MIN_PARALLEL_WORK = 0``, per-thread copies at any
size), over random shapes and densities (empty rows included) and CSR, DCSR and CSF
operands; every refusal is a ScheduleError that names the directive."""
from __future__ import annotations

import contextlib
import warnings

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import spcomp
from spcomp import Schedule
from spcomp.errors import KernelRuntimeError, ScheduleError
from spcomp.lower import possplit
from spcomp.runtime import partials

from conftest import examples, record_splits, spcomp_threads


@contextlib.contextmanager
def threads(n):
    """``n`` threads; with two, every call splits and per-thread copies are taken at any size."""
    share = partials.COPY_SHARE
    partials.COPY_SHARE = float("inf")
    try:
        with spcomp_threads(n, min_work=0 if n > 1 else None):
            yield
    finally:
        partials.COPY_SHARE = share


def _compile(expr, formats, schedule):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return spcomp.compile(expr, formats=formats, schedule=schedule)


def _sparse(rng, shape, density, skew=False):
    """A dense array with about ``density`` of its entries nonzero; ``skew``: the
    first rows far denser than the rest (a power-law-like row length profile)."""
    a = rng.standard_normal(shape)
    keep = rng.random(shape) < density
    if skew and shape[0] > 1:
        keep[: max(1, shape[0] // 8)] = rng.random((max(1, shape[0] // 8),) + shape[1:]) < 0.9
    return np.where(keep, a, 0.0)


def _tensor(a, fmt):
    return spcomp.Tensor.from_numpy(a, fmt)


def _case_operands(formats, order, dense_specs, dims, density, seed):
    """A kernel table row's operands: the one sparse operand (dense array ``a`` and its
    Tensor) and each dense operand drawn at its dims; ``dense`` lists the arrays in the
    row's einsum order."""
    rng = np.random.default_rng(seed)
    name = next(iter(formats))
    a = _sparse(rng, tuple(dims[:order]), density)
    ops = {name: _tensor(a, formats[name])}
    dense = [a]
    for d, shape in dense_specs.items():
        ops[d] = rng.standard_normal(tuple(dims[k] for k in shape))
        dense.append(ops[d])
    return a, ops, dense


def _axes_operands(shapes, formats, dims, density, seed):
    """A table row's operands given by axes (``{name: (axis, ...)}`` into ``dims``):
    sparse where ``formats`` names the operand, dense otherwise; ``dense`` lists the
    arrays in the row's einsum order."""
    rng = np.random.default_rng(seed)
    ops, dense = {}, []
    for name, axes in shapes.items():
        shape = tuple(dims[a] for a in axes)
        a = _sparse(rng, shape, density) if name in formats else rng.standard_normal(shape)
        ops[name] = _tensor(a, formats[name]) if name in formats else a
        dense.append(a)
    return ops, dense


def _run_both(k, reference, **operands):
    """The kernel's result on one thread and on two (split forced) against ``reference``."""
    for n in (1, 2):
        with threads(n):
            got = k(**operands)
        np.testing.assert_allclose(np.asarray(got), reference, rtol=1e-10, atol=1e-10,
                                   err_msg=f"{n} thread(s)")


# ------------------------------------------------------------------ position splits

POS_KERNELS = [
    # expr, formats, operand whose positions are split, index, einsum, shapes of the operands
    ("y[i] = A[i,j] * x[j]", {"A": "csr"}, "A", "j", "ij,j->i", {"A": 2, "x": (1,)}),
    ("y[i] = A[i,j] * x[j]", {"A": "dcsr"}, "A", "j", "ij,j->i", {"A": 2, "x": (1,)}),
    ("y[i] = A[i,j] * x[j]", {"A": "dcsr"}, "A", "i", "ij,j->i", {"A": 2, "x": (1,)}),
    ("Y[i,k] = A[i,j] * B[j,k]", {"A": "csr"}, "A", "j", "ij,jk->ik", {"A": 2, "B": (1, 3)}),
    ("y[j] = A[i,j] * x[i]", {"A": "csr"}, "A", "j", "ij,i->j", {"A": 2, "x": (0,)}),
    ("a = A[i,j] * x[j]", {"A": "csr"}, "A", "j", "ij,j->", {"A": 2, "x": (1,)}),
    ("Y[i,j] = B[i,j,k] * c[k]", {"B": "csf"}, "B", "k", "ijk,k->ij", {"B": 3, "c": (2,)}),
    ("Y[i,j] = B[i,j,k] * c[k]", {"B": "csf"}, "B", "j", "ijk,k->ij", {"B": 3, "c": (2,)}),
    ("y[i] = 2 * A[i,j] * x[j] - A[i,j] * z[j]", {"A": "csr"}, "A", "j", None, {"A": 2, "x": (1,), "z": (1,)}),
]


def _operands(rng, shapes, sparse_name, fmt, dims, density, skew):
    ops, dense = {}, {}
    for name, spec in shapes.items():
        if name == sparse_name:
            a = _sparse(rng, tuple(dims[:spec]), density, skew)
            dense[name] = a
            ops[name] = _tensor(a, fmt)
        else:
            a = rng.standard_normal(tuple(dims[d] if d < len(dims) else 3 for d in spec))
            dense[name] = ops[name] = a
    return ops, dense


@settings(max_examples=examples(30))
@given(case=st.sampled_from(range(len(POS_KERNELS))), dims=st.lists(st.integers(1, 23), min_size=3, max_size=3),
       density=st.sampled_from([0.0, 0.05, 0.2, 0.6, 1.0]), factor=st.integers(1, 19), skew=st.booleans(),
       race=st.sampled_from([None, "Atomics", "ParallelReduction", "Temporary"]), seed=st.integers(0, 99))
def test_position_split_matches_einsum(case, dims, density, factor, skew, race, seed):
    expr, formats, name, index, spec, shapes = POS_KERNELS[case]
    rng = np.random.default_rng(seed)
    ops, dense = _operands(rng, shapes, name, formats[name], dims, density, skew)
    s = Schedule().pos(index, "q", name).split("q", "c", "p", factor).parallelize("c", race=race)
    k = _compile(expr, formats, s)
    if spec is None:
        ref = 2 * dense["A"] @ dense["x"] - dense["A"] @ dense["z"]
    else:
        ref = np.einsum(spec, *[dense[n] for n in shapes])
    _run_both(k, ref, **ops)


@settings(max_examples=examples(10))
@given(dims=st.lists(st.integers(1, 30), min_size=2, max_size=2), density=st.sampled_from([0.0, 0.1, 0.5]),
       parts=st.integers(1, 9), seed=st.integers(0, 99))
def test_position_divide_and_fuse(dims, density, parts, seed):
    rng = np.random.default_rng(seed)
    a = _sparse(rng, tuple(dims), density, skew=True)
    x = rng.standard_normal(dims[1])
    A = _tensor(a, "csr")
    for s in (Schedule().pos("j", "q", "A").divide("q", "c", "p", parts).parallelize("c"),
              Schedule().fuse("i", "j", "f").parallelize("f"),
              Schedule().fuse("i", "j", "f").pos("f", "fpos", "A").split("fpos", "c", "p", parts)
              .parallelize("c"),
              Schedule().fuse("i", "j", "f")):  # sequential: one loop over the nonzeros
        k = _compile("y[i] = A[i,j] * x[j]", {"A": "csr"}, s)
        _run_both(k, a @ x, A=A, x=x)


def test_position_split_accumulates_into_old_output():
    rng = np.random.default_rng(3)
    a = _sparse(rng, (40, 30), 0.2, skew=True)
    x, y0 = rng.standard_normal(30), rng.standard_normal(40)
    k = _compile("y[i] += A[i,j] * x[j]", {"A": "csr"},
                 Schedule().pos("j", "q", "A").split("q", "c", "p", 7).parallelize("c"))
    for n in (1, 2):
        y = y0.copy()
        with threads(n):
            k(A=_tensor(a, "csr"), x=x, y=y)
        np.testing.assert_allclose(y, y0 + a @ x, rtol=1e-12)


def test_position_split_really_splits_and_reads_as_chunks(monkeypatch):
    rng = np.random.default_rng(4)
    a = _sparse(rng, (64, 50), 0.1, skew=True)
    x = rng.standard_normal(50)
    k = _compile("y[i] = A[i,j] * x[j]", {"A": "csr"},
                 Schedule().pos("j", "q", "A").split("q", "c", "p", 16).parallelize("c"))
    assert "for c in chunks of 16 positions of A level 2 (parallel: threads, races: boundary-atomics)" in k.loops
    assert "atomic_add" in k.ir and "A2_first" in k.ir
    low = k.lowered
    assert low.threads.positions == ("A", 1) and low.threads.split == (16, True)
    splits = record_splits(monkeypatch)
    with threads(2):
        np.testing.assert_allclose(k(A=_tensor(a, "csr"), x=x), a @ x, rtol=1e-12)
    assert splits, "the call ran on one thread"


def test_position_split_partials_are_per_thread_copies():
    k = _compile("y[i] = A[i,j] * x[j]", {"A": "csr"},
                 Schedule().pos("j", "q", "A").split("q", "c", "p", 16).parallelize("c", race="ParallelReduction"))
    assert k.lowered.threads.partials and "atomic_add" not in k.ir


def test_position_loop_unsplit_is_sequential_default_nest():
    rng = np.random.default_rng(5)
    a = _sparse(rng, (9, 7), 0.4)
    x = rng.standard_normal(7)
    k = _compile("y[i] = A[i,j] * x[j]", {"A": "csr"}, Schedule().pos("j", "q", "A").sequential())
    np.testing.assert_allclose(k(A=_tensor(a, "csr"), x=x), a @ x)
    assert "for q in positions of A level 2:" in k.loops


# ---------------------------------------------------------- position split refusals

REFUSALS = [
    ("y[i] = relu(A[i,j] * x[j])", {"A": "csr"}, Schedule().pos("j", "q", "A").split("q", "c", "p", 4),
     "not linear in A"),
    ("y[i] = A[i,j] * x[j] + b[i]", {"A": "csr"}, Schedule().pos("j", "q", "A").split("q", "c", "p", 4),
     "not linear in A"),
    ("y[i] = A[i,j] * A[i,j]", {"A": "csr"}, Schedule().pos("j", "q", "A"), "not linear in A"),
    ("C[i,j] = A[i,j] * x[j]", {"A": "csr", "C": "dcsr"}, Schedule().pos("j", "q", "A"), "one compressed level"),
    ("y[i] = A[i,j] * x[j]", {"A": "coo"}, Schedule().pos("j", "q", "A"), "unique coordinates"),
    ("y[i] = A[i,j] * x[j]", {"A": "csr"}, Schedule().pos("i", "q", "A"), "not a compressed level"),
    ("y[i] = A[i,j] * x[j]", {"A": "csr"}, Schedule().pos("j", "q", "B"), "no operand B"),
    ("y[i] = A[i,j] * x[j]", {"A": "csr"}, Schedule().fuse("j", "i", "f"), "indices of a dense output"),
    ("y[i] = A[i,j] * x[j]", {}, Schedule().fuse("i", "j", "f"), "indices of a dense output"),
    ("y[i] = A[i,j] * x[j]", {"A": "csr", "x": "c"}, Schedule().pos("j", "q", "A"), "also walks x"),
    ("y[i] = A[i,j] * x[j]", {"A": "csr"}, Schedule().pos("j", "q", "A").split("q", "c", "p", 4).parallelize("p"),
     "only the loop over chunks"),
    ("y[i] = A[i,j] * x[j]", {"A": "csr"}, Schedule().pos("j", "q", "A").split("q", "c", "p", 4).parallelize("i"),
     "only the loop over chunks"),
    ("y[i] = A[i,j] * x[j]", {"A": "csr"},
     Schedule().pos("j", "q", "A").split("q", "c", "p", 4).parallelize("c", race="NoRaces"), "share the output"),
    ("y[i] = A[i,j] * x[j]", {"A": "csr"},
     Schedule().pos("j", "q", "A").split("q", "c", "p", 4).parallelize("c", race="IgnoreRaces"), "insist=True"),
    ("y[i] = A[i,j] * x[j]", {"A": "csr"}, Schedule().pos("j", "q", "A").reorder("j", "i"), "moves the position"),
    ("y[i] = A[i,j] * x[j]", {"A": "csr"},
     Schedule().pos("j", "q", "A").split("q", "c", "p", 4).pos("i", "r", "A").split("r", "d", "e", 2),
     "one position split"),
    ("y[i] = A[i,j] * x[j]", {"A": "csr"}, Schedule().pos("j", "q", "A").split("i", "i0", "i1", 4),
     "split the position loop instead"),
]


@pytest.mark.parametrize("expr, formats, schedule, words", REFUSALS)
def test_position_split_refusals(expr, formats, schedule, words):
    with pytest.raises(ScheduleError, match=words):
        _compile(expr, formats, schedule)


def test_position_split_runs_on_cuda_sim():
    """A chunk of positions per GPU thread (tests/test_cuda_schedules.py has the rest)."""
    rng = np.random.default_rng(3)
    A, x = rng.standard_normal((9, 7)) * (rng.random((9, 7)) < 0.5), rng.standard_normal(7)
    k = spcomp.compile("y[i] = A[i,j] * x[j]", formats={"A": "csr"}, backend="cuda-sim",
                       schedule=Schedule().pos("j", "q", "A").split("q", "c", "p", 4))
    np.testing.assert_allclose(k(A=A, x=x), A @ x, rtol=1e-12, atol=1e-12)


def test_position_sub_chunks_refused_on_the_cpu():
    with pytest.raises(ScheduleError, match="one level of chunks"):
        _compile("y[i] = A[i,j] * x[j]", {"A": "csr"},
                 Schedule().pos("j", "q", "A").split("q", "c", "p", 8).split("p", "w", "t", 2))


def test_ignore_races_when_insisted_compiles_plain_adds():
    k = _compile("y[i] = A[i,j] * x[j]", {"A": "csr"}, Schedule().pos("j", "q", "A").split("q", "c", "p", 4)
                 .parallelize("c", race="IgnoreRaces", insist=True))
    assert "atomic_add" not in k.ir and "races: ignored" in k.loops


def test_directive_arguments_are_checked():
    with pytest.raises(ScheduleError, match="unknown race strategy"):
        Schedule().parallelize("i", race="Locks")
    with pytest.raises(ScheduleError, match="three distinct"):
        Schedule().fuse("i", "i", "f")
    with pytest.raises(ScheduleError, match="operand name"):
        Schedule().pos("j", "j", "A")
    with pytest.raises(ScheduleError, match="limit must be"):
        Schedule().bound("i", 0)


# ----------------------------------------------------------------- pure algorithms

@settings(max_examples=examples(60))
@given(lengths=st.lists(st.integers(0, 6), min_size=1, max_size=30), factor=st.integers(1, 9),
       data=st.data())
def test_search_and_chunk_rows_model(lengths, factor, data):
    """The rows a range of chunks touches: exactly the rows holding its positions."""
    pos = np.concatenate([[0], np.cumsum(lengths)])
    total = int(pos[-1])
    chunks = -(-total // factor)
    lo = data.draw(st.integers(0, max(chunks, 0)))
    hi = data.draw(st.integers(lo, max(chunks, 0)))
    first, last = possplit.chunk_rows(pos, factor, lo, hi)
    p0, p1 = min(lo * factor, total), min(hi * factor, total)
    rows = {int(np.searchsorted(pos, p, side="right")) - 1 for p in range(p0, p1)}
    if not rows:
        assert first == last == 0
    else:
        assert first == min(rows) and last == max(rows) + 1
        assert pos[first] <= p0 < pos[first + 1] and pos[last - 1] <= p1 - 1 < pos[last]



def _notation(expr, formats):
    return _compile(expr, formats, None).notation


@pytest.mark.parametrize("expr, linear", [
    ("y[i] = A[i,j] * x[j]", True),
    ("y[i] = 2 * A[i,j] * x[j] - A[i,j] * z[j]", True),
    ("y[i] = A[i,j] * x[j] / 3", True),
    ("y[i] = -(A[i,j] * x[j])", True),
    ("y[i] = A[i,j] * x[j] + z[i]", False),
    ("y[i] = A[i,j] * A[i,j]", False),
    ("y[i] = relu(A[i,j] * x[j])", False),
    ("y[i] = x[j] / A[i,j]", False),
])
def test_linear_in_cases(expr, linear):
    n = _notation(expr, {"A": "csr"})
    assert possplit.linear_in(n.rhs, "A") is linear


# ------------------------------------------------------------------ race strategies

RACE_KERNELS = [
    # expr, formats, the reduction loop run in parallel, einsum, dims of the sparse operand, dense operand spec
    ("y[j] = A[i,j] * x[i]", {"A": "csr"}, "i", "ij,i->j", 2, {"x": (0,)}),
    ("y[j] = A[i,j] * x[i]", {"A": "dcsr"}, "i", "ij,i->j", 2, {"x": (0,)}),
    ("Y[j,k] = A[i,j] * B[i,k]", {"A": "csr"}, "i", "ij,ik->jk", 2, {"B": (0, 2)}),
    ("Y[k] = C[i,j,k]", {"C": "csf"}, "i", "ijk->k", 3, {}),
    ("a = A[i,j] * x[j]", {"A": "csr"}, "i", "ij,j->", 2, {"x": (1,)}),
]


@settings(max_examples=examples(25))
@given(case=st.sampled_from(range(len(RACE_KERNELS))), dims=st.lists(st.integers(1, 17), min_size=3, max_size=3),
       density=st.sampled_from([0.0, 0.1, 0.5, 1.0]),
       race=st.sampled_from(["Atomics", "Temporary", "ParallelReduction"]), seed=st.integers(0, 99))
def test_race_strategies_on_reduction_loops(case, dims, density, race, seed):
    expr, formats, loop, spec, order, dense_specs = RACE_KERNELS[case]
    a, ops, dense = _case_operands(formats, order, dense_specs, dims, density, seed)
    k = _compile(expr, formats, Schedule().parallelize(loop, race=race))
    assert ("atomic_add" in k.ir) == (race == "Atomics")
    assert k.lowered.threads.partials == (race != "Atomics")
    _run_both(k, np.einsum(spec, *dense), **ops)


def test_race_strategy_refusals_and_insist():
    expr, f = "y[j] = A[i,j] * x[i]", {"A": "csr"}
    with pytest.raises(ScheduleError, match="NoRaces.*is wrong here"):
        _compile(expr, f, Schedule().parallelize("i", race="NoRaces"))
    with pytest.raises(ScheduleError, match="insist=True"):
        _compile(expr, f, Schedule().parallelize("i", race="IgnoreRaces"))
    with pytest.raises(ScheduleError, match="only dense outputs"):
        _compile("c[j] = A[i,j] * x[i]", {"A": "csr", "c": "c"}, Schedule().parallelize("i", race="Atomics"))
    with pytest.raises(ScheduleError, match="no atomic add on bfloat16"):
        spcomp.compile(expr, formats=f, dtypes={"y": "bfloat16"}, schedule=Schedule().parallelize("i", race="Atomics"))
    with pytest.raises(ScheduleError, match="no per-thread copies"):
        spcomp.compile(expr, formats=f, backend="cuda-sim",
                       schedule=Schedule().parallelize("i", "gpu-thread", race="Temporary"))
    # a two-index output takes per-thread copies only when asked for
    with pytest.raises(ScheduleError, match="reduction index"):
        _compile("Y[j,k] = A[i,j] * B[i,k]", f, Schedule().parallelize("i"))
    # insisting runs plain adds: right on one thread
    rng = np.random.default_rng(0)
    a, x = _sparse(rng, (9, 7), 0.4), rng.standard_normal(9)
    k = _compile(expr, f, Schedule().parallelize("i", race="IgnoreRaces", insist=True))
    assert "atomic_add" not in k.ir and not k.lowered.threads.partials
    with threads(1):
        np.testing.assert_allclose(k(A=_tensor(a, "csr"), x=x), a.T @ x)


def test_no_race_strategies_on_an_output_loop_change_nothing():
    rng = np.random.default_rng(1)
    a, x = _sparse(rng, (12, 5), 0.3), rng.standard_normal(5)
    plain = _compile("y[i] = A[i,j] * x[j]", {"A": "csr"}, Schedule().parallelize("i"))
    for race in ("NoRaces", "Atomics", "ParallelReduction", "IgnoreRaces"):
        k = _compile("y[i] = A[i,j] * x[j]", {"A": "csr"}, Schedule().parallelize("i", race=race))
        assert k.ir == plain.ir
        _run_both(k, a @ x, A=_tensor(a, "csr"), x=x)


def test_atomics_race_strategy_on_cuda_sim():
    rng = np.random.default_rng(2)
    a, x = _sparse(rng, (10, 6), 0.4), rng.standard_normal(10)
    k = spcomp.compile("y[j] = A[i,j] * x[i]", formats={"A": "csr"}, backend="cuda-sim",
                       schedule=Schedule().parallelize("i", "gpu-thread", race="Atomics"))
    np.testing.assert_allclose(k(A=_tensor(a, "csr"), x=x), a.T @ x, rtol=1e-12)


# ------------------------------------------------------------------------- bound

BOUND_KERNELS = [
    ("y[i] = A[i,j] * x[j]", {"A": "csr"}, "j", "ij,j->i", 2, {"x": (1,)}),
    ("y[i] = A[i,j] * x[j]", {"A": "dcsr"}, "j", "ij,j->i", 2, {"x": (1,)}),
    ("Y[i,j] = C[i,j,k] * c[k]", {"C": "csf"}, "k", "ijk,k->ij", 3, {"c": (2,)}),
]


def _longest(a, level):
    """The most nonzeros under one position of the level above ``level``."""
    nz = a != 0
    if level == 1:
        return int(nz.sum(axis=1).max(initial=0))
    return int(nz.sum(axis=2).max(initial=0))


@settings(max_examples=examples(20))
@given(case=st.sampled_from(range(len(BOUND_KERNELS))), dims=st.lists(st.integers(1, 12), min_size=3, max_size=3),
       density=st.sampled_from([0.1, 0.5, 1.0]), slack=st.integers(-2, 3), seed=st.integers(0, 99))
def test_bound_checks_the_trip_count(case, dims, density, slack, seed):
    expr, formats, loop, spec, order, dense_specs = BOUND_KERNELS[case]
    a, ops, dense = _case_operands(formats, order, dense_specs, dims, density, seed)
    longest = _longest(a, order - 1)
    limit = max(1, longest + slack)
    k = _compile(expr, formats, Schedule().bound(loop, limit))
    if limit >= longest:
        _run_both(k, np.einsum(spec, *dense), **ops)
    else:
        for n in (1, 2):
            with threads(n), pytest.raises(KernelRuntimeError, match="Schedule.bound"):
                k(**ops)


def test_bound_on_dense_loop_unrolls_and_refuses_while_loops():
    rng = np.random.default_rng(3)
    k = _compile("Y[i,k] = A[i,j] * B[j,k]", {"A": "csr"}, Schedule().bound("k", 4))
    assert "unroll: 4" in k.ir
    a = _sparse(rng, (5, 6), 0.5)
    B3, B5 = rng.standard_normal((6, 3)), rng.standard_normal((6, 5))
    np.testing.assert_allclose(k(A=_tensor(a, "csr"), B=B3), a @ B3)
    with pytest.raises(KernelRuntimeError, match="Schedule.bound"):
        k(A=_tensor(a, "csr"), B=B5)
    with pytest.raises(ScheduleError, match="bound applies to for loops"):
        _compile("y[i] = A[i,j] * x[j]", {"A": "csr", "x": "c"}, Schedule().bound("j", 4))
    with pytest.raises(ScheduleError, match="no index 'q'"):
        _compile("y[i] = A[i,j] * x[j]", {"A": "csr"}, Schedule().bound("q", 4))


def test_bound_on_cuda_sim():
    rng = np.random.default_rng(4)
    a, x = _sparse(rng, (6, 8), 0.3), rng.standard_normal(8)
    k = spcomp.compile("y[i] = A[i,j] * x[j]", formats={"A": "csr"}, backend="cuda-sim",
                       schedule=Schedule().bound("j", 8))
    np.testing.assert_allclose(k(A=_tensor(a, "csr"), x=x), a @ x, rtol=1e-12)
    k = spcomp.compile("y[i] = A[i,j] * x[j]", formats={"A": "csr"}, backend="cuda-sim",
                       schedule=Schedule().bound("j", 1))
    with pytest.raises(KernelRuntimeError, match="Schedule.bound"):
        k(A=_tensor(np.ones((2, 3)), "csr"), x=np.ones(3))


# ------------------------------------------------------------------ nested splits

NESTED_KERNELS = [
    # expr, formats, the index split, einsum, operand shapes as dims indices (dims: i, j, l)
    ("y[i] = A[i,j] * x[j]", {"A": "csr"}, "i", "ij,j->i", {"A": (0, 1), "x": (1,)}),
    ("Y[i,l] = A[i,j] * B[j,l]", {"A": "csr"}, "l", "ij,jl->il", {"A": (0, 1), "B": (1, 2)}),
    ("Y[i,l] = A[i,j] * B[j,l]", {"A": "dcsr"}, "l", "ij,jl->il", {"A": (0, 1), "B": (1, 2)}),
    ("Y[i,j,l] = C[i,j,k] * D[k,l]", {"C": "csf"}, "l", "ijk,kl->ijl", {"C": (0, 1, 2), "D": (2, 3)}),
    ("y[i] = A[i,j] * x[j]", {}, "j", "ij,j->i", {"A": (0, 1), "x": (1,)}),
]


@settings(max_examples=examples(30))
@given(case=st.sampled_from(range(len(NESTED_KERNELS))), dims=st.lists(st.integers(1, 14), min_size=4, max_size=4),
       f1=st.integers(1, 9), f2=st.integers(1, 5), f3=st.integers(1, 3), which=st.sampled_from(["o", "i"]),
       third=st.booleans(), density=st.sampled_from([0.1, 0.5, 1.0]), seed=st.integers(0, 99))
def test_nested_splits_match_einsum(case, dims, f1, f2, f3, which, third, density, seed):
    expr, formats, idx, spec, shapes = NESTED_KERNELS[case]
    rng = np.random.default_rng(seed)
    ops, dense = {}, []
    for name, axes in shapes.items():
        shape = tuple(dims[a] for a in axes)
        if name in formats:
            a = _sparse(rng, shape, density)
            ops[name] = _tensor(a, formats[name])
        else:
            a = ops[name] = rng.standard_normal(shape)
        dense.append(a)
    piece = idx + "0" if which == "o" else idx + "1"
    s = Schedule().split(idx, idx + "0", idx + "1", f1).split(piece, piece + "a", piece + "b", f2)
    if third:  # the inner piece of the nested split, split once more
        s = s.split(piece + "b", "u", "v", f3)
    k = _compile(expr, formats, s)
    _run_both(k, np.einsum(spec, *dense), **ops)


def test_nested_split_reorder_and_refusals():
    rng = np.random.default_rng(6)
    A, B = rng.standard_normal((9, 5)), rng.standard_normal((5, 11))
    s = (Schedule().split("i", "i0", "i1", 4).split("i1", "i10", "i11", 2).split("j", "j0", "j1", 3)
         .reorder("i0", "j0", "i10", "i11", "j1").parallelize("i0"))
    k = _compile("C[i,j] = A[i,k] * B[k,j]", {}, s)
    firsts = [line.split()[1] for line in k.loops.splitlines()[1:] if line.strip().startswith("for")]
    assert firsts[:5] == ["i0", "j0", "i10", "i11", "j1"]
    _run_both(k, A @ B, A=A, B=B)
    with pytest.raises(ScheduleError, match="name all of them or none"):
        _compile("C[i,j] = A[i,k] * B[k,j]", {},
                 Schedule().split("i", "i0", "i1", 4).split("i1", "i10", "i11", 2).reorder("i10", "j"))
    with pytest.raises(ScheduleError, match="divided"):
        _compile("C[i,j] = A[i,k] * B[k,j]", {}, Schedule().split("i", "i0", "i1", 4).divide("i1", "a", "b", 2))
    with pytest.raises(ScheduleError, match="has no index .q."):
        _compile("C[i,j] = A[i,k] * B[k,j]", {}, Schedule().split("i", "i0", "i1", 4).split("q", "a", "b", 2))
    with pytest.raises(ScheduleError, match="already an index"):
        _compile("C[i,j] = A[i,k] * B[k,j]", {}, Schedule().split("i", "i0", "i1", 4).split("i1", "i0", "b", 2))
    with pytest.raises(ScheduleError, match="piece of a piece"):
        _compile("C[i,j] = A[i,k] * B[k,j]", {}, Schedule().split("i", "i0", "i1", 4).split("i0", "a", "b", 2)
                 .parallelize("a"))
    with pytest.raises(ScheduleError, match="replaced"):
        _compile("C[i,j] = A[i,k] * B[k,j]", {}, Schedule().split("i", "i0", "i1", 4).split("i1", "a", "b", 2)
                 .reorder("i0", "i1", "j"))


# ------------------------------------------ parallel loops below the outermost one

INNER_KERNELS = [
    ("Y[i,k] = A[i,j] * B[j,k]", {"A": "csr"}, "k", "ij,jk->ik", {"A": (0, 1), "B": (1, 2)}),
    ("Y[i,k] = A[i,j] * B[j,k]", {"A": "dcsr"}, "k", "ij,jk->ik", {"A": (0, 1), "B": (1, 2)}),
    ("Y[i,j,l] = C[i,j,k] * D[k,l]", {"C": "csf"}, "l", "ijk,kl->ijl", {"C": (0, 1, 2), "D": (2, 3)}),
    ("Y[i,j,l] = C[i,j,k] * D[k,l]", {"C": "csf"}, "j", "ijk,kl->ijl", {"C": (0, 1, 2), "D": (2, 3)}),
]


@settings(max_examples=examples(20))
@given(case=st.sampled_from(range(len(INNER_KERNELS))), dims=st.lists(st.integers(1, 13), min_size=4, max_size=4),
       density=st.sampled_from([0.0, 0.2, 0.7]), seed=st.integers(0, 99))
def test_parallel_loop_below_the_outermost(case, dims, density, seed):
    expr, formats, loop, spec, shapes = INNER_KERNELS[case]
    ops, dense = _axes_operands(shapes, formats, dims, density, seed)
    if case == 3:  # j is a compressed level of C: its range changes with i
        with pytest.raises(ScheduleError, match="only a dense loop runs in parallel"):
            _compile(expr, formats, Schedule().parallelize(loop))
        return
    k = _compile(expr, formats, Schedule().parallelize(loop))
    assert f"for {loop} in 0..N_{loop} (parallel: threads)" in k.loops
    _run_both(k, np.einsum(spec, *dense), **ops)


def test_parallel_loop_below_the_outermost_refusals():
    with pytest.raises(ScheduleError, match="reduction index whose iterations"):
        _compile("y[i] = A[i,j] * x[j]", {}, Schedule().parallelize("j"))
    with pytest.raises(ScheduleError, match="sparse output C is assembled in loop order"):
        _compile("C[i,k] = A[i,j] * B[j,k]", {"A": "csr", "C": "csr", "B": "csr"}, Schedule().parallelize("k"))
    with pytest.raises(ScheduleError, match="CPU threads only"):
        spcomp.compile("Y[i,k] = A[i,j] * B[j,k]", formats={"A": "csr"}, backend="cuda-sim",
                       schedule=Schedule().parallelize("k", "gpu-thread"))
    with pytest.raises(ScheduleError, match="split loop runs on threads only as the outermost"):
        _compile("Y[i,k] = A[i,j] * B[j,k]", {"A": "csr"},
                 Schedule().split("k", "k0", "k1", 4).parallelize("k1"))


# ------------------------- a sparse output, threads over an operand's top level

@settings(max_examples=examples(15))
@given(case=st.sampled_from([0, 1, 2]), dims=st.lists(st.integers(1, 15), min_size=3, max_size=3),
       density=st.sampled_from([0.0, 0.1, 0.5]), seed=st.integers(0, 99))
def test_sparse_output_parallel_over_top_positions(case, dims, density, seed):
    rng = np.random.default_rng(seed)
    if case < 2:
        a = _sparse(rng, tuple(dims[:2]), density)
        expr, formats, ref = "C[i,j] = 2 * A[i,j]", {"A": "dcsr", "C": ["csr", "dcsr"][case]}, 2 * a
        ops = {"A": _tensor(a, "dcsr")}
    else:
        a = _sparse(rng, tuple(dims), density)
        x = rng.standard_normal(dims[2])
        expr, formats, ref = "C[i,j] = A[i,j,k] * x[k]", {"A": "csf", "C": "csr"}, np.einsum("ijk,k->ij", a, x)
        ops = {"A": _tensor(a, "csf"), "x": x}
    if case == 1:  # a compressed first output level is appended in order
        with pytest.raises(ScheduleError, match="appended to in order"):
            _compile(expr, formats, Schedule().parallelize("i"))
        return
    k = _compile(expr, formats, Schedule().parallelize("i"))
    assert k.lowered.threads.positions == ("A", 0)
    for n in (1, 2):
        with threads(n):
            got = k(**ops)
        np.testing.assert_allclose(got.to_numpy(), ref, rtol=1e-12, atol=1e-12)


# -------------------------------------- order-preserving directives: bitwise equal

@settings(max_examples=examples(15))
@given(dims=st.lists(st.integers(1, 40), min_size=3, max_size=3), density=st.sampled_from([0.0, 0.1, 0.6]),
       factor=st.integers(1, 50), seed=st.integers(0, 99))
def test_order_preserving_directives_are_bitwise_the_default(dims, density, factor, seed):
    """On one thread a position loop, a fused loop, a nested split and a bound add in
    the default SpMV nest's order: the same bits (SpMM's default nest keeps register
    blocks of the output that a position loop's nest does not, so it is compared by
    tolerance in the tests above)."""
    rng = np.random.default_rng(seed)
    a = _sparse(rng, tuple(dims[:2]), density, skew=True)
    x = rng.standard_normal(dims[1])
    A = _tensor(a, "csr")
    expr, f = "y[i] = A[i,j] * x[j]", {"A": "csr"}
    longest = max(1, _longest(a, 1))
    schedules = [Schedule().pos("j", "q", "A").split("q", "c", "p", factor).parallelize("c"),
                 Schedule().fuse("i", "j", "f").sequential(),
                 Schedule().split("i", "i0", "i1", factor).split("i1", "i10", "i11", 3),
                 Schedule().bound("j", longest)]
    with threads(1):
        base = _compile(expr, f, None)(A=A, x=x)
        for s in schedules:
            got = _compile(expr, f, s)(A=A, x=x)
            assert np.array_equal(got, base), str(s)


# ------------------------------------------------------------- fuse of dense loops

FUSE_KERNELS = [
    ("C[i,j] = A[i,k] * B[k,j]", {}, "ik,kj->ij", {"A": (0, 2), "B": (2, 1)}),
    ("C[i,j] = A[i,j] * 2 + B[i,j]", {}, None, {"A": (0, 1), "B": (0, 1)}),
    ("Y[i,k] = A[i,j] * B[j,k]", {"A": "csr"}, "ij,jk->ik", {"A": (0, 2), "B": (2, 1)}),
    ("Y[i,k] = A[i,j] * B[j,k]", {"A": "dcsr"}, "ij,jk->ik", {"A": (0, 2), "B": (2, 1)}),
]


@settings(max_examples=examples(20))
@given(case=st.sampled_from(range(len(FUSE_KERNELS))), dims=st.lists(st.integers(1, 13), min_size=3, max_size=3),
       density=st.sampled_from([0.0, 0.3, 1.0]), parallel=st.booleans(), seed=st.integers(0, 99))
def test_fuse_of_two_dense_loops(case, dims, density, parallel, seed):
    expr, formats, spec, shapes = FUSE_KERNELS[case]
    ops, dense = _axes_operands(shapes, formats, dims, density, seed)
    out = expr.split("[")[0]
    i, j = expr[len(out) + 1], expr[len(out) + 3]
    s = Schedule().fuse(i, j, "f")
    s = s.parallelize("f") if parallel else s
    if case == 3:  # DCSR's top level stores i sparsely: no fixed range to fuse
        with pytest.raises(ScheduleError, match="stores i sparsely"):
            _compile(expr, formats, s)
        return
    k = _compile(expr, formats, s)
    assert f"for f in 0..N_{i}*N_{j}" in k.loops
    ref = 2 * dense[0] + dense[1] if spec is None else np.einsum(spec, *dense)
    _run_both(k, ref, **ops)
    if parallel:
        assert k.lowered.threads.fused == j


def test_fuse_of_dense_loops_refused_on_cuda():
    with pytest.raises(ScheduleError, match="CPU backend only"):
        spcomp.compile("C[i,j] = A[i,k] * B[k,j]", backend="cuda-sim", schedule=Schedule().fuse("i", "j", "f"))


def test_new_directives_survive_the_tuning_cache():
    from spcomp.runtime import tuning
    for s in (Schedule().pos("j", "q", "A").split("q", "c", "p", 64).parallelize("c", race="Atomics"),
              Schedule().fuse("i", "j", "f").bound("f", 9),
              Schedule().parallelize("i", race="IgnoreRaces", insist=True)):
        assert tuning.from_data(tuning.to_data(s)) == s
    with pytest.raises(ScheduleError, match="bad arguments"):
        tuning.from_data([["parallelize", "i", "threads", "Atomics", "yes"]])


def test_nested_splits_on_cuda_sim_run_or_refuse():
    rng = np.random.default_rng(7)
    A, x = rng.standard_normal((13, 6)), rng.standard_normal(6)
    s = Schedule().split("i", "i0", "i1", 5).split("i1", "i10", "i11", 2)
    for t in (s, s.parallelize("i0", "gpu-thread"),
              s.parallelize("i0", "gpu-block").parallelize("i10", "gpu-warp").parallelize("i11", "gpu-thread")):
        k = spcomp.compile("y[i] = A[i,j] * x[j]", backend="cuda-sim", schedule=t)
        np.testing.assert_allclose(k(A=A, x=x), A @ x, rtol=1e-12)
