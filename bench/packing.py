"""Training throughput with and without ``data.packing``, on data with a realistic length spread.

    python bench/packing.py [--samples 3000] [--steps 40] [--cutoff 512] [model=... other overrides]

Writes a synthetic Alpaca file whose prompt and response lengths are log-normal
(median total ~120 tokens, a long tail to cutoff_len, like Alpaca-style SFT
data), then runs ``ftrun.train.run`` twice with the same model and settings:
``data.packing=false`` (``--batch`` samples per step, padded to the longest) and
``data.packing=true`` (``--packed-batch`` packed rows of cutoff_len per step).
It reports real (non-padding) tokens per second of training, steps/s, the
padding share of the unpacked batches, and writes a JSON summary.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

LETTERS = "abcdefghijklmnopqrstuvwxyz"


def synthetic_rows(n: int, seed: int = 0):
    """Alpaca rows with log-normal prompt and response lengths (in letter tokens)."""
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        n_prompt = min(400, max(2, int(rng.lognormvariate(3.3, 0.9))))
        n_answer = min(400, max(1, int(rng.lognormvariate(3.6, 1.0))))
        rows.append({
            "instruction": "把字母倒过来",
            "input": " ".join(rng.choice(LETTERS) for _ in range(n_prompt)),
            "output": " ".join(rng.choice(LETTERS) for _ in range(n_answer)),
        })
    return rows


def run_once(data_path: Path, packing: bool, batch: int, steps: int, cutoff: int, extra, workdir: Path) -> dict:
    from ftrun.compose import compose
    from ftrun.contract import RESULT_FILE, TRAINER_STATE
    from ftrun.train import run

    overrides = [
        "data=alpaca", f"data.path={data_path}", "data.val_size=0", f"data.packing={str(packing).lower()}",
        f"data.cache_dir={workdir / 'cache'}", f"cutoff_len={cutoff}", f"batch_size={batch}",
        f"max_steps={steps}", "train.save_steps=0", "train.eval_steps=0", "train.logging_steps=10",
        "tracking.enabled=false", "lr=1e-4", *extra,
    ]
    cfg = compose(overrides)
    run_dir = workdir / ("packed" if packing else "padded")
    start = time.perf_counter()
    run(cfg, run_dir)
    wall = time.perf_counter() - start
    state = json.loads((run_dir / TRAINER_STATE).read_text())
    result = json.loads((run_dir / RESULT_FILE).read_text())
    tokens = state.get("num_input_tokens_seen") or 0
    t = result["train_time_s"]
    return {"packing": packing, "batch_size": batch, "steps": state["global_step"], "train_time_s": t,
            "tokens": tokens, "tokens_per_s": tokens / t, "steps_per_s": state["global_step"] / t,
            "wall_s": wall, "peak_memory_mb": result.get("peak_memory_mb")}


def padding_share(data_path: Path, batch: int, cutoff: int, extra) -> float:
    """Share of padding in randomly drawn unpacked batches of ``batch`` samples."""
    from ftrun.compose import compose
    from ftrun.data import build_datasets
    from ftrun.model import load_tokenizer

    cfg = compose(["data=alpaca", f"data.path={data_path}", "data.val_size=0", f"cutoff_len={cutoff}", *extra])
    tok = load_tokenizer(cfg.model)
    ds, _, _ = build_datasets(cfg.data, tok)
    lengths = [len(x) for x in ds.with_format("arrow")["input_ids"].to_pylist()]
    rng = random.Random(0)
    rng.shuffle(lengths)
    real = padded = 0
    for i in range(0, len(lengths) - batch + 1, batch):
        b = lengths[i:i + batch]
        real += sum(b)
        padded += max(b) * len(b)
    return 1 - real / padded, lengths


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--samples", type=int, default=3000)
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--cutoff", type=int, default=512)
    ap.add_argument("--batch", type=int, default=16, help="samples per step without packing")
    ap.add_argument("--packed-batch", type=int, default=4, help="packed rows per step with packing")
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "packing.json"))
    ap.add_argument("overrides", nargs="*", help="extra config overrides, e.g. model=... precision=bf16")
    args = ap.parse_args()

    import logging

    logging.basicConfig(level=logging.WARNING)
    import numpy as np
    import torch

    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        data = work / "spread.jsonl"
        data.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in synthetic_rows(args.samples)))
        share, lengths = padding_share(data, args.batch, args.cutoff, args.overrides)
        q = np.percentile(lengths, [50, 90, 99])
        padded = run_once(data, False, args.batch, args.steps, args.cutoff, args.overrides, work)
        packed = run_once(data, True, args.packed_batch, args.steps, args.cutoff, args.overrides, work)
    device = torch.cuda.get_device_name() if torch.cuda.is_available() else f"CPU ({torch.get_num_threads()} threads)"
    summary = {
        "device": device, "samples": args.samples, "cutoff_len": args.cutoff,
        "length_p50_p90_p99_max": [int(q[0]), int(q[1]), int(q[2]), int(max(lengths))],
        "padding_share_unpacked": share, "padded": padded, "packed": packed,
        "speedup_tokens_per_s": packed["tokens_per_s"] / padded["tokens_per_s"],
        "overrides": args.overrides,
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(summary, indent=2))
    print(f"device: {device}; {args.samples} samples, tokens p50/p90/p99/max = "
          f"{summary['length_p50_p90_p99_max']}, cutoff_len={args.cutoff}")
    print(f"unpacked batches are {100 * share:.1f}% padding")
    for r in (padded, packed):
        label = f"packing={'on ' if r['packing'] else 'off'} batch_size={r['batch_size']:<3}"
        print(f"{label} {r['tokens_per_s']:>10.0f} tokens/s  {r['steps_per_s']:.2f} steps/s  "
              f"({r['tokens']} tokens in {r['train_time_s']:.1f} s)")
    print(f"speed-up (tokens/s): x{summary['speedup_tokens_per_s']:.2f}; wrote {out}")


if __name__ == "__main__":
    main()
