"""bench/seed_noise.py's analysis on made-up grids: each seed's best, where seed 42's best lands under the other
seeds, the spread of a configuration over seeds, and the rank correlation between seeds. No trial runs."""

from __future__ import annotations

import pytest

from tests.bench.bench_module import bench_module

seed_noise = bench_module("seed_noise")


def test_two_seeds_that_disagree_on_the_best():
    values = {42: {"a": 1.00, "b": 1.02, "c": 2.0}, 0: {"a": 1.10, "b": 1.015, "c": 2.2}}
    got = seed_noise.analyse(values)
    assert got["per_seed"][42]["best"] == "a" and got["per_seed"][0]["best"] == "b"
    assert got["per_seed"][42]["within_1pct"] == 1 and got["per_seed"][42]["within_5pct"] == 2
    assert got["per_seed"][0]["recorded_best_rank"] == 2
    assert got["per_seed"][0]["recorded_best_vs_best"] == pytest.approx(1.10 / 1.015 - 1)
    assert got["distinct_bests"] == 2
    assert got["spread_over_1pct"] == 2  # a and c move by 10% with the seed, b by 0.5%
    assert got["best_by_mean"] == "b" and got["within_1pct_of_best_mean"] == 1
    assert got["spearman"]["0-42"] == pytest.approx(0.5)


def test_rank_correlation_is_one_for_the_same_order_and_minus_one_for_the_reverse():
    assert seed_noise.spearman([1, 2, 3, 4], [10, 20, 30, 40]) == pytest.approx(1.0)
    assert seed_noise.spearman([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1.0)
