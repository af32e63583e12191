"""Sweep tab: the Train tab's settings with some knobs searched, ``python -m ftrun -m ...``, and a live
table of the study's trials read from Optuna."""

from __future__ import annotations

from typing import Any, Dict, List

from ftrun.board import form, jobs

# knobs a range can be given to, with an example of the sweeper's syntax
SEARCHABLE = {
    "lr": "tag(log,interval(1e-4,1e-2))",
    "rank": "choice(8,16,32)",
    "alpha": "choice(16,32,64)",
    "batch_size": "choice(4,8,16)",
    "epochs": "range(1,4)",
    "cutoff_len": "choice(256,512)",
    "method.dropout": "interval(0.0,0.1)",
    "scheduler.warmup_ratio": "interval(0.0,0.1)",
}
# hydra.sweeper settings on the page: (key, widget kind)
SETTINGS = ("n_trials", "n_jobs", "budget_trial_s", "pruner")
PRESET_HELP = "sweep=<preset> (ftrun/conf/sweep/); auto: a space from published priors"


def sweeper_docs() -> Dict[str, str]:
    from ftrun.cli import field_docs
    from sweeper.config import FtrunSweeperConf

    return field_docs(FtrunSweeperConf)


def build(board, train) -> None:
    import gradio as gr

    from ftrun.compose import conf_dir

    board.add(gr.Markdown(board.label("sweep.intro")), "sweep.intro", "value")
    presets = [""] + sorted(p.stem for p in (conf_dir() / "sweep").glob("*.yaml"))
    preset = board.add(gr.Dropdown(presets, value="", label=board.label("sweep.preset"), elem_id="sweep-preset",
                                   info=board.help("sweep.preset", PRESET_HELP)), "sweep.preset")
    board.add(preset, "sweep.preset", "info")
    ranges = _range_boxes(board)
    settings = _settings_row(board)
    inputs = [preset, *ranges.values(), *settings, *train.inputs]
    cmd = board.add(gr.Code(label=board.label("command"), language="shell", interactive=False,
                            elem_id="sweep-command"), "command")
    with gr.Row():
        start = board.add(gr.Button(board.label("launch"), variant="primary", elem_id="sweep-start"), "launch", "value")
        stop = board.add(gr.Button(board.label("stop"), elem_id="sweep-stop"), "stop", "value")
    status = gr.Markdown(elem_id="sweep-status")
    best = gr.Markdown(elem_id="sweep-best")
    table = board.add(gr.Dataframe(headers=jobs.TRIAL_COLUMNS, datatype=["number", "str", "str", "str", "str", "str",
                                                                         "markdown"],
                                   interactive=False, label=board.label("trials"), elem_id="sweep-trials"), "trials")
    log = board.add(gr.Textbox(label=board.label("log"), lines=12, max_lines=12, autoscroll=True,
                               elem_id="sweep-log", interactive=False), "log")

    def show(*vals):
        try:
            fixed, searched, settings = _command_of(vals, train)
        except Exception as e:  # noqa: BLE001 - a half-typed value
            return f"# {e}"
        return form.command(form.run_argv([*fixed, *searched, *settings], multirun=True))

    gr.on([c.change for c in inputs[:len(SEARCHABLE) + 5]], show, inputs, cmd, trigger_mode="always_last",
          concurrency_limit=1, concurrency_id="sweep-form", show_progress="hidden")

    def launch(*vals):
        yield from _launch(board, train, vals, cmd, status, best, table, log)

    start.click(launch, inputs, [cmd, status, best, table, log])
    stop.click(lambda: board.jobs.get("sweep") and board.jobs["sweep"].stop(), None, None)


def _range_boxes(board) -> Dict[str, Any]:
    """One box per searchable knob, four to a row."""
    import gradio as gr

    ranges: Dict[str, Any] = {}
    keys = list(SEARCHABLE)
    for i in range(0, len(keys), 4):
        with gr.Row():
            for k in keys[i:i + 4]:
                ranges[k] = board.add(gr.Textbox(label=board.label(k), placeholder=SEARCHABLE[k],
                                                 info=board.help(k, form.field(k).help),
                                                 elem_id=f"sweep-{k.replace('.', '-')}"), k)
                board.add(ranges[k], k, "info")
    return ranges


def _settings_row(board) -> List[Any]:
    """The hydra.sweeper settings on the page (SETTINGS), with the schema's defaults and help."""
    import gradio as gr

    from sweeper.config import FtrunSweeperConf
    from sweeper.study import PRUNERS

    docs, d = sweeper_docs(), FtrunSweeperConf()

    def setting(cls, key, elem, **kw):  # a hydra.sweeper widget: label and help (the schema's) follow the language
        key = f"hydra.sweeper.{key}"
        comp = cls(label=board.label(key), info=board.help(key, docs[key.split(".")[-1]]), elem_id=elem, **kw)
        board.add(comp, key, "info")
        return board.add(comp, key)

    with gr.Row():
        n_trials = setting(gr.Number, "n_trials", "sweep-n_trials", value=d.n_trials, precision=0)
        n_jobs = setting(gr.Number, "n_jobs", "sweep-n_jobs", value=d.n_jobs, precision=0)
        budget = setting(gr.Textbox, "budget_trial_s", "sweep-budget", value="", placeholder="null")
        pruner = setting(gr.Dropdown, "pruner", "sweep-pruner", choices=list(PRUNERS), value=d.pruner)
    return [n_trials, n_jobs, budget, pruner]


def _command_of(vals, train) -> tuple:
    """(fixed overrides, searched overrides, hydra.sweeper settings) from the page's values."""
    from sweeper.config import FtrunSweeperConf

    d = FtrunSweeperConf()
    keys = list(SEARCHABLE)
    p, rest = vals[0], vals[1:]
    rng = dict(zip(keys, rest[:len(keys)]))
    nt, nj, bud, prn = rest[len(keys):len(keys) + 4]
    values, more = train.values(rest[len(keys) + 4:])
    searched = [f"{k}={v.strip()}" for k, v in rng.items() if v and v.strip()]
    fixed = form.to_overrides(values, more, skip=[k for k, v in rng.items() if v and v.strip()])
    if p:
        fixed.append(f"sweep={p}")
    settings = [f"hydra.sweeper.n_trials={int(nt)}"]
    if nj and int(nj) != d.n_jobs:
        settings.append(f"hydra.sweeper.n_jobs={int(nj)}")
    if bud and bud.strip():
        settings.append(f"hydra.sweeper.budget_trial_s={bud.strip()}")
    if prn and prn != d.pruner:
        settings.append(f"hydra.sweeper.pruner={prn}")
    return fixed, searched, settings


def _launch(board, train, vals, cmd, status, best, table, log):
    """Start the sweep as ``ftrun -m`` (after the checks it would make) and follow it: updates for the page."""
    try:
        fixed, searched, settings = _command_of(vals, train)
    except Exception as e:  # noqa: BLE001 - ConfigError from the extra box
        yield {status: f"**refused**\n```\n{e}\n```"}
        return
    argv = form.run_argv([*fixed, *searched, *settings], multirun=True)
    message = form.check_sweep(fixed, searched, settings)
    if message:
        yield {cmd: form.command(argv), status: f"**refused** (as `ftrun -m` would):\n```\n{message}\n```"}
        return
    board.jobs["sweep"] = job = jobs.Job(argv)
    rows: List[list] = []
    while True:
        ended = job.wait(jobs.POLL_S)
        study = job.study()
        out = {cmd: form.command(argv), log: job.log(), status: "running" + (f": study `{study[0]}`" if study else "")}
        if study:
            rows, best_line, summary = jobs.read_trials(*study, mlflow_ui=board.mlflow_ui,
                                                        tracking_uri=board.tracking_uri)
            out[table] = rows
            out[best] = best_line + (f" · report: `{summary}`" if summary else "")
        if ended:
            done = sum(1 for r in rows if r[1].split(" ")[0] in ("COMPLETE", "PRUNED"))
            out[status] = (f"**finished**: {done} trials in study `{study[0] if study else '?'}`"
                           if job.returncode == 0 else
                           f"**failed** (exit status {job.returncode}):\n```\n{job.failure()}\n```")
        yield out
        if ended:
            return
