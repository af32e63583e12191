"""Runs tab: the runs MLflow recorded, newest first, with links into the MLflow UI."""

from __future__ import annotations

import datetime

from ftrun import contract as C
from ftrun.board import jobs

COLUMNS = ["run", "MLflow", "status", "stage", "method", "objective", "started", "run dir"]


def rows(tracking_uri, mlflow_ui, limit: int = 200) -> list:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri)
    experiments = [e.experiment_id for e in client.search_experiments()]
    if not experiments:
        return []
    out = []
    for r in client.search_runs(experiments, order_by=["attributes.start_time DESC"], max_results=limit):
        tags, metrics, params = r.data.tags, r.data.metrics, r.data.params
        obj = params.get("objective")
        value = metrics.get(obj) if obj else None
        started = datetime.datetime.fromtimestamp(r.info.start_time / 1000).strftime("%Y-%m-%d %H:%M:%S")
        out.append([tags.get(C.TAG_RUN_NAME, r.info.run_name),
                    jobs.run_link(mlflow_ui, r.info.run_id, tracking_uri, r.info.experiment_id),
                    r.info.status, tags.get(C.TAG_STAGE, ""), tags.get(C.TAG_METHOD, "sweep" if tags.get(C.TAG_SWEEP) else ""),
                    f"{obj} = {value:.4f}" if value is not None else "", started, tags.get(C.TAG_RUN_DIR, "")])
    return out


def build(board) -> None:
    import gradio as gr

    with gr.Row():
        ui = board.add(gr.Textbox(value=board.mlflow_ui or "", label=board.label("runs.mlflow_ui"), elem_id="runs-ui",
                                  info="start it with: mlflow ui --backend-store-uri <tracking URI>", scale=4),
                       "runs.mlflow_ui")
        refresh = board.add(gr.Button(board.label("refresh"), elem_id="runs-refresh", scale=1), "refresh", "value")
    table = board.add(gr.Dataframe(headers=COLUMNS, datatype=["str", "markdown"] + ["str"] * 6, interactive=False,
                                   label=board.label("runs.table"), elem_id="runs-table"), "runs.table")

    def load(address):
        board.mlflow_ui = address or None
        return rows(board.tracking_uri, board.mlflow_ui)

    refresh.click(load, ui, table)
