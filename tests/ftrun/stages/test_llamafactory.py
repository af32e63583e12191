"""LLaMA-Factory's text demo datasets, each through ``data.registry=<dir>/dataset_info.json data.names=[...]``.

The fixtures in tests/data/llamafactory are written in exactly LLaMA-Factory's
schemas (its data/README and dataset_info.json entries: alpaca, identity,
glaive tool calling, sharegpt preference pairs, KTO messages + label, c4 jsonl,
wiki .txt); their rows are our own and few (12 each, one held out). Each trains
two steps on the tiny model under the stage it is made for, and is refused
under a wrong one before anything loads.
"""

from __future__ import annotations

import json
import math

import pytest
from conftest import ROOT, compose_cfg

from ftrun.config import ConfigError
from ftrun.train import run

REGISTRY = ROOT / "tests" / "data" / "llamafactory" / "dataset_info.json"
QUICK = ["tracking.enabled=false", "max_steps=2", "batch_size=4", "train.eval_steps=0", "train.save_steps=0",
         "train.logging_steps=1", "cutoff_len=128"]
ROWS = 12  # every fixture; val_size=0.1 holds one out

# (dataset, the stage it is made for, a stage that must refuse it, the kind named in the refusal)
DEMOS = [
    ("alpaca_en_demo", "sft", "pt", "supervised"),
    ("alpaca_zh_demo", "sft", "rm", "supervised"),
    ("identity", "sft", "kto", "supervised"),
    ("glaive_toolcall_en_demo", "sft", "dpo", "supervised"),
    ("glaive_toolcall_zh_demo", "sft", "pt", "supervised"),
    ("dpo_en_demo", "rm", "sft", "pairwise"),
    ("dpo_en_demo", "dpo", "pt", "pairwise"),
    ("dpo_zh_demo", "rm", "sft", "pairwise"),
    ("dpo_zh_demo", "dpo", "sft", "pairwise"),
    ("kto_en_demo", "kto", "dpo", "kto"),
    ("c4_demo", "pt", "sft", "text"),
    ("wiki_demo", "pt", "ppo", "text"),
]


def registry_cfg(stage, name, *overrides):
    return compose_cfg([f"stage={stage}", "data=llamafactory", f"data.registry={REGISTRY}", f"data.names=[{name}]",
                        *QUICK, *overrides])


@pytest.mark.parametrize(("name", "stage", "wrong", "kind"), DEMOS, ids=[f"{d[0]}-{d[1]}" for d in DEMOS])
def test_each_demo_trains_under_its_stage(tiny_dir, tmp_path, mlflow_uri, name, stage, wrong, kind):
    extra = ["cutoff_len=512"] if name.startswith("glaive") else []  # tool definitions sit in every prompt
    if stage == "kto":
        extra = ["data.val_size=3"]  # the eval margin needs good and bad answers held out
    objective = run(registry_cfg(stage, name, "tracking.enabled=true", *extra), tmp_path / "run")
    result = json.loads((tmp_path / "run" / "result.json").read_text())
    assert result["global_step"] == 2 and math.isfinite(objective) and (tmp_path / "run" / "model").is_dir()
    import mlflow

    client = mlflow.MlflowClient(mlflow_uri)
    (found,) = client.search_runs([client.get_experiment_by_name("ftrun").experiment_id])
    # the entry's rows reached the trainer: all but the held-out ones (kto: answers; pt: documents)
    assert found.data.metrics["data_train_samples"] == ROWS - (3 if stage == "kto" else 1)
    assert found.data.metrics["objective"] == objective


@pytest.mark.parametrize(("name", "stage", "wrong", "kind"), DEMOS, ids=[f"{d[0]}-{d[1]}" for d in DEMOS])
def test_each_demo_is_refused_under_a_wrong_stage_before_anything_loads(tmp_path, monkeypatch, name, stage, wrong,
                                                                       kind):
    import ftrun.model

    def nothing(*args, **kwargs):
        raise AssertionError("a tokenizer or model was loaded before the data was checked")

    monkeypatch.setattr(ftrun.model, "load_model", nothing)
    monkeypatch.setattr(ftrun.model, "load_tokenizer", nothing)
    extra = ["stage.reward_run=."] if wrong == "ppo" else []
    with pytest.raises(ConfigError) as e:
        run(registry_cfg(wrong, name, *extra), tmp_path / "run")
    message = str(e.value)
    assert f"entry '{name}' holds" in message and f"({kind})" in message
    assert f"stage={stage}" in message.split(";")[0]  # the stages that take it
    assert f"stage={wrong} needs" in message
    assert not (tmp_path / "run").exists()


def test_kto_margin_needs_good_and_bad_answers_held_out(tiny_dir, tmp_path, monkeypatch):
    import ftrun.model

    monkeypatch.setattr(ftrun.model, "load_model", lambda *a, **k: pytest.fail("the model loaded"))
    with pytest.raises(ConfigError, match=r"objective=eval_rewards/margins: the 1 held-out answer\(s\) of "
                                          r"data.val_size=0.1 are all (good|bad).*data.val_size=0.2"):
        run(registry_cfg("kto", "kto_en_demo"), tmp_path / "run")


def test_tool_calls_train_on_the_call_and_the_answer_only(tiny_dir):
    from ftrun.data import IGNORE_INDEX, encode_messages, load_examples, resolve_template
    from ftrun.model import load_tokenizer

    cfg = registry_cfg("sft", "glaive_toolcall_en_demo", "data.val_size=0")
    tok = load_tokenizer(cfg.model)
    row = load_examples(cfg.data, "sft")[0][0]
    roles = [m["role"] for m in row["messages"]]
    assert roles == ["user", "function_call", "observation", "assistant"]

    def trained(tokenizer):
        feat, _ = encode_messages(row["messages"], tokenizer, resolve_template(tokenizer, "auto"), None,
                                  tools=row["tools"])
        text = tokenizer.decode(feat["input_ids"])
        return text, tokenizer.decode([i for i, label in zip(feat["input_ids"], feat["labels"])
                                       if label != IGNORE_INDEX])

    # the tiny tokenizer's template knows no tools: the documented plain format
    text, answer = trained(tok)
    assert "You can call these tools:" in text and '"name": "convert_currency"' in text
    assert "<|im_start|>user\nObservation: {\"converted_amount\": 9.0}" in text
    assert answer == ('{"name": "convert_currency", "arguments": {"amount": 10, "from": "USD", "to": "EUR"}}'
                      "<|im_end|>10 USD is about 9.0 EUR.<|im_end|>")
    # a template that takes tools renders them itself (apply_chat_template(tools=...))
    tok.chat_template = (
        "{% if tools %}<|im_start|>system\nTools: {{ tools | tojson }}<|im_end|>\n{% endif %}"
        "{% for m in messages %}{% if m.tool_calls %}<|im_start|>assistant\n<tool_call>"
        "{{ m.tool_calls[0].function | tojson }}</tool_call><|im_end|>\n"
        "{% else %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endif %}{% endfor %}"
        "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
    text, answer = trained(tok)
    assert 'Tools: [{"type": "function", "function": {"name": "convert_currency"' in text
    assert "<|im_start|>tool\n{\"converted_amount\": 9.0}<|im_end|>" in text  # the observation: a tool turn
    assert answer.startswith("<tool_call>") and answer.endswith("10 USD is about 9.0 EUR.<|im_end|>")
    assert "converted_amount" not in answer and "How much" not in answer


@pytest.mark.parametrize(("rows", "message"), [
    ([{"conversations": [{"from": "human", "value": "q"}, {"from": "function_call", "value": "not json"},
                         {"from": "observation", "value": "{}"}, {"from": "gpt", "value": "a"}], "tools": "[]"}],
     "record 0 'conversations' turn 1 is a function call that is not JSON"),
    ([{"conversations": [{"from": "human", "value": "q"}, {"from": "gpt", "value": "a"}], "tools": "{oops"}],
     "record 0 'tools' is not JSON"),
])
def test_bad_tool_rows_name_file_record_and_fix(tmp_path, monkeypatch, rows, message):
    import ftrun.model

    monkeypatch.setattr(ftrun.model, "load_model", lambda *a, **k: pytest.fail("the model loaded"))
    good = {"conversations": [{"from": "human", "value": "q"}, {"from": "gpt", "value": "a"}], "tools": ""}
    (tmp_path / "tools.json").write_text(json.dumps(rows + [good, good]))
    (tmp_path / "dataset_info.json").write_text(json.dumps({"t": {
        "file_name": "tools.json", "formatting": "sharegpt", "columns": {"messages": "conversations", "tools": "tools"}}}))
    cfg = compose_cfg(["data=llamafactory", f"data.registry={tmp_path / 'dataset_info.json'}", "data.names=[t]",
                       "data.strict=true", "data.val_size=1", *QUICK])
    with pytest.raises(ConfigError) as e:
        run(cfg, tmp_path / "run")
    assert f"data.path={tmp_path / 'tools.json'}: {message}" in str(e.value)


@pytest.mark.slow
def test_chains_from_registry_data(tiny_dir, tmp_path):
    """pt -> sft -> rm -> ppo and sft -> dpo, each step starting from the one before (README: "Chains")."""
    pt = tmp_path / "pt"
    run(registry_cfg("pt", "wiki_demo"), pt)
    sft = tmp_path / "sft"
    run(registry_cfg("sft", "alpaca_en_demo", f"stage.init_run={pt}"), sft)
    rm = tmp_path / "rm"
    run(registry_cfg("rm", "dpo_en_demo", f"stage.init_run={sft}"), rm)
    ppo = tmp_path / "ppo"
    reward = run(registry_cfg("ppo", "dpo_en_demo", f"stage.init_run={sft}", f"stage.reward_run={rm}",
                              "stage.ppo.num_generations=2", "stage.ppo.max_new_tokens=8"), ppo)
    dpo = tmp_path / "dpo"
    accuracy = run(registry_cfg("dpo", "dpo_en_demo", f"stage.init_run={sft}"), dpo)
    assert math.isfinite(reward) and 0 <= accuracy <= 1
    for step in (sft, rm, ppo, dpo):  # each started from the merged weights of the run before
        assert (step / "init_model" / "config.json").is_file()
    for step in (pt, sft, rm, ppo, dpo):
        assert json.loads((step / "result.json").read_text())["global_step"] == 2
