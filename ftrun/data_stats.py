"""``python -m ftrun.data_stats data=NAME model=NAME [stage=S] [cutoff_len=N] [--out DIR]``: what cutoff_len do I need?

Reads the datasets exactly as a run would (same registry, formats, template and
tokenizer; no model weights are loaded) and prints, per dataset, the number of
samples and the token-length distribution (mean, p50, p90, p99, max) of the
prompt (everything not trained on), the response (the trained assistant turns)
and the total; how many samples the configured ``cutoff_len`` would truncate;
and a recommended ``cutoff_len`` (the 99th percentile of the total rounded up to
a multiple of 64, of 8 below 256). It writes ``lengths.png`` (histograms) and ``stats.json`` to
``--out`` (default ``outputs/data_stats/<data.name>``). With ``stage=rm|dpo|kto|ppo`` it measures that
stage's data: each answer of a pair (or KTO row) is a sample after its prompt.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Sequence

from ftrun.config import ConfigError, validate

log = logging.getLogger("ftrun.data_stats")

ROUND_TO = 64
PARTS = ("prompt", "response", "total")


@dataclass
class Distribution:
    mean: float
    p50: int
    p90: int
    p99: int
    max: int

    @classmethod
    def of(cls, values: Sequence[int]) -> "Distribution":
        import numpy as np

        a = np.asarray(values, dtype=np.int64)
        if a.size == 0:
            return cls(0.0, 0, 0, 0, 0)
        q = np.percentile(a, [50, 90, 99], method="higher")
        return cls(float(a.mean()), int(q[0]), int(q[1]), int(q[2]), int(a.max()))


@dataclass
class DatasetStats:
    name: str
    samples: int
    skipped: int
    cutoff_len: int
    truncated: int
    recommended_cutoff_len: int
    truncated_at_recommended: int
    prompt: Distribution
    response: Distribution
    total: Distribution
    lengths: Dict[str, List[int]] = field(default_factory=dict, repr=False)

    def to_json(self) -> dict:
        d = asdict(self)
        d.pop("lengths")
        return d


def recommend(totals: Sequence[int]) -> int:
    """Smallest multiple of 64 (of 8 below 256 tokens) that holds 99% of the samples whole."""
    if not totals:
        return ROUND_TO
    p99 = Distribution.of(totals).p99
    step = ROUND_TO if p99 >= 256 else 8
    return max(8, int(math.ceil(p99 / step) * step))


def dataset_stats(name: str, conversations, tokenizer, template, cutoff_len: int, skipped: int = 0,
                  mask_history: bool = False, num_proc: Optional[int] = None) -> DatasetStats:
    from ftrun.data.encode import column, encode_dataset

    enc, _ = encode_dataset(conversations, tokenizer, template, cutoff_len=None, mask_history=mask_history,
                            num_proc=num_proc, keep_lengths=True)
    total = column(enc, "_total_len")
    response = column(enc, "_response_len")
    prompt = [t - r for t, r in zip(total, response)]
    rec = recommend(total)
    return DatasetStats(
        name=name, samples=len(total), skipped=skipped, cutoff_len=cutoff_len,
        truncated=sum(1 for t in total if t > cutoff_len), recommended_cutoff_len=rec,
        truncated_at_recommended=sum(1 for t in total if t > rec),
        prompt=Distribution.of(prompt), response=Distribution.of(response), total=Distribution.of(total),
        lengths={"prompt": prompt, "response": response, "total": total},
    )


def compute(data_cfg, tokenizer, template: Optional[str] = None, stage: str = "sft") -> List[DatasetStats]:
    """Length statistics of every dataset of ``data_cfg`` (and of their mix, when several).

    Pairs count each answer as a sample (prompt + chosen, prompt + rejected), KTO rows their one answer;
    raw text (pt) is packed into cutoff_len blocks, so nothing is truncated and it is refused here.
    """
    from datasets import concatenate_datasets

    from ftrun.data import is_builtin, to_form
    from ftrun.data.builtin import builtin_examples
    from ftrun.data.formats import read_source, source_kind
    from ftrun.data.kinds import check_kind
    from ftrun.data.registry import resolve_sources
    from ftrun.data.templates import resolve_template

    if stage == "pt":
        raise ConfigError("stage=pt: raw text is packed into cutoff_len blocks, so nothing is truncated and "
                          "there is no prompt or answer to measure; data_stats measures the other stages' data")
    tpl = resolve_template(tokenizer, template or getattr(tokenizer, "_ftrun_template", None) or "auto",
                           install=False)
    mask_history = bool(data_cfg.get("mask_history", False))
    parts = []
    if is_builtin(data_cfg):
        kind = "supervised" if stage == "sft" else "pairwise"
        train, _ = builtin_examples(data_cfg, kind)
        parts.append((data_cfg.builtin, to_form(train, kind, "supervised"), 0))
    else:
        for src in resolve_sources(data_cfg):
            check_kind(stage, src.name, source_kind(src), src.origin)
            ds, skips = read_source(src, strict=False, num_proc=data_cfg.get("num_proc"))
            parts.append((src.name, to_form(ds, src.kind, "supervised"), len(skips)))
    out = [dataset_stats(name, ds, tokenizer, tpl, data_cfg.cutoff_len, skipped, mask_history,
                         data_cfg.get("num_proc")) for name, ds, skipped in parts]
    if len(out) > 1:
        both = concatenate_datasets([ds for _, ds, _ in parts])
        out.append(dataset_stats("all", both, tokenizer, tpl, data_cfg.cutoff_len, sum(s.skipped for s in out),
                                 mask_history, data_cfg.get("num_proc")))
    return out


def format_stats(stats: List[DatasetStats], template_name: str = "") -> str:
    lines = []
    for s in stats:
        lines.append(f"{s.name}: {s.samples} samples" + (f" ({s.skipped} skipped as unusable)" if s.skipped else "")
                     + (f", template {template_name}" if template_name else ""))
        lines.append(f"  {'tokens':<9}{'mean':>8}{'p50':>7}{'p90':>7}{'p99':>7}{'max':>7}")
        for part in PARTS:
            d: Distribution = getattr(s, part)
            lines.append(f"  {part:<9}{d.mean:>8.1f}{d.p50:>7}{d.p90:>7}{d.p99:>7}{d.max:>7}")
        share = 100 * s.truncated / s.samples if s.samples else 0.0
        lines.append(f"  cutoff_len={s.cutoff_len} truncates {s.truncated} of {s.samples} samples ({share:.1f}%)")
        lines.append(f"  recommended cutoff_len={s.recommended_cutoff_len} "
                     f"(truncates {s.truncated_at_recommended}; the longest sample has {s.total.max} tokens)")
    return "\n".join(lines)


def plot(stats: List[DatasetStats], path: Path, title: str = "") -> None:
    """Histograms of prompt, response and total lengths, with cutoff_len marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    shown = [s for s in stats if s.name != "all"] or stats
    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
    for ax, part in zip(axes, PARTS):
        for s in shown:
            values = s.lengths[part]
            if values:
                ax.hist(values, bins=min(60, max(5, len(set(values)))), alpha=0.6, label=s.name)
        ax.set_title(f"{part} tokens")
        ax.set_xlabel("tokens")
        ax.set_ylabel("samples")
        ax.grid(alpha=0.3)
    cutoff, rec = stats[-1].cutoff_len, stats[-1].recommended_cutoff_len
    axes[2].axvline(cutoff, color="red", linestyle="--", label=f"cutoff_len={cutoff}")
    if rec != cutoff:
        axes[2].axvline(rec, color="green", linestyle=":", label=f"recommended={rec}")
    axes[2].legend()
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m ftrun.data_stats", description=__doc__.split("\n")[0])
    parser.add_argument("--out", help="folder for lengths.png and stats.json (default outputs/data_stats/<data>)")
    parser.add_argument("overrides", nargs="*", help="config overrides, as for python -m ftrun (data=..., model=...)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="[%(levelname)s] %(message)s")
    import datasets

    datasets.disable_progress_bars()
    from ftrun.compose import compose

    try:
        cfg = compose(args.overrides)
        validate(cfg)
        from ftrun.model import load_tokenizer

        tokenizer = load_tokenizer(cfg.model)
        stats = compute(cfg.data, tokenizer, cfg.model.template, str(cfg.stage.name))
    except ConfigError as e:
        log.error("%s", e)
        return 2
    from ftrun.data.templates import resolve_template

    tpl_name = resolve_template(tokenizer, cfg.model.template, install=False).name
    print(format_stats(stats, tpl_name))
    out = Path(args.out) if args.out else Path(cfg.output_root) / "data_stats" / str(cfg.data.name)
    out.mkdir(parents=True, exist_ok=True)
    plot(stats, out / "lengths.png", title=f"{cfg.data.name} with {cfg.model.name} ({tpl_name} template)")
    (out / "stats.json").write_text(json.dumps({"data": cfg.data.name, "model": cfg.model.name, "template": tpl_name,
                                                "datasets": [s.to_json() for s in stats]}, indent=2))
    print(f"wrote {out / 'lengths.png'} and {out / 'stats.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
