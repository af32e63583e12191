"""Composition of every preset, and every bad value failing with a message that names the override."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from conftest import CONF_DIR, ROOT, compose_cfg

from ftrun.config import ConfigError, format_lr, validate, validate_device

ALPACA = str(ROOT / "tests" / "data" / "alpaca_tiny.jsonl")

# every YAML in every group folder, nested folders included
PRESETS = sorted(
    (p.relative_to(CONF_DIR).parts[0], str(p.relative_to(CONF_DIR / p.relative_to(CONF_DIR).parts[0]).with_suffix("")))
    for p in CONF_DIR.rglob("*.yaml")
    if p.parent != CONF_DIR
)
NEEDS = {("data", "alpaca"): [f"data.path={ALPACA}"],
         ("stage", "ppo"): [f"stage.reward_run={ROOT}"]}  # any existing directory validates


def test_presets_found():
    groups = {g for g, _ in PRESETS}
    assert {"model", "method", "data", "optimizer", "scheduler"} <= groups


@pytest.mark.parametrize(("group", "name"), PRESETS, ids=[f"{g}={n}" for g, n in PRESETS])
def test_every_preset_composes_and_validates(group, name):
    if group in ("sweep", "hparams_search", "experiment"):
        pytest.skip("sweep presets are composed by tests/sweeper")
    cfg = compose_cfg([f"{group}={name}", *NEEDS.get((group, name), [])])
    if group == "model" and cfg.model.path is not None:
        cfg.model.path = None  # real-model presets point at hub ids that are not here
        cfg.model.tiny = compose_cfg().model.tiny
    validate(cfg)
    assert cfg[group].name  # every preset names itself


def test_knobs_reach_the_groups():
    cfg = compose_cfg(["method=qlora", "lr=1e-4", "rank=32", "batch_size=2", "grad_accum=8", "cutoff_len=256"])
    assert cfg.optimizer.lr == 1e-4
    assert cfg.method.rank == 32 and cfg.method.alpha == 32
    assert cfg.data.cutoff_len == 256
    assert cfg.name == "qlora-letters-lr1e-4-r32"


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["lr=-1"], "lr=-1: lr must be > 0"),
        (["rank=0"], "rank=0: rank must be >= 1"),
        (["epochs=0"], "epochs=0: epochs must be > 0"),
        (["batch_size=0"], "batch_size=0: batch_size must be >= 1"),
        (["grad_accum=0"], "grad_accum=0"),
        (["optimizer.betas=[2,0.9]"], "optimizer.betas=[2,0.9]: give two betas, each in [0, 1)"),
        (["method.dropout=1.5"], "method.dropout=1.5"),
        (["precision=fp8"], "precision=fp8: choose one of fp32, fp16, bf16, pure_bf16"),
        (["scheduler.warmup_steps=10", "scheduler.warmup_ratio=0.1"], "not both"),
        (["data=alpaca", "data.path=/no/such.jsonl"], "data.path=/no/such.jsonl: no such file"),
        (["model.path=/no/such/model"], "model.path=/no/such/model: no such directory"),
        (["method=qlora", "method.bits=3"], "method.bits=3: bits must be 4 or 8"),
        (["method=freeze", "method.trainable_layers=0"], "nothing would train"),
        (["objective=accuracy"], "objective=accuracy"),
        (["cutoff_len=4"], "cutoff_len=4"),
        (["resume=/no/such/run"], "resume=/no/such/run"),
    ],
)
def test_bad_values_name_the_override(overrides, message):
    cfg = compose_cfg(overrides)
    with pytest.raises(ConfigError) as err:
        validate(cfg)
    assert message in str(err.value)


def test_all_problems_reported_at_once():
    with pytest.raises(ConfigError) as err:
        validate(compose_cfg(["lr=-1", "rank=0"]))
    assert "lr=-1" in str(err.value) and "rank=0" in str(err.value)


def test_fp16_needs_cuda_on_this_machine():
    import torch

    if torch.cuda.is_available():
        pytest.skip("has CUDA")
    with pytest.raises(ConfigError, match="precision=fp16: .*needs a CUDA GPU"):
        validate_device(compose_cfg(["precision=fp16"]))


def test_bf16_refused_on_a_gpu_without_it(monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda *a, **k: "Tesla T4")
    with pytest.raises(ConfigError, match=r"precision=bf16: this GPU \(Tesla T4\) cannot compute in bf16"):
        validate_device(compose_cfg(["precision=bf16"]))


@pytest.mark.parametrize(("lr", "text"), [(1e-4, "1e-4"), (3.5e-4, "3.5e-4"), (0.1, "1e-1"), (2e-5, "2e-5")])
def test_format_lr(lr, text):
    assert format_lr(lr) == text


def _cli(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "ftrun", *args], capture_output=True, text=True, cwd=cwd, timeout=120)


@pytest.mark.parametrize(
    ("override", "expected"),
    [
        ("epochs=abc", ["epochs=abc", "could not be converted"]),
        ("method=qlorra", ["method/qlorra", "full", "freeze", "lora", "qlora"]),
        ("lr=-1", ["lr=-1: lr must be > 0"]),
        ("optimizer.betas=[2,0.9]", ["optimizer.betas=[2,0.9]"]),
    ],
)
def test_cli_user_mistakes_get_a_message_not_a_traceback(override, expected, tmp_path):
    out = _cli(override, cwd=tmp_path)
    text = out.stdout + out.stderr
    assert out.returncode != 0
    assert "Traceback" not in text
    for piece in expected:
        assert piece in text


def test_cfg_job_does_not_import_torch():
    code = (
        "import sys; sys.argv=['ftrun','--cfg','job']\n"
        "from ftrun.__main__ import main\n"
        "try:\n    main()\nexcept SystemExit:\n    pass\n"
        "assert 'torch' not in sys.modules, 'composing imported torch'\n"
        "assert 'transformers' not in sys.modules\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert "method:" in out.stdout


def test_plateau_scheduler_without_evaluations_is_refused_before_anything_loads():
    # found by bench/faults.py: this mistake used to surface only after the model had loaded
    with pytest.raises(ConfigError, match=r"train.eval_steps=0: scheduler=reduce_lr_on_plateau steps on the eval"):
        validate(compose_cfg(["scheduler=reduce_lr_on_plateau", "train.eval_steps=0"]))
