"""``sweep=auto``: a search space from published priors for the run's method and model size.

The priors live in ``conf/sweep/auto.yaml`` (``hydra.sweeper.auto``), each with the
paper or recipe it comes from; this module only picks the entry that fits and
counts the model's parameters from its config (no weights are loaded).
"""

from __future__ import annotations

import logging
from typing import Any, Dict, Mapping, Optional, Sequence, Tuple

from ftrun.config import read_config_json

log = logging.getLogger(__name__)


class AutoSpaceError(ValueError):
    """No entry of hydra.sweeper.auto fits the run; says why."""


def auto_params(entries: Sequence[Mapping[str, Any]], method: str, n_params: Optional[int]) -> Tuple[Dict, str]:
    """The params of the first entry for ``method`` whose ``max_params_b`` fits ``n_params``, and a line
    saying which entry was taken."""
    size_b = None if n_params is None else n_params / 1e9
    for i, entry in enumerate(entries):
        if method not in list(entry.get("methods") or []):
            continue
        limit = entry.get("max_params_b")
        if limit is not None and size_b is not None and size_b > float(limit):
            continue
        if limit is not None and size_b is None:
            continue  # unknown size: take the entry without a limit
        size = "unknown size" if size_b is None else f"{size_b:.3g}B parameters"
        within = f"<= {limit}B" if limit is not None else "any size"
        return dict(entry.get("params") or {}), f"sweep=auto: method={method}, {size}: priors entry {i} ({within})"
    raise AutoSpaceError(f"hydra.sweeper.auto: no entry for method={method}"
                         + (f" at {size_b:.3g}B parameters" if size_b is not None else ""))


def count_parameters(model_cfg) -> Optional[int]:
    """Parameters of a decoder-only model from its config (tiny arch or config.json); None when unknown."""
    arch = _arch(model_cfg)
    if arch is None:
        return None
    h, layers = int(arch["hidden_size"]), int(arch["num_hidden_layers"])
    inter = int(arch.get("intermediate_size") or 4 * h)
    vocab = int(arch.get("vocab_size") or 32000)
    heads = int(arch.get("num_attention_heads") or 1)
    kv = int(arch.get("num_key_value_heads") or heads)
    head_dim = int(arch.get("head_dim") or h // heads)
    attn = h * heads * head_dim * 2 + h * kv * head_dim * 2  # q, o and k, v projections
    mlp = 3 * h * inter  # gate, up, down
    embed = vocab * h * (1 if arch.get("tie_word_embeddings") else 2)
    return layers * (attn + mlp + 2 * h) + embed + h


def _arch(model_cfg) -> Optional[Mapping[str, Any]]:
    tiny = _get(model_cfg, "tiny")
    if tiny is not None:
        return {**dict(tiny), "tie_word_embeddings": False}
    path = _get(model_cfg, "path")
    config = read_config_json(path) if path else None
    return None if config is None else config.get("text_config", config)


def _get(cfg, key: str):
    try:
        return cfg.get(key) if hasattr(cfg, "get") else getattr(cfg, key, None)
    except Exception:
        return None
