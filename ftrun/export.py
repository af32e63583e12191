"""``python -m ftrun.export run=RUN [export.dir=DIR export.max_shard_size=2GB export.dtype=bf16 ...]``

Turn a finished run into a standalone model directory that plain
``transformers.AutoModelForCausalLM.from_pretrained(DIR)`` loads, ftrun not needed:

- lora/dora adapters are merged into the base weights (peft ``merge_and_unload``);
  for a qlora run the base is reloaded *unquantized* in ``export.dtype`` and the
  adapter merged into that (merging into 4-bit weights would round the update
  away); full/freeze runs are re-saved as they are;
- safetensors shards of at most ``export.max_shard_size`` with an index, the
  tokenizer with its chat template, and the generation config;
- a self-check: the exported model, loaded back from disk, must give the same
  logits as base+adapter on a few prompts of the run's data, within
  ``|diff| <= atol + rtol * max|logit|`` (per-dtype defaults, printed); a
  mismatch is an error and nothing is left at ``export.dir``;
- written into a temporary directory beside ``export.dir`` and renamed into
  place only when complete and checked; a non-empty ``export.dir`` is refused
  unless ``export.overwrite=true``;
- ``export.mlflow=true`` logs the exported directory under the run's MLflow run
  (artifact path ``export``) with the check's numbers as metrics.

``run=`` is a run directory (``outputs/<name>/<timestamp>``) or an MLflow run id.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import sys
import tempfile
import time
from dataclasses import astuple, dataclass, field
from pathlib import Path
from typing import List, Optional

from ftrun.config import ConfigError, read_config_json
from ftrun.saved_runs import RunArgs

log = logging.getLogger("ftrun.export")

# max |logit diff| allowed: atol + rtol * max|logit|, by export dtype
TOLERANCES = {"fp32": (1e-4, 1e-4), "bf16": (0.0, 2e-2), "fp16": (0.0, 5e-3)}
INFO_FILE = "ftrun_export.json"


class ExportCheckError(RuntimeError):
    """The exported model does not compute what base+adapter computes."""


@dataclass
class ExportSettings:
    dir: Optional[str] = None
    """Where the model goes (default: <run_dir>/export)."""
    max_shard_size: str = "2GB"
    """Largest safetensors shard, e.g. 500MB, 2GB, 5GiB (GB = 10^9 bytes, GiB = 2^30)."""
    device: str = "cpu"
    """Where the merge runs: cpu, cuda, cuda:1 or auto."""
    dtype: str = "auto"
    """Weights dtype of the export: auto (the run's), fp32, bf16 or fp16."""
    overwrite: bool = False
    """Replace a non-empty export.dir."""
    check: bool = True
    """Compare the exported model's logits with base+adapter (an error if they differ)."""
    check_prompts: int = 4
    """How many prompts of the run's data the check uses."""
    atol: Optional[float] = None
    """Check tolerance, absolute part (default by dtype: fp32 1e-4, bf16/fp16 0)."""
    rtol: Optional[float] = None
    """Check tolerance, relative to max|logit| (default by dtype: fp32 1e-4, bf16 2e-2, fp16 5e-3)."""
    mlflow: bool = False
    """Log the exported model under the run's MLflow run (artifact path 'export')."""


@dataclass
class ExportArgs(RunArgs):
    export: ExportSettings = field(default_factory=ExportSettings)


@dataclass
class ExportResult:
    dir: Path
    dtype: str
    shards: List[dict]
    max_abs_diff: Optional[float]
    tolerance: Optional[float]
    argmax_agreement: Optional[float]
    notes: List[str]

    @property
    def total_bytes(self) -> int:
        return sum(s["bytes"] for s in self.shards)


@dataclass
class CheckResult:
    """What the self-check measured (the fields and order of ftrun_export.json's ``check``)."""

    max_abs_diff: Optional[float] = None
    tolerance: Optional[float] = None
    argmax_agreement: Optional[float] = None


def export(run_ref: str, s: Optional[ExportSettings] = None, tracking_uri: Optional[str] = None) -> ExportResult:
    """Export the run ``run_ref`` per ``s``; returns where it went and what the check measured."""
    from ftrun import saved_runs

    s = s or ExportSettings()
    saved_runs.quiet()
    limit = _shard_limit(s.max_shard_size)
    run = saved_runs.open_run(run_ref, tracking_uri or _cfg_uri(None))
    dest = _destination(run, s)
    device = saved_runs.pick_device(s.device)
    dtype = saved_runs.torch_dtype(s.dtype) or saved_runs.run_dtype(run) or _checkpoint_dtype(run)
    dtype_name = {v: k for k, v in {k: saved_runs.torch_dtype(k) for k in saved_runs.DTYPES}.items()}.get(dtype, str(dtype))
    notes: List[str] = []
    if run.method == "qlora":
        notes.append(f"qlora: the base was reloaded unquantized in {dtype_name} and the adapter merged into it "
                     "(merging into the 4-bit weights would be lossy); the export therefore computes "
                     "base+adapter without quantization error, not the 4-bit model the run trained")
    log.info("Exporting run %s (method=%s) to %s [dtype=%s, device=%s, max_shard_size=%s]",
             run.run_dir, run.method, dest, dtype_name, device, s.max_shard_size)
    for n in notes:
        log.info("%s", n)

    tokenizer = saved_runs.load_tokenizer(run.model_dir)
    model = saved_runs.load_run_model(run, dtype=dtype, device=device, quantized=False)
    prompts = check_prompts(run, tokenizer, s.check_prompts) if s.check else []
    ref = [_logits(model, ids, device) for ids in prompts]
    if run.is_adapter:
        log.info("Merging the %s adapter into the base", "DoRA" if run.cfg.method.get("use_dora") else "LoRA")
        model = model.merge_and_unload()
    _fix_generation_config(model, tokenizer)
    if getattr(model.config, "quantization_config", None) is not None:
        del model.config.quantization_config

    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.partial-", dir=dest.parent))
    try:
        _save(model, tokenizer, tmp, limit)
        del model
        notes += _oversized_shards(tmp, limit, s.max_shard_size)
        check = _self_check(run, s, prompts, ref, tmp, dtype, dtype_name, device, notes) if s.check else None
        if check is not None and not check.max_abs_diff <= check.tolerance:
            raise ExportCheckError(f"export check failed: the exported model's logits differ from base+adapter "
                                   f"by up to {check.max_abs_diff:.3g} > tolerance {check.tolerance:.3g}; "
                                   f"nothing was written to {dest}")
        info = {"run_dir": str(run.run_dir), "mlflow_run_id": run.mlflow_run_id, "method": run.method,
                "base_model": saved_runs.base_model_path(run), "dtype": dtype_name, "max_shard_size": s.max_shard_size,
                "check": {**vars(check), "prompts": len(prompts)} if check else None,
                "notes": notes, "created": time.strftime("%Y-%m-%dT%H:%M:%S")}
        (tmp / INFO_FILE).write_text(json.dumps(info, indent=2))
        _normal_permissions(tmp)
        _move_into_place(tmp, dest)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    result = ExportResult(dest, dtype_name, shard_report(dest), *astuple(check or CheckResult()), notes)
    log.info("Exported %s: %d shard(s), %.2f MB of weights, largest shard %.2f MB (limit %s)",
             dest, len(result.shards), result.total_bytes / 1e6, max(sh["bytes"] for sh in result.shards) / 1e6,
             s.max_shard_size)
    if s.mlflow:
        _log_to_mlflow(run, result, tracking_uri)
    return result


# ---------------------------------------------------------------------------
# the steps of an export


def _shard_limit(max_shard_size: str) -> int:
    from transformers.utils.hub import convert_file_size_to_int

    try:
        return convert_file_size_to_int(max_shard_size)
    except ValueError:
        raise ConfigError(f"export.max_shard_size={max_shard_size}: give a size such as 500MB, 2GB or 5GiB") from None


def _destination(run, s: ExportSettings) -> Path:
    """``export.dir`` (default ``<run_dir>/export``), refused when it holds something or the run's own model."""
    dest = (Path(s.dir).expanduser() if s.dir else run.run_dir / "export").resolve()
    if dest.exists() and (not dest.is_dir() or any(dest.iterdir())) and not s.overwrite:
        raise ConfigError(f"export.dir={dest}: exists and is not empty; pass export.overwrite=true to replace it")
    if dest == run.model_dir.resolve() or run.model_dir.resolve().is_relative_to(dest):
        raise ConfigError(f"export.dir={dest}: would replace the run's own model; choose another directory")
    return dest


def _save(model, tokenizer, tmp: Path, limit: int) -> None:
    """Weights in safetensors shards of at most ``limit`` bytes, the tokenizer and the generation config."""
    # transformers sizes shards by tensor bytes; keep room for each file's JSON header too, so that
    # the files themselves stay within the limit
    header = 1024 + sum(len(k) + 128 for k in model.state_dict())
    model.save_pretrained(str(tmp), max_shard_size=max(limit - header, limit // 2))
    tokenizer.save_pretrained(str(tmp))
    if not (tmp / "generation_config.json").is_file():
        model.generation_config.save_pretrained(str(tmp))


def _oversized_shards(tmp: Path, limit: int, max_shard_size: str) -> List[str]:
    """A note for each shard over the limit (only a single tensor larger than the limit can do this)."""
    notes = [f"shard {sh['file']} is {sh['bytes']:,} bytes, over max_shard_size={max_shard_size}: "
             "it holds a tensor larger than that" for sh in shard_report(tmp) if sh["bytes"] > limit]
    for n in notes:
        log.warning("%s", n)
    return notes


def _self_check(run, s: ExportSettings, prompts, ref, tmp: Path, dtype, dtype_name: str, device,
                notes: List[str]) -> CheckResult:
    """The exported model, loaded back from ``tmp``, against base+adapter's logits ``ref``."""
    import torch
    from transformers import AutoModelForCausalLM

    exported = AutoModelForCausalLM.from_pretrained(str(tmp), dtype=dtype).to(device).eval()
    got = [_logits(exported, ids, device) for ids in prompts]
    del exported
    diff = max(float((a - b).abs().max()) for a, b in zip(ref, got))
    scale = max(float(a.abs().max()) for a in ref)
    atol, rtol = TOLERANCES.get(dtype_name, TOLERANCES["fp32"])
    atol = s.atol if s.atol is not None else atol
    rtol = s.rtol if s.rtol is not None else rtol
    tol = atol + rtol * scale
    agree = float(torch.cat([(a.argmax(-1) == b.argmax(-1)).flatten() for a, b in zip(ref, got)]).float().mean())
    log.info("Check on %d prompts (%d tokens): max |logit diff| = %.3g, tolerance %.3g "
             "(atol %g + rtol %g x max|logit| %.3g); argmax agrees at %.1f%% of positions",
             len(prompts), sum(p.shape[-1] for p in prompts), diff, tol, atol, rtol, scale, 100 * agree)
    if run.method == "qlora":
        q = _quantized_diff(run, prompts, got, device)
        if q is not None:
            notes.append(f"qlora: the run's own 4-bit/8-bit model differs from the export by up to {q:.3g} "
                         "in logits (quantization error of the trained base; informational, not checked)")
            log.info("%s", notes[-1])
    return CheckResult(diff, tol, agree)


# ---------------------------------------------------------------------------
# helpers


def check_prompts(run, tokenizer, n: int):
    """Token ids of ``n`` full conversations from the run's eval data (else its train data), as (1, T) tensors."""
    import torch

    from ftrun.saved_runs import run_rows, row_messages

    rows = []
    try:
        train, evals = run_rows(run.cfg.data)
        rows = (evals or []) + train
    except Exception as e:  # noqa: BLE001 - any unreadable data only changes which prompts are used
        log.info("Check prompts: the run's data is not readable here (%s); using generic prompts", e)
    if not rows:
        rows = [{"instruction": t, "input": "", "output": "OK."} for t in
                ("Hello! Who are you?", "Summarize: the cat sat on the mat.", "1 + 1 =", "你好，请介绍一下你自己。")]
    out = []
    for row in rows[:max(n, 1)]:
        text = tokenizer.apply_chat_template(row_messages(row), tokenize=False)
        ids = tokenizer(text, add_special_tokens=False, return_tensors="pt")["input_ids"][:, :512]
        out.append(ids.to(torch.long))
    return out


def _quantized_diff(run, prompts, exported_logits, device) -> Optional[float]:
    """Max |logit diff| between the quantized base+adapter the run trained and the export (None if unavailable)."""
    from ftrun import saved_runs

    try:
        model = saved_runs.load_run_model(run, quantized=True)
        dev = next(model.parameters()).device
        q = [_logits(model, ids, dev) for ids in prompts]
    except Exception as e:  # noqa: BLE001 - informational only (e.g. bitsandbytes missing on this machine)
        log.info("qlora: could not load the quantized model for comparison (%s)", e)
        return None
    del model
    return max(float((a - b).abs().max()) for a, b in zip(q, exported_logits))


def _logits(model, ids, device):
    import torch

    with torch.no_grad():
        return model(input_ids=ids.to(device)).logits.float().cpu()


def _checkpoint_dtype(run):
    """The base checkpoint's own dtype (config.json's dtype / torch_dtype), else fp32."""
    import torch

    from ftrun import saved_runs

    c = read_config_json(saved_runs.base_model_path(run)) or {}
    name = c.get("dtype") or c.get("torch_dtype")
    return getattr(torch, name) if isinstance(name, str) and hasattr(torch, name) else torch.float32


def _fix_generation_config(model, tokenizer) -> None:
    gc = model.generation_config
    if gc.eos_token_id is None:
        gc.eos_token_id = tokenizer.eos_token_id
    if gc.pad_token_id is None:
        gc.pad_token_id = tokenizer.pad_token_id


def shard_report(d: Path) -> List[dict]:
    """Each safetensors file: name, size on disk and the bytes its tensors take."""
    from safetensors import safe_open

    out = []
    for f in sorted(Path(d).glob("*.safetensors")):
        with safe_open(str(f), framework="pt") as st:
            tb = 0
            for k in st.keys():
                sl = st.get_slice(k)
                n = 1
                for dim in sl.get_shape():
                    n *= dim
                tb += n * _dtype_bytes(sl.get_dtype())
        out.append({"file": f.name, "bytes": f.stat().st_size, "tensor_bytes": tb})
    return out


def _dtype_bytes(name: str) -> int:
    return {"F64": 8, "I64": 8, "F32": 4, "I32": 4, "F16": 2, "BF16": 2, "I16": 2, "U8": 1, "I8": 1, "BOOL": 1,
            "F8_E4M3": 1, "F8_E5M2": 1}.get(name, 4)


def _normal_permissions(d: Path) -> None:
    """mkdtemp makes a 0700 directory; give the export the permissions a plain mkdir would."""
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(d, 0o777 & ~umask)
    for f in d.rglob("*"):
        os.chmod(f, (0o777 if f.is_dir() else 0o666) & ~umask)


def _move_into_place(tmp: Path, dest: Path) -> None:
    """Rename the finished ``tmp`` to ``dest``; an old ``dest`` is moved aside first and removed last."""
    old = None
    if dest.exists():
        if dest.is_dir() and not any(dest.iterdir()):
            dest.rmdir()
        else:
            old = dest.with_name(f".{dest.name}.old-{os.getpid()}")
            os.replace(dest, old)
    os.replace(tmp, dest)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True) if old.is_dir() else old.unlink()


def _cfg_uri(run) -> Optional[str]:
    if run is not None:
        t = run.cfg.get("tracking") or {}
        if t.get("uri"):
            return t.get("uri")
    from ftrun.contract import MLFLOW_URI_ENV

    return os.environ.get(MLFLOW_URI_ENV)


def _log_to_mlflow(run, result: ExportResult, tracking_uri: Optional[str]) -> None:
    import mlflow

    if not run.mlflow_run_id:
        raise ConfigError(f"export.mlflow=true: the run {run.run_dir} has no mlflow_run_id (it ran with "
                          "tracking.enabled=false); the export itself is complete at " + str(result.dir))
    uri = tracking_uri or _cfg_uri(run)
    if uri:
        mlflow.set_tracking_uri(uri)
    with mlflow.start_run(run_id=run.mlflow_run_id):
        mlflow.log_artifacts(str(result.dir), artifact_path="export")
        metrics = {"export_total_bytes": result.total_bytes, "export_num_shards": len(result.shards)}
        if result.max_abs_diff is not None:
            metrics["export_logits_max_abs_diff"] = result.max_abs_diff
        mlflow.log_metrics(metrics)
        mlflow.set_tags({"export_dir": str(result.dir), "export_dtype": result.dtype})
    log.info("MLflow: logged the export under run %s (artifact path 'export') at %s",
             run.mlflow_run_id, mlflow.get_tracking_uri())


def main(argv=None) -> None:
    from ftrun import cli

    args = cli.parse(ExportArgs, argv, __doc__, positional="run")
    if args.run is None:
        raise ConfigError("run=RUN_DIR_OR_MLFLOW_RUN_ID is required (see --help)")
    try:
        res = export(args.run, args.export, args.tracking_uri)
    except ExportCheckError as e:
        print(f"error: {e}", file=sys.stderr)
        raise SystemExit(1)
    print(json.dumps({"dir": str(res.dir), "dtype": res.dtype, "shards": res.shards,
                      "total_bytes": res.total_bytes, "logits_max_abs_diff": res.max_abs_diff,
                      "tolerance": res.tolerance, "argmax_agreement": res.argmax_agreement}, indent=2))


if __name__ == "__main__":
    from ftrun.cli import main_guard

    sys.exit(main_guard(main))
