"""Compiled kernels on disk: the cache under ``~/.cache/spcomp`` and saved kernel files.

A file is a magic line, a signature line and a body: the kernel *record*
(:mod:`.record`: JSON data, never pickle) holding the lowered kernel and its
object code. The signature is checked before the body is parsed:

* cache entries carry an HMAC-SHA256 under this user's key (``key`` in the
  cache directory, made on first use, ``0600``), and the directory must be
  private (:mod:`.trust`): an entry another user planted, or a directory another
  user can write, is never read -- the kernel is compiled instead;
* saved kernels (:meth:`Kernel.save`) carry an HMAC under the key the user
  passes, or, without one, a SHA-256 that detects damage only.

The cache key covers everything that changes the machine code: expression,
formats, dtypes, schedule, options, index width, CPU name and features, libgomp,
and the spcomp, llvmlite and LLVM versions. An entry that fails any check is
removed and rebuilt. The cache holds at most ``SPCOMP_CACHE_MAX`` bytes (default
1 GiB; ``K``/``M``/``G`` suffixes), evicting the least recently used entries.
"""
from __future__ import annotations

import hashlib
import os
import threading
from pathlib import Path

from spcomp.errors import CacheError

from . import record, trust

MAGIC = b"SPCOMP-KERNEL-2\n"
ENTRY_SUFFIX = ".spk"
SIM_FOLDER = "cuda-sim"
DEFAULT_MAX_BYTES = 1 << 30
# eviction brings the cache down to this share of its limit, so that it does not
# run again at every store of a full cache
EVICT_TO = 0.9

_lock = threading.Lock()
_keys: dict = {}        # checked directory -> its key (read once per process)
_estimate: dict = {}    # checked directory -> bytes we believe it holds


def cache_dir() -> Path:
    """``$SPCOMP_CACHE_DIR``, else ``$XDG_CACHE_HOME/spcomp``, else ``~/.cache/spcomp``."""
    env = os.environ.get("SPCOMP_CACHE_DIR")
    if env:
        return Path(env)
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "spcomp"


def cache_enabled() -> bool:
    return os.environ.get("SPCOMP_DISK_CACHE", "1") not in ("0", "false", "no", "off")


def max_bytes() -> int:
    """The cache's size limit: ``SPCOMP_CACHE_MAX`` (bytes, or with K, M, G), else 1 GiB."""
    text = os.environ.get("SPCOMP_CACHE_MAX", "").strip().upper()
    if not text:
        return DEFAULT_MAX_BYTES
    scale = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}.get(text[-1:].upper(), 1)
    try:
        return max(0, int(float(text[:-1] if scale > 1 else text) * scale))
    except ValueError:
        return DEFAULT_MAX_BYTES


def trusted_dir() -> tuple[Path | None, bytes | None]:
    """(the checked cache directory, this user's key there), or (None, None) when
    the disk cache is off or the directory is not private (warned about once)."""
    if not cache_enabled():
        return None, None
    path = cache_dir()
    try:
        real = trust.private_dir(path)
        with _lock:
            key = _keys.get(real)
            if key is None:
                key = _keys[real] = trust.user_key(real)
        return real, key
    except trust.InsecureDirectory as e:
        trust.warn_once(path, str(e), "the kernel cache")
        return None, None


def key_digest(parts) -> str:
    return hashlib.sha256(repr(parts).encode()).hexdigest()


# --------------------------------------------------------------- file format

def pack(payload, key: bytes | None) -> bytes:
    """The file bytes of ``payload``: magic, signature line, record."""
    body = record.encode(payload)
    return MAGIC + trust.sign(body, key) + body


def unpack(data: bytes, where: str = "kernel file", key: bytes | None = None, signed_by: str = "key"):
    """The payload of packed bytes, once magic and signature check out; CacheError
    (a :class:`~.record.RecordError` for another schema) otherwise."""
    if not data.startswith(MAGIC):
        if data.startswith(b"SPCOMP-KERNEL-"):
            version = data[:data.find(b"\n")].decode(errors="replace")
            raise CacheError(f"{where} was written by another spcomp version (format {version!r}); "
                             "recompile and save it again")
        raise CacheError(f"{where}: not a spcomp kernel file (bad magic)")
    body = trust.verify(data[len(MAGIC):], key, where, signed_by)
    return record.decode(body)


def write_atomic(path: Path, data: bytes) -> None:
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    trust.write_private(Path(path), data)


# -------------------------------------------------------------- the entries

def load_entry(digest: str) -> dict | None:
    """The cached payload for ``digest``; None when absent, unusable or damaged (then removed)."""
    folder, key = trusted_dir()
    if folder is None:
        return None
    path = folder / f"{digest}{ENTRY_SUFFIX}"
    try:
        data = trust.read_private(path)
    except OSError:
        return None
    try:
        payload = unpack(data, str(path), key, signed_by="cache key")
        if not isinstance(payload, dict) or payload.get("digest") != digest:
            raise CacheError(f"{path}: key mismatch")
    except CacheError:
        _remove(path)
        return None
    try:
        os.utime(path)  # recently used: evicted last
    except OSError:
        pass
    return payload


def store_entry(digest: str, payload: dict) -> None:
    folder, key = trusted_dir()
    if folder is None:
        return
    try:
        data = pack({**payload, "digest": digest}, key)
    except record.RecordError:
        return  # (a record deeper than the codec walks: the kernel simply is not cached)
    store_bytes(folder, folder / f"{digest}{ENTRY_SUFFIX}", data)


def store_bytes(folder: Path, path: Path, data: bytes) -> None:
    """Write one signed file into the checked cache ``folder``, then keep the cache
    under its size limit. A read-only or full disk only costs a recompile."""
    try:
        path.parent.mkdir(mode=0o700, exist_ok=True)
        trust.write_private(path, data)
    except OSError:
        return
    with _lock:
        total = _estimate.get(folder)
        _estimate[folder] = None if total is None else total + len(data)
    if total is None or total + len(data) > max_bytes():
        evict(folder)


def _files(folder: Path) -> list:
    """(mtime, size, path) of every cache file in ``folder`` (entries, cuda-sim libraries)."""
    out = []
    for sub in (folder, folder / SIM_FOLDER):
        try:
            entries = list(os.scandir(sub))
        except OSError:
            continue
        for e in entries:
            if e.name == trust.KEY_FILE or not e.is_file(follow_symlinks=False):
                continue
            try:
                st = e.stat(follow_symlinks=False)
            except OSError:
                continue
            out.append((st.st_mtime, st.st_size, Path(e.path)))
    return out


def evict(folder: Path) -> int:
    """Remove the least recently used files until the cache fits ``EVICT_TO`` of its
    limit (only when it is over the limit); returns how many went."""
    files = sorted(_files(folder))
    total = sum(size for _t, size, _p in files)
    removed = 0
    limit = max_bytes()
    if total > limit:
        target = int(limit * EVICT_TO)
        for _mtime, size, path in files:
            if total <= target:
                break
            if _remove(path):
                total -= size
                removed += 1
    with _lock:
        _estimate[folder] = total
    return removed


def _remove(path: Path) -> bool:
    try:
        path.unlink()
        return True
    except OSError:
        return False


def info() -> dict:
    """What the disk cache holds: ``path``, ``usable`` (and ``why`` not), ``entries``
    (kernels), ``libraries`` (cuda-sim), ``bytes`` and the ``limit``."""
    path = cache_dir()
    out = {"path": str(path), "usable": False, "why": None, "entries": 0, "libraries": 0,
           "bytes": 0, "limit": max_bytes()}
    if not cache_enabled():
        out["why"] = "disabled by SPCOMP_DISK_CACHE"
        return out
    if not os.path.lexists(path):
        out.update(usable=True, why="not created yet")
        return out
    try:
        real = trust.check_private_dir(path)
    except trust.InsecureDirectory as e:
        out["why"] = str(e)
        return out
    files = _files(real)
    out.update(usable=True, bytes=sum(size for _t, size, _p in files),
               entries=sum(1 for *_x, p in files if p.suffix == ENTRY_SUFFIX),
               libraries=sum(1 for *_x, p in files if p.parent.name == SIM_FOLDER))
    return out


def clear() -> int:
    """Remove every cached kernel and cuda-sim library (not the key); returns how many."""
    path = cache_dir()
    if not os.path.lexists(path):
        return 0
    real = trust.check_private_dir(path)
    removed = sum(1 for *_x, p in _files(real) if _remove(p))
    with _lock:
        _estimate.pop(real, None)
    return removed
