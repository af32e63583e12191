"""Optional libraries a run does not use, kept out of its process.

The libraries a run stands on import some optional libraries whenever they are installed, whether the run
uses them or not: peft imports bitsandbytes (for its 4- and 8-bit layers), accelerate imports DeepSpeed (to
unwrap a ``DeepSpeedEngine`` when the Trainer starts), datasets imports scipy (every ``load_dataset`` patches
``scipy.io.loadmat`` for streaming), MLflow's ``start_run`` imports IPython (to look for a Databricks notebook's
``dbutils``), and httpcore2 (huggingface_hub's HTTP client) imports trio (for its trio backend). On the tiny
model's packed alpaca job (bench/peer_llamafactory.py, 2 AMD EPYC cores) they raised a LoRA run's peak resident
memory from 760 to 878 MB: bitsandbytes 45 MB, DeepSpeed 15 MB, scipy 35 MB, IPython 18 MB, trio 5 MB (and boto3,
below, 9 MB).

A run that does not need one hides it: ``sys.modules[name] = None``. Python's import system then ends
``import name`` with an ImportError, and ``importlib.util.find_spec(name)`` returns None, which is how these
libraries ask whether an optional library is installed (``peft.import_utils.is_bnb_available``,
``accelerate.utils.is_deepspeed_available``, datasets' patching), so they take their not-installed branches.

A run needs bitsandbytes for ``method=qlora`` with ``method.quant_method=bnb``, the 8-bit optimizers, and a
base model that may be quantized already: a hub id (its config.json is not read before the run), a local model
whose config.json has a ``quantization_config``, a model from another run (``stage.init_run``,
``stage.reward_run``). It needs DeepSpeed for ``sharding=zero2``/``zero3`` or a launcher that asks for it
(``ACCELERATE_USE_DEEPSPEED``), and scipy for Optuna's Wilcoxon pruner (it runs ``scipy.stats`` in the trial's
process); no run needs IPython or trio (a training process is not a notebook, and nothing in it runs on trio).
accelerate imports boto3 (for its SageMaker config command, 9 MB with botocore): a run needs it only for MLflow
artifacts in S3, so it is kept when MLflow is on and its tracking URI is not a local file or sqlite store (a
server's artifact store may be S3) or the environment names an S3 endpoint; a local store whose experiment was
made with an ``s3://`` artifact location gets it back when the run opens that experiment (:func:`unhide`, from
:mod:`ftrun.tracking`), before anything is logged.
A sweep's warm workers hide what no trial of the sweep can need (:func:`unused_in_sweep`).

``FTRUN_UNUSED_LIBRARIES`` (:data:`ftrun.contract.UNUSED_LIBRARIES_ENV`) overrides the choice: the libraries to
hide, comma-separated; empty hides none.
"""

from __future__ import annotations

import importlib.util
import json
import os
import sys
from typing import Iterable, List, Mapping, Optional, Sequence

from ftrun.contract import ACCELERATE_DEEPSPEED_ENV, MLFLOW_URI_ENV, OPTUNA_PRUNER_ENV, UNUSED_LIBRARIES_ENV

CANDIDATES = ("bitsandbytes", "deepspeed", "scipy", "IPython", "trio", "boto3")
"""The optional libraries a run may keep out of its process."""
EIGHT_BIT_OPTIMIZERS = ("adamw_8bit", "galore_8bit")
"""optimizer names that run on bitsandbytes."""
# the keys (config groups and fields) that decide what a run needs: a sweep that varies one may give a trial a need
# its workers' base config does not have
_DECIDING_KEYS = ("method", "method.name", "method.quant_method", "optimizer", "optimizer.name", "sharding",
                  "sharding.name", "model", "model.path", "stage", "stage.init_run", "stage.reward_run", "tracking",
                  "tracking.enabled", "tracking.uri")
GIVEN_BACK = ("boto3",)
"""Candidates that can be given back after the stack imported without them: their users import them only at use."""
LOCAL_STORES = ("sqlite:", "file:")
"""Tracking URI schemes whose artifacts stay on this machine (unless an experiment says otherwise)."""
S3_ENVIRONMENT = ("MLFLOW_S3_ENDPOINT_URL", "MLFLOW_DEFAULT_ARTIFACT_ROOT")
"""Environment variables that point MLflow's artifacts at another store."""


def needed(cfg, environ: Mapping[str, str] = os.environ) -> List[str]:
    """The candidates the run of ``cfg`` needs (in the process ``environ`` describes)."""
    from ftrun.config.model_dir import looks_local
    from ftrun.config.model_json import read_config_json

    out = []
    m, md, st = cfg.method, cfg.model, cfg.stage
    quantized_base = md.path is not None and (
        not looks_local(str(md.path)) or "quantization_config" in (read_config_json(md.path) or {}))
    if ((m.name == "qlora" and m.quant_method == "bnb") or cfg.optimizer.name in EIGHT_BIT_OPTIMIZERS
            or quantized_base or st.get("init_run") or st.get("reward_run")):
        out.append("bitsandbytes")
    if cfg.sharding.name in ("zero2", "zero3") or environ.get(ACCELERATE_DEEPSPEED_ENV, "").lower() in ("1", "true"):
        out.append("deepspeed")
    if "wilcoxon" in environ.get(OPTUNA_PRUNER_ENV, "").lower():
        out.append("scipy")
    if cfg.tracking.enabled and not _local_tracking(cfg.tracking.uri or environ.get(MLFLOW_URI_ENV), environ):
        out.append("boto3")
    return out


def _local_tracking(uri: Optional[str], environ: Mapping[str, str]) -> bool:
    """Whether MLflow at ``uri`` keeps its artifacts on this machine (MLflow's default store when None)."""
    if any(environ.get(name) for name in S3_ENVIRONMENT):
        return False
    return uri is None or uri.startswith(LOCAL_STORES) or ("://" not in uri and ":" not in uri[2:])  # a path


def unhide(name: str) -> bool:
    """Let this process import ``name`` again; whether it was hidden."""
    if name in sys.modules and sys.modules[name] is None:
        del sys.modules[name]
        return True
    return False


def named(environ: Mapping[str, str] = os.environ) -> Optional[List[str]]:
    """The libraries ``FTRUN_UNUSED_LIBRARIES`` names; None when it is not set."""
    given = environ.get(UNUSED_LIBRARIES_ENV)
    return None if given is None else [name.strip() for name in given.split(",") if name.strip()]


def unused(cfg, environ: Mapping[str, str] = os.environ) -> List[str]:
    """The candidates to hide from the run of ``cfg``: those ``FTRUN_UNUSED_LIBRARIES`` names if it is set, else
    those it does not need."""
    given = named(environ)
    if given is not None:
        return given
    need = needed(cfg, environ)
    return [name for name in CANDIDATES if name not in need]


def unused_in_sweep(job_cfg, varied: Sequence[str], pruner: Optional[object]) -> List[str]:
    """What a sweep's warm workers can hide: what the base config ``job_cfg`` does not need, unless the sweep
    varies a key that decides it (``varied``: the search space's keys); scipy unless the ``pruner`` is Wilcoxon."""
    if any(key in _DECIDING_KEYS for key in varied):
        return []
    environ = {**os.environ, OPTUNA_PRUNER_ENV: json.dumps(pruner, default=str)}
    environ.pop(UNUSED_LIBRARIES_ENV, None)
    return unused(job_cfg, environ)


def hide(names: Iterable[str]) -> List[str]:
    """Keep ``names`` out of this process; returns those hidden (not one imported already or not installed)."""
    hidden = []
    for name in names:
        if sys.modules.get(name, False) is False and importlib.util.find_spec(name) is not None:
            sys.modules[name] = None
            hidden.append(name)
    return hidden


def hidden_now() -> List[str]:
    """The candidates this process keeps out (``result.json``'s ``hidden_libraries``)."""
    return [name for name in CANDIDATES if name in sys.modules and sys.modules[name] is None]


def check_trial(cfg) -> None:
    """In a warm worker: give back what can be given back (boto3, imported only where artifacts go to S3), refuse a
    trial that needs another library the worker hid (the sweeper should not send one)."""
    missing = [name for name in needed(cfg) if name in hidden_now() and not (name in GIVEN_BACK and unhide(name))]
    if missing:
        raise RuntimeError(f"this trial needs {', '.join(missing)}, which its warm worker hid "
                           f"({UNUSED_LIBRARIES_ENV}); rerun with hydra.sweeper.workers=fresh")
