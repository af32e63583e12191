"""The run's configuration: its schema, the names a knob answers to, and the checks before anything loads.

One module per concern; every name other modules use is re-exported here, so
``from ftrun.config import validate`` keeps working:

- :mod:`~ftrun.config.choices`: the Enums of keys with a fixed set of values.
- :mod:`~ftrun.config.schema`: one structured config per group (one docstring per
  field), registered in Hydra's ConfigStore by :func:`register_configs`.
- :mod:`~ftrun.config.resolvers`: the interpolations behind the run's name and directory.
- :mod:`~ftrun.config.short_keys`: ``lr`` is ``optimizer.lr``; :func:`canonical_overrides`.
- :mod:`~ftrun.config.objectives`: the metrics a run returns, per stage, with their direction.
- :mod:`~ftrun.config.validation`: :func:`validate`, one check function per group.
- :mod:`~ftrun.config.model_json`: the one reader of a model's ``config.json``.
- :mod:`~ftrun.config.device_check`: :func:`validate_device` (precision and packages; imports torch).
- :mod:`~ftrun.config.resume` and :mod:`~ftrun.config.differences`: what a run resumes, and whether it may.
- :mod:`~ftrun.config.containers`: the config as plain data.
- :mod:`~ftrun.config.errors`: :class:`ConfigError`, the one error a user mistake raises.

Nothing here imports torch at import time: composing a config must stay fast.
"""

from __future__ import annotations

from ftrun.config.choices import (ATTN, DPO_LOSSES, DTYPES, METHODS, OPTIMIZERS, PPO_LOSSES, PRECISIONS,
                                  PROJECTED_OPTIMIZERS, ROPE_TYPES, SCHEDULERS, SHARDINGS, STAGES, TEMPLATES, Attn,
                                  Choice, ComputeDtype, DataFormat, DPOLoss, Dtype, Method, Mix, MixStop, Optimizer,
                                  PPOLoss, Precision, QuantMethod, QuantType, RopeType, ScaleRewards, Scheduler,
                                  Sharding, Stage, SwitchMode, TemplateName)
from ftrun.config.containers import flatten, resolved, to_container
from ftrun.config.device_check import validate_device
from ftrun.config.differences import NOT_TRAINING_KEYS, RECORDING_KEYS, training_differences
from ftrun.config.errors import ConfigError
from ftrun.config.model_json import model_arch, read_config_json
from ftrun.config.objectives import (GENERATIVE_OBJECTIVES, OBJECTIVE_DIRECTIONS, STAGE_OBJECTIVES, has_eval,
                                     keep_best)
from ftrun.config.resolvers import format_lr, is_main_process
from ftrun.config.resume import find_resumable_run, last_checkpoint
from ftrun.config.schema import (Config, DataConfig, GenerateConfig, MethodConfig, ModelConfig, OptimizerConfig,
                                 PPOSettings, SchedulerConfig, ShardingConfig, StageConfig, TinyArch, TrackingConfig,
                                 TrainConfig, register_configs, schema_defaults)
from ftrun.config.short_keys import ALIASES, LLAMAFACTORY_NAMES, SHORT_KEYS, canonical_overrides, display_key
from ftrun.config.validation import PACKING_STAGES, validate

__all__ = [
    # choices
    "ATTN", "DPO_LOSSES", "DTYPES", "METHODS", "OPTIMIZERS", "PPO_LOSSES", "PRECISIONS", "PROJECTED_OPTIMIZERS",
    "ROPE_TYPES", "SCHEDULERS", "SHARDINGS", "STAGES", "TEMPLATES", "Attn", "Choice", "ComputeDtype", "DataFormat",
    "DPOLoss", "Dtype", "Method", "Mix", "MixStop", "Optimizer", "PPOLoss", "Precision", "QuantMethod", "QuantType",
    "RopeType", "ScaleRewards", "Scheduler", "Sharding", "Stage", "SwitchMode", "TemplateName",
    # schema and registration
    "Config", "DataConfig", "GenerateConfig", "MethodConfig", "ModelConfig", "OptimizerConfig", "PPOSettings",
    "SchedulerConfig", "ShardingConfig", "StageConfig", "TinyArch", "TrackingConfig", "TrainConfig",
    "register_configs", "schema_defaults", "format_lr", "is_main_process",
    # names a knob answers to
    "ALIASES", "LLAMAFACTORY_NAMES", "SHORT_KEYS", "canonical_overrides", "display_key",
    # objectives
    "GENERATIVE_OBJECTIVES", "OBJECTIVE_DIRECTIONS", "STAGE_OBJECTIVES", "has_eval", "keep_best",
    # checks
    "ConfigError", "PACKING_STAGES", "validate", "validate_device", "model_arch",
    "read_config_json",
    # resume
    "NOT_TRAINING_KEYS", "RECORDING_KEYS", "find_resumable_run", "last_checkpoint", "training_differences",
    # containers
    "flatten", "resolved", "to_container",
]
