"""Programs saved, loaded and disk-cached like kernels (docs/security.md).

A saved program is a signed record (runtime/record.py JSON, no pickle) of every
native function it runs; loading it checks the signature before parsing, runs
no LLVM, and gives the same results as the original on fresh data. The disk
cache keeps compiled programs the same way, signed with the user's key; a
damaged entry is rebuilt, never loaded.
"""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import warnings

import numpy as np
import pytest
import scipy.sparse as sp
from hypothesis import given, settings
from hypothesis import strategies as st

import spcomp
from spcomp.errors import CacheError, TranspositionWarning
from spcomp.testing.check import densify

from conftest import examples

# fused dense temporaries; a fused sparse temporary; a fused run then a kernel of its own
PROGRAMS = [
    ("t[j] = B[j,k]*c[k]\ny[i] = A[i,j]*t[j]", {"A": "csr", "B": "csr"}),
    ("T[i,k] = A[i,j]*B[j,k]; U[i,k] = T[i,k] + D[i,k]; y[i] = U[i,k]*c[k]",
     {"A": "csr", "B": "csr", "D": "csr", "T": "csr", "U": "dcsr"}),
    ("T[i,k] = A[i,j]*B[j,k]; y[i] = T[i,k]*c[k]; C[k,i] = T[i,k] * 2",
     {"A": "csr", "B": "csr", "T": "csr", "C": "csr"}),
]
KEY = b"a test key of 32 bytes, exactly!"


def _compile(index):
    text, fmts = PROGRAMS[index]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", TranspositionWarning)
        return spcomp.compile(text, formats=fmts)


def _operands(k, seed, n=14):
    rng = np.random.default_rng(seed)
    ops = {"A": sp.random(n, n + 1, density=0.3, format="csr", random_state=rng),
           "B": sp.random(n + 1, n - 1, density=0.3, format="csr", random_state=rng),
           "D": sp.random(n, n - 1, density=0.3, format="csr", random_state=rng),
           "c": rng.standard_normal(n - 1)}
    return {name: ops[name] for name in k.inputs}


def _same(a, b):
    if isinstance(a, dict):
        assert set(a) == set(b)
        for name in a:
            _same(a[name], b[name])
        return
    np.testing.assert_allclose(densify(a), densify(b), rtol=1e-12, atol=1e-12)


@settings(max_examples=examples(6), deadline=None)
@given(index=st.integers(0, len(PROGRAMS) - 1), seed=st.integers(0, 2 ** 16), n=st.integers(2, 20))
def test_a_loaded_program_equals_the_original_on_fresh_data(tmp_path_factory, index, seed, n):
    k = _compile(index)
    path = tmp_path_factory.mktemp("saved") / "program.spk"
    k.save(path, key=KEY)
    loaded = spcomp.load(path, key=KEY)
    assert isinstance(loaded, spcomp.ProgramKernel)
    assert loaded.launches == k.launches and loaded.loops == k.loops and loaded.source == k.source
    assert loaded.outputs == k.outputs and loaded.inputs == k.inputs
    ops = _operands(k, seed, n)
    _same(loaded(**ops), k(**ops))


def test_loading_a_program_runs_no_llvm(monkeypatch, tmp_path):
    k = _compile(1)
    data = k.to_bytes()
    import spcomp.backends.cpu as cpu
    monkeypatch.setattr(cpu, "compile_module", lambda *a, **kw: pytest.fail("LLVM ran on load"))
    loaded = spcomp.loads(data)
    ops = _operands(k, 0)
    _same(loaded(**ops), k(**ops))


def test_a_tampered_or_unsigned_program_is_refused(tmp_path):
    k = _compile(1)
    signed, plain = tmp_path / "signed.spk", tmp_path / "plain.spk"
    k.save(signed, key=KEY)
    k.save(plain)
    spcomp.load(plain)
    with pytest.raises(CacheError, match="is signed: pass the key"):
        spcomp.load(signed)
    with pytest.raises(CacheError, match="signature does not match"):
        spcomp.load(signed, key=os.urandom(32))
    with pytest.raises(CacheError, match="not signed"):
        spcomp.load(plain, key=KEY)
    for path, key in ((signed, KEY), (plain, None)):
        data = bytearray(path.read_bytes())
        data[len(data) // 2] ^= 1
        path.write_bytes(bytes(data))
        with pytest.raises(CacheError, match="signature does not match|checksum"):
            spcomp.load(path, key=key)


def test_a_kernel_file_still_loads_as_a_kernel(tmp_path):
    k = spcomp.compile("y[i] = A[i,j]*x[j]", formats={"A": "csr"})
    k.save(tmp_path / "k.spk")
    assert isinstance(spcomp.load(tmp_path / "k.spk"), spcomp.Kernel)


def test_cuda_sim_programs_are_not_saved():
    from spcomp.errors import SpcompError
    k = spcomp.compile("t[i] = x[i] * 2; y[i] = t[i] + 1", backend="cuda-sim")
    with pytest.raises(SpcompError, match="cannot be saved"):
        k.to_bytes()


def test_a_compiled_program_is_disk_cached_and_a_new_process_loads_it(cache_dir):
    """One fresh process compiles the program into the disk cache, the next loads it
    without compiling (both fresh: what this test worker's earlier tests left in its
    process cannot change what goes into the key), and this process loads it too."""
    text, fmts = PROGRAMS[1]
    script = textwrap.dedent(f"""
        import numpy as np, scipy.sparse as sp, spcomp
        import spcomp.backends.cpu as cpu
        called = []
        orig = cpu.compile_module
        cpu.compile_module = lambda *a, **k: called.append(1) or orig(*a, **k)
        k = spcomp.compile({text!r}, formats={fmts!r})
        print("compiled" if called else "loaded", k.launches)
    """)

    def fresh_process():
        out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                             env={**os.environ, "SPCOMP_CACHE_DIR": str(cache_dir)})
        assert out.returncode == 0, out.stderr
        return out.stdout.split()

    assert fresh_process() == ["compiled", "1"]
    assert set(cache_dir.glob("*.spk"))
    assert fresh_process() == ["loaded", "1"]
    k = spcomp.compile(text, formats=fmts)
    ops = _operands(k, 1)
    want = k(**ops)
    spcomp.clear_cache()
    _same(spcomp.compile(text, formats=fmts)(**ops), want)


def test_a_damaged_program_entry_is_rebuilt(cache_dir):
    text, fmts = PROGRAMS[1]
    k = spcomp.compile(text, formats=fmts)
    ops = _operands(k, 2)
    want = k(**ops)
    damaged = {}
    for entry in cache_dir.glob("*.spk"):
        data = bytearray(entry.read_bytes())
        data[-40] ^= 0xFF
        entry.write_bytes(bytes(data))
        damaged[entry] = bytes(data)
    spcomp.clear_cache()
    _same(spcomp.compile(text, formats=fmts)(**ops), want)
    for entry, data in damaged.items():
        assert entry.read_bytes() != data  # removed and written again
