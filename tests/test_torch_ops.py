"""Kernels as torch custom operators (spcomp/torch/ops.py): eager results equal the
kernel's, torch.compile(fullgraph=True) traces through them, torch.export keeps one
node per kernel, and the fake implementation's shapes and strides match the real ones."""
from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp

import spcomp
from spcomp.errors import OperandError

torch = pytest.importorskip("torch")
st = pytest.importorskip("spcomp.torch")
pytestmark = pytest.mark.filterwarnings("ignore:Sparse CSR tensor support is in beta state",
                                        "ignore:Sparse invariant checks")


def spmv_kernel():
    return spcomp.compile("y[i] = W[i,j] * x[j]", formats={"W": "csr"}, dtype="float32")


def sparse_weight(m=30, n=20, seed=0):
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(m, n, generator=g)
    w[torch.rand(m, n, generator=g) > 0.3] = 0
    return w


class GraphCounter:
    """A torch.compile backend that records the graphs it is given and runs them as traced."""

    def __init__(self):
        self.graphs = []

    def __call__(self, gm, example_inputs):
        self.graphs.append(gm)
        return gm.forward

    def targets(self):
        return [n.target for g in self.graphs for n in g.graph.nodes if n.op == "call_function"]


def test_the_operator_runs_the_kernel_and_has_a_stable_name():
    k = spmv_kernel()
    spmv = st.op(k)
    w = sparse_weight()
    x = torch.randn(20)
    y = spmv(W=w.to_sparse_csr(), x=x)
    np.testing.assert_array_equal(y.numpy(), k(W=sp.csr_matrix(w.numpy()), x=x.numpy()))
    spcomp.clear_cache()
    again = st.op(spmv_kernel())  # another Kernel object for the same kernel: the same operator
    assert again is spmv and again.name == spmv.name and again.name.startswith("spcomp::k_")
    other = st.op(spcomp.compile("y[i] = W[i,j] * x[j]", formats={"W": "csc"}, dtype="float32"))
    assert other.name != spmv.name
    levels = spmv.levels("W", w.to_sparse_csr())
    np.testing.assert_array_equal(spmv(W=levels, x=x).numpy(), y.numpy())


def test_torch_compile_fullgraph_traces_through_the_operator():
    spmv = st.op(spmv_kernel())
    w = sparse_weight()
    levels = spmv.levels("W", w.to_sparse_csr())

    class Model(torch.nn.Module):
        def __init__(self):
            super().__init__()
            for i, a in enumerate(levels.arrays):
                self.register_buffer(f"w{i}", a)

        def forward(self, x):
            W = st.Levels((self.w0, self.w1, self.w2), levels.shape)
            return torch.relu(spmv(W=W, x=x * 2)) + 1

    model = Model()
    counter = GraphCounter()
    compiled = torch.compile(model, backend=counter, fullgraph=True)
    x = torch.randn(20)
    np.testing.assert_allclose(compiled(x).numpy(), (torch.relu(w @ (2 * x)) + 1).numpy(), rtol=1e-5, atol=1e-5)
    assert len(counter.graphs) == 1
    assert spmv.packet in counter.targets()
    ep = torch.export.export(model, (x,))
    calls = [n for n in ep.graph.nodes if n.op == "call_function" and n.target == spmv.packet]
    assert len(calls) == 1
    np.testing.assert_allclose(ep.module()(x).numpy(), model(x).numpy(), rtol=1e-6)


def test_the_fake_gives_the_real_shape_dtype_and_strides():
    k = spcomp.compile("Y[t,o] = X[t,i] * W[o,i]", formats={"W": "csr", "X": "dd:1,0", "Y": "dd:1,0"},
                       dtype="float32")
    lin = st.op(k)
    w = sparse_weight(12, 8)
    X = torch.randn(5, 8)
    args = lin.flatten({"W": w.to_sparse_csr(), "X": X})
    real = lin.packet(*args)
    from torch._subclasses.fake_tensor import FakeTensorMode
    with FakeTensorMode() as mode:
        fake = lin.packet([mode.from_tensor(a) for a in args[0]], args[1])
    assert (tuple(fake.shape), fake.stride(), fake.dtype) == (tuple(real.shape), real.stride(), real.dtype)
    assert real.stride() == (1, 5)  # the output is stored column-major, as its format says
    np.testing.assert_allclose(real.numpy(), X.numpy() @ w.numpy().T, rtol=1e-5, atol=1e-5)


def test_accumulating_kernels_are_functional_and_sparse_outputs_are_refused():
    k = spcomp.compile("y[i] += W[i,j] * x[j]", formats={"W": "csr"}, dtype="float32")
    acc = st.op(k)
    w, x, y0 = sparse_weight(), torch.randn(20), torch.ones(30)
    y = acc(W=w.to_sparse_csr(), x=x, y=y0)
    np.testing.assert_allclose(y.numpy(), 1 + (w @ x).numpy(), rtol=1e-5, atol=1e-5)
    assert torch.equal(y0, torch.ones(30))  # the given output is not changed
    with pytest.raises(OperandError, match="dense or scalar outputs"):
        st.op(spcomp.compile("C[i,j] = A[i,j] * B[i,j]", formats={"A": "csr", "B": "csr", "C": "csr"}))
    with pytest.raises(OperandError, match="missing x"):
        acc(W=w.to_sparse_csr(), y=y0)


def test_sparse_operands_in_the_operator_are_validated_once_and_again_when_changed():
    spmv = st.op(spmv_kernel())
    w = sparse_weight()
    levels = spmv.levels("W", w.to_sparse_csr())
    x = torch.randn(20)
    spmv(W=levels, x=x)
    cached = next(iter(spmv._cache.values()))[2]
    spmv(W=levels, x=x)
    assert next(iter(spmv._cache.values()))[2] is cached
    levels.arrays[1][0] = 10_000  # a column out of range, written in place: validated again, refused
    with pytest.raises(spcomp.InvalidTensorError):
        spmv(W=levels, x=x)


def test_docs_torch_md_runs(tmp_path):
    """docs/torch.md's python blocks run and print what the page shows (the conventions
    of tests/test_docs.py; ``python tests/test_docs.py --update docs/torch.md`` refreshes)."""
    from test_docs import parse, run_blocks
    results = run_blocks(["docs/torch.md"], tmp_path)
    blocks = [b for b in parse("docs/torch.md") if not b.skip]
    assert blocks
    for block in blocks:
        printed, error = results[block.id]
        assert error is None, f"{block.id} raised:\n{error}"
        if block.expected is not None:
            got = [line.rstrip() for line in printed.rstrip("\n").splitlines()]
            assert got == [line.rstrip() for line in block.expected.rstrip("\n").splitlines()], block.id
