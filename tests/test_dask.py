"""spcomp.dask on a real cluster: two worker processes of one thread each.

Every kernel of the issue (SpMV, SpMM, SpGEMM, sparse add, SDDMM, MTTKRP, TTV)
runs through ``spcomp.dask.apply`` under several chunkings -- even ones, chunks cut
along the contracted index, uneven and mismatched ones -- and is compared with
``numpy.einsum`` on dense copies. Also: each worker loads a kernel once and keeps
it, a worker killed in the middle of a computation is replaced and the result is
still right. One cluster serves the whole module (starting one costs seconds).
"""
from __future__ import annotations

import hashlib
import os
import warnings

import numpy as np
import pytest
import scipy.sparse as sp

pytest.importorskip("distributed")

import dask.array as da  # noqa: E402
from distributed import Client, LocalCluster  # noqa: E402

import spcomp  # noqa: E402
import spcomp.dask as sd  # noqa: E402


@pytest.fixture(scope="module")
def client():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # distributed's own start-up chatter
        cluster = LocalCluster(processes=True, n_workers=2, threads_per_worker=1, dashboard_address=None,
                               memory_limit="2GB")
    c = Client(cluster)
    c.run(spcomp.set_num_threads, 1)
    yield c
    c.close()
    cluster.close()


def sparse(shape, density, seed):
    return sp.random(*shape, density=density, format="csr", random_state=seed)


def dense(shape, seed):
    return np.random.default_rng(seed).standard_normal(shape)


def tensor3(shape, density, seed):
    rng = np.random.default_rng(seed)
    a = rng.standard_normal(shape) * (rng.random(shape) < density)
    return spcomp.Tensor.from_numpy(a, "csf"), a


def densify(x):
    if isinstance(x, spcomp.Tensor):
        return x.to_numpy()
    if sp.issparse(x):
        return x.toarray()
    return np.asarray(x)


def run(kernel, client, **operands):
    """apply, computed on the cluster, with the RechunkWarnings it raised."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", sd.RechunkWarning)
        lazy = sd.apply(kernel, **operands)
    return client.compute(lazy).result(), lazy, [w for w in caught if w.category is sd.RechunkWarning]


# chunkings: (rows, contracted, cols); None = one chunk
CHUNKINGS = {
    "even": ((40, 40), None, (20,)),
    "split-contracted": ((40, 40), (30, 30), (20,)),
    "uneven": ((50, 30), (17, 25, 18), (11, 9)),
}


@pytest.mark.parametrize("chunking", CHUNKINGS)
def test_spmv(client, chunking):
    rows, inner, _ = CHUNKINGS[chunking]
    A, x = sparse((80, 60), 0.1, 1), dense(60, 2)
    k = spcomp.compile("y[i] = A[i,j] * x[j]", formats={"A": "csr"})
    Ad = sd.from_scipy(A, (rows, inner or (60,)))
    y, lazy, _ = run(k, client, A=Ad, x=da.from_array(x, chunks=(inner or 60,)))
    assert isinstance(y, np.ndarray) and y.shape == (80,)
    np.testing.assert_allclose(y, np.einsum("ij,j->i", A.toarray(), x), atol=1e-12)
    assert lazy.chunks == (rows,)


@pytest.mark.parametrize("chunking", CHUNKINGS)
def test_spmm_with_tensor_chunks(client, chunking):
    rows, inner, cols = CHUNKINGS[chunking]
    A, B = sparse((80, 60), 0.1, 3), dense((60, 20), 4)
    k = spcomp.compile("C[i,k] = A[i,j] * B[j,k]", formats={"A": "csr"})
    At = sd.from_tensor(spcomp.Tensor.from_scipy(A, "csr"), (rows, inner or (60,)))
    # B chunked along j differently from A when the contraction is split: a rechunk
    Bj = (20, 40) if inner else (60,)
    C, _, warned = run(k, client, A=At, B=da.from_array(B, chunks=(Bj, cols)))
    np.testing.assert_allclose(C, np.einsum("ij,jk->ik", A.toarray(), B), atol=1e-12)
    assert bool(warned) == bool(inner)
    if inner:
        assert "index j" in str(warned[0].message) and "(20, 40)" in str(warned[0].message)


@pytest.mark.parametrize("chunking", CHUNKINGS)
def test_spgemm_scipy_chunks_stay_scipy(client, chunking):
    rows, inner, cols = CHUNKINGS[chunking]
    A, B = sparse((80, 60), 0.08, 5), sparse((60, 20), 0.1, 6)
    k = spcomp.compile("C[i,k] = A[i,j] * B[j,k]", formats={"A": "csr", "B": "csr", "C": "csr"})
    Ad, Bd = sd.from_scipy(A, (rows, inner or (60,))), sd.from_scipy(B, (inner or (60,), cols))
    C, lazy, _ = run(k, client, A=Ad, B=Bd)
    assert sp.issparse(C) and sp.issparse(lazy._meta)
    want = np.einsum("ij,jk->ik", A.toarray(), B.toarray())
    np.testing.assert_allclose(C.toarray(), want, atol=1e-12)
    assert client.compute(sd.nnz(lazy)).result() == np.count_nonzero(want)


def test_sparse_add_with_mismatched_chunks(client):
    A, B = sparse((70, 50), 0.1, 7), sparse((70, 50), 0.1, 8)
    k = spcomp.compile("C[i,j] = A[i,j] + B[i,j]", formats={"A": "csr", "B": "csr", "C": "csr"})
    C, lazy, warned = run(k, client, A=sd.from_scipy(A, (35, 25), format="csr"),
                          B=sd.from_scipy(B, (30, 50), format="csr"))
    assert isinstance(C, spcomp.Tensor) and str(C.format) == "csr"
    np.testing.assert_allclose(C.to_numpy(), A.toarray() + B.toarray(), atol=1e-12)
    assert [str(w.message).split("index ")[1][0] for w in warned] == ["i", "j"]
    assert lazy.chunks == ((30, 5, 25, 10), (25, 25))


@pytest.mark.parametrize("chunking", ["even", "uneven"])
def test_sddmm(client, chunking):
    rows, inner, cols = CHUNKINGS[chunking]
    S, U, V = sparse((80, 20), 0.2, 9), dense((80, 12), 10), dense((20, 12), 11)
    k = spcomp.compile("C[i,j] = S[i,j] * U[i,k] * V[j,k]", formats={"S": "csr", "C": "csr"})
    kk = (5, 7) if chunking == "uneven" else (12,)
    C, _, _ = run(k, client, S=sd.from_scipy(S, (rows, cols)), U=da.from_array(U, chunks=(rows, kk)),
                  V=da.from_array(V, chunks=(cols, kk)))
    assert sp.issparse(C)
    np.testing.assert_allclose(C.toarray(), np.einsum("ij,ik,jk->ij", S.toarray(), U, V), atol=1e-12)


@pytest.mark.parametrize("chunks", [(30, 20, 10), ((25, 35), (7, 13), (4, 6))])
def test_mttkrp(client, chunks):
    X, Xd = tensor3((60, 20, 10), 0.1, 12)
    B, C = dense((20, 5), 13), dense((10, 5), 14)
    k = spcomp.compile("M[i,r] = X[i,j,k] * B[j,r] * C[k,r]", formats={"X": "csf"})
    M, _, _ = run(k, client, X=sd.from_tensor(X, chunks), B=B, C=C)
    np.testing.assert_allclose(M, np.einsum("ijk,jr,kr->ir", Xd, B, C), atol=1e-12)


@pytest.mark.parametrize("chunks", [(30, 20, 10), ((25, 35), (7, 13), (3, 3, 4))])
def test_ttv(client, chunks):
    X, Xd = tensor3((60, 20, 10), 0.1, 15)
    v = dense(10, 16)
    k = spcomp.compile("Y[i,j] = X[i,j,k] * v[k]", formats={"X": "csf"})
    Y, _, _ = run(k, client, X=sd.from_tensor(X, chunks), v=v)
    np.testing.assert_allclose(Y, np.einsum("ijk,k->ij", Xd, v), atol=1e-12)


def test_scalar_output_reduces_to_a_0d_array(client):
    A, B = sparse((60, 40), 0.2, 17), dense((60, 40), 18)
    k = spcomp.compile("s = A[i,j] * B[i,j]", formats={"A": "csr"})
    s, lazy, _ = run(k, client, A=sd.from_scipy(A, (20, 15)), B=da.from_array(B, chunks=(20, 15)))
    assert lazy.ndim == 0 and np.ndim(s) == 0
    assert float(s) == pytest.approx(np.einsum("ij,ij->", A.toarray(), B), abs=1e-10)


def test_accumulate_adds_the_old_value_once(client):
    A, x, y0 = sparse((50, 40), 0.2, 19), dense(40, 20), dense(50, 21)
    k = spcomp.compile("y[i] += A[i,j] * x[j]", formats={"A": "csr"})
    y, _, _ = run(k, client, A=sd.from_scipy(A, (25, 10)), x=x, y=da.from_array(y0, chunks=25))
    np.testing.assert_allclose(y, y0 + A.toarray() @ x, atol=1e-12)


def test_affine_statement_lifts_the_sum_into_a_second_kernel(client):
    A, x, b = sparse((50, 40), 0.2, 22), dense(40, 23), dense(50, 24)
    k = spcomp.compile("y[i] = A[i,j] * x[j] + b[i]", formats={"A": "csr"})
    y, _, _ = run(k, client, A=sd.from_scipy(A, (25, 10)), x=x, b=b)
    np.testing.assert_allclose(y, A.toarray() @ x + b, atol=1e-12)


def test_each_worker_loads_a_kernel_once_and_keeps_it(client):
    A, B = sparse((120, 90), 0.05, 25), sparse((90, 60), 0.05, 26)
    k = spcomp.compile("C[i,k] = A[i,j] * B[j,k]", formats={"A": "csr", "B": "dcsr", "C": "csr"})
    before = client.run(sd.worker_cache_info)
    lazy = sd.apply(k, A=sd.from_scipy(A, 30, format="csr"), B=sd.from_scipy(B, 30, format="dcsr"))
    # the kernel bytes are one node of the graph (plus one for the sparse-add kernel)
    nodes = [key for key in dict(lazy.__dask_graph__()) if str(key).startswith("spcomp-kernel-")]
    assert len(nodes) == 2
    C = client.compute(lazy).result()
    np.testing.assert_allclose(C.to_numpy(), (A @ B).toarray(), atol=1e-12)
    after = client.run(sd.worker_cache_info)
    tasks = 4 * 3 * 2  # blocks of i x j x k
    loads = {w: after[w]["loads"] - before[w]["loads"] for w in after}
    hits = sum(after[w]["hits"] - before[w]["hits"] for w in after)
    assert all(n <= 2 for n in loads.values()) and sum(loads.values()) >= 1
    assert hits >= tasks - sum(loads.values())
    # the same kernel again, under a new per-apply key: a worker that holds it loads nothing
    digest = hashlib.sha256(k.to_bytes()).hexdigest()
    holders = [w for w in after if digest in after[w]["kernels"]]
    assert holders
    lazy2 = sd.apply(k, A=sd.from_scipy(A, 30, format="csr"), B=sd.from_scipy(B, 30, format="dcsr"))
    client.compute(lazy2).result()
    again = client.run(sd.worker_cache_info)
    assert all(again[w]["loads"] == after[w]["loads"] for w in holders)


def test_a_worker_killed_mid_computation_is_replaced(client, tmp_path):
    marker = str(tmp_path / "killed-once")

    def die_once(block):
        # the first task to get here kills its worker process; the nanny starts a new
        # one, the scheduler runs the lost tasks again, and this time they pass
        try:
            fd = os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            return block
        os.close(fd)
        os._exit(1)

    A, B = sparse((80, 60), 0.1, 27), dense((60, 8), 28)
    k = spcomp.compile("C[i,k] = A[i,j] * B[j,k]", formats={"A": "csr"})
    At = sd.from_scipy(A, (20, 30), format="csr")
    fragile = At.map_blocks(die_once, meta=At._meta)
    workers_before = set(client.scheduler_info()["workers"])
    C = client.compute(sd.apply(k, A=fragile, B=B), retries=2).result(timeout=120)
    assert os.path.exists(marker)
    np.testing.assert_allclose(C, A.toarray() @ B, atol=1e-12)
    client.wait_for_workers(2, timeout=60)
    assert set(client.scheduler_info()["workers"]) != workers_before  # one was replaced
