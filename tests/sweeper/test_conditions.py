"""Conditional parameters: rank/alpha only for the LoRA family, bits only for qlora."""

from __future__ import annotations

import optuna
import pytest

from sweeper.space import SearchSpaceError, parse_search_space

optuna.logging.set_verbosity(optuna.logging.WARNING)

PARAMS = {"method": "choice(lora,qlora,full)", "lr": "tag(log,interval(1e-5,1e-1))",
          "rank": "choice(8,16,32)", "method.bits": "choice(4,8)"}
CONDITIONS = {"rank": {"method": ["lora", "qlora"]}, "method.bits": {"method": "qlora"}}


@pytest.mark.parametrize("sampler", [optuna.samplers.TPESampler(seed=0), optuna.samplers.RandomSampler(seed=0)])
def test_conditional_params_only_when_their_condition_holds(sampler):
    space = parse_search_space(PARAMS, [], CONDITIONS)
    study = optuna.create_study(sampler=sampler)
    methods = set()
    for _ in range(30):
        t = study.ask()
        p = space.sample(t, {})
        methods.add(p["method"])
        assert ("rank" in p) == (p["method"] in ("lora", "qlora"))
        assert ("method.bits" in p) == (p["method"] == "qlora")
        study.tell(t, p["lr"])
    assert methods == {"lora", "qlora", "full"}


def test_condition_on_a_fixed_or_default_value():
    space = parse_search_space({"rank": "choice(8,16)"}, ["method=full"], {"rank": {"method": ["lora"]}})
    study = optuna.create_study()
    assert space.sample(study.ask(), {}) == {}  # method=full is fixed: rank does not apply
    space = parse_search_space({"rank": "choice(8,16)"}, [], {"rank": {"method": ["lora"]}})
    assert "rank" in space.sample(study.ask(), {"method": "lora"})  # the config's default method


def test_grid_counts_conditional_points_once():
    space = parse_search_space({"method": "choice(lora,full)", "rank": "choice(8,16)"}, [],
                               {"rank": {"method": ["lora"]}})
    assert space.grid_points() == [{"method": "lora", "rank": 8}, {"method": "lora", "rank": 16}, {"method": "full"}]


def test_conditions_are_checked():
    with pytest.raises(SearchSpaceError, match="conditions.alpha"):
        parse_search_space(PARAMS, [], {"alpha": {"method": "lora"}})
    with pytest.raises(SearchSpaceError, match="circular"):
        parse_search_space({"a": "choice(1,2)", "b": "choice(1,2)"}, [], {"a": {"b": 1}, "b": {"a": 1}})
