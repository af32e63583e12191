"""Range and cross-field checks that a type cannot express: :func:`validate`.

It runs before any model or dataset is loaded, reports every problem at once and
names each by the override that fixes it (``override=value: what is wrong``).
There is one check function per config group, all with the same signature
``(problems, cfg, arch)``: the :class:`Problems` collector first, the composed
config, and the model's architecture numbers read from its ``config.json``.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Dict, List

from omegaconf import DictConfig

from ftrun.config.choices import DPO_LOSSES, PROJECTED_OPTIMIZERS
from ftrun.config.errors import ConfigError, show_value
from ftrun.config.model_json import model_arch
from ftrun.config.objectives import GENERATIVE_OBJECTIVES, OBJECTIVE_DIRECTIONS, STAGE_OBJECTIVES, has_eval, keep_best
from ftrun.config.short_keys import display_key
from ftrun.config.model_dir import looks_local as _looks_local, model_dir_problems
from ftrun.config.schema_checks import schema_problems
from ftrun.letters import BUILTIN

# stages whose data can be packed (data.packing=true): sft packs samples, pt always packs raw text
PACKING_STAGES = ("sft", "pt")


class Problems:
    """The problems found so far, each a line ``override=value: why``; the checks below add to it."""

    def __init__(self) -> None:
        self.lines: List[str] = []

    def check(self, ok: bool, key: str, value: Any, why: str) -> None:
        """Record ``key=value: why`` unless ``ok``."""
        if not ok:
            self.lines.append(f"{display_key(key)}={show_value(value)}: {why}")

    def positive(self, key: str, value: Any, why: str = "") -> None:
        """``value`` must be a finite number > 0."""
        self.check(value is not None and value > 0 and math.isfinite(value), key, value,
                   why or f"{_leaf(key)} must be > 0")

    def at_least(self, key: str, value: Any, low: float) -> None:
        """``value`` must be >= ``low``."""
        self.check(value is not None and value >= low, key, value, f"{_leaf(key)} must be >= {low:g}")

    def in_unit(self, key: str, value: Any) -> None:
        """``value`` must be in [0, 1)."""
        self.check(value is not None and 0 <= value < 1, key, value, f"{_leaf(key)} must be in [0, 1)")

    def raise_if_any(self) -> None:
        """Raise :class:`ConfigError` listing every problem, if there is one."""
        if self.lines:
            raise ConfigError("invalid configuration:\n  " + "\n  ".join(self.lines))


def _leaf(key: str) -> str:
    return display_key(key).rsplit(".", 1)[-1]


def validate(cfg: DictConfig) -> None:
    """Check every key's range and the rules between keys; raise :class:`ConfigError` listing every problem.

    Types and fixed choices (the Enums in :mod:`ftrun.config.choices`) are already
    checked when Hydra composes. Each line reads ``override=value: what is wrong``,
    so the user knows which command-line override to change. Nothing here loads
    data or weights: the model's hidden size is read from its ``config.json``.
    """
    problems = Problems()
    arch = model_arch(cfg.model)
    for check_group in (check_run, check_stage, check_model, check_method, check_optimizer, check_scheduler,
                        check_projected_optimizer, check_sharding, check_data, check_train):
        check_group(problems, cfg, arch)
    problems.lines += schema_problems(cfg, problems.lines)  # what each key's type rules out: '', [''], a file for a folder
    problems.raise_if_any()


def check_run(p: Problems, c: DictConfig, arch: Dict[str, int]) -> None:
    """The run's own keys: length, batch, seed, objective, name, resume."""
    p.positive("epochs", c.epochs)
    p.check(c.max_steps == -1 or c.max_steps > 0, "max_steps", c.max_steps, "must be > 0, or -1 for all epochs")
    p.at_least("batch_size", c.batch_size, 1)
    p.at_least("grad_accum", c.grad_accum, 1)
    p.at_least("seed", c.seed, 0)
    p.check(c.objective in OBJECTIVE_DIRECTIONS, "objective", c.objective,
            f"choose one of {', '.join(OBJECTIVE_DIRECTIONS)}")
    p.check(bool(str(c.name)) and "/" not in str(c.name), "name", c.name, "give a non-empty name without '/'")
    p.check(bool(str(c.output_root)), "output_root", c.output_root, "give a folder")
    if c.resume not in ("never", "auto", "force"):
        p.check(Path(c.resume).exists(), "resume", c.resume,
                "no such run directory or checkpoint; use resume=auto, resume=force or a path under outputs/")


def check_stage(p: Problems, c: DictConfig, arch: Dict[str, int]) -> None:
    """The stage's settings, and what each stage reports and needs."""
    st = c.stage
    p.check(st.name == "sft" or c.method.loraplus_lr_ratio is None, "method.loraplus_lr_ratio",
            c.method.loraplus_lr_ratio, f"LoRA+ is built for stage=sft only; set it to null for stage={st.name}")
    allowed = STAGE_OBJECTIVES[str(st.name)]
    p.check(c.objective not in OBJECTIVE_DIRECTIONS or c.objective in allowed, "objective", c.objective,
            f"stage={st.name} reports {', '.join(allowed)}")
    p.check(st.beta >= 0 and math.isfinite(st.beta), "stage.beta", st.beta, "must be >= 0 (0.1 is common)")
    p.check(len(st.loss_type) > 0, "stage.loss_type", list(st.loss_type), f"choose from {', '.join(DPO_LOSSES)}")
    p.check(0 <= st.label_smoothing < 0.5, "stage.label_smoothing", st.label_smoothing, "must be in [0, 0.5)")
    p.check(st.pref_ftx >= 0 and math.isfinite(st.pref_ftx), "stage.pref_ftx", st.pref_ftx, "must be >= 0 (0 = off)")
    p.check(st.pref_ftx == 0 or st.name == "dpo", "stage.pref_ftx", st.pref_ftx,
            f"the SFT term is added to DPO's loss; stage={st.name} has none: set stage.pref_ftx=0")
    p.check(st.pref_ftx == 0 or "sft" not in st.loss_type, "stage.pref_ftx", st.pref_ftx,
            "stage.loss_type already holds sft: drop it from stage.loss_type, or set stage.pref_ftx=0")
    ppo = st.ppo
    p.check(ppo.num_generations >= 2, "stage.ppo.num_generations", ppo.num_generations,
            "must be >= 2: each completion is compared with the others of its prompt")
    p.at_least("stage.ppo.max_new_tokens", ppo.max_new_tokens, 1)
    p.positive("stage.ppo.temperature", ppo.temperature)
    p.positive("stage.ppo.epsilon", ppo.epsilon, "must be > 0 (0.2 is PPO's default)")
    p.at_least("stage.ppo.num_iterations", ppo.num_iterations, 1)
    if st.name == "ppo":
        p.check(st.reward_run is not None, "stage.reward_run", None,
                "give the rm run that scores completions (its run directory or MLflow run id)")
        p.check(c.batch_size % max(ppo.num_generations, 1) == 0, "batch_size", c.batch_size,
                f"must be a multiple of stage.ppo.num_generations={ppo.num_generations}")
    for key in ("init_run", "reward_run"):
        ref = st[key]
        if ref is not None and _looks_local(ref) and not _looks_like_run_id(ref):
            p.check(Path(ref).expanduser().is_dir(), f"stage.{key}", ref,
                    "no such run directory; give a run (or run name) directory under outputs/ or an MLflow run id")


def check_model(p: Problems, c: DictConfig, arch: Dict[str, int]) -> None:
    """The base model: where it is, the tiny model's shape, RoPE scaling, added tokens."""
    md = c.model
    p.check(bool(md.name), "model.name", md.name, "give a short name")
    p.check(md.path is not None or md.tiny is not None, "model.path", None, "give a local model directory or hub id")
    if md.path is not None and _looks_local(md.path):  # a folder, with config.json (ftrun.config.model_dir)
        for why in model_dir_problems(md.path, need=("config",)):
            p.check(False, "model.path", md.path, why)
    if md.tiny is not None:
        t = md.tiny
        for key in ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
                    "num_key_value_heads", "vocab_size", "max_position_embeddings"):
            p.at_least(f"model.tiny.{key}", t[key], 1)
        p.at_least("model.tiny.pretrain_steps", t.pretrain_steps, 0)
        p.at_least("model.tiny.seed", t.seed, 0)
        if t.num_attention_heads >= 1 and t.num_key_value_heads >= 1:
            p.check(t.hidden_size % t.num_attention_heads == 0, "model.tiny.num_attention_heads", t.num_attention_heads,
                    f"must divide model.tiny.hidden_size={t.hidden_size}")
            p.check(t.num_attention_heads % t.num_key_value_heads == 0, "model.tiny.num_key_value_heads",
                    t.num_key_value_heads, f"must divide model.tiny.num_attention_heads={t.num_attention_heads}")
    if md.rope_scaling is not None:
        p.check(md.rope_factor > 1 and math.isfinite(md.rope_factor), "model.rope_factor", md.rope_factor,
                "must be > 1 (2.0 doubles the context); or model.rope_scaling=null for none")
    p.check(all(bool(t) for t in md.add_special_tokens), "model.add_special_tokens", list(md.add_special_tokens),
            "give non-empty token strings")


def check_method(p: Problems, c: DictConfig, arch: Dict[str, int]) -> None:
    """How it trains: LoRA, PiSSA, a saved adapter, LLaMA Pro, freeze."""
    m = c.method
    p.at_least("method.rank", m.rank, 1)
    p.positive("method.alpha", m.alpha)
    p.in_unit("method.dropout", m.dropout)
    p.at_least("method.trainable_layers", m.trainable_layers, 0)
    p.check(m.bits in (4, 8), "method.bits", m.bits, "bits must be 4 or 8")
    p.check(m.loraplus_lr_ratio is None or m.loraplus_lr_ratio > 0, "method.loraplus_lr_ratio",
            m.loraplus_lr_ratio, "must be > 0 (16 is common), or null to disable LoRA+")
    if m.name in ("lora", "qlora"):
        p.check(len(m.target_modules) > 0, "method.target_modules", list(m.target_modules),
                "name at least one module, or [all-linear]")
        hidden = arch.get("hidden_size")
        p.check(hidden is None or m.rank <= hidden, "method.rank", m.rank,
                f"larger than the model's hidden size ({hidden}); a rank above it adds nothing")
    p.check(m.name in ("freeze", "llama_pro", "lora", "qlora") or not m.extra_modules, "method.extra_modules",
            list(m.extra_modules), f"method={m.name} trains every module already; set it to []")
    p.check(m.name == "lora" or not m.pissa, "method.pissa", m.pissa,
            "PiSSA initialises LoRA from the unquantized weights: use method=lora"
            + (", or method.pissa=false" if m.name == "qlora" else ""))
    p.check(m.pissa_iters == -1 or m.pissa_iters >= 1, "method.pissa_iters", m.pissa_iters,
            "must be >= 1, or -1 for an exact SVD")
    if m.adapter is not None:
        p.check(m.name in ("lora", "qlora"), "method.adapter", m.adapter,
                "a LoRA adapter trains with method=lora or qlora")
        p.check(Path(m.adapter).expanduser().joinpath("adapter_config.json").is_file(), "method.adapter", m.adapter,
                "no adapter_config.json there; give a lora run's model/ folder")
        p.check(c.stage.name == "sft", "method.adapter", m.adapter,
                f"stage={c.stage.name} starts from a run with stage.init_run (its LoRA merged)")
        p.check(not (m.create_new_adapter and m.name == "qlora"), "method.create_new_adapter", True,
                "merging into a quantized base is lossy: use method=lora, "
                "or keep training it (create_new_adapter=false)")
        p.check(not m.pissa, "method.pissa", True, "the adapter is loaded, not initialised: set method.pissa=false")
    p.check(m.adapter is not None or not m.create_new_adapter, "method.create_new_adapter", True,
            "there is no adapter to start from: give method.adapter=<a lora run>/model")
    p.check(m.name == "qlora" or m.quant_method == "bnb", "method.quant_method", m.quant_method,
            "only method=qlora quantizes the base")
    if m.name == "llama_pro":
        layers = arch.get("num_hidden_layers")
        p.at_least("method.expand_layers", m.expand_layers, 1)
        p.check(layers is None or m.expand_layers < 1 or layers % m.expand_layers == 0, "method.expand_layers",
                m.expand_layers, f"must divide the model's {layers} layers (one new block after every num_layers/N)")
    if m.name == "freeze":
        p.check(m.trainable_layers > 0 or len(m.extra_modules) > 0, "method.trainable_layers",
                m.trainable_layers, "nothing would train: set trainable_layers > 0 or method.extra_modules")
        layers = arch.get("num_hidden_layers")
        p.check(layers is None or m.trainable_layers <= layers, "method.trainable_layers", m.trainable_layers,
                f"the model has {layers} layers")


def check_optimizer(p: Problems, c: DictConfig, arch: Dict[str, int]) -> None:
    """The optimizer's numbers."""
    o = c.optimizer
    p.positive("optimizer.lr", o.lr, "lr must be > 0")
    p.check(len(o.betas) == 2 and all(0 <= b < 1 for b in o.betas), "optimizer.betas", list(o.betas),
            "give two betas, each in [0, 1)")
    p.at_least("optimizer.weight_decay", o.weight_decay, 0)
    p.positive("optimizer.eps", o.eps)
    p.in_unit("optimizer.momentum", o.momentum)
    p.check(o.max_grad_norm >= 0, "optimizer.max_grad_norm", o.max_grad_norm, "must be >= 0 (0 = no clipping)")


def check_scheduler(p: Problems, c: DictConfig, arch: Dict[str, int]) -> None:
    """The learning-rate schedule and its warm-up."""
    s = c.scheduler
    p.at_least("scheduler.warmup_steps", s.warmup_steps, 0)
    p.in_unit("scheduler.warmup_ratio", s.warmup_ratio)
    p.check(s.name != "reduce_lr_on_plateau" or c.train.eval_steps > 0 or c.train.eval_examples > 0,
            "train.eval_steps", c.train.eval_steps,
            "scheduler=reduce_lr_on_plateau steps on the eval loss: set train.eval_steps > 0")
    p.check(not (s.warmup_steps > 0 and s.warmup_ratio > 0), "scheduler.warmup_ratio", s.warmup_ratio,
            "set warmup_steps or warmup_ratio, not both (add scheduler.warmup_ratio=0 to count warm-up in steps)")
    p.check(isinstance(s.kwargs, (dict, DictConfig)), "scheduler.kwargs", s.kwargs,
            "give a mapping, e.g. {num_cycles: 2}")


def check_projected_optimizer(p: Problems, c: DictConfig, arch: Dict[str, int]) -> None:
    """GaLore, APOLLO and BAdam: their settings, and the methods and sharding they cannot work with."""
    o, m, sh = c.optimizer, c.method, c.sharding
    name = str(o.name)
    if name in PROJECTED_OPTIMIZERS:
        p.check(m.name in ("full", "freeze", "llama_pro"), "optimizer", name,
                f"{name} projects the gradients of full weight matrices, LoRA has none to project: "
                "use method=full (or freeze), or optimizer=adamw with LoRA")
        p.check(len(o.target_modules) > 0, "optimizer.target_modules", list(o.target_modules),
                "name at least one module, or [all-linear]")
        p.at_least("optimizer.proj_rank", o.proj_rank, 1)
        p.at_least("optimizer.update_proj_gap", o.update_proj_gap, 1)
        p.positive("optimizer.scale", o.scale)
        types = ("random", "svd") if name == "apollo" else ("std", "reverse_std", "right", "left", "full")
        p.check(o.proj_type in types, "optimizer.proj_type", o.proj_type, f"{name} takes {', '.join(types)}")
        if o.layerwise:
            p.check(c.grad_accum == 1, "grad_accum", c.grad_accum,
                    "optimizer.layerwise steps during backward and cannot accumulate: set grad_accum=1")
            p.check(sh.name == "none", "sharding", sh.name, "optimizer.layerwise does not work with sharding")
    else:
        p.check(not o.layerwise, "optimizer.layerwise", True, "only galore and apollo step layer by layer")
    if name == "badam":
        p.check(m.name == "full", "method", m.name,
                "optimizer=badam picks the block of layers that trains itself: use method=full")
        p.check(sh.name in ("none", "zero2"), "sharding", sh.name, "badam works without sharding or with zero2")
        p.at_least("optimizer.switch_interval", o.switch_interval, 1)


def check_sharding(p: Problems, c: DictConfig, arch: Dict[str, int]) -> None:
    """Multi-GPU sharding: offloading, and what FSDP cannot shard."""
    m, sh = c.method, c.sharding
    p.check(sh.name != "none" or not sh.offload, "sharding.offload", True,
            "offloading needs sharding=zero2, zero3 or fsdp")
    p.check(not (sh.name == "fsdp" and m.name == "qlora" and m.bits == 8), "sharding", sh.name,
            "FSDP cannot shard 8-bit bitsandbytes weights: use method.bits=4 or sharding=zero2")


def check_data(p: Problems, c: DictConfig, arch: Dict[str, int]) -> None:
    """The data: its source, length against the model's context, split, mixing and packing."""
    md = c.model
    d = c.data
    p.check(bool(d.name), "data.name", d.name, "give a short name")
    p.at_least("data.cutoff_len", d.cutoff_len, 8)
    max_pos = arch.get("max_position_embeddings")
    if max_pos is not None and md.rope_scaling is not None and md.rope_factor > 1:
        p.check(d.cutoff_len <= max_pos * md.rope_factor, "data.cutoff_len", d.cutoff_len,
                f"longer than the model's context with model.rope_factor={md.rope_factor:g} "
                f"({max_pos} x {md.rope_factor:g} positions); raise model.rope_factor")
    else:
        p.check(max_pos is None or d.cutoff_len <= max_pos, "data.cutoff_len", d.cutoff_len,
                f"longer than the model's context ({max_pos} positions); model.rope_scaling=linear (or dynamic, "
                "yarn, llama3) with model.rope_factor extends it")
    p.check(0 <= d.val_size < 1 or (d.val_size >= 1 and float(d.val_size).is_integer()), "data.val_size", d.val_size,
            "a share in [0, 1) or a whole count >= 1")
    p.check(d.max_samples is None or d.max_samples > 0, "data.max_samples", d.max_samples, "must be > 0 or null")
    p.check(d.num_proc is None or d.num_proc >= 1, "data.num_proc", d.num_proc, "must be >= 1 or null")
    p.check(d.builtin is None or d.builtin in BUILTIN, "data.builtin", d.builtin,
            f"choose one of {', '.join(BUILTIN)}, or null with data.path")
    p.at_least("data.num_train", d.num_train, 1)
    p.at_least("data.num_eval", d.num_eval, 0)
    n_sets = len(d.sources) or len(d.names)
    if d.mix_probs is not None:
        probs = list(d.mix_probs)
        p.check(n_sets > 1 and len(probs) == n_sets, "data.mix_probs", probs,
                f"give one probability per dataset ({n_sets} named in data.names/data.sources)")
        p.check(all(q >= 0 for q in probs) and abs(sum(probs) - 1) < 1e-6, "data.mix_probs", probs,
                "probabilities must be >= 0 and sum to 1")
    p.check(not (d.names and d.sources), "data.names", list(d.names), "give data.names or data.sources, not both")
    if d.registry is not None:
        p.check(Path(d.registry).expanduser().is_file(), "data.registry", d.registry,
                "no such file; give the path of a LLaMA-Factory dataset_info.json")
        p.check(bool(d.names or d.sources), "data.registry", d.registry,
                "select its datasets with data.names=[a,b]")
    if not (d.names or d.sources):
        if d.path is None:
            p.check(d.builtin is not None, "data.path", None, "give a data file or folder (data.path=...)")
        else:
            path = Path(d.path).expanduser()
            p.check(path.exists() or any(ch in d.path for ch in "*?["), "data.path", d.path,
                    "no such file or folder; give an Alpaca/ShareGPT .json, .jsonl, .csv or .parquet file, "
                    "or a folder of them")
    p.check(not d.packing or c.stage.name in PACKING_STAGES, "data.packing", d.packing,
            f"stage={c.stage.name} trains on whole pairs or prompts and cannot pack; "
            f"packing works with stage={' or '.join(PACKING_STAGES)}")


def check_train(p: Problems, c: DictConfig, arch: Dict[str, int]) -> None:
    """Logging, evaluation and checkpoint cadence, generation during evaluation, keeping the best; tracking."""
    t = c.train
    for key in ("logging_steps", "eval_steps", "eval_examples", "save_steps", "num_workers", "progress_interval_s"):
        p.at_least(f"train.{key}", t[key], 0)
    p.at_least("train.eval_batch_size", t.eval_batch_size, 1)
    p.check(t.save_total_limit is None or t.save_total_limit >= 1, "train.save_total_limit", t.save_total_limit,
            "must be >= 1 or null (keep all)")
    p.check(t.neftune_noise_alpha is None or t.neftune_noise_alpha > 0, "train.neftune_noise_alpha",
            t.neftune_noise_alpha, "must be > 0 (5 is common) or null")
    g = t.generate
    p.at_least("train.generate.max_samples", g.max_samples, 0)
    p.at_least("train.generate.max_new_tokens", g.max_new_tokens, 1)
    p.at_least("train.generate.batch_size", g.batch_size, 1)
    p.check(g.max_samples == 0 or c.stage.name == "sft", "train.generate.max_samples", g.max_samples,
            f"generation during evaluation is built for stage=sft; set it to 0 for stage={c.stage.name}")
    if c.objective in GENERATIVE_OBJECTIVES:
        p.check(g.max_samples > 0, "train.generate.max_samples", g.max_samples,
                f"objective={c.objective} scores generated answers: set train.generate.max_samples=32 (or more)")
        p.check(has_eval(c), "data.val_size", c.data.val_size,
                f"objective={c.objective} is measured on held-out rows: set data.val_size=0.1")
        p.check(not c.data.train_on_prompt, "data.train_on_prompt", c.data.train_on_prompt,
                f"objective={c.objective} generates answers to prompts, which train_on_prompt does not separate: "
                "set data.train_on_prompt=false")
    if t.keep_best:
        p.check(c.objective.startswith("eval_"), "train.keep_best", t.keep_best,
                f"objective={c.objective} is not measured at evaluations; set train.keep_best=false")
        p.check(has_eval(c), "train.keep_best", t.keep_best,
                "the best checkpoint is chosen on held-out rows: set data.val_size=0.1 (or train.keep_best=false)")
    if keep_best(c):
        p.check(t.eval_steps > 0 or t.eval_examples > 0, "train.eval_steps", t.eval_steps,
                "keeping the best checkpoint needs evaluations during training: set train.eval_steps > 0 "
                "(or train.keep_best=false)")
    p.check(bool(c.tracking.experiment), "tracking.experiment", c.tracking.experiment, "give an experiment name")


def _looks_like_run_id(ref: str) -> bool:
    return len(ref) == 32 and all(ch in "0123456789abcdef" for ch in ref)


