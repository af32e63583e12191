"""What every stage's run shares once its Trainer is built: the Trainer's arguments, and the
train -> evaluate -> save -> report tail that writes ``result.json`` and returns the objective.

Every recipe in :mod:`ftrun.stages` (sft included) uses it; it imports none of them.
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

from ftrun.config import (OBJECTIVE_DIRECTIONS, OPTIMIZERS, PROJECTED_OPTIMIZERS, ConfigError, keep_best,
                          last_checkpoint)
from ftrun.allocator import in_use as allocator_in_use, release as release_free_pages
from ftrun.unused_libraries import hidden_now
from ftrun.contract import (ATTR_BRANCH_S, ATTR_BRANCH_STEPS, ATTR_PAUSED_AT, LOSS_PLOT, MODEL_DIR, RESULT_FILE,
                            TAG_FAIL_REASON, TAG_PAUSED_AT_STEP, TRAINER_STATE)

log = logging.getLogger(__name__)


def resident_peak_mb() -> float:
    """The process's peak resident memory so far (Linux ``VmHWM``, which a warm sweep worker resets)."""
    try:
        with open("/proc/self/status") as f:
            return next(int(l.split()[1]) for l in f if l.startswith("VmHWM:")) / 1024
    except (OSError, StopIteration, ValueError):
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


class Phases:
    """Where a run's time goes (setup, data, model, tracking, trainer, train, eval, save), in seconds;
    result.json keeps them as ``phases_s`` so a sweep can tell training from overhead. Also where
    the process's peak resident memory rose: ``peak_memory_breakdown_mb`` (``startup``: the
    interpreter and what was imported before the run began), which sums to the peak."""

    def __init__(self):
        self.spent: Dict[str, float] = {}
        self._t = time.perf_counter()
        self._hwm = resident_peak_mb()
        self.peak_rise: Dict[str, float] = {"startup": self._hwm}

    def mark(self, name: str) -> None:
        """Charge the time since the previous mark, and the rise of the resident peak, to ``name``."""
        now = time.perf_counter()
        self.spent[name] = self.spent.get(name, 0.0) + now - self._t
        self._t = now
        hwm = resident_peak_mb()
        self.peak_rise[name] = self.peak_rise.get(name, 0.0) + max(hwm - self._hwm, 0.0)
        self._hwm = max(hwm, self._hwm)

    def move(self, seconds: float, src: str, dst: str) -> None:
        seconds = min(seconds, self.spent.get(src, 0.0))
        self.spent[src] = self.spent.get(src, 0.0) - seconds
        self.spent[dst] = self.spent.get(dst, 0.0) + seconds


_phases = Phases()


def start_phases() -> Phases:
    """A new clock for the run that starts now (the one train_and_report charges too)."""
    global _phases
    _phases = Phases()
    return _phases


def current_phases() -> Phases:
    """The clock :func:`start_phases` started last (the recipes' steps mark it)."""
    return _phases


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
    optim = OPTIMIZERS[o.name]
    if o.name in PROJECTED_OPTIMIZERS:  # GaLore / APOLLO: transformers builds them from these
        proj = "proj" if o.name == "apollo" else "proj_type"
        optim_args = f"rank={o.proj_rank},update_proj_gap={o.update_proj_gap},scale={o.scale},{proj}={o.proj_type}"
        optim += "_layerwise" if o.layerwise else ""
        targets = list(o.target_modules)
        extra = {"optim_target_modules": "all-linear" if targets == ["all-linear"] else targets, **extra}
    extra = {**sharding_arguments(cfg), **extra}
    scheduler_kwargs = dict(s.kwargs or {})
    if s.name == "warmup_stable_decay":
        scheduler_kwargs = _wsd_kwargs(cfg, scheduler_kwargs, num_examples)
    saving = dict(save_strategy="steps" if t.save_steps > 0 else "no", save_steps=t.save_steps if t.save_steps > 0 else 500)
    if evaluate and keep_best(cfg):  # a checkpoint at every evaluation; the Trainer ends on the best one
        metric = "eval_loss" if cfg.objective == "eval_perplexity" else cfg.objective  # same order
        saving = dict(save_strategy="steps", save_steps=eval_steps, load_best_model_at_end=True,
                      metric_for_best_model=metric,
                      greater_is_better=OBJECTIVE_DIRECTIONS.get(cfg.objective) == "maximize")
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
        optim=optim,
        optim_args=optim_args,
        lr_scheduler_type=str(s.name),
        lr_scheduler_kwargs=scheduler_kwargs,
        warmup_steps=s.warmup_ratio if s.warmup_ratio > 0 else s.warmup_steps,
        fp16=cfg.precision == "fp16",
        bf16=cfg.precision == "bf16",
        activation_checkpointing=t.gradient_checkpointing,  # transformers 5's name for it
        activation_checkpointing_kwargs={"use_reentrant": False} if t.gradient_checkpointing else None,
        neftune_noise_alpha=t.neftune_noise_alpha,
        use_liger_kernel=bool(cfg.model.get("liger_kernel", False)),
        logging_nan_inf_filter=False,  # log a NaN loss as NaN (ftrun.divergence stops the run on it)
        logging_steps=t.logging_steps or 10,
        eval_strategy="steps" if evaluate else "no",
        eval_steps=eval_steps if evaluate else None,
        **saving,
        save_total_limit=t.save_total_limit,
        include_num_input_tokens_seen="non_padding",
        dataloader_num_workers=t.num_workers,
        report_to="none",  # ftrun's own MLflow callback records the run
        use_cpu=not torch.cuda.is_available(),
        disable_tqdm=not sys.stderr.isatty(),
        remove_unused_columns=False,
        **extra,
    )


def sharding_arguments(cfg) -> dict:
    """TrainingArguments for ``sharding``: a DeepSpeed config (its "auto" values filled in by
    transformers from the other arguments) or FSDP's options; accelerate applies them under
    ``accelerate launch``."""
    sh = cfg.get("sharding")
    if sh is None or sh.name == "none":
        return {}
    if sh.name == "fsdp":
        return {"fsdp": "full_shard auto_wrap" + (" offload" if sh.offload else ""),
                "fsdp_config": {"auto_wrap_policy": "TRANSFORMER_BASED_WRAP", "use_orig_params": True}}
    stage = 3 if sh.name == "zero3" else 2
    zero = {"stage": stage, "overlap_comm": False, "contiguous_gradients": True,
            "reduce_bucket_size": "auto", "allgather_partitions": True}
    if stage == 3:
        zero.update({"stage3_prefetch_bucket_size": "auto", "stage3_param_persistence_threshold": "auto",
                     "stage3_gather_16bit_weights_on_model_save": True})
    if sh.offload:
        zero["offload_optimizer"] = {"device": "cpu", "pin_memory": True}
        if stage == 3:
            zero["offload_param"] = {"device": "cpu", "pin_memory": True}
    ds = {"train_batch_size": "auto", "train_micro_batch_size_per_gpu": "auto",
          "gradient_accumulation_steps": "auto", "gradient_clipping": "auto", "zero_allow_untested_optimizer": True,
          "fp16": {"enabled": "auto"}, "bf16": {"enabled": "auto"}, "zero_optimization": zero}
    return {"deepspeed": ds}


def custom_optimizer(cfg, model, args):
    """The Trainer's ``optimizers`` pair for optimizers transformers does not build: BAdam's
    BlockOptimizer around the AdamW that ``args`` describes; ``(None, None)`` otherwise."""
    if cfg.optimizer.name != "badam":
        return None, None
    from badam import BlockOptimizer
    from transformers import Trainer

    opt_cls, opt_kwargs = Trainer.get_optimizer_cls_and_kwargs(args, model)
    base = opt_cls([{"params": [p for p in model.parameters()], "weight_decay": args.weight_decay}], **opt_kwargs)
    optimizer = BlockOptimizer(base_optimizer=base, named_parameters_list=list(model.named_parameters()),
                               block_prefix_list=None, switch_block_every=cfg.optimizer.switch_interval,
                               switch_mode=str(cfg.optimizer.switch_mode), verbose=0)
    return optimizer, None


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
                     extra_metrics: Optional[Callable[[list], Dict[str, float]]] = None) -> Optional[float]:
    """Train (resuming if asked), evaluate, save the model and result.json, return the objective.

    The tail of every stage recipe; ``extra_metrics`` turns the
    trainer's log history into more summary metrics (ppo's reward_mean).
    """
    from ftrun import collector
    from ftrun.divergence import divergence_callback

    collector.resume()  # set-up is over: freeze what it made (python -m ftrun paused the collector for it)
    release_free_pages()  # and what set-up freed goes back to the kernel: training would not reuse all of it
    checkpoint = checkpoint_to_resume(cfg, run_dir)
    trainer.add_callback(divergence_callback())  # every stage: a NaN loss or gradient stops the run
    from ftrun.progress import show_progress

    show_progress(trainer, cfg)  # one live line (a terminal) or plain lines, in place of raw dicts
    pruning = next((c for c in trainer.callback_handler.callbacks if type(c).__name__ == "PruningCallback"), None)
    if pruning is not None:
        pruning.trainer = trainer  # a rung's decay branch (hydra.sweeper.rung_branch) trains through it
    status = "FAILED"
    try:
        if checkpoint:
            log.info("Resuming from %s", checkpoint)
        phases = _phases
        phases.mark("prepare")  # a stage recipe's data, model and trainer (sft marked them already)
        train_time = _train(cfg, trainer, tracker, run_dir, checkpoint)
        release_free_pages()  # jemalloc kept training's freed pages for reuse; what follows would not reuse them
        phases.mark("train")
        if pruning is not None and pruning.paused_at_step is not None:  # hydra.sweeper.pruner=promotion
            _report_pause(cfg, trainer, tracker, run_dir, pruning, train_time)
            status = PAUSED_RUN_STATUS
            return None
        history = trainer.state.log_history
        # evaluations inside the loop count as evaluation, not training
        phases.move(sum(h.get("eval_runtime", 0.0) for h in history if "eval_runtime" in h), "train", "eval")
        metrics = _final_eval(trainer) if trainer.eval_dataset is not None else {}
        phases.mark("eval")
        metrics = {k: v for k, v in metrics.items() if k.startswith("eval_") and isinstance(v, (int, float))}
        if "eval_loss" in metrics:
            metrics["eval_perplexity"] = math.exp(min(metrics["eval_loss"], 50.0))
        train_losses = ([h["loss"] for h in history if "loss" in h]  # the run's mean if no step was logged
                        or [h["train_loss"] for h in history if "train_loss" in h])
        summary = {"train_time_s": train_time, "peak_memory_mb": peak_memory_mb(), "malloc": allocator_in_use(),
                   "hidden_libraries": hidden_now(),
                   "global_step": trainer.state.global_step}
        if best_step(trainer) is not None:  # the model saved below is that checkpoint's
            summary["best_step"] = best_step(trainer)
            log.info("Best checkpoint by %s: step %d (of %d)", cfg.objective, summary["best_step"],
                     trainer.state.global_step)
        if train_losses:
            summary["final_train_loss"] = train_losses[-1]
        if extra_metrics is not None:
            summary.update(extra_metrics(history))
        objective = _objective(cfg, {**metrics, **summary}, summary)
        summary.update(_sweep_summary(pruning, tracker, phases))

        model_dir = run_dir / MODEL_DIR
        trainer.save_model(str(model_dir))  # collective under DDP: every rank calls it
        if trainer.is_world_process_zero():
            tokenizer.save_pretrained(str(model_dir))
            trainer.state.save_to_json(str(run_dir / TRAINER_STATE))
            plot_loss(history, run_dir / LOSS_PLOT, title=cfg.name)
            phases.mark("save")
            tracker.log_metrics({**metrics, **summary, "pruned": float(summary["pruned"]), "objective": objective},
                                step=trainer.state.global_step)
            tracker.log_artifacts(run_dir, model_dir)
            phases.mark("tracking")
            summary["phases_s"] = {k: round(v, 4) for k, v in phases.spent.items() if k != "prepare" or v > 0.001}
            summary["peak_memory_breakdown_mb"] = _peak_breakdown(phases, tracker, trainer.state.global_step)
            _write_result(run_dir, cfg, objective, metrics, summary)
        log.info("Done: %s = %.4f after %d steps in %.1f s (peak memory %.0f MB)",
                 cfg.objective, objective, trainer.state.global_step, train_time, summary["peak_memory_mb"])
        status = "FINISHED"
        return objective
    except KeyboardInterrupt:  # Ctrl-C, or SIGTERM (ftrun.__main__): the board's Stop, a sweep stopping it
        status = "KILLED"
        raise
    finally:
        tracker.finish(status)


def _train(cfg, trainer, tracker, run_dir: Path, checkpoint: Optional[Path]) -> float:
    """``trainer.train()`` (resuming from ``checkpoint``), or just its weights when it is the last step's;
    the seconds it took. A diverged run is reported before it ends; a full disk ends with what to free."""
    from ftrun.divergence import Diverged

    start = time.perf_counter()
    try:
        if checkpoint and _at_last_step(checkpoint):
            _load_final_checkpoint(trainer, checkpoint)
        else:
            trainer.train(resume_from_checkpoint=str(checkpoint) if checkpoint else None)
    except Diverged as e:
        _report_divergence(cfg, trainer, tracker, run_dir, e, time.perf_counter() - start)
        raise
    except Exception as e:  # noqa: BLE001 - only a full disk is handled here; the rest re-raised as is
        if not _disk_full(e, run_dir):
            raise
        kept = last_checkpoint(run_dir)
        raise ConfigError(f"disk full under {run_dir} at step {trainer.state.global_step} ({e}); "
                          f"{'the last complete checkpoint is ' + str(kept) if kept else 'no checkpoint was kept'}"
                          ". Free space (or lower train.save_total_limit), then rerun with resume=auto") from None
    return time.perf_counter() - start


def _peak_breakdown(phases: Phases, tracker, step: int) -> Dict[str, float]:
    """Where the resident peak rose, by phase, also logged to MLflow as ``peak_memory_mb/<phase>``."""
    parts = {k: round(v, 1) for k, v in phases.peak_rise.items() if v >= 0.05}
    tracker.log_metrics({f"peak_memory_mb/{k}": v for k, v in parts.items()}, step=step)
    return parts


def _at_last_step(checkpoint: Path) -> bool:
    """Whether the checkpoint was written at the run's last step (a run killed after it, before its result)."""
    try:
        state = json.loads((Path(checkpoint) / TRAINER_STATE).read_text())
        return 0 < int(state.get("max_steps") or 0) <= int(state.get("global_step") or 0)
    except (OSError, ValueError, TypeError):
        return False


def _load_final_checkpoint(trainer, checkpoint: Path) -> None:
    """Take the weights and state of a checkpoint that has nothing left to train.

    ``trainer.train(resume_from_checkpoint=...)`` would train one step past ``max_steps`` when the
    checkpoint sits mid-epoch (transformers 5's loop skips the trained batches and then always steps).
    """
    from transformers import TrainerState

    log.info("%s is at the last step: nothing left to train, loading it", checkpoint)
    trainer._load_from_checkpoint(str(checkpoint))
    trainer.state = TrainerState.load_from_json(str(Path(checkpoint) / TRAINER_STATE))


def _sweep_summary(pruning, tracker, phases: Phases) -> dict:
    """What a sweep trial adds to its summary: whether its pruner stopped it (tagged in MLflow), and its rung decay
    branches' cost, moved apart from training."""
    summary = {"pruned": bool(pruning is not None and pruning.pruned)}
    if summary["pruned"]:
        from sweeper.trial import mark_pruned

        log.info("Pruned by the sweep at step %d", pruning.pruned_at_step)
        mark_pruned(tracker, pruning.pruned_at_step)
    if pruning is not None and pruning.branch_steps:
        summary.update({ATTR_BRANCH_STEPS: pruning.branch_steps, ATTR_BRANCH_S: round(pruning.branch_s, 3)})
        phases.move(pruning.branch_s, "train", "branch")
    return summary


PAUSED_RUN_STATUS = "SCHEDULED"
"""A paused trial's MLflow run status: it waits to be promoted, and the resumed trial reopens the same run."""


def _report_pause(cfg, trainer, tracker, run_dir: Path, pruning, train_time: float) -> None:
    """result.json with status "paused" (its checkpoint holds the state), and the MLflow run tagged with the rung."""
    step = trainer.state.global_step
    log.info("Paused at a rung of the sweep: step %d (%d examples); the sweep resumes it from %s if it is promoted",
             step, pruning.paused_at or 0, last_checkpoint(run_dir))
    tracker.set_tags({TAG_PAUSED_AT_STEP: str(step)})
    if pruning.branch_steps:
        tracker.log_metrics({ATTR_BRANCH_STEPS: pruning.branch_steps, ATTR_BRANCH_S: pruning.branch_s}, step=step)
    if trainer.is_world_process_zero():
        summary = {"status": "paused", ATTR_PAUSED_AT: pruning.paused_at, TAG_PAUSED_AT_STEP: step,
                   "global_step": step, "train_time_s": train_time, "pruned": False}
        _write_result(run_dir, cfg, None, {}, summary)


def _report_divergence(cfg, trainer, tracker, run_dir: Path, e, train_time: float) -> None:
    """result.json with status "diverged" and the reason, and the MLflow run tagged with it (it ends FAILED)."""
    from ftrun.divergence import STATUS

    log.error("%s", e)
    tracker.set_tags({"status": STATUS, TAG_FAIL_REASON: e.reason})
    # nonfinite_loss: the marker MlflowCallback logs for a NaN it sees, which analysis flags as divergence
    tracker.log_metrics({"diverged_at_step": e.step, "nonfinite_loss": 1.0}, step=e.step)
    if trainer.is_world_process_zero():
        summary = {"status": STATUS, "reason": e.reason, "diverged_at_step": e.step,
                   "global_step": trainer.state.global_step, "train_time_s": train_time, "pruned": False}
        _write_result(run_dir, cfg, None, {}, summary)


def _disk_full(e: BaseException, run_dir: Path) -> bool:
    """A write failed because the file system is full: ENOSPC anywhere in the chain, or (torch.save
    reports only a zip-writer error) less than 1 MiB left on the run directory's file system."""
    import errno
    import shutil

    chain = [e, e.__cause__, e.__context__]
    if any(isinstance(x, OSError) and x.errno in (errno.ENOSPC, errno.EDQUOT) for x in chain):
        return True
    text = " ".join(str(x) for x in chain if x is not None)
    if "No space left" in text:
        return True
    try:  # torch.save's zip writer says only "unexpected pos ..." when the disk fills under it
        return shutil.disk_usage(run_dir).free < 1 << 20
    except OSError:
        return False


def _final_eval(trainer) -> dict:
    """The eval metrics of the final weights: the best checkpoint's evaluation when the Trainer ended
    on it (``train.keep_best``), else the last evaluation's if it ran at the last step."""
    evals = [h for h in trainer.state.log_history if "eval_loss" in h]
    step = best_step(trainer)
    if step is None:
        step = trainer.state.global_step
    last = next((h for h in reversed(evals) if h.get("step") == step), None)
    return last if last is not None else trainer.evaluate()


def best_step(trainer) -> Optional[int]:
    """The step of the checkpoint the Trainer ended on when it keeps the best (load_best_model_at_end)."""
    if not trainer.args.load_best_model_at_end:
        return None
    return trainer.state.best_global_step or None


# ---------------------------------------------------------------------------
# metrics


def argmax_logits(logits, labels):
    """Keep only the argmax token ids, so evaluation does not hold full logits (ids already: as they are)."""
    if isinstance(logits, tuple):
        logits = logits[0]
    return logits if not logits.is_floating_point() else logits.argmax(dim=-1)


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
    return resident_peak_mb()


# ---------------------------------------------------------------------------
# checkpoints and the report


def checkpoint_to_resume(cfg, run_dir: Path) -> Optional[Path]:
    if cfg.resume == "never":
        if last_checkpoint(run_dir) is not None:
            raise ConfigError(f"resume=never: {run_dir} already holds checkpoints; "
                              "pass resume=auto to continue that run")
        return None
    if Path(cfg.resume).name.startswith("checkpoint-"):
        return Path(cfg.resume)
    return last_checkpoint(run_dir)


def _objective(cfg, metrics: dict, summary: dict) -> float:
    if cfg.objective in metrics:
        return float(metrics[cfg.objective])
    if "final_train_loss" in summary and cfg.objective in ("eval_loss", "eval_perplexity"):
        log.warning("objective=%s: no eval split, returning the final train loss instead", cfg.objective)
        return float(summary["final_train_loss"])
    raise ConfigError(f"objective={cfg.objective}: the run produced no such metric (have: {', '.join(metrics)})")


def _write_result(run_dir: Path, cfg, objective: Optional[float], metrics: dict, summary: dict) -> None:
    result = {"name": cfg.name, "status": "finished", "objective_name": cfg.objective, "objective": objective,
              **metrics, **summary}
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
    if train or evals:  # a run that logged no loss (fewer steps than train.logging_steps) has nothing to label
        ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def quiet_libraries() -> None:
    import os
    import warnings

    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    warnings.filterwarnings("ignore", message=".*is deprecated and will be removed in v6.*")
    from transformers.utils import logging as hf_logging

    if "TRANSFORMERS_VERBOSITY" not in os.environ:  # ftrun --quiet / --verbose, or the caller, set it
        hf_logging.set_verbosity_warning()
    from ftrun.terminal import display_mode

    if display_mode() != "live":  # no tqdm bars (loading weights, mapping data) in a log file or CI
        hf_logging.disable_progress_bar()
