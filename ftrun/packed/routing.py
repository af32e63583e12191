"""Routing the packed batch's rows to their own run's LoRA adapter: a patched forward of peft's LoRA ``Linear``
(runs of equal rank share one ``bmm`` over their stacked A and B), and each run's own dropout masks."""

from __future__ import annotations

from typing import Any, Dict, List


# ---------------------------------------------------------------------------
# routing rows to adapters


class Router:
    """Which rows of the packed batch belong to which adapter, read by every LoRA layer's forward.

    ``groups``: (adapter names, first row, rows per adapter) for runs placed next to each other;
    a group of equal-rank adapters with equal row counts is computed as one ``bmm``.
    """

    def __init__(self):
        self.groups: List[tuple] = []
        self.generators: Dict[str, Any] = {}  # per-adapter dropout generators
        self.widths: Dict[str, int] = {}  # each adapter's own micro-batch width (before the pack's padding)
        self.use_bmm = True

    def set(self, spans: List[tuple], ranks: Dict[str, int]) -> None:
        """``spans``: (adapter, first row, rows) in batch order."""
        groups: List[tuple] = []
        for name, start, rows in spans:
            if (self.use_bmm and groups and ranks[groups[-1][0][-1]] == ranks[name] and groups[-1][2] == rows
                    and groups[-1][1] + rows * len(groups[-1][0]) == start):
                groups[-1][0].append(name)
            else:
                groups.append(([name], start, rows))
        self.groups = groups


def _routed_forward(router: Router):
    import torch
    import torch.nn.functional as F

    def forward(self, x, *args, **kwargs):

        result = self.base_layer(x, *args, **kwargs)
        parts, tiled = _group_inputs(x, router.groups)
        deltas = []
        for (names, start, rows), xs in zip(router.groups, parts):
            names = [n for n in names if n in self.lora_A]
            if not names:
                deltas.append(None)
                continue
            xs = xs.to(self.lora_A[names[0]].weight.dtype)
            if self.training:
                xs = _dropout(self, names, xs, rows, router)
            if len(names) == 1:
                n = names[0]
                delta = F.linear(F.linear(xs, self.lora_A[n].weight), self.lora_B[n].weight) * self.scaling[n]
            else:
                g = len(names)
                a = torch.stack([self.lora_A[n].weight for n in names])  # (g, r, in)
                b = torch.stack([self.lora_B[n].weight for n in names])  # (g, out, r)
                scale = torch.tensor([self.scaling[n] for n in names], dtype=xs.dtype, device=xs.device)
                flat = xs.reshape(g, -1, xs.shape[-1])  # (g, rows*seq, in)
                delta = torch.bmm(torch.bmm(flat, a.transpose(1, 2)), b.transpose(1, 2)) * scale.view(g, 1, 1)
                delta = delta.reshape(*xs.shape[:-1], delta.shape[-1])
            deltas.append(delta.to(result.dtype))
        if tiled and all(d is not None for d in deltas):
            # one add of every group's rows: an in-place add per group's slice would, in backward, copy and
            # zero-fill the whole gradient once per group (autograd's CopySlices)
            return result + torch.cat(deltas) if len(deltas) > 1 else result + deltas[0]
        for (names, start, rows), delta in zip(router.groups, deltas):
            if delta is not None:
                result[start:start + delta.shape[0]] += delta
        return result

    return forward


def _group_inputs(x, groups):
    """Each group's rows of ``x``, and whether the groups tile the batch in order. Tiled: one ``split`` (its
    backward is one node; a slice per group would each build a zero gradient the size of ``x``)."""
    sizes = [rows * len(names) for names, _, rows in groups]
    starts = [start for _, start, _ in groups]
    if starts == [sum(sizes[:k]) for k in range(len(sizes))] and sum(sizes) == x.shape[0]:
        return x.split(sizes), True
    return [x[start:start + size] for start, size in zip(starts, sizes)], False


def _dropout(layer, names, xs, rows, router):
    """Each adapter's dropout on its own rows, its masks from its own generator.

    The mask is drawn as torch's CPU dropout draws it (``bernoulli_(1 - p)`` on a tensor of the
    run's own micro-batch shape, before the pack padded it wider, then divided by ``1 - p``), from a
    generator seeded as the alone run's global RNG is when its training starts, and in the same
    order (one draw per LoRA layer per forward), so the masks are the alone run's masks.
    """
    import torch

    parts, changed = [], False
    for k, n in enumerate(names):
        part = xs[k * rows:(k + 1) * rows]
        drop = layer.lora_dropout[n]
        p = getattr(drop, "p", 0.0)
        if p > 0:
            width = router.widths.get(n, part.shape[1])
            noise = part.new_empty((part.shape[0], width, *part.shape[2:]))
            noise.bernoulli_(1 - p, generator=router.generators[n]).div_(1 - p)
            if width < part.shape[1]:
                pad = noise.new_ones((part.shape[0], part.shape[1] - width, *part.shape[2:]))
                noise = torch.cat([noise, pad], dim=1)
            part = part * noise
            changed = True
        parts.append(part)
    return torch.cat(parts) if changed else xs
