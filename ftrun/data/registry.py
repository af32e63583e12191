"""Which datasets a run reads: ``data.path``, named presets, or a LLaMA-Factory registry.

* ``data.path=FILE|FOLDER|GLOB`` (with ``data.format``, ``data.columns``,
  ``data.tags``): one dataset.
* ``data.names=[a,b]``: datasets named in ``ftrun/conf/data/<name>.yaml`` (their
  ``path``, ``format``, ``columns``, ``tags``, ``max_samples``), or, with
  ``data.registry=path/to/dataset_info.json``, the entries of that file as
  LLaMA-Factory reads them (``file_name`` relative to the file's folder,
  ``formatting``, ``columns``, ``tags``, ``num_samples``).
* ``data.sources=[{name: a, max_samples: 1000}, {path: b.jsonl, format: sharegpt}]``:
  the same with per-dataset settings.

Several datasets are mixed by ``data.mix``: ``concat`` (one after the other) or
``interleave`` with ``data.mix_probs``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Dict, List, Optional

from ftrun.compose import conf_dir as _conf_dir
from ftrun.config import ConfigError
from ftrun.data.formats import FORMATS, Source, list_files

CONF_DATA_DIR = _conf_dir() / "data"
SOURCE_KEYS = ("name", "path", "format", "columns", "tags", "max_samples")
HUB_KEYS = ("hf_hub_url", "ms_hub_url", "om_hub_url", "script_url", "cloud_file_name")
MEDIA_COLUMNS = ("images", "videos", "audios")


def _plain(node: Any) -> Any:
    from omegaconf import DictConfig, ListConfig, OmegaConf

    if isinstance(node, (DictConfig, ListConfig)):
        return OmegaConf.to_container(node, resolve=True)
    return node


def source_entries(data_cfg) -> List[Dict[str, Any]]:
    """The datasets ``data_cfg`` names, as plain dicts (before resolving names)."""
    sources = _plain(data_cfg.get("sources") or [])
    names = _plain(data_cfg.get("names") or [])
    if sources and names:
        raise ConfigError("data.sources and data.names: give one of them, not both")
    if sources:
        out = []
        for i, s in enumerate(sources):
            if isinstance(s, str):
                s = {"name": s}
            if not isinstance(s, dict) or not (s.get("name") or s.get("path")):
                raise ConfigError(f"data.sources[{i}]: give a name or a path, e.g. {{name: alpaca_zh}}")
            unknown = set(s) - set(SOURCE_KEYS)
            if unknown:
                raise ConfigError(f"data.sources[{i}]: unknown keys {', '.join(sorted(unknown))} "
                                  f"(known: {', '.join(SOURCE_KEYS)})")
            out.append(s)
        return out
    if names:
        return [{"name": n} for n in names]
    if data_cfg.get("path") is not None:
        return [{"name": data_cfg.name, "path": data_cfg.path, "format": data_cfg.get("format", "auto"),
                 "columns": _plain(data_cfg.get("columns") or {}), "tags": _plain(data_cfg.get("tags") or {})}]
    return []


def resolve_sources(data_cfg) -> List[Source]:
    """Every dataset of the run with its files listed; errors name the entry."""
    registry = data_cfg.get("registry")
    info = load_registry(registry) if registry else None
    out = []
    for entry in source_entries(data_cfg):
        if entry.get("path") is not None:
            name = entry.get("name") or Path(entry["path"]).stem
            src = Source(name=name, files=list_files(str(entry["path"])), format=entry.get("format") or "auto",
                         columns=dict(entry.get("columns") or {}), tags=dict(entry.get("tags") or {}),
                         origin=f"data.path={entry['path']}")
        elif info is not None:
            src = registry_source(registry, info, entry["name"])
        else:
            src = preset_source(entry["name"])
        if entry.get("max_samples") is not None:
            src.max_samples = int(entry["max_samples"])
        if src.format not in FORMATS:
            raise ConfigError(f"{src.origin}: format '{src.format}' is unknown; choose {', '.join(FORMATS)}")
        out.append(src)
    return out


def load_registry(path: str) -> Dict[str, Any]:
    p = Path(path).expanduser()
    if not p.is_file():
        raise ConfigError(f"data.registry={path}: no such file; give a LLaMA-Factory dataset_info.json")
    try:
        info = json.loads(p.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ConfigError(f"data.registry={path}: not valid JSON ({e})") from None
    if not isinstance(info, dict):
        raise ConfigError(f"data.registry={path}: expected an object of dataset entries")
    return info


def registry_source(path: str, info: Dict[str, Any], name: str) -> Source:
    """A ``dataset_info.json`` entry as a :class:`Source`, or a clear refusal."""
    what = f"data.registry={path}: entry '{name}'"
    if name not in info:
        raise ConfigError(f"{what} does not exist (entries: {', '.join(sorted(info)) or 'none'})")
    e = info[name]
    if not isinstance(e, dict):
        raise ConfigError(f"{what} is not an object")
    columns = dict(e.get("columns") or {})
    media = [c for c in MEDIA_COLUMNS if c in columns]
    if media:
        raise ConfigError(f"{what} has {'/'.join(media)} columns; multimodal data is not supported "
                          "(ftrun trains text-only models)")
    if e.get("ranking") or any(c in columns for c in ("chosen", "rejected", "kto_tag")):
        raise ConfigError(f"{what} is a preference (ranking/KTO) dataset; this release trains stage=sft only")
    if "tools" in columns:
        raise ConfigError(f"{what} has a tools column; tool-use data is not supported")
    if not e.get("file_name"):
        hub = [k for k in HUB_KEYS if e.get(k)]
        if hub:
            raise ConfigError(f"{what} is a hub dataset ({hub[0]}={e[hub[0]]}); ftrun reads local files only: "
                              "download it and give the entry a file_name")
        raise ConfigError(f"{what} has no file_name")
    formatting = e.get("formatting", "alpaca")
    if formatting not in ("alpaca", "sharegpt"):
        raise ConfigError(f"{what}: formatting '{formatting}' is not supported; use alpaca or sharegpt")
    base = Path(path).expanduser().resolve().parent
    file_path = Path(e["file_name"]).expanduser()
    if not file_path.is_absolute():
        file_path = base / file_path
    try:
        files = list_files(str(file_path), what=f"data.registry entry '{name}' file_name")
    except ConfigError as err:
        raise ConfigError(f"{what}: {err}") from None
    tags = dict(e.get("tags") or {})
    max_samples = e.get("num_samples")
    return Source(name=name, files=files, format=formatting, columns=columns, tags=tags,
                  max_samples=int(max_samples) if max_samples else None, origin=what)


def preset_source(name: str, conf_dir: Optional[Path] = None) -> Source:
    """A dataset named by its preset ``ftrun/conf/data/<name>.yaml``."""
    from omegaconf import OmegaConf

    conf_dir = conf_dir or CONF_DATA_DIR
    p = conf_dir / f"{name}.yaml"
    what = f"data.names: '{name}'"
    if not p.is_file():
        have = sorted(q.stem for q in conf_dir.glob("*.yaml"))
        raise ConfigError(f"{what} is not a preset in {conf_dir} (have: {', '.join(have)}); "
                          "or set data.registry=path/to/dataset_info.json")
    node = OmegaConf.load(p)
    if node.get("names") or node.get("sources"):
        raise ConfigError(f"{what}: ftrun/conf/data/{name}.yaml mixes datasets itself; name the datasets directly")
    if OmegaConf.is_missing(node, "path") or node.get("path") is None:
        raise ConfigError(f"{what}: ftrun/conf/data/{name}.yaml has no path (a built-in task cannot be mixed)")
    path = str(node.path)
    return Source(name=name, files=list_files(path, what=f"ftrun/conf/data/{name}.yaml path"),
                  format=str(node.get("format", "auto")), columns=dict(_plain(node.get("columns")) or {}),
                  tags=dict(_plain(node.get("tags")) or {}),
                  max_samples=node.get("max_samples"), origin=f"ftrun/conf/data/{name}.yaml")
