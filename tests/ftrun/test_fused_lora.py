"""ftrun/fused_lora.py: sibling LoRA layers share one down-projection and add their up-projection in the matmul;
the losses and gradients stay peft's up to the order of floating-point sums."""

from __future__ import annotations

import torch
from torch.utils._python_dispatch import TorchDispatchMode

from ftrun import fused_lora
from ftrun.model import apply_method, load_model
from tests.conftest import compose_cfg

TOKENS = 192


class _Count(TorchDispatchMode):
    """How many times each aten operation made a tensor with a row per token (``name``), or another one
    (``name small``)."""

    def __init__(self):
        super().__init__()
        self.ops = {}

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        name = func.overloadpacket.__name__
        if isinstance(out, torch.Tensor) and TOKENS not in out.shape:
            name += " small"
        self.ops[name] = self.ops.get(name, 0) + 1
        return out


def _model(*overrides):
    torch.manual_seed(0)
    cfg = compose_cfg(["method=lora", *overrides])
    return apply_method(load_model(cfg), cfg)


def _batch(model):
    ids = torch.randint(3, model.config.vocab_size, (1, TOKENS), generator=torch.Generator().manual_seed(1))
    return {"input_ids": ids, "labels": ids}


def _train(*overrides, steps=3):
    """The losses of ``steps`` AdamW steps and the LoRA gradients of the last."""
    model = _model(*overrides)
    model.train()
    batch = _batch(model)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-2)
    losses = []
    for _ in range(steps):
        opt.zero_grad()
        loss = model(**batch).loss
        loss.backward()
        losses.append(loss.item())
        grads = [p.grad.clone() for p in params]
        opt.step()
    return losses, grads


def _close(a, b, rel):
    return all((x - y).abs().max() <= rel * y.abs().max() for x, y in zip(a, b))


def test_fused_lora_trains_as_peft_within_rounding():
    plain_losses, plain_grads = _train("train.fuse_lora=false")
    fused_losses, fused_grads = _train("train.fuse_lora=true")
    assert len(plain_grads) == len(fused_grads) > 0
    assert all(abs(f - p) <= 1e-5 * abs(p) for f, p in zip(fused_losses, plain_losses)), (fused_losses, plain_losses)
    assert _close(fused_grads, plain_grads, 1e-4)
    assert plain_losses[-1] < plain_losses[0]  # the steps moved the adapter: B is no longer zero


def test_siblings_share_one_down_projection_and_no_full_width_scaling_remains():
    model = _model("train.fuse_lora=true")
    layers = model.base_model.model.model.layers
    attn, mlp = layers[0].self_attn, layers[0].mlp
    assert attn.q_proj._ftrun_group is attn.k_proj._ftrun_group is attn.v_proj._ftrun_group
    assert mlp.gate_proj._ftrun_group is mlp.up_proj._ftrun_group
    assert attn.o_proj._ftrun_group.members == [attn.o_proj] and mlp.down_proj._ftrun_group.members == [mlp.down_proj]
    counts = {}
    for fuse in ("false", "true"):
        m = _model(f"train.fuse_lora={fuse}")
        with torch.no_grad(), _Count() as seen:
            m(**_batch(m))
        counts[fuse] = seen.ops
    n = len(layers)
    # a layer's forward, peft: 7 base matmuls, 7 lora_A and 7 lora_B matmuls, 7 products by the scaling, 7 sums;
    # fused: 7 base matmuls, 4 down-projections (q/k/v, gate/up, o, down), 7 addmm into the base outputs
    assert counts["false"]["mm"] - counts["true"]["mm"] == (7 + 7 - 4) * n
    assert counts["true"].get("addmm", 0) - counts["false"].get("addmm", 0) == 7 * n
    assert counts["false"]["mul"] - counts["true"]["mul"] == 7 * n
    assert counts["false"]["add"] - counts["true"].get("add", 0) == 7 * n


def test_dropout_keeps_each_layer_its_own_down_projection_and_dora_and_zero3_run_peft():
    with_dropout = _model("train.fuse_lora=true", "method.dropout=0.1")
    attn = with_dropout.base_model.model.model.layers[0].self_attn
    assert attn.q_proj._ftrun_group is not attn.k_proj._ftrun_group
    dora = _model("train.fuse_lora=true", "method.use_dora=true")
    assert not any("_ftrun_group" in vars(m) for m in dora.modules())
    off = _model("train.fuse_lora=false")
    assert not any("_ftrun_group" in vars(m) for m in off.modules())
    zero3 = _model("train.fuse_lora=true", "sharding=zero3")  # parameters gathered per module: peft's forward
    assert not any("_ftrun_group" in vars(m) for m in zero3.modules())
    assert fused_lora.partitioned(compose_cfg([]), {"ACCELERATE_DEEPSPEED_ZERO_STAGE": "3"})
    assert not fused_lora.partitioned(compose_cfg(["sharding=zero2"]), {})


def test_disabled_adapter_gives_the_base_output():
    model = _model("train.fuse_lora=true")
    batch = _batch(model)
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.add_(0.1)  # B away from zero: the adapter changes the output
        adapted = model(**batch).logits
        with model.disable_adapter():
            base = model(**batch).logits
        plain = _model("train.fuse_lora=false")
        with plain.disable_adapter():
            plain_base = plain(**batch).logits
    assert not torch.allclose(adapted, base)
    assert torch.equal(base, plain_base)
    assert fused_lora.apply(torch.nn.Sequential(torch.nn.Linear(2, 2))) == 0
