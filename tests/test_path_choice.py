"""The measured choice of a big call's one launch: team call or one-thread function
(runtime/path_choice.py)."""
from __future__ import annotations

import warnings

import numpy as np
import pytest
import scipy.sparse as sp

import spcomp
from spcomp.runtime import path_choice, program_team
from spcomp.runtime.path_choice import TRIES, PathChoice, run_one_launch, size_class

from conftest import spcomp_threads


class _Team:
    def __init__(self, sums=False, declines=False):
        self.calls, self.sums, self.declines = 0, sums, declines

    @property
    def sums_over_rows(self):
        return self.sums

    def run(self, env):
        self.calls += 1
        return not self.declines


def test_the_ways_are_timed_alternately_then_the_faster_is_kept():
    paths = PathChoice()
    order = []
    for seconds in ([3.0, 1.0, 2.5, 1.2] + [9.9] * 3):
        way = paths.pick("k")
        order.append(way)
        paths.note("k", way, seconds)
    assert order[:2 * TRIES] == ["team", "one"] * TRIES
    assert paths.chosen("k") == "one" and order[2 * TRIES:] == ["one"] * 3
    assert paths.times["k"]["one"] == [1.0, 1.2]  # past the tries nothing is recorded
    paths.times["k"]["team"] = [0.5, 0.7]
    assert paths.pick("k") == "team"


def test_each_key_is_measured_on_its_own():
    paths = PathChoice()
    for way, s in (("team", 1.0), ("one", 2.0)) * TRIES:
        paths.note("small", way, s)
    assert paths.chosen("small") == "team" and paths.chosen("big") is None and paths.measuring("big")


def test_a_run_summing_over_rows_always_takes_the_team():
    paths, team, ones = PathChoice(), _Team(sums=True), []
    for _ in range(2 * TRIES + 2):
        assert run_one_launch(paths, "k", team, ones.append, {})
    assert team.calls == 2 * TRIES + 2 and not ones and paths.times == {}


def test_a_declined_team_call_is_not_timed_and_says_so():
    paths, team = PathChoice(), _Team(declines=True)
    assert not run_one_launch(paths, "k", team, lambda env: None, {})
    assert paths.times["k"]["team"] == []


def test_the_size_class_groups_calls_within_about_four_times():
    a = sp.random(100, 100, 0.1, format="csr", random_state=0)
    env = {"A": a, "x": np.ones(100), "s": 2.0}
    assert size_class(env, ["A", "x", "s"]) == (a.nnz + 100).bit_length() // 2
    assert size_class({"x": np.ones(1000)}, ["x"]) != size_class({"x": np.ones(100_000)}, ["x"])


def test_a_program_settles_on_one_way_and_every_call_gives_the_same_bits(monkeypatch):
    """A transposed read (no sum over rows): team and one thread alternate while timed,
    then one of them stays; every call one launch and bit for bit the same result."""
    team_runs = []
    real = program_team.TeamRun.run
    monkeypatch.setattr(program_team.TeamRun, "run", lambda self, env: team_runs.append(1) or real(self, env))
    A = sp.random(300, 300, 0.03, format="csr", random_state=1)
    B = sp.random(300, 300, 0.03, format="csr", random_state=2)
    c = np.random.default_rng(0).standard_normal(300)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        k = spcomp.compile("T[i,k] = A[i,j]*B[j,k]; Z[k,i] = T[i,k]*2; y[k] = Z[k,i]*c[i]",
                           formats={"A": "csr", "B": "csr", "T": "csr", "Z": "csr"})
    want = np.einsum("ij,jk,i->k", A.toarray(), B.toarray(), 2 * c)
    with spcomp_threads(2, min_work=0):
        results = []
        for _ in range(2 * TRIES + 3):
            results.append(k(A=A, B=B, c=c))
            assert k.last_launches == 1
    assert np.allclose(results[0], want)
    assert all(np.array_equal(r, results[0]) for r in results)
    (key, seen), = k._paths.times.items()
    assert [len(seen[w]) for w in path_choice.WAYS] == [TRIES, TRIES]
    chosen = k._paths.chosen(key)
    # the team ran while timed, and after that only if it was chosen
    assert len(team_runs) == TRIES + (3 if chosen == "team" else 0)
