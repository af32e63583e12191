"""Generative evaluation during training: at each evaluation the model answers held-out prompts
and the answers are scored as :mod:`ftrun.predict` scores them.

Prompts and references come from the tokenized eval split itself: a row's prompt is every token
before its last trained span (the answer), rendered by the same template the run trains with, and
the reference is that span decoded. So what is scored is exactly what the run learns to answer,
whatever the data format or template.

The metrics (``eval_gen_exact_match``, ``eval_bleu4``, ``eval_rouge1``, ``eval_rouge2``,
``eval_rouge_l``) reach the Trainer through ``compute_metrics``: they are logged with eval_loss,
step by step, seen by the sweep's pruner and by ``load_best_model_at_end``.
"""

from __future__ import annotations

import logging
from typing import List, Tuple

from ftrun.data.encode import IGNORE_INDEX

log = logging.getLogger(__name__)

# what generation adds to the run's eval metrics (Trainer prefixes them with eval_)
GENERATIVE_METRICS = ("gen_exact_match", "bleu4", "rouge1", "rouge2", "rouge_l")


def prompts_and_answers(eval_ds, max_samples: int) -> List[Tuple[List[int], List[int]]]:
    """(prompt ids, answer ids) of the first ``max_samples`` eval rows: the answer is the last run of
    trained tokens, the prompt everything before it; rows without a trained token are skipped."""
    out = []
    for row in eval_ds.select(range(min(len(eval_ds), max_samples * 2))):
        ids, labels = list(row["input_ids"]), list(row["labels"])
        end = max((i for i, l in enumerate(labels) if l != IGNORE_INDEX), default=None)
        if end is None:
            continue
        start = end
        while start > 0 and labels[start - 1] != IGNORE_INDEX:
            start -= 1
        if start == 0:  # train_on_prompt: no prompt/answer border to generate from
            continue
        out.append((ids[:start], ids[start:end + 1]))
        if len(out) == max_samples:
            break
    return out


class EvalMetrics:
    """``compute_metrics`` for sft: teacher-forced exact match, plus generated-answer scores when
    ``train.generate.max_samples > 0``. Set :attr:`model` to the Trainer's model once it is built."""

    def __init__(self, tokenizer, eval_ds, generate_cfg=None):
        self.tokenizer = tokenizer
        self.cfg = generate_cfg
        self.model = None
        self.pairs = prompts_and_answers(eval_ds, generate_cfg.max_samples) if self.generates else []
        if self.generates and not self.pairs:
            from ftrun.config import ConfigError

            raise ConfigError("train.generate.max_samples: no eval row has a prompt and an answer to generate "
                              "from; check the data's eval split (or set train.generate.max_samples=0)")

    @property
    def generates(self) -> bool:
        return self.cfg is not None and self.cfg.max_samples > 0

    def __call__(self, eval_pred) -> dict:
        from ftrun.fit import exact_match

        metrics = exact_match(eval_pred)
        if self.generates and self.pairs and self.model is not None:
            metrics.update(self.generated())
        return metrics

    def generated(self) -> dict:
        from ftrun.generate import GenSettings, generate_ids
        from ftrun.predict import score

        model, tok = self.model, self.tokenizer
        was_training = model.training
        model.eval()
        try:
            greedy = GenSettings(max_new_tokens=self.cfg.max_new_tokens)
            gen = generate_ids(model, tok, [p for p, _ in self.pairs], greedy, self.cfg.batch_size)
        finally:
            model.train(was_training)
        preds = tok.batch_decode(gen, skip_special_tokens=True)
        refs = tok.batch_decode([a for _, a in self.pairs], skip_special_tokens=True)
        scores = score(preds, refs, prefix="")
        scores["gen_exact_match"] = scores.pop("exact_match")
        scores.pop("samples", None)
        return scores

