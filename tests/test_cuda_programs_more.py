"""More CUDA program statements in the run's one launch (program_gpu_join.py).

A bitmap output (``b``, every stored level inserting at positions the host knows before
the launch) joins: its arrays are allocated like a dense output's and its threads write
their own slots. A serial ``cd`` output (dense levels under compressed ones) joins when no
later statement of the launch reads it: one thread appends its stand-in into bounded
arrays, and the host expands it after the launch. What stays apart says why (``program_gpu_join.apart_reason``); the
sampler (tests/cuda_program_sampler.py) tallies those reasons over random programs.
Results under cuda-sim against numpy.einsum and the statements run one by one; the
kernels compile with nvcc.
"""
from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp
from hypothesis import given, settings
from hypothesis import strategies as st

import spcomp
from spcomp import program_gpu
from spcomp.backends.cuda import nvcc
from spcomp.program_gpu_join import apart_reason
from spcomp.testing.check import densify

from conftest import assert_same_bits, examples
import cuda_program_sampler
from cuda_program_sampler import sample
from test_cuda_programs import fused_kernels, separately

M, N = 600, 40  # several blocks of 256 threads: the barriers are crossed for real
A = sp.random(M, N, density=0.2, format="csr", random_state=21)
X = np.linspace(-1, 1, M)
W = np.linspace(-2, 1, N)


@pytest.fixture(autouse=True)
def _several_blocks(monkeypatch):
    monkeypatch.setenv("SPCOMP_SIM_WORKERS", "4")


def _run(text, formats, outputs, ops):
    k = spcomp.compile(text, formats=formats, backend="cuda-sim", outputs=outputs)
    got = k(**ops)
    got = got if isinstance(got, dict) else {outputs[0]: got}
    fused = k.last_launches
    alone = separately(k, ops)
    alone = alone if isinstance(alone, dict) else {outputs[0]: alone}
    return k, got, fused, alone, k.last_launches


BITMAP = [  # (text, formats, outputs, operands, expected by einsum)
    ("t[i] = relu(x[i]); y[i] = t[i] * 2 + x[i]", {"x": "d", "t": "b"}, ["y", "t"], {"x": X},
     lambda: {"t": np.maximum(X, 0), "y": np.einsum("i->i", np.maximum(X, 0)) * 2 + X}),
    ("t[i] = relu(x[i]); y[i] = t[i] * 2 + x[i]", {"x": "d", "t": "b", "y": "b"}, ["y"], {"x": X},
     lambda: {"y": np.maximum(X, 0) * 2 + X}),
    ("t[j] = relu(w[j]); y[i] = A[i,j] * t[j]", {"w": "d", "t": "b", "A": "csr"}, ["y"], {"w": W, "A": A},
     lambda: {"y": np.einsum("ij,j->i", A.toarray(), np.maximum(W, 0))}),
    ("y[i] = A[i,j] * w[j]; t[i] = relu(y[i]); z = t[i] * x[i]", {"w": "d", "t": "b", "A": "csr"}, ["z", "t"],
     {"w": W, "A": A, "x": X},
     lambda: {"t": np.maximum(A.toarray() @ W, 0), "z": np.einsum("i,i->", np.maximum(A.toarray() @ W, 0), X)}),
]


@pytest.mark.parametrize("case", range(len(BITMAP)))
def test_a_bitmap_output_joins_the_launch(case):
    text, formats, outputs, ops, want = BITMAP[case]
    k, got, fused, alone, apart = _run(text, formats, outputs, ops)
    n = len(k.program.statements)
    assert fused == 1 and apart == n, k.loops
    assert "inserted into arrays of its whole size" in k.loops
    for name, w in want().items():
        assert np.allclose(densify(got[name]), w), name
        assert np.allclose(densify(alone[name]), densify(got[name])), name


def test_a_bitmap_output_agrees_bitwise_with_its_own_kernel():
    # the same entries (its map and values) as the statement run as a kernel of its own
    k, got, _f, alone, _a = _run("t[i] = relu(x[i]); y[i] = t[i] * 2", {"x": "d", "t": "b"}, ["t", "y"], {"x": X})
    g, w = got["t"], alone["t"]
    assert g.format == w.format
    for l, (gl, wl) in enumerate(zip(g.levels, w.levels)):
        for a in wl:
            assert np.array_equal(gl[a], wl[a]), (l, a)
    assert np.array_equal(g.vals, w.vals) and np.array_equal(got["y"], alone["y"])


@settings(max_examples=examples(6), deadline=None)
@given(st.integers(1, 700), st.floats(-1, 1), st.integers(0, 2**16))
def test_random_bitmaps_join(size, shift, seed):
    x = np.random.default_rng(seed).normal(size=size) + shift
    k, got, fused, alone, _a = _run("t[i] = relu(x[i]); u[i] = abs(t[i]) * x[i]; z = u[i] * t[i]",
                                    {"x": "d", "t": "b", "u": "b"}, ["z", "u"], {"x": x})
    t = np.maximum(x, 0)
    assert fused == 1
    assert np.allclose(densify(got["u"]), np.abs(t) * x) and np.isclose(got["z"], np.einsum("i,i->", np.abs(t) * x, t))
    assert np.allclose(densify(alone["u"]), densify(got["u"])) and np.isclose(alone["z"], got["z"])


@pytest.mark.parametrize("text", ["y[i] = A[i,j] * w[j]; t[i,j] = A[i,j] * y[i]",
                                  "t[i,j] = A[i,j] * 2; y[i] = A[i,j] * w[j]"])
def test_a_cd_output_no_later_statement_reads_joins(text):
    # appended by one thread into its stand-in's bounded arrays, expanded by the host after
    # the launch (as after a kernel of its own): array for array the same
    k, got, fused, alone, apart = _run(text, {"A": "csr", "t": "cd"}, ["t", "y"], {"A": A, "w": W})
    assert fused == 1 and apart == 2, k.loops
    d = A.toarray()
    y = np.einsum("ij,j->i", d, W)
    assert np.allclose(got["y"], y) and np.array_equal(got["y"], alone["y"])
    assert np.allclose(got["t"].to_numpy(), d * (y[:, None] if text.startswith("y") else 2))
    assert_same_bits(got["t"], alone["t"])


def test_a_reader_of_a_cd_output_stays_apart_with_its_reason(monkeypatch):
    # the reader would need the expanded arrays, which exist only after the launch
    monkeypatch.setattr(program_gpu, "plan_gpu", cuda_program_sampler._planned)
    k = spcomp.compile("t[i,j] = A[i,j] * 2; y[i] = t[i,j]", formats={"A": "csr", "t": "cd"}, backend="cuda-sim",
                       outputs=["y"])
    assert apart_reason(k.program.statements[0], k._split_kernels[0]) is None
    assert [kind for kind, _s, _r in k.segments] == ["kernel", "kernel"]
    assert cuda_program_sampler.apart_reasons(k) == [
        (1, "the statement after it does not join it"), (2, "it reads t, which the host expands only after the launch")]
    assert np.allclose(k(A=A), 2 * A.toarray().sum(axis=1)) and k.last_launches == 2


def test_sampled_programs_that_stay_apart_say_why():
    # (each compared with the reference and the statements run one by one)
    for case, launches, stmts, reasons in sample(3, check=True):
        if launches is None:
            continue
        assert all(why and "hooked" not in why for _j, why in reasons), str(case)
        assert launches <= stmts


@pytest.mark.skipif(not nvcc.nvcc_available(), reason="nvcc (the CUDA toolkit) is not installed")
def test_the_bitmap_kernel_compiles_with_nvcc():
    k = spcomp.compile("t[j] = relu(w[j]); y[i] = A[i,j] * t[j]", formats={"w": "d", "t": "b", "A": "csr"},
                       backend="cuda-sim", outputs=["y"])
    k(w=W, A=A)
    (seg,) = fused_kernels(k)
    for built in seg.built.values():
        assert set(nvcc.check_source(built.compiled[0], arch="sm_90")) == {built.function.name}
