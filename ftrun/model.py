"""Model loading and fine-tuning methods: full, freeze, lora, qlora.

``load_tokenizer`` and ``load_model`` read the ``model`` group (building the
tiny model on first use); ``apply_method`` turns the loaded model into what
trains, per the ``method`` group, using peft for LoRA and bitsandbytes for the
quantized QLoRA base.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Tuple

from ftrun import keep
from ftrun.config import ConfigError

log = logging.getLogger(__name__)

DTYPES = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}


def model_path(model_cfg) -> str:
    """Local directory or hub id of the base model (building the tiny one if needed)."""
    if model_cfg.path is not None:
        return str(Path(model_cfg.path).expanduser()) if Path(model_cfg.path).expanduser().exists() else model_cfg.path
    from ftrun.tiny import ensure_tiny

    return str(ensure_tiny(model_cfg.tiny))


def load_tokenizer(model_cfg):
    from transformers import AutoTokenizer

    path = model_path(model_cfg)

    def build():
        try:
            return AutoTokenizer.from_pretrained(path, trust_remote_code=model_cfg.trust_remote_code)
        except OSError as e:
            raise ConfigError(f"model.path={model_cfg.path}: cannot load a tokenizer from it ({e})") from None

    tok = keep.shared("tokenizer", {"path": path, "remote": model_cfg.trust_remote_code}, build, copy=keep.deepcopy)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token  # Llama-style tokenizers ship no pad token
    # the data pipeline reads this: the tokenizer's own chat template (auto), or a built-in
    # one (ftrun.data.templates), picked from the tokenizer when it has none
    tok._ftrun_template = model_cfg.template
    return tok


def torch_dtype(name: str):
    import torch

    return getattr(torch, DTYPES[name])


def load_model(cfg, auto_class=None, **extra):
    """The base causal LM, quantized for qlora, in the dtype that precision asks for.

    ``auto_class`` loads another head instead (the rm stage passes
    ``AutoModelForSequenceClassification`` and ``num_labels=1`` in ``extra``).
    """
    import torch
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    m, method = cfg.model, cfg.method
    auto_class = auto_class or AutoModelForCausalLM
    kwargs = {"trust_remote_code": m.trust_remote_code, "attn_implementation": m.attn_implementation, **extra}
    if cfg.precision == "pure_bf16":
        kwargs["dtype"] = torch.bfloat16
    elif m.dtype != "auto":
        kwargs["dtype"] = torch_dtype(m.dtype)
    if method.name == "qlora":
        if method.bits == 4:
            kwargs["quantization_config"] = BitsAndBytesConfig(
                load_in_4bit=True,
                bnb_4bit_quant_type=method.quant_type,
                bnb_4bit_use_double_quant=method.double_quant,
                bnb_4bit_compute_dtype=torch_dtype(method.compute_dtype),
            )
        else:
            kwargs["quantization_config"] = BitsAndBytesConfig(load_in_8bit=True)
        if torch.cuda.is_available():
            kwargs["device_map"] = {"": torch.cuda.current_device()}
    path = model_path(m)

    def build():
        try:
            return auto_class.from_pretrained(path, **kwargs)
        except OSError as e:
            raise ConfigError(f"model.path={m.path}: cannot load a model from it ({e})") from None

    if "quantization_config" in kwargs:  # quantized weights are made again per run
        model = build()
    else:  # a warm sweep worker keeps the base weights and gives each run its own copy
        key = {"path": path, "class": auto_class.__name__, **{k: str(v) for k, v in kwargs.items()}}
        model = keep.shared("base model", key, build, copy=keep.deepcopy)
    if cfg.train.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.config.use_cache = False
    return model


def apply_method(model, cfg, task_type: str = "CAUSAL_LM"):
    """Make only what the method trains trainable; wrap with LoRA adapters for lora/qlora."""
    method = cfg.method
    if method.name == "full":
        for p in model.parameters():
            p.requires_grad_(True)
        return model
    if method.name == "freeze":
        return _freeze(model, method)
    from peft import get_peft_model

    model = prepare_quantized(model, cfg)
    try:
        return get_peft_model(model, lora_config(cfg, task_type))
    except ValueError as e:
        raise ConfigError(f"method.target_modules={list(method.target_modules)}: {e}") from None


def prepare_quantized(model, cfg):
    """qlora: ready the quantized base for training (fp32 norms, input grads); others unchanged."""
    if cfg.method.name != "qlora":
        return model
    from peft import prepare_model_for_kbit_training

    return prepare_model_for_kbit_training(
        model, use_gradient_checkpointing=cfg.train.gradient_checkpointing,
        gradient_checkpointing_kwargs={"use_reentrant": False},
    )


def lora_config(cfg, task_type: str = "CAUSAL_LM"):
    """peft's LoraConfig for the method group (SEQ_CLS also trains the reward head)."""
    from peft import LoraConfig

    method = cfg.method
    targets = list(method.target_modules)
    return LoraConfig(
        r=method.rank,
        lora_alpha=method.alpha,
        lora_dropout=method.dropout,
        target_modules="all-linear" if targets == ["all-linear"] else targets,
        use_rslora=method.use_rslora,
        use_dora=method.use_dora,
        task_type=task_type,
    )


def _freeze(model, method):
    n_layers = model.config.num_hidden_layers
    if method.trainable_layers > n_layers:
        raise ConfigError(f"method.trainable_layers={method.trainable_layers}: the model has only {n_layers} layers")
    layers = {str(i) for i in range(n_layers - method.trainable_layers, n_layers)}
    extra = list(method.extra_modules)
    names = [n for n, _ in model.named_parameters()]
    for e in extra:
        if not any(e in n.split(".") for n in names):
            raise ConfigError(f"method.extra_modules={extra}: no module named '{e}' in the model")
    for name, p in model.named_parameters():
        parts = name.split(".")
        in_layer = "layers" in parts and parts[parts.index("layers") + 1] in layers
        p.requires_grad_(in_layer or any(e in parts for e in extra))
    return model


def count_parameters(model) -> Tuple[int, int]:
    """(trainable, total) parameters; 4-bit weights counted unpacked, as peft does."""
    trainable = total = 0
    for p in model.parameters():
        n = p.numel()
        if p.__class__.__name__ == "Params4bit":
            n *= 2  # two 4-bit values per stored byte
        total += n
        if p.requires_grad:
            trainable += n
    return trainable, total


def model_config_dict(model_cfg) -> dict:
    """The model's config.json as a dict, without loading (or building) any weights."""
    if model_cfg.path is None:  # the built-in tiny model: its cached config, else its architecture
        from ftrun.tiny import tiny_path

        f = tiny_path(model_cfg.tiny) / "config.json"
        if f.is_file():
            return json.loads(f.read_text())
        t = model_cfg.tiny
        return {"model_type": "llama", "hidden_size": t.hidden_size, "intermediate_size": t.intermediate_size,
                "num_hidden_layers": t.num_hidden_layers, "num_attention_heads": t.num_attention_heads,
                "num_key_value_heads": t.num_key_value_heads, "vocab_size": t.vocab_size,
                "max_position_embeddings": t.max_position_embeddings, "tie_word_embeddings": False,
                "dtype": "float32"}
    p = Path(str(model_cfg.path)).expanduser()
    if (p / "config.json").is_file():
        return json.loads((p / "config.json").read_text())
    try:  # a hub id: only what is in the local cache (nothing is downloaded for an estimate)
        from transformers import AutoConfig

        return AutoConfig.from_pretrained(str(model_cfg.path), local_files_only=True,
                                          trust_remote_code=bool(model_cfg.trust_remote_code)).to_dict()
    except (OSError, ValueError):
        raise ConfigError(f"model.path={model_cfg.path}: no config.json there or in the local hub cache; "
                          "give a local model directory (a folder with just config.json is enough for an estimate)") \
            from None
