"""ftrun against LLaMA-Factory 0.9.5 and the plain transformers Trainer + PEFT, on the same job.

    python bench/peer_llamafactory.py [--repeats 2] [--rows 256] [--only ftrun,llamafactory,hf]

The job: the built-in tiny Llama, LoRA r16 (alpha 32, dropout 0) on all linear layers, batch 8,
cutoff 512, 256 alpaca rows, 1 epoch, lr 1e-3 cosine, no evaluation, no checkpoints, on CPU;
with and without packing (LLaMA-Factory: ``packing`` with ``neat_packing``, i.e. no attention
across samples, as ftrun's ``data.packing``), plus transformers' Trainer + PEFT padded per batch.
All three render the rows with the tiny model's own chat template, ChatML (LLaMA-Factory's ``chatml``),
and train the same tokens (ftrun with ``model.train_turn_suffix=true``: the newline after ``<|im_end|>``,
which LLaMA-Factory's template and the tokenizer's own train), so the first batches' losses are comparable:
each row's largest relative gap to LLaMA-Factory's row of the same packing over the first 10 losses is listed.

LLaMA-Factory is installed once in its own venv under ``$FTRUN_CACHE/peer/llamafactory-0.9.5``
(``--system-site-packages`` for this machine's torch; ``pip install llamafactory==0.9.5`` with its
dependencies but not torch, torchvision, torchaudio; it imports torchaudio unconditionally and
torchaudio does not load with torch 2.13, so the venv gets an empty ``torchaudio`` module). Its data
is given in its own ``dataset_info.json`` format from files on disk.

Per run: useful tokens/s (tokens that carry attention, not padding: the Trainer's
``num_input_tokens_seen`` with ``include_num_input_tokens_seen=non_padding``, over
``train_runtime``), ``train_runtime``, wall time of the whole process, its peak resident memory
(``wait4``'s ``ru_maxrss``), the first 10 logged losses, and the load average before it. Runs of
the configurations alternate, ``--repeats`` times. Writes bench/results/peer_llamafactory.{json,md}.
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
LF_VERSION = "0.9.5"
JOB = dict(rank=16, alpha=32, batch=8, cutoff=512, epochs=1, lr=1e-3, seed=42)
SKIP_DEPS = ("torch", "torchvision", "torchaudio")


# ---------------------------------------------------------------------------
# LLaMA-Factory's venv


def lf_venv() -> Path:
    from ftrun.contract import cache_root

    return cache_root() / "peer" / f"llamafactory-{LF_VERSION}"


def install_llamafactory() -> Path:
    """The venv with LLaMA-Factory 0.9.5 (made once): its python."""
    venv = lf_venv()
    py = venv / "bin" / "python"
    if (venv / ".ready").is_file():
        return py
    subprocess.run([sys.executable, "-m", "venv", "--system-site-packages", str(venv)], check=True)
    pip = [str(py), "-m", "pip", "install", "-q"]
    subprocess.run([*pip, "--no-deps", f"llamafactory=={LF_VERSION}"], check=True)
    reqs = subprocess.run([str(py), "-c", "import json, importlib.metadata as m; "
                           "print(json.dumps(m.requires('llamafactory') or []))"],
                          check=True, capture_output=True, text=True).stdout
    deps = [r.split(";")[0].strip() for r in json.loads(reqs) if "extra ==" not in r]
    deps = [d for d in deps if d.split("<")[0].split(">")[0].split("=")[0].split("!")[0].strip() not in SKIP_DEPS]
    subprocess.run([*pip, *deps], check=True)
    # the transformers it gets (5.6) builds its hub-kernel table in a way kernels >= 0.15 refuses at import
    # ("Either a revision or a version must be specified"); this machine's own kernels may be newer
    subprocess.run([*pip, "kernels>=0.10.2,<0.15"], check=True)
    for name in ("torchvision", "torchaudio"):  # only what pip put in this venv
        subprocess.run([str(py), "-m", "pip", "uninstall", "-q", "-y", name], check=False)
    site = subprocess.run([str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          check=True, capture_output=True, text=True).stdout.strip()
    stub = Path(site) / "torchaudio"
    stub.mkdir(exist_ok=True)
    (stub / "__init__.py").write_text('"""Empty: LLaMA-Factory imports torchaudio; this torch has none that loads."""\n')
    (venv / ".ready").write_text(LF_VERSION)
    return py


# ---------------------------------------------------------------------------
# the data and the model


def write_data(folder: Path, rows: int) -> Path:
    """``rows`` alpaca rows (the repo's en and zh demo rows, cycled) and LLaMA-Factory's registry for them."""
    demo = ROOT / "tests" / "data" / "llamafactory"
    base = json.loads((demo / "alpaca_en_demo.json").read_text()) + json.loads((demo / "alpaca_zh_demo.json").read_text())
    data = [base[i % len(base)] for i in range(rows)]
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "alpaca_bench.json").write_text(json.dumps(data, ensure_ascii=False))
    (folder / "dataset_info.json").write_text(json.dumps({"alpaca_bench": {"file_name": "alpaca_bench.json"}}))
    return folder / "alpaca_bench.json"


def tiny_model() -> Path:
    from ftrun.compose import compose
    from ftrun.tiny import ensure_tiny

    return ensure_tiny(compose([]).model.tiny)


# ---------------------------------------------------------------------------
# one run each way


def run_timed(cmd, cwd: Path, env: dict, log: Path) -> dict:
    """Run ``cmd``; its wall time, peak resident memory (its own ``ru_maxrss``) and minor page faults (``ru_minflt``:
    pages the kernel had to map, zeroed, on first touch: a count the machine's noise does not move)."""
    load = os.getloadavg()[0]
    start = time.perf_counter()
    with open(log, "w") as out:
        proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT)
        _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(map(str, cmd))} failed ({proc.returncode}):\n{log.read_text()[-3000:]}")
    return {"wall_s": wall, "peak_rss_mb": usage.ru_maxrss / 1024, "minor_faults": usage.ru_minflt,
            "load_before": load}


def from_state(state_file: Path) -> dict:
    """train_runtime, useful tokens and the first 10 losses from a Trainer's trainer_state.json."""
    state = json.loads(state_file.read_text())
    hist = state["log_history"]
    runtime = [h["train_runtime"] for h in hist if "train_runtime" in h][-1]  # the last: ftrun logs it per step
    tokens = state.get("num_input_tokens_seen") or max((h.get("num_input_tokens_seen", 0) for h in hist), default=0)
    return {"train_runtime": runtime, "useful_tokens": tokens, "useful_tokens_per_s": tokens / runtime,
            "steps": state["global_step"], "losses": [h["loss"] for h in hist if "loss" in h][:10]}


def run_ftrun(work: Path, data: Path, packing: bool, extra=(), env=None) -> dict:
    out = work / "ftrun"
    cmd = [sys.executable, "-m", "ftrun", "data=alpaca", f"data.path={data}", "data.val_size=0",
           f"data.packing={str(packing).lower()}", f"epochs={JOB['epochs']}", f"batch_size={JOB['batch']}",
           f"cutoff_len={JOB['cutoff']}", f"rank={JOB['rank']}", f"alpha={JOB['alpha']}", f"lr={JOB['lr']}",
           "scheduler.warmup_ratio=0", "train.logging_steps=1", "train.save_steps=0", f"seed={JOB['seed']}",
           "model.train_turn_suffix=true", f"output_root={out}", f"tracking.uri=sqlite:///{work}/mlflow.db",
           "name=bench", *extra]
    got = run_timed(cmd, work, {**_env(), **(env or {})}, work / "ftrun.log")
    run_dir = sorted((out / "bench").iterdir())[-1]
    got.update(from_state(run_dir / "trainer_state.json"))
    result = json.loads((run_dir / "result.json").read_text())
    got["breakdown_mb"] = result.get("peak_memory_breakdown_mb")
    return got


_LF_TOKENS: dict = {}  # packing -> tokens with attention in LLaMA-Factory's tokenized data (counted once)


def run_llamafactory(py: Path, work: Path, data: Path, model: Path, packing: bool) -> dict:
    out = work / "lf-out"
    cfg = {"model_name_or_path": str(model), "stage": "sft", "do_train": True, "finetuning_type": "lora",
           "lora_target": "all", "lora_rank": JOB["rank"], "lora_alpha": JOB["alpha"], "lora_dropout": 0.0,
           "dataset": "alpaca_bench", "dataset_dir": str(data.parent), "template": "chatml",
           "cutoff_len": JOB["cutoff"], "overwrite_cache": True, "preprocessing_num_workers": 1,
           "packing": packing, "neat_packing": packing, "output_dir": str(out), "overwrite_output_dir": True,
           "logging_steps": 1, "save_strategy": "no", "per_device_train_batch_size": JOB["batch"],
           "gradient_accumulation_steps": 1, "learning_rate": JOB["lr"], "num_train_epochs": JOB["epochs"],
           "lr_scheduler_type": "cosine", "warmup_ratio": 0.0, "seed": JOB["seed"], "report_to": "none",
           "include_num_input_tokens_seen": "non_padding", "plot_loss": False, "bf16": False, "fp16": False}
    (work / "lf.yaml").write_text(json.dumps(cfg))  # JSON is YAML; LLaMA-Factory 0.9.5's .json reader is broken
    got = run_timed([str(py.parent / "llamafactory-cli"), "train", str(work / "lf.yaml")], work,
                    _env(), work / "lf.log")
    got.update(from_state(out / "trainer_state.json"))
    # its num_input_tokens_seen is garbage under neat_packing (the mask holds segment ids): count the
    # tokens of the data it trained on instead, from its tokenized dataset (saved by a run that stops there)
    if packing not in _LF_TOKENS:
        cfg["tokenized_path"] = str(work / "lf-tokenized")
        (work / "lf-tok.yaml").write_text(json.dumps(cfg))
        subprocess.run([str(py.parent / "llamafactory-cli"), "train", str(work / "lf-tok.yaml")], cwd=work,
                       env=_env(), capture_output=True, check=False)
        count = subprocess.run([str(py), "-c", "import sys, datasets; d = datasets.load_from_disk(sys.argv[1]); "
                                "d = d['train'] if 'train' in d else d; "
                                "print(sum(sum(1 for m in r if m) for r in d['attention_mask']))",
                                cfg["tokenized_path"]], capture_output=True, text=True, check=True).stdout
        _LF_TOKENS[packing] = int(count)
    got["useful_tokens"] = _LF_TOKENS[packing] * JOB["epochs"]
    got["useful_tokens_per_s"] = got["useful_tokens"] / got["train_runtime"]
    return got


def run_hf(work: Path, data: Path, model: Path) -> dict:
    out = work / "hf-out"
    cmd = [sys.executable, str(Path(__file__).resolve()), "--hf-worker",
           json.dumps({"data": str(data), "model": str(model), "out": str(out)})]
    got = run_timed(cmd, work, _env(), work / "hf.log")
    got.update(from_state(out / "trainer_state.json"))
    return got


def hf_worker(spec: dict) -> None:
    """The same job with transformers' Trainer and PEFT alone (chat template, prompt masked, padded per batch)."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import (AutoModelForCausalLM, AutoTokenizer, DataCollatorForSeq2Seq, Trainer,
                              TrainingArguments)

    tok = AutoTokenizer.from_pretrained(spec["model"])
    rows = []
    for r in json.loads(Path(spec["data"]).read_text()):
        user = [{"role": "user", "content": (r["instruction"] + "\n" + r.get("input", "")).strip()}]
        prompt = tok.apply_chat_template(user, add_generation_prompt=True, tokenize=True, return_dict=False)
        full = tok.apply_chat_template(user + [{"role": "assistant", "content": r["output"]}], tokenize=True,
                                       return_dict=False)[:JOB["cutoff"]]
        n = min(len(prompt), len(full) - 1)
        rows.append({"input_ids": full, "attention_mask": [1] * len(full), "labels": [-100] * n + full[n:]})
    model = AutoModelForCausalLM.from_pretrained(spec["model"], dtype=torch.float32)
    model = get_peft_model(model, LoraConfig(r=JOB["rank"], lora_alpha=JOB["alpha"], lora_dropout=0.0,
                                             target_modules="all-linear", task_type="CAUSAL_LM"))
    args = TrainingArguments(output_dir=spec["out"], per_device_train_batch_size=JOB["batch"],
                             num_train_epochs=JOB["epochs"], learning_rate=JOB["lr"], lr_scheduler_type="cosine",
                             logging_steps=1, save_strategy="no", report_to="none", seed=JOB["seed"],
                             include_num_input_tokens_seen="non_padding", use_cpu=True, disable_tqdm=True)
    trainer = Trainer(model=model, args=args, train_dataset=rows,
                      data_collator=DataCollatorForSeq2Seq(tok, padding=True, label_pad_token_id=-100))
    trainer.train()
    trainer.save_state()


def _env() -> dict:
    return {**os.environ, "CUDA_VISIBLE_DEVICES": "", "TOKENIZERS_PARALLELISM": "false",
            "HF_HUB_OFFLINE": "1", "DISABLE_VERSION_CHECK": "1"}


# ---------------------------------------------------------------------------
# the table


def machine() -> str:
    import torch

    from ftrun.estimate.baseline import cpu_model

    model = cpu_model()

    return (f"{model}, {os.cpu_count()} cores visible (shared with other jobs), torch {torch.__version__}, "
            f"{torch.get_num_threads()} threads, Python {platform.python_version()}, Linux {platform.release()}")


def summarize(runs: list) -> dict:
    by = {}
    for r in runs:
        by.setdefault(r["config"], []).append(r)
    out = {}
    for name, rs in by.items():
        best = max(rs, key=lambda r: r["useful_tokens_per_s"])
        out[name] = {"runs": len(rs), "best_useful_tokens_per_s": best["useful_tokens_per_s"],
                     "median_useful_tokens_per_s": sorted(r["useful_tokens_per_s"] for r in rs)[len(rs) // 2],
                     "train_runtime_best": min(r["train_runtime"] for r in rs),
                     "wall_s_best": min(r["wall_s"] for r in rs), "peak_rss_mb_max": max(r["peak_rss_mb"] for r in rs),
                     "useful_tokens": best["useful_tokens"], "steps": best["steps"], "losses": best["losses"],
                     "loads": [round(r["load_before"], 2) for r in rs]}
        faults = sorted(r["minor_faults"] for r in rs if "minor_faults" in r)
        out[name]["minor_faults_median"] = faults[len(faults) // 2] if faults else None
    return out


def _faults(v: dict) -> str:
    """The row's median minor page faults, in thousands ('-' in results from before they were recorded)."""
    return f"{v['minor_faults_median'] / 1000:.0f}" if v.get("minor_faults_median") is not None else "-"


def loss_gap(losses: list, ref: list) -> float:
    """The largest relative difference of the first 10 losses (as many as both have) from ``ref``'s."""
    pairs = list(zip(losses[:10], ref[:10]))
    return max(abs(a - b) / abs(b) for a, b in pairs) if pairs else float("nan")


def write_results(runs: list, args) -> None:
    summary = summarize(runs)
    res = ROOT / "bench" / "results"
    res.mkdir(parents=True, exist_ok=True)
    (res / "peer_llamafactory.json").write_text(json.dumps({"machine": machine(), "job": JOB, "rows": args.rows,
                                                            "args": {"repeats": args.repeats, "rows": args.rows,
                                                                     "only": args.only},
                                                            "summary": summary, "runs": runs}, indent=2))
    lf_best = max((v["best_useful_tokens_per_s"] for k, v in summary.items() if k.startswith("llamafactory")),
                  default=None)
    lf_median = max((v["median_useful_tokens_per_s"] for k, v in summary.items() if k.startswith("llamafactory")),
                    default=None)
    lf_losses = {packed: summary[name]["losses"] for packed, name in ((True, "llamafactory packing"),
                                                                       (False, "llamafactory no packing"))
                 if name in summary}
    lines = ["# ftrun vs LLaMA-Factory 0.9.5 vs transformers Trainer + PEFT (CPU)", "",
             f"Machine: {machine()}.", f"Command: `python bench/peer_llamafactory.py --repeats {args.repeats}"
             + (f" --only {args.only}" if args.only != "ftrun,llamafactory,hf" else "") + "`. "
             f"Job: tiny Llama, LoRA r{JOB['rank']} all linear, batch {JOB['batch']}, cutoff {JOB['cutoff']}, "
             f"{args.rows} alpaca rows, {JOB['epochs']} epoch. Configurations alternate; best of {args.repeats} "
             "runs each; the load average before each run is listed (the 2 cores are shared: figures are noisy).",
             "", "| configuration | useful tok/s (best) | vs LF best | medians vs LF's | train_runtime s | wall s | "
             "peak RSS MB | page faults (k) | steps | load avg | first losses | loss gap to LF |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for name, v in summary.items():
        ratio = f"{v['best_useful_tokens_per_s'] / lf_best:.2f}x" if lf_best else "-"
        losses = ", ".join(f"{x:.3f}" for x in v["losses"][:5])
        ref = lf_losses.get(" packing" in name and "no packing" not in name)
        gap = f"{loss_gap(v['losses'], ref):.2%}" if ref and not name.startswith("llamafactory") else "-"
        med = f"{v['median_useful_tokens_per_s'] / lf_median:.2f}x" if lf_median else "-"
        lines.append(f"| {name} | {v['best_useful_tokens_per_s']:.0f} | {ratio} | {med} | {v['train_runtime_best']:.1f} | "
                     f"{v['wall_s_best']:.1f} | {v['peak_rss_mb_max']:.0f} | {_faults(v)} | {v['steps']} | "
                     f"{', '.join(map(str, v['loads']))} | {losses} | {gap} |")
    lines += ["", "Medians vs LF's: the row's median useful tokens/s over its runs against the better of "
              "LLaMA-Factory's two medians (a best-of-3 rewards the luckiest run of a noisy pair of cores).",
              "", "Loss gap to LF: the largest relative difference of the first 10 logged losses (fewer where the "
              "run logs fewer steps) from LLaMA-Factory's run with the same packing. Every row trains the same tokens: "
              "LLaMA-Factory's `chatml` and the Trainer + PEFT row (the tokenizer's template) train on the newline "
              "after `<|im_end|>`, ftrun's rows with `model.train_turn_suffix=true` too. "
              "ftrun's rows use its defaults: `model.attn_implementation=sdpa_varlen` (each sample attended alone "
              "in a flattened batch) and jemalloc, the row without packing `data.padding_free=true` (off by "
              "default: on short rows of similar length padded batches run faster); the `ftrun-ablation` rows take one "
              "default back each (`model.attn_implementation=sdpa`: packed rows under a block-diagonal mask; "
              "`FTRUN_MALLOC=system`: glibc's malloc; `MALLOC_CONF=` (empty): jemalloc's default decay instead of "
              "ftrun's none; `train.fuse_lora=false`: peft's own LoRA forward; `tracking.enabled=false`: no MLflow run, "
              "as LLaMA-Factory's runs here track nothing)."]
    (res / "peer_llamafactory.md").write_text("\n".join(lines) + "\n")


def configs(only):
    """(name, kind, packing, extra ftrun overrides, extra environment) per configuration ``--only`` names;
    ``ftrun-ablation`` adds ftrun's packing without one of its defaults each: sdpa's block mask, glibc's malloc,
    jemalloc's default decay, peft's LoRA forward, MLflow (LLaMA-Factory's runs here track nothing)."""
    out = []
    if "llamafactory" in only:
        out += [("llamafactory packing", "lf", True, (), {}), ("llamafactory no packing", "lf", False, (), {})]
    if "ftrun" in only:
        out += [("ftrun packing", "ftrun", True, (), {}),
                ("ftrun no packing, padding-free", "ftrun", False, ("data.padding_free=true",), {})]
    if "ftrun-ablation" in only:
        out += [("ftrun packing, sdpa (masked)", "ftrun", True, ("model.attn_implementation=sdpa",), {}),
                ("ftrun packing, glibc malloc", "ftrun", True, (), {"FTRUN_MALLOC": "system"}),
                ("ftrun packing, jemalloc's default decay", "ftrun", True, (), {"MALLOC_CONF": ""}),
                ("ftrun packing, peft's LoRA forward", "ftrun", True, ("train.fuse_lora=false",), {}),
                ("ftrun packing, MLflow off", "ftrun", True, ("tracking.enabled=false",), {})]
    if "hf" in only:
        out += [("transformers Trainer + PEFT", "hf", False, (), {})]
    return out


def main() -> None:
    if len(sys.argv) == 3 and sys.argv[1] == "--hf-worker":
        return hf_worker(json.loads(sys.argv[2]))
    if len(sys.argv) == 2 and sys.argv[1] == "--report":  # the tables again from the committed JSON
        saved = json.loads((ROOT / "bench" / "results" / "peer_llamafactory.json").read_text())
        return write_results(saved["runs"], argparse.Namespace(**saved["args"]))
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--rows", type=int, default=256)
    p.add_argument("--only", default="ftrun,llamafactory,hf")
    p.add_argument("--install-only", action="store_true")
    args = p.parse_args()
    only = args.only.split(",")
    py = install_llamafactory() if "llamafactory" in only else None
    if args.install_only:
        return print(py)
    runs = []
    with tempfile.TemporaryDirectory(prefix="ftrun-peer-") as tmp:
        data, model = write_data(Path(tmp) / "data", args.rows), tiny_model()
        for rep in range(args.repeats):
            for name, kind, packing, extra, env in configs(only):
                work = Path(tmp) / f"{kind}-{int(packing)}-{rep}-{len(runs)}"
                work.mkdir()
                if kind == "lf":
                    got = run_llamafactory(py, work, data, model, packing)
                elif kind == "ftrun":
                    got = run_ftrun(work, data, packing, extra, env)
                else:
                    got = run_hf(work, data, model)
                got.update(config=name, repeat=rep)
                print(json.dumps({k: v for k, v in got.items() if k != "losses"}), flush=True)
                runs.append(got)
                write_results(runs, args)  # after every run: an interrupted benchmark keeps what it measured


if __name__ == "__main__":
    main()
