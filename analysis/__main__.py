"""``python -m analysis``: compare runs, overlay curves, report a sweep, rerun its best trial.

Each command lives in its own module and is imported only when chosen, so
``--help`` answers without loading MLflow, Optuna or matplotlib.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from typing import List, Optional

EPILOG = """examples:
  python -m analysis compare --experiment ftrun --sort eval_loss
  python -m analysis compare --sweep STUDY_OR_PARENT_RUN_ID --status pruned --format markdown
  python -m analysis curves RUN_ID RUN_ID -o curves.png
  python -m analysis sweep --study lora_search --storage multirun/.../optuna.db
  python -m analysis best --study lora_search          # writes ftrun/conf/experiment/best_lora_search.yaml
"""


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m analysis", description=__doc__.splitlines()[0],
                                epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tracking-uri", help="MLflow tracking URI (default: MLFLOW_TRACKING_URI, else MLflow's default)")
    sub = p.add_subparsers(dest="command", required=True, metavar="{compare,curves,sweep,best}")

    def runs_filter(sp, experiment_help="MLflow experiment name (repeatable; default: all)"):
        sp.add_argument("--experiment", action="append", help=experiment_help)
        sp.add_argument("--sweep", help="only the trials of this sweep: parent run id or study name")
        sp.add_argument("--status", action="append", choices=("finished", "pruned", "failed", "running", "paused", "killed"),
                        help="only runs in this state (repeatable)")

    c = sub.add_parser("compare", help="table of runs: differing params, metrics, state, diagnostics")
    runs_filter(c)
    c.add_argument("--tag", action="append", metavar="KEY=VALUE", help="only runs with this tag (repeatable)")
    c.add_argument("--sort", metavar="COLUMN", help="sort by this column (default: best_eval_loss); "
                                                    "descending with --desc or --sort=-COLUMN")
    c.add_argument("--desc", action="store_true", help="sort descending")
    c.add_argument("--format", choices=("table", "csv", "markdown"), default="table")
    c.add_argument("--limit", type=int, help="show at most this many rows")
    c.add_argument("-o", "--output", help="write to this file instead of stdout")

    v = sub.add_parser("curves", help="overlaid loss / learning-rate curves of runs, as one PNG")
    v.add_argument("run_ids", nargs="*", metavar="RUN_ID")
    runs_filter(v, "add the runs of this experiment (repeatable)")
    v.add_argument("--top", type=int, help="keep the N runs with the best eval loss")
    v.add_argument("--logy", action="store_true", help="log-scale loss axes")
    v.add_argument("--title")
    v.add_argument("-o", "--output", default="curves.png", help="PNG path (default: curves.png)")

    s = sub.add_parser("sweep", help="HTML report of an Optuna study (also logged to its MLflow parent run)")
    s.add_argument("--study", required=True, help="Optuna study name")
    s.add_argument("--storage", help="Optuna storage URL or file (.db = sqlite, else journal); default: "
                                     "from the sweep's MLflow parent run, else *.db under multirun/ and outputs/")
    s.add_argument("-o", "--output", help="report folder (default: sweep_reports/STUDY)")
    s.add_argument("--no-mlflow", action="store_true", help="do not log the report to the parent run")

    b = sub.add_parser("best", help="the best trial as ftrun/conf/experiment/*.yaml (or an override list)")
    b.add_argument("--study", required=True, help="Optuna study name")
    b.add_argument("--storage", help="as for `sweep`")
    b.add_argument("--objective", type=int, default=0, help="with several objectives: best on this one (index)")
    b.add_argument("--name", help="experiment file name (default: best_STUDY)")
    b.add_argument("--conf-dir", help="config folder to write into (default: ftrun/conf, the configs in the package)")
    b.add_argument("--print", action="store_true", help="print the override list; write no file")
    return p


def main(argv: Optional[List[str]] = None) -> int:
    args = parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    module = importlib.import_module(f"analysis.{args.command}")
    try:
        return module.main(args)
    except (LookupError, ValueError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
