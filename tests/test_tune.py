"""``spcomp.tune`` and the tuning cache (spcomp/tuner.py, runtime/tuning.py).

The tuner times the schedules the lowerer accepts and keeps the fastest; every
kept schedule gives the default schedule's result. The cache is a private,
signed JSON file per kernel; later compiles without a schedule use the latest
tuned one; a plain call never tunes unless ``SPCOMP_AUTOTUNE=1``.
"""
from __future__ import annotations

import json
import os

import numpy as np
import pytest
import scipy.sparse as sp
from hypothesis import given, settings
from hypothesis import strategies as st

import spcomp
from spcomp import Schedule
from spcomp.errors import ScheduleError
from spcomp.runtime import tuning
from spcomp.testing import random_operands
from spcomp.tuner import candidates

from conftest import examples

FAST = dict(budget=0.0005, progress=False)


@pytest.fixture
def tune_dir(tmp_path, monkeypatch):
    path = tmp_path / "tune"
    monkeypatch.setenv("SPCOMP_TUNE_CACHE", str(path))
    monkeypatch.delenv("SPCOMP_AUTOTUNE", raising=False)
    spcomp.clear_cache()
    yield path
    spcomp.clear_cache()


def _spmv():
    rng = np.random.default_rng(0)
    A = sp.random(300, 200, density=0.05, format="csr", random_state=rng)
    return spcomp.compile("y[i] = A[i,j] * x[j]", formats={"A": "csr"}), {"A": A, "x": rng.random(200)}


def test_tune_keeps_a_schedule_with_the_default_result(tune_dir):
    k, ops = _spmv()
    r = spcomp.tune(k, **FAST, **ops)
    assert r.recorded and not r.cached
    assert any(t.status.startswith("refused") for t in r.tried)  # reorder j, i against csr
    assert sum(t.seconds is not None for t in r.tried) >= 5
    np.testing.assert_allclose(r.kernel(**ops), k(**ops), rtol=1e-12)
    table = r.table()
    assert table.splitlines()[0].startswith("schedule") and str(r.schedule) in table


def test_ttv_over_csf(tune_dir):
    rng = np.random.default_rng(2)
    B = spcomp.Tensor.from_numpy(rng.random((6, 5, 7)) * (rng.random((6, 5, 7)) < 0.3), "csf")
    c = rng.random(7)
    k = spcomp.compile("y[i,j] = B[i,j,k] * c[k]", formats={"B": "csf"})
    r = spcomp.tune(k, **FAST, B=B, c=c)
    np.testing.assert_allclose(r.kernel(B=B, c=c), k(B=B, c=c), rtol=1e-12)


def test_later_compiles_use_the_tuned_schedule(tune_dir):
    k, ops = _spmv()
    r = spcomp.tune(k, **FAST, **ops)
    again = spcomp.compile("y[i] = A[i,j] * x[j]", formats={"A": "csr"})
    np.testing.assert_allclose(again(**ops), ops["A"] @ ops["x"])  # the first call, in the tuned bucket
    assert again.schedule == r.schedule
    explicit = spcomp.compile("y[i] = A[i,j] * x[j]", formats={"A": "csr"}, schedule=Schedule())
    assert explicit.schedule == Schedule()
    second = spcomp.tune(again, **FAST, **ops)  # same problem bucket: from the cache, nothing timed
    assert second.cached and second.schedule == r.schedule


def test_a_schedule_tuned_on_one_problem_is_not_applied_to_another(tune_dir):
    """A kernel compiled without a schedule takes the tuned one only for a first call
    in the bucket it was tuned on: another shape or density runs the default."""
    from spcomp.runtime import tuning
    k, ops = _spmv()
    name, describe = tuning.notation_key(k.expression, k.notation, k.backend)
    kept = Schedule().sequential()  # as if one thread had won on a busy host
    assert tuning.record(name, tuning.bucket(ops), kept, 1e-3, describe)
    spcomp.clear_cache()
    other = {"A": sp.random(97, 61, density=0.5, format="csr", random_state=3), "x": np.ones(61)}
    fresh = spcomp.compile("y[i] = A[i,j] * x[j]", formats={"A": "csr"})
    np.testing.assert_allclose(fresh(**other), other["A"] @ other["x"])
    assert fresh.schedule == Schedule()  # another bucket: the default, although a tuned one exists
    fresh(**ops)
    assert fresh.schedule == Schedule()  # the choice is made once, at the first call
    spcomp.clear_cache()
    same = spcomp.compile("y[i] = A[i,j] * x[j]", formats={"A": "csr"})
    np.testing.assert_allclose(same(**ops), ops["A"] @ ops["x"])
    assert same.schedule == kept and "parallel" not in same.loops


def test_cache_files_are_private_signed_json(tune_dir):
    k, ops = _spmv()
    spcomp.tune(k, **FAST, **ops)
    (f,) = [p for p in tune_dir.iterdir() if p.suffix == ".json"]
    assert os.stat(tune_dir).st_mode & 0o077 == 0
    header, _, body = f.read_bytes().partition(b"\n")
    assert header.startswith(b"hmac-sha256 ")
    entry = json.loads(body)
    assert entry["kernel"]["expression"] == "y[i] = A[i,j] * x[j]"
    f.write_bytes(header + b"\n" + body.replace(b'"seconds"', b'"Seconds"'))  # tampered: ignored
    spcomp.clear_cache()
    untrusted = spcomp.compile("y[i] = A[i,j] * x[j]", formats={"A": "csr"})
    untrusted(**ops)
    assert untrusted.schedule == Schedule()


def test_a_shared_directory_is_refused(tune_dir):
    tune_dir.mkdir(mode=0o700)
    os.chmod(tune_dir, 0o777)
    with pytest.warns(spcomp.InsecureCacheWarning, match="tuning cache"):
        k, ops = _spmv()
        r = spcomp.tune(k, **FAST, **ops)
    assert not r.recorded


def test_cache_off(tune_dir, monkeypatch):
    monkeypatch.setenv("SPCOMP_TUNE_CACHE", "off")
    k, ops = _spmv()
    assert not spcomp.tune(k, **FAST, **ops).recorded


@pytest.mark.parametrize("data", [[["__class__"]], [["split", "i", "a", "b", 0]], [["reorder", "i"]],
                                  "reorder", [["unroll", "i", True]], [["vectorize", "i", 3]]])
def test_schedules_read_back_are_checked(data):
    with pytest.raises(ScheduleError):
        tuning.from_data(data)


def test_schedule_data_round_trips():
    s = Schedule().reorder("i", "k", "j").split("i", "i0", "i1", 8).parallelize("i0").vectorize("j", 4)
    assert tuning.from_data(json.loads(json.dumps(tuning.to_data(s)))) == s


def test_buckets():
    A = sp.random(100, 100, density=0.01, format="csr")
    assert tuning.bucket({"A": A, "x": np.zeros(100)}) == "A[100, 100]@1e-2 x[100]"
    assert tuning.density_bucket(0.0) == "0"


def test_plain_calls_never_tune(tune_dir):
    k, ops = _spmv()
    k(**ops)
    assert not tune_dir.exists() or not any(tune_dir.glob("*.json"))


def test_autotune_on_the_first_call(tune_dir, monkeypatch):
    monkeypatch.setenv("SPCOMP_AUTOTUNE", "1")
    import spcomp.tuner as tuner
    monkeypatch.setattr(tuner, "TIME_BUDGET", 0.0005)
    k, ops = _spmv()
    assert k.autotune
    got = k(**ops)
    assert not k.autotune and any(tune_dir.glob("*.json"))
    ref = spcomp.compile("y[i] = A[i,j] * x[j]", formats={"A": "csr"}, schedule=Schedule())(**ops)
    np.testing.assert_allclose(got, ref, rtol=1e-12)


KERNELS = [("y[i] = A[i,j] * x[j]", {"A": "csr"}),
           ("C[i,j] = A[i,k] * B[k,j]", {"A": "csr"}),
           ("y[i,j] = B[i,j,k] * c[k]", {"B": "csf"}),
           ("a = A[i,j] * A[i,j]", {"A": "csr"}),
           ("y[j] = A[i,j] * x[i]", {"A": "csr"}),
           ("C[i,j] = A[i,j] * B[i,j]", {"A": "csr", "B": "csr", "C": "csr"})]


@settings(max_examples=examples(30), deadline=None)
@given(case=st.sampled_from(KERNELS), pick=st.integers(0, 10 ** 6), seed=st.integers(0, 2 ** 16),
       threads=st.sampled_from([1, 2]))
def test_random_legal_schedules_give_the_default_result(case, pick, seed, threads):
    """Every candidate the lowerer accepts computes what the default schedule does
    (reassociated float sums: to rounding)."""
    from conftest import spcomp_threads
    expr, formats = case
    default = spcomp.compile(expr, formats=formats, schedule=Schedule())
    cands = candidates(default)
    schedule = cands[pick % len(cands)]
    try:
        k = spcomp.compile(expr, formats=formats, schedule=schedule)
    except (ScheduleError, spcomp.UnsupportedError):
        return
    ops = random_operands(default, density=0.4, seed=seed)
    with spcomp_threads(threads, min_work=0):
        got = k(**ops)
    want = default(**ops)
    dense = [np.asarray(v.to_numpy() if hasattr(v, "to_numpy") else v) for v in (got, want)]
    np.testing.assert_allclose(dense[0], dense[1], rtol=1e-12, atol=1e-12)
