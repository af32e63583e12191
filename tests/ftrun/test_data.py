"""Data formats, the registry, mixing, truncation, caching and every bad-data case (tokenizer only)."""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path

import pytest

from ftrun.config import ConfigError, validate
from ftrun.data import IGNORE_INDEX, build_datasets, encode_rows, read_alpaca
from conftest import compose_cfg

ALPACA = [
    {"instruction": "Reverse the letters", "input": "a b c", "output": "c b a"},
    {"instruction": "把字母倒过来", "input": "x y", "output": "y x", "system": "You are terse."},
    {"instruction": "Count", "input": "", "output": "3", "history": [["hi", "hello"]]},
    {"instruction": "First letter", "input": "q w", "output": "q"},
]
SHAREGPT = [
    {"conversations": [{"from": "human", "value": "Reverse a b"}, {"from": "gpt", "value": "b a"}]},
    {"conversations": [{"from": "system", "value": "简洁"}, {"from": "human", "value": "第一个字母 p q"},
                       {"from": "gpt", "value": "p"}, {"from": "human", "value": "最后一个"},
                       {"from": "gpt", "value": "q"}]},
    {"conversations": [{"from": "human", "value": "Count x y z"}, {"from": "gpt", "value": "3"}]},
]
OPENAI = [
    {"messages": [{"role": "user", "content": "Reverse a b"}, {"role": "assistant", "content": "b a"}]},
    {"messages": [{"role": "system", "content": "terse"}, {"role": "user", "content": "hi"},
                  {"role": "assistant", "content": "hello"}]},
]


@pytest.fixture(scope="module")
def tok(tiny_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_dir)


def write(path: Path, rows, kind=None) -> Path:
    kind = kind or path.suffix
    if kind == ".jsonl":
        path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    elif kind == ".json":
        path.write_text(json.dumps(rows, ensure_ascii=False), encoding="utf-8")
    elif kind in (".csv", ".parquet"):
        import pandas as pd

        df = pd.DataFrame(rows)
        df.to_csv(path, index=False) if kind == ".csv" else df.to_parquet(path)
    return path


def data_cfg(tmp_path, *overrides):
    cfg = compose_cfg(["data=alpaca", "data.format=auto", "data.val_size=0", f"data.cache_dir={tmp_path / 'cache'}",
                       *overrides])
    return cfg.data


def build(tok, tmp_path, *overrides):
    return build_datasets(data_cfg(tmp_path, *overrides), tok)


def answers(ds, tok):
    """Decoded trained spans of every sample."""
    out = []
    for row in ds:
        spans, cur = [], []
        for i, lab in zip(row["input_ids"], row["labels"]):
            if lab != IGNORE_INDEX:
                cur.append(i)
            elif cur:
                spans.append(tok.decode(cur))
                cur = []
        if cur:
            spans.append(tok.decode(cur))
        out.append(spans)
    return out


# ---------------------------------------------------------------------------
# formats


@pytest.mark.parametrize("suffix", [".json", ".jsonl", ".parquet"])
def test_alpaca_file_types(tok, tmp_path, suffix):
    path = write(tmp_path / f"d{suffix}", ALPACA)
    train, evals, report = build(tok, tmp_path, f"data.path={path}")
    assert evals is None and report.samples == 4 and report.skipped == 0
    assert answers(train, tok) == [["c b a<|im_end|>"], ["y x<|im_end|>"], ["hello<|im_end|>", "3<|im_end|>"],
                                   ["q<|im_end|>"]]
    text = tok.decode(train[1]["input_ids"])
    assert text.startswith("<|im_start|>system\nYou are terse.<|im_end|>\n<|im_start|>user\n把字母倒过来\nx y")


def test_csv_without_history(tok, tmp_path):
    rows = [{k: v for k, v in r.items() if k != "history"} for r in ALPACA]
    path = write(tmp_path / "d.csv", rows)
    train, _, report = build(tok, tmp_path, f"data.path={path}")
    assert report.samples == 4
    assert answers(train, tok)[0] == ["c b a<|im_end|>"]


def test_csv_with_json_cells(tok, tmp_path):
    rows = [{**ALPACA[2], "history": json.dumps(ALPACA[2]["history"])}, ALPACA[0]]
    path = write(tmp_path / "h.csv", rows)
    train, _, _ = build(tok, tmp_path, f"data.path={path}")
    assert answers(train, tok) == [["hello<|im_end|>", "3<|im_end|>"], ["c b a<|im_end|>"]]
    chats = [{"conversations": json.dumps(SHAREGPT[0]["conversations"])}]
    path = write(tmp_path / "c.csv", chats)
    train, _, _ = build(tok, tmp_path, f"data.path={path}", "data.format=sharegpt")
    assert answers(train, tok) == [["b a<|im_end|>"]]


def test_folder_of_files(tok, tmp_path):
    folder = tmp_path / "folder"
    folder.mkdir()
    write(folder / "a.jsonl", ALPACA[:2])
    write(folder / "b.json", ALPACA[2:])
    (folder / "README.md").write_text("not data")
    train, _, report = build(tok, tmp_path, f"data.path={folder}")
    assert report.samples == 4


def test_sharegpt_multi_turn_trains_every_answer(tok, tmp_path):
    path = write(tmp_path / "s.json", SHAREGPT)
    train, _, _ = build(tok, tmp_path, f"data.path={path}")  # format auto -> sharegpt
    assert answers(train, tok)[1] == ["p<|im_end|>", "q<|im_end|>"]
    train, _, _ = build(tok, tmp_path, f"data.path={path}", "data.format=sharegpt", "data.mask_history=true")
    assert answers(train, tok)[1] == ["q<|im_end|>"]
    assert tok.decode(train[1]["input_ids"]).startswith("<|im_start|>system\n简洁<|im_end|>")


def test_openai_messages(tok, tmp_path):
    path = write(tmp_path / "o.jsonl", OPENAI)
    train, _, _ = build(tok, tmp_path, f"data.path={path}")
    assert answers(train, tok) == [["b a<|im_end|>"], ["hello<|im_end|>"]]


def test_column_mapping_and_tags(tok, tmp_path):
    rows = [{"prompt": "Reverse a b", "response": "b a"}, {"prompt": "hi", "response": "hello", "sys": "terse"}]
    path = write(tmp_path / "m.jsonl", rows)
    train, _, _ = build(tok, tmp_path, f"data.path={path}",
                        "+data.columns={instruction: prompt, response: response, system: sys}")
    assert answers(train, tok) == [["b a<|im_end|>"], ["hello<|im_end|>"]]
    chats = [{"chat": [{"speaker": "me", "text": "hi"}, {"speaker": "bot", "text": "yo"}]}]
    path = write(tmp_path / "c.json", chats)
    train, _, _ = build(tok, tmp_path, f"data.path={path}", "data.format=sharegpt",
                        "+data.columns={conversations: chat}",
                        "+data.tags={role_tag: speaker, content_tag: text, user_tag: me, assistant_tag: bot}")
    assert answers(train, tok) == [["yo<|im_end|>"]]


def test_val_size_and_max_samples(tok, tmp_path):
    path = write(tmp_path / "d.jsonl", ALPACA * 5)
    train, evals, report = build(tok, tmp_path, f"data.path={path}", "data.val_size=0.2", "data.max_samples=7")
    assert len(evals) == 4 and len(train) == 7 and report.samples == 7


def test_builtin_letters_unchanged(tok, tmp_path):
    cfg = compose_cfg(["data.num_train=16", "data.num_eval=4"]).data
    train, evals, report = build_datasets(cfg, tok)
    assert len(train) == 16 and len(evals) == 4 and report.truncated == 0
    assert tok.decode(train[0]["input_ids"]).startswith("<|im_start|>user\n")


def test_encode_rows_and_read_alpaca(tok):
    ds, report = encode_rows(ALPACA, tok, cutoff_len=64)
    assert len(ds) == 4 and report.samples == 4
    rows = read_alpaca(str(Path(__file__).parents[1] / "data" / "alpaca_tiny.jsonl"))
    assert rows[0]["instruction"] == "Translate to French" and rows[0]["history"] == []


# ---------------------------------------------------------------------------
# registry and mixing


def test_dataset_info_registry(tok, tmp_path):
    write(tmp_path / "alp.json", ALPACA)
    write(tmp_path / "sg.jsonl", SHAREGPT)
    write(tmp_path / "renamed.jsonl", [{"q": "hi", "a": "hello"}] * 3)
    info = {
        "alp": {"file_name": "alp.json"},
        "sg": {"file_name": "sg.jsonl", "formatting": "sharegpt",
               "columns": {"messages": "conversations"},
               "tags": {"role_tag": "from", "content_tag": "value", "user_tag": "human", "assistant_tag": "gpt"}},
        "renamed": {"file_name": "renamed.jsonl", "columns": {"prompt": "q", "response": "a"}, "num_samples": 2},
        "pics": {"file_name": "alp.json", "formatting": "sharegpt", "columns": {"messages": "m", "images": "imgs"}},
        "hub": {"hf_hub_url": "tatsu-lab/alpaca"},
        "dpo": {"file_name": "alp.json", "ranking": True},
    }
    reg = tmp_path / "dataset_info.json"
    reg.write_text(json.dumps(info))
    train, _, report = build(tok, tmp_path, "data.path=null", f"data.registry={reg}", "data.names=[alp,sg,renamed]")
    assert report.samples == 4 + 3 + 2
    for name, why in [("pics", "entry 'pics' has images columns: multimodal"),
                      ("hub", "entry 'hub' is a hub dataset \\(hf_hub_url=tatsu-lab/alpaca\\)"),
                      ("dpo", "entry 'dpo' holds preference pairs \\(pairwise\\), which stage=rm"),
                      ("nope", "entry 'nope' does not exist \\(entries: alp, dpo, hub, pics, renamed, sg\\)")]:
        with pytest.raises(ConfigError, match=why):
            build(tok, tmp_path, "data.path=null", f"data.registry={reg}", f"data.names=[{name}]")


def test_presets_by_name_and_sources(tok, tmp_path, monkeypatch):
    from ftrun.data import registry

    write(tmp_path / "a.jsonl", ALPACA)
    write(tmp_path / "s.json", SHAREGPT)
    conf = tmp_path / "conf"
    conf.mkdir()
    (conf / "mine_a.yaml").write_text(f"name: mine_a\npath: {tmp_path / 'a.jsonl'}\nformat: alpaca\n")
    (conf / "mine_s.yaml").write_text(f"name: mine_s\npath: {tmp_path / 's.json'}\nformat: sharegpt\n")
    monkeypatch.setattr(registry, "CONF_DATA_DIR", conf)
    _, _, report = build(tok, tmp_path, "data.path=null", "data.names=[mine_a,mine_s]")
    assert report.samples == 7
    _, _, report = build(tok, tmp_path, "data.path=null", "data.sources=[{name: mine_a, max_samples: 2}, {name: mine_s}]")
    assert report.samples == 5
    train, _, report = build(tok, tmp_path, "data.path=null", "data.names=[mine_a,mine_s]", "data.mix=interleave",
                             "data.mix_probs=[0.5,0.5]", "data.mix_stop=all_exhausted")
    assert report.samples >= 7
    with pytest.raises(ConfigError, match="'nope' is not a preset"):
        build(tok, tmp_path, "data.path=null", "data.names=[nope]")


@pytest.mark.parametrize(("mix", "share_a"), [("interleave:[0.8,0.2]", 0.8), ("interleave:[0.2,0.8]", 0.2),
                                              ("concat", 0.5)])
def test_mix_ratio_of_two_datasets(tmp_path, mix, share_a):
    """interleave draws each sample from dataset i with probability mix_probs[i].

    300 rows each; interleave stops when the first runs out (about 375 samples). The share of A is
    binomial with sd <= 0.026, so the 0.08 band is 3 sd wide (a false failure rate below 0.3% over
    seeds; MIX_SEED fixes the draw, so the test is also deterministic). Ignoring mix_probs gives 0.5.
    """
    from ftrun.data import load_conversations

    write(tmp_path / "a.jsonl", [{"instruction": f"q{i}", "output": "A"} for i in range(300)])
    write(tmp_path / "b.jsonl", [{"instruction": f"q{i}", "output": "B"} for i in range(300)])
    reg = tmp_path / "dataset_info.json"
    reg.write_text(json.dumps({"a": {"file_name": "a.jsonl"}, "b": {"file_name": "b.jsonl"}}))
    kind, _, probs = mix.partition(":")
    extra = [f"data.mix_probs={probs}"] if probs else []
    cfg = data_cfg(tmp_path, "data.path=null", f"data.registry={reg}", "data.names=[a,b]", f"data.mix={kind}", *extra)
    train, _, _, _ = load_conversations(cfg)
    answers_ = [m[-1]["content"] for m in train["messages"]]
    assert set(answers_) == {"A", "B"}
    assert answers_.count("A") / len(answers_) == pytest.approx(share_a, abs=0.08 if probs else 1e-9)


def test_validate_data_checks():
    cfg = compose_cfg(["data=alpaca", "data.path=/no/such.jsonl"])
    with pytest.raises(ConfigError, match="data.path=/no/such.jsonl: no such file"):
        validate(cfg)
    cfg = compose_cfg(["data.names=[a,b]", "data.mix=interleave", "data.mix_probs=[0.2]"])
    with pytest.raises(ConfigError, match="data.mix_probs=\\[0.2\\]: give one probability per dataset"):
        validate(cfg)
    with pytest.raises(ConfigError, match="(?s)data.format=yaml.*expected one of \\[auto, alpaca, sharegpt\\]"):
        compose_cfg(["data.format=yaml"])  # a fixed set of choices is checked as Hydra composes


# ---------------------------------------------------------------------------
# bad data: errors name file and line or record; skips are counted; strict makes them errors


def test_malformed_jsonl_names_the_line(tok, tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"instruction": "a", "output": "b"}\n\n{"instruction": "a", "output": }\n')
    with pytest.raises(ConfigError, match=f"data.path={path}: line 3 is not valid JSON"):
        build(tok, tmp_path, f"data.path={path}")


def test_binary_bytes_that_are_not_json_either(tok, tmp_path):
    """A file that datasets cannot parse and that is not UTF-8 (bench/faults.py's 'data binary'): the
    message says where the text stops being UTF-8, not a UnicodeDecodeError from the JSON diagnosis."""
    path = tmp_path / "bin.jsonl"
    path.write_bytes(bytes(range(256)))
    with pytest.raises(ConfigError, match=f"data.path={path}: line 2 is not UTF-8 text \\(byte 128\\)"):
        build(tok, tmp_path, f"data.path={path}")


def test_malformed_json_list_names_line_and_column(tok, tmp_path):
    path = tmp_path / "bad.json"
    path.write_text('[\n{"instruction": "a", "output": "b"},\n{"instruction": "a" "output": "b"}\n]')
    with pytest.raises(ConfigError, match=f"data.path={path}: not valid JSON at line 3 column"):
        build(tok, tmp_path, f"data.path={path}")


def test_json_object_instead_of_list(tok, tmp_path):
    path = tmp_path / "obj.json"
    path.write_text('{"data": [{"instruction": "a", "output": "b"}]}')
    with pytest.raises(ConfigError, match="expected a JSON list of records"):
        build(tok, tmp_path, f"data.path={path}")


def test_missing_column_lists_the_columns(tok, tmp_path):
    path = write(tmp_path / "d.jsonl", [{"instruction": "a", "input": "b"}])
    with pytest.raises(ConfigError, match=rf"data.path={path}: has no 'output' column \(columns: instruction, input\)"):
        build(tok, tmp_path, f"data.path={path}", "data.format=alpaca")


def test_undecodable_bytes(tok, tmp_path):
    path = tmp_path / "latin.jsonl"
    path.write_bytes(b'{"instruction": "a", "output": "b"}\n{"instruction": "caf\xe9", "output": "b"}\n')
    with pytest.raises(ConfigError, match=f"data.path={path}: line 2 is not UTF-8 text"):
        build(tok, tmp_path, f"data.path={path}")


def test_empty_file(tok, tmp_path):
    path = tmp_path / "empty.jsonl"
    path.write_text("")
    with pytest.raises(ConfigError, match="the file is empty"):
        build(tok, tmp_path, f"data.path={path}")


BAD_RECORDS = [
    ({"instruction": "a", "output": ""}, "line 2 has an empty or non-string 'output'", ".jsonl"),
    ({"instruction": "a", "output": 5}, "line 2 has an empty or non-string 'output'", ".jsonl"),
    ({"instruction": "a", "output": None}, "line 2 has no 'output' (missing or null)", ".jsonl"),
    ({"instruction": "a"}, "line 2 has no 'output' (missing or null)", ".jsonl"),
    ({"instruction": "a", "output": "b", "history": [["only one"]]}, "line 2 'history' item 0 is not a", ".jsonl"),
    ({"conversations": [{"from": "human", "value": "a"}, {"from": "human", "value": "b"},
                        {"from": "gpt", "value": "c"}]}, "record 1 'conversations' turn 1 is 'human' after 'human'",
     ".json"),
    ({"conversations": [{"from": "human", "value": "a"}, {"from": "gpt", "value": "b"},
                        {"from": "human", "value": "c"}]}, "record 1 'conversations' ends with a human turn", ".json"),
    ({"conversations": [{"from": "gpt", "value": "a"}]}, "record 1 'conversations' turn 0 is 'gpt' after 'start'",
     ".json"),
    ({"conversations": [{"from": "human", "value": "a"}, {"from": "function_call", "value": "{}"}]},
     "record 1 'conversations' turn 1 is a tool turn", ".json"),
    ({"conversations": [{"from": "human", "value": "a"}, {"from": "bot", "value": "b"}]},
     "record 1 'conversations' turn 1 has role 'bot'", ".json"),
    ({"conversations": [{"from": "human", "value": "a"}, {"from": "gpt", "value": "  "}]},
     "record 1 'conversations' turn 1 has an empty assistant answer", ".json"),
]


@pytest.mark.parametrize("bad,why,suffix", BAD_RECORDS)
def test_bad_record_is_skipped_counted_and_strict_errors(tok, tmp_path, caplog, bad, why, suffix):
    good = ALPACA[0] if "instruction" in bad else SHAREGPT[0]
    path = write(tmp_path / f"d{suffix}", [good, bad, good])
    with caplog.at_level(logging.WARNING):
        train, _, report = build(tok, tmp_path, f"data.path={path}")
    assert report.samples == 2 and report.skipped == 1
    assert report.as_metrics("data_train")["data_train_skipped"] == 1
    assert f"{path}: {why}" in caplog.text
    with pytest.raises(ConfigError, match=re.escape(f"data.path={path}: {why}") + ".*data.strict=true"):
        build(tok, tmp_path, f"data.path={path}", "data.strict=true")


def test_every_record_bad_is_an_error(tok, tmp_path):
    path = write(tmp_path / "d.jsonl", [{"instruction": "a", "output": ""}] * 3)
    with pytest.raises(ConfigError, match="no usable records: all 3 were skipped; the first: line 1 has an empty"):
        build(tok, tmp_path, f"data.path={path}")


# ---------------------------------------------------------------------------
# truncation


def test_truncation_keeps_the_answer_and_reports(tok, tmp_path):
    long_prompt = " ".join(["a"] * 300)
    rows = [{"instruction": long_prompt, "output": "b c d"}, ALPACA[0]]
    path = write(tmp_path / "d.jsonl", rows)
    train, _, report = build(tok, tmp_path, f"data.path={path}", "cutoff_len=64")
    assert report.truncated == 1 and report.tokens_dropped > 0 and report.dropped == 0
    assert len(train[0]["input_ids"]) == 64
    assert answers(train, tok)[0] == ["b c d<|im_end|>"]
    assert report.as_metrics("data_train")["data_train_truncated"] == 1
    train, _, report = build(tok, tmp_path, f"data.path={path}", "cutoff_len=64", "data.drop_long=true")
    assert report.dropped == 1 and report.samples == 1 and report.truncated == 0


def test_long_answer_keeps_half_the_budget(tok, tmp_path):
    rows = [{"instruction": "x " * 100, "output": "y " * 200}, ALPACA[0]]
    path = write(tmp_path / "d.jsonl", rows)
    train, _, report = build(tok, tmp_path, f"data.path={path}", "cutoff_len=64")
    labels = train[0]["labels"]
    assert len(labels) == 64 and sum(x != IGNORE_INDEX for x in labels) == 32


def test_cutoff_shorter_than_every_prompt(tok, tmp_path):
    path = write(tmp_path / "d.jsonl", [{"instruction": "word " * 50, "output": "b"}])
    with pytest.raises(ConfigError, match="cutoff_len=8: shorter than every prompt"):
        build(tok, tmp_path, f"data.path={path}", "cutoff_len=8")


# ---------------------------------------------------------------------------
# cache


def test_cache_hits_and_invalidation(tok, tmp_path, monkeypatch):
    import ftrun.data as data

    calls = []
    real = data.encode_dataset
    monkeypatch.setattr(data, "encode_dataset", lambda *a, **k: calls.append(1) or real(*a, **k))
    path = write(tmp_path / "d.jsonl", ALPACA)

    def n_builds(*overrides):
        before = len(calls)
        build(tok, tmp_path, f"data.path={path}", *overrides)
        return len(calls) - before

    assert n_builds() == 1
    assert n_builds() == 0  # cached
    assert n_builds("data.overwrite_cache=true") == 1
    assert n_builds("cutoff_len=128") == 1  # an option changed
    assert n_builds("data.mask_history=true") == 1
    assert n_builds("data.train_on_prompt=true") == 1
    write(path, ALPACA[:3])  # the file's contents changed
    assert n_builds() == 1
    assert n_builds() == 0
    import copy

    other = copy.deepcopy(tok)
    other.chat_template = other.chat_template + "{# another template #}"
    before = len(calls)
    build_datasets(data_cfg(tmp_path, f"data.path={path}"), other)
    assert len(calls) == before + 1
    before = len(calls)
    build_datasets(data_cfg(tmp_path, f"data.path={path}"), copy.deepcopy(tok), template="alpaca")
    assert len(calls) == before + 1


@pytest.mark.parametrize("preset", ["sharegpt", "llamafactory"])
def test_shipped_presets_build(tok, tmp_path, preset):
    cfg = compose_cfg([f"data={preset}", f"data.cache_dir={tmp_path}"])
    validate(cfg)
    train, evals, report = build_datasets(cfg.data, tok)
    assert report.skipped == 0 and len(train) > 200 and len(evals) > 20
    if preset == "llamafactory":  # the registry's hub-only entry is refused by name
        with pytest.raises(ConfigError, match="entry 'alpaca_zh_hub' is a hub dataset"):
            build_datasets(compose_cfg([f"data={preset}", "data.names=[alpaca_zh_hub]"]).data, tok)


def test_num_proc_gives_the_same_result(tok, tmp_path):
    path = write(tmp_path / "d.jsonl", (ALPACA + [{"instruction": "a", "output": ""}]) * 10)
    one, _, r1 = build(tok, tmp_path, f"data.path={path}", "data.num_proc=1")
    two, _, r2 = build(tok, tmp_path, f"data.path={path}", "data.num_proc=2", "data.overwrite_cache=true")
    assert r1.skipped == r2.skipped == 10 and r1.samples == r2.samples == 40
    assert one["input_ids"][:] == two["input_ids"][:] and one["labels"][:] == two["labels"][:]
