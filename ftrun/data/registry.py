"""Which datasets a run reads: ``data.path``, named presets, or a LLaMA-Factory registry.

* ``data.path=FILE|FOLDER|GLOB`` (with ``data.format``, ``data.columns``,
  ``data.tags``): one dataset.
* ``data.names=[a,b]``: datasets named in ``ftrun/conf/data/<name>.yaml`` (their
  ``path``, ``format``, ``columns``, ``tags``, ``max_samples``), or, with
  ``data.registry=path/to/dataset_info.json``, the entries of that file as
  LLaMA-Factory reads them (``file_name`` relative to the file's folder,
  ``formatting``, ``ranking``, ``columns``, ``tags``, ``num_samples``,
  ``split``, ``folder``, ``subset``); hub and multimodal entries are refused
  with the reason.
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
from ftrun.data.files import list_files
from ftrun.data.formats import FORMATS, Source

CONF_DATA_DIR = _conf_dir() / "data"
SOURCE_KEYS = ("name", "path", "format", "columns", "tags", "max_samples")
MEDIA_COLUMNS = ("images", "videos", "audios")  # multimodal: refused by name


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
    """A ``dataset_info.json`` entry as a :class:`Source`, or a clear refusal.

    LLaMA-Factory's keys: ``file_name`` (a file or a folder, relative to the
    registry's folder), ``folder`` (a sub-folder it lives in), ``subset`` (a
    sub-folder of a folder dataset, as on the hub), ``split`` (``train``, or the
    files of a folder whose names carry the split, e.g. ``test.jsonl``),
    ``formatting``, ``ranking``, ``columns``, ``tags`` and ``num_samples``.
    ``script_url`` works when it names a folder of data files on disk.
    """
    what = f"data.registry={path}: entry '{name}'"
    if name not in info:
        raise ConfigError(f"{what} does not exist (entries: {', '.join(sorted(info)) or 'none'})")
    e = info[name]
    if not isinstance(e, dict):
        raise ConfigError(f"{what} is not an object")
    columns = dict(e.get("columns") or {})
    media = [c for c in MEDIA_COLUMNS if c in columns]
    if media:
        raise ConfigError(f"{what} has {'/'.join(media)} columns: multimodal data is not supported "
                          "(ftrun trains text-only models); choose a text dataset")
    base = Path(path).expanduser().resolve().parent
    hub = [k for k in ("hf_hub_url", "ms_hub_url", "om_hub_url") if e.get(k)]
    script = e.get("script_url")
    if hub:  # LLaMA-Factory reads these from the hub even when file_name is given
        raise ConfigError(f"{what} is a hub dataset ({hub[0]}={e[hub[0]]}) and runs read local files only "
                          "(no network at run time): download it next to the registry and give the entry a "
                          "file_name instead")
    if script and not e.get("file_name"):
        if not (base / script).is_dir():
            raise ConfigError(f"{what}: script_url={script} is not a folder next to the registry, and dataset "
                              "scripts are fetched from the network, which runs do not use: put the data files "
                              "there or give the entry a file_name")
        e = {**e, "file_name": script}
    if not e.get("file_name"):
        if e.get("cloud_file_name"):
            raise ConfigError(f"{what} is in cloud storage (cloud_file_name={e['cloud_file_name']}); runs read "
                              "local files only: copy it next to the registry and give the entry a file_name")
        raise ConfigError(f"{what} has no file_name")
    formatting = e.get("formatting", "alpaca")
    if formatting not in ("alpaca", "sharegpt"):
        raise ConfigError(f"{what}: formatting '{formatting}' is not supported; use alpaca or sharegpt")
    file_path = Path(e["file_name"]).expanduser()
    if not file_path.is_absolute():
        file_path = base / (e.get("folder") or "") / file_path
    if e.get("subset"):
        if not (file_path / str(e["subset"])).is_dir():
            raise ConfigError(f"{what}: subset '{e['subset']}' is not a sub-folder of {file_path}; "
                              "a local dataset's subsets are its sub-folders")
        file_path = file_path / str(e["subset"])
    try:
        files = list_files(str(file_path), what=f"data.registry entry '{name}' file_name")
    except ConfigError as err:
        raise ConfigError(f"{what}: {err}") from None
    split = str(e.get("split") or "train")
    if file_path.is_dir():
        named = [f for f in files if split in f.stem.lower().replace("-", "_").split("_")
                 or f.parent != file_path and f.parent.name == split]
        if named:
            files = named
        elif split != "train":
            raise ConfigError(f"{what}: split '{split}' matches no file in {file_path} (files are matched by "
                              f"name, e.g. {split}.jsonl); remove split to read them all")
    elif split != "train":
        raise ConfigError(f"{what}: split '{split}' of the single file {file_path.name}; a local file is one "
                          "train split: remove split, or point file_name at a folder with a file per split")
    num_samples = e.get("num_samples")
    if num_samples is not None and (not isinstance(num_samples, int) or num_samples < 1):
        raise ConfigError(f"{what}: num_samples={num_samples!r} must be a whole number >= 1")
    return Source(name=name, files=files, format=formatting, columns=columns, tags=dict(e.get("tags") or {}),
                  num_samples=num_samples, ranking=bool(e.get("ranking", False)), origin=what)


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
