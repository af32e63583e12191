"""linear_cross_entropy: the chunked loss equals transformers' ForCausalLMLoss (value and gradients), a run with
``train.chunked_loss`` (on by default) trains as one without it, and it engages only where its logits are exact."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import compose_cfg
from transformers.loss.loss_utils import ForCausalLMLoss

from ftrun.linear_cross_entropy import causal_lm_loss, chunk_tokens, greedy_ids, loss_head, trainer_class


def _case(dtype, seed=0):
    g = torch.Generator().manual_seed(seed)
    hidden = torch.randn(3, 19, 32, generator=g).to(dtype).requires_grad_(True)
    weight = (torch.randn(101, 32, generator=g) / 4).to(dtype).requires_grad_(True)
    labels = torch.randint(0, 101, (3, 19), generator=g)
    labels[:, :6] = -100  # masked prompts
    labels[1, 10:12] = -100
    return hidden, weight, labels


@pytest.mark.parametrize("num_items", [None, 41])
@pytest.mark.parametrize("chunk_bytes", [16 * 4 * 101, 2**29])  # several chunks (16 tokens each) and one
def test_value_and_gradients_equal_transformers_loss_in_fp32(num_items, chunk_bytes):
    hidden, weight, labels = _case(torch.float32)
    want = ForCausalLMLoss(hidden @ weight.t(), labels, 101, num_items_in_batch=num_items)
    got = causal_lm_loss(hidden, weight, labels, num_items, chunk_bytes=chunk_bytes)
    torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-6)
    # scaled as the Trainer scales for gradient accumulation: the backward pass multiplies the gradients
    for a, b in zip(torch.autograd.grad(want / 3, (hidden, weight)), torch.autograd.grad(got / 3, (hidden, weight))):
        torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-7)
        assert a.abs().max() > 1e-3


def test_bf16_head_matches_to_bf16_rounding_and_keeps_its_dtype():
    hidden, weight, labels = _case(torch.bfloat16, seed=1)
    want = ForCausalLMLoss(hidden @ weight.t(), labels, 101)
    got = causal_lm_loss(hidden, weight, labels, chunk_bytes=16 * 4 * 101)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    gw, gh = torch.autograd.grad(got, (weight, hidden))
    ww, wh = torch.autograd.grad(want, (weight, hidden))
    assert gw.dtype == torch.bfloat16 and gh.dtype == torch.bfloat16
    torch.testing.assert_close(gw, ww, rtol=2e-2, atol=2e-3)
    torch.testing.assert_close(gh, wh, rtol=2e-2, atol=2e-3)


def test_no_target_gives_zero_loss_and_zero_gradients():
    hidden, weight, labels = _case(torch.float32)
    labels[:] = -100
    loss = causal_lm_loss(hidden, weight, labels)
    gh, gw = torch.autograd.grad(loss, (hidden, weight))
    assert loss.item() == 0.0 and not gh.any() and not gw.any()


def test_chunk_holds_the_logits_budget():
    assert chunk_tokens(151_936) == 2**28 // (4 * 151_936) == 441
    assert chunk_tokens(10**9) == 16


def test_loss_head_only_where_the_logits_are_the_plain_head(tiny_dir):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, Gemma2Config

    model = AutoModelForCausalLM.from_pretrained(tiny_dir)
    decoder, head = loss_head(model)
    assert decoder is model.model and head is model.lm_head
    lora = get_peft_model(model, LoraConfig(r=2, target_modules=["q_proj"]))
    assert loss_head(lora)[1] is model.lm_head  # adapters in the layers: the head is still plain
    with_head = get_peft_model(AutoModelForCausalLM.from_pretrained(tiny_dir),
                               LoraConfig(r=2, target_modules=["q_proj", "lm_head"]))
    assert loss_head(with_head) == (None, None)  # a LoRA head: transformers' loss
    gemma2 = AutoModelForCausalLM.from_config(Gemma2Config(vocab_size=64, hidden_size=16, intermediate_size=32,
                                                           num_hidden_layers=1, num_attention_heads=2,
                                                           num_key_value_heads=1, head_dim=8))
    assert loss_head(gemma2) == (None, None)  # soft-capped logits


def _losses(run_dir):
    state = json.loads((run_dir / "trainer_state.json").read_text())
    return [h["loss"] for h in state["log_history"] if "loss" in h]


@pytest.mark.parametrize("method", ["full", "lora"])
def test_a_run_trains_as_with_transformers_loss(method, tiny_dir, tmp_path, monkeypatch):
    """The default (train.chunked_loss=true) against transformers' loss: the same logged losses (1e-5) and weights, over
    12 steps with gradient accumulation; and the training steps never ran the head over every position."""
    from safetensors.torch import load_file

    from ftrun.train import run

    heads = []
    linear_forward = torch.nn.Linear.forward

    def spy(self, x):
        if self.out_features > 300:  # the tiny model's 379-token head
            heads.append((torch.is_grad_enabled(), tuple(x.shape)))  # (evaluation runs under no_grad)
        return linear_forward(self, x)

    monkeypatch.setattr(torch.nn.Linear, "forward", spy)
    overrides = [f"method={method}", "max_steps=12", "grad_accum=2", "train.logging_steps=2", "lr=2e-3",
                 "tracking.enabled=false", "train.eval_steps=0"]
    run(compose_cfg(overrides, fast=True), tmp_path / "chunked")
    trained = [shape for grad, shape in heads if grad]
    assert trained and all(shape[1] == 1 for shape in trained)  # logits_to_keep=1: the loss never saw full logits
    evals_chunked = [(grad, shape) for grad, shape in heads if not grad]
    assert evals_chunked
    heads.clear()
    run(compose_cfg([*overrides, "train.chunked_loss=false"], fast=True), tmp_path / "stock")
    assert any(shape[1] > 1 for grad, shape in heads if grad)
    chunked, stock = _losses(tmp_path / "chunked"), _losses(tmp_path / "stock")
    assert len(chunked) == 6
    # the final evaluation: the same loss and exact match (the chunked eval hands exact match token ids)
    results = [json.loads((tmp_path / n / "result.json").read_text()) for n in ("chunked", "stock")]
    assert results[0]["eval_loss"] == pytest.approx(results[1]["eval_loss"], rel=1e-5)
    assert results[0]["eval_exact_match"] == results[1]["eval_exact_match"]
    assert not any(shape[1] > 1 for grad, shape in evals_chunked)  # nor did evaluation
    torch.testing.assert_close(torch.tensor(chunked), torch.tensor(stock), rtol=1e-5, atol=1e-6)
    name = "model.safetensors" if method == "full" else "adapter_model.safetensors"
    a, b = load_file(str(tmp_path / "chunked" / "model" / name)), load_file(str(tmp_path / "stock" / "model" / name))
    for key in b:
        torch.testing.assert_close(a[key], b[key], rtol=1e-3, atol=1e-5)


def test_trainer_class_follows_the_option():
    from transformers import Trainer

    assert trainer_class(compose_cfg(["train.chunked_loss=false"])) is Trainer
    chunked = trainer_class(compose_cfg([]))
    assert issubclass(chunked, Trainer) and chunked is not Trainer
    assert trainer_class(compose_cfg(["model.liger_kernel=true"])) is Trainer  # Liger fuses head and loss itself


def test_two_ranks_train_as_with_transformers_loss(tiny_dir, tmp_path):
    """Under DDP (torchrun, 2 ranks on CPU, full fine-tuning) the chunked loss goes through the wrapped model and scales
    as the Trainer does over ranks: the same losses and gradient norms as transformers' loss."""
    import os
    import subprocess
    import sys

    got = {}
    for chunked in ("true", "false"):
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "-m", "ftrun",
               "data.num_train=64", "data.num_eval=16", "max_steps=4", "train.logging_steps=1", "train.eval_steps=0",
               "train.save_steps=0", "tracking.enabled=false", "method=full", "lr=2e-3",
               f"train.chunked_loss={chunked}", f"output_root={tmp_path}", f"name=c{chunked}"]
        proc = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=600,
                              env={**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""})
        assert proc.returncode == 0, proc.stderr[-3000:]
        (state,) = tmp_path.glob(f"c{chunked}/*/trainer_state.json")
        got[chunked] = [(h["loss"], h["grad_norm"]) for h in json.loads(state.read_text())["log_history"] if "loss" in h]
    assert len(got["true"]) == 4
    torch.testing.assert_close(torch.tensor(got["true"]), torch.tensor(got["false"]), rtol=1e-5, atol=1e-6)


def test_greedy_ids_are_the_argmax_where_exact_match_looks():
    from ftrun.fit import argmax_logits

    hidden, weight, labels = _case(torch.float32)
    ids = greedy_ids(hidden, weight, labels, chunk_bytes=16 * 4 * 101)
    want = argmax_logits(hidden @ weight.t(), labels)
    scored = torch.nn.functional.pad(labels, (0, 1), value=-100)[:, 1:] != -100  # position t predicts label t+1
    assert torch.equal(ids[scored], want[scored]) and not ids[~scored].any()
    assert argmax_logits(ids, labels) is ids  # token ids pass through to exact match
