"""The built-in tiny model: a small Llama with its own tokenizer, made without a network.

On first use it is built from ``model.tiny`` (:class:`ftrun.config.TinyArch`):
a byte-level BPE tokenizer trained on the letters task's text, a ChatML chat
template, random Llama weights, and a short pre-training on the *English*
letters task so that the base has skills for fine-tuning to map new
instructions onto (LoRA on purely random weights cannot learn: the frozen random
LM head caps every logit margin). The result is saved with ``save_pretrained``
and loaded like any local model afterwards.

The build is deterministic on a given machine, but not across machines: a thousand
pre-training steps carry the last-bit differences of one CPU's kernels (AVX2 against
AVX-512) into a different base, and with it different fine-tuning numbers. So the
default ``model.tiny`` ships built, in ``ftrun/assets/tiny-<hash>`` (made with
``python -m ftrun.tiny``), and every machine fine-tunes the same base; another
``model.tiny`` is built on first use. Either is cached under
``$FTRUN_CACHE/models/tiny-<hash>``; a file lock lets parallel processes share one
build, and the directory appears only when complete.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import os
import shutil
import tempfile
from dataclasses import asdict, is_dataclass
from pathlib import Path

from ftrun.contract import cache_root

log = logging.getLogger(__name__)

# bump when the recipe below changes, so old caches are not reused
RECIPE_VERSION = 1

CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
PRETRAIN_SEED = 7
SHIPPED = Path(__file__).parent / "assets"  # the default model.tiny, built: `python -m ftrun.tiny` remakes it


def tiny_path(arch) -> Path:
    """Where the model built from ``arch`` lives (built on demand by :func:`ensure_tiny`)."""
    spec = asdict(arch) if is_dataclass(arch) else dict(arch)
    key = hashlib.sha256(json.dumps([RECIPE_VERSION, spec], sort_keys=True).encode()).hexdigest()[:12]
    return cache_root() / "models" / f"tiny-{key}"  # ftrun.contract.cache_root: $FTRUN_CACHE


def ensure_tiny(arch) -> Path:
    """Build the tiny model for ``arch`` unless it is cached; return its directory."""
    dest = tiny_path(arch)
    if (dest / "config.json").is_file():
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    with open(dest.parent / f".{dest.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # another process may be building it right now
        if (dest / "config.json").is_file():
            return dest
        tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}-", dir=dest.parent))
        try:
            shipped = SHIPPED / dest.name
            if (shipped / "config.json").is_file():
                log.info("Copying the shipped tiny model to %s", dest)
                shutil.copytree(shipped, tmp, dirs_exist_ok=True)
            else:
                log.info("Building the tiny model once (cached at %s)", dest)
                _build(arch, tmp)
            os.replace(tmp, dest)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return dest


def _spec(arch) -> dict:
    return asdict(arch) if is_dataclass(arch) else {k: arch[k] for k in arch}


def build_tokenizer(vocab_size: int, seed: int):
    """Byte-level BPE (any text encodes, Chinese included) with a ChatML template."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    from ftrun import letters

    corpus = []
    for language in ("en", "zh"):
        for row in letters.letters(2000, seed + 100, language):
            corpus.append(f"{row['instruction']}\n{row['input']} {row['output']}")
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    bpe.train_from_iterator(corpus, trainer)
    tok = PreTrainedTokenizerFast(
        tokenizer_object=bpe,
        bos_token=None,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        padding_side="right",
    )
    tok.chat_template = CHATML_TEMPLATE
    return tok


def _build(arch, out: Path) -> None:
    import torch
    from transformers import DataCollatorForSeq2Seq, LlamaConfig, LlamaForCausalLM, Trainer, TrainingArguments, set_seed

    from ftrun import letters
    from ftrun.data import encode_rows

    spec = _spec(arch)
    set_seed(spec["seed"])
    tok = build_tokenizer(spec["vocab_size"], spec["seed"])
    config = LlamaConfig(
        vocab_size=len(tok),
        hidden_size=spec["hidden_size"],
        intermediate_size=spec["intermediate_size"],
        num_hidden_layers=spec["num_hidden_layers"],
        num_attention_heads=spec["num_attention_heads"],
        num_key_value_heads=spec["num_key_value_heads"],
        max_position_embeddings=spec["max_position_embeddings"],
        pad_token_id=tok.pad_token_id,
        eos_token_id=tok.eos_token_id,
        bos_token_id=None,
        tie_word_embeddings=False,
    )
    torch.manual_seed(spec["seed"])
    model = LlamaForCausalLM(config)
    if spec["pretrain_steps"] > 0:
        rows = letters.letters(spec["pretrain_steps"] * 16, PRETRAIN_SEED, "en")
        train, _ = encode_rows(rows, tok, cutoff_len=spec["max_position_embeddings"])
        args = TrainingArguments(
            output_dir=str(out / "pretrain"),
            per_device_train_batch_size=16,
            learning_rate=1e-3,
            num_train_epochs=1,
            lr_scheduler_type="cosine",
            warmup_steps=0.05,
            logging_steps=min(100, spec["pretrain_steps"]),  # a short pre-training logs its loss too
            save_strategy="no",
            report_to="none",
            use_cpu=not torch.cuda.is_available(),
            seed=spec["seed"],
            disable_tqdm=True,
        )
        trainer = Trainer(model=model, args=args, train_dataset=train,
                          data_collator=DataCollatorForSeq2Seq(tok, padding=True))
        trainer.train()
        losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
        log.info("tiny base pre-trained for %d steps, loss %.3f -> %.4f", spec["pretrain_steps"], losses[0], losses[-1])
        shutil.rmtree(out / "pretrain", ignore_errors=True)
    model.generation_config.pad_token_id = tok.pad_token_id
    model.generation_config.eos_token_id = tok.eos_token_id
    model.save_pretrained(out)
    tok.save_pretrained(out)
    (out / "ftrun_tiny.json").write_text(json.dumps({"recipe": RECIPE_VERSION, **spec}, indent=2))


def ship() -> Path:
    """Build the default ``model.tiny`` afresh into :data:`SHIPPED`, replacing the shipped copy."""
    from ftrun.config.schema import TinyArch

    arch = TinyArch()
    dest = SHIPPED / tiny_path(arch).name
    SHIPPED.mkdir(exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}-", dir=SHIPPED))
    try:
        _build(arch, tmp)
        tmp.chmod(0o755)
        shutil.rmtree(dest, ignore_errors=True)
        os.replace(tmp, dest)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return dest


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO)
    print(ship())
