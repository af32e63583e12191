"""Batched generation, the one place a model answers prompts in batches: predict's answers to a
data set, gen_eval's answers during training, and the settings chat and serve sample with.

:func:`generate_ids` continues token-id prompts, left-padded in batches, so every prompt ends where
generation starts; :func:`generate` renders conversations with the model's chat template first.
Nothing here imports torch at module level.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import List, Optional, Sequence

log = logging.getLogger(__name__)


@dataclass
class GenSettings:
    """How a model answers: the decoding settings of predict, chat, serve and generative evaluation."""

    max_new_tokens: int = 64
    """Longest answer, in tokens."""
    temperature: float = 0.0
    """0 = greedy decoding; > 0 samples at this temperature."""
    top_p: float = 1.0
    """Nucleus sampling (with temperature > 0)."""
    repetition_penalty: float = 1.0
    """> 1 discourages repeating tokens."""


def stop_ids(model, tokenizer) -> List[int]:
    """EOS of the tokenizer plus any the model's generation config names (e.g. Llama 3's <|eot_id|>)."""
    ids = []
    for v in (tokenizer.eos_token_id, getattr(model.generation_config, "eos_token_id", None)):
        for i in (v if isinstance(v, (list, tuple)) else [v]):
            if i is not None and i not in ids:
                ids.append(int(i))
    return ids


def generation_kwargs(gen: GenSettings, model, tokenizer) -> dict:
    """``model.generate`` keywords for ``gen``: greedy at temperature 0, else sampling."""
    eos = stop_ids(model, tokenizer)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos[0]
    kw = {"max_new_tokens": gen.max_new_tokens, "eos_token_id": eos, "pad_token_id": pad,
          "repetition_penalty": gen.repetition_penalty}
    if gen.temperature > 0:
        kw.update(do_sample=True, temperature=gen.temperature, top_p=gen.top_p)
    else:
        kw.update(do_sample=False, temperature=None, top_p=None, top_k=None)
    return kw


def generate_ids(model, tokenizer, prompts: Sequence[List[int]], gen: Optional[GenSettings] = None,
                 batch_size: int = 16, progress: bool = False) -> List[List[int]]:
    """The new token ids after each token-id prompt, generated ``batch_size`` prompts at a time, left-padded
    (rows that stop early are padded after their end; decode with ``skip_special_tokens``)."""
    import torch

    kw = generation_kwargs(gen or GenSettings(), model, tokenizer)
    pad = kw["pad_token_id"]
    device = next(model.parameters()).device
    out: List[List[int]] = []
    for start in range(0, len(prompts), batch_size):
        chunk = [list(p) for p in prompts[start:start + batch_size]]
        width = max(len(p) for p in chunk)
        ids = torch.tensor([[pad] * (width - len(p)) + p for p in chunk], device=device)
        mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in chunk], device=device)
        with torch.no_grad():
            new = model.generate(input_ids=ids, attention_mask=mask, **kw)[:, width:]
        out += [row.tolist() for row in new]
        if progress:
            log.info("  generated %d / %d", len(out), len(prompts))
    return out


def generate(model, tokenizer, conversations: Sequence[List[dict]], gen: Optional[GenSettings] = None,
             batch_size: int = 16, progress: bool = False) -> List[str]:
    """The model's answer to each conversation (its messages up to the answer), with its chat template."""
    prompts = [tokenizer(tokenizer.apply_chat_template(list(c), add_generation_prompt=True, tokenize=False),
                         add_special_tokens=False)["input_ids"] for c in conversations]
    new = generate_ids(model, tokenizer, prompts, gen, batch_size, progress)
    return [t.strip() for t in tokenizer.batch_decode(new, skip_special_tokens=True)]
