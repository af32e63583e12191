"""Measure the real peak memory of a few training steps on CPU, to hold ftrun.estimate against.

:func:`measure` loads the model and applies the method exactly as a run does
(``ftrun.model``), then trains ``steps`` optimizer steps with transformers'
Trainer and the run's own arguments (``ftrun.train.training_arguments``) on
random token rows that are all ``cutoff_len`` long (the worst batch a run can
see), then evaluates one eval batch when the run would evaluate.

Two figures, both real:

- ``tensor_peak``: the most bytes held by PyTorch tensors at any moment from
  before the model loads to the end, from the allocation and free events that
  ``torch.profiler`` records (``profile_memory=True``). It is the CPU
  counterpart of ``torch.cuda.max_memory_allocated`` and what the estimate
  models; memory allocated outside PyTorch's allocator is not in it;
- ``rss_peak_delta``: the rise of the process's resident memory high-water mark
  (Linux ``VmHWM``, reset through ``/proc/self/clear_refs``) over its resident
  size just before the model loads. It adds the allocator's slack, library code
  paged in by the first use of an operator, and Python objects.

Checkpoints load sequentially here (``HF_DEACTIVATE_ASYNC_LOAD=1``): transformers'
loader threads allocate outside the profiled thread.

Run it in a fresh process per case (``python -m ftrun.estimate ... estimate.measure=true``):
the resident figure depends on what the process did before.
"""

from __future__ import annotations

import gc
import logging
import os
import tempfile
from pathlib import Path

log = logging.getLogger("ftrun.estimate.measured_peak")


def _status_kib(key: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    return 0


def _reset_high_water_mark() -> bool:
    try:
        Path("/proc/self/clear_refs").write_text("5")  # Linux: VmHWM := VmRSS
        return True
    except OSError:
        return False


def _tensor_peak(prof) -> int:
    """The largest running sum of CPU allocations minus frees among the profiler's memory events."""
    events = [e for e in prof.profiler.kineto_results.events()
              if e.name() == "[memory]" and str(e.device_type()).endswith("CPU")]
    events.sort(key=lambda e: e.start_ns())
    held = peak = 0
    for e in events:
        held += e.nbytes()
        peak = max(peak, held)
    return peak


def random_rows(n: int, length: int, vocab: int, seed: int):
    import torch

    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, vocab, (n, length), generator=g)
    return [{"input_ids": r, "attention_mask": torch.ones_like(r), "labels": r.clone()} for r in ids]


def measure(cfg, steps: int = 2, workdir=None) -> dict:
    """Peak memory of loading the model and training ``steps`` steps (plus one eval batch), on CPU."""
    from ftrun.fit import quiet_libraries

    quiet_libraries()
    # transformers loads checkpoint shards in worker threads by default; the profiler sees only this
    # thread's allocations, so load sequentially (the same tensors, one after another)
    before = os.environ.get("HF_DEACTIVATE_ASYNC_LOAD")
    os.environ["HF_DEACTIVATE_ASYNC_LOAD"] = "1"
    try:
        return _measure(cfg, steps, workdir)
    finally:
        if before is None:
            os.environ.pop("HF_DEACTIVATE_ASYNC_LOAD", None)
        else:
            os.environ["HF_DEACTIVATE_ASYNC_LOAD"] = before


def _measure(cfg, steps: int, workdir) -> dict:
    import torch
    from omegaconf import OmegaConf
    from torch.profiler import ProfilerActivity, profile
    from transformers import default_data_collator, set_seed

    from ftrun.config import has_eval
    from ftrun.model import apply_method, load_model, model_config_dict
    from ftrun.fit import argmax_logits, exact_match, training_arguments
    from ftrun.linear_cross_entropy import trainer_class

    if torch.cuda.is_available():
        raise RuntimeError("measure() measures CPU memory; hide the GPU (CUDA_VISIBLE_DEVICES=)")
    cfg = OmegaConf.create(OmegaConf.to_container(cfg, resolve=True))
    cfg.max_steps = steps
    cfg.train.save_steps = 0
    cfg.train.eval_steps = 0
    cfg.train.logging_steps = steps
    cfg.tracking.enabled = False
    set_seed(cfg.seed)
    vocab = int(model_config_dict(cfg.model)["vocab_size"])
    length = int(cfg.data.cutoff_len)
    train_rows = random_rows(cfg.batch_size * cfg.grad_accum * steps, length, vocab, cfg.seed)
    eval_rows = random_rows(cfg.train.eval_batch_size, length, vocab, cfg.seed + 1) if has_eval(cfg) else None
    gc.collect()
    hwm_ok = _reset_high_water_mark()
    rss0 = _status_kib("VmRSS") * 1024
    with tempfile.TemporaryDirectory(dir=workdir) as tmp:
        with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
            model = apply_method(load_model(cfg), cfg)
            trainer = trainer_class(cfg)(model=model, args=training_arguments(cfg, Path(tmp), has_eval=False),
                                         train_dataset=train_rows, data_collator=default_data_collator,
                                         compute_metrics=exact_match, preprocess_logits_for_metrics=argmax_logits)
            trainer.train()
            if eval_rows is not None:
                trainer.evaluate(eval_dataset=eval_rows)
            done = trainer.state.global_step
            del trainer, model
            gc.collect()
    rss_peak = _status_kib("VmHWM") * 1024 if hwm_ok else 0
    return {"tensor_peak": _tensor_peak(prof), "rss_peak_delta": max(rss_peak - rss0, 0), "rss_before": rss0,
            "steps": done, "rows_length": length, "eval_rows": len(eval_rows or []),
            "threads": torch.get_num_threads()}


# ---------------------------------------------------------------------------
# random-weight models of real shapes (nothing is downloaded)

# the published config.json shapes of Qwen2.5-0.5B and Qwen2.5-1.5B (Qwen2 architecture, tied embeddings)
REAL_SHAPES = {
    "qwen2.5-0.5b-like": dict(model_type="qwen2", hidden_size=896, intermediate_size=4864, num_hidden_layers=24,
                              num_attention_heads=14, num_key_value_heads=2, vocab_size=151936,
                              max_position_embeddings=32768, tie_word_embeddings=True, rms_norm_eps=1e-6),
    "qwen2.5-1.5b-like": dict(model_type="qwen2", hidden_size=1536, intermediate_size=8960, num_hidden_layers=28,
                              num_attention_heads=12, num_key_value_heads=2, vocab_size=151936,
                              max_position_embeddings=32768, tie_word_embeddings=True, rms_norm_eps=1e-6),
}


def random_model(dest, shape: str, layers=None, dtype: str = "bfloat16") -> Path:
    """A model directory with random weights of ``REAL_SHAPES[shape]`` (``layers`` decoder layers if given).

    Saved in bf16 like the published checkpoints, so a run that loads it in fp32 allocates its
    weights (rather than mapping the file).
    """
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    dest = Path(dest)
    if (dest / "config.json").is_file():
        return dest
    spec = dict(REAL_SHAPES[shape])
    if layers is not None:
        spec["num_hidden_layers"] = int(layers)
    config = AutoConfig.for_model(spec.pop("model_type"), **spec)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config, dtype=getattr(torch, dtype))
    tmp = dest.with_name(dest.name + ".partial")
    model.save_pretrained(str(tmp))
    os.replace(tmp, dest)  # the directory appears only when complete
    return dest
