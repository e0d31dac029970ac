"""Compiled-kernel records as plain data: no pickle, no code run on reading.

The disk cache and saved kernels hold the lowered kernel (kernel IR, bindings,
output and thread plans, index notation, options) next to its object code. They
used to be pickles, and unpickling runs whatever a file says. Here a record is
JSON: numbers, strings, lists, and for each dataclass instance its class *tag*
and field values. :func:`decode` builds only classes of :data:`RECORD_MODULES`
(looked up in a table, never imported by name from the file), through their own
constructors, so a crafted file can at worst describe a wrong kernel, which the
object-code checks and the cache key then refuse.

Identity is kept: an instance met twice is written once and referred to after
(the lowering shares ``Var`` and ``TensorVar`` objects between its parts).

:data:`SCHEMA` digests every registered class's name and fields together with
:data:`RECORD_VERSION`: a record written by a spcomp whose classes differ is
refused (:class:`RecordError`) and rebuilt, never read with guessed defaults.
"""
from __future__ import annotations

import base64
import dataclasses
import hashlib
import importlib
import json
import math

from spcomp.errors import CacheError
from spcomp.formats.registry import LEVEL_KINDS

# bump when the meaning of a field changes without its name changing
RECORD_VERSION = 1

# every module whose dataclasses may appear in a record
RECORD_MODULES = (
    "spcomp.ir.types", "spcomp.ir.nodes", "spcomp.ir.target", "spcomp.notation.nodes",
    "spcomp.formats.level", "spcomp.formats.format",
    "spcomp.lower.context", "spcomp.lower.record", "spcomp.lower.split", "spcomp.lower.blocked",
    "spcomp.lower.diagonal", "spcomp.lower.assembly", "spcomp.lower.blas",
    "spcomp.backends.cuda.default_schedule",
) + tuple(dict.fromkeys(kind.__module__ for kind in LEVEL_KINDS.values()))  # every registered level kind


class RecordError(CacheError):
    """A record that is not well formed, or written by another schema."""


def _registry() -> dict:
    """tag -> class, for every dataclass defined in RECORD_MODULES."""
    table = {}
    for name in RECORD_MODULES:
        module = importlib.import_module(name)
        for value in vars(module).values():
            if (isinstance(value, type) and dataclasses.is_dataclass(value)
                    and value.__module__ == name):
                table[f"{name}:{value.__qualname__}"] = value
    return table


_CLASSES: dict | None = None
_TAGS: dict | None = None
_SCHEMA: str | None = None


def _tables():
    global _CLASSES, _TAGS, _SCHEMA
    if _CLASSES is None:
        from spcomp.lower.record import LOWERED_VERSION
        classes = _registry()
        shape = sorted((tag, [f.name for f in dataclasses.fields(cls)]) for tag, cls in classes.items())
        _SCHEMA = hashlib.sha256(repr((RECORD_VERSION, LOWERED_VERSION, shape)).encode()).hexdigest()[:16]
        _TAGS = {cls: tag for tag, cls in classes.items()}
        _CLASSES = classes
    return _CLASSES, _TAGS


def schema() -> str:
    """The digest of the record schema this spcomp reads and writes."""
    _tables()
    return _SCHEMA


# ------------------------------------------------------------------ encoding

class _Encoder:
    def __init__(self):
        _, self.tags = _tables()
        self.memo: dict = {}   # id(instance) -> table index
        self.keep: list = []   # the instances, so their ids stay theirs while encoding

    def value(self, x):
        if x is None or isinstance(x, (bool, str)):
            return x
        if isinstance(x, int):
            return int(x)
        if isinstance(x, float):
            return x if math.isfinite(x) else {"f": repr(float(x))}
        if isinstance(x, list):
            return [self.value(v) for v in x]
        if isinstance(x, tuple):
            return {"t": [self.value(v) for v in x]}
        if isinstance(x, dict):
            return {"d": [[self.value(k), self.value(v)] for k, v in x.items()]}
        if isinstance(x, (set, frozenset)):
            return {"s" if isinstance(x, set) else "fs": [self.value(v) for v in x]}
        if isinstance(x, (bytes, bytearray, memoryview)):
            return {"b": base64.b64encode(bytes(x)).decode("ascii")}
        tag = self.tags.get(type(x))
        if tag is not None:
            return self.instance(x, tag)
        item = getattr(x, "item", None)  # a NumPy scalar
        if item is not None and type(x).__module__ == "numpy":
            return self.value(item())
        raise RecordError(f"cannot record a {type(x).__module__}.{type(x).__qualname__} "
                          f"(add its module to RECORD_MODULES if it belongs in a kernel record)")

    def instance(self, x, tag):
        ref = self.memo.get(id(x))
        if ref is not None:
            return {"r": ref}
        fields = dataclasses.fields(x)
        extra = set(getattr(x, "__dict__", {})) - {f.name for f in fields}
        if extra:
            raise RecordError(f"{tag} instance has attributes outside its fields: {sorted(extra)}")
        values = [self.value(getattr(x, f.name)) for f in fields]
        self.memo[id(x)] = len(self.keep)
        self.keep.append(x)
        return {"c": tag, "v": values}


def encode(obj) -> bytes:
    """``obj`` (dataclasses of RECORD_MODULES, containers, scalars, bytes) as JSON bytes."""
    body = {"schema": schema(), "value": _Encoder().value(obj)}
    return json.dumps(body, separators=(",", ":"), allow_nan=False).encode()


# ------------------------------------------------------------------ decoding

class _Decoder:
    def __init__(self):
        self.classes = _layouts()
        self.table: list = []

    def value(self, x):
        kind = type(x)
        if kind is list:
            return [self.value(v) for v in x]
        if kind is not dict:
            if x is None or kind in (bool, int, float, str):
                return x
            raise RecordError(f"malformed record value {str(x)[:60]!r}")
        if "c" in x:
            return self.instance(x)
        if len(x) != 1:
            raise RecordError(f"malformed record value {str(x)[:60]!r}")
        (key, v), = x.items()
        if key == "r":
            if type(v) is not int or not 0 <= v < len(self.table):
                raise RecordError(f"record refers to instance {v!r}, which it has not defined")
            return self.table[v]
        if key == "f" and v in ("inf", "-inf", "nan"):
            return float(v)
        if key == "b" and isinstance(v, str):
            try:
                return base64.b64decode(v.encode("ascii"), validate=True)
            except (ValueError, UnicodeEncodeError):
                raise RecordError("record holds malformed base64 data") from None
        if type(v) is not list:
            raise RecordError(f"malformed record value {str(x)[:60]!r}")
        if key == "t":
            return tuple([self.value(e) for e in v])
        if key == "d":
            return {self._key(e): self.value(e[1]) for e in v}
        if key in ("s", "fs"):
            items = [self.value(e) for e in v]
            try:
                return set(items) if key == "s" else frozenset(items)
            except TypeError:
                raise RecordError("record holds an unhashable set member") from None
        raise RecordError(f"malformed record value {str(x)[:60]!r}")

    def _key(self, pair):
        if type(pair) is not list or len(pair) != 2:
            raise RecordError("malformed record mapping")
        key = self.value(pair[0])
        try:
            hash(key)
        except TypeError:
            raise RecordError("record holds an unhashable mapping key") from None
        return key

    def instance(self, x):
        layout = self.classes.get(x.get("c"))
        values = x.get("v")
        if layout is None:
            raise RecordError(f"record names class {str(x.get('c'))[:80]!r}, which a kernel record "
                              "may not hold")
        cls, names, init, plain = layout
        if type(values) is not list or len(values) != len(names) or len(x) != 2:
            raise RecordError(f"record of {cls.__qualname__} has the wrong number of fields")
        decoded = dict(zip(names, [self.value(v) for v in values]))
        if plain:  # nothing to check: fill the instance as __init__ would, quicker
            obj = object.__new__(cls)
            obj.__dict__.update(decoded)
        else:
            try:
                obj = cls(**{name: decoded[name] for name in init})
            except Exception as e:  # a constructor's own checks refused the values
                raise RecordError(f"record of {cls.__qualname__} is not valid: {e}") from None
            for name in names:
                if name not in init:
                    object.__setattr__(obj, name, decoded[name])
        self.table.append(obj)
        return obj


_LAYOUTS: dict | None = None


def _layouts() -> dict:
    """tag -> (class, field names, init field names, plain): whether the class is
    built by its generated ``__init__`` alone (every field an init field, no
    ``__post_init__`` checks, no slots), so decoding may fill it directly."""
    global _LAYOUTS
    if _LAYOUTS is None:
        classes, _ = _tables()
        table = {}
        for tag, cls in classes.items():
            fields = dataclasses.fields(cls)
            init = frozenset(f.name for f in fields if f.init)
            plain = (not hasattr(cls, "__post_init__") and "__slots__" not in vars(cls)
                     and len(init) == len(fields))
            table[tag] = (cls, tuple(f.name for f in fields), init, plain)
        _LAYOUTS = table
    return _LAYOUTS


def decode(data: bytes):
    """The object :func:`encode` wrote; RecordError when the bytes are not a record
    of this schema (another spcomp version, or damage)."""
    try:
        body = json.loads(data)
    except (ValueError, UnicodeDecodeError) as e:
        raise RecordError(f"not a kernel record: {e}") from None
    if not isinstance(body, dict) or "value" not in body:
        raise RecordError("not a kernel record")
    if body.get("schema") != schema():
        raise RecordError(f"kernel record of schema {str(body.get('schema'))[:20]!r}; this spcomp reads "
                          f"{schema()!r} (written by another spcomp version)")
    try:
        return _Decoder().value(body["value"])
    except RecursionError:
        raise RecordError("kernel record nested too deeply") from None
