"""benchmarks/taco.py without TACO: it skips with a reason when it cannot run, and
the ctypes side (TACO's ``taco_tensor_t`` over NumPy arrays, reading an output
back) is right. The comparison itself needs a TACO build and is run by hand."""
from __future__ import annotations

import ctypes

import numpy as np
import pytest
import scipy.sparse as sp

import spcomp

taco = pytest.importorskip("benchmarks.taco")


def test_without_a_taco_tool_it_skips_with_the_reason(capsys, monkeypatch):
    monkeypatch.delenv("SPCOMP_TACO_BIN", raising=False)
    assert taco.main([]) == 0
    assert "skipped: no taco tool: pass --build" in capsys.readouterr().out
    assert taco.main(["--taco", "/nonexistent/taco"]) == 0
    assert "is not an executable taco tool" in capsys.readouterr().out


def test_a_missing_source_or_cmake_is_named(tmp_path, monkeypatch):
    with pytest.raises(taco.Skip, match="neither a TACO source tree"):
        taco.find_source(str(tmp_path))
    monkeypatch.delenv("SPCOMP_TACO_SOURCE", raising=False)
    monkeypatch.setattr(taco, "MIRRORS", ())
    with pytest.raises(taco.Skip, match="no TACO source"):
        taco.find_source(None)
    tree = tmp_path / "taco"
    (tree / "src").mkdir(parents=True)
    (tree / "tools").mkdir()
    (tree / "CMakeLists.txt").write_text("")
    (tree / "tools" / "taco.cpp").write_text("")
    assert taco.find_source(str(tree)) == str(tree)
    real = taco.shutil.which
    monkeypatch.setattr(taco.shutil, "which", lambda name: None if name == "cmake" else real(name))
    with pytest.raises(taco.Skip, match="cmake not found"):
        taco.build_taco(str(tree), str(tmp_path / "work"), 1)
    monkeypatch.setattr(taco.shutil, "which", lambda name: None)
    assert taco.main(["--build", "--source", str(tree)]) == 0


def _ints(ptr, n):
    return np.ctypeslib.as_array((ctypes.c_int32 * n).from_address(ptr)).copy()


def test_a_csr_operand_is_a_taco_tensor_over_the_same_arrays():
    A = sp.random(7, 5, density=0.4, format="csr", random_state=1)
    op = taco.Operand.csr(A)
    s = op.struct
    assert s.order == 2 and s.csize == 8
    assert [s.dimensions[d] for d in range(2)] == [7, 5]
    assert [s.mode_types[d] for d in range(2)] == [taco.DENSE, taco.SPARSE]
    assert s.vals == A.data.ctypes.data  # not a copy: the arrays spcomp and SciPy read
    modes = (ctypes.c_void_p * 2).from_address(s.indices)
    sparse = (ctypes.c_void_p * 2).from_address(modes[1])
    np.testing.assert_array_equal(_ints(sparse[0], 8), A.indptr)
    np.testing.assert_array_equal(_ints(sparse[1], A.nnz), A.indices)
    dense = (ctypes.c_void_p * 2).from_address(modes[0])
    assert _ints(dense[0], 1)[0] == 7  # a dense mode's index array holds its size


def test_a_csf_operand_holds_every_level():
    coords = np.array([[0, 0, 2], [1, 3, 0], [2, 2, 1]])
    t = spcomp.Tensor.from_coo(coords, np.array([1.0, 2.0, 3.0]), (3, 4, 3), "csf")
    op = taco.Operand.csf(t)  # (it keeps the arrays its struct points to alive)
    s = op.struct
    assert [s.mode_types[d] for d in range(3)] == [taco.SPARSE] * 3
    modes = (ctypes.c_void_p * 3).from_address(s.indices)
    for d in range(3):
        pos, crd = (ctypes.c_void_p * 2).from_address(modes[d])
        lv = t.levels[d]
        np.testing.assert_array_equal(_ints(pos, lv["pos"].size), lv["pos"])
        np.testing.assert_array_equal(_ints(crd, lv["crd"].size), lv["crd"])


def test_outputs_are_read_back_as_copies():
    out = taco.Operand.output((2, 3))
    assert out.struct.vals is None  # TACO's evaluate allocates it
    values = np.arange(6.0)
    out.struct.vals = values.ctypes.data
    got = taco.read_dense(out)
    values[:] = -1
    np.testing.assert_array_equal(got, np.arange(6.0).reshape(2, 3))
    A = sp.random(4, 6, density=0.5, format="csr", random_state=2)
    csr = taco.Operand.output((4, 6), (1,))
    csr.struct.vals = A.data.ctypes.data
    csr.per_mode[1][0], csr.per_mode[1][1] = A.indptr.ctypes.data, A.indices.ctypes.data
    assert (taco.read_csr(csr) != A).nnz == 0


def test_every_kernel_of_the_comparison_is_defined_for_taco_and_spcomp():
    assert set(taco.CASES) == {"spmv", "spmm", "add", "spgemm", "sddmm", "ttv", "mttkrp"}
    from benchmarks.kernels import Sizes
    tiny = Sizes(n=40, density=0.1, k=4, g_n=30, g_density=0.1, t_n=8, t_density=0.2, rank=3, dense_peer=False)
    for case in taco.make_cases(tiny, None):
        ok, msg = case.check(case.run_spcomp())  # spcomp against the case's own reference
        assert ok, f"{case.key}: {msg}"
        if case.scipy is not None:
            assert case.check(case.scipy())[0], case.key
        assert set(case.taco_operands) <= set("AByxXCDEc")


def test_paired_ratios_compare_each_round_with_itself():
    """The kernels benchmark judges its targets on per-round ratios: a round timed at
    half the host's pace slows both implementations alike, and its ratio stays."""
    from benchmarks.common import Timing, paired_ratios
    ours = Timing(2.0, [], [1.0, 2.0, 1.0])   # the second round ran at half pace
    peer = Timing(4.0, [], [2.0, 4.0, 2.5])
    assert paired_ratios(peer, ours) == [2.0, 2.0, 2.5]
    assert paired_ratios(peer, Timing(1.0, [], [])) == []  # no rounds recorded: nothing paired
