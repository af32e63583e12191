"""The board's page: a language switch and one tab per file (train, sweep, chat, export, runs).

:class:`Board` holds what every tab shares: where runs are written and tracked,
the MLflow UI's address, the commands running now, and the labelled components
(so the language switch can relabel all of them).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

from ftrun.board.locales import LANGS, help_text, label

@dataclass
class Board:
    lang: str = "en"
    mlflow_ui: Optional[str] = "http://127.0.0.1:5000"
    """Where ``mlflow ui`` serves (links to runs point there)."""
    output_root: Path = Path("outputs")
    """Where runs are written (the config's output_root)."""
    tracking_uri: Optional[str] = None
    """MLflow tracking URI (null: MLFLOW_TRACKING_URI, else MLflow's default ./mlflow.db)."""
    jobs: Dict[str, Any] = field(default_factory=dict)
    labelled: List[Tuple[Any, str, str]] = field(default_factory=list)
    helps: Dict[str, str] = field(default_factory=dict)
    """The English help of each field with a widget (key -> the schema's docstring)."""

    def __post_init__(self):
        import os

        from ftrun.contract import MLFLOW_URI_ENV

        # the runs the board starts read MLFLOW_TRACKING_URI; the board reads the same store, not whatever
        # mlflow's process-wide default happens to be
        if self.tracking_uri is None:
            self.tracking_uri = os.environ.get(MLFLOW_URI_ENV)

    def label(self, key: str) -> str:
        return label(key, self.lang)

    def add(self, component, key: str, attr: str = "label"):
        """Register ``component`` to be relabelled with ``key`` when the language changes."""
        self.labelled.append((component, key, attr))
        return component

    def help(self, key: str, english: str) -> str:
        """The help (``info``) of the widget ``add(..., key, "info")`` registers next: the schema's docstring,
        or its Chinese in the Chinese UI."""
        self.helps[key] = english
        return help_text(key, self.lang, english)

    def relabel(self, lang: str) -> list:
        import gradio as gr

        updates: Dict[int, Dict[str, str]] = {}  # one update per component (its label and its help)
        for comp, key, attr in self.labelled:
            text = help_text(key, lang, self.helps[key]) if attr == "info" else label(key, lang)
            updates.setdefault(id(comp), {})[attr] = text
        return [gr.update(**u) for u in updates.values()]

    def targets(self) -> list:
        """The relabelled components, each once, in :meth:`relabel`'s order."""
        return list({id(c): c for c, _, _ in self.labelled}.values())


def build(board: Board):
    """The page, as a gradio Blocks app (not launched)."""
    import gradio as gr

    from ftrun.board import chat_tab, export_tab, runs_tab, sweep_tab, train_tab

    with gr.Blocks(title="ftrun board") as demo:
        with gr.Row():
            gr.Markdown("## ftrun board")
            lang = gr.Dropdown(list(LANGS), value=board.lang, label="Language / 语言", elem_id="lang", scale=0,
                               min_width=120)
        with gr.Tabs():
            with board.add(gr.Tab(board.label("tab.train"), id="train", elem_id="tab-train"), "tab.train"):
                train = train_tab.build(board)
            with board.add(gr.Tab(board.label("tab.sweep"), id="sweep", elem_id="tab-sweep"), "tab.sweep"):
                sweep_tab.build(board, train)
            with board.add(gr.Tab(board.label("tab.chat"), id="chat", elem_id="tab-chat"), "tab.chat"):
                chat_tab.build(board)
            with board.add(gr.Tab(board.label("tab.export"), id="export", elem_id="tab-export"), "tab.export"):
                export_tab.build(board)
            with board.add(gr.Tab(board.label("tab.runs"), id="runs", elem_id="tab-runs"), "tab.runs"):
                runs_tab.build(board)
        lang.change(board.relabel, lang, board.targets())
    return demo


def launch(board: Board, host: str = "127.0.0.1", port: int = 7860, block: bool = True):
    """Serve the page on ``host:port`` (loopback by default)."""
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # no calls home: the machine may have no network
    demo = build(board)
    demo.queue(default_concurrency_limit=None)
    demo.launch(server_name=host, server_port=port, prevent_thread_lock=not block, quiet=not block,
                footer_links=[])
    return demo
