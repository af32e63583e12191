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


def run(cfg, run_dir: Path, overrides: Optional[list] = None) -> float:
    """Train one run into ``run_dir`` and return its objective."""
    validate(cfg)
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    _write_resolved_config(cfg, run_dir)
    log.info("Run '%s' (stage %s) in %s", cfg.name, cfg.stage.name, run_dir)
    _quiet_libraries()
    validate_device(cfg)
    from ftrun.estimate import log_estimate  # issue 16: one line, the estimated peak memory per device

    log_estimate(cfg)
    if cfg.stage.name != "sft":  # pt, rm, dpo, kto, ppo: a TRL recipe in ftrun/stages/
        from ftrun.stages import run_stage

        return run_stage(cfg, run_dir, overrides)
    if cfg.stage.init_run:  # continue from an earlier run's model, e.g. a pt run
        from ftrun.stages.common import start_from_run

        cfg = start_from_run(cfg, run_dir)

    from transformers import set_seed

    from ftrun.data import build_datasets
    from ftrun.model import apply_method, count_parameters, load_model, load_tokenizer
    from ftrun.tracking import make_tracker

    # seed ------------------------------------------------------------------
    set_seed(cfg.seed)
    log.info("Seed %d", cfg.seed)

    # data (tokenizer first: everything here fails before the model loads) ----
    log.info("Loading tokenizer for model '%s'", cfg.model.name)
    tokenizer = load_tokenizer(cfg.model)
    log.info("Building data '%s' (cutoff_len=%d)", cfg.data.name, cfg.data.cutoff_len)
    train_ds, eval_ds, report = build_datasets(cfg.data, tokenizer)
    log.info("Data: %d train / %d eval samples, %d truncated",
             len(train_ds), len(eval_ds) if eval_ds is not None else 0, report.truncated)
    _checkpoint_to_resume(cfg, run_dir)  # refuses an occupied run dir now, before the model loads

    # model and method --------------------------------------------------------
    log.info("Loading model '%s'", cfg.model.name)
    model = load_model(cfg)
    log.info("Applying method '%s'", cfg.method.name)
    model = apply_method(model, cfg)
    trainable, total = count_parameters(model)
    log.info("Trainable parameters: %s / %s (%.2f%%)", f"{trainable:,}", f"{total:,}", 100 * trainable / total)

    # tracker and trainer -------------------------------------------------------
    tracker = make_tracker(cfg, run_dir, overrides)
    tracker.log_metrics({"trainable_params": trainable, "total_params": total, **report.as_metrics("data_train")}, step=0)
    log.info("Building trainer (optimizer=%s, scheduler=%s, precision=%s)",
             cfg.optimizer.name, cfg.scheduler.name, cfg.precision)
    from sweeper.trial import pruning_callback

    pruning = pruning_callback(cfg)  # None unless a sweep started this run as an Optuna trial
    trainer = build_trainer(cfg, model, tokenizer, train_ds, eval_ds, run_dir, callbacks=[tracker.callback(), pruning])

    # train -------------------------------------------------------------------
    return train_and_report(cfg, trainer, tokenizer, tracker, run_dir)


def build_trainer(cfg, model, tokenizer, train_ds, eval_ds, run_dir: Path, callbacks=()):
    """transformers' Trainer with ftrun's settings, data collator, metrics and callbacks."""
    from transformers import Trainer

    from ftrun.data import make_collator

    args = training_arguments(cfg, run_dir, has_eval=eval_ds is not None)
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


def training_arguments(cfg, run_dir: Path, has_eval: bool = True, cls=None, **extra):
    """The Trainer's arguments from the config; ``cls`` is a TRL config class for the other stages,
    and ``extra`` its own fields (beta, loss_type, ...)."""
    import torch
    from transformers import TrainingArguments

    o, s, t = cfg.optimizer, cfg.scheduler, cfg.train
    evaluate = has_eval and t.eval_steps > 0
    if s.name == "reduce_lr_on_plateau" and not evaluate:
        raise ConfigError("scheduler=reduce_lr_on_plateau: it steps on the eval loss; "
                          "set train.eval_steps > 0 and use data with an eval split")
    optim_args = f"momentum={o.momentum}" if o.name == "sgd" else None
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
        lr_scheduler_kwargs=dict(s.kwargs or {}),
        warmup_steps=s.warmup_ratio if s.warmup_ratio > 0 else s.warmup_steps,
        fp16=cfg.precision == "fp16",
        bf16=cfg.precision == "bf16",
        activation_checkpointing=t.gradient_checkpointing,  # transformers 5's name for it
        activation_checkpointing_kwargs={"use_reentrant": False} if t.gradient_checkpointing else None,
        neftune_noise_alpha=t.neftune_noise_alpha,
        logging_steps=t.logging_steps or 10,
        eval_strategy="steps" if evaluate else "no",
        eval_steps=t.eval_steps if evaluate else None,
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
        start = time.perf_counter()
        trainer.train(resume_from_checkpoint=str(checkpoint) if checkpoint else None)
        train_time = time.perf_counter() - start
        history = trainer.state.log_history
        metrics = _final_eval(trainer) if trainer.eval_dataset is not None else {}
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
            tracker.log_metrics({**metrics, **summary, "pruned": float(summary["pruned"]), "objective": objective},
                                step=trainer.state.global_step)
            tracker.log_artifacts(run_dir, model_dir)
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
