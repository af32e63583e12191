"""One fine-tuning run, top to bottom: seed -> data -> model -> method -> trainer -> tracker -> train.

transformers' Trainer owns the loop; :func:`build_trainer` is the one place
where ftrun hands it the model, the data, the optimizer settings and the
callbacks. :func:`run` returns the objective (``cfg.objective``) so that a sweep
can optimize it.
"""

from __future__ import annotations

import json
import logging
import math
import resource
import sys
import time
from pathlib import Path
from typing import Callable, Dict, Optional

from ftrun.config import OPTIMIZERS, ConfigError, last_checkpoint, validate, validate_device

log = logging.getLogger(__name__)

RESULT_FILE = "result.json"


class Phases:
    """Where a run's time goes (setup, data, model, tracking, trainer, train, eval, save), in seconds;
    result.json keeps them as ``phases_s`` so a sweep can tell training from overhead."""

    def __init__(self):
        self.spent: Dict[str, float] = {}
        self._t = time.perf_counter()

    def mark(self, name: str) -> None:
        """Charge the time since the previous mark to ``name``."""
        now = time.perf_counter()
        self.spent[name] = self.spent.get(name, 0.0) + now - self._t
        self._t = now

    def move(self, seconds: float, src: str, dst: str) -> None:
        seconds = min(seconds, self.spent.get(src, 0.0))
        self.spent[src] = self.spent.get(src, 0.0) - seconds
        self.spent[dst] = self.spent.get(dst, 0.0) + seconds


phases = Phases()  # the current run's; run() starts it anew


def run(cfg, run_dir: Path, overrides: Optional[list] = None) -> float:
    """Train one run into ``run_dir`` and return its objective."""
    global phases
    phases = Phases()
    validate(cfg)
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    _write_resolved_config(cfg, run_dir)
    log.info("Run '%s' (stage %s) in %s", cfg.name, cfg.stage.name, run_dir)
    _quiet_libraries()
    validate_device(cfg)
    if cfg.stage.name != "sft":  # pt, rm, dpo, kto, ppo: a TRL recipe in ftrun/stages/
        from ftrun.stages import run_stage

        return run_stage(cfg, run_dir, overrides)
    if cfg.stage.init_run:  # continue from an earlier run's model, e.g. a pt run
        from ftrun.stages.common import start_from_run

        cfg = start_from_run(cfg, run_dir)

    from transformers import set_seed

    from ftrun import keep
    from ftrun.config import to_container
    from ftrun.data import build_datasets
    from ftrun.model import apply_method, count_parameters, load_model, load_tokenizer
    from ftrun.tracking import make_tracker

    # seed ------------------------------------------------------------------
    phases.mark("setup")  # checks and imports (in a fresh process most of it is importing)
    set_seed(cfg.seed)
    log.info("Seed %d", cfg.seed)

    # data (tokenizer first: everything here fails before the model loads) ----
    log.info("Loading tokenizer for model '%s'", cfg.model.name)
    tokenizer = load_tokenizer(cfg.model)
    log.info("Building data '%s' (cutoff_len=%d)", cfg.data.name, cfg.data.cutoff_len)
    train_ds, eval_ds, report = keep.shared(  # a warm sweep worker tokenizes each data config once
        "tokenized data", {"data": to_container(cfg.data), "model": to_container(cfg.model)},
        lambda: build_datasets(cfg.data, tokenizer))
    log.info("Data: %d train / %d eval samples, %d truncated",
             len(train_ds), len(eval_ds) if eval_ds is not None else 0, report.truncated)
    _checkpoint_to_resume(cfg, run_dir)  # refuses an occupied run dir now, before the model loads
    phases.mark("data")

    # model and method --------------------------------------------------------
    log.info("Loading model '%s'", cfg.model.name)
    model = load_model(cfg)
    log.info("Applying method '%s'", cfg.method.name)
    model = apply_method(model, cfg)
    trainable, total = count_parameters(model)
    log.info("Trainable parameters: %s / %s (%.2f%%)", f"{trainable:,}", f"{total:,}", 100 * trainable / total)
    phases.mark("model")

    # tracker and trainer -------------------------------------------------------
    tracker = make_tracker(cfg, run_dir, overrides)
    tracker.log_metrics({"trainable_params": trainable, "total_params": total, **report.as_metrics("data_train")}, step=0)
    phases.mark("tracking")
    log.info("Building trainer (optimizer=%s, scheduler=%s, precision=%s)",
             cfg.optimizer.name, cfg.scheduler.name, cfg.precision)
    from sweeper.trial import pruning_callback

    pruning = pruning_callback(cfg)  # None unless a sweep started this run as an Optuna trial
    trainer = build_trainer(cfg, model, tokenizer, train_ds, eval_ds, run_dir, callbacks=[tracker.callback(), pruning])
    phases.mark("trainer")

    # train -------------------------------------------------------------------
    return train_and_report(cfg, trainer, tokenizer, tracker, run_dir)


def build_trainer(cfg, model, tokenizer, train_ds, eval_ds, run_dir: Path, callbacks=()):
    """transformers' Trainer with ftrun's settings, data collator, metrics and callbacks."""
    from transformers import Trainer

    from ftrun.data import make_collator

    args = training_arguments(cfg, run_dir, has_eval=eval_ds is not None, num_examples=len(train_ds))
    optimizers = (None, None)
    if cfg.method.name in ("lora", "qlora") and cfg.method.loraplus_lr_ratio:
        from peft.optimizers import create_loraplus_optimizer

        opt_cls, opt_kwargs = Trainer.get_optimizer_cls_and_kwargs(args, model)
        opt_kwargs = {k: v for k, v in opt_kwargs.items() if k != "lr"}
        optimizer = create_loraplus_optimizer(model, opt_cls, lr=cfg.optimizer.lr,
                                              loraplus_lr_ratio=cfg.method.loraplus_lr_ratio,
                                              weight_decay=cfg.optimizer.weight_decay, **opt_kwargs)
        optimizers = (optimizer, None)
    return Trainer(
        model=model,
        args=args,
        train_dataset=train_ds,
        eval_dataset=eval_ds,
        processing_class=tokenizer,
        data_collator=make_collator(cfg.data, tokenizer, cfg.model.attn_implementation),
        compute_metrics=exact_match if eval_ds is not None else None,
        preprocess_logits_for_metrics=argmax_logits if eval_ds is not None else None,
        optimizers=optimizers,
        callbacks=[c for c in callbacks if c is not None],
    )


def training_arguments(cfg, run_dir: Path, has_eval: bool = True, cls=None, num_examples: Optional[int] = None,
                       **extra):
    """The Trainer's arguments from the config; ``cls`` is a TRL config class for the other stages,
    and ``extra`` its own fields (beta, loss_type, ...); ``num_examples`` (training rows) turns
    warmup_stable_decay's ``decay_ratio`` into steps."""
    import torch
    from transformers import TrainingArguments

    o, s, t = cfg.optimizer, cfg.scheduler, cfg.train
    eval_steps = t.eval_steps
    if t.eval_examples > 0:  # the same data between evaluations whatever the batch size
        eval_steps = max(1, round(t.eval_examples / examples_per_step(cfg)))
    evaluate = has_eval and eval_steps > 0
    if s.name == "reduce_lr_on_plateau" and not evaluate:
        raise ConfigError("scheduler=reduce_lr_on_plateau: it steps on the eval loss; "
                          "set train.eval_steps > 0 and use data with an eval split")
    optim_args = f"momentum={o.momentum}" if o.name == "sgd" else None
    scheduler_kwargs = dict(s.kwargs or {})
    if s.name == "warmup_stable_decay":
        scheduler_kwargs = _wsd_kwargs(cfg, scheduler_kwargs, num_examples)
    return (cls or TrainingArguments)(
        output_dir=str(run_dir),
        seed=cfg.seed,
        data_seed=cfg.seed,
        num_train_epochs=cfg.epochs,
        max_steps=cfg.max_steps,
        per_device_train_batch_size=cfg.batch_size,
        per_device_eval_batch_size=t.eval_batch_size,
        gradient_accumulation_steps=cfg.grad_accum,
        learning_rate=o.lr,
        weight_decay=o.weight_decay,
        adam_beta1=o.betas[0],
        adam_beta2=o.betas[1],
        adam_epsilon=o.eps,
        max_grad_norm=o.max_grad_norm,
        optim=OPTIMIZERS[o.name],
        optim_args=optim_args,
        lr_scheduler_type=s.name,
        lr_scheduler_kwargs=scheduler_kwargs,
        warmup_steps=s.warmup_ratio if s.warmup_ratio > 0 else s.warmup_steps,
        fp16=cfg.precision == "fp16",
        bf16=cfg.precision == "bf16",
        activation_checkpointing=t.gradient_checkpointing,  # transformers 5's name for it
        activation_checkpointing_kwargs={"use_reentrant": False} if t.gradient_checkpointing else None,
        neftune_noise_alpha=t.neftune_noise_alpha,
        logging_steps=t.logging_steps or 10,
        eval_strategy="steps" if evaluate else "no",
        eval_steps=eval_steps if evaluate else None,
        save_strategy="steps" if t.save_steps > 0 else "no",
        save_steps=t.save_steps if t.save_steps > 0 else 500,
        save_total_limit=t.save_total_limit,
        include_num_input_tokens_seen="non_padding",
        dataloader_num_workers=t.num_workers,
        report_to="none",  # ftrun's own MLflow callback records the run
        use_cpu=not torch.cuda.is_available(),
        disable_tqdm=not sys.stderr.isatty(),
        remove_unused_columns=False,
        **extra,
    )


def _wsd_kwargs(cfg, kwargs: dict, num_examples: Optional[int]) -> dict:
    """warmup-stable-decay: ``decay_ratio`` (share of all steps spent decaying) -> ``num_decay_steps``.

    A constant learning rate until the decay makes an evaluation in the stable phase
    comparable to a shorter run's, which is what multi-fidelity pruning assumes.
    """
    ratio = kwargs.pop("decay_ratio", None)
    if ratio is None:
        if "num_decay_steps" not in kwargs:
            raise ConfigError("scheduler=wsd: give scheduler.kwargs.decay_ratio (e.g. 0.2) or num_decay_steps")
        return kwargs
    if not 0 <= float(ratio) <= 1:
        raise ConfigError(f"scheduler.kwargs.decay_ratio={ratio}: must be in [0, 1]")
    if cfg.max_steps > 0:
        total = cfg.max_steps
    elif num_examples is not None:
        total = math.ceil(math.ceil(num_examples / examples_per_step(cfg)) * cfg.epochs)
    else:
        raise ConfigError(f"scheduler.kwargs.decay_ratio: stage={cfg.stage.name} needs max_steps set, or "
                          "scheduler.kwargs.num_decay_steps instead")
    kwargs["num_decay_steps"] = max(1, round(float(ratio) * total))
    return kwargs


def examples_per_step(cfg) -> int:
    """Training examples in one optimizer step: batch_size x grad_accum x processes."""
    import os

    return cfg.batch_size * cfg.grad_accum * int(os.environ.get("WORLD_SIZE", "1"))


def train_and_report(cfg, trainer, tokenizer, tracker, run_dir: Path,
                     extra_metrics: Optional[Callable[[list], Dict[str, float]]] = None) -> float:
    """Train (resuming if asked), evaluate, save the model and result.json, return the objective.

    The same tail as :func:`ftrun.train.run`; ``extra_metrics`` turns the
    trainer's log history into more summary metrics (ppo's reward_mean).
    """
    checkpoint = _checkpoint_to_resume(cfg, run_dir)
    status = "FAILED"
    try:
        if checkpoint:
            log.info("Resuming from %s", checkpoint)
        phases.mark("prepare")  # a stage recipe's data, model and trainer (sft marked them already)
        start = time.perf_counter()
        trainer.train(resume_from_checkpoint=str(checkpoint) if checkpoint else None)
        train_time = time.perf_counter() - start
        phases.mark("train")
        history = trainer.state.log_history
        # evaluations inside the loop count as evaluation, not training
        phases.move(sum(h.get("eval_runtime", 0.0) for h in history if "eval_runtime" in h), "train", "eval")
        metrics = _final_eval(trainer) if trainer.eval_dataset is not None else {}
        phases.mark("eval")
        metrics = {k: v for k, v in metrics.items() if k.startswith("eval_") and isinstance(v, (int, float))}
        if "eval_loss" in metrics:
            metrics["eval_perplexity"] = math.exp(min(metrics["eval_loss"], 50.0))
        train_losses = [h["loss"] for h in history if "loss" in h]
        summary = {"train_time_s": train_time, "peak_memory_mb": peak_memory_mb(),
                   "global_step": trainer.state.global_step}
        if train_losses:
            summary["final_train_loss"] = train_losses[-1]
        if extra_metrics is not None:
            summary.update(extra_metrics(history))
        objective = _objective(cfg, {**metrics, **summary}, summary)
        pruning = next((c for c in trainer.callback_handler.callbacks if type(c).__name__ == "PruningCallback"), None)
        summary["pruned"] = bool(pruning is not None and pruning.pruned)  # stopped early by the sweep's pruner
        if summary["pruned"]:
            from sweeper.trial import mark_pruned

            log.info("Pruned by the sweep at step %d", pruning.pruned_at_step)
            mark_pruned(tracker, pruning.pruned_at_step)

        model_dir = run_dir / "model"
        trainer.save_model(str(model_dir))  # collective under DDP: every rank calls it
        if trainer.is_world_process_zero():
            tokenizer.save_pretrained(str(model_dir))
            trainer.state.save_to_json(str(run_dir / "trainer_state.json"))
            plot_loss(history, run_dir / "loss.png", title=cfg.name)
            phases.mark("save")
            tracker.log_metrics({**metrics, **summary, "pruned": float(summary["pruned"]), "objective": objective},
                                step=trainer.state.global_step)
            tracker.log_artifacts(run_dir, model_dir)
            phases.mark("tracking")
            summary["phases_s"] = {k: round(v, 4) for k, v in phases.spent.items() if k != "prepare" or v > 0.001}
            _write_result(run_dir, cfg, objective, metrics, summary)
        log.info("Done: %s = %.4f after %d steps in %.1f s (peak memory %.0f MB)",
                 cfg.objective, objective, trainer.state.global_step, train_time, summary["peak_memory_mb"])
        status = "FINISHED"
        return objective
    finally:
        tracker.finish(status)


def _final_eval(trainer) -> dict:
    """The eval metrics of the final weights: the last evaluation's if it ran at the last step."""
    last = next((h for h in reversed(trainer.state.log_history) if "eval_loss" in h), None)
    if last is not None and last.get("step") == trainer.state.global_step:
        return last
    return trainer.evaluate()


# ---------------------------------------------------------------------------
# metrics


def argmax_logits(logits, labels):
    """Keep only the argmax token ids, so evaluation does not hold full logits."""
    if isinstance(logits, tuple):
        logits = logits[0]
    return logits.argmax(dim=-1)


def exact_match(eval_pred) -> dict:
    """Share of eval samples whose whole answer (and EOS) is the argmax at every position.

    Under teacher forcing this equals greedy decoding's exact match: if every
    answer token is the argmax given the correct prefix, greedy decoding
    reproduces the answer token by token, and vice versa.
    """
    import numpy as np

    preds, labels = eval_pred.predictions, eval_pred.label_ids
    preds, labels = preds[:, :-1], labels[:, 1:]  # logits at t predict token t+1
    mask = labels != -100
    correct = ((preds == labels) | ~mask).all(axis=-1) & mask.any(axis=-1)
    return {"exact_match": float(np.mean(correct))}


def peak_memory_mb() -> float:
    """Peak GPU memory when on CUDA, else the process's peak resident memory."""
    import torch

    if torch.cuda.is_available():
        return torch.cuda.max_memory_allocated() / 2**20
    try:  # VmHWM: the peak resident set, which a warm sweep worker resets between trials
        with open("/proc/self/status") as f:
            return next(int(l.split()[1]) for l in f if l.startswith("VmHWM:")) / 1024
    except (OSError, StopIteration, ValueError):
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


# ---------------------------------------------------------------------------
# helpers


def _checkpoint_to_resume(cfg, run_dir: Path) -> Optional[Path]:
    if cfg.resume == "never":
        if last_checkpoint(run_dir) is not None:
            raise ConfigError(f"resume=never: {run_dir} already holds checkpoints; "
                              "pass resume=auto to continue that run")
        return None
    if Path(cfg.resume).name.startswith("checkpoint-"):
        return Path(cfg.resume)
    return last_checkpoint(run_dir)


def _write_resolved_config(cfg, run_dir: Path) -> None:
    """config_resolved.yaml, also with tracking off: export, predict and chat read the base model from it."""
    from omegaconf import OmegaConf

    from ftrun.config import to_container

    (run_dir / "config_resolved.yaml").write_text(OmegaConf.to_yaml(to_container(cfg)))


def _objective(cfg, metrics: dict, summary: dict) -> float:
    if cfg.objective in metrics:
        return float(metrics[cfg.objective])
    if "final_train_loss" in summary and cfg.objective in ("eval_loss", "eval_perplexity"):
        log.warning("objective=%s: no eval split, returning the final train loss instead", cfg.objective)
        return float(summary["final_train_loss"])
    raise ConfigError(f"objective={cfg.objective}: the run produced no such metric (have: {', '.join(metrics)})")


def _write_result(run_dir: Path, cfg, objective: float, metrics: dict, summary: dict) -> None:
    result = {"name": cfg.name, "objective_name": cfg.objective, "objective": objective, **metrics, **summary}
    tmp = run_dir / (RESULT_FILE + ".tmp")
    tmp.write_text(json.dumps(result, indent=2))
    tmp.replace(run_dir / RESULT_FILE)


def plot_loss(log_history: list, path: Path, title: str = "") -> None:
    """Train and eval loss against step, as one PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    train = [(h["step"], h["loss"]) for h in log_history if "loss" in h]
    evals = [(h["step"], h["eval_loss"]) for h in log_history if "eval_loss" in h]
    fig, ax = plt.subplots(figsize=(7, 4))
    if train:
        ax.plot(*zip(*train), label="train loss")
    if evals:
        ax.plot(*zip(*evals), marker="o", label="eval loss")
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.set_title(title)
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _quiet_libraries() -> None:
    import os
    import warnings

    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    # bitsandbytes tries to fetch an optional CPU kernel from the hub and logs a warning when it
    # cannot; its own fallback kernel is what runs here, so the warning is noise
    logging.getLogger("bitsandbytes.backends.cpu.ops").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", message=".*is deprecated and will be removed in v6.*")
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_warning()
