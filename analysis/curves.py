"""``python -m analysis curves RUN_ID ...``: loss curves of several runs overlaid in one PNG.

Four panels: train (solid) and eval (dashed, dots) loss against step and against
tokens seen; learning rate against step and grad norm against step. One colour
per run, labelled by the params that differ between the runs.
"""

from __future__ import annotations

from pathlib import Path
from typing import List, Sequence

from analysis import store


def plot(records: Sequence[store.RunRecord], path: Path, title: str = "", logy: bool = False) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = store.differing_params(records)
    cmap = plt.get_cmap("tab10" if len(records) <= 10 else "tab20" if len(records) <= 20 else "viridis")
    colors = [cmap(i if len(records) <= 20 else i / max(1, len(records) - 1)) for i in range(len(records))]
    fig = plt.figure(figsize=(13, 8.5))
    ax_step, ax_tok = fig.add_subplot(2, 2, 1), fig.add_subplot(2, 2, 2)
    ax_lr, ax_gn = fig.add_subplot(2, 2, 3, sharex=ax_step), fig.add_subplot(2, 2, 4, sharex=ax_step)
    no_tokens = []
    for rec, color in zip(records, colors):
        lab = store.label(rec, keys)
        h = rec.histories
        for key, style in (("train_loss", dict(lw=1.4)), ("eval_loss", dict(ls="--", marker="o", ms=3.5, lw=1.2))):
            pts = h.get(key, [])
            if not pts:
                continue
            steps, values = zip(*pts)
            if len(pts) == 1:  # a run stopped after one log still shows up
                style = {**style, "marker": "o", "ms": 4}
            ax_step.plot(steps, values, color=color, **style)
            tokens = store.tokens_seen_at(rec, steps)
            if tokens is None:
                no_tokens.append(rec.short_id)
            else:
                ax_tok.plot(tokens, values, color=color, **style)
        if h.get("learning_rate"):
            ax_lr.plot(*zip(*h["learning_rate"]), color=color)
        if h.get("grad_norm"):
            ax_gn.plot(*zip(*h["grad_norm"]), color=color)
        ax_step.plot([], [], color=color, label=lab)  # one legend entry per run
    for ax, ylabel in ((ax_step, "loss"), (ax_tok, "loss"), (ax_lr, "learning rate"), (ax_gn, "grad norm")):
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
        if logy and ylabel == "loss":
            ax.set_yscale("log")
    ax_step.tick_params(labelbottom=False)
    ax_lr.set_xlabel("step")
    ax_gn.set_xlabel("step")
    ax_tok.set_xlabel("tokens seen")
    ax_step.set_title("loss by step (solid: train, dashed: eval)")
    ax_tok.set_title("loss by tokens seen" + (f" (no token counts: {', '.join(sorted(set(no_tokens)))})"
                                              if no_tokens else ""))
    ax_lr.set_title("learning rate")
    ax_gn.set_title("grad norm")
    ncol = 1 if len(records) <= 8 else 2 if len(records) <= 24 else 3
    fig.legend(*ax_step.get_legend_handles_labels(), loc="lower center", ncol=min(len(records), 3 * ncol),
               fontsize=8 if len(records) > 8 else 9, frameon=False,
               title=("runs by " + ", ".join(keys)) if keys else "runs")
    if title:
        fig.suptitle(title)
    rows_legend = -(-len(records) // min(len(records), 3 * ncol))
    fig.tight_layout(rect=(0, min(0.45, 0.04 + 0.03 * (rows_legend + 1)), 1, 1))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def main(args) -> int:
    c = store.client(args.tracking_uri)
    records: List[store.RunRecord] = []
    for run_id in args.run_ids or []:
        records.append(store.to_record(c.get_run(run_id)))
    if args.sweep or args.experiment:
        records += store.find_runs(c, experiments=args.experiment or [], sweep=args.sweep,
                                   states=args.status or [])
    if not records:
        print("give run ids, or --sweep/--experiment to pick runs")
        return 1
    store.load_histories(c, records)
    if args.top:
        records.sort(key=lambda r: min((v for _, v in r.histories.get("eval_loss", [])), default=float("inf")))
        records = records[:args.top]
    path = plot(records, Path(args.output), title=args.title or "", logy=args.logy)
    print(f"wrote {path} ({len(records)} runs)")
    return 0
