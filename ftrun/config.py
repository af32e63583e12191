"""The configuration schema: structured configs registered in Hydra's ConfigStore.

Each group (``model``, ``method``, ``data``, ``optimizer``, ``scheduler``) has one
dataclass; ``ftrun/conf/<group>/*.yaml`` holds presets merged onto it, so a typo in
a key, a value of the wrong type or a choice outside its Enum fails at compose time.

Every knob has one home. The ones people sweep have a short spelling as well
(:data:`SHORT_KEYS`: ``lr`` is ``optimizer.lr``, ``rank`` is ``method.rank``, ...);
:func:`canonical_overrides` rewrites the short spelling to the home before Hydra
composes, so both reach the same value and the same check, and ``--cfg job``
shows each knob once.

Range and cross-field checks that a type cannot express live in :func:`validate`;
it runs before any model or dataset is loaded, reports every problem at once and
names each by the override that fixes it.

Nothing here imports torch: composing a config must stay fast.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

from omegaconf import MISSING, DictConfig, OmegaConf

from ftrun.contract import RESULT_FILE, TRAINER_STATE


class ConfigError(ValueError):
    """A user mistake in the configuration; the message says what to change."""


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
    "adamw": "adamw_torch",
    "adamw_8bit": "adamw_bnb_8bit",
    "sgd": "sgd",
    "adafactor": "adafactor",
    "galore": "galore_adamw",  # galore-torch; optimizer.layerwise picks the *_layerwise variant
    "galore_8bit": "galore_adamw_8bit",
    "galore_adafactor": "galore_adafactor",
    "apollo": "apollo_adamw",  # apollo-torch
    "badam": "adamw_torch",  # the badam package's BlockOptimizer around AdamW (ftrun.trainer)
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
ATTN = ("eager", "sdpa", "flash_attention_2")
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


# ---------------------------------------------------------------------------
# group schemas


@dataclass
class TinyArch:
    """Architecture of the built-in tiny Llama model (``model=tiny``)."""

    hidden_size: int = 128
    """Width of the residual stream."""
    intermediate_size: int = 256
    """Width of the MLP."""
    num_hidden_layers: int = 4
    """Number of decoder layers."""
    num_attention_heads: int = 4
    """Query heads per layer."""
    num_key_value_heads: int = 2
    """Key/value heads per layer (grouped-query attention when smaller)."""
    vocab_size: int = 512
    """Size of the byte-level BPE vocabulary trained for it."""
    max_position_embeddings: int = 512
    """Longest sequence the model accepts."""
    pretrain_steps: int = 1000
    """Optimizer steps of the deterministic base pre-training on first use."""
    seed: int = 0
    """Seed of the weights, the tokenizer corpus and the base pre-training."""


@dataclass
class ModelConfig:
    """Which base model to fine-tune and how to load it."""

    name: str = MISSING
    """Short name used in run names and MLflow tags."""
    path: Optional[str] = None
    """Local directory or hub id; null for the built-in tiny model."""
    tiny: Optional[TinyArch] = None
    """Set only for the built-in model: it is built from this on first use."""
    template: TemplateName = TemplateName.auto
    """Chat template: `auto` uses the tokenizer's own."""
    dtype: Dtype = Dtype.auto
    """Weights dtype when loading: auto, fp32, bf16 or fp16."""
    attn_implementation: Attn = Attn.sdpa
    """Attention kernel: eager, sdpa or flash_attention_2."""
    trust_remote_code: bool = False
    """Run the model repository's own code; only for repositories you trust."""
    rope_scaling: Optional[RopeType] = None
    """RoPE scaling to extend the context: linear, dynamic, yarn or llama3 (transformers' rope_parameters); null: none."""
    rope_factor: float = 2.0
    """rope_scaling: context extension factor (the model then takes max_position_embeddings x this)."""
    liger_kernel: bool = False
    """Liger's fused Triton kernels (RMSNorm, RoPE, SwiGLU, cross-entropy) via transformers' use_liger_kernel; CUDA only."""
    resize_vocab: bool = False
    """Resize the embeddings (and LM head) to the tokenizer's length, rounded up to 64; with LoRA they train in full."""
    add_special_tokens: List[str] = field(default_factory=list)
    """Special tokens added to the tokenizer, e.g. [<tool_call>]; new ones need model.resize_vocab=true."""
    enable_thinking: bool = True
    """Reasoning templates (qwen3, deepseek_r1): keep the <think> part in training (true) or drop it and put an empty
    one in the prompt (false), as LLaMA-Factory does; also passed to the tokenizer's own chat template."""


@dataclass
class MethodConfig:
    """How the model trains: full, freeze, lora or qlora."""

    name: Method = MISSING
    """full, freeze, lora or qlora."""
    # freeze
    trainable_layers: int = 2
    """freeze: how many of the last decoder layers train."""
    extra_modules: List[str] = field(default_factory=list)
    """freeze, llama_pro, lora: further modules that train in full, by name (e.g. lm_head, embed_tokens);
    with lora they are peft's modules_to_save (LLaMA-Factory's additional_target)."""
    # llama_pro
    expand_layers: int = 2
    """llama_pro: decoder blocks added (one after every num_layers/N), identity-initialised; only they train."""
    # lora / qlora
    rank: int = 16
    """LoRA rank r, at most the model's hidden size (short spelling: rank=)."""
    alpha: float = 32
    """LoRA alpha, usually 2 x rank; the update is scaled by alpha/rank (alpha/sqrt(rank) with rslora) (short: alpha=)."""
    dropout: float = 0.0
    """Dropout on the LoRA input."""
    target_modules: List[str] = field(default_factory=lambda: ["all-linear"])
    """Modules that get adapters: [all-linear] or names such as [q_proj, v_proj]."""
    use_rslora: bool = False
    """Rank-stabilised LoRA scaling (alpha/sqrt(rank))."""
    use_dora: bool = False
    """Weight-decomposed LoRA (DoRA)."""
    loraplus_lr_ratio: Optional[float] = None
    """LoRA+: the B matrices learn at lr x this ratio (16 is the paper's default)."""
    pissa: bool = False
    """lora: initialise the adapters from the weights' principal singular vectors (PiSSA, peft's init_lora_weights)."""
    pissa_iters: int = 16
    """pissa: iterations of the fast randomised SVD; -1 = an exact SVD."""
    adapter: Optional[str] = None
    """lora/qlora: start from this saved adapter (a run's model/ folder); it keeps training unless create_new_adapter."""
    create_new_adapter: bool = False
    """method.adapter: merge it into the base and train a fresh adapter on top instead."""
    # qlora
    quant_method: QuantMethod = QuantMethod.bnb
    """qlora: the quantization library, bnb (bitsandbytes) or hqq."""
    bits: int = 4
    """qlora: quantization of the frozen base, 4 or 8 bits."""
    quant_type: QuantType = QuantType.nf4
    """qlora 4-bit: nf4 or fp4."""
    double_quant: bool = True
    """qlora 4-bit: quantize the quantization constants too."""
    compute_dtype: ComputeDtype = ComputeDtype.fp32
    """qlora 4-bit: dtype of the de-quantized matmuls: fp32, bf16 or fp16."""


@dataclass
class DataConfig:
    """Which datasets to train on and how to turn them into tokens."""

    name: str = MISSING
    """Short name used in run names and MLflow tags."""
    path: Optional[str] = None
    """A data file (.json, .jsonl, .csv, .parquet), a folder of them or a glob; null for the built-in task."""
    format: DataFormat = DataFormat.auto
    """Record layout: alpaca, sharegpt (also OpenAI messages), or auto (from the columns)."""
    columns: Dict[str, str] = field(default_factory=dict)
    """Column renames, role -> column in the file: {instruction: prompt, output: response, messages: chat}."""
    tags: Dict[str, str] = field(default_factory=dict)
    """ShareGPT tags: role_tag, content_tag, user_tag, assistant_tag, system_tag."""
    registry: Optional[str] = None
    """A LLaMA-Factory dataset_info.json; data.names then selects its entries."""
    names: List[str] = field(default_factory=list)
    """Datasets to mix, by name: conf/data presets, or data.registry entries."""
    sources: List[Any] = field(default_factory=list)
    """Datasets with their own settings: [{name: a, max_samples: 1000}, {path: b.jsonl, format: sharegpt}]."""
    mix: Mix = Mix.concat
    """How several datasets mix: concat or interleave."""
    mix_probs: Optional[List[float]] = None
    """interleave: the probability of each dataset (null: equal)."""
    mix_stop: MixStop = MixStop.first_exhausted
    """interleave: stop when the first dataset runs out (first_exhausted) or the last (all_exhausted)."""
    builtin: Optional[str] = None
    """Name of a built-in generated task (e.g. letters) used when no dataset is given."""
    num_train: int = 2000
    """Built-in task: training examples to generate."""
    num_eval: int = 200
    """Built-in task: evaluation examples to generate (from another seed)."""
    val_size: float = 0.1
    """Share in [0, 1) or a whole count (>= 1) of the rows held out for evaluation; 0 = none."""
    max_samples: Optional[int] = None
    """Use at most this many training rows."""
    cutoff_len: int = 512
    """Longest tokenized sample; longer ones are truncated, the last answer keeps at least half (short: cutoff_len=)."""
    train_on_prompt: bool = False
    """Also compute the loss on prompt tokens."""
    mask_history: bool = False
    """Multi-turn: train on the last assistant turn only (default: every assistant turn)."""
    drop_long: bool = False
    """Drop samples longer than cutoff_len instead of truncating them."""
    packing: bool = False
    """Pack several samples into each cutoff_len row (no loss across samples)."""
    neat_packing: bool = True
    """packing: position ids restart per sample and attention stays inside it; false: packed samples see each other."""
    strict: bool = False
    """Make every skipped (unusable) record an error."""
    overwrite_cache: bool = False
    """Rebuild the tokenized dataset even if it is cached."""
    num_proc: Optional[int] = None
    """Processes for preprocessing (null: automatic)."""
    cache_dir: Optional[str] = None
    """Where tokenized datasets are cached (null: $FTRUN_CACHE/data)."""


@dataclass
class OptimizerConfig:
    """The optimizer; names follow transformers' ``optim`` choices."""

    name: Optimizer = MISSING
    """adamw, adamw_8bit, sgd, adafactor, galore, galore_8bit, galore_adafactor, apollo or badam."""
    lr: float = 1e-3
    """Peak learning rate; the tiny model likes 1e-3, real models with LoRA 1e-4 to 2e-4 (short: lr=)."""
    weight_decay: float = 0.0
    """Decoupled weight decay."""
    betas: List[float] = field(default_factory=lambda: [0.9, 0.999])
    """Adam betas (beta1, beta2)."""
    eps: float = 1e-8
    """Adam epsilon."""
    momentum: float = 0.0
    """SGD momentum, in [0, 1)."""
    max_grad_norm: float = 1.0
    """Gradient clipping norm; 0 disables clipping."""
    # galore / apollo
    target_modules: List[str] = field(default_factory=lambda: ["all-linear"])
    """galore/apollo: the matrices whose gradients are projected: [all-linear] or name patterns like [attn, mlp]."""
    proj_rank: int = 16
    """galore/apollo: rank of the gradient projection."""
    update_proj_gap: int = 200
    """galore/apollo: steps between recomputing the projection."""
    scale: float = 0.25
    """galore/apollo: scale of the projected update (GaLore 0.25, APOLLO 32)."""
    proj_type: str = "std"
    """galore: std, reverse_std, right, left or full; apollo: random or svd."""
    layerwise: bool = False
    """galore/apollo: step each layer's optimizer during backward (saves gradient memory; needs grad_accum=1)."""
    # badam
    switch_interval: int = 50
    """badam: optimizer steps before the next block of layers becomes the trained one."""
    switch_mode: SwitchMode = SwitchMode.ascending
    """badam: order of the blocks: ascending, descending, random or fixed."""


@dataclass
class SchedulerConfig:
    """The learning-rate schedule; names follow transformers' ``lr_scheduler_type``."""

    name: Scheduler = MISSING
    """linear, cosine, cosine_with_restarts, polynomial, constant, constant_with_warmup, inverse_sqrt,
    reduce_lr_on_plateau or warmup_stable_decay (preset scheduler=wsd)."""
    warmup_steps: int = 0
    """Linear warm-up steps (use warmup_ratio for a share of the run instead)."""
    warmup_ratio: float = 0.0
    """Linear warm-up as a share of all steps, in [0, 1)."""
    kwargs: Any = field(default_factory=dict)
    """Extra arguments for the schedule, e.g. {num_cycles: 2} or {power: 2.0}."""


@dataclass
class GenerateConfig:
    """Generative evaluation (stage=sft): at each evaluation the model answers held-out prompts, scored as
    ftrun.predict scores (eval_gen_exact_match, eval_bleu4, eval_rouge1, eval_rouge2, eval_rouge_l)."""

    max_samples: int = 0
    """Eval rows to generate for at each evaluation (0 = no generation); e.g. train.generate.max_samples=32."""
    max_new_tokens: int = 64
    """Longest generated answer, in tokens (greedy decoding)."""
    batch_size: int = 16
    """Prompts generated together."""


@dataclass
class TrainConfig:
    """What transformers' Trainer does besides the optimizer and schedule."""

    logging_steps: int = 10
    """Log train loss, lr, grad norm and tokens/s every this many steps."""
    progress_interval_s: float = 30.0
    """Without a terminal (a file, CI, SLURM): print the progress line at most every this many seconds
    (0 = at every logging step); a terminal shows one live line instead."""
    eval_steps: int = 50
    """Evaluate every this many steps (0 = only at the end)."""
    eval_examples: int = 0
    """Evaluate every this many training examples instead (0 = use eval_steps); trials of a sweep with different
    batch sizes then evaluate after the same data, which is what a pruner compares."""
    save_steps: int = 100
    """Write a resumable checkpoint every this many steps (0 = none)."""
    save_total_limit: Optional[int] = 2
    """Keep at most this many checkpoints."""
    gradient_checkpointing: bool = False
    """Recompute activations in the backward pass to save memory."""
    neftune_noise_alpha: Optional[float] = None
    """NEFTune embedding noise (5 is the paper's default); null disables it."""
    eval_batch_size: int = 32
    """Per-device batch size for evaluation."""
    num_workers: int = 0
    """DataLoader worker processes."""
    generate: GenerateConfig = field(default_factory=GenerateConfig)
    keep_best: Optional[bool] = None
    """Save the checkpoint at every evaluation and end with the best by the objective (what export, predict
    and chat load); null = on when the objective is a generated-answer metric (eval_rouge_l, ...)."""


@dataclass
class TrackingConfig:
    """Where runs are recorded (MLflow)."""

    enabled: bool = True
    """Record the run in MLflow."""
    uri: Optional[str] = None
    """Tracking URI; null uses MLFLOW_TRACKING_URI, else MLflow's default (./mlflow.db)."""
    experiment: str = "ftrun"
    """MLflow experiment name."""
    log_model: bool = False
    """Also log the final adapter or model weights as an artifact."""


@dataclass
class PPOSettings:
    """stage=ppo: on-policy RL against a reward model (TRL's GRPOTrainer, PPO's clipped objective)."""

    num_generations: int = 4
    """Completions sampled per prompt; each is scored against the others of its prompt."""
    max_new_tokens: int = 16
    """Longest sampled completion, in tokens."""
    temperature: float = 1.0
    """Sampling temperature of the rollouts."""
    epsilon: float = 0.2
    """Clipping range of the policy ratio, as in PPO."""
    num_iterations: int = 1
    """Optimizer passes over each batch of rollouts (PPO epochs)."""
    loss_type: PPOLoss = PPOLoss.dapo
    """TRL's GRPO loss aggregation: grpo, dr_grpo, dapo, bnpo, cispo, sapo, luspo or vespo."""
    scale_rewards: ScaleRewards = ScaleRewards.group
    """Normalize advantages by the reward std of the group, the batch, or none."""


@dataclass
class StageConfig:
    """Which training stage runs: pt, sft, rm, dpo, kto or ppo (see ftrun/stages/)."""

    name: Stage = Stage.sft
    """pt (continued pre-training), sft, rm (reward model), dpo, kto or ppo."""
    beta: float = 0.1
    """dpo/kto: strength of the pull towards the reference model; ppo: weight of the KL penalty."""
    loss_type: List[DPOLoss] = field(default_factory=lambda: [DPOLoss.sigmoid])
    """dpo: TRL's loss types (sigmoid, ipo, hinge, robust, ...), several are summed."""
    label_smoothing: float = 0.0
    """dpo: assumed share of flipped preference labels (robust, exo_pair losses)."""
    init_run: Optional[str] = None
    """Start from this run's model (LoRA merged): a run directory, a run name directory
    (its newest finished run) or an MLflow run id; e.g. the sft run for dpo or ppo."""
    reward_run: Optional[str] = None
    """ppo: the rm run that scores completions (given like init_run)."""
    ppo: PPOSettings = field(default_factory=PPOSettings)
    """ppo: rollout and clipping settings."""
    pref_ftx: float = 0.0
    """dpo: weight of an SFT loss on the chosen answers added to the preference loss (TRL's loss_type sft)."""


@dataclass
class ShardingConfig:
    """Multi-GPU sharding through transformers/accelerate: DeepSpeed ZeRO or FSDP (launch with accelerate launch)."""

    name: Sharding = Sharding.none
    """none (plain DDP), zero2 (DeepSpeed: optimizer states and gradients), zero3 (also weights) or fsdp (full shard)."""
    offload: bool = False
    """Move optimizer states (zero2/zero3/fsdp) and weights (zero3/fsdp) to CPU memory."""


@dataclass
class Config:
    """One fine-tuning run. The top-level keys are the run's own; lr, rank, alpha and
    cutoff_len are short spellings of optimizer.lr, method.rank, method.alpha and data.cutoff_len."""

    model: ModelConfig = MISSING
    """The base model (model=tiny, qwen2.5-0.5b-instruct, llama3-8b-instruct)."""
    method: MethodConfig = MISSING
    """How it trains (method=full, freeze, lora, qlora)."""
    data: DataConfig = MISSING
    """What it trains on (data=letters, alpaca, sharegpt, llamafactory)."""
    optimizer: OptimizerConfig = MISSING
    """The optimizer (optimizer=adamw, adamw_8bit, sgd, adafactor)."""
    scheduler: SchedulerConfig = MISSING
    """The learning-rate schedule (scheduler=cosine, linear, ...)."""
    train: TrainConfig = field(default_factory=TrainConfig)
    """Logging, evaluation and checkpoint cadence, memory savers."""
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    """Where the run is recorded in MLflow."""
    stage: StageConfig = field(default_factory=StageConfig)
    """Which training stage runs (stage=pt, sft, rm, dpo, kto, ppo)."""
    sharding: ShardingConfig = field(default_factory=ShardingConfig)
    """Multi-GPU sharding (sharding=zero2, zero2_offload, zero3, zero3_offload, fsdp, fsdp_offload)."""
    epochs: float = 3.0
    """Passes over the training data."""
    max_steps: int = -1
    """Stop after this many optimizer steps (-1 = run all epochs)."""
    batch_size: int = 16
    """Per-device micro-batch size."""
    grad_accum: int = 1
    """Micro-batches per optimizer step (effective batch = batch_size x grad_accum x devices)."""
    seed: int = 42
    """Seed for weights init of adapters, data order and dropout."""
    precision: Precision = Precision.fp32
    """fp32, fp16 (CUDA), bf16 (mixed) or pure_bf16 (bf16 weights, no fp32 master copy)."""
    objective: str = "${ftrun_stage_objective:${stage.name}}"
    """Metric the run returns to a sweep; default: the stage's own (STAGE_OBJECTIVES, e.g. eval_loss for sft)."""
    resume: str = "never"
    """never, auto (the newest run with this name, if its config matches), force (auto without the check) or a run/checkpoint path."""
    name: str = "${ftrun_run_name:}"
    """Readable run name (default built from stage, method, data, lr and rank)."""
    output_root: str = "outputs"
    """Runs are written to <output_root>/<name>/<timestamp>."""


# the short spellings people sweep -> the one home of each value
SHORT_KEYS = {
    "lr": "optimizer.lr",
    "rank": "method.rank",
    "alpha": "method.alpha",
    "cutoff_len": "data.cutoff_len",
}
# other spellings that refer to a home (kept so that old command lines and experiment files still work)
# LLaMA-Factory's names of knobs that ftrun spells otherwise (README: "LLaMA-Factory's Train tab")
LLAMAFACTORY_NAMES = {
    "rope_scaling": "model.rope_scaling",
    "enable_liger_kernel": "model.liger_kernel",
    "resize_vocab": "model.resize_vocab",
    "enable_thinking": "model.enable_thinking",
    "neat_packing": "data.neat_packing",
    "use_pissa": "method.pissa",
    "pissa_iter": "method.pissa_iters",
    "additional_target": "method.extra_modules",
    "adapter_name_or_path": "method.adapter",
    "create_new_adapter": "method.create_new_adapter",
    "quantization_method": "method.quant_method",
    "pref_ftx": "stage.pref_ftx",
}
ALIASES = {**SHORT_KEYS, "stage.objective": "objective", **LLAMAFACTORY_NAMES}
_SHORT_NAME = {home: short for short, home in SHORT_KEYS.items()}


def canonical_overrides(overrides: Sequence[str], keep_sweeps: bool = False) -> List[str]:
    """Overrides with every alias written as its home key: ``lr=1e-4`` -> ``optimizer.lr=1e-4``.

    ``+lr=...`` loses its ``+`` (the home always exists). ``keep_sweeps`` (a ``-m``
    command line) leaves search-space overrides such as ``lr=choice(1e-4,1e-3)`` as
    typed: Hydra does not compose them, and the sweeper names the study's parameter
    after them, as the sweep presets, ``enqueue`` and ``conditions`` do; each trial
    then gets ``lr=<value>``, rewritten here.
    """
    out = []
    for o in overrides:
        o = str(o)
        prefix = "++" if o.startswith("++") else o[:1] if o[:1] in "+~" else ""
        rest = o[len(prefix):]
        key, eq, value = rest.partition("=")
        if key in ALIASES and not (keep_sweeps and _is_sweep(o)):
            if prefix == "+":
                prefix = ""
            o = f"{prefix}{ALIASES[key]}{eq}{value}"
        out.append(o)
    return out


def _is_sweep(override: str) -> bool:
    from hydra.core.override_parser.overrides_parser import OverridesParser

    try:
        return OverridesParser.create().parse_override(override).is_sweep_override()
    except Exception:  # not an override Hydra can parse: Hydra will say so
        return False


def display_key(key: str) -> str:
    """How a message names a key: its short spelling when it has one (``optimizer.lr`` -> ``lr``)."""
    return _SHORT_NAME.get(key, key)


# ---------------------------------------------------------------------------
# registration

OBJECTIVE_DIRECTIONS = {
    "eval_loss": "minimize",
    "eval_perplexity": "minimize",
    "eval_exact_match": "maximize",
    # sft with train.generate.max_samples > 0: scores of generated answers (ftrun.gen_eval)
    "eval_gen_exact_match": "maximize",
    "eval_bleu4": "maximize",
    "eval_rouge1": "maximize",
    "eval_rouge2": "maximize",
    "eval_rouge_l": "maximize",
    # rm: pairwise accuracy and margin of the reward model on the eval pairs
    "eval_accuracy": "maximize",
    "eval_margin": "maximize",
    # dpo and kto: implicit rewards beta * log(pi / pi_ref) on the eval pairs
    "eval_rewards/accuracies": "maximize",
    "eval_rewards/margins": "maximize",
    # ppo: the reward model's score of the policy's completions (mean over the last logged steps)
    "reward_mean": "maximize",
}

# objectives that need train.generate.max_samples > 0
GENERATIVE_OBJECTIVES = ("eval_gen_exact_match", "eval_bleu4", "eval_rouge1", "eval_rouge2", "eval_rouge_l")

# stages whose data can be packed (data.packing=true): sft packs samples, pt always packs raw text
PACKING_STAGES = ("sft", "pt")

# the objectives each stage can return; the first is its default (the `objective` key resolves to it)
STAGE_OBJECTIVES = {
    "pt": ("eval_loss", "eval_perplexity"),
    "sft": ("eval_loss", "eval_perplexity", "eval_exact_match", "eval_gen_exact_match", "eval_bleu4", "eval_rouge1",
            "eval_rouge2", "eval_rouge_l"),
    "rm": ("eval_accuracy", "eval_margin", "eval_loss"),
    "dpo": ("eval_rewards/accuracies", "eval_rewards/margins", "eval_loss"),
    "kto": ("eval_rewards/margins", "eval_loss"),
    "ppo": ("reward_mean",),
}
def format_lr(lr: float) -> str:
    """``1e-4`` -> ``"1e-4"``, ``3.5e-4`` -> ``"3.5e-4"``, ``0.1`` -> ``"1e-1"``."""
    mantissa, exponent = f"{lr:.2e}".split("e")
    mantissa = mantissa.rstrip("0").rstrip(".")
    return f"{mantissa}e{int(exponent)}"


def _run_name(*, _root_: DictConfig) -> str:
    method = _root_.method.name
    parts = [method, _root_.data.name, f"lr{format_lr(float(_root_.optimizer.lr))}"]
    if _root_.stage.name != "sft":
        parts.insert(0, _root_.stage.name)
    if method in ("lora", "qlora"):
        parts.append(f"r{_root_.method.rank}")
    return "-".join(str(p) for p in parts)


def _run_dir(root: str, name: str, resume: str) -> str:
    """Run directory: ``<root>/<name>/<timestamp>``, or the run being resumed."""
    if resume in ("auto", "force"):
        found = find_resumable_run(Path(root) / name)
        if found is not None:
            return str(found)
    elif resume not in ("never", "", None) and Path(resume).exists():
        path = Path(resume)
        return str(path.parent if path.name.startswith("checkpoint-") else path)
    return str(Path(root) / name / _start_time().strftime("%Y-%m-%d_%H-%M-%S"))


def _start_time():
    """Now; under torchrun/accelerate, the launcher's start, so that every rank picks the same run dir."""
    from datetime import datetime

    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        import psutil

        return datetime.fromtimestamp(psutil.Process(os.getppid()).create_time())
    return datetime.now()


def is_main_process() -> bool:
    """True unless this is a non-zero rank of a distributed launch."""
    return int(os.environ.get("RANK", "0")) == 0


def find_resumable_run(name_dir: Path) -> Optional[Path]:
    """The newest run directory under ``name_dir`` that holds a complete checkpoint, or the newest
    one if it never finished (killed before its first checkpoint: it starts again in the same
    directory and the same MLflow run rather than leaving an orphan beside a new one)."""
    if not name_dir.is_dir():
        return None
    runs = sorted((d for d in name_dir.iterdir() if d.is_dir()), reverse=True)
    if runs and not (runs[0] / RESULT_FILE).exists() and last_checkpoint(runs[0]) is None:
        return runs[0]
    for run in runs:
        if last_checkpoint(run) is not None:
            return run
    return None


def last_checkpoint(run_dir: Path) -> Optional[Path]:
    """Newest ``checkpoint-N`` in ``run_dir`` that was written to the end.

    The Trainer writes ``trainer_state.json`` last, so a checkpoint without it
    was cut off mid-save (e.g. by SIGKILL) and is skipped.
    """
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        return None
    ckpts = []
    for d in run_dir.glob("checkpoint-*"):
        step = d.name.split("-", 1)[1]
        if step.isdigit() and (d / TRAINER_STATE).is_file():
            ckpts.append((int(step), d))
    return max(ckpts)[1] if ckpts else None


def register_configs() -> None:
    """Register the schema and resolvers; called before Hydra composes."""
    from hydra.core.config_store import ConfigStore

    if not OmegaConf.has_resolver("ftrun_run_name"):
        OmegaConf.register_new_resolver("ftrun_run_name", _run_name)
    if not OmegaConf.has_resolver("ftrun_stage_objective"):
        OmegaConf.register_new_resolver("ftrun_stage_objective", lambda stage: STAGE_OBJECTIVES[str(stage)][0])
    if not OmegaConf.has_resolver("ftrun_run_dir"):
        # cached: the timestamp must not change between two resolutions
        OmegaConf.register_new_resolver("ftrun_run_dir", _run_dir, use_cache=True)
    # ftrun/conf/config.yaml lists this first, so every group preset merged after it is
    # type-checked against the dataclass of its field
    ConfigStore.instance().store(name="ftrun_schema", node=Config)


# ---------------------------------------------------------------------------
# validation


def validate(cfg: DictConfig) -> None:
    """Check every key's range and the rules between keys; raise :class:`ConfigError` listing every problem.

    Types and fixed choices (the Enums above) are already checked when Hydra
    composes. Each line reads ``override=value: what is wrong``, so the user knows
    which command-line override to change. Nothing here loads data or weights:
    the model's hidden size is read from its ``config.json``.
    """
    problems: List[str] = []

    def check(ok: bool, key: str, value: Any, why: str) -> None:
        if not ok:
            problems.append(f"{display_key(key)}={_show(value)}: {why}")

    def leaf(key: str) -> str:
        return display_key(key).rsplit(".", 1)[-1]

    def positive(key: str, value: Any, why: str = "") -> None:
        check(value is not None and value > 0 and math.isfinite(value), key, value, why or f"{leaf(key)} must be > 0")

    def at_least(key: str, value: Any, low: float) -> None:
        check(value is not None and value >= low, key, value, f"{leaf(key)} must be >= {low:g}")

    def in_unit(key: str, value: Any) -> None:
        check(value is not None and 0 <= value < 1, key, value, f"{leaf(key)} must be in [0, 1)")

    c = cfg
    # run ---------------------------------------------------------------------
    positive("epochs", c.epochs)
    check(c.max_steps == -1 or c.max_steps > 0, "max_steps", c.max_steps, "must be > 0, or -1 for all epochs")
    at_least("batch_size", c.batch_size, 1)
    at_least("grad_accum", c.grad_accum, 1)
    at_least("seed", c.seed, 0)
    check(c.objective in OBJECTIVE_DIRECTIONS, "objective", c.objective,
          f"choose one of {', '.join(OBJECTIVE_DIRECTIONS)}")
    check(bool(str(c.name)) and "/" not in str(c.name), "name", c.name, "give a non-empty name without '/'")
    check(bool(str(c.output_root)), "output_root", c.output_root, "give a folder")
    if c.resume not in ("never", "auto", "force"):
        check(Path(c.resume).exists(), "resume", c.resume,
              "no such run directory or checkpoint; use resume=auto, resume=force or a path under outputs/")
    _check_stage(c, check, positive, at_least)

    # model -------------------------------------------------------------------
    md = c.model
    check(bool(md.name), "model.name", md.name, "give a short name")
    check(md.path is not None or md.tiny is not None, "model.path", None, "give a local model directory or hub id")
    if md.path is not None and _looks_local(md.path):
        check(Path(md.path).expanduser().is_dir(), "model.path", md.path,
              "no such directory; give a local model directory or a hub id like Qwen/Qwen2.5-0.5B-Instruct")
    if md.tiny is not None:
        t = md.tiny
        for key in ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
                    "num_key_value_heads", "vocab_size", "max_position_embeddings"):
            at_least(f"model.tiny.{key}", t[key], 1)
        at_least("model.tiny.pretrain_steps", t.pretrain_steps, 0)
        at_least("model.tiny.seed", t.seed, 0)
        if t.num_attention_heads >= 1 and t.num_key_value_heads >= 1:
            check(t.hidden_size % t.num_attention_heads == 0, "model.tiny.num_attention_heads", t.num_attention_heads,
                  f"must divide model.tiny.hidden_size={t.hidden_size}")
            check(t.num_attention_heads % t.num_key_value_heads == 0, "model.tiny.num_key_value_heads",
                  t.num_key_value_heads, f"must divide model.tiny.num_attention_heads={t.num_attention_heads}")
    arch = model_arch(md)
    if md.rope_scaling is not None:
        check(md.rope_factor > 1 and math.isfinite(md.rope_factor), "model.rope_factor", md.rope_factor,
              "must be > 1 (2.0 doubles the context); or model.rope_scaling=null for none")
    check(all(bool(t) for t in md.add_special_tokens), "model.add_special_tokens", list(md.add_special_tokens),
          "give non-empty token strings")

    # method ------------------------------------------------------------------
    m = c.method
    at_least("method.rank", m.rank, 1)
    positive("method.alpha", m.alpha)
    in_unit("method.dropout", m.dropout)
    at_least("method.trainable_layers", m.trainable_layers, 0)
    check(m.bits in (4, 8), "method.bits", m.bits, "bits must be 4 or 8")
    check(m.loraplus_lr_ratio is None or m.loraplus_lr_ratio > 0, "method.loraplus_lr_ratio",
          m.loraplus_lr_ratio, "must be > 0 (16 is common), or null to disable LoRA+")
    if m.name in ("lora", "qlora"):
        check(len(m.target_modules) > 0, "method.target_modules", list(m.target_modules),
              "name at least one module, or [all-linear]")
        hidden = arch.get("hidden_size")
        check(hidden is None or m.rank <= hidden, "method.rank", m.rank,
              f"larger than the model's hidden size ({hidden}); a rank above it adds nothing")
    check(m.name in ("freeze", "llama_pro", "lora", "qlora") or not m.extra_modules, "method.extra_modules",
          list(m.extra_modules), f"method={m.name} trains every module already; set it to []")
    check(m.name == "lora" or not m.pissa, "method.pissa", m.pissa,
          "PiSSA initialises LoRA from the unquantized weights: use method=lora"
          + (", or method.pissa=false" if m.name == "qlora" else ""))
    check(m.pissa_iters == -1 or m.pissa_iters >= 1, "method.pissa_iters", m.pissa_iters,
          "must be >= 1, or -1 for an exact SVD")
    if m.adapter is not None:
        check(m.name in ("lora", "qlora"), "method.adapter", m.adapter, "a LoRA adapter trains with method=lora or qlora")
        check(Path(m.adapter).expanduser().joinpath("adapter_config.json").is_file(), "method.adapter", m.adapter,
              "no adapter_config.json there; give a lora run's model/ folder")
        check(c.stage.name == "sft", "method.adapter", m.adapter,
              f"stage={c.stage.name} starts from a run with stage.init_run (its LoRA merged)")
        check(not (m.create_new_adapter and m.name == "qlora"), "method.create_new_adapter", True,
              "merging into a quantized base is lossy: use method=lora, or keep training it (create_new_adapter=false)")
        check(not m.pissa, "method.pissa", True, "the adapter is loaded, not initialised: set method.pissa=false")
    check(m.adapter is not None or not m.create_new_adapter, "method.create_new_adapter", True,
          "there is no adapter to start from: give method.adapter=<a lora run>/model")
    check(m.name == "qlora" or m.quant_method == "bnb", "method.quant_method", m.quant_method,
          "only method=qlora quantizes the base")
    if m.name == "llama_pro":
        layers = arch.get("num_hidden_layers")
        at_least("method.expand_layers", m.expand_layers, 1)
        check(layers is None or m.expand_layers < 1 or layers % m.expand_layers == 0, "method.expand_layers",
              m.expand_layers, f"must divide the model's {layers} layers (one new block after every num_layers/N)")
    if m.name == "freeze":
        check(m.trainable_layers > 0 or len(m.extra_modules) > 0, "method.trainable_layers",
              m.trainable_layers, "nothing would train: set trainable_layers > 0 or method.extra_modules")
        layers = arch.get("num_hidden_layers")
        check(layers is None or m.trainable_layers <= layers, "method.trainable_layers", m.trainable_layers,
              f"the model has {layers} layers")

    # optimizer and schedule ----------------------------------------------------
    o = c.optimizer
    positive("optimizer.lr", o.lr, "lr must be > 0")
    check(len(o.betas) == 2 and all(0 <= b < 1 for b in o.betas), "optimizer.betas", list(o.betas),
          "give two betas, each in [0, 1)")
    at_least("optimizer.weight_decay", o.weight_decay, 0)
    positive("optimizer.eps", o.eps)
    in_unit("optimizer.momentum", o.momentum)
    check(o.max_grad_norm >= 0, "optimizer.max_grad_norm", o.max_grad_norm, "must be >= 0 (0 = no clipping)")
    s = c.scheduler
    at_least("scheduler.warmup_steps", s.warmup_steps, 0)
    in_unit("scheduler.warmup_ratio", s.warmup_ratio)
    check(s.name != "reduce_lr_on_plateau" or c.train.eval_steps > 0 or c.train.eval_examples > 0,
          "train.eval_steps", c.train.eval_steps,
          "scheduler=reduce_lr_on_plateau steps on the eval loss: set train.eval_steps > 0")
    check(not (s.warmup_steps > 0 and s.warmup_ratio > 0), "scheduler.warmup_ratio", s.warmup_ratio,
          "set warmup_steps or warmup_ratio, not both (add scheduler.warmup_ratio=0 to count warm-up in steps)")
    check(isinstance(s.kwargs, (dict, DictConfig)), "scheduler.kwargs", s.kwargs, "give a mapping, e.g. {num_cycles: 2}")
    _check_optimizer(c, check, at_least, positive)

    # data --------------------------------------------------------------------
    d = c.data
    check(bool(d.name), "data.name", d.name, "give a short name")
    at_least("data.cutoff_len", d.cutoff_len, 8)
    max_pos = arch.get("max_position_embeddings")
    if max_pos is not None and md.rope_scaling is not None and md.rope_factor > 1:
        check(d.cutoff_len <= max_pos * md.rope_factor, "data.cutoff_len", d.cutoff_len,
              f"longer than the model's context with model.rope_factor={md.rope_factor:g} "
              f"({max_pos} x {md.rope_factor:g} positions); raise model.rope_factor")
    else:
        check(max_pos is None or d.cutoff_len <= max_pos, "data.cutoff_len", d.cutoff_len,
              f"longer than the model's context ({max_pos} positions); model.rope_scaling=linear (or dynamic, "
              "yarn, llama3) with model.rope_factor extends it")
    check(0 <= d.val_size < 1 or (d.val_size >= 1 and float(d.val_size).is_integer()), "data.val_size", d.val_size,
          "a share in [0, 1) or a whole count >= 1")
    check(d.max_samples is None or d.max_samples > 0, "data.max_samples", d.max_samples, "must be > 0 or null")
    check(d.num_proc is None or d.num_proc >= 1, "data.num_proc", d.num_proc, "must be >= 1 or null")
    from ftrun.tasks import BUILTIN

    check(d.builtin is None or d.builtin in BUILTIN, "data.builtin", d.builtin,
          f"choose one of {', '.join(BUILTIN)}, or null with data.path")
    at_least("data.num_train", d.num_train, 1)
    at_least("data.num_eval", d.num_eval, 0)
    n_sets = len(d.sources) or len(d.names)
    if d.mix_probs is not None:
        probs = list(d.mix_probs)
        check(n_sets > 1 and len(probs) == n_sets, "data.mix_probs", probs,
              f"give one probability per dataset ({n_sets} named in data.names/data.sources)")
        check(all(p >= 0 for p in probs) and abs(sum(probs) - 1) < 1e-6, "data.mix_probs", probs,
              "probabilities must be >= 0 and sum to 1")
    check(not (d.names and d.sources), "data.names", list(d.names), "give data.names or data.sources, not both")
    if d.registry is not None:
        check(Path(d.registry).expanduser().is_file(), "data.registry", d.registry,
              "no such file; give the path of a LLaMA-Factory dataset_info.json")
        check(bool(d.names or d.sources), "data.registry", d.registry,
              "select its datasets with data.names=[a,b]")
    if not (d.names or d.sources):
        if d.path is None:
            check(d.builtin is not None, "data.path", None, "give a data file or folder (data.path=...)")
        else:
            p = Path(d.path).expanduser()
            check(p.exists() or any(ch in d.path for ch in "*?["), "data.path", d.path,
                  "no such file or folder; give an Alpaca/ShareGPT .json, .jsonl, .csv or .parquet file, "
                  "or a folder of them")
    check(not d.packing or c.stage.name in PACKING_STAGES, "data.packing", d.packing,
          f"stage={c.stage.name} trains on whole pairs or prompts and cannot pack; "
          f"packing works with stage={' or '.join(PACKING_STAGES)}")

    # train and tracking --------------------------------------------------------
    t = c.train
    for key in ("logging_steps", "eval_steps", "eval_examples", "save_steps", "num_workers", "progress_interval_s"):
        at_least(f"train.{key}", t[key], 0)
    at_least("train.eval_batch_size", t.eval_batch_size, 1)
    check(t.save_total_limit is None or t.save_total_limit >= 1, "train.save_total_limit", t.save_total_limit,
          "must be >= 1 or null (keep all)")
    check(t.neftune_noise_alpha is None or t.neftune_noise_alpha > 0, "train.neftune_noise_alpha",
          t.neftune_noise_alpha, "must be > 0 (5 is common) or null")
    g = t.generate
    at_least("train.generate.max_samples", g.max_samples, 0)
    at_least("train.generate.max_new_tokens", g.max_new_tokens, 1)
    at_least("train.generate.batch_size", g.batch_size, 1)
    check(g.max_samples == 0 or c.stage.name == "sft", "train.generate.max_samples", g.max_samples,
          f"generation during evaluation is built for stage=sft; set it to 0 for stage={c.stage.name}")
    if c.objective in GENERATIVE_OBJECTIVES:
        check(g.max_samples > 0, "train.generate.max_samples", g.max_samples,
              f"objective={c.objective} scores generated answers: set train.generate.max_samples=32 (or more)")
        check(has_eval(c), "data.val_size", c.data.val_size,
              f"objective={c.objective} is measured on held-out rows: set data.val_size=0.1")
        check(not c.data.train_on_prompt, "data.train_on_prompt", c.data.train_on_prompt,
              f"objective={c.objective} generates answers to prompts, which train_on_prompt does not separate: "
              "set data.train_on_prompt=false")
    if t.keep_best:
        check(c.objective.startswith("eval_"), "train.keep_best", t.keep_best,
              f"objective={c.objective} is not measured at evaluations; set train.keep_best=false")
        check(has_eval(c), "train.keep_best", t.keep_best,
              "the best checkpoint is chosen on held-out rows: set data.val_size=0.1 (or train.keep_best=false)")
    if keep_best(c):
        check(t.eval_steps > 0 or t.eval_examples > 0, "train.eval_steps", t.eval_steps,
              "keeping the best checkpoint needs evaluations during training: set train.eval_steps > 0 "
              "(or train.keep_best=false)")
    check(bool(c.tracking.experiment), "tracking.experiment", c.tracking.experiment, "give an experiment name")

    if problems:
        raise ConfigError("invalid configuration:\n  " + "\n  ".join(problems))


def _check_stage(c: DictConfig, check, positive, at_least) -> None:
    st = c.stage
    check(st.name == "sft" or c.method.loraplus_lr_ratio is None, "method.loraplus_lr_ratio",
          c.method.loraplus_lr_ratio, f"LoRA+ is built for stage=sft only; set it to null for stage={st.name}")
    allowed = STAGE_OBJECTIVES[str(st.name)]
    check(c.objective not in OBJECTIVE_DIRECTIONS or c.objective in allowed, "objective", c.objective,
          f"stage={st.name} reports {', '.join(allowed)}")
    check(st.beta >= 0 and math.isfinite(st.beta), "stage.beta", st.beta, "must be >= 0 (0.1 is common)")
    check(len(st.loss_type) > 0, "stage.loss_type", list(st.loss_type), f"choose from {', '.join(DPO_LOSSES)}")
    check(0 <= st.label_smoothing < 0.5, "stage.label_smoothing", st.label_smoothing, "must be in [0, 0.5)")
    check(st.pref_ftx >= 0 and math.isfinite(st.pref_ftx), "stage.pref_ftx", st.pref_ftx, "must be >= 0 (0 = off)")
    check(st.pref_ftx == 0 or st.name == "dpo", "stage.pref_ftx", st.pref_ftx,
          f"the SFT term is added to DPO's loss; stage={st.name} has none: set stage.pref_ftx=0")
    check(st.pref_ftx == 0 or "sft" not in st.loss_type, "stage.pref_ftx", st.pref_ftx,
          "stage.loss_type already holds sft: drop it from stage.loss_type, or set stage.pref_ftx=0")
    p = st.ppo
    check(p.num_generations >= 2, "stage.ppo.num_generations", p.num_generations,
          "must be >= 2: each completion is compared with the others of its prompt")
    at_least("stage.ppo.max_new_tokens", p.max_new_tokens, 1)
    positive("stage.ppo.temperature", p.temperature)
    positive("stage.ppo.epsilon", p.epsilon, "must be > 0 (0.2 is PPO's default)")
    at_least("stage.ppo.num_iterations", p.num_iterations, 1)
    if st.name == "ppo":
        check(st.reward_run is not None, "stage.reward_run", None,
              "give the rm run that scores completions (its run directory or MLflow run id)")
        check(c.batch_size % max(p.num_generations, 1) == 0, "batch_size", c.batch_size,
              f"must be a multiple of stage.ppo.num_generations={p.num_generations}")
    for key in ("init_run", "reward_run"):
        ref = st[key]
        if ref is not None and _looks_local(ref) and not _looks_like_run_id(ref):
            check(Path(ref).expanduser().is_dir(), f"stage.{key}", ref,
                  "no such run directory; give a run (or run name) directory under outputs/ or an MLflow run id")


def _check_optimizer(c: DictConfig, check, at_least, positive) -> None:
    """GaLore, APOLLO and BAdam: their settings, and the methods and sharding they cannot work with."""
    o, m, sh = c.optimizer, c.method, c.sharding
    name = str(o.name)
    if name in PROJECTED_OPTIMIZERS:
        check(m.name in ("full", "freeze", "llama_pro"), "optimizer", name,
              f"{name} projects the gradients of full weight matrices, LoRA has none to project: "
              "use method=full (or freeze), or optimizer=adamw with LoRA")
        check(len(o.target_modules) > 0, "optimizer.target_modules", list(o.target_modules),
              "name at least one module, or [all-linear]")
        at_least("optimizer.proj_rank", o.proj_rank, 1)
        at_least("optimizer.update_proj_gap", o.update_proj_gap, 1)
        positive("optimizer.scale", o.scale)
        types = ("random", "svd") if name == "apollo" else ("std", "reverse_std", "right", "left", "full")
        check(o.proj_type in types, "optimizer.proj_type", o.proj_type, f"{name} takes {', '.join(types)}")
        if o.layerwise:
            check(c.grad_accum == 1, "grad_accum", c.grad_accum,
                  "optimizer.layerwise steps during backward and cannot accumulate: set grad_accum=1")
            check(sh.name == "none", "sharding", sh.name, "optimizer.layerwise does not work with sharding")
    else:
        check(not o.layerwise, "optimizer.layerwise", True, "only galore and apollo step layer by layer")
    if name == "badam":
        check(m.name == "full", "method", m.name,
              "optimizer=badam picks the block of layers that trains itself: use method=full")
        check(sh.name in ("none", "zero2"), "sharding", sh.name, "badam works without sharding or with zero2")
        at_least("optimizer.switch_interval", o.switch_interval, 1)
    check(sh.name != "none" or not sh.offload, "sharding.offload", True,
          "offloading needs sharding=zero2, zero3 or fsdp")
    check(not (sh.name == "fsdp" and m.name == "qlora" and m.bits == 8), "sharding", sh.name,
          "FSDP cannot shard 8-bit bitsandbytes weights: use method.bits=4 or sharding=zero2")


def model_arch(model_cfg) -> Dict[str, int]:
    """hidden_size, num_hidden_layers and max_position_embeddings of the model, without loading it:
    from ``model.tiny``, else the ``config.json`` of a local model directory; ``{}`` when unknown (a hub id)."""
    keys = ("hidden_size", "num_hidden_layers", "max_position_embeddings")
    if model_cfg.tiny is not None and model_cfg.path is None:
        return {k: int(model_cfg.tiny[k]) for k in keys}
    if model_cfg.path is None:
        return {}
    f = Path(model_cfg.path).expanduser() / "config.json"
    try:
        import json

        conf = json.loads(f.read_text())
    except (OSError, ValueError):
        return {}
    conf = {**conf.get("text_config", {}), **conf}
    aliases = {"hidden_size": ("hidden_size", "d_model", "n_embd"),
               "num_hidden_layers": ("num_hidden_layers", "n_layer", "num_layers"),
               "max_position_embeddings": ("max_position_embeddings", "n_positions", "seq_length")}
    out = {}
    for key, names in aliases.items():
        value = next((conf[n] for n in names if isinstance(conf.get(n), int)), None)
        if value is not None:
            out[key] = value
    return out


def _looks_like_run_id(ref: str) -> bool:
    return len(ref) == 32 and all(ch in "0123456789abcdef" for ch in ref)


def validate_device(cfg: DictConfig) -> None:
    """Check that the precision can run on this machine (imports torch)."""
    import torch

    cuda = torch.cuda.is_available()
    if cfg.precision == "fp16" and not cuda:
        raise ConfigError("precision=fp16: fp16 mixed precision needs a CUDA GPU; on CPU use precision=fp32 or bf16")
    if cfg.precision in ("bf16", "pure_bf16") and cuda and not torch.cuda.is_bf16_supported():
        raise ConfigError(
            f"precision={cfg.precision}: this GPU ({torch.cuda.get_device_name()}) cannot compute in bf16; "
            "use precision=fp16 or fp32"
        )
    if cfg.method.name == "qlora" and cfg.method.compute_dtype == "fp16" and not cuda:
        raise ConfigError("method.compute_dtype=fp16: fp16 matmuls need a CUDA GPU; on CPU use fp32 or bf16")
    _validate_packages(cfg, cuda)


def _validate_packages(cfg: DictConfig, cuda: bool) -> None:
    """The optional libraries a knob runs on: installed, and a device they work on."""
    import importlib.util

    def need(module: str, key: str, value: Any, pip: str) -> None:
        if importlib.util.find_spec(module) is None:
            raise ConfigError(f"{key}={_show(value)}: needs the {pip} package (pip install {pip})")

    o, md, sh = cfg.optimizer, cfg.model, cfg.sharding
    if str(o.name).startswith("galore"):
        need("galore_torch", "optimizer", o.name, "galore-torch")
    if o.name == "apollo":
        need("apollo_torch", "optimizer", o.name, "apollo-torch")
    if o.name == "badam":
        need("badam", "optimizer", o.name, "badam")
    if md.liger_kernel:
        if not cuda:
            raise ConfigError("model.liger_kernel=true: Liger's kernels are Triton kernels for CUDA GPUs; "
                              "on CPU set model.liger_kernel=false")
        need("liger_kernel", "model.liger_kernel", True, "liger-kernel")
    if md.attn_implementation.startswith("flash_attention") and not cuda:
        raise ConfigError(f"model.attn_implementation={md.attn_implementation}: flash attention runs on CUDA GPUs "
                          "only; on CPU use sdpa (packing keeps samples apart with it too)")
    if sh.name != "none":
        if not cuda:
            raise ConfigError(f"sharding={sh.name}: DeepSpeed ZeRO and FSDP shard over CUDA GPUs; on CPU use "
                              "sharding=none (start several GPUs with accelerate launch -m ftrun ...)")
        if sh.name.startswith("zero"):
            need("deepspeed", "sharding", sh.name, "deepspeed")
    if cfg.method.name == "qlora" and cfg.method.quant_method == "hqq":
        need("hqq", "method.quant_method", "hqq", "hqq")
        from transformers.quantizers.base import HfQuantizer
        from transformers.quantizers.quantizer_hqq import HqqHfQuantizer

        if HqqHfQuantizer.get_quantize_ops is HfQuantizer.get_quantize_ops:
            import transformers

            raise ConfigError(f"method.quant_method=hqq: transformers {transformers.__version__} cannot load "
                              "models with HQQ yet (its HQQ quantizer is a stub); use method.quant_method=bnb")


def _looks_local(path: str) -> bool:
    # a hub id is "org/name"; anything starting like a path, or with more parts, is local
    return path.startswith((".", "/", "~")) or path.count("/") != 1 or os.path.exists(path)


def _show(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list):
        return "[" + ",".join(_show(v) for v in value) + "]"
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


# keys that say where or how a run is recorded, not what it trains
RECORDING_KEYS = ("name", "output_root", "resume", "tracking.uri", "tracking.experiment", "tracking.enabled",
                  "tracking.log_model")
# keys that change neither the weights nor the data order: a checkpoint resumes across a change of these
NOT_TRAINING_KEYS = RECORDING_KEYS + (
    "objective", "train.logging_steps", "train.eval_steps", "train.eval_examples", "train.save_steps", "train.save_total_limit",
    "train.progress_interval_s",
    "train.eval_batch_size", "train.num_workers", "train.generate.max_samples", "train.generate.max_new_tokens",
    "train.generate.batch_size", "train.keep_best", "data.num_proc", "data.cache_dir", "data.overwrite_cache",
    "data.strict",
)


def training_differences(old: dict, cfg) -> Dict[str, tuple]:
    """``{key: (old value, this run's value)}`` for every key that changes training.

    ``old`` is a run's recorded config (``config_resolved.yaml`` as a dict); a run
    recorded before each knob had one home also holds short copies (``lr``), which
    are compared at their home.
    """
    now = flatten(to_container(cfg) if OmegaConf.is_config(cfg) else cfg)
    then = flatten(old)
    then = {k: v for k, v in then.items() if not (k in ALIASES and ALIASES[k] in then)}
    defaults = schema_defaults()
    out = {}
    for key in sorted(set(now) | set(then)):
        if key in NOT_TRAINING_KEYS or key in ALIASES:
            continue
        if key not in then and key in defaults and _show(defaults[key]) == _show(now.get(key)):
            continue  # a knob added after that run was recorded, at the default that matches how it ran
        a, b = then.get(key, "unset"), now.get(key, "unset")
        if _show(a) != _show(b):
            out[display_key(key)] = (_show(a), _show(b))
    return out


def schema_defaults(cls=None, prefix: str = "") -> Dict[str, Any]:
    """Every schema key's default, flattened (``{"method.pissa": False, ...}``); keys without one are left out."""
    import dataclasses
    import typing

    cls = cls or Config
    out: Dict[str, Any] = {}
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        kind = next((a for a in typing.get_args(hints[f.name]) if a is not type(None)), hints[f.name])
        if dataclasses.is_dataclass(kind):
            out.update(schema_defaults(kind, f"{prefix}{f.name}."))
        elif f.default is not dataclasses.MISSING and f.default != MISSING:
            out[prefix + f.name] = f.default
        elif f.default_factory is not dataclasses.MISSING:
            out[prefix + f.name] = f.default_factory()
    return out


def resolved(cfg: DictConfig) -> DictConfig:
    """The config with every interpolation resolved once and choices as plain strings.

    A run works on this: its name and objective cannot change under it, and no
    Enum reaches the libraries it calls.
    """
    return OmegaConf.create(to_container(cfg))


def keep_best(cfg) -> bool:
    """Whether the run ends with its best checkpoint by the objective (``train.keep_best``; by default
    when the objective scores generated answers)."""
    if cfg.train.keep_best is not None:
        return bool(cfg.train.keep_best)
    return cfg.objective in GENERATIVE_OBJECTIVES


def has_eval(cfg) -> bool:
    """Whether the run evaluates (an eval split exists): then an eval batch's logits count too."""
    if cfg.data.builtin is not None and not (cfg.data.path or cfg.data.names or cfg.data.sources):
        return cfg.data.num_eval > 0
    return cfg.data.val_size > 0


def to_container(cfg: DictConfig) -> dict:
    """The resolved config as plain Python, without Hydra's own node."""
    data = OmegaConf.to_container(cfg, resolve=True, throw_on_missing=False, enum_to_str=True)
    data.pop("hydra", None)
    return data


def flatten(data: dict, prefix: str = "") -> dict:
    """``{"method": {"rank": 16}}`` -> ``{"method.rank": 16}``."""
    out = {}
    for key, value in data.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            out.update(flatten(value, name + "."))
        else:
            out[name] = value
    return out
