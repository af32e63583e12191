"""LLaMA-Factory's Train-tab knobs (README: "LLaMA-Factory's Train tab"), each through its library.

``test_knob_effect`` runs every knob that runs on CPU on the tiny model and asserts its effect:
the RoPE parameters in the model config, trainable-parameter counts, PiSSA's initialisation,
LLaMA Pro's identity blocks, the optimizer class the Trainer steps, the packed batch's losses.
What needs CUDA (DeepSpeed, FSDP, Liger, flash attention) is composed, validated and turned into
TrainingArguments here; ``test_gpu_knobs_train`` runs it where a GPU is.
"""

from __future__ import annotations

import json
import math
import random

import pytest
import torch
from conftest import compose_cfg

import ftrun.stages.sft
import ftrun.train
from ftrun.config import ConfigError, canonical_overrides, resolved, validate, validate_device
from ftrun.model import apply_method, count_parameters, load_model, load_tokenizer

QUIET = ["train.eval_steps=0", "tracking.enabled=false", "train.logging_steps=1", "max_steps=2"]


def build(overrides):
    """(cfg, model after apply_method, tokenizer) for ``ftrun <overrides>``, validated as a run is."""
    cfg = compose_cfg(list(overrides), fast=True)
    validate(cfg)
    cfg = resolved(cfg)
    validate_device(cfg)
    return cfg, apply_method(load_model(cfg), cfg), load_tokenizer(cfg.model)


def ids(n=24, seed=0):
    return torch.tensor([random.Random(seed).choices(range(3, 370), k=n)])  # the tiny vocabulary has 379


@torch.no_grad()
def logits(model, x):
    return model.eval()(input_ids=x).logits


def base_model():
    return build(["method=full"])[1]


def trainable(model):
    return {n for n, p in model.named_parameters() if p.requires_grad}


def run_capturing(monkeypatch, tmp_path, overrides):
    """A real tiny run of ``overrides``; returns the Trainer it built (after training) and result.json."""
    built = []
    make = ftrun.stages.sft.build_trainer

    def capture(*args, **kwargs):
        built.append(make(*args, **kwargs))
        return built[-1]

    monkeypatch.setattr(ftrun.stages.sft, "build_trainer", capture)
    ftrun.train.run(compose_cfg([*overrides, *QUIET], fast=True), tmp_path)
    return built[0], json.loads((tmp_path / "result.json").read_text())


def inner_optimizer(trainer):
    return getattr(trainer.optimizer, "optimizer", trainer.optimizer)  # accelerate wraps it


# ---------------------------------------------------------------------------
# each knob on the tiny model, CPU


def check_rope(kind):
    def check(tmp_path, monkeypatch):
        cfg, model, _ = build(["method=full", f"rope_scaling={kind}", "model.rope_factor=4", "cutoff_len=1024"])
        params = model.config.rope_parameters
        assert params["rope_type"] == kind and params["factor"] == 4.0 and params["rope_theta"] == 10000.0
        assert model.model.rotary_emb.rope_type == kind
        assert model.config.max_position_embeddings == (512 if kind == "dynamic" else 2048)
        if kind in ("yarn", "llama3"):
            assert params["original_max_position_embeddings"] == 512
        plain = base_model()
        if kind == "linear":  # position interpolation: every frequency divided by the factor
            torch.testing.assert_close(model.model.rotary_emb.inv_freq, plain.model.rotary_emb.inv_freq / 4)
        if kind == "dynamic":  # NTK: unchanged inside the original context
            torch.testing.assert_close(logits(model, ids()), logits(plain, ids()))
        else:
            assert not torch.allclose(logits(model, ids()), logits(plain, ids()), atol=1e-4)
    return check


def check_pissa(tmp_path, monkeypatch):
    _, lora, _ = build(["method=lora", "rank=4"])
    _, pissa, _ = build(["method=lora", "rank=4", "use_pissa=true", "method.pissa_iters=4"])
    assert count_parameters(pissa)[0] == count_parameters(lora)[0]
    b_lora = [p for n, p in lora.named_parameters() if "lora_B" in n]
    b_pissa = [p for n, p in pissa.named_parameters() if "lora_B" in n]
    assert all(torch.count_nonzero(b) == 0 for b in b_lora)  # plain LoRA starts with B = 0
    assert all(torch.count_nonzero(b) > 0 for b in b_pissa)  # PiSSA: B A holds the principal components
    assert pissa.peft_config["default"].init_lora_weights == "pissa_niter_4"
    # and the residual base keeps the model's function: W = W_res + B A
    torch.testing.assert_close(logits(pissa, ids()), logits(base_model(), ids()), atol=2e-4, rtol=1e-3)


def check_additional_target(tmp_path, monkeypatch):
    _, lora, _ = build(["method=lora", "rank=4"])
    _, extra, _ = build(["method=lora", "rank=4", "additional_target=[lm_head]"])
    head = extra.base_model.model.lm_head
    assert extra.peft_config["default"].modules_to_save == ["lm_head"]
    assert count_parameters(extra)[0] == count_parameters(lora)[0] + head.original_module.weight.numel()


def check_resize_vocab(tmp_path, monkeypatch):
    new = ["<tool_call>", "</tool_call>", "<think>", "</think>"]
    listed = ",".join(f"'{t}'" for t in new)
    cfg, model, tok = build(["method=lora", "rank=4", "resize_vocab=true", f"model.add_special_tokens=[{listed}]"])
    plain = build(["method=lora", "rank=4"])[1].get_input_embeddings().weight.shape[0]
    assert len(tok) > plain and all(len(tok(t, add_special_tokens=False)["input_ids"]) == 1 for t in new)
    rows = model.get_input_embeddings().weight.shape[0]
    assert rows == math.ceil(len(tok) / 64) * 64 and model.get_output_embeddings().weight.shape[0] == rows
    saved = set(model.peft_config["default"].modules_to_save)
    assert {"embed_tokens", "lm_head"} <= saved
    assert any("embed_tokens.modules_to_save" in n for n in trainable(model))
    assert rows > plain  # without resize_vocab the new ids would be out of range


def check_llama_pro(tmp_path, monkeypatch):
    from ftrun.data import build_datasets
    from ftrun.stages.sft import build_trainer

    plain = base_model()
    cfg, model, tok = build(["method=llama_pro", "method.expand_layers=2"])
    assert len(model.model.layers) == model.config.num_hidden_layers == 6
    per_layer = sum(p.numel() for p in plain.model.layers[0].parameters())
    assert count_parameters(model)[0] == 2 * per_layer
    assert {int(n.split(".")[2]) for n in trainable(model)} == {2, 5}  # one new block after every 4/2 layers
    torch.testing.assert_close(logits(model, ids()), logits(plain, ids()), atol=1e-5, rtol=0)  # identity
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    train_ds, _, _ = build_datasets(cfg.data, tok)
    build_trainer(cfg, model.train(), tok, train_ds, None, tmp_path).train()
    changed = {n for n, p in model.named_parameters() if not torch.equal(p, before[n])}
    assert changed and {int(n.split(".")[2]) for n in changed} <= {2, 5}


def check_adapter(create_new):
    def check(tmp_path, monkeypatch):
        _, lora, _ = build(["method=lora", "rank=4"])
        torch.manual_seed(0)
        for n, p in lora.named_parameters():
            if "lora_B" in n:
                p.data.normal_(std=0.05)
        lora.save_pretrained(tmp_path / "adapter")
        want = logits(lora, ids())
        _, model, _ = build(["method=lora", "rank=4", f"adapter_name_or_path={tmp_path / 'adapter'}",
                             f"create_new_adapter={str(create_new).lower()}"])
        torch.testing.assert_close(logits(model, ids()), want, atol=1e-5, rtol=1e-4)  # starts where it stopped
        b = [p for n, p in model.named_parameters() if "lora_B" in n]
        assert all(p.requires_grad for p in b) and len(b) == len([n for n, _ in lora.named_parameters()
                                                                   if "lora_B" in n])
        if create_new:  # merged into the base, a fresh adapter (B = 0) on top
            assert all(torch.count_nonzero(p) == 0 for p in b)
        else:  # the saved adapter itself trains on
            assert all(torch.count_nonzero(p) > 0 for p in b)
    return check


def check_optimizer(name, expected, extra=()):
    def check(tmp_path, monkeypatch):
        trainer, result = run_capturing(monkeypatch, tmp_path, ["method=full", f"optimizer={name}", *extra])
        opt = inner_optimizer(trainer)
        assert f"{type(opt).__module__}.{type(opt).__qualname__}" == expected
        assert result["global_step"] == 2 and math.isfinite(result["objective"])
        if name in ("galore", "apollo") and "optimizer.layerwise=true" not in extra:  # the linear weights' group carries the projection settings
            projected = [g for g in opt.param_groups if "rank" in g]
            assert len(projected) == 1 and projected[0]["rank"] == 8 and projected[0]["update_proj_gap"] == 5
            assert len(projected[0]["params"]) == 4 * 7 + 1  # q,k,v,o,gate,up,down per layer + lm_head
        if name == "badam":  # one block (decoder layer) trains at a time
            layers = {int(n.split(".")[2]) for n in trainable(trainer.model) if ".layers." in n}
            assert len(layers) == 1 and trainable(trainer.model) <= {n for n, _ in trainer.model.named_parameters()
                                                                       if ".layers." in n}
    return check


def check_neat_packing(tmp_path, monkeypatch):
    for neat in (True, False):
        cfg = compose_cfg(["data.packing=true", f"neat_packing={str(neat).lower()}", "cutoff_len=128",
                           "data.num_train=32", f"data.cache_dir={tmp_path / 'c'}"])
        tok = load_tokenizer(cfg.model)
        from ftrun.data import build_datasets

        train, _, report = build_datasets(cfg.data, tok)
        pos = train[0]["position_ids"]
        restarts = sum(p == 0 for p in pos)
        assert restarts > 1 if neat else (restarts == 1 and pos == list(range(len(pos))))
        assert report.packed_rows == len(train) < 32

    # the loss of a packed batch, sample by sample, equals each sample's loss alone only when neat
    losses = {neat: _per_sample(neat) for neat in (True, False)}
    assert losses[True][0] == pytest.approx(losses[True][1], abs=1e-4)
    assert max(abs(a - b) for a, b in zip(*losses[False])) > 1e-3


def _per_sample(neat):
    """(packed per-sample losses, each sample's loss alone), both sorted."""
    import torch.nn.functional as F
    from transformers import AutoModelForCausalLM

    from ftrun.data import IGNORE_INDEX, encode_rows
    from ftrun.data.collate import PackedCollator, pack_bins, pack_dataset
    from ftrun.model import model_path

    cfg = compose_cfg([])
    tok = load_tokenizer(cfg.model)
    model = AutoModelForCausalLM.from_pretrained(model_path(cfg.model)).eval()
    rng = random.Random(5)
    rows = [{"instruction": "reverse", "input": " ".join(rng.choices("abcdef", k=rng.randint(2, 9))),
             "output": "x y"} for _ in range(10)]
    ds, _ = encode_rows(rows, tok, cutoff_len=128)
    samples = [r for r in ds]
    with torch.no_grad():
        alone = [F.cross_entropy(model(input_ids=torch.tensor([r["input_ids"]])).logits[0, :-1],
                                 torch.tensor(r["labels"][1:]), ignore_index=IGNORE_INDEX).item() for r in samples]
    bins = pack_bins([len(r["input_ids"]) for r in samples], 128)
    packed = pack_dataset(ds, 128, neat=neat)
    batch = PackedCollator(tok, "sdpa")([packed[i] for i in range(len(packed))])
    with torch.no_grad():
        out = model(input_ids=batch["input_ids"], position_ids=batch["position_ids"]).logits
    got = []
    for row, b in enumerate(bins):  # pack_dataset writes the bins in this order, samples sorted by index
        start = 0
        for i in b:
            n = len(samples[i]["input_ids"])
            got.append((i, F.cross_entropy(out[row, start:start + n - 1], batch["labels"][row, start + 1:start + n],
                                           ignore_index=IGNORE_INDEX).item()))
            start += n
    got = [loss for _, loss in sorted(got)]
    return got, alone


def check_enable_thinking(tmp_path, monkeypatch):
    from ftrun.data.templates import resolve_template

    conv = [{"role": "user", "content": "2+2?"},
            {"role": "assistant", "content": "<think>\nadd them\n</think>\n\n4"},
            {"role": "user", "content": "3+3?"},
            {"role": "assistant", "content": "6"}]
    segs = {}
    for thinking in (True, False):
        tok = load_tokenizer(compose_cfg(["model.template=qwen3", f"enable_thinking={str(thinking).lower()}"]).model)
        tpl = resolve_template(tok, "qwen3")
        segs[thinking] = tpl.segments(conv)
    trained = {k: [t for t, on in v if on] for k, v in segs.items()}
    prompts = {k: [t for t, on in v if not on] for k, v in segs.items()}
    empty = "<think>\n\n</think>\n\n"
    # kept: the thinking is trained on; an answer without one gets an empty one, trained too
    assert trained[True][0].startswith("<think>\nadd them\n</think>\n\n4")
    assert trained[True][1].startswith(empty + "6")
    # dropped: no thinking in any trained answer; the empty block closes each prompt instead
    assert trained[False][0].startswith("4") and trained[False][1].startswith("6")
    assert all(p.endswith("<|im_start|>assistant\n" + empty) for p in prompts[False])
    assert not any(p.endswith(empty) for p in prompts[True])
    assert tpl.key() == "qwen3:no-thinking"  # the tokenized-data cache keeps the two apart

    # tokenized: the labels cover the answer only, and the installed Jinja prompts as training did
    from ftrun.data import IGNORE_INDEX
    from ftrun.data.encode import encode_messages

    tok = load_tokenizer(compose_cfg(["model.template=qwen3", "enable_thinking=false",
                                      "model.add_special_tokens=['<think>','</think>']"]).model)
    tpl = resolve_template(tok, "qwen3")
    feat, info = encode_messages(conv[:2], tok, tpl, cutoff_len=256)
    answer = [i for i, lab in zip(feat["input_ids"], feat["labels"]) if lab != IGNORE_INDEX]
    assert tok.decode(answer) == "4<|im_end|>"
    prompt = tok.apply_chat_template(conv[:1], tokenize=False, add_generation_prompt=True)
    assert prompt.endswith(empty) and tok.decode(feat["input_ids"][: info["prompt_len"]]) == prompt

    # a tokenizer's own template (auto) gets enable_thinking, as Qwen3's reads it
    own = ("{% for m in messages %}<|im_start|>{{ m.role }}\n"  # Qwen3's: an answer always shows its block
           "{% if m.role == 'assistant' and '<think>' not in m.content %}" + empty + "{% endif %}"
           "{{ m.content }}<|im_end|>\n{% endfor %}"
           "{% if add_generation_prompt %}<|im_start|>assistant\n"
           "{% if enable_thinking is defined and not enable_thinking %}" + empty + "{% endif %}{% endif %}")
    for thinking in (True, False):
        tok = load_tokenizer(compose_cfg([f"enable_thinking={str(thinking).lower()}"]).model)
        tok.chat_template = own
        (prompt_seg, _), (answer, _) = resolve_template(tok, "auto").segments(conv[:1] + [{"role": "assistant",
                                                                                             "content": "4"}])
        assert prompt_seg.endswith(empty) != thinking and answer.startswith(empty) == thinking


def check_pref_ftx(tmp_path, monkeypatch):
    from trl import DPOConfig

    from ftrun.stages.dpo import dpo_loss_arguments
    from ftrun.fit import training_arguments

    cfg = resolved(compose_cfg(["stage=dpo", "pref_ftx=0.5", "stage.loss_type=[sigmoid,ipo]"]))
    validate(cfg)
    args = training_arguments(cfg, tmp_path, cls=DPOConfig, **dpo_loss_arguments(cfg.stage))
    assert args.loss_type == ["sigmoid", "ipo", "sft"] and args.loss_weights == [1.0, 1.0, 0.5]
    plain = training_arguments(cfg, tmp_path, cls=DPOConfig,
                               **dpo_loss_arguments(resolved(compose_cfg(["stage=dpo"])).stage))
    assert plain.loss_type == ["sigmoid"] and plain.loss_weights is None

    # in a real step: at the start the policy is its reference (LoRA's B = 0), so DPO's sigmoid loss is
    # exactly ln 2; pref_ftx adds the chosen answers' NLL on top
    first = {}
    for ftx in (0.0, 1.0):
        run_dir = tmp_path / f"ftx{ftx}"
        ftrun.train.run(compose_cfg(["stage=dpo", f"pref_ftx={ftx}", "cutoff_len=64", *QUIET, "max_steps=1"],
                                    fast=True), run_dir)
        history = json.loads((run_dir / "trainer_state.json").read_text())["log_history"]
        first[ftx] = next(h["loss"] for h in history if "loss" in h)
    assert first[0.0] == pytest.approx(math.log(2), abs=1e-3)
    assert first[1.0] > math.log(2) + 0.1


def check_ppo_scale_rewards(tmp_path, monkeypatch):
    from trl import GRPOConfig

    from ftrun.fit import training_arguments

    for value in ("group", "batch", "none"):
        cfg = resolved(compose_cfg(["stage=ppo", f"stage.ppo.scale_rewards={value}"]))
        args = training_arguments(cfg, tmp_path, has_eval=False, cls=GRPOConfig, num_generations=4,
                                  scale_rewards=cfg.stage.ppo.scale_rewards)
        assert args.scale_rewards == value


KNOBS = {
    "rope_scaling=linear": check_rope("linear"),
    "rope_scaling=dynamic": check_rope("dynamic"),
    "rope_scaling=yarn": check_rope("yarn"),
    "rope_scaling=llama3": check_rope("llama3"),
    "use_pissa": check_pissa,
    "additional_target": check_additional_target,
    "resize_vocab": check_resize_vocab,
    "use_llama_pro": check_llama_pro,
    "adapter_name_or_path": check_adapter(False),
    "create_new_adapter": check_adapter(True),
    "galore": check_optimizer("galore", "galore_torch.adamw.AdamW",
                              ["optimizer.proj_rank=8", "optimizer.update_proj_gap=5"]),
    "galore_layerwise": check_optimizer("galore", "transformers.trainer_pt_utils.LayerWiseDummyOptimizer",
                                        ["optimizer.layerwise=true"]),
    "apollo": check_optimizer("apollo", "apollo_torch.apollo.AdamW",
                              ["optimizer.proj_rank=8", "optimizer.update_proj_gap=5"]),
    "badam": check_optimizer("badam", "badam.block_optim.BlockOptimizer"),
    "neat_packing": check_neat_packing,
    "enable_thinking": check_enable_thinking,
    "pref_ftx": check_pref_ftx,
    "ppo_score_norm": check_ppo_scale_rewards,
}


@pytest.mark.parametrize("knob", list(KNOBS))
def test_knob_effect(knob, tiny_dir, tmp_path, monkeypatch):
    KNOBS[knob](tmp_path, monkeypatch)


# ---------------------------------------------------------------------------
# GPU-only knobs: composed, validated and turned into TrainingArguments here


@pytest.mark.parametrize("preset, stage, offload", [
    ("zero2", 2, False), ("zero2_offload", 2, True), ("zero3", 3, False), ("zero3_offload", 3, True)])
def test_deepspeed_presets_become_the_trainers_deepspeed_config(preset, stage, offload, tmp_path):
    from ftrun.fit import training_arguments

    cfg = resolved(compose_cfg([f"sharding={preset}", "grad_accum=2"]))
    validate(cfg)
    args = training_arguments(cfg, tmp_path).to_dict()
    zero = args["deepspeed"]["zero_optimization"]
    assert zero["stage"] == stage
    assert ("offload_optimizer" in zero) == offload and ("offload_param" in zero) == (offload and stage == 3)
    if torch.cuda.is_available():
        return
    with pytest.raises(ConfigError, match=f"sharding={preset.split('_')[0]}: .*CUDA"):
        validate_device(cfg)


@pytest.mark.parametrize("preset", ["fsdp", "fsdp_offload"])
def test_fsdp_presets_become_the_trainers_fsdp_options(preset, tmp_path):
    from ftrun.fit import sharding_arguments

    cfg = resolved(compose_cfg([f"sharding={preset}"]))
    validate(cfg)
    fsdp = sharding_arguments(cfg)
    assert fsdp["fsdp"].split() == ["full_shard", "auto_wrap"] + (["offload"] if preset.endswith("offload") else [])


def test_liger_and_flash_attention_are_refused_on_cpu_with_the_fix(tmp_path):
    from ftrun.fit import training_arguments

    cfg = resolved(compose_cfg(["enable_liger_kernel=true"]))
    assert training_arguments(cfg, tmp_path).use_liger_kernel is True
    if torch.cuda.is_available():
        pytest.skip("a GPU is here: test_gpu_knobs_train runs them")
    with pytest.raises(ConfigError, match="model.liger_kernel=false"):
        validate_device(cfg)
    with pytest.raises(ConfigError, match="use sdpa"):
        validate_device(resolved(compose_cfg(["model.attn_implementation=flash_attention_2"])))


def _hqq_installed(monkeypatch, installed: bool) -> None:
    """Make ``find_spec("hqq")`` answer as if the hqq package were (not) installed, whatever this machine has."""
    import importlib.machinery
    import importlib.util

    real = importlib.util.find_spec

    def find_spec(name, *args, **kwargs):
        if name == "hqq":
            return importlib.machinery.ModuleSpec("hqq", None) if installed else None
        return real(name, *args, **kwargs)

    monkeypatch.setattr(importlib.util, "find_spec", find_spec)


def test_hqq_without_its_package_names_the_install(monkeypatch):
    cfg = resolved(compose_cfg(["method=qlora", "quantization_method=hqq"]))
    validate(cfg)
    _hqq_installed(monkeypatch, False)
    with pytest.raises(ConfigError, match=r"method.quant_method=hqq: needs the hqq package \(pip install hqq\)"):
        validate_device(cfg)


def test_hqq_is_refused_while_transformers_cannot_load_it(monkeypatch):
    from transformers.quantizers.base import HfQuantizer
    from transformers.quantizers.quantizer_hqq import HqqHfQuantizer

    cfg = resolved(compose_cfg(["method=qlora", "quantization_method=hqq"]))
    validate(cfg)
    if HqqHfQuantizer.get_quantize_ops is not HfQuantizer.get_quantize_ops:
        pytest.skip("this transformers loads HQQ models: the refusal is gone")
    _hqq_installed(monkeypatch, True)  # the refusal is transformers', whether or not hqq is installed here
    with pytest.raises(ConfigError, match="method.quant_method=bnb"):
        validate_device(cfg)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (none on this machine)")
@pytest.mark.parametrize("overrides", [
    ["model.liger_kernel=true"],
    ["model.attn_implementation=flash_attention_2", "data.packing=true"],
    ["method=full", "optimizer=galore", "precision=bf16"],
    ["method=full", "sharding=zero2"],
    ["method=full", "sharding=zero3_offload"],
], ids=["liger", "flash_attention_packing", "galore_bf16", "zero2", "zero3_offload"])
def test_gpu_knobs_train(overrides, tiny_dir, tmp_path, monkeypatch):
    import importlib.util

    if "model.liger_kernel=true" in overrides and importlib.util.find_spec("liger_kernel") is None:
        pytest.skip("liger-kernel is not installed")
    if "flash_attention_2" in " ".join(overrides) and importlib.util.find_spec("flash_attn") is None:
        pytest.skip("flash-attn is not installed")
    trainer, result = run_capturing(monkeypatch, tmp_path, overrides)
    assert result["global_step"] == 2 and math.isfinite(result["objective"])


# ---------------------------------------------------------------------------
# validation: impossible combinations fail before any model loads, naming the fix


@pytest.mark.parametrize("overrides, message", [
    (["optimizer=galore"], "optimizer=galore: galore projects .* use method=full"),
    (["optimizer=apollo", "method=qlora"], "optimizer=apollo: .*LoRA has none"),
    (["optimizer=badam"], "method=lora: optimizer=badam .* use method=full"),
    (["method=full", "optimizer=galore", "optimizer.layerwise=true", "grad_accum=2"], "grad_accum=2: .*grad_accum=1"),
    (["method=full", "optimizer=apollo", "optimizer.proj_type=std"], "optimizer.proj_type=std: apollo takes random, svd"),
    (["optimizer.layerwise=true"], "optimizer.layerwise=true: only galore and apollo"),
    (["method=full", "optimizer=badam", "sharding=zero3"], "sharding=zero3: badam"),
    (["sharding.offload=true"], "sharding.offload=true: offloading needs sharding=zero2"),
    (["rope_scaling=linear", "model.rope_factor=1"], "model.rope_factor=1: must be > 1"),
    (["cutoff_len=1024"], "cutoff_len=1024: .*model.rope_scaling=linear"),
    (["rope_scaling=yarn", "cutoff_len=2048"], "cutoff_len=2048: .*raise model.rope_factor"),
    (["method=qlora", "use_pissa=true"], "method.pissa=true: PiSSA .*method=lora"),
    (["create_new_adapter=true"], "method.create_new_adapter=true: .*method.adapter="),
    (["adapter_name_or_path=/nonexistent"], "method.adapter=/nonexistent: no adapter_config.json"),
    (["method=full", "additional_target=[lm_head]"], "method.extra_modules=\\[lm_head\\]: method=full trains"),
    (["method=llama_pro", "method.expand_layers=3"], "method.expand_layers=3: must divide"),
    (["quantization_method=hqq"], "method.quant_method=hqq: only method=qlora"),
    (["pref_ftx=0.5"], "stage.pref_ftx=0.5: .*stage=sft has none"),
    (["stage=dpo", "pref_ftx=-1"], "stage.pref_ftx=-1: must be >= 0"),
    (["stage=dpo", "pref_ftx=1", "stage.loss_type=[sigmoid,sft]"], "already holds sft"),
])
def test_impossible_combinations_name_the_fix(overrides, message):
    with pytest.raises(ConfigError, match=message):
        validate(compose_cfg(overrides))


def test_llamafactory_names_are_aliases_of_the_homes():
    assert canonical_overrides(["use_pissa=true", "neat_packing=false", "pref_ftx=0.1"]) == [
        "method.pissa=true", "data.neat_packing=false", "stage.pref_ftx=0.1"]
    cfg = compose_cfg(["rope_scaling=yarn", "additional_target=[lm_head]", "enable_thinking=false"])
    assert cfg.model.rope_scaling == "yarn" and list(cfg.method.extra_modules) == ["lm_head"]
    assert cfg.model.enable_thinking is False


# ---------------------------------------------------------------------------
# MLflow params and sweeps


def test_knobs_are_mlflow_params(tmp_path, mlflow_uri):
    from mlflow.tracking import MlflowClient

    from ftrun.tracking import make_tracker

    cfg = resolved(compose_cfg(["method=full", "optimizer=galore", "optimizer.proj_rank=8", "rope_scaling=yarn",
                                "neat_packing=false", "sharding=zero3_offload", "enable_thinking=false"]))
    tracker = make_tracker(cfg, tmp_path)
    tracker.finish()
    params = MlflowClient(mlflow_uri).get_run(tracker.run_id).data.params
    assert params["optimizer.name"] == "galore" and params["optimizer.proj_rank"] == "8"
    assert params["model.rope_scaling"] == "yarn" and params["data.neat_packing"] == "False"
    assert params["sharding.name"] == "zero3" and params["sharding.offload"] == "True"
    assert params["model.enable_thinking"] == "False" and params["method.pissa"] == "False"


def test_knobs_are_sweepable():
    from sweeper.space import parse_search_space, suggest, to_override
    import optuna

    space = parse_search_space({}, ["model.rope_scaling=choice(linear,dynamic,yarn,llama3)",
                                    "optimizer.proj_rank=int(interval(4,32))", "neat_packing=choice(true,false)",
                                    "optimizer=choice(galore,apollo,badam)"])
    study = optuna.create_study()
    for _ in range(6):
        trial = study.ask()
        values = {name: suggest(trial, name, d) for name, d in space.distributions.items()}
        cfg = compose_cfg(["method=full", *[to_override(n, v) for n, v in values.items()]])
        assert cfg.optimizer.name == values["optimizer"] and cfg.model.rope_scaling == values["model.rope_scaling"]
        assert cfg.data.neat_packing == values["neat_packing"]
        validate(cfg)
        study.tell(trial, 0.0)


def test_runs_recorded_before_the_knobs_resume():
    """A checkpoint whose config predates these keys resumes when they are at their defaults."""
    from ftrun.config import flatten, to_container, training_differences

    new_keys = ("model.rope_scaling", "model.rope_factor", "method.pissa", "data.neat_packing", "stage.pref_ftx",
                "sharding.name", "sharding.offload", "optimizer.proj_rank")
    old = to_container(resolved(compose_cfg([])))
    for key in new_keys:
        group, leaf = key.split(".")
        old[group].pop(leaf)
    del old["sharding"]  # the group did not exist either
    assert all(k not in flatten(old) for k in new_keys)
    assert training_differences(old, resolved(compose_cfg([]))) == {}
    assert training_differences(old, resolved(compose_cfg(["rope_scaling=yarn"]))) == {
        "model.rope_scaling": ("unset", "yarn")}
