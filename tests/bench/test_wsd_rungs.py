"""bench/wsd_rungs.py's cost model (what the sampler reads under pause and promote: tests/sweeper/test_rung_view.py)."""

from __future__ import annotations

import pytest

from tests.bench.bench_module import bench_module

rungs_bench = bench_module("wsd_rungs")


def test_branch_seconds_grow_with_the_steps_before_them_and_sum_to_the_recorded_ones():
    rec = {"value": 1.0, "seconds": 20.0, "branch_s": 6.0, "branches": {10: 3.0, 20: 2.0, 30: 1.5, 40: 1.0}}
    cost = rungs_bench.branch_cost(rec)
    assert list(cost) == [10, 20, 30]  # the last report is the run's own end
    assert cost[10] < cost[20] < cost[30]
    assert sum(cost.values()) == pytest.approx(6.0)
