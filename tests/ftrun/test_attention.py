"""sdpa_varlen (ftrun/attention.py): a flattened batch attends per sample, equal to the padded batch."""

from __future__ import annotations

import json

import pytest

from ftrun import attention
from ftrun.data import IGNORE_INDEX, make_collator
from conftest import compose_cfg

LENGTHS = [7, 19, 12, 30, 5]


@pytest.fixture(scope="module")
def model(tiny_dir):
    from transformers import AutoModelForCausalLM

    m = AutoModelForCausalLM.from_pretrained(tiny_dir, attn_implementation="sdpa").eval()
    assert attention.use(m, attention.NAME) == attention.NAME
    return m


def _batches():
    import torch

    g = torch.Generator().manual_seed(0)
    seqs = [torch.randint(5, 300, (n,), generator=g) for n in LENGTHS]
    padded = torch.zeros(len(seqs), max(LENGTHS), dtype=torch.long)
    mask = torch.zeros_like(padded)
    for i, s in enumerate(seqs):
        padded[i, :len(s)], mask[i, :len(s)] = s, 1
    flat = torch.cat(seqs)[None]
    pos = torch.cat([torch.arange(n) for n in LENGTHS])[None]
    cu = torch.tensor([0, *torch.tensor(LENGTHS).cumsum(0).tolist()], dtype=torch.int32)
    return padded, mask, flat, pos, cu


def _unflatten(logits):
    out, start = [], 0
    for n in LENGTHS:
        out.append(logits[0, start:start + n])
        start += n
    return out


def test_flattened_batch_equals_padded_batch(model):
    import torch

    padded, mask, flat, pos, cu = _batches()
    with torch.no_grad():
        want = model(input_ids=padded, attention_mask=mask).logits  # the padded batch: transformers' sdpa path
        by_cu = model(input_ids=flat, position_ids=pos, cu_seq_lens_q=cu, cu_seq_lens_k=cu).logits
        by_pos = model(input_ids=flat, position_ids=pos).logits  # the borders read off the restarting positions
        leaky = model(input_ids=flat).logits  # one causal sequence: samples see the ones before them
    for i, n in enumerate(LENGTHS):
        torch.testing.assert_close(_unflatten(by_cu)[i], want[i, :n], rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(_unflatten(by_pos)[i], want[i, :n], rtol=1e-5, atol=1e-5)
    assert (_unflatten(leaky)[1] - want[1, :LENGTHS[1]]).abs().max() > 1e-3  # the check can fail


def test_gradients_equal_padded(model):
    import torch

    padded, mask, flat, pos, cu = _batches()
    labels = padded.masked_fill(mask == 0, IGNORE_INDEX)
    flat_labels = flat.clone()
    flat_labels[0, cu[:-1].long()] = IGNORE_INDEX  # every sample's first token is no target, as in a padded row
    grads = []
    for kwargs in ({"input_ids": padded, "attention_mask": mask, "labels": labels},
                   {"input_ids": flat, "position_ids": pos, "labels": flat_labels, "cu_seq_lens_q": cu,
                    "cu_seq_lens_k": cu}):
        model.zero_grad()
        model(**kwargs).loss.backward()
        grads.append(torch.cat([p.grad.flatten() for p in model.parameters()]))
    model.zero_grad()
    torch.testing.assert_close(grads[1], grads[0], rtol=1e-4, atol=1e-6)


def test_generation_is_sdpa_s(model, tiny_dir):
    """Padded prompts and a cache take transformers' own sdpa path with its mask: the same tokens."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_dir)
    tok.padding_side = "left"
    tok.pad_token = tok.pad_token or tok.eos_token
    batch = tok(["a b c d e f", "z"], return_tensors="pt", padding=True)
    plain = AutoModelForCausalLM.from_pretrained(tiny_dir, attn_implementation="sdpa").eval()
    with torch.no_grad():
        want = plain.generate(**batch, max_new_tokens=8, do_sample=False, pad_token_id=tok.pad_token_id)
        got = model.generate(**batch, max_new_tokens=8, do_sample=False, pad_token_id=tok.pad_token_id)
    assert torch.equal(got, want)


def test_sliding_window_models_keep_sdpa(tiny_dir):
    from transformers import AutoConfig, AutoModelForCausalLM, Qwen2Config

    assert attention.supports(AutoConfig.from_pretrained(tiny_dir))
    windowed = Qwen2Config(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                           num_key_value_heads=1, vocab_size=64, use_sliding_window=True, sliding_window=8,
                           max_window_layers=0)
    assert not attention.supports(windowed)
    m = AutoModelForCausalLM.from_config(windowed, attn_implementation="sdpa")
    assert attention.use(m, attention.NAME) == "sdpa" and m.config._attn_implementation == "sdpa"


def test_sft_flattens_unpacked_training_rows_only(tiny_dir, model, tmp_path):
    from transformers import AutoTokenizer, DataCollatorForSeq2Seq

    from ftrun.data import build_datasets
    from ftrun.stages.sft import build_trainer

    tok = AutoTokenizer.from_pretrained(tiny_dir)
    cfg = compose_cfg(["data.num_train=16", "data.num_eval=4", "data.padding_free=true"])
    train, evals, _ = build_datasets(cfg.data, tok)
    assert "position_ids" not in train.column_names  # the data layer's rows stay as they are
    trainer = build_trainer(cfg, model, tok, train, evals, tmp_path)
    assert "position_ids" in trainer.train_dataset.column_names
    assert trainer.args.include_num_input_tokens_seen == "all"  # one row, no padding: every token counts
    feats = [trainer.train_dataset[i] for i in range(4)]
    batch = trainer.data_collator(feats)
    n = sum(len(f["input_ids"]) for f in feats)
    assert batch["input_ids"].shape == (1, n) and "attention_mask" not in batch
    assert batch["cu_seq_lens_q"].tolist()[-1] == n
    assert (batch["labels"][0, batch["cu_seq_lens_q"][:-1].long()] == IGNORE_INDEX).all()
    assert trainer.data_collator([evals[i] for i in range(4)])["input_ids"].shape[0] == 4  # evaluation: padded
    assert make_collator(cfg.data, tok, "sdpa")(feats)["input_ids"].shape[0] == 4  # an attention that cannot: rows

    off = compose_cfg(["data.num_train=16", "data.num_eval=4"])  # the default: padded
    trainer = build_trainer(off, model, tok, train, evals, tmp_path)
    assert isinstance(trainer.data_collator, DataCollatorForSeq2Seq)
    assert "position_ids" not in trainer.train_dataset.column_names


def test_padding_free_run_has_the_padded_run_s_losses(tmp_path, mlflow_uri):
    """Padding-free batches under sdpa_varlen against padded ones under sdpa: the same run, loss for loss."""
    from ftrun.train import run

    losses = {}
    for name, extra in (("free", ["data.padding_free=true"]), ("padded", ["model.attn_implementation=sdpa"])):
        cfg = compose_cfg(["max_steps=10", "train.logging_steps=1", "train.eval_steps=10",
                           f"data.cache_dir={tmp_path / 'c'}", *extra], fast=True)
        run(cfg, tmp_path / name)
        state = json.loads((tmp_path / name / "trainer_state.json").read_text())
        losses[name] = [h["loss"] for h in state["log_history"] if "loss" in h]
    assert len(losses["free"]) == 10
    assert losses["free"] == pytest.approx(losses["padded"], rel=1e-5)
