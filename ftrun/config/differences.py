"""What changed between a recorded run's config and this one, as far as training is concerned.

A checkpoint resumes only when nothing that changes the weights or the data order
differs (:func:`training_differences`); where or how the run is recorded may change
(:data:`NOT_TRAINING_KEYS`).
"""

from __future__ import annotations

from typing import Dict

from omegaconf import OmegaConf

from ftrun.config.containers import flatten, to_container
from ftrun.config.errors import show_value
from ftrun.config.schema import schema_defaults
from ftrun.config.short_keys import ALIASES, display_key


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
        if key not in then and key in defaults and show_value(defaults[key]) == show_value(now.get(key)):
            continue  # a knob added after that run was recorded, at the default that matches how it ran
        a, b = then.get(key, "unset"), now.get(key, "unset")
        if show_value(a) != show_value(b):
            out[display_key(key)] = (show_value(a), show_value(b))
    return out
