"""Chunks of rows that meet in one buffer (spcomp/lower/meet.py, runtime/meet_chunks.py).

A csr output drained row by row from a workspace (SpGEMM) is appended on CPU
threads by pairs of chunks sharing the output's arrays: the even chunk walks its
rows backwards and appends downwards from the meeting point, the odd one forwards
from it, so no entries are copied after the join. These tests check the layout
arithmetic on its own, the kernel the lowering emits (rows and drains walked
back), results against the dense reference and bit for bit against the chunks
that copy, on 2, 3 and 4 threads (one pair, a pair and a lone chunk, two pairs
moved together), the rerun when a chunk's room is too small, the fallback without
a native driver, and 32-bit positions.
"""
from __future__ import annotations

import contextlib

import numpy as np
import pytest
import scipy.sparse as sp
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

import spcomp
from spcomp.ir.printer import print_ir
from spcomp.runtime import chunks as _chunks
from spcomp.runtime import launch
from spcomp.runtime import meet_chunks
from spcomp.testing import check_kernel
from spcomp.testing.check import make_operands

from conftest import assert_same_bits, spcomp_threads

SPGEMM = "C[i,j] = A[i,k] * B[k,j]"
CSR3 = {"A": "csr", "B": "csr", "C": "csr"}


@contextlib.contextmanager
def meeting(on: bool):
    before = _chunks.MEET
    _chunks.MEET = on
    try:
        yield
    finally:
        _chunks.MEET = before


@pytest.fixture
def joins(monkeypatch):
    """Counts of the meeting runs (``run``: driver calls, ``join``: joined results)."""
    seen = {"run": 0, "join": 0}
    real_run, real_join = meet_chunks._run, meet_chunks._join

    def run(*args):
        seen["run"] += 1
        return real_run(*args)

    def join(*args):
        seen["join"] += 1
        return real_join(*args)
    monkeypatch.setattr(meet_chunks, "_run", run)
    monkeypatch.setattr(meet_chunks, "_join", join)
    return seen


# ============================================================ the arithmetic

def test_layout_pairs_meet_between_their_rooms():
    floors, ceilings, downs, meets, total = meet_chunks.layout([5, 7, 3, 4, 6])
    assert downs == [1, 0, 1, 0, 1]
    # pair 0: [0, 5) down, [5, 12) up; pair 1: [12, 15) down, [15, 19) up; lone chunk [19, 25) down
    assert floors == [0, 5, 12, 15, 19] and ceilings == [5, 12, 15, 19, 25]
    assert meets == [5, 15, 25] and total == 25


def test_rooms_share_the_estimate_as_the_rows_weigh():
    pos = np.array([0, 10, 10, 40, 40])  # 4 rows of 10, 0, 30, 0 entries
    room = meet_chunks.rooms([0, 2, 4], pos, 1000)
    # chunk weights 10 + 2 and 30 + 2 of 44, times the slack
    assert room == [int(np.ceil(1000 * meet_chunks.MEET_SLACK * 12 / 44)),
                    int(np.ceil(1000 * meet_chunks.MEET_SLACK * 32 / 44))]
    assert min(meet_chunks.rooms([0, 1, 4], pos, 1)) >= 16  # never under MIN_CAPACITY


def test_needed_rooms_read_where_each_counter_stopped():
    floors, ceilings, downs, _m, _t = meet_chunks.layout([10, 10, 10])
    # down from 10 to 2 (8 entries), up from 10 to 25 (15, past its ceiling 20), down from 30 to 30
    assert meet_chunks.needed_rooms([2, 25, 30], floors, ceilings, downs) == [8, 15, 0]


# ================================================================ the kernel

def test_the_meeting_kernel_walks_rows_and_drains_backwards():
    k = spcomp.compile(SPGEMM, formats=CSR3)
    variant = k._variant_with(32, "meet", append_chunks=True, meet_chunks=True)
    low = variant.lowered
    assert low.output.meet == ((1, "crd"), (-1, "vals")) and low.output.growable == []
    assert low.entry_function.per_chunk == ("C_floor", "C_ceiling", "C_down", "C_reached")
    text = print_ir(low.entry_function)
    assert "i_walk" in text and "C_down * (((lo + hi) - 1) - (2 * i_walk))" in text
    assert "C2_pos[(pC1 + (1 - C_down))]" in text
    assert "return 8;" in text  # STATUS_NO_ROOM
    assert "realloc" not in text and "calloc(max(capacity" not in text


@pytest.mark.parametrize("expr,formats", [
    ("C[i,j] = A[i,j] + B[i,j]", CSR3),                                   # a merge: no workspace
    ("C[i,j,k] = A[i,j,l] * B[l,k]", {"A": "dcc", "B": "csr", "C": "dcc"}),  # three levels
    (SPGEMM, {"A": "csr", "B": "csr", "C": "dcsr"}),                       # rows compressed
])
def test_meeting_applies_only_to_drained_csr_rows(expr, formats):
    k = spcomp.compile(expr, formats=formats)
    chunked = k._variant_with(32, "chunks", append_chunks=True)
    assert not chunked.lowered.output.meetable


# ============================================================ end to end

@pytest.mark.parametrize("nthreads,pairs", [(2, 1), (3, 2), (4, 2)])
def test_results_match_the_copying_chunks_bit_for_bit(nthreads, pairs, joins):
    sizes = {"i": 90, "j": 80, "k": 70}
    ops = None
    with spcomp_threads(nthreads, 0):
        with meeting(False):
            copied = check_kernel(SPGEMM, CSR3, sizes=sizes, density=0.3, seed=4)
        ops = copied.operands
        assert joins["join"] == 0
        with meeting(True):
            met = check_kernel(SPGEMM, CSR3, operands=ops)
    assert joins["join"] >= 1
    assert_same_bits(copied.result, met.result)
    assert met.result.to_scipy().has_sorted_indices


def test_a_chunk_out_of_room_runs_again_with_what_it_counted(monkeypatch, joins):
    monkeypatch.setattr(launch, "FIRST_CAPACITY", 1)  # every chunk gets MIN_CAPACITY entries
    with spcomp_threads(2, 0), meeting(True):
        r = check_kernel(SPGEMM, CSR3, sizes={"i": 60, "j": 60, "k": 40}, density=0.4, seed=2)
    assert r.result.nnz > 100
    assert joins["run"] == 2 and joins["join"] == 1  # the first run was too small, the second fit


def test_the_next_call_takes_the_rooms_the_last_one_counted(monkeypatch, joins):
    monkeypatch.setattr(launch, "FIRST_CAPACITY", 1)
    A = sp.random(80, 70, density=0.3, format="csr", random_state=7)
    B = sp.random(70, 90, density=0.3, format="csr", random_state=8)
    k = spcomp.compile(SPGEMM, formats=CSR3)
    with spcomp_threads(2, 0), meeting(True):
        first = k(A=A, B=B)
        assert joins["run"] == 2  # too small, then what each chunk counted
        second = k(A=A, B=B)
    assert joins["run"] == 3 and joins["join"] == 2  # learned: one run
    ref = (A @ B).toarray()
    assert np.allclose(first.to_scipy().toarray(), ref) and np.allclose(second.to_scipy().toarray(), ref)


def test_computed_zeros_dropped_going_down_and_up(joins):
    rng = np.random.default_rng(5)
    # every row of A is (1, 1, x, ...) and rows 0 and 1 of B cancel: half the products sum to 0
    A = np.zeros((40, 6)); A[:, 0] = A[:, 1] = 1.0; A[::2, 2] = rng.random(20)
    B = np.zeros((6, 30)); B[0, :15] = rng.random(15); B[1, :15] = -B[0, :15]; B[2, 10:] = 2.0
    k = spcomp.compile(SPGEMM, formats=CSR3, drop_zeros=True)
    with spcomp_threads(2, 0), meeting(True):
        C = k(A=sp.csr_matrix(A), B=sp.csr_matrix(B))
    assert joins["join"] == 1
    S = C.to_scipy()
    assert np.all(S.data != 0) and S.has_sorted_indices
    assert np.allclose(S.toarray(), A @ B)


def test_without_a_native_driver_the_copying_chunks_run(monkeypatch, joins):
    monkeypatch.setattr(launch.Launcher, "split_driver", lambda *a: None)
    with spcomp_threads(2, 0), meeting(True):
        r = check_kernel(SPGEMM, CSR3, sizes={"i": 30, "j": 20, "k": 10}, density=0.3, seed=1)
    assert r.result.nnz > 0 and joins["run"] == 0


def test_repeated_calls_get_fresh_arrays():
    A = sp.random(200, 150, density=0.05, format="csr", random_state=0)
    B = sp.random(150, 120, density=0.05, format="csr", random_state=1)
    k = spcomp.compile(SPGEMM, formats=CSR3)
    with spcomp_threads(2, 0), meeting(True):
        first = k(A=A, B=B)
        kept = np.array(first.vals)
        second = k(A=A, B=B)
    assert not np.shares_memory(np.asarray(first.vals), np.asarray(second.vals))
    assert np.array_equal(np.asarray(first.vals), kept)
    assert np.allclose(second.to_scipy().toarray(), (A @ B).toarray())


def test_32_bit_positions_past_their_limit_take_the_64_bit_kernel(monkeypatch):
    from spcomp.lower import record
    monkeypatch.setattr(record, "INDEX32_LIMIT", 50)
    A = sp.random(40, 40, density=0.3, format="csr", random_state=3)
    k = spcomp.compile(SPGEMM, formats=CSR3)
    with spcomp_threads(2, 0), meeting(True):
        C = k(A=A, B=A)
    assert C.nnz > 50
    assert np.allclose(C.to_scipy().toarray(), (A @ A).toarray())


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(i=st.integers(0, 50), j=st.integers(0, 40), k=st.integers(0, 15),
       density=st.sampled_from([0.0, 0.05, 0.3, 1.0]), empty_rows=st.sampled_from([0.0, 0.5]),
       nthreads=st.sampled_from([2, 3, 4]), capacity=st.sampled_from([None, 1]),
       unordered=st.booleans(), drop=st.booleans(), seed=st.integers(0, 2**16))
@example(i=1, j=5, k=3, density=1.0, empty_rows=0.0, nthreads=2, capacity=None, unordered=False, drop=False,
         seed=0)
def test_property_meeting_chunks_match_the_reference(i, j, k, density, empty_rows, nthreads, capacity,
                                                     unordered, drop, seed):
    """Bit for bit as the copying chunks, which test_parallel_assembly checks against
    the dense reference (and check_kernel here too); with computed zeros dropped."""
    formats = dict(CSR3, C="d c(unordered)" if unordered else "csr")
    kernel = spcomp.compile(SPGEMM, formats=formats, drop_zeros=drop)
    ops = make_operands(kernel.notation, {"i": i, "j": j, "k": k}, np.random.default_rng(seed), density,
                        empty_rows=empty_rows)
    before = launch.FIRST_CAPACITY
    launch.FIRST_CAPACITY = capacity
    try:
        with spcomp_threads(nthreads, 0):
            with meeting(True):
                met = check_kernel(SPGEMM, formats, operands=ops, drop_zeros=drop).result
            with meeting(False):
                copied = check_kernel(SPGEMM, formats, operands=ops, drop_zeros=drop).result
    finally:
        launch.FIRST_CAPACITY = before
    assert_same_bits(met, copied)
