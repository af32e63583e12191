"""The routes of ftrun.serve (FastAPI): ``GET /v1/models`` and ``POST /v1/chat/completions``, and the
OpenAI-style 4xx bodies for what they refuse. Requests are :mod:`ftrun.serve.protocol`'s, answers
:mod:`ftrun.serve.generation`'s; FastAPI is imported when the app is built.
"""

import time
from typing import Iterator, Optional

from ftrun.serve.generation import Engine, ServeGen, Turn
from ftrun.serve.protocol import DONE, ApiError, ChatRequest, Reply, model_list, validation_error


def create_app(loaded, model_id: str, defaults: Optional[ServeGen] = None):
    """The FastAPI app serving ``loaded`` (a :class:`ftrun.saved_runs.Loaded`) as ``model_id``."""
    from fastapi import FastAPI, Request
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import JSONResponse, StreamingResponse

    engine = Engine(loaded, model_id, defaults)
    created = int(time.time())
    app = FastAPI(title="ftrun.serve", version="1")

    @app.exception_handler(RequestValidationError)
    async def bad_request(request: Request, exc: RequestValidationError):
        refused = validation_error(exc.errors())
        return JSONResponse(refused.body(), status_code=refused.status)

    @app.exception_handler(ApiError)
    async def api_error(request: Request, exc: ApiError):
        return JSONResponse(exc.body(), status_code=exc.status)

    @app.get("/v1/models")
    def models():
        return model_list(model_id, created)

    @app.post("/v1/chat/completions")
    def chat_completions(req: ChatRequest):
        turn = engine.prepare(req)
        reply = Reply(model_id)
        if not req.stream:
            text = engine.answer(turn)
            return reply.completion(text, engine.finish_reason(turn), engine.usage(turn))
        events = stream_events(engine, turn, reply, req.include_usage)
        return StreamingResponse(events, media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})

    return app


def stream_events(engine: Engine, turn: Turn, reply: Reply, include_usage: bool) -> Iterator[str]:
    """The server-sent events of a streamed answer; generation starts before the first event is sent."""
    pieces = engine.started(turn)

    def events() -> Iterator[str]:
        try:
            yield reply.chunk({"role": "assistant", "content": ""})
            for piece in pieces:
                out = turn.stop_filter.feed(piece)
                if out:
                    yield reply.chunk({"content": out})
            rest = turn.stop_filter.finish()
            if rest:
                yield reply.chunk({"content": rest})
            yield reply.chunk({}, engine.finish_reason(turn))
            if include_usage:
                yield reply.usage_chunk(engine.usage(turn))
            yield DONE
        finally:
            pieces.close()

    return events()
