"""TACO's GPU scheduling language on the CUDA backends (docs/scheduling.md, "GPU schedules").

Random legal GPU schedules -- split factors, which loops run as blocks, warps and
threads, race strategies; position loops cut into chunks per thread or into
block > warp > thread sub-chunks -- over formats x shapes x densities, compiled for
``cuda-sim``, run under forced launches of several blocks (blocks run concurrently
on the harness' workers, so atomics really contend) and checked against
``numpy.einsum``; where the schedule keeps every output element's order of
additions (no atomics, no team reduction) the result must equal the one-thread-per-row
schedule's bit for bit. Every kernel is compiled by nvcc for sm_90 (skipped without
nvcc). The refusals name the directive and say why. Nothing here needs a GPU; the
real-device test at the end is skipped without one.
"""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import spcomp
import spcomp.backends.cuda as cuda
from spcomp import Schedule
from spcomp.errors import ScheduleError
from spcomp.lower import gpumap, gpupositions, possplit
from spcomp.tuner import gpu_candidates

from conftest import examples
from cuda_launches import forced_launches_fixture

HAS_NVCC = cuda.nvcc_available()
GPU_OK, GPU_WHY = cuda.device.gpu_available()
_launch: dict = {}


forced_launches = forced_launches_fixture(_launch)


def _nvcc(k):
    if not HAS_NVCC:
        return
    report = cuda.check(k, arch="sm_90")["sm_90"]
    assert set(report) == set(cuda.signature.parse_kernels(k.source)), report


def _kernels_of(source: str) -> str:
    return source[source.index('extern "C"'):]


# ----------------------------------------------------------------- cases

EXPRS = {
    "spmv": ("y[i] = A[i,j] * x[j]", "ij,j->i"),
    "spmm": ("C[i,k] = A[i,j] * B[j,k]", "ij,jk->ik"),
    "spmtv": ("y[j] = A[i,j] * z[i]", "ij,i->j"),      # a scatter: chunks share any element
    "sddmm": ("C[i,j] = A[i,j] * D[i,k] * E[j,k]", "ij,ik,jk->ij"),
}
RACES = (None, "ParallelReduction", "Temporary", "Atomics")
SPMV, SPMM, SPMTV = EXPRS["spmv"][0], EXPRS["spmm"][0], EXPRS["spmtv"][0]


@st.composite
def problems(draw, names, formats):
    name = draw(st.sampled_from(names))
    text, spec = EXPRS[name]
    fmt = draw(st.sampled_from(formats))
    dtype = draw(st.sampled_from(["float64", "float64", "float32"]))
    rows, cols, inner = draw(st.integers(1, 40)), draw(st.integers(1, 30)), draw(st.integers(1, 5))
    density = draw(st.sampled_from([0.0, 0.05, 0.3, 1.0]))
    rng = np.random.default_rng(draw(st.integers(0, 2**16)))
    A = rng.standard_normal((rows, cols)) * (rng.random((rows, cols)) < density)
    if draw(st.booleans()) and rows > 1:  # one long row: chunks of positions cut it
        A[draw(st.integers(0, rows - 1))] = rng.standard_normal(cols)
    ops = {"A": A}
    if name == "spmv":
        ops["x"] = rng.standard_normal(cols)
    elif name == "spmtv":
        ops["z"] = rng.standard_normal(rows)
    elif name == "spmm":
        ops["B"] = rng.standard_normal((cols, inner))
    else:
        ops["D"], ops["E"] = rng.standard_normal((rows, inner)), rng.standard_normal((cols, inner))
    ops = {k: v.astype(dtype) for k, v in ops.items()}
    return name, text, spec, ops, {"A": fmt}, dtype


def _row_schedule(draw, name):
    """A split of the rows mapped to block / warp / thread, or a team per row."""
    f = draw(st.sampled_from([1, 3, 8, 32, 64]))
    split = Schedule().split("i", "i0", "i1", f)
    inner = {"spmv": "j", "spmm": "k", "sddmm": "j"}[name]
    race = draw(st.sampled_from(RACES)) if inner == "j" else draw(st.sampled_from((None, "NoRaces")))
    shape = draw(st.sampled_from(["thread", "block-thread", "block-warp", "block-warp-lane", "warp-lane", "team"]))
    if shape == "thread":
        return split.parallelize("i0", "gpu-thread")
    if shape == "block-warp":  # a warp per row, the row's work team-uniform (lane 0 stores)
        return split.parallelize("i0", "gpu-block").parallelize("i1", "gpu-warp")
    if shape == "block-thread":
        return split.parallelize("i0", "gpu-block").parallelize("i1", "gpu-thread")
    if shape == "block-warp-lane":
        return (split.parallelize("i0", "gpu-block").parallelize("i1", "gpu-warp")
                .parallelize(inner, "gpu-thread", race=race))
    if shape == "warp-lane":
        return split.parallelize("i0", "gpu-warp").parallelize(inner, "gpu-thread", race=race)
    kind = draw(st.sampled_from(["gpu-warp", "gpu-block"]))
    return Schedule().parallelize("i", kind).parallelize(inner, "gpu-thread", race=race)


def _position_schedule(draw, name):
    """TACO's fuse + pos + split: chunks per thread / warp / block, or block > warp > thread."""
    base = Schedule().fuse("i", "j", "f").pos("f", "fpos", "A")
    race = draw(st.sampled_from((None, "Atomics") if name == "spmtv" else RACES))
    shape = draw(st.sampled_from(["chunks", "a position per member", "sub-chunks"]))
    if shape == "chunks":
        nnz = draw(st.sampled_from([1, 4, 8, 33]))
        kind = draw(st.sampled_from(["gpu-thread", "gpu-warp", "gpu-block"]))
        return base.split("fpos", "c", "p", nnz).parallelize("c", kind, race=race)
    if shape == "a position per member":  # TACO's split(fpos, block, fpos1, N).parallelize(fpos1, GPUThread)
        nnz = draw(st.sampled_from([5, 32, 256]))
        kind = draw(st.sampled_from(["gpu-warp", "gpu-block"]))
        return base.split("fpos", "c", "p", nnz).parallelize("c", kind).parallelize("p", "gpu-thread", race=race)
    per_thread = draw(st.sampled_from([1, 2, 5, 8]))
    threads_per_warp = draw(st.sampled_from([3, 32]))
    warps = draw(st.sampled_from([1, 2, 8]))
    s = (base.split("fpos", "block", "fpos1", per_thread * threads_per_warp * warps)
         .split("fpos1", "warp", "fpos2", per_thread * threads_per_warp)
         .split("fpos2", "thread", "nz", per_thread))
    outer = "IgnoreRaces" if race in ("Atomics", "ParallelReduction", "Temporary") else race
    s = s.parallelize("block", "gpu-block", race=outer)
    if draw(st.booleans()):  # the warp level mapped, or sequential inside the block
        s = s.parallelize("warp", "gpu-warp", race=outer)
    return s.parallelize("thread", "gpu-thread", race=race)


def _in_order(source: str) -> bool:
    """Whether every output element is summed in the loop nest's order (no atomics,
    no team reduction): then any such schedule gives the same bits."""
    src = _kernels_of(source)
    return "atomicAdd" not in src and "_reduce<" not in src


def _run(problem, schedule, data, stats):
    name, text, spec, ops, formats, dtype = problem
    _launch.update(grid=data.draw(st.sampled_from([1, 2, 5]), label="grid"),
                   block=data.draw(st.sampled_from([32, 64, 256]), label="block"))
    k = spcomp.compile(text, formats=formats, dtype=dtype, backend="cuda-sim", schedule=schedule)
    got = k(**ops)
    ref = np.einsum(spec, *(v.astype(np.float64) for v in ops.values()))
    tol = 1e-10 if dtype == "float64" else 1e-4
    np.testing.assert_allclose(got, ref, rtol=tol, atol=tol)
    _nvcc(k)
    src = _kernels_of(k.source)
    assert "parallel: gpu-" in src
    stats.ok()
    stats.feature(*(m for m in ("gpu-block", "gpu-warp", "gpu-thread", "gpu-lane") if f"parallel: {m}" in src))
    stats.feature(*(f for f, mark in (("atomics", "atomicAdd"), ("team reduction", "_reduce<"),
                                      ("binary search", "while (")) if mark in src))
    if _in_order(k.source):  # bitwise: the default schedule, and a thread per row
        for other in (Schedule(), Schedule().parallelize("i", "gpu-thread")):
            plain = spcomp.compile(text, formats=formats, dtype=dtype, backend="cuda-sim", schedule=other)
            theirs = plain(**ops)
            if (plain.last_launch or {}).get("mapping") != "gpu-warp" and _in_order(plain.source):
                np.testing.assert_array_equal(got, theirs)
                stats.feature("bitwise vs " + ("default" if not other.directives else "thread per row"))
    return src


def test_split_rows_on_blocks_warps_and_threads(outcome_stats):
    @settings(max_examples=examples(30))
    @given(data=st.data())
    def run(data):
        problem = data.draw(problems(["spmv", "spmm", "sddmm"], ["csr", "dense", "dc"]), label="problem")
        schedule = _row_schedule(data.draw, problem[0])
        src = _run(problem, schedule, data, outcome_stats)
        mapped = [d for d in schedule.directives if d[0] == "parallelize"]
        warp = any(d[2] == "gpu-warp" for d in mapped)
        for d in mapped[1:]:  # each member directive became a member loop of its team
            lanes = d[2] == "gpu-thread" and warp  # a thread of a warp is a lane
            assert f"parallel: {'gpu-lane' if lanes else d[2]}" in src, (schedule, d)

    run()
    f = outcome_stats.features
    assert f["gpu-lane"] and f["team reduction"] and f["bitwise vs thread per row"], outcome_stats.summary()


def test_position_loops_on_gpu_threads(outcome_stats):
    @settings(max_examples=examples(30))
    @given(data=st.data())
    def run(data):
        problem = data.draw(problems(["spmv", "spmm", "spmtv"], ["csr", "dcsr"]), label="problem")
        schedule = _position_schedule(data.draw, problem[0])
        _run(problem, schedule, data, outcome_stats)

    run()
    f = outcome_stats.features
    assert f["binary search"] == outcome_stats.counts["ok"] and f["atomics"] and f["gpu-lane"], \
        outcome_stats.summary()


def taco_spmv(nnz_per_thread=8, block_size=256) -> Schedule:
    """TACO's scheduleSpMVGPU: a block's chunk of nonzeros, a warp's, a thread's."""
    return (Schedule().fuse("i", "j", "f").pos("f", "fpos", "A")
            .split("fpos", "block", "fpos1", nnz_per_thread * block_size)
            .split("fpos1", "warp", "fpos2", nnz_per_thread * 32)
            .split("fpos2", "thread", "thread_nz", nnz_per_thread)
            .parallelize("block", "gpu-block", race="IgnoreRaces")
            .parallelize("warp", "gpu-warp", race="IgnoreRaces")
            .parallelize("thread", "gpu-thread", race="Atomics"))


def taco_spmv_rows(rows_per_block=8) -> Schedule:
    """TACO's scheduleSpMVRowsGPU in spcomp's spelling."""
    return (Schedule().split("i", "block", "row", rows_per_block)
            .parallelize("block", "gpu-block", race="NoRaces")
            .parallelize("row", "gpu-warp", race="IgnoreRaces")
            .parallelize("j", "gpu-thread", race="ParallelReduction"))


def _taco_case(text, schedule, launch, seed, **shapes) -> str:
    """Compile ``text`` (A csr) with ``schedule`` for cuda-sim, run it under ``launch``,
    check it against einsum and nvcc; its kernels' source."""
    rng = np.random.default_rng(seed)
    ops = {name: rng.standard_normal(shape) for name, shape in shapes.items()}
    ops["A"] = ops["A"] * (rng.random(ops["A"].shape) < 0.2)
    ops["A"][min(7, ops["A"].shape[0] - 1)] = rng.standard_normal(ops["A"].shape[1])  # one long row
    spec = next(v[1] for v in EXPRS.values() if v[0] == text)
    _launch.update(grid=launch[0], block=launch[1])
    k = spcomp.compile(text, formats={"A": "csr"}, backend="cuda-sim", schedule=schedule)
    np.testing.assert_allclose(k(**ops), np.einsum(spec, *ops.values()), rtol=1e-12, atol=1e-12)
    _nvcc(k)
    return _kernels_of(k.source)


def test_taco_spmv_nnz_balanced():
    """TACO's GPU SpMV (NNZ_PER_THREAD=8, BLOCK_SIZE=256): a thread finds its rows by
    binary search; rows shared between threads are added atomically."""
    src = _taco_case(SPMV, taco_spmv(), (3, 256), 1, A=(300, 200), x=200)
    for m in ("gpu-block", "gpu-warp", "gpu-lane"):
        assert f"parallel: {m}" in src
    assert "atomicAdd(&y_vals" in src


def test_taco_spmv_row_per_warp():
    """A warp per row: the lanes split the row and combine partial sums by shuffles."""
    src = _taco_case(SPMV, taco_spmv_rows(), (4, 128), 2, A=(90, 70), x=70)
    assert "spc_warp_reduce<spc_sum_op>" in src and "atomicAdd" not in src


def test_taco_spmm_nnz_balanced_warps():
    """TACO's scheduleSpMMGPU translated: chunks of nonzeros per warp, the warp's
    lanes split the dense columns k, rows shared between warps added atomically."""
    s = (Schedule().fuse("i", "j", "f").pos("f", "fpos", "A")
         .split("fpos", "block", "fpos1", 8 * 8).split("fpos1", "warp", "nnz", 8)
         .parallelize("block", "gpu-block", race="IgnoreRaces")
         .parallelize("warp", "gpu-warp", race="IgnoreRaces")
         .parallelize("k", "gpu-thread", race="Atomics"))
    src = _taco_case(SPMM, s, (2, 256), 3, A=(50, 40), B=(40, 33))
    assert "parallel: gpu-lane" in src and "atomicAdd(&C_vals" in src


def test_taco_sddmm_nnz_balanced_warps():
    """TACO's scheduleSDDMMGPU into a dense output: chunks of nonzeros per warp, the
    lanes split the k sum and combine it by shuffles (ParallelReduction)."""
    s = (Schedule().fuse("i", "j", "f").pos("f", "fpos", "A")
         .split("fpos", "block", "fpos1", 8 * 8).split("fpos1", "warp", "nnz", 8)
         .parallelize("block", "gpu-block", race="IgnoreRaces")
         .parallelize("warp", "gpu-warp", race="IgnoreRaces")
         .parallelize("k", "gpu-thread", race="ParallelReduction"))
    src = _taco_case(EXPRS["sddmm"][0], s, (2, 128), 4, A=(40, 30), D=(40, 37), E=(30, 37))
    assert "spc_warp_reduce<spc_sum_op>" in src and "parallel: gpu-lane" in src


@pytest.mark.parametrize("team, member, race", [
    ("gpu-block", "gpu-thread", "ParallelReduction"), ("gpu-warp", "gpu-thread", "Temporary"),
    ("gpu-block", "gpu-thread", "Atomics"), ("gpu-block", "gpu-warp", "Atomics"),
])
@pytest.mark.parametrize("n", [1, 255, 1000])
def test_dot_product_reduced_per_team(team, member, race, n):
    """A reduction into a scalar: ParallelReduction / Temporary sum each team's part
    with shuffles and add it once (one atomicAdd per team); Atomics add per element."""
    rng = np.random.default_rng(n)
    x, y = rng.standard_normal(n), rng.standard_normal(n)
    s = Schedule().split("i", "i0", "i1", 64).parallelize("i0", team).parallelize("i1", member, race=race)
    _launch.update(grid=3, block=128)
    k = spcomp.compile("s = x[i] * y[i]", backend="cuda-sim", schedule=s)
    np.testing.assert_allclose(k(x=x, y=y), x @ y, rtol=1e-12, atol=1e-12)
    src = _kernels_of(k.source)
    assert ("_reduce<spc_sum_op>" in src) == (race != "Atomics"), src
    _nvcc(k)


@pytest.mark.parametrize("fmt", ["csr", "dense"])
@pytest.mark.parametrize("team", ["gpu-warp", "gpu-block"])
def test_row_max_reduced_by_the_team(fmt, team):
    """max over a row split among a team's members: combined by a max butterfly, the
    count of visited entries by a sum (unstored entries count as zeros)."""
    rng = np.random.default_rng(6)
    A = rng.standard_normal((40, 30)) * (rng.random((40, 30)) < 0.3) - 5 * (rng.random((40, 30)) < 0.1)
    _launch.update(grid=2, block=64)
    k = spcomp.compile("m[i] = max(j, A[i,j])", formats={"A": fmt}, backend="cuda-sim",
                       schedule=Schedule().parallelize("i", team).parallelize("j", "gpu-thread"))
    np.testing.assert_array_equal(k(A=A), A.max(axis=1))
    assert "_reduce<spc_max_op>" in k.source
    _nvcc(k)


@pytest.mark.parametrize("fmt", ["csf", "dcc"])
def test_taco_tensor_kernels_nnz_balanced(fmt):
    """TACO's GPU TTV (block > warp > thread chunks of B's fibers, atomics) and MTTKRP
    (chunks per warp, the lanes over the dense j) on a 3-D sparse tensor."""
    rng = np.random.default_rng(8)
    B = rng.standard_normal((20, 15, 12)) * (rng.random((20, 15, 12)) < 0.2)
    c, C, D = rng.standard_normal(12), rng.standard_normal((15, 6)), rng.standard_normal((12, 6))
    ttv = (Schedule().fuse("i", "j", "f").pos("f", "fpos", "B")
           .split("fpos", "block", "fpos1", 8 * 64).split("fpos1", "warp", "fpos2", 8 * 32)
           .split("fpos2", "thread", "nz", 8).parallelize("block", "gpu-block", race="IgnoreRaces")
           .parallelize("warp", "gpu-warp", race="IgnoreRaces").parallelize("thread", "gpu-thread", race="Atomics"))
    mttkrp = (Schedule().fuse("i", "k", "f").pos("f", "fpos", "B")
              .split("fpos", "block", "fpos1", 64).split("fpos1", "warp", "nnz", 8)
              .parallelize("block", "gpu-block", race="IgnoreRaces")
              .parallelize("warp", "gpu-warp", race="IgnoreRaces").parallelize("j", "gpu-thread", race="Atomics"))
    _launch.update(grid=2, block=64)
    for text, s, ops, spec in (("A[i,j] = B[i,j,k] * c[k]", ttv, {"B": B, "c": c}, "ijk,k->ij"),
                               ("A[i,j] = B[i,k,l] * C[k,j] * D[l,j]", mttkrp, {"B": B, "C": C, "D": D},
                                "ikl,kj,lj->ij")):
        k = spcomp.compile(text, formats={"B": fmt}, backend="cuda-sim", schedule=s)
        np.testing.assert_allclose(k(**ops), np.einsum(spec, *ops.values()), rtol=1e-12, atol=1e-12)
        assert "sub-chunks of 8" in k.loops and "parallel: gpu-lane" in k.source
        _nvcc(k)


def test_member_ignore_races_insisted_runs():
    """IgnoreRaces with insist=True on a reduction member: the team still combines the
    partial sums (a scalar cannot be raced on), so the result is right."""
    A = np.arange(12.0).reshape(3, 4)
    x = np.ones(4)
    s = Schedule().parallelize("i", "gpu-warp").parallelize("j", "gpu-thread", race="IgnoreRaces", insist=True)
    k = spcomp.compile("y[i] = A[i,j] * x[j]", formats={"A": "csr"}, backend="cuda-sim", schedule=s)
    np.testing.assert_allclose(k(A=A, x=x), A @ x)


# ------------------------------------------------- the mapping, unit by unit

GPU = spcomp.backends.get_target("cuda-sim").capabilities


@pytest.mark.parametrize("directives, grid, members", [
    ([("i", "gpu-thread")], ("i", "gpu-thread"), ()),
    ([("j", "gpu-thread"), ("i", "gpu-warp")], ("i", "gpu-warp"), (("j", "gpu-lane", None, False),)),
    ([("t", "gpu-thread", "Atomics", False), ("w", "gpu-warp"), ("b", "gpu-block")], ("b", "gpu-block"),
     (("w", "gpu-warp", None, False), ("t", "gpu-lane", "Atomics", False))),
    ([("i0", "gpu-block"), ("i1", "gpu-thread")], ("i0", "gpu-block"), (("i1", "gpu-thread", None, False),)),
])
def test_grid_and_members(directives, grid, members):
    """The highest level is the grid's loop; a thread of a warp is a lane; the CPU keeps the last one."""
    assert gpumap.grid_and_members(directives, GPU) == (grid, members)
    cpu = spcomp.backends.get_target("cpu").capabilities
    assert gpumap.grid_and_members(directives, cpu) == (directives[-1], ())


def test_a_loop_named_again_takes_the_last_mapping():
    """As on the CPU: parallelize of the same loop twice keeps the last directive."""
    d = [("i", "gpu-block"), ("j", "gpu-thread"), ("i", "gpu-warp")]
    assert gpumap.grid_and_members(d, GPU) == (("i", "gpu-warp"), (("j", "gpu-lane", None, False),))
    assert gpumap.grid_and_members([("i", "gpu-block"), ("i", "gpu-thread")], GPU) == (("i", "gpu-thread"), ())


def test_chunk_race_reads_every_level():
    from spcomp.lower.record import Options
    spec = possplit.PosSplit("A", "j", "i", "b", "t", 64, "s", pieces=(("w", 8),))

    def race(grid_race, *members):
        opt = Options(parallel="b", parallel_kind="gpu-block", race=grid_race,
                      members=tuple((m, "gpu-warp", r, i) for m, r, i in members), caps=GPU)
        return gpupositions.chunk_race(spec, opt)[:2]
    assert race(("IgnoreRaces", False), ("w", "IgnoreRaces", False), ("k", "Atomics", False)) == ("Atomics", False)
    assert race(("IgnoreRaces", False), ("w", "NoRaces", False)) == ("NoRaces", False)
    assert race((), ("w", "ParallelReduction", False)) == ("ParallelReduction", False)
    assert race(("IgnoreRaces", True), ("w", "IgnoreRaces", False)) == ("IgnoreRaces", False)
    assert race(("IgnoreRaces", True)) == ("IgnoreRaces", True)
    assert race(()) == (None, False)


# ------------------------------------------------------------- refusals

FUSED = Schedule().fuse("i", "j", "f").pos("f", "fpos", "A")
REFUSALS = [
    (SPMV, Schedule().parallelize("i", "gpu-thread").parallelize("j", "gpu-thread"), "one loop per GPU level"),
    (SPMV, Schedule().split("i", "i0", "i1", 4).parallelize("i0", "gpu-block").parallelize("i1", "gpu-block"),
     "one loop per GPU level"),
    (SPMV, Schedule().split("i", "i0", "i1", 4).parallelize("i1", "gpu-warp").parallelize("i0", "gpu-thread"),
     "only as the outermost loop"),  # the warp loop is the grid's: it would sit inside i0
    (SPMV, Schedule().parallelize("i", "gpu-block").parallelize("j", "gpu-warp"), "warps cannot combine"),
    (SPMV, Schedule().parallelize("i", "gpu-block").parallelize("j", "gpu-thread", race="NoRaces"),
     "race='NoRaces' is wrong here"),
    (SPMV, Schedule().parallelize("i", "gpu-warp").parallelize("j", "gpu-thread", race="IgnoreRaces"),
     "pass insist=True"),
    (SPMM, Schedule().parallelize("i", "gpu-block").parallelize("j", "gpu-thread", race="ParallelReduction"),
     "use race='Atomics'"),
    (SPMTV, Schedule().split("i", "i0", "i1", 8).parallelize("i0", "gpu-block")
     .parallelize("i1", "gpu-thread", race="Temporary"), "change inside the loop"),
    (SPMM, Schedule().parallelize("i", "gpu-block").parallelize("j", "gpu-thread", race="NoRaces"),
     "use 'Atomics'"),
    (SPMV, Schedule().split("i", "i0", "i1", 4).parallelize("i0", "gpu-block").parallelize("x", "gpu-thread"),
     "no index 'x'"),
    ("y[i] = A[i,j] * x[j] + B[i,j] * x[j]",
     Schedule().parallelize("i", "gpu-warp").parallelize("j", "gpu-thread"), "no for loop over j"),
    (SPMV, Schedule().parallelize("j", "gpu-block"), "runs on CPU threads only"),
    (SPMV, FUSED.split("fpos", "c", "p", 8).parallelize("c", "gpu-thread", race="NoRaces"),
     "chunks of positions share"),
    (SPMV, FUSED.split("fpos", "c", "p", 8).parallelize("c", "gpu-thread", race="IgnoreRaces"), "insist=True"),
    (SPMTV, FUSED.split("fpos", "c", "p", 8).parallelize("c", "gpu-thread", race="ParallelReduction"),
     "no per-thread copies"),
    (SPMV, FUSED.split("fpos", "c", "p", 8).parallelize("p", "gpu-thread"), "only the loop over chunks"),
    (SPMV, FUSED.divide("fpos", "c", "p", 8).split("p", "w", "t", 2).parallelize("c", "gpu-block"),
     "fixed number of positions"),
    (SPMV, FUSED.divide("fpos", "c", "p", 8).parallelize("c", "gpu-block").parallelize("p", "gpu-thread"),
     "fixed number of positions"),
    (SPMV, FUSED.split("fpos", "b", "p", 64).split("p", "w", "t", 8).parallelize("b", "gpu-block")
     .parallelize("w", "gpu-warp", race="NoRaces").parallelize("t", "gpu-thread"), "race='NoRaces'"),
    ("C[i,j] = 2 * A[i,j]", Schedule().parallelize("i", "gpu-block").parallelize("j", "gpu-thread"),
     "sparse|appended"),
]


@pytest.mark.parametrize("text, schedule, words", REFUSALS)
def test_refusals_name_the_directive(text, schedule, words):
    formats = {"A": "csr"}
    if "B[i,j]" in text:
        formats["B"] = "csr"
    if text.startswith("C[i,j] = 2"):
        formats["C"] = "csr"
    with pytest.raises(ScheduleError, match=words) as e:
        spcomp.compile(text, formats=formats, backend="cuda-sim", schedule=schedule)
    assert "parallelize(" in str(e.value) or "fuse(" in str(e.value)


def test_sub_chunks_are_gpu_only():
    with pytest.raises(ScheduleError, match="one level of chunks"):
        spcomp.compile(SPMV, formats={"A": "csr"},
                       schedule=FUSED.split("fpos", "b", "p", 64).split("p", "t", "nz", 8).parallelize("b"))


# ------------------------------------------------------------------ tuner

@pytest.mark.parametrize("text, spec, shapes", [
    (SPMV, "ij,j->i", {"A": (37, 29), "x": 29}),
    (SPMM, "ij,jk->ik", {"A": (37, 29), "B": (29, 6)}),
    ("s = A[i,j] * x[j]", "ij,j->", {"A": (37, 29), "x": 29}),
    ("s = x[i] * y[i]", "i,i->", {"x": 700, "y": 700}),
])
def test_tuner_gpu_candidates_compile_and_match(text, spec, shapes):
    """Every GPU candidate of the tuner is legal here: it compiles (nvcc too) and
    matches einsum on cuda-sim. (Timings under cuda-sim mean nothing; not asserted.)"""
    rng = np.random.default_rng(4)
    ops = {name: rng.standard_normal(shape) for name, shape in shapes.items()}
    if "A" in ops:
        ops["A"] = ops["A"] * (rng.random(ops["A"].shape) < 0.2)
    _launch.update(grid=2, block=64)
    k = spcomp.compile(text, formats={"A": "csr"} if "A" in ops else {}, backend="cuda-sim")
    cands = gpu_candidates(k)
    kinds = {d[2] for s in cands for d in s.directives if d[0] == "parallelize"}
    assert kinds == {"gpu-thread", "gpu-warp", "gpu-block"}
    assert any(d[0] == "pos" for s in cands for d in s.directives) == ("A" in ops)
    ref = np.einsum(spec, *ops.values())
    for s in cands:
        kk = k.with_schedule(s)
        np.testing.assert_allclose(kk(**ops), ref, rtol=1e-10, atol=1e-10, err_msg=str(s))
        _nvcc(kk)


def test_tuner_lists_gpu_candidates_for_cuda_kernels_only():
    from spcomp.tuner import candidates
    cpu = spcomp.compile(SPMV, formats={"A": "csr"})
    gpu = spcomp.compile(SPMV, formats={"A": "csr"}, backend="cuda-sim")
    gpu_keys = {s.key() for s in gpu_candidates(gpu)}
    assert not gpu_keys & {s.key() for s in candidates(cpu)}
    assert gpu_keys <= {s.key() for s in candidates(gpu)}


# --------------------------------------------------------------- a real GPU

@pytest.mark.skipif(not GPU_OK, reason=f"no GPU: {GPU_WHY}")
def test_taco_gpu_schedules_on_a_real_gpu():
    rng = np.random.default_rng(5)
    A = rng.standard_normal((500, 300)) * (rng.random((500, 300)) < 0.05)
    x = rng.standard_normal(300)
    _launch.clear()
    for s in (taco_spmv(), taco_spmv_rows()):
        k = spcomp.compile(SPMV, formats={"A": "csr"}, backend="cuda", schedule=s)
        np.testing.assert_allclose(k(A=A, x=x), A @ x, rtol=1e-10, atol=1e-10)
