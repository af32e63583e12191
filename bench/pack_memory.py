"""``hydra.sweeper.pack=auto``'s memory estimate (ftrun/estimate/pack.py) against the peak resident memory of real packs.

    python bench/pack_memory.py [--models DIR]

Each case runs in a fresh process with jemalloc preloaded, as ``python -m ftrun`` runs: one LoRA run alone
(``ftrun.train.run``), then packs of 2 and 4 LoRA runs of ranks 8, 64, 16 and 32 (``ftrun.packed.train.train_packed``,
what a sweep's warm worker runs), on random weights of Qwen2.5-0.5B's shapes (2 of its 24 layers, real 151,936-token
vocabulary), batch 4, cutoff 64, the built-in letters task, 3 steps and an evaluation. Measured: the largest
``peak_memory_mb`` (Linux ``VmHWM``) the runs' ``result.json`` report; estimated: ``pack_peak`` (one member:
``ftrun.estimate.estimate(cfg).peak``). Writes bench/results/pack_memory.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
RANKS = (8, 64, 16, 32)
CASE = """
import json, sys
from pathlib import Path
from ftrun.compose import compose
from ftrun.estimate import estimate
from ftrun.estimate.pack import pack_peak
k, model, out = int(sys.argv[1]), sys.argv[2], Path(sys.argv[3])
base = ["model=qwen2.5-0.5b-instruct", f"model.path={model}", "model.dtype=fp32", "method=lora", "batch_size=4",
        "cutoff_len=64", "max_steps=3", "train.save_steps=0", "tracking.enabled=false", "data.num_train=32",
        "data.num_eval=8", "train.eval_batch_size=4", "train.eval_steps=0"]
cfgs = [compose([*base, f"rank={r}", f"name=r{r}"]) for r in %s[:k]]
est = estimate(cfgs[0], device="cpu").peak if k == 1 else pack_peak(cfgs, device="cpu")[0]
if k == 1:
    from ftrun.train import run
    run(cfgs[0], out / "r0")
else:
    from ftrun.packed.train import train_packed
    train_packed(cfgs, [out / f"r{i}" for i in range(k)])
peak = max(json.loads((out / f"r{i}" / "result.json").read_text())["peak_memory_mb"] for i in range(k))
print(json.dumps({"members": k, "estimate_mb": est / 2**20, "measured_mb": peak}))
""" % (RANKS,)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", default=str(Path(tempfile.gettempdir()) / "ftrun-bench-models"))
    args = p.parse_args()
    from ftrun.allocator import library
    from ftrun.estimate.measured_peak import random_model
    from memory_estimate import machine

    model = random_model(Path(args.models) / "qwen2.5-0.5b-like-2l", "qwen2.5-0.5b-like", layers=2)
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "TOKENIZERS_PARALLELISM": "false"}
    if library("jemalloc"):
        env["LD_PRELOAD"] = library("jemalloc")
    rows = []
    for k in (1, 2, 4):
        with tempfile.TemporaryDirectory(prefix="ftrun-pack-memory-") as tmp:
            res = subprocess.run([sys.executable, "-c", CASE, str(k), str(model), tmp], cwd=tmp, env=env,
                                 capture_output=True, text=True)
        if res.returncode != 0:
            raise RuntimeError(res.stderr[-3000:])
        row = json.loads(res.stdout.strip().splitlines()[-1])
        row["error"] = row["estimate_mb"] / row["measured_mb"] - 1
        rows.append(row)
        print(row, flush=True)
    out = ROOT / "bench" / "results"
    (out / "pack_memory.json").write_text(json.dumps({"machine": machine(), "ranks": RANKS, "rows": rows}, indent=2))
    lines = ["# A pack's memory estimate vs its measured peak RSS (CPU): `python bench/pack_memory.py`", "",
             f"Machine: {machine()}. LoRA runs of ranks {', '.join(map(str, RANKS))} (the first k), Qwen2.5-0.5B-like "
             "(2 of 24 layers), batch 4, cutoff 64, 3 steps + eval, jemalloc.", "",
             "| runs | estimate MB | measured peak RSS MB | error |", "|---|---|---|---|"]
    for r in rows:
        runs = "alone" if r["members"] == 1 else f"pack of {r['members']}"
        lines.append(f"| {runs} | {r['estimate_mb']:.0f} | {r['measured_mb']:.0f} | {r['error']:+.1%} |")
    lines += ["", "The estimate takes every row as cutoff_len tokens long and every token as a target: it errs high."]
    (out / "pack_memory.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
