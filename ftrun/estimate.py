"""``python -m ftrun.estimate [the overrides of a run] [estimate.devices=2 estimate.sharding=zero3 estimate.limit=80GiB]``

Peak memory per device of a run, estimated from the model's ``config.json``
alone (no weights are loaded: the model is built on PyTorch's meta device, so
parameter shapes, tied embeddings and the linear layers LoRA targets are exact):

- **weights** at the dtype they load in (``model.dtype``, ``precision=pure_bf16``;
  qlora: bitsandbytes 4-bit nf4/fp4 with or without double quantization, or int8,
  for every linear layer but the LM head, and the rest upcast to fp32 as peft's
  ``prepare_model_for_kbit_training`` does);
- **trainable parameters** per method (full; freeze's last layers and extra
  modules; lora/qlora adapters of rank r on the targeted linears, in fp32, plus
  DoRA's magnitude vectors) and their **gradients**;
- **optimizer states**: adamw two per parameter in the parameter's dtype,
  adamw_8bit two bytes (blockwise, fp32 for tensors under 4096 elements), sgd one
  with momentum, adafactor factored row and column second moments;
- **activations** that autograd saves for ``batch_size x cutoff_len`` tokens (every
  sample as long as cutoff_len: the worst batch), per decoder layer with sdpa
  attention, with and without gradient checkpointing, plus the loss's buffers
  over the vocabulary, and the evaluation batch's logits;
- **sharding** over ``estimate.devices``: ZeRO-1 divides optimizer states,
  ZeRO-2 also gradients, ZeRO-3/FSDP also weights (plus one gathered layer); DDP
  divides nothing and adds gradient buckets.

The peak is the larger of the backward pass (weights + optimizer states +
saved activations + the loss's vocabulary-sized buffers), the optimizer step
(weights + gradients + states + its temporaries) and evaluation. On a GPU the
figure is what ``torch.cuda.max_memory_allocated`` would show; the CUDA context
(about 0.5 GiB) and allocator fragmentation come on top, which is why
:func:`fits` keeps a margin. ``estimate.measure=true`` also runs a few real
training steps on random tokens and prints the measured peak beside the
estimate (``bench/memory_estimate.py`` does that for a table of cases).

For the sweeper: :func:`estimate` returns an :class:`Estimate`, :func:`fits`
says whether a run fits a memory limit and why not.
"""

from __future__ import annotations

import json
import logging
import math
import re
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

from ftrun.config import ConfigError, has_eval
from ftrun.model import model_config_dict

log = logging.getLogger("ftrun.estimate")

GiB = 2**30
MiB = 2**20
SHARDINGS = ("none", "zero1", "zero2", "zero3", "fsdp")
DTYPE_BYTES = {"fp32": 4, "bf16": 2, "fp16": 2}
CONFIG_DTYPES = {"float32": "fp32", "bfloat16": "bf16", "float16": "fp16"}
# bitsandbytes: 4-bit blocks of 64 values with one absmax each; double quantization stores
# those absmax as uint8 with one fp32 absmax per 256 of them
NF4_BYTES = {True: 0.5 + 1 / 64 + 4 / (64 * 256), False: 0.5 + 4 / 64}
BNB_8BIT_MIN_SIZE = 4096  # bitsandbytes optimizers keep fp32 states for smaller tensors
BNB_8BIT_BLOCK = 256


@dataclass
class Estimate:
    """Estimated peak memory of one run per device, in bytes, by component."""

    model: str
    method: str
    device: str
    """What the figures assume: cpu or cuda (optimizer temporaries differ)."""
    devices: int
    sharding: str
    total_params: int
    trainable_params: int
    weights: int
    gradients: int
    optimizer: int
    activations: int
    """Saved for the backward pass at batch_size x cutoff_len, including the loss's log-softmax."""
    loss_buffers: int
    """Vocabulary-sized buffers that live only while the loss runs backward."""
    step_temporaries: int
    """What the optimizer step allocates on top (foreach copies, factored updates, gathered layers)."""
    eval_buffers: int
    """Evaluation: the logits of one eval batch and the loss over them."""
    load_buffers: int
    """Loading: on CPU the checkpoint shard being read (the largest file), on a GPU the largest tensor."""
    peak: int
    phase: str
    """Where the peak falls: load, backward, optimizer step or eval."""
    weights_dtype: str = ""
    activation_dtype: str = ""
    tokens: int = 0
    gradient_checkpointing: bool = False
    notes: List[str] = field(default_factory=list)

    def line(self) -> str:
        """One line for a run's log: the peak and what it is made of."""
        ckpt = ", checkpointing" if self.gradient_checkpointing else ""
        per = f" per device ({self.devices} x {self.sharding})" if self.devices > 1 else ""
        return (f"Memory estimate: {_gib(self.peak)}{per} at the {self.phase} on {self.device} "
                f"(weights {_gib(self.weights)} {self.weights_dtype}, grads {_gib(self.gradients)}, "
                f"optimizer {_gib(self.optimizer)}, activations {_gib(self.activations)} for "
                f"{self.tokens} tokens{ckpt}; {self.trainable_params:,} of {self.total_params:,} parameters train)")

    def table(self) -> str:
        rows = [("weights", self.weights, self.weights_dtype),
                ("gradients", self.gradients, f"{self.trainable_params:,} trainable parameters"),
                ("optimizer states", self.optimizer, ""),
                ("activations", self.activations, f"{self.tokens} tokens, {self.activation_dtype}"
                 + (", gradient checkpointing" if self.gradient_checkpointing else "")),
                ("loss buffers", self.loss_buffers, "while the loss runs backward"),
                ("optimizer step temporaries", self.step_temporaries, ""),
                ("eval buffers", self.eval_buffers, "one eval batch's logits"),
                ("load buffers", self.load_buffers, "checkpoint shard read while loading" if self.device == "cpu"
                 else "largest tensor converted while loading"),
                ("peak", self.peak, f"at the {self.phase}")]
        lines = [f"{self.model}, method={self.method}, {self.devices} device(s), sharding={self.sharding}, "
                 f"figures for {self.device}"]
        lines += [f"  {name:<28} {_gib(n):>10}  {what}" for name, n, what in rows]
        lines += [f"  note: {n}" for n in self.notes]
        return "\n".join(lines)

    def as_dict(self) -> dict:
        return asdict(self)


def _gib(n: float) -> str:
    return f"{n / GiB:.2f} GiB" if n >= 0.1 * GiB else f"{n / MiB:.1f} MiB"


# ---------------------------------------------------------------------------
# the model's shapes, from its config alone


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


_LAYER = re.compile(r"(?:^|\.)layers\.(\d+)\.")


def _layer_of(name: str) -> Optional[int]:
    m = _LAYER.search(name)
    return int(m.group(1)) if m else None


# ---------------------------------------------------------------------------
# the estimate


def estimate(cfg, devices: int = 1, sharding: str = "none", device: Optional[str] = None) -> Estimate:
    """Peak memory per device of the run ``cfg`` (a composed run config) on ``devices`` devices.

    Args:
        cfg: the run's config, as ``python -m ftrun`` composes it.
        devices: processes the run is launched with (``gpus_per_trial``).
        sharding: none (plain DDP when devices > 1), zero1, zero2, zero3 or fsdp (full shard).
        device: cpu or cuda; default: cuda when one is visible (only the optimizer's temporaries differ).
    """
    if sharding not in SHARDINGS:
        raise ConfigError(f"estimate.sharding={sharding}: choose one of {', '.join(SHARDINGS)}")
    if devices < 1:
        raise ConfigError(f"estimate.devices={devices}: must be >= 1")
    if device is None:
        device = _default_device()
    s = shapes(cfg.model)
    m, notes = cfg.method, []
    numel = {n: math.prod(sh) for n, sh in s.params}
    total = sum(numel.values())

    # weights ------------------------------------------------------------------
    wdtype = _weights_dtype(cfg, s)
    wbytes = DTYPE_BYTES[wdtype]
    quantized = {f"{n}.weight" for n, _, _ in s.linears} if m.name == "qlora" else set()
    if m.name == "qlora":
        per_q = NF4_BYTES[bool(m.double_quant)] if m.bits == 4 else 1.0
        q_numel = sum(k for n, k in numel.items() if n in quantized)
        q_rows = sum(out for _, _, out in s.linears)  # int8: one fp32 scale per output row
        weights = q_numel * per_q + (4 * q_rows if m.bits == 8 else 0)
        weights += 4 * (total - q_numel)  # norms, embeddings, head: fp32 after prepare_model_for_kbit_training
        wdtype = (f"{m.quant_type}{' double-quant' if m.double_quant else ''}" if m.bits == 4 else "int8") \
            + " + fp32 rest"
    else:
        weights = total * wbytes

    # what trains ------------------------------------------------------------------
    trainable_shapes: List[Tuple[Tuple[int, ...], int]] = []  # (shape, bytes per element)
    if m.name == "full":
        trainable_shapes = [(sh, wbytes) for _, sh in s.params]
    elif m.name == "freeze":
        first = s.n_layers - m.trainable_layers
        extra = list(m.extra_modules)
        for n, sh in s.params:
            layer = _layer_of(n)
            if (layer is not None and layer >= first) or any(e in n.split(".") for e in extra):
                trainable_shapes.append((sh, wbytes))
    elif m.name not in ("lora", "qlora"):  # llama_pro (issue 18): its added blocks are not modelled yet
        raise ConfigError(f"method={m.name}: no memory model for it")
    else:
        targets = _lora_targets(s, m)
        if not targets:
            raise ConfigError(f"method.target_modules={list(m.target_modules)}: no linear layer of the model matches")
        for _, i, o in targets:  # peft keeps adapters in fp32 (autocast_adapter_dtype)
            trainable_shapes += [((m.rank, i), 4), ((o, m.rank), 4)]
            if m.use_dora:
                trainable_shapes.append(((o,), 4))
        weights += sum(math.prod(sh) * b for sh, b in trainable_shapes)
        if m.use_dora:
            notes.append("DoRA: its per-forward weight-norm temporaries are not modelled")
    trainable = sum(math.prod(sh) for sh, _ in trainable_shapes)
    gradients = sum(math.prod(sh) * b for sh, b in trainable_shapes)
    # a trained embedding tied to the LM head gets two gradients: the embedding's dense one is
    # added to the head's, so for a moment two more embedding-sized tensors exist
    tied_grad = 0
    if s.tied and m.name in ("full", "freeze"):
        emb = next(((n, sh) for n, sh in s.params if "embed" in n and len(sh) == 2), None)
        trains = m.name == "full" or any(e in emb[0].split(".") for e in m.extra_modules) if emb else False
        if trains:
            tied_grad = 2 * math.prod(emb[1]) * wbytes

    # optimizer states -------------------------------------------------------------
    optimizer, step_tmp = _optimizer_bytes(cfg, trainable_shapes, device)
    if m.name in ("lora", "qlora") and cfg.method.loraplus_lr_ratio:
        notes.append("LoRA+ only regroups the parameters: same states")

    # activations ------------------------------------------------------------------
    act, loss_buf, act_dtype, tokens, eval_buf = _activations(cfg, s)

    # sharding over devices ----------------------------------------------------------
    if devices > 1:
        if sharding == "none":
            step_tmp += gradients  # DDP's reducer keeps gradient buckets as large as the gradients
            notes.append("DDP: nothing is divided; gradient buckets add a copy of the gradients")
        if sharding in ("zero1", "zero2", "zero3", "fsdp"):
            optimizer = optimizer / devices
        if sharding in ("zero2", "zero3", "fsdp"):
            gradients = gradients / devices
        if sharding in ("zero3", "fsdp"):
            layer = max(_layer_bytes(s, wbytes), 1)
            weights = weights / devices
            step_tmp += 2 * layer  # the layer being computed and the next one being gathered
            notes.append("ZeRO-3/FSDP: weights, gradients and states divided; two gathered layers added")
        if sharding != "none":
            notes.append("sharding figures are on paper (not measured here)")

    backward = weights + optimizer + act + loss_buf
    backward_end = weights + optimizer + gradients + tied_grad
    load_buf = _load_bytes(cfg, s, wbytes, device)
    load = (weights - sum(math.prod(sh) * b for sh, b in trainable_shapes if m.name in ("lora", "qlora"))
            + load_buf)
    step = weights + optimizer + gradients + step_tmp
    ev = weights + optimizer + eval_buf
    phase, peak = max((("load", load), ("backward", backward), ("backward", backward_end),
                       ("optimizer step", step), ("eval", ev)), key=lambda t: t[1])
    return Estimate(model=str(cfg.model.name), method=str(m.name), device=device, devices=devices, sharding=sharding,
                    total_params=total, trainable_params=trainable, weights=int(weights), gradients=int(gradients),
                    optimizer=int(optimizer), activations=int(act), loss_buffers=int(loss_buf),
                    step_temporaries=int(step_tmp), eval_buffers=int(eval_buf), load_buffers=int(load_buf),
                    peak=int(peak), phase=phase,
                    weights_dtype=wdtype, activation_dtype=act_dtype, tokens=tokens,
                    gradient_checkpointing=bool(cfg.train.gradient_checkpointing), notes=notes)


def fits(cfg, limit_bytes: float, devices: int = 1, sharding: str = "none", device: Optional[str] = None,
         margin: float = 0.1) -> Tuple[bool, str]:
    """Whether the run fits ``limit_bytes`` per device with ``margin`` to spare, and a reason to record.

    The margin (10 % by default) stands for what the estimate leaves out on a GPU: the
    CUDA context, allocator fragmentation and library workspaces.
    """
    est = estimate(cfg, devices=devices, sharding=sharding, device=device)
    need = est.peak * (1 + margin)
    ok = need <= limit_bytes
    verdict = "fits" if ok else "does not fit"
    biggest = {
        "load": f"load buffers {_gib(est.load_buffers)}",
        "backward": f"activations {_gib(est.activations)} + loss buffers {_gib(est.loss_buffers)} "
                    f"(batch_size={cfg.batch_size} x cutoff_len={cfg.data.cutoff_len})",
        "optimizer step": f"step temporaries {_gib(est.step_temporaries)} (optimizer={cfg.optimizer.name})",
        "eval": f"eval buffers {_gib(est.eval_buffers)} (train.eval_batch_size={cfg.train.eval_batch_size} "
                f"x cutoff_len={cfg.data.cutoff_len})",
    }[est.phase]
    reason = (f"{verdict}: estimated peak {_gib(est.peak)} per device (+{margin:.0%} margin = {_gib(need)}) "
              f"vs limit {_gib(limit_bytes)}; at the {est.phase}: weights {_gib(est.weights)}, grads "
              f"{_gib(est.gradients)}, optimizer {_gib(est.optimizer)}, {biggest}; method={est.method}")
    return ok, reason


def log_estimate(cfg) -> Optional[Estimate]:
    """Log the estimate's one line at the start of a run; a model the estimate cannot read only warns."""
    import os

    try:
        sharding = str(cfg.sharding.name) if "sharding" in cfg else "none"  # the run's own (offload not modelled)
        est = estimate(cfg, devices=int(os.environ.get("WORLD_SIZE", "1")), sharding=sharding)
    except Exception as e:  # noqa: BLE001 - an estimate must never stop a run
        log.warning("Memory estimate unavailable: %s", str(e).splitlines()[0] if str(e) else type(e).__name__)
        return None
    log.info("%s", est.line())
    return est


def _default_device() -> str:
    try:
        import torch

        return "cuda" if torch.cuda.is_available() else "cpu"
    except ImportError:  # pragma: no cover
        return "cpu"


def _weights_dtype(cfg, s: Shapes) -> str:
    if cfg.precision == "pure_bf16":
        return "bf16"
    if cfg.model.dtype != "auto":
        return str(cfg.model.dtype)
    return s.config_dtype or "fp32"  # transformers 5 loads dtype="auto": the checkpoint's own


def _lora_targets(s: Shapes, m) -> List[Tuple[str, int, int]]:
    """The linear layers peft would put adapters on (all-linear: every one but the output head)."""
    targets = list(m.target_modules)
    if targets == ["all-linear"]:
        return [t for t in s.linears if _layer_of(t[0] + ".") is not None]
    return [t for t in s.linears if any(t[0] == x or t[0].endswith("." + x) for x in targets)]


def _optimizer_bytes(cfg, shaped: Sequence[Tuple[Tuple[int, ...], int]], device: str) -> Tuple[float, float]:
    """(states, step temporaries) for the optimizer over trainable parameters given as (shape, bytes)."""
    name = cfg.optimizer.name
    if not shaped:
        return 0.0, 0.0
    sizes = [(math.prod(sh), b) for sh, b in shaped]
    largest = max(k * b for k, b in sizes)
    params = sum(k * b for k, b in sizes)
    foreach = device == "cuda"  # torch uses its foreach kernels on CUDA: temporaries for all parameters at once
    if name == "adamw":
        return 2.0 * params, (params if foreach else largest)
    if name == "sgd":
        return (params if cfg.optimizer.momentum > 0 else 0.0), 0.0
    if name == "adamw_8bit":
        states = 0.0
        for k, b in sizes:
            states += 2 * 4 * k if k < BNB_8BIT_MIN_SIZE else 2 * k * (1 + 4 / BNB_8BIT_BLOCK)
        # on CUDA one fused kernel updates the 8-bit states in place; bitsandbytes' CPU kernel
        # dequantizes both states to fp32 and copies the gradient, one parameter at a time (the
        # square root and its quotient make five fp32 copies at once)
        largest_numel = max(k for k, _ in sizes)
        return states, (0.0 if device == "cuda" else 5 * 4 * largest_numel)
    if name == "adafactor":
        # transformers' Adafactor: factored second moments (row + column) for matrices, full for
        # vectors, no first moment (beta1=None); the update and its negation are fp32 copies of one parameter
        largest_numel = max(k for k, _ in sizes)
        return _adafactor_states([sh for sh, _ in shaped]), 2 * 4 * largest_numel
    raise ConfigError(f"optimizer.name={name}: no memory model for it")


def _adafactor_states(shapes_: Sequence[Tuple[int, ...]]) -> float:
    return float(sum(4 * (math.prod(sh[:-1]) + sh[-1]) if len(sh) >= 2 else 4 * sh[0] for sh in shapes_))


def _load_bytes(cfg, s: Shapes, wbytes: int, device: str) -> float:
    """What loading holds besides the loaded weights.

    On CPU transformers reads a whole checkpoint file into memory while it copies the tensors
    out of it (measured: one file's bytes); on a GPU the file stays in host memory and the
    device sees one tensor at a time in the load dtype.
    """
    largest_tensor = max((math.prod(sh) for _, sh in s.params), default=0) * wbytes
    if device != "cpu":
        return float(largest_tensor)
    if s.files:
        return float(max(s.files))
    file_bytes = DTYPE_BYTES.get(s.config_dtype or "fp32", 4)
    total = sum(math.prod(sh) for _, sh in s.params) * file_bytes
    return float(min(total, 5 * 10**9))  # no files here: assume 5 GB shards, the usual size


def _layer_bytes(s: Shapes, wbytes: int) -> float:
    per = [0.0] * max(s.n_layers, 1)
    for n, sh in s.params:
        layer = _layer_of(n)
        if layer is not None and layer < len(per):
            per[layer] += math.prod(sh) * wbytes
    return max(per)


def _activations(cfg, s: Shapes) -> Tuple[float, float, str, int, float]:
    """(saved activations, loss buffers, dtype, tokens, eval buffers) for one micro-batch.

    Per decoder layer and token, autograd keeps (in elements of the compute dtype):
    with trainable weights 8h + 2kv + 4i + heads + 2 (the inputs of every linear, the
    norms' inputs and normalized values, q/k/v and the attention output with its
    log-sum-exp, the gated MLP's four i-wide tensors); with frozen weights (LoRA) 2h
    fewer, plus r per adapter. Gradient checkpointing keeps only each layer's input (h)
    and recomputes one layer at a time. The loss keeps the log-softmax over the vocabulary
    (fp32) and, while it runs backward, two more tensors of that size. These counts were
    read off autograd's saved tensors for Llama/Qwen2 layers (sdpa attention, no dropout).
    """
    m = cfg.method
    h, i, kv, nh, V = s.hidden, s.intermediate, s.kv_dim, s.heads, s.vocab
    tokens = int(cfg.batch_size) * int(cfg.data.cutoff_len)
    wdtype = _weights_dtype(cfg, s)
    low = cfg.precision in ("bf16", "fp16", "pure_bf16") or (wdtype != "fp32" and m.name != "qlora")
    if m.name == "qlora":
        low = cfg.precision in ("bf16", "fp16", "pure_bf16") or m.compute_dtype != "fp32"
    a = 2 if low else 4
    trainable_layer = 8 * h + 2 * kv + 4 * i + nh + 2
    if m.name in ("lora", "qlora"):
        per_layer = [0] * s.n_layers
        for name, _, _ in _lora_targets(s, m):
            layer = _layer_of(name + ".")
            if layer is not None and layer < s.n_layers:
                per_layer[layer] += m.rank
        layers = [6 * h + 2 * kv + 4 * i + nh + 2 + r for r in per_layer]
    elif m.name == "freeze":
        # layers before the first trainable one see no input that needs a gradient: they save nothing
        # (unless the embeddings train)
        first = s.n_layers - m.trainable_layers
        embeds = any("embed" in e for e in m.extra_modules)
        layers = [trainable_layer if li >= first else (6 * h + 2 * kv + 4 * i + nh + 2 if embeds else 0)
                  for li in range(s.n_layers)]
    else:
        layers = [trainable_layer] * s.n_layers
    if cfg.train.gradient_checkpointing:
        saved_layers = sum(h for x in layers if x) + max(layers)  # inputs + the one layer being recomputed
    else:
        saved_layers = sum(layers)
    head = 3 * h + 1  # final norm and the head's input
    act = tokens * (saved_layers + head) * a + tokens * V * 4  # + the log-softmax the loss keeps (fp32)
    loss_buf = 2 * tokens * V * 4  # the loss's gradient buffers over the vocabulary
    eval_tokens = int(cfg.train.eval_batch_size) * int(cfg.data.cutoff_len)
    # evaluation runs without autograd: either the logits and the loss's log-softmax over them (fp32;
    # bf16 logits are upcast first) or one layer's working set (residual, normed input, the MLP's
    # i-wide tensors), whichever is larger
    logit_bytes = a + 4 + (4 if a == 2 else 0)
    eval_buf = eval_tokens * max(V * logit_bytes, (3 * h + 4 * i) * a) if has_eval(cfg) else 0
    return float(act), float(loss_buf), ("bf16/fp16" if a == 2 else "fp32"), tokens, float(eval_buf)


# ---------------------------------------------------------------------------
# command line

ESTIMATE_KEYS = {"devices": int, "sharding": str, "device": str, "limit": str, "measure": bool, "steps": int,
                 "json": str}


def parse_size(text: str) -> float:
    """``24GiB``, ``80GB``, ``512MiB`` or a number of bytes -> bytes."""
    m = re.fullmatch(r"\s*([0-9.]+)\s*([kKmMgGtT]i?[bB]?|[bB])?\s*", str(text))
    if not m:
        raise ConfigError(f"estimate.limit={text}: give a size like 24GiB, 80GB or 512MiB")
    unit = (m.group(2) or "b").lower().rstrip("b")
    scale = {"": 1, "k": 1e3, "ki": 2**10, "m": 1e6, "mi": 2**20, "g": 1e9, "gi": 2**30, "t": 1e12, "ti": 2**40}
    return float(m.group(1)) * scale[unit]


def split_args(argv: Sequence[str]) -> Tuple[dict, List[str]]:
    """``estimate.KEY=VALUE`` arguments for the estimate; the rest are the run's overrides."""
    own, run = {}, []
    for a in argv:
        if a.startswith("estimate."):
            key, _, value = a[len("estimate."):].partition("=")
            if key not in ESTIMATE_KEYS:
                raise ConfigError(f"{a}: unknown key; estimate takes {', '.join('estimate.' + k for k in ESTIMATE_KEYS)}")
            kind = ESTIMATE_KEYS[key]
            if kind is bool:
                own[key] = value.lower() in ("1", "true", "yes")
            elif kind is int:
                try:
                    own[key] = int(value)
                except ValueError:
                    raise ConfigError(f"{a}: estimate.{key} must be a whole number") from None
            else:
                own[key] = value
        else:
            run.append(a)
    return own, run


def compose(overrides: Sequence[str]):
    """The run config that ``ftrun <overrides>`` would train, validated (:func:`ftrun.compose.compose`)."""
    from ftrun.compose import compose as compose_run
    from ftrun.config import resolved, validate

    cfg = compose_run(list(overrides))
    validate(cfg)
    return resolved(cfg)


def main(argv=None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    if any(a in ("-h", "--help") for a in argv):
        print(__doc__.strip())
        return
    own, overrides = split_args(argv)
    cfg = compose(overrides)
    est = estimate(cfg, devices=own.get("devices", 1), sharding=own.get("sharding", "none"),
                   device=own.get("device"))
    print(est.table())
    out = {"estimate": est.as_dict(), "overrides": overrides}
    if "limit" in own:
        ok, reason = fits(cfg, parse_size(own["limit"]), devices=est.devices, sharding=est.sharding,
                          device=est.device)
        print(reason)
        out["fits"] = {"ok": ok, "reason": reason}
    if own.get("measure"):
        from ftrun.measure import measure

        got = measure(cfg, steps=own.get("steps", 2))
        err = est.peak / got["tensor_peak"] - 1
        print(f"measured on cpu over {got['steps']} steps: tensor peak {_gib(got['tensor_peak'])} "
              f"(estimate {err:+.1%}), resident-memory rise {_gib(got['rss_peak_delta'])}")
        out["measured"] = got
        out["error"] = err
    if own.get("json"):
        Path(own["json"]).write_text(json.dumps(out, indent=2))


if __name__ == "__main__":
    from ftrun.cli import main_guard

    sys.exit(main_guard(main))
