"""Property tests of the CUDA backend: random expressions x formats x shapes x
densities (the ``spcomp.testing`` strategies, as in test_properties.py) compiled for
``backend="cuda-sim"``, run on the CPU harness and checked against the float64
NumPy reference; every generated kernel is also compiled for sm_90 by nvcc
(that part is skipped without nvcc).

Each test runs one GPU mapping of the outermost parallel loop: the default
``gpu-thread``, ``gpu-warp`` or ``gpu-block``. Every launch is forced to a drawn
configuration of several blocks and many threads a block (grid-stride loops make
any grid correct), so blocks run concurrently on the harness' worker threads and
scatter kernels really contend on their ``atomicAdd``.

Outcomes are counted as in test_properties.py (``ok`` / ``refused``): the CUDA
backend may refuse a case with an ``UnsupportedError`` or ``ScheduleError`` that
says why (today: sparse outputs that grow, team mappings of sparse outputs), and
each test asserts that the bulk of its cases did run.
"""
from __future__ import annotations

import warnings

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import spcomp
import spcomp.backends.cuda as cuda
from spcomp import Schedule
from spcomp.api import options_from_schedule
from spcomp.backends import get_target
from spcomp.errors import ScheduleError, TranspositionWarning, UnsupportedError
from spcomp.frontend import to_notation
from spcomp.lower.lowerer import lower
from spcomp.testing import check_kernel
from spcomp.testing.strategies import expressions, formats, operands, output_formats

from conftest import examples
from cuda_launches import forced_launches_fixture

BACKEND = "cuda-sim"
HAS_NVCC = cuda.nvcc_available()
GRIDS = (2, 3, 5)
BLOCKS = (64, 128, 256)       # multiples of 32, as gpu-warp and gpu-block need

_launch: dict = {}            # the forced (grid, block) of the current example


def _reason(e: Exception) -> str:
    return str(e).splitlines()[0][:140]


forced_launches = forced_launches_fixture(_launch)


def _dense_mostly(ndim):
    """Dense outputs three times in four, any assemblable output otherwise."""
    return st.one_of(st.just("dense"), st.just("dense"), st.just("dense"), output_formats(ndim))


def _rows_dense(ndim):
    """Input formats whose first stored level is dense (csr-like), so the outer loop
    can run in parallel more often than with any format (a compressed first level
    is co-iterated, which keeps the kernel serial)."""
    if ndim < 2:
        return formats(ndim)
    return formats(ndim - 1, kinds="dcp", allow_order=False, presets=False).map(lambda f: "d" + f)


def _parallel_index(case, dtype):
    """The loop the default GPU schedule parallelises (lowering only), or None."""
    notation = to_notation(case.text, formats=case.formats, default_dtype=dtype)
    return lower(notation, options_from_schedule(Schedule(), None, "kernel", get_target(BACKEND).capabilities)).threads.parallel


def _schedule(case, how, dtype):
    if how == "gpu-thread":
        return Schedule()
    index = _parallel_index(case, dtype)
    return Schedule() if index is None else Schedule().parallelize(index, how)


def _nvcc_check(k):
    report = cuda.check(k, arch="sm_90")["sm_90"]
    assert set(report) == set(cuda.signature.parse_kernels(k.source)), report
    for name, info in report.items():
        assert 0 < info["registers"] <= 255, (name, info)


def _features(stats, k):
    src = k.source[k.source.index('extern "C"'):]  # the kernels, without the prelude
    mapping = next((m for m in ("gpu-warp", "gpu-block", "gpu-thread") if f"parallel: {m}" in src), "serial")
    names = [f"{mapping} kernel"]
    if "atomicAdd(" in src:
        names.append("atomic output")
    if "spc_warp_reduce" in src or "spc_block_reduce" in src:
        names.append("team reduction")
    fmt = k.notation.lhs.tensor.format
    names.append("scalar output" if not fmt.levels else "dense output" if fmt.is_dense else "sparse output")
    if _any_order(fmt.spec()):
        names.append("bitmap or dense-under-sparse output")
    if any(lv.letter == "b" for t in k.notation.tensors.values() for lv in t.format.levels):
        names.append("bitmap level")
    stats.feature(*names)


def _any_order(spec: str) -> bool:
    """A bitmap level, or a dense level under a sparse one: assembled through a stand-in."""
    if not spec:  # a scalar output has no levels
        return False
    levels = spcomp.Format.parse(spec).levels
    first = next((l for l, lv in enumerate(levels) if not lv.is_dense), len(levels))
    return any(lv.letter == "b" for lv in levels) or any(lv.is_dense for lv in levels[first:])


def run_cuda_case(data, stats, how, dtype="float64", backend=BACKEND, **expr_kw):
    """Draw a case and a launch, compile for ``backend`` (cuda-sim, or cuda on a
    GPU), check against NumPy and nvcc."""
    expr_kw.setdefault("output_format", _dense_mostly)
    case = data.draw(expressions(max_operands=3, max_order=3, **expr_kw), label="case")
    _launch.update(grid=data.draw(st.sampled_from(GRIDS), label="grid"),
                   block=data.draw(st.sampled_from(BLOCKS), label="block"))
    kw = dict(dtype=dtype, backend=backend)
    try:
        kw["schedule"] = _schedule(case, how, dtype)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", TranspositionWarning)
            k = spcomp.compile(case.text, formats=case.formats, **kw)
    except (UnsupportedError, ScheduleError) as e:
        assert str(e).strip(), f"{type(e).__name__} without a message for {case}"
        stats.refused(_reason(e))
        return
    ops = data.draw(operands(case, dtype=dtype), label="operands")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", TranspositionWarning)
        check_kernel(case.text, case.formats, ops, **kw)
    if HAS_NVCC:
        _nvcc_check(k)
    stats.ok()
    _features(stats, k)


def _run(stats, n, how, dtype="float64", min_ok=0.6, min_parallel=0.3, backend=BACKEND, **expr_kw):
    """Run ``n`` examples; assert that most ran and enough of them with ``how``."""
    @settings(max_examples=examples(n))
    @given(st.data())
    def run(data):
        run_cuda_case(data, stats, how, dtype, backend=backend, **expr_kw)

    run()
    ok = stats.counts["ok"]
    assert ok >= min_ok * stats.total, f"too few cases ran:\n{stats.summary()}"
    # kernels over a bitmap level mostly run serial under the default GPU schedule: the
    # share of parallel kernels is asked of the other cases
    assert stats.features[f"{how} kernel"] >= min_parallel * (ok - stats.features["bitmap level"]), \
        f"too few cases ran a {how} loop:\n{stats.summary()}"


def test_random_kernels_gpu_thread(outcome_stats):
    """The default schedule: a thread per iteration of the outermost loop, atomics
    when that loop is a reduction (scatter) index. Without divisions: their
    ``abs(b) + 1`` divisor is stored everywhere, so the outer loop co-iterates it
    and runs serially, which would crowd out the mapping under test (the other
    GPU tests draw divisions)."""
    _run(outcome_stats, 40, "gpu-thread", divisions=False)


def test_random_kernels_gpu_warp(outcome_stats):
    """A warp per iteration: lanes split the first independent inner loop."""
    _run(outcome_stats, 25, "gpu-warp", input_formats=_rows_dense)


def test_random_kernels_gpu_block(outcome_stats):
    """A block per iteration: threads split the first independent inner loop."""
    _run(outcome_stats, 20, "gpu-block", input_formats=_rows_dense)


def test_random_scatter_kernels_float32(outcome_stats):
    """float32 with csr-like inputs: outer loops over a reduction index (scatter)
    add into shared output entries with atomicAdd, in float32."""
    _run(outcome_stats, 20, "gpu-thread", dtype="float32", input_formats=_rows_dense)


def test_random_any_level_order_outputs(outcome_stats):
    """Outputs with a bitmap level or a dense level under a sparse one (``cd``,
    ``db``, ``cdc:1,0,2``), which the kernel assembles through a compressed stand-in
    and the runtime expands: the GPU kernels under the forced launches."""
    def any_order(ndim):
        if ndim < 2:
            return output_formats(ndim, allow_packed=False)
        return output_formats(ndim, allow_packed=False).filter(_any_order)
    _run(outcome_stats, 12, "gpu-thread", min_parallel=0.0, min_output_order=2, output_format=any_order)
    assert outcome_stats.features["bitmap or dense-under-sparse output"] >= 1, outcome_stats.summary()


GPU_OK, GPU_WHY = cuda.device.gpu_available()


@pytest.mark.skipif(not GPU_OK, reason=f"no GPU: {GPU_WHY}")
@pytest.mark.parametrize("how", ["gpu-thread", "gpu-warp", "gpu-block"])
def test_random_kernels_on_a_real_gpu(outcome_stats, how):
    """The same random suite on ``backend="cuda"`` (pycuda, a real device), with the
    same forced launches; runs wherever a GPU and pycuda are present."""
    kw = {} if how == "gpu-thread" else {"input_formats": _rows_dense}
    _run(outcome_stats, 40, how, backend="cuda", **kw)
