"""``train.recompute_elementwise``: the gated MLP's ``act(gate) * up`` recomputed in the backward pass instead of kept
for it.

Autograd keeps what each operation's backward needs. A gated MLP as transformers writes it
(``down_proj(act_fn(gate_proj(x)) * up_proj(x))``: Llama, Mistral, Qwen2/3, ...) keeps ``gate`` (for the activation's
backward), ``act(gate)`` and ``up`` (for the product's). Recomputed under :func:`torch.utils.checkpoint.checkpoint`
(non-reentrant), ``act(gate) * up`` keeps only ``gate`` and ``up``: an ``intermediate_size``-wide tensor per token
and layer less. The same operations run again in the backward pass, so values and gradients are bitwise those of
the plain model (tests/ftrun/test_recompute.py), for one activation and one product per layer. Liger-Kernel's fused
SwiGLU does the same in Triton on a GPU; this is the PyTorch form, for every device.

On the tiny model with 4096 tokens a step (bench/peer_llamafactory.py's LoRA job) the tensors saved for the
backward fell from 145 to 129 MiB (lora and full alike), and the run's peak resident memory by 8-11 MB.

Applied by :func:`ftrun.model.load_model` (not with ``train.gradient_checkpointing``, which recomputes whole layers
already); evaluation and generation, without gradients, run the plain product.
"""

from __future__ import annotations

import inspect
import types

GATED_MLP = "self.down_proj(self.act_fn(self.gate_proj(x)) * self.up_proj(x))"
"""The gated MLP's forward as transformers writes it; only modules whose class's forward is this are changed."""

_gated: dict = {}  # module class -> whether its forward is GATED_MLP (read once per class)


def apply(model) -> int:
    """Recompute ``act(gate) * up`` of every gated MLP of ``model`` in the backward pass; how many were changed."""
    changed = 0
    for module in model.modules():
        if _is_gated_mlp(type(module)):
            module.forward = types.MethodType(_forward, module)
            changed += 1
    return changed


def _is_gated_mlp(cls) -> bool:
    if cls not in _gated:
        try:
            _gated[cls] = cls.__module__.startswith("transformers.") and GATED_MLP in inspect.getsource(cls.forward)
        except (OSError, TypeError, AttributeError):
            _gated[cls] = False
    return _gated[cls]


def _forward(self, x):
    import torch

    gate, up, act = self.gate_proj(x), self.up_proj(x), self.act_fn
    if torch.is_grad_enabled() and (gate.requires_grad or up.requires_grad):
        from torch.utils.checkpoint import checkpoint

        return self.down_proj(checkpoint(lambda g, u: act(g) * u, gate, up, use_reentrant=False))
    return self.down_proj(act(gate) * up)
