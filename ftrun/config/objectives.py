"""The metrics a run can return to a sweep: each one's direction, and which stage reports which.

``keep_best`` and ``has_eval`` answer the two questions the objective raises for a
run: does it end with its best checkpoint, and does it evaluate at all.
"""

from __future__ import annotations

OBJECTIVE_DIRECTIONS = {
    "eval_loss": "minimize",
    "eval_perplexity": "minimize",
    "eval_exact_match": "maximize",
    # sft with train.generate.max_samples > 0: scores of generated answers (ftrun.gen_eval)
    "eval_gen_exact_match": "maximize",
    "eval_bleu4": "maximize",
    "eval_rouge1": "maximize",
    "eval_rouge2": "maximize",
    "eval_rouge_l": "maximize",
    # rm: pairwise accuracy and margin of the reward model on the eval pairs
    "eval_accuracy": "maximize",
    "eval_margin": "maximize",
    # dpo and kto: implicit rewards beta * log(pi / pi_ref) on the eval pairs
    "eval_rewards/accuracies": "maximize",
    "eval_rewards/margins": "maximize",
    # ppo: the reward model's score of the policy's completions (mean over the last logged steps)
    "reward_mean": "maximize",
}

# objectives that need train.generate.max_samples > 0
GENERATIVE_OBJECTIVES = ("eval_gen_exact_match", "eval_bleu4", "eval_rouge1", "eval_rouge2", "eval_rouge_l")

# the objectives each stage can return; the first is its default (the `objective` key resolves to it)
STAGE_OBJECTIVES = {
    "pt": ("eval_loss", "eval_perplexity"),
    "sft": ("eval_loss", "eval_perplexity", "eval_exact_match", "eval_gen_exact_match", "eval_bleu4", "eval_rouge1",
            "eval_rouge2", "eval_rouge_l"),
    "rm": ("eval_accuracy", "eval_margin", "eval_loss"),
    "dpo": ("eval_rewards/accuracies", "eval_rewards/margins", "eval_loss"),
    "kto": ("eval_rewards/margins", "eval_loss"),
    "ppo": ("reward_mean",),
}


def keep_best(cfg) -> bool:
    """Whether the run ends with its best checkpoint by the objective (``train.keep_best``; by default
    when the objective scores generated answers)."""
    if cfg.train.keep_best is not None:
        return bool(cfg.train.keep_best)
    return cfg.objective in GENERATIVE_OBJECTIVES


def has_eval(cfg) -> bool:
    """Whether the run evaluates (an eval split exists): then an eval batch's logits count too."""
    if cfg.data.builtin is not None and not (cfg.data.path or cfg.data.names or cfg.data.sources):
        return cfg.data.num_eval > 0
    return cfg.data.val_size > 0
