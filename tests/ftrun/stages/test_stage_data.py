"""Pairwise, prompt and raw-text readers of the stages, and their errors (no model loads here)."""

from __future__ import annotations

import json

import pytest
from conftest import compose_cfg

from ftrun.config import ConfigError, validate
from ftrun.stages.data import (letters_pairs, letters_text, load_pairs, load_prompts, load_texts, read_pairs,
                               read_prompts, read_texts, to_trl, to_unpaired)


def write_jsonl(path, rows):
    path.write_text("\n".join(json.dumps(r, ensure_ascii=False) for r in rows) + "\n", encoding="utf-8")
    return str(path)


def test_alpaca_pairs(tmp_path):
    path = write_jsonl(tmp_path / "prefs.jsonl", [
        {"instruction": "把字母倒过来", "input": "a b c", "chosen": "c b a", "rejected": "a b c",
         "system": "你是助手", "history": [["你好", "你好！"]]},
        {"prompt": "Say hi", "chosen": "hi", "rejected": "bye"},
    ])
    first, second = read_pairs(path)
    assert first["prompt"] == [
        {"role": "system", "content": "你是助手"},
        {"role": "user", "content": "你好"}, {"role": "assistant", "content": "你好！"},
        {"role": "user", "content": "把字母倒过来\na b c"},
    ]
    assert (first["chosen"], first["rejected"]) == ("c b a", "a b c")
    assert second["prompt"] == [{"role": "user", "content": "Say hi"}]
    row = to_trl(first)
    assert row["chosen"] == [{"role": "assistant", "content": "c b a"}]


def test_sharegpt_and_messages_pairs(tmp_path):
    path = tmp_path / "prefs.json"
    path.write_text(json.dumps([
        {"conversations": [{"from": "system", "value": "sys"}, {"from": "human", "value": "q"}],
         "chosen": {"from": "gpt", "value": "good"}, "rejected": {"from": "gpt", "value": "bad"}},
        {"messages": [{"role": "user", "content": "q2"}],
         "chosen": [{"role": "assistant", "content": "good2"}], "rejected": "bad2"},
    ]))
    a, b = read_pairs(str(path))
    assert a["prompt"] == [{"role": "system", "content": "sys"}, {"role": "user", "content": "q"}]
    assert (a["chosen"], a["rejected"]) == ("good", "bad")
    assert b["prompt"] == [{"role": "user", "content": "q2"}] and b["chosen"] == "good2" and b["rejected"] == "bad2"


@pytest.mark.parametrize(("row", "message"), [
    ({"instruction": "q", "chosen": "a"}, "line 2 has no 'rejected' answer"),
    ({"instruction": "q", "rejected": "a"}, "line 2 has no 'chosen' answer"),
    ({"instruction": "q", "chosen": "same", "rejected": " same"}, "line 2: 'chosen' and 'rejected' are identical"),
    ({"instruction": "q", "chosen": "", "rejected": "b"}, "line 2: 'chosen' must be a non-empty string"),
    ({"chosen": "a", "rejected": "b"}, "line 2 has no prompt"),
    ({"messages": [{"role": "assistant", "content": "x"}], "chosen": "a", "rejected": "b"}, "must end with a user turn"),
])
def test_bad_pairs_name_file_and_record(tmp_path, row, message):
    path = write_jsonl(tmp_path / "bad.jsonl", [{"instruction": "ok", "chosen": "a", "rejected": "b"}, row])
    with pytest.raises(ConfigError) as e:
        read_pairs(path)
    assert f"data.path={path}" in str(e.value) and message in str(e.value)


def test_raw_text_txt_and_jsonl(tmp_path):
    txt = tmp_path / "domain.txt"
    txt.write_text("first document\nstill first\n\n\nsecond document\n", encoding="utf-8")
    assert read_texts(str(txt)) == ["first document\nstill first", "second document"]
    path = write_jsonl(tmp_path / "docs.jsonl", [{"text": "one"}, {"text": "two"}, {"body": "x"}])
    with pytest.raises(ConfigError, match=r"line 3 has no 'text' column.*stage.text_column"):
        read_texts(path)
    assert read_texts(write_jsonl(tmp_path / "b.jsonl", [{"body": "x"}]), column="body") == ["x"]


def test_prompts_from_pairs_or_sft_rows(tmp_path):
    path = write_jsonl(tmp_path / "p.jsonl", [
        {"instruction": "q1", "output": "a"},
        {"conversations": [{"from": "human", "value": "q2"}, {"from": "gpt", "value": "a2"}]},
    ])
    assert read_prompts(path) == [{"prompt": [{"role": "user", "content": "q1"}]},
                                  {"prompt": [{"role": "user", "content": "q2"}]}]


def test_builtin_data_for_every_stage():
    pairs = letters_pairs(50, 1)
    assert pairs == letters_pairs(50, 1)  # deterministic
    assert all(p["chosen"] != p["rejected"] for p in pairs)
    # the obvious pattern: a rejected answer is never the right one, and letters in it are capitals
    assert all(p["rejected"] == p["rejected"].upper() for p in pairs)
    assert len(to_unpaired(pairs)) == 100
    assert letters_text(3, 1)[0].count("\n") == 2
    cfg = compose_cfg(["data.num_train=10", "data.num_eval=4"])
    train, evals = load_pairs(cfg.data)
    assert (len(train), len(evals)) == (10, 4) and train[0] != evals[0]
    assert len(load_prompts(cfg.data)[0]) == 10 and len(load_texts(cfg.data)[1]) == 4


def test_file_split_and_max_samples(tmp_path):
    path = write_jsonl(tmp_path / "p.jsonl", [{"instruction": f"q{i}", "chosen": "a", "rejected": "b"}
                                             for i in range(10)])
    cfg = compose_cfg(["data=alpaca", f"data.path={path}", "data.val_size=0.2", "data.max_samples=5"])
    train, evals = load_pairs(cfg.data)
    assert len(train) == 5 and [p["prompt"][0]["content"] for p in evals] == ["q8", "q9"]


@pytest.mark.parametrize(("overrides", "message"), [
    (["stage=ppo"], "stage.reward_run=None: give the rm run"),
    (["stage=dpo", "stage.loss_type=[sigmoid,nope]"], "stage.loss_type=[sigmoid,nope]"),  # an Enum: at compose
    (["stage=dpo", "objective=eval_loss", "stage.beta=-1"], "stage.beta=-1"),
    (["stage=rm", "objective=eval_exact_match"], "stage=rm reports eval_accuracy"),
    (["stage=ppo", "stage.reward_run=/no/such/run"], "stage.reward_run=/no/such/run: no such run directory"),
    (["stage=ppo", "stage.reward_run=.", "batch_size=6"], "multiple of stage.ppo.num_generations=4"),
    (["stage=dpo", "method.loraplus_lr_ratio=16"], "LoRA+ is built for stage=sft only"),
    (["stage=nope"], None),  # not a preset: Hydra refuses it at compose time
])
def test_stage_config_errors(overrides, message):
    if message is None:
        with pytest.raises(Exception, match="stage"):
            compose_cfg(overrides)
        return
    with pytest.raises(ConfigError) as e:
        validate(compose_cfg(overrides))  # a type or a choice fails in compose, a range or a rule in validate
    assert message in str(e.value)


def test_each_stage_has_its_objective():
    for stage, objective in [("sft", "eval_loss"), ("pt", "eval_loss"), ("rm", "eval_accuracy"),
                             ("dpo", "eval_rewards/accuracies"), ("kto", "eval_rewards/margins"),
                             ("ppo", "reward_mean")]:
        cfg = compose_cfg([f"stage={stage}"])
        assert cfg.objective == objective and cfg.stage.name == stage
    assert compose_cfg(["stage=dpo", "objective=eval_rewards/margins"]).objective == "eval_rewards/margins"
    assert compose_cfg(["stage=dpo"]).name.startswith("dpo-lora-letters")
