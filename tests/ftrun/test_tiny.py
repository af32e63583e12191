"""The built-in tiny model: the default ships built (every machine fine-tunes the same base), others build."""

from __future__ import annotations

import json
from dataclasses import asdict

import pytest
from conftest import compose_cfg

import ftrun.tiny
from ftrun.config.schema import TinyArch
from ftrun.tiny import RECIPE_VERSION, SHIPPED, ensure_tiny, tiny_path


def test_the_shipped_model_is_the_default_model_tiny_of_this_recipe():
    """A change to TinyArch's defaults or to the recipe without `python -m ftrun.tiny` fails here."""
    arch = compose_cfg().model.tiny
    assert dict(arch) == asdict(TinyArch())
    shipped = SHIPPED / tiny_path(arch).name
    assert json.loads((shipped / "ftrun_tiny.json").read_text()) == {"recipe": RECIPE_VERSION, **asdict(TinyArch())}
    assert sorted(p.name for p in SHIPPED.iterdir()) == [shipped.name]  # no stale copy ships beside it


def test_a_fresh_cache_copies_the_shipped_model_without_building(tmp_path, monkeypatch):
    monkeypatch.setenv("FTRUN_CACHE", str(tmp_path))
    monkeypatch.setattr(ftrun.tiny, "_build", lambda *a: pytest.fail("built, though the model ships"))
    dest = ensure_tiny(compose_cfg().model.tiny)
    assert dest.parent == tmp_path / "models"
    shipped = SHIPPED / dest.name
    assert sorted(p.name for p in dest.iterdir()) == sorted(p.name for p in shipped.iterdir())
    assert all((dest / p.name).read_bytes() == p.read_bytes() for p in shipped.iterdir())


def test_another_architecture_is_built_on_first_use_and_loads(tmp_path, monkeypatch):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    monkeypatch.setenv("FTRUN_CACHE", str(tmp_path))
    small = TinyArch(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                     num_key_value_heads=1, vocab_size=300, max_position_embeddings=128, pretrain_steps=2)
    dest = ensure_tiny(small)
    assert not (SHIPPED / dest.name).exists() and dest.parent == tmp_path / "models"
    model = AutoModelForCausalLM.from_pretrained(dest)
    assert model.config.hidden_size == 32 and model.config.num_hidden_layers == 1
    tok = AutoTokenizer.from_pretrained(dest)
    assert len(tok) == model.config.vocab_size <= 300
    assert tok.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False) == \
        "<|im_start|>user\nhi<|im_end|>\n"
