"""The pack's training loop: K runs over one base, each with its own data order, optimizer, schedule, evaluation
and result (see :mod:`ftrun.packed`)."""

from __future__ import annotations

import json
import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence

from ftrun.allocator import in_use as allocator_in_use
from ftrun.unused_libraries import hidden_now
from ftrun.divergence import LossBlowUp, ZeroGradients
from ftrun.packed.compat import compatible
from ftrun.packed.routing import Router, _routed_forward

log = logging.getLogger(__name__)

# ---------------------------------------------------------------------------
# one run in the pack


@dataclass
class PackedRun:
    cfg: Any
    run_dir: Path
    adapter: str
    trainer: Any = None
    optimizer: Any = None
    scheduler: Any = None
    params: list = field(default_factory=list)
    max_steps: int = 0
    global_step: int = 0
    epoch: int = 0
    epochs: int = 0
    steps_in_epoch: int = 0
    updates_per_epoch: int = 0
    update_in_epoch: int = 0
    iterator: Any = None
    history: list = field(default_factory=list)
    tr_loss: float = 0.0
    tr_loss_total: float = 0.0
    last_logged: int = 0
    status: str = "training"  # training, finished, pruned, paused, diverged
    reason: Optional[str] = None
    paused_at: Optional[int] = None  # paused at a rung: the examples seen there (set by the sweep's on_evaluate)
    diverged_at: Optional[int] = None
    zero_gradients: ZeroGradients = field(default_factory=ZeroGradients)
    loss_blowup: LossBlowUp = field(default_factory=LossBlowUp)
    last_eval: Optional[dict] = None
    train_s: float = 0.0
    tokens: int = 0

    @property
    def active(self) -> bool:
        return self.status == "training"

    def next_batches(self, generator=None) -> list:
        """The micro-batches of the run's next optimizer step, as the Trainer's loop draws them.

        torch's DataLoader draws its workers' base seed from the global RNG at every epoch's start;
        in the alone run that draw comes from the stream its dropout masks come from, so here it
        comes from the run's own ``generator`` (None: from the global RNG)."""
        if generator is None:
            return self._next_batches()
        import torch

        saved = torch.get_rng_state()
        torch.set_rng_state(generator.get_state())
        try:
            return self._next_batches()
        finally:
            generator.set_state(torch.get_rng_state())
            torch.set_rng_state(saved)

    def _next_batches(self) -> list:
        if self.iterator is None or self.update_in_epoch >= self.updates_per_epoch:
            if self.iterator is not None:
                self.epoch += 1
            self.iterator = _epoch_iterator(self.trainer, self.epoch)
            self.update_in_epoch = 0
        accum = self.trainer.args.gradient_accumulation_steps
        remainder = self.steps_in_epoch % accum or accum
        n = accum if self.update_in_epoch != self.updates_per_epoch - 1 else remainder
        batches = []
        for _ in range(n):
            try:
                batches.append(next(self.iterator))
            except StopIteration:
                break
        self.update_in_epoch += 1
        return batches


def _epoch_iterator(trainer, epoch: int):
    dl = trainer._packed_train_dl
    if hasattr(dl, "set_epoch"):
        dl.set_epoch(epoch)
    inner = getattr(getattr(dl, "batch_sampler", None), "batch_sampler", None)
    if hasattr(inner, "set_epoch"):
        inner.set_epoch(epoch)
    return iter(dl)


# ---------------------------------------------------------------------------
# building


def prepare_runs(cfgs: Sequence, run_dirs: Sequence[Path], joining: Sequence = ()):
    """Check, resolve and write each run's config, as :func:`ftrun.train.run` does before its recipe. ``joining``:
    the configs of the pack these runs join (they must be compatible with it too)."""
    from ftrun.config import ConfigError, resolved, validate, validate_device
    from ftrun.config.model_dir import require_model_files
    from ftrun.data import check_stage_data
    from ftrun.train import _write_resolved_config, check_resume

    reason = compatible([*joining, *cfgs])
    if reason is not None:
        raise ConfigError(f"these runs cannot train in one pack: {reason}")
    dirs = [str(Path(d).resolve()) for d in run_dirs]
    if len(set(dirs)) != len(dirs):
        raise ConfigError(f"two runs of one pack have the same run directory ({dirs}); each needs its own")
    out = []
    for cfg, run_dir in zip(cfgs, run_dirs):
        validate(cfg)
        require_model_files(cfg.model)
        cfg = resolved(cfg)
        run_dir = Path(run_dir)
        check_resume(cfg, run_dir)
        check_stage_data(cfg)
        validate_device(cfg)
        run_dir.mkdir(parents=True, exist_ok=True)
        _write_resolved_config(cfg, run_dir)
        out.append((cfg, run_dir))
    return out


class Pack:
    """The base once and the runs training over it: runs join (:meth:`add`) and leave (:meth:`drop`) between steps."""

    def __init__(self, cfgs: Sequence, run_dirs: Sequence[Path]):
        from ftrun.data import make_collator
        from ftrun.fit import quiet_libraries
        from ftrun.model import load_model
        from ftrun.stages.common import prepare_data

        quiet_libraries()
        pairs = prepare_runs(cfgs, run_dirs)
        self.cfg = cfgs[0]  # as given: what a joining run must be compatible with
        first = pairs[0][0]
        self.data = prepare_data(first)  # the same data for every run (compatible() checked it)
        self.base = load_model(first)
        self.model = None
        self.router = Router()
        self.runs: List[PackedRun] = []
        self.gone: set = set()  # adapters of the runs that left (dropped)
        # rows, not one flattened row: Router routes rows
        self.collator = make_collator(first.data, self.data.tokenizer, "sdpa")
        for cfg, run_dir in pairs:
            self._attach(cfg, run_dir)

    def add(self, cfg, run_dir: Path) -> PackedRun:
        """A run joining the pack: its adapter, data order, optimizer and schedule start as its alone run's."""
        ((cfg, run_dir),) = prepare_runs([cfg], [run_dir], joining=[self.cfg])
        return self._attach(cfg, run_dir)

    def _attach(self, cfg, run_dir: Path) -> PackedRun:
        import torch
        from peft import get_peft_model
        from transformers import Trainer, set_seed

        from ftrun.fit import training_arguments
        from ftrun.model import lora_config

        name = f"run{len(self.runs)}"
        set_seed(cfg.seed)  # as prepare_data seeds before the alone run builds its model and adapter
        if self.model is None:
            self.model = get_peft_model(self.base, lora_config(cfg), adapter_name=name)
            self._route()
        else:
            self.model.add_adapter(name, lora_config(cfg))
        model = self.model
        run = PackedRun(cfg=cfg, run_dir=run_dir, adapter=name)
        run.params = [(n, p) for n, p in model.named_parameters() if f".{name}." in n and "lora_" in n]
        self.runs.append(run)
        self._free_adapters()
        data = self.data
        args = training_arguments(cfg, run.run_dir, has_eval=data.eval is not None, num_examples=len(data.train))
        trainer = Trainer(model=model, args=args, train_dataset=data.train, eval_dataset=data.eval,
                          processing_class=data.tokenizer, data_collator=self.collator)
        run.trainer = trainer
        trainer._packed_train_dl = trainer.get_train_dataloader()
        dl = trainer._packed_train_dl
        accum = args.gradient_accumulation_steps
        run.steps_in_epoch = len(dl)
        run.updates_per_epoch = max(len(dl) // accum + int(len(dl) % accum > 0), 1)
        run.max_steps = args.max_steps if args.max_steps > 0 else math.ceil(args.num_train_epochs * run.updates_per_epoch)
        opt_cls, opt_kwargs = Trainer.get_optimizer_cls_and_kwargs(args, model)
        if opt_cls is torch.optim.AdamW and "foreach" not in opt_kwargs and "fused" not in opt_kwargs:
            # the same update in a few multi-tensor ops instead of ~12 per tensor (torch picks the per-tensor
            # loop on a CPU); the result differs from the alone run's only in rounding
            opt_kwargs = {**opt_kwargs, "foreach": True}
        decay = set(trainer.get_decay_parameter_names(model))
        groups = [{"params": [p for n, p in run.params if n in decay], "weight_decay": args.weight_decay},
                  {"params": [p for n, p in run.params if n not in decay], "weight_decay": 0.0}]
        run.optimizer = opt_cls(groups, **opt_kwargs)
        run.scheduler = trainer.create_scheduler(run.max_steps, optimizer=run.optimizer)
        self.router.generators[run.adapter] = torch.Generator().manual_seed(int(cfg.seed))
        return run

    def drop(self, run: PackedRun) -> None:
        """A run that left: its optimizer state and generator freed, and its adapter (see :meth:`_free_adapters`)."""
        self.router.generators.pop(run.adapter, None)
        self.router.widths.pop(run.adapter, None)
        run.params, run.optimizer, run.scheduler, run.trainer, run.iterator = [], None, None, None, None
        self.gone.add(run.adapter)
        self._free_adapters()

    def _free_adapters(self) -> None:
        """Delete the adapters of runs that left, keeping one if no run trains (peft keeps at least one adapter;
        the next run to join frees it), and let every training run's adapter train again (peft's delete and add
        make only its active adapter trainable)."""
        import warnings

        for name in [n for n in self.model.peft_config if n in self.gone]:
            if len(self.model.peft_config) > 1:
                with warnings.catch_warnings():  # "Adapter runK was active which is now deleted": routing ignores it
                    warnings.simplefilter("ignore")
                    self.model.delete_adapter(name)
        self._train_adapters()

    def _train_adapters(self) -> None:
        """Every training run's adapter trains (peft makes only its active adapter trainable, after each add or
        delete)."""
        for run in self.runs:
            for _, p in run.params:
                p.requires_grad_(run.active)

    def _route(self) -> None:
        from peft.tuners.lora import Linear as LoraLinear

        patched = 0
        for module in self.model.modules():
            if isinstance(module, LoraLinear):
                module.forward = _routed_forward(self.router).__get__(module)
                patched += 1
        if patched == 0:
            raise RuntimeError("no peft LoRA Linear layer found to route")


# ---------------------------------------------------------------------------
# training


def _pad_cat(batches: list, pad_id: int) -> dict:
    """Concatenate micro-batches along rows, right-padding each to the longest (labels -100, mask 0)."""
    import torch

    width = max(b["input_ids"].shape[1] for b in batches)
    fill = {"input_ids": pad_id, "labels": -100, "attention_mask": 0}
    out = {}
    for key in batches[0]:
        parts = []
        for b in batches:
            t = b[key]
            if t.shape[1] < width:
                t = torch.cat([t, t.new_full((t.shape[0], width - t.shape[1]), fill.get(key, 0))], dim=1)
            parts.append(t)
        out[key] = torch.cat(parts)
    return out


def _num_items(trainer, batches: list):
    """``Trainer._get_num_items_in_batch`` for the run's micro-batches (None: the loss is a per-batch mean)."""
    return trainer._get_num_items_in_batch(batches, trainer.args.device)


def _forward_logits(model, inputs: dict):
    inner = model.base_model.model  # the transformers model under peft's wrappers
    feed = {k: v for k, v in inputs.items() if k != "labels"}
    return inner(**feed).logits


def _run_loss(model, logits, labels, num_items):
    inner = model.base_model.model
    kwargs = {"num_items_in_batch": num_items} if num_items is not None else {}
    return inner.loss_function(logits=logits, labels=labels, vocab_size=inner.config.vocab_size, **kwargs)


def _loss_head(model, cfg):
    """The LM head when the runs train with the chunked loss as they would alone (ftrun.linear_cross_entropy), else
    None (logits and transformers' loss)."""
    from ftrun.linear_cross_entropy import applies, loss_head

    inner = model.base_model.model
    decoder, head = loss_head(inner)
    return head if decoder is not None and applies(cfg, inner.config.model_type) else None


def _forward_outputs(model, inputs: dict, head):
    """The decoder's hidden states (``head`` given: the chunked loss projects them) or the logits."""
    if head is None:
        return _forward_logits(model, inputs)
    feed = {k: v for k, v in inputs.items() if k != "labels"}
    return model.base_model.model.get_decoder()(**feed).last_hidden_state


def _train_loss(model, outputs, labels, num_items, head):
    if head is None:
        return _run_loss(model, outputs, labels, num_items)
    from ftrun.linear_cross_entropy import causal_lm_loss

    return causal_lm_loss(outputs, head.weight, labels, num_items)


def train_step(model, runs: List[PackedRun], router: Router, pad_id: int) -> None:
    """One optimizer step of every active run: one forward and backward per micro-batch index."""
    import torch

    from ftrun.divergence import Diverged

    active = [r for r in runs if r.active]
    work = {r.adapter: r.next_batches(router.generators.get(r.adapter)) for r in active}
    items = {r.adapter: _num_items(r.trainer, work[r.adapter]) for r in active}
    step_loss = {r.adapter: 0.0 for r in active}
    ranks = {r.adapter: int(r.cfg.method.rank) for r in active}
    order = sorted(active, key=lambda r: ranks[r.adapter])  # equal ranks next to each other: one bmm
    head = _loss_head(model, active[0].cfg)
    if not model.training:  # (module.train() walks every module: not once per step)
        model.train()
    for m in range(max(len(b) for b in work.values())):
        here = [r for r in order if m < len(work[r.adapter])]
        batches = [work[r.adapter][m] for r in here]
        inputs = _pad_cat(batches, pad_id)
        spans, row = [], 0
        for r, b in zip(here, batches):
            spans.append((r.adapter, row, b["input_ids"].shape[0]))
            router.widths[r.adapter] = b["input_ids"].shape[1]
            row += b["input_ids"].shape[0]
        router.set(spans, ranks)
        outputs = _forward_outputs(model, inputs, head)
        # split, not slices: one backward node for all runs' parts; K slices would each build a zero gradient of
        # the whole outputs tensor (K x K x rows x width x vocab in all, for logits)
        sizes = [rows for _, _, rows in spans]
        parts, label_parts = outputs.split(sizes), inputs["labels"].split(sizes)
        total = None
        for k, ((name, start, rows), r) in enumerate(zip(spans, here)):
            loss = _train_loss(model, parts[k], label_parts[k], items[name], head)
            if items[name] is None:  # the Trainer divides a per-batch mean by the accumulation steps
                loss = loss / len(work[name])
            step_loss[name] += float(loss.detach())
            r.tokens += int(inputs["attention_mask"][start:start + rows].sum()) if "attention_mask" in inputs \
                else int(inputs["input_ids"][start:start + rows].numel())
            if math.isfinite(step_loss[name]):
                total = loss if total is None else total + loss
        if total is not None:
            total.backward()
    for r in active:
        r.global_step += 1
        lr = r.optimizer.param_groups[0]["lr"]
        params = [p for _, p in r.params]
        if not math.isfinite(step_loss[r.adapter]):
            _diverge(r, Diverged("the train loss", step_loss[r.adapter], r.global_step, lr))
            continue
        max_norm = r.trainer.args.max_grad_norm
        norm = torch.nn.utils.clip_grad_norm_(params, max_norm if max_norm and max_norm > 0 else float("inf"))
        # a finite total norm means every gradient is finite; else the largest |gradient| decides, as
        # ftrun.divergence decides for the alone run (a huge but finite gradient can overflow the norm)
        worst = float(norm) if math.isfinite(float(norm)) else \
            max((float(p.grad.detach().abs().max()) for p in params if p.grad is not None), default=0.0)
        if not math.isfinite(worst):
            _diverge(r, Diverged("the gradient", worst, r.global_step, lr))
            continue
        try:
            r.zero_gradients.check(worst, r.global_step, lr)
            r.loss_blowup.check(step_loss[r.adapter], r.global_step, lr)
        except Diverged as e:
            _diverge(r, e)
            continue
        r.optimizer.step()
        r.scheduler.step()
        r.optimizer.zero_grad(set_to_none=True)
        r.tr_loss += step_loss[r.adapter]
        r.tr_loss_total += step_loss[r.adapter]
        args = r.trainer.args
        if args.logging_steps and r.global_step % args.logging_steps == 0:
            r.history.append({"loss": r.tr_loss / (r.global_step - r.last_logged),
                              "grad_norm": float(norm), "learning_rate": lr,
                              "epoch": r.epoch + r.update_in_epoch / r.updates_per_epoch, "step": r.global_step})
            r.tr_loss, r.last_logged = 0.0, r.global_step
        if r.global_step >= r.max_steps:
            r.status = "finished"


def _diverge(run: PackedRun, e) -> None:
    log.error("%s: %s", run.cfg.name, e)
    run.status, run.reason, run.diverged_at = "diverged", e.reason, e.step
    for _, p in run.params:
        p.grad = None
        p.requires_grad_(False)


def evaluate(model, runs: List[PackedRun], router: Router, pad_id: int) -> Dict[str, dict]:
    """Each run's eval metrics (eval_loss, eval_exact_match, ...), the eval batches routed to every run."""
    import numpy as np
    import torch

    if not runs:
        return {}
    start = time.perf_counter()
    for r in runs:  # the draw an evaluation's DataLoader makes from the alone run's global RNG (its base seed)
        g = router.generators.get(r.adapter)
        if g is not None:
            torch.empty((), dtype=torch.int64).random_(generator=g)
    dl = runs[0].trainer.get_eval_dataloader()
    was = model.training
    model.eval()
    sums = {r.adapter: [0.0, 0, 0, 0] for r in runs}  # loss*rows, rows, exact, rows with an answer
    n_batches = 0
    with torch.no_grad():
        for batch in dl:
            n_batches += 1
            rows = batch["input_ids"].shape[0]
            inputs = _pad_cat([batch] * len(runs), pad_id)
            spans = [(r.adapter, k * rows, rows) for k, r in enumerate(runs)]
            router.set(spans, {r.adapter: int(r.cfg.method.rank) for r in runs})
            logits = _forward_logits(model, inputs)
            labels = batch["labels"]
            for name, s, n in spans:
                part = logits[s:s + n]
                loss = float(_run_loss(model, part, labels, None))
                preds = part.argmax(-1).numpy()[:, :-1]
                lab = labels.numpy()[:, 1:]
                mask = lab != -100
                correct = ((preds == lab) | ~mask).all(axis=-1) & mask.any(axis=-1)
                acc = sums[name]
                acc[0] += loss * n if np.isfinite(loss) else 0.0
                acc[1] += n if np.isfinite(loss) else 0
                acc[2] += int(correct.sum())
                acc[3] += n
    model.train(was)
    runtime = time.perf_counter() - start
    out = {}
    for r in runs:
        loss_rows, rows, exact, total = sums[r.adapter]
        out[r.adapter] = {"eval_loss": loss_rows / rows if rows else float("nan"),
                          "eval_exact_match": exact / total if total else 0.0,
                          "eval_runtime": round(runtime, 4),
                          "eval_samples_per_second": round(total / runtime, 3),
                          "eval_steps_per_second": round(n_batches / runtime, 3)}
    return out


def _due_for_eval(run: PackedRun) -> bool:
    args = run.trainer.args
    if run.trainer.eval_dataset is None or str(args.eval_strategy) not in ("steps", "IntervalStrategy.STEPS"):
        return False
    return bool(args.eval_steps) and run.global_step % int(args.eval_steps) == 0


def train_packed(cfgs: Sequence, run_dirs: Sequence[Path],
                 on_evaluate: Optional[Callable[[int, "PackedRun", dict], bool]] = None,
                 on_end: Optional[Callable[[int, "PackedRun"], None]] = None,
                 on_start: Optional[Callable[[int, "PackedRun"], None]] = None,
                 admit: Optional[Callable[[], Sequence[tuple]]] = None) -> List[Optional[float]]:
    """Train the runs together; each writes its own result.json. Returns each run's objective (None: diverged), the
    runs that joined included, in the order they came.

    ``on_evaluate(index, run, metrics)`` is called after each evaluation of run ``index`` (at ``run.global_step``);
    True stops that run there (a sweep's pruner: its result says ``pruned: true``, as an alone run's does);
    ``"paused"`` pauses it there (``hydra.sweeper.pruner=promotion``): it leaves the pack with a checkpoint its alone
    run resumes from (:mod:`ftrun.packed.checkpoint`) and a result with ``status: paused``.
    ``on_end(index, run)`` is called once the run has left the pack and written its result (``run.status``:
    finished, pruned, paused or diverged); its adapter and optimizer state are then freed. ``on_start(index, run)``:
    once the run is built (``run.cfg`` resolved), before its first step. ``admit()``: called before every step
    (and once more when the last run has left); the ``(cfg, run_dir)`` pairs it returns join the pack there, as
    runs ``len(cfgs)``, ``len(cfgs) + 1``, ... and train from their first step as they would alone. A joining run
    that cannot be built (its config refused) raises as a run of ``cfgs`` would, before the pack's next step.
    """
    from ftrun.fit import peak_memory_mb, start_phases

    phases = start_phases()
    pack = Pack(cfgs, run_dirs)
    runs, data, router = pack.runs, pack.data, pack.router
    pad_id = data.tokenizer.pad_token_id
    for i, r in enumerate(runs if on_start is not None else []):
        on_start(i, r)
    phases.mark("prepare")
    t0 = time.perf_counter()
    while True:
        for cfg, run_dir in (admit() if admit is not None else ()):
            run = pack.add(cfg, run_dir)
            log.info("%s joins the pack at its step %d (%d runs training)", run.cfg.name, max(
                (r.global_step for r in runs if r.active and r is not run), default=0), sum(r.active for r in runs))
            if on_start is not None:
                on_start(runs.index(run), run)
        if not any(r.active for r in runs):
            break
        model = pack.model
        step_start = time.perf_counter()
        stepping = [r for r in runs if r.active]
        train_step(model, runs, router, pad_id)
        spent = time.perf_counter() - step_start
        for r in stepping:
            r.train_s += spent
        due = [r for r in stepping if r.status != "diverged" and (_due_for_eval(r) or (
            r.status == "finished" and data.eval is not None))]
        due = [r for r in due if r.last_eval is None or r.last_eval.get("step") != r.global_step]
        if due:
            for r, m in zip(due, evaluate(model, due, router, pad_id).values()):
                r.last_eval = {**m, "epoch": r.epoch, "step": r.global_step}
                r.history.append(dict(r.last_eval))
                stop = on_evaluate is not None and on_evaluate(runs.index(r), r, dict(m))
                if stop and r.active:  # (the last step's evaluation is reported too; nothing is left to stop)
                    r.status = "paused" if stop == "paused" else "pruned"
                    log.info("%s: %s at step %d", r.cfg.name, r.status, r.global_step)
        leaving = [r for r in stepping if not r.active]
        for r in leaving:
            _report(r, model, data, phases, peak_memory_mb(), router)
            if on_end is not None:
                on_end(runs.index(r), r)
        for r in leaving:
            pack.drop(r)
    log.info("Packed %d runs: %.1f s", len(runs), time.perf_counter() - t0)
    return [_objective(r) for r in runs]


def _objective(run: PackedRun) -> Optional[float]:
    if run.status not in ("finished", "pruned"):
        return None
    from ftrun.contract import RESULT_FILE

    result = json.loads((run.run_dir / RESULT_FILE).read_text())
    return result.get("objective")


def _report(run: PackedRun, model, data, phases, peak_mb: float, router: Router) -> None:
    """The run's result.json (the alone run's shape), trainer_state.json and its adapter in model/."""
    from ftrun.contract import LOSS_PLOT, MODEL_DIR, TRAINER_STATE
    from ftrun.fit import _objective as objective_of, _write_result, plot_loss
    from ftrun.packed.checkpoint import save_adapter

    cfg = run.cfg
    if run.status == "paused":
        _report_pause(run, model, data.tokenizer, router)
        return
    state = {"global_step": run.global_step, "max_steps": run.max_steps, "log_history": run.history,
             "num_input_tokens_seen": run.tokens}
    (run.run_dir / TRAINER_STATE).write_text(json.dumps(state, indent=2))
    if run.status == "diverged":
        summary = {"status": "diverged", "reason": run.reason, "diverged_at_step": run.diverged_at,
                   "global_step": run.global_step, "train_time_s": run.train_s, "pruned": False, "packed": True}
        _write_result(run.run_dir, cfg, None, {}, summary)
        return
    run.history.append({"train_loss": run.tr_loss_total / max(run.global_step, 1), "step": run.global_step})
    (run.run_dir / TRAINER_STATE).write_text(json.dumps(state, indent=2))
    metrics = {k: v for k, v in (run.last_eval or {}).items() if k.startswith("eval_")}
    if "eval_loss" in metrics:
        metrics["eval_perplexity"] = math.exp(min(metrics["eval_loss"], 50.0))
    losses = [h["loss"] for h in run.history if "loss" in h]
    summary = {"train_time_s": run.train_s, "peak_memory_mb": peak_mb, "malloc": allocator_in_use(),
               "hidden_libraries": hidden_now(),
               "global_step": run.global_step}
    if losses:
        summary["final_train_loss"] = losses[-1]
    objective = objective_of(cfg, {**metrics, **summary}, summary)
    summary["pruned"] = run.status == "pruned"
    summary["packed"] = True
    save_adapter(model, run, data.tokenizer, run.run_dir / MODEL_DIR)
    plot_loss(run.history, run.run_dir / LOSS_PLOT, title=cfg.name)
    summary["phases_s"] = {"train": round(run.train_s, 4)}
    _write_result(run.run_dir, cfg, objective, metrics, summary)
    log.info("Done: %s %s = %.4f after %d steps (packed)", cfg.name, cfg.objective, objective, run.global_step)


def _report_pause(run: PackedRun, model, tokenizer, router: Router) -> None:
    """The paused run's checkpoint and its result (``status: paused``, as :func:`ftrun.fit._report_pause` writes)."""
    from ftrun.contract import ATTR_PAUSED_AT, TAG_PAUSED_AT_STEP
    from ftrun.fit import _write_result
    from ftrun.packed.checkpoint import save_pause_checkpoint

    checkpoint = save_pause_checkpoint(model, run, tokenizer, router)
    summary = {"status": "paused", ATTR_PAUSED_AT: run.paused_at, TAG_PAUSED_AT_STEP: run.global_step,
               "global_step": run.global_step, "train_time_s": run.train_s, "pruned": False, "packed": True}
    _write_result(run.run_dir, run.cfg, None, {}, summary)
    log.info("%s: paused at step %d (%s examples); resumes alone from %s if promoted", run.cfg.name,
             run.global_step, run.paused_at, checkpoint)
