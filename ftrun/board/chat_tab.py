"""Chat tab: talk to a finished run or an export, streamed and multi-turn (ftrun.chat's Chat, ftrun.saved_runs' loading)."""

from __future__ import annotations

import threading
from typing import Dict, List

from ftrun.board import jobs

_loaded: Dict[str, object] = {}  # chat source -> ftrun.saved_runs.Loaded (one model per source, kept)
_lock = threading.Lock()


def load(source: str):
    """``run=DIR`` or ``model=DIR`` (as ``python -m ftrun.chat`` takes them), loaded once."""
    from ftrun.saved_runs import load as load_model
    from ftrun.saved_runs import quiet

    with _lock:
        if source not in _loaded:
            quiet()
            key, _, value = source.partition("=")
            _loaded[source] = load_model(**{key: value})  # device and dtype as ftrun.chat picks them
        return _loaded[source]


def _text(content) -> str:
    if isinstance(content, str):
        return content
    return "".join(part.get("text", "") for part in content if isinstance(part, dict))


def build(board) -> None:
    import gradio as gr

    from ftrun.chat import ChatArgs, ChatGen
    from ftrun.cli import field_docs

    docs = field_docs(ChatArgs)
    with gr.Row():
        source = board.add(gr.Dropdown([], label=board.label("chat.source"), elem_id="chat-source",
                                       info=f"run=: {docs['run']} model=: {docs['model']}", allow_custom_value=True,
                                       scale=4), "chat.source")
        refresh = board.add(gr.Button(board.label("refresh"), elem_id="chat-refresh", scale=1), "refresh", "value")
    with gr.Row():
        system = board.add(gr.Textbox(label=board.label("chat.system"), info=docs["system"], elem_id="chat-system"),
                           "chat.system")
        max_new = board.add(gr.Number(value=64, precision=0, label=board.label("chat.max_new_tokens"),
                                      info=field_docs(ChatGen)["max_new_tokens"], elem_id="chat-max-new"),
                            "chat.max_new_tokens")
    box = board.add(gr.Chatbot(label=board.label("chat.box"), elem_id="chat-box", height=320), "chat.box")
    with gr.Row():
        message = board.add(gr.Textbox(label=board.label("chat.input"), elem_id="chat-input", scale=4,
                                       placeholder="把字母倒过来\\nk d m a"), "chat.input")
        send = board.add(gr.Button(board.label("chat.send"), variant="primary", elem_id="chat-send", scale=1),
                         "chat.send", "value")
        clear = board.add(gr.Button(board.label("chat.clear"), elem_id="chat-clear", scale=1), "chat.clear", "value")
    note = gr.Markdown(elem_id="chat-note")

    def sources():
        found = jobs.finished_models(board.output_root)
        choices = [(label, src) for label, src in found.items()]
        return gr.update(choices=choices, value=choices[0][1] if choices else None)

    def respond(src, sys_prompt, new_tokens, prompt, history: List[dict]):
        from ftrun.chat import Chat, unescape

        if not src:
            yield history, "", "choose a finished run or an export (Refresh lists them)"
            return
        try:
            loaded = load(src)
        except Exception as e:  # noqa: BLE001 - ConfigError and load errors: say why, keep the page
            yield history, prompt, f"cannot load {src}: {e}"
            return
        prompt = unescape(prompt)
        chat = Chat(loaded.model, loaded.tokenizer, system=sys_prompt or None,
                    gen=ChatGen(max_new_tokens=int(new_tokens or 64)))
        chat.turns = [{"role": m["role"], "content": _text(m["content"])} for m in history]
        shown = history + [{"role": "user", "content": prompt}, {"role": "assistant", "content": ""}]
        answer = ""
        for piece in chat.stream(prompt):
            answer += piece
            shown[-1] = {"role": "assistant", "content": answer}
            yield shown, "", loaded.source
        shown[-1] = {"role": "assistant", "content": answer.strip()}
        yield shown, "", loaded.source

    refresh.click(sources, None, source)
    send.click(respond, [source, system, max_new, message, box], [box, message, note])
    message.submit(respond, [source, system, max_new, message, box], [box, message, note])
    clear.click(lambda: [], None, box)
