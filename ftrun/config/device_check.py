"""Checks that need this machine: the precision and the optional libraries a knob runs on (imports torch)."""

from __future__ import annotations

from typing import Any

from omegaconf import DictConfig

from ftrun.config.errors import ConfigError, show_value


def validate_device(cfg: DictConfig) -> None:
    """Check that the precision can run on this machine (imports torch)."""
    import torch

    cuda = torch.cuda.is_available()
    if cfg.precision == "fp16" and not cuda:
        raise ConfigError("precision=fp16: fp16 mixed precision needs a CUDA GPU; on CPU use precision=fp32 or bf16")
    if cfg.precision in ("bf16", "pure_bf16") and cuda and not torch.cuda.is_bf16_supported():
        raise ConfigError(
            f"precision={cfg.precision}: this GPU ({torch.cuda.get_device_name()}) cannot compute in bf16; "
            "use precision=fp16 or fp32"
        )
    if cfg.method.name == "qlora" and cfg.method.compute_dtype == "fp16" and not cuda:
        raise ConfigError("method.compute_dtype=fp16: fp16 matmuls need a CUDA GPU; on CPU use fp32 or bf16")
    _validate_packages(cfg, cuda)


def _validate_packages(cfg: DictConfig, cuda: bool) -> None:
    """The optional libraries a knob runs on: installed, and a device they work on."""
    import importlib.util

    def need(module: str, key: str, value: Any, pip: str) -> None:
        if importlib.util.find_spec(module) is None:
            raise ConfigError(f"{key}={show_value(value)}: needs the {pip} package (pip install {pip})")

    o, md, sh = cfg.optimizer, cfg.model, cfg.sharding
    if str(o.name).startswith("galore"):
        need("galore_torch", "optimizer", o.name, "galore-torch")
    if o.name == "apollo":
        need("apollo_torch", "optimizer", o.name, "apollo-torch")
    if o.name == "badam":
        need("badam", "optimizer", o.name, "badam")
    if md.liger_kernel:
        if not cuda:
            raise ConfigError("model.liger_kernel=true: Liger's kernels are Triton kernels for CUDA GPUs; "
                              "on CPU set model.liger_kernel=false")
        need("liger_kernel", "model.liger_kernel", True, "liger-kernel")
    if md.attn_implementation.startswith("flash_attention") and not cuda:
        raise ConfigError(f"model.attn_implementation={md.attn_implementation}: flash attention runs on CUDA GPUs "
                          "only; on CPU use sdpa (packing keeps samples apart with it too)")
    if sh.name != "none":
        if not cuda:
            raise ConfigError(f"sharding={sh.name}: DeepSpeed ZeRO and FSDP shard over CUDA GPUs; on CPU use "
                              "sharding=none (start several GPUs with accelerate launch -m ftrun ...)")
        if sh.name.startswith("zero"):
            need("deepspeed", "sharding", sh.name, "deepspeed")
    if cfg.method.name == "qlora" and cfg.method.quant_method == "hqq":
        need("hqq", "method.quant_method", "hqq", "hqq")
        from transformers.quantizers.base import HfQuantizer
        from transformers.quantizers.quantizer_hqq import HqqHfQuantizer

        if HqqHfQuantizer.get_quantize_ops is HfQuantizer.get_quantize_ops:
            import transformers

            raise ConfigError(f"method.quant_method=hqq: transformers {transformers.__version__} cannot load "
                              "models with HQQ yet (its HQQ quantizer is a stub); use method.quant_method=bnb")
