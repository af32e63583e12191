"""Finished runs: find one (run directory or MLflow run id), read its config, load its model.

A run directory (``outputs/<name>/<timestamp>/``) holds ``model/`` (a peft
adapter for lora/qlora, full weights otherwise, and the tokenizer with its chat
template) and the run's config (``config_resolved.yaml``, else Hydra's
``.hydra/config.yaml``). An MLflow run id is mapped to its run directory
through the run's ``run_dir`` tag.

:func:`resolve_run_dir` is the one rule runs are found by (tools and stages alike);
:class:`RunArgs` / :class:`LoadArgs` are the arguments the tools share; :func:`load`
is what predict, chat and serve share: ``run=`` (a run) or ``model=`` (any model
directory: an export, a base model, a bare adapter) -> model in eval mode +
tokenizer + where it came from.

Nothing here imports torch at module level.
"""

from __future__ import annotations

import logging
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from ftrun.attention import loading_name
from ftrun.config import ConfigError
from ftrun.contract import HYDRA_CONFIG, MODEL_DIR, RESOLVED_CONFIG, RUN_ID_FILE, TAG_RUN_DIR

log = logging.getLogger(__name__)

RUN_ID = re.compile(r"^[0-9a-f]{32}$")
CONFIG_FILES = (RESOLVED_CONFIG, HYDRA_CONFIG)
ADAPTER_CONFIG = "adapter_config.json"
DTYPES = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}


@dataclass
class RunArgs:
    """What every tool around a finished run is told (export, chat, predict, serve extend it)."""

    run: Optional[str] = None
    """A finished run: its directory (or outputs/<name> for its newest finished run) or its MLflow run id."""
    tracking_uri: Optional[str] = None
    """MLflow tracking URI where a run id is found (default: MLFLOW_TRACKING_URI) and export/predict log (the run's)."""


@dataclass
class LoadArgs(RunArgs):
    """A run or a model directory, and how its model loads (chat, predict, serve)."""

    model: Optional[str] = None
    """Or a model directory (an export, a base model) instead of run=."""
    device: str = "auto"
    """cpu, cuda, or auto."""
    dtype: str = "auto"
    """auto (as trained), fp32, bf16 or fp16."""


@dataclass
class Run:
    """A finished run on disk."""

    run_dir: Path
    cfg: object  # DictConfig, resolved
    mlflow_run_id: Optional[str] = None

    @property
    def model_dir(self) -> Path:
        return self.run_dir / MODEL_DIR

    @property
    def is_adapter(self) -> bool:
        return (self.model_dir / ADAPTER_CONFIG).is_file()

    @property
    def method(self) -> str:
        return str(self.cfg.method.name)


@dataclass
class Loaded:
    """A model ready for inference and where it came from."""

    model: object
    tokenizer: object
    source: str
    """What was loaded, in words (for logs and banners)."""
    run: Optional[Run] = None
    notes: list = field(default_factory=list)


# ---------------------------------------------------------------------------
# finding a run


def resolve_run_dir(ref: str, tracking_uri: Optional[str] = None, key: str = "run") -> Path:
    """The run directory of ``ref``, the one rule every tool and stage finds runs by: a run directory
    (or its ``model/``), a run name directory (``outputs/<name>``: its newest run that saved a model), or
    an MLflow run id (its ``run_dir`` tag). ``key`` is the override named in errors."""
    ref = str(ref)
    p = Path(ref).expanduser()
    if p.is_dir():
        if p.name == MODEL_DIR and not _has_config(p) and _has_config(p.parent):
            p = p.parent
        if not (p / MODEL_DIR).is_dir():
            finished = sorted(d for d in p.iterdir() if (d / MODEL_DIR).is_dir())
            if not finished:
                raise ConfigError(f"{key}={ref}: {p} holds no model/ directory; is it a finished run? (give "
                                  "outputs/<name>/<timestamp>" + (", or model=PATH for a plain model directory)"
                                                                  if key == "run" else ")"))
            p = finished[-1]  # run directories are named by timestamp
        return p.resolve()
    if RUN_ID.match(ref):
        return _run_dir_from_mlflow(ref, tracking_uri, key)
    raise ConfigError(f"{key}={ref}: no such directory, and not an MLflow run id (32 hex digits)")


def _has_config(p: Path) -> bool:
    return any((p / f).is_file() for f in CONFIG_FILES)


def _run_dir_from_mlflow(run_id: str, tracking_uri: Optional[str], key: str) -> Path:
    import mlflow

    if tracking_uri:
        mlflow.set_tracking_uri(tracking_uri)
    try:
        info = mlflow.MlflowClient().get_run(run_id)
    except Exception as e:  # noqa: BLE001 - MlflowException, or a store that cannot be reached
        raise ConfigError(f"{key}={run_id}: neither a run directory nor an MLflow run id in "
                          f"{mlflow.get_tracking_uri()} ({str(e).splitlines()[0]}); set MLFLOW_TRACKING_URI"
                          + (" or tracking_uri=" if key == "run" else "")) from None
    run_dir = info.data.tags.get(TAG_RUN_DIR)
    if not run_dir:
        raise ConfigError(f"{key}={run_id}: the MLflow run has no run_dir tag; give its run directory instead")
    if not Path(run_dir).is_dir():
        raise ConfigError(f"{key}={run_id}: its run directory {run_dir} (MLflow tag run_dir) is not on this machine")
    return Path(run_dir)


def load_run_config(run_dir: Path):
    """The run's resolved config (``config_resolved.yaml``, else ``.hydra/config.yaml``)."""
    from omegaconf import OmegaConf

    from ftrun.config import register_configs

    for name in CONFIG_FILES:
        f = Path(run_dir) / name
        if f.is_file():
            register_configs()  # .hydra/config.yaml still holds ${ftrun_run_name:} and friends
            data = OmegaConf.to_container(OmegaConf.load(f), resolve=True)
            data.pop("hydra", None)
            return OmegaConf.create(data)
    raise ConfigError(f"run={run_dir}: no config_resolved.yaml or .hydra/config.yaml in it, "
                      "so the base model is unknown; use model=PATH instead")


def open_run(ref: str, tracking_uri: Optional[str] = None) -> Run:
    run_dir = resolve_run_dir(ref, tracking_uri)
    cfg = load_run_config(run_dir)
    id_file = run_dir / RUN_ID_FILE
    run_id = id_file.read_text().strip() if id_file.is_file() else None
    return Run(run_dir=run_dir, cfg=cfg, mlflow_run_id=run_id or None)


def base_model_path(run: Run) -> str:
    """Where the run's base model lives (building the tiny model if it is not cached)."""
    from ftrun.model import model_path

    return model_path(run.cfg.model)


# ---------------------------------------------------------------------------
# loading


def torch_dtype(name: Optional[str], default=None):
    """``fp32``/``bf16``/``fp16``/``auto`` -> a torch dtype (``auto``/None -> ``default``)."""
    import torch

    if name in (None, "auto"):
        return default
    if name not in DTYPES:
        raise ConfigError(f"dtype={name}: choose auto, {', '.join(DTYPES)}")
    return getattr(torch, DTYPES[name])


def run_dtype(run: Run):
    """The dtype the run's base weights were loaded in (None = the checkpoint's own)."""
    import torch

    if run.cfg.get("precision") == "pure_bf16":
        return torch.bfloat16
    return torch_dtype(run.cfg.model.get("dtype", "auto"))


def pick_device(name: str = "auto") -> str:
    import torch

    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"device={name}: no CUDA GPU here; use device=cpu")
    return name


def load_tokenizer(path) -> object:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(path))
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return tok


def load_base(run: Run, dtype=None, device: str = "cpu", quantized: bool = True):
    """The run's base model: 4/8-bit as trained for qlora when ``quantized``, else plain in ``dtype``."""
    from transformers import AutoModelForCausalLM

    m = run.cfg.model
    if quantized and run.method == "qlora":
        from omegaconf import OmegaConf

        from ftrun.model import load_model

        cfg = OmegaConf.create(OmegaConf.to_container(run.cfg))
        cfg.train.gradient_checkpointing = False
        return load_model(cfg)  # quantized exactly as in training (on the GPU when there is one)
    kwargs = {"trust_remote_code": bool(m.get("trust_remote_code", False)),
              "attn_implementation": loading_name(m.get("attn_implementation", "sdpa"))}  # generation pads
    dtype = dtype if dtype is not None else run_dtype(run)
    if dtype is not None:
        kwargs["dtype"] = dtype
    return AutoModelForCausalLM.from_pretrained(base_model_path(run), **kwargs).to(device)


def load_run_model(run: Run, dtype=None, device: str = "cpu", quantized: bool = True):
    """Base + adapter (lora/qlora) or the full weights (full/freeze), in eval mode."""
    from transformers import AutoModelForCausalLM

    if run.is_adapter:
        from peft import PeftModel

        base = load_base(run, dtype=dtype, device=device, quantized=quantized)
        model = PeftModel.from_pretrained(base, str(run.model_dir))
    else:
        kwargs = {"dtype": dtype if dtype is not None else run_dtype(run)}
        model = AutoModelForCausalLM.from_pretrained(str(run.model_dir), **{k: v for k, v in kwargs.items() if v})
        model = model.to(device)
    return model.eval()


def load(run: Optional[str] = None, model: Optional[str] = None, dtype: str = "auto", device: str = "auto",
         tracking_uri: Optional[str] = None) -> Loaded:
    """What chat and predict talk to: ``run=`` a finished run, or ``model=`` a model directory."""
    if (run is None) == (model is None):
        raise ConfigError("give exactly one of run=RUN_DIR_OR_MLFLOW_RUN_ID or model=PATH")
    device = pick_device(device)
    dt = torch_dtype(dtype)
    if run is not None:
        r = open_run(run, tracking_uri)
        m = load_run_model(r, dtype=dt, device=device)
        kind = f"{r.method} adapter on {base_model_path(r)}" if r.is_adapter else f"{r.method} weights"
        notes = ["qlora: the base runs quantized, as in training (export the run for an unquantized model)"] \
            if r.method == "qlora" else []
        return Loaded(m, load_tokenizer(r.model_dir), f"run {r.run_dir} ({kind})", run=r, notes=notes)
    path = Path(model).expanduser()
    if (path / ADAPTER_CONFIG).is_file():  # a bare adapter directory: its config names the base
        from peft import AutoPeftModelForCausalLM

        m = AutoPeftModelForCausalLM.from_pretrained(str(path), **({"dtype": dt} if dt else {})).to(device).eval()
        return Loaded(m, load_tokenizer(path), f"adapter {path}")
    if not path.exists() and not (str(model).count("/") == 1 and not str(model).startswith((".", "/", "~"))):
        raise ConfigError(f"model={model}: no such directory")
    from transformers import AutoModelForCausalLM

    try:
        m = AutoModelForCausalLM.from_pretrained(str(path) if path.exists() else model,
                                                 **({"dtype": dt} if dt else {})).to(device).eval()
    except OSError as e:
        raise ConfigError(f"model={model}: cannot load a model from it ({str(e).splitlines()[0]})") from None
    return Loaded(m, load_tokenizer(path if path.exists() else model), f"model {model}")


def quiet() -> None:
    """Keep library chatter (weight-loading bars, kernel hints) out of tool output."""
    import warnings

    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    warnings.filterwarnings("ignore", message=".*kernels.*")
    warnings.filterwarnings("ignore", category=FutureWarning)
    try:
        from transformers.utils import logging as hf_logging

        hf_logging.set_verbosity_error()
        hf_logging.disable_progress_bar()
    except ImportError:  # pragma: no cover
        pass
    logging.getLogger("bitsandbytes").setLevel(logging.ERROR)


# ---------------------------------------------------------------------------
# data rows


def run_rows(data_cfg):
    """(train rows, eval rows) of a ``data`` config, whatever row shape ftrun.data returns."""
    from ftrun.data import load_rows

    train, evals = load_rows(data_cfg)
    return list(train), list(evals or [])


def row_messages(row: dict) -> list:
    """A row (Alpaca columns or ``{"messages": [...]}``) as chat messages."""
    if "messages" in row:
        return [dict(m) for m in row["messages"]]
    from ftrun.data import to_messages

    return to_messages(row)
