"""predict: metrics on hand-checked strings (English and Chinese), and generation on a real run whose
greedy exact match must agree with the run's teacher-forced eval_exact_match."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from conftest import ROOT
from finished_runs import finished_run

from ftrun.config import ConfigError
from ftrun.generate import GenSettings
from ftrun.predict import PREDICTIONS_FILE, RESULTS_FILE, MixedTokenizer, PredictArgs, main, predict, score

# ---------------------------------------------------------------------------
# metrics, checked by hand


def test_english_scores_by_hand():
    # "a b c d e" vs "a b c d f": 1..4-gram precisions 4/5, 3/4, 2/3, 1/2; same length so no brevity penalty
    # BLEU-4 = 100 * (4/5 * 3/4 * 2/3 * 1/2) ** (1/4) = 100 * 0.2 ** 0.25 = 66.874
    # ROUGE-1 F1 = 4/5 (P = R = 4/5); ROUGE-2 F1 = 3/4; ROUGE-L: LCS 4 of 5 -> 4/5
    m = score(["a b c d e"], ["a b c d f"])
    assert m["predict_exact_match"] == 0
    assert m["predict_bleu4"] == pytest.approx(100 * 0.2 ** 0.25, abs=1e-3)
    assert m["predict_rouge1"] == pytest.approx(80.0)
    assert m["predict_rouge2"] == pytest.approx(75.0)
    assert m["predict_rouge_l"] == pytest.approx(80.0)


def test_chinese_is_scored_by_character():
    # "我爱北京" vs "我爱北京天安门", one token per character: every n-gram of the prediction is in the
    # reference (precisions 4/4, 3/3, 2/2, 1/1), brevity penalty exp(1 - 7/4)
    # -> BLEU-4 = 100 * exp(-0.75) = 47.237
    # ROUGE-1: P 4/4, R 4/7 -> F1 8/11; ROUGE-2: P 3/3, R 3/6 -> F1 2/3; ROUGE-L: LCS 4 -> 8/11
    m = score(["我爱北京"], ["我爱北京天安门"])
    assert m["predict_bleu4"] == pytest.approx(100 * math.exp(-0.75), abs=1e-3)
    assert m["predict_rouge1"] == pytest.approx(800 / 11)
    assert m["predict_rouge2"] == pytest.approx(200 / 3)
    assert m["predict_rouge_l"] == pytest.approx(800 / 11)
    assert m["predict_exact_match"] == 0


def test_exact_match_ignores_surrounding_whitespace_and_averages():
    m = score(["  你好 ", "hello world", "x"], ["你好", "hello  world\n", "y"])
    assert m["predict_exact_match"] == pytest.approx(1 / 3)  # "hello world" != "hello  world" inside
    assert m["predict_samples"] == 3
    perfect = score(["我 爱 你", "the cat sat on the mat"], ["我 爱 你", "the cat sat on the mat"])
    assert perfect["predict_exact_match"] == 1
    assert perfect["predict_bleu4"] == pytest.approx(100.0)
    assert perfect["predict_rouge_l"] == pytest.approx(100.0)


def test_rouge_tokens_split_cjk_characters_and_keep_latin_words():
    assert MixedTokenizer().tokenize("模型 GPT-4 很好，Very good!") == ["模", "型", "gpt", "4", "很", "好", "very", "good"]


def test_score_needs_one_prediction_per_label():
    with pytest.raises(ValueError):
        score(["a"], ["a", "b"])


# ---------------------------------------------------------------------------
# generation on a real run


@pytest.fixture(scope="module")
def lora_run(tmp_path_factory, tiny_dir):
    return finished_run(tmp_path_factory, "lora")


def test_greedy_exact_match_equals_the_runs_teacher_forced_one(lora_run, tmp_path):
    from mlflow import MlflowClient

    run_dir, uri = lora_run
    args = PredictArgs(run=str(run_dir), out=str(tmp_path / "p"), gen=GenSettings(max_new_tokens=16),
                       batch_size=8, tracking_uri=uri)
    metrics = predict(args)
    result = json.loads((run_dir / "result.json").read_text())
    # the run scored argmax-under-teacher-forcing on the same 32 eval rows; greedy decoding gets exactly
    # those right (allow one row for a near-tie that left padding flips)
    assert metrics["predict_samples"] == 32
    assert abs(metrics["predict_exact_match"] - result["eval_exact_match"]) <= 1 / 32 + 1e-9
    rows = [json.loads(line) for line in (tmp_path / "p" / PREDICTIONS_FILE).read_text(encoding="utf-8").splitlines()]
    assert len(rows) == 32 and set(rows[0]) >= {"prompt", "label", "prediction"}
    assert any("\u4e00" <= ch <= "\u9fff" for ch in rows[0]["prompt"])  # the letters task's Chinese instructions
    assert sum(r["label"] == r["prediction"] for r in rows) / 32 == pytest.approx(metrics["predict_exact_match"])
    saved = json.loads((tmp_path / "p" / RESULTS_FILE).read_text())
    assert saved["predict_bleu4"] == pytest.approx(metrics["predict_bleu4"])

    client = MlflowClient(uri)
    run_id = (run_dir / "mlflow_run_id").read_text().strip()
    logged = client.get_run(run_id).data.metrics
    assert logged["predict_exact_match"] == pytest.approx(metrics["predict_exact_match"])
    assert {f.path for f in client.list_artifacts(run_id, "predict")} == {
        f"predict/{PREDICTIONS_FILE}", f"predict/{RESULTS_FILE}"}


def test_cli_with_a_preset_and_data_overrides(lora_run, tmp_path, capsys):
    run_dir, uri = lora_run
    main([str(run_dir), "data=letters", "data.num_eval=5", "gen.max_new_tokens=8", f"out={tmp_path}",
          "mlflow=false"])
    printed = json.loads(capsys.readouterr().out)
    assert printed["predict_samples"] == 5
    assert len((tmp_path / PREDICTIONS_FILE).read_text(encoding="utf-8").splitlines()) == 5


def test_a_plain_model_directory_on_a_data_file(tiny_dir, tmp_path):
    data = ROOT / "tests" / "data" / "alpaca_tiny.jsonl"
    n_rows = sum(1 for line in data.read_text(encoding="utf-8").splitlines() if line.strip())
    metrics = predict(PredictArgs(model=str(tiny_dir), data=str(data), max_samples=3, out=str(tmp_path),
                                  gen=GenSettings(max_new_tokens=4)))
    assert metrics["predict_samples"] == min(3, n_rows)
    assert 0 <= metrics["predict_exact_match"] <= 1


def test_mistakes_are_config_errors(tiny_dir, lora_run):
    with pytest.raises(ConfigError, match="data="):
        predict(PredictArgs(model=str(tiny_dir)))
    with pytest.raises(ConfigError, match="data=nosuch"):
        predict(PredictArgs(run=str(lora_run[0]), data="nosuch"))
    with pytest.raises(ConfigError, match="exactly one"):
        predict(PredictArgs())
