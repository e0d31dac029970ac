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


def test_keep_layout_reads_e_as_it_comes_and_agrees():
    """Schedule().keep_layout(): no copy, the strided read gives the same result as
    the copied one (both sum each row's k in the same order: bitwise equal)."""
    fmts = {"B": "csr", "C": "csr"}
    expr = "C[i,j] = B[i,j]*D[i,k]*E[k,j]"
    kept = spcomp.compile(expr, formats=fmts, schedule=spcomp.Schedule().keep_layout())
    copied = spcomp.compile(expr, formats=fmts)
    assert "copied" not in kept.loops and "copied" in copied.loops
    b = sp.random(30, 40, density=0.2, format="csr", random_state=1)
    rng = np.random.default_rng(1)
    d, e = rng.standard_normal((30, 8)), rng.standard_normal((8, 40))
    np.testing.assert_array_equal(kept(B=b, D=d, E=e).vals, copied(B=b, D=d, E=e).vals)
    np.testing.assert_allclose(kept(B=b, D=d, E=e).to_numpy(), b.toarray() * (d @ e), atol=1e-12)
    check_kernel(expr, fmts, schedule=spcomp.Schedule().keep_layout(), sizes={"i": 6, "j": 7, "k": 5})


def test_layouts_already_contiguous_are_left_alone():
    for expr, fmts in [("C[i,j] = A[i,k]*B[k,j]", {"A": "csr"}),
                       ("H[t,n] = relu(X[t,k]*W[n,k])", {"H": "twell(B=8,K=8)"})]:
        assert "copied" not in spcomp.compile(expr, formats=fmts).loops


def test_relayout_matches_reference_for_a_three_way_product():
    check_kernel("y[i] = A[i,j]*B[k,j]*x[k]", {"A": "csr"}, sizes={"i": 7, "j": 9, "k": 5})


def test_threads_copy_a_dense_operand_into_any_dimension_order(monkeypatch):
    """The copy kernel (runtime/relayout.py) stores every permutation of a 3-D array
    exactly as NumPy's transpose does, and leaves what NumPy copies better alone."""
    import itertools

    from spcomp.kernel import copy_kernel
    from spcomp.runtime import relayout
    from conftest import spcomp_threads
    monkeypatch.setattr(relayout, "MIN_ELEMENTS", 0)
    a = np.random.default_rng(1).standard_normal((5, 7, 3))
    with spcomp_threads(2, 0):
        for order in itertools.permutations(range(3)):
            flat = relayout.relayout(a, order, a.dtype, make=copy_kernel)
            if order == (0, 1, 2):
                assert flat is None  # already in order
                continue
            assert flat.tobytes() == np.ascontiguousarray(np.transpose(a, order)).reshape(-1).tobytes()
        assert relayout.relayout(a.astype(np.float32), (1, 0, 2), np.dtype(np.float64), make=copy_kernel) is None  # a conversion
        assert relayout.relayout(np.asfortranarray(a), (1, 0, 2), a.dtype, make=copy_kernel) is None
    with spcomp_threads(1):
        assert relayout.relayout(a, (1, 0, 2), a.dtype, make=copy_kernel) is None  # one thread: NumPy's copy
    assert relayout.copy_expression((1, 0)) == "T[a,b] = E[b,a]"
    assert relayout.copy_expression((2, 0, 1)) == "T[a,b,c] = E[b,c,a]"


def test_sddmm_on_threads_reads_the_threads_copy_of_e(monkeypatch):
    """A two-thread SDDMM gets its E_T from the copy kernel and the one-thread bits."""
    from spcomp.runtime import relayout
    from conftest import spcomp_threads
    monkeypatch.setattr(relayout, "MIN_ELEMENTS", 0)
    made = []
    real = relayout.relayout
    monkeypatch.setattr(relayout, "relayout", lambda *args, **kw: made.append(real(*args, **kw)) or made[-1])
    k = spcomp.compile("C[i,j] = B[i,j]*D[i,k]*E[k,j]", formats={"B": "csr", "C": "csr"})
    b = sp.random(300, 400, density=0.05, format="csr", random_state=0)
    rng = np.random.default_rng(0)
    d, e = rng.standard_normal((300, 16)), rng.standard_normal((16, 400))
    results = []
    for n in (1, 2):
        with spcomp_threads(n, 0):
            results.append(k(B=b, D=d, E=e))
    assert made[0] is None and made[1] is not None  # NumPy's copy on one thread, the kernel's on two
    assert results[0].vals.tobytes() == results[1].vals.tobytes()
    np.testing.assert_allclose(results[1].to_numpy(), b.toarray() * (d @ e), atol=1e-12)


def test_saved_kernel_carries_its_copy_kernels(tmp_path, monkeypatch):
    """Kernel.save holds the copy kernels its auto-layout may run on threads: after
    spcomp.load in a process that never built them, a two-thread call copies E with
    the loaded one, compiles nothing, and gives the original kernel's bits."""
    from spcomp.runtime import relayout
    from spcomp.backends.cpu.target import CpuTarget
    from conftest import spcomp_threads
    monkeypatch.setattr(relayout, "MIN_ELEMENTS", 0)
    expr = "C[i,j] = B[i,j]*D[i,k]*E[k,j]"
    k = spcomp.compile(expr, formats={"B": "csr", "C": "csr"})
    assert relayout.copies_of(k.runtime.plan.storages) == [((1, 0), "float64")]
    k.save(tmp_path / "sddmm.spk")
    relayout.forget_copy_kernels()  # as in a fresh process
    loaded = spcomp.load(tmp_path / "sddmm.spk")
    copy = relayout.copy_kernel(((1, 0), "float64"), make=None)
    assert copy.expression == "T[a,b] = E[b,a]"

    def no_compiling(*args, **kwargs):
        raise AssertionError("the loaded kernel compiled something")
    monkeypatch.setattr(CpuTarget, "lower", no_compiling)
    monkeypatch.setattr(CpuTarget, "build", no_compiling)
    made = []
    real = relayout.relayout
    monkeypatch.setattr(relayout, "relayout", lambda *args, **kw: made.append(real(*args, **kw)) or made[-1])
    b = sp.random(200, 300, density=0.05, format="csr", random_state=2)
    rng = np.random.default_rng(2)
    d, e = rng.standard_normal((200, 8)), rng.standard_normal((8, 300))
    with spcomp_threads(2, 0):
        got = loaded(B=b, D=d, E=e)
    assert made and made[0] is not None  # E was copied by the loaded copy kernel
    with spcomp_threads(1):
        want = k(B=b, D=d, E=e)
    assert got.vals.tobytes() == want.vals.tobytes()
    # a kernel that keeps its layout carries no copy kernel
    kept = spcomp.compile(expr, formats={"B": "csr", "C": "csr"}, schedule=spcomp.Schedule().keep_layout())
    assert kept.payload()["relayouts"] == {}
