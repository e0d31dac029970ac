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
from spcomp.errors import SpcompError
from spcomp.program_gpu_join import apart_reason
from spcomp.testing.programs import close, program_operands, programs, reference_program


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

    run()
    return found


def _fresh(ops: dict) -> dict:
    """The operands, a ``+=`` array a copy of its own (a call adds into it in place)."""
    return {n: v[1].copy() if isinstance(v[1], np.ndarray) else v[1] for n, v in ops.items()}


def _check(k, case, ops, got) -> None:
    """Each output against the reference and the statements run one by one."""
    from test_cuda_programs import separately

    want = reference_program(k.program, {n: v[0] for n, v in ops.items()})
    alone = separately(k, _fresh(ops))
    got = got if isinstance(got, dict) else {case.outputs[0]: got}
    alone = alone if isinstance(alone, dict) else {case.outputs[0]: alone}
    for name in case.outputs:
        assert close(got[name], want[name]) and close(alone[name], want[name]), (str(case), name)


def apart_reasons(k) -> list:
    """``[(statement number, why)]`` for each statement of ``k`` that runs as a kernel of
    its own (``program_gpu_join.apart_reason``; a joinable one kept apart by its reads)."""
    stmts = k.program.statements
    out = []
    for kind, _seg, run in k.segments:
        if kind != "kernel":
            continue
        j = run[0]
        why = apart_reason(stmts[j], k._split_kernels[j])
        out.append((j + 1, why or _neighbours(k, j)))
    return out


def _neighbours(k, j: int) -> str:
    """Why a joinable statement still runs alone: no joinable neighbour, another block size,
    or (else) its reads of the run's tensors (or the next one's of its output)."""
    stmts, kernels = k.program.statements, k._split_kernels
    near = [i for i in (j - 1, j + 1) if 0 <= i < len(stmts) and apart_reason(stmts[i], kernels[i]) is None]
    if not near:
        return "joinable, but no neighbour is"
    block = kernels[j].lowered.threads.gpu_block
    if all(kernels[i].lowered.threads.gpu_block != block for i in near):
        return "joinable, but its neighbours use another block size"
    return "joinable, but reads (its own or the next statement's) the launch cannot make"


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
