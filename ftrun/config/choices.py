"""The fixed sets of values a key takes, as Enums that Hydra checks when it composes.

Each Enum's values are also kept as a plain tuple (``METHODS``, ``STAGES``, ...) for
code and messages that list them.
"""

from __future__ import annotations

from enum import Enum
from typing import Sequence


class Choice(str, Enum):
    """A key that takes one of a fixed set of values; compares, hashes and prints as its plain string."""

    def __str__(self) -> str:
        return self.value

    def __format__(self, spec: str) -> str:
        return format(self.value, spec)


def _choice(name: str, values: Sequence[str]):
    return Choice(name, [(v, v) for v in values], module=__name__, qualname=name)


METHODS = ("full", "freeze", "lora", "qlora", "llama_pro")
OPTIMIZERS = {  # ours -> transformers' `optim`
    # torch's fused AdamW: one kernel per tensor for the whole update (CPU and CUDA); the per-tensor loop torch picks
    # on a CPU otherwise took 1.08 s a step on Qwen2.5-0.5B's shapes (8 layers) against 0.155 s, the same update to
    # rounding (~1e-8); tests/ftrun/test_train.py pins the losses to the loop's
    "adamw": "adamw_torch_fused",
    "adamw_8bit": "adamw_bnb_8bit",
    "sgd": "sgd",
    "adafactor": "adafactor",
    "galore": "galore_adamw",  # galore-torch; optimizer.layerwise picks the *_layerwise variant
    "galore_8bit": "galore_adamw_8bit",
    "galore_adafactor": "galore_adafactor",
    "apollo": "apollo_adamw",  # apollo-torch
    "badam": "adamw_torch",  # the badam package's BlockOptimizer around AdamW (ftrun.fit)
}
# optimizers that project gradients of the matrices in optimizer.target_modules (transformers' optim_target_modules)
PROJECTED_OPTIMIZERS = ("galore", "galore_8bit", "galore_adafactor", "apollo")
ROPE_TYPES = ("linear", "dynamic", "yarn", "llama3")  # transformers' rope_parameters["rope_type"]
SHARDINGS = ("none", "zero2", "zero3", "fsdp")
SCHEDULERS = (
    "linear",
    "cosine",
    "cosine_with_restarts",
    "polynomial",
    "constant",
    "constant_with_warmup",
    "inverse_sqrt",
    "reduce_lr_on_plateau",
    "warmup_stable_decay",
)
STAGES = ("pt", "sft", "rm", "dpo", "kto", "ppo")
PRECISIONS = ("fp32", "fp16", "bf16", "pure_bf16")
DTYPES = ("auto", "fp32", "bf16", "fp16")
ATTN = ("eager", "sdpa", "sdpa_varlen", "flash_attention_2")  # sdpa_varlen: ftrun.attention
TEMPLATES = ("auto", "default", "alpaca", "chatml", "qwen", "llama3", "qwen3", "mistral", "glm4")  # ftrun.data.templates
# what TRL 1.16's DPOTrainer accepts as loss_type
DPO_LOSSES = ("sigmoid", "hinge", "ipo", "exo_pair", "nca_pair", "robust", "bco_pair", "sppo_hard", "aot",
              "aot_unpaired", "apo_zero", "apo_down", "discopop", "sft", "sigmoid_norm")
PPO_LOSSES = ("grpo", "dr_grpo", "dapo", "bnpo", "cispo", "sapo", "luspo", "vespo")

Method = _choice("Method", METHODS)
Optimizer = _choice("Optimizer", tuple(OPTIMIZERS))
Scheduler = _choice("Scheduler", SCHEDULERS)
Stage = _choice("Stage", STAGES)
Precision = _choice("Precision", PRECISIONS)
Dtype = _choice("Dtype", DTYPES)
Attn = _choice("Attn", ATTN)
TemplateName = _choice("TemplateName", TEMPLATES)
QuantType = _choice("QuantType", ("nf4", "fp4"))
ComputeDtype = _choice("ComputeDtype", ("fp32", "bf16", "fp16"))
DataFormat = _choice("DataFormat", ("auto", "alpaca", "sharegpt"))
Mix = _choice("Mix", ("concat", "interleave"))
MixStop = _choice("MixStop", ("first_exhausted", "all_exhausted"))
DPOLoss = _choice("DPOLoss", DPO_LOSSES)
PPOLoss = _choice("PPOLoss", PPO_LOSSES)
ScaleRewards = _choice("ScaleRewards", ("group", "batch", "none"))
RopeType = _choice("RopeType", ROPE_TYPES)
QuantMethod = _choice("QuantMethod", ("bnb", "hqq"))
Sharding = _choice("Sharding", SHARDINGS)
SwitchMode = _choice("SwitchMode", ("ascending", "descending", "random", "fixed"))
