"""Export tab: ``python -m ftrun.export run=... export.max_shard_size=... export.dtype=...`` on a finished run
(LoRA merged into the base), checked by the CLI's own parser first, its log followed."""

from __future__ import annotations

import json
import shlex

from ftrun.board import form, jobs


def build(board) -> None:
    import gradio as gr

    from ftrun.cli import field_docs
    from ftrun.export import ExportArgs, ExportSettings

    docs, d = field_docs(ExportSettings), ExportSettings()
    with gr.Row():
        run = board.add(gr.Dropdown([], label=board.label("export.run"), info=field_docs(ExportArgs)["run"],
                                    allow_custom_value=True, elem_id="export-run", scale=4), "export.run")
        refresh = board.add(gr.Button(board.label("refresh"), elem_id="export-refresh", scale=1), "refresh", "value")
    with gr.Row():
        out_dir = board.add(gr.Textbox(label=board.label("export.dir"), info=docs["dir"], elem_id="export-dir"),
                            "export.dir")
        shard = board.add(gr.Textbox(value=d.max_shard_size, label=board.label("export.max_shard_size"),
                                     info=docs["max_shard_size"], elem_id="export-shard"), "export.max_shard_size")
        dtype = board.add(gr.Dropdown(["auto", "fp32", "bf16", "fp16"], value=d.dtype, label=board.label("export.dtype"),
                                      info=docs["dtype"], elem_id="export-dtype"), "export.dtype")
        check = board.add(gr.Checkbox(value=d.check, label=board.label("export.check"), info=docs["check"],
                                      elem_id="export-check"), "export.check")
    cmd = board.add(gr.Code(label=board.label("command"), language="shell", interactive=False,
                            elem_id="export-command"), "command")
    go = board.add(gr.Button(board.label("export.go"), variant="primary", elem_id="export-start"), "export.go", "value")
    status = gr.Markdown(elem_id="export-status")
    log = board.add(gr.Textbox(label=board.label("log"), lines=12, max_lines=12, autoscroll=True,
                               elem_id="export-log", interactive=False), "log")

    def argv_of(run_dir, dir_, shard_size, dt, chk):
        args = [f"run={run_dir or ''}", f"export.max_shard_size={shard_size}", f"export.dtype={dt}"]
        if dir_:
            args.append(f"export.dir={dir_}")
        if not chk:
            args.append("export.check=false")
        return [form.run_argv([])[0], "-m", "ftrun.export", *args]

    def runs():
        found = {label: src for label, src in jobs.finished_models(board.output_root).items() if src.startswith("run=")}
        choices = [(label, src[len("run="):]) for label, src in found.items()]
        return gr.update(choices=choices, value=choices[0][1] if choices else None)

    def show(*vals):
        return form.command(argv_of(*vals))

    def launch(*vals):
        from ftrun import cli
        from ftrun.config import ConfigError

        argv = argv_of(*vals)
        try:  # the CLI's own parser: a bad size or dtype gets its message before anything loads
            args = cli.parse(ExportArgs, argv[3:], "")
            if not args.run:
                raise ConfigError("run=RUN_DIR_OR_MLFLOW_RUN_ID is required (see --help)")
        except ConfigError as e:
            yield {cmd: form.command(argv), status: f"**refused**:\n```\n{e}\n```"}
            return
        board.jobs["export"] = job = jobs.Job(argv)
        while True:
            ended = job.wait(jobs.POLL_S)
            out = {cmd: form.command(argv), log: job.log(), status: "exporting"}
            if ended:
                out[status] = (f"**exported**: {_summary(job.lines)}" if job.returncode == 0 else
                               f"**failed** (exit status {job.returncode}):\n```\n{job.failure()}\n```")
            yield out
            if ended:
                return

    inputs = [run, out_dir, shard, dtype, check]
    gr.on([c.change for c in inputs], show, inputs, cmd, trigger_mode="always_last", concurrency_limit=1,
          concurrency_id="export-form", show_progress="hidden")
    refresh.click(runs, None, run)
    go.click(launch, inputs, [cmd, status, log])


def _summary(lines) -> str:
    """The export's JSON report (the last lines of its output) in one line."""
    text = "\n".join(lines)
    start = text.rfind("\n{")
    try:
        info = json.loads(text[start + 1:] if start >= 0 else text)
    except ValueError:
        return shlex.quote(lines[-1]) if lines else ""
    return f"`{info['dir']}` ({info['dtype']}, {len(info['shards'])} shard(s), {info['total_bytes'] / 1e6:.1f} MB)"
