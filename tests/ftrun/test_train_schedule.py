"""Multi-fidelity support in a run: scheduler=wsd keeps the learning rate constant until its decay, and
train.eval_examples evaluates after the same data whatever the batch size."""

from __future__ import annotations

import json
import math

import pytest

from conftest import compose_cfg
from ftrun.config import ConfigError
from ftrun.train import run, training_arguments


def test_wsd_is_constant_until_the_decay_then_decays(tiny_dir, tmp_path):
    cfg = compose_cfg(["scheduler=wsd", "scheduler.warmup_ratio=0", "max_steps=10", "train.logging_steps=1",
                       "scheduler.kwargs.decay_ratio=0.3", "tracking.enabled=false"], fast=True)
    run(cfg, tmp_path / "run")
    history = json.loads((tmp_path / "run" / "trainer_state.json").read_text())["log_history"]
    lrs = {h["step"]: h["learning_rate"] for h in history if "learning_rate" in h}
    # 3 of 10 steps decay; a step logs the rate it used, and a cosine decay starts at the peak:
    # steps 1..8 train at the peak, steps 9 and 10 below it, falling
    assert [lrs[s] for s in range(1, 9)] == pytest.approx([cfg.optimizer.lr] * 8)
    assert cfg.optimizer.lr > lrs[9] > lrs[10] and lrs[10] < 0.5 * cfg.optimizer.lr


def test_wsd_needs_a_decay_length(tmp_path):
    cfg = compose_cfg(["scheduler=wsd", "~scheduler.kwargs.decay_ratio"])
    with pytest.raises(ConfigError, match="decay_ratio"):
        training_arguments(cfg, tmp_path, num_examples=100)


@pytest.mark.parametrize("batch_size, grad_accum", [(4, 1), (8, 1), (4, 2), (16, 1)])
def test_eval_examples_sets_eval_steps_from_the_batch(batch_size, grad_accum, tmp_path):
    cfg = compose_cfg([f"batch_size={batch_size}", f"grad_accum={grad_accum}", "train.eval_examples=64"])
    args = training_arguments(cfg, tmp_path, num_examples=1000)
    assert args.eval_steps * batch_size * grad_accum == 64


def test_eval_examples_reports_to_the_study_after_the_same_data():
    from types import SimpleNamespace

    from sweeper.trial import examples_seen

    for batch, steps in ((4, 16), (8, 8), (16, 4)):
        args = SimpleNamespace(train_batch_size=batch, gradient_accumulation_steps=1, world_size=1)
        assert examples_seen(args, SimpleNamespace(global_step=steps)) == 64
    # a batch that does not divide eval_examples is rounded to its multiple: the pruner compares like with like
    args = SimpleNamespace(train_batch_size=12, gradient_accumulation_steps=1, world_size=1)
    assert examples_seen(args, SimpleNamespace(global_step=math.ceil(64 / 12)), every=64) == 64
