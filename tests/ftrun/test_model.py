"""Each method trains the tiny model: the loss on a fixed batch goes down, frozen weights stay
bitwise unchanged and trainable ones change."""

from __future__ import annotations

import pytest
import torch
from conftest import compose_cfg

from ftrun.data import build_datasets
from ftrun.model import apply_method, count_parameters, load_model, load_tokenizer
from ftrun.stages.sft import build_trainer


def _train(overrides, tmp_path):
    cfg = compose_cfg(["max_steps=8", "lr=5e-3", "train.eval_steps=0", *overrides], fast=True)
    tok = load_tokenizer(cfg.model)
    train_ds, _, _ = build_datasets(cfg.data, tok)
    model = apply_method(load_model(cfg), cfg)
    batch = _batch(train_ds, tok)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    loss0 = _loss(model, batch)
    trainer = build_trainer(cfg, model, tok, train_ds, None, tmp_path)
    trainer.train()
    loss1 = _loss(model, batch)
    after = dict(model.named_parameters())
    return cfg, model, before, after, loss0, loss1


def _batch(ds, tok):
    from transformers import DataCollatorForSeq2Seq

    return DataCollatorForSeq2Seq(tok, padding=True)([ds[i] for i in range(16)])


@torch.no_grad()
def _loss(model, batch):
    model.eval()
    out = model(**batch).loss.item()
    model.train()
    return out


def _changed(a, b):
    return not torch.equal(a.detach().cpu(), b.detach().cpu())


def test_full_trains_everything(tiny_dir, tmp_path):
    cfg, model, before, after, loss0, loss1 = _train(["method=full"], tmp_path)
    assert loss1 < loss0
    trainable, total = count_parameters(model)
    assert trainable == total
    assert _changed(before["model.layers.0.self_attn.q_proj.weight"], after["model.layers.0.self_attn.q_proj.weight"])


def test_freeze_trains_only_the_last_layers_and_named_modules(tiny_dir, tmp_path):
    cfg, model, before, after, loss0, loss1 = _train(
        ["method=freeze", "method.trainable_layers=1", "method.extra_modules=[lm_head]"], tmp_path)
    assert loss1 < loss0
    for name, p in after.items():
        trains = ".layers.3." in name or name.startswith("lm_head")
        assert p.requires_grad == trains, name
        if trains and p.ndim == 2:
            assert _changed(before[name], p), f"{name} should have trained"
        elif not trains:
            assert torch.equal(before[name], p.detach()), f"{name} should be frozen"


@pytest.mark.parametrize("extra", [[], ["method.use_rslora=true"], ["method.use_dora=true"]],
                         ids=["lora", "rslora", "dora"])
def test_lora_trains_adapters_only(tiny_dir, tmp_path, extra):
    cfg, model, before, after, loss0, loss1 = _train(["method=lora", *extra], tmp_path)
    assert loss1 < loss0
    trainable, total = count_parameters(model)
    assert 0 < trainable < total
    adapters = [n for n in after if "lora_B" in n]
    assert adapters and all(_changed(before[n], after[n]) for n in adapters)
    for name, p in after.items():
        if "lora_" not in name:
            assert not p.requires_grad and torch.equal(before[name], p.detach()), name


def test_lora_target_modules_list(tiny_dir):
    cfg = compose_cfg(["method.target_modules=[q_proj,v_proj]"], fast=True)
    model = apply_method(load_model(cfg), cfg)
    names = {n.split(".lora_A")[0].split(".")[-1] for n, _ in model.named_parameters() if "lora_A" in n}
    assert names == {"q_proj", "v_proj"}


def test_unknown_target_module_is_a_config_error(tiny_dir):
    from ftrun.config import ConfigError

    cfg = compose_cfg(["method.target_modules=[qkv_proj]"], fast=True)
    with pytest.raises(ConfigError, match="method.target_modules"):
        apply_method(load_model(cfg), cfg)


@pytest.mark.parametrize("bits", [4, 8])
def test_qlora_keeps_the_quantized_base_and_trains_adapters(tiny_dir, tmp_path, bits):
    # bitsandbytes may repack 4-bit weights into a CPU kernel layout on first use, so the
    # frozen base is compared by what it computes: each quantized layer's output on a
    # fixed input, bitwise, before and after training
    cfg = compose_cfg(["method=qlora", f"method.bits={bits}", "max_steps=8", "lr=5e-3", "train.eval_steps=0"], fast=True)
    tok = load_tokenizer(cfg.model)
    train_ds, _, _ = build_datasets(cfg.data, tok)
    model = apply_method(load_model(cfg), cfg)
    bases = {n: m.base_layer for n, m in model.named_modules() if hasattr(m, "base_layer")}
    kinds = {type(m).__name__ for m in bases.values()}
    assert kinds == {"Linear4bit" if bits == 4 else "Linear8bitLt"}

    @torch.no_grad()
    def outputs():
        return {n: m(torch.ones(2, m.in_features)).clone() for n, m in bases.items()}

    batch = _batch(train_ds, tok)
    loss0, out0 = _loss(model, batch), outputs()
    before = {n: p.detach().clone() for n, p in model.named_parameters() if "lora_B" in n}
    build_trainer(cfg, model, tok, train_ds, None, tmp_path).train()
    loss1, out1 = _loss(model, batch), outputs()
    assert loss1 < loss0
    for name in bases:
        assert torch.equal(out0[name], out1[name]), f"quantized base {name} changed"
    after = dict(model.named_parameters())
    assert before and all(_changed(before[n], after[n]) for n in before)


def test_loraplus_gives_b_matrices_a_larger_lr(tiny_dir, tmp_path):
    cfg = compose_cfg(["method.loraplus_lr_ratio=16", "lr=1e-3"], fast=True)
    tok = load_tokenizer(cfg.model)
    train_ds, _, _ = build_datasets(cfg.data, tok)
    model = apply_method(load_model(cfg), cfg)
    trainer = build_trainer(cfg, model, tok, train_ds, None, tmp_path)
    ids = {id(p): n for n, p in model.named_parameters()}
    lrs = {}
    for group in trainer.optimizer.param_groups:
        for p in group["params"]:
            lrs[ids[id(p)]] = group["lr"]
    a = {lr for n, lr in lrs.items() if "lora_A" in n}
    b = {lr for n, lr in lrs.items() if "lora_B" in n}
    assert a == {1e-3}
    assert b and all(lr == pytest.approx(16e-3) for lr in b)
