"""``python -m ftrun.chat run=RUN`` or ``python -m ftrun.chat model=PATH`` [system="..." gen.temperature=0.7]

Talk to a fine-tuned model in the terminal:

- ``run=`` loads base + adapter as the run trained them (a run directory or an
  MLflow run id); ``model=`` loads any model directory, e.g. an export;
- answers stream token by token; the conversation is kept and sent with each
  prompt (the oldest turns are dropped when it outgrows the model's context);
- ``system="..."`` sets a system prompt; in the chat, ``/clear`` forgets the
  conversation, ``/system TEXT`` replaces the system prompt (and clears),
  ``/exit`` (or Ctrl-D) quits, ``/help`` lists these;
- a literal ``\\n`` in a line is a newline, for multi-line prompts
  (``把字母倒过来\\nk d m a``);
- with stdin not a terminal (a pipe or file), it reads one prompt per line and
  writes one answer per line to stdout, nothing else (newlines inside an answer
  are written as ``\\n``; commands write no line; ``history=false`` answers each
  line on its own).

Greedy decoding by default (``gen.temperature=0``); ``gen.temperature=0.7
gen.top_p=0.9`` samples.
"""

from __future__ import annotations

import logging
import sys
import threading
from dataclasses import dataclass, field
from typing import Iterator, List, Optional

from ftrun.config import ConfigError
from ftrun.generate import GenSettings
from ftrun.saved_runs import LoadArgs

log = logging.getLogger("ftrun.chat")

HELP = "/clear forgets the conversation, /system TEXT sets the system prompt, /exit quits; \\n in a line is a newline"


@dataclass
class ChatGen(GenSettings):
    max_new_tokens: int = 256
    """Longest answer, in tokens."""


@dataclass
class ChatArgs(LoadArgs):
    system: Optional[str] = None
    """System prompt."""
    history: bool = True
    """Send the earlier turns with each prompt."""
    gen: ChatGen = field(default_factory=ChatGen)
    seed: int = 42
    """Seed for sampling."""


class Chat:
    """A conversation with one model: the messages so far, and a way to extend them."""

    def __init__(self, model, tokenizer, system: Optional[str] = None, gen: Optional[GenSettings] = None,
                 keep_history: bool = True):
        self.model, self.tokenizer = model, tokenizer
        self.system = system or None
        self.gen = gen or ChatGen()
        self.keep_history = keep_history
        self.turns: List[dict] = []
        cfg = getattr(model, "config", None)
        self.max_positions = getattr(cfg, "max_position_embeddings", None) or 1_000_000

    def clear(self) -> None:
        self.turns = []

    def messages(self, prompt: str) -> List[dict]:
        sys_msg = [{"role": "system", "content": self.system}] if self.system else []
        return sys_msg + (self.turns if self.keep_history else []) + [{"role": "user", "content": prompt}]

    def _input_ids(self, prompt: str):
        """The prompt with as much history as fits in the context (oldest turns dropped first)."""
        budget = self.max_positions - self.gen.max_new_tokens
        while True:
            text = self.tokenizer.apply_chat_template(self.messages(prompt), add_generation_prompt=True, tokenize=False)
            ids = self.tokenizer(text, add_special_tokens=False, return_tensors="pt")["input_ids"]
            if ids.shape[1] <= budget or not (self.keep_history and self.turns):
                break
            self.turns = self.turns[2:]
        if ids.shape[1] > budget:
            raise ConfigError(f"the prompt has {ids.shape[1]} tokens; with gen.max_new_tokens={self.gen.max_new_tokens} "
                              f"it does not fit the model's {self.max_positions} positions")
        return ids

    def stream(self, prompt: str, **generate_kwargs) -> Iterator[str]:
        """Yield the answer to ``prompt`` piece by piece; it joins the history at the end.

        ``generate_kwargs`` go to ``model.generate`` too (ftrun.serve passes its stopping criteria)."""
        import torch
        from transformers import TextIteratorStreamer

        from ftrun.generate import generation_kwargs

        ids = self._input_ids(prompt)
        device = next(self.model.parameters()).device
        streamer = TextIteratorStreamer(self.tokenizer, skip_prompt=True, skip_special_tokens=True)
        kw = {**generation_kwargs(self.gen, self.model, self.tokenizer), **generate_kwargs}
        failure = []

        def work():
            try:
                with torch.no_grad():
                    self.model.generate(input_ids=ids.to(device), attention_mask=torch.ones_like(ids).to(device),
                                        streamer=streamer, **kw)
            except BaseException as e:  # noqa: BLE001 - re-raised in the caller's thread
                failure.append(e)
                streamer.end()

        thread = threading.Thread(target=work, daemon=True)
        thread.start()
        pieces = []
        for piece in streamer:
            pieces.append(piece)
            yield piece
        thread.join()
        if failure:
            raise failure[0]
        answer = "".join(pieces).strip()
        if self.keep_history:
            self.turns += [{"role": "user", "content": prompt}, {"role": "assistant", "content": answer}]

    def ask(self, prompt: str) -> str:
        return "".join(self.stream(prompt)).strip()


def unescape(line: str) -> str:
    """A typed ``\\n`` is a newline (so one line can hold a multi-line prompt)."""
    return line.replace("\\n", "\n")


def command(chat: Chat, line: str, say) -> Optional[bool]:
    """Handle a /command: True = quit, False = handled, None = not a command."""
    word, _, rest = line.strip().partition(" ")
    if word in ("/exit", "/quit"):
        return True
    if word == "/clear":
        chat.clear()
        say("(conversation cleared)")
        return False
    if word == "/system":
        chat.system = unescape(rest.strip()) or None
        chat.clear()
        say(f"(system prompt {'set' if chat.system else 'removed'}; conversation cleared)")
        return False
    if word == "/help":
        say(HELP)
        return False
    return None


def interactive(chat: Chat, source: str, stdin=None, stdout=None, notes=()) -> None:
    stdin, stdout = stdin or sys.stdin, stdout or sys.stdout
    try:
        import readline  # noqa: F401 - line editing and history for input()
    except ImportError:  # pragma: no cover
        pass
    print(f"ftrun chat with {source}", file=stdout)
    for note in notes:
        print(note, file=stdout)
    if chat.system:
        print(f"system: {chat.system}", file=stdout)
    print(HELP, file=stdout, flush=True)
    while True:
        try:
            line = input("User: ")
        except (EOFError, KeyboardInterrupt):
            print(file=stdout)
            break
        if not line.strip():
            continue
        done = command(chat, line, lambda m: print(m, file=stdout, flush=True))
        if done:
            break
        if done is False:
            continue
        print("Assistant: ", end="", file=stdout, flush=True)
        try:
            for piece in chat.stream(unescape(line)):
                print(piece, end="", file=stdout, flush=True)
        except KeyboardInterrupt:
            print(" [interrupted]", end="", file=stdout)
        except ConfigError as e:
            print(f"[{e}]", end="", file=stdout)
        print(file=stdout, flush=True)


def batch(chat: Chat, stdin=None, stdout=None) -> None:
    """One prompt per input line -> one answer per output line."""
    stdin, stdout = stdin or sys.stdin, stdout or sys.stdout
    for raw in stdin:
        line = raw.rstrip("\r\n")
        if not line.strip():
            print(file=stdout, flush=True)
            continue
        done = command(chat, line, lambda m: None)
        if done:
            break
        if done is False:
            continue
        try:
            answer = chat.ask(unescape(line))
        except ConfigError as e:
            log.error("%s", e)
            answer = ""
        print(answer.replace("\r", "").replace("\n", "\\n"), file=stdout, flush=True)


def main(argv=None) -> None:
    from ftrun import cli, saved_runs

    args = cli.parse(ChatArgs, argv, __doc__, positional="run")  # a mistake is named before transformers imports
    from transformers import set_seed

    tty = sys.stdin.isatty()
    if not tty:
        logging.getLogger().setLevel(logging.WARNING)  # stdout carries answers only; stderr stays quiet too
    saved_runs.quiet()
    set_seed(args.seed)
    loaded = saved_runs.load(run=args.run, model=args.model, dtype=args.dtype, device=args.device,
                       tracking_uri=args.tracking_uri)
    chat = Chat(loaded.model, loaded.tokenizer, system=args.system, gen=args.gen, keep_history=args.history)
    if tty:
        interactive(chat, loaded.source, notes=loaded.notes)
    else:
        batch(chat)


if __name__ == "__main__":
    from ftrun.cli import main_guard

    sys.exit(main_guard(main))
