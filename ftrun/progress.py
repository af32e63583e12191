"""What a run shows while it trains, in place of transformers' raw dicts and tqdm bar.

:func:`show_progress` swaps the Trainer's PrinterCallback / ProgressCallback for :class:`RunProgress`:

- on a terminal, one live line: step/total, epoch, loss, learning rate, tokens/s, elapsed and ETA;
- without one (a file, CI, SLURM), the same line, plain and timestamped, at most every
  ``train.progress_interval_s`` seconds (and at the last step);
- each evaluation adds one line, and the end of training one summary block.

Every logging step's line (all the values the Trainer logged) still goes to the run's log file;
MLflow records the same values through the tracker's own callback.
"""

from __future__ import annotations

import logging
import time
from typing import Dict, Optional

from ftrun.terminal import FILE_ONLY, clock, display_mode, keep_file_only_lines_off_console, live_display, number

log = logging.getLogger("ftrun.progress")

# the keys the line names itself; any other value the Trainer logs follows as key=value
_SHOWN = {"loss", "learning_rate", "epoch", "train_tokens_per_second", "num_input_tokens_seen", "train_runtime"}
_EVAL_QUIET = {"eval_runtime", "eval_samples_per_second", "eval_steps_per_second", "epoch", "num_input_tokens_seen"}


def show_progress(trainer, cfg) -> None:
    """Replace the Trainer's printing callbacks with :class:`RunProgress` (every stage's trainer)."""
    from transformers.trainer_callback import PrinterCallback, ProgressCallback

    for cls in (PrinterCallback, ProgressCallback):
        trainer.remove_callback(cls)
    trainer.add_callback(RunProgress(str(cfg.name), float(cfg.train.get("progress_interval_s", 30.0))))


def _callback_base():
    from transformers import TrainerCallback

    return TrainerCallback


class RunProgress(_callback_base()):
    """The run's progress display (rank zero only); see the module's docstring."""

    def __init__(self, name: str, interval_s: float = 30.0, mode: Optional[str] = None):
        self.name, self.interval_s, self.mode = name, interval_s, mode
        self.latest: Dict[str, float] = {}
        self.evals: list = []
        self._display = self._progress = self._task = None
        self._t0 = self._last_line = time.monotonic()
        self._step0 = self._tokens0 = self.total = 0

    # -- the Trainer's events --------------------------------------------------------------
    def on_train_begin(self, args, state, control, **kwargs):
        if not state.is_world_process_zero:
            return
        self.mode = self.mode or display_mode()
        keep_file_only_lines_off_console(live=self.mode == "live")
        self._t0 = self._last_line = time.monotonic()
        self._step0, self._tokens0 = state.global_step, getattr(state, "num_input_tokens_seen", 0) or 0
        self.total = state.max_steps
        if self.mode == "live":
            import atexit

            atexit.register(self.close)  # a run that raises never reaches on_train_end
            self._display = live_display(progress=self._bar())
            self._progress = self._display.__enter__()
            self._task = self._progress.add_task(self.name, total=self.total, completed=state.global_step,
                                                 epoch=0.0, loss="-", lr="-", tps="-")

    def on_step_end(self, args, state, control, **kwargs):
        if not state.is_world_process_zero:
            return
        if self._task is not None:
            self._progress.update(self._task, completed=state.global_step, epoch=state.epoch or 0.0,
                                  tps=self._tokens_per_s(state))
        elif self.mode == "lines" and self.interval_s > 0 and time.monotonic() - self._last_line >= self.interval_s:
            self._line(state, {}, to_console=True)

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not state.is_world_process_zero or not logs:
            return
        logs = dict(logs)
        if any(k.startswith("eval_") for k in logs):
            self._eval_line(state, logs)
        elif "train_runtime" in logs and "loss" not in logs:  # the Trainer's closing totals
            self.latest["train_loss"] = logs.get("train_loss", float("nan"))
        else:
            self.latest.update({k: v for k, v in logs.items() if isinstance(v, (int, float))})
            if self._task is not None:
                self._progress.update(self._task, loss=number(logs.get("loss", "-")),
                                      lr=number(logs.get("learning_rate", "-")))
            due = self.mode == "lines" and (time.monotonic() - self._last_line >= self.interval_s
                                            or state.global_step >= self.total)
            self._line(state, logs, to_console=due)

    def on_train_end(self, args, state, control, **kwargs):
        if not state.is_world_process_zero:
            return
        if self._progress is not None:
            self._progress.update(self._task, completed=state.global_step)
        self.close()
        if self.mode != "quiet":
            log.info("%s", self.summary(state))

    def close(self) -> None:
        """Take the live display off the screen (the terminal's cursor and streams as they were)."""
        if self._display is not None:
            self._display.__exit__(None, None, None)
            self._display = self._progress = self._task = None

    # -- what is shown ---------------------------------------------------------------------
    def _bar(self):
        from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn,
                                   TimeRemainingColumn)

        return Progress(TextColumn("[bold]{task.description}"), BarColumn(bar_width=24), TextColumn("step"),
                        MofNCompleteColumn(), TextColumn("epoch {task.fields[epoch]:.2f}"),
                        TextColumn("loss {task.fields[loss]}"), TextColumn("lr {task.fields[lr]}"),
                        TextColumn("{task.fields[tps]} tok/s"), TimeElapsedColumn(), TextColumn("ETA"),
                        TimeRemainingColumn(), refresh_per_second=4)

    def _tokens_per_s(self, state) -> str:
        seconds = time.monotonic() - self._t0
        tokens = (getattr(state, "num_input_tokens_seen", 0) or 0) - self._tokens0  # this session's (a resumed run)
        return f"{tokens / seconds:.0f}" if tokens and seconds > 0 else "-"

    def _eta(self, step: int) -> Optional[float]:
        done = step - self._step0
        if done <= 0 or not self.total:
            return None
        return (time.monotonic() - self._t0) / done * (self.total - step)

    def _line(self, state, logs: dict, to_console: bool) -> None:
        """``step 4/6 (67%) · epoch 0.05 · loss 3.04 · lr 9.5e-05 · 554 tok/s · elapsed 0:00:04 · ETA 0:00:02``,
        then any other logged value as key=value."""
        step, latest = state.global_step, {**self.latest, **logs}
        parts = [f"step {step}/{self.total} ({100 * step / max(1, self.total):.0f}%)",
                 f"epoch {state.epoch or 0.0:.2f}"]
        if "loss" in latest:
            parts.append(f"loss {number(latest['loss'])}")
        if "learning_rate" in latest:
            parts.append(f"lr {number(latest['learning_rate'])}")
        parts += [f"{self._tokens_per_s(state)} tok/s", f"elapsed {clock(time.monotonic() - self._t0)}",
                  f"ETA {clock(self._eta(step))}"]
        rest = " ".join(f"{k}={number(v)}" for k, v in logs.items() if k not in _SHOWN)
        log.info("%s%s", " · ".join(parts), f" · {rest}" if rest else "", extra={} if to_console else FILE_ONLY)
        if to_console:
            self._last_line = time.monotonic()

    def _eval_line(self, state, logs: dict) -> None:
        """``eval at step 3/6: eval_loss 3.205 · eval_exact_match 0.075 (2.0 s)``"""
        values = {k: v for k, v in logs.items() if k.startswith("eval_") and k not in _EVAL_QUIET}
        self.evals.append((state.global_step, values))
        took = f" ({logs['eval_runtime']:.1f} s)" if isinstance(logs.get("eval_runtime"), (int, float)) else ""
        log.info("eval at step %d/%d: %s%s", state.global_step, self.total or state.max_steps,
                 " · ".join(f"{k} {number(v)}" for k, v in values.items()), took,
                 extra={} if self.mode != "quiet" else FILE_ONLY)

    def summary(self, state) -> str:
        """The block printed when training ends: steps, time, throughput, first and last values."""
        seconds = time.monotonic() - self._t0
        lines = [f"Trained '{self.name}': {state.global_step}/{self.total} steps, epoch {state.epoch or 0.0:.2f}, "
                 f"in {clock(seconds)} ({self._tokens_per_s(state)} tok/s)"]
        if "loss" in self.latest:
            lines.append(f"  train loss  last {number(self.latest['loss'])}"
                         + (f", mean {number(self.latest['train_loss'])}" if "train_loss" in self.latest else ""))
        if self.evals:
            first, last = self.evals[0][1], self.evals[-1][1]
            for key in last:
                lines.append(f"  {key:<18} {number(first.get(key, float('nan')))} -> {number(last[key])}"
                             f"  ({len(self.evals)} evaluations)")
        return "\n".join(lines)
