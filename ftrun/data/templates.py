"""Chat templates: how a conversation becomes text, and which of it is trained on.

:func:`resolve_template` returns a template with one job, :meth:`segments`:
split a conversation into consecutive pieces of text, each either prompt
(not trained) or an assistant turn (trained). Pieces are tokenized one by one
and concatenated, so the label mask starts and ends exactly at a piece border.

* ``auto`` with a tokenizer that has a chat template: that template,
  through ``apply_chat_template``. The prompt of assistant turn k is the rendering
  of the turns before it with ``add_generation_prompt=True``; the turn is what the
  rendering with it adds after that, up to and including EOS. Templates that
  render earlier turns differently once later turns exist (e.g. ones that strip
  reasoning) fall back to training the last turn only, with a warning.
* Built-in templates for tokenizers without one: ``default``, ``alpaca``,
  ``chatml``, ``qwen``, ``llama3``, ``mistral``, ``glm4``. ``auto`` picks one from
  the tokenizer's special tokens. Choosing one explicitly for a tokenizer that has
  its own template is allowed, with a warning; the tokenizer then gets the
  built-in's Jinja version, so the saved model chats the way it was trained.

Reasoning templates (``qwen3``) know their thinking markers. With
``model.enable_thinking=true`` (the default) an answer's ``<think>...</think>``
part is trained on, and an answer without one gets an empty one in front; with
``false`` the thinking part is dropped and the empty one goes into the prompt,
untrained, as LLaMA-Factory's ReasoningTemplate does. A tokenizer's own chat
template gets ``enable_thinking`` as a variable (Qwen3's reads it).

Tool calls (a ``tools`` column, function-call and observation turns) are
rendered as :mod:`ftrun.data.tools` describes: through the tokenizer's own
template when it takes ``tools``, else in a documented plain format.

Every assistant turn ends with the template's stop token (EOS by default); a
system prompt on a template that has no place for one is an error, not dropped.
With ``model.train_turn_suffix=true`` the trained part goes on to what the
template puts after the stop token (ChatML's newline after ``<|im_end|>``),
as LLaMA-Factory's templates train it.
"""

from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass
from typing import Dict, List, Optional, Tuple

from ftrun.config import ConfigError
from ftrun.data.tools import has_tools, hf_messages, hf_tools, plain_messages, template_takes_tools

log = logging.getLogger(__name__)

Segment = Tuple[str, bool]  # (text, trained)


class SystemNotSupported(ValueError):
    """The template has no place for a system prompt."""


@dataclass(frozen=True)
class Builtin:
    """A template written as format strings; ``{content}``, ``{bos}``, ``{eos}`` are filled in."""

    name: str
    user: str
    """A user turn."""
    header: str
    """What opens an assistant turn (the generation prompt)."""
    system: str = ""
    """A system prompt (empty: the template has none)."""
    prefix: str = ""
    """Text before everything (e.g. the BOS token)."""
    stop: str = "{eos}"
    """What ends an assistant turn; trained on."""
    separator: str = ""
    """Text after an assistant turn's stop token; trained on only with model.train_turn_suffix."""
    default_system: str = ""
    """System prompt used when a sample has none."""
    vocab_marker: Optional[str] = None
    """A special token whose presence makes ``auto`` pick this template."""
    thought: Tuple[str, str] = ("", "")
    """Reasoning templates: what opens and closes the thinking part of an answer."""


BUILTINS: Dict[str, Builtin] = {
    t.name: t
    for t in [
        Builtin("default", system="System: {content}\n", user="Human: {content}\n", header="Assistant: ",
                separator="\n"),
        Builtin("alpaca", system="{content}\n\n", user="### Instruction:\n{content}\n\n", header="### Response:\n",
                separator="\n\n",
                default_system="Below is an instruction that describes a task. "
                               "Write a response that appropriately completes the request."),
        Builtin("chatml", system="<|im_start|>system\n{content}<|im_end|>\n",
                user="<|im_start|>user\n{content}<|im_end|>\n", header="<|im_start|>assistant\n",
                stop="<|im_end|>", separator="\n", vocab_marker="<|im_start|>"),
        Builtin("qwen", system="<|im_start|>system\n{content}<|im_end|>\n",
                user="<|im_start|>user\n{content}<|im_end|>\n", header="<|im_start|>assistant\n",
                stop="<|im_end|>", separator="\n",
                default_system="You are Qwen, created by Alibaba Cloud. You are a helpful assistant."),
        Builtin("llama3", prefix="<|begin_of_text|>",
                system="<|start_header_id|>system<|end_header_id|>\n\n{content}<|eot_id|>",
                user="<|start_header_id|>user<|end_header_id|>\n\n{content}<|eot_id|>",
                header="<|start_header_id|>assistant<|end_header_id|>\n\n", stop="<|eot_id|>",
                vocab_marker="<|start_header_id|>"),
        Builtin("qwen3", system="<|im_start|>system\n{content}<|im_end|>\n",
                user="<|im_start|>user\n{content}<|im_end|>\n", header="<|im_start|>assistant\n",
                stop="<|im_end|>", separator="\n", thought=("<think>\n", "\n</think>\n\n")),
        Builtin("mistral", prefix="{bos}", user="[INST] {content}[/INST]", header="", system="",
                vocab_marker="[INST]"),
        Builtin("glm4", prefix="[gMASK]<sop>", system="<|system|>\n{content}", user="<|user|>\n{content}",
                header="<|assistant|>\n", vocab_marker="[gMASK]"),
    ]
}
TEMPLATE_NAMES = ("auto", *BUILTINS)


class Template:
    """Base: splits conversations into (text, trained) segments for one tokenizer."""

    name: str = ""
    supports_system: bool = True
    stop_token_id: Optional[int] = None

    def segments(self, messages: List[Dict[str, str]], mask_history: bool = False, tools: str = "") -> List[Segment]:
        """(text, trained) pieces; ``tools`` (JSON) and tool turns are rendered as :mod:`ftrun.data.tools` says."""
        raise NotImplementedError

    def check_system(self, messages) -> None:
        if not self.supports_system and messages and messages[0]["role"] == "system":
            raise SystemNotSupported(f"the chat template '{self.name}' has no system prompt")

    def key(self) -> str:
        return self.name


def _fill(text: str, tokenizer) -> str:
    return text.replace("{bos}", tokenizer.bos_token or "").replace("{eos}", tokenizer.eos_token or "")


class BuiltinTemplate(Template):
    def __init__(self, spec: Builtin, tokenizer):
        self.spec = spec
        self.name = spec.name
        self.supports_system = bool(spec.system)
        fill = lambda s: _fill(s, tokenizer)  # noqa: E731
        self.prefix, self.system, self.user = fill(spec.prefix), fill(spec.system), fill(spec.user)
        self.header, self.stop, self.separator = fill(spec.header), fill(spec.stop), fill(spec.separator)
        self.default_system = spec.default_system
        self.thought = spec.thought
        self.thinking = bool(getattr(tokenizer, "_ftrun_thinking", True))
        self.turn_suffix = bool(getattr(tokenizer, "_ftrun_turn_suffix", False))
        stop_ids = tokenizer(self.stop, add_special_tokens=False)["input_ids"] if self.stop else []
        if len(stop_ids) == 1:
            self.stop_token_id = stop_ids[0]
        else:
            self.stop_token_id = tokenizer.eos_token_id
            log.warning("model.template=%s: its stop text %r is not one token of this tokenizer; "
                        "every assistant turn gets EOS (%s) appended instead", spec.name, self.stop,
                        tokenizer.eos_token)
            self.stop = ""

    def segments(self, messages, mask_history=False, tools=""):
        if has_tools(messages, tools):
            messages = plain_messages(messages, tools)
        self.check_system(messages)
        system = self.default_system
        turns = messages
        if messages and messages[0]["role"] == "system":
            system, turns = messages[0]["content"], messages[1:]
        prompt = self.prefix + (self.system.replace("{content}", system) if system and self.system else "")
        segs: List[Segment] = []
        for m in turns:
            if m["role"] == "user":
                prompt += self.user.replace("{content}", m["content"])
            else:
                header, content = self._thinking(m["content"])
                segs.append((prompt + header, False))
                if self.turn_suffix:  # as LLaMA-Factory's templates: the separator is part of the answer
                    segs.append((content + self.stop + self.separator, True))
                    prompt = ""
                else:
                    segs.append((content + self.stop, True))
                    prompt = self.separator
        return segs

    def _thinking(self, content: str) -> Tuple[str, str]:
        """(generation prompt, trained answer) with the thinking part kept or dropped (model.enable_thinking)."""
        opening, closing = self.thought
        if not opening:
            return self.header, content
        empty = opening + closing
        has = opening.strip() in content and closing.strip() in content
        if not self.thinking:
            if has:
                pattern = re.escape(opening.strip()) + ".*?" + re.escape(closing.strip())
                content = re.sub(pattern, "", content, flags=re.DOTALL).lstrip("\n")
            return self.header + empty, content
        return self.header, content if has else empty + content

    def key(self) -> str:
        return (self.name + ("" if self.thinking or not self.thought[0] else ":no-thinking")
                + (":turn-suffix" if self.turn_suffix else ""))

    def to_jinja(self) -> str:
        """This template in Jinja, for the tokenizer that is saved with the model."""
        q = json.dumps

        def part(fmt: str, var: str) -> str:
            before, _, after = fmt.partition("{content}")
            return f"{{{{ {q(before)} + {var} + {q(after)} }}}}"

        sys_part = part(self.system, "system") if self.system else ""
        return (
            f"{{{{ {q(self.prefix)} }}}}"
            f"{{% set system = {q(self.default_system)} %}}"
            "{% set turns = messages %}"
            "{% if messages and messages[0]['role'] == 'system' %}"
            "{% set system = messages[0]['content'] %}{% set turns = messages[1:] %}{% endif %}"
            + (f"{{% if system %}}{sys_part}{{% endif %}}" if sys_part else
               f"{{% if system %}}{{{{ raise_exception('the {self.name} template has no system prompt') }}}}{{% endif %}}")
            + "{% for m in turns %}"
            f"{{% if m['role'] == 'user' %}}{part(self.user, 'm.content')}"
            f"{{% else %}}{{{{ {q(self.header)} + m.content + {q(self.stop)} }}}}"
            f"{{% if not loop.last %}}{{{{ {q(self.separator)} }}}}{{% endif %}}{{% endif %}}"
            "{% endfor %}"
            f"{{% if add_generation_prompt %}}{{{{ {q(self._thinking('')[0])} }}}}{{% endif %}}"
        )


class TokenizerTemplate(Template):
    """The tokenizer's own chat template, with exact generation-prompt boundaries."""

    PROBE = "<<ftrun-system-probe>>"

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer
        self.name = "tokenizer"
        self.eos = tokenizer.eos_token
        self.stop_token_id = tokenizer.eos_token_id
        self.thinking = bool(getattr(tokenizer, "_ftrun_thinking", True))
        self.turn_suffix = bool(getattr(tokenizer, "_ftrun_turn_suffix", False))
        self._warned = False
        try:
            text = self._render([{"role": "system", "content": self.PROBE}, {"role": "user", "content": "hi"}], True)
            self.supports_system = self.PROBE in text
        except Exception:  # noqa: BLE001 - templates raise on a system role they cannot take
            self.supports_system = False

    def key(self) -> str:
        return ("tokenizer:" + ("" if self.thinking else "no-thinking:") + ("turn-suffix:" if self.turn_suffix else "")
                + (self.tokenizer.chat_template or ""))

    def _render(self, messages, generation_prompt: bool, tools=None) -> str:
        return self.tokenizer.apply_chat_template(messages, tools=tools, tokenize=False,
                                                  add_generation_prompt=generation_prompt,
                                                  enable_thinking=self.thinking)

    def _split_answer(self, answer: str) -> Tuple[str, str]:
        """(trained part up to and including EOS, untrained rest); all of it with model.train_turn_suffix."""
        if self.eos and not self.turn_suffix:
            j = answer.rfind(self.eos)
            if j >= 0:
                return answer[: j + len(self.eos)], answer[j + len(self.eos):]
        return answer, ""

    def segments(self, messages, mask_history=False, tools=""):
        hf_tool_list = None
        if has_tools(messages, tools):
            if template_takes_tools(self.tokenizer.chat_template):
                messages, hf_tool_list = hf_messages(messages), hf_tools(tools)
            else:
                messages = plain_messages(messages, tools)
        self.check_system(messages)
        answers = [i for i, m in enumerate(messages) if m["role"] == "assistant"]
        if mask_history:
            answers = answers[-1:]
        try:
            return self._segments(messages, answers, hf_tool_list)
        except _NotPrefix:
            if len(answers) > 1:
                if not self._warned:
                    log.warning("the tokenizer's chat template renders earlier turns differently once later turns "
                                "exist; training on the last assistant turn of multi-turn samples only")
                    self._warned = True
                try:
                    return self._segments(messages, answers[-1:], hf_tool_list)
                except _NotPrefix:
                    pass
            raise ConfigError("model.template=auto: the tokenizer's chat template does not render a conversation "
                              "as its prompt (with add_generation_prompt) followed by the answer, so the answer "
                              "cannot be masked exactly; choose a built-in model.template") from None

    def _segments(self, messages, answers, tools=None) -> List[Segment]:
        segs: List[Segment] = []
        done = ""
        for idx in answers:
            prompt = self._render(messages[:idx], True, tools)
            full = self._render(messages[: idx + 1], False, tools)
            if not prompt.startswith(done) or not full.startswith(prompt):
                raise _NotPrefix()
            answer, _rest = self._split_answer(full[len(prompt):])
            if not answer.strip():
                raise _NotPrefix()
            segs.append((prompt[len(done):], False))
            segs.append((answer, True))
            done = prompt + answer
        return segs


class _NotPrefix(Exception):
    pass


def guess_builtin(tokenizer) -> str:
    """The built-in template that fits a tokenizer without a chat template."""
    vocab = tokenizer.get_vocab()
    name = (getattr(tokenizer, "name_or_path", "") or "").lower()
    for spec in BUILTINS.values():
        if spec.vocab_marker and spec.vocab_marker in vocab and spec.name != "chatml":
            return spec.name
    if "<|im_start|>" in vocab:
        return "qwen" if "qwen" in name else "chatml"
    if "mistral" in name or "mixtral" in name:
        return "mistral"
    return "default"


def resolve_template(tokenizer, name: str = "auto", install: bool = True) -> Template:
    """The template for ``tokenizer``; ``install`` gives a built-in's Jinja to the tokenizer."""
    if name not in TEMPLATE_NAMES:
        raise ConfigError(f"model.template={name}: choose one of {', '.join(TEMPLATE_NAMES)}")
    own = bool(getattr(tokenizer, "chat_template", None))
    installed = getattr(tokenizer, "_ftrun_builtin", None)
    if name == "auto" and installed:
        name = installed
    elif name == "auto":
        if own:
            return TokenizerTemplate(tokenizer)
        name = guess_builtin(tokenizer)
        log.info("model.template=auto: the tokenizer has no chat template; using the built-in '%s'", name)
    elif own and installed != name:
        log.warning("model.template=%s: the tokenizer has its own chat template; the built-in '%s' replaces it, "
                    "so prompts at inference must use it too (model.template=auto keeps the tokenizer's)", name, name)
    tpl = BuiltinTemplate(BUILTINS[name], tokenizer)
    if install:
        tokenizer.chat_template = tpl.to_jinja()
        tokenizer._ftrun_builtin = name
    return tpl

