"""What spcomp trusts on disk (docs/security.md), attacked as another local user would.

The multi-user tests need to act as a second user: they run where the test
runner is root (planting files as uid 65534, "nobody") and skip otherwise.
"""
from __future__ import annotations

import json
import os
import pickle
import shutil
import stat
import subprocess
import sys
import textwrap
import warnings
from pathlib import Path

import numpy as np
import pytest
import scipy.sparse as sp

import spcomp
from spcomp.errors import CacheError, InsecureCacheWarning
from spcomp.runtime import cache, record

OTHER_UID = 65534
as_root = pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() != 0,
                             reason="needs root to act as a second user (uid 65534)")


class _Marker:
    """Unpickling this creates the file ``path``: proof that a pickle ran."""

    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return (open, (self.path, "w"))


def _old_style_entry(marker: Path) -> bytes:
    """A cache entry of the pickle format spcomp used to read, with an unkeyed hash
    anyone can recompute, whose payload creates ``marker`` when unpickled."""
    import hashlib
    body = pickle.dumps({"lowered": _Marker(marker), "compiled": None})
    return b"SPCOMP-KERNEL-1\n" + hashlib.sha256(body).hexdigest().encode() + b"\n" + body


def _spmv(k):
    m = sp.random(40, 30, density=0.2, format="csr", random_state=3)
    x = np.arange(30, dtype=np.float64)
    np.testing.assert_allclose(k(A=m, x=x), m @ x)


def _plant_as_other_user(directory: Path, files: dict) -> None:
    """``directory`` made world-writable with ``files`` in it, everything owned by
    uid 65534: the state another user leaves by creating them first."""
    directory.mkdir()
    os.chmod(directory, 0o777)
    os.chown(directory, OTHER_UID, OTHER_UID)
    for name, data in files.items():
        (directory / name).write_bytes(data)
        os.chown(directory / name, OTHER_UID, OTHER_UID)


def _entry_name(tmp_path, expression="y[i] = A[i,j]*x[j]", formats=None) -> str:
    """The file name the cache gives this kernel (compiled once into a scratch cache)."""
    scratch = tmp_path / "scratch-cache"
    env = os.environ.get("SPCOMP_CACHE_DIR")
    os.environ["SPCOMP_CACHE_DIR"] = str(scratch)
    try:
        spcomp.clear_cache()
        spcomp.compile(expression, formats=formats or {"A": "csr"})
        (entry,) = scratch.glob("*.spk")
        return entry.name
    finally:
        os.environ["SPCOMP_CACHE_DIR"] = env
        spcomp.clear_cache()


# ------------------------------------------------------------ the directory

@as_root
def test_a_cache_dir_another_user_made_first_is_refused_and_its_entry_never_runs(tmp_path, monkeypatch):
    name = _entry_name(tmp_path)
    shared = tmp_path / "shared"
    shared.mkdir()
    os.chmod(shared, 0o1777)  # like /tmp
    target = shared / "spcomp"
    marker = tmp_path / "pwned"
    _plant_as_other_user(target, {name: _old_style_entry(marker)})
    monkeypatch.setenv("SPCOMP_CACHE_DIR", str(target))
    spcomp.clear_cache()
    with pytest.warns(InsecureCacheWarning, match="owned by uid 65534"):
        k = spcomp.compile("y[i] = A[i,j]*x[j]", formats={"A": "csr"})
    _spmv(k)
    assert not marker.exists()
    assert sorted(p.name for p in target.iterdir()) == [name]  # nothing written there either
    spcomp.clear_cache()


def test_a_world_writable_cache_dir_is_refused(tmp_path, monkeypatch):
    target = tmp_path / "open"
    target.mkdir()
    os.chmod(target, 0o777)
    monkeypatch.setenv("SPCOMP_CACHE_DIR", str(target))
    spcomp.clear_cache()
    with pytest.warns(InsecureCacheWarning, match="writable by other users"):
        k = spcomp.compile("y[i] = A[i,j]*x[j]", formats={"A": "csr"}, name="world_writable")
    _spmv(k)
    assert list(target.iterdir()) == []
    assert cache.info()["usable"] is False and "chmod 700" in cache.info()["why"]
    spcomp.clear_cache()


def test_a_parent_others_can_write_without_the_sticky_bit_is_refused(tmp_path, monkeypatch):
    parent = tmp_path / "loose"
    parent.mkdir()
    os.chmod(parent, 0o777)
    monkeypatch.setenv("SPCOMP_CACHE_DIR", str(parent / "spcomp"))
    spcomp.clear_cache()
    with pytest.warns(InsecureCacheWarning, match="could replace the directory"):
        spcomp.compile("y[i] = A[i,j]*x[j]", formats={"A": "csr"}, name="loose_parent")
    spcomp.clear_cache()


def test_the_cache_dir_and_key_are_created_private_even_under_umask_0(tmp_path, monkeypatch):
    target = tmp_path / "a" / "b" / "cache"
    monkeypatch.setenv("SPCOMP_CACHE_DIR", str(target))
    spcomp.clear_cache()
    old = os.umask(0)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", InsecureCacheWarning)
            spcomp.compile("y[i] = A[i,j]*x[j]", formats={"A": "csr"}, name="umask0")
    finally:
        os.umask(old)
    for d in (target, target.parent, target.parent.parent):
        assert stat.S_IMODE(d.stat().st_mode) == 0o700
    assert stat.S_IMODE((target / "key").stat().st_mode) == 0o600
    (entry,) = target.glob("*.spk")
    assert stat.S_IMODE(entry.stat().st_mode) == 0o600
    spcomp.clear_cache()


def test_a_key_file_others_can_read_disables_the_cache(cache_dir):
    spcomp.compile("y[i] = A[i,j]*x[j]", formats={"A": "csr"}, name="key_mode")
    os.chmod(cache_dir / "key", 0o644)
    code = textwrap.dedent("""
        import warnings, spcomp
        with warnings.catch_warnings(record=True) as w:
            warnings.simplefilter("always")
            spcomp.compile("y[i] = A[i,j]*x[j]", formats={"A": "csr"}, name="key_mode")
        print([str(x.message) for x in w])
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         env={**os.environ, "SPCOMP_CACHE_DIR": str(cache_dir)})
    assert out.returncode == 0, out.stderr
    assert "readable by other users" in out.stdout


# ------------------------------------------------------------ the entries

def test_a_planted_old_style_pickle_entry_is_never_unpickled(cache_dir, tmp_path):
    spcomp.compile("y[i] = A[i,j]*x[j]", formats={"A": "csr"})
    (entry,) = cache_dir.glob("*.spk")
    marker = tmp_path / "pwned"
    entry.write_bytes(_old_style_entry(marker))
    spcomp.clear_cache()
    k = spcomp.compile("y[i] = A[i,j]*x[j]", formats={"A": "csr"})
    _spmv(k)
    assert not marker.exists()
    assert entry.read_bytes().startswith(cache.MAGIC)  # rebuilt in the signed format


def test_an_entry_with_a_recomputed_plain_hash_is_rebuilt(cache_dir):
    """Anyone can recompute a SHA-256: only the HMAC under the user's key counts."""
    k = spcomp.compile("y[i] = A[i,j]*x[j]", formats={"A": "csr"})
    (entry,) = cache_dir.glob("*.spk")
    data = entry.read_bytes()
    body = data.split(b"\n", 2)[2].replace(b'"name":"kernel"', b'"name":"kernel"', 1)
    forged = cache.MAGIC + b"sha256 " + __import__("hashlib").sha256(body).hexdigest().encode() + b"\n" + body
    entry.write_bytes(forged)
    assert cache.load_entry(entry.stem) is None
    assert not entry.exists()  # removed, to be rebuilt
    spcomp.clear_cache()
    _spmv(spcomp.compile("y[i] = A[i,j]*x[j]", formats={"A": "csr"}))
    del k


def test_an_entry_signed_with_another_users_key_is_rebuilt(cache_dir, tmp_path, monkeypatch):
    spcomp.compile("y[i] = A[i,j]*x[j]", formats={"A": "csr"})
    (entry,) = cache_dir.glob("*.spk")
    other = tmp_path / "other-cache"
    monkeypatch.setenv("SPCOMP_CACHE_DIR", str(other))
    spcomp.clear_cache()
    spcomp.compile("y[i] = A[i,j]*x[j]", formats={"A": "csr"})
    theirs = (other / entry.name).read_bytes()
    assert (other / "key").read_bytes() != (cache_dir / "key").read_bytes()
    monkeypatch.setenv("SPCOMP_CACHE_DIR", str(cache_dir))
    entry.write_bytes(theirs)
    assert cache.load_entry(entry.stem) is None


def test_records_build_only_the_classes_of_a_kernel(tmp_path):
    good = record.encode({"x": (1, 2.5, float("inf")), "b": b"\x00\xff"})
    assert record.decode(good) == {"x": (1, 2.5, float("inf")), "b": b"\x00\xff"}
    for tag in ("builtins:eval", "os:system", "subprocess:Popen", "spcomp.kernel:Kernel"):
        crafted = json.dumps({"schema": record.schema(), "value": {"c": tag, "v": ["print(1)"]}})
        with pytest.raises(record.RecordError, match="may not hold"):
            record.decode(crafted.encode())
    other = json.dumps({"schema": "0" * 16, "value": 1}).encode()
    with pytest.raises(record.RecordError, match="another spcomp version"):
        record.decode(other)
    with pytest.raises(record.RecordError, match="has not defined"):
        record.decode(json.dumps({"schema": record.schema(), "value": {"r": 0}}).encode())


def test_a_lowered_kernel_survives_its_record_exactly():
    from spcomp.ir.printer import print_ir
    for expression, formats in [("C[i,k] = A[i,j]*B[j,k]", {"A": "csr", "B": "csr", "C": "csr"}),
                                ("A[i,j] = B[i,j] + C[i,j]", {"A": "coo", "B": "coo", "C": "csr"}),
                                ("O[t,d] = H[t,n]*Wd[n,d]", {"H": "twell"}), ("t = A[i,i]", {"A": "csr"})]:
        k = spcomp.compile(expression, formats=formats)
        low = k.lowered
        back = record.decode(record.encode(low))
        assert back == low and print_ir(back.code.module) == print_ir(low.code.module)


# ------------------------------------------------------------ saved kernels

def test_loading_a_saved_pickle_never_runs_it(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.spk"
    path.write_bytes(_old_style_entry(marker))
    with pytest.raises(CacheError, match="another spcomp version"):
        spcomp.load(path)
    assert not marker.exists()


def test_signed_kernels_load_only_with_their_key(cache_dir, tmp_path):
    k = spcomp.compile("y[i] = A[i,j]*x[j]", formats={"A": "csr"})
    key = os.urandom(32)
    signed, plain = tmp_path / "signed.spk", tmp_path / "plain.spk"
    k.save(signed, key=key)
    k.save(plain)
    _spmv(spcomp.load(signed, key=key))
    _spmv(spcomp.load(plain))
    with pytest.raises(CacheError, match="is signed: pass the key"):
        spcomp.load(signed)
    with pytest.raises(CacheError, match="signature does not match"):
        spcomp.load(signed, key=os.urandom(32))
    with pytest.raises(CacheError, match="not signed"):
        spcomp.load(plain, key=key)
    data = bytearray(signed.read_bytes())
    data[-10] ^= 1
    signed.write_bytes(bytes(data))
    with pytest.raises(CacheError, match="signature does not match"):
        spcomp.load(signed, key=key)
    with pytest.raises(CacheError, match="at least 16 bytes"):
        k.save(signed, key="short")


def test_a_kernel_saved_with_libgomp_is_refused_where_there_is_none(cache_dir, tmp_path):
    k = spcomp.compile("y[i] = A[i,j]*x[j]", formats={"A": "csr"})
    path = tmp_path / "spmv.spk"
    k.save(path)
    code = textwrap.dedent(f"""
        import spcomp
        from spcomp.errors import CacheError
        try:
            spcomp.load({str(path)!r})
        except CacheError as e:
            print("refused:", e)
        k = spcomp.compile("y[i] = A[i,j]*x[j]", formats={{"A": "csr"}})
        import numpy as np, scipy.sparse as sp
        m = sp.random(500, 500, density=0.5, format="csr", random_state=0)
        spcomp.set_num_threads(2)
        assert np.allclose(k(A=m, x=np.ones(500)), m @ np.ones(500))
        print("ran")
    """)
    env = {**os.environ, "SPCOMP_CACHE_DIR": str(cache_dir), "SPCOMP_LIBGOMP": "0"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    assert out.returncode == 0, out.stderr
    assert "refused:" in out.stdout and "recompile it here" in out.stdout
    assert out.stdout.strip().endswith("ran")
    assert len(list(cache_dir.glob("*.spk"))) == 2  # its own entry, not the libgomp one


# ------------------------------------------------------------ cuda-sim libraries

def _evil_library(tmp_path, marker: Path) -> bytes:
    src = tmp_path / "evil.c"
    src.write_text(f'#include <stdio.h>\n__attribute__((constructor)) static void pwn(void) '
                   f'{{ FILE* f = fopen("{marker}", "w"); if (f) fclose(f); }}\n')
    lib = tmp_path / "evil.so"
    subprocess.run(["gcc", "-shared", "-fPIC", str(src), "-o", str(lib)], check=True)
    return lib.read_bytes()


_SIM_RUN = textwrap.dedent("""
    import numpy as np, scipy.sparse as sp, spcomp
    k = spcomp.compile("y[i] = A[i,j]*x[j]", formats={"A": "csr"}, backend="cuda-sim")
    m = sp.random(30, 20, density=0.3, format="csr", random_state=1)
    assert np.allclose(k(A=m, x=np.ones(20)), m @ np.ones(20))
""")


@pytest.mark.skipif(shutil.which("gcc") is None, reason="needs gcc to build the planted library")
def test_a_planted_cuda_sim_library_is_never_loaded(cache_dir, tmp_path):
    env = {**os.environ, "SPCOMP_CACHE_DIR": str(cache_dir)}
    first = subprocess.run([sys.executable, "-c", _SIM_RUN], capture_output=True, text=True, env=env)
    assert first.returncode == 0, first.stderr
    (library,) = (cache_dir / "cuda-sim").glob("*.sim")
    marker = tmp_path / "pwned"
    evil = _evil_library(tmp_path, marker)
    import hashlib
    # as the old location was: planted where spcomp used to look ...
    old = Path(os.environ.get("TMPDIR", "/tmp")) / f"spcomp-cuda-sim-{os.getuid()}"
    old.mkdir(exist_ok=True)
    (old / (library.stem + ".so")).write_bytes(evil)
    # ... and in the cache itself, with a hash anyone can compute
    library.write_bytes(b"SPCOMP-SIM-1\nsha256 " + hashlib.sha256(evil).hexdigest().encode() + b"\n" + evil)
    again = subprocess.run([sys.executable, "-c", _SIM_RUN], capture_output=True, text=True, env=env)
    assert again.returncode == 0, again.stderr
    assert not marker.exists()
    assert library.read_bytes().split(b"\n")[1].startswith(b"hmac-sha256 ")  # rebuilt, signed
    (old / (library.stem + ".so")).unlink()


# ------------------------------------------------------------ size and housekeeping

def test_the_cache_stays_under_its_limit_evicting_the_least_recently_used(cache_dir, monkeypatch):
    spcomp.compile("y[i] = A[i,j]*x[j]", formats={"A": "csr"}, name="first")
    (first,) = cache_dir.glob("*.spk")
    size = first.stat().st_size
    monkeypatch.setenv("SPCOMP_CACHE_MAX", str(4 * size))
    os.utime(first, (1, 1))  # long unused
    for n in range(8):
        spcomp.compile("y[i] = A[i,j]*x[j]", formats={"A": "csr"}, name=f"k{n}")
        assert cache.info()["bytes"] <= 4 * size + 2 * size  # an entry may differ a little in size
    assert not first.exists()
    info = cache.info()
    assert info["usable"] and 1 <= info["entries"] <= 5 and info["limit"] == 4 * size
    assert cache.clear() == info["entries"] + info["libraries"]
    assert cache.info()["entries"] == 0 and (cache_dir / "key").exists()


def test_random_lowerings_survive_their_record_exactly(tmp_path):
    """Every class a lowering can hold is one a record may hold: random expressions
    and formats (sparse outputs, packed levels, diagonals, transpositions) and the
    GPU default schedule's row choice round-trip, so no kernel silently misses the cache."""
    from hypothesis import given, settings
    from hypothesis import strategies as st

    from spcomp.backends import get_target
    from spcomp.frontend import to_notation
    from spcomp.ir.printer import print_ir
    from spcomp.lower.record import Options
    from spcomp.testing.strategies import expressions

    from conftest import examples

    @settings(max_examples=examples(30), deadline=None)
    @given(case=expressions(max_operands=3, max_order=3), backend=st.sampled_from(["cpu", "cuda-sim"]))
    def run(case, backend):
        target = get_target(backend)
        try:
            notation = to_notation(case.text, formats=case.formats, default_dtype="float64")
            low = target.lower(notation, Options.from_schedule(spcomp.Schedule(), None, "k", target.capabilities))
        except spcomp.SpcompError:
            return  # refused: nothing to store
        back = record.decode(record.encode(low))
        assert back == low and print_ir(back.code.module) == print_ir(low.code.module)
    run()
    spmv = spcomp.compile("y[i] = A[i,j]*x[j]", formats={"A": "csr"}, backend="cuda-sim")
    assert spmv.lowered.threads.gpu_choice is not None  # the row choice holds a second lowering
    assert record.decode(record.encode(spmv.lowered)) == spmv.lowered
