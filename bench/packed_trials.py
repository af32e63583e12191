"""Packed trials (issue 23): trials per hour and useful tokens/s, K LoRA trials over one frozen base
(``ftrun.packed.train_packed``) against the same trials one after another in a warm worker.

    OMP_NUM_THREADS=1 nice -n 10 python bench/packed_trials.py            # about 10 minutes on a shared core
    python bench/packed_trials.py --ks 1,2 --steps 20                      # a quick look
    python bench/packed_trials.py --model medium --ks 1,4 --steps 10 --rounds 1   # a larger built-in model (no hub)

Each trial is a LoRA trial on the built-in tiny model and letters data, as a sweep would ask for
it: its own lr, rank, alpha and seed (ranks cycle through 8, 16, 64, 16, so a pack holds
runs of equal and of unequal rank), ``--steps`` optimizer steps of 8 examples, evaluated twice on
32 held-out examples, its adapter, loss plot and ``result.json`` written. Both sides run in one
process that keeps the tokenizer, the tokenized data and the base weights between trials (a sweep's
warm worker: ``ftrun.worker_cache``), on one thread, MLflow off on both sides.

* sequential: trials 0..7 one after another through ``ftrun.train.run`` (the warm worker's call);
  the time of K sequential trials is the sum of the first K.
* packed: trials 0..K-1 through ``train_packed`` (base built once, one adapter each, one
  forward/backward per step over their concatenated micro-batches).

Rounds alternate sequential and packed (``--rounds``), so a change in the shared machine's load
falls on both; the report takes each case's median over the rounds. Trials per hour counts
wall seconds; the process CPU seconds are given too (this machine is shared, so wall time
includes waiting for a core; CPU seconds do not). Useful tokens: the non-padding tokens the
trials trained on (``num_input_tokens_seen``), summed over the trials, per wall second.

Results: ``bench/results/packed_trials.{json,md}``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from ftrun.allocator import in_use as allocator_in_use, reexec  # noqa: E402 - light: no torch

RANKS = [8, 16, 64, 16]
LRS = [1e-3, 3e-4, 2e-3, 5e-4, 1.5e-3, 7e-4, 4e-3, 2.5e-4]
MODELS = {  # built-in models (ftrun.tiny builds them from these numbers; nothing is downloaded)
    "tiny": [],
    # ~10M parameters, random weights (no pre-training): for throughput only, ~12x the tiny model's FLOPs a token
    "medium": ["model.tiny.hidden_size=384", "model.tiny.intermediate_size=1024", "model.tiny.num_hidden_layers=6",
               "model.tiny.num_attention_heads=6", "model.tiny.num_key_value_heads=2", "model.tiny.pretrain_steps=0"],
}


def trial_overrides(i: int, steps: int, model: str, batch_size: int = 8, ranks=RANKS) -> list:
    rank = ranks[i % len(ranks)]
    return [*MODELS[model], "data.num_train=512", "data.num_eval=32", f"batch_size={batch_size}", f"max_steps={steps}",
            f"train.eval_steps={max(steps // 2, 1)}", "train.logging_steps=10", "train.save_steps=0",
            "train.eval_batch_size=32", "tracking.enabled=false", f"rank={rank}", f"alpha={2 * rank}",
            f"lr={LRS[i % len(LRS)]}", f"seed={i}", f"name=t{i}"]


def timed(fn):
    w, c = time.perf_counter(), time.process_time()
    out = fn()
    return out, time.perf_counter() - w, time.process_time() - c


def tokens_of(run_dir: Path) -> int:
    return int(json.loads((run_dir / "trainer_state.json").read_text()).get("num_input_tokens_seen") or 0)


def sequential(cfgs, out: Path) -> list:
    from ftrun.train import run

    rows = []
    for i, cfg in enumerate(cfgs):
        d = out / f"t{i}"
        obj, wall, cpu = timed(lambda: run(cfg, d))
        rows.append({"trial": i, "wall_s": wall, "cpu_s": cpu, "tokens": tokens_of(d), "eval_loss": obj})
        print(f"    sequential t{i}: {wall:.1f} s wall, {cpu:.1f} s CPU", flush=True)
    return rows


def packed(cfgs, out: Path) -> dict:
    from ftrun.packed import train_packed

    dirs = [out / f"t{i}" for i in range(len(cfgs))]
    objs, wall, cpu = timed(lambda: train_packed(cfgs, dirs))
    return {"wall_s": wall, "cpu_s": cpu, "tokens": sum(tokens_of(d) for d in dirs), "eval_loss": objs}


def machine() -> str:
    import torch

    from ftrun.estimate.baseline import cpu_model

    cpu = cpu_model()
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    gpu = "CUDA " + torch.cuda.get_device_name() if torch.cuda.is_available() else "no GPU"
    return (f"{platform.node()}: {cpu}, {os.cpu_count()} CPU cores (shared with other jobs), {mem:.0f} GiB RAM, {gpu}, "
            f"torch {torch.__version__} on {torch.get_num_threads()} thread(s), Python {platform.python_version()}, "
            f"malloc: {allocator_in_use()}")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--ks", default="1,2,4,8")
    p.add_argument("--steps", type=int, default=60)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--model", default="tiny", choices=sorted(MODELS))
    p.add_argument("--batch-size", type=int, default=8, help="every trial's micro-batch size")
    p.add_argument("--ranks", default=",".join(map(str, RANKS)), help="LoRA ranks the trials cycle through")
    p.add_argument("--out-dir", default=None)
    p.add_argument("--report", default=None, help="only rewrite the Markdown from this results JSON")
    p.add_argument("--publish", default=str(ROOT / "bench" / "results" / "packed_trials"),
                   help="results path without suffix ('' to skip)")
    a = p.parse_args()
    reexec()  # the allocator a sweep's warm workers run with (they inherit it from ``python -m ftrun``)
    if a.report:
        Path(a.report).with_suffix(".md").write_text(report(json.loads(Path(a.report).read_text())))
        return 0
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    import logging

    logging.basicConfig(level=logging.WARNING)
    from ftrun import worker_cache
    from ftrun.compose import compose
    from ftrun.train import run
    from sweeper.worker import prepare_process

    ks = [int(k) for k in a.ks.split(",")]
    ranks = [int(r) for r in a.ranks.split(",")]
    out = Path(a.out_dir or tempfile.mkdtemp(prefix="packed-bench-"))
    prepare_process()  # as a sweep's warm worker starts (imports, then gc.freeze)
    worker_cache.enable()
    cfgs = [compose(trial_overrides(i, a.steps, a.model, a.batch_size, ranks)) for i in range(max(ks))]
    print(f"warm-up (builds the model and data once, not counted) in {out}", flush=True)
    run(compose(trial_overrides(0, 2, a.model, a.batch_size, ranks) + ["name=warmup"]), out / "warmup")
    rounds = []
    load = [os.getloadavg()[0]]
    for r in range(a.rounds):
        print(f"round {r + 1}/{a.rounds}", flush=True)
        seq = sequential(cfgs, out / f"r{r}" / "sequential")
        pk = {}
        for k in ks:
            pk[k] = packed(cfgs[:k], out / f"r{r}" / f"packed{k}")
            print(f"    packed K={k}: {pk[k]['wall_s']:.1f} s wall, {pk[k]['cpu_s']:.1f} s CPU", flush=True)
        rounds.append({"sequential": seq, "packed": {str(k): v for k, v in pk.items()}})
        load.append(os.getloadavg()[0])
    cases = []
    for k in ks:
        seq_wall = statistics.median(sum(t["wall_s"] for t in rd["sequential"][:k]) for rd in rounds)
        seq_cpu = statistics.median(sum(t["cpu_s"] for t in rd["sequential"][:k]) for rd in rounds)
        seq_tok = rounds[0]["sequential"][:k]
        pk_wall = statistics.median(rd["packed"][str(k)]["wall_s"] for rd in rounds)
        pk_cpu = statistics.median(rd["packed"][str(k)]["cpu_s"] for rd in rounds)
        tokens = rounds[0]["packed"][str(k)]["tokens"]
        seq_tokens = sum(t["tokens"] for t in seq_tok)
        same = [abs(a_ - b_) / abs(a_) for a_, b_ in
                zip([t["eval_loss"] for t in seq_tok], rounds[0]["packed"][str(k)]["eval_loss"])]
        cases.append({
            "k": k, "sequential_wall_s": seq_wall, "sequential_cpu_s": seq_cpu, "packed_wall_s": pk_wall,
            "packed_cpu_s": pk_cpu, "sequential_trials_per_hour": 3600 * k / seq_wall,
            "packed_trials_per_hour": 3600 * k / pk_wall, "speedup_wall": seq_wall / pk_wall,
            "speedup_cpu": seq_cpu / pk_cpu, "tokens": tokens, "sequential_tokens": seq_tokens,
            "sequential_tokens_per_s": seq_tokens / seq_wall, "packed_tokens_per_s": tokens / pk_wall,
            "max_rel_eval_loss_diff": max(same) if same else None})
    meta = {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "machine": machine(),
            "model": a.model, "steps": a.steps, "batch_size": a.batch_size, "ranks": ranks, "rounds": a.rounds, "load_average_1min": load,
            "command": "OMP_NUM_THREADS=1 nice -n 10 python bench/packed_trials.py " + " ".join(sys.argv[1:]),
            "trials": [trial_overrides(i, a.steps, a.model, a.batch_size, ranks) for i in range(max(ks))]}
    result = {"meta": meta, "cases": cases, "rounds": rounds}
    text = report(result)
    print(text)
    (out / "packed_trials.json").write_text(json.dumps(result, indent=2))
    if a.publish:
        suffix = (("" if a.model == "tiny" else f"_{a.model}") + ("" if a.batch_size == 8 else f"_bs{a.batch_size}")
                  + ("" if ranks == RANKS else "_r" + "-".join(map(str, ranks))))
        Path(a.publish + suffix + ".json").write_text(json.dumps(result, indent=2))
        Path(a.publish + suffix + ".md").write_text(text)
    return 0


PAPER = """
## Why this is what it is on one CPU core, and what to expect on a GPU (on paper, no GPU here)

A pack does not remove FLOPs: the frozen base sees K micro-batches, so its forward (2·N·T) and its
input-gradient backward (2·N·T) grow with K exactly as K sequential trials' do, and every adapter
costs what it costs alone. What a pack shares is what a step pays per model rather than per token:
the weights read from memory, the kernels launched (or, on a CPU, the ~10 µs of dispatch per op),
and the per-trial set-up, evaluation and saving around the loop. Packing pays off exactly where those
dominate a step.

**One CPU core, tiny model, micro-batch 8** (~207 non-padding tokens a step): a trial step is
about 4 · 0.77e6 · 207 = 0.64 GFLOP of frozen base (forward and input gradients) plus
6 · 0.21e6 · 207 = 0.26 GFLOP of adapters (rank 26 on average over 8, 16, 64, 16), ~0.9 GFLOP.
On the AVX-512 Xeon of the table above (jemalloc, workers' `gc.freeze`) a sequential warm trial of 60
steps takes 1.6-1.75 s and a pack of one 1.4-1.5 s: that difference, the Trainer's per-step machinery
(callbacks, a `model.train()` walk of every module, flop counting), is all a pack saves here. From K = 2
on a trial-step costs the same or more: torch's profiler over 20 steps, a pack of 1 against a pack of 4,
shows the matmuls growing exactly 4x (168 -> 692 ms of CPU) and the element-wise ops (mul, add, cat,
silu) 5-9x per call for 4x the elements, as the pack's 4 x 8 x 31 x 256 activations leave the core's L2
cache. There is no per-model cost left to share when a core does this step's arithmetic in ~20 ms.
(Until commit 64119db a pack's backward also grew with K²: each LoRA layer added its row groups' deltas
in place into slices, and autograd's CopySlices copied and zero-filled the whole gradient once per group;
a pack of 4 now trains in 8.4 s where it took 9.3 s.) **The issue's CPU bar (K = 4 >= 2x trials per hour)
is not met, and packing rows this way cannot meet it on a CPU this fast**: K = 4 gives 1.1-1.2x in the table and in two reruns.
Measured on the slower AMD EPYC before these fixes, smaller steps left more to share (micro-batch 2:
K = 4 1.7x and K = 8 2.0x in CPU seconds, `packed_trials_bs2.md`; equal ranks at micro-batch 2: K = 4 1.8x,
`packed_trials_bs2_r16.md`).

**One H200, Qwen2.5-0.5B (the `qwen2.5-0.5b-instruct` preset), LoRA r=16 on all linears,
micro-batch 8 x 256 tokens = 2,048 tokens a step, bf16, eager PyTorch:**

* compute: 4 · 0.494e9 · 2,048 = 4.0e12 FLOP; at 989 TFLOP/s peak, ~40% reached: **~10 ms**;
* weights: ~1 GB bf16 read about twice a step at 4.8 TB/s: ~0.4 ms;
* launches: per decoder layer ~55 kernels forward (7 adapted linears x base, A, B, scale, add; norms,
  rotary, attention, activation, residuals) and ~110 backward, x 24 layers = ~4,000 kernels at
  ~6 µs of host time each: **~24 ms**. A step alone is host-bound: ~25 ms, the GPU idle ~60% of it.
* packed K = 4 (two rank groups): ~1.3x the kernels (the base's are shared; each rank group adds its
  stacked-A/B bmm kernels), ~31 ms of host time, 40 ms of GPU work, overlapped: ~40 ms a step for 4
  trials, **~10 ms per trial-step against ~25 ms: ~2.5x the trials per hour**; K = 8: 80 ms of GPU work,
  still ~10 ms per trial-step (compute-bound from K ~ 3 on), so ~2.5x is the ceiling for this model and
  batch; a shorter cutoff or smaller micro-batch raises it (more host-bound alone).
* the built-in tiny model on a GPU is launch-bound at any K up to 8 (microseconds of compute per step):
  close to K x the trials per hour.
* Llama-3-8B (`llama3-8b-instruct`), same 2,048 tokens: 4 · 8.0e9 · 2,048 = 6.6e13 FLOP, ~165 ms a
  step at 400 TFLOP/s, against ~32 ms of launches hidden under it: compute-bound, **~1.0-1.1x**. There
  the pack's gain is memory: K trials share one 16 GB base, where K concurrent slots would each hold one.
"""


def report(result: dict) -> str:
    meta, cases = result["meta"], result["cases"]
    lines = [f"# Packed trials ({meta['date']})", "",
             f"Machine: {meta['machine']}.", "",
             f"Model: built-in `{meta['model']}`; each trial {meta['steps']} steps of {meta['batch_size']} examples (letters data), "
             "2 evaluations on 32 examples, adapter, loss plot and result.json written; ranks cycle "
             f"{', '.join(map(str, meta.get('ranks', RANKS)))} (alpha 2 x rank), "
             "each trial its own lr and seed. Both sides in one warm process (tokenizer, data and base weights kept), "
             f"one thread, MLflow off. Median of {meta['rounds']} rounds, sequential and packed alternating; "
             f"1-minute load average during the rounds: {', '.join(f'{x:.1f}' for x in meta['load_average_1min'])} "
             "(other jobs share the machine, so wall seconds include waiting for a core; CPU seconds do not).", "",
             f"Command: `{meta['command']}`", "",
             "| K | sequential trials/h | packed trials/h | speed-up (wall) | speed-up (CPU s) | "
             "sequential tokens/s | packed tokens/s | max rel. eval-loss diff vs sequential |",
             "|---|---|---|---|---|---|---|---|"]
    for c in cases:
        diff = c["max_rel_eval_loss_diff"]
        lines.append(f"| {c['k']} | {c['sequential_trials_per_hour']:.0f} | {c['packed_trials_per_hour']:.0f} | "
                     f"{c['speedup_wall']:.2f}x | {c['speedup_cpu']:.2f}x | {c['sequential_tokens_per_s']:.0f} | "
                     f"{c['packed_tokens_per_s']:.0f} | {diff:.1e} |")
    if any((c["max_rel_eval_loss_diff"] or 0) > 1e-5 for c in cases):
        lines += ["", "A difference over 1e-5 is one trial whose training amplifies float rounding: its rows are padded "
                  "to the pack's widest micro-batch, which changes rounding at ~1e-8, and that trial (lr 4e-3, rank 64, "
                  "alpha 128, every gradient clipped) grows it to ~2% by step 50; alone in a pack, or packed with runs of "
                  "its own width, it stays within 1e-7 (see \"Rounding\" in `ftrun/packed/__init__.py`)."]
    return "\n".join(lines) + "\n" + PAPER


if __name__ == "__main__":
    sys.exit(main())
