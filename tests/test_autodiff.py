"""spcomp.vjp: derived gradient statements checked against finite differences and
torch autograd (docs/autodiff.md), on examples and on random expressions."""
import numpy as np
import pytest
import scipy.sparse as sp
from hypothesis import HealthCheck, given, settings, strategies as st

import spcomp
from spcomp.errors import NotationError
from spcomp.frontend import to_notation
from spcomp.notation import accesses
from spcomp.testing import expressions, operands
from spcomp.testing.strategies import DEFAULT_FUNCTIONS
from spcomp.testing.check import densify
from spcomp.testing.gradients import dense_inputs, jitter, numeric_vjp, torch_vjp


def check_vjp(text, formats=None, ops=None, seed=0, dense=False, torch_too=True, cotangent=None):
    """Run spcomp.vjp on ``ops`` and compare every gradient with finite differences
    (and torch autograd); returns the VJP."""
    rng = np.random.default_rng(seed)
    notation = to_notation(text, formats=formats)
    v = spcomp.vjp(text, formats=formats, dense=dense)
    arrays, masks = dense_inputs(notation, ops)
    if cotangent is None:
        shape = tuple(np.shape(spcomp.testing.reference(notation, arrays, masks=masks)))
        cotangent = rng.standard_normal(shape)
    grads = v(cotangent, **ops)
    names = list(v.gradients)
    dense_names = names if dense is True else list(dense or ())
    expect_t = torch_vjp(notation, arrays, masks, cotangent, names, dense=dense_names) if torch_too else {}
    for name in names:
        got = densify(grads[name])
        fd = numeric_vjp(notation, arrays, masks, cotangent, name, dense=name in dense_names)
        np.testing.assert_allclose(got, fd, rtol=1e-5, atol=1e-6, err_msg=f"{text}: d{name} vs finite differences")
        if torch_too:
            np.testing.assert_allclose(got, expect_t[name], rtol=1e-9, atol=1e-9,
                                       err_msg=f"{text}: d{name} vs torch")
    return v


RNG = np.random.default_rng(7)


def _dense(*shape):
    return RNG.standard_normal(shape)


def test_matmul_statements_and_values():
    v = spcomp.vjp("Y[i,k] = A[i,j]*B[j,k]")
    assert v.expressions == {"A": ["dA[i,j] = dY[i,k] * B[j,k]"], "B": ["dB[j,k] = dY[i,k] * A[i,j]"]}
    assert v.index_notation.splitlines() == ["dA[i,j] = sum(k, dY[i,k] * B[j,k])",
                                             "dB[j,k] = sum(i, dY[i,k] * A[i,j])"]
    check_vjp("Y[i,k] = A[i,j]*B[j,k]", ops={"A": _dense(3, 4), "B": _dense(4, 5)})


@pytest.mark.parametrize("text, shapes", [
    ("y[i] = A[i,j]/x[j] - x[i]", {"A": (4, 4), "x": (4,)}),         # division, repeated operand
    ("Y[j,i] = A[i,j] + 2*B[i,j]", {"A": (3, 2), "B": (3, 2)}),       # transposed output, literal
    ("Y[i,k] = a[i]", {"a": (3,), "_out": (3, 2)}),                   # broadcast output
    ("s = A[i,i]", {"A": (4, 4)}),                                    # diagonal
    ("s = A[i,i] * A[i,j] * x[j]", {"A": (3, 3), "x": (3,)}),         # diagonal and plain parts
    ("Y[i,k] = A[i,j]*A[j,k]", {"A": (3, 3)}),                        # gradients add
    ("y[i] = (A[i] + B[k]) * (C[k] + D[i])", {"A": (3,), "B": (2,), "C": (2,), "D": (3,)}),
    ("y[i] = alpha * a[i] - -b[i] / beta", {"alpha": (), "a": (3,), "beta": (), "b": (3,)}),
    ("y[i] += A[i,j] * x[j]", {"A": (3, 4), "x": (4,)}),              # += output
])
def test_examples_dense(text, shapes):
    out = shapes.pop("_out", None)
    ops = {n: (float(_dense()) if not s else _dense(*s)) for n, s in shapes.items()}
    check_vjp(text, ops=ops, cotangent=None if out is None else _dense(*out))


def test_text_is_faithful_or_explicit():
    v = spcomp.vjp("y[i] = (A[i] + B[k]) * (C[k] + D[i])")
    # summing k over (C[k] + D[i]) is not the frontend's reading of that text: printed explicitly
    assert v.expressions["A"] == ["dA[i] = dy[i] * sum(k, (C[k] + D[i]))"]
    assert v.expressions["B"] == ["dB[k] = dy[i] * (C[k] + D[i])"]


@pytest.mark.parametrize("fmt", ["csr", "csc", "coo", "dc:1,0", "p(2,2)p(2,1)" ])
def test_sparse_gradient_is_at_the_stored_pattern(fmt):
    A = sp.random(6, 8, density=0.3, format="csr", random_state=3).toarray()
    if fmt.startswith("p"):
        from spcomp.testing import fit_packed
        A = fit_packed(A, spcomp.Format.parse(fmt))
    At = spcomp.Tensor.from_numpy(A, fmt)
    B, dY = _dense(8, 5), _dense(6, 5)
    v = check_vjp("Y[i,k] = A[i,j]*B[j,k]", formats={"A": fmt}, ops={"A": At, "B": B}, cotangent=dY)
    assert "A_pattern[i,j]" in v.expressions["A"][0]
    g = v(dY, A=At, B=B)["A"]
    assert g.format == At.format and g.nnz == At.nnz  # the operand's format and pattern
    np.testing.assert_allclose(g.to_numpy(), np.where(At.to_numpy() != 0, dY @ B.T, 0.0), atol=1e-12)
    dense = spcomp.vjp("Y[i,k] = A[i,j]*B[j,k]", formats={"A": fmt}, dense=True)(dY, A=At, B=B)["A"]
    np.testing.assert_allclose(dense, dY @ B.T, atol=1e-12)


def test_sparse_output_gradient_flows_through_stored_positions():
    # Y = A * B elementwise into csr: the cotangent is read in Y's format
    A = sp.random(5, 6, density=0.4, format="csr", random_state=1)
    B = _dense(5, 6)
    v = spcomp.vjp("Y[i,j] = A[i,j] * B[i,j]", formats={"A": "csr", "Y": "csr"})
    assert v.cotangent.format == spcomp.Format.parse("csr", ndim=2)
    Y = spcomp.compile("Y[i,j] = A[i,j] * B[i,j]", formats={"A": "csr", "Y": "csr"})(A=A, B=B)
    dY = spcomp.Tensor.from_arrays(Y.format, Y.shape, Y.levels, RNG.standard_normal(Y.vals.shape))
    g = v(dY, A=A, B=B)
    mask = A.toarray() != 0
    np.testing.assert_allclose(g["B"], np.where(mask, dY.to_numpy() * A.toarray(), 0.0), atol=1e-12)


def test_second_derivatives():
    # Y = A*B: d/dA <dY, Y> = dY B^T; differentiating that statement wrt B gives back dY's pairing
    k = spcomp.compile("Y[i,k] = A[i,j]*B[j,k]")
    first = k.vjp()
    stmt = first.statements["A"][0]
    second = spcomp.autodiff.VJP(stmt, ["B", "dY"], target=k.target, kernel_class=type(k))
    assert second.expressions == {"B": ["dB[j,k] = ddA[i,j] * dY[i,k]"],
                                  "dY": ["ddY[i,k] = ddA[i,j] * B[j,k]"]}
    rng = np.random.default_rng(1)
    B, dY, W = rng.standard_normal((4, 5)), rng.standard_normal((3, 5)), rng.standard_normal((3, 4))
    g = second(W, B=B, dY=dY)
    np.testing.assert_allclose(g["B"], W.T @ dY, atol=1e-12)
    np.testing.assert_allclose(g["dY"], W @ B, atol=1e-12)


def test_refusals():
    with pytest.raises(NotationError, match="wrt names 'Z'"):
        spcomp.vjp("y[i] = A[i,j]*x[j]", wrt=["Z"])


def _random_case(data, functions=()):
    case = data.draw(expressions(max_operands=3, max_order=2, functions=functions, output_format=False,
                                 divisions=bool(functions)),
                     label="case")
    ops = data.draw(operands(case), label="operands")
    seed = data.draw(st.integers(0, 2**16), label="seed")
    return case, jitter(ops, np.random.default_rng(seed), case.output), seed


@settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck))
@given(st.data())
def test_random_expressions_against_finite_differences_and_torch(data):
    case, ops, seed = _random_case(data)
    dense = data.draw(st.booleans(), label="dense")
    check_vjp(case.text, case.formats, ops, seed=seed, dense=dense)


# piecewise-constant functions have zero derivatives almost everywhere but steps that a
# finite difference may straddle; their zero gradients are tested on their own below
SMOOTH_ALMOST_EVERYWHERE = tuple(f for f in DEFAULT_FUNCTIONS
                                 if f not in ("sign", "floor", "ceil", "round", "trunc", "heaviside", "mod"))


@settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck))
@given(st.data())
def test_random_expressions_with_functions(data):
    case, ops, seed = _random_case(data, functions=SMOOTH_ALMOST_EVERYWHERE)
    check_vjp(case.text, case.formats, ops, seed=seed, dense=data.draw(st.booleans(), label="dense"))


def check_notation_vjp(notation, ops, kernel, seed=0):
    """check_vjp for a statement given as notation (a derived one), dense operands."""
    from spcomp.autodiff import VJP
    rng = np.random.default_rng(seed)
    v = VJP(notation, target=kernel.target, kernel_class=type(kernel))
    arrays, masks = dense_inputs(notation, ops)
    out_shape = tuple(np.shape(spcomp.testing.reference(notation, arrays, masks=masks)))
    cot = rng.standard_normal(out_shape)
    grads = v(cot, **ops)
    expect_t = torch_vjp(notation, arrays, masks, cot, list(v.gradients))
    for name in v.gradients:
        got = densify(grads[name])
        fd = numeric_vjp(notation, arrays, masks, cot, name)
        np.testing.assert_allclose(got, fd, rtol=1e-5, atol=1e-6, err_msg=f"{notation!r}: d{name} (finite diff)")
        np.testing.assert_allclose(got, expect_t[name], rtol=1e-9, atol=1e-9, err_msg=f"{notation!r}: d{name} (torch)")
    return v


@pytest.mark.parametrize("text, wrt, shapes", [
    ("Y[i,k] = A[i,j]*B[j,k]", "A", {"A": (3, 4), "B": (4, 2)}),
    ("y[i] = tanh(A[i,j]*x[j]) * b[i]", "x", {"A": (3, 4), "x": (4,), "b": (3,)}),
    ("s = exp(a[i]) * b[i] + sigmoid(c[i])", "a", {"a": (4,), "b": (4,), "c": (4,)}),
    ("y[i] = a[i] / (b[i]*b[i] + 1) - silu(a[i])", "b", {"a": (3,), "b": (3,)}),
    ("Y[i,j] = A[i] + B[i,k] + C[j,k]", "A", {"A": (3,), "B": (3, 2), "C": (2, 2)}),
])
def test_second_derivatives_are_gradients_of_the_derived_statement(text, wrt, shapes):
    k = spcomp.compile(text)
    first = k.vjp(wrt=wrt)
    stmt = first.statements[wrt][0]
    ops = {n: (float(_dense()) if not s else _dense(*s)) for n, s in shapes.items()}
    out_shape = tuple(np.shape(spcomp.testing.reference(k.notation, ops)))
    ops = {n: v for n, v in ops.items() if n in stmt.tensors}
    ops[first.cotangent.name] = _dense(*out_shape) if out_shape else float(_dense())
    sizes = {i.name: shapes[a.tensor.name][d] for a in accesses(k.notation.rhs) for d, i in enumerate(a.indices)}
    for scalar, index in (first.gradients[wrt].sizes or {}).items():  # nk: the size of k
        ops[scalar] = float(sizes[index])
    check_notation_vjp(stmt, ops, k)


@pytest.mark.parametrize("fmt", ["twell(B=4,K=4)", "csr"])
def test_relu_into_a_zero_dropping_output_needs_no_mask(fmt):
    text = "H[t,n] = relu(X[t,k]*W[n,k] + b[n])"
    k = spcomp.compile(text, formats={"H": fmt})
    assert k.lowered.output.drops_zeros
    v = k.vjp()
    assert v.expressions == {"X": ["dX[t,k] = dH[t,n] * W[n,k]"], "W": ["dW[n,k] = dH[t,n] * X[t,k]"],
                             "b": ["db[n] = dH[t,n]"]}
    X, W, b = _dense(5, 3), _dense(8, 3), _dense(8)
    H = k(X=X, W=W, b=b)
    stored = H.to_numpy() != 0
    assert 0 < stored.sum() < stored.size
    # the cotangent at H's pattern (the slots TwELL leaves unused stay 0)
    dH = type(H)(H.format, H.shape, H.levels, np.where(H.vals != 0, RNG.standard_normal(H.vals.shape), 0.0))
    g = v(dH, X=X, W=W, b=b)
    # the dense derivative with the cotangent restricted to the stored positions
    notation = to_notation(text)
    expect = torch_vjp(notation, {"X": X, "W": W, "b": b}, {}, np.where(stored, dH.to_numpy(), 0.0), ["X", "W", "b"])
    for name in "XWb":
        np.testing.assert_allclose(g[name], expect[name], rtol=1e-10, atol=1e-12)


def test_relu_into_a_dense_output_keeps_its_mask():
    v = spcomp.vjp("H[t,n] = relu(X[t,k]*W[n,k])")
    assert "heaviside(" in v.expressions["X"][0]


@pytest.mark.parametrize("f", ["sign", "floor", "round", "heaviside(C[j], 0.5)", "mod(C[j], 3)"])
def test_piecewise_constant_functions_pass_no_gradient_and_keep_shapes(f):
    call = f if "(" in f else f"{f}(C[j])"
    v = spcomp.vjp(f"Y[i,j] = A[i] * B[i] * {call}")
    A, B, C = _dense(3), _dense(3), _dense(4) + 0.1
    dY = _dense(3, 4)
    grads = v(dY, A=A, B=B, C=C)
    with np.errstate(all="ignore"):
        fC = spcomp.testing.reference(spcomp.compile(f"y[j] = {call}").notation, {"C": C})
    if f.startswith("mod"):
        np.testing.assert_allclose(grads["C"], np.zeros(4) + (dY * (A * B)[:, None]).sum(0), rtol=1e-12)
    else:
        np.testing.assert_array_equal(grads["C"], np.zeros(4))
    np.testing.assert_allclose(grads["A"], (dY * fC[None, :]).sum(1) * B, rtol=1e-12)
