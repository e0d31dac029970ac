"""Disk cache and saved kernels: keyed correctly, corrupt entries rebuilt, never loaded."""
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import scipy.sparse as sp

import spcomp
from spcomp.errors import CacheError


def _spmv_ok(k):
    m = sp.random(50, 40, density=0.2, format="csr", random_state=3)
    x = np.arange(40, dtype=np.float64)
    np.testing.assert_allclose(k(A=m, x=x), m @ x)


def test_compile_writes_one_entry_and_a_new_process_loads_it(cache_dir):
    k = spcomp.compile("y[i] = A[i,j]*x[j]", formats={"A": "csr"})
    _spmv_ok(k)
    entries = list(cache_dir.glob("*.spk"))
    assert len(entries) == 1
    script = textwrap.dedent("""
        import numpy as np, scipy.sparse as sp, spcomp
        from spcomp.backends.cpu import jit
        called = []
        orig = jit.compile_module
        jit.compile_module = lambda *a, **k: called.append(1) or orig(*a, **k)
        import spcomp.backends.cpu as cpu
        cpu.compile_module = jit.compile_module
        k = spcomp.compile("y[i] = A[i,j]*x[j]", formats={"A": "csr"})
        m = sp.random(30, 20, density=0.3, format="csr", random_state=1)
        assert np.allclose(k(A=m, x=np.ones(20)), m @ np.ones(20))
        print("compiled" if called else "loaded")
    """)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                         env={**__import__("os").environ, "SPCOMP_CACHE_DIR": str(cache_dir)})
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "loaded"


def test_dtypes_and_formats_get_their_own_entries(cache_dir):
    spcomp.compile("y[i] = A[i,j]*x[j]", formats={"A": "csr"})
    k32 = spcomp.compile("y[i] = A[i,j]*x[j]", formats={"A": "csr"}, dtype="float32")
    spcomp.compile("y[i] = A[i,j]*x[j]", formats={"A": "csc"})
    assert len(list(cache_dir.glob("*.spk"))) == 3
    spcomp.clear_cache()
    k32 = spcomp.compile("y[i] = A[i,j]*x[j]", formats={"A": "csr"}, dtype="float32")
    assert "float" in k32.ir and "double" not in k32.ir


@pytest.mark.parametrize("damage", ["truncate", "flip", "garbage"])
def test_a_damaged_entry_is_rebuilt_not_loaded(cache_dir, damage):
    spcomp.compile("y[i] = A[i,j]*x[j]", formats={"A": "csr"})
    (entry,) = cache_dir.glob("*.spk")
    data = entry.read_bytes()
    if damage == "truncate":
        data = data[: len(data) // 2]
    elif damage == "flip":
        data = data[:-40] + bytes([data[-40] ^ 0xFF]) + data[-39:]
    else:
        data = b"\x7fELF" + b"\x00" * 100
    entry.write_bytes(data)
    spcomp.clear_cache()
    k = spcomp.compile("y[i] = A[i,j]*x[j]", formats={"A": "csr"})
    _spmv_ok(k)
    (entry,) = cache_dir.glob("*.spk")
    assert entry.read_bytes() != data


def test_save_and_load_round_trip(cache_dir, tmp_path):
    k = spcomp.compile("C[i,j] = A[i,j] + B[i,j]", formats={"A": "csr", "B": "csr", "C": "csr"})
    path = tmp_path / "add.spk"
    k.save(path)
    k2 = spcomp.load(path)
    a = sp.random(20, 30, density=0.2, format="csr", random_state=0)
    b = sp.random(20, 30, density=0.2, format="csr", random_state=1)
    np.testing.assert_allclose(k2(A=a, B=b).to_numpy(), (a + b).toarray())
    assert k2.source == k.source and k2.loops == k.loops


def test_loading_a_corrupt_saved_kernel_raises(tmp_path):
    from spcomp.runtime.cache import MAGIC
    path = tmp_path / "bad.spk"
    path.write_bytes(MAGIC + b"sha256 " + b"0" * 64 + b"\nnot a record")
    with pytest.raises(CacheError, match="checksum"):
        spcomp.load(path)
    with pytest.raises(CacheError, match="cannot read"):
        spcomp.load(tmp_path / "missing.spk")
