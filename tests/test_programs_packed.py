"""Programs whose temporaries are packed blocks (twell): one native function.

A statement writing a packed-block tensor (``twell(B, K)``: per block of ``B``
columns a count and ``K`` slots, arrays the runtime allocates) joins the fused
function like a one-pass sparse one; the statements after it read its blocks from
the same arrays. Random gate-then-use programs are checked against numpy.einsum
at 1 and 2 threads; a block with more nonzeros than ``K`` raises
PackedOverflowError naming the tensor, as a kernel of its own does.
"""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import spcomp
from spcomp.errors import PackedOverflowError
from spcomp.testing.check import densify

from conftest import examples, spcomp_threads

GATES = [
    ("H[t,n] = relu(X[t,k]*W[n,k] + b[n])", lambda e: np.maximum(e["X"] @ e["W"].T + e["b"], 0)),
    ("H[t,n] = relu(E[t,n] - 0.5)", lambda e: np.maximum(e["E"] - 0.5, 0)),
]
USES = [
    ("O[t,d] = H[t,n]*Wd[n,d]", "O", lambda e: e["H"] @ e["Wd"]),
    ("y[t] = H[t,n]*c[n]", "y", lambda e: e["H"] @ e["c"]),
    ("O[t,d] = relu(H[t,n]*Wd[n,d] + bd[d])", "O", lambda e: np.maximum(e["H"] @ e["Wd"] + e["bd"], 0)),
]


def _largest_block(H, B):
    cols = H.shape[1]
    return max((int((H[:, s:s + B] != 0).sum(axis=1).max()) for s in range(0, cols, B)), default=0) if H.size else 0


@settings(max_examples=examples(25), deadline=None)
@given(st.data())
def test_packed_temporaries_join_the_function(data):
    gate, gate_ref = data.draw(st.sampled_from(GATES), label="gate")
    use, out, use_ref = data.draw(st.sampled_from(USES), label="use")
    B = data.draw(st.sampled_from([4, 8]), label="B")
    K = data.draw(st.integers(1, B), label="K")
    returned = data.draw(st.booleans(), label="H returned")
    T, N, Kin, D = (data.draw(st.integers(1, 12), label=x) for x in "TNKD")
    seed = data.draw(st.integers(0, 2 ** 16), label="seed")
    rng = np.random.default_rng(seed)
    ops = {"X": rng.standard_normal((T, Kin)), "W": rng.standard_normal((N, Kin)), "b": rng.standard_normal(N) - 1,
           "E": rng.random((T, N)), "Wd": rng.standard_normal((N, D)), "c": rng.standard_normal(N),
           "bd": rng.standard_normal(D)}
    outputs = ["H", out] if returned else [out]
    k = spcomp.compile(f"{gate}\n{use}", formats={"H": f"twell(B={B},K={K})"}, outputs=outputs)
    assert k.launches == 1 and "# H: packed blocks, filled inside the function" in k.loops, k.loops
    used = {n: v for n, v in ops.items() if n in k.inputs}
    env = dict(used)
    env["H"] = gate_ref(env)
    env[out] = use_ref(env)
    for threads in (1, 2):
        with spcomp_threads(threads, min_work=0):
            if _largest_block(env["H"], B) > K:
                with pytest.raises(PackedOverflowError, match="output H"):
                    k(**used)
                continue
            got = k(**used)
        got = got if isinstance(got, dict) else {out: got}
        assert np.allclose(got[out], env[out], rtol=1e-10, atol=1e-10), (gate, use, threads)
        if returned:
            assert np.allclose(densify(got["H"]), env["H"], rtol=1e-10, atol=1e-10)
        assert k.last_launches == 1
    if "X[" not in gate:   # an element-wise gate runs on threads: by chunks of rows, packed blocks and all
        assert "each thread's chunk of rows" in k.loops
