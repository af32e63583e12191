"""Does the best checkpoint by generated answers differ from the last one, or from the lowest eval loss?

The built-in task (tiny model, LoRA, letters), as ``python -m ftrun`` runs it, with an evaluation every
``--eval-steps`` that also generates answers for ``--samples`` held-out prompts and scores them
(``train.generate.max_samples``). For each learning rate the script reads the run's evaluations back
from trainer_state.json and reports the step that is best by ROUGE-L, by generated exact match and by
eval loss, and the last step.

    python bench/generative_eval.py                      # lr 1e-3 (the default) and 3e-3
    python bench/generative_eval.py --lrs 1e-3 --samples 32

Results: bench/results/generative_eval.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def one_run(lr: str, eval_steps: int, samples: int, tmp: Path) -> dict:
    from ftrun.compose import compose
    from ftrun.contract import TRAINER_STATE
    from ftrun.train import run

    overrides = [f"lr={lr}", f"train.eval_steps={eval_steps}", f"train.generate.max_samples={samples}",
                 "train.generate.max_new_tokens=24", "objective=eval_rouge_l", "train.save_total_limit=1",
                 "tracking.enabled=false", f"output_root={tmp}"]
    run_dir = tmp / f"lr{lr}"
    start = time.perf_counter()
    run(compose(overrides), run_dir)
    wall = time.perf_counter() - start
    state = json.loads((run_dir / TRAINER_STATE).read_text())
    evals = [{k: h[k] for k in ("step", "eval_loss", "eval_exact_match", "eval_gen_exact_match", "eval_bleu4",
                                "eval_rouge_l")} for h in state["log_history"] if "eval_rouge_l" in h]
    result = json.loads((run_dir / "result.json").read_text())

    def best(key, maximize=True):
        return max(evals, key=lambda e: (e[key] if maximize else -e[key], -e["step"]))["step"]

    return {"lr": lr, "overrides": overrides, "wall_s": round(wall, 1), "evaluations": evals,
            "last_step": evals[-1]["step"], "best_step_rouge_l": best("eval_rouge_l"),
            "best_step_gen_exact_match": best("eval_gen_exact_match"),
            "best_step_eval_loss": best("eval_loss", maximize=False),
            "kept_step": result.get("best_step"), "kept_rouge_l": result["objective"],
            "last_rouge_l": evals[-1]["eval_rouge_l"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--lrs", nargs="+", default=["1e-3", "3e-3"])
    ap.add_argument("--eval-steps", type=int, default=25)
    ap.add_argument("--samples", type=int, default=64)
    ap.add_argument("--out", default=str(ROOT / "bench" / "results"))
    a = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        runs = [one_run(lr, a.eval_steps, a.samples, Path(tmp)) for lr in a.lrs]
    machine = f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, load {os.getloadavg()[0]:.1f}"
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "generative_eval.json").write_text(json.dumps({"machine": machine, "command": " ".join(sys.argv),
                                                          "runs": runs}, indent=2))
    lines = ["# Best checkpoint by generated answers (`python bench/generative_eval.py`)", "",
             f"Machine: {machine}. The built-in task (tiny Llama, LoRA, letters, 375 steps), an evaluation every "
             f"{a.eval_steps} steps generating for {a.samples} held-out prompts (greedy, 24 new tokens).", "",
             "| lr | best by ROUGE-L | its ROUGE-L | last step's ROUGE-L | best by generated exact match | "
             "best by eval loss | last step | checkpoint kept |", "|---|---|---|---|---|---|---|---|"]
    for r in runs:
        lines.append(f"| {r['lr']} | {r['best_step_rouge_l']} | {r['kept_rouge_l']:.2f} | {r['last_rouge_l']:.2f} | "
                     f"{r['best_step_gen_exact_match']} | {r['best_step_eval_loss']} | {r['last_step']} | "
                     f"{r['kept_step']} |")
    differs = [r["lr"] for r in runs
               if r["best_step_rouge_l"] != r["last_step"] or r["best_step_rouge_l"] != r["best_step_eval_loss"]]
    lines += ["", ("Best by ROUGE-L differs from the last step or from the lowest eval loss for lr " + ", ".join(differs))
              if differs else "No case found where the best checkpoint by ROUGE-L differs from the last one or from "
              "the lowest eval loss.", ""]
    for r in runs:
        lines += [f"## lr {r['lr']}", "", "| step | eval_loss | teacher-forced exact match | generated exact match | "
                  "BLEU-4 | ROUGE-L |", "|---|---|---|---|---|---|"]
        lines += [f"| {e['step']} | {e['eval_loss']:.4f} | {e['eval_exact_match']:.3f} | {e['eval_gen_exact_match']:.3f} "
                  f"| {e['eval_bleu4']:.2f} | {e['eval_rouge_l']:.2f} |" for e in r["evaluations"]]
        lines.append("")
    (out / "generative_eval.md").write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
