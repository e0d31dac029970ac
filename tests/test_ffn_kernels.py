"""The three FFN kernels (TwELL gate+ReLU+pack, down projection, fused up+down) in
float32 and bfloat16, on the CPU and on the CUDA C run by cuda-sim, against NumPy."""
import shutil

import numpy as np
import pytest

import spcomp
from spcomp.testing import check_kernel

FFN = [
    ("H[t,n] = relu(X[t,k] * Wg[n,k])", {"H": "twell(B=8,K=8)"}, {"t": 6, "k": 7, "n": 21}),
    ("O[t,d] = H[t,n] * Wd[n,d]", {"H": "twell(B=8,K=4)"}, {"t": 6, "n": 21, "d": 5}),
    ("O[t,d] = H[t,n] * X[t,k] * Wu[n,k] * Wd[n,d]", {"H": "twell(B=8,K=4)"}, {"t": 6, "n": 21, "k": 7, "d": 5}),
]
BACKENDS = ["cpu", pytest.param("cuda-sim", marks=pytest.mark.skipif(
    shutil.which("g++") is None, reason="cuda-sim needs a host C++ compiler (g++)"))]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
@pytest.mark.parametrize("expr,formats,sizes", FFN, ids=["gate", "down", "fused"])
def test_ffn_kernel(expr, formats, sizes, dtype, backend):
    r = check_kernel(expr, formats, dtype=dtype, sizes=sizes, density=0.3, backend=backend)
    out = r.result
    want = np.dtype(spcomp.runtime.plan.np_dtype(dtype))
    got = out.dtype if hasattr(out, "dtype") else None
    assert got == want


def test_fused_kernel_hoists_the_up_projection():
    """The dot product over k is computed once per stored (t, n), before the d loop."""
    k = spcomp.compile("O[t,d] = H[t,n] * X[t,k] * Wu[n,k] * Wd[n,d]", formats={"H": "twell"},
                       dtype="float32")
    lines = k.loops.splitlines()
    tk = next(i for i, line in enumerate(lines) if line.strip().startswith("tk ="))
    d_loop = next(i for i, line in enumerate(lines) if line.strip().startswith("for d"))
    assert tk < d_loop
    slow = spcomp.compile("O[t,d] = H[t,n] * X[t,k] * Wu[n,k] * Wd[n,d]", formats={"H": "twell"},
                          dtype="float32", schedule=spcomp.Schedule().no_precompute())
    lines = slow.loops.splitlines()
    tk = next(i for i, line in enumerate(lines) if line.strip().startswith("tk ="))
    d_loop = next(i for i, line in enumerate(lines) if line.strip().startswith("for d"))
    assert tk > d_loop  # without precompute the dot product is redone for every d
