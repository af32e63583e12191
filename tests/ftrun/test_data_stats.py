"""``python -m ftrun.data_stats``: length distributions, truncation counts, recommended cutoff_len, PNG."""

from __future__ import annotations

import json

from ftrun.data_stats import Distribution, main, recommend


def test_distribution_and_recommendation():
    d = Distribution.of(list(range(1, 101)))
    assert (d.p50, d.p90, d.p99, d.max) == (51, 91, 100, 100) and d.mean == 50.5  # conservative: 'higher'
    assert recommend([10] * 199 + [1000]) == 16  # one outlier does not set the cutoff
    assert recommend([300] * 100) == 320
    assert recommend([30, 40, 90]) == 96


def test_stats_command_prints_and_writes_png(tiny_dir, tmp_path, capsys):
    rows = [{"instruction": "把字母倒过来", "input": " ".join("abcdefgh"[: 1 + i % 8]), "output": "x " * (1 + i % 20)}
            for i in range(40)]
    rows.append({"instruction": "bad", "output": ""})  # skipped and counted
    path = tmp_path / "d.jsonl"
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    other = tmp_path / "s.json"
    other.write_text(json.dumps([{"conversations": [{"from": "human", "value": "hi"}, {"from": "gpt", "value": "yo"}]}]
                                * 5))
    reg = tmp_path / "dataset_info.json"
    reg.write_text(json.dumps({"mine": {"file_name": "d.jsonl"}, "chat": {"file_name": "s.json",
                                                                          "formatting": "sharegpt"}}))
    out = tmp_path / "out"
    rc = main(["--out", str(out), "data=alpaca", "data.path=null", f"data.registry={reg}",
               "data.names=[mine,chat]", "cutoff_len=40"])
    assert rc == 0
    text = capsys.readouterr().out
    assert "mine: 40 samples (1 skipped as unusable), template tokenizer" in text
    assert "chat: 5 samples" in text and "all: 45 samples" in text
    for part in ("prompt", "response", "total"):
        assert f"  {part} " in text
    assert "cutoff_len=40 truncates" in text and "recommended cutoff_len=" in text

    stats = json.loads((out / "stats.json").read_text())
    mine = stats["datasets"][0]
    assert mine["samples"] == 40 and mine["skipped"] == 1
    assert mine["total"]["max"] >= mine["total"]["p99"] >= mine["total"]["p90"] >= mine["total"]["p50"]
    assert 0 <= mine["truncated"] <= 40
    assert mine["recommended_cutoff_len"] >= mine["total"]["p99"]
    assert stats["datasets"][1]["truncated"] == 0
    png = (out / "lengths.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000


def test_stats_command_counts_truncation_exactly(tiny_dir, tmp_path, capsys):
    from transformers import AutoTokenizer

    from ftrun.data import encode_rows

    tok = AutoTokenizer.from_pretrained(tiny_dir)
    rows = [{"instruction": "Count", "input": "a " * k, "output": "b " * k} for k in range(1, 31)]
    ds, _ = encode_rows(rows, tok, cutoff_len=10_000)
    totals = [len(x) for x in ds["input_ids"]]
    path = tmp_path / "d.json"
    path.write_text(json.dumps(rows))
    rc = main(["--out", str(tmp_path / "o"), "data=alpaca", f"data.path={path}", "cutoff_len=64"])
    assert rc == 0
    stats = json.loads((tmp_path / "o" / "stats.json").read_text())["datasets"][0]
    assert stats["truncated"] == sum(t > 64 for t in totals)
    assert stats["total"]["max"] == max(totals)


def test_stats_command_reports_config_errors(tmp_path, caplog):
    assert main(["--out", str(tmp_path), "data=alpaca", f"data.path={tmp_path / 'none.jsonl'}"]) == 2
    assert "no such file" in caplog.text


def test_stats_of_preference_data_count_each_answer(tiny_dir, tmp_path, capsys):
    from conftest import ROOT

    reg = ROOT / "tests" / "data" / "llamafactory" / "dataset_info.json"
    common = ["--out", str(tmp_path / "out"), "data=llamafactory", f"data.registry={reg}"]
    assert main([*common, "stage=dpo", "data.names=[dpo_en_demo]"]) == 0
    assert "dpo_en_demo: 24 samples" in capsys.readouterr().out  # 12 pairs: a chosen and a rejected answer each
    assert main([*common, "stage=sft", "data.names=[dpo_en_demo]"]) == 2  # the kind does not fit the stage
    assert main([*common, "stage=pt", "data.names=[c4_demo]"]) == 2
