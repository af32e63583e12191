"""The configuration schema: structured configs registered in Hydra's ConfigStore.

Each group (``model``, ``method``, ``data``, ``optimizer``, ``scheduler``) has one
dataclass; ``conf/<group>/*.yaml`` holds presets merged onto it, so a typo in a
key or a value of the wrong type fails at compose time. The knobs people sweep
(``lr``, ``rank``, ``batch_size`` ...) are short top-level keys that the groups
read through interpolation (``optimizer.lr: ${lr}``).

Range checks that a type cannot express live in :func:`validate`; it runs before
any model or dataset is loaded and names the override to fix.

Nothing here imports torch: composing a config must stay fast.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional

from omegaconf import MISSING, DictConfig, OmegaConf


class ConfigError(ValueError):
    """A user mistake in the configuration; the message says what to change."""


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
    template: str = "auto"
    """Chat template: `auto` uses the tokenizer's own."""
    dtype: str = "auto"
    """Weights dtype when loading: auto, fp32, bf16 or fp16."""
    attn_implementation: str = "sdpa"
    """Attention kernel: eager, sdpa or flash_attention_2."""
    trust_remote_code: bool = False
    """Run the model repository's own code; only for repositories you trust."""


@dataclass
class MethodConfig:
    """How the model trains: full, freeze, lora or qlora."""

    name: str = MISSING
    """full, freeze, lora or qlora."""
    # freeze
    trainable_layers: int = 2
    """freeze: how many of the last decoder layers train."""
    extra_modules: List[str] = field(default_factory=list)
    """freeze: further modules that train, by name (e.g. lm_head, embed_tokens)."""
    # lora / qlora
    rank: int = 16
    """LoRA rank r."""
    alpha: float = 32
    """LoRA alpha; the update is scaled by alpha/rank (alpha/sqrt(rank) with rslora)."""
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
    # qlora
    bits: int = 4
    """qlora: quantization of the frozen base, 4 or 8 bits."""
    quant_type: str = "nf4"
    """qlora 4-bit: nf4 or fp4."""
    double_quant: bool = True
    """qlora 4-bit: quantize the quantization constants too."""
    compute_dtype: str = "fp32"
    """qlora 4-bit: dtype of the de-quantized matmuls: fp32, bf16 or fp16."""


@dataclass
class DataConfig:
    """Which datasets to train on and how to turn them into tokens."""

    name: str = MISSING
    """Short name used in run names and MLflow tags."""
    path: Optional[str] = None
    """A data file (.json, .jsonl, .csv, .parquet), a folder of them or a glob; null for the built-in task."""
    format: str = "auto"
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
    mix: str = "concat"
    """How several datasets mix: concat or interleave."""
    mix_probs: Optional[List[float]] = None
    """interleave: the probability of each dataset (null: equal)."""
    mix_stop: str = "first_exhausted"
    """interleave: stop when the first dataset runs out (first_exhausted) or the last (all_exhausted)."""
    builtin: Optional[str] = None
    """Name of a built-in generated task (e.g. letters) used when no dataset is given."""
    num_train: int = 2000
    """Built-in task: training examples to generate."""
    num_eval: int = 200
    """Built-in task: evaluation examples to generate (from another seed)."""
    val_size: float = 0.1
    """Share (<1) or count (>=1) of the rows held out for evaluation; 0 = none."""
    max_samples: Optional[int] = None
    """Use at most this many training rows."""
    cutoff_len: int = 512
    """Longest tokenized sample; longer ones are truncated (the last answer keeps at least half)."""
    train_on_prompt: bool = False
    """Also compute the loss on prompt tokens."""
    mask_history: bool = False
    """Multi-turn: train on the last assistant turn only (default: every assistant turn)."""
    drop_long: bool = False
    """Drop samples longer than cutoff_len instead of truncating them."""
    packing: bool = False
    """Pack several samples into each cutoff_len row (no attention or loss across samples)."""
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

    name: str = MISSING
    """adamw, adamw_8bit, sgd or adafactor."""
    lr: float = 1e-4
    """Peak learning rate."""
    weight_decay: float = 0.0
    """Decoupled weight decay."""
    betas: List[float] = field(default_factory=lambda: [0.9, 0.999])
    """Adam betas (beta1, beta2)."""
    eps: float = 1e-8
    """Adam epsilon."""
    momentum: float = 0.0
    """SGD momentum."""
    max_grad_norm: float = 1.0
    """Gradient clipping norm; 0 disables clipping."""


@dataclass
class SchedulerConfig:
    """The learning-rate schedule; names follow transformers' ``lr_scheduler_type``."""

    name: str = MISSING
    """linear, cosine, cosine_with_restarts, polynomial, constant,
    constant_with_warmup, inverse_sqrt or reduce_lr_on_plateau."""
    warmup_steps: int = 0
    """Linear warm-up steps (use warmup_ratio for a share of the run instead)."""
    warmup_ratio: float = 0.0
    """Linear warm-up as a share of all steps, in [0, 1)."""
    kwargs: Any = field(default_factory=dict)
    """Extra arguments for the schedule, e.g. {num_cycles: 2} or {power: 2.0}."""


@dataclass
class TrainConfig:
    """What transformers' Trainer does besides the optimizer and schedule."""

    logging_steps: int = 10
    """Log train loss, lr, grad norm and tokens/s every this many steps."""
    eval_steps: int = 50
    """Evaluate every this many steps (0 = only at the end)."""
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
    loss_type: str = "dapo"
    """TRL's GRPO loss aggregation: grpo, dr_grpo, dapo, bnpo, cispo, sapo, luspo or vespo."""
    scale_rewards: str = "group"
    """Normalize advantages by the reward std of the group, the batch, or none."""


@dataclass
class StageConfig:
    """Which training stage runs: pt, sft, rm, dpo, kto or ppo (see ftrun/stages/)."""

    name: str = "sft"
    """pt (continued pre-training), sft, rm (reward model), dpo, kto or ppo."""
    objective: str = "eval_loss"
    """The metric this stage returns to a sweep unless `objective=` says otherwise."""
    beta: float = 0.1
    """dpo/kto: strength of the pull towards the reference model; ppo: weight of the KL penalty."""
    loss_type: List[str] = field(default_factory=lambda: ["sigmoid"])
    """dpo: TRL's loss types (sigmoid, ipo, hinge, robust, ...), several are summed."""
    label_smoothing: float = 0.0
    """dpo: assumed share of flipped preference labels (robust, exo_pair losses)."""
    init_run: Optional[str] = None
    """Start from this run's model (LoRA merged): a run directory, a run name directory
    (its newest finished run) or an MLflow run id; e.g. the sft run for dpo or ppo."""
    reward_run: Optional[str] = None
    """ppo: the rm run that scores completions (given like init_run)."""
    text_column: str = "text"
    """pt: the column of a JSON/JSONL file that holds the raw text."""
    ppo: PPOSettings = field(default_factory=PPOSettings)
    """ppo: rollout and clipping settings."""


@dataclass
class Config:
    """One fine-tuning run. Short top-level keys are the ones people sweep."""

    model: ModelConfig = MISSING
    method: MethodConfig = MISSING
    data: DataConfig = MISSING
    optimizer: OptimizerConfig = MISSING
    scheduler: SchedulerConfig = MISSING
    train: TrainConfig = field(default_factory=TrainConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    stage: StageConfig = field(default_factory=StageConfig)
    lr: float = 1e-3
    """Peak learning rate (read by optimizer.lr)."""
    epochs: float = 3.0
    """Passes over the training data."""
    max_steps: int = -1
    """Stop after this many optimizer steps (-1 = run all epochs)."""
    batch_size: int = 16
    """Per-device micro-batch size."""
    grad_accum: int = 1
    """Micro-batches per optimizer step (effective batch = batch_size x grad_accum x devices)."""
    rank: int = 16
    """LoRA rank (read by method.rank)."""
    alpha: float = 32
    """LoRA alpha (read by method.alpha)."""
    cutoff_len: int = 512
    """Longest tokenized sample (read by data.cutoff_len)."""
    seed: int = 42
    """Seed for weights init of adapters, data order and dropout."""
    precision: str = "fp32"
    """fp32, fp16 (CUDA), bf16 (mixed) or pure_bf16 (bf16 weights, no fp32 master copy)."""
    objective: str = "eval_loss"
    """Metric the run returns to a sweep (default: the stage's, e.g. eval_loss for sft)."""
    resume: str = "never"
    """never, auto (newest checkpoint of the newest run with this name) or a run/checkpoint path."""
    name: str = "${ftrun_run_name:}"
    """Readable run name (default built from method, lr and rank)."""
    output_root: str = "outputs"
    """Runs are written to <output_root>/<name>/<timestamp>."""


# ---------------------------------------------------------------------------
# registration

OBJECTIVE_DIRECTIONS = {
    "eval_loss": "minimize",
    "eval_perplexity": "minimize",
    "eval_exact_match": "maximize",
    # rm: pairwise accuracy and margin of the reward model on the eval pairs
    "eval_accuracy": "maximize",
    "eval_margin": "maximize",
    # dpo and kto: implicit rewards beta * log(pi / pi_ref) on the eval pairs
    "eval_rewards/accuracies": "maximize",
    "eval_rewards/margins": "maximize",
    # ppo: the reward model's score of the policy's completions (mean over the last logged steps)
    "reward_mean": "maximize",
}

# the objectives each stage can return (the first is its default, set in conf/stage/<name>.yaml)
STAGE_OBJECTIVES = {
    "pt": ("eval_loss", "eval_perplexity"),
    "sft": ("eval_loss", "eval_perplexity", "eval_exact_match"),
    "rm": ("eval_accuracy", "eval_margin", "eval_loss"),
    "dpo": ("eval_rewards/accuracies", "eval_rewards/margins", "eval_loss"),
    "kto": ("eval_rewards/margins", "eval_loss"),
    "ppo": ("reward_mean",),
}
# what TRL 1.16's DPOTrainer accepts as loss_type
DPO_LOSSES = ("sigmoid", "hinge", "ipo", "exo_pair", "nca_pair", "robust", "bco_pair", "sppo_hard", "aot",
              "aot_unpaired", "apo_zero", "apo_down", "discopop", "sft", "sigmoid_norm")
PPO_LOSSES = ("grpo", "dr_grpo", "dapo", "bnpo", "cispo", "sapo", "luspo", "vespo")

METHODS = ("full", "freeze", "lora", "qlora")
OPTIMIZERS = {  # ours -> transformers' `optim`
    "adamw": "adamw_torch",
    "adamw_8bit": "adamw_bnb_8bit",
    "sgd": "sgd",
    "adafactor": "adafactor",
}
SCHEDULERS = (
    "linear",
    "cosine",
    "cosine_with_restarts",
    "polynomial",
    "constant",
    "constant_with_warmup",
    "inverse_sqrt",
    "reduce_lr_on_plateau",
)
PRECISIONS = ("fp32", "fp16", "bf16", "pure_bf16")
DTYPES = ("auto", "fp32", "bf16", "fp16")
ATTN = ("eager", "sdpa", "flash_attention_2")
TEMPLATES = ("auto", "default", "alpaca", "chatml", "qwen", "llama3", "mistral", "glm4")  # ftrun.data.templates


def format_lr(lr: float) -> str:
    """``1e-4`` -> ``"1e-4"``, ``3.5e-4`` -> ``"3.5e-4"``, ``0.1`` -> ``"1e-1"``."""
    mantissa, exponent = f"{lr:.2e}".split("e")
    mantissa = mantissa.rstrip("0").rstrip(".")
    return f"{mantissa}e{int(exponent)}"


def _run_name(*, _root_: DictConfig) -> str:
    method = _root_.method.name
    parts = [method, _root_.data.name, f"lr{format_lr(float(_root_.lr))}"]
    if _root_.stage.name != "sft":
        parts.insert(0, _root_.stage.name)
    if method in ("lora", "qlora"):
        parts.append(f"r{_root_.rank}")
    return "-".join(str(p) for p in parts)


def _run_dir(root: str, name: str, resume: str) -> str:
    """Run directory: ``<root>/<name>/<timestamp>``, or the run being resumed."""
    if resume == "auto":
        found = find_resumable_run(Path(root) / name)
        if found is not None:
            return str(found)
    elif resume not in ("never", "", None):
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
    if runs and not (runs[0] / "result.json").exists() and last_checkpoint(runs[0]) is None:
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
        if step.isdigit() and (d / "trainer_state.json").is_file():
            ckpts.append((int(step), d))
    return max(ckpts)[1] if ckpts else None


def register_configs() -> None:
    """Register the schema and resolvers; called before Hydra composes."""
    from hydra.core.config_store import ConfigStore

    if not OmegaConf.has_resolver("ftrun_run_name"):
        OmegaConf.register_new_resolver("ftrun_run_name", _run_name)
    if not OmegaConf.has_resolver("ftrun_run_dir"):
        # cached: the timestamp must not change between two resolutions
        OmegaConf.register_new_resolver("ftrun_run_dir", _run_dir, use_cache=True)
    # conf/config.yaml lists this first, so every group preset merged after it is
    # type-checked against the dataclass of its field
    ConfigStore.instance().store(name="ftrun_schema", node=Config)


# ---------------------------------------------------------------------------
# validation


def validate(cfg: DictConfig) -> None:
    """Check ranges and combinations; raise :class:`ConfigError` listing every problem.

    Each line reads ``override=value: what is wrong``, so the user knows which
    command-line override to change.
    """
    problems: List[str] = []

    def check(ok: bool, key: str, value: Any, why: str) -> None:
        if not ok:
            problems.append(f"{key}={_show(value)}: {why}")

    c = cfg
    check(c.lr > 0 and math.isfinite(c.lr), "lr", c.lr, "lr must be > 0")
    check(c.epochs > 0, "epochs", c.epochs, "epochs must be > 0")
    check(c.max_steps == -1 or c.max_steps > 0, "max_steps", c.max_steps, "must be > 0, or -1 for all epochs")
    check(c.batch_size >= 1, "batch_size", c.batch_size, "batch_size must be >= 1")
    check(c.grad_accum >= 1, "grad_accum", c.grad_accum, "grad_accum must be >= 1")
    check(c.seed >= 0, "seed", c.seed, "seed must be >= 0")
    check(c.precision in PRECISIONS, "precision", c.precision, f"choose one of {', '.join(PRECISIONS)}")
    check(c.objective in OBJECTIVE_DIRECTIONS, "objective", c.objective,
          f"choose one of {', '.join(OBJECTIVE_DIRECTIONS)}")
    _check_stage(c, check)

    m = c.method
    check(m.name in METHODS, "method.name", m.name, f"choose one of {', '.join(METHODS)}")
    if m.name in ("lora", "qlora"):
        check(m.rank >= 1, "rank", m.rank, "rank must be >= 1")
        check(m.alpha > 0, "alpha", m.alpha, "alpha must be > 0")
        check(0 <= m.dropout < 1, "method.dropout", m.dropout, "dropout must be in [0, 1)")
        check(len(m.target_modules) > 0, "method.target_modules", list(m.target_modules),
              "name at least one module, or [all-linear]")
        check(m.loraplus_lr_ratio is None or m.loraplus_lr_ratio > 0, "method.loraplus_lr_ratio",
              m.loraplus_lr_ratio, "must be > 0 (16 is common), or null to disable LoRA+")
    if m.name == "freeze":
        check(m.trainable_layers >= 0, "method.trainable_layers", m.trainable_layers, "must be >= 0")
        check(m.trainable_layers > 0 or len(m.extra_modules) > 0, "method.trainable_layers",
              m.trainable_layers, "nothing would train: set trainable_layers > 0 or method.extra_modules")
    if m.name == "qlora":
        check(m.bits in (4, 8), "method.bits", m.bits, "bits must be 4 or 8")
        check(m.quant_type in ("nf4", "fp4"), "method.quant_type", m.quant_type, "choose nf4 or fp4")
        check(m.compute_dtype in ("fp32", "bf16", "fp16"), "method.compute_dtype", m.compute_dtype,
              "choose fp32, bf16 or fp16")

    o = c.optimizer
    check(o.name in OPTIMIZERS, "optimizer.name", o.name, f"choose one of {', '.join(OPTIMIZERS)}")
    check(len(o.betas) == 2 and all(0 <= b < 1 for b in o.betas), "optimizer.betas", list(o.betas),
          "give two betas, each in [0, 1)")
    check(o.weight_decay >= 0, "optimizer.weight_decay", o.weight_decay, "must be >= 0")
    check(o.eps > 0, "optimizer.eps", o.eps, "must be > 0")
    check(o.max_grad_norm >= 0, "optimizer.max_grad_norm", o.max_grad_norm, "must be >= 0 (0 = no clipping)")

    s = c.scheduler
    check(s.name in SCHEDULERS, "scheduler.name", s.name, f"choose one of {', '.join(SCHEDULERS)}")
    check(s.warmup_steps >= 0, "scheduler.warmup_steps", s.warmup_steps, "must be >= 0")
    check(s.name != "reduce_lr_on_plateau" or c.train.eval_steps > 0, "train.eval_steps", c.train.eval_steps,
          "scheduler=reduce_lr_on_plateau steps on the eval loss: set train.eval_steps > 0")
    check(0 <= s.warmup_ratio < 1, "scheduler.warmup_ratio", s.warmup_ratio, "must be in [0, 1)")
    check(not (s.warmup_steps > 0 and s.warmup_ratio > 0), "scheduler.warmup_ratio", s.warmup_ratio,
          "set warmup_steps or warmup_ratio, not both (add scheduler.warmup_ratio=0 to count warm-up in steps)")

    d = c.data
    check(d.cutoff_len >= 8, "cutoff_len", d.cutoff_len, "cutoff_len must be >= 8")
    check(d.val_size >= 0, "data.val_size", d.val_size, "a share in [0, 1) or a count >= 1")
    check(d.max_samples is None or d.max_samples > 0, "data.max_samples", d.max_samples, "must be > 0 or null")
    check(d.format in ("auto", "alpaca", "sharegpt"), "data.format", d.format, "choose auto, alpaca or sharegpt")
    check(d.mix in ("concat", "interleave"), "data.mix", d.mix, "choose concat or interleave")
    check(d.mix_stop in ("first_exhausted", "all_exhausted"), "data.mix_stop", d.mix_stop,
          "choose first_exhausted or all_exhausted")
    check(d.num_proc is None or d.num_proc >= 1, "data.num_proc", d.num_proc, "must be >= 1 or null")
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
    if d.builtin is not None:
        check(d.num_train > 0, "data.num_train", d.num_train, "must be > 0")
        check(d.num_eval >= 0, "data.num_eval", d.num_eval, "must be >= 0")

    md = c.model
    check(md.dtype in DTYPES, "model.dtype", md.dtype, f"choose one of {', '.join(DTYPES)}")
    check(md.template in TEMPLATES, "model.template", md.template, f"choose one of {', '.join(TEMPLATES)}")
    check(md.attn_implementation in ATTN, "model.attn_implementation", md.attn_implementation,
          f"choose one of {', '.join(ATTN)}")
    check(md.path is not None or md.tiny is not None, "model.path", None, "give a local model directory or hub id")
    if md.path is not None and _looks_local(md.path):
        check(Path(md.path).expanduser().is_dir(), "model.path", md.path,
              "no such directory; give a local model directory or a hub id like Qwen/Qwen2.5-0.5B-Instruct")

    t = c.train
    for key in ("logging_steps", "eval_steps", "save_steps"):
        check(t[key] >= 0, f"train.{key}", t[key], "must be >= 0")
    check(t.eval_batch_size >= 1, "train.eval_batch_size", t.eval_batch_size, "must be >= 1")

    if c.resume not in ("never", "auto"):
        check(Path(c.resume).exists(), "resume", c.resume,
              "no such run directory or checkpoint; use resume=auto or a path under outputs/")

    if problems:
        raise ConfigError("invalid configuration:\n  " + "\n  ".join(problems))


def _check_stage(c: DictConfig, check) -> None:
    st = c.stage
    if st.name not in STAGE_OBJECTIVES:
        check(False, "stage", st.name, f"choose one of {', '.join(STAGE_OBJECTIVES)}")
        return
    check(st.name == "sft" or c.method.loraplus_lr_ratio is None, "method.loraplus_lr_ratio",
          c.method.loraplus_lr_ratio, f"LoRA+ is built for stage=sft only; set it to null for stage={st.name}")
    allowed = STAGE_OBJECTIVES[st.name]
    check(c.objective not in OBJECTIVE_DIRECTIONS or c.objective in allowed, "objective", c.objective,
          f"stage={st.name} reports {', '.join(allowed)}")
    if st.name in ("dpo", "kto", "ppo"):
        check(st.beta >= 0 and math.isfinite(st.beta), "stage.beta", st.beta, "must be >= 0 (0.1 is common)")
    if st.name == "dpo":
        bad = [t for t in st.loss_type if t not in DPO_LOSSES]
        check(len(st.loss_type) > 0 and not bad, "stage.loss_type", list(st.loss_type),
              f"choose from {', '.join(DPO_LOSSES)}")
        check(0 <= st.label_smoothing < 0.5, "stage.label_smoothing", st.label_smoothing, "must be in [0, 0.5)")
    if st.name == "ppo":
        check(st.reward_run is not None, "stage.reward_run", None,
              "give the rm run that scores completions (its run directory or MLflow run id)")
        p = st.ppo
        check(p.num_generations >= 2, "stage.ppo.num_generations", p.num_generations,
              "must be >= 2: each completion is compared with the others of its prompt")
        check(c.batch_size % max(p.num_generations, 1) == 0, "batch_size", c.batch_size,
              f"must be a multiple of stage.ppo.num_generations={p.num_generations}")
        check(p.max_new_tokens >= 1, "stage.ppo.max_new_tokens", p.max_new_tokens, "must be >= 1")
        check(p.temperature > 0, "stage.ppo.temperature", p.temperature, "must be > 0")
        check(p.epsilon > 0, "stage.ppo.epsilon", p.epsilon, "must be > 0 (0.2 is PPO's default)")
        check(p.num_iterations >= 1, "stage.ppo.num_iterations", p.num_iterations, "must be >= 1")
        check(p.loss_type in PPO_LOSSES, "stage.ppo.loss_type", p.loss_type, f"choose one of {', '.join(PPO_LOSSES)}")
        check(p.scale_rewards in ("group", "batch", "none"), "stage.ppo.scale_rewards", p.scale_rewards,
              "choose group, batch or none")
    for key in ("init_run", "reward_run"):
        ref = st[key]
        if ref is not None and _looks_local(ref) and not _looks_like_run_id(ref):
            check(Path(ref).expanduser().is_dir(), f"stage.{key}", ref,
                  "no such run directory; give a run (or run name) directory under outputs/ or an MLflow run id")


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


def _looks_local(path: str) -> bool:
    # a hub id is "org/name"; anything starting like a path, or with more parts, is local
    return path.startswith((".", "/", "~")) or path.count("/") != 1 or os.path.exists(path)


def _show(value: Any) -> str:
    if isinstance(value, list):
        return "[" + ",".join(_show(v) for v in value) + "]"
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def to_container(cfg: DictConfig) -> dict:
    """The resolved config as plain Python, without Hydra's own node."""
    data = OmegaConf.to_container(cfg, resolve=True, throw_on_missing=False)
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
