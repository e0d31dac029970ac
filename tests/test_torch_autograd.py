"""spcomp.torch.function: kernels torch differentiates through the derived gradient
kernels (docs/autodiff.md) -- gradcheck in float64, eager and under torch.compile."""
from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp

import spcomp

torch = pytest.importorskip("torch")
st = pytest.importorskip("spcomp.torch")


def _csr_rows(m):
    return np.repeat(np.arange(m.shape[0]), np.diff(m.indptr))


@pytest.mark.parametrize("text, shapes", [
    ("Y[i,k] = A[i,j]*B[j,k]", {"A": (4, 3), "B": (3, 2)}),
    ("y[i] = A[i,j]/x[j] - x[i]", {"A": (3, 3), "x": (3,)}),
    ("s = a[i]*b[i] + c[j]", {"a": (3,), "b": (3,), "c": (2,)}),
    ("Y[j,i] = A[i,j] + A[j,i]", {"A": (3, 3)}),
    ("y[i] += A[i,j]*x[j]", {"A": (3, 4), "x": (4,), "y": (3,)}),
])
def test_gradcheck_dense(text, shapes):
    f = st.function(spcomp.compile(text))
    g = torch.Generator().manual_seed(0)
    args = {n: (torch.rand(s, generator=g, dtype=torch.float64) + 0.5).requires_grad_() for n, s in shapes.items()}
    names = list(args)
    assert torch.autograd.gradcheck(lambda *xs: f(**dict(zip(names, xs))), tuple(args.values()))


@pytest.mark.parametrize("fmt", ["csr", "csc", "coo"])
def test_sparse_operand_values_get_the_pattern_gradient(fmt):
    k = spcomp.compile("Y[i,k] = A[i,j]*B[j,k]", formats={"A": fmt})
    f = st.function(k)
    A = sp.random(6, 5, density=0.4, format="csr", random_state=0)
    lv = f.levels("A", A, requires_grad=True)
    B = torch.randn(5, 3, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(
        lambda vals, B: f(A=st.Levels(lv.arrays[:-1] + (vals,), lv.shape), B=B), (lv.arrays[-1], B))
    if fmt == "csr":  # the values' gradient is the dense gradient at the stored entries, in storage order
        dY = torch.randn(6, 3, dtype=torch.float64)
        f(A=lv, B=B).backward(dY)
        dense = dY @ B.detach().T
        np.testing.assert_allclose(lv.arrays[-1].grad.numpy(), dense.numpy()[_csr_rows(A), A.indices])


def test_torch_compile_fullgraph_backward():
    f = st.function(spcomp.compile("Y[i,k] = A[i,j]*B[j,k]", formats={"A": "csr"}))
    A = sp.random(6, 5, density=0.4, format="csr", random_state=1)
    lv = f.levels("A", A)
    vals = lv.arrays[-1].clone().requires_grad_()
    B = torch.randn(5, 3, dtype=torch.float64, requires_grad=True)

    def loss(vals, B):
        return (f(A=st.Levels(lv.arrays[:-1] + (vals,), lv.shape), B=B) ** 2).sum()

    eager = torch.autograd.grad(loss(vals, B), (vals, B))
    compiled = torch.autograd.grad(torch.compile(loss, fullgraph=True)(vals, B), (vals, B))
    for a, b in zip(eager, compiled):
        torch.testing.assert_close(a, b)


def test_only_needed_gradients_run():
    f = st.function(spcomp.compile("y[i] = A[i,j]*x[j]"))
    A = torch.randn(3, 4, dtype=torch.float64, requires_grad=True)
    x = torch.randn(4, dtype=torch.float64)
    f(A=A, x=x).sum().backward()
    torch.testing.assert_close(A.grad, x.expand(3, 4))
    assert x.grad is None


def test_trainable_sparse_linear_trains_its_stored_weights():
    torch.manual_seed(0)
    lin = torch.nn.Linear(12, 6)
    layer = st.TrainableSparseLinear.from_linear(lin, density=0.3)
    pattern = [getattr(layer, f"level{k}").clone() for k in range(layer._n_levels)]
    x = torch.randn(5, 12)
    target = torch.randn(5, 6)
    opt = torch.optim.SGD(layer.parameters(), lr=0.1)
    losses = []
    for _ in range(20):
        opt.zero_grad()
        loss = ((layer(x) - target) ** 2).mean()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.7 * losses[0]
    assert all(torch.equal(a, getattr(layer, f"level{k}")) for k, a in enumerate(pattern))  # pattern fixed
    # the values' gradient is the dense one at the stored entries
    w = torch.zeros(6, 12)
    lv = layer.weight_levels
    rows = torch.repeat_interleave(torch.arange(6), torch.diff(lv.arrays[0].long()))
    w[rows, lv.arrays[1].long()] = layer.values.detach()
    wd = w.clone().requires_grad_()
    ((x @ wd.T + layer.bias.detach() - target) ** 2).mean().backward()
    layer.values.grad = None
    ((layer(x) - target) ** 2).mean().backward()
    torch.testing.assert_close(layer.values.grad, wd.grad[rows, lv.arrays[1].long()], rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("gated", [False, True])
def test_twell_ffn_gradients_match_dense_torch(gated):
    torch.manual_seed(1)
    H_, F_, T = 8, 32, 6
    up, down = torch.nn.Linear(H_, F_), torch.nn.Linear(F_, H_)
    gate = torch.nn.Linear(H_, F_) if gated else None
    ffn = st.TwellFFN.from_linears(up, down, gate=gate, B=8, K=2)   # K grows on overflow
    x = torch.randn(T, H_, requires_grad=True)
    out = ffn(x)
    loss = (out ** 2).sum() + 0.5 * ffn.l1
    loss.backward()

    xd = x.detach().clone().requires_grad_()
    ref = {n: p.detach().clone().requires_grad_() for n, p in ffn.named_parameters()}
    act = xd @ ref["w_gate" if gated else "w_up"].T + ref["b_gate" if gated else "b_up"]
    h = torch.relu(act)
    inner = h * (xd @ ref["w_up"].T + ref["b_up"]) if gated else h
    out_ref = inner @ ref["w_down_t"] + ref["b_down"]
    ((out_ref ** 2).sum() + 0.5 * h.mean()).backward()

    torch.testing.assert_close(out, out_ref, rtol=1e-4, atol=1e-5)
    assert ffn.sparsity == pytest.approx(float((h == 0).float().mean()))
    torch.testing.assert_close(x.grad, xd.grad, rtol=1e-4, atol=1e-5)
    for n, p in ffn.named_parameters():
        torch.testing.assert_close(p.grad, ref[n].grad, rtol=1e-4, atol=1e-5, msg=n)


def test_sparse_linear_module_has_a_trainable_twin():
    torch.manual_seed(2)
    lin = torch.nn.Linear(10, 4)
    inference = st.SparseLinear.from_linear(lin, density=0.5)
    twin = inference.trainable()
    x = torch.randn(3, 10)
    with torch.no_grad():
        torch.testing.assert_close(twin(x), inference(x), rtol=1e-5, atol=1e-6)
    twin(x).sum().backward()
    assert twin.values.grad is not None and twin.values.grad.shape == twin.values.shape
