"""sweep=auto: the priors entry that fits the method and the model size gives the search space."""

from __future__ import annotations

import json

import pytest
from omegaconf import OmegaConf

from conftest import compose_cfg
from sweeper.auto import AutoSpaceError, auto_params, count_parameters
from sweeper_helpers import fake_sweep


def auto_entries():
    from ftrun.compose import compose

    cfg = compose(["sweep=auto"], return_hydra_config=True)
    return OmegaConf.to_container(cfg.hydra.sweeper.auto, resolve=True)


@pytest.mark.parametrize("method, n_params, lr_range", [
    ("lora", 7e9, "interval(1e-5, 2e-3)"),
    ("qlora", 70e9, "interval(1e-5, 2e-3)"),
    ("full", 0.5e9, "interval(5e-6, 1e-4)"),
    ("full", 7e9, "interval(1e-6, 5e-5)"),
    ("freeze", 70e9, "interval(5e-7, 2e-5)"),
    ("full", None, "interval(5e-7, 2e-5)"),  # unknown size: the entry without a limit
])
def test_priors_entry_by_method_and_size(method, n_params, lr_range):
    params, why = auto_params(auto_entries(), method, n_params)
    assert lr_range in params["lr"] and params["lr"].startswith("tag(log")
    assert ("rank" in params) == (method in ("lora", "qlora"))
    assert f"method={method}" in why


def test_unknown_method_is_refused():
    with pytest.raises(AutoSpaceError, match="no entry for method=prefix"):
        auto_params(auto_entries(), "prefix", 1e9)


def test_parameter_count_from_config_matches_the_model(tiny_dir, tmp_path):
    from transformers import AutoModelForCausalLM

    real = sum(p.numel() for p in AutoModelForCausalLM.from_pretrained(tiny_dir).parameters())
    assert count_parameters(compose_cfg().model) == pytest.approx(real, rel=0.1)
    # a local model directory: read from its config.json without loading weights
    (tmp_path / "config.json").write_text(json.dumps(
        {"hidden_size": 896, "intermediate_size": 4864, "num_hidden_layers": 24, "num_attention_heads": 14,
         "num_key_value_heads": 2, "vocab_size": 151936, "tie_word_embeddings": True}))  # Qwen2.5-0.5B's shape
    assert count_parameters(OmegaConf.create({"path": str(tmp_path), "tiny": None})) == pytest.approx(494e6, rel=0.05)


def test_auto_sweep_searches_the_lora_priors(tmp_path):
    result, study = fake_sweep(tmp_path, ["sweep=auto", "tracking.enabled=false"], fixed=("sweep=auto",
                               "tracking.enabled=false"), n_trials=3, pruner="none", auto=auto_entries())
    dists = study.trials[0].distributions
    assert set(dists) == {"lr", "rank", "batch_size", "epochs"}
    assert (dists["lr"].low, dists["lr"].high, dists["lr"].log) == (1e-5, 2e-3, True)
    assert list(dists["rank"].choices) == [8, 16, 32, 64]


def test_auto_sweep_ships_wsd_rung_branches_pause_and_promote_and_a_tpe_that_reads_rungs():
    """sweep=auto's search (chosen by bench/wsd_rungs.py's replays on both tasks): every trial under scheduler=wsd
    with a 1-sqrt decay, a 0.15 decay branch at each rung, pause and promote (factor 3) and TPE (4 start-up
    trials) reading the paused trials' rung values; all build as the study builds them and pass the checks."""
    import optuna

    from ftrun.compose import compose
    from sweeper.promotion import PromotionPruner
    from sweeper.rung_view import RungSampler
    from sweeper.setting_checks import check_rung_branch, check_settings
    from sweeper.study import SweepConfigError, build_pruner, build_sampler

    cfg = compose(["sweep=auto"], return_hydra_config=True)
    conf = OmegaConf.to_container(cfg.hydra.sweeper, resolve=True)
    assert cfg.scheduler.name == "warmup_stable_decay" and cfg.scheduler.kwargs.decay_type == "1-sqrt"
    assert conf["sampler"] == {"name": "tpe", "n_startup_trials": 4} and conf["rung_branch"] == 0.15
    pruner = build_pruner(conf["pruner"])
    assert isinstance(pruner, PromotionPruner) and pruner.reduction_factor == 3 and pruner.min_resource == "auto"
    sampler = pruner.taught(build_sampler(conf["sampler"]))
    assert isinstance(sampler, RungSampler) and sampler.min_trials == 4
    assert isinstance(sampler.inner, optuna.samplers.TPESampler) and sampler.inner._n_startup_trials == 4
    check_settings(conf)
    check_rung_branch(conf, cfg, searched=["lr", "rank", "batch_size", "epochs"])
    # a user who names another scheduler is told what sweep=auto's branches need
    with pytest.raises(SweepConfigError, match="add scheduler=wsd"):
        check_rung_branch(conf, compose(["sweep=auto", "scheduler=cosine"], return_hydra_config=True), searched=[])
