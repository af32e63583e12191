"""ftrun/config/model_dir.py: a model.path that is not a model is named by what it lacks, before anything loads."""

from __future__ import annotations

import pytest

from ftrun.config import ConfigError
from ftrun.config.model_dir import model_dir_problems, require_model_files


def _folder(tmp_path, *files):
    for name in files:
        (tmp_path / name).write_text("{}")
    return str(tmp_path)


@pytest.mark.parametrize("files, need, says", [
    ((), ("config",), "no config.json: not a model directory"),
    (("tokenizer.json",), ("config",), "no config.json"),
    (("model.safetensors",), ("config",), "weights (model.safetensors) without config.json"),
    (("config.json", "model.safetensors"), ("tokenizer",), "no tokenizer files"),
    (("config.json", "tokenizer.json"), ("weights",), "no weights"),
])
def test_each_missing_part_is_named(tmp_path, files, need, says):
    (problem,) = model_dir_problems(_folder(tmp_path, *files), need)
    assert says in problem


def test_a_complete_folder_passes_and_a_file_or_nothing_does_not(tmp_path):
    assert model_dir_problems(_folder(tmp_path, "config.json", "tokenizer.json", "model.safetensors")) == []
    assert model_dir_problems(_folder(tmp_path, "vocab.json", "merges.txt"), ("tokenizer",)) == []
    assert "a file, not a model directory" in model_dir_problems(str(tmp_path / "config.json"))[0]
    assert "no such directory" in model_dir_problems(str(tmp_path / "nowhere"))[0]


def test_a_run_refuses_a_folder_without_weights_by_its_key(tmp_path):
    from omegaconf import OmegaConf

    cfg = OmegaConf.create({"path": _folder(tmp_path, "config.json", "tokenizer.json")})
    with pytest.raises(ConfigError, match=r"model.path=.*: no weights"):
        require_model_files(cfg)
    require_model_files(OmegaConf.create({"path": None}))  # the built-in model: nothing to check
    require_model_files(OmegaConf.create({"path": "Qwen/Qwen2.5-0.5B-Instruct"}))  # a hub id: not local
