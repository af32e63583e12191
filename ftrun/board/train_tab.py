"""Train tab: the form (built from the schema), the command it runs, and the run's log, curve and result."""

from __future__ import annotations

import html
from dataclasses import dataclass
from typing import Any, Dict, List

from ftrun.board import form, jobs


ORDERED = dict(concurrency_limit=1, concurrency_id="train-form", show_progress="hidden")


@dataclass
class TrainForm:
    keys: List[str]
    inputs: List[Any]
    """The form's components in ``keys`` order, then the extra-overrides box."""

    def values(self, vals) -> tuple:
        return dict(zip(self.keys, vals[:len(self.keys)])), vals[len(self.keys)]


@dataclass
class Panel:
    """What sits under the form: the command, the buttons, and what a run shows."""

    cmd: Any
    start: Any
    stop: Any
    preview: Any
    status: Any
    progress: Any
    plot: Any
    result: Any
    log: Any
    data_box: Any


def widget(board, f: form.Field, value):
    import gradio as gr

    common = dict(label=board.label(f.key), info=board.help(f.key, f.help), elem_id=f"train-{f.key.replace('.', '-')}")
    if f.kind in ("group", "choice"):
        comp = gr.Dropdown(list(f.choices), value=value, **common)
    elif f.kind == "bool":
        comp = gr.Checkbox(value=bool(value), **common)
    elif f.kind in ("int", "float") and f.optional:  # empty is null, which a number box cannot hold
        comp = gr.Textbox(value="" if value is None else str(value), placeholder="null", **common)
    elif f.kind == "int":
        comp = gr.Number(value=value, precision=0, **common)
    elif f.kind == "float":
        comp = gr.Number(value=value, **common)
    else:
        comp = gr.Textbox(value=value, **common)
    board.add(comp, f.key, "info")
    return board.add(comp, f.key)


def build(board) -> TrainForm:
    import gradio as gr

    defaults = form.defaults({})
    tf, comps = form_rows(board, defaults)
    ui = panel(board)
    cmd = ui.cmd

    def show_command(*vals):
        values, more = tf.values(vals)
        try:
            return form.command(form.run_argv(form.to_overrides(values, more)))
        except Exception as e:  # noqa: BLE001 - a half-typed value: the launch reports it properly
            return f"# {e}"

    groups = gr.State({g: defaults[g] for g in form.GROUPS})

    def regroup(before, *vals):
        """A group changed: the knobs the user has not set show what the new preset runs with."""
        values, _ = tf.values(vals)
        moved = form.regroup(before, values)
        return [{g: values[g] for g in form.GROUPS}] + [
            gr.update(value="" if moved[k] is None else moved[k]) if k in moved else gr.update() for k in form.KNOBS]

    for k, c in zip(tf.keys, tf.inputs):
        if k in form.GROUPS:
            c.input(regroup, [groups, *tf.inputs], [groups, *(comps[k] for k in form.KNOBS)], **ORDERED)
    # one listener for every field: while it runs, further changes wait as one, read when it ends
    gr.on([c.change for c in tf.inputs], show_command, tf.inputs, cmd, trigger_mode="always_last", **ORDERED)

    def launch(*vals):
        yield from follow(board, ui, *tf.values(vals))

    ui.start.click(lambda: (gr.update(value=""), gr.update(value="")), None, [ui.result, ui.status]).then(
        launch, tf.inputs, [cmd, ui.status, ui.progress, ui.plot, ui.result, ui.log])
    ui.stop.click(lambda: board.jobs.get("train") and board.jobs["train"].stop(), None, None)

    def data_preview(*vals):
        values, more = tf.values(vals)
        try:
            return preview_text(form.to_overrides(values, more))
        except Exception as e:  # noqa: BLE001 - ConfigError: the CLI's message
            return str(e)

    ui.preview.click(data_preview, tf.inputs, ui.data_box)
    return tf


def form_rows(board, defaults) -> tuple:
    """The form: the groups in a row, the knobs six to a row, then the extra-overrides box."""
    import gradio as gr

    comps: Dict[str, Any] = {}
    with gr.Row():
        for f in form.fields(form.GROUPS):
            comps[f.key] = widget(board, f, defaults[f.key])
    knobs = form.fields(form.KNOBS)
    for i in range(0, len(knobs), 6):
        with gr.Row():
            for f in knobs[i:i + 6]:
                comps[f.key] = widget(board, f, defaults[f.key])
    extra = board.add(gr.Textbox(label=board.label("extra"), elem_id="train-extra",
                                 placeholder="train.gradient_checkpointing=true data.path=my.jsonl"), "extra")
    keys = list(form.TRAIN_KEYS)
    return TrainForm(keys, [comps[k] for k in keys] + [extra]), comps


def panel(board) -> Panel:
    import gradio as gr

    cmd = board.add(gr.Code(label=board.label("command"), language="shell", interactive=False,
                            elem_id="train-command", value=form.command(form.run_argv([]))), "command")
    with gr.Row():
        start = board.add(gr.Button(board.label("launch"), variant="primary", elem_id="train-start"), "launch", "value")
        stop = board.add(gr.Button(board.label("stop"), elem_id="train-stop"), "stop", "value")
        preview = board.add(gr.Button(board.label("preview"), elem_id="train-preview"), "preview", "value")
    status = gr.Markdown(elem_id="train-status")
    progress = gr.HTML(elem_id="train-progress")
    with gr.Row():
        plot = board.add(gr.LinePlot(x="step", y="value", color="series", label=board.label("loss"),
                                     elem_id="train-curve"), "loss")
        result = board.add(gr.Textbox(label=board.label("result"), elem_id="train-result", interactive=False), "result")
    log = board.add(gr.Textbox(label=board.label("log"), lines=14, max_lines=14, autoscroll=True,
                               elem_id="train-log", interactive=False), "log")
    data_box = board.add(gr.Textbox(label=board.label("data_preview"), lines=12, elem_id="train-preview-box",
                                    interactive=False), "data_preview")
    return Panel(cmd, start, stop, preview, status, progress, plot, result, log, data_box)


def follow(board, ui: Panel, values: dict, more: str):
    """Launch the run the form describes and yield the panel's updates until it ends (refused: one update)."""
    import pandas as pd

    cmd, status, progress, plot, result, log = ui.cmd, ui.status, ui.progress, ui.plot, ui.result, ui.log
    try:
        overrides = form.to_overrides(values, more)
    except Exception as e:  # noqa: BLE001 - ConfigError from the extra box
        yield {status: f"**refused**\n```\n{e}\n```"}
        return
    argv = form.run_argv(overrides)
    message = form.check(overrides)
    if message:  # the CLI would refuse it with this message: so does the page, and runs nothing
        yield {cmd: form.command(argv), status: f"**refused** (as `ftrun` would):\n```\n{message}\n```",
               result: "", log: ""}
        return
    board.jobs["train"] = job = jobs.Job(argv)
    uri = tracking_uri(board, overrides)
    total = int(values["max_steps"]) if values.get("max_steps") and int(values["max_steps"]) > 0 else None
    while True:
        ended = job.wait(jobs.POLL_S)
        view = jobs.read_run(job.run_dir(), job.lines, uri)
        rows = [{"step": s, "series": n, "value": v} for s, n, v in view.points]
        out = {cmd: form.command(argv), log: job.log(), plot: pd.DataFrame(rows, columns=["step", "series", "value"]),
               progress: progress_html(view, total, values.get("epochs")),
               status: f"running: `{job.run_dir() or 'starting'}`"}
        if ended:
            if job.returncode == 0 and view.result:
                out[status] = f"**finished**: `{job.run_dir()}`"
                out[result] = jobs.result_text(view.result)
            else:
                reason = jobs.result_text(view.result) if view.result and view.result.get("status") == "diverged" \
                    else job.failure()
                out[status] = f"**failed** (exit status {job.returncode}):\n```\n{reason}\n```"
                out[result] = ""
        yield out
        if ended:
            return


def tracking_uri(board, overrides):
    import os

    from ftrun.contract import MLFLOW_URI_ENV

    cfg = form.compose(overrides)
    return cfg.tracking.uri or board.tracking_uri or os.environ.get(MLFLOW_URI_ENV)


def progress_html(view: jobs.RunView, total, epochs) -> str:
    total = total or (view.total if view.total and view.total > 0 else None)  # the run's own count
    if view.result:
        frac, text = 1.0, f"step {view.step} (done)"
    elif total:
        frac, text = min(1.0, view.step / total), f"step {view.step} / {total}"
    else:
        e = float(epochs or 1)
        frac, text = min(1.0, view.epoch / e), f"step {view.step}, epoch {view.epoch:.2f} / {e:g}"
    return (f'<progress value="{frac:.3f}" max="1" style="width:60%"></progress> '
            f'<span id="train-progress-text">{html.escape(text)}</span>')


def preview_text(overrides, n: int = 3) -> str:
    """A few training examples as the chat template renders them, and the data's length statistics."""
    from ftrun.config import validate
    from ftrun.data.templates import resolve_template
    from ftrun.data_stats import compute, format_stats
    from ftrun.model import load_tokenizer
    from ftrun.saved_runs import row_messages, run_rows

    cfg = form.compose(overrides)
    validate(cfg)
    tokenizer = load_tokenizer(cfg.model)
    tpl = resolve_template(tokenizer, str(cfg.model.template))
    train, _ = run_rows(cfg.data)
    parts = []
    for i, row in enumerate(train[:n]):
        text = tokenizer.apply_chat_template(row_messages(row), tokenize=False)
        parts.append(f"--- example {i + 1} ({tpl.name} template) ---\n{text}")
    parts.append(format_stats(compute(cfg.data, tokenizer, str(cfg.model.template)), tpl.name))
    return "\n".join(parts)
