"""The engine side of ftrun.serve: a chat request becomes a :class:`Turn` of :class:`ftrun.chat.Chat`
with the server's defaults, generated one at a time (one model; CPU cores are few), cut at stop strings.

Nothing here imports torch at module level.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Iterator, List, Optional

from ftrun.chat import Chat, ChatGen
from ftrun.config import ConfigError
from ftrun.serve.protocol import ApiError, ChatRequest, usage


@dataclass
class ServeGen(ChatGen):
    max_new_tokens: int = 512
    """Default and largest max_tokens of a request."""


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


@dataclass
class Turn:
    """One request's answer in the making: the conversation, its last prompt, and what stops it."""

    chat: Chat
    prompt: str
    criteria: StopCriteria
    stop_filter: StopFilter
    seed: Optional[int] = None


class Engine:
    """One model served as ``model_id``; answers are generated one at a time, under a lock."""

    def __init__(self, loaded, model_id: str, defaults: Optional[ServeGen] = None):
        from ftrun.generate import stop_ids

        self.loaded, self.model_id = loaded, model_id
        self.defaults = defaults or ServeGen()
        self.lock = threading.Lock()
        self.eos = set(stop_ids(loaded.model, loaded.tokenizer))

    def prepare(self, req: ChatRequest) -> Turn:
        """The request as a turn of a chat with the server's ``gen.*`` defaults; refusals are ApiErrors."""
        if req.model != self.model_id:
            raise ApiError(404, f"model '{req.model}' is not served here; this server serves '{self.model_id}'",
                           "model", "model_not_found")
        system, msgs = req.conversation()
        stops = req.stop_strings()
        d = self.defaults
        limit = req.max_completion_tokens or req.max_tokens or d.max_new_tokens
        if limit > d.max_new_tokens:
            raise ApiError(400, f"max_tokens={limit}: this server allows at most {d.max_new_tokens} "
                                "(start it with gen.max_new_tokens=N for more)", "max_tokens")
        gen = ChatGen(max_new_tokens=limit, temperature=d.temperature if req.temperature is None else req.temperature,
                      top_p=d.top_p if req.top_p is None else req.top_p, repetition_penalty=d.repetition_penalty)
        chat = Chat(self.loaded.model, self.loaded.tokenizer, system=system, gen=gen, keep_history=True)
        chat.turns = msgs[:-1]
        tok = self.loaded.tokenizer
        return Turn(chat, msgs[-1]["content"], StopCriteria(tok, stops), StopFilter(stops), req.seed)

    def pieces(self, turn: Turn) -> Iterator[str]:
        """The answer's raw text pieces, generated under the lock (seeded when the request asks)."""
        from transformers import StoppingCriteriaList, set_seed

        with self.lock:
            if turn.seed is not None:
                set_seed(turn.seed)
            try:
                yield from turn.chat.stream(turn.prompt, stopping_criteria=StoppingCriteriaList([turn.criteria]))
            except ConfigError as e:  # the prompt does not fit the context
                raise ApiError(400, str(e), "messages", "context_length_exceeded") from None
            finally:
                turn.criteria.cancelled = True  # a client that went away stops the generation too

    def started(self, turn: Turn) -> Iterator[str]:
        """:meth:`pieces`, begun now: a prompt too long for the context is an ApiError here, not a broken stream."""
        gen = self.pieces(turn)
        first = next(gen, "")

        def rest():
            try:
                yield first
                yield from gen
            finally:
                gen.close()

        return rest()

    def answer(self, turn: Turn) -> str:
        """The whole answer, cut at the first stop string."""
        f = turn.stop_filter
        return "".join(f.feed(p) for p in self.pieces(turn)) + f.finish()

    def finish_reason(self, turn: Turn) -> str:
        c = turn.criteria
        if c.hit_stop or c.last_token in self.eos:
            return "stop"
        return "length" if c.generated >= turn.chat.gen.max_new_tokens else "stop"

    @staticmethod
    def usage(turn: Turn) -> dict:
        return usage(turn.criteria.prompt_tokens or 0, turn.criteria.generated)
