"""``model.attn_implementation=sdpa_varlen``: torch's SDPA over flattened batches, one sample at a time.

A flattened batch is one row holding every sample of the micro-batch back to back, with
``position_ids`` that restart at 0 per sample and ``cu_seq_lens_q`` (the samples' borders), as
transformers' ``DataCollatorWithFlattening`` and ftrun's :class:`ftrun.data.collate.PackedCollator`
make it. flash_attention_2 reads such a batch with its varlen kernel on CUDA; nothing does on
CPU, where transformers' ``sdpa`` builds a block-diagonal mask over the whole row and computes
(and keeps for the backward pass) every score of it, the masked ones included. This attention
function gives each sample its own causal ``scaled_dot_product_attention`` call instead: no
padding, no mask, no score across a border, so the work is that of the samples alone.

Every other batch (padded, with a cache, generation) goes to transformers' own
``sdpa_attention_forward`` unchanged, with the mask transformers' ``sdpa_mask`` builds; only a
one-row batch without padding gets no mask (one causal sequence, or a flattened one whose borders
come from its ``cu_seq_lens_q`` or restarting ``position_ids``).

Registered with transformers' ``AttentionInterface`` and ``AttentionMaskInterface`` (its extension
points for attention functions) by :func:`register`, which :func:`ftrun.model.load_model` calls.
Models whose attention needs more than causal SDPA (a sliding window, logit soft-capping) load with
plain ``sdpa`` instead (:func:`supports`).
"""

from __future__ import annotations

import logging

log = logging.getLogger(__name__)

NAME = "sdpa_varlen"
# the implementations that read a flattened batch (one row, cu_seq_lens); the collator flattens for them
FLATTEN_ATTN = (NAME, "flash_attention_2", "flash_attention_3", "kernels-community/flash-attn",
                "kernels-community/vllm-flash-attn3")


def varlen_sdpa_forward(module, query, key, value, attention_mask, dropout: float = 0.0, scaling=None, **kwargs):
    """transformers' attention-function signature: query/key/value ``(batch, heads, seq, dim)``;
    returns ``(batch, seq, heads, dim)`` and no weights."""
    import torch
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    bounds = _borders(query, key, attention_mask, kwargs)
    if bounds is None:
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout,
                                      scaling=scaling, **kwargs)
    if kwargs.get("sliding_window") is not None or kwargs.get("softcap") is not None:
        raise ValueError(f"attn_implementation={NAME} does not do sliding windows or soft-capping; "
                         "use model.attn_implementation=sdpa")
    lengths = [e - s for s, e in zip(bounds[:-1], bounds[1:])]
    # grouped-query heads read their shared key/value heads in the kernel (enable_gqa), not from copies;
    # split, not slicing: the backward of a split is one cat, of every slice a zeroed full-size tensor;
    # each sample's output is cat in (batch, seq, heads, dim) order at once, the layout the caller returns
    gqa = query.shape[1] != key.shape[1]
    out = [torch.nn.functional.scaled_dot_product_attention(q, k, v, dropout_p=dropout, scale=scaling, is_causal=True,
                                                            enable_gqa=gqa).transpose(1, 2)
           for q, k, v in zip(query.split(lengths, 2), key.split(lengths, 2), value.split(lengths, 2))]
    return (out[0].contiguous() if len(out) == 1 else torch.cat(out, dim=1)), None


def _borders(query, key, attention_mask, kwargs):
    """The samples' borders in a one-row batch that needs no mask; None for any other batch."""
    if query.shape[0] != 1 or attention_mask is not None or query.shape[2] != key.shape[2] or query.shape[2] < 2:
        return None
    cu = kwargs.get("cu_seq_lens_q")
    if cu is not None:
        return [int(x) for x in cu.tolist()]
    pos = kwargs.get("position_ids")
    n = query.shape[2]
    if pos is None or pos.shape[-1] != n:
        return [0, n]
    starts = (pos.reshape(-1) == 0).nonzero().flatten().tolist()
    return sorted({0, *starts, n})


def varlen_mask(batch_size, q_length, kv_length, q_offset=0, kv_offset=0, attention_mask=None, **kwargs):
    """No mask for a one-row batch without padding or cache offset (its borders are found by
    :func:`varlen_sdpa_forward`); transformers' ``sdpa_mask`` for every other batch."""
    from transformers.masking_utils import sdpa_mask

    plain = isinstance(q_offset, int) and isinstance(kv_offset, int) and q_offset == kv_offset == 0
    if batch_size == 1 and attention_mask is None and plain and q_length == kv_length and not kwargs.get("use_vmap"):
        return None
    return sdpa_mask(batch_size=batch_size, q_length=q_length, kv_length=kv_length, q_offset=q_offset,
                     kv_offset=kv_offset, attention_mask=attention_mask, **kwargs)


def register() -> None:
    """Make ``attn_implementation="sdpa_varlen"`` known to transformers (idempotent)."""
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface

    AttentionInterface.register(NAME, varlen_sdpa_forward)
    AttentionMaskInterface.register(NAME, varlen_mask)


def supports(config) -> bool:
    """Whether a model config's attention is plain causal attention that per-sample SDPA reproduces
    (no sliding window in use, no logit soft-capping); the text config of a multimodal one."""
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    window = getattr(text, "sliding_window", None)
    if window is not None and getattr(text, "use_sliding_window", True):
        return False
    if getattr(text, "layer_types", None) and any(t != "full_attention" for t in text.layer_types):
        return False
    return getattr(text, "is_causal", True) and not getattr(text, "attn_logit_softcapping", None)


def loading_name(name: str) -> str:
    """The ``attn_implementation`` transformers loads the weights with: ``sdpa`` for ``sdpa_varlen``
    (:func:`use` switches the loaded model), every other name as it is."""
    return "sdpa" if name == NAME else name


def use(model, name: str) -> str:
    """Switch a model loaded with ``sdpa`` to ``sdpa_varlen`` when ``name`` asks for it and its attention
    allows (:func:`supports`); the implementation the model now runs with."""
    if name != NAME:
        return name
    if not supports(model.config):
        log.info("model.attn_implementation=%s: this model's attention uses a sliding window or soft-capping; "
                 "it runs with sdpa and padded batches", NAME)
        return "sdpa"
    register()
    model.set_attn_implementation(NAME)
    return NAME
