"""serve: the official openai client against ``python -m ftrun.serve`` started on loopback, compared with
greedy answers computed directly (ftrun.generate.generate), streaming and not, stop, max_tokens, concurrent
requests, and malformed requests that get a 4xx while the server keeps serving."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import pytest
from conftest import ROOT
from finished_runs import finished_run

from ftrun.config import ConfigError
from ftrun.export import ExportSettings, export
from ftrun.generate import GenSettings, generate
from ftrun.serve.__main__ import resolve_source
from ftrun.serve.generation import StopFilter

openai = pytest.importorskip("openai")

PROMPTS = ["把字母倒过来\nk d m a", "第一个字母是什么\nq w e r", "一共有几个字母\na b c d e", "把字母重复一遍\nx y"]
MODEL_ID = "letters-lora"
ENV = {**os.environ, "PYTHONIOENCODING": "utf-8", "TOKENIZERS_PARALLELISM": "false"}


def _http(url: str, body: bytes = None):
    """(status, parsed JSON body) of a GET, or of a POST of ``body`` as application/json."""
    req = urllib.request.Request(url, data=body, headers={"content-type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=60) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory, tiny_dir):
    return finished_run(tmp_path_factory, "lora")[0]


@pytest.fixture(scope="module")
def expected(run_dir):
    """Greedy answers to PROMPTS, each asked alone, by ftrun.generate.generate on the run's model."""
    from ftrun.saved_runs import load

    loaded = load(run=str(run_dir), device="cpu")
    return [generate(loaded.model, loaded.tokenizer, [[{"role": "user", "content": p}]],
                     GenSettings(max_new_tokens=24), batch_size=1)[0] for p in PROMPTS]


@pytest.fixture(scope="module")
def server(run_dir, tmp_path_factory):
    """``python -m ftrun.serve run=<run dir>`` on a free loopback port, ready when /v1/models answers."""
    port = _free_port()
    log = tmp_path_factory.mktemp("serve") / "serve.log"
    with open(log, "w") as out:
        proc = subprocess.Popen([sys.executable, "-m", "ftrun.serve", f"run={run_dir}", f"port={port}",
                                 f"name={MODEL_ID}", "gen.max_new_tokens=64", "log_level=warning"],
                                cwd=ROOT, env=ENV, stdout=out, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 300
    try:
        while True:
            if proc.poll() is not None:
                pytest.fail(f"the server exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
            try:
                if _http(f"{base}/v1/models")[0] == 200:
                    break
            except (urllib.error.URLError, ConnectionError):
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"the server did not answer /v1/models within 300 s:\n{log.read_text()[-3000:]}")
            time.sleep(0.2)
        yield base
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=f"{server}/v1", api_key="unused", max_retries=0, timeout=300)


def _ask(client, prompt, **kw):
    kw = {"max_tokens": 24, "temperature": 0, **kw}
    return client.chat.completions.create(model=MODEL_ID, messages=[{"role": "user", "content": prompt}], **kw)


def test_models_lists_the_served_model(client):
    assert [m.id for m in client.models.list().data] == [MODEL_ID]


def test_completion_matches_greedy_generation_with_the_chat_template(client, expected):
    out = _ask(client, PROMPTS[0])
    assert out.choices[0].message.content == expected[0]
    assert out.choices[0].message.role == "assistant"
    assert out.choices[0].finish_reason == "stop"
    assert out.usage.completion_tokens >= 1 and out.usage.prompt_tokens > 5


def test_streaming_yields_pieces_that_join_to_the_answer(client, expected):
    chunks = list(_ask(client, PROMPTS[0], stream=True, stream_options={"include_usage": True}))
    content = [c.choices[0].delta.content for c in chunks if c.choices and c.choices[0].delta.content]
    assert "".join(content) == expected[0]
    assert len(content) >= 2 or len(expected[0].split()) <= 1  # streamed, not one blob
    finals = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finals == ["stop"]
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens >= 1


def test_stop_and_max_tokens(client, expected):
    cuttable = [(p, a) for p, a in zip(PROMPTS, expected) if len(a.split()) >= 2 and a.split()[1] != a.split()[0]]
    assert cuttable, f"no answer of the model is long enough to cut: {expected!r}"
    prompt, answer = cuttable[0]
    stop = answer.split()[1]
    out = _ask(client, prompt, stop=[stop])
    cut = answer[:answer.index(stop)].rstrip()
    assert out.choices[0].message.content == cut
    assert out.choices[0].finish_reason == "stop"
    streamed = "".join(c.choices[0].delta.content or "" for c in _ask(client, prompt, stop=stop, stream=True)
                       if c.choices)
    assert streamed == cut
    short = _ask(client, prompt, max_tokens=1)
    assert short.choices[0].finish_reason == "length"
    assert short.usage.completion_tokens == 1


def test_concurrent_requests_each_get_their_own_answer(client, expected):
    with ThreadPoolExecutor(max_workers=len(PROMPTS)) as pool:
        streamed = pool.submit(lambda: "".join(c.choices[0].delta.content or ""
                                               for c in _ask(client, PROMPTS[0], stream=True) if c.choices))
        answers = list(pool.map(lambda p: _ask(client, p).choices[0].message.content, PROMPTS))
    assert answers == expected
    assert streamed.result() == expected[0]


def test_malformed_requests_get_a_clear_4xx_and_the_server_keeps_serving(server, client, expected):
    url = f"{server}/v1/chat/completions"
    status, body = _http(url, b"{not json")
    assert status == 400 and "not valid JSON" in body["error"]["message"]
    status, body = _http(url, json.dumps({"model": MODEL_ID, "messages": "hello"}).encode())
    assert status == 400 and body["error"]["param"] == "messages"
    with pytest.raises(openai.BadRequestError, match="temperature"):
        _ask(client, PROMPTS[0], temperature=5)
    with pytest.raises(openai.BadRequestError, match="last message must be the user's"):
        client.chat.completions.create(model=MODEL_ID, messages=[{"role": "user", "content": "a"},
                                                                 {"role": "assistant", "content": "b"}])
    with pytest.raises(openai.NotFoundError, match=MODEL_ID):
        client.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "a"}])
    # still serving, with the same answer as before
    assert _ask(client, PROMPTS[1]).choices[0].message.content == expected[1]


def test_seeded_sampling_repeats(client):
    a = _ask(client, PROMPTS[2], temperature=1.0, top_p=0.9, seed=7).choices[0].message.content
    b = _ask(client, PROMPTS[2], temperature=1.0, top_p=0.9, seed=7).choices[0].message.content
    assert a == b


def test_run_or_export_dir_and_bad_paths(run_dir, tmp_path):
    dest = tmp_path / "export"
    export(str(run_dir), ExportSettings(dir=str(dest)))
    assert resolve_source(str(dest), None) == {"model": str(dest)}  # an export is a model directory
    assert resolve_source(str(run_dir), None) == {"run": str(run_dir)}
    with pytest.raises(ConfigError, match="exactly one|give run="):
        resolve_source(None, None)
    out = subprocess.run([sys.executable, "-m", "ftrun.serve", f"run={tmp_path / 'nope'}", "port=1"],
                         capture_output=True, text=True, cwd=ROOT, env=ENV, timeout=300)
    assert out.returncode == 2
    assert "no such directory" in out.stderr and "Traceback" not in out.stderr


def test_stop_filter_holds_back_a_possible_stop_string():
    f = StopFilter(["d k"])
    assert "".join(f.feed(p) for p in [" a", " m", " d", " k", " z"]) + f.finish() == "a m"
    f = StopFilter([])
    assert "".join(f.feed(p) for p in [" a", " m ", " d", "  "]) + f.finish() == "a m  d"
