"""ftrun/recompute.py: the gated MLP's act(gate) * up recomputed in the backward pass keeps one
intermediate-wide tensor per token and layer less, and changes no value or gradient."""

from __future__ import annotations

import torch

from ftrun import recompute
from ftrun.model import apply_method, load_model
from tests.conftest import compose_cfg

TOKENS = 256


def _step(*overrides):
    """(bytes of the tensors saved for the backward, loss, trainable gradients, the model) of one step."""
    torch.manual_seed(0)
    cfg = compose_cfg(list(overrides))
    model = apply_method(load_model(cfg), cfg)
    model.train()
    ids = torch.randint(3, model.config.vocab_size, (1, TOKENS), generator=torch.Generator().manual_seed(1))
    saved = {}

    def keep(t):
        saved[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(keep, lambda t: t):
        loss = model(input_ids=ids, labels=ids).loss
    loss.backward()
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    return sum(saved.values()), loss.item(), grads, model


def test_recomputing_act_gate_times_up_saves_one_intermediate_tensor_per_layer_bitwise_the_same():
    for method in ("lora", "full"):
        plain = _step(f"method={method}", "train.recompute_elementwise=false")
        less = _step(f"method={method}", "train.recompute_elementwise=true")
        tiny = compose_cfg([]).model.tiny
        assert plain[0] - less[0] == TOKENS * tiny.intermediate_size * tiny.num_hidden_layers * 4, method
        assert less[1] == plain[1]
        assert len(less[2]) == len(plain[2]) > 0
        assert all(torch.equal(a, b) for a, b in zip(less[2], plain[2])), method


def test_only_gated_mlps_change_and_not_under_gradient_checkpointing():
    model = load_model(compose_cfg(["train.recompute_elementwise=true"]))
    changed = [name for name, m in model.named_modules() if "forward" in vars(m)]
    assert changed == [f"model.layers.{i}.mlp" for i in range(compose_cfg([]).model.tiny.num_hidden_layers)]
    assert recompute.apply(torch.nn.Sequential(torch.nn.Linear(2, 2))) == 0
    checkpointed = load_model(compose_cfg(["train.recompute_elementwise=true", "train.gradient_checkpointing=true"]))
    assert not any("forward" in vars(m) for m in checkpointed.modules())
