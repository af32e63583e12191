"""export: a merged, sharded model that plain transformers loads and that computes what base+adapter
computes; QLoRA and DoRA runs; refusing to overwrite; nothing half-written; MLflow."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import ROOT
from finished_runs import finished_run

from ftrun.config import ConfigError
from ftrun.export import INFO_FILE, ExportCheckError, ExportSettings, export


@pytest.fixture(scope="module")
def lora_run(tmp_path_factory, tiny_dir):
    return finished_run(tmp_path_factory, "lora")


def _base_plus_adapter_logits(run_dir: Path, ids: torch.Tensor) -> torch.Tensor:
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    cfg = json.loads((run_dir / "model" / "adapter_config.json").read_text())
    base = AutoModelForCausalLM.from_pretrained(cfg["base_model_name_or_path"], dtype=torch.float32)
    model = PeftModel.from_pretrained(base, str(run_dir / "model")).eval()
    with torch.no_grad():
        return model(input_ids=ids).logits


# loads the export with transformers alone (ftrun must not even be importable) and prints its logits
PLAIN_LOAD = r"""
import json, sys
sys.modules["ftrun"] = None  # any import of ftrun now fails
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer
d = sys.argv[1]
tok = AutoTokenizer.from_pretrained(d)
model = AutoModelForCausalLM.from_pretrained(d).eval()
text = tok.apply_chat_template([{"role": "user", "content": "把字母倒过来\nk d m a"}], add_generation_prompt=True,
                               tokenize=False)
ids = tok(text, add_special_tokens=False, return_tensors="pt")["input_ids"]
with torch.no_grad():
    logits = model(input_ids=ids).logits
print(json.dumps({"ids": ids.tolist(), "logits": logits.tolist(), "eos": model.generation_config.eos_token_id,
                  "template": tok.chat_template}))
"""


def test_round_trip_shards_and_plain_transformers(lora_run, tmp_path):
    run_dir, _ = lora_run
    dest = tmp_path / "exported"
    res = export(str(run_dir), ExportSettings(dir=str(dest), max_shard_size="1MB"))
    assert res.dir == dest.resolve()
    # the check ran and passed: fp32 merge reproduces base+adapter to float rounding
    assert res.max_abs_diff is not None and res.max_abs_diff <= res.tolerance < 1e-2
    assert res.argmax_agreement == 1.0
    # ~2.75 MB of fp32 weights in shards of at most 1 MB (10^6 bytes) of tensors, with an index
    shards = sorted(dest.glob("model-*.safetensors"))
    assert len(shards) == len(res.shards) >= 3
    assert all(s["bytes"] <= 1_000_000 for s in res.shards)  # whole files, headers included
    assert [s.stat().st_size for s in shards] == [s["bytes"] for s in res.shards]
    index = json.loads((dest / "model.safetensors.index.json").read_text())
    assert set(index["weight_map"].values()) == {s.name for s in shards}
    assert not any("lora" in k for k in index["weight_map"])  # merged: no adapter tensors left
    for name in ("config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json", INFO_FILE):
        assert (dest / name).is_file(), name
    assert not list(tmp_path.glob(".exported.partial-*"))

    out = subprocess.run([sys.executable, "-c", PLAIN_LOAD, str(dest)], capture_output=True, text=True,
                         cwd="/", timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    got = json.loads(out.stdout.strip().splitlines()[-1])
    assert got["template"] and got["eos"] is not None
    ids = torch.tensor(got["ids"])
    ref = _base_plus_adapter_logits(run_dir, ids)
    torch.testing.assert_close(torch.tensor(got["logits"]), ref, atol=1e-4, rtol=1e-4)


def test_bf16_export(lora_run, tmp_path):
    from safetensors import safe_open

    res = export(str(lora_run[0]), ExportSettings(dir=str(tmp_path / "bf16"), dtype="bf16"))
    assert res.dtype == "bf16" and res.max_abs_diff <= res.tolerance
    with safe_open(str(tmp_path / "bf16" / "model.safetensors"), framework="pt") as f:
        assert {f.get_slice(k).get_dtype() for k in f.keys()} == {"BF16"}


def test_refuses_a_non_empty_dir_unless_asked(lora_run, tmp_path):
    dest = tmp_path / "taken"
    dest.mkdir()
    (dest / "precious.txt").write_text("keep me")
    with pytest.raises(ConfigError, match="export.overwrite=true"):
        export(str(lora_run[0]), ExportSettings(dir=str(dest)))
    assert (dest / "precious.txt").read_text() == "keep me"
    export(str(lora_run[0]), ExportSettings(dir=str(dest), overwrite=True, check=False))
    assert not (dest / "precious.txt").exists() and (dest / "model.safetensors").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["taken"]  # no temporary or old copies left


def test_a_failed_check_leaves_nothing_behind(lora_run, tmp_path):
    dest = tmp_path / "bad"
    with pytest.raises(ExportCheckError, match="tolerance"):
        export(str(lora_run[0]), ExportSettings(dir=str(dest), atol=-1.0, rtol=0.0))  # nothing can pass
    assert list(tmp_path.iterdir()) == []


def test_qlora_is_merged_into_an_unquantized_base(tmp_path_factory, tiny_dir, tmp_path, caplog):
    run_dir, _ = finished_run(tmp_path_factory, "qlora")
    with caplog.at_level("INFO", logger="ftrun.export"):
        res = export(str(run_dir), ExportSettings(dir=str(tmp_path / "q")))
    assert any("unquantized" in n for n in res.notes)
    assert any("quantization error" in n for n in res.notes)  # how far the 4-bit model it trained is, for info
    assert "unquantized" in caplog.text
    config = json.loads((tmp_path / "q" / "config.json").read_text())
    assert "quantization_config" not in config
    assert res.max_abs_diff <= res.tolerance
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(tmp_path / "q"))
    assert {p.dtype for p in model.parameters()} == {torch.float32}
    assert not any("lora" in n for n, _ in model.named_parameters())


def test_dora_merges(tmp_path_factory, tiny_dir, tmp_path):
    run_dir, _ = finished_run(tmp_path_factory, "dora")
    assert json.loads((run_dir / "model" / "adapter_config.json").read_text())["use_dora"]
    res = export(str(run_dir), ExportSettings(dir=str(tmp_path / "d")))
    assert res.max_abs_diff <= res.tolerance and res.argmax_agreement == 1.0


def test_by_mlflow_run_id_and_logged_to_mlflow(lora_run, tmp_path):
    from mlflow import MlflowClient

    run_dir, uri = lora_run
    run_id = (run_dir / "mlflow_run_id").read_text().strip()
    res = export(run_id, ExportSettings(dir=str(tmp_path / "m"), mlflow=True), tracking_uri=uri)
    client = MlflowClient(uri)
    names = {Path(f.path).name for f in client.list_artifacts(run_id, "export")}
    assert {"config.json", "model.safetensors", "tokenizer.json", INFO_FILE} <= names
    run = client.get_run(run_id)
    assert run.data.metrics["export_logits_max_abs_diff"] == pytest.approx(res.max_abs_diff)
    assert run.data.tags["export_dir"] == str(res.dir)


def test_cli_help_is_fast_and_errors_are_one_line(tmp_path):
    import time

    t = time.perf_counter()
    out = subprocess.run([sys.executable, "-m", "ftrun.export", "--help"], capture_output=True, text=True, cwd=ROOT)
    assert out.returncode == 0 and "export.max_shard_size=2GB" in out.stdout
    assert time.perf_counter() - t < 20
    out = subprocess.run([sys.executable, "-c", "import sys, ftrun.export, ftrun.predict, ftrun.chat; "
                          "print('torch' in sys.modules)"], capture_output=True, text=True, cwd=ROOT)
    assert out.stdout.strip() == "False"  # --help and argument errors never wait for torch
    out = subprocess.run([sys.executable, "-m", "ftrun.export", f"run={tmp_path / 'nope'}"], capture_output=True,
                         text=True, cwd=ROOT)
    assert out.returncode == 2 and out.stderr.startswith("error: run=") and "Traceback" not in out.stderr
    out = subprocess.run([sys.executable, "-m", "ftrun.export", "run=x", "export.nosuch=1"], capture_output=True,
                         text=True, cwd=ROOT)
    assert out.returncode == 2 and "nosuch" in out.stderr and "Traceback" not in out.stderr
