"""The tensors of a run per device: weights, gradients, optimizer states, activations, the loss's and
evaluation's buffers, and sharding over devices. Their peak is what ``torch.cuda.max_memory_allocated``
shows on a GPU, and what PyTorch's profiler counts on CPU (``ftrun.estimate.measured_peak``)."""

from __future__ import annotations

import math
from typing import List, Sequence, Tuple

from ftrun.attention import FLATTEN_ATTN
from ftrun.config import ConfigError, has_eval
from ftrun.estimate.breakdown import Estimate
from ftrun.estimate.shapes import Shapes, layer_of, shapes

SHARDINGS = ("none", "zero1", "zero2", "zero3", "fsdp")
DTYPE_BYTES = {"fp32": 4, "bf16": 2, "fp16": 2}
# bitsandbytes: 4-bit blocks of 64 values with one absmax each; double quantization stores
# those absmax as uint8 with one fp32 absmax per 256 of them
NF4_BYTES = {True: 0.5 + 1 / 64 + 4 / (64 * 256), False: 0.5 + 4 / 64}
BNB_8BIT_MIN_SIZE = 4096  # bitsandbytes optimizers keep fp32 states for smaller tensors
BNB_8BIT_BLOCK = 256
Shaped = List[Tuple[Tuple[int, ...], int]]  # (shape, bytes per element) of each trainable tensor


def tensor_estimate(cfg, devices: int = 1, sharding: str = "none", device: str = "cpu") -> Estimate:
    """The tensors' peak per device of the run ``cfg`` (``runtime`` and ``allocator`` left at 0).

    Args:
        cfg: the run's config, as ``python -m ftrun`` composes it.
        devices: processes the run is launched with (``gpus_per_trial``).
        sharding: none (plain DDP when devices > 1), zero1, zero2, zero3 or fsdp (full shard).
        device: cpu or cuda (only the optimizer's temporaries differ).
    """
    if sharding not in SHARDINGS:
        raise ConfigError(f"estimate.sharding={sharding}: choose one of {', '.join(SHARDINGS)}")
    if devices < 1:
        raise ConfigError(f"estimate.devices={devices}: must be >= 1")
    s = shapes(cfg.model)
    m, notes = cfg.method, []
    total = sum(math.prod(sh) for _, sh in s.params)
    weights, wdtype, wbytes = _weights(cfg, s)
    trainable_shapes = _trainable(cfg, s, wbytes)
    adapters = sum(math.prod(sh) * b for sh, b in trainable_shapes) if m.name in ("lora", "qlora") else 0
    weights += adapters  # lora's adapters are weights the checkpoint does not hold
    if m.name in ("lora", "qlora") and m.use_dora:
        notes.append("DoRA: its per-forward weight-norm temporaries are not modelled")
    gradients = sum(math.prod(sh) * b for sh, b in trainable_shapes)
    optimizer, step_tmp = _optimizer_bytes(cfg, trainable_shapes, device)
    if m.name in ("lora", "qlora") and cfg.method.loraplus_lr_ratio:
        notes.append("LoRA+ only regroups the parameters: same states")
    act, loss_buf, act_dtype, tokens, eval_buf = _activations(cfg, s)
    if devices > 1:
        weights, gradients, optimizer, step_tmp = _shard(s, wbytes, devices, sharding, notes,
                                                         weights, gradients, optimizer, step_tmp)
    load_buf = _load_bytes(cfg, s, wbytes, device)
    phase, peak = max((("load", weights - adapters + load_buf),
                       ("backward", weights + optimizer + act + loss_buf),
                       ("backward", weights + optimizer + gradients + _tied_grad(cfg, s, wbytes)),
                       ("optimizer step", weights + optimizer + gradients + step_tmp),
                       ("eval", weights + optimizer + eval_buf)), key=lambda t: t[1])
    return Estimate(model=str(cfg.model.name), method=str(m.name), device=device, devices=devices, sharding=sharding,
                    total_params=total, trainable_params=sum(math.prod(sh) for sh, _ in trainable_shapes),
                    weights=int(weights), gradients=int(gradients), optimizer=int(optimizer), activations=int(act),
                    loss_buffers=int(loss_buf), step_temporaries=int(step_tmp), eval_buffers=int(eval_buf),
                    load_buffers=int(load_buf), tensor_peak=int(peak), phase=phase, peak=int(peak),
                    weights_dtype=wdtype, activation_dtype=act_dtype, tokens=tokens,
                    gradient_checkpointing=bool(cfg.train.gradient_checkpointing), notes=notes)


def _weights(cfg, s: Shapes) -> Tuple[float, str, int]:
    """(bytes of the loaded weights, their dtype as said, bytes per element of the unquantized ones)."""
    m = cfg.method
    wdtype = _weights_dtype(cfg, s)
    wbytes = DTYPE_BYTES[wdtype]
    numel = {n: math.prod(sh) for n, sh in s.params}
    total = sum(numel.values())
    if m.name != "qlora":
        return float(total * wbytes), wdtype, wbytes
    quantized = {f"{n}.weight" for n, _, _ in s.linears}
    per_q = NF4_BYTES[bool(m.double_quant)] if m.bits == 4 else 1.0
    q_numel = sum(k for n, k in numel.items() if n in quantized)
    q_rows = sum(out for _, _, out in s.linears)  # int8: one fp32 scale per output row
    weights = q_numel * per_q + (4 * q_rows if m.bits == 8 else 0)
    weights += 4 * (total - q_numel)  # norms, embeddings, head: fp32 after prepare_model_for_kbit_training
    said = (f"{m.quant_type}{' double-quant' if m.double_quant else ''}" if m.bits == 4 else "int8") + " + fp32 rest"
    return float(weights), said, wbytes


def _trainable(cfg, s: Shapes, wbytes: int) -> Shaped:
    """The tensors that train under the method, as (shape, bytes per element)."""
    m = cfg.method
    if m.name == "full":
        return [(sh, wbytes) for _, sh in s.params]
    if m.name == "freeze":
        first = s.n_layers - m.trainable_layers
        extra = list(m.extra_modules)
        return [(sh, wbytes) for n, sh in s.params
                if (layer_of(n) is not None and layer_of(n) >= first) or any(e in n.split(".") for e in extra)]
    if m.name not in ("lora", "qlora"):  # llama_pro (issue 18): its added blocks are not modelled yet
        raise ConfigError(f"method={m.name}: no memory model for it")
    targets = _lora_targets(s, m)
    if not targets:
        raise ConfigError(f"method.target_modules={list(m.target_modules)}: no linear layer of the model matches")
    out: Shaped = []
    for _, i, o in targets:  # peft keeps adapters in fp32 (autocast_adapter_dtype)
        out += [((m.rank, i), 4), ((o, m.rank), 4)]
        if m.use_dora:
            out.append(((o,), 4))
    return out


def _tied_grad(cfg, s: Shapes, wbytes: int) -> float:
    """A trained embedding tied to the LM head gets two gradients: the embedding's dense one is
    added to the head's, so for a moment two more embedding-sized tensors exist (one with the chunked
    loss, whose head gradient autograd takes without a copy)."""
    m = cfg.method
    if not s.tied or m.name not in ("full", "freeze"):
        return 0.0
    emb = next(((n, sh) for n, sh in s.params if "embed" in n and len(sh) == 2), None)
    if emb is None or not (m.name == "full" or any(e in emb[0].split(".") for e in m.extra_modules)):
        return 0.0
    return float((1 if chunked_loss(cfg) else 2) * math.prod(emb[1]) * wbytes)


def _shard(s: Shapes, wbytes: int, devices: int, sharding: str, notes: List[str],
           weights: float, gradients: float, optimizer: float, step_tmp: float) -> Tuple[float, float, float, float]:
    """Weights, gradients, optimizer states and step temporaries per device under ``sharding``."""
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
    return weights, gradients, optimizer, step_tmp


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
        return [t for t in s.linears if layer_of(t[0] + ".") is not None]
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
        layer = layer_of(n)
        if layer is not None and layer < len(per):
            per[layer] += math.prod(sh) * wbytes
    return max(per)


def _activations(cfg, s: Shapes) -> Tuple[float, float, str, int, float]:
    """(saved activations, loss buffers, dtype, tokens, eval buffers) for one micro-batch.

    Per decoder layer and token, autograd keeps (in elements of the compute dtype):
    with trainable weights 8h + 2kv + 4i + heads + 2 (the inputs of every linear, the
    norms' inputs and normalized values, q/k/v and the attention output with its
    log-sum-exp, the gated MLP's four i-wide tensors, three with ``train.recompute_elementwise``); with frozen
    weights (LoRA) 2h
    fewer, plus r per adapter. Gradient checkpointing keeps only each layer's input (h)
    and recomputes one layer at a time. transformers' loss keeps the log-softmax over the vocabulary
    (fp32) and, while it runs backward, two more tensors of that size; ftrun's chunked loss
    (``train.chunked_loss``) holds one chunk of logits at a time. These counts were
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
    recompute = cfg.train.get("recompute_elementwise", False) and not cfg.train.gradient_checkpointing
    gated = 3 if recompute else 4  # ftrun/recompute.py: act(gate) is not kept
    trainable_layer = 8 * h + 2 * kv + gated * i + nh + 2
    if m.name in ("lora", "qlora"):
        per_layer = [0] * s.n_layers
        for name, _, _ in _lora_targets(s, m):
            layer = layer_of(name + ".")
            if layer is not None and layer < s.n_layers:
                per_layer[layer] += m.rank
        layers = [6 * h + 2 * kv + gated * i + nh + 2 + r for r in per_layer]
    elif m.name == "freeze":
        # layers before the first trainable one see no input that needs a gradient: they save nothing
        # (unless the embeddings train)
        first = s.n_layers - m.trainable_layers
        embeds = any("embed" in e for e in m.extra_modules)
        layers = [trainable_layer if li >= first else (6 * h + 2 * kv + gated * i + nh + 2 if embeds else 0)
                  for li in range(s.n_layers)]
    else:
        layers = [trainable_layer] * s.n_layers
    if cfg.train.gradient_checkpointing:
        saved_layers = sum(h for x in layers if x) + max(layers)  # inputs + the one layer being recomputed
    else:
        saved_layers = sum(layers)
    head = 3 * h + 1  # final norm and the head's input
    act = tokens * (saved_layers + head) * a + _packed_attention(cfg, s, tokens, a, sum(1 for x in layers if x))
    if chunked_loss(cfg):  # ftrun/linear_cross_entropy.py: one chunk's logits (+ their fp32 copy), the hidden
        # states' gradient, and the head's fp32 gradient from the forward pass on when the head trains
        from ftrun.linear_cross_entropy import chunk_tokens

        chunk = min(tokens, chunk_tokens(V))
        loss_buf = chunk * V * (4 + (a if a == 2 else 0)) + tokens * h * a + (V * h * 4 if m.name == "full" else 0)
    else:  # transformers' loss keeps the log-softmax (fp32) and runs backward with two more such buffers
        act += tokens * V * 4
        loss_buf = 2 * tokens * V * 4
    eval_tokens = int(cfg.train.eval_batch_size) * int(cfg.data.cutoff_len)
    # evaluation runs without autograd: either the logits and the loss's log-softmax over them (fp32;
    # bf16 logits are upcast first; the chunked loss: one chunk of them) or one layer's working set
    # (residual, normed input, the MLP's i-wide tensors), whichever is larger
    working = eval_tokens * (3 * h + 4 * i) * a
    if not has_eval(cfg):
        eval_buf = 0
    elif chunked_loss(cfg):  # one chunk of logits (upcast when bf16), beside the batch's hidden states
        from ftrun.linear_cross_entropy import chunk_tokens

        eval_buf = max(min(eval_tokens, chunk_tokens(V)) * V * (a + (4 if a == 2 else 0)) + eval_tokens * h * a, working)
    else:
        eval_buf = max(eval_tokens * V * (a + 4 + (4 if a == 2 else 0)), working)
    return float(act), float(loss_buf), ("bf16/fp16" if a == 2 else "fp32"), tokens, float(eval_buf)


def chunked_loss(cfg) -> bool:
    """Whether the run trains with ftrun's chunked loss (``train.chunked_loss``) rather than transformers'."""
    from ftrun.linear_cross_entropy import applies
    from ftrun.model import model_config_dict

    return applies(cfg, model_config_dict(cfg.model).get("model_type"))


def _packed_attention(cfg, s: Shapes, tokens: int, a: int, saving_layers: int) -> float:
    """Packed rows (``data.packing``, sdpa or eager attention; not flattened ones, see ftrun/data/collate.py) carry a block-diagonal mask, and attention
    with a mask keeps its probabilities (heads x cutoff_len per token) for the backward pass in every
    layer that saves activations, plus one more such tensor while a layer runs backward. Measured on
    CPU (bench/process_memory.py): without this term the tiny model's packed case came out 18 % low."""
    data = cfg.get("data")
    if not data or not data.get("packing", False) or cfg.model.attn_implementation in FLATTEN_ATTN:
        return 0.0
    per_layer = tokens * int(data.cutoff_len) * s.heads * a
    layers = 1 if cfg.train.gradient_checkpointing else saving_layers
    return float(per_layer * (layers + 1))
