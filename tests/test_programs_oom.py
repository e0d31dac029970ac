"""A fused function that runs out of memory frees its own heap arrays first.

The function's own arrays (a statement's workspaces, row workspaces, transposed
copies: ``lower/heap_exits.py``, ``lower/fused_transpose.py``) are freed before the
status-2 return of any allocation or ``realloc`` that fails after them. A stand-in
for libc's ``realloc`` (bound with ``llvm.add_symbol`` while the program compiles)
fails one chosen call; glibc's heap, counted over failing calls, shows no leak.
"""
from __future__ import annotations

import ctypes
import warnings

import llvmlite.binding as llvm
import numpy as np
import pytest
import scipy.sparse as sp

import spcomp
from spcomp.errors import TranspositionWarning
from spcomp.runtime import launch

from test_programs_rows import heap_in_use

_REALLOC = {"calls": 0, "fail_at": None}
_LIBC = ctypes.CDLL(None)
_REAL = _LIBC.realloc
_REAL.restype, _REAL.argtypes = ctypes.c_void_p, [ctypes.c_void_p, ctypes.c_size_t]


@ctypes.CFUNCTYPE(ctypes.c_void_p, ctypes.c_void_p, ctypes.c_size_t)
def _counting_realloc(p, size):
    """libc's realloc, counting its calls and failing call ``fail_at`` (module level:
    a kernel bound to it may outlive a test)."""
    _REALLOC["calls"] += 1
    if _REALLOC["calls"] == _REALLOC["fail_at"]:
        return None
    return _REAL(p, size)


def _compile_with_counting_realloc(monkeypatch, tmp_path, text, formats):
    monkeypatch.setenv("SPCOMP_CACHE_DIR", str(tmp_path / "cache"))   # compiled here, bound to the stand-in
    llvm.add_symbol("realloc", ctypes.cast(_counting_realloc, ctypes.c_void_p).value)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", TranspositionWarning)
            return spcomp.compile(text, formats=formats)
    finally:
        llvm.add_symbol("realloc", ctypes.cast(_REAL, ctypes.c_void_p).value)   # later kernels: libc's own


def _leaks(k, ops, fail_at, want_bytes):
    """Heap growth over five calls whose realloc number ``fail_at`` (from the end
    when negative) fails; each must raise the out-of-memory error."""
    _REALLOC.update(calls=0, fail_at=None)
    k(**ops)
    per_call = _REALLOC["calls"]
    assert per_call >= abs(fail_at)
    at = fail_at if fail_at > 0 else per_call + 1 + fail_at

    def failing_call():
        _REALLOC.update(calls=0, fail_at=at)
        with pytest.raises(spcomp.KernelRuntimeError, match="could not allocate"):
            k(**ops)
    failing_call()
    before = heap_in_use()
    for _ in range(5):
        failing_call()
    _REALLOC["fail_at"] = None
    return heap_in_use() - before


@pytest.fixture(autouse=True)
def _small_first_capacity(monkeypatch):
    if heap_in_use() is None:
        pytest.skip("no glibc mallinfo2 to count the heap")
    monkeypatch.setattr(launch, "FIRST_CAPACITY", 1)   # every sparse output grows by realloc


def test_a_failed_realloc_in_the_reader_frees_the_transposed_copy(monkeypatch, tmp_path):
    """C grows after T's transposed copy (2M columns: an 8 MB ``pos``) is made; its
    last realloc fails: the copy is freed before the out-of-memory return."""
    k = _compile_with_counting_realloc(monkeypatch, tmp_path, "Tr[i,k] = Ar[i,j]*Br[j,k]\nCr[k,i] = Tr[i,k]*2",
                                       {"Ar": "csr", "Br": "csr", "Tr": "csr", "Cr": "csr"})
    assert "if (!Cr_vals) { free(Tr_T2_pos);" in k.ir, k.ir
    width = 2_000_000
    ops = {"Ar": sp.random(3, 40, density=0.5, format="csr", random_state=0),
           "Br": sp.random(40, width, density=2e-5, format="csr", random_state=1)}
    want = 2 * (ops["Ar"] @ ops["Br"]).T.toarray()
    assert _leaks(k, ops, -1, width) < 4 * width   # five leaked copies would be 40 MB
    assert np.allclose(k(**ops).to_numpy(), want)


def test_a_failed_realloc_frees_the_statements_workspaces(monkeypatch, tmp_path):
    """T's first realloc fails while SpGEMM's row workspaces (2M columns: 16 MB of
    values, its flags and list) are live: they are freed before the out-of-memory return."""
    k = _compile_with_counting_realloc(monkeypatch, tmp_path, "Tw[i,k] = Aw[i,j]*Bw[j,k]\nyw[i] = Tw[i,k]*cw[k]",
                                       {"Aw": "csr", "Bw": "csr", "Tw": "csr"})
    assert "if (!Tw2_crd) { free(workspace); free(workspace_bits); free(workspace_list); return 2; }" in k.ir, k.ir
    width = 2_000_000
    ops = {"Aw": sp.random(3, 40, density=0.5, format="csr", random_state=0),
           "Bw": sp.random(40, width, density=2e-5, format="csr", random_state=1),
           "cw": np.ones(width)}
    want = (ops["Aw"] @ ops["Bw"]) @ ops["cw"]
    assert _leaks(k, ops, 1, width) < 4 * width   # five leaked workspaces would be > 80 MB
    assert np.allclose(k(**ops), want)
