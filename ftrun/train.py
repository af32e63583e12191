"""One fine-tuning run, top to bottom: seed -> data -> model -> method -> trainer -> tracker -> train.

transformers' Trainer owns the loop; :func:`build_trainer` is the one place
where ftrun hands it the model, the data, the optimizer settings and the
callbacks. :func:`run` returns the objective (``cfg.objective``) so that a sweep
can optimize it.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Optional

from ftrun.config import ConfigError, resolved, training_differences, validate, validate_device
from ftrun.contract import RESOLVED_CONFIG, RESULT_FILE  # noqa: F401  (RESULT_FILE: what run() writes last)
from ftrun.trainer import (argmax_logits, checkpoint_to_resume, custom_optimizer,  # noqa: F401
                           exact_match, quiet_libraries, start_phases, train_and_report,
                           training_arguments)

log = logging.getLogger(__name__)


def run(cfg, run_dir: Path, overrides: Optional[list] = None) -> float:
    """Train one run into ``run_dir`` and return its objective."""
    phases = start_phases()
    validate(cfg)
    cfg = resolved(cfg)  # from here on plain values: the name and objective fixed, choices as strings
    run_dir = Path(run_dir)
    check_resume(cfg, run_dir)  # the wrong checkpoint, or an occupied run dir, is refused before anything loads
    run_dir.mkdir(parents=True, exist_ok=True)
    _write_resolved_config(cfg, run_dir)
    log.info("Run '%s' (stage %s) in %s", cfg.name, cfg.stage.name, run_dir)
    quiet_libraries()
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


def check_resume(cfg, run_dir: Path) -> None:
    """Refuse to resume a checkpoint whose run trained with other settings (``resume=force``
    resumes it anyway), and to write into a run directory that holds checkpoints (``resume=never``).

    Reads only ``config_resolved.yaml``: nothing loads.
    """
    checkpoint = checkpoint_to_resume(cfg, run_dir)  # raises on resume=never in an occupied run dir
    old_file = Path(run_dir) / RESOLVED_CONFIG
    if checkpoint is None or cfg.resume == "force" or not old_file.is_file():
        return
    from omegaconf import OmegaConf

    diff = training_differences(OmegaConf.to_container(OmegaConf.load(old_file)), cfg)
    if diff:
        lines = [f"{key}: the checkpoint's run had {then}, this run has {now}" for key, (then, now) in diff.items()]
        raise ConfigError(f"resume={cfg.resume}: {checkpoint} was trained with other settings:\n  "
                          + "\n  ".join(lines)
                          + "\n  use the same settings, resume=force to resume it anyway, "
                            "or resume=never (with another name=) for a new run")


def build_trainer(cfg, model, tokenizer, train_ds, eval_ds, run_dir: Path, callbacks=()):
    """transformers' Trainer with ftrun's settings, data collator, metrics and callbacks."""
    from transformers import Trainer

    from ftrun.data import make_collator

    args = training_arguments(cfg, run_dir, has_eval=eval_ds is not None, num_examples=len(train_ds))
    optimizers = custom_optimizer(cfg, model, args)  # BAdam; (None, None): the Trainer builds it
    if cfg.method.name in ("lora", "qlora") and cfg.method.loraplus_lr_ratio:
        from peft.optimizers import create_loraplus_optimizer

        opt_cls, opt_kwargs = Trainer.get_optimizer_cls_and_kwargs(args, model)
        opt_kwargs = {k: v for k, v in opt_kwargs.items() if k != "lr"}
        optimizer = create_loraplus_optimizer(model, opt_cls, lr=cfg.optimizer.lr,
                                              loraplus_lr_ratio=cfg.method.loraplus_lr_ratio,
                                              weight_decay=cfg.optimizer.weight_decay, **opt_kwargs)
        optimizers = (optimizer, None)
    metrics = None
    if eval_ds is not None:  # exact match, and the scores of generated answers with train.generate
        from ftrun.gen_eval import EvalMetrics

        metrics = EvalMetrics(tokenizer, eval_ds, cfg.train.generate)
        metrics.model = model
    return Trainer(
        model=model,
        args=args,
        train_dataset=train_ds,
        eval_dataset=eval_ds,
        processing_class=tokenizer,
        data_collator=make_collator(cfg.data, tokenizer, cfg.model.attn_implementation),
        compute_metrics=metrics,
        preprocess_logits_for_metrics=argmax_logits if eval_ds is not None else None,
        optimizers=optimizers,
        callbacks=[c for c in callbacks if c is not None],
    )


# ---------------------------------------------------------------------------
# helpers


def _write_resolved_config(cfg, run_dir: Path) -> None:
    """config_resolved.yaml, also with tracking off: export, predict, chat and resume read it."""
    from omegaconf import OmegaConf

    from ftrun.config import to_container

    (run_dir / RESOLVED_CONFIG).write_text(OmegaConf.to_yaml(to_container(cfg)))
