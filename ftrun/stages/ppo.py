"""stage=ppo: RL from a reward model, on TRL's GRPOTrainer.

TRL 1.16 no longer has a PPOTrainer; GRPOTrainer is its successor there. It
keeps PPO's clipped-ratio policy loss (``stage.ppo.epsilon``, several passes per
batch with ``stage.ppo.num_iterations``) and a KL penalty to the reference
(``stage.beta``), and replaces PPO's value network with the other completions of
the same prompt as the baseline (``stage.ppo.num_generations`` per prompt).

data (prompts of supervised or pairwise rows) -> policy from ``stage.init_run``
(+ LoRA config) -> reward model from ``stage.reward_run`` -> GRPOTrainer (sample,
score, update) -> train -> save -> report.
With lora/qlora the reference is the policy with its adapter disabled.
Logs reward (mean score of the sampled completions), kl and policy_loss each
logging step; returns ``reward_mean``, the mean reward over the last quarter of
the logged steps.
"""

from __future__ import annotations

import logging
from pathlib import Path

log = logging.getLogger(__name__)


def run(cfg, run_dir: Path, overrides=None) -> float:
    from trl import GRPOConfig, GRPOTrainer

    from ftrun.stages.common import (load_policy, load_reward_model, log_start, prepare_data, stage_callbacks,
                                     start_from_run, start_tracking)
    from ftrun.fit import train_and_report, training_arguments

    data = prepare_data(cfg)  # bad data fails here, before any model loads
    tokenizer = data.tokenizer
    cfg = start_from_run(cfg, run_dir)
    tokenizer.padding_side = "left"  # generation continues at the right end of each prompt

    log.info("Loading reward model from %s", cfg.stage.reward_run)
    reward_model, reward_tokenizer = load_reward_model(cfg.stage.reward_run)
    log.info("Loading policy '%s' (method %s)", cfg.model.name, cfg.method.name)
    model, peft_config = load_policy(cfg)
    st, p = cfg.stage, cfg.stage.ppo
    args = training_arguments(
        cfg, run_dir, has_eval=False, cls=GRPOConfig,
        beta=st.beta, num_generations=p.num_generations, max_completion_length=p.max_new_tokens,
        temperature=p.temperature, epsilon=p.epsilon, num_iterations=p.num_iterations,
        loss_type=p.loss_type, scale_rewards=p.scale_rewards,
        gradient_checkpointing=cfg.train.gradient_checkpointing,
    )
    args.include_num_input_tokens_seen = "no"  # rollouts are generated inside the step; there is no input batch to count
    tracker = start_tracking(cfg, run_dir, overrides)
    log.info("Building GRPOTrainer (beta=%g, %d completions per prompt, clip %.2f)",
             st.beta, p.num_generations, p.epsilon)
    trainer = GRPOTrainer(
        model=model,
        reward_funcs=[reward_model],
        args=args,
        train_dataset=data.train,
        processing_class=tokenizer,
        reward_processing_classes=[reward_tokenizer],
        peft_config=peft_config,
        callbacks=[policy_loss_callback(st.beta), *stage_callbacks(cfg, tracker)],
    )
    log_start(tracker, trainer.model, data)
    return train_and_report(cfg, trainer, tokenizer, tracker, run_dir, extra_metrics=reward_summary)


def policy_loss_callback(beta: float):
    """A TrainerCallback that adds ``policy_loss`` (the clipped surrogate alone: loss - beta x kl) to each
    train log. TRL logs it only when an entropy bonus is on; both terms are averaged over the same
    completion tokens, so the difference is the policy part of the loss. (Built here, not at import:
    transformers loads only when a run does.)"""
    from transformers import TrainerCallback

    class PolicyLoss(TrainerCallback):
        def on_log(self, args, state, control, logs=None, **kwargs):
            if logs and "loss" in logs and "policy_loss" not in logs:
                logs["policy_loss"] = logs["loss"] - beta * logs.get("kl", 0.0)

    return PolicyLoss()


def reward_summary(history) -> dict:
    """reward_mean: mean reward over the last quarter of the logged steps; reward_start: the first."""
    rewards = [h["reward"] for h in history if "reward" in h]
    if not rewards:
        return {}
    tail = rewards[-max(1, len(rewards) // 4):]
    return {"reward_mean": sum(tail) / len(tail), "reward_start": rewards[0]}
