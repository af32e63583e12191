"""Each training option has its effect in a real tiny run, not just a finite loss.

Every test here fails when the option is ignored: the optimizer the trainer built, the
learning rate at every step against the scheduler's formula, neftune's noise on the
embeddings (training mode only), gradient checkpointing's recomputed forward passes, the
precision the layers compute in, and how many samples an optimizer step consumed.
"""

from __future__ import annotations

import json
import math

import pytest
import torch
from conftest import compose_cfg

import ftrun.stages.sft
from ftrun.train import run

LR = 1e-3
STEPS = 10
WARMUP = 2
QUIET = ["train.eval_steps=0", "tracking.enabled=false", "train.logging_steps=1"]


def run_capturing(monkeypatch, tmp_path, overrides, callbacks=()):
    """Run ``compose_cfg(overrides, fast=True)`` and return (the Trainer it trained, result.json)."""
    built = []
    build = ftrun.stages.sft.build_trainer

    def capture(*args, **kwargs):
        trainer = build(*args, **kwargs)
        for cb in callbacks:
            trainer.add_callback(cb)
        built.append(trainer)
        return trainer

    monkeypatch.setattr(ftrun.stages.sft, "build_trainer", capture)
    run(compose_cfg(list(overrides), fast=True), tmp_path)
    return built[0], json.loads((tmp_path / "result.json").read_text())


def lr_trace(tmp_path):
    """The learning rate the Trainer logged for steps 1..N (the rate that step's update used)."""
    history = json.loads((tmp_path / "trainer_state.json").read_text())["log_history"]
    return {h["step"]: h["learning_rate"] for h in history if "learning_rate" in h}


# ---------------------------------------------------------------------------
# optimizers


@pytest.mark.parametrize(("optimizer", "expected"), [
    ("adamw", "torch.optim.adamw.AdamW"),
    ("adamw_8bit", "bitsandbytes.optim.adamw.AdamW"),
    ("sgd", "torch.optim.sgd.SGD"),
    ("adafactor", "transformers.optimization.Adafactor"),
])
def test_each_optimizer_is_the_one_the_trainer_steps(optimizer, expected, tiny_dir, tmp_path, monkeypatch):
    trainer, result = run_capturing(monkeypatch, tmp_path, [f"optimizer={optimizer}", "max_steps=2", *QUIET])
    inner = getattr(trainer.optimizer, "optimizer", trainer.optimizer)  # accelerate wraps it
    assert f"{type(inner).__module__}.{type(inner).__qualname__}" == expected
    assert result["global_step"] == 2 and math.isfinite(result["objective"])
    group = inner.param_groups[0]
    if optimizer == "sgd":
        assert group["momentum"] == 0.9
    if optimizer == "adamw_8bit":  # 8-bit state (for tensors of >= min_8bit_size), not bnb's 32-bit AdamW
        assert inner.args.optim_bits == 8


# ---------------------------------------------------------------------------
# schedulers: the logged rate at each step against the formula (transformers' definitions)


def warm(t):
    return t / WARMUP


def expected_lr(name: str, t: int, kwargs: dict) -> float:
    """Learning-rate multiplier for optimizer step index ``t`` (0-based) of STEPS, WARMUP warmup steps."""
    if name != "inverse_sqrt" and t < WARMUP:
        return warm(t)
    progress = (t - WARMUP) / (STEPS - WARMUP)
    if name == "linear":
        return max(0.0, 1 - progress)
    if name == "cosine_with_restarts":
        return 0.5 * (1 + math.cos(math.pi * ((kwargs["num_cycles"] * progress) % 1.0)))
    if name == "polynomial":
        end = kwargs["lr_end"]
        return ((LR - end) * (1 - progress) ** kwargs["power"] + end) / LR
    if name == "constant_with_warmup":
        return 1.0
    if name == "inverse_sqrt":  # timescale = warmup steps; linear warmup first
        return warm(t) if t < WARMUP else 1 / math.sqrt(t / WARMUP)
    raise AssertionError(name)


@pytest.mark.parametrize(("scheduler", "kwargs"), [
    ("linear", {}),
    ("cosine_with_restarts", {"num_cycles": 2}),
    ("polynomial", {"power": 2.0, "lr_end": 1e-7}),  # power 2: a curve the linear schedule cannot match
    ("constant_with_warmup", {}),
    ("inverse_sqrt", {}),
])
def test_scheduler_learning_rate_follows_its_formula(scheduler, kwargs, tiny_dir, tmp_path, monkeypatch):
    over = [f"scheduler.kwargs.{k}={v}" for k, v in kwargs.items()]
    run_capturing(monkeypatch, tmp_path, [f"scheduler={scheduler}", *over, "scheduler.warmup_ratio=0",
                                          f"scheduler.warmup_steps={WARMUP}", f"lr={LR}", f"max_steps={STEPS}", *QUIET])
    trace = lr_trace(tmp_path)
    assert sorted(trace) == list(range(1, STEPS + 1))
    for step, lr in trace.items():
        assert lr == pytest.approx(LR * expected_lr(scheduler, step - 1, kwargs), rel=1e-6, abs=1e-12), step


def test_reduce_lr_on_plateau_cuts_the_rate_after_each_eval_without_improvement(tiny_dir, tmp_path, monkeypatch):
    # threshold=10 makes every eval after the first count as "no improvement"; patience=0 reacts at once
    run_capturing(monkeypatch, tmp_path, [
        "scheduler=reduce_lr_on_plateau", "+scheduler.kwargs.patience=0", "+scheduler.kwargs.threshold=10.0",
        "+scheduler.kwargs.factor=0.5",
        f"lr={LR}", "max_steps=8", "train.eval_steps=2", "tracking.enabled=false", "train.logging_steps=1"])
    trace = lr_trace(tmp_path)
    # rel mode: an eval improves only below best * (1 - 10), which is -inf at first, so every eval (steps
    # 2, 4, 6) halves the rate; ignored, or stepped per step like the others, the trace would differ
    assert [trace[s] / LR for s in range(1, 9)] == pytest.approx([1, 1, 0.5, 0.5, 0.25, 0.25, 0.125, 0.125])


# ---------------------------------------------------------------------------
# neftune, gradient checkpointing, precision, gradient accumulation


def _callback(**events):
    from transformers import TrainerCallback

    return type("Probe", (TrainerCallback,), events)()


def test_neftune_adds_bounded_noise_to_embeddings_in_training_mode_only(tiny_dir, tmp_path, monkeypatch):
    alpha, seen = 5.0, {}

    def on_step_begin(self, args, state, control, model=None, **kwargs):
        if state.global_step != 1:
            return
        emb = model.get_input_embeddings()
        ids = torch.arange(3, 11).unsqueeze(0)  # 8 tokens
        with torch.no_grad():
            model.train()
            seen["train"] = (emb(ids) - emb.weight[ids]).abs()
            model.eval()
            seen["eval"] = (emb(ids) - emb.weight[ids]).abs()
            model.train()
        seen["bound"] = alpha / math.sqrt(ids.shape[1] * emb.weight.shape[1])

    run_capturing(monkeypatch, tmp_path, [f"train.neftune_noise_alpha={alpha}", "max_steps=2", *QUIET],
                  callbacks=[_callback(on_step_begin=on_step_begin)])
    assert seen["eval"].max() == 0  # evaluation and generation see the clean embeddings
    noise = seen["train"]
    assert 0 < noise.max() <= seen["bound"] * (1 + 1e-5)  # uniform in [-alpha/sqrt(L*d), +alpha/sqrt(L*d)]
    assert (noise > 0).float().mean() > 0.99  # every coordinate is perturbed


@pytest.mark.parametrize("checkpointing", [False, True])
def test_gradient_checkpointing_recomputes_each_layer_in_backward(checkpointing, tiny_dir, tmp_path, monkeypatch):
    import ftrun.model

    calls = {"n": 0}
    apply_method = ftrun.model.apply_method

    def counting(model, cfg):
        model = apply_method(model, cfg)
        # a module inside the layer: transformers checkpoints the layer's forward, so the layer's own hooks
        # stay outside the checkpoint, while the mlp inside it is entered again when backward recomputes it.
        # A pre-hook: torch stops the recomputation once the last saved tensor is back, inside the mlp,
        # so the mlp's post-forward hooks do not run a second time.
        mlp = next(m for n, m in model.named_modules() if n.endswith("layers.0.mlp"))
        mlp.register_forward_pre_hook(lambda m, a: calls.__setitem__("n", calls["n"] + (1 if m.training else 0)))
        return model

    monkeypatch.setattr(ftrun.model, "apply_method", counting)
    run_capturing(monkeypatch, tmp_path, [f"train.gradient_checkpointing={str(checkpointing).lower()}",
                                          "max_steps=2", *QUIET])
    # one forward per step, plus its recomputation during backward when checkpointing
    assert calls["n"] == (4 if checkpointing else 2)


@pytest.mark.parametrize(("precision", "weights", "compute"), [
    ("fp32", torch.float32, torch.float32),
    ("bf16", torch.float32, torch.bfloat16),       # autocast: fp32 weights, bf16 matmuls
    ("pure_bf16", torch.bfloat16, torch.bfloat16),  # the base weights themselves in bf16
])
def test_precision_sets_weight_and_compute_dtypes(precision, weights, compute, tiny_dir, tmp_path, monkeypatch):
    seen = {}

    def on_step_end(self, args, state, control, model=None, **kwargs):
        # the frozen base weights (peft keeps LoRA's own small matrices in fp32 under every precision)
        seen.setdefault("weights", {p.dtype for p in model.parameters() if not p.requires_grad})

    import ftrun.model

    apply_method = ftrun.model.apply_method

    def probing(model, cfg):
        model = apply_method(model, cfg)
        proj = next(m for n, m in model.named_modules() if n.endswith("layers.0.mlp.down_proj")
                    or n.endswith("layers.0.mlp.down_proj.base_layer"))
        def hook(module, args, output):
            if module.training:
                seen.setdefault("compute", output.dtype)

        proj.register_forward_hook(hook)
        return model

    monkeypatch.setattr(ftrun.model, "apply_method", probing)
    run_capturing(monkeypatch, tmp_path, [f"precision={precision}", "max_steps=2", *QUIET],
                  callbacks=[_callback(on_step_end=on_step_end)])
    assert seen["compute"] == compute
    assert seen["weights"] == {weights}


def test_grad_accum_takes_that_many_batches_per_optimizer_step(tiny_dir, tmp_path, monkeypatch):
    # FAST: 64 samples, batch 8; 2 steps of 2 batches each consume half an epoch (without: a quarter)
    trainer, result = run_capturing(monkeypatch, tmp_path, ["grad_accum=2", "max_steps=2", *QUIET])
    assert result["global_step"] == 2
    assert trainer.state.epoch == pytest.approx(0.5)
