"""Tokens/s of `python -m ftrun method=lora` against a plain transformers Trainer.

Both train the same tiny model with the same LoRA config on the same tokenized
letters data, with the same batch size, optimizer, schedule and logging interval;
ftrun's run also records to MLflow (a throwaway sqlite store) as a user's would.
Evaluation is off in both, so the figure is training throughput. Runs alternate
(plain, ftrun, plain, ...) to spread machine noise, and the median is reported.

    python bench/trainer_overhead.py            # 3 repeats of 375 steps each
    python bench/trainer_overhead.py --repeats 5
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

OVERRIDES = ["method=lora", "train.eval_steps=0", "train.save_steps=0", "tracking.experiment=bench"]


def ftrun_run(tmp: Path) -> float:
    import json

    from ftrun.compose import compose
    from ftrun.contract import TRAINER_STATE
    from ftrun.train import run

    cfg = compose(OVERRIDES)
    run_dir = tmp / f"ftrun-{time.time_ns()}"
    run(cfg, run_dir)
    state = json.loads((run_dir / TRAINER_STATE).read_text())
    return state["num_input_tokens_seen"] / _train_runtime(state)


def _train_runtime(state: dict) -> float:
    # transformers 5 adds a running train_runtime to every log entry; the last is the whole run's
    return [h["train_runtime"] for h in state["log_history"] if "train_runtime" in h][-1]


def plain_run(tmp: Path) -> float:
    """What a user would write by hand with transformers + peft, same settings."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import (AutoModelForCausalLM, AutoTokenizer, DataCollatorForSeq2Seq, Trainer,
                              TrainingArguments, set_seed)

    from ftrun.compose import compose
    from ftrun.data import build_datasets
    from ftrun.model import model_path

    cfg = compose(OVERRIDES)
    set_seed(cfg.seed)
    path = model_path(cfg.model)
    tok = AutoTokenizer.from_pretrained(path)
    train_ds, _, _ = build_datasets(cfg.data, tok)  # identical tokens for both sides
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    model = get_peft_model(model, LoraConfig(r=16, lora_alpha=32, lora_dropout=0.0, target_modules="all-linear",
                                             task_type="CAUSAL_LM"))
    args = TrainingArguments(
        output_dir=str(tmp / f"plain-{time.time_ns()}"), per_device_train_batch_size=cfg.batch_size,
        num_train_epochs=cfg.epochs, learning_rate=cfg.optimizer.lr, lr_scheduler_type="cosine", warmup_steps=0.03,
        logging_steps=cfg.train.logging_steps, save_strategy="no", report_to="none", seed=cfg.seed,
        data_seed=cfg.seed, use_cpu=not torch.cuda.is_available(), include_num_input_tokens_seen="non_padding",
        disable_tqdm=True, optim="adamw_torch",
    )
    trainer = Trainer(model=model, args=args, train_dataset=train_ds,
                      data_collator=DataCollatorForSeq2Seq(tok, padding=True))
    trainer.train()
    state = {"log_history": trainer.state.log_history}
    return trainer.state.num_input_tokens_seen / _train_runtime(state)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        from ftrun.contract import MLFLOW_URI_ENV

        os.environ[MLFLOW_URI_ENV] = f"sqlite:///{tmp / 'mlflow.db'}"
        plain, ours = [], []
        for i in range(args.repeats):
            plain.append(plain_run(tmp))
            ours.append(ftrun_run(tmp))
            print(f"repeat {i + 1}: plain Trainer {plain[-1]:,.0f} tok/s, ftrun {ours[-1]:,.0f} tok/s", flush=True)
    p, o = statistics.median(plain), statistics.median(ours)
    print(f"\nmedian tokens/s  plain Trainer: {p:,.0f}   ftrun: {o:,.0f}   overhead: {100 * (p - o) / p:+.1f}%")


if __name__ == "__main__":
    main()
