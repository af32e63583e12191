"""``python -m ftrun.serve run=RUN_OR_EXPORT_DIR [port=8000] [name=ID] [gen.temperature=0.7]``

An OpenAI-compatible HTTP server for a fine-tuned model, on 127.0.0.1 only:

- ``run=`` is a run directory (base + adapter, as trained), an MLflow run id, or
  a model directory such as an export (``model=`` says the latter explicitly);
  loading is ftrun.runs', as for chat and predict;
- ``GET /v1/models`` lists the one model (its id is ``name=``, default the
  run's name or the directory's);
- ``POST /v1/chat/completions`` answers ``messages`` with the model's chat
  template, as ``ftrun.chat`` does (the conversation must end with a user
  message); ``max_tokens`` (or ``max_completion_tokens``), ``temperature``
  (0 = greedy), ``top_p``, ``stop`` (up to 4 strings, not included in the
  answer), ``seed``, ``stream`` (server-sent events, ending with
  ``data: [DONE]``; ``stream_options.include_usage`` adds a usage chunk);
- a request without ``temperature``/``top_p``/``max_tokens`` gets the server's
  ``gen.*`` settings (greedy by default, unlike OpenAI's temperature 1);
- a malformed request gets a 400 (404 for an unknown model) with an
  OpenAI-style ``{"error": {"message", "type", "param"}}`` body; the server
  keeps serving.

Requests are answered one at a time (one model, one generate at a time);
concurrent requests wait their turn. FastAPI + uvicorn::

    python -m ftrun.serve run=outputs/lora-letters-lr1e-3-r16/2026-01-01_12-00-00 port=8000
    curl -s localhost:8000/v1/chat/completions -H 'content-type: application/json' \\
         -d '{"model": "lora-letters-lr1e-3-r16", "messages": [{"role": "user", "content": "hi"}]}'
"""


import itertools
import json
import logging
import sys
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, List, Literal, Optional, Union

from ftrun.chat import ChatGen
from ftrun.config import ConfigError

log = logging.getLogger("ftrun.serve")

HOST = "127.0.0.1"  # never another interface: the server has no authentication


@dataclass
class ServeGen(ChatGen):
    max_new_tokens: int = 512
    """Default and largest max_tokens of a request."""


@dataclass
class ServeArgs:
    run: Optional[str] = None
    """A run directory or MLflow run id (base + adapter), or a model directory such as an export."""
    model: Optional[str] = None
    """Or, explicitly, a model directory (an export, a base model)."""
    port: int = 8000
    """Port on 127.0.0.1."""
    name: Optional[str] = None
    """The model id clients send and /v1/models lists (default: the run's name or the directory's)."""
    gen: ServeGen = field(default_factory=ServeGen)
    device: str = "auto"
    """cpu, cuda, or auto."""
    dtype: str = "auto"
    """auto (as trained), fp32, bf16 or fp16."""
    tracking_uri: Optional[str] = None
    """MLflow tracking URI, to find an MLflow run id."""
    log_level: str = "info"
    """uvicorn's log level: warning, info, debug."""


# ---------------------------------------------------------------------------
# what is served


def resolve_source(run: Optional[str], model: Optional[str]) -> dict:
    """``run=`` a run, or a model directory (an export) given as run= or model=: the arguments for runs.load."""
    if (run is None) == (model is None):
        raise ConfigError("give run=RUN_DIR_OR_EXPORT_DIR (or an MLflow run id), or model=MODEL_DIR")
    if model is not None:
        return {"model": model}
    p = Path(run).expanduser()
    if p.is_dir() and not (p / "model").is_dir() and p.name != "model" and (
            (p / "config.json").is_file() or (p / "adapter_config.json").is_file()):
        return {"model": run}  # an export or any model directory
    return {"run": run}


def default_name(loaded, source: dict) -> str:
    if loaded.run is not None:
        return str(loaded.run.cfg.get("name") or loaded.run.run_dir.parent.name)
    return Path(source["model"]).expanduser().resolve().name


class StopCriteria:
    """transformers stopping criteria: stop strings in the decoded answer, or the client went away.

    It also counts the prompt and generated tokens for ``usage``.
    """

    def __init__(self, tokenizer, stops: List[str]):
        self.tokenizer, self.stops = tokenizer, [s for s in stops if s]
        self.prompt_tokens: Optional[int] = None
        self.generated = 0
        self.last_token: Optional[int] = None
        self.hit_stop = False
        self.cancelled = False

    def __call__(self, input_ids, scores, **kwargs):
        import torch

        if self.prompt_tokens is None:
            self.prompt_tokens = input_ids.shape[1] - 1  # called after each new token
        self.generated = input_ids.shape[1] - self.prompt_tokens
        self.last_token = int(input_ids[0, -1])
        if self.stops:
            text = self.tokenizer.decode(input_ids[0, self.prompt_tokens:], skip_special_tokens=True)
            self.hit_stop = any(s in text for s in self.stops)
        done = self.hit_stop or self.cancelled
        return torch.full((input_ids.shape[0],), done, dtype=torch.bool, device=input_ids.device)


class StopFilter:
    """Cuts streamed text at the first stop string, holding back what could be the start of one.

    Leading and trailing whitespace of the answer is dropped, as ``Chat.ask`` does, so the
    streamed pieces join to the same text as the answer without streaming."""

    def __init__(self, stops: List[str]):
        self.stops = [s for s in stops if s]
        self.hold = max((len(s) for s in self.stops), default=1) - 1
        self.buffer = ""
        self.stopped = False
        self.started = False

    def feed(self, piece: str) -> str:
        if self.stopped:
            return ""
        self.buffer += piece
        if not self.started:
            self.buffer = self.buffer.lstrip()
            self.started = bool(self.buffer)
        cut = min((i for i in (self.buffer.find(s) for s in self.stops) if i >= 0), default=-1)
        if cut >= 0:
            self.stopped = True
            out, self.buffer = self.buffer[:cut].rstrip(), ""
            return out
        safe = len(self.buffer) - self.hold
        if safe <= 0:
            return ""
        out, self.buffer = self.buffer[:safe], self.buffer[safe:]
        tail = len(out) - len(out.rstrip())  # trailing whitespace waits: it may end the answer
        if tail:
            out, self.buffer = out[:-tail], out[-tail:] + self.buffer
        return out

    def finish(self) -> str:
        out, self.buffer = ("" if self.stopped else self.buffer.rstrip()), ""
        return out


# ---------------------------------------------------------------------------
# the app


def create_app(loaded, model_id: str, defaults: Optional[ServeGen] = None):
    """The FastAPI app serving ``loaded`` (a :class:`ftrun.runs.Loaded`) as ``model_id``."""
    from fastapi import FastAPI, Request
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import JSONResponse, StreamingResponse
    from pydantic import BaseModel, ConfigDict, Field

    from ftrun.chat import Chat
    from ftrun.generate import stop_ids

    defaults = defaults or ServeGen()
    created = int(time.time())
    lock = threading.Lock()  # one generate at a time: one model, and CPU cores are few
    eos = set(stop_ids(loaded.model, loaded.tokenizer))

    class Message(BaseModel):
        model_config = ConfigDict(extra="ignore")
        role: Literal["system", "developer", "user", "assistant"]
        content: Union[str, List[dict]]

        def text(self) -> str:
            if isinstance(self.content, str):
                return self.content
            parts = []
            for p in self.content:
                if p.get("type") != "text" or not isinstance(p.get("text"), str):
                    raise ApiError(400, "only text content parts are supported", "messages")
                parts.append(p["text"])
            return "".join(parts)

    class StreamOptions(BaseModel):
        include_usage: bool = False

    class ChatRequest(BaseModel):
        model_config = ConfigDict(extra="ignore")
        model: str
        messages: List[Message] = Field(min_length=1)
        max_tokens: Optional[int] = Field(None, ge=1)
        max_completion_tokens: Optional[int] = Field(None, ge=1)
        temperature: Optional[float] = Field(None, ge=0, le=2)
        top_p: Optional[float] = Field(None, gt=0, le=1)
        stop: Optional[Union[str, List[str]]] = None
        stream: bool = False
        stream_options: Optional[StreamOptions] = None
        n: int = Field(1, ge=1, le=1)
        seed: Optional[int] = None

    app = FastAPI(title="ftrun.serve", version="1")

    def error(status: int, message: str, param: Optional[str] = None, code: Optional[str] = None):
        kind = "invalid_request_error" if status < 500 else "server_error"
        return JSONResponse({"error": {"message": message, "type": kind, "param": param, "code": code}},
                            status_code=status)

    @app.exception_handler(RequestValidationError)
    async def bad_request(request: Request, exc: RequestValidationError):
        first = exc.errors()[0] if exc.errors() else {}
        if first.get("type") == "json_invalid":
            return error(400, f"the request body is not valid JSON ({first.get('ctx', {}).get('error', '')})")
        where = ".".join(str(x) for x in first.get("loc", ()) if x != "body")
        msg = first.get("msg", "invalid request")
        return error(400, f"{where}: {msg}" if where else msg, where or None)

    @app.exception_handler(ApiError)
    async def api_error(request: Request, exc: ApiError):
        return error(exc.status, exc.message, exc.param, exc.code)

    @app.get("/v1/models")
    def models():
        return {"object": "list", "data": [{"id": model_id, "object": "model", "created": created,
                                            "owned_by": "ftrun"}]}

    def prepare(req: ChatRequest):
        if req.model != model_id:
            raise ApiError(404, f"model '{req.model}' is not served here; this server serves '{model_id}'",
                           "model", "model_not_found")
        msgs = [{"role": "system" if m.role == "developer" else m.role, "content": m.text()} for m in req.messages]
        system = None
        if msgs[0]["role"] == "system":
            system = msgs.pop(0)["content"]
        if not msgs or msgs[-1]["role"] != "user":
            raise ApiError(400, "the last message must be the user's (this server does not continue an "
                                "assistant message)", "messages")
        if any(m["role"] == "system" for m in msgs):
            raise ApiError(400, "a system message may only come first", "messages")
        stops = [req.stop] if isinstance(req.stop, str) else list(req.stop or [])
        if len(stops) > 4:
            raise ApiError(400, "stop: at most 4 sequences", "stop")
        limit = req.max_completion_tokens or req.max_tokens or defaults.max_new_tokens
        if limit > defaults.max_new_tokens:
            raise ApiError(400, f"max_tokens={limit}: this server allows at most {defaults.max_new_tokens} "
                                "(start it with gen.max_new_tokens=N for more)", "max_tokens")
        gen = ChatGen(max_new_tokens=limit,
                      temperature=defaults.temperature if req.temperature is None else req.temperature,
                      top_p=defaults.top_p if req.top_p is None else req.top_p,
                      repetition_penalty=defaults.repetition_penalty)
        chat = Chat(loaded.model, loaded.tokenizer, system=system, gen=gen, keep_history=True)
        chat.turns = msgs[:-1]
        criteria = StopCriteria(loaded.tokenizer, stops)
        return chat, msgs[-1]["content"], criteria, StopFilter(stops)

    def pieces(req: ChatRequest, chat, prompt: str, criteria: StopCriteria) -> Iterator[str]:
        """The answer's text pieces, generated under the lock (seeded when the request asks)."""
        from transformers import StoppingCriteriaList, set_seed

        with lock:
            if req.seed is not None:
                set_seed(req.seed)
            try:
                yield from chat.stream(prompt, stopping_criteria=StoppingCriteriaList([criteria]))
            except ConfigError as e:  # the prompt does not fit the context
                raise ApiError(400, str(e), "messages", "context_length_exceeded") from None
            finally:
                criteria.cancelled = True  # a client that went away stops the generation too

    def finish_reason(criteria: StopCriteria, limit: int) -> str:
        if criteria.hit_stop or criteria.last_token in eos:
            return "stop"
        return "length" if criteria.generated >= limit else "stop"

    def usage(criteria: StopCriteria) -> dict:
        p, c = criteria.prompt_tokens or 0, criteria.generated
        return {"prompt_tokens": p, "completion_tokens": c, "total_tokens": p + c}

    @app.post("/v1/chat/completions")
    def chat_completions(req: ChatRequest):
        chat, prompt, criteria, stop_filter = prepare(req)
        rid = f"chatcmpl-{uuid.uuid4().hex}"
        now = int(time.time())
        if not req.stream:
            text = "".join(stop_filter.feed(p) for p in pieces(req, chat, prompt, criteria)) + stop_filter.finish()
            return {"id": rid, "object": "chat.completion", "created": now, "model": model_id,
                    "choices": [{"index": 0, "message": {"role": "assistant", "content": text},
                                 "finish_reason": finish_reason(criteria, chat.gen.max_new_tokens),
                                 "logprobs": None}],
                    "usage": usage(criteria)}

        gen_pieces = pieces(req, chat, prompt, criteria)
        first = next(gen_pieces, "")  # start now: a prompt too long for the context is a 400, not a broken stream

        def chunk(delta: dict, finish: Optional[str] = None) -> str:
            body = {"id": rid, "object": "chat.completion.chunk", "created": now, "model": model_id,
                    "choices": [{"index": 0, "delta": delta, "finish_reason": finish, "logprobs": None}]}
            return f"data: {json.dumps(body, ensure_ascii=False)}\n\n"

        def events() -> Iterator[str]:
            try:
                yield chunk({"role": "assistant", "content": ""})
                for piece in itertools.chain([first], gen_pieces):
                    out = stop_filter.feed(piece)
                    if out:
                        yield chunk({"content": out})
                rest = stop_filter.finish()
                if rest:
                    yield chunk({"content": rest})
                yield chunk({}, finish_reason(criteria, chat.gen.max_new_tokens))
                if req.stream_options and req.stream_options.include_usage:
                    body = {"id": rid, "object": "chat.completion.chunk", "created": now, "model": model_id,
                            "choices": [], "usage": usage(criteria)}
                    yield f"data: {json.dumps(body)}\n\n"
                yield "data: [DONE]\n\n"
            finally:
                gen_pieces.close()

        return StreamingResponse(events(), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})

    return app


class ApiError(Exception):
    """A request the server refuses, with its HTTP status and OpenAI-style fields."""

    def __init__(self, status: int, message: str, param: Optional[str] = None, code: Optional[str] = None):
        super().__init__(message)
        self.status, self.message, self.param, self.code = status, message, param, code


# ---------------------------------------------------------------------------
# command line


def main(argv=None) -> None:
    import uvicorn

    from ftrun import cli, runs

    args = cli.parse(ServeArgs, argv, __doc__, positional="run")
    if not 0 < args.port < 65536:
        raise ConfigError(f"port={args.port}: give a port between 1 and 65535")
    source = resolve_source(args.run, args.model)
    runs.quiet()
    loaded = runs.load(**source, dtype=args.dtype, device=args.device, tracking_uri=args.tracking_uri)
    model_id = args.name or default_name(loaded, source)
    for note in loaded.notes:
        log.info("%s", note)
    log.info("Serving %s as '%s' on http://%s:%d/v1", loaded.source, model_id, HOST, args.port)
    app = create_app(loaded, model_id, args.gen)
    try:
        uvicorn.run(app, host=HOST, port=args.port, log_level=args.log_level)
    except SystemExit as e:  # uvicorn exits 1 when it cannot bind
        if e.code:
            raise ConfigError(f"port={args.port}: cannot listen on {HOST}:{args.port} (in use?); "
                              "pick another with port=N") from None


if __name__ == "__main__":
    from ftrun.cli import main_guard

    sys.exit(main_guard(main))
