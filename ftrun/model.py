"""Model loading and fine-tuning methods: full, freeze, lora, qlora, llama_pro.

``load_tokenizer`` and ``load_model`` read the ``model`` group (building the
tiny model on first use; RoPE scaling through transformers' ``rope_parameters``,
added tokens and a resized vocabulary); ``apply_method`` turns the loaded model
into what trains, per the ``method`` group, using peft for LoRA (PiSSA init,
``modules_to_save``, a saved adapter to continue or merge) and bitsandbytes for
the quantized QLoRA base. LLaMA Pro's block expansion is the one method written
here: no library does it.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Tuple

from ftrun import attention, worker_cache
from ftrun.config import ConfigError, read_config_json
from ftrun.config.model_dir import require_model_files

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

    require_model_files(model_cfg, need=("tokenizer",))  # named, not sentencepiece's complaint (a run's model/
    # folder, which stage.init_run reads, may hold an adapter: no config.json of its own)
    path = model_path(model_cfg)

    def build():
        try:
            return AutoTokenizer.from_pretrained(path, trust_remote_code=model_cfg.trust_remote_code)
        except OSError as e:
            raise ConfigError(f"model.path={model_cfg.path}: cannot load a tokenizer from it ({e})") from None

    tok = worker_cache.shared("tokenizer", {"path": path, "remote": model_cfg.trust_remote_code}, build, copy=worker_cache.deepcopy)
    added = list(model_cfg.get("add_special_tokens") or [])
    if added:
        tok.add_special_tokens({"extra_special_tokens": added}, replace_extra_special_tokens=False)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token  # Llama-style tokenizers ship no pad token
    # the data pipeline reads this: the tokenizer's own chat template (auto), or a built-in
    # one (ftrun.data.templates), picked from the tokenizer when it has none
    tok._ftrun_template = model_cfg.template
    tok._ftrun_thinking = bool(model_cfg.get("enable_thinking", True))
    tok._ftrun_turn_suffix = bool(model_cfg.get("train_turn_suffix", False))
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
    kwargs = {"trust_remote_code": m.trust_remote_code, "attn_implementation": attention.loading_name(m.attn_implementation),
              **extra}
    if cfg.precision == "pure_bf16":
        kwargs["dtype"] = torch.bfloat16
    elif m.dtype != "auto":
        kwargs["dtype"] = torch_dtype(m.dtype)
    rope = rope_parameters(m)
    if rope is not None:
        kwargs.update(rope)
    if method.name == "qlora" and method.get("quant_method", "bnb") == "hqq":
        from transformers import HqqConfig

        kwargs["quantization_config"] = HqqConfig(nbits=method.bits, group_size=64)
    elif method.name == "qlora":
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
        model = worker_cache.shared("base model", key, build, copy=worker_cache.deepcopy)
    attention.use(model, m.attn_implementation)  # sdpa_varlen where the model's attention allows
    if m.get("resize_vocab", False):
        resize_vocab(model, len(load_tokenizer(m)))
    if cfg.train.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.config.use_cache = False
    elif cfg.train.get("recompute_elementwise", False):
        from ftrun import recompute

        recompute.apply(model)
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
    if method.name == "llama_pro":
        return llama_pro(model, method.expand_layers, list(method.extra_modules))
    from peft import PeftModel, get_peft_model

    model = prepare_quantized(model, cfg)
    adapter = method.get("adapter")
    if adapter and not method.get("create_new_adapter", False):  # keep training the saved adapter
        log.info("Continuing the adapter in %s", adapter)
        return _fuse(cfg, PeftModel.from_pretrained(model, str(Path(adapter).expanduser()), is_trainable=True))
    if adapter:  # LLaMA-Factory's create_new_adapter: merge it, then a fresh adapter on top
        log.info("Merging the adapter in %s into the base; a new adapter trains on top", adapter)
        model = PeftModel.from_pretrained(model, str(Path(adapter).expanduser())).merge_and_unload()
    try:
        peft_model = get_peft_model(model, lora_config(cfg, task_type))
    except ValueError as e:
        raise ConfigError(f"method.target_modules={list(method.target_modules)}: {e}") from None
    return _fuse(cfg, peft_model)


def _fuse(cfg, model):
    """LoRA layers with the fused forward of :mod:`ftrun.fused_lora` when ``train.fuse_lora`` asks for it."""
    if cfg.train.get("fuse_lora", False):
        from ftrun import fused_lora

        if not fused_lora.partitioned(cfg):
            fused_lora.apply(model)
    return model


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
    extra = list(method.get("extra_modules") or [])  # LLaMA-Factory's additional_target
    if cfg.model.get("resize_vocab", False):  # new token rows must learn: the embeddings and head train in full
        extra += [n for n in ("embed_tokens", "lm_head") if n not in extra]
    pissa = method.get("pissa", False)
    iters = method.get("pissa_iters", 16)
    return LoraConfig(
        init_lora_weights=(("pissa" if iters == -1 else f"pissa_niter_{iters}") if pissa else True),
        modules_to_save=extra or None,
        r=method.rank,
        lora_alpha=method.alpha,
        lora_dropout=method.dropout,
        target_modules="all-linear" if targets == ["all-linear"] else targets,
        use_rslora=method.use_rslora,
        use_dora=method.use_dora,
        task_type=task_type,
    )


def rope_parameters(model_cfg):
    """``{"rope_parameters": ...}`` for ``from_pretrained`` when ``model.rope_scaling`` is set, else None.

    transformers 5 keeps RoPE settings in ``config.rope_parameters`` (it rejects a bare ``rope_scaling``
    without the model's ``rope_theta``), so the model's own parameters are read and the scaling added;
    linear, yarn and llama3 also raise ``max_position_embeddings`` by the factor, as LLaMA-Factory does.
    """
    kind = model_cfg.get("rope_scaling")
    if kind is None:
        return None
    conf = model_config_dict(model_cfg)
    factor = float(model_cfg.rope_factor)
    base = dict(conf.get("rope_parameters") or {})
    base.setdefault("rope_theta", conf.get("rope_theta", 10000.0))
    old_max = int(conf.get("max_position_embeddings") or 0)
    params = {**base, "rope_type": str(kind), "factor": factor}
    out = {"rope_parameters": params}
    if kind in ("yarn", "llama3"):
        params["original_max_position_embeddings"] = old_max
    if kind == "llama3":
        params.setdefault("low_freq_factor", 1.0)
        params.setdefault("high_freq_factor", 4.0)
    if kind != "dynamic" and old_max:
        out["max_position_embeddings"] = int(old_max * factor)
    return out


def resize_vocab(model, n_tokens: int) -> None:
    """Grow the input and output embeddings to ``n_tokens`` rows, rounded up to 64 (never shrink)."""
    if n_tokens > model.get_input_embeddings().weight.shape[0]:
        model.resize_token_embeddings(n_tokens, pad_to_multiple_of=64)
        log.info("Resized the vocabulary to %d rows", model.get_input_embeddings().weight.shape[0])


# the projections that write into the residual stream: zeroed, they make a copied block the identity
RESIDUAL_OUT = ("o_proj", "down_proj")


def llama_pro(model, n_new: int, extra_modules=()):
    """LLaMA Pro block expansion: after every ``num_layers / n_new`` decoder layers insert a copy of the
    last one with its residual-writing projections (o_proj, down_proj) zeroed, so the block adds
    nothing and the model computes what it did; only the new blocks (and ``extra_modules``) train."""
    import copy

    import torch

    decoder = model.get_decoder()
    layers = getattr(decoder, "layers", None)
    if not isinstance(layers, torch.nn.ModuleList):
        raise ConfigError(f"method=llama_pro: {type(model).__name__} keeps no decoder.layers list to expand; "
                          "it knows Llama-style models (Llama, Qwen, Mistral, ...)")
    n_layers = len(layers)
    if n_new < 1 or n_layers % n_new:
        raise ConfigError(f"method.expand_layers={n_new}: must divide the model's {n_layers} layers")
    stride = n_layers // n_new
    expanded, new_blocks, types = [], [], []
    old_types = getattr(model.config, "layer_types", None)
    for i, layer in enumerate(layers):
        expanded.append(layer)
        types.append(old_types[i] if old_types else None)
        if (i + 1) % stride == 0:
            block = copy.deepcopy(layer)
            zeroed = 0
            for name, mod in block.named_modules():
                if name.rsplit(".", 1)[-1] in RESIDUAL_OUT and isinstance(mod, torch.nn.Linear):
                    torch.nn.init.zeros_(mod.weight)
                    if mod.bias is not None:
                        torch.nn.init.zeros_(mod.bias)
                    zeroed += 1
            if zeroed < 2:
                raise ConfigError(f"method=llama_pro: a block of {type(model).__name__} has no "
                                  f"{' and '.join(RESIDUAL_OUT)} to zero; it knows Llama-style blocks")
            expanded.append(block)
            new_blocks.append(block)
            types.append(types[-1])
    for idx, layer in enumerate(expanded):  # the KV cache is indexed by layer
        attn = getattr(layer, "self_attn", None)
        if attn is not None and hasattr(attn, "layer_idx"):
            attn.layer_idx = idx
    decoder.layers = torch.nn.ModuleList(expanded)
    model.config.num_hidden_layers = len(expanded)
    if old_types:
        model.config.layer_types = types
    model.requires_grad_(False)
    for block in new_blocks:
        block.requires_grad_(True)
    _train_modules(model, list(extra_modules))
    log.info("LLaMA Pro: %d layers -> %d; the %d new blocks train", n_layers, len(expanded), len(new_blocks))
    return model


def _train_modules(model, extra) -> None:
    """Make the modules named in ``extra`` (by a part of their dotted name) trainable."""
    names = [n for n, _ in model.named_parameters()]
    for e in extra:
        if not any(e in n.split(".") for n in names):
            raise ConfigError(f"method.extra_modules={extra}: no module named '{e}' in the model")
    for name, p in model.named_parameters():
        if any(e in name.split(".") for e in extra):
            p.requires_grad_(True)


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

        cached = read_config_json(tiny_path(model_cfg.tiny))
        if cached is not None:
            return cached
        t = model_cfg.tiny
        return {"model_type": "llama", "hidden_size": t.hidden_size, "intermediate_size": t.intermediate_size,
                "num_hidden_layers": t.num_hidden_layers, "num_attention_heads": t.num_attention_heads,
                "num_key_value_heads": t.num_key_value_heads, "vocab_size": t.vocab_size,
                "max_position_embeddings": t.max_position_embeddings, "tie_word_embeddings": False,
                "dtype": "float32"}
    local = read_config_json(model_cfg.path)
    if local is not None:
        return local
    try:  # a hub id: only what is in the local cache (nothing is downloaded for an estimate)
        from transformers import AutoConfig

        return AutoConfig.from_pretrained(str(model_cfg.path), local_files_only=True,
                                          trust_remote_code=bool(model_cfg.trust_remote_code)).to_dict()
    except (OSError, ValueError):
        raise ConfigError(f"model.path={model_cfg.path}: no config.json there or in the local hub cache; "
                          "give a local model directory (a folder with just config.json is enough for an estimate)") \
            from None
