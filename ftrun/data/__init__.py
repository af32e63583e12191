"""Data: read datasets, render them with a chat template, tokenize, mask, pack, cache.

:func:`build_datasets` is the entry point: ``data`` config + tokenizer ->
(train dataset, eval dataset or None, :class:`EncodeReport`). It runs before
the model is loaded, so bad data fails fast, naming the file and the line or
record. The steps live in submodules:

* :mod:`ftrun.data.registry` - which datasets (``data.path``, ``data.names`` from
  ``ftrun/conf/data`` or a LLaMA-Factory ``dataset_info.json``, ``data.sources``);
* :mod:`ftrun.data.formats` - loading files with ``datasets`` and turning Alpaca
  / ShareGPT / OpenAI-messages records into conversations, skipping bad ones;
* :mod:`ftrun.data.templates` - chat templates and the exact prompt/answer split;
* :mod:`ftrun.data.encode` - tokenizing, masking, truncation and its report;
* :mod:`ftrun.data.collate` - packing and the Trainer's collator.

Tokenized datasets are cached under ``$FTRUN_CACHE/data``, keyed by the data
files' contents, the tokenizer, the template and every option that changes the
result; ``data.overwrite_cache=true`` rebuilds.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import Dict, List, Optional, Tuple

from ftrun.config import ConfigError
from ftrun.data.collate import PackedCollator, make_collator, pack_dataset, pack_text, with_positions
from ftrun.data.encode import IGNORE_INDEX, EncodeReport, encode_dataset, encode_messages, encode_rows
from ftrun.data.files import Locator, file_digest, load_file
from ftrun.data.formats import Skip, alpaca_messages, read_source, report_skips, source_kind
from ftrun.data.registry import resolve_sources
from ftrun.data.templates import TEMPLATE_NAMES, Template, resolve_template

__all__ = [
    "IGNORE_INDEX", "EncodeReport", "build_datasets", "encode_rows", "encode_messages", "read_alpaca",
    "make_collator", "PackedCollator", "resolve_template", "load_conversations", "load_examples", "to_messages",
    "TEMPLATE_NAMES",
]

log = logging.getLogger(__name__)

CACHE_VERSION = 2  # bump when preprocessing changes its output
MIX_SEED = 0
SPLIT_SEED = 0  # val_size's held-out rows: the same for every run


# ---------------------------------------------------------------------------
# compatibility helpers (used by the tiny model and older callers)


def to_messages(row: dict) -> List[Dict[str, str]]:
    """Alpaca row -> chat messages, the last one the assistant's answer."""
    msgs, why = alpaca_messages(row, {k: k for k in ("instruction", "input", "output", "system", "history")})
    if msgs is None:
        raise ValueError(why)
    return msgs


def read_alpaca(path: str) -> List[dict]:
    """Rows of an Alpaca JSON list or JSONL file; any bad record is an error naming file and line."""
    from ftrun.data.formats import ALPACA_COLUMNS, resolve_columns, Source

    p = Path(path).expanduser()
    if not p.is_file():
        raise ConfigError(f"data.path={path}: no such file")
    file_digest(p)
    ds = load_file(p)
    src = Source(name=p.stem, files=[p], format="alpaca")
    _, _, cols, _ = resolve_columns(src, p, list(ds.column_names))
    locate = Locator(p)
    rows = []
    for i, row in enumerate(ds):
        msgs, why = alpaca_messages(row, cols)
        if msgs is None:
            raise ConfigError(f"data.path={path}: {locate(i)} {why}")
        rows.append({k: (row.get(cols[k]) if k in cols else None) or ("" if k != "history" else [])
                     for k in ALPACA_COLUMNS})
    if not rows:
        raise ConfigError(f"data.path={path}: the file holds no records")
    return rows


def split(ds, val_size: float, seed: int = SPLIT_SEED):
    """(train, eval or None): a seeded random ``val_size`` share (< 1) or count (>= 1) of the rows held out.

    The seed is fixed, so every run (and every trial of a sweep) evaluates on the
    same rows; the rows left for training keep their order.
    """
    import random

    n = len(ds)
    n_eval = int(round(n * val_size)) if val_size < 1 else int(val_size)
    if val_size > 0 and n_eval == 0:
        n_eval = 1
    if n_eval >= n:
        raise ConfigError(f"data.val_size={val_size:g}: holds out {n_eval} of the {n} rows and leaves none to "
                          f"train on; give a share in [0, 1) (e.g. data.val_size=0.1) or a count below {n}")
    if not n_eval:
        return ds, None
    order = list(range(n))
    random.Random(seed).shuffle(order)
    held, kept = sorted(order[:n_eval]), sorted(order[n_eval:])
    if isinstance(ds, list):
        return [ds[i] for i in kept], [ds[i] for i in held]
    return ds.select(kept), ds.select(held)


# ---------------------------------------------------------------------------
# examples of the stage's kind


def _num_proc(data_cfg, n_rows: int) -> Optional[int]:
    n = data_cfg.get("num_proc")
    if n is not None:
        return int(n)
    return min(8, os.cpu_count() or 1) if n_rows >= 50_000 else None


def is_builtin(data_cfg) -> bool:
    return data_cfg.get("path") is None and not (data_cfg.get("names") or data_cfg.get("sources"))


def to_form(ds, kind: str, form: str):
    """A dataset of ``kind`` in the form a stage trains on: pairs -> KTO answers (each pair a good and
    a bad one), supervised or pairwise -> ppo's prompts, pairs or KTO answers -> conversations (for
    data_stats); anything else as it is."""
    if ds is None or kind == form:
        return ds
    from datasets import Features

    from ftrun.data.kinds import FEATURES

    if (kind, form) == ("pairwise", "kto"):
        def unpair(batch):
            out = {"prompt": [], "completion": [], "label": []}
            for prompt, chosen, rejected in zip(batch["prompt"], batch["chosen"], batch["rejected"]):
                out["prompt"] += [prompt, prompt]
                out["completion"] += [chosen, rejected]
                out["label"] += [True, False]
            return out

        fn = unpair
    elif (kind, form) == ("supervised", "prompt"):
        def fn(batch):
            return {"prompt": [m[:-1] for m in batch["messages"]]}
    elif (kind, form) == ("pairwise", "supervised"):  # data_stats: what TRL tokenizes, both answers
        def fn(batch):
            out = {"messages": [], "tools": []}
            for prompt, chosen, rejected in zip(batch["prompt"], batch["chosen"], batch["rejected"]):
                for answer in (chosen, rejected):
                    out["messages"].append(prompt + [{"role": "assistant", "content": answer}])
                    out["tools"].append("")
            return out
    elif (kind, form) == ("kto", "supervised"):
        def fn(batch):
            return {"messages": [p + [{"role": "assistant", "content": c}]
                                 for p, c in zip(batch["prompt"], batch["completion"])],
                    "tools": [""] * len(batch["prompt"])}
    elif (kind, form) == ("pairwise", "prompt"):
        def fn(batch):
            return {"prompt": batch["prompt"]}
    else:
        raise ConfigError(f"{kind} data cannot be turned into {form} rows")  # check_kind refuses these first
    return ds.map(fn, batched=True, remove_columns=ds.column_names, features=Features(FEATURES[form]),
                  load_from_cache_file=False, desc=None)


def load_examples(data_cfg, stage: str = "sft", sources=None):
    """(train, eval or None, skips, per-source sizes): ``stage``'s examples in its form
    (:data:`ftrun.data.kinds.STAGE_FORM`), mixed, split by ``val_size`` and capped by ``max_samples``."""
    from datasets import concatenate_datasets, interleave_datasets

    from ftrun.data.builtin import builtin_examples
    from ftrun.data.kinds import STAGE_FORM, check_kind

    form = STAGE_FORM[stage]
    if is_builtin(data_cfg):
        kind = {"pt": "text", "sft": "supervised"}.get(stage, "pairwise")
        train, evals = (to_form(ds, kind, form) for ds in builtin_examples(data_cfg, kind))
        if data_cfg.max_samples is not None and data_cfg.max_samples < len(train):
            train = train.select(range(data_cfg.max_samples))
        return train, evals, [], {data_cfg.builtin: len(train)}
    sources = sources if sources is not None else resolve_sources(data_cfg)
    strict = bool(data_cfg.get("strict", False))
    parts, skips, sizes = [], [], {}
    for src in sources:
        check_kind(stage, src.name, source_kind(src), src.origin)
        ds, s = read_source(src, strict=strict, num_proc=_num_proc(data_cfg, 0))
        parts.append(to_form(ds, src.kind, form))
        skips += s
        sizes[src.name] = len(ds)
    report_skips(skips, sum(sizes.values()) + len(skips))
    if len(parts) == 1:
        mixed = parts[0]
    elif (data_cfg.get("mix") or "concat") == "interleave":
        probs = list(data_cfg.get("mix_probs") or []) or None
        mixed = interleave_datasets(parts, probabilities=probs, seed=MIX_SEED,
                                    stopping_strategy=data_cfg.get("mix_stop") or "first_exhausted")
    else:
        mixed = concatenate_datasets(parts)
    if len(parts) > 1:
        mixed = mixed.shuffle(seed=MIX_SEED).flatten_indices()
    if len(mixed) == 0:
        raise ConfigError(f"data={data_cfg.name}: no records left after filtering ({len(skips)} skipped)")
    train, evals = split(mixed, data_cfg.val_size)
    if data_cfg.max_samples is not None and data_cfg.max_samples < len(train):
        train = train.select(range(data_cfg.max_samples))
    return train, evals, skips, sizes


def check_stage_data(cfg) -> None:
    """Before anything loads: every dataset's kind fits the stage, and an ``eval_*`` objective has an eval split.

    Reads the datasets' entries and the first file of each (for its columns); no tokenizer, no model.
    """
    from ftrun.config import STAGE_OBJECTIVES, has_eval
    from ftrun.data.kinds import check_kind

    stage, d = str(cfg.stage.name), cfg.data
    if str(cfg.objective).startswith("eval_") and not has_eval(cfg):
        builtin = is_builtin(d)
        fix = "data.num_eval=200" if builtin else "data.val_size=0.1"
        held = f"data.num_eval={d.num_eval}" if builtin else f"data.val_size={d.val_size:g}"
        from ftrun.contract import OPTUNA_STORAGE_ENV

        in_sweep = bool(os.environ.get(OPTUNA_STORAGE_ENV))  # a trial: comparing train losses would pick overfitting
        if cfg.objective in ("eval_loss", "eval_perplexity") and not in_sweep:  # ftrun.fit falls back to train loss
            log.warning("objective=%s: %s holds out no eval split, so the run returns its final train loss; "
                        "set %s for a held-out loss", cfg.objective, held, fix)
        else:
            others = [o for o in STAGE_OBJECTIVES[stage] if not o.startswith("eval_")]
            raise ConfigError(f"objective={cfg.objective}: needs an eval split{' in a sweep' if in_sweep else ''}, "
                              f"and {held} holds none out; set {fix}"
                              + (f" (or objective={others[0]})" if others else ""))
    if d.path is None and not (d.names or d.sources):
        return  # the built-in task has a variant for every stage
    for src in resolve_sources(d):
        check_kind(stage, src.name, source_kind(src), src.origin)


def load_conversations(data_cfg, sources=None):
    """(train, eval or None, skips, per-source sizes) as datasets of ``messages`` (sft's examples)."""
    return load_examples(data_cfg, "sft", sources)


# ---------------------------------------------------------------------------
# cache


def cache_root() -> Path:
    from ftrun.contract import cache_root as root

    return root() / "data"


def tokenizer_fingerprint(tokenizer) -> str:
    h = hashlib.sha256(type(tokenizer).__name__.encode())
    try:
        h.update(tokenizer.backend_tokenizer.to_str().encode())
    except AttributeError:
        h.update(json.dumps(sorted(tokenizer.get_vocab().items())).encode())
    own = None if getattr(tokenizer, "_ftrun_builtin", None) else tokenizer.chat_template
    special = [tokenizer.bos_token, tokenizer.eos_token, tokenizer.pad_token, own,
               sorted((int(k), str(v)) for k, v in tokenizer.added_tokens_decoder.items())]
    h.update(json.dumps(special, default=str).encode())
    return h.hexdigest()


def cache_key(data_cfg, sources, tokenizer, template: Template, stage: str = "sft") -> str:
    from omegaconf import OmegaConf

    cfg = OmegaConf.to_container(data_cfg, resolve=True) if OmegaConf.is_config(data_cfg) else dict(data_cfg)
    for k in ("name", "overwrite_cache", "num_proc", "cache_dir"):
        cfg.pop(k, None)
    files = [[src.key(), [file_digest(f) for f in src.files]] for src in sources]
    material = [CACHE_VERSION, stage, cfg, files, tokenizer_fingerprint(tokenizer), template.key()]
    return hashlib.sha256(json.dumps(material, sort_keys=True, default=str).encode()).hexdigest()[:20]


def _cache_dir(data_cfg) -> Path:
    d = data_cfg.get("cache_dir")
    return Path(d).expanduser() if d else cache_root()


def _load_cached(path: Path):
    from datasets import load_from_disk

    report = EncodeReport.from_json(json.loads((path / "report.json").read_text()))
    train = load_from_disk(str(path / "train"))
    evals = load_from_disk(str(path / "eval")) if (path / "eval").is_dir() else None
    return train, evals, report


def _save_cached(path: Path, train, evals, report: EncodeReport) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}-", dir=path.parent))
    try:
        train.save_to_disk(str(tmp / "train"))
        if evals is not None:
            evals.save_to_disk(str(tmp / "eval"))
        (tmp / "report.json").write_text(json.dumps(report.to_json(), indent=2))
        if path.exists():
            shutil.rmtree(path, ignore_errors=True)
        os.replace(tmp, path)
    except OSError as e:  # another process won the race, or the disk is full: the cache is optional
        log.debug("data cache not written (%s)", e)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


# ---------------------------------------------------------------------------
# the entry point


def build_datasets(data_cfg, tokenizer, template: Optional[str] = None, stage: str = "sft"):
    """``stage``'s train and eval datasets and the train report; errors before any model is loaded.

    * sft: tokenized conversations (input_ids, attention_mask, labels), packed with ``data.packing``;
    * pt: raw text tokenized, EOS after each document, packed into ``cutoff_len`` blocks;
    * rm, dpo: TRL's conversational pairs (``prompt``, ``chosen``, ``rejected`` as turns);
    * kto: TRL's unpaired rows (``prompt``, ``completion``, ``label``);
    * ppo: prompts.

    TRL renders and tokenizes the preference rows with the tokenizer's chat
    template, which :func:`resolve_template` has set to ``model.template``'s.
    """
    import datasets

    template_name = template or getattr(tokenizer, "_ftrun_template", None) or "auto"
    tpl = resolve_template(tokenizer, template_name)
    builtin = is_builtin(data_cfg)
    sources = None if builtin else resolve_sources(data_cfg)
    cache_path = None
    if not builtin:
        cache_path = _cache_dir(data_cfg) / cache_key(data_cfg, sources, tokenizer, tpl, stage)
        if cache_path.is_dir() and not data_cfg.get("overwrite_cache", False):
            try:
                train, evals, report = _load_cached(cache_path)
                log.info("Data from cache %s: %s", cache_path, report.summary())
                return train, evals, report
            except (OSError, ValueError, KeyError, TypeError) as e:
                log.warning("data cache %s is unreadable (%s); rebuilding", cache_path, e)

    bars = datasets.is_progress_bar_enabled()
    datasets.disable_progress_bars()
    try:
        train_c, eval_c, skips, _ = load_examples(data_cfg, stage, sources)
        if stage == "sft":
            train, evals, report = _encode_supervised(data_cfg, tokenizer, tpl, train_c, eval_c)
        elif stage == "pt":
            train, report = pack_text(train_c, tokenizer, data_cfg.cutoff_len)
            evals = pack_text(eval_c, tokenizer, data_cfg.cutoff_len)[0] if eval_c is not None and len(eval_c) else None
        else:
            train, evals = to_trl(train_c), to_trl(eval_c) if eval_c is not None and len(eval_c) else None
            report = EncodeReport(samples=len(train))
        report.skipped = len(skips)
        report.skip_examples = [str(s) for s in skips[:20]]
        if cache_path is not None:
            _save_cached(cache_path, train, evals, report)
    finally:
        if bars:
            datasets.enable_progress_bars()
    if report.truncated:
        log.warning("cutoff_len=%d truncated %d of %d training samples (%d tokens dropped)",
                    data_cfg.cutoff_len, report.truncated, report.samples, report.tokens_dropped)
    if report.dropped:
        log.warning("cutoff_len=%d: data.drop_long dropped %d training samples longer than it",
                    data_cfg.cutoff_len, report.dropped)
    log.info("Data: %s", report.summary())
    return train, evals, report


def _encode_supervised(data_cfg, tokenizer, tpl, train_c, eval_c):
    opts = dict(cutoff_len=data_cfg.cutoff_len, train_on_prompt=data_cfg.train_on_prompt,
                mask_history=bool(data_cfg.get("mask_history", False)),
                drop_long=bool(data_cfg.get("drop_long", False)))
    train, report = encode_dataset(train_c, tokenizer, tpl, num_proc=_num_proc(data_cfg, len(train_c)), **opts)
    if report.samples == 0:
        raise ConfigError(f"cutoff_len={data_cfg.cutoff_len}: every training sample is longer "
                          "(data.drop_long=true dropped them all); raise cutoff_len")
    if report.shortest_prompt is not None and report.shortest_prompt >= data_cfg.cutoff_len:
        raise ConfigError(
            f"cutoff_len={data_cfg.cutoff_len}: shorter than every prompt (the shortest has "
            f"{report.shortest_prompt} tokens), so no answer would be seen; raise cutoff_len"
        )
    evals = None
    if eval_c is not None and len(eval_c):
        evals, _ = encode_dataset(eval_c, tokenizer, tpl, num_proc=_num_proc(data_cfg, len(eval_c)), **opts)
        if len(evals) == 0:
            evals = None
    if data_cfg.get("packing", False):
        train = pack_dataset(train, data_cfg.cutoff_len, neat=bool(data_cfg.get("neat_packing", True)))
        report.packed_rows = len(train)
    return train, evals, report


def to_trl(ds):
    """Pairs, KTO rows or prompts in TRL's conversational format: answers become assistant turns."""
    from datasets import Features, List as DList, Value

    turn = {"role": Value("string"), "content": Value("string")}
    answers = [c for c in ("chosen", "rejected", "completion") if c in ds.column_names]
    if not answers:
        return ds

    def fn(batch):
        return {c: [[{"role": "assistant", "content": a}] for a in batch[c]] for c in answers}

    features = Features({**{k: v for k, v in ds.features.items()}, **{c: DList(turn) for c in answers}})
    return ds.map(fn, batched=True, features=features, load_from_cache_file=False, desc=None)


def load_rows(data_cfg) -> Tuple[List[dict], List[dict]]:
    """Train and eval conversations of ``data_cfg`` as lists of ``{"messages": [...]}`` rows."""
    train, evals, _, _ = load_conversations(data_cfg)
    return list(train), list(evals) if evals is not None else []
