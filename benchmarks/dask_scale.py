"""spcomp.dask past one worker's memory, strong scaling, and a model for more workers.

    python benchmarks/dask_scale.py                # ~1 GB operands, 300 MB workers
    python benchmarks/dask_scale.py --gb 0.1       # a quick run

Two kernels run through ``spcomp.dask.apply`` on a ``distributed.LocalCluster`` of
worker processes with one thread each and ``--memory-limit`` (300 MB) each:

* SpMM ``C[i,k] = A[i,j] * B[j,k]``, A CSR of ``--gb`` gigabytes (values and
  column indices), B dense with 16 columns;
* MTTKRP ``M[i,r] = X[i,j,k] * B[j,r] * C[k,r]``, X a CSF tensor of ``--gb``
  gigabytes, rank 16.

The big operand is never whole anywhere: each of its chunks is made by a task on
the worker that uses it (a stand-in for reading it from storage), chunk by chunk,
so the run finishes only if Dask streams the chunks through workers whose memory
is a third of the operand's size, without a spilling or memory failure. Results are
reduced on the cluster (column sums of C and M) and two row blocks are checked
against SciPy / NumPy on the client.

Each kernel runs on 1 and on 2 workers (strong scaling on this machine); the
efficiency is ``T1 / (W * TW)``. From the 1-worker run the script then estimates 8
to 64 workers on paper:

    T(W) = ceil(chunks / W) * t_chunk + transferred(W) / bandwidth

where ``t_chunk`` is the 1-worker run's wall time (less its transfers) over its
chunks -- making a chunk, the kernel on it, the column sums and Dask's cost per
task together -- and ``transferred(W)`` is what moves between machines: the dense
factors and the kernel bytes sent to each of W workers (W x their size, one after
the other: pessimistic, Dask can spread them in a tree), and the reduced result
gathered once; nothing for the big operand, which each worker reads from its own
storage. The bandwidth is ``--bandwidth`` (default 1.25 GB/s: 10 Gbit Ethernet).
The model leaves out stragglers, the scheduler's own limit (a few thousand tasks
a second) and the operand's storage, so it is an upper bound on efficiency.
"""
from __future__ import annotations

import argparse
import math
import os
import sys
import time
import warnings

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

RANK = 16
CHUNK_BYTES = 4 << 20  # bytes of the big operand per chunk: well inside a 300 MB worker


# ------------------------------------------------------------------ the operands, made on the workers

def spmm_chunk(block: int, rows: int, cols: int, per_row: int):
    """Rows ``[block*rows, (block+1)*rows)`` of A: ``per_row`` entries a row, at
    columns spread evenly with a per-row shift (sorted, unique), random values."""
    import scipy.sparse as sp
    rng = np.random.default_rng(block)
    step = cols // per_row
    shift = rng.integers(0, step, size=rows, dtype=np.int32)
    indices = (np.arange(per_row, dtype=np.int32)[None, :] * step + shift[:, None]).ravel()
    indptr = np.arange(0, rows * per_row + 1, per_row, dtype=np.int32)
    data = rng.standard_normal(rows * per_row)
    return sp.csr_matrix((data, indices, indptr), shape=(rows, cols))


def mttkrp_chunk(block: int, rows: int, dims: tuple, per_row: int):
    """Slices ``[block*rows, (block+1)*rows)`` of X as a CSF Tensor, built level by
    level (no sort, so making it costs little more memory than it holds): each slice
    has ``per_row`` fibers j spread evenly with a random shift, each fiber 2 entries."""
    import spcomp
    rng = np.random.default_rng(10_000 + block)
    fib, fibers = 2, rows * per_row
    step_j, step_k = dims[1] // per_row, dims[2] // fib
    j = (np.arange(per_row, dtype=np.int32)[None, :] * step_j
         + rng.integers(0, step_j, rows, dtype=np.int32)[:, None]).ravel()
    k = (np.arange(fib, dtype=np.int32)[None, :] * step_k
         + rng.integers(0, step_k, fibers, dtype=np.int32)[:, None]).ravel()
    levels = [{"pos": np.array([0, rows], np.int32), "crd": np.arange(rows, dtype=np.int32)},
              {"pos": np.arange(0, fibers + 1, per_row, dtype=np.int32), "crd": j},
              {"pos": np.arange(0, fibers * fib + 1, fib, dtype=np.int32), "crd": k}]
    return spcomp.Tensor("csf", (rows,) + tuple(dims[1:]), levels, rng.standard_normal(fibers * fib),
                         validated=True)


def lazy_operand(make, blocks: int, rows: int, shape: tuple, args: tuple, meta):
    """A Dask array whose chunk b is ``make(b, rows, *args)``, made where it is used."""
    import dask.array as da
    from dask.highlevelgraph import HighLevelGraph
    name = f"make-{make.__name__}-{blocks}-{rows}"
    zeros = (0,) * (len(shape) - 1)
    dsk = {(name, b) + zeros: (make, b, rows, *args) for b in range(blocks)}
    chunks = ((rows,) * blocks,) + tuple((s,) for s in shape[1:])
    return da.Array(HighLevelGraph.from_collections(name, dsk), name, chunks=chunks, meta=meta)


# ------------------------------------------------------------------ the runs

def problems(gb: float):
    """(name, kernel, operands, checker, dense factors) for SpMM and MTTKRP."""
    import scipy.sparse as sp

    import spcomp
    import spcomp.dask as sd

    out = []
    cols, per_row = 50_000, 32
    rows = CHUNK_BYTES // (per_row * 12)
    blocks = max(2, int(gb * 1e9 / (rows * per_row * 12)))
    B = np.random.default_rng(1).standard_normal((cols, RANK))
    A = lazy_operand(spmm_chunk, blocks, rows, (blocks * rows, cols), (cols, per_row), sp.csr_matrix((0, 0)))
    k = spcomp.compile("C[i,k] = A[i,j] * B[j,k]", formats={"A": "csr"})

    def check_spmm(result, b):
        want = spmm_chunk(b, rows, cols, per_row) @ B
        return float(np.abs(result - want).max())
    out.append(("SpMM", k, {"A": A, "B": B}, check_spmm, [B], blocks * rows * per_row * 12, blocks))

    dims, per_slice = (0, 2000, 2000), 64
    per_entry = 4 + 8 + 8 // 2  # k coordinate, value, and half a fiber (j coordinate, position)
    srows = CHUNK_BYTES // (per_slice * 2 * per_entry)
    sblocks = max(2, int(gb * 1e9 / (srows * per_slice * 2 * per_entry)))
    Bf, Cf = (np.random.default_rng(s).standard_normal((d, RANK)) for s, d in ((2, dims[1]), (3, dims[2])))
    X = lazy_operand(mttkrp_chunk, sblocks, srows, (sblocks * srows,) + dims[1:], (dims, per_slice),
                     sd.TensorMeta(3, np.float64, "csf"))
    km = spcomp.compile("M[i,r] = X[i,j,k] * B[j,r] * C[k,r]", formats={"X": "csf"})

    def check_mttkrp(result, b):
        x = mttkrp_chunk(b, srows, dims, per_slice)
        c, v = x.to_coo()
        want = np.zeros((srows, RANK))
        np.add.at(want, c[0], v[:, None] * Bf[c[1]] * Cf[c[2]])
        return float(np.abs(result - want).max())
    out.append(("MTTKRP", km, {"X": X, "B": Bf, "C": Cf}, check_mttkrp, [Bf, Cf],
                sblocks * srows * per_slice * 2 * per_entry, sblocks))
    return out


def run(sizes: tuple, gb: float, memory_limit: str, repeat: int) -> dict:
    """Each problem on a cluster of each size in ``sizes`` (worker processes), all
    started at once and run in turn, ``repeat`` rounds, the fastest round counting:
    this machine's cores are shared, and taking turns spreads other load over all
    sizes alike. Returns {size: {problem: wall time, task times, check, spills}}."""
    from distributed import Client, LocalCluster

    import spcomp.dask as sd

    clients = {}
    try:
        for w in sizes:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                cluster = LocalCluster(processes=True, n_workers=w, threads_per_worker=1,
                                       memory_limit=memory_limit, dashboard_address=None)
            clients[w] = Client(cluster, set_as_default=False)
            sd.register(clients[w])
        results = {w: {} for w in sizes}
        for name, kernel, operands, check, factors, nbytes, blocks in problems(gb):
            out = sd.apply(kernel, **operands)
            summary = out.sum(axis=0)
            before = {w: set(c.scheduler_info()["workers"]) for w, c in clients.items()}
            best = {w: (math.inf, None) for w in sizes}
            for _ in range(repeat):
                for w, client in clients.items():
                    wall, stream, totals = _timed(client, summary)
                    if wall < best[w][0]:
                        best[w] = (wall, stream)
            for w, client in clients.items():
                wall, stream = best[w]
                first, last = client.compute([out.blocks[0], out.blocks[blocks - 1]], sync=True)
                kernel_tasks = [r for r in stream if "spcomp-partial" in str(r["key"])]
                make_tasks = [r for r in stream if "make-" in str(r["key"])]
                results[w][name] = dict(
                    wall=wall, error=max(check(first, 0), check(last, blocks - 1)), tasks=len(kernel_tasks),
                    kernel_s=_compute_seconds(kernel_tasks), make_s=_compute_seconds(make_tasks),
                    operand_bytes=nbytes, factor_bytes=sum(f.nbytes for f in factors),
                    kernel_bytes=len(kernel.to_bytes()), result_bytes=np.asarray(totals).nbytes,
                    spilled=sum(client.run(_spilled).values()),
                    lost=len(before[w] - set(client.scheduler_info()["workers"])))
    finally:
        for client in clients.values():
            cluster = client.cluster
            client.close()
            cluster.close()
    return results


def _timed(client, collection):
    """Seconds to compute ``collection`` on ``client``, its task records, the result."""
    from distributed import get_task_stream
    t0 = time.perf_counter()
    with get_task_stream(client) as ts:
        result = client.compute(collection).result()
    return time.perf_counter() - t0, list(ts.data), result


def _compute_seconds(records) -> float:
    return sum(s["stop"] - s["start"] for r in records for s in r["startstops"] if s["action"] == "compute")


def _spilled(dask_worker) -> int:
    """Bytes this worker has written to disk when its memory filled (spilling)."""
    totals = dask_worker.digests_total
    return int(sum(v for k, v in totals.items() if isinstance(k, tuple) and k[-2:] == ("disk-write", "bytes")))


def transferred(r: dict, workers: int) -> float:
    """Bytes moved between machines on ``workers`` of them: the factors and the kernel
    bytes to each worker (one after the other), the reduced result to the client."""
    return workers * (r["factor_bytes"] + r["kernel_bytes"]) + r["result_bytes"]


def model(r: dict, workers: int, bandwidth: float) -> float:
    """Seconds on ``workers`` machines: the 1-worker run's time per chunk (its wall
    time less its transfers, over its chunks: compute and Dask's per-task cost
    together) times the chunks each worker gets, plus the transfers."""
    per_chunk = (r["wall"] - transferred(r, 1) / bandwidth) / r["tasks"]
    return math.ceil(r["tasks"] / workers) * per_chunk + transferred(r, workers) / bandwidth


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--gb", type=float, default=1.0, help="size of the big operand of each kernel (GB)")
    p.add_argument("--memory-limit", default="300MB", help="memory limit of each worker")
    p.add_argument("--repeat", type=int, default=3, help="rounds of each kernel; the fastest counts")
    p.add_argument("--bandwidth", type=float, default=1.25e9, help="bytes/s between machines, for the model")
    args = p.parse_args(argv)
    print(f"operands of {args.gb:.2f} GB each; workers: 1 thread, memory_limit={args.memory_limit}; "
          f"{os.cpu_count()} cores here, load average {os.getloadavg()[0]:.1f} before the run; "
          f"the fastest of {args.repeat} rounds, 1 and 2 workers taking turns")
    results = run((1, 2), args.gb, args.memory_limit, args.repeat)
    print(f"load average {os.getloadavg()[0]:.1f} after the run")
    for name in results[1]:
        r1, r2 = results[1][name], results[2][name]
        print(f"\n{name}: big operand {r1['operand_bytes'] / 1e9:.2f} GB in {r1['tasks']} chunks; "
              f"dense factors {r1['factor_bytes'] / 1e6:.1f} MB; kernel bytes {r1['kernel_bytes'] / 1e3:.0f} kB")
        for w, r in ((1, r1), (2, r2)):
            print(f"  {w} worker{'s' if w > 1 else ' '}: {r['wall']:7.2f} s wall  (kernel tasks {r['kernel_s']:.2f} s, "
                  f"making chunks {r['make_s']:.2f} s)  spilled {r['spilled'] / 1e6:.0f} MB, "
                  f"workers lost {r['lost']}; "
                  f"max error of two checked blocks {r['error']:.1e}")
        print(f"  strong scaling 1 -> 2 workers: speed-up {r1['wall'] / r2['wall']:.2f}, "
              f"efficiency {r1['wall'] / (2 * r2['wall']):.0%}")
        t1 = model(r1, 1, args.bandwidth)
        print(f"  model, from the 1-worker run ({r1['wall'] / r1['tasks'] * 1e3:.1f} ms a chunk; bandwidth "
              f"{args.bandwidth / 1e9:.2f} GB/s, factors and kernel sent to each worker one after the other):")
        for w in (8, 16, 32, 64):
            tw = model(r1, w, args.bandwidth)
            print(f"    {w:3d} workers: {tw:7.3f} s  speed-up {t1 / tw:5.1f}  efficiency {t1 / (w * tw):.0%}")


if __name__ == "__main__":
    main()
