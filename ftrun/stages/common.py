"""What every stage recipe shares: its data (:func:`prepare_data`), the starting model (a run's
saved model, found by :func:`ftrun.saved_runs.resolve_run_dir`), the tracker (:func:`start_tracking`)
and the MLflow callbacks.
The train -> evaluate -> save -> report tail is :mod:`ftrun.fit`'s.
"""

from __future__ import annotations

import copy
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from ftrun.config import ConfigError
from ftrun.contract import MODEL_DIR
from ftrun.saved_runs import resolve_run_dir

log = logging.getLogger(__name__)

ADAPTER_CONFIG = "adapter_config.json"


# ---------------------------------------------------------------------------
# data: the same for every stage, before any model loads


@dataclass
class StageData:
    """A stage's tokenizer and data (:func:`ftrun.data.build_datasets` says what each stage gets)."""

    tokenizer: Any
    train: Any
    eval: Optional[Any]
    report: Any


def prepare_data(cfg) -> StageData:
    """Seed, then the tokenizer and ``cfg.stage.name``'s data through :mod:`ftrun.data`.

    Runs before any model loads, so bad data fails first. The tokenizer is the
    starting model's: ``stage.init_run``'s saved one (with the chat template that
    run trained with), else the base model's; ``model.template`` applies either way.
    A warm sweep worker builds each data config once.
    """
    from transformers import set_seed

    from ftrun import worker_cache
    from ftrun.config import to_container
    from ftrun.data import build_datasets
    from ftrun.model import load_tokenizer
    from ftrun.fit import current_phases

    phases = current_phases()
    set_seed(cfg.seed)
    log.info("Seed %d", cfg.seed)
    model_cfg = cfg.model
    if cfg.stage.init_run is not None:
        model_cfg = copy.deepcopy(cfg.model)
        model_cfg.path, model_cfg.tiny = str(run_model_dir(cfg.stage.init_run, "stage.init_run")), None
    phases.mark("setup")  # checks and imports (in a fresh process most of it is importing)
    log.info("Loading tokenizer for model '%s'", cfg.model.name)
    tokenizer = load_tokenizer(model_cfg)
    log.info("Building %s data '%s' (cutoff_len=%d)", cfg.stage.name, cfg.data.name, cfg.data.cutoff_len)
    train, evals, report = worker_cache.shared(
        "tokenized data", {"data": to_container(cfg.data), "model": to_container(model_cfg),
                           "stage": str(cfg.stage.name)},
        lambda: build_datasets(cfg.data, tokenizer, stage=str(cfg.stage.name)))
    log.info("Data: %d train / %d eval rows", len(train), len(evals) if evals is not None else 0)
    phases.mark("data")
    return StageData(tokenizer, train, evals, report)


def start_tracking(cfg, run_dir: Path, overrides):
    """The run's tracker (MLflow, or one that records nothing with tracking.enabled=false)."""
    from ftrun.tracking import make_tracker
    from ftrun.fit import current_phases

    phases = current_phases()
    phases.mark("model")
    tracker = make_tracker(cfg, run_dir, overrides)
    phases.mark("tracking")
    return tracker


def log_start(tracker, model, data: StageData) -> None:
    """The trainable parameter count (of the model the trainer trains) and the data report, at step 0."""
    from ftrun.model import count_parameters

    trainable, total = count_parameters(model)
    log.info("Trainable parameters: %s / %s (%.2f%%)", f"{trainable:,}", f"{total:,}", 100 * trainable / total)
    tracker.log_metrics({"trainable_params": trainable, "total_params": total,
                         **data.report.as_metrics("data_train")}, step=0)


# ---------------------------------------------------------------------------
# starting from a run's saved model


def run_model_dir(ref: str, key: str) -> Path:
    """The ``model/`` a finished run saved (an adapter or full weights); runs are found as
    :func:`ftrun.saved_runs.resolve_run_dir` finds them."""
    model_dir = resolve_run_dir(ref, key=key) / MODEL_DIR
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
