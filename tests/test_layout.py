"""Dense operands the innermost loop would read across rows are copied to a layout
it reads contiguously; the result is unchanged and no warning is raised."""
import warnings

import numpy as np
import scipy.sparse as sp

import spcomp
from spcomp.testing import check_kernel


def test_sddmm_reads_a_transposed_copy_of_e():
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a layout choice is not a TranspositionWarning
        k = spcomp.compile("C[i,j] = B[i,j]*D[i,k]*E[k,j]", formats={"B": "csr", "C": "csr"})
    assert "E copied to 'dd:1,0'" in k.loops
    b = sp.random(30, 40, density=0.2, format="csr", random_state=0)
    rng = np.random.default_rng(0)
    d, e = rng.standard_normal((30, 8)), rng.standard_normal((8, 40))
    np.testing.assert_allclose(k(B=b, D=d, E=e).to_numpy(), b.toarray() * (d @ e), atol=1e-12)


def test_layouts_already_contiguous_are_left_alone():
    for expr, fmts in [("C[i,j] = A[i,k]*B[k,j]", {"A": "csr"}),
                       ("H[t,n] = relu(X[t,k]*W[n,k])", {"H": "twell(B=8,K=8)"})]:
        assert "copied" not in spcomp.compile(expr, formats=fmts).loops


def test_relayout_matches_reference_for_a_three_way_product():
    check_kernel("y[i] = A[i,j]*B[k,j]*x[k]", {"A": "csr"}, sizes={"i": 7, "j": 9, "k": 5})
