"""Behaviour that exists only on a CUDA GPU. Each test skips with the reason on a machine without one.

Listed in README ("Tests and benchmarks"), so a CPU-only CI run says what it did not check.
"""

from __future__ import annotations

import json

import pytest
import torch
from conftest import compose_cfg

from ftrun.train import run

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (none on this machine)")]

QUIET = ["max_steps=4", "train.eval_steps=0", "tracking.enabled=false", "train.logging_steps=1"]


def test_fp16_trains_under_the_grad_scaler_without_a_false_divergence(tiny_dir, tmp_path):
    # the scaler may skip overflowing steps at the start; ftrun.divergence must not call that a divergence
    run(compose_cfg(["precision=fp16", *QUIET], fast=True), tmp_path)
    result = json.loads((tmp_path / "result.json").read_text())
    assert result["status"] == "finished" and result["global_step"] == 4


def test_qlora_runs_with_a_4bit_base_on_cuda(tiny_dir, tmp_path):
    run(compose_cfg(["method=qlora", *QUIET], fast=True), tmp_path)
    result = json.loads((tmp_path / "result.json").read_text())
    assert result["status"] == "finished" and result["peak_memory_mb"] > 0  # torch.cuda.max_memory_allocated
