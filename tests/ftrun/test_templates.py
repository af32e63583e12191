"""Chat templates: rendered text and the label mask, token for token (tokenizer only, no model)."""

from __future__ import annotations

import copy
import logging

import pytest

from ftrun.config import ConfigError
from ftrun.data import IGNORE_INDEX, encode_messages, resolve_template
from ftrun.data.templates import BUILTINS, guess_builtin

SINGLE = [{"role": "user", "content": "Reverse: a b c"}, {"role": "assistant", "content": "c b a"}]
SYSTEM = [{"role": "system", "content": "You are terse."}, *SINGLE]
MULTI = [
    {"role": "user", "content": "把字母倒过来\na b c"},
    {"role": "assistant", "content": "c b a"},
    {"role": "user", "content": "再来一次\nx y"},
    {"role": "assistant", "content": "y x"},
]
CHINESE = [{"role": "system", "content": "你是一个简洁的助手。"},
           {"role": "user", "content": "第一个字母是什么\nq w e"}, {"role": "assistant", "content": "q"}]

# special tokens each built-in template needs, added to a copy of the tiny tokenizer
SPECIALS = {
    "chatml": ["<|im_start|>", "<|im_end|>"],
    "qwen": ["<|im_start|>", "<|im_end|>"],
    "llama3": ["<|begin_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"],
    "mistral": ["[INST]", "[/INST]"],
    "glm4": ["[gMASK]", "<sop>", "<|system|>", "<|user|>", "<|assistant|>"],
}
STOPS = {"chatml": "<|im_end|>", "qwen": "<|im_end|>", "llama3": "<|eot_id|>"}


@pytest.fixture(scope="module")
def tok(tiny_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_dir)


def bare(tok, name=None):
    """A copy of the tiny tokenizer without a chat template (plus the template's special tokens)."""
    t = copy.deepcopy(tok)
    t.chat_template = None
    if name in SPECIALS:
        t.add_special_tokens({"additional_special_tokens": SPECIALS[name]})
    if name == "mistral":
        t.add_special_tokens({"bos_token": "<s>", "eos_token": "</s>"})
    return t


def trained_spans(feat, tok):
    """Decoded runs of consecutive trained tokens."""
    spans, cur = [], []
    for i, lab in zip(feat["input_ids"], feat["labels"]):
        if lab != IGNORE_INDEX:
            assert lab == i
            cur.append(i)
        elif cur:
            spans.append(tok.decode(cur))
            cur = []
    if cur:
        spans.append(tok.decode(cur))
    return spans


def render(feat, tok):
    return tok.decode(feat["input_ids"])


# ---------------------------------------------------------------------------
# the tokenizer's own template (tiny: ChatML)


def test_tokenizer_template_single_turn(tok):
    tpl = resolve_template(copy.deepcopy(tok), "auto")
    feat, info = encode_messages(SINGLE, tok, tpl, cutoff_len=512)
    assert render(feat, tok) == "<|im_start|>user\nReverse: a b c<|im_end|>\n<|im_start|>assistant\nc b a<|im_end|>"
    assert trained_spans(feat, tok) == ["c b a<|im_end|>"]
    # the prompt is exactly what apply_chat_template gives for generation
    prompt = tok.apply_chat_template(SINGLE[:1], tokenize=False, add_generation_prompt=True)
    assert feat["input_ids"][: info["prompt_len"]] == tok(prompt, add_special_tokens=False)["input_ids"]
    assert feat["input_ids"][-1] == tok.eos_token_id


def test_tokenizer_template_multi_turn_trains_every_answer(tok):
    tpl = resolve_template(copy.deepcopy(tok), "auto")
    feat, _ = encode_messages(MULTI, tok, tpl, cutoff_len=512)
    assert trained_spans(feat, tok) == ["c b a<|im_end|>", "y x<|im_end|>"]
    full = tok.apply_chat_template(MULTI, tokenize=False)
    assert full.startswith(render(feat, tok))  # only the template's trailing newline is left out
    feat, _ = encode_messages(MULTI, tok, tpl, cutoff_len=512, mask_history=True)
    assert trained_spans(feat, tok) == ["y x<|im_end|>"]


@pytest.mark.parametrize("name", ["auto", "chatml", "qwen"])
def test_train_turn_suffix_trains_the_newline_after_the_stop_token_as_llamafactory(tok, name):
    """model.train_turn_suffix: the trained part of each answer goes on to the template's newline after <|im_end|>
    (LLaMA-Factory's chatml trains "<|im_end|>\n"); the rendered text is the template's full rendering."""
    t = copy.deepcopy(tok) if name == "auto" else bare(tok, name)
    t._ftrun_turn_suffix = True
    tpl = resolve_template(t, name)
    feat, _ = encode_messages(MULTI, t, tpl, cutoff_len=512)
    assert trained_spans(feat, t) == ["c b a<|im_end|>\n", "y x<|im_end|>\n"]
    # the installed Jinja of a built-in ends the conversation at the stop token (nothing follows it at inference)
    assert render(feat, t) == t.apply_chat_template(MULTI, tokenize=False) + ("" if name == "auto" else "\n")
    assert render(feat, t).count("<|im_end|>\n<|im_end|>") == 0  # no second stop after the newline
    off = copy.deepcopy(t)
    off._ftrun_turn_suffix = False
    assert resolve_template(off, name).key() != tpl.key()  # the data cache tells the two apart


def test_train_turn_suffix_of_several_tokens_gets_no_second_stop(tok):
    """alpaca's separator is two newline tokens: the answer ends with the stop and both, and no stop after them."""
    t = bare(tok, "alpaca")
    t._ftrun_turn_suffix = True
    feat, _ = encode_messages(MULTI, t, resolve_template(t, "alpaca"), cutoff_len=512)
    assert len(t("\n\n", add_special_tokens=False)["input_ids"]) == 2
    assert trained_spans(feat, t) == [f"c b a{t.eos_token}\n\n", f"y x{t.eos_token}\n\n"]
    assert render(feat, t).count(t.eos_token) == 2


def test_tokenizer_template_system_and_chinese(tok):
    tpl = resolve_template(copy.deepcopy(tok), "auto")
    assert tpl.supports_system
    feat, _ = encode_messages(CHINESE, tok, tpl, cutoff_len=512)
    assert render(feat, tok).startswith("<|im_start|>system\n你是一个简洁的助手。<|im_end|>\n")
    assert trained_spans(feat, tok) == ["q<|im_end|>"]


def test_train_on_prompt_labels_everything(tok):
    tpl = resolve_template(copy.deepcopy(tok), "auto")
    feat, _ = encode_messages(SINGLE, tok, tpl, cutoff_len=512, train_on_prompt=True)
    assert feat["labels"] == feat["input_ids"]


def test_template_without_system_support_is_an_error(tok):
    t = copy.deepcopy(tok)
    t.chat_template = ("{% for m in messages %}{% if m['role'] == 'system' %}"
                       "{{ raise_exception('System role not supported') }}{% endif %}"
                       "{{ '<|im_start|>' + m['role'] + '\n' + m['content'] + '<|im_end|>\n' }}{% endfor %}"
                       "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}")
    tpl = resolve_template(t, "auto")
    assert not tpl.supports_system
    encode_messages(SINGLE, t, tpl, cutoff_len=512)
    with pytest.raises(ValueError, match="has no system prompt"):
        encode_messages(SYSTEM, t, tpl, cutoff_len=512)


def test_template_that_rewrites_history_falls_back_to_last_turn(tok, caplog):
    # like templates that strip earlier reasoning: an earlier answer renders differently later
    t = copy.deepcopy(tok)
    t.chat_template = ("{% for m in messages %}{% if m['role'] == 'assistant' and not loop.last %}"
                       "{{ '<|im_start|>assistant\n[old]<|im_end|>\n' }}{% else %}"
                       "{{ '<|im_start|>' + m['role'] + '\n' + m['content'] + '<|im_end|>\n' }}{% endif %}"
                       "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}")
    tpl = resolve_template(t, "auto")
    with caplog.at_level(logging.WARNING):
        feat, _ = encode_messages(MULTI, t, tpl, cutoff_len=512)
    assert trained_spans(feat, t) == ["y x<|im_end|>"]
    assert "last assistant turn" in caplog.text


# ---------------------------------------------------------------------------
# built-in templates


# reasoning templates (qwen3) add a thinking block: tests/ftrun/test_llamafactory_knobs.py covers them
PLAIN = sorted(n for n, spec in BUILTINS.items() if not spec.thought[0])
EXPECTED_SINGLE = {
    "default": "Human: Reverse: a b c\nAssistant: c b a<|im_end|>",
    "alpaca": ("Below is an instruction that describes a task. Write a response that appropriately completes the "
               "request.\n\n### Instruction:\nReverse: a b c\n\n### Response:\nc b a<|im_end|>"),
    "chatml": "<|im_start|>user\nReverse: a b c<|im_end|>\n<|im_start|>assistant\nc b a<|im_end|>",
    "qwen": ("<|im_start|>system\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant.<|im_end|>\n"
             "<|im_start|>user\nReverse: a b c<|im_end|>\n<|im_start|>assistant\nc b a<|im_end|>"),
    "llama3": ("<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\nReverse: a b c<|eot_id|>"
               "<|start_header_id|>assistant<|end_header_id|>\n\nc b a<|eot_id|>"),
    "mistral": "<s>[INST] Reverse: a b c[/INST]c b a</s>",
    "glm4": "[gMASK]<sop><|user|>\nReverse: a b c<|assistant|>\nc b a<|im_end|>",
}


@pytest.mark.parametrize("name", PLAIN)
def test_builtin_single_turn(tok, name):
    t = bare(tok, name)
    tpl = resolve_template(t, name)
    feat, info = encode_messages(SINGLE, t, tpl, cutoff_len=512)
    assert render(feat, t) == EXPECTED_SINGLE[name]
    stop = STOPS.get(name, t.eos_token)
    assert trained_spans(feat, t) == [f"c b a{stop}"]
    assert feat["input_ids"][-1] == t.convert_tokens_to_ids(stop)
    # the installed Jinja renders the same prompt, so inference sees what training saw
    prompt = t.apply_chat_template(SINGLE[:1], tokenize=False, add_generation_prompt=True)
    assert t.decode(feat["input_ids"][: info["prompt_len"]]) == prompt


@pytest.mark.parametrize("name", PLAIN)
def test_builtin_multi_turn_chinese(tok, name):
    t = bare(tok, name)
    tpl = resolve_template(t, name)
    stop = STOPS.get(name, t.eos_token)
    feat, _ = encode_messages(MULTI, t, tpl, cutoff_len=512)
    assert trained_spans(feat, t) == [f"c b a{stop}", f"y x{stop}"]
    assert "把字母倒过来" in render(feat, t)
    full = t.apply_chat_template(MULTI, tokenize=False)
    assert full.startswith(render(feat, t))
    feat, _ = encode_messages(MULTI, t, tpl, cutoff_len=512, mask_history=True)
    assert trained_spans(feat, t) == [f"y x{stop}"]


@pytest.mark.parametrize("name", PLAIN)
def test_builtin_system_prompt(tok, name):
    t = bare(tok, name)
    tpl = resolve_template(t, name)
    if name == "mistral":
        with pytest.raises(ValueError, match="'mistral' has no system prompt"):
            encode_messages(CHINESE, t, tpl, cutoff_len=512)
        return
    feat, _ = encode_messages(CHINESE, t, tpl, cutoff_len=512)
    text = render(feat, t)
    assert "你是一个简洁的助手。" in text
    assert "You are Qwen" not in text  # a sample's own system prompt replaces the default
    assert trained_spans(feat, t) == [f"q{STOPS.get(name, t.eos_token)}"]


def test_auto_guesses_a_builtin_from_special_tokens(tok):
    assert guess_builtin(bare(tok, "llama3")) == "llama3"
    assert guess_builtin(bare(tok, "glm4")) == "glm4"
    assert guess_builtin(bare(tok, "chatml")) == "chatml"
    t = bare(tok)
    t.add_special_tokens({"additional_special_tokens": ["<|im_start|>"]})
    t.name_or_path = "Qwen/Qwen2.5-0.5B"
    assert guess_builtin(t) == "qwen"
    plain = copy.deepcopy(tok)
    plain.chat_template = None
    # the tiny vocabulary has <|im_start|>, so auto picks chatml for it
    assert resolve_template(plain, "auto").name == "chatml"


def test_explicit_template_over_the_tokenizers_own_warns(tok, caplog):
    t = copy.deepcopy(tok)
    with caplog.at_level(logging.WARNING):
        tpl = resolve_template(t, "alpaca")
    assert tpl.name == "alpaca"
    assert "has its own chat template" in caplog.text


def test_unknown_template_is_a_config_error(tok):
    with pytest.raises(ConfigError, match="model.template=vicuna: choose one of auto, default"):
        resolve_template(copy.deepcopy(tok), "vicuna")


def test_stop_text_that_is_not_a_token_gets_eos(tok, caplog):
    t = bare(tok)  # no <|eot_id|> in the tiny vocabulary
    with caplog.at_level(logging.WARNING):
        tpl = resolve_template(t, "llama3")
    feat, _ = encode_messages(SINGLE, t, tpl, cutoff_len=512)
    assert feat["input_ids"][-1] == t.eos_token_id
    assert "not one token" in caplog.text
