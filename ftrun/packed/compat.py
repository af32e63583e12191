"""Which runs can share a pack: the settings that must be equal, and those a packed run does not support yet."""

from __future__ import annotations

import json
from typing import Optional, Sequence

# what must be equal for runs to share a base and a batch: (key, what it means)
SAME = [
    ("model", "the base model"),
    ("method.name", "the method"),
    ("method.target_modules", "the adapted modules"),
    ("data", "the data (and its cutoff_len)"),
    ("precision", "the precision"),
    ("batch_size", "the micro-batch size"),
    ("stage.name", "the stage"),
    ("train.eval_batch_size", "the eval batch size"),
    ("train.gradient_checkpointing", "gradient checkpointing"),
    ("train.chunked_loss", "the loss (train.chunked_loss)"),
    ("train.recompute_elementwise", "what the base's MLPs keep for the backward (train.recompute_elementwise)"),
    ("objective", "the objective"),
]
# settings a packed run does not support yet, with the value it needs: (key, ok(value), what)
UNSUPPORTED = [
    ("stage.name", lambda v: str(v) == "sft", "stage=sft"),
    ("method.name", lambda v: str(v) == "lora", "method=lora"),
    ("method.use_dora", lambda v: not v, "method.use_dora=false"),
    ("method.pissa", lambda v: not v, "no PiSSA init (it changes the base weights)"),
    ("method.loraplus_lr_ratio", lambda v: not v, "no LoRA+"),
    ("method.extra_modules", lambda v: not v, "no method.extra_modules (they train base weights)"),
    ("method.adapter", lambda v: not v, "no method.adapter to continue"),
    ("model.resize_vocab", lambda v: not v, "model.resize_vocab=false"),
    ("optimizer.name", lambda v: str(v) == "adamw", "optimizer=adamw"),
    ("scheduler.name", lambda v: str(v) != "reduce_lr_on_plateau", "a scheduler other than reduce_lr_on_plateau"),
    ("data.packing", lambda v: not v, "data.packing=false"),
    ("train.neftune_noise_alpha", lambda v: v is None, "no NEFTune noise"),
    ("train.generate.max_samples", lambda v: not v, "train.generate.max_samples=0"),
    ("train.keep_best", lambda v: not v, "train.keep_best off"),
    ("stage.init_run", lambda v: v is None, "no stage.init_run"),
    ("resume", lambda v: str(v) == "never", "resume=never"),
    ("sharding.name", lambda v: str(v) == "none", "sharding=none"),
    ("model.liger_kernel", lambda v: not v, "no Liger kernels"),
]


def _get(cfg, dotted: str):
    from omegaconf import OmegaConf

    value = OmegaConf.select(cfg, dotted, default=None)
    return OmegaConf.to_container(value, resolve=True) if OmegaConf.is_config(value) else value


def compatible(cfgs: Sequence) -> Optional[str]:
    """None when the runs can train in one pack, else the reason (the first difference found)."""
    if not cfgs:
        return "no runs to pack"
    for i, cfg in enumerate(cfgs):
        for key, ok, what in UNSUPPORTED:
            value = _get(cfg, key)
            if not ok(value):
                return f"run {i} ({cfg.name}): {key}={value}; a packed run needs {what}"
    first = cfgs[0]
    for i, cfg in enumerate(cfgs[1:], 1):
        for key, what in SAME:
            a, b = _get(first, key), _get(cfg, key)
            if json.dumps(a, sort_keys=True, default=str) != json.dumps(b, sort_keys=True, default=str):
                return f"{what} differs: run 0 ({first.name}) has {key}={a}, run {i} ({cfg.name}) has {key}={b}"
    return None
