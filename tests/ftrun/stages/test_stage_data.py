"""Every stage's examples through ftrun.data: pairs, KTO rows, prompts and raw text, and their errors.

No model loads here: these read files and the LLaMA-Factory registry only.
"""

from __future__ import annotations

import json

import pytest
from conftest import ROOT, compose_cfg

from ftrun.config import ConfigError, validate
from ftrun.data import load_examples, split
from ftrun.data.builtin import letters_pairs, letters_text
from ftrun.data import check_stage_data

REGISTRY = ROOT / "tests" / "data" / "llamafactory" / "dataset_info.json"


def write_jsonl(path, rows):
    path.write_text("\n".join(json.dumps(r, ensure_ascii=False) for r in rows) + "\n", encoding="utf-8")
    return str(path)


def examples(stage, *overrides):
    """(train rows, eval rows) that ``stage`` would train on."""
    cfg = compose_cfg(["data=alpaca", "data.format=auto", *overrides])
    train, evals, _, _ = load_examples(cfg.data, stage)
    return list(train), list(evals) if evals is not None else []


def test_alpaca_pairs(tmp_path):
    path = write_jsonl(tmp_path / "prefs.jsonl", [
        {"instruction": "把字母倒过来", "input": "a b c", "chosen": "c b a", "rejected": "a b c",
         "system": "你是助手", "history": [["你好", "你好！"]]},
        {"instruction": "Say hi", "chosen": "hi", "rejected": "bye"},
    ])
    (first, second), _ = examples("dpo", f"data.path={path}", "data.val_size=0")
    assert first["prompt"] == [
        {"role": "system", "content": "你是助手"},
        {"role": "user", "content": "你好"}, {"role": "assistant", "content": "你好！"},
        {"role": "user", "content": "把字母倒过来\na b c"},
    ]
    assert (first["chosen"], first["rejected"]) == ("c b a", "a b c")
    assert second["prompt"] == [{"role": "user", "content": "Say hi"}]


def test_sharegpt_and_messages_pairs(tmp_path):
    path = tmp_path / "prefs.json"
    path.write_text(json.dumps([
        {"conversations": [{"from": "system", "value": "sys"}, {"from": "human", "value": "q"}],
         "chosen": {"from": "gpt", "value": "good"}, "rejected": {"from": "gpt", "value": "bad"}},
        {"conversations": [{"from": "human", "value": "q2"}],
         "chosen": [{"from": "gpt", "value": "good2"}], "rejected": "bad2"},
    ]))
    (a, b), _ = examples("rm", f"data.path={path}", "data.val_size=0")
    assert a["prompt"] == [{"role": "system", "content": "sys"}, {"role": "user", "content": "q"}]
    assert (a["chosen"], a["rejected"]) == ("good", "bad")
    assert b["prompt"] == [{"role": "user", "content": "q2"}] and b["chosen"] == "good2" and b["rejected"] == "bad2"


@pytest.mark.parametrize(("row", "message"), [
    ({"instruction": "q", "chosen": "a"}, "line 2 has no 'rejected' answer"),
    ({"instruction": "q", "rejected": "a"}, "line 2 has no 'chosen' answer"),
    ({"instruction": "q", "chosen": "same", "rejected": " same"}, "line 2 'chosen' and 'rejected' are identical"),
    ({"instruction": "q", "chosen": "", "rejected": "b"}, "line 2 'chosen' must be a non-empty string"),
    ({"instruction": "", "chosen": "a", "rejected": "b"}, "line 2 has an empty prompt"),
])
def test_bad_pairs_name_file_and_record(tmp_path, row, message):
    path = write_jsonl(tmp_path / "bad.jsonl", [{"instruction": "ok", "chosen": "a", "rejected": "b"}, row])
    with pytest.raises(ConfigError) as e:
        examples("dpo", f"data.path={path}", "data.val_size=0", "data.strict=true")
    assert f"data.path={path}: {message}" in str(e.value)


def test_a_pair_must_end_with_a_user_turn(tmp_path):
    path = tmp_path / "p.json"
    path.write_text(json.dumps([{"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "x"}],
                                 "chosen": "a", "rejected": "b"}]))
    with pytest.raises(ConfigError, match=r"record 0 'messages' must end with a user turn"):
        examples("dpo", f"data.path={path}", "data.val_size=0", "data.strict=true")


def test_kto_rows_from_messages_and_label(tmp_path):
    """LLaMA-Factory's KTO layout (messages + boolean label) is read as KTO, not as pairs."""
    path = tmp_path / "kto.json"
    path.write_text(json.dumps([
        {"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "good"}], "label": True},
        {"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "bad"}], "label": False},
    ]))
    rows, _ = examples("kto", f"data.path={path}", "data.val_size=0")
    assert rows == [{"prompt": [{"role": "user", "content": "q"}], "completion": "good", "label": True},
                    {"prompt": [{"role": "user", "content": "q"}], "completion": "bad", "label": False}]
    with pytest.raises(ConfigError, match=r"holds KTO-labelled answers \(kto\), which stage=kto trains on; "
                                          r"stage=dpo needs preference pairs"):
        check_stage_data(compose_cfg(["stage=dpo", "data=alpaca", "data.format=auto", f"data.path={path}"]))


def test_kto_takes_pairs_as_a_good_and_a_bad_answer(tmp_path):
    path = write_jsonl(tmp_path / "p.jsonl", [{"instruction": "q", "chosen": "a", "rejected": "b"}])
    rows, _ = examples("kto", f"data.path={path}", "data.val_size=0")
    assert [(r["completion"], r["label"]) for r in rows] == [("a", True), ("b", False)]


def test_raw_text_txt_lines_and_a_named_column(tmp_path):
    txt = tmp_path / "domain.txt"
    txt.write_text("first document\n\nsecond document\n", encoding="utf-8")
    rows, _ = examples("pt", f"data.path={txt}", "data.val_size=0")
    assert [r["text"] for r in rows] == ["first document", "second document"]  # a line each, blank lines dropped
    path = write_jsonl(tmp_path / "docs.jsonl", [{"body": "one"}, {"body": "two"}])
    rows, _ = examples("pt", f"data.path={path}", "data.val_size=0", "+data.columns.prompt=body")
    assert [r["text"] for r in rows] == ["one", "two"]
    csv = tmp_path / "docs.csv"
    csv.write_text("text\nalpha\nbeta\n", encoding="utf-8")
    assert [r["text"] for r in examples("pt", f"data.path={csv}", "data.val_size=0")[0]] == ["alpha", "beta"]


def test_prompts_for_ppo_from_sft_rows_or_pairs(tmp_path):
    path = write_jsonl(tmp_path / "p.jsonl", [
        {"conversations": [{"from": "human", "value": "q1"}, {"from": "gpt", "value": "a1"}]},
        {"conversations": [{"from": "human", "value": "q2"}, {"from": "gpt", "value": "a2"}]},
    ])
    rows, _ = examples("ppo", f"data.path={path}", "data.val_size=0")
    assert rows == [{"prompt": [{"role": "user", "content": "q1"}]}, {"prompt": [{"role": "user", "content": "q2"}]}]


def test_builtin_data_for_every_stage():
    pairs = letters_pairs(50, 1)
    assert pairs == letters_pairs(50, 1)  # deterministic
    assert all(p["chosen"] != p["rejected"] for p in pairs)
    # the obvious pattern: a rejected answer is never the right one, and letters in it are capitals
    assert all(p["rejected"] == p["rejected"].upper() for p in pairs)
    assert letters_text(3, 1)[0]["text"].count("\n") == 2
    over = ["data=letters", "data.num_train=10", "data.num_eval=4"]
    train, evals = examples("dpo", *over)
    assert (len(train), len(evals)) == (10, 4) and train[0] != evals[0]
    assert len(examples("kto", *over)[0]) == 20  # each pair: a good and a bad answer
    assert len(examples("ppo", *over)[0]) == 10 and len(examples("pt", *over)[1]) == 4


def test_val_size_is_a_seeded_shuffled_split(tmp_path):
    path = write_jsonl(tmp_path / "p.jsonl", [{"instruction": f"q{i}", "chosen": "a", "rejected": "b"}
                                             for i in range(20)])
    train, evals = examples("dpo", f"data.path={path}", "data.val_size=0.2")
    again = examples("dpo", f"data.path={path}", "data.val_size=0.2")
    held = [p["prompt"][0]["content"] for p in evals]
    assert len(held) == 4 and held == [p["prompt"][0]["content"] for p in again[1]]  # the same rows every run
    assert held != ["q16", "q17", "q18", "q19"]  # not the file's tail
    assert {p["prompt"][0]["content"] for p in train} | set(held) == {f"q{i}" for i in range(20)}
    assert len(examples("dpo", f"data.path={path}", "data.val_size=3")[1]) == 3  # a row count
    train, _ = examples("dpo", f"data.path={path}", "data.val_size=0.2", "data.max_samples=5")
    assert len(train) == 5
    with pytest.raises(ConfigError, match=r"data.val_size=20: holds out 20 of the 20 rows .* a count below 20"):
        examples("dpo", f"data.path={path}", "data.val_size=20")
    with pytest.raises(ConfigError, match=r"data.val_size=1.5: a share in \[0, 1\) or a whole count"):
        validate(compose_cfg(["data=alpaca", f"data.path={path}", "data.val_size=1.5"]))
    assert split(list(range(10)), 0.3) == split(list(range(10)), 0.3)


def registry(stage, *names, **extra):
    overrides = [f"{k}={v}" for k, v in extra.items()]
    return compose_cfg([f"stage={stage}", "data=llamafactory", f"data.registry={REGISTRY}",
                        f"data.names=[{','.join(names)}]", *overrides])


def test_num_samples_samples_or_repeats(tmp_path):
    info = json.loads(REGISTRY.read_text())
    info["few"] = {**info["dpo_en_demo"], "num_samples": 5,
                   "file_name": str(REGISTRY.parent / info["dpo_en_demo"]["file_name"])}
    info["many"] = {**info["few"], "num_samples": 30}
    path = tmp_path / "dataset_info.json"
    path.write_text(json.dumps(info))
    cfg = compose_cfg(["stage=dpo", "data=llamafactory", f"data.registry={path}", "data.names=[few]",
                       "data.val_size=0"])
    few = [r["prompt"][0]["content"] for r in load_examples(cfg.data, "dpo")[0]]
    all_rows = [r["prompt"][0]["content"] for r in load_examples(registry("dpo", "dpo_en_demo", **{
        "data.val_size": 0}).data, "dpo")[0]]
    assert len(few) == 5 and len(set(few)) == 5 and few != all_rows[:5]  # a random sample, not the head
    cfg.data.names = ["many"]
    many = [r["prompt"][0]["content"] for r in load_examples(cfg.data, "dpo")[0]]
    assert len(many) == 30 and set(many) == set(all_rows)  # every row, then repeats


def test_registry_folder_split_and_subset(tmp_path):
    data = tmp_path / "data"
    (data / "sets" / "prefs" / "hard").mkdir(parents=True)
    row = {"instruction": "q", "chosen": "a", "rejected": "b"}
    write_jsonl(data / "sets" / "prefs" / "hard" / "train.jsonl", [row] * 3)
    write_jsonl(data / "sets" / "prefs" / "hard" / "test.jsonl", [row] * 2)
    (data / "dataset_info.json").write_text(json.dumps({
        "p": {"file_name": "prefs", "folder": "sets", "subset": "hard", "ranking": True},
        "p_test": {"file_name": "prefs", "folder": "sets", "subset": "hard", "split": "test", "ranking": True},
        "p_dev": {"file_name": "prefs", "folder": "sets", "subset": "hard", "split": "dev", "ranking": True},
        "p_nosub": {"file_name": "prefs", "folder": "sets", "subset": "easy", "ranking": True},
    }))
    cfg = compose_cfg(["stage=rm", "data=llamafactory", f"data.registry={data / 'dataset_info.json'}",
                       "data.names=[p]", "data.val_size=0"])
    assert len(load_examples(cfg.data, "rm")[0]) == 3
    cfg.data.names = ["p_test"]
    assert len(load_examples(cfg.data, "rm")[0]) == 2
    cfg.data.names = ["p_dev"]
    with pytest.raises(ConfigError, match=r"entry 'p_dev': split 'dev' matches no file .* e.g. dev.jsonl"):
        load_examples(cfg.data, "rm")
    cfg.data.names = ["p_nosub"]
    with pytest.raises(ConfigError, match=r"entry 'p_nosub': subset 'easy' is not a sub-folder"):
        load_examples(cfg.data, "rm")


@pytest.mark.parametrize(("name", "message"), [
    ("mllm_demo", "entry 'mllm_demo' has images columns: multimodal data is not supported"),
    ("alpaca_en", "entry 'alpaca_en' is a hub dataset (hf_hub_url=llamafactory/alpaca_en) and runs read local "
                  "files only"),
    ("nope", "entry 'nope' does not exist"),
])
def test_entries_that_cannot_be_read_are_refused_by_name(name, message):
    with pytest.raises(ConfigError) as e:
        check_stage_data(registry("sft", name))
    assert f"data.registry={REGISTRY}: {message}" in str(e.value)


def test_an_eval_objective_needs_an_eval_split(caplog):
    with pytest.raises(ConfigError, match=r"objective=eval_rewards/accuracies: needs an eval split, and "
                                          r"data.val_size=0 holds none out; set data.val_size=0.1"):
        check_stage_data(registry("dpo", "dpo_en_demo", **{"data.val_size": 0}))
    with pytest.raises(ConfigError, match=r"objective=eval_accuracy: needs an eval split.*set data.num_eval=200"):
        check_stage_data(compose_cfg(["stage=rm", "data.num_eval=0"]))
    check_stage_data(compose_cfg(["stage=ppo", "data.num_eval=0", "stage.reward_run=."]))  # reward_mean: no eval
    # eval_loss falls back to the final train loss (training on all rows, as LLaMA-Factory's val_size=0 does): said
    check_stage_data(registry("pt", "c4_demo", **{"data.val_size": 0}))
    assert "objective=eval_loss: data.val_size=0 holds out no eval split" in caplog.text


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


def test_preference_data_is_cached_and_rendered_with_model_template(tiny_dir, tmp_path, caplog):
    """dpo's rows go through the same cache as sft's, and TRL renders them with model.template's template."""
    import logging

    from ftrun.data import build_datasets
    from ftrun.model import load_tokenizer

    cfg = registry("dpo", "dpo_en_demo", **{"data.cache_dir": tmp_path / "cache"})
    tok = load_tokenizer(cfg.model)
    train, evals, report = build_datasets(cfg.data, tok, template="default", stage="dpo")
    assert report.samples == len(train) == 11 and len(evals) == 1
    assert train[0]["chosen"] == [{"role": "assistant", "content": train[0]["chosen"][0]["content"]}]
    # the tokenizer now carries the built-in 'default' template, which TRL's trainers apply
    rendered = tok.apply_chat_template(train[0]["prompt"], tokenize=False, add_generation_prompt=True)
    assert rendered.startswith("Human: Which colour") and rendered.endswith("Assistant: ")
    with caplog.at_level(logging.INFO, logger="ftrun.data"):
        again, _, _ = build_datasets(cfg.data, load_tokenizer(cfg.model), template="default", stage="dpo")
    assert "Data from cache" in caplog.text and again[0] == train[0]
    assert len(list((tmp_path / "cache").iterdir())) == 1
