"""The ``distributed`` side: a worker plugin that prepares every worker process.

Dask joins the chunks of an array (``compute()``) on a worker, through its
``concatenate_lookup`` dispatch, which knows :class:`spcomp.Tensor` only after
``spcomp.dask`` was imported in that process. A worker that has run no spcomp
task yet (a new one, or one the nanny restarted) may be asked to, so the plugin
imports it on every worker when the worker starts.
"""
from __future__ import annotations

from distributed import WorkerPlugin


class SpcompWorkers(WorkerPlugin):
    """Imports ``spcomp.dask`` on each worker (which registers the Tensor dispatch)."""

    idempotent = True

    def setup(self, worker) -> None:
        from . import blocks
        blocks.register()
