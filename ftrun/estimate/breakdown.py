"""What an estimate returns: the peak of the process per device and the components it is made of."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import List

GiB = 2**30
MiB = 2**20


@dataclass
class Estimate:
    """Estimated peak memory of one run per device, in bytes, by component."""

    model: str
    method: str
    device: str
    """What the figures assume: cpu or cuda (optimizer temporaries and the process's overhead differ)."""
    devices: int
    sharding: str
    total_params: int
    trainable_params: int
    weights: int
    gradients: int
    optimizer: int
    activations: int
    """Saved for the backward pass at batch_size x cutoff_len, including the loss's log-softmax."""
    loss_buffers: int
    """Vocabulary-sized buffers that live only while the loss runs backward."""
    step_temporaries: int
    """What the optimizer step allocates on top (foreach copies, factored updates, gathered layers)."""
    eval_buffers: int
    """Evaluation: the logits of one eval batch and the loss over them."""
    load_buffers: int
    """Loading: on CPU the checkpoint shard being read (the largest file), on a GPU the largest tensor."""
    tensor_peak: int
    """The most bytes held by tensors at once (torch.cuda.max_memory_allocated; on CPU the profiler's events)."""
    phase: str
    """Where the tensor peak falls: load, backward, optimizer step or eval."""
    runtime: int = 0
    """On CPU the resident baseline of a run's process (interpreter, libraries, data); on a GPU the CUDA context."""
    allocator: int = 0
    """On a GPU the caching allocator's reserve and fragmentation above the tensors; on CPU 0 (in the baseline)."""
    peak: int = 0
    """The process's peak: tensor_peak + runtime + allocator (resident memory on CPU, device memory on a GPU)."""
    runtime_source: str = ""
    """Where the runtime figure comes from (the cached measurement, or the cited constant)."""
    weights_dtype: str = ""
    activation_dtype: str = ""
    tokens: int = 0
    gradient_checkpointing: bool = False
    notes: List[str] = field(default_factory=list)

    def line(self) -> str:
        """One line for a run's log: the peak and what it is made of."""
        ckpt = ", checkpointing" if self.gradient_checkpointing else ""
        per = f" per device ({self.devices} x {self.sharding})" if self.devices > 1 else ""
        return (f"Memory estimate: {gib(self.peak)}{per} on {self.device} = tensors {gib(self.tensor_peak)} at the "
                f"{self.phase} + {self.overhead_name()} {gib(self.runtime + self.allocator)} "
                f"(weights {gib(self.weights)} {self.weights_dtype}, grads {gib(self.gradients)}, "
                f"optimizer {gib(self.optimizer)}, activations {gib(self.activations)} for "
                f"{self.tokens} tokens{ckpt}; {self.trainable_params:,} of {self.total_params:,} parameters train)")

    def overhead_name(self) -> str:
        return "runtime baseline" if self.device == "cpu" else "CUDA context and allocator reserve"

    def table(self) -> str:
        rows = [("weights", self.weights, self.weights_dtype),
                ("gradients", self.gradients, f"{self.trainable_params:,} trainable parameters"),
                ("optimizer states", self.optimizer, ""),
                ("activations", self.activations, f"{self.tokens} tokens, {self.activation_dtype}"
                 + (", gradient checkpointing" if self.gradient_checkpointing else "")),
                ("loss buffers", self.loss_buffers, "while the loss runs backward"),
                ("optimizer step temporaries", self.step_temporaries, ""),
                ("eval buffers", self.eval_buffers, "one eval batch's logits"),
                ("load buffers", self.load_buffers, "checkpoint shard read while loading" if self.device == "cpu"
                 else "largest tensor converted while loading"),
                ("tensor peak", self.tensor_peak, f"at the {self.phase}"),
                ("runtime" if self.device == "cpu" else "CUDA context", self.runtime, self.runtime_source),
                ("allocator reserve", self.allocator, "caching allocator: reserved above allocated"
                 if self.device != "cpu" else "in the runtime baseline on CPU"),
                ("peak", self.peak, "of the process: resident memory" if self.device == "cpu"
                 else "of the device, as nvidia-smi shows it")]
        lines = [f"{self.model}, method={self.method}, {self.devices} device(s), sharding={self.sharding}, "
                 f"figures for {self.device}"]
        lines += [f"  {name:<28} {gib(n):>10}  {what}" for name, n, what in rows]
        lines += [f"  note: {n}" for n in self.notes]
        return "\n".join(lines)

    def as_dict(self) -> dict:
        return asdict(self)


def gib(n: float) -> str:
    """``1.23 GiB`` or, under 0.1 GiB, ``45.6 MiB``."""
    return f"{n / GiB:.2f} GiB" if n >= 0.1 * GiB else f"{n / MiB:.1f} MiB"
