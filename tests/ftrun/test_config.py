"""Composition of every preset, and every bad value failing with a message that names the override."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from conftest import CONF_DIR, ROOT, compose_cfg

from ftrun.config import (SHORT_KEYS, Config, ConfigError, canonical_overrides, display_key, format_lr, validate,
                          validate_device)

ALPACA = str(ROOT / "tests" / "data" / "alpaca_tiny.jsonl")

# every YAML in every group folder, nested folders included
PRESETS = sorted(
    (p.relative_to(CONF_DIR).parts[0], str(p.relative_to(CONF_DIR / p.relative_to(CONF_DIR).parts[0]).with_suffix("")))
    for p in CONF_DIR.rglob("*.yaml")
    if p.parent != CONF_DIR
)
NEEDS = {("data", "alpaca"): [f"data.path={ALPACA}"],
         ("stage", "ppo"): [f"stage.reward_run={ROOT}"],  # any existing directory validates
         **{("optimizer", o): ["method=full"] for o in ("galore", "apollo", "badam")}}  # not with LoRA


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


def test_short_knobs_and_their_homes_are_one_value():
    cfg = compose_cfg(["method=qlora", "lr=1e-4", "rank=32", "alpha=64", "batch_size=2", "grad_accum=8",
                       "cutoff_len=256"])
    assert cfg.optimizer.lr == 1e-4
    assert cfg.method.rank == 32 and cfg.method.alpha == 64
    assert cfg.data.cutoff_len == 256
    assert cfg.name == "qlora-letters-lr1e-4-r32"
    # the short spelling and the home reach the same value; the last one given wins
    assert compose_cfg(["optimizer.lr=3e-4"]).name == compose_cfg(["lr=3e-4"]).name == "lora-letters-lr3e-4-r16"
    assert compose_cfg(["lr=1e-2", "optimizer.lr=2e-2"]).optimizer.lr == 2e-2
    # ... and there is no second copy to drift: one key per knob
    top = compose_cfg()
    for short in SHORT_KEYS:
        assert short not in top, f"{short} has a second home at the top level"
    assert "objective" not in top.stage


@pytest.mark.parametrize("spelling", ["lr=-5", "optimizer.lr=-5", "+lr=-5"])
def test_every_spelling_of_a_knob_reaches_the_same_check(spelling):
    with pytest.raises(ConfigError, match="lr=-5: lr must be > 0"):
        validate(compose_cfg([spelling]))


def test_canonical_overrides():
    assert canonical_overrides(["lr=1e-4", "+rank=8", "~alpha", "cutoff_len=choice(256,512)", "stage.objective=x",
                                "hydra.run.dir=d", "method=qlora", "--cfg", "job"]) == [
        "optimizer.lr=1e-4", "method.rank=8", "~method.alpha", "data.cutoff_len=choice(256,512)", "objective=x",
        "hydra.run.dir=d", "method=qlora", "--cfg", "job"]


def test_a_sweep_keeps_the_spelling_of_its_search_space():
    # -m: the study's parameter is named as typed (like presets, enqueue and conditions); each trial's
    # lr=<value> is rewritten when it composes
    assert canonical_overrides(["lr=tag(log,interval(1e-5,1e-1))", "rank=8,16", "alpha=64"], keep_sweeps=True) == [
        "lr=tag(log,interval(1e-5,1e-1))", "rank=8,16", "method.alpha=64"]


def test_cfg_job_shows_one_value_per_knob(tmp_path):
    out = _cli("--cfg", "job", "lr=3e-4", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert "  lr: 0.0003" in out.stdout and "${" not in out.stdout.split("objective:")[0]
    assert "\nlr:" not in out.stdout and "\nrank:" not in out.stdout and "\ncutoff_len:" not in out.stdout


# one bad value for every key of every group: (overrides, the key the message must name)
BAD = {
    # the run
    "epochs": ["epochs=0"], "max_steps": ["max_steps=0"], "batch_size": ["batch_size=0"],
    "grad_accum": ["grad_accum=0"], "seed": ["seed=-1"], "precision": ["precision=fp8"],
    "objective": ["objective=accuracy"], "resume": ["resume=/no/such/run"], "name": ["name=a/b"],
    "output_root": ["output_root="],
    # model
    "model.name": ["model.name="], "model.path": ["model.path=/no/such/model"],
    "model.tiny.hidden_size": ["model.tiny.hidden_size=0"],
    "model.tiny.intermediate_size": ["model.tiny.intermediate_size=0"],
    "model.tiny.num_hidden_layers": ["model.tiny.num_hidden_layers=0"],
    "model.tiny.num_attention_heads": ["model.tiny.num_attention_heads=3"],
    "model.tiny.num_key_value_heads": ["model.tiny.num_key_value_heads=3"],
    "model.tiny.vocab_size": ["model.tiny.vocab_size=0"],
    "model.tiny.max_position_embeddings": ["model.tiny.max_position_embeddings=0"],
    "model.tiny.pretrain_steps": ["model.tiny.pretrain_steps=-1"], "model.tiny.seed": ["model.tiny.seed=-1"],
    "model.template": ["model.template=vicuna"], "model.dtype": ["model.dtype=fp8"],
    "model.attn_implementation": ["model.attn_implementation=flash"],
    "model.trust_remote_code": ["model.trust_remote_code=maybe"],
    # method
    "method.name": ["method.name=prefix"], "method.trainable_layers": ["method.trainable_layers=-1"],
    "method.rank": ["rank=0"], "method.alpha": ["alpha=0"], "method.dropout": ["method.dropout=1.5"],
    "method.target_modules": ["method.target_modules=[]"], "method.use_rslora": ["method.use_rslora=maybe"],
    "method.use_dora": ["method.use_dora=maybe"], "method.loraplus_lr_ratio": ["method.loraplus_lr_ratio=-1"],
    "method.bits": ["method=qlora", "method.bits=3"], "method.quant_type": ["method.quant_type=int4"],
    "method.double_quant": ["method.double_quant=maybe"], "method.compute_dtype": ["method.compute_dtype=fp8"],
    # data
    "data.name": ["data.name="], "data.path": ["data=alpaca", "data.path=/no/such.jsonl"],
    "data.format": ["data.format=yaml"], "data.registry": ["data.registry=/no/such.json", "data.names=[a]"],
    "data.names": ["data.names=[a]", "data.sources=[b]"], "data.mix": ["data.mix=zip"],
    "data.mix_probs": ["data.names=[a,b]", "data.mix=interleave", "data.mix_probs=[0.2]"],
    "data.mix_stop": ["data.mix_stop=never"], "data.builtin": ["data.builtin=numbers"],
    "data.num_train": ["data.num_train=0"], "data.num_eval": ["data.num_eval=-1"],
    "data.val_size": ["data.val_size=1.5"], "data.max_samples": ["data.max_samples=0"],
    "data.cutoff_len": ["cutoff_len=4"], "data.train_on_prompt": ["data.train_on_prompt=maybe"],
    "data.mask_history": ["data.mask_history=maybe"], "data.drop_long": ["data.drop_long=maybe"],
    "data.packing": ["stage=dpo", "data.packing=true"], "data.strict": ["data.strict=maybe"],
    "data.overwrite_cache": ["data.overwrite_cache=maybe"], "data.num_proc": ["data.num_proc=0"],
    # optimizer and schedule
    "optimizer.name": ["optimizer.name=lion"], "optimizer.lr": ["optimizer.lr=-5"],
    "optimizer.weight_decay": ["optimizer.weight_decay=-1"], "optimizer.betas": ["optimizer.betas=[2,0.9]"],
    "optimizer.eps": ["optimizer.eps=0"], "optimizer.momentum": ["optimizer.momentum=1.5"],
    "optimizer.max_grad_norm": ["optimizer.max_grad_norm=-1"],
    "scheduler.name": ["scheduler.name=step"], "scheduler.warmup_steps": ["scheduler.warmup_steps=-1"],
    "scheduler.warmup_ratio": ["scheduler.warmup_ratio=1.5"], "scheduler.kwargs": ["scheduler.kwargs=5"],
    # train and tracking
    "train.logging_steps": ["train.logging_steps=-1"], "train.eval_steps": ["train.eval_steps=-1"],
    "train.progress_interval_s": ["train.progress_interval_s=-1"],
    "train.eval_examples": ["train.eval_examples=-1"],
    "train.save_steps": ["train.save_steps=-1"], "train.save_total_limit": ["train.save_total_limit=0"],
    "train.gradient_checkpointing": ["train.gradient_checkpointing=maybe"],
    "train.chunked_loss": ["train.chunked_loss=maybe"],
    "train.recompute_elementwise": ["train.recompute_elementwise=maybe"],
    "train.fuse_lora": ["train.fuse_lora=maybe"],
    "train.neftune_noise_alpha": ["train.neftune_noise_alpha=0"],
    "train.generate.max_samples": ["train.generate.max_samples=-1"],
    "train.generate.max_new_tokens": ["train.generate.max_new_tokens=0"],
    "train.generate.batch_size": ["train.generate.batch_size=0"],
    "train.keep_best": ["stage=ppo", "train.keep_best=true"], "train.eval_batch_size": ["train.eval_batch_size=0"],
    "train.num_workers": ["train.num_workers=-1"],
    "tracking.enabled": ["tracking.enabled=maybe"], "tracking.experiment": ["tracking.experiment="],
    "tracking.log_model": ["tracking.log_model=maybe"],
    # stage
    "stage.name": ["stage.name=grpo"], "stage.beta": ["stage=dpo", "stage.beta=-1"],
    "stage.loss_type": ["stage=dpo", "stage.loss_type=[bradley]"],
    "stage.label_smoothing": ["stage=dpo", "stage.label_smoothing=0.7"],
    "stage.init_run": ["stage.init_run=/no/such/run"], "stage.reward_run": ["stage.reward_run=/no/such/run"],
    "stage.ppo.num_generations": ["stage.ppo.num_generations=1"],
    "stage.ppo.max_new_tokens": ["stage.ppo.max_new_tokens=0"], "stage.ppo.temperature": ["stage.ppo.temperature=0"],
    "stage.ppo.epsilon": ["stage.ppo.epsilon=0"], "stage.ppo.num_iterations": ["stage.ppo.num_iterations=0"],
    "stage.ppo.loss_type": ["stage.ppo.loss_type=ppo"], "stage.ppo.scale_rewards": ["stage.ppo.scale_rewards=std"],
    # LLaMA-Factory's Train-tab knobs (tests/ftrun/test_llamafactory_knobs.py tests their effects)
    "model.rope_scaling": ["model.rope_scaling=ntk"], "model.rope_factor": ["rope_scaling=linear", "model.rope_factor=0.5"],
    "model.liger_kernel": ["model.liger_kernel=maybe"], "model.resize_vocab": ["model.resize_vocab=maybe"],
    "model.add_special_tokens": ["model.add_special_tokens=['']"], "model.enable_thinking": ["model.enable_thinking=maybe"],
    "model.train_turn_suffix": ["model.train_turn_suffix=maybe"],
    "method.expand_layers": ["method=llama_pro", "method.expand_layers=0"],
    "method.pissa": ["method=qlora", "method.pissa=true"], "method.pissa_iters": ["method.pissa_iters=0"],
    "method.adapter": ["method.adapter=/no/such/adapter"], "method.create_new_adapter": ["method.create_new_adapter=true"],
    "method.quant_method": ["method.quant_method=hqq"], "data.neat_packing": ["data.neat_packing=maybe"],
    "data.padding_free": ["data.padding_free=maybe"],
    "optimizer.target_modules": ["method=full", "optimizer=galore", "optimizer.target_modules=[]"],
    "optimizer.proj_rank": ["method=full", "optimizer=galore", "optimizer.proj_rank=0"],
    "optimizer.update_proj_gap": ["method=full", "optimizer=apollo", "optimizer.update_proj_gap=0"],
    "optimizer.scale": ["method=full", "optimizer=galore", "optimizer.scale=0"],
    "optimizer.proj_type": ["method=full", "optimizer=galore", "optimizer.proj_type=diagonal"],
    "optimizer.layerwise": ["optimizer.layerwise=true"],
    "optimizer.switch_interval": ["method=full", "optimizer=badam", "optimizer.switch_interval=0"],
    "optimizer.switch_mode": ["optimizer.switch_mode=sideways"],
    "stage.pref_ftx": ["stage=dpo", "stage.pref_ftx=-1"],
    "sharding.name": ["sharding.name=zero1"], "sharding.offload": ["sharding.offload=true"],
}
# keys whose values are checked where they are used, not here, and why
CHECKED_ELSEWHERE = {
    "model.tiny": "a group of keys, each covered above",
    "method.extra_modules": "module names of the model: peft names a missing one when it wraps the model",
    "data.columns": "column names of the file: checked against its columns when the file is read",
    "data.tags": "ShareGPT tag names: checked (unknown ones named) when the file is read",
    "data.sources": "each entry is checked when the sources are resolved (ftrun.data.registry)",
    "data.cache_dir": "any folder: created when the first dataset is cached",
    "tracking.uri": "any MLflow URI: MLflow names a bad one when the run starts",
    "stage.ppo": "a group of keys, each covered above",
    "train.generate": "a group of keys, each covered above",
}


def _schema_keys(cls=None, prefix=""):
    import dataclasses
    import typing

    cls = cls or Config
    keys = []
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        kind = hints[f.name]
        kind = next((a for a in typing.get_args(kind) if a is not type(None)), kind)
        if dataclasses.is_dataclass(kind):
            keys += _schema_keys(kind, f"{prefix}{f.name}.")
        keys.append(f"{prefix}{f.name}")
    return keys


def test_every_key_has_a_bad_value_case():
    groups = {"model", "method", "data", "optimizer", "scheduler", "train", "tracking", "stage", "sharding"}
    missing = [k for k in _schema_keys() if k not in BAD and k not in CHECKED_ELSEWHERE and k not in groups]
    assert not missing, f"add a bad value for {missing} to BAD"


@pytest.mark.parametrize(("key", "overrides"), sorted(BAD.items()), ids=sorted(BAD))
def test_a_bad_value_is_refused_naming_its_key(key, overrides):
    with pytest.raises(ConfigError) as err:
        validate(compose_cfg(overrides))  # types and choices fail in compose, ranges and rules in validate
    assert f"{display_key(key)}=" in str(err.value), str(err.value)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["rank=100000"], "rank=100000: larger than the model's hidden size (128)"),
        (["cutoff_len=1024"], "cutoff_len=1024: longer than the model's context (512 positions)"),
        (["method=freeze", "method.trainable_layers=10"], "method.trainable_layers=10: the model has 4 layers"),
        (["stage=kto", "data.packing=true"], "data.packing=true: stage=kto trains on whole pairs or prompts"),
        (["stage=ppo", f"stage.reward_run={ROOT}", "batch_size=6"], "batch_size=6: must be a multiple"),
        (["data.val_size=1.5"], "data.val_size=1.5: a share in [0, 1) or a whole count >= 1"),
        (["stage=rm", "method.loraplus_lr_ratio=16"], "LoRA+ is built for stage=sft only"),
        (["stage=dpo", "objective=eval_exact_match"], "stage=dpo reports"),
        (["scheduler.warmup_steps=10", "scheduler.warmup_ratio=0.1"], "not both"),
        (["method=freeze", "method.trainable_layers=0"], "nothing would train"),
    ],
)
def test_rules_between_keys(overrides, message):
    with pytest.raises(ConfigError) as err:
        validate(compose_cfg(overrides))
    assert message in str(err.value)


def test_rank_is_checked_against_a_local_models_config_without_loading_it(tmp_path):
    (tmp_path / "config.json").write_text('{"hidden_size": 64, "num_hidden_layers": 2, "max_position_embeddings": 256}')
    base = [f"model.path={tmp_path}", "model.tiny=null"]
    with pytest.raises(ConfigError) as err:
        validate(compose_cfg([*base, "rank=128", "cutoff_len=512"]))
    assert "rank=128: larger than the model's hidden size (64)" in str(err.value)
    assert "cutoff_len=512: longer than the model's context (256 positions)" in str(err.value)
    validate(compose_cfg([*base, "rank=64", "cutoff_len=256"]))


def test_one_config_json_reader_serves_the_checks_the_model_and_sweep_auto(tmp_path):
    from ftrun.config import model_arch, read_config_json
    from ftrun.model import model_config_dict
    from sweeper.auto import count_parameters

    (tmp_path / "config.json").write_text('{"model_type": "llava", "text_config": {"hidden_size": 64, '
                                          '"num_hidden_layers": 2, "vocab_size": 100}}')
    cfg = compose_cfg([f"model.path={tmp_path}", "model.tiny=null"])
    assert read_config_json(tmp_path)["model_type"] == "llava"
    assert model_config_dict(cfg.model) == read_config_json(tmp_path)
    assert model_arch(cfg.model) == {"hidden_size": 64, "num_hidden_layers": 2}  # a multimodal model's text part
    assert count_parameters(cfg.model) > 64 * 100
    (tmp_path / "config.json").write_text("{not json")
    assert read_config_json(tmp_path) is None and read_config_json(tmp_path / "nowhere") is None
    assert model_arch(cfg.model) == {} and count_parameters(cfg.model) is None


def test_all_problems_reported_at_once():
    with pytest.raises(ConfigError) as err:
        validate(compose_cfg(["optimizer.lr=-5", "data.val_size=1.5", "rank=100000"]))
    text = str(err.value)
    assert "lr=-5" in text and "data.val_size=1.5" in text and "rank=100000" in text


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
        ("optimizer.lr=-5", ["lr=-5: lr must be > 0"]),
        ("data.val_size=1.5", ["data.val_size=1.5"]),
        ("rank=100000", ["rank=100000: larger than the model's hidden size"]),
        ("precision=fp8", ["precision=fp8", "fp32, fp16, bf16, pure_bf16"]),
        ("optimizer.betas=[2,0.9]", ["optimizer.betas=[2,0.9]"]),
    ],
)
def test_cli_user_mistakes_get_a_message_not_a_traceback(override, expected, tmp_path):
    out = _cli(override, f"output_root={tmp_path}", cwd=tmp_path)
    text = out.stdout + out.stderr
    assert out.returncode != 0
    assert "Loading tokenizer" not in text and "Loading model" not in text  # refused before anything loads
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


@pytest.mark.parametrize("override", ["method.target_modules=[]", "model.path=/no/such/model"])
def test_a_run_refused_by_its_checks_imports_neither_torch_nor_transformers(override, tmp_path):
    """The run's own checks (ftrun.train.run) refuse it before the heavy imports: a refusal takes a
    fraction of a second, not the seconds transformers takes to import (ftrun.divergence once did)."""
    code = (
        f"import sys; sys.argv=['ftrun', {override!r}, 'output_root={tmp_path}', 'tracking.enabled=false']\n"
        "from ftrun.__main__ import main\n"
        "try:\n    main()\nexcept SystemExit as e:\n    status = e.code\n"
        "assert status == 2, status\n"
        "assert 'transformers' not in sys.modules, 'refusing imported transformers'\n"
        "assert 'torch' not in sys.modules, 'refusing imported torch'\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-2000:]
    assert override.split("=")[0] in out.stderr + out.stdout


def test_the_template_choice_matches_the_templates_ftrun_has():
    # ftrun.config cannot import the data layer (composing must stay light), so the names are listed twice
    from ftrun.config import TEMPLATES
    from ftrun.data.templates import TEMPLATE_NAMES

    assert set(TEMPLATES) == set(TEMPLATE_NAMES)


def test_plateau_scheduler_without_evaluations_is_refused_before_anything_loads():
    # found by bench/faults.py: this mistake used to surface only after the model had loaded
    with pytest.raises(ConfigError, match=r"train.eval_steps=0: scheduler=reduce_lr_on_plateau steps on the eval"):
        validate(compose_cfg(["scheduler=reduce_lr_on_plateau", "train.eval_steps=0"]))
