"""Search-space syntax: Hydra's Optuna-sweeper overrides -> Optuna distributions."""

from __future__ import annotations

import optuna
import pytest
from omegaconf import OmegaConf
from optuna.distributions import CategoricalDistribution as Cat
from optuna.distributions import FloatDistribution as Float
from optuna.distributions import IntDistribution as Int

from sweeper.config import FtrunSweeperConf
from sweeper.space import SearchSpaceError, parse_search_space
from sweeper.study import build_pruner, build_sampler, directions, enqueue_grid

optuna.logging.set_verbosity(optuna.logging.WARNING)


@pytest.mark.parametrize("override, expected", [
    ("lr=interval(1e-5,1e-3)", Float(1e-5, 1e-3)),
    ("lr=tag(log,interval(1e-5,1e-1))", Float(1e-5, 1e-1, log=True)),
    ("lr=tag(log, interval(1e-5, 1e-1))", Float(1e-5, 1e-1, log=True)),
    ("rank=int(interval(4,64))", Int(4, 64)),
    ("rank=tag(log,int(interval(4,64)))", Int(4, 64, log=True)),
    ("warmup=tag(int,interval(0,50))", Int(0, 50)),
    ("x=interval(1,10)", Float(1.0, 10.0)),  # Hydra reads interval bounds as floats
    ("rank=choice(8,16,32)", Cat([8, 16, 32])),
    ("rank=8,16,32", Cat([8, 16, 32])),
    ("method=lora,qlora", Cat(["lora", "qlora"])),
    ("flag=choice(true,false)", Cat([True, False])),
    ("epochs=range(1,4)", Int(1, 3)),  # Hydra's range: stop excluded
    ("epochs=range(1,10,step=3)", Int(1, 7, step=3)),
    ("x=range(0.1,0.5,0.1)", Float(0.1, 0.4, step=0.1)),
    ("x=range(-5.5,5.5,step=0.5)", Float(-5.5, 5.0, step=0.5)),
    ("x=shuffle(range(1,4))", Cat([1, 2, 3])),
])
def test_override_syntax(override, expected):
    space = parse_search_space({}, [override])
    (name, dist), = space.distributions.items()
    assert dist == expected
    assert not space.fixed


@pytest.mark.parametrize("override", [
    "lr=interval(1e-3,1e-5)",          # empty interval
    "lr=tag(log,interval(0,1))",       # log from 0
    "x=range(5,1)",                    # empty range
    "lr=interval(1e-5",                # syntax
])
def test_bad_overrides_name_the_parameter(override):
    with pytest.raises(SearchSpaceError, match=override.split("=")[0]):
        parse_search_space({}, [override])


def test_fixed_overrides_and_command_line_wins():
    space = parse_search_space({"lr": "tag(log,interval(1e-5,1e-1))", "rank": "choice(8,16)"},
                               ["rank=32", "data.num_train=64", "batch_size=4,8"])
    assert set(space.distributions) == {"lr", "batch_size"}
    assert space.fixed == {"rank": "32", "data.num_train": "64"}


# the example config of Hydra's Optuna sweeper plugin, and its deprecated search_space form
HYDRA_OPTUNA_CONFIG = """
hydra:
  sweeper:
    sampler:
      _target_: optuna.samplers.TPESampler
      seed: 123
      consider_prior: true
      prior_weight: 1.0
      consider_magic_clip: true
      consider_endpoints: false
      n_startup_trials: 10
      n_ei_candidates: 24
      multivariate: false
      warn_independent_sampling: true
    direction: minimize
    storage: null
    study_name: sphere
    n_trials: 20
    n_jobs: 1
    max_failure_rate: 0.0
    params:
      x: range(-5.5, 5.5, step=0.5)
      y: choice(-5, 0, 5)
      z: tag(log, interval(0.001, 1.0))
    search_space:
      w:
        type: float
        low: 0.1
        high: 1.0
        log: true
"""


def test_config_written_for_hydra_optuna_sweeper():
    conf = OmegaConf.merge(OmegaConf.structured(FtrunSweeperConf),
                           OmegaConf.create(HYDRA_OPTUNA_CONFIG).hydra.sweeper)  # the schema accepts every key
    c = OmegaConf.to_container(conf)
    space = parse_search_space({**c["search_space"], **c["params"]})
    assert space.distributions == {
        "w": Float(0.1, 1.0, log=True),
        "x": Float(-5.5, 5.0, step=0.5),
        "y": Cat([-5, 0, 5]),
        "z": Float(0.001, 1.0, log=True),
    }
    sampler = build_sampler(c["sampler"])
    assert isinstance(sampler, optuna.samplers.TPESampler)
    assert directions(["eval_loss"], c["direction"]) == ["minimize"]


@pytest.mark.parametrize("spec, cls", [
    ("tpe", optuna.samplers.TPESampler), ("random", optuna.samplers.RandomSampler),
    ("cmaes", optuna.samplers.CmaEsSampler), ("qmc", optuna.samplers.QMCSampler),
    ("gp", optuna.samplers.GPSampler), ("nsgaii", optuna.samplers.NSGAIISampler),
    ("nsgaiii", optuna.samplers.NSGAIIISampler), ({"name": "tpe", "n_startup_trials": 3}, optuna.samplers.TPESampler),
])
def test_samplers(spec, cls):
    assert isinstance(build_sampler(spec, seed=0), cls)


@pytest.mark.parametrize("spec, cls", [
    ("median", optuna.pruners.MedianPruner), ({"name": "percentile", "percentile": 25}, optuna.pruners.PercentilePruner),
    ("successive_halving", optuna.pruners.SuccessiveHalvingPruner), ("hyperband", optuna.pruners.HyperbandPruner),
    ({"name": "patient", "patience": 2, "wrapped_pruner": "median"}, optuna.pruners.PatientPruner),
    ("wilcoxon", optuna.pruners.WilcoxonPruner), ("none", optuna.pruners.NopPruner),
])
def test_pruners(spec, cls):
    assert isinstance(build_pruner(spec), cls)


def test_tpe_keeps_optunas_defaults():
    """Nothing is set that the user did not set: Optuna 5's TPE defaults (constant liar) stay."""
    ours, theirs = build_sampler("tpe"), optuna.samplers.TPESampler()
    assert ours._constant_liar == theirs._constant_liar
    assert ours._multivariate == theirs._multivariate


@pytest.mark.parametrize("override, values", [
    ("epochs=range(1,5)", {1, 2, 3, 4}),
    ("bs=range(4,17,step=4)", {4, 8, 12, 16}),
    ("x=range(0.1,0.5,0.1)", {0.1, 0.2, 0.3, 0.4}),
    ("rank=int(interval(1,3))", {1, 2, 3}),
])
@pytest.mark.parametrize("sampler", ["tpe", "random", "qmc", "grid"])
def test_range_means_the_same_under_every_sampler(override, values, sampler):
    space = parse_search_space({}, [override])
    (name, dist), = space.distributions.items()
    if sampler == "grid":  # what the sweep does for sampler: grid
        study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
        n = enqueue_grid(study, space)
    else:
        study, n = optuna.create_study(sampler=build_sampler(sampler, seed=0)), 40
    seen = set()
    for _ in range(n):
        t = study.ask()
        seen.add(round(space.sample(t, {})[name], 9))
        study.tell(t, 0.0)
    assert seen <= values
    if sampler == "grid":
        assert seen == values  # every point, upper bound included
