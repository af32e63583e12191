"""The model's ``config.json``: the one reader of it, and the architecture numbers the checks need.

Nothing here loads weights or imports transformers; :func:`ftrun.model.model_config_dict`
adds the built-in tiny model and the local hub cache on top of :func:`read_config_json`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Dict, Optional

# the names a config.json may give each number checks need (GPT-2, T5 and ChatGLM spell them otherwise)
_ARCH_NAMES = {"hidden_size": ("hidden_size", "d_model", "n_embd"),
               "num_hidden_layers": ("num_hidden_layers", "n_layer", "num_layers"),
               "max_position_embeddings": ("max_position_embeddings", "n_positions", "seq_length")}


def read_config_json(model_dir) -> Optional[dict]:
    """``<model_dir>/config.json`` as a dict; None when there is none or it cannot be read."""
    f = Path(str(model_dir)).expanduser() / "config.json"
    try:
        data = json.loads(f.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def model_arch(model_cfg) -> Dict[str, int]:
    """hidden_size, num_hidden_layers and max_position_embeddings of the model, without loading it:
    from ``model.tiny``, else the ``config.json`` of a local model directory; ``{}`` when unknown (a hub id)."""
    keys = tuple(_ARCH_NAMES)
    if model_cfg.tiny is not None and model_cfg.path is None:
        return {k: int(model_cfg.tiny[k]) for k in keys}
    conf = read_config_json(model_cfg.path) if model_cfg.path is not None else None
    if conf is None:
        return {}
    conf = {**conf.get("text_config", {}), **conf}
    out = {}
    for key, names in _ARCH_NAMES.items():
        value = next((conf[n] for n in names if isinstance(conf.get(n), int)), None)
        if value is not None:
            out[key] = value
    return out
