"""The Train form, built from the config schema: one field per override key, and back to a command line.

Each field is an override key as a user types it (``lr``, ``method.dropout``,
``model``). Its widget kind, choices and help text come from the structured
config (:mod:`ftrun.config`: the field's type, its Enum, its one-line
docstring via :func:`ftrun.cli.field_docs`); a group's choices are the presets
in ``ftrun/conf/<group>/``. A field's default is what ``ftrun`` would run with
the chosen groups (composed, not copied), so the command the page shows holds
only what the user changed, and is checked by the CLI's own path
(:func:`ftrun.compose.compose` then :func:`ftrun.config.validate`).
Nothing here imports gradio or torch.
"""

from __future__ import annotations

import dataclasses
import functools
import shlex
import sys
import threading
import typing
from dataclasses import dataclass
from enum import Enum
from typing import Any, Dict, List, Optional, Sequence

# the groups a run is made of, then the knobs LLaMA-Factory's Train tab sets, then what makes a run short
GROUPS = ("model", "method", "stage", "data", "optimizer", "scheduler")
KNOBS = (
    "lr", "epochs", "max_steps", "cutoff_len", "batch_size", "grad_accum",
    "scheduler.warmup_ratio", "scheduler.warmup_steps", "precision",
    "rank", "alpha", "method.dropout", "method.target_modules", "method.bits", "method.trainable_layers",
    "data.val_size", "data.packing", "data.num_train", "data.num_eval", "data.max_samples",
    "train.logging_steps", "train.eval_steps", "train.save_steps", "seed",
)
TRAIN_KEYS = GROUPS + KNOBS


@dataclass(frozen=True)
class Field:
    key: str
    """The override key as typed (the short spelling when there is one)."""
    home: str
    """Where the value lives in the composed config."""
    kind: str
    """group, choice, bool, int, float, list or str."""
    choices: tuple
    """Presets of a group, values of an Enum; empty otherwise."""
    optional: bool
    """null is a valid value."""
    help: str
    """The schema's docstring of the field."""


def _hints(cls) -> Dict[str, Any]:
    return typing.get_type_hints(cls, vars(sys.modules[cls.__module__]))


def field(key: str) -> Field:
    """The form field of override ``key``, read off the schema (:class:`ftrun.config.Config`)."""
    with _schema_lock:  # field_docs parses source with ast, which CPython 3.11 cannot do in two threads at once
        return _field(key)


_schema_lock = threading.Lock()


@functools.lru_cache(maxsize=None)
def _field(key: str) -> Field:
    from ftrun.cli import field_docs
    from ftrun.compose import conf_dir
    from ftrun.config import ALIASES, Config

    home = ALIASES.get(key, key)
    cls, tp, doc = Config, None, ""
    for part in home.split("."):
        hints = _hints(cls)
        if part not in hints:
            raise KeyError(f"{key}: not a key of the config schema")
        tp, doc = hints[part], field_docs(cls).get(part, "")
        cls = _unwrap(tp)[0]
    base, optional = _unwrap(tp)
    if "." not in home and dataclasses.is_dataclass(base):
        choices = tuple(sorted(p.stem for p in (conf_dir() / home).glob("*.yaml")))
        return Field(key, home, "group", choices, False, doc)
    if isinstance(base, type) and issubclass(base, Enum):
        return Field(key, home, "choice", tuple(m.value for m in base), optional, doc)
    kind = {bool: "bool", int: "int", float: "float", str: "str"}.get(base, "list" if base is list else "str")
    return Field(key, home, kind, (), optional, doc)


_compose_lock = threading.Lock()


def compose(overrides: Sequence[str] = (), return_hydra_config: bool = False):
    """:func:`ftrun.compose.compose`, one call at a time: Hydra's global state is not thread-safe, and the
    page's events run in threads."""
    from ftrun.compose import compose as hydra_compose

    with _compose_lock:
        return hydra_compose(overrides, return_hydra_config=return_hydra_config)


def _unwrap(tp) -> tuple:
    """(the type without Optional and generics, whether None is allowed)."""
    args = typing.get_args(tp)
    optional = type(None) in args
    if typing.get_origin(tp) is typing.Union:
        tp = next(a for a in args if a is not type(None))
    origin = typing.get_origin(tp)
    return (origin or tp), optional


def fields(keys: Sequence[str] = TRAIN_KEYS) -> List[Field]:
    return [field(k) for k in keys]


# ---------------------------------------------------------------------------
# values <-> overrides


def defaults(groups: Dict[str, str]) -> Dict[str, Any]:
    """What ``ftrun <group choices>`` runs with, for every knob (as the form shows it)."""
    return dict(_defaults(tuple(f"{g}={v}" for g, v in sorted(groups.items()) if v)))


@functools.lru_cache(maxsize=64)
def _defaults(choices: tuple) -> Dict[str, Any]:
    from omegaconf import OmegaConf

    cfg = compose(choices, return_hydra_config=True)
    picked = OmegaConf.to_container(cfg.hydra.runtime.choices)
    out: Dict[str, Any] = {}
    for f in fields():
        if f.kind == "group":
            out[f.key] = picked.get(f.key)
        else:
            out[f.key] = shown(f, OmegaConf.select(cfg, f.home))
    return out


def regroup(before: Dict[str, str], values: Dict[str, Any]) -> Dict[str, Any]:
    """The groups in ``values`` replaced ``before``: the knobs the user left at the old preset's value
    take the new preset's (``data=alpaca`` brings its own ``data.val_size``); the ones they set stay."""
    old, new = defaults(before), defaults({g: values.get(g) for g in GROUPS})
    return {f.key: new[f.key] for f in fields(KNOBS)
            if f.key in values and _same(f, values[f.key], old[f.key]) and not _same(f, old[f.key], new[f.key])}


def shown(f: Field, value: Any) -> Any:
    """A config value as its widget holds it."""
    from omegaconf import ListConfig

    if f.kind == "list":
        items = list(value) if isinstance(value, (list, tuple, ListConfig)) else []
        return "[" + ",".join(str(v) for v in items) + "]"
    if isinstance(value, Enum):
        return value.value
    return value


def override_value(f: Field, value: Any) -> str:
    if value is None or value == "":
        return "null"
    if f.kind == "bool":
        return "true" if value else "false"
    if f.kind == "int":
        return str(int(value))
    if f.kind == "float":
        v = float(value)
        return str(int(v)) if v.is_integer() and abs(v) < 1e15 else repr(v)
    return str(value)


def _same(f: Field, a: Any, b: Any) -> bool:
    if f.kind in ("int", "float") and a is not None and b is not None and a != "" and b != "":
        return float(a) == float(b)
    return override_value(f, a) == override_value(f, b)


def to_overrides(values: Dict[str, Any], extra: str = "", skip: Sequence[str] = ()) -> List[str]:
    """The overrides that make ``ftrun`` run what the form shows: the groups that differ from the
    default, then every knob that differs from those groups' defaults, then ``extra`` as typed."""
    base = defaults({})
    out = [f"{g}={values[g]}" for g in GROUPS if values.get(g) and values[g] != base[g]]
    preset = defaults({g: values.get(g) for g in GROUPS})
    for f in fields(KNOBS):
        if f.key in skip or f.key not in values:
            continue
        if not _same(f, values[f.key], preset[f.key]):
            out.append(f"{f.key}={override_value(f, values[f.key])}")
    return out + split_extra(extra)


def split_extra(extra: str) -> List[str]:
    from ftrun.config import ConfigError

    try:
        return shlex.split(extra or "")
    except ValueError as e:
        raise ConfigError(f"extra overrides: {e}") from None


def command(argv: Sequence[str]) -> str:
    """How a user would type ``argv`` (which starts with this Python)."""
    return " ".join(["python"] + [shlex.quote(a) for a in argv[1:]])


def run_argv(overrides: Sequence[str], multirun: bool = False) -> List[str]:
    return [sys.executable, "-m", "ftrun", *(["-m"] if multirun else []), *overrides]


def check(overrides: Sequence[str]) -> Optional[str]:
    """The CLI's message for these overrides (compose, then validate), or None when they would run."""
    from ftrun.config import ConfigError, validate

    try:
        validate(compose(overrides))
    except ConfigError as e:
        return str(e)
    return None


def check_sweep(fixed: Sequence[str], searched: Sequence[str], sweeper: Sequence[str]) -> Optional[str]:
    """What the sweeper would refuse: the fixed part as a run (compose + validate, with ``hydra.sweeper``
    keys composed too), and the search expressions parsed as the sweeper parses them."""
    from ftrun.config import ConfigError, validate
    from sweeper.space import SearchSpaceError, parse_search_space

    try:
        validate(compose([*fixed, *sweeper], return_hydra_config=True))
        with _compose_lock:  # Hydra's override parser, not thread-safe either
            space = parse_search_space({}, searched)
    except (ConfigError, SearchSpaceError) as e:
        return str(e)
    if not space.distributions and not any(o.startswith("sweep=") for o in fixed):
        return ("the sweep has no search space: give a range such as tag(log,interval(1e-4,1e-2)) "
                "for a knob, or pick a preset (sweep=auto)")
    return None
