"""ftrun.estimate's process figure against the peak resident memory of real runs on CPU.

    python bench/process_memory.py [--only SUBSTRING] [--models DIR]

Each case is a real ``python -m ftrun`` run in a fresh process (alpaca rows from the repo's
LLaMA-Factory demo files, a few steps, MLflow into a scratch store); the measured figure is the
run's own ``peak_memory_mb`` (Linux ``VmHWM``), the estimate is ``ftrun.estimate.estimate(cfg,
device="cpu").peak``: the runtime's baseline (measured once per machine and cached, see
``ftrun/estimate/baseline.py``) plus the tensors' peak. Cases: lora, qlora, full, freeze; packing
on and off; two sequence lengths; evaluation on and off; on the built-in tiny model and on random
weights of Qwen2.5-0.5B's shapes (2 of its 24 layers, real 151,936-token vocabulary, the tiny
model's tokenizer). Writes bench/results/process_memory.{json,md}.
"""

from __future__ import annotations

import argparse
import json
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

RUN = ["max_steps=3", "train.logging_steps=1", "train.save_steps=0", "train.eval_batch_size=8", "batch_size=8",
       "seed=42", "method.trainable_layers=1"]


def cases(data: Path, q05: Path):
    """(name, overrides) of every case."""
    alpaca = ["data=alpaca", f"data.path={data}"]
    evals = ["data.val_size=0.1", "train.eval_steps=0"]
    no_eval = ["data.val_size=0"]
    out = []
    for m in ("lora", "qlora", "full", "freeze"):
        out.append((f"tiny {m}, cutoff 64, eval", [f"method={m}", *alpaca, "cutoff_len=64", *evals]))
    out.append(("tiny lora, cutoff 512, packing, eval", ["method=lora", *alpaca, "cutoff_len=512",
                                                         "data.packing=true", *evals]))
    out.append(("tiny lora, cutoff 64, no eval", ["method=lora", *alpaca, "cutoff_len=64", *no_eval]))
    out.append(("tiny lora, cutoff 512, eval (rows shorter than 512: an upper bound)",
                ["method=lora", *alpaca, "cutoff_len=512", *evals]))
    real = ["model=qwen2.5-0.5b-instruct", f"model.path={q05}", f"model.name={q05.name}", "model.dtype=fp32"]
    for m in ("lora", "qlora", "full", "freeze"):
        out.append((f"Qwen2.5-0.5B-like (2 of 24 layers) {m}, cutoff 64, eval",
                    [*real, f"method={m}", *alpaca, "cutoff_len=64", *evals]))
    out.append(("Qwen2.5-0.5B-like (2 of 24 layers) lora, cutoff 128, packing, no eval",
                [*real, "method=lora", *alpaca, "cutoff_len=128", "data.packing=true", *no_eval]))
    out.append(("Qwen2.5-0.5B-like (2 of 24 layers) full, cutoff 64, no eval",
                [*real, "method=full", *alpaca, "cutoff_len=64", *no_eval]))
    return out


def real_model(models: Path) -> Path:
    """Random weights of Qwen2.5-0.5B's shapes (2 layers) with the tiny model's tokenizer beside them."""
    from ftrun.estimate.measured_peak import random_model
    from peer_llamafactory import tiny_model

    d = random_model(models / "qwen2.5-0.5b-like-2l", "qwen2.5-0.5b-like", layers=2)
    tiny = tiny_model()
    for f in tiny.iterdir():
        if f.name.startswith(("tokenizer", "chat_template", "special_tokens")) and not (d / f.name).exists():
            shutil.copy(f, d / f.name)
    return d


def run_case(name: str, overrides: list, work: Path) -> dict:
    from ftrun.estimate import compose, estimate

    est = estimate(compose([*RUN, *overrides]), device="cpu")
    out = work / "out"
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "TOKENIZERS_PARALLELISM": "false"}
    start = time.perf_counter()
    load = os.getloadavg()[0]
    res = subprocess.run([sys.executable, "-m", "ftrun", *RUN, *overrides, f"output_root={out}", "name=case",
                          f"tracking.uri=sqlite:///{work}/mlflow.db"], cwd=work, env=env, capture_output=True,
                         text=True)
    if res.returncode != 0:
        raise RuntimeError(f"{name}: run failed\n{res.stderr[-3000:]}")
    result = json.loads(next(out.glob("case/*/result.json")).read_text())
    measured = result["peak_memory_mb"] * 2**20
    return {"case": name, "overrides": overrides, "estimate_bytes": est.peak, "tensor_bytes": est.tensor_peak,
            "runtime_bytes": est.runtime, "phase": est.phase, "measured_bytes": measured,
            "error": est.peak / measured - 1, "breakdown_mb": result.get("peak_memory_breakdown_mb"),
            "wall_s": time.perf_counter() - start, "load_before": load, "steps": result.get("global_step")}


def reestimate(row: dict, data: Path) -> dict:
    """A case kept from an earlier run of this script with the estimate of the code as it is now."""
    from ftrun.estimate import compose, estimate

    overrides = [f"data.path={data}" if o.startswith("data.path=") else o for o in row["overrides"]]
    est = estimate(compose([*RUN, *overrides]), device="cpu")
    return {**row, "estimate_bytes": est.peak, "tensor_bytes": est.tensor_peak, "runtime_bytes": est.runtime,
            "phase": est.phase, "error": est.peak / row["measured_bytes"] - 1}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", default=str(Path(tempfile.gettempdir()) / "ftrun-bench-models"))
    p.add_argument("--only", default=None)
    p.add_argument("--out", default=str(ROOT / "bench" / "results"))
    p.add_argument("--resume", action="store_true", help="keep the cases already in process_memory.json")
    args = p.parse_args()
    from memory_estimate import machine
    from peer_llamafactory import write_data

    rows = []
    done = Path(args.out) / "process_memory.json"
    with tempfile.TemporaryDirectory(prefix="ftrun-procmem-") as tmp:
        data = write_data(Path(tmp) / "data", 256)
        q05 = real_model(Path(args.models))
        if args.resume and done.is_file():
            rows = [reestimate(r, data) for r in json.loads(done.read_text())["cases"]]
        for i, (name, overrides) in enumerate(cases(data, q05)):
            if (args.only and args.only not in name) or any(r["case"] == name for r in rows):
                continue
            work = Path(tmp) / f"case{i}"
            work.mkdir()
            r = run_case(name, overrides, work)
            rows.append(r)
            print(f"{name:<72} estimate {r['estimate_bytes'] / 2**20:7.0f} MiB  measured "
                  f"{r['measured_bytes'] / 2**20:7.0f} MiB  {r['error']:+6.1%}", flush=True)
            write(Path(args.out), rows, machine(), args)  # after every case
    write(Path(args.out), rows, machine(), args)


def write(out: Path, rows: list, machine: str, args) -> None:
    out.mkdir(parents=True, exist_ok=True)
    command = "python bench/process_memory.py" + (f" --only '{args.only}'" if args.only else "")
    (out / "process_memory.json").write_text(json.dumps({"machine": machine, "command": command, "cases": rows},
                                                        indent=2))
    lines = ["# ftrun.estimate (the process) vs real runs' peak resident memory (CPU)", "",
             f"Machine: {machine}.", f"Command: `{command}` (each case a real `python -m ftrun` run of 3 steps in "
             "a fresh process; measured = its `peak_memory_mb`, Linux VmHWM).", "",
             "Estimate = the runtime's baseline (a two-step run of the tiny model, measured once per machine and "
             "cached) + the tensors' peak, which assumes every row is cutoff_len long (the worst batch): the "
             "demo rows are about 60-110 tokens with the tiny tokenizer and its chat template, so a cutoff of "
             "64 (or packing) fills the rows, and the case marked 'upper bound' (cutoff 512, no packing) shows "
             "the bound's slack; it is left out of the largest error.", "",
             "| case | estimate MiB | = runtime + tensors (at) | measured MiB | error | load avg |",
             "|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['case']} | {r['estimate_bytes'] / 2**20:.0f} | {r['runtime_bytes'] / 2**20:.0f} + "
                     f"{r['tensor_bytes'] / 2**20:.0f} ({r['phase']}) | {r['measured_bytes'] / 2**20:.0f} | "
                     f"{r['error']:+.1%} | {r['load_before']:.2f} |")
    held = [r for r in rows if "upper bound" not in r["case"]]
    worst = max((abs(r["error"]) for r in held), default=0)
    lines += ["", f"Largest error: {worst:.1%} over the {len(held)} cases whose rows reach cutoff_len."]
    (out / "process_memory.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
