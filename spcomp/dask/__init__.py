"""spcomp kernels over Dask arrays, on one machine or a Dask cluster.

>>> import dask.array as da, spcomp, spcomp.dask                   # doctest: +SKIP
>>> k = spcomp.compile("C[i,k] = A[i,j] * B[j,k]", formats={"A": "csr"})
>>> C = spcomp.dask.apply(k, A=A, B=B)        # lazy; C.compute(), or persist() on a Client

* :func:`apply` -- a compiled kernel over Dask arrays whose chunks are NumPy
  arrays, SciPy sparse matrices, pydata ``sparse`` arrays or :class:`spcomp.Tensor`
  objects (operands that are not Dask arrays are one chunk, cut to fit the others);
* :func:`nnz` -- the stored entries of a result, as a Delayed, before computing it;
* :func:`from_scipy`, :func:`from_tensor`, :func:`from_npz`, :func:`read_matrix_market`,
  :func:`read_tns` -- chunked arrays from memory, or from files read in pieces;
* :func:`register` -- prepare a ``distributed`` client's workers (``apply`` does it
  for the default client); :func:`worker_cache_info` -- a process's kernel cache.

This package is at the top of spcomp's layers, like ``spcomp.nn``: nothing in
spcomp imports it, and ``import spcomp`` never imports Dask. How the block graph
follows the index notation, what travels to the workers and what is refused:
docs/distributed.md.
"""
from __future__ import annotations

from . import blocks
from .blocks import TensorMeta
from .graph import RechunkWarning
from .graph import apply as _apply
from .io import from_npz, from_scipy, from_tensor, read_matrix_market, read_tns
from .ship import cache_info as worker_cache_info

__all__ = ["apply", "nnz", "from_scipy", "from_tensor", "from_npz", "read_matrix_market", "read_tns", "register",
           "worker_cache_info", "RechunkWarning", "TensorMeta"]

blocks.register()


def apply(kernel, *, threads: int = 1, split_every: int = 8, chunk_type: str | None = None, **operands):
    """Run ``kernel`` over Dask arrays: returns a lazy Dask array (0-d for a scalar
    output) with one chunk per tuple of blocks of the output's indices.

    ``operands`` are the kernel's inputs by name: Dask arrays (chunks of any kind
    above), or NumPy/SciPy/pydata arrays and Tensors, which become one chunk and are
    cut to the others' chunks; order-0 inputs may be numbers. A ``+=`` kernel also
    takes the old output under its name. ``threads`` caps the spcomp threads each
    task's kernel call uses (Dask already runs one task per worker thread);
    ``split_every`` is the fan-in of the tree that adds partial results over a
    contracted index; ``chunk_type`` ("tensor", "scipy" or "pydata") picks the
    chunks of a sparse output, by default the kind the inputs had.

    Refused (``spcomp.UnsupportedError``): a tensor accessed with two index
    patterns, an output index no input uses, a packed-block output whose
    contracted index is split. Operands whose chunks differ along an index are
    cut to the common refinement, with a :class:`RechunkWarning`."""
    register()
    return _apply(kernel, threads=threads, split_every=split_every, chunk_type=chunk_type, **operands)


def nnz(array):
    """The stored entries of a Dask array of chunks (nonzeros of NumPy chunks), as a
    ``dask.delayed`` integer: available before the array is computed, and computed
    along with it (``dask.compute(C, spcomp.dask.nnz(C))``)."""
    import dask
    parts = [dask.delayed(blocks.nnz, pure=True)(b) for b in array.to_delayed().ravel()]
    return dask.delayed(sum, pure=True)(parts)


_registered: set = set()


def register(client=None) -> None:
    """Make a ``distributed`` client's workers ready for spcomp arrays: a worker
    plugin imports ``spcomp.dask`` in every worker, present and future (a restarted
    one too), so Dask can join Tensor chunks there. Without ``client``, the default
    client, if there is one; a no-op without ``distributed`` or a client."""
    try:
        from distributed import default_client
    except ImportError:
        return
    if client is None:
        try:
            client = default_client()
        except ValueError:
            return
    if client.id in _registered or getattr(client, "asynchronous", False):
        return  # (an asynchronous client: await client.register_plugin(SpcompWorkers()) yourself)
    from .cluster import SpcompWorkers
    client.register_plugin(SpcompWorkers(), name="spcomp-dask")
    _registered.add(client.id)
