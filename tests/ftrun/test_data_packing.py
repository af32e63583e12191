"""Packing: bins, packed rows, and isolation (a packed batch gives each sample the loss it has alone)."""

from __future__ import annotations

import random

import pytest

from ftrun.data import IGNORE_INDEX, build_datasets, encode_rows
from ftrun.data.collate import PackedCollator, make_collator, pack_bins, pack_dataset
from conftest import compose_cfg


@pytest.fixture(scope="module")
def tok(tiny_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_dir)


def rows(n, seed=0):
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        k = rng.randint(1, 12)
        letters = " ".join(rng.choice("abcdefgh") for _ in range(k))
        out.append({"instruction": "把字母倒过来", "input": letters, "output": " ".join(reversed(letters.split()))})
    return out


def test_pack_bins_fill_without_overflow():
    rng = random.Random(1)
    lengths = [rng.randint(1, 100) for _ in range(500)]
    bins = pack_bins(lengths, 128)
    assert sorted(i for b in bins for i in b) == list(range(500))
    assert all(sum(lengths[i] for i in b) <= 128 for b in bins)
    assert len(bins) <= 1.1 * sum(lengths) / 128 + 2  # best-fit decreasing packs tightly
    with pytest.raises(ValueError):
        pack_bins([200], 128)


def test_packed_rows(tok, tmp_path):
    ds, _ = encode_rows(rows(40), tok, cutoff_len=128)
    packed = pack_dataset(ds, 128)
    assert len(packed) < len(ds) / 2
    assert sum(len(r["input_ids"]) for r in packed) == sum(len(r["input_ids"]) for r in ds)
    for r in packed:
        assert len(r["input_ids"]) <= 128
        starts = [i for i, p in enumerate(r["position_ids"]) if p == 0]
        assert all(r["labels"][s] == IGNORE_INDEX for s in starts)  # no loss across a border
        ends = starts[1:] + [len(r["position_ids"])]
        assert all(r["position_ids"][s:e] == list(range(e - s)) for s, e in zip(starts, ends))


def test_build_datasets_packs_train_only(tok, tmp_path):
    cfg = compose_cfg(["data.num_train=64", "data.num_eval=8", "data.packing=true", "cutoff_len=128"]).data
    train, evals, report = build_datasets(cfg, tok)
    assert report.packed_rows == len(train) < 64 and report.samples == 64
    assert "position_ids" in train.column_names and "position_ids" not in evals.column_names
    assert report.as_metrics("data_train")["data_train_packed_rows"] == len(train)


def _per_sample_losses(logits, labels, position_ids):
    import torch.nn.functional as F

    losses = []
    for row in range(labels.shape[0]):
        pos = position_ids[row].tolist()
        starts = [i for i, p in enumerate(pos) if p == 0] + [len(pos)]
        for s, e in zip(starts, starts[1:]):
            lab = labels[row, s + 1:e]
            if (lab != IGNORE_INDEX).any():
                losses.append(F.cross_entropy(logits[row, s:e - 1], lab, ignore_index=IGNORE_INDEX).item())
    return losses


@pytest.fixture(scope="module")
def model(tiny_dir):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(tiny_dir).eval()


@pytest.mark.parametrize("attn,flatten", [("sdpa", False), ("eager", False), ("sdpa", True)])
def test_packing_isolation(tok, model, attn, flatten):
    import torch
    import torch.nn.functional as F

    model.set_attn_implementation(attn)
    assert model.config._attn_implementation == attn
    ds, _ = encode_rows(rows(12, seed=3), tok, cutoff_len=128)
    alone = {}
    with torch.no_grad():
        for r in ds:
            ids = torch.tensor([r["input_ids"]])
            lab = torch.tensor([r["labels"]])
            logits = model(input_ids=ids).logits[0]
            alone[tuple(r["input_ids"])] = F.cross_entropy(logits[:-1], lab[0, 1:], ignore_index=IGNORE_INDEX).item()
    packed = pack_dataset(ds, 96)
    collate = PackedCollator(tok, "flash_attention_2" if flatten else attn)
    batch = collate([packed[i] for i in range(len(packed))])
    assert "attention_mask" not in batch
    if flatten:
        assert batch["input_ids"].shape[0] == 1 and int(batch["cu_seq_lens_q"][-1]) == batch["input_ids"].shape[1]
        batch = {k: batch[k] for k in ("input_ids", "labels", "position_ids")}  # sdpa reads the position ids
    else:
        assert batch["input_ids"].shape[0] == len(packed)
    with torch.no_grad():
        logits = model(input_ids=batch["input_ids"], position_ids=batch["position_ids"]).logits
    got = sorted(_per_sample_losses(logits, batch["labels"], batch["position_ids"]))
    want = sorted(alone.values())
    assert len(got) == len(want) == 12
    assert got == pytest.approx(want, abs=1e-4)

    # the check can fail: without restarting position ids, samples see each other and the losses move
    with torch.no_grad():
        leaky = model(input_ids=batch["input_ids"]).logits
    moved = sorted(_per_sample_losses(leaky, batch["labels"], batch["position_ids"]))
    assert max(abs(a - b) for a, b in zip(moved, want)) > 1e-3


def test_collator_pads_unpacked_batches(tok):
    ds, _ = encode_rows(rows(4), tok, cutoff_len=128)
    feats = [ds[i] for i in range(4)]
    for collate in (make_collator(compose_cfg(["data.packing=true"]).data, tok), make_collator(None, tok)):
        batch = collate(feats)
        width = max(len(f["input_ids"]) for f in feats)
        assert batch["input_ids"].shape == (4, width) and "attention_mask" in batch
        assert (batch["labels"][batch["attention_mask"] == 0] == IGNORE_INDEX).all()


def test_training_run_with_packing(tmp_path, mlflow_uri):
    import json

    from ftrun.train import run

    cfg = compose_cfg(["data.packing=true", "cutoff_len=128", "batch_size=2", f"data.cache_dir={tmp_path / 'c'}"],
                      fast=True)
    run(cfg, tmp_path / "run")
    state = json.loads((tmp_path / "run" / "trainer_state.json").read_text())
    losses = [h["loss"] for h in state["log_history"] if "loss" in h]
    assert state["global_step"] == cfg.max_steps and all(l == l for l in losses)  # no NaN
    # 2 packed rows of up to 128 tokens per step: far more tokens than 2 letters samples (~26 each)
    assert state["num_input_tokens_seen"] > cfg.max_steps * 2 * 60
