"""Chunked sparse arrays from a matrix in memory or from files read in pieces.

``from_scipy`` cuts a matrix in memory into chunks. The file readers never hold a
whole file in one process: a file is split into pieces (byte ranges of a
MatrixMarket or FROSTT ``.tns`` text file, entry ranges of a SciPy ``.npz``), one
task reads a piece and sorts its entries by the chunk they fall in, and each
chunk is assembled from its share of every piece (a shuffle: pieces x chunks small
tasks). Coordinate files are unordered, so every chunk may need every piece; what
one task holds is one piece, or one chunk. The files must be readable by the
workers at the same path (a shared file system, or a local cluster).
"""
from __future__ import annotations

import os
import uuid
import warnings
import zipfile
from itertools import product

import numpy as np

from spcomp.errors import DTypeError, ShapeError, UnsupportedError
from spcomp.runtime import Tensor

from . import blocks

BLOCKSIZE = 32 << 20        # bytes of text one reading task parses
ENTRIES = 1 << 22           # entries of an .npz one reading task reads


def _normalize(chunks, shape) -> tuple:
    from dask.array.core import normalize_chunks
    return normalize_chunks(chunks, tuple(shape), dtype=np.float64)


def _default_format(ndim: int) -> str:
    return "csr" if ndim == 2 else "csf" if ndim > 2 else "dense"


def _kind(chunk_type: str, ndim: int) -> str:
    if chunk_type not in (blocks.TENSOR, blocks.SCIPY):
        raise ValueError(f"chunk_type is 'tensor' or 'scipy', not {chunk_type!r}")
    if chunk_type == blocks.SCIPY and ndim != 2:
        raise ValueError(f"chunk_type='scipy' needs a matrix; this tensor has {ndim} dimensions")
    return chunk_type


# ------------------------------------------------------------------ in memory

def from_scipy(m, chunks, format=None):
    """A Dask array of the SciPy sparse matrix ``m`` cut into ``chunks`` (anything
    ``dask.array`` takes: ``1000``, ``(1000, 500)``, explicit sizes). Chunks are SciPy
    matrices of ``m``'s class (CSC stays CSC, other kinds become CSR), or
    :class:`spcomp.Tensor` objects in ``format`` when it is given."""
    import dask.array as da
    import scipy.sparse as sp
    from dask.highlevelgraph import HighLevelGraph
    if not sp.issparse(m):
        raise TypeError(f"from_scipy takes a scipy.sparse matrix or array, not {type(m).__name__}")
    chunks = _normalize(chunks, m.shape)
    m = m if m.format in ("csr", "csc") else m.tocsr()
    bounds = [np.cumsum((0,) + c) for c in chunks]
    name = f"spcomp-from-scipy-{uuid.uuid4().hex}"
    dsk = {}
    for b in product(*(range(len(c)) for c in chunks)):
        index = tuple(slice(int(bounds[d][k]), int(bounds[d][k + 1])) for d, k in enumerate(b))
        piece = m[index]
        dsk[(name,) + b] = piece if format is None else Tensor.from_scipy(piece, format)
    first = dsk[(name,) + (0,) * len(chunks)]
    from .graph import meta_of
    return da.Array(HighLevelGraph.from_collections(name, dsk), name, chunks=chunks, meta=meta_of(first))


def from_tensor(t, chunks):
    """A Dask array of the :class:`spcomp.Tensor` ``t`` cut into ``chunks``: Tensor
    chunks in ``t``'s format, each a slice of ``t`` made by its own task."""
    from .graph import refine, single_chunk
    if not isinstance(t, Tensor):
        raise TypeError(f"from_tensor takes a spcomp.Tensor, not {type(t).__name__}")
    return refine(single_chunk(t), _normalize(chunks, t.shape))


# ------------------------------------------------------------------ the shuffle

def _coordinate_array(name, reader, pieces, shape, chunks, kind, format, dtype):
    """The array whose chunks gather the entries ``reader(*piece)`` returns for each
    piece: ``(coords (ndim, n) zero-based, values)``."""
    import dask.array as da
    from dask.highlevelgraph import HighLevelGraph
    chunks = _normalize(chunks, shape)
    bounds = tuple(tuple(int(x) for x in np.cumsum((0,) + c)) for c in chunks)
    grid = list(product(*(range(len(c)) for c in chunks)))
    dsk = {}
    for r, piece in enumerate(pieces):
        dsk[(f"{name}-read", r)] = (_bucket, reader, piece, bounds)
        for b in grid:
            dsk[(f"{name}-piece", r) + b] = (_piece, (f"{name}-read", r), b)
    for b in grid:
        box = tuple(chunks[d][k] for d, k in enumerate(b))
        dsk[(name,) + b] = (_assemble, box, kind, format, dtype,
                            [(f"{name}-piece", r) + b for r in range(len(pieces))])
    meta = (blocks.scipy_meta(format, dtype, False) if kind == blocks.SCIPY
            else blocks.TensorMeta(len(shape), dtype, format))
    return da.Array(HighLevelGraph.from_collections(name, dsk), name, chunks=chunks, meta=meta)


def _bucket(reader, piece, bounds) -> dict:
    """One piece's entries sorted by chunk: chunk index -> (local coords, values)."""
    coords, values = reader(*piece)
    if values.shape[0] == 0:
        return {}
    which = [np.searchsorted(np.asarray(b), coords[d], side="right") - 1 for d, b in enumerate(bounds)]
    flat = np.ravel_multi_index(which, [len(b) - 1 for b in bounds])
    order = np.argsort(flat, kind="stable")
    flat, coords, values = flat[order], coords[:, order], values[order]
    which = [w[order] for w in which]
    starts = np.flatnonzero(np.r_[True, flat[1:] != flat[:-1]])
    ends = np.r_[starts[1:], flat.shape[0]]
    out = {}
    for s, e in zip(starts, ends):
        b = tuple(int(w[s]) for w in which)
        offset = np.array([bounds[d][k] for d, k in enumerate(b)], np.int64)[:, None]
        out[b] = (coords[:, s:e] - offset, values[s:e])
    return out


def _piece(bucketed: dict, b):
    return bucketed.get(tuple(b))


def _assemble(box, kind, format, dtype, pieces):
    pieces = [p for p in pieces if p is not None]
    if pieces:
        coords = np.concatenate([p[0] for p in pieces], axis=1)
        values = np.concatenate([p[1] for p in pieces])
    else:
        coords, values = np.zeros((len(box), 0), np.int64), np.zeros(0, dtype)
    values = values.astype(dtype, copy=False)
    return blocks.coo_chunk(coords, values, tuple(box), kind, _fmt(format, len(box)))


def _fmt(format, ndim: int):
    from spcomp.formats import Format
    return format if isinstance(format, Format) else Format.parse(format, ndim=ndim)


# ------------------------------------------------------------------ text files

def _text(path, start: int, stop: int, first: int) -> bytes:
    """The lines whose first byte lies in ``[start, stop)`` (``first`` is where the
    data lines begin: a piece that starts there does not skip a partial line)."""
    with open(path, "rb") as f:
        if start > first:
            f.seek(start - 1)
            f.readline()  # the rest of a line that began before start (or just its newline)
        else:
            f.seek(start)
        pos = f.tell()
        if pos >= stop:
            return b""
        data = f.read(stop - pos)
        if data and not data.endswith(b"\n"):
            data += f.readline()
    return data


def _numbers(data: bytes, ncols: int, comment: bytes, path) -> np.ndarray:
    """The whitespace-separated numbers of ``data`` as rows of ``ncols``."""
    if comment in data:
        data = b"\n".join(line for line in data.splitlines() if not line.lstrip().startswith(comment))
    if not data.strip():
        return np.zeros((0, ncols))
    with warnings.catch_warnings():
        warnings.simplefilter("error", DeprecationWarning)  # NumPy's word for "stopped at a bad number"
        try:
            nums = np.fromstring(data, sep=" ")
        except (DeprecationWarning, ValueError):
            nums = None
    if nums is None or nums.size % ncols:
        raise ShapeError(f"{path}: malformed data lines (expected {ncols} numbers a line)")
    return nums.reshape(-1, ncols)


def _pieces(path, first: int, blocksize: int) -> list:
    size = os.path.getsize(path)
    return [(start, min(start + blocksize, size)) for start in range(first, size, blocksize)] or [(first, first)]


def _read_mm(path, start, stop, first, field, symmetry, shape):
    rows = _numbers(_text(path, start, stop, first), 2 if field == "pattern" else 3, b"%", path)
    coords = rows[:, :2].T.astype(np.int64) - 1
    values = np.ones(rows.shape[0]) if field == "pattern" else rows[:, 2].copy()
    _check_inside(coords, shape, path)
    if symmetry != "general":
        off = coords[0] != coords[1]
        mirrored = values[off] if symmetry != "skew-symmetric" else -values[off]
        coords = np.concatenate([coords, coords[::-1, off]], axis=1)
        values = np.concatenate([values, mirrored])
    return coords, values


def _check_inside(coords, shape, path) -> None:
    if coords.shape[1] and ((coords.min(axis=1) < 0).any()
                            or (coords.max(axis=1) >= np.asarray(shape)).any()):
        raise ShapeError(f"{path}: a coordinate lies outside the shape {tuple(shape)} (indices are 1-based)")


def mm_header(path) -> dict:
    """A MatrixMarket file's banner and size line: ``shape``, ``nnz``, ``field``,
    ``symmetry``, ``first`` (the byte offset of the first data line)."""
    with open(path, "rb") as f:
        banner = f.readline().decode("ascii", "replace").split()
        if len(banner) < 5 or banner[0].lower() != "%%matrixmarket" or banner[1].lower() != "matrix":
            raise UnsupportedError(f"{path}: not a MatrixMarket matrix file (banner {' '.join(banner)!r})")
        layout, field, symmetry = (w.lower() for w in banner[2:5])
        if layout != "coordinate":
            raise UnsupportedError(f"{path}: a dense ('{layout}') MatrixMarket file; read it with "
                                   "spcomp.runtime.read_matrix_market (or scipy.io.mmread) and "
                                   "dask.array.from_array")
        if field not in ("real", "integer", "pattern", "double"):
            raise DTypeError(f"{path}: MatrixMarket field {field!r} (spcomp stores real values)")
        if symmetry not in ("general", "symmetric", "skew-symmetric", "hermitian"):
            raise UnsupportedError(f"{path}: MatrixMarket symmetry {symmetry!r}")
        line = f.readline()
        while line.lstrip().startswith(b"%") or not line.strip():
            if not line:
                raise ShapeError(f"{path}: no size line")
            line = f.readline()
        rows, cols, nnz = (int(x) for x in line.split()[:3])
        return {"shape": (rows, cols), "nnz": nnz, "field": field,
                "symmetry": "symmetric" if symmetry == "hermitian" else symmetry, "first": f.tell()}


def read_matrix_market(path, chunks, format="csr", chunk_type: str = "tensor", dtype="float64",
                       blocksize: int = BLOCKSIZE):
    """A Dask array of a MatrixMarket coordinate file, read ``blocksize`` bytes of
    lines per task (real, integer or pattern; symmetric files come back expanded).
    Chunks are :class:`spcomp.Tensor` objects in ``format``, or SciPy matrices with
    ``chunk_type="scipy"``."""
    path = os.fspath(path)
    head = mm_header(path)
    kind = _kind(chunk_type, 2)
    pieces = [(path, s, e, head["first"], head["field"], head["symmetry"], head["shape"])
              for s, e in _pieces(path, head["first"], blocksize)]
    return _coordinate_array(f"spcomp-mtx-{uuid.uuid4().hex}", _read_mm, pieces, head["shape"], chunks,
                             kind, _fmt(format, 2), np.dtype(dtype))


def _read_tns(path, start, stop, first, ndim, shape):
    rows = _numbers(_text(path, start, stop, first), ndim + 1, b"#", path)
    coords = rows[:, :ndim].T.astype(np.int64) - 1
    if shape is not None:
        _check_inside(coords, shape, path)
    return coords, rows[:, ndim].copy()


def _tns_max(path, start, stop, first, ndim):
    coords, _ = _read_tns(path, start, stop, first, ndim, None)
    return coords.max(axis=1) + 1 if coords.shape[1] else np.zeros(ndim, np.int64)


def read_tns(path, chunks, shape=None, format=None, chunk_type: str = "tensor", dtype="float64",
             blocksize: int = BLOCKSIZE):
    """A Dask array of a FROSTT ``.tns`` file (one entry a line: 1-based indices, then
    the value; ``#`` comments), read ``blocksize`` bytes per task. Without ``shape``
    the file is scanned once first, in the same pieces (with Dask's current
    scheduler), for the largest index of each mode. Chunks are Tensors in ``format``
    (default ``csr`` for matrices, ``csf`` above)."""
    import dask
    path = os.fspath(path)
    ndim = _tns_order(path)
    kind = _kind(chunk_type, ndim)
    ranges = _pieces(path, 0, blocksize)
    if shape is None:
        maxima = dask.compute(*[dask.delayed(_tns_max, pure=True)(path, s, e, 0, ndim) for s, e in ranges])
        shape = tuple(int(x) for x in np.max(np.stack(maxima), axis=0))
    shape = tuple(int(s) for s in shape)
    if len(shape) != ndim:
        raise ShapeError(f"{path} has {ndim} indices a line, but shape {shape} has {len(shape)}")
    pieces = [(path, s, e, 0, ndim, shape) for s, e in ranges]
    return _coordinate_array(f"spcomp-tns-{uuid.uuid4().hex}", _read_tns, pieces, shape, chunks, kind,
                             _fmt(format or _default_format(ndim), ndim), np.dtype(dtype))


def _tns_order(path) -> int:
    with open(path, "rb") as f:
        for line in f:
            words = line.split()
            if words and not words[0].startswith(b"#"):
                if len(words) < 2:
                    raise ShapeError(f"{path}: a .tns line holds indices and a value: {line!r}")
                return len(words) - 1
    raise ShapeError(f"{path}: no entries")


# ------------------------------------------------------------------ .npz

def _member(z: zipfile.ZipFile, name: str):
    """``(dtype, shape, offset)`` of an .npy member: where its values begin."""
    with z.open(name + ".npy") as f:
        version = np.lib.format.read_magic(f)
        read = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
        shape, fortran, dtype = read(f)
        if fortran and len(shape) > 1:
            raise UnsupportedError(f"{name}: Fortran-ordered arrays are not read in pieces")
        return dtype, shape, f.tell()


def _member_slice(z: zipfile.ZipFile, name: str, start: int, stop: int) -> np.ndarray:
    """Elements ``[start, stop)`` of the flattened .npy member ``name``, read by seeking
    (a compressed member is decompressed up to there, in a stream, not held)."""
    dtype, _, offset = _member(z, name)
    with z.open(name + ".npy") as f:
        f.seek(offset + start * dtype.itemsize)
        data = f.read((stop - start) * dtype.itemsize)
    return np.frombuffer(data, dtype).copy()


def _read_npz(path, kind, start, stop, shape):
    with zipfile.ZipFile(path) as z:
        if kind in ("csr", "csc"):
            indptr = _member_slice(z, "indptr", 0, _member(z, "indptr")[1][0]).astype(np.int64)
            major = np.searchsorted(indptr, np.arange(start, stop), side="right") - 1
            minor = _member_slice(z, "indices", start, stop).astype(np.int64)
            coords = np.stack([major, minor] if kind == "csr" else [minor, major])
        elif "coords" in {n[:-4] for n in z.namelist()}:
            nnz = _member(z, "coords")[1][1]
            coords = np.stack([_member_slice(z, "coords", d * nnz + start, d * nnz + stop)
                               for d in range(len(shape))]).astype(np.int64)
        else:
            coords = np.stack([_member_slice(z, "row", start, stop), _member_slice(z, "col", start, stop)])
            coords = coords.astype(np.int64)
        values = _member_slice(z, "data", start, stop)
    return coords, values


def from_npz(path, chunks, format=None, chunk_type: str = "tensor", entries: int = ENTRIES):
    """A Dask array of a ``scipy.sparse.save_npz`` file (CSR, CSC or COO), read
    ``entries`` stored entries per task by seeking inside the archive, so no task
    holds the whole matrix (a CSR/CSC task does read all of ``indptr``). Chunks are
    Tensors in ``format`` (default ``csr``), or SciPy matrices with
    ``chunk_type="scipy"``."""
    path = os.fspath(path)
    with zipfile.ZipFile(path) as z:
        names = {n[:-4] for n in z.namelist()}
        if "format" not in names or "data" not in names:
            raise UnsupportedError(f"{path}: not a scipy.sparse.save_npz file")
        with np.load(path) as f:
            kind = f["format"].item()
            kind = kind.decode() if isinstance(kind, bytes) else str(kind)
            shape = tuple(int(s) for s in f["shape"])
        dtype, data_shape, _ = _member(z, "data")
    if kind not in ("csr", "csc", "coo"):
        raise UnsupportedError(f"{path}: a {kind!r} matrix; from_npz reads CSR, CSC and COO files "
                               "(convert it with scipy and save it again)")
    nnz = int(data_shape[0])
    pieces = [(path, kind, s, min(s + entries, nnz), shape) for s in range(0, nnz, entries)] or \
        [(path, kind, 0, 0, shape)]
    ctype = _kind(chunk_type, len(shape))
    from spcomp.runtime import resolve_dtype
    return _coordinate_array(f"spcomp-npz-{uuid.uuid4().hex}", _read_npz, pieces, shape, chunks, ctype,
                             _fmt(format or _default_format(len(shape)), len(shape)), resolve_dtype(None, dtype))
