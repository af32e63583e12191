"""ftrun.estimate against the measured peak of real training steps on CPU, for a table of cases.

    python bench/memory_estimate.py [--models DIR] [--only SUBSTRING] [--steps 2]
    python bench/memory_estimate.py --paper     # GPU figures on paper only (nothing runs)

Each case runs ``python -m ftrun.estimate <overrides> estimate.measure=true`` in a fresh process
(``ftrun.estimate.measured_peak``: the model loads and trains ``--steps`` optimizer steps on random rows of
``cutoff_len`` tokens, then evaluates one batch). The measured figure is PyTorch's tensor peak from
its profiler's allocation events (the CPU counterpart of ``torch.cuda.max_memory_allocated``); the
process's resident-memory rise is listed beside it. Models: the built-in tiny Llama, and random
weights of Qwen2.5-0.5B's and Qwen2.5-1.5B's published shapes (real vocabulary, widths and heads;
fewer layers, as the table says: 4 of 24 and 2 of 28, so that a case takes a minute or two on a
shared 2-core CPU; every layer is alike, so depth only scales the per-layer terms). Writes bench/results/memory_estimate.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

TINY = ["batch_size=8", "cutoff_len=128", "train.eval_batch_size=8", "method.trainable_layers=2"]
REAL = ["model.dtype=fp32", "batch_size=4", "cutoff_len=64", "train.eval_batch_size=4", "method.trainable_layers=2"]


def cases(models: Path):
    """(name, model label, overrides) of every case."""
    q05 = models / "qwen2.5-0.5b-like-4l"
    q05s = models / "qwen2.5-0.5b-like-2l"
    q15 = models / "qwen2.5-1.5b-like-2l"
    out = []
    for label, path in (("Qwen2.5-0.5B-like (4 of 24 layers)", q05), ("Qwen2.5-1.5B-like (2 of 28 layers)", q15)):
        for m in ("lora", "qlora", "freeze", "full"):
            out.append((f"{label} {m}", label, ["model=qwen2.5-0.5b-instruct", f"model.path={path}",
                                                f"model.name={path.name}", f"method={m}", *REAL]))
    for m in ("full", "freeze", "lora", "qlora"):
        out.append((f"tiny {m}", "tiny (4 layers)", [f"method={m}", *TINY]))
    out.append(("tiny lora, eval batch 32", "tiny (4 layers)",
                ["method=lora", *TINY, "batch_size=2", "train.eval_batch_size=32"]))
    small = ["model=qwen2.5-0.5b-instruct", f"model.path={q05s}", f"model.name={q05s.name}", *REAL]
    label = "Qwen2.5-0.5B-like (2 of 24 layers)"
    for extra in (["method=full", "optimizer=sgd"], ["method=full", "optimizer=adafactor"],
                  ["method=full", "optimizer=adamw_8bit"], ["method=full", "train.gradient_checkpointing=true"],
                  ["method=lora", "train.gradient_checkpointing=true"], ["method=qlora", "method.bits=8"]):
        out.append((f"{label} {' '.join(extra)}", label, [*small, *extra]))
    return out


def paper(models: Path, out: Path) -> None:
    """GPU figures from the estimate alone for the full-depth published shapes (nothing is measured)."""
    from ftrun.estimate import compose, estimate
    from ftrun.estimate.measured_peak import REAL_SHAPES

    lines = ["# ftrun.estimate on paper: GPU figures (not measured)", "",
             "Command: `python bench/memory_estimate.py --paper`. Full-depth Qwen2.5 shapes (config.json only), "
             "bf16 weights and mixed precision, batch_size=4, cutoff_len=1024, train.eval_batch_size=4, adamw; "
             "tensor peak per device (the process figure adds the CUDA context and allocator reserve, README).", "",
             "| model | method | devices x sharding | checkpointing | peak | at | weights | grads | optimizer | "
             "activations |", "|---|---|---|---|---|---|---|---|---|---|"]
    for shape in REAL_SHAPES:
        d = models / f"{shape}-config"
        d.mkdir(parents=True, exist_ok=True)
        spec = dict(REAL_SHAPES[shape], dtype="bfloat16")
        (d / "config.json").write_text(json.dumps(spec))
        for method in ("full", "freeze", "lora", "qlora"):
            for ckpt in ("false", "true"):
                for devices, sharding in ((1, "none"), (8, "zero3")):
                    if method != "full" and devices > 1:
                        continue
                    cfg = compose(["model=qwen2.5-0.5b-instruct", f"model.path={d}", f"model.name={shape}",
                                   f"method={method}", "precision=bf16", "batch_size=4", "cutoff_len=1024",
                                   "train.eval_batch_size=4", f"train.gradient_checkpointing={ckpt}",
                                   *(["method.compute_dtype=bf16"] if method == "qlora" else [])])
                    e = estimate(cfg, devices=devices, sharding=sharding, device="cuda")
                    g = lambda n: f"{n / 2**30:.2f} GiB"  # noqa: E731
                    lines.append(f"| {shape} | {method} | {devices} x {sharding} | {ckpt} | {g(e.tensor_peak)} | {e.phase} | "
                                 f"{g(e.weights)} | {g(e.gradients)} | {g(e.optimizer)} | {g(e.activations)} |")
    (out / "memory_estimate_gpu_paper.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


def machine() -> str:
    import torch

    from ftrun.estimate.baseline import cpu_model

    cpu = cpu_model()

    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return (f"{cpu}, {os.cpu_count()} cores visible (shared), {mem:.0f} GiB RAM, "
            f"torch {torch.__version__}, {torch.get_num_threads()} threads, Linux {platform.release()}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", default=str(Path(tempfile.gettempdir()) / "ftrun-bench-models"))
    p.add_argument("--only", default=None, help="run only cases whose name contains this")
    p.add_argument("--steps", type=int, default=2)
    p.add_argument("--out", default=str(ROOT / "bench" / "results"))
    p.add_argument("--paper", action="store_true", help="only write the GPU figures on paper")
    p.add_argument("--resume", action="store_true", help="keep the cases already in memory_estimate.json")
    args = p.parse_args()
    if args.paper:
        paper(Path(args.models), Path(args.out))
        return

    from ftrun.estimate.measured_peak import random_model

    models = Path(args.models)
    random_model(models / "qwen2.5-0.5b-like-4l", "qwen2.5-0.5b-like", layers=4)
    random_model(models / "qwen2.5-0.5b-like-2l", "qwen2.5-0.5b-like", layers=2)
    random_model(models / "qwen2.5-1.5b-like-2l", "qwen2.5-1.5b-like", layers=2)

    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "TOKENIZERS_PARALLELISM": "false"}
    out = Path(args.out)
    rows = []
    if args.resume and (out / "memory_estimate.json").is_file():
        rows = json.loads((out / "memory_estimate.json").read_text())["cases"]
    todo = [c for c in cases(models) if not (args.only and args.only not in c[0])]
    for name, label, overrides in todo:
        if any(r["case"] == name for r in rows):
            continue
        with tempfile.NamedTemporaryFile(suffix=".json") as f:
            start = time.perf_counter()
            res = subprocess.run([sys.executable, "-m", "ftrun.estimate", *overrides, "estimate.measure=true",
                                  f"estimate.steps={args.steps}", f"estimate.json={f.name}"],
                                 capture_output=True, text=True, cwd=ROOT, env=env)
            if res.returncode != 0:
                print(f"{name}: FAILED\n{res.stderr[-3000:]}", file=sys.stderr)
                continue
            got = json.loads(Path(f.name).read_text())
        est, meas = got["estimate"], got["measured"]
        rows.append({"case": name, "model": label, "overrides": overrides, "estimate_bytes": est["tensor_peak"],
                     "phase": est["phase"], "measured_tensor_peak_bytes": meas["tensor_peak"],
                     "measured_rss_rise_bytes": meas["rss_peak_delta"], "error": got["error"],
                     "total_params": est["total_params"], "trainable_params": est["trainable_params"],
                     "tokens_per_step": est["tokens"], "steps": meas["steps"],
                     "wall_s": time.perf_counter() - start, "estimate": est})
        print(f"{name:<60} estimate {est['tensor_peak'] / 2**20:9.1f} MiB  measured {meas['tensor_peak'] / 2**20:9.1f} MiB"
              f"  {got['error']:+6.1%}  (RSS rise {meas['rss_peak_delta'] / 2**20:.0f} MiB)", flush=True)
        write(out, rows, args, [c[0] for c in todo if not any(r["case"] == c[0] for r in rows)])


def write(out: Path, rows: list, args, missing: list) -> None:
    """memory_estimate.json and .md with the cases done so far (rewritten after each case)."""
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    info = {"machine": machine(), "steps": args.steps,
            "command": "python bench/memory_estimate.py" + (f" --only '{args.only}'" if args.only else "")
            + (" --resume" if args.resume else ""),
            "measured": "torch.profiler CPU allocation events: peak bytes held by tensors, from before the "
                        "model loads to the end of the eval batch (RSS rise listed for reference)",
            "cases": rows}
    (out / "memory_estimate.json").write_text(json.dumps(info, indent=2))
    lines = [f"# ftrun.estimate vs measured peak memory (CPU)", "",
             f"Machine: {info['machine']}.", f"Command: `{info['command']}` ({args.steps} training steps + one "
             "eval batch per case, each in a fresh process).", "",
             "Measured = the peak of bytes held by PyTorch tensors (torch.profiler's allocation events), "
             "the CPU counterpart of `torch.cuda.max_memory_allocated`. RSS rise = the process's resident "
             "high-water mark over its size before the model loaded (adds allocator slack, library pages, "
             "Python objects); for reference only.", "",
             "| case | params (trainable) | tokens/step | estimate | at | measured | error | RSS rise |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['case']} | {r['total_params'] / 1e6:.1f}M ({r['trainable_params'] / 1e6:.2f}M) | "
                     f"{r['tokens_per_step']} | {r['estimate_bytes'] / 2**20:.1f} MiB | {r['phase']} | "
                     f"{r['measured_tensor_peak_bytes'] / 2**20:.1f} MiB | {r['error']:+.1%} | "
                     f"{r['measured_rss_rise_bytes'] / 2**20:.0f} MiB |")
    worst = max((abs(r["error"]) for r in rows), default=0)
    lines += ["", f"Largest error: {worst:.1%} over {len(rows)} cases."]
    if missing:
        lines += ["", "Not run yet (rerun with `--resume` to add them): " + "; ".join(missing) + "."]
    (out / "memory_estimate.md").write_text("\n".join(lines) + "\n")
    print(f"wrote {out / 'memory_estimate.md'} and {out / 'memory_estimate.json'}")


if __name__ == "__main__":
    main()
