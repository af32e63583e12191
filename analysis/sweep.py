"""``python -m analysis sweep --study NAME``: one HTML report (with its PNGs) per Optuna study.

Figures come from Optuna's own matplotlib visualizations (optimization history,
intermediate values, parallel coordinates, parameter importances, slices, the
Pareto front when there are several objectives, timeline); importances from
``optuna.importance``; the trials' loss curves from their MLflow runs. The report adds the trial counts by state, the compute
each state used and an estimate of what the pruner saved (the study's one compute account,
:mod:`sweeper.compute`, the same as the sweep's ``summary.md``), the diagnostics, and
a table of trials linked to their MLflow runs. It is also logged as artifacts
(``sweep_report/``) of the sweep's parent MLflow run when there is one.
"""

from __future__ import annotations

import html
import logging
import warnings
from pathlib import Path
from typing import Callable, Dict, List, Optional, Tuple

from analysis import store
from analysis.diagnostics import Flag, diagnose_run, range_edges
from ftrun import contract as C
from sweeper.compute import Compute, compute_account, compute_text, trial_kind, trial_seconds

log = logging.getLogger(__name__)


def objective_names(study, runs: Optional[Dict[int, store.RunRecord]] = None, parent=None) -> List[str]:
    """The study's metric names, else the sweep's ``objectives`` (parent run tag or study user attr),
    else the ``objective`` its runs recorded, else value / values_i."""
    if study.metric_names:
        return list(study.metric_names)
    named = study.user_attrs.get(C.ATTR_OBJECTIVES)
    if not named and parent is not None and parent.data.tags.get(C.TAG_OBJECTIVES):
        named = parent.data.tags[C.TAG_OBJECTIVES].split(",")
    if named and len(named) == len(study.directions):
        return [str(n) for n in named]
    if len(study.directions) == 1:
        recorded = {r.params.get("objective") for r in (runs or {}).values()} - {None}
        return [recorded.pop()] if len(recorded) == 1 else ["value"]
    return [f"values_{i}" for i in range(len(study.directions))]


def figures(study, out_dir: Path, names: Optional[List[str]] = None) -> Tuple[List[Tuple[str, str]], List[str]]:
    """Draw Optuna's figures into PNGs: ([(title, file name)], [notes on figures not drawn])."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import optuna
    from optuna.visualization import matplotlib as ov

    done = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    names = names or objective_names(study)
    multi = len(study.directions) > 1
    plots: List[Tuple[str, str, Callable]] = []
    if multi:
        plots.append(("Pareto front", "pareto_front.png", lambda: ov.plot_pareto_front(study, target_names=names)))
        for i, nm in enumerate(names):
            target = (lambda t, i=i: t.values[i])
            plots.append((f"Optimization history: {nm}", f"history_{i}.png",
                          lambda target=target, nm=nm: ov.plot_optimization_history(study, target=target,
                                                                                     target_name=nm)))
            plots.append((f"Parameter importances for {nm}", f"importances_{i}.png",
                          lambda target=target, nm=nm: ov.plot_param_importances(study, target=target,
                                                                                 target_name=nm)))
    else:
        plots += [
            ("Optimization history", "history.png",
             lambda: ov.plot_optimization_history(study, target_name=names[0])),
            ("Intermediate values (what the pruner saw)", "intermediate.png",
             lambda: ov.plot_intermediate_values(study)),
            ("Parallel coordinates", "parallel.png",
             lambda: ov.plot_parallel_coordinate(study, target_name=names[0])),
            ("Parameter importances", "importances.png",
             lambda: ov.plot_param_importances(study, target_name=names[0])),
            ("Slices", "slice.png", lambda: ov.plot_slice(study, target_name=names[0])),
        ]
    plots.append(("Timeline", "timeline.png", lambda: ov.plot_timeline(study)))
    drawn, notes = [], []
    for title, name, draw in plots:
        if not done and name != "timeline.png":
            notes.append(f"{title}: no complete trials yet")
            continue
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                ax = draw()
        except Exception as e:  # e.g. importances need two complete trials with varied params
            notes.append(f"{title}: not drawn ({type(e).__name__}: {e})")
            plt.close("all")
            continue
        fig = _figure_of(ax)
        if fig is None:
            notes.append(f"{title}: nothing to draw")
            continue
        if name.startswith("slice"):  # one panel per parameter: keep each readable
            fig.set_size_inches(max(8.0, 4.0 * (len(fig.axes) - 1) + 1.5), 4.5)
        elif name == "parallel.png":
            fig.set_size_inches(max(9.0, 2.5 * len(fig.axes)), 5.0)
        # Optuna places its own colour bars: no tight_layout, just crop the margins when saving
        fig.savefig(out_dir / name, dpi=100, bbox_inches="tight")
        plt.close(fig)
        drawn.append((title, name))
    return drawn, notes


def importances(study, names: Optional[List[str]] = None) -> Tuple[Dict[str, Dict[str, float]], Optional[str]]:
    """Optuna's parameter importances per objective name, or why there are none."""
    import optuna

    names = names or objective_names(study)
    out = {}
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            for i, nm in enumerate(names):
                target = (lambda t, i=i: t.values[i]) if len(names) > 1 else None
                out[nm] = optuna.importance.get_param_importances(study, target=target)
    except Exception as e:
        return {}, f"{type(e).__name__}: {e}"
    return out, None


def report(study, out_dir: Path, c=None, log_to_mlflow: bool = True) -> Path:
    """Write ``out_dir/index.html`` and its PNGs; log them to the parent MLflow run if any."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    parent = store.study_parent_run(c, study) if c is not None else None
    runs = store.trial_runs(c, study, parent) if c is not None else {}
    store.load_histories(c, runs.values()) if runs else None

    names = objective_names(study, runs, parent)
    drawn, notes = figures(study, out_dir, names)
    if runs:  # the trials' own loss curves, from their MLflow runs
        from analysis.curves import plot as plot_curves

        plot_curves([runs[n] for n in sorted(runs)], out_dir / "curves.png", title=f"{study.study_name}: trials")
        drawn.append(("Loss and learning-rate curves of the trials", "curves.png"))
    flags: List[Flag] = list(range_edges(study))
    per_trial: Dict[int, List[Flag]] = {}
    for number, rec in sorted(runs.items()):
        per_trial[number] = diagnose_run(rec.histories, subject=f"trial {number} ({rec.short_id})",
                                         failed=rec.state == "failed")
        flags += per_trial[number]

    e = html.escape
    dirs = ", ".join(f"{n} ({d.name.lower()})" for n, d in zip(names, study.directions))
    parts = [f"<h1>Sweep report: {e(study.study_name)}</h1>",
             f"<p>{len(study.trials)} trials; objective: {e(dirs)}"
             + (f"; MLflow parent run <code>{e(parent.info.run_id)}</code>" if parent is not None else "")
             + "</p>"]
    parts += _best_section(study, names)
    parts += _compute_section(compute_account(study.trials))
    parts += _diagnostics_section(flags, bool(runs))
    parts += _importances_section(*importances(study, names))
    parts += _figures_section(drawn, notes)
    parts += _trials_section(study, names, runs, per_trial)
    page = ("<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n"
            f"<title>Sweep report: {e(study.study_name)}</title>\n<style>{_CSS}</style>\n</head>\n<body>\n"
            + "\n".join(parts) + "\n</body>\n</html>\n")
    index = out_dir / "index.html"
    index.write_text(page, encoding="utf-8")
    if log_to_mlflow and parent is not None:
        c.log_artifacts(parent.info.run_id, str(out_dir), artifact_path="sweep_report")
        log.info("logged the report to MLflow run %s under sweep_report/", parent.info.run_id)
    return index


def _best_section(study, names: List[str]) -> List[str]:
    import optuna

    e = html.escape
    parts = ["<h2>Best</h2>"]
    done = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    if not done:
        parts.append("<p>No complete trials yet.</p>")
    elif len(study.directions) == 1:
        b = study.best_trial
        parts.append(f"<p>Trial {b.number}: {e(names[0])} = {b.value:.6g}</p>" + _params_table(b.params))
        parts.append(f"<p>Rerun it: <code>python -m analysis best --study {e(study.study_name)}</code></p>")
    else:
        parts.append(f"<p>{len(study.best_trials)} trials on the Pareto front:</p>")
        parts.append(_table(["trial", *names, "params"],
                            [[t.number, *(f"{v:.6g}" for v in t.values), _fmt_params(t.params)]
                             for t in study.best_trials]))
    return parts


def _compute_section(comp: Compute) -> List[str]:
    """The study's compute account (:mod:`sweeper.compute`, as in summary.md)."""
    parts = ["<h2>Trials and compute</h2>", f"<p>{html.escape(compute_text(comp, {}))}</p>"]
    rows = [[s, comp.counts[s], f"{comp.seconds.get(s, 0.0):.1f}"] for s in sorted(comp.counts)]
    rows.append(["total", sum(comp.counts.values()), f"{comp.used_s:.1f}"])
    parts.append(_table(["state", "trials", "trial-seconds"], rows))
    if comp.counts.get("pruned"):
        share = comp.saved_s / (comp.used_s + comp.saved_s) if comp.used_s + comp.saved_s > 0 else 0.0
        parts.append(f"<p>Pruning stopped {comp.counts['pruned']} trials early and saved about "
                     f"{comp.saved_s:.1f} s ({100 * share:.0f}% of what the sweep would have taken without it; "
                     "each pruned trial counted as costing the median complete trial).</p>")
    return parts


def _diagnostics_section(flags: List[Flag], have_runs: bool) -> List[str]:
    e = html.escape
    if flags:
        return ["<h2>Diagnostics</h2>", "<ul>" + "".join(f"<li><b>{e(f.kind)}</b> {e(f.subject)}: {e(f.evidence)}. "
                                                         f"<i>Try: {e(f.advice)}</i></li>" for f in flags) + "</ul>"]
    return ["<h2>Diagnostics</h2>",
            "<p>No flags: no overfitting, divergence, under-training or best values at a range edge"
            + ("" if have_runs else " (per-trial checks need the trials' MLflow runs; none were found)") + ".</p>"]


def _importances_section(imps: Dict[str, Dict[str, float]], note: Optional[str]) -> List[str]:
    e = html.escape
    parts = ["<h2>Parameter importances</h2>"]
    if not imps:
        return parts + [f"<p>Not computed ({e(note or '')}).</p>"]
    for nm, imp in imps.items():
        parts.append(f"<p>{e(nm)}:</p>" + _table(["param", "importance"], [[k, f"{v:.3f}"] for k, v in imp.items()]))
    return parts


def _figures_section(drawn: List[Tuple[str, str]], notes: List[str]) -> List[str]:
    e = html.escape
    parts = ["<h2>Figures</h2>"]
    for title, name in drawn:
        parts.append(f'<figure><img src="{e(name)}" alt="{e(title)}"><figcaption>{e(title)}</figcaption></figure>')
    if notes:
        parts.append("<ul>" + "".join(f"<li>{e(n)}</li>" for n in notes) + "</ul>")
    return parts


def _trials_section(study, names: List[str], runs: Dict[int, store.RunRecord],
                    per_trial: Dict[int, List[Flag]]) -> List[str]:
    head = ["trial", "state", *names, "seconds", "params", "MLflow run", "flags", "note"]
    rows = []
    for t in study.trials:
        values = t.values or [None] * len(names)
        rec = runs.get(t.number)
        note = t.user_attrs.get(C.ATTR_FAIL_REASON) or (rec.tags.get(C.TAG_FAIL_REASON) if rec else "") or ""
        if trial_kind(t) == "paused":
            note = f"paused at {t.user_attrs[C.ATTR_PAUSED_AT]} examples, waiting to be promoted"
        if t.user_attrs.get(C.ATTR_PROMOTIONS):
            note = f"promoted {t.user_attrs[C.ATTR_PROMOTIONS]}x after pausing; {note}".rstrip("; ")
        rows.append([t.number, trial_kind(t), *("" if v is None else f"{v:.6g}" for v in values),
                     f"{trial_seconds(t):.1f}", _fmt_params(t.params), rec.run_id if rec else "",
                     ", ".join(f.kind for f in per_trial.get(t.number, [])), str(note)[:300]])
    return ["<h2>Trials</h2>", _table(head, rows)]


def main(args) -> int:
    c = store.client(args.tracking_uri)
    study = store.load_study(args.study, args.storage, c=c)
    out = Path(args.output or f"sweep_reports/{study.study_name}")
    index = report(study, out, c=c, log_to_mlflow=not args.no_mlflow)
    print(f"wrote {index}")
    return 0


# ---------------------------------------------------------------------------
# helpers


def _figure_of(ax):
    import numpy as np

    if isinstance(ax, np.ndarray):
        ax = ax.flat[0] if ax.size else None
    return getattr(ax, "figure", None)


def _fmt_params(params: dict) -> str:
    return " ".join(f"{k}={store.short_value(v)}" for k, v in params.items())


def _params_table(params: dict) -> str:
    return _table(["param", "value"], [[k, v] for k, v in params.items()])


def _table(head, rows) -> str:
    e = html.escape
    out = ["<table>", "<tr>" + "".join(f"<th>{e(str(h))}</th>" for h in head) + "</tr>"]
    out += ["<tr>" + "".join(f"<td>{e(str(x))}</td>" for x in row) + "</tr>" for row in rows]
    return "\n".join(out + ["</table>"])


_CSS = """
body { font-family: sans-serif; max-width: 1200px; margin: 2em auto; color: #222; }
table { border-collapse: collapse; margin: 0.5em 0 1em; font-size: 0.9em; }
th, td { border: 1px solid #ccc; padding: 0.25em 0.6em; text-align: left; }
th { background: #f3f3f3; }
figure { margin: 1em 0; } img { max-width: 100%; border: 1px solid #eee; }
code { background: #f6f6f6; padding: 0 0.2em; }
"""
