"""The causal LM loss straight from the decoder's hidden states, a chunk of tokens at a time.

transformers' loss builds the whole ``[tokens x vocabulary]`` logits, upcasts them, keeps their
log-softmax for the backward pass and allocates two more tensors of that size while it runs backward: for a
152k vocabulary and 1,024 tokens that is 0.6 GB each, and on CPU those passes cost as much time as the LM
head's matmuls (bench/full_ft_mfu.py). Here the LM head and the cross-entropy are one autograd function
(as Liger-Kernel's fused linear cross-entropy on GPU, Hsu et al. 2024): only the tokens with a target are
projected, a chunk at a time; each chunk's softmax becomes its gradient in place, and the gradients of the
hidden states and of the head's weight are computed in the forward pass, so no tensor over the vocabulary
outlives its chunk. Same loss as transformers' ``ForCausalLMLoss`` (sum over targets / ``num_items_in_batch``,
or the mean), equal within float rounding (tests/ftrun/test_linear_cross_entropy.py).

The Trainer from :func:`trainer_class` uses it for ``stage=sft``/``pt`` when ``train.chunked_loss`` is on and the
model's head is a plain linear layer of a known decoder family (:func:`loss_head`): in training steps, and in
evaluation, where exact match gets the argmax token ids (:func:`greedy_ids`, chunked too) instead of the logits.
"""

from __future__ import annotations

import functools
import inspect
from typing import Optional, Tuple

import torch

from ftrun.data.encode import IGNORE_INDEX
CHUNK_BYTES = 2**28  # one chunk's fp32 logits: 256 MiB (bench/full_ft_mfu.py: 128 MiB was ~5% slower than 512 MiB for full FT,
# more passes over the head's gradient; 512 MiB overshoots the estimate where prompts are masked)
# decoder families whose logits are exactly lm_head(final hidden state): no soft-capping (Gemma 2), no
# logit scale (Cohere), no hidden-state scaling before the head (MiniCPM), no router loss added (MoE)
PLAIN_HEADS = ("llama", "mistral", "qwen2", "qwen3", "glm", "glm4", "phi3")


class LinearCrossEntropy(torch.autograd.Function):
    """scale x sum over targets of -log softmax(hidden @ weight.T)[target], with its gradients computed in the
    forward pass (already times ``scale``: the backward pass of a loss that is not scaled again does nothing)."""

    @staticmethod
    def forward(ctx, hidden, weight, targets, chunk: int, scale: float):
        want_h, want_w = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        grad_h = torch.empty_like(hidden) if want_h else None
        grad_w = torch.zeros(weight.shape, dtype=torch.float32, device=weight.device) \
            if want_w and len(hidden) == 0 else None
        total = torch.zeros((), dtype=torch.float32, device=hidden.device)
        # one buffer for every chunk's logits: a large tensor freed and allocated again is faulted in again
        buf = torch.empty(min(chunk, hidden.shape[0]), weight.shape[0], dtype=weight.dtype, device=weight.device)
        for start in range(0, hidden.shape[0], chunk):
            h, y = hidden[start:start + chunk], targets[start:start + chunk, None]
            logits = torch.mm(h, weight.t(), out=buf[:len(h)]).float()  # the head's, upcast as transformers' loss
            picked = logits.gather(1, y)
            top = logits.amax(1, keepdim=True)
            sums = logits.sub_(top).exp_().sum(1, keepdim=True)  # in place: no second tensor of this size
            total += (top + sums.log() - picked).sum()
            if not (want_h or want_w):
                continue
            grad = logits.mul_(scale / sums).scatter_add_(1, y, torch.full(y.shape, -scale, device=y.device))
            grad = grad.to(weight.dtype)  # d loss / d logits = scale x (softmax - one-hot)
            if want_h:
                torch.mm(grad, weight, out=grad_h[start:start + chunk])
            if want_w:  # accumulated in fp32 whatever the head's dtype
                if grad_w is None:
                    grad_w = torch.mm(grad.t().float(), h.float())
                else:
                    grad_w.addmm_(grad.t().float(), h.float())
        ctx.weight_dtype = weight.dtype
        ctx.grads = (grad_h, grad_w)  # not saved tensors: handed to autograd without a copy (backward)
        return total * scale

    @staticmethod
    def backward(ctx, grad_out):
        (grad_h, grad_w), ctx.grads = ctx.grads, None  # the only references: autograd keeps them as .grad
        if grad_out.item() != 1.0:  # the Trainer divides the loss by the gradient accumulation steps
            grad_h = None if grad_h is None else grad_h.mul_(grad_out.to(grad_h.dtype))
            grad_w = None if grad_w is None else grad_w.mul_(grad_out)
        if grad_w is not None:
            grad_w = grad_w.to(ctx.weight_dtype)
        return grad_h, grad_w, None, None, None


def causal_lm_loss(hidden: torch.Tensor, weight: torch.Tensor, labels: torch.Tensor,
                   num_items_in_batch=None, chunk_bytes: int = CHUNK_BYTES) -> torch.Tensor:
    """transformers' ``ForCausalLMLoss`` over ``lm_head(hidden)`` without building the logits.

    ``labels`` are unshifted, as the model takes them: position t predicts label t+1; -100 is no target.
    """
    shifted = torch.nn.functional.pad(labels, (0, 1), value=IGNORE_INDEX)[..., 1:].reshape(-1)
    rows = (shifted != IGNORE_INDEX).nonzero().squeeze(1)
    flat = hidden.reshape(-1, hidden.shape[-1])
    chunk = chunk_tokens(weight.shape[0], chunk_bytes)
    denom = float(rows.numel() if num_items_in_batch is None else num_items_in_batch)
    return LinearCrossEntropy.apply(flat.index_select(0, rows), weight, shifted.index_select(0, rows), chunk,
                                    1.0 / max(denom, 1.0))


@torch.no_grad()
def greedy_ids(hidden: torch.Tensor, weight: torch.Tensor, labels: torch.Tensor,
               chunk_bytes: int = CHUNK_BYTES) -> torch.Tensor:
    """The argmax token at every position whose next label is a target (0 elsewhere), shaped as ``labels``: what
    exact match reads off the logits, a chunk of positions at a time."""
    shifted = torch.nn.functional.pad(labels, (0, 1), value=IGNORE_INDEX)[..., 1:].reshape(-1)
    rows = (shifted != IGNORE_INDEX).nonzero().squeeze(1)
    flat = hidden.reshape(-1, hidden.shape[-1]).index_select(0, rows)
    ids = torch.zeros(shifted.shape, dtype=torch.long, device=labels.device)
    chunk = chunk_tokens(weight.shape[0], chunk_bytes)
    buf = torch.empty(min(chunk, len(rows)), weight.shape[0], dtype=weight.dtype, device=weight.device)
    for start in range(0, len(rows), chunk):
        h = flat[start:start + chunk]
        ids[rows[start:start + chunk]] = torch.mm(h, weight.t(), out=buf[:len(h)]).argmax(-1)
    return ids.view(labels.shape)


def chunk_tokens(vocab: int, chunk_bytes: int = CHUNK_BYTES) -> int:
    """Tokens per chunk: as many as fit ``chunk_bytes`` of fp32 logits (at least 16)."""
    return max(16, chunk_bytes // (4 * vocab))


def loss_head(model) -> Tuple[Optional[torch.nn.Module], Optional[torch.nn.Linear]]:
    """(decoder, lm_head) of a causal LM whose logits are exactly ``lm_head(decoder(...))``, else (None, None).

    ``model`` may be a PEFT model; a head that LoRA or quantization replaced keeps transformers' loss.
    """
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    config = getattr(base, "config", None)
    if getattr(config, "model_type", None) not in PLAIN_HEADS or not hasattr(base, "get_decoder"):
        return None, None
    head = base.get_output_embeddings()
    if type(head) is not torch.nn.Linear or head.bias is not None:
        return None, None
    if "logits_to_keep" not in inspect.signature(base.forward).parameters:
        return None, None
    return base.get_decoder(), head


def wanted(cfg) -> bool:
    """``train.chunked_loss``, unless ``model.liger_kernel`` fuses the head and the loss already (Liger on a GPU)."""
    return bool(cfg.train.get("chunked_loss", False)) and not cfg.model.get("liger_kernel", False)


def applies(cfg, model_type: Optional[str]) -> bool:
    """Whether a run of ``cfg`` on a model of ``model_type`` trains with :func:`causal_lm_loss`."""
    return wanted(cfg) and cfg.stage.name in ("sft", "pt") and model_type in PLAIN_HEADS


def trainer_class(cfg):
    """transformers' Trainer, or with ``train.chunked_loss`` one whose training steps use :func:`causal_lm_loss`."""
    from transformers import Trainer

    return _chunked_loss_trainer() if wanted(cfg) else Trainer


@functools.cache
def _chunked_loss_trainer():
    from transformers import Trainer

    class ChunkedLossTrainer(Trainer):
        """transformers' Trainer whose loss comes from :func:`causal_lm_loss`, in training and evaluation."""

        def _head(self, model, inputs):
            """(decoder, head) where this batch's loss can be chunked, else (None, None)."""
            if ("labels" not in inputs or self.label_smoother is not None or self.compute_loss_func is not None
                    or self.is_fsdp_enabled or self.is_deepspeed_enabled):
                return None, None
            return loss_head(self.accelerator.unwrap_model(model))

        @staticmethod
        def _hidden(model, decoder, inputs):
            """The decoder's last hidden states, through any wrapper (DDP); the head runs on one position only."""
            seen = []
            hook = decoder.register_forward_hook(lambda _m, _a, out: seen.append(out[0]))
            try:
                model(**{k: v for k, v in inputs.items() if k != "labels"}, logits_to_keep=1)
            finally:
                hook.remove()
            return seen[-1]

        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            decoder, head = self._head(model, inputs)
            if return_outputs or decoder is None or not model.training:
                return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
            hidden = self._hidden(model, decoder, inputs)
            return self._scaled(causal_lm_loss(hidden, head.weight, inputs["labels"], num_items_in_batch),
                                num_items_in_batch)

        def _scaled(self, loss, num_items_in_batch):
            """As ``Trainer.compute_loss``: a loss over the tokens of every rank is multiplied back by the ranks."""
            if self.args.average_tokens_across_devices and self.model_accepts_loss_kwargs \
                    and num_items_in_batch is not None:
                loss = loss * (self.accelerator.num_processes if self.args.n_gpu <= 1 else self.args.n_gpu)
            return loss

        def prediction_step(self, model, inputs, prediction_loss_only, ignore_keys=None):
            """Evaluation: the loss as transformers' and, for exact match, the argmax token ids instead of the
            logits (``ftrun.fit.argmax_logits`` passes them through)."""
            decoder, head = self._head(model, inputs)
            if decoder is None or list(self.label_names) != ["labels"]:
                return super().prediction_step(model, inputs, prediction_loss_only, ignore_keys)
            inputs = self._prepare_inputs(inputs)
            labels = inputs["labels"]
            with torch.no_grad():
                num_items = self._get_num_items_in_batch([inputs], self.args.device)
                hidden = self._hidden(model, decoder, inputs)
                loss = self._scaled(causal_lm_loss(hidden, head.weight, labels, num_items), num_items).detach()
                if prediction_loss_only:
                    return loss, None, None
                return loss, greedy_ids(hidden, head.weight, labels), labels.detach()

    return ChunkedLossTrainer
