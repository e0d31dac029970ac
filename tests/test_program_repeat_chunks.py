"""A program's repeated call by chunks of rows (runtime/program_repeat_chunks.py).

A call of a fused run big enough for threads runs its function over chunks of
rows (runtime/program_chunks.py); called again with the same operands (or new
ndarrays laid out alike) it replays the call's checks, argument template and
chunks with fresh outputs. Each test makes the general path raise after the
first call where it claims the repeat ran, counts the chunked launches to show
the repeat ran by chunks, and checks every result against NumPy; anything the
general path could decide otherwise (another shape, stride or dtype, another
thread count or threshold, a 32-bit overflow) takes the general path.
"""
from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp
from hypothesis import given, settings
from hypothesis import strategies as st

import spcomp
from spcomp.errors import OperandError
from spcomp.runtime import launch, program_repeat_chunks, threads
from spcomp.runtime.program import FusedRun
from spcomp.runtime.program_repeat_chunks import ChunkRepeat

from conftest import examples, spcomp_threads
from test_program_repeat import call_with_new_and_changed_operands, forbid_general_path
from test_programs_chunks import INPUT_FORMATS, chain_inputs, chunk_chains, compile_quietly, dense_of

CHAIN = "T[i,k] = A[i,j]*B[j,k]; y[i] = T[i,k]*c[k]"
FORMATS = {"A": "csr", "B": "csr", "T": "csr"}


@pytest.fixture
def by_chunks(monkeypatch):
    """Two threads, every call split; yields the list that counts the chunked launches
    the repeat makes."""
    launched = []
    real = program_repeat_chunks.run_chunked
    monkeypatch.setattr(program_repeat_chunks, "run_chunked", lambda *a: launched.append(1) or real(*a))
    with spcomp_threads(2, min_work=0):
        yield launched


@pytest.fixture
def no_general_path(monkeypatch):
    """Calling this makes FusedRun's general path raise: what runs after it must repeat."""
    return lambda: forbid_general_path(monkeypatch)


@pytest.fixture
def general_runs(monkeypatch):
    """Counts the general path's calls (FusedRun._run)."""
    calls = []
    real = FusedRun._run
    monkeypatch.setattr(FusedRun, "_run", lambda self, env, bits: calls.append(bits) or real(self, env, bits))
    return calls


def _operands(seed=0, n=40):
    rng = np.random.default_rng(seed)
    return dict(A=sp.random(n, 6, density=0.4, format="csr", random_state=seed),
                B=sp.random(6, n, density=0.4, format="csr", random_state=seed + 1),
                c=rng.standard_normal(n))


def _want(ops):
    return (ops["A"] @ ops["B"]) @ ops["c"]


def _chain(pool=False, monkeypatch=None):
    if pool:  # the Python pool runs the chunks
        monkeypatch.setattr(launch.Launcher, "driver_of", lambda self, variant: None)
    k = spcomp.compile(CHAIN, formats=FORMATS)
    assert "each thread's chunk of rows" in k.loops
    return k


@pytest.mark.parametrize("pool", [False, True])
def test_same_operands_repeat_by_chunks_with_fresh_outputs(by_chunks, no_general_path, monkeypatch, pool):
    k = _chain(pool, monkeypatch)
    ops = _operands()
    first = k(**ops)
    run = k.segments[0][1]
    assert type(run.repeat) is ChunkRepeat and run.repeat.names == {"A", "B", "c"}
    no_general_path()
    second = k(**ops)
    assert by_chunks == [1] and k.last_launches == 1
    assert second is not first  # a fresh output each call: the caller may keep the last one
    np.testing.assert_allclose(second, _want(ops))
    np.testing.assert_allclose(first, _want(ops))
    ops["c"][:] = 2.0  # changed in place: read afresh
    np.testing.assert_allclose(k(**ops), _want(ops))
    for seed in range(1, 4):  # new arrays laid out alike: their pointers swapped in
        c = np.random.default_rng(seed).standard_normal(40)
        np.testing.assert_allclose(k(A=ops["A"], B=ops["B"], c=c), _want({**ops, "c": c}))
    assert len(by_chunks) == 5


def test_other_layouts_and_operands_take_the_general_path(by_chunks, general_runs):
    k = _chain()
    ops = _operands()
    k(**ops)
    assert general_runs == [32]
    cases = [_operands(5, n=23),  # another shape
             {**ops, "c": np.ascontiguousarray(np.stack([ops["c"]] * 2, axis=1))[:, 0]},  # strided: converted
             {**ops, "c": ops["c"].astype(np.float32)},  # another dtype
             {**ops, "A": ops["A"].copy()}]  # another matrix object
    for other in cases:
        np.testing.assert_allclose(k(**other), _want(other), rtol=1e-6)
    assert len(general_runs) == 5 and not by_chunks
    ops["A"].data = ops["A"].data * 3.0  # a new data array in the same matrix object
    np.testing.assert_allclose(k(**ops), _want(ops))
    assert len(general_runs) == 6 and not by_chunks


def test_thread_count_and_threshold_changes_miss(by_chunks, general_runs):
    k = _chain()
    ops = _operands()
    k(**ops)
    with threads.thread_limit(1):  # one thread: the one-thread function
        np.testing.assert_allclose(k(**ops), _want(ops))
    assert len(general_runs) == 2 and not by_chunks
    k(**ops)  # chunked again (recorded anew)
    k(**ops)
    assert len(general_runs) == 3 and by_chunks == [1]
    threads.MIN_PARALLEL_WORK = 10 ** 12  # too little work to split: the general path's choice
    np.testing.assert_allclose(k(**ops), _want(ops))
    assert len(general_runs) == 4 and type(k.segments[0][1].repeat) is not ChunkRepeat
    threads.MIN_PARALLEL_WORK = 0
    k(**ops)
    spcomp.set_num_threads(3)  # a new thread count bumps the split generation too
    np.testing.assert_allclose(k(**ops), _want(ops))
    assert len(general_runs) == 6 and by_chunks == [1]


@pytest.mark.parametrize("fmt", ["csr", "dcsr", "coo"])
def test_sparse_outputs_repeat_as_new_tensors(fmt, by_chunks, no_general_path):
    """T is stitched from the chunks; U, declared dcsr or coo, is computed in a csr
    stand-in and converted back, each call a new tensor."""
    k = spcomp.compile("T[i,k] = A[i,j]*B[j,k]; U[i,k] = T[i,k]*s[k]",
                       formats={**FORMATS, "U": fmt}, outputs=["T", "U"])
    assert "each thread's chunk of rows" in k.loops
    ops = _operands(3)
    ops["s"] = ops.pop("c")
    first = k(**ops)
    assert type(k.segments[0][1].repeat) is ChunkRepeat
    no_general_path()
    second = k(**ops)
    third = k(**ops)
    assert by_chunks == [1, 1]
    assert second["U"] is not first["U"] and second["T"] is not first["T"] and third["T"] is not second["T"]
    want = (ops["A"] @ ops["B"]).toarray()
    for got in (first, second, third):
        np.testing.assert_allclose(got["T"].to_numpy(), want)
        np.testing.assert_allclose(got["U"].to_numpy(), want * ops["s"])
        assert got["U"].format == k.program.tensors["U"].format  # the declared format, stand-ins converted
        t = got["T"].to_scipy()
        t.check_format(full_check=True)
        assert t.has_sorted_indices


@pytest.mark.parametrize("text, want", [
    ("T[i,k] = A[i,j]*B[j,k]\ns = sum(i, sum(k, T[i,k]))", lambda o, T: T.sum()),
    ("T[i,k] = A[i,j]*B[j,k]\nz[k] = T[i,k]*c[i]", lambda o, T: T.T @ o["c"]),
])
def test_summing_statements_repeat(text, want, by_chunks, no_general_path):
    """A sum over the rows adds a copy per chunk into a fresh output each call."""
    k = spcomp.compile(text, formats=FORMATS)
    assert "a sum over rows into a copy per chunk" in k.loops, k.loops
    ops = _operands(7)
    ops = {n: v for n, v in ops.items() if n in k.inputs}
    T = (ops["A"] @ ops["B"]).toarray()
    first = k(**ops)
    assert type(k.segments[0][1].repeat) is ChunkRepeat
    no_general_path()
    second = k(**ops)
    assert by_chunks == [1] and second is not first
    np.testing.assert_allclose(second, want(ops, T))
    np.testing.assert_allclose(first, want(ops, T))


def test_an_add_by_chunks_repeats_in_place_and_refuses_overlap(by_chunks, no_general_path):
    """A dense += by chunks (64-bit from the start) adds into the caller's array on
    the repeat too; one sharing memory with an input is refused there, a read-only
    one misses (here: into the general path made to raise)."""
    k = spcomp.compile("T[i,k] = A[i,j]*B[j,k]\nY[i,k] += T[i,k]*E[i,k]", formats=FORMATS)
    assert "each thread's chunk of rows" in k.loops
    ops = _operands(2)
    del ops["c"]
    ops["E"] = np.random.default_rng(2).standard_normal((40, 40))
    T = (ops["A"] @ ops["B"]).toarray()
    Y = np.ones((40, 40))
    k(Y=Y, **ops)
    run = k.segments[0][1]
    assert type(run.repeat) is ChunkRepeat and run.repeat.bits == 64
    no_general_path()
    assert k(Y=Y, **ops) is Y
    np.testing.assert_allclose(Y, 1 + 2 * T * ops["E"])
    assert by_chunks == [1]
    with pytest.raises(OperandError, match="shares memory"):
        k(Y=ops["E"], **ops)
    frozen = np.ones((40, 40))
    frozen.flags.writeable = False
    with pytest.raises(AssertionError, match="general path"):
        k(Y=frozen, **ops)
    assert by_chunks == [1]


@pytest.mark.parametrize("n, outputs", [(8, ["T", "y"]), (30, ["y"])])
def test_a_repeat_past_32_bit_positions_steps_aside(n, outputs, by_chunks, general_runs, no_general_path,
                                                    monkeypatch, tmp_path):
    """T's entries depend on d's values (zeros dropped): the first call fits 32-bit
    positions, a later one with new values laid out alike does not -- returned, its
    chunks each fit but not stitched together (n=8); unreturned, a chunk alone does
    not (n=30). The repeat hands that call to the general path, which runs it at
    64 bits (and records that call, which then repeats)."""
    from spcomp.lower import record as lower_record
    monkeypatch.setattr(lower_record, "INDEX32_LIMIT", 40)
    monkeypatch.setenv("SPCOMP_CACHE_DIR", str(tmp_path / "cache"))
    spcomp.clear_cache()
    try:
        k = spcomp.compile("T[i,k] = A[i,j]*d[j]*B[j,k]; y[i] = T[i,k]*x[k]", formats=FORMATS,
                           drop_zeros=True, outputs=outputs)
    finally:
        spcomp.clear_cache()
    assert "each thread's chunk of rows" in k.loops
    A = sp.csr_matrix((np.ones(n), np.zeros(n, dtype=np.int32), np.arange(n + 1)), shape=(n, n))  # column 0
    B = sp.csr_matrix((np.ones(n), np.arange(n), np.r_[0, np.full(n, n)]), shape=(n, n))  # row 0
    x = np.arange(1.0, n + 1)

    def check(d):
        got = k(A=A, d=d, B=B, x=x)
        got = got if isinstance(got, dict) else {"y": got}
        T = A.toarray() @ (d[:, None] * B.toarray())
        np.testing.assert_allclose(got["y"], T @ x)
        if "T" in got:
            np.testing.assert_allclose(got["T"].to_numpy(), T)
    check(np.zeros(n))  # A·diag(d)·B empty: nothing stored
    run = k.segments[0][1]
    assert type(run.repeat) is ChunkRepeat and run.repeat.bits == 32 and general_runs == [32]
    check(np.ones(n))  # all n² entries: past the limit of 40
    assert general_runs == [32, 32, 64] and by_chunks == [1]  # the repeat stepped aside
    assert type(run.repeat) is ChunkRepeat and run.repeat.bits == 64
    no_general_path()
    check(np.full(n, 2.0))
    assert by_chunks == [1, 1]


@settings(max_examples=examples(25), deadline=None)
@given(st.data())
def test_random_programs_repeat_on_two_threads_with_new_and_changed_operands(data):
    """Random programs on two threads, every call split (by chunks where the run has a
    function over them), called four times: the first operands, again, new ones of the
    same shapes, then the first again after one of its arrays changed in place."""
    call_with_new_and_changed_operands(data, lambda: spcomp_threads(2, min_work=0))


@settings(max_examples=examples(20), deadline=None)
@given(st.data())
def test_random_row_chains_repeat_by_chunks(data):
    """Random row-wise chains with sparse temporaries and outputs (test_programs_chunks):
    the second call with the same operands, and one with a new dense operand laid out
    alike, repeat by chunks -- the general path made to raise -- and match NumPy."""
    text, fmts, outputs, refs = data.draw(chunk_chains(), label="program")
    rows = data.draw(st.integers(2, 40), label="rows")
    pool = data.draw(st.booleans(), label="python pool")
    ops = chain_inputs(data.draw, rows)
    formats = {n: f for n, f in {**INPUT_FORMATS, **fmts}.items() if f"{n}[" in text}
    k = compile_quietly(text, formats, outputs)
    tensors = data.draw(st.booleans(), label="spcomp Tensors")
    # (an empty SciPy matrix is converted each call, never repeated: operands.py)
    used = {n: spcomp.Tensor.from_scipy(v, "csr") if sp.issparse(v) and (tensors or not v.nnz) else v
            for n, v in ops.items() if n in k.inputs}

    def check(args):
        env = {n: dense_of(v) for n, v in args.items()}
        for name, ref in refs:
            env[name] = ref(env)
        got = k(**args)
        got = got if isinstance(got, dict) else {outputs[0]: got}
        for name in outputs:
            assert np.allclose(dense_of(got[name]), env[name], rtol=1e-10, atol=1e-10), (text, name)
        return got
    with pytest.MonkeyPatch.context() as mp, spcomp_threads(2, min_work=0):
        if pool:
            mp.setattr(launch.Launcher, "driver_of", lambda self, variant: None)
        first = check(used)
        if "B_T[" in k.loops:  # B read through a transposed copy, made every call: never repeated
            assert k.segments[0][1].repeat is None
            return
        assert type(k.segments[0][1].repeat) is ChunkRepeat, k.loops
        forbid_general_path(mp)
        second = check(used)
        for name in outputs:
            assert second[name] is not first[name]
        dense = [n for n, v in used.items() if isinstance(v, np.ndarray)]
        if dense:
            check({**used, dense[0]: np.random.default_rng(rows).standard_normal(used[dense[0]].shape)})


def test_concurrent_repeats_share_no_output(by_chunks):
    """Calls from several Python threads at once replay one ChunkRepeat (the plan is
    read only): each gets its own outputs, all right."""
    from concurrent.futures import ThreadPoolExecutor
    k = spcomp.compile("T[i,k] = A[i,j]*B[j,k]; y[i] = T[i,k]*c[k]", formats=FORMATS, outputs=["T", "y"])
    ops = _operands(9)
    k(**ops)
    assert type(k.segments[0][1].repeat) is ChunkRepeat
    want = (ops["A"] @ ops["B"]).toarray()
    with ThreadPoolExecutor(4) as pool:
        got = list(pool.map(lambda _: k(**ops), range(40)))
    assert len({id(g["T"]) for g in got}) == 40 and len({id(g["y"]) for g in got}) == 40
    for g in got:
        np.testing.assert_allclose(g["T"].to_numpy(), want)
        np.testing.assert_allclose(g["y"], want @ ops["c"])
    assert by_chunks  # (a call from a pool thread runs with that thread's count: it may miss)
