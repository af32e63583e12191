"""Diagnostics: what went wrong in a run or a sweep, with the numbers that show it.

Each check takes plain metric histories (lists of ``(step, value)``) so it can be
tested on constructed curves; :func:`diagnose_run` runs them all on one run, and
:func:`range_edges` looks at the best trials of an Optuna study.

The checks, and what each one needs before it fires:

* ``overfitting``: eval loss rose at ``min_rising`` evaluations in a row while the
  train loss fell over the same steps.
* ``divergence``: a non-finite loss or grad norm, a run :mod:`ftrun.divergence` stopped, or a train-loss spike of
  ``spike_factor`` x the median of the logs before it, or a run that ends above
  where it started.
* ``under-training``: the train loss still fell by ``steep_drop`` or more over the
  last third of the run and the last evaluation is the best one.
* ``range-edge``: the best trials sit in the outer ``edge_share`` of a numeric
  search range (log scale for log ranges): widen the range on that side.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple

Series = Sequence[Tuple[float, float]]  # (step, value), sorted by step


@dataclass(frozen=True)
class Flag:
    """One finding: a short kind, the evidence in numbers, and what to try."""

    kind: str
    evidence: str
    advice: str
    subject: str = ""  # run id / trial, or the parameter for range-edge

    def __str__(self) -> str:
        who = f"{self.subject}: " if self.subject else ""
        return f"{who}{self.kind}: {self.evidence}. Try: {self.advice}"


# ---------------------------------------------------------------------------
# per-run checks


def overfitting(train: Series, evals: Series, min_rising: int = 3) -> Optional[Flag]:
    """Eval loss rising at ``min_rising`` consecutive evaluations while train loss falls."""
    evals = _finite(evals)
    if len(evals) < min_rising + 1:
        return None
    best_streak: Tuple[int, int] = (0, 0)  # (start index, end index) of the longest rise
    start = 0
    for i in range(1, len(evals)):
        if evals[i][1] <= evals[i - 1][1]:
            start = i
        elif i - start > best_streak[1] - best_streak[0]:
            best_streak = (start, i)
    lo, hi = best_streak
    if hi - lo < min_rising:
        return None
    s0, s1 = evals[lo][0], evals[hi][0]
    window = [v for s, v in _finite(train) if s0 <= s <= s1]
    if len(window) < 2 or _slope(list(enumerate(window))) >= 0:
        return None
    best_step, best_val = min(evals, key=lambda e: e[1])
    return Flag(
        "overfitting",
        f"eval_loss rose {evals[lo][1]:.4g} -> {evals[hi][1]:.4g} over {hi - lo} evaluations "
        f"(steps {_int(s0)}-{_int(s1)}) while train_loss fell {window[0]:.4g} -> {window[-1]:.4g}; "
        f"best eval_loss {best_val:.4g} at step {_int(best_step)}",
        f"stop near step {_int(best_step)} (fewer epochs/max_steps), more data, "
        "or more regularization (method.dropout, optimizer.weight_decay, a smaller rank or lr)",
    )


def divergence(train: Series, nonfinite: Series = (), grad_norm: Series = (),
               spike_factor: float = 2.0, window: int = 5) -> Optional[Flag]:
    """NaN/inf loss, a train-loss spike, or a run that ends above its start."""
    bad = [s for s, v in train if not math.isfinite(v)] + [s for s, v in grad_norm if not math.isfinite(v)]
    stopped = [s for s, v in nonfinite if v > 0]  # the marker of a NaN MLflow dropped, or of ftrun.divergence
    if bad or stopped:
        what = f"non-finite loss or grad norm at step {_int(min(bad))}" if bad else \
            f"diverged at step {_int(min(stopped))} (a non-finite value, or ftrun.divergence stopped the run: " \
            "its fail_reason says how)"
        return Flag("divergence", what,
                    "a lower lr, more warm-up (scheduler.warmup_ratio), gradient clipping "
                    "(optimizer.max_grad_norm=1.0), or fp32/bf16 instead of fp16")
    train = _finite(train)
    for i in range(3, len(train)):
        prev = [v for _, v in train[max(0, i - window):i]]
        med = statistics.median(prev)
        step, value = train[i]
        if med > 0 and value > spike_factor * med:
            return Flag("divergence",
                        f"train_loss spiked to {value:.4g} at step {_int(step)}, {value / med:.1f}x the median "
                        f"{med:.4g} of the {len(prev)} logs before it",
                        "a lower lr, more warm-up (scheduler.warmup_ratio) or gradient clipping "
                        "(optimizer.max_grad_norm)")
    if len(train) >= 4:
        head = statistics.median(v for _, v in train[:2])
        tail = statistics.median(v for _, v in train[-2:])
        if tail > 1.1 * head:
            return Flag("divergence",
                        f"train_loss ended at {tail:.4g}, above its start {head:.4g} "
                        f"(steps {_int(train[0][0])} -> {_int(train[-1][0])})",
                        "a lower lr (try 1/3 of it) or more warm-up")
    return None


def under_training(train: Series, evals: Series = (), steep_drop: float = 0.10) -> Optional[Flag]:
    """Train loss still falling steeply over the last third, and the last eval is the best."""
    train = _finite(train)
    if len(train) < 6:
        return None
    tail = train[len(train) - max(3, len(train) // 3):]
    mean = statistics.fmean(v for _, v in tail)
    span = tail[-1][0] - tail[0][0]
    if mean <= 0 or span <= 0:
        return None
    drop = -_slope(tail) * span / mean  # relative fall of the fitted line over the tail
    if drop < steep_drop:
        return None
    evals = _finite(evals)
    if evals and evals[-1][1] > min(v for _, v in evals):
        return None  # eval already past its best: more steps would not help
    eval_note = f"; eval_loss best at the last evaluation ({evals[-1][1]:.4g})" if evals else ""
    return Flag("under-training",
                f"train_loss still fell {100 * drop:.0f}% over the last {len(tail)} logs "
                f"(steps {_int(tail[0][0])}-{_int(tail[-1][0])}: {tail[0][1]:.4g} -> {tail[-1][1]:.4g}){eval_note}",
                "train longer (more epochs or max_steps) or a higher lr")


def diagnose_run(histories: Dict[str, Series], subject: str = "", failed: bool = False) -> List[Flag]:
    """All per-run checks on a run's metric histories (keys as ftrun logs them)."""
    train = histories.get("train_loss", [])
    evals = histories.get("eval_loss", [])
    flags = [
        divergence(train, histories.get("nonfinite_loss", []), histories.get("grad_norm", [])),
        overfitting(train, evals),
    ]
    if flags[0] is None and not failed:  # a diverged or crashed run is not "under-trained"
        flags.append(under_training(train, evals))
    return [Flag(f.kind, f.evidence, f.advice, subject) for f in flags if f is not None]


# ---------------------------------------------------------------------------
# sweep checks


def range_edges(study, top_share: float = 0.2, min_top: int = 3, edge_share: float = 0.1,
                min_trend: float = 0.5) -> List[Flag]:
    """Numeric parameters whose best trials crowd one edge of the searched range.

    Looks at the best ``top_share`` of the complete trials (at least ``min_top``)
    of a single-objective study; a parameter is flagged when the best trial lies in
    the outer ``edge_share`` of its range and either most of the top trials lie
    there too, or the objective improves towards that edge across the complete
    trials (Spearman rank correlation at least ``min_trend``).
    """
    import optuna
    from optuna.distributions import FloatDistribution, IntDistribution

    if len(study.directions) != 1:
        return []
    done = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE and t.value is not None]
    if len(done) < 2:
        return []
    reverse = study.direction == optuna.study.StudyDirection.MAXIMIZE
    done.sort(key=lambda t: t.value, reverse=reverse)
    top = done[:max(min_top, math.ceil(top_share * len(done)))]
    flags = []
    for name, dist in done[0].distributions.items():
        if not isinstance(dist, (FloatDistribution, IntDistribution)) or dist.high <= dist.low:
            continue

        def pos(v, d=dist):  # 0..1 within the range, log scale for log ranges
            if d.log:
                return (math.log(v) - math.log(d.low)) / (math.log(d.high) - math.log(d.low))
            return (v - d.low) / (d.high - d.low)

        if name not in done[0].params:
            continue
        values = [t.params[name] for t in top if name in t.params]
        # how the objective improves along the parameter: +1 = better towards the upper end
        pairs = [(pos(t.params[name]), t.value) for t in done if name in t.params]
        toward_upper = _rank_corr(pairs) * (1 if reverse else -1) if len(pairs) >= 3 else 0.0
        for side, near in (("lower", lambda p: p <= edge_share), ("upper", lambda p: p >= 1 - edge_share)):
            if not near(pos(done[0].params[name])):
                continue
            at_edge = [v for v in values if near(pos(v))]
            trend = toward_upper if side == "upper" else -toward_upper
            if 2 * len(at_edge) <= len(values) and trend < min_trend:
                continue  # one lucky trial at the edge, the rest elsewhere: not enough to say
            bound = dist.low if side == "lower" else dist.high
            why = (f"{len(at_edge)} of the top {len(values)} trials lie there" if 2 * len(at_edge) > len(values)
                   else f"the objective improves towards it (rank correlation {trend:.2f} over {len(pairs)} "
                        "complete trials)")
            flags.append(Flag(
                "range-edge",
                f"best {name}={done[0].params[name]:.4g} is at the {side} edge of the searched range "
                f"[{dist.low:g}, {dist.high:g}] and {why}",
                f"widen the range {'below' if side == 'lower' else 'above'} {bound:g}",
                subject=name,
            ))
    return flags


# ---------------------------------------------------------------------------
# helpers


def _finite(series: Series) -> List[Tuple[float, float]]:
    return [(s, v) for s, v in series if v is not None and math.isfinite(v)]


def _slope(points: Sequence[Tuple[float, float]]) -> float:
    """Least-squares slope of value against step."""
    n = len(points)
    mx = sum(s for s, _ in points) / n
    my = sum(v for _, v in points) / n
    var = sum((s - mx) ** 2 for s, _ in points)
    return 0.0 if var == 0 else sum((s - mx) * (v - my) for s, v in points) / var


def _rank_corr(pairs: Sequence[Tuple[float, float]]) -> float:
    """Spearman rank correlation of (x, y) pairs (average ranks for ties)."""
    def ranks(xs):
        order = sorted(range(len(xs)), key=lambda i: xs[i])
        r = [0.0] * len(xs)
        i = 0
        while i < len(order):
            j = i
            while j + 1 < len(order) and xs[order[j + 1]] == xs[order[i]]:
                j += 1
            for k in range(i, j + 1):
                r[order[k]] = (i + j) / 2
            i = j + 1
        return r

    rx, ry = ranks([x for x, _ in pairs]), ranks([y for _, y in pairs])
    n = len(pairs)
    mx, my = sum(rx) / n, sum(ry) / n
    cov = sum((a - mx) * (b - my) for a, b in zip(rx, ry))
    var = math.sqrt(sum((a - mx) ** 2 for a in rx) * sum((b - my) ** 2 for b in ry))
    return 0.0 if var == 0 else cov / var


def _int(step: float) -> str:
    return str(int(step)) if float(step).is_integer() else f"{step:g}"
