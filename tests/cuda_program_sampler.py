"""Sample random programs on cuda-sim and tally what keeps them to more than one launch.

A test helper (and a script: ``python tests/cuda_program_sampler.py 50``): draws
``programs(max_statements=4, accumulate=True, transposed_reads=True, input_kinds="dcq")``
deterministically, compiles each for ``cuda-sim``, calls it, and reports per program the
launches and, for each statement that runs as a kernel of its own, its output's format and
the reason ``k.loops`` gives -- so the most frequent causes can be taken first.
"""
from __future__ import annotations

import collections
import sys

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import spcomp
from spcomp import program_gpu
from spcomp.errors import SpcompError
from spcomp.program_gpu_join import apart_reason
from spcomp.testing.programs import close, program_operands, programs, reference_program

from test_cuda_programs import separately

_plan_gpu = program_gpu.plan_gpu


def sample(count: int, seed_draws: bool = True, check: bool = False) -> list:
    """``[(case, launches, statements, reasons)]`` for ``count`` drawn programs (launches None
    where it raised an spcomp error). ``check``: each result is also compared with the
    float64 reference (numpy.einsum's) and the statements run as kernels of their own."""
    found = []

    @settings(max_examples=count, database=None, derandomize=seed_draws, deadline=None,
              suppress_health_check=list(HealthCheck))
    @given(st.data())
    def run(data):
        case = data.draw(programs(max_statements=4, accumulate=True, transposed_reads=True, input_kinds="dcq"))
        ops = data.draw(program_operands(case))
        try:
            k = spcomp.compile(case.text, formats=case.formats, backend="cuda-sim", outputs=list(case.outputs))
            got = k(**_fresh(ops))
        except SpcompError as e:
            found.append((case, None, 0, str(e).splitlines()[0]))
            return
        launches = k.last_launches
        if check:
            _check(k, case, ops, got)
        found.append((case, launches, len(k.program.statements), apart_reasons(k)))

    program_gpu.plan_gpu = _planned
    try:
        run()
    finally:
        program_gpu.plan_gpu = _plan_gpu
    return found


def _fresh(ops: dict) -> dict:
    """The operands, a ``+=`` array a copy of its own (a call adds into it in place)."""
    return {n: v[1].copy() if isinstance(v[1], np.ndarray) else v[1] for n, v in ops.items()}


def _check(k, case, ops, got) -> None:
    """Each output against the reference and the statements run one by one."""
    want = reference_program(k.program, {n: v[0] for n, v in ops.items()})
    alone = separately(k, _fresh(ops))
    got = got if isinstance(got, dict) else {case.outputs[0]: got}
    alone = alone if isinstance(alone, dict) else {case.outputs[0]: alone}
    for name in case.outputs:
        assert close(got[name], want[name]) and close(alone[name], want[name]), (str(case), name)


_REASONS: dict = {}  # id(segments list) -> plan_gpu's reasons (statement -> why)


def _planned(*args, **kwargs):
    """``program_gpu.plan_gpu`` keeping the reasons it gives for the statements apart."""
    apart = kwargs.pop("apart", None)
    apart = {} if apart is None else apart  # (the program's own, where it passes one)
    segments = _plan_gpu(*args, apart=apart, **kwargs)
    _REASONS[id(segments)] = (segments, apart)
    return segments


def apart_reasons(k) -> list:
    """``[(statement number, why)]`` for each statement of ``k`` that starts a launch of its
    own after the first (``program_gpu.plan_gpu``'s reason that it does not join the run
    before it), and each statement alone (why not, even with the next one)."""
    _segments, apart = _REASONS.get(id(k.segments), (None, {}))
    stmts = k.program.statements
    return [(run[0] + 1, apart.get(run[0]) or apart_reason(stmts[run[0]], k._split_kernels[run[0]])
             or "(planned before the sampler hooked plan_gpu)")
            for kind, _seg, run in k.segments if run[0] > 0 or (kind == "kernel" and len(stmts) > 1)]


if __name__ == "__main__":
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 50
    tally = collections.Counter()
    for case, launches, stmts, reasons in sample(n, seed_draws=len(sys.argv) < 3):
        if launches is None or launches <= 1:
            continue
        print(f"--- {launches} launches / {stmts} statements: {case}")
        for j, why in reasons:
            print(f"    statement {j}: {why}")
            tally[why] += 1
    print("=== tally")
    for line, c in tally.most_common():
        print(c, line)
