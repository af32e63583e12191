"""What each key's type says beyond what OmegaConf enforces, checked for every key of the schema at once.

OmegaConf refuses a value of the wrong type; it accepts an empty string for a ``str`` key, an empty name in a
``List[str]`` and a file where an output folder goes. Those are never meant, so they are refused here for
every key of :class:`ftrun.config.Config` by its type, with no list of keys to keep up to date:

- a string key (``name``, ``resume``, ``tracking.uri``, ...) set to ``''``: give a value, or null;
- a list of names (``method.target_modules``, ``data.names``, ...) with an empty entry;
- an output folder (a key named ``*_dir`` or ``*_root``) that is an existing file.

:func:`ftrun.config.validate` adds these lines to its own, leaving out keys it already reported.
"""

from __future__ import annotations

import dataclasses
import typing
from pathlib import Path
from typing import Any, Iterator, List, Sequence, Tuple


def schema_problems(cfg, reported: Sequence[str] = ()) -> List[str]:
    """``key=value: why`` for each key of ``cfg`` whose value its type rules out; keys named in ``reported``
    (lines of the same form) are left out, so a key gets one message."""
    from omegaconf import OmegaConf

    from ftrun.config import Config, display_key
    from ftrun.config.errors import show_value as _show

    out = []
    for key, hint in leaf_keys(Config):
        shown = display_key(key)
        if any(line.startswith(f"{shown}=") for line in reported):
            continue
        try:
            value = OmegaConf.select(cfg, key)
        except Exception:  # noqa: BLE001 - an interpolation that does not resolve is reported where it is used
            continue
        why = _why(key, _strip_optional(hint), value)
        if why:
            out.append(f"{shown}={_show(value) if value != '' else repr('')}: {why}")
    return out


def leaf_keys(cls, prefix: str = "") -> Iterator[Tuple[str, Any]]:
    """``(dotted key, type)`` of every leaf key under a structured-config dataclass."""
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        inner = _strip_optional(hints[f.name])
        if dataclasses.is_dataclass(inner):
            yield from leaf_keys(inner, f"{prefix}{f.name}.")
        else:
            yield prefix + f.name, hints[f.name]


def _why(key: str, hint: Any, value: Any) -> str:
    if hint is str and isinstance(value, str):
        if not value.strip():
            return "empty; give a value" + (", or null" if "." in key else "")
        if key.endswith(("_dir", "_root")) and Path(value).expanduser().is_file():
            return "a file; give a folder (it is made when missing)"
    if typing.get_origin(hint) in (list, List) and typing.get_args(hint) == (str,) and value is not None:
        if any(not str(v).strip() for v in value):
            return "an entry is empty; give names, e.g. [q_proj, v_proj]"
    return ""


def _strip_optional(hint: Any) -> Any:
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    return args[0] if typing.get_origin(hint) is typing.Union and len(args) == 1 else hint
