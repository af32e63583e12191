"""chat: one answer per line through a pipe, and an interactive session through a pseudo-terminal
(streaming, /clear, /exit), against answers computed directly with greedy generation."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from conftest import ROOT
from finished_runs import finished_run

from ftrun.chat import Chat, ChatGen, command, unescape
from ftrun.export import ExportSettings, export
from ftrun.generate import GenSettings, generate

PROMPTS = ["把字母倒过来\nk d m a", "第一个字母是什么\nq w e r", "一共有几个字母\na b c d e"]
ENV = {**os.environ, "PYTHONIOENCODING": "utf-8", "TOKENIZERS_PARALLELISM": "false"}


@pytest.fixture(scope="module")
def exported(tmp_path_factory, tiny_dir):
    run_dir, _ = finished_run(tmp_path_factory, "lora")
    dest = tmp_path_factory.mktemp("chat") / "export"
    export(str(run_dir), ExportSettings(dir=str(dest)))
    return run_dir, dest


@pytest.fixture(scope="module")
def expected(exported):
    """Greedy answers to PROMPTS, each asked alone, by ftrun.generate.generate (no streamer, batch of one)."""
    from ftrun.saved_runs import load

    loaded = load(model=str(exported[1]), device="cpu")
    return [generate(loaded.model, loaded.tokenizer, [[{"role": "user", "content": p}]],
                     GenSettings(max_new_tokens=24), batch_size=1)[0] for p in PROMPTS]


def _lines(prompts):
    return "".join(p.replace("\n", "\\n") + "\n" for p in prompts)


def test_pipe_gives_one_answer_per_line(exported, expected):
    run_dir, _ = exported
    # run= (base + adapter); history=false so each line is answered on its own; commands write no line
    stdin = _lines(PROMPTS[:2]) + "/clear\n" + _lines(PROMPTS[2:]) + "/exit\n" + "never read\n"
    out = subprocess.run([sys.executable, "-m", "ftrun.chat", f"run={run_dir}", "history=false",
                          "gen.max_new_tokens=24"], input=stdin, capture_output=True, text=True, cwd=ROOT,
                         env=ENV, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.splitlines() == expected


def test_pipe_with_the_exported_model_keeps_history_until_clear(exported, expected):
    _, dest = exported
    stdin = _lines([PROMPTS[0]]) + "/clear\n" + _lines([PROMPTS[1]]) + "\n"
    out = subprocess.run([sys.executable, "-m", "ftrun.chat", f"model={dest}", "gen.max_new_tokens=24"],
                         input=stdin, capture_output=True, text=True, cwd=ROOT, env=ENV, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    # after /clear the second prompt is asked without history, so it matches the lone answer;
    # an empty input line gets an empty output line
    assert out.stdout.split("\n") == [expected[0], expected[1], "", ""]


def test_terminal_session_streams_and_obeys_commands(exported, expected):
    pexpect = pytest.importorskip("pexpect")
    _, dest = exported
    child = pexpect.spawn(sys.executable, ["-m", "ftrun.chat", f"model={dest}", "system=You answer letter puzzles.",
                                           "gen.max_new_tokens=24"],
                          cwd=str(ROOT), env=ENV, encoding="utf-8", timeout=300, dimensions=(40, 200))
    try:
        child.expect("ftrun chat with model")
        child.expect("system: You answer letter puzzles.")
        child.expect_exact("User: ")
        child.sendline(PROMPTS[0].replace("\n", "\\n"))
        child.expect(r"Assistant: ([^\r\n]*)\r\n")
        first = child.match.group(1).strip()
        child.expect_exact("User: ")
        child.sendline("/clear")
        child.expect_exact("(conversation cleared)")
        child.expect_exact("User: ")
        child.sendline("/exit")
        child.expect(pexpect.EOF)
    finally:
        child.close()
    assert child.exitstatus == 0
    # a system prompt changes the context, so compare with a direct call that uses it too
    from ftrun.saved_runs import load

    loaded = load(model=str(dest), device="cpu")
    want = generate(loaded.model, loaded.tokenizer, [[{"role": "system", "content": "You answer letter puzzles."},
                                                      {"role": "user", "content": PROMPTS[0]}]],
                    GenSettings(max_new_tokens=24), batch_size=1)[0]
    assert first == want


def test_chat_object_history_streaming_and_context_trimming(exported, expected):
    from ftrun.saved_runs import load

    loaded = load(model=str(exported[1]), device="cpu")
    chat = Chat(loaded.model, loaded.tokenizer, gen=ChatGen(max_new_tokens=24))
    pieces = list(chat.stream(PROMPTS[0]))
    assert "".join(pieces).strip() == expected[0]
    assert len(pieces) >= 2 or len(expected[0].split()) <= 1  # streamed, not one final blob
    assert chat.turns == [{"role": "user", "content": PROMPTS[0]}, {"role": "assistant", "content": expected[0]}]
    assert [m["role"] for m in chat.messages("next")] == ["user", "assistant", "user"]
    chat.system = "sys"
    assert [m["role"] for m in chat.messages("next")] == ["system", "user", "assistant", "user"]
    chat.ask(PROMPTS[1])
    assert len(chat.turns) == 4
    # a context too small for all of it: the oldest turns go first, the new prompt stays
    alone = loaded.tokenizer.apply_chat_template(chat.messages(PROMPTS[2])[:1] + chat.messages(PROMPTS[2])[-1:],
                                                 add_generation_prompt=True, tokenize=False)
    chat.max_positions = 24 + len(loaded.tokenizer(alone, add_special_tokens=False)["input_ids"]) + 2
    chat.ask(PROMPTS[2])
    assert chat.turns[0]["content"] == PROMPTS[2]
    assert command(chat, "/clear", lambda m: None) is False and chat.turns == []
    assert command(chat, "/system be brief", lambda m: None) is False and chat.system == "be brief"
    assert command(chat, "/exit", lambda m: None) is True
    assert command(chat, "hello", lambda m: None) is None
    assert unescape(r"a\nb") == "a\nb"
