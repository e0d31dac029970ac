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

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import spcomp
from spcomp.errors import SpcompError
from spcomp.program_gpu_join import apart_reason
from spcomp.testing.programs import program_operands, programs


def sample(count: int, seed_draws: bool = True) -> list:
    """``[(case, launches, statements, loops)]`` for ``count`` drawn programs that compile."""
    found = []

    @settings(max_examples=count, database=None, derandomize=seed_draws, deadline=None,
              suppress_health_check=list(HealthCheck))
    @given(st.data())
    def run(data):
        case = data.draw(programs(max_statements=4, accumulate=True, transposed_reads=True, input_kinds="dcq"))
        ops = data.draw(program_operands(case))
        try:
            k = spcomp.compile(case.text, formats=case.formats, backend="cuda-sim", outputs=list(case.outputs))
            k(**{n: v[1] for n, v in ops.items()})
        except SpcompError as e:
            found.append((case, None, 0, str(e).splitlines()[0]))
            return
        found.append((case, k.last_launches, len(k.program.statements), apart_reasons(k)))

    run()
    return found


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
        out.append((j + 1, why or "joinable, but not with its neighbours (reads or block size)"))
    return out


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
