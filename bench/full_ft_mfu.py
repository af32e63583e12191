"""Dense full fine-tuning through ftrun against the machine's fp32 matmul peak, both measured in one run.

    python bench/full_ft_mfu.py [--layers 8,24] [--steps 5] [--batch 4] [--cutoff 256]

1. The peak: the best of several timed fp32 ``torch.mm`` of 2048x2048 matrices (2*n^3 FLOP each) with
   the threads torch uses (``torch.get_num_threads()``), in this process, before and after the run
   (the higher of the two counts).
2. The runs: ``python -m ftrun method=full`` on random weights of Qwen2.5-0.5B's shapes (each of ``--layers``
   of its 24 decoder layers, real 151,936-token vocabulary, tied embeddings, fp32, adamw), packed alpaca
   rows so every row is ``--cutoff`` tokens, every token a target (``data.train_on_prompt``: the model
   FLOPs below are done for every token), ``--steps`` optimizer steps, no eval, no checkpoints, no
   MLflow; as shipped (the chunked loss, ftrun/linear_cross_entropy.py) and with transformers' loss
   (``train.chunked_loss=false``). Their rate: model FLOPs per token (6 x the parameters that multiply: every linear and the LM
   head, not the embedding lookup; plus attention's 6 x layers x cutoff x hidden for causal scores and
   values, forward and backward) x tokens, over the steps after the first (ftrun logs the Trainer's
   running ``train_runtime`` at every step).

Writes bench/results/full_ft_mfu.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))


def matmul_peak(n: int = 2048, tries: int = 8) -> float:
    """Best fp32 GFLOP/s of ``torch.mm`` on n x n matrices."""
    import torch

    a, b = torch.randn(n, n), torch.randn(n, n)
    torch.mm(a, b)  # warm up
    best = 0.0
    for _ in range(tries):
        start = time.perf_counter()
        torch.mm(a, b)
        best = max(best, 2 * n**3 / (time.perf_counter() - start) / 1e9)
    return best


def model_flops_per_token(model_dir: Path, cutoff: int) -> tuple:
    """(FLOPs per trained token, parameters that multiply, all parameters) from the model's shapes."""
    from ftrun.compose import compose
    from ftrun.estimate import shapes

    s = shapes(compose(["model=qwen2.5-0.5b-instruct", f"model.path={model_dir}"]).model)
    total = sum(math.prod(sh) for _, sh in s.params)
    linear = sum(i * o for _, i, o in s.linears) + s.hidden * s.vocab  # + the (tied) LM head
    attention = 6 * s.n_layers * cutoff * s.hidden  # causal QK^T and AV, x3 for backward, /2 for causal
    return 6 * linear + attention, linear, total


def run_ftrun(work: Path, model_dir: Path, data: Path, args, extra=()) -> dict:
    out = work / "out"
    shutil.rmtree(out, ignore_errors=True)
    cmd = [sys.executable, "-m", "ftrun", "model=qwen2.5-0.5b-instruct", f"model.path={model_dir}",
           "model.dtype=fp32", "method=full", "data=alpaca", f"data.path={data}", "data.val_size=0",
           "data.packing=true", "data.train_on_prompt=true", f"cutoff_len={args.cutoff}", f"batch_size={args.batch}", f"max_steps={args.steps}",
           "train.logging_steps=1", "train.save_steps=0", "tracking.enabled=false", f"output_root={out}",
           "name=mfu", *extra]
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "TOKENIZERS_PARALLELISM": "false"}
    res = subprocess.run(cmd, cwd=work, env=env, capture_output=True, text=True)
    if res.returncode != 0:
        raise RuntimeError(res.stderr[-3000:])
    state = json.loads(next(out.glob("mfu/*/trainer_state.json")).read_text())
    logs = [h for h in state["log_history"] if "loss" in h and "train_runtime" in h]
    first, last = logs[0], logs[-1]
    tokens = last["num_input_tokens_seen"] - first["num_input_tokens_seen"]
    seconds = float(last["train_runtime"]) - float(first["train_runtime"])
    return {"tokens_after_first_step": tokens, "seconds_after_first_step": seconds, "steps": state["global_step"],
            "tokens_per_s": tokens / seconds, "losses": [h["loss"] for h in logs]}


LOSSES = (("chunked loss (default)", ()), ("transformers' loss", ("train.chunked_loss=false",)))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--layers", default="8,24", help="comma-separated: decoder layers of each model")
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--cutoff", type=int, default=256)
    p.add_argument("--models", default=str(Path(tempfile.gettempdir()) / "ftrun-bench-models"))
    args = p.parse_args()
    import torch

    from memory_estimate import machine
    from peer_llamafactory import write_data

    peak_before = matmul_peak()
    load = os.getloadavg()[0]
    rows = []
    with tempfile.TemporaryDirectory(prefix="ftrun-mfu-") as tmp:
        data = write_data(Path(tmp) / "data", 256)
        for layers in [int(x) for x in args.layers.split(",")]:
            model_dir = bench_model(Path(args.models), layers)
            per_token, linear, total = model_flops_per_token(model_dir, args.cutoff)
            for loss, extra in LOSSES:
                got = run_ftrun(Path(tmp), model_dir, data, args, extra)
                rows.append({"layers": layers, "loss": loss, "params": total, "multiplying_params": linear,
                             "flops_per_token": per_token, "achieved_gflops": got["tokens_per_s"] * per_token / 1e9,
                             **got})
                print(rows[-1]["layers"], loss, f"{got['tokens_per_s']:.0f} tokens/s", flush=True)
    peak = max(peak_before, matmul_peak())
    for r in rows:
        r["share_of_peak"] = r["achieved_gflops"] / peak
    result = {"machine": machine(), "threads": torch.get_num_threads(), "matmul_peak_gflops": peak,
              "load_before": load, "batch": args.batch, "cutoff": args.cutoff, "steps": args.steps, "rows": rows}
    res = ROOT / "bench" / "results"
    (res / "full_ft_mfu.json").write_text(json.dumps(result, indent=2))
    lines = ["# Dense full fine-tuning through ftrun vs the fp32 matmul peak (CPU)", "",
             f"Machine: {result['machine']}. Command: `python bench/full_ft_mfu.py --layers {args.layers} "
             f"--steps {args.steps} --batch {args.batch} --cutoff {args.cutoff}`; load average before: {load:.2f}; "
             f"fp32 matmul peak measured in the same run: {peak:.1f} GFLOP/s.", "",
             "| model | params | loss | tokens/s | achieved GFLOP/s | share of peak | first losses |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| Qwen2.5-0.5B-like, {r['layers']} of 24 layers, fp32, adamw | {r['params'] / 1e6:.0f}M | "
                     f"{r['loss']} | {r['tokens_per_s']:.0f} | {r['achieved_gflops']:.1f} | "
                     f"{r['share_of_peak']:.0%} | {', '.join(f'{x:.4f}' for x in r['losses'][:3])} |")
    lines += ["", "Model FLOPs: 6 x (every linear + the LM head) per token + causal attention; every token is a "
              "target; the steps after the first are timed."]
    (res / "full_ft_mfu.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


def bench_model(models: Path, layers: int) -> Path:
    """Random weights of Qwen2.5-0.5B's shapes with ``layers`` decoder layers, the tiny model's tokenizer beside."""
    from ftrun.estimate.measured_peak import random_model
    from peer_llamafactory import tiny_model

    model_dir = random_model(models / f"qwen2.5-0.5b-like-{layers}l", "qwen2.5-0.5b-like", layers=layers)
    for f in tiny_model().iterdir():
        if f.name.startswith(("tokenizer", "chat_template")) and not (model_dir / f.name).exists():
            (model_dir / f.name).write_bytes(f.read_bytes())
    return model_dir


if __name__ == "__main__":
    main()
