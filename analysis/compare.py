"""``python -m analysis compare``: a table of runs, the params that differ, results and diagnostics.

Filter by experiment, sweep, tag and state; sort by any column; print a terminal
table, CSV or Markdown. Under the table (table and Markdown), each diagnostic
with its evidence.
"""

from __future__ import annotations

import csv
import io
import math
import statistics
from typing import Dict, List, Optional, Sequence

from analysis import store
from analysis.diagnostics import Flag, diagnose_run
from ftrun.config import display_key
from ftrun.contract import TAG_FAIL_REASON, TAG_STUDY_NAME

FORMATS = ("table", "csv", "markdown")


def build_table(records: Sequence[store.RunRecord]) -> tuple[List[str], List[dict], Dict[str, List[Flag]]]:
    """Columns, one row per run (raw values), and the diagnostics per run id."""
    params = store.differing_params(records)
    names = {p: display_key(p) for p in params}  # optimizer.lr is shown as lr, the spelling people sweep
    has_em = any("eval_exact_match" in r.metrics for r in records)
    columns = ["run", "name", "state", *names.values(), "eval_loss", "best_eval_loss"]
    if has_em:
        columns += ["eval_exact_match", "best_eval_exact_match"]
    columns += ["train_loss", "train_time_s", "tokens_per_s", "peak_memory_mb", "trainable_params", "flags"]
    rows, flags = [], {}
    for r in records:
        evals = r.histories.get("eval_loss", [])
        ems = r.histories.get("eval_exact_match", [])
        tps = [v for _, v in r.histories.get("tokens_per_second", []) if math.isfinite(v)]
        row = {"run": r.short_id, "name": r.name, "state": r.state, "run_id": r.run_id}
        row.update({names[p]: r.params.get(p) for p in params})
        row.update({
            "eval_loss": r.metrics.get("eval_loss"),
            "best_eval_loss": min((v for _, v in evals), default=r.metrics.get("eval_loss")),
            "eval_exact_match": r.metrics.get("eval_exact_match"),
            "best_eval_exact_match": max((v for _, v in ems), default=r.metrics.get("eval_exact_match")),
            "train_loss": r.metrics.get("final_train_loss", r.metrics.get("train_loss")),
            "train_time_s": r.metrics.get("train_time_s"),
            "tokens_per_s": statistics.median(tps) if tps else r.metrics.get("tokens_per_second"),
            "peak_memory_mb": r.metrics.get("peak_memory_mb"),
            "trainable_params": r.metrics.get("trainable_params"),
        })
        flags[r.run_id] = diagnose_run(r.histories, subject=f"{r.short_id} {r.name}", failed=r.state == "failed")
        if r.state == "failed":
            flags[r.run_id].append(Flag("failed", r.tags.get(TAG_FAIL_REASON, "the run ended FAILED")[:300],
                                        "see the run's log; an out-of-memory error wants a smaller batch_size "
                                        "with a larger grad_accum", f"{r.short_id} {r.name}"))
        row["flags"] = ", ".join(f.kind for f in flags[r.run_id])
        rows.append(row)
    return columns, rows, flags


def sort_rows(rows: List[dict], columns: Sequence[str], key: Optional[str]) -> List[dict]:
    """Sort by a column (``-col`` for descending); missing values go last either way."""
    if not key:
        key = "best_eval_loss"
    desc = key.startswith("-")
    key = key.lstrip("-")
    if key not in columns:
        raise ValueError(f"--sort {key}: no such column; choose from {', '.join(columns)}")

    def as_number(v):
        try:
            return float(v)
        except (TypeError, ValueError):
            return None

    present = [r for r in rows if r.get(key) not in (None, "")]
    missing = [r for r in rows if r.get(key) in (None, "")]
    numeric = all(as_number(r[key]) is not None for r in present)
    present.sort(key=lambda r: as_number(r[key]) if numeric else str(r[key]), reverse=desc)
    return present + missing


def cell(value) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        if value.is_integer() and abs(value) >= 1000:
            return f"{int(value):,}"
        return f"{value:.4g}"
    return store.short_value(value)


def render(columns: Sequence[str], rows: Sequence[dict], fmt: str = "table",
           flags: Optional[Dict[str, List[Flag]]] = None, sweep_flags: Sequence[Flag] = ()) -> str:
    """The table as text; table and Markdown end with the diagnostics (per run, then the sweep's)."""
    if fmt == "csv":
        buf = io.StringIO()
        writer = csv.writer(buf, lineterminator="\n")
        writer.writerow([*columns, "run_id", "diagnostics"])
        for r in rows:
            diag = " | ".join(str(f) for f in (flags or {}).get(r["run_id"], []))
            writer.writerow([("" if r.get(c) is None else r.get(c)) for c in columns] + [r["run_id"], diag])
        return buf.getvalue()
    cells = [[cell(r.get(c)) for c in columns] for r in rows]
    if fmt == "markdown":
        esc = lambda s: s.replace("|", "\\|")  # noqa: E731
        lines = ["| " + " | ".join(columns) + " |", "|" + "|".join("---" for _ in columns) + "|"]
        lines += ["| " + " | ".join(esc(x) for x in row) + " |" for row in cells]
    elif fmt == "table":
        widths = [max(len(c), *(len(row[i]) for row in cells)) if cells else len(c) for i, c in enumerate(columns)]
        lines = ["  ".join(c.ljust(w) for c, w in zip(columns, widths)).rstrip(),
                 "  ".join("-" * w for w in widths)]
        lines += ["  ".join(x.ljust(w) for x, w in zip(row, widths)).rstrip() for row in cells]
    else:
        raise ValueError(f"--format {fmt}: choose one of {', '.join(FORMATS)}")
    found = [f for r in rows for f in (flags or {}).get(r["run_id"], [])] + list(sweep_flags)
    if found:
        lines += ["", "Diagnostics:" if fmt == "table" else "**Diagnostics**", ""]
        lines += [f"- {f}" for f in found]
    return "\n".join(lines) + "\n"


def main(args) -> int:
    c = store.client(args.tracking_uri)
    tags = dict(t.split("=", 1) for t in args.tag or [])
    records = store.find_runs(c, experiments=args.experiment or [], sweep=args.sweep, tags=tags,
                              states=args.status or [])
    if not records:
        print("no runs match")
        return 1
    store.load_histories(c, records)
    columns, rows, flags = build_table(records)
    key = args.sort or "best_eval_loss"
    rows = sort_rows(rows, columns, ("-" + key.lstrip("-")) if args.desc else key)
    if args.limit:
        rows = rows[:args.limit]
    sweep_flags = _sweep_flags(c, args.sweep) if args.sweep else []
    text = render(columns, rows, args.format, flags, sweep_flags)
    if args.output:
        with open(args.output, "w") as f:
            f.write(text)
        print(f"wrote {args.output} ({len(rows)} runs)")
    else:
        print(text, end="")
    return 0


def _sweep_flags(c, sweep: str) -> List[Flag]:
    """Range-edge flags of the sweep's study, when its storage can be found from the parent run."""
    from analysis.diagnostics import range_edges

    parent = store.find_parent_run(c, sweep)
    name = parent.data.tags.get(TAG_STUDY_NAME) if parent is not None else None
    if not name:
        return []
    try:
        return range_edges(store.load_study(name, c=c))
    except Exception:  # no storage reachable: the table stands without it
        return []
