"""``spcomp.load`` and ``spcomp.loads``: a saved kernel or program, after its checks.

A file written by :meth:`Kernel.save` or :meth:`ProgramKernel.save` is verified
(magic, signature or checksum, record schema: runtime/cache.py) before a byte of
its record is parsed; the record then says which of the two it holds.
"""
from __future__ import annotations

from pathlib import Path

from .errors import CacheError
from .kernel import Kernel
from .program import ProgramKernel


def load(path, key=None):
    """The kernel or program saved at ``path`` (see :meth:`Kernel.load`)."""
    try:
        data = Path(path).read_bytes()
    except OSError as e:
        raise CacheError(f"cannot read kernel file {path}: {e}") from None
    return loads(data, key, where=str(path))


def loads(data: bytes, key=None, where: str = "kernel bytes"):
    """The kernel or program ``to_bytes`` gave, checked as :func:`load` checks a file."""
    from .runtime import cache, trust
    payload = cache.unpack(bytes(data), where, trust.as_key(key))
    try:
        if isinstance(payload, dict) and payload.get("kind") == "program":
            return ProgramKernel.from_payload(payload, where)
        return Kernel.from_payload(payload, where)
    except (KeyError, TypeError, AttributeError, ValueError, IndexError) as e:
        raise CacheError(f"{where}: not a saved kernel of this spcomp ({type(e).__name__}: {e})") from None
