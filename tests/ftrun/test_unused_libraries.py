"""ftrun/unused_libraries.py: a run keeps the optional libraries it does not use (bitsandbytes, DeepSpeed, scipy,
IPython, trio, boto3) out of its process, and keeps the ones it needs."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import textwrap

import pytest

from ftrun.contract import OPTUNA_PRUNER_ENV, RESULT_FILE, UNUSED_LIBRARIES_ENV
from ftrun.unused_libraries import CANDIDATES, needed, unused, unused_in_sweep
from tests.conftest import FAST, ROOT, compose_cfg

INSTALLED = [name for name in CANDIDATES if importlib.util.find_spec(name) is not None]


def _needs(*overrides, environ=None):
    return needed(compose_cfg(list(overrides)), environ or {})


def test_a_lora_run_needs_none_of_them():
    assert _needs() == []
    assert _needs("method=full", "method.quant_method=hqq") == []


def test_quantization_and_8bit_optimizers_need_bitsandbytes():
    assert _needs("method=qlora") == ["bitsandbytes"]
    assert _needs("method=qlora", "method.quant_method=hqq") == []
    assert _needs("optimizer=adamw_8bit") == ["bitsandbytes"]


def test_a_base_model_that_may_be_quantized_needs_bitsandbytes(tmp_path):
    assert _needs("model.path=Qwen/Qwen2.5-0.5B-Instruct") == ["bitsandbytes"]  # a hub id: its config is unread
    plain, quantized = tmp_path / "plain", tmp_path / "quantized"
    for folder, extra in ((plain, {}), (quantized, {"quantization_config": {"quant_method": "bitsandbytes"}})):
        folder.mkdir()
        (folder / "config.json").write_text(json.dumps({"model_type": "llama", **extra}))
    assert _needs(f"model.path={plain}") == []
    assert _needs(f"model.path={quantized}") == ["bitsandbytes"]
    assert _needs("stage=dpo", f"stage.init_run={tmp_path}") == ["bitsandbytes"]  # another run's model


def test_deepspeed_by_sharding_or_launcher_and_scipy_by_the_wilcoxon_pruner():
    assert _needs("sharding=zero3") == ["deepspeed"]
    assert _needs(environ={"ACCELERATE_USE_DEEPSPEED": "true"}) == ["deepspeed"]
    assert _needs(environ={OPTUNA_PRUNER_ENV: json.dumps({"name": "wilcoxon"})}) == ["scipy"]
    assert _needs(environ={OPTUNA_PRUNER_ENV: json.dumps({"name": "median"})}) == []


def test_boto3_only_where_mlflow_artifacts_may_be_remote():
    for uri in ("sqlite:////tmp/x/mlflow.db", "file:///tmp/mlruns", "/tmp/mlruns", "mlruns"):
        assert _needs(f"tracking.uri={uri}") == [], uri
    assert _needs("tracking.uri=http://127.0.0.1:5000") == ["boto3"]  # a server's artifact store may be S3
    assert _needs("tracking.uri=postgresql://u@127.0.0.1/mlflow") == ["boto3"]
    assert _needs("tracking.enabled=false", "tracking.uri=http://127.0.0.1:5000") == []
    assert _needs(environ={"MLFLOW_TRACKING_URI": "http://127.0.0.1:5000"}) == ["boto3"]
    assert _needs(environ={"MLFLOW_S3_ENDPOINT_URL": "http://127.0.0.1:9000"}) == ["boto3"]


GIVE_BACK = textwrap.dedent("""
    import json, sys
    from ftrun.unused_libraries import hide, hidden_now
    assert hide(["boto3"]) == ["boto3"]
    from ftrun.tracking import _artifact_libraries
    seen = {}
    for location in ("/tmp/mlruns/1", "file:///tmp/mlruns/1", "mlflow-artifacts:/1", "s3://bucket/mlflow/1"):
        _artifact_libraries(location)
        seen[location] = "boto3" in hidden_now()
    import boto3  # importable again
    from ftrun.unused_libraries import check_trial, hide
    from tests.conftest import compose_cfg
    del sys.modules["boto3"]  # imported above: out again, to hide it once more
    assert hide(["boto3"]) == ["boto3"]
    check_trial(compose_cfg(["tracking.uri=http://127.0.0.1:5000"]))  # a warm worker's trial: given back, not refused
    seen["after a remote trial"] = "boto3" in hidden_now()
    print(json.dumps(seen))
""")


def test_an_experiment_with_s3_artifacts_gives_boto3_back(tmp_path):
    stand_in = tmp_path / "boto3"  # an importable boto3 first on the path, installed or not
    stand_in.mkdir()
    (stand_in / "__init__.py").write_text("")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), str(ROOT)])}
    out = subprocess.run([sys.executable, "-c", GIVE_BACK], cwd=ROOT, capture_output=True, text=True, timeout=300,
                         env=env)
    assert out.returncode == 0, out.stderr[-3000:]
    assert json.loads(out.stdout.strip().splitlines()[-1]) == {
        "/tmp/mlruns/1": True, "file:///tmp/mlruns/1": True, "mlflow-artifacts:/1": True, "s3://bucket/mlflow/1": False,
        "after a remote trial": False}


def test_the_variable_overrides_the_choice():
    cfg = compose_cfg([])
    assert unused(cfg, {}) == list(CANDIDATES)
    assert unused(cfg, {UNUSED_LIBRARIES_ENV: ""}) == []
    assert unused(compose_cfg(["method=qlora"]), {UNUSED_LIBRARIES_ENV: "scipy"}) == ["scipy"]


def test_a_sweep_hides_only_what_no_trial_can_need():
    cfg = compose_cfg([])
    assert unused_in_sweep(cfg, ["optimizer.lr", "method.rank"], "median") == list(CANDIDATES)
    assert unused_in_sweep(cfg, ["optimizer.lr"], {"name": "wilcoxon"}) == [n for n in CANDIDATES if n != "scipy"]
    assert unused_in_sweep(cfg, ["optimizer.lr", "optimizer"], None) == []  # optimizer=choice(adamw,adamw_8bit)
    assert unused_in_sweep(cfg, ["method"], None) == unused_in_sweep(cfg, ["method.name"], None) == []
    assert unused_in_sweep(compose_cfg(["method=qlora"]), ["optimizer.lr"], None) == list(CANDIDATES[1:])


HIDDEN_IMPORTS = textwrap.dedent("""
    import json, sys
    from ftrun.unused_libraries import hide
    hidden = hide(sys.argv[1].split(","))
    import peft, accelerate, datasets
    from peft.import_utils import is_bnb_available
    from accelerate.utils import is_deepspeed_available
    from transformers import Trainer  # noqa: F401
    rows = datasets.load_dataset("json", data_files=sys.argv[2], split="train")
    import huggingface_hub.hf_api, mlflow  # httpcore2 looks for trio; start_run for IPython (Databricks)
    mlflow.set_tracking_uri(sys.argv[3])
    mlflow.set_experiment("hidden")
    with mlflow.start_run():
        mlflow.log_metric("loss", 1.0)
    print(json.dumps({"hidden": hidden, "loaded": [n for n in sys.argv[1].split(",") if sys.modules.get(n)],
                      "bnb": is_bnb_available(), "deepspeed": is_deepspeed_available(), "rows": len(rows),
                      "runs": len(mlflow.search_runs(output_format="list"))}))
""")


@pytest.mark.skipif(not INSTALLED, reason="none of the candidates is installed")
def test_hidden_libraries_are_not_imported_and_the_stack_takes_its_not_installed_branches(tmp_path):
    data = tmp_path / "rows.jsonl"
    data.write_text('{"text": "a"}\n{"text": "b"}\n')
    out = subprocess.run([sys.executable, "-c", HIDDEN_IMPORTS, ",".join(INSTALLED), str(data),
                          f"sqlite:///{tmp_path / 'mlflow.db'}"], cwd=ROOT,
                         capture_output=True, text=True, timeout=300,
                         env={k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")})
    assert out.returncode == 0, out.stderr[-3000:]
    seen = json.loads(out.stdout.strip().splitlines()[-1])
    assert seen["hidden"] == INSTALLED and seen["loaded"] == []
    assert not seen["bnb"] and not seen["deepspeed"] and seen["rows"] == 2 and seen["runs"] == 1


@pytest.mark.skipif("bitsandbytes" not in INSTALLED, reason="bitsandbytes is not installed")
def test_a_lora_run_hides_them_and_a_qlora_run_keeps_bitsandbytes(tmp_path):
    for name, method in (("lora", "lora"), ("qlora", "qlora")):
        out = subprocess.run([sys.executable, "-m", "ftrun", *FAST, f"method={method}", "max_steps=2",
                              "tracking.enabled=false", f"output_root={tmp_path / 'out'}", f"name={name}"],
                             cwd=ROOT, capture_output=True, text=True, timeout=600,
                             env={k: v for k, v in os.environ.items() if k != UNUSED_LIBRARIES_ENV})
        assert out.returncode == 0, out.stderr[-3000:]
        result = json.loads(next((tmp_path / "out" / name).glob(f"*/{RESULT_FILE}")).read_text())
        assert result["hidden_libraries"] == [n for n in INSTALLED if not (method == "qlora" and n == "bitsandbytes")]
