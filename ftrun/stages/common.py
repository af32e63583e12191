"""What every stage recipe shares: the starting model, runs named by path or MLflow id,
the MLflow callbacks, and the train -> evaluate -> save -> report tail that ``run()`` has too.
"""

from __future__ import annotations

import copy
import json
import logging
import time
from pathlib import Path
from typing import Callable, Dict, Optional

from ftrun.config import ConfigError

log = logging.getLogger(__name__)

ADAPTER_CONFIG = "adapter_config.json"


# ---------------------------------------------------------------------------
# runs given as a directory or an MLflow run id


def resolve_run(ref: str, key: str) -> Path:
    """The run directory of ``ref``: a run directory, a run name directory
    (``outputs/<name>``: its newest run that saved a model), or an MLflow run id
    (its ``run_dir`` tag)."""
    path = Path(ref).expanduser()
    if path.is_dir():
        if (path / "model").is_dir():
            return path
        finished = sorted(d for d in path.iterdir() if (d / "model").is_dir())
        if finished:
            return finished[-1]  # run directories are named by timestamp
        return path
    import mlflow

    try:
        run = mlflow.get_run(ref)
    except Exception as e:  # MlflowException, or a store that cannot be reached
        raise ConfigError(f"{key}={ref}: neither a run directory nor an MLflow run id in "
                          f"{mlflow.get_tracking_uri()} ({str(e).splitlines()[0]})") from None
    run_dir = run.data.tags.get("run_dir")
    if not run_dir or not Path(run_dir).is_dir():
        raise ConfigError(f"{key}={ref}: the MLflow run's directory ({run_dir}) is not on this machine")
    return Path(run_dir)


def run_model_dir(ref: str, key: str) -> Path:
    """The ``model/`` a finished run saved (an adapter or full weights)."""
    model_dir = resolve_run(ref, key) / "model"
    if not (model_dir / ADAPTER_CONFIG).is_file() and not (model_dir / "config.json").is_file():
        raise ConfigError(f"{key}={ref}: {model_dir} holds no saved model; did that run finish?")
    return model_dir


def start_from_run(cfg, run_dir: Path):
    """The config with ``model.path`` at ``stage.init_run``'s model, its LoRA merged in
    (unchanged without ``stage.init_run``).

    A LoRA run's adapter is merged into its base once and saved under
    ``<run_dir>/init_model``, so every method (qlora included: it quantizes the
    merged weights when loading) starts from the same weights, and with LoRA the
    reference model is that start with the new adapter disabled.
    """
    if cfg.stage.init_run is None:
        return cfg
    src = run_model_dir(cfg.stage.init_run, "stage.init_run")
    path = src
    if (src / ADAPTER_CONFIG).is_file():
        path = run_dir / "init_model"
        if not (path / "config.json").is_file():
            log.info("Merging the adapter of %s into its base -> %s", src, path)
            from transformers import AutoModelForCausalLM, AutoTokenizer

            merged = _merge_adapter(AutoModelForCausalLM, src)
            merged.save_pretrained(str(path))
            AutoTokenizer.from_pretrained(str(src)).save_pretrained(str(path))
    log.info("Starting from %s", path)
    cfg = copy.deepcopy(cfg)
    cfg.model.path = str(Path(path).resolve())
    cfg.model.tiny = None
    return cfg


def load_reward_model(ref: str):
    """The rm run's reward model (LoRA merged) and tokenizer, frozen, for scoring completions."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    src = run_model_dir(ref, "stage.reward_run")
    if (src / ADAPTER_CONFIG).is_file():
        model = _merge_adapter(AutoModelForSequenceClassification, src, num_labels=1)
    else:
        model = AutoModelForSequenceClassification.from_pretrained(str(src), num_labels=1)
    if model.config.num_labels != 1:
        raise ConfigError(f"stage.reward_run={ref}: {src} is not a reward model (it has "
                          f"{model.config.num_labels} outputs); give an rm run")
    tokenizer = AutoTokenizer.from_pretrained(str(src))
    model.config.pad_token_id = tokenizer.pad_token_id
    model.eval().requires_grad_(False)
    return model, tokenizer


def _merge_adapter(auto_class, adapter_dir: Path, **kwargs):
    from peft import PeftModel

    base_path = json.loads((adapter_dir / ADAPTER_CONFIG).read_text())["base_model_name_or_path"]
    base = auto_class.from_pretrained(base_path, **kwargs)  # unquantized: merging into 4-bit weights is lossy
    return PeftModel.from_pretrained(base, str(adapter_dir)).merge_and_unload()


# ---------------------------------------------------------------------------
# the policy for dpo, kto and ppo


def load_policy(cfg):
    """(model, peft_config) for TRL's preference and RL trainers.

    For lora/qlora the trainer gets the base and a LoRA config and wraps the
    model itself; it then computes the reference log-probs with the adapter
    disabled, so the reference is the base, not a second copy in memory. For
    full and freeze the trainer loads the reference as a frozen copy.
    """
    from ftrun.model import apply_method, load_model, lora_config, prepare_quantized

    model = load_model(cfg)
    if cfg.method.name in ("lora", "qlora"):
        return prepare_quantized(model, cfg), lora_config(cfg)
    return apply_method(model, cfg), None


# ---------------------------------------------------------------------------
# MLflow: the stage's own metrics


def stage_callbacks(cfg, tracker) -> list:
    """The tracker's callback, one that records what TRL logs besides the loss, and
    the sweep's pruning callback when this run is an Optuna trial."""
    from sweeper.trial import pruning_callback

    callbacks = [tracker.callback(), pruning_callback(cfg)]
    if tracker.run_id is not None:
        callbacks.append(StageMetricsCallback(tracker))
    return [c for c in callbacks if c is not None]


def _callback_base():
    from transformers import TrainerCallback

    return TrainerCallback


class StageMetricsCallback(_callback_base()):
    """Logs TRL's stage metrics (rewards/accuracies, margins, reward, kl, policy_loss, ...).

    The tracker's own callback already records loss, learning rate, grad norm and
    the eval metrics of a log that has eval_loss; this one records the rest.
    """

    HANDLED = {"loss", "learning_rate", "grad_norm", "epoch", "total_flos", "train_loss", "num_tokens"}

    def __init__(self, tracker):
        self.tracker = tracker

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not state.is_world_process_zero or not logs:
            return
        has_eval_loss = "eval_loss" in logs
        metrics = {
            k: v for k, v in logs.items()
            if k not in self.HANDLED and isinstance(v, (int, float))
            and not (has_eval_loss and k.startswith("eval_"))
            and not k.endswith(("_runtime", "_per_second", "preparation_time"))
        }
        self.tracker.log_metrics(metrics, step=state.global_step)


# ---------------------------------------------------------------------------
# train, evaluate, save, report


def train_and_report(cfg, trainer, tokenizer, tracker, run_dir: Path,
                     extra_metrics: Optional[Callable[[list], Dict[str, float]]] = None) -> float:
    """Train (resuming if asked), evaluate, save the model and result.json, return the objective.

    The same tail as :func:`ftrun.train.run`; ``extra_metrics`` turns the
    trainer's log history into more summary metrics (ppo's reward_mean).
    """
    from ftrun.train import _checkpoint_to_resume, _objective, _write_result, peak_memory_mb, plot_loss

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
        trainer.save_model(str(model_dir))
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


def log_trainable(tracker, model, data_metrics: Dict[str, float]) -> None:
    from ftrun.model import count_parameters

    trainable, total = count_parameters(model)
    log.info("Trainable parameters: %s / %s (%.2f%%)", f"{trainable:,}", f"{total:,}", 100 * trainable / total)
    tracker.log_metrics({"trainable_params": trainable, "total_params": total, **data_metrics}, step=0)
