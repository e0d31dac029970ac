"""Compiled kernels on disk: the cache under ``~/.cache/spcomp`` and saved kernels.

An entry is one file: a magic line, the SHA-256 of the payload, and the payload
(a pickle of the lowered kernel, its object code and its LLVM IR text). The key
covers everything that changes the machine code: expression, formats, dtypes,
schedule, options, index width, CPU name and features, and the spcomp, llvmlite
and LLVM versions. A file whose checksum, magic or key does not match is
rebuilt, never loaded: LLVM would crash the process on corrupt object code.

Pickle runs code when it loads: load saved kernels only from sources you trust
(your own cache directory, files you built).
"""
from __future__ import annotations

import hashlib
import os
import pickle
import tempfile
from pathlib import Path

from spcomp.errors import CacheError

MAGIC = b"SPCOMP-KERNEL-1\n"


def cache_dir() -> Path:
    """``$SPCOMP_CACHE_DIR``, else ``$XDG_CACHE_HOME/spcomp``, else ``~/.cache/spcomp``."""
    env = os.environ.get("SPCOMP_CACHE_DIR")
    if env:
        return Path(env)
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "spcomp"


def cache_enabled() -> bool:
    return os.environ.get("SPCOMP_DISK_CACHE", "1") not in ("0", "false", "no", "off")


def key_digest(parts) -> str:
    return hashlib.sha256(repr(parts).encode()).hexdigest()


def pack(payload: dict) -> bytes:
    body = pickle.dumps(payload, protocol=pickle.HIGHEST_PROTOCOL)
    return MAGIC + hashlib.sha256(body).hexdigest().encode() + b"\n" + body


def unpack(data: bytes, where: str = "kernel file") -> dict:
    """The payload of a packed entry; CacheError if it is not intact."""
    if not data.startswith(MAGIC):
        raise CacheError(f"{where}: not a spcomp kernel file (bad magic)")
    rest = data[len(MAGIC):]
    digest, sep, body = rest.partition(b"\n")
    if not sep or len(digest) != 64:
        raise CacheError(f"{where}: truncated header")
    if hashlib.sha256(body).hexdigest().encode() != digest:
        raise CacheError(f"{where}: checksum mismatch (truncated or corrupt)")
    try:
        payload = pickle.loads(body)
    except Exception as e:  # a valid checksum makes this unlikely
        raise CacheError(f"{where}: cannot read payload: {e}") from None
    if not isinstance(payload, dict):
        raise CacheError(f"{where}: unexpected payload")
    return payload


def write_atomic(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


def load_entry(digest: str) -> dict | None:
    """The cached payload for ``digest``; None when absent or damaged (then removed)."""
    if not cache_enabled():
        return None
    path = cache_dir() / f"{digest}.spk"
    try:
        data = path.read_bytes()
    except OSError:
        return None
    try:
        payload = unpack(data, str(path))
        if payload.get("digest") != digest:
            raise CacheError(f"{path}: key mismatch")
        return payload
    except CacheError:
        try:
            path.unlink()
        except OSError:
            pass
        return None


def store_entry(digest: str, payload: dict) -> None:
    if not cache_enabled():
        return
    try:
        write_atomic(cache_dir() / f"{digest}.spk", pack({**payload, "digest": digest}))
    except OSError:
        pass  # a read-only or full disk only costs a recompile next time
