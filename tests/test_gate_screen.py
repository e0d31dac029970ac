"""The ReLU gate's nonzeros by a bfloat16 screen and a float32 recompute (spcomp/torch/gate_screen.py).

The claim: an entry the screen leaves out has a float32 pre-activation ``<= 0``
whatever order float32 sums in. So against float64: every entry whose exact
value is positive by more than float32's summation error is kept, every kept
entry is within that error of being positive, and kept values are float32's.
Adversarial data put many entries within rounding of zero (the bias cancels the
product exactly in float64), at every scale, with infinities and NaN.
"""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

torch = pytest.importorskip("torch")
screen = pytest.importorskip("spcomp.torch.gate_screen")

from conftest import examples, spcomp_threads  # noqa: E402

pytestmark = pytest.mark.skipif(not screen.accumulates_in_float32(),
                                reason="this torch build's bfloat16 matrix product does not sum in float32")


def _exact(x, w, b):
    """float64 pre-activations (tokens, ffn) and their float32 summation error bound."""
    g = x.astype(np.float64) @ w.astype(np.float64).T + b.astype(np.float64)
    s = np.abs(x).astype(np.float64) @ np.abs(w).astype(np.float64).T
    err = 2 * screen._gamma(x.shape[1] + 1) * s + 4 * 2.0 ** -24 * np.abs(b.astype(np.float64))
    return g, err


def _check(x, w, b, threads=1):
    with spcomp_threads(threads):
        H = screen.GateScreen(w, b)(x).to_numpy()
    g, err = _exact(x, w, b)
    kept = H != 0
    finite = np.isfinite(g)
    assert not np.any(finite & (g > err) & ~kept), "a clearly positive entry was screened out"
    assert not np.any(finite & kept & (g < -err)), "a clearly negative entry was kept"
    both = finite & kept
    np.testing.assert_array_less(np.abs(H[both] - g[both]), err[both] + 1e-30 + 1e-6 * np.abs(g[both]))
    return H, g


@pytest.mark.parametrize("threads", [1, 2])
@settings(max_examples=examples(30), deadline=None)
@given(tokens=st.integers(1, 20), ffn=st.integers(1, 70), hidden=st.integers(1, 300),
       scale=st.sampled_from([1e-30, 1e-3, 1.0, 1e3, 1e25]), sparsity=st.floats(0.5, 0.999),
       cancel=st.floats(0.0, 1.0), seed=st.integers(0, 2**31 - 1))
def test_screen_keeps_what_float32_keeps(threads, tokens, ffn, hidden, scale, sparsity, cancel, seed):
    rng = np.random.default_rng(seed)
    x = (rng.standard_normal((tokens, hidden)) * scale).astype(np.float32)
    w = (rng.standard_normal((ffn, hidden)) / np.sqrt(hidden)).astype(np.float32)
    pre = x.astype(np.float64) @ w.astype(np.float64).T
    b = (-np.quantile(pre, sparsity, axis=0)).astype(np.float32)
    # entries made to cancel: for a fraction of the columns the bias is minus one token's
    # exact product, so that entry sits within rounding of zero
    t0 = rng.integers(0, tokens)
    cols = rng.random(ffn) < cancel
    b[cols] = (-pre[t0, cols]).astype(np.float32)
    _check(x, w, b, threads)


def test_the_real_shape_matches_the_float32_gate():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((16, 2048)).astype(np.float32)
    w = (rng.standard_normal((1024, 2048)) / 45).astype(np.float32)
    b = np.full(1024, -np.quantile(x @ w.T, 0.995), np.float32)
    H, g = _check(x, w, b)
    assert (H != 0).sum() == (g > 0).sum() > 0


def test_infinities_and_nan_keep_their_entries():
    rng = np.random.default_rng(1)
    x = rng.standard_normal((6, 40)).astype(np.float32)
    w = rng.standard_normal((9, 40)).astype(np.float32)
    b = np.full(9, -100.0, np.float32)  # every finite entry is negative
    x[1, 3] = np.inf
    x[2, 5] = np.nan
    w[4, 7] = -np.inf
    H = screen.GateScreen(w, b)(x).to_numpy()
    with np.errstate(invalid="ignore", over="ignore"):
        ref = np.maximum(x.astype(np.float64) @ w.astype(np.float64).T + b, 0)
    special = ~np.isfinite(ref) | (ref > 0)
    assert np.array_equal(np.isnan(H[special]), np.isnan(ref[special]))
    assert np.all(H[np.isposinf(ref)] == np.inf)
    assert not np.any(H[np.isfinite(ref) & (ref == 0)])


def test_a_bfloat16_accumulator_is_detected(monkeypatch):
    """The screen's bound needs float32 sums; the probe's own arithmetic says 256 for a
    bfloat16 accumulator."""
    screen.accumulates_in_float32.cache_clear()
    real_mm = torch.mm
    monkeypatch.setattr(torch, "mm", lambda a, b: torch.full((a.shape[0], b.shape[1]), 256.0,
                                                             dtype=torch.bfloat16))
    try:
        assert not screen.accumulates_in_float32()
    finally:
        monkeypatch.setattr(torch, "mm", real_mm)
        screen.accumulates_in_float32.cache_clear()
    assert screen.accumulates_in_float32()


def test_subnormal_weights_against_large_tokens_keep_their_entries():
    """bfloat16 subnormals may be read as zero by the matrix units: the bound's
    absolute terms cover that (a weight row of 1e-39 against tokens of 1e6 adds
    2e-30, which a bias of -1.5e-30 leaves positive)."""
    x = np.full((3, 2048), 1e6, np.float32)
    w = np.full((4, 2048), 1e-39, np.float32)
    w[1:] = -1.0  # clearly negative rows beside it
    b = np.full(4, -1.5e-30, np.float32)
    H, g = _check(x, w, b)
    assert np.all(H[:, 0] > 0) and not np.any(H[:, 1:])
