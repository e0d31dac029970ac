"""Forced launch geometry for cuda-sim tests: every kernel a test module builds runs
with the grid and block the module's ``launch`` dict holds (when it holds any), so
several blocks run concurrently on the harness' workers. Grid-stride loops make any
grid correct; the real ``launch_config`` still validates the loop bounds."""
from __future__ import annotations

import pytest

import spcomp
import spcomp.backends.cuda as cuda


def forced_launches_fixture(launch: dict):
    """A module-scoped autouse fixture that launches with ``launch["grid"]`` and
    ``launch["block"]``; assign it to a name in the test module."""
    @pytest.fixture(scope="module", autouse=True)
    def forced_launches():
        real = cuda.launch_config

        def forced(function, args_by_name, block=256, max_grid=cuda.launch.MAX_GRID):
            grid, block = real(function, args_by_name, block, max_grid)  # still validates the bounds
            return (launch["grid"], launch["block"]) if launch else (grid, block)

        spcomp.clear_cache()  # the targets bind launch_config when a kernel is built
        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(cuda, "launch_config", forced)
            yield
        launch.clear()
        spcomp.clear_cache()
    return forced_launches
