"""estimate: the estimated peak memory against the peak measured by ftrun.estimate.measured_peak (PyTorch's profiler)
over real training steps on CPU, for every method, on the built-in model and on a random-weight model
of Qwen2.5-0.5B's shapes (2 of its 24 layers, to keep the test short; bench/memory_estimate.py has
the full-depth and 1.5B-like table); plus the components' arithmetic, fits() and the command line."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from conftest import ROOT, compose_cfg

from ftrun.config import ConfigError
from ftrun.estimate import GiB, estimate, fits, parse_size, split_args
from ftrun.estimate.baseline import runtime_baseline

TOLERANCE = 0.15
METHODS = ["full", "freeze", "lora", "qlora"]
ENV = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "TOKENIZERS_PARALLELISM": "false"}


@pytest.fixture(scope="module")
def half_b_like(tmp_path_factory):
    """Random weights of Qwen2.5-0.5B's shapes (151,936-token vocabulary, tied embeddings), 2 layers."""
    from ftrun.estimate.measured_peak import random_model

    return random_model(tmp_path_factory.mktemp("models") / "qwen2.5-0.5b-like-2l", "qwen2.5-0.5b-like", layers=2)


def _tiny(method, *extra):
    # 8 x 128 tokens: activations, not the 0.8M weights, make most of the peak
    return compose_cfg([f"method={method}", "method.trainable_layers=2", "batch_size=8", "cutoff_len=128",
                        "train.eval_batch_size=8", *extra])


def _half_b(path, method, *extra):
    # 4 x 64 tokens: enough that training (not loading) is the peak for every method
    return compose_cfg(["model=qwen2.5-0.5b-instruct", f"model.path={path}", "model.dtype=fp32",
                        f"method={method}", "method.trainable_layers=1", "batch_size=4", "cutoff_len=64",
                        "train.eval_batch_size=4", *extra])


def _check(cfg):
    from ftrun.estimate.measured_peak import measure

    est = estimate(cfg, device="cpu", measure_baseline=False)
    got = measure(cfg, steps=2)
    assert got["steps"] == 2
    err = est.tensor_peak / got["tensor_peak"] - 1
    assert abs(err) <= TOLERANCE, (f"estimate {est.tensor_peak / 2**20:.1f} MiB vs measured "
                                   f"{got['tensor_peak'] / 2**20:.1f} MiB ({err:+.1%})\n{est.table()}")
    return est, got


@pytest.mark.parametrize("method", METHODS)
def test_tiny_model_within_15_percent(method, tiny_dir):
    est, _ = _check(_tiny(method))
    assert est.phase == "backward"  # the activations, not the load, decide it here


def test_tiny_eval_batch_within_15_percent(tiny_dir):
    est, _ = _check(_tiny("lora", "batch_size=2", "train.eval_batch_size=32"))
    assert est.phase == "eval"


@pytest.mark.parametrize("method", METHODS)
def test_half_b_like_within_15_percent(method, half_b_like):
    est, _ = _check(_half_b(half_b_like, method))
    assert est.total_params == 165_960_320  # Qwen2.5-0.5B with 2 layers: 136M of it the embedding


def test_half_b_like_gradient_checkpointing_within_15_percent(half_b_like):
    plain = estimate(_half_b(half_b_like, "full"), device="cpu")
    est, _ = _check(_half_b(half_b_like, "full", "train.gradient_checkpointing=true"))
    assert est.activations < plain.activations


def test_components_follow_the_method_and_optimizer(half_b_like):
    cfg = lambda *o: _half_b(half_b_like, *o)  # noqa: E731
    full, lora, qlora = (estimate(cfg(m), device="cpu") for m in ("full", "lora", "qlora"))
    n = full.total_params
    assert full.trainable_params == n and full.gradients == 4 * n and full.optimizer == 8 * n  # adamw: 2 fp32 states
    # lora on all linears of 2 layers: r x (in + out) per linear, fp32
    per_layer = 16 * ((896 + 896) + 2 * (896 + 128) + (896 + 896) + 2 * (896 + 4864) + (4864 + 896))
    assert lora.trainable_params == 2 * per_layer
    assert qlora.trainable_params == lora.trainable_params
    assert qlora.weights < lora.weights  # the linears are 4-bit
    dq = estimate(cfg("qlora", "method.double_quant=false"), device="cpu")
    assert dq.weights > qlora.weights
    int8 = estimate(cfg("qlora", "method.bits=8"), device="cpu")
    assert int8.weights > dq.weights
    sgd = estimate(cfg("full", "optimizer=sgd", "optimizer.momentum=0.9"), device="cpu")
    assert sgd.optimizer == 4 * n
    assert estimate(cfg("full", "optimizer=sgd", "optimizer.momentum=0"), device="cpu").optimizer == 0
    eight = estimate(cfg("full", "optimizer=adamw_8bit"), device="cpu")
    assert 2 * n <= eight.optimizer < 2.1 * n
    ada = estimate(cfg("full", "optimizer=adafactor"), device="cpu")
    assert ada.optimizer < 0.05 * full.optimizer  # factored second moments
    ckpt = estimate(cfg("full", "train.gradient_checkpointing=true"), device="cpu")
    assert ckpt.activations < full.activations
    assert estimate(cfg("full", "batch_size=8"), device="cpu").activations > full.activations
    bf16 = estimate(cfg("full", "model.dtype=bf16"), device="cpu")
    assert bf16.weights == 2 * n
    # sharding divides what it shards, per device
    z1, z2, z3 = (estimate(cfg("full"), devices=4, sharding=s, device="cuda") for s in ("zero1", "zero2", "zero3"))
    one = estimate(cfg("full"), device="cuda")
    assert z1.optimizer == one.optimizer // 4 and z1.gradients == one.gradients
    assert z2.gradients == one.gradients // 4
    assert z3.weights == one.weights // 4 and z3.peak < z2.peak < z1.peak < one.peak


def test_fits_gives_a_reason(half_b_like):
    cfg = _half_b(half_b_like, "full")
    est = estimate(cfg, device="cpu")
    ok, reason = fits(cfg, est.peak * 2, device="cpu")
    assert ok and reason.startswith("fits")
    ok, reason = fits(cfg, est.peak * 0.5, device="cpu")
    assert not ok and "does not fit" in reason and "method=full" in reason and "batch_size=4" in reason


def test_command_line(tmp_path):
    out = subprocess.run([sys.executable, "-m", "ftrun.estimate", "method=qlora", "estimate.limit=1MiB",
                          f"estimate.json={tmp_path / 'e.json'}"], capture_output=True, text=True, cwd=ROOT,
                         env=ENV, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "peak" in out.stdout and "does not fit" in out.stdout
    data = json.loads((tmp_path / "e.json").read_text())
    assert data["fits"]["ok"] is False and data["estimate"]["method"] == "qlora"


@pytest.mark.parametrize("args, fix", [
    (["estimate.devise=2"], "estimate.devices"),
    (["model.path=/nowhere/at/all"], "no such directory"),
    (["estimate.sharding=zero9"], "zero3"),
    (["estimate.limit=lots"], "24GiB"),
    (["methd=lora"], "methd"),
])
def test_mistakes_end_in_one_message(args, fix, capsys):
    from ftrun.cli import main_guard
    from ftrun.estimate import main

    assert main_guard(main, args) == 2
    err = capsys.readouterr().err
    assert fix in err and "Traceback" not in err


def test_a_folder_without_config_json(tmp_path, capsys):
    from ftrun.cli import main_guard
    from ftrun.estimate import main

    assert main_guard(main, [f"model.path={tmp_path}"]) == 2
    assert "config.json" in capsys.readouterr().err


def test_sizes_and_argument_split():
    assert parse_size("24GiB") == 24 * GiB and parse_size("80GB") == 80e9 and parse_size("512") == 512
    with pytest.raises(ConfigError, match="24GiB"):
        parse_size("lots")
    own, run = split_args(["method=lora", "estimate.devices=2", "estimate.measure=true"])
    assert own == {"devices": 2, "measure": True} and run == ["method=lora"]


# ---------------------------------------------------------------------------
# the process: the runtime's baseline + the tensors, against a real run's peak resident memory

DEMO = ROOT / "tests" / "data" / "llamafactory" / "alpaca_en_demo.json"  # rows of 35-65 tiny-tokenizer tokens


@pytest.mark.parametrize("extra", [
    ["method=lora", "cutoff_len=64", "data.val_size=0.25", "train.eval_batch_size=4"],  # rows cut to 64; eval
    ["method=full", "cutoff_len=128", "data.packing=true", "data.val_size=0"],  # packed rows fill 128; no eval
    ["method=lora", "cutoff_len=64", "data.val_size=0", "tracking.enabled=false"],  # no MLflow: ~80 MiB less
], ids=["lora-eval", "full-packing", "lora-untracked"])
def test_process_estimate_within_15_percent_of_a_real_runs_peak(extra, tiny_dir, tmp_path):
    import mlflow

    overrides = ["data=alpaca", f"data.path={DEMO}", "batch_size=4", "max_steps=2", "train.save_steps=0",
                 "train.eval_steps=0", *extra]
    est = estimate(compose_cfg(overrides), device="cpu")  # measures the runtime baseline once per machine
    assert est.runtime > 100 * 2**20 and est.peak == est.tensor_peak + est.runtime
    tracked = "tracking.enabled=false" not in overrides
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    out = subprocess.run([sys.executable, "-m", "ftrun", *overrides, f"output_root={tmp_path / 'out'}", "name=proc",
                          *([f"tracking.uri={uri}"] if tracked else [])],
                         capture_output=True, text=True, cwd=tmp_path, env=ENV, timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    result = json.loads(next((tmp_path / "out" / "proc").glob("*/result.json")).read_text())
    parts = result["peak_memory_breakdown_mb"]  # where the process's resident peak rose; sums to its peak
    measured = max(result["peak_memory_mb"], sum(parts.values())) * 2**20  # saving and MLflow come after the first
    err = est.peak / measured - 1
    assert abs(err) <= TOLERANCE, (f"estimate {est.peak / 2**20:.0f} MiB vs run's peak {measured / 2**20:.0f} MiB\n"
                                   f"{est.table()}")
    assert est.tensor_peak < 0.5 * measured  # the tensors alone would be far off: the baseline carries it
    # the run's peak comes with where it rose (the interpreter, then setup: torch and transformers import
    # there, after the run's checks; data, model, train...), in MLflow too
    assert {"startup", "setup", "model", "train"} <= set(parts) and parts["startup"] + parts["setup"] > 100
    assert sum(parts.values()) >= result["peak_memory_mb"] - 0.1 * len(parts)  # it covers the reported peak
    if not tracked:  # the baseline measured without MLflow: the tracked one is ~80 MiB more
        tracked_baseline, _ = runtime_baseline("lora")  # cached by the lora-eval case
        assert "tracking" not in parts and tracked_baseline > est.runtime + 50 * 2**20
        return
    run = mlflow.tracking.MlflowClient(uri).search_runs(mlflow.tracking.MlflowClient(uri).search_experiments()[0]
                                                        .experiment_id)[0]
    assert run.data.metrics["peak_memory_mb/startup"] == pytest.approx(parts["startup"])


def test_a_pack_holds_the_base_once_and_each_members_adapters_states_and_activations(tiny_dir):
    """ftrun.estimate.pack: one member is the run's own estimate; each further member adds its adapters, gradients,
    optimizer states and activations (its rows of the one batch), never a second base."""
    from ftrun.estimate.pack import pack_peak

    lora = _tiny("lora", "rank=8")
    big = _tiny("lora", "rank=64")
    one = estimate(lora, device="cpu")
    assert pack_peak([lora], device="cpu") == (one.peak, one.phase)
    e64 = estimate(big, device="cpu")
    two, phase = pack_peak([lora, big], device="cpu")
    assert phase == "backward"
    base = one.weights - one.gradients
    assert two == pytest.approx(base + one.runtime + sum(e.gradients + e.optimizer + e.activations + e.loss_buffers
                                                         for e in (one, e64)))
    assert two < one.peak + e64.peak - base  # the base once
