"""The configuration schema: one structured config per group, registered in Hydra's ConfigStore.

Each group (``model``, ``method``, ``data``, ``optimizer``, ``scheduler``, ...) has one
dataclass; ``ftrun/conf/<group>/*.yaml`` holds presets merged onto it, so a typo in
a key, a value of the wrong type or a choice outside its Enum fails at compose time.
Every field has a one-line docstring: the board and ``--help`` show it.

Nothing here imports torch: composing a config must stay fast.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional

from omegaconf import MISSING, OmegaConf

from ftrun.config.choices import (Attn, ComputeDtype, DataFormat, DPOLoss, Dtype, Method, Mix, MixStop, Optimizer,
                                  PPOLoss, Precision, QuantMethod, QuantType, RopeType, ScaleRewards, Scheduler,
                                  Sharding, Stage, SwitchMode, TemplateName)
from ftrun.config.objectives import STAGE_OBJECTIVES
from ftrun.config.resolvers import run_dir, run_name


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
    attn_implementation: Attn = Attn.sdpa_varlen
    """Attention: eager, sdpa, flash_attention_2 (CUDA), or sdpa_varlen (sdpa per sample over unpadded batches)."""
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
    train_turn_suffix: bool = False
    """Also train on what follows an assistant turn's stop token (ChatML's newline after <|im_end|>), as
    LLaMA-Factory's templates do; false: the trained part ends at the stop token."""


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
    padding_free: bool = False
    """Unpacked training batches go as one row without padding, where the attention allows (sdpa_varlen, flash);
    worth it when lengths spread widely (a batch of similar lengths runs faster padded, in one attention call)."""
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
    recompute_elementwise: bool = True
    """Recompute the gated MLP's act(gate) * up in the backward pass instead of keeping act(gate): an
    intermediate_size-wide tensor per token and layer less, bitwise the same results (ftrun/recompute.py)."""
    fuse_lora: bool = True
    """lora/qlora: sibling layers (q/k/v, gate/up) share one down-projection and each adds its up-projection in the
    matmul (ftrun/fused_lora.py); the same LoRA up to the order of floating-point sums, a step ~6% faster."""
    chunked_loss: bool = True
    """stage=sft/pt: the loss straight from the hidden states, a chunk of tokens at a time, never the whole
    tokens x vocabulary logits (ftrun/linear_cross_entropy.py); false = transformers' own loss (also taken with
    model.liger_kernel, whose kernel fuses the head and the loss on a GPU)."""
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



def register_configs() -> None:
    """Register the schema and resolvers; called before Hydra composes."""
    from hydra.core.config_store import ConfigStore

    if not OmegaConf.has_resolver("ftrun_run_name"):
        OmegaConf.register_new_resolver("ftrun_run_name", run_name)
    if not OmegaConf.has_resolver("ftrun_stage_objective"):
        OmegaConf.register_new_resolver("ftrun_stage_objective", lambda stage: STAGE_OBJECTIVES[str(stage)][0])
    if not OmegaConf.has_resolver("ftrun_run_dir"):
        # cached: the timestamp must not change between two resolutions
        OmegaConf.register_new_resolver("ftrun_run_dir", run_dir, use_cache=True)
    # ftrun/conf/config.yaml lists this first, so every group preset merged after it is
    # type-checked against the dataclass of its field
    ConfigStore.instance().store(name="ftrun_schema", node=Config)


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
