"""Finding runs (one rule for the tools and the stages) and the loading arguments the tools share."""

from __future__ import annotations

import dataclasses

import pytest

from ftrun.config import ConfigError
from ftrun.saved_runs import LoadArgs, RunArgs, resolve_run_dir


def _runs(root, finished, unfinished=()):
    for stamp in (*finished, *unfinished):
        (root / stamp).mkdir(parents=True)
    for stamp in finished:
        (root / stamp / "model").mkdir()
        (root / stamp / "config_resolved.yaml").write_text("{}")


def test_a_run_its_model_dir_and_a_run_name_dir_resolve_to_the_run(tmp_path):
    _runs(tmp_path / "lora-demo", ["2026-01-01_00-00-00", "2026-01-02_00-00-00"], ["2026-01-03_00-00-00"])
    newest = (tmp_path / "lora-demo" / "2026-01-02_00-00-00").resolve()
    assert resolve_run_dir(str(newest)) == newest
    assert resolve_run_dir(str(newest / "model")) == newest
    assert resolve_run_dir(str(tmp_path / "lora-demo")) == newest  # the newest run that saved a model


@pytest.mark.parametrize("key", ["run", "stage.init_run"])
def test_errors_name_the_override(tmp_path, key):
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match=f"^{key}=.*holds no model/ directory"):
        resolve_run_dir(str(tmp_path / "empty"), key=key)
    with pytest.raises(ConfigError, match=f"^{key}=.*no such directory, and not an MLflow run id"):
        resolve_run_dir(str(tmp_path / "nope"), key=key)


def _keys(cls) -> set:
    return {f.name for f in dataclasses.fields(cls)}


def test_the_tools_extend_one_loading_base_and_keep_their_flags():
    from ftrun.chat import ChatArgs
    from ftrun.export import ExportArgs
    from ftrun.predict import PredictArgs
    from ftrun.serve.__main__ import ServeArgs

    loading = {"run", "model", "device", "dtype", "tracking_uri"}
    assert _keys(LoadArgs) == loading and issubclass(LoadArgs, RunArgs)
    assert _keys(ChatArgs) == loading | {"system", "history", "gen", "seed"}
    assert _keys(PredictArgs) == loading | {"data", "split", "max_samples", "batch_size", "gen", "out", "seed",
                                            "mlflow"}
    assert _keys(ServeArgs) == loading | {"port", "name", "gen", "log_level"}
    assert _keys(ExportArgs) == {"run", "tracking_uri", "export"} and issubclass(ExportArgs, RunArgs)
    assert all(issubclass(c, LoadArgs) for c in (ChatArgs, PredictArgs, ServeArgs))
