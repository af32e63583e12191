"""The board in a real headless Chromium: the Train form runs a tiny job and shows its curve and result,
a bad value gets the CLI's own message, a failing run its reason, Chat answers as ftrun.chat does, and a
4-trial sweep fills its trial table as the Optuna study records it.

Needs Debian's ``chromium`` (``.ci/run`` installs it) and the ``playwright`` package (driving that browser,
not Playwright's own download). ``FTRUN_BOARD_SCREENSHOTS=docs/board`` writes the README's screenshots.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import ROOT

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="needs Debian's chromium (apt-get install chromium)"),
]
playwright = pytest.importorskip("playwright.sync_api", reason="needs the playwright package (pip install -e '.[test]')")
expect = playwright.expect
expect.set_options(timeout=60_000)  # events queue behind each other on 2 busy cores

RUN_S = 240_000  # ms a tiny run may take on 2 shared cores (imports and MLflow's first database included)

# a run of seconds: 6 steps on 32 examples, evaluated at steps 3 and 6
TINY = {"max_steps": "6", "batch_size": "4", "data.num_train": "32", "data.num_eval": "8",
        "train.logging_steps": "1", "train.eval_steps": "3", "train.save_steps": "0"}


@pytest.fixture()
def board(tmp_path, monkeypatch, tiny_dir):
    """The board served on a free loopback port, in ``tmp_path`` (runs and mlflow.db go there)."""
    from ftrun.board.app import Board, launch

    monkeypatch.chdir(tmp_path)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    b = Board(mlflow_ui="http://127.0.0.1:5000")
    demo = launch(b, port=port, block=False)
    yield b, f"http://127.0.0.1:{port}"
    for job in b.jobs.values():
        job.stop()
    demo.close()


@pytest.fixture()
def page(board):
    with playwright.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        pg = browser.new_page(viewport={"width": 1400, "height": 1000})
        pg.goto(board[1])
        pg.wait_for_selector("#train-start")
        yield pg
        browser.close()


def shot(page, name: str, tmp_path: Path) -> None:
    out = Path(os.environ.get("FTRUN_BOARD_SCREENSHOTS") or tmp_path / "shots")
    out.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(out / f"{name}.png"), full_page=True)


def fill(page, elem_id: str, value: str) -> None:
    box = page.locator(f"#{elem_id} input, #{elem_id} textarea").first
    box.fill(value)
    box.press("Tab")  # blur: gradio sends the change


def train_id(key: str) -> str:
    return "train-" + key.replace(".", "-")


def test_board_train_chat_sweep(board, page, tmp_path):
    for key, value in TINY.items():
        fill(page, train_id(key), value)
    command = page.locator("#train-command")
    expect(command).to_contain_text("train.save_steps=0")

    # a bad value: refused with the message `ftrun` itself prints, and nothing runs
    fill(page, "train-lr", "-5")
    expect(command).to_contain_text("lr=-5")
    page.click("#train-start")
    status = page.locator("#train-status")
    expect(status).to_contain_text("refused", timeout=60_000)
    assert not (tmp_path / "outputs").exists()  # the page ran nothing (the CLI below makes its run dir)
    cli_run = subprocess.run([sys.executable, "-m", "ftrun", "lr=-5", "max_steps=6"], capture_output=True, text=True,
                             cwd=tmp_path, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert cli_run.returncode == 2, cli_run.stderr
    cli_message = (cli_run.stdout + cli_run.stderr).split("[ERROR] - ")[-1].strip()
    assert cli_message.startswith("invalid configuration:\n  lr=-5: lr must be > 0")
    assert cli_message in status.inner_text()

    # the run: command shown, log streamed, curve and result from the run itself
    fill(page, "train-lr", "0.001")
    expect(command).not_to_contain_text("lr=")
    expect(command).to_contain_text("python -m ftrun max_steps=6 batch_size=4")
    page.click("#train-preview")
    expect(page.locator("#train-preview-box textarea")).to_have_value(
        re.compile(r"--- example 1 .*letters: 32 samples", re.S), timeout=120_000)
    page.click("#train-start")
    expect(status).to_contain_text("finished", timeout=RUN_S)
    run_dir = Path(re.search(r"finished: (\S+)", status.inner_text())[1])
    result = json.loads((run_dir / "result.json").read_text())
    assert result["global_step"] == 6
    expect(page.locator("#train-result textarea")).to_have_value(re.compile(
        rf"^eval_loss = {result['eval_loss']:.4f}, .*6 steps"))
    expect(page.locator("#train-progress-text")).to_contain_text("step 6 (done)")
    expect(page.locator("#train-progress progress")).to_have_attribute("value", "1.000")  # full at the end
    # the curve holds what MLflow recorded: 6 train losses and 2 evaluations
    from mlflow.tracking import MlflowClient

    run_id = (run_dir / "mlflow_run_id").read_text().strip()
    # the store the board's run wrote to (an earlier in-process test may have moved mlflow's global default)
    assert len(MlflowClient(os.environ["MLFLOW_TRACKING_URI"]).get_metric_history(run_id, "train_loss")) == 6
    curve = page.locator("#train-curve")
    expect(curve.locator("canvas, svg").first).to_be_visible()
    expect(page.locator("#train-log textarea")).to_have_value(re.compile(r"Done: eval_loss"))
    shot(page, "train", tmp_path)

    # a run that fails after it starts shows why
    (tmp_path / "bad.json").write_text("this is not json")
    fill(page, "train-extra", "data=alpaca data.path=bad.json")
    page.click("#train-start")
    expect(status).to_contain_text("failed", timeout=RUN_S)
    assert "bad.json" in status.inner_text()
    fill(page, "train-extra", "")

    # chat with the finished run: the page's answer is what ftrun.chat's Chat answers (greedy)
    page.click("#tab-chat-button")
    page.click("#chat-refresh")
    expect(page.locator("#chat-source input")).to_have_value(re.compile(str(run_dir.name)))
    prompt = "把字母倒过来\\nk d m a"
    fill(page, "chat-input", prompt)
    page.click("#chat-send")
    bot = page.locator("#chat-box [data-testid='bot']")
    expect(bot.first).to_be_visible(timeout=120_000)
    expect(page.locator("#chat-note")).to_contain_text("run", timeout=120_000)
    from ftrun.board.chat_tab import load
    from ftrun.chat import Chat, ChatGen

    loaded = load(f"run={run_dir}")
    chat = Chat(loaded.model, loaded.tokenizer, gen=ChatGen(max_new_tokens=64))
    expected = chat.ask("把字母倒过来\nk d m a")
    assert expected
    expect(bot.last).to_have_text(expected)
    # a second turn is answered with the first one as history, as ftrun.chat does
    fill(page, "chat-input", "重复这些字母\\nq r s")
    page.click("#chat-send")
    expect(bot).to_have_count(2, timeout=120_000)
    second = chat.ask("重复这些字母\nq r s")
    expect(bot.last).to_have_text(second)
    shot(page, "chat", tmp_path)

    # export: the command the page would run, for this run
    page.click("#tab-export-button")
    page.click("#export-refresh")
    expect(page.locator("#export-command")).to_contain_text(f"run={run_dir.relative_to(tmp_path)} ")
    fill(page, "export-shard", "1MB")
    expect(page.locator("#export-command")).to_contain_text("export.max_shard_size=1MB")
    page.click("#export-start")
    expect(page.locator("#export-status")).to_contain_text("exported", timeout=RUN_S)
    info = json.loads((run_dir / "export" / "ftrun_export.json").read_text())
    shards = len(list((run_dir / "export").glob("*.safetensors")))
    assert shards > 1  # 1MB shards of the merged 3 MB model
    assert info["max_shard_size"] == "1MB" and info["check"]["max_abs_diff"] <= info["check"]["tolerance"]
    expect(page.locator("#export-status")).to_contain_text(f"{shards} shard(s)")
    shot(page, "export", tmp_path)

    # runs: MLflow's record, linked into the MLflow UI
    page.click("#tab-runs-button")
    page.click("#runs-refresh")
    expect(page.locator("#runs-table")).to_contain_text(result["name"], timeout=60_000)
    expect(page.locator(f"#runs-table a[href*='{run_id}']").first).to_be_attached()
    shot(page, "runs", tmp_path)

    # a 4-trial sweep over lr on the same tiny settings: the table fills as the study records its trials
    page.click("#tab-sweep-button")
    fill(page, "sweep-lr", "tag(log,interval(1e-4,1e-2))")
    fill(page, "sweep-n_trials", "4")
    sweep_cmd = page.locator("#sweep-command")
    expect(sweep_cmd).to_contain_text("python -m ftrun -m max_steps=6")
    expect(sweep_cmd).to_contain_text("hydra.sweeper.n_trials=4")
    page.click("#sweep-start")
    sweep_status = page.locator("#sweep-status")
    expect(sweep_status).to_contain_text("study", timeout=RUN_S)
    rows = page.locator("#sweep-trials .virtual-row")  # gradio's table draws its rows as divs
    expect(rows.first).to_contain_text("RUNNING", timeout=RUN_S)  # live: a trial shows while it trains
    expect(sweep_status).to_contain_text("finished", timeout=3 * RUN_S)
    expect(rows).to_have_count(4)
    import optuna

    storages = list((tmp_path / "outputs" / "sweeps").glob("*/study.db"))
    assert len(storages) == 1
    study = optuna.load_study(study_name=storages[0].parent.name, storage=f"sqlite:///{storages[0]}")
    assert len(study.trials) == 4
    assert storages[0].parent.name in sweep_status.inner_text()
    for t in study.trials:  # each row as the study recorded it, linked to the trial's MLflow run
        expect(rows.nth(t.number)).to_contain_text(t.state.name)
        trial_run = (Path(t.user_attrs["trial_dir"]) / "mlflow_run_id").read_text().strip()
        expect(rows.nth(t.number).locator(f"a[href*='{trial_run}']")).to_be_attached()
    expect(page.locator("#sweep-best")).to_contain_text(f"trial {study.best_trial.number}")
    shot(page, "sweep", tmp_path)

    # Chinese labels
    page.locator("#lang input").click()
    page.get_by_role("option", name="zh").click()
    expect(page.get_by_role("tab", name="训练")).to_be_visible()
    page.click("#tab-train-button")
    expect(page.locator("#train-lr")).to_contain_text("学习率")
    shot(page, "train-zh", tmp_path)


def test_board_stops_a_run_and_an_auto_sweep_and_helps_in_chinese(board, page, tmp_path):
    """Stop on a running run and on a running sweep (sweep=auto, launched from the Sweep tab) ends their process
    groups; MLflow records the run KILLED (or FAILED) and Optuna the trial FAIL with the reason; the Chinese UI
    shows the schema's help texts in Chinese."""
    import optuna
    from mlflow.tracking import MlflowClient

    from ftrun.board.locales import HELP_ZH
    from ftrun.contract import ATTR_FAIL_REASON, PARENT_ID_FILE

    b, _ = board
    client = MlflowClient(os.environ["MLFLOW_TRACKING_URI"])
    for key, value in {**TINY, "max_steps": "3000"}.items():  # long enough to be running when Stop is clicked
        fill(page, train_id(key), value)
    expect(page.locator("#train-command")).to_contain_text("max_steps=3000")
    page.click("#train-start")
    log_box = page.locator("#train-log textarea")
    expect(log_box).to_have_value(re.compile(r"Building trainer"), timeout=RUN_S)
    run_id = re.search(r"MLflow: run \S+ \(([0-9a-f]{32})\)", log_box.input_value())[1]
    page.click("#train-stop")
    status = page.locator("#train-status")
    expect(status).to_contain_text("stopped", timeout=RUN_S)
    with pytest.raises(ProcessLookupError):  # the whole process group is gone
        os.killpg(b.jobs["train"].proc.pid, 0)
    assert client.get_run(run_id).info.status in ("KILLED", "FAILED"), b.jobs["train"].log()

    # sweep=auto from the Sweep tab: the space comes from the priors; stopped while its first trial trains
    page.click("#tab-sweep-button")
    page.locator("#sweep-preset input").click()
    page.get_by_role("option", name="auto", exact=True).click()
    fill(page, "sweep-n_trials", "4")
    sweep_cmd = page.locator("#sweep-command")
    expect(sweep_cmd).to_contain_text("sweep=auto")
    page.click("#sweep-start")
    rows = page.locator("#sweep-trials .virtual-row")
    expect(rows.first).to_contain_text("RUNNING", timeout=RUN_S)
    expect(page.locator("#sweep-log textarea")).to_have_value(re.compile(r"Trial 0 started"), timeout=RUN_S)
    (study_db,) = (tmp_path / "outputs" / "sweeps").glob("*/study.db")
    trial_dir = study_db.parent / "trial_0000"
    page.click("#sweep-stop")
    expect(page.locator("#sweep-status")).to_contain_text("stopped", timeout=RUN_S)
    with pytest.raises(ProcessLookupError):
        os.killpg(b.jobs["sweep"].proc.pid, 0)
    study = optuna.load_study(study_name=study_db.parent.name, storage=f"sqlite:///{study_db}")
    first = study.trials[0]
    assert first.state == optuna.trial.TrialState.FAIL
    assert "signal 15" in first.user_attrs[ATTR_FAIL_REASON]
    assert "lr" in first.params  # searched: the auto space
    parent_id = (study_db.parent / PARENT_ID_FILE).read_text().strip()
    assert client.get_run(parent_id).info.status == "KILLED"
    trial_run = trial_dir / "mlflow_run_id"
    if trial_run.is_file():  # the trial had started its MLflow run: ended with it
        assert client.get_run(trial_run.read_text().strip()).info.status in ("KILLED", "FAILED")
    shot(page, "sweep-stopped", tmp_path)

    # the Chinese UI: labels and the schema's help texts in Chinese
    page.locator("#lang input").click()
    page.get_by_role("option", name="zh").click()
    expect(page.locator("#sweep-n_trials")).to_contain_text(HELP_ZH["hydra.sweeper.n_trials"])
    page.click("#tab-train-button")
    expect(page.locator("#train-lr")).to_contain_text(HELP_ZH["lr"])
    expect(page.locator("#train-rank")).to_contain_text(HELP_ZH["rank"])
    shot(page, "train-zh-stopped", tmp_path)
