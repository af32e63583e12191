"""Is ``model.path`` a model directory? Named files only, nothing loaded (no torch, no transformers).

A Hugging Face model folder holds ``config.json`` (the architecture), tokenizer files and weights.
Without them ``from_pretrained`` fails late and off the point (a folder without ``config.json`` ends in
"You need to have sentencepiece or tiktoken installed"), so each missing part is named here first:

- :func:`model_dir_problems` lists what is missing, one line each, for :func:`ftrun.config.validate`
  (which asks only for ``config.json``: a folder with just that is enough for an estimate);
- :func:`require_model_files` raises :class:`ftrun.config.ConfigError` when a run would load the
  tokenizer or weights from a folder that lacks them.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Iterable, List

# what AutoTokenizer reads: a fast tokenizer, a sentencepiece model, BPE vocab + merges, WordPiece, tiktoken
TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "spiece.model", "sentencepiece.bpe.model", "vocab.json",
                   "vocab.txt")
TOKENIZER_GLOBS = ("*.tiktoken",)
WEIGHT_GLOBS = ("*.safetensors", "pytorch_model*.bin", "*.safetensors.index.json", "pytorch_model.bin.index.json")
PARTS = ("config", "tokenizer", "weights")
_FOLDER = "a Hugging Face model folder holds config.json, tokenizer files (tokenizer.json ...) and *.safetensors"



def looks_local(path: str) -> bool:
    """A local path rather than a hub id: a hub id is "org/name"; anything starting like a path, or with more
    parts, or that exists here, is local."""
    return path.startswith((".", "/", "~")) or path.count("/") != 1 or os.path.exists(path)

def model_dir_problems(path: str, need: Iterable[str] = PARTS) -> List[str]:
    """What keeps ``path`` from being a model directory, for the parts in ``need`` (config, tokenizer,
    weights); ``[]`` when nothing is missing. ``path`` is a local path (a hub id is not checked)."""
    p = Path(path).expanduser()
    if not p.exists():
        return ["no such directory; give a local model directory or a hub id like Qwen/Qwen2.5-0.5B-Instruct"]
    if not p.is_dir():
        return [f"a file, not a model directory; give the folder that holds it ({p.parent}) if it is one: {_FOLDER}"]
    need = set(need)
    weights = _found(p, WEIGHT_GLOBS)
    out = []
    if "config" in need and not (p / "config.json").is_file():
        if weights:
            out.append(f"weights ({weights[0]}) without config.json: the architecture they belong to is missing; "
                       "copy config.json from where the weights came from")
        else:
            out.append(f"no config.json: not a model directory ({_FOLDER})")
    if "tokenizer" in need and not (_found(p, TOKENIZER_FILES) or _found(p, TOKENIZER_GLOBS)):
        out.append("no tokenizer files (tokenizer.json, tokenizer.model, or vocab.json with merges.txt); "
                   "copy them from the model's source")
    if "weights" in need and not weights:
        out.append("no weights (*.safetensors or pytorch_model*.bin); copy them from the model's source")
    return out


def require_model_files(model_cfg, need: Iterable[str] = PARTS) -> None:
    """Before anything loads from a local ``model.path``: it holds the parts in ``need`` (by default
    config.json, a tokenizer and weights), else :class:`ftrun.config.ConfigError` names what is missing."""
    from ftrun.config.errors import ConfigError

    path = model_cfg.path
    if path is None or not looks_local(str(path)):
        return
    problems = model_dir_problems(str(path), need)
    if problems:
        raise ConfigError("invalid configuration:\n  " + "\n  ".join(f"model.path={path}: {why}" for why in problems))


def _found(folder: Path, names: Iterable[str]) -> List[str]:
    return sorted(f.name for pattern in names for f in folder.glob(pattern) if f.is_file())
