"""Batching: padding, or packing several samples into one row without cross-talk.

With ``data.packing=true`` the training samples are packed (best-fit decreasing)
into rows of at most ``cutoff_len`` tokens. A packed row carries
``position_ids`` that restart at 0 for every sample, and the first label of
every sample is IGNORE_INDEX, so no loss crosses a border. The collator then:

* for ``sdpa``, ``eager`` and ``flex_attention``: pads rows to the longest and
  passes *no* attention mask. transformers (masking_utils) then reads the
  restarting position ids as packed sequences and builds a block-diagonal
  causal mask, so no token attends across a border. Padding forms a segment
  of its own with labels IGNORE_INDEX.
* for ``sdpa_varlen`` (:mod:`ftrun.attention`) and ``flash_attention_2``/``3``:
  flattens the batch into one row, as transformers' ``DataCollatorWithFlattening``
  does, with the ``cu_seq_lens`` the varlen kernels need; no padding at all.

With ``data.neat_packing=false`` (LLaMA-Factory's plain ``packing``) the
position ids run on across the whole row instead, so transformers builds one
causal mask over it and every sample attends to the ones packed before it.

With ``data.padding_free=true`` and such an attention, the sft
recipe gives unpacked training samples ``position_ids`` too (:func:`with_positions`):
each is a "packed row" of one sample, so a micro-batch of them is flattened the
same way, the same batches as padded ones without the padding. Every sample's first label is
IGNORE_INDEX in a flattened row (it is never a target in a padded one either).

Evaluation data (never packed, no position ids) is padded with
``DataCollatorForSeq2Seq``.
"""

from __future__ import annotations

import bisect
from typing import Dict, List, Sequence

from ftrun.attention import FLATTEN_ATTN
from ftrun.data.encode import IGNORE_INDEX

PACKABLE_ATTN = ("sdpa", "eager", "flex_attention", *FLATTEN_ATTN)


def pack_bins(lengths: Sequence[int], capacity: int) -> List[List[int]]:
    """Indices grouped into bins of total length <= ``capacity`` (best-fit decreasing)."""
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    bins: List[List[int]] = []
    space: List[tuple] = []  # sorted (remaining, bin index)
    for i in order:
        n = lengths[i]
        if n > capacity:
            raise ValueError(f"sample {i} has {n} tokens, more than the capacity {capacity}")
        j = bisect.bisect_left(space, (n, -1))
        if j < len(space):
            remaining, b = space.pop(j)
            bins[b].append(i)
            bisect.insort(space, (remaining - n, b))
        else:
            bins.append([i])
            bisect.insort(space, (capacity - n, len(bins) - 1))
    return [sorted(b) for b in bins]


def pack_dataset(ds, cutoff_len: int, neat: bool = True):
    """Tokenized samples -> packed rows of input_ids, labels and position_ids that restart per sample
    (``neat``), or run on across the row (samples then attend to each other)."""
    from datasets import Dataset, Features, List as DList, Value

    table = ds.with_format("arrow")
    ids_col, labels_col = table["input_ids"].to_pylist(), table["labels"].to_pylist()
    bins = pack_bins([len(x) for x in ids_col], cutoff_len)

    def rows():
        for b in bins:
            ids, labels, pos = [], [], []
            for i in b:
                x, y = ids_col[i], labels_col[i]
                ids += x
                labels += [IGNORE_INDEX] + y[1:]
                pos += range(len(x)) if neat else range(len(pos), len(pos) + len(x))
            yield {"input_ids": ids, "labels": labels, "position_ids": pos}

    features = Features({"input_ids": DList(Value("int32")), "labels": DList(Value("int32")),
                         "position_ids": DList(Value("int32"))})
    return Dataset.from_generator(rows, features=features, keep_in_memory=True) if bins else ds


def with_positions(ds):
    """Unpacked tokenized samples with ``position_ids`` 0..n-1: rows the collator flattens (padding-free)."""
    from datasets import List as DList, Value

    features = ds.features.copy()
    features["position_ids"] = DList(Value("int32"))
    return ds.map(lambda b: {"position_ids": [list(range(len(x))) for x in b["input_ids"]]}, batched=True,
                  features=features, keep_in_memory=True)


def pack_text(docs, tokenizer, block_size: int):
    """Raw-text documents (a dataset with ``text``) -> (blocks of ``block_size`` tokens, report), for pt.

    Documents are joined with EOS, then cut; the last partial block is dropped
    unless it is the only one. Attention spans document boundaries within a
    block (as in pre-training); EOS marks them. Labels are the inputs.
    """
    from datasets import Dataset, Features, List as DList, Value

    from ftrun.data.encode import EncodeReport

    texts = docs.with_format("arrow")["text"].to_pylist()
    ids: List[int] = []
    for piece in tokenizer(texts, add_special_tokens=False)["input_ids"] if texts else []:
        ids += list(piece) + [tokenizer.eos_token_id]
    blocks = [ids[i:i + block_size] for i in range(0, len(ids), block_size)]
    if len(blocks) > 1 and len(blocks[-1]) < block_size:
        blocks.pop()
    features = Features({"input_ids": DList(Value("int32")), "attention_mask": DList(Value("int8")),
                         "labels": DList(Value("int32"))})
    ds = Dataset.from_dict({"input_ids": blocks, "attention_mask": [[1] * len(b) for b in blocks], "labels": blocks},
                           features=features)
    report = EncodeReport(samples=len(texts), tokens=sum(len(b) for b in blocks), packed_rows=len(blocks))
    return ds, report


class PackedCollator:
    """Batches packed rows (see the module doc); pads unpacked ones with DataCollatorForSeq2Seq."""

    def __init__(self, tokenizer, attn_implementation: str = "sdpa"):
        from transformers import DataCollatorForSeq2Seq

        self.tokenizer = tokenizer
        self.flatten = attn_implementation in FLATTEN_ATTN
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        self.padding = DataCollatorForSeq2Seq(tokenizer, padding=True, label_pad_token_id=IGNORE_INDEX)

    def __call__(self, features: List[Dict]):
        if "position_ids" not in features[0]:
            return self.padding(features)
        import torch

        if self.flatten:
            ids, labels, pos = [], [], []
            for f in features:
                ids += list(f["input_ids"])
                labels += [IGNORE_INDEX] + list(f["labels"])[1:]  # no target across a border
                pos += list(f["position_ids"])
            p = torch.tensor(pos, dtype=torch.long)
            starts = torch.nonzero(p == 0).flatten().tolist() + [len(pos)]
            cu = torch.tensor(starts, dtype=torch.int32)
            max_len = int((cu[1:] - cu[:-1]).max())
            return {"input_ids": torch.tensor([ids], dtype=torch.long),
                    "labels": torch.tensor([labels], dtype=torch.long),
                    "position_ids": p[None],
                    "cu_seq_lens_q": cu, "cu_seq_lens_k": cu, "max_length_q": max_len, "max_length_k": max_len}
        width = max(len(f["input_ids"]) for f in features)
        ids, labels, pos = [], [], []
        for f in features:
            n = len(f["input_ids"])
            pad = width - n
            ids.append(list(f["input_ids"]) + [self.pad_id] * pad)
            labels.append(list(f["labels"]) + [IGNORE_INDEX] * pad)
            pos.append(list(f["position_ids"]) + list(range(pad)))
        return {"input_ids": torch.tensor(ids, dtype=torch.long),
                "labels": torch.tensor(labels, dtype=torch.long),
                "position_ids": torch.tensor(pos, dtype=torch.long)}


def make_collator(data_cfg, tokenizer, attn_implementation: str = "sdpa"):
    """The Trainer's data collator: rows with ``position_ids`` (packed, or padding-free) are batched as the
    module doc says, the others padded; ``data_cfg`` without packing or padding_free pads everything."""
    if data_cfg is not None and (data_cfg.get("packing", False) or data_cfg.get("padding_free", False)):
        return PackedCollator(tokenizer, attn_implementation)
    from transformers import DataCollatorForSeq2Seq

    return DataCollatorForSeq2Seq(tokenizer, padding=True, label_pad_token_id=IGNORE_INDEX)
