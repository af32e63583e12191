"""Tool calling: conversations with a ``tools`` column and function-call / observation turns.

In the normal form a tool-calling conversation keeps LLaMA-Factory's roles:
``function_call`` (the assistant's call: JSON ``{"name": ..., "arguments": {...}}``
or a list of them) and ``observation`` (what the tool returned), and the row's
``tools`` (a JSON list of function definitions). The assistant's calls and
answers are trained on; the prompt, the tool definitions and the observations
are not. How they are rendered:

* a tokenizer chat template that takes tools (its source uses ``tools``):
  transformers' ``apply_chat_template(messages, tools=...)``, the call as the
  assistant turn's ``tool_calls`` and the observation as a ``tool`` turn, so
  the model trains on exactly the text it sees when served with tools;
* a built-in template (``model.template=chatml``, ...) or a tokenizer template
  without tools: the plain format :func:`plain_messages` documents, with the
  tool definitions in the system prompt, the call as the assistant's answer
  (its JSON) and the observation as a user turn.
"""

from __future__ import annotations

import json
from typing import Dict, List, Optional

TOOLS_PROMPT = ("You can call these tools:\n{tools}\n"
                'To call a tool, answer with only a JSON object {{"name": <tool name>, "arguments": <arguments>}}.')
OBSERVATION = "Observation: {content}"


def parse_calls(content: str) -> Optional[List[dict]]:
    """The calls of a function-call turn as ``[{"name", "arguments"}]``; None if it is not one."""
    try:
        calls = json.loads(content)
    except (json.JSONDecodeError, TypeError):
        return None
    calls = calls if isinstance(calls, list) else [calls]
    out = []
    for call in calls:
        if not isinstance(call, dict) or not isinstance(call.get("name"), str):
            return None
        args = call.get("arguments", {})
        if isinstance(args, str):
            try:
                args = json.loads(args)
            except json.JSONDecodeError:
                return None
        out.append({"name": call["name"], "arguments": args})
    return out or None


def has_tools(messages: List[Dict[str, str]], tools: str) -> bool:
    return bool(tools) or any(m["role"] in ("function_call", "observation") for m in messages)


def template_takes_tools(chat_template: Optional[str]) -> bool:
    """Whether a Jinja chat template renders ``tools`` (transformers passes them as the ``tools`` variable)."""
    return bool(chat_template) and "tools" in chat_template and "tool_calls" in chat_template


def hf_tools(tools: str) -> Optional[List[dict]]:
    """The tools column as transformers' JSON-schema tool list (``{"type": "function", "function": ...}``)."""
    if not tools:
        return None
    return [f if "function" in f else {"type": "function", "function": f} for f in json.loads(tools)]


def hf_messages(messages: List[Dict[str, str]]) -> List[dict]:
    """Normal-form turns -> transformers' chat format: calls as ``tool_calls``, observations as ``tool`` turns."""
    out: List[dict] = []
    for m in messages:
        if m["role"] == "function_call":
            calls = [{"type": "function", "function": c} for c in parse_calls(m["content"])]
            out.append({"role": "assistant", "content": "", "tool_calls": calls})
        elif m["role"] == "observation":
            out.append({"role": "tool", "content": m["content"]})
        else:
            out.append(dict(m))
    return out


def plain_messages(messages: List[Dict[str, str]], tools: str) -> List[Dict[str, str]]:
    """Normal-form turns -> plain user/assistant turns, for templates without tools:

    * the tool definitions join the system prompt: ``<system>\\n\\n`` + :data:`TOOLS_PROMPT`;
    * a function call is an assistant turn holding the call's JSON (trained);
    * an observation is a user turn ``Observation: <content>`` (not trained).
    """
    out = [dict(m) for m in messages]
    if tools:
        block = TOOLS_PROMPT.format(tools=json.dumps(json.loads(tools), ensure_ascii=False))
        if out and out[0]["role"] == "system":
            out[0]["content"] = out[0]["content"] + "\n\n" + block
        else:
            out.insert(0, {"role": "system", "content": block})
    for m in out:
        if m["role"] == "function_call":
            calls = parse_calls(m["content"])
            m.update(role="assistant", content=json.dumps(calls[0] if len(calls) == 1 else calls, ensure_ascii=False))
        elif m["role"] == "observation":
            m.update(role="user", content=OBSERVATION.format(content=m["content"]))
    return out
