"""``python -m ftrun.estimate [the overrides of a run] [estimate.devices=2 estimate.sharding=zero3 estimate.limit=80GiB]``

Peak memory per device of a run's process, estimated from the model's ``config.json``
alone (no weights are loaded: the model is built on PyTorch's meta device, so
parameter shapes, tied embeddings and the linear layers LoRA targets are exact).

The peak is what a run dies of:

- on CPU, resident memory: the **runtime's baseline** (interpreter, libraries, data
  pipeline, allocator slack: a real two-step run of the built-in tiny model, with MLflow or
  without as the run is tracked, measured once per machine and cached under ``$FTRUN_CACHE/estimate``; ``python -m ftrun.estimate.baseline``)
  plus the tensors' peak;
- on a GPU, device memory: the tensors' peak, plus the **CUDA context**, plus the caching
  allocator's **reserve and fragmentation** (cited constants, README "Memory estimate").

The **tensors' peak** (one line of the breakdown) is the larger of loading, the backward pass
(weights + optimizer states + saved activations + the loss's vocabulary-sized buffers), the
optimizer step (weights + gradients + states + its temporaries) and evaluation, from:

- **weights** at the dtype they load in (``model.dtype``, ``precision=pure_bf16``;
  qlora: bitsandbytes 4-bit nf4/fp4 with or without double quantization, or int8,
  for every linear layer but the LM head, and the rest upcast to fp32 as peft's
  ``prepare_model_for_kbit_training`` does);
- **trainable parameters** per method (full; freeze's last layers and extra
  modules; lora/qlora adapters of rank r on the targeted linears, in fp32, plus
  DoRA's magnitude vectors) and their **gradients**;
- **optimizer states**: adamw two per parameter in the parameter's dtype,
  adamw_8bit two bytes (blockwise, fp32 for tensors under 4096 elements), sgd one
  with momentum, adafactor factored row and column second moments;
- **activations** that autograd saves for ``batch_size x cutoff_len`` tokens (every
  sample as long as cutoff_len: the worst batch), per decoder layer with sdpa
  attention, with and without gradient checkpointing, plus the loss's buffers
  over the vocabulary, and the evaluation batch's logits;
- **sharding** over ``estimate.devices``: ZeRO-1 divides optimizer states,
  ZeRO-2 also gradients, ZeRO-3/FSDP also weights (plus one gathered layer); DDP
  divides nothing and adds gradient buckets.

``estimate.measure=true`` also runs a few real training steps on random tokens and prints the
measured tensor peak beside the estimate (``bench/memory_estimate.py`` does that for a table of
cases, and ``--process`` compares the process figure with real runs' peak resident memory).

For the sweeper: :func:`estimate` returns an :class:`Estimate`, :func:`fits` says whether a run's
process fits a memory limit and why not.
"""

from ftrun.estimate.breakdown import GiB, MiB, Estimate, gib
from ftrun.estimate.cli import ESTIMATE_KEYS, compose, main, parse_size, split_args
from ftrun.estimate.process import ALLOCATOR_RESERVE, CUDA_CONTEXT, estimate, fits, log_estimate
from ftrun.estimate.shapes import CONFIG_DTYPES, Shapes, shapes
from ftrun.estimate.tensors import (BNB_8BIT_BLOCK, BNB_8BIT_MIN_SIZE, DTYPE_BYTES, NF4_BYTES, SHARDINGS,
                                    tensor_estimate)

__all__ = ["ALLOCATOR_RESERVE", "BNB_8BIT_BLOCK", "BNB_8BIT_MIN_SIZE", "CONFIG_DTYPES", "CUDA_CONTEXT", "DTYPE_BYTES",
           "ESTIMATE_KEYS",
           "Estimate", "GiB", "MiB", "NF4_BYTES", "SHARDINGS", "Shapes", "compose", "estimate", "fits", "gib",
           "log_estimate", "main", "parse_size", "shapes", "split_args", "tensor_estimate"]
