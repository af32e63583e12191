"""Tokenizing conversations: input ids, the label mask, truncation and its report.

Each template segment is tokenized on its own and the ids concatenated, so no
BPE merge crosses a prompt/answer border and the mask is exact. Assistant turns
are trained on (all of them, or only the last with ``mask_history``; everything
with ``train_on_prompt``) and end with the template's stop token.

A sample longer than ``cutoff_len`` keeps at least half the budget (or all of
it, if shorter) for its last answer: the prompt is cut from the left, so the
generation prompt right before the answer stays, and the answer from the
right. Nothing is cut away whole; with ``drop_long`` such samples are dropped
and counted instead.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Dict, List, Optional, Sequence, Tuple

from ftrun.config import ConfigError
from ftrun.data.templates import SystemNotSupported, Template

IGNORE_INDEX = -100  # label value the loss skips (PyTorch's cross_entropy default)


@dataclass
class EncodeReport:
    """What preprocessing did to the data: samples kept, cut, dropped and skipped."""

    samples: int = 0
    """Samples in the tokenized dataset."""
    truncated: int = 0
    """Samples cut to cutoff_len."""
    tokens_dropped: int = 0
    """Tokens cut away by truncation."""
    dropped: int = 0
    """Samples left out for length (data.drop_long)."""
    skipped: int = 0
    """Records left out as unusable (see the warning that lists them)."""
    tokens: int = 0
    """Tokens in the tokenized dataset."""
    shortest_prompt: Optional[int] = None
    packed_rows: Optional[int] = None
    """Rows after packing (data.packing)."""
    skip_examples: List[str] = field(default_factory=list)

    def as_metrics(self, prefix: str) -> Dict[str, float]:
        out = {
            f"{prefix}_samples": self.samples,
            f"{prefix}_truncated": self.truncated,
            f"{prefix}_tokens_dropped": self.tokens_dropped,
            f"{prefix}_dropped": self.dropped,
            f"{prefix}_skipped": self.skipped,
            f"{prefix}_tokens": self.tokens,
        }
        if self.packed_rows is not None:
            out[f"{prefix}_packed_rows"] = self.packed_rows
        return out

    def to_json(self) -> dict:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict) -> "EncodeReport":
        return cls(**data)

    def summary(self) -> str:
        parts = [f"{self.samples} samples", f"{self.tokens} tokens"]
        if self.truncated:
            parts.append(f"{self.truncated} truncated ({self.tokens_dropped} tokens dropped)")
        if self.dropped:
            parts.append(f"{self.dropped} dropped as longer than cutoff_len")
        if self.skipped:
            parts.append(f"{self.skipped} bad records skipped")
        if self.packed_rows is not None:
            parts.append(f"packed into {self.packed_rows} rows")
        return ", ".join(parts)


def column(ds, name: str) -> list:
    """One column of a ``datasets.Dataset`` as a list, fast (no per-row formatting)."""
    return ds.with_format("arrow")[name].to_pylist()


def tokenize_segments(segments, tokenizer, template: Template, train_on_prompt: bool = False,
                      mask_history: bool = False):
    """(input_ids, labels, start of the last trained segment, assistant tokens) of one conversation."""
    texts = [t for t, _ in segments]
    pieces = tokenizer(texts, add_special_tokens=False)["input_ids"] if texts else []
    ids: List[int] = []
    labels: List[int] = []
    last_answer = n_answer = 0
    stop = template.stop_token_id
    n_answers = sum(1 for _, is_answer in segments if is_answer)
    seen = 0
    for (_, is_answer), piece in zip(segments, pieces):
        piece = list(piece)
        trained = is_answer
        if is_answer:
            seen += 1
            if stop is not None and stop not in piece:  # a trained turn suffix may follow the template's stop
                piece.append(stop)
            trained = not mask_history or seen == n_answers
            if trained:
                last_answer = len(ids)
                n_answer += len(piece)
        ids += piece
        labels += piece if (trained or train_on_prompt) else [IGNORE_INDEX] * len(piece)
    return ids, labels, last_answer, n_answer


def truncate(ids, labels, last_answer: int, cutoff_len: int) -> Tuple[List[int], List[int], int]:
    """Cut to ``cutoff_len`` keeping the last answer's start; returns (ids, labels, tokens dropped)."""
    total = len(ids)
    if total <= cutoff_len:
        return ids, labels, 0
    n_prompt, n_answer = last_answer, total - last_answer
    keep_answer = min(n_answer, max(cutoff_len - n_prompt, cutoff_len // 2))
    keep_prompt = cutoff_len - keep_answer
    start = n_prompt - keep_prompt
    end = n_prompt + keep_answer
    return ids[start:end], labels[start:end], total - cutoff_len


def encode_messages(messages, tokenizer, template: Template, cutoff_len: Optional[int],
                    train_on_prompt: bool = False, mask_history: bool = False, tools: str = ""):
    """One conversation -> (features, info) where info has prompt/response lengths and truncation."""
    segments = template.segments(messages, mask_history=mask_history, tools=tools)
    ids, labels, last_answer, n_response = tokenize_segments(segments, tokenizer, template, train_on_prompt,
                                                             mask_history)
    info = {"prompt_len": last_answer, "response_len": n_response, "total_len": len(ids), "dropped": 0}
    if cutoff_len is not None:
        ids, labels, info["dropped"] = truncate(ids, labels, last_answer, cutoff_len)
    return {"input_ids": ids, "attention_mask": [1] * len(ids), "labels": labels}, info


def _encode_batch(batch, tokenizer, template, cutoff_len, train_on_prompt, mask_history, drop_long):
    out = {k: [] for k in ("input_ids", "attention_mask", "labels", "_prompt_len", "_response_len",
                           "_total_len", "_dropped", "_keep")}
    tools = batch.get("tools") or [""] * len(batch["messages"])
    for messages, row_tools in zip(batch["messages"], tools):
        try:
            feat, info = encode_messages(messages, tokenizer, template, None if drop_long else cutoff_len,
                                         train_on_prompt, mask_history, row_tools or "")
        except SystemNotSupported as e:
            raise ConfigError(f"model.template={template.name}: {e}, but the data has one; remove the system "
                              "prompts or choose a template with one") from None
        keep = not (drop_long and cutoff_len is not None and info["total_len"] > cutoff_len)
        for k in ("input_ids", "attention_mask", "labels"):
            out[k].append(feat[k])
        out["_prompt_len"].append(info["prompt_len"])
        out["_response_len"].append(info["response_len"])
        out["_total_len"].append(info["total_len"])
        out["_dropped"].append(info["dropped"])
        out["_keep"].append(keep)
    return out


def encode_dataset(ds, tokenizer, template: Template, cutoff_len: Optional[int], train_on_prompt: bool = False,
                   mask_history: bool = False, drop_long: bool = False, num_proc: Optional[int] = None,
                   fingerprint: Optional[str] = None, keep_lengths: bool = False):
    """A dataset of ``messages`` -> tokenized (input_ids, attention_mask, labels), and the report."""
    from datasets import Features, List as DList, Value

    features = Features({
        "input_ids": DList(Value("int32")), "attention_mask": DList(Value("int8")), "labels": DList(Value("int32")),
        "_prompt_len": Value("int32"), "_response_len": Value("int32"), "_total_len": Value("int32"),
        "_dropped": Value("int32"), "_keep": Value("bool"),
    })
    enc = ds.map(_encode_batch, batched=True, batch_size=256, remove_columns=ds.column_names, features=features,
                 fn_kwargs=dict(tokenizer=tokenizer, template=template, cutoff_len=cutoff_len,
                                train_on_prompt=train_on_prompt, mask_history=mask_history, drop_long=drop_long),
                 num_proc=num_proc if num_proc and num_proc > 1 and len(ds) >= 4 * num_proc else None,
                 load_from_cache_file=False, new_fingerprint=fingerprint, desc=None)
    report = EncodeReport()
    dropped, keep, prompt_lens = column(enc, "_dropped"), column(enc, "_keep"), column(enc, "_prompt_len")
    report.truncated = sum(1 for d in dropped if d > 0)
    report.tokens_dropped = int(sum(dropped))
    report.dropped = sum(1 for k in keep if not k)
    totals = [t for t, k in zip(column(enc, "_total_len"), keep) if k]
    if report.dropped:
        enc = enc.select([i for i, k in enumerate(keep) if k])
        prompt_lens = [p for p, k in zip(prompt_lens, keep) if k]
    report.samples = len(enc)
    report.shortest_prompt = min(prompt_lens) if prompt_lens else None
    report.tokens = int(sum(min(t, cutoff_len) if cutoff_len else t for t in totals))
    if not keep_lengths:
        enc = enc.remove_columns(["_prompt_len", "_response_len", "_total_len", "_dropped", "_keep"])
    return enc, report


def encode_rows(rows: Sequence[dict], tokenizer, cutoff_len: int, train_on_prompt: bool = False,
                template: Optional[Template] = None, mask_history: bool = False):
    """Alpaca rows (or ``{"messages": ...}`` rows) -> a tokenized ``datasets.Dataset`` and its report."""
    from datasets import Dataset

    from ftrun.data.formats import alpaca_messages, ALPACA_COLUMNS
    from ftrun.data.templates import resolve_template

    template = template or resolve_template(tokenizer, getattr(tokenizer, "_ftrun_template", "auto"))
    convs = []
    for i, row in enumerate(rows):
        if "messages" in row:
            convs.append(row["messages"])
            continue
        msgs, why = alpaca_messages(row, {k: k for k in ALPACA_COLUMNS})
        if msgs is None:
            raise ConfigError(f"row {i} {why}")
        convs.append(msgs)
    ds = Dataset.from_dict({"messages": convs})
    return encode_dataset(ds, tokenizer, template, cutoff_len, train_on_prompt, mask_history)
