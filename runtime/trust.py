"""Files spcomp reads back and then trusts: private directories, a per-user key, MACs.

The disk cache and the cuda-sim libraries hold machine code that spcomp loads
into the process. Whoever can write those files can run code as the user, so
before anything is read from a directory spcomp checks, as ssh and pip do, that
nobody else can write there:

* the directory is a directory owned by this user and not writable by group or
  others (spcomp creates it ``0700``);
* every directory above it is owned by this user or root, and is either not
  writable by group and others or sticky (``/tmp``), so nobody else can swap it.

A directory that fails is refused with a :class:`~spcomp.errors.InsecureCacheWarning`
naming the reason, and spcomp works without it (compiles, keeps kernels in memory).

Inside a checked directory, ``key`` (32 random bytes, ``0600``) is this user's
secret. Every entry carries an HMAC-SHA256 of its bytes under that key, checked
before the bytes are parsed or loaded: an entry someone else wrote -- or one
copied from another machine -- is never used.
"""
from __future__ import annotations

import hashlib
import hmac
import os
import secrets
import stat
import tempfile
import warnings
from pathlib import Path

from spcomp.errors import CacheError, InsecureCacheWarning

KEY_FILE = "key"
KEY_BYTES = 32

_warned: set = set()


class InsecureDirectory(CacheError):
    """A directory spcomp will not read trusted files from (the message says why)."""


def _uid() -> int:
    return os.geteuid() if hasattr(os, "geteuid") else -1


def _writable_by_others(st) -> bool:
    return bool(st.st_mode & (stat.S_IWGRP | stat.S_IWOTH))


def check_private_dir(path: Path) -> Path:
    """``path`` resolved, after checking that only this user can write into it (see
    the module docstring); raises :class:`InsecureDirectory` naming what is wrong."""
    if not hasattr(os, "geteuid"):
        return Path(path)  # no POSIX ownership to check (Windows): the user's profile is private
    real = Path(os.path.realpath(path))
    uid = _uid()
    try:
        st = os.stat(real)
    except OSError as e:
        raise InsecureDirectory(f"{real}: {e.strerror}") from None
    if not stat.S_ISDIR(st.st_mode):
        raise InsecureDirectory(f"{real} is not a directory")
    if st.st_uid != uid:
        raise InsecureDirectory(f"{real} is owned by uid {st.st_uid}, not by this user (uid {uid})")
    if _writable_by_others(st):
        raise InsecureDirectory(f"{real} is writable by other users (mode {stat.S_IMODE(st.st_mode):04o}); "
                                f"make it private with: chmod 700 {real}")
    for parent in real.parents:
        pst = os.stat(parent)
        if pst.st_uid not in (uid, 0):
            raise InsecureDirectory(f"{parent}, above {real}, is owned by uid {pst.st_uid}: that user "
                                    "could replace the directory")
        if _writable_by_others(pst) and not pst.st_mode & stat.S_ISVTX:
            raise InsecureDirectory(f"{parent}, above {real}, is writable by other users and not sticky "
                                    f"(mode {stat.S_IMODE(pst.st_mode):04o}): they could replace the directory")
    return real


def private_dir(path: Path) -> Path:
    """``path`` created ``0700`` if missing (its missing parents too), then checked."""
    path = Path(path)
    missing = []
    for p in [path, *path.parents]:
        if os.path.lexists(p):
            break
        missing.append(p)
    for p in reversed(missing):
        try:
            os.mkdir(p, 0o700)
        except FileExistsError:
            pass
        except OSError as e:
            raise InsecureDirectory(f"cannot create {p}: {e.strerror}") from None
    return check_private_dir(path)


def warn_once(path, why: str, what: str) -> None:
    """One InsecureCacheWarning per directory and process."""
    key = (str(path), what)
    if key in _warned:
        return
    _warned.add(key)
    warnings.warn(f"spcomp: not using {what} at {path}: {why}", InsecureCacheWarning, stacklevel=3)


def read_private(path: Path, limit: int | None = None) -> bytes:
    """The bytes of a regular file owned by this user, not followed through a link;
    OSError (FileNotFoundError when absent) otherwise."""
    flags = os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)
    fd = os.open(path, flags)
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or (hasattr(os, "geteuid") and st.st_uid != _uid()):
            raise PermissionError(f"{path} is not a regular file owned by this user")
        if limit is not None and st.st_size > limit:
            raise OSError(f"{path} is larger than {limit} bytes")
        chunks = []
        while True:
            chunk = os.read(fd, 1 << 20)
            if not chunk:
                break
            chunks.append(chunk)
        return b"".join(chunks)
    finally:
        os.close(fd)


def write_private(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically (a temporary file renamed over it), mode 0600."""
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


def user_key(directory: Path) -> bytes:
    """This user's secret key in ``directory`` (a checked private dir), made on first
    use; InsecureDirectory when the file there is not this user's private key."""
    path = Path(directory) / KEY_FILE
    try:
        key = read_private(path)
    except FileNotFoundError:
        fd, tmp = tempfile.mkstemp(dir=directory, prefix=".key-")  # 0600
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(secrets.token_bytes(KEY_BYTES))
            try:
                os.link(tmp, path)  # atomic and never replaces: a concurrent maker's key wins
            except FileExistsError:
                pass
        finally:
            os.unlink(tmp)
        key = read_private(path)
    except OSError as e:
        raise InsecureDirectory(f"cannot read the key {path}: {e}") from None
    if len(key) != KEY_BYTES:
        raise InsecureDirectory(f"the key {path} is damaged ({len(key)} bytes, expected {KEY_BYTES}); "
                                "remove it (every cached kernel is then rebuilt)")
    st = os.stat(path, follow_symlinks=False)
    if stat.S_IMODE(st.st_mode) & 0o077:
        raise InsecureDirectory(f"the key {path} is readable by other users "
                                f"(mode {stat.S_IMODE(st.st_mode):04o}); remove it")
    return key


# ---------------------------------------------------------------- signatures

HMAC = b"hmac-sha256"
DIGEST = b"sha256"


def sign(body: bytes, key: bytes | None) -> bytes:
    """A header line for ``body``: its HMAC-SHA256 under ``key``, or (no key) its
    SHA-256, which detects damage but proves nothing about who wrote it."""
    if key is None:
        return DIGEST + b" " + hashlib.sha256(body).hexdigest().encode() + b"\n"
    return HMAC + b" " + hmac.new(key, body, hashlib.sha256).hexdigest().encode() + b"\n"


def verify(data: bytes, key: bytes | None, where: str, signed_by: str = "key") -> bytes:
    """The body after a :func:`sign` header, once its HMAC (with ``key``) or digest
    (without) matches; CacheError saying what does not."""
    line, sep, body = data.partition(b"\n")
    scheme, _, mac = line.partition(b" ")
    if not sep or len(mac) != 64:
        raise CacheError(f"{where}: truncated or malformed header")
    if scheme == HMAC and key is None:
        raise CacheError(f"{where} is signed: pass the {signed_by} it was saved with to load it")
    if scheme == DIGEST and key is not None:
        raise CacheError(f"{where} is not signed (it was saved without a key), so it cannot be "
                         "checked against this key")
    if scheme not in (HMAC, DIGEST):
        raise CacheError(f"{where}: unknown signature scheme {scheme[:20]!r}")
    want = sign(body, key).split(b" ", 1)[1].strip()
    if not hmac.compare_digest(want, mac):
        raise CacheError(f"{where}: the signature does not match (damaged, or written by someone "
                         f"without this {signed_by})" if key is not None else
                         f"{where}: checksum mismatch (truncated or corrupt)")
    return body


def as_key(key) -> bytes | None:
    """A user's signing key as bytes (str is UTF-8 encoded); None stays None."""
    if key is None:
        return None
    if isinstance(key, str):
        key = key.encode()
    if not isinstance(key, (bytes, bytearray)) or len(key) < 16:
        raise CacheError("a signing key is bytes or str of at least 16 bytes "
                         "(e.g. secrets.token_bytes(32))")
    return bytes(key)
