"""``train.fuse_lora``: LoRA layers that read the same input share one down-projection, and each adds its
up-projection into the base layer's output inside the matmul.

peft's LoRA ``Linear`` computes ``base(x) + lora_B(lora_A(dropout(x))) * scaling`` for every adapted layer on its
own. On a small or medium model that is many thin matmuls and full-width elementwise passes per layer: one
``x @ A.T`` per layer (``rank`` columns, reading all of ``x`` each time), a full-width product by ``scaling``,
a full-width sum, and the same again in the backward pass. Two changes, the arithmetic of LoRA itself unchanged:

- **one down-projection per input.** ``q_proj``, ``k_proj`` and ``v_proj`` of an attention block read the same
  hidden states, as ``gate_proj`` and ``up_proj`` of a gated MLP do. The first of a group to run computes
  ``x @ [A_q; A_k; A_v].T`` in one matmul (and, in the backward pass, one matmul for the input's gradient of all
  three instead of three and their sums); the others take their columns of it.
- **the up-projection added in the matmul.** ``torch.addmm(base(x), x @ A.T, (B * scaling).T)``: the scaling is
  applied to the ``out x rank`` matrix instead of the ``tokens x out`` product, and the sum is the matmul's own
  accumulation, so neither full-width pass remains.

Unsloth's fast LoRA (``fast_lora.py``) fuses the same products with hand-written Triton kernels on a GPU; this is
the PyTorch form, for every device. The results are peft's up to the order of floating-point sums: the losses of
a few LoRA steps on the tiny model agree within 1e-5 relative and the LoRA gradients within 1e-4 of their scale
(tests/ftrun/test_fused_lora.py). On bench/peer_llamafactory.py's job (the tiny Llama, r16 on all linear layers,
4096-token packed steps) a step takes about 6% less.

Applied by :func:`ftrun.model.apply_method` to every peft LoRA ``Linear`` whose adapter is plain LoRA: one active
adapter, no DoRA or other variant, no ``lora_bias``, not merged. Layers with dropout keep their own down-projection
(a shared one would share the dropout mask too). Anything else (several adapters, ``adapter_names``, a dtype the
adapter does not share with the base output) runs peft's own forward, call by call. Packed trials route their rows
with their own forward (:mod:`ftrun.packed.routing`) and are not changed. Under DeepSpeed ZeRO-3, which gathers
each parameter only while its own module runs, nothing is changed (:func:`partitioned`): the fused forward reads
the sibling layers' and the up-projection's weights without running their modules.
"""

from __future__ import annotations

import types
from typing import List

GROUPS = (("q_proj", "k_proj", "v_proj"), ("gate_proj", "up_proj"), ("w1", "w3"))
"""Sibling layer names that read the same input, as transformers' decoders name them (Llama, Mistral, Qwen, ...;
``w1``/``w3``: Mixtral's experts)."""


def partitioned(cfg, environ=None) -> bool:
    """Whether the run's parameters are partitioned per module (``sharding=zero3``, or an accelerate launcher's
    DeepSpeed ZeRO stage 3), where the fused forward cannot read them."""
    import os

    environ = os.environ if environ is None else environ
    return cfg.sharding.name == "zero3" or environ.get("ACCELERATE_DEEPSPEED_ZERO_STAGE") == "3"


class _Group:
    """The down-projection ``x @ [A_1; ...; A_n].T`` shared by sibling LoRA layers, for the input it was made from."""

    def __init__(self, members: List) -> None:
        self.members = members
        self.x = None
        self.parts = None
        self.left = 0

    def down(self, layer, x, name: str):
        """This layer's columns of the group's down-projection of ``x`` (made when ``x`` is new to the group)."""
        import torch

        if self.x is not x or self.left == 0:
            weights = [m.lora_A[name].weight for m in self.members]
            xa = torch.nn.functional.linear(x, weights[0] if len(weights) == 1 else torch.cat(weights))
            xa = xa.reshape(-1, xa.shape[-1])
            self.parts = xa.split([w.shape[0] for w in weights], -1) if len(weights) > 1 else (xa,)
            self.x, self.left = x, len(self.members)
        part = self.parts[self.members.index(layer)]
        self.left -= 1
        if self.left == 0:  # every sibling has its part: keep no tensor past this layer
            self.x = self.parts = None
        return part


def apply(model) -> int:
    """Give every plain-LoRA peft ``Linear`` of ``model`` the fused forward; how many layers were changed."""
    from peft.tuners.lora.layer import Linear

    changed = 0
    for parent in model.modules():
        layers = {n: c for n, c in parent.named_children() if type(c) is Linear and _plain(c)}
        for names in GROUPS:
            siblings = [layers.pop(n) for n in names if n in layers]
            shared = [m for m in siblings if _without_dropout(m)]
            for group in [shared] * bool(shared) + [[m] for m in siblings if m not in shared]:
                changed += _attach(group)
        for layer in layers.values():
            changed += _attach([layer])
    return changed


def _attach(members: List) -> int:
    group = _Group(members)
    for m in members:
        m._ftrun_group = group
        m.forward = types.MethodType(_forward, m)
    return len(members)


def _plain(layer) -> bool:
    """One adapter, plain LoRA: what the fused forward computes as peft does."""
    names = list(layer.lora_A.keys())
    return (len(names) == 1 and not layer.lora_variant and getattr(layer.lora_B[names[0]], "bias", None) is None
            and not layer.merged)


def _without_dropout(layer) -> bool:
    import torch

    return all(isinstance(d, torch.nn.Identity) for d in layer.lora_dropout.values())


def _forward(self, x, *args, **kwargs):
    import torch
    from peft.tuners.lora.layer import Linear

    active = self.active_adapters
    if (args or kwargs or self.disable_adapters or self.merged or len(active) != 1 or active[0] not in self.lora_A
            or self.lora_variant or x.dim() < 2):
        return Linear.forward(self, x, *args, **kwargs)
    name = active[0]
    a, b, scaling = self.lora_A[name].weight, self.lora_B[name].weight, self.scaling[name]
    result = self.base_layer(x)
    if x.dtype != a.dtype or result.dtype != a.dtype:  # a quantized base's output, an fp32 adapter: peft's sum
        delta = self.lora_B[name](self.lora_A[name](self.lora_dropout[name](x.to(a.dtype)))) * scaling
        return (result + delta).to(result.dtype)
    shape = result.shape
    xa = self._ftrun_group.down(self, self.lora_dropout[name](x), name)
    return torch.addmm(result.reshape(-1, shape[-1]), xa, (b * scaling).t()).view(shape)
