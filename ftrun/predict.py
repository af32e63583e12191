"""``python -m ftrun.predict run=RUN [data=letters] [gen.max_new_tokens=64 batch_size=16 ...]``

Generate answers for a data set with a fine-tuned model and score them:

- the model is ``run=`` (a run directory or MLflow run id: base + adapter, as
  trained) or ``model=PATH`` (e.g. an export);
- prompts are rendered with the model's own chat template (the one the run
  trained with), left-padded and generated in batches; greedy by default
  (``gen.temperature=0``), sampling with ``gen.temperature`` / ``gen.top_p`` otherwise;
- ``data=`` is a preset of ftrun/conf/data (``data=letters``, ``data=alpaca
  data.path=...``), a data file (all its rows are scored), or left out for the
  run's own data; ``data.KEY=VALUE`` adjusts it; ``split=eval`` (default for a
  preset or the run's data) scores the held-out split;
- metrics: ``predict_exact_match`` (share of answers equal to the label after
  trimming whitespace; a fraction in [0, 1] like the run's ``eval_exact_match``),
  ``predict_bleu4`` (sacrebleu corpus BLEU-4, 0-100) and ``predict_rouge1/2`` and ``predict_rouge_l``
  (rouge-score F1, 0-100, mean over samples). Text with Chinese characters is
  scored at character level (sacrebleu's ``zh`` tokenizer; each CJK character is
  one ROUGE token), as the common fine-tuning tools do;
- writes ``generated_predictions.jsonl`` (prompt, label, prediction) and
  ``predict_results.json`` into ``out=`` (default ``<run_dir>/predict``), and
  logs the metrics and both files to the run's MLflow run (``mlflow=false`` to skip).

For sweeps and scripts: :func:`predict_objective` returns one metric, and
:func:`score` works on answers already generated (:func:`ftrun.generate.generate`).
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Sequence

from ftrun.config import ConfigError
from ftrun.contract import MLFLOW_URI_ENV
from ftrun.generate import GenSettings, generate
from ftrun.saved_runs import LoadArgs

log = logging.getLogger("ftrun.predict")

PREDICTIONS_FILE = "generated_predictions.jsonl"
RESULTS_FILE = "predict_results.json"

# CJK ideographs (unified + extension A + compatibility), CJK punctuation, full-width forms
CJK = "\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\u3000-\u303f\uff00-\uffef"
_CJK_RE = re.compile(f"[{CJK}]")
_TOKEN_RE = re.compile(f"[{CJK}]|[^\\s{CJK}]+")


@dataclass
class PredictArgs(LoadArgs):
    data: Optional[str] = None
    """A ftrun/conf/data preset (letters, alpaca), a data file, or null for the run's own data."""
    split: str = "auto"
    """eval, train or all; auto = eval for a preset / the run's data, all rows of a bare file."""
    max_samples: Optional[int] = None
    """Score at most this many rows."""
    batch_size: int = 16
    """Prompts generated together."""
    gen: GenSettings = field(default_factory=GenSettings)
    out: Optional[str] = None
    """Where the predictions go (default: <run_dir>/predict, or ./predict for model=)."""
    seed: int = 42
    """Seed for sampling."""
    mlflow: bool = True
    """Log metrics and files to the run's MLflow run (when it has one)."""


# ---------------------------------------------------------------------------
# metrics


def has_cjk(text: str) -> bool:
    return bool(_CJK_RE.search(text))


class MixedTokenizer:
    """ROUGE tokens: each CJK character alone, other text split on whitespace, lowercased.

    Punctuation-only tokens are dropped, as rouge-score's default tokenizer does.
    """

    def tokenize(self, text: str) -> List[str]:
        tokens = []
        for t in _TOKEN_RE.findall(text.lower()):
            if _CJK_RE.fullmatch(t):
                if t.isalnum():  # CJK punctuation is not a token
                    tokens.append(t)
                continue
            t = re.sub(r"[^0-9a-z\u00c0-\u024f]+", " ", t).split()
            tokens += t
        return tokens


def score(predictions: Sequence[str], labels: Sequence[str], prefix: str = "predict_") -> Dict[str, float]:
    """Exact match (fraction), corpus BLEU-4 and mean ROUGE-1/2/L F1 (0-100), Chinese by character;
    named ``<prefix>exact_match``, ``bleu4``, ``rouge1``, ``rouge2``, ``rouge_l``, ``samples``."""
    import sacrebleu
    from rouge_score import rouge_scorer

    if len(predictions) != len(labels):
        raise ValueError(f"{len(predictions)} predictions for {len(labels)} labels")
    if not labels:
        return {}
    preds = [p.strip() for p in predictions]
    refs = [l.strip() for l in labels]
    chinese = any(has_cjk(t) for t in refs + preds)
    bleu = sacrebleu.corpus_bleu(preds, [refs], tokenize="zh" if chinese else "13a")
    scorer = rouge_scorer.RougeScorer(["rouge1", "rouge2", "rougeL"], tokenizer=MixedTokenizer())
    rouge = {"rouge1": 0.0, "rouge2": 0.0, "rougeL": 0.0}
    for p, r in zip(preds, refs):
        s = scorer.score(r, p)  # (target, prediction)
        for k in rouge:
            rouge[k] += s[k].fmeasure
    n = len(refs)
    return {
        f"{prefix}exact_match": sum(p == r for p, r in zip(preds, refs)) / n,
        f"{prefix}bleu4": float(bleu.score),
        f"{prefix}rouge1": 100 * rouge["rouge1"] / n,
        f"{prefix}rouge2": 100 * rouge["rouge2"] / n,
        f"{prefix}rouge_l": 100 * rouge["rougeL"] / n,
        f"{prefix}samples": float(n),
    }


# ---------------------------------------------------------------------------
# data


def data_config(args: PredictArgs, data_overrides: Sequence[str], run=None):
    """The ``data`` config to score: the run's, a ftrun/conf/data preset, or a bare file; plus the split."""
    from omegaconf import OmegaConf

    split = args.split
    if args.data is None:
        if run is None:
            raise ConfigError("model=PATH needs data=PRESET_OR_FILE (the run's own data is only known with run=)")
        cfg = OmegaConf.merge(run.cfg.data, OmegaConf.from_dotlist(list(data_overrides)))
        return cfg, ("eval" if split == "auto" else split)
    from ftrun.compose import conf_dir

    presets = ", ".join(sorted(f.stem for f in (conf_dir() / "data").glob("*.yaml")))
    if (conf_dir() / "data" / f"{args.data}.yaml").is_file():
        return _compose_data([f"data={args.data}", *_prefixed(data_overrides)]), ("eval" if split == "auto" else split)
    p = Path(args.data).expanduser()
    if p.exists():
        cfg = _compose_data(["data=alpaca", f"data.name={p.stem}", f"data.path={p.resolve()}", "data.val_size=0",
                             *_prefixed(data_overrides)])
        log.info("data=%s: a file; scoring %s (presets: %s)", p, "all rows" if split == "auto" else split, presets)
        return cfg, ("all" if split == "auto" else split)
    raise ConfigError(f"data={args.data}: neither a preset ({presets}) nor an existing file")


def _prefixed(overrides: Sequence[str]) -> List[str]:
    return [f"data.{o}" for o in overrides]


def _compose_data(overrides: List[str]):
    from ftrun.compose import compose

    return compose(overrides).data


def conversations(data_cfg, split: str):
    """[(messages before the answer, the answer)] of the split."""
    from ftrun.saved_runs import row_messages, run_rows

    if split not in ("eval", "train", "all"):
        raise ConfigError(f"split={split}: choose eval, train, all or auto")
    train, evals = run_rows(data_cfg)
    if split == "eval" and not evals:
        raise ConfigError(f"split=eval: data={data_cfg.name} has no eval split (set data.val_size or "
                          "data.num_eval, or use split=train / split=all)")
    rows = {"eval": evals, "train": train, "all": train + evals}[split]
    out = []
    for row in rows:
        msgs = row_messages(row)
        if not msgs or msgs[-1]["role"] != "assistant":
            continue
        out.append((msgs[:-1], msgs[-1]["content"]))
    return out


# ---------------------------------------------------------------------------
# the command


def predict(args: PredictArgs, data_overrides: Sequence[str] = ()) -> Dict[str, float]:
    """Generate, score, write the files and log to MLflow; returns the metrics."""
    from transformers import set_seed

    from ftrun import saved_runs

    saved_runs.quiet()
    set_seed(args.seed)
    loaded = saved_runs.load(run=args.run, model=args.model, dtype=args.dtype, device=args.device,
                       tracking_uri=args.tracking_uri)
    run = loaded.run
    for note in loaded.notes:
        log.info("%s", note)
    data_cfg, split = data_config(args, data_overrides, run)
    pairs = conversations(data_cfg, split)
    if args.max_samples is not None:
        pairs = pairs[:args.max_samples]
    if not pairs:
        raise ConfigError(f"data={data_cfg.name} split={split}: no rows to score")
    log.info("Predicting %d %s rows of data '%s' with %s (%s)", len(pairs), split, data_cfg.name, loaded.source,
             "greedy" if args.gen.temperature <= 0 else f"temperature {args.gen.temperature}, top_p {args.gen.top_p}")
    preds = generate(loaded.model, loaded.tokenizer, [p for p, _ in pairs], args.gen, args.batch_size,
                     progress=len(pairs) > 4 * args.batch_size)
    labels = [a for _, a in pairs]
    metrics = score(preds, labels)

    out = Path(args.out).expanduser() if args.out else (run.run_dir / "predict" if run else Path("predict"))
    out.mkdir(parents=True, exist_ok=True)
    with open(out / PREDICTIONS_FILE, "w", encoding="utf-8") as f:
        for (msgs, label), pred in zip(pairs, preds):
            f.write(json.dumps({"prompt": msgs[-1]["content"] if msgs else "", "label": label, "prediction": pred,
                                **({"history": msgs[:-1]} if len(msgs) > 1 else {})}, ensure_ascii=False) + "\n")
    results = {**metrics, "data": str(data_cfg.name), "split": split, "source": loaded.source,
               "generation": {k: getattr(args.gen, k) for k in ("max_new_tokens", "temperature", "top_p",
                                                              "repetition_penalty")}}
    (out / RESULTS_FILE).write_text(json.dumps(results, indent=2, ensure_ascii=False))
    log.info("Predictions: %s", out / PREDICTIONS_FILE)
    log.info("Metrics: %s", "  ".join(f"{k}={v:.4g}" for k, v in metrics.items()))
    if args.mlflow and run is not None and run.mlflow_run_id:
        _log_to_mlflow(run, metrics, out, args.tracking_uri)
    return metrics


def predict_objective(run: str, metric: str = "predict_exact_match", data: Optional[str] = None,
                      max_samples: Optional[int] = None, **gen) -> float:
    """One metric of :func:`predict` for a sweep objective, e.g. predict_objective(run_dir, "predict_rouge_l")."""
    args = PredictArgs(run=run, data=data, max_samples=max_samples, gen=GenSettings(**gen))
    value = predict(args)[metric]
    return float(value) if math.isfinite(value) else float("nan")


def _log_to_mlflow(run, metrics: Dict[str, float], out: Path, tracking_uri: Optional[str]) -> None:
    import mlflow

    uri = tracking_uri or (run.cfg.get("tracking") or {}).get("uri") or os.environ.get(MLFLOW_URI_ENV)
    if uri:
        mlflow.set_tracking_uri(uri)
    with mlflow.start_run(run_id=run.mlflow_run_id):
        mlflow.log_metrics(metrics)
        mlflow.log_artifact(str(out / PREDICTIONS_FILE), artifact_path="predict")
        mlflow.log_artifact(str(out / RESULTS_FILE), artifact_path="predict")
    log.info("MLflow: logged predict metrics and files under run %s", run.mlflow_run_id)


def split_data_overrides(argv: Sequence[str]):
    """``data.KEY=VALUE`` arguments go onto the data config; the rest are predict's own."""
    own, data = [], []
    for a in argv:
        (data if a.startswith("data.") else own).append(a[len("data."):] if a.startswith("data.") else a)
    return own, data


def main(argv=None) -> None:
    from ftrun import cli

    argv = list(sys.argv[1:] if argv is None else argv)
    own, data_overrides = split_data_overrides(argv)
    args = cli.parse(PredictArgs, own, __doc__, positional="run")
    metrics = predict(args, data_overrides)
    print(json.dumps(metrics, indent=2))


if __name__ == "__main__":
    from ftrun.cli import main_guard

    sys.exit(main_guard(main))
