"""The model's shapes, from its ``config.json`` alone: built on PyTorch's meta device, so parameter
shapes, tied embeddings and the linear layers LoRA targets are exact and no weights load."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Tuple

from ftrun.config import ConfigError
from ftrun.model import model_config_dict

CONFIG_DTYPES = {"float32": "fp32", "bfloat16": "bf16", "float16": "fp16"}


@dataclass
class Shapes:
    """What the estimate needs to know about an architecture (from a meta-device build)."""

    params: List[Tuple[str, Tuple[int, ...]]]
    """(name, shape) of every distinct parameter (tied weights once)."""
    linears: List[Tuple[str, int, int]]
    """(module name, in_features, out_features) of every linear layer except the output head."""
    n_layers: int
    hidden: int
    intermediate: int
    heads: int
    kv_dim: int
    vocab: int
    config_dtype: Optional[str]
    tied: bool
    """The LM head shares the input embedding's weight."""
    files: List[int]
    """Sizes of the checkpoint's weight files, when they are on disk."""


_SHAPES: Dict[str, Shapes] = {}


def shapes(model_cfg) -> Shapes:
    """Parameter and layer shapes of the model, built on the meta device (no memory, no weights)."""
    data = model_config_dict(model_cfg)
    key = json.dumps(data, sort_keys=True, default=str)
    if key in _SHAPES:
        return _SHAPES[key]
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    data = dict(data)
    model_type = data.pop("model_type", None)
    if model_type is None:
        raise ConfigError(f"model.path={model_cfg.path}: its config.json has no model_type")
    try:
        config = AutoConfig.for_model(model_type, **data)
    except (ValueError, KeyError) as e:
        raise ConfigError(f"model.path={model_cfg.path}: transformers does not know model_type "
                          f"'{model_type}' ({e})") from None
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config, trust_remote_code=bool(model_cfg.trust_remote_code))
    head = model.get_output_embeddings()
    linears = [(n, m.in_features, m.out_features) for n, m in model.named_modules()
               if isinstance(m, torch.nn.Linear) and m is not head]
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    heads = text.num_attention_heads
    head_dim = getattr(text, "head_dim", None) or text.hidden_size // heads
    kv = getattr(text, "num_key_value_heads", None) or heads
    dtype = data.get("dtype") or data.get("torch_dtype")
    s = Shapes(params=[(n, tuple(p.shape)) for n, p in model.named_parameters()], linears=linears,
               n_layers=text.num_hidden_layers, hidden=text.hidden_size,
               intermediate=getattr(text, "intermediate_size", 4 * text.hidden_size), heads=heads,
               kv_dim=kv * head_dim, vocab=text.vocab_size, config_dtype=CONFIG_DTYPES.get(str(dtype)),
               tied=head is not None and head.weight is model.get_input_embeddings().weight,
               files=_weight_files(model_cfg))
    _SHAPES[key] = s
    return s


def _weight_files(model_cfg) -> List[int]:
    if model_cfg.path is None:
        from ftrun.tiny import tiny_path

        d = tiny_path(model_cfg.tiny)
    else:
        d = Path(str(model_cfg.path)).expanduser()
    if not d.is_dir():
        return []
    return [f.stat().st_size for pattern in ("*.safetensors", "*.bin") for f in d.glob(pattern)]


LAYER = re.compile(r"(?:^|\.)layers\.(\d+)\.")


def layer_of(name: str) -> Optional[int]:
    m = LAYER.search(name)
    return int(m.group(1)) if m else None


