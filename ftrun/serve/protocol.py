"""The OpenAI chat-completions protocol as ftrun.serve speaks it: the request models (pydantic), the
error a refused request gets, and the bodies of answers, stream chunks and the model list.

Shaped after vLLM's ``entrypoints/openai/protocol.py``: what a request may hold is declared here,
what the model does with it is :mod:`ftrun.serve.generation`'s, the routes are :mod:`ftrun.serve.app`'s.
"""

import json
import time
import uuid
from dataclasses import dataclass, field
from typing import List, Literal, Optional, Tuple, Union

from pydantic import BaseModel, ConfigDict, Field

MAX_STOPS = 4
DONE = "data: [DONE]\n\n"


class ApiError(Exception):
    """A request the server refuses, with its HTTP status and OpenAI-style fields."""

    def __init__(self, status: int, message: str, param: Optional[str] = None, code: Optional[str] = None):
        super().__init__(message)
        self.status, self.message, self.param, self.code = status, message, param, code

    def body(self) -> dict:
        """``{"error": {"message", "type", "param", "code"}}``, as OpenAI answers."""
        kind = "invalid_request_error" if self.status < 500 else "server_error"
        return {"error": {"message": self.message, "type": kind, "param": self.param, "code": self.code}}


def validation_error(errors: list) -> ApiError:
    """The 400 for a body pydantic refused, naming its first error's field."""
    first = errors[0] if errors else {}
    if first.get("type") == "json_invalid":
        return ApiError(400, f"the request body is not valid JSON ({first.get('ctx', {}).get('error', '')})")
    where = ".".join(str(x) for x in first.get("loc", ()) if x != "body")
    msg = first.get("msg", "invalid request")
    return ApiError(400, f"{where}: {msg}" if where else msg, where or None)


class Message(BaseModel):
    model_config = ConfigDict(extra="ignore")
    role: Literal["system", "developer", "user", "assistant"]
    content: Union[str, List[dict]]

    def text(self) -> str:
        """The content as one string (text parts joined); other parts are refused."""
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

    def conversation(self) -> Tuple[Optional[str], List[dict]]:
        """(system prompt, turns): a system (or developer) message may only come first, and the last
        turn must be the user's (this server does not continue an assistant message)."""
        msgs = [{"role": "system" if m.role == "developer" else m.role, "content": m.text()} for m in self.messages]
        system = msgs.pop(0)["content"] if msgs[0]["role"] == "system" else None
        if not msgs or msgs[-1]["role"] != "user":
            raise ApiError(400, "the last message must be the user's (this server does not continue an "
                                "assistant message)", "messages")
        if any(m["role"] == "system" for m in msgs):
            raise ApiError(400, "a system message may only come first", "messages")
        return system, msgs

    def stop_strings(self) -> List[str]:
        stops = [self.stop] if isinstance(self.stop, str) else list(self.stop or [])
        if len(stops) > MAX_STOPS:
            raise ApiError(400, f"stop: at most {MAX_STOPS} sequences", "stop")
        return stops

    @property
    def include_usage(self) -> bool:
        return bool(self.stream_options and self.stream_options.include_usage)


def model_list(model_id: str, created: int) -> dict:
    return {"object": "list", "data": [{"id": model_id, "object": "model", "created": created, "owned_by": "ftrun"}]}


def usage(prompt_tokens: int, completion_tokens: int) -> dict:
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens}


@dataclass
class Reply:
    """One response's id, time and model, and its bodies: a whole completion or stream events."""

    model: str
    id: str = field(default_factory=lambda: f"chatcmpl-{uuid.uuid4().hex}")
    created: int = field(default_factory=lambda: int(time.time()))

    def completion(self, text: str, finish_reason: str, usage: dict) -> dict:
        return {"id": self.id, "object": "chat.completion", "created": self.created, "model": self.model,
                "choices": [{"index": 0, "message": {"role": "assistant", "content": text},
                             "finish_reason": finish_reason, "logprobs": None}],
                "usage": usage}

    def chunk(self, delta: dict, finish_reason: Optional[str] = None) -> str:
        """A server-sent event with one choice's delta."""
        return self._event({"choices": [{"index": 0, "delta": delta, "finish_reason": finish_reason,
                                         "logprobs": None}]})

    def usage_chunk(self, usage: dict) -> str:
        """The last event before ``[DONE]`` with ``stream_options.include_usage``: no choices, the usage."""
        return self._event({"choices": [], "usage": usage})

    def _event(self, fields: dict) -> str:
        body = {"id": self.id, "object": "chat.completion.chunk", "created": self.created, "model": self.model,
                **fields}
        return f"data: {json.dumps(body, ensure_ascii=False)}\n\n"
