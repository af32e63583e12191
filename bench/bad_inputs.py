"""Every bad input, for every key: a suite generated from the schema, run through the real entry points.

    python bench/bad_inputs.py                 # every case in process, a sample per entry point as a subprocess
    python bench/bad_inputs.py --cli-sample 0  # in process only (about a minute)

The cases come from walking the structured configs (:class:`ftrun.config.Config` and every dataclass under it)
and the sweeper's settings (:class:`sweeper.config.FtrunSweeperConf`): each key's type and rules give its bad
values (:func:`bad_values`): the wrong type, out of range, not a number, an empty string, an empty list, a
nonexistent path, a directory where a file is wanted and a file where a directory is wanted, an unknown
choice, a reversed interval, a negative count, and a ``model.path`` that is not a model. A key that only
matters under some setting (``galore/apollo: ...`` in its docstring) gets that setting (:data:`CONTEXTS`).

Each case is checked in process the way the command line checks it before anything loads (compose, then
:func:`ftrun.config.validate` and the model-directory check for a run; the sweeper's setting checks for
``hydra.sweeper.*``): it must end in one message that names the key, i.e. exit status 2. A sample of each
entry point (``python -m ftrun``, ``-m`` sweeps, ``ftrun.estimate``, ``data_stats``, ``export``, ``predict``,
``chat``, ``serve``, ``board``) also runs as a real subprocess, recording the exit status, the time to the
message, whether a traceback was printed, whether a model, tokenizer or dataset loaded first (:mod:`bench.
_load_watch` reports it), and what was left behind: run directories, MLflow runs left RUNNING, studies.

Writes bench/results/bad_inputs.json and bench/results/bad_inputs.md (counts per entry point and per kind).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
import typing
from enum import Enum
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Sequence, Tuple

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

# a key whose docstring starts with "<context>:" is checked only under that setting
CONTEXTS = {
    "galore/apollo": ["optimizer=galore", "method=full"],
    "galore": ["optimizer=galore", "method=full"],
    "badam": ["optimizer=badam", "method=full"],
    "llama_pro": ["method=llama_pro"],
    "rope_scaling": ["model.rope_scaling=linear"],
    "freeze": ["method=freeze"],
}
# what every case adds so that nothing is recorded or built that the case is not about
QUIET = ["tracking.enabled=false"]
TOOLS = ("export", "predict", "chat", "serve")  # key=value tools with their own argument dataclasses
KINDS = ("wrong type", "out of range", "not a number", "empty string", "empty list", "nonexistent path",
         "directory for a file", "file for a directory", "unknown choice", "reversed interval", "negative count",
         "not a model", "unknown key")


@dataclasses.dataclass
class Case:
    entry: str
    """run, sweep, estimate, data_stats, export, predict, chat, serve or board."""
    key: str
    """The key the message must name."""
    kind: str
    """One of KINDS."""
    args: List[str]
    """The command-line arguments of the case (for a sweep: with its search expression)."""
    names: Tuple[str, ...] = ()
    """Other spellings of the key a message may use (lr for optimizer.lr)."""


# ---------------------------------------------------------------------------
# the schema walk


def schema_keys(cls, prefix: str = "") -> Iterator[Tuple[str, Any, str, Any]]:
    """``(key, type, docstring, default)`` of every leaf key under a structured-config dataclass."""
    from ftrun.cli import field_docs

    hints, docs = typing.get_type_hints(cls), field_docs(cls)
    for f in dataclasses.fields(cls):
        if f.name.startswith("_"):
            continue  # Hydra's _target_
        hint = hints[f.name]
        inner = _strip_optional(hint)
        if dataclasses.is_dataclass(inner):
            yield from schema_keys(inner, f"{prefix}{f.name}.")
            continue
        default = f.default if f.default is not dataclasses.MISSING else (
            f.default_factory() if f.default_factory is not dataclasses.MISSING else None)
        yield prefix + f.name, hint, docs.get(f.name, ""), default


def path_kind(key: str, hint: Any, doc: str) -> Optional[str]:
    """dir, file or either for a key that holds a local path (from its name and docstring), else None."""
    if _strip_optional(hint) is not str:
        return None
    name, text = key.rsplit(".", 1)[-1], doc.lower()
    wants_dir = name.endswith(("_dir", "_root")) or any(w in text for w in ("folder", "directory"))
    wants_file = any(w in text for w in (" file", ".json"))
    if not (wants_dir or wants_file or name in ("path", "registry") or name.endswith("_run")):
        return None
    if "uri" in text.split(";")[0]:
        return None
    return "either" if wants_dir and wants_file else "dir" if wants_dir or name.endswith("_run") else "file"


def bad_values(key: str, hint: Any, doc: str, default: Any, paths: Dict[str, str]) -> List[Tuple[str, str]]:
    """``(kind, value)`` pairs that the key must refuse, from its type, its docstring and its default."""
    inner, optional = _strip_optional(hint), _is_optional(hint)
    out: List[Tuple[str, str]] = []
    if isinstance(inner, type) and issubclass(inner, Enum):
        return [("unknown choice", "nope")]
    if inner is bool:
        return [("wrong type", "maybe")]
    if inner is int:
        return [("wrong type", "abc"), ("wrong type", "2.5"), ("negative count", "-5")]
    if inner is float:
        return [("wrong type", "abc"), ("out of range", "-5"), ("not a number", "nan")]
    origin, args = typing.get_origin(inner), typing.get_args(inner)
    if origin in (list, List):
        item = _strip_optional(args[0]) if args else Any
        if isinstance(item, type) and issubclass(item, Enum):
            return [("unknown choice", "[nope]"), ("empty list", "[]")]
        if item is float:
            return [("wrong type", "[abc]"), ("out of range", "[-5]")]
        if item is str and default:  # a list that needs an entry (target modules)
            return [("empty list", "[]"), ("empty string", "['']")]
        if item is str:
            return [("empty string", "['']")]
        return [("wrong type", "abc")]
    if origin in (dict, Dict) or (inner is Any and isinstance(default, dict)):
        return [("wrong type", "abc")]
    if inner is str:
        kind = path_kind(key, hint, doc)
        if kind is not None:
            if not key.endswith(("_dir", "_root")):  # an output folder that does not exist yet is made
                out.append(("nonexistent path", paths["nowhere"]))
            if kind == "dir":
                out.append(("file for a directory", paths["file"]))
            if kind == "file":
                out.append(("directory for a file", paths["dir"]))
            if key.endswith("model.path"):
                out += [("not a model", paths[m]) for m in ("tokenizer_only", "weights_only", "config_only")]
        if not (optional and kind is not None):
            out.append(("empty string", "''"))
        return out
    return []


def run_cases(paths: Dict[str, str]) -> List[Case]:
    """Every key of the run's schema with each of its bad values, for ``python -m ftrun``."""
    from ftrun.config import Config, display_key

    cases = []
    for key, hint, doc, default in schema_keys(Config):
        context = CONTEXTS.get(doc.split(":", 1)[0].strip(), []) if ":" in doc[:20] else []
        for kind, value in bad_values(key, hint, doc, default, paths):
            cases.append(Case("run", key, kind, [*context, f"{key}={value}"], names=(display_key(key),)))
    return cases


def sweeper_cases(paths: Dict[str, str]) -> List[Case]:
    """Every ``hydra.sweeper`` setting with its bad values, for ``python -m ftrun -m``; settings typed Any or
    a mapping take a bad spec of their own (an unknown sampler, a reversed interval in params, ...)."""
    from sweeper.config import FtrunSweeperConf

    own = {
        "sampler": [("unknown choice", "nope"), ("out of range", "{name:nsgaii,population_size:1}")],
        "pruner": [("unknown choice", "nope"), ("out of range", "{name:median,n_startup_trials:-3}")],
        "direction": [("unknown choice", "upward")],
        "launcher": [("unknown choice", "nope")],
        "workers": [("unknown choice", "tepid")],
        "storage": [("unknown choice", "nope")],
        "study_name": [("empty string", "''"), ("wrong type", "a/b")],
        "params": [("reversed interval", "{lr:'interval(1e-2,1e-4)'}"), ("wrong type", "{lr:'interval(a,b)'}")],
        "search_space": [("unknown choice", "{lr:{type:nope,low:1,high:2}}")],
        "conditions": [("unknown key", "{nope:{method:[lora]}}")],
        "enqueue": [("wrong type", "[abc]")],
        "auto": [("wrong type", "[abc]")],
        "custom_search_space": [("unknown choice", "my.module.space")],
        "objectives": [("empty list", "[]")],
        "devices": [("empty list", "[]")],
        "command": [("empty list", "[]")],
        "pack": [("unknown choice", "many"), ("out of range", "0")],
    }
    cases = [Case("sweep", "hydra.sweeper", "reversed interval", ["lr=interval(1e-2,1e-4)"], names=("lr=",))]
    for key, hint, doc, default in schema_keys(FtrunSweeperConf):
        values = own.get(key, []) + [v for v in bad_values(key, hint, doc, default, paths) if key not in own
                                     or v[0] in ("wrong type", "negative count", "not a number")]
        for kind, value in values:
            cases.append(Case("sweep", f"hydra.sweeper.{key}", kind,
                              [f"hydra.sweeper.{key}={value}", "lr=choice(1e-3,1e-2)"]))
    return cases


def tool_cases(paths: Dict[str, str]) -> List[Case]:
    """The other entry points: their own arguments (export, predict, chat, serve: every key of their
    argument dataclass by type, a run that does not exist), run keys through estimate and data_stats,
    and the board's launch options."""
    import importlib

    cases = []
    for tool in TOOLS:
        module = importlib.import_module(f"ftrun.{tool}.__main__" if tool == "serve" else f"ftrun.{tool}")
        schema = getattr(module, f"{tool.capitalize()}Args")
        cases.append(Case(tool, "run", "nonexistent path", [f"run={paths['nowhere']}"]))
        cases.append(Case(tool, "nope", "unknown key", [f"run={paths['nowhere']}", "nope=1"]))
        for key, hint, doc, default in schema_keys(schema):
            for kind, value in bad_values(key, hint, doc, default, paths):
                if kind in ("wrong type", "unknown choice"):
                    cases.append(Case(tool, key, kind, [f"run={paths['nowhere']}", f"{key}={value}"]))
    for tool in ("estimate", "data_stats"):
        cases += [Case(tool, "model.path", "not a model", [f"model.path={paths['tokenizer_only']}"]),
                  Case(tool, "epochs", "out of range", ["epochs=0"]),
                  Case(tool, "method", "unknown choice", ["method=nope"]),
                  Case(tool, "data.path", "nonexistent path", ["data=alpaca", f"data.path={paths['nowhere']}"])]
    cases += [Case("board", "--port", "wrong type", ["--port=abc"]),
              Case("board", "--port", "out of range", ["--port=-1"]),
              Case("board", "--lang", "unknown choice", ["--lang=xx"]),
              Case("board", "--output-root", "file for a directory", [f"--output-root={paths['file']}"])]
    return cases


def all_cases(paths: Dict[str, str]) -> List[Case]:
    return run_cases(paths) + sweeper_cases(paths) + tool_cases(paths)


def make_paths(tmp: Path) -> Dict[str, str]:
    """A file, a folder, a path that does not exist, and folders that look like models but are not."""
    tmp.mkdir(parents=True, exist_ok=True)
    (tmp / "a_file.txt").write_text("not a folder\n")
    (tmp / "a_dir").mkdir(exist_ok=True)
    (tmp / "a_dir" / "x.txt").write_text("a folder\n")
    models = {"tokenizer_only": ["tokenizer.json", "tokenizer_config.json"], "weights_only": ["model.safetensors"],
              "config_only": ["config.json"]}
    for name, files in models.items():
        (tmp / name).mkdir(exist_ok=True)
        for f in files:
            (tmp / name / f).write_text('{"hidden_size": 128, "num_hidden_layers": 4}' if f == "config.json" else "{}")
    return {"file": str(tmp / "a_file.txt"), "dir": str(tmp / "a_dir"), "nowhere": str(tmp / "no" / "such" / "path"),
            **{name: str(tmp / name) for name in models}}


def _strip_optional(hint: Any) -> Any:
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    return args[0] if typing.get_origin(hint) is typing.Union and len(args) == 1 else hint


def _is_optional(hint: Any) -> bool:
    return typing.get_origin(hint) is typing.Union and type(None) in typing.get_args(hint)


# ---------------------------------------------------------------------------
# checking a case


def check_in_process(case: Case, fast: bool = False) -> Dict[str, Any]:
    """What the command line would say before anything loads: ``{"status": 2, "message": ...}`` for a
    refusal (as the CLI exits), ``{"status": 0}`` when the case would go on to run.

    ``fast`` composes each case's setting (all but its last argument) once and applies the last argument as
    Hydra applies an override (parsed by Hydra's grammar, merged with OmegaConf's type checks), instead of
    composing from scratch (0.3 s a case): the same checks, for the CI-sized test.
    """
    from ftrun.config import ConfigError
    from sweeper.space import SearchSpaceError
    from sweeper.study import SweepConfigError

    start = time.perf_counter()
    try:
        cfg = _compose(case.args, case.entry == "sweep", fast)
        if case.entry == "sweep":
            _check_sweep(cfg, [a for a in case.args if _is_search(a)])
        else:
            from ftrun.config import validate
            from ftrun.config.model_dir import require_model_files

            validate(cfg)
            require_model_files(cfg.model)
        out: Dict[str, Any] = {"status": 0, "message": ""}
    except (ConfigError, SweepConfigError, SearchSpaceError) as e:  # what the CLI prints and exits 2 on
        out = {"status": 2, "message": str(e)}
    out["seconds"] = round(time.perf_counter() - start, 3)
    out["names_key"] = names_key(case, out["message"])
    return out


def _is_search(arg: str) -> bool:
    return "(" in arg and not arg.startswith("hydra.")


def _compose(args: Sequence[str], hydra_node: bool, fast: bool):
    from ftrun.compose import compose

    args = [a for a in args if not _is_search(a)]
    if not fast:
        return compose([*args, *QUIET], return_hydra_config=hydra_node)
    import copy

    from hydra.core.override_parser.overrides_parser import OverridesParser
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    from ftrun.compose import compose_error
    from ftrun.config import ConfigError, canonical_overrides

    cfg = copy.deepcopy(_composed(tuple(args[:-1]), hydra_node))
    if not args:
        return cfg
    (last,) = canonical_overrides(args[-1:])
    override = OverridesParser.create().parse_override(last)
    try:
        OmegaConf.update(cfg, override.key_or_group, override.value(), merge=True)
    except OmegaConfBaseException as e:
        raise ConfigError(compose_error(e)) from None
    return cfg


_COMPOSED: Dict[tuple, Any] = {}


def _composed(args: tuple, hydra_node: bool):
    from ftrun.compose import compose

    if (args, hydra_node) not in _COMPOSED:
        _COMPOSED[args, hydra_node] = compose([*args, *QUIET], return_hydra_config=hydra_node)
    return _COMPOSED[args, hydra_node]


def _check_sweep(cfg, searched: Sequence[str]) -> None:
    """The plugin's order: the settings and search expressions, then the run every trial shares."""
    from omegaconf import OmegaConf

    from sweeper.setting_checks import check_rung_branch, check_settings, check_shared_run
    from sweeper.space import parse_search_space

    conf = OmegaConf.to_container(cfg.hydra.sweeper, resolve=True)
    check_settings(conf, searched)
    space = parse_search_space({**(conf.get("search_space") or {}), **(conf.get("params") or {})}, searched)
    check_shared_run(cfg, list(space.distributions))
    check_rung_branch(conf, cfg, list(space.distributions))


def names_key(case: Case, message: str) -> bool:
    """Whether the message names the case's key (by its home or its short spelling)."""
    leaf = case.key.lstrip("-")
    return any(n and n in message for n in (case.key, leaf, *case.names))


def run_subprocess(case: Case, work: Path, timeout_s: float = 120) -> Dict[str, Any]:
    """The case as the user would type it, watched for loads; exit status, seconds, traceback, loads."""
    cmd = _command(case, work)
    env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{work / 'mlflow.db'}", "PYTHONPATH": str(ROOT),
           "FTRUN_BENCH_LOAD_WATCH": "1"}
    start = time.perf_counter()
    try:
        proc = subprocess.run(cmd, cwd=work, env=env, capture_output=True, text=True, timeout=timeout_s,
                              stdin=subprocess.DEVNULL)
        status, text = proc.returncode, proc.stdout + proc.stderr
    except subprocess.TimeoutExpired as e:  # a board that started serving, a run that went on
        status = "still running"
        text = (e.stdout or b"").decode(errors="replace") + (e.stderr or b"").decode(errors="replace")
    seconds = round(time.perf_counter() - start, 2)
    loads = sorted({ln.split(":", 1)[1].strip() for ln in text.splitlines() if ln.startswith("BAD-INPUT-LOAD:")})
    message = "\n".join(ln for ln in text.splitlines() if not ln.startswith("BAD-INPUT-LOAD:"))
    return {"status": status, "seconds": seconds, "traceback": "Traceback (most recent call last)" in text,
            "loaded": loads, "names_key": names_key(case, message), "message": message.strip()[-600:]}


def _command(case: Case, work: Path) -> List[str]:
    watch = [sys.executable, str(ROOT / "bench" / "_load_watch.py")]
    if case.entry == "run":
        return [*watch, "-m", "ftrun", *case.args, f"output_root={work / 'outputs'}"]  # MLflow on: nothing RUNNING
    if case.entry == "sweep":
        return [*watch, "-m", "ftrun", "-m", *case.args, f"output_root={work / 'outputs'}"]
    if case.entry in ("estimate", "data_stats"):
        return [*watch, "-m", f"ftrun.{case.entry}", *case.args, *(QUIET if case.entry == "data_stats" else [])]
    if case.entry == "board":
        port = [] if any(a.startswith("--port") for a in case.args) else ["--port=7999"]
        return [*watch, "-m", "ftrun.board", *case.args, *port]
    return [*watch, "-m", f"ftrun.{case.entry}", *case.args]


def leftovers(work: Path) -> Dict[str, Any]:
    """What the refused cases left in ``work``: run directories, MLflow runs still RUNNING, studies and
    their trials that are not finished."""
    runs = [str(p.relative_to(work)) for p in (work / "outputs").glob("*/*") if p.is_dir()
            and p.parent.name != "sweeps"] if (work / "outputs").is_dir() else []
    studies = [str(p.relative_to(work)) for p in work.rglob("study.db")]
    out: Dict[str, Any] = {"run_dirs": runs, "studies": studies, "mlflow_running": 0, "orphan_trials": 0}
    if (work / "mlflow.db").is_file():
        from mlflow.tracking import MlflowClient

        client = MlflowClient(f"sqlite:///{work / 'mlflow.db'}")
        exps = [e.experiment_id for e in client.search_experiments()]
        out["mlflow_running"] = len(client.search_runs(exps, "attributes.status = 'RUNNING'")) if exps else 0
    for db in studies:
        import optuna

        storage = f"sqlite:///{work / db}"
        for summary in optuna.get_all_study_summaries(storage):
            study = optuna.load_study(study_name=summary.study_name, storage=storage)
            out["orphan_trials"] += sum(t.state.name == "RUNNING" for t in study.trials)
    return out


# ---------------------------------------------------------------------------
# the suite


def issue_cases(paths: Dict[str, str]) -> List[Case]:
    """Issue 27's three, as it gives them: a model folder without config.json, a reversed interval in a
    sweep, ``hydra.sweeper.n_trials=-1``."""
    return [Case("run", "model.path", "not a model", [f"model.path={paths['tokenizer_only']}"]),
            Case("sweep", "lr", "reversed interval", ["lr=interval(1e-2,1e-4)"]),
            Case("sweep", "hydra.sweeper.n_trials", "negative count",
                 ["hydra.sweeper.n_trials=-1", "lr=tag(log,interval(1e-4,1e-2))"])]


# the kinds a sample tries first: those an entry point must refuse while it reads its arguments
SAMPLE_ORDER = ("unknown key", "wrong type", "unknown choice", "out of range", "negative count", "empty string",
                "not a model", "nonexistent path", "file for a directory", "directory for a file")


def cli_sample(cases: Sequence[Case], per_entry: int, order: Sequence[str] = ()) -> List[Case]:
    """Up to ``per_entry`` cases of each entry point, one per kind of mistake first (in ``order``, then as
    they come)."""
    picked: List[Case] = []
    rank = {kind: i for i, kind in enumerate(order)}
    for entry in dict.fromkeys(c.entry for c in cases):
        mine = sorted((c for c in cases if c.entry == entry), key=lambda c: rank.get(c.kind, len(rank)))
        by_kind = list({c.kind: c for c in reversed(mine)}.values())[::-1]
        rest = [c for c in mine if c not in by_kind]
        picked += (by_kind + rest)[:per_entry]
    return picked


def refused(row: Dict[str, Any]) -> bool:
    """A case ends well: exit 2, one message naming the key, no traceback, nothing loaded first."""
    return row["status"] == 2 and row["names_key"] and not row.get("traceback") and not row.get("loaded")


def main(argv: Optional[Sequence[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cli-sample", type=int, default=4, help="subprocess cases per entry point (0: none)")
    ap.add_argument("--out", default=str(ROOT / "bench" / "results"), help="folder for bad_inputs.{json,md}")
    args = ap.parse_args(argv)
    import logging

    logging.disable(logging.WARNING)  # the sampler's and compose's chatter; the messages are the results
    with tempfile.TemporaryDirectory(prefix="bad_inputs_") as tmp:
        work = Path(tmp)
        paths = make_paths(work / "paths")
        cases = all_cases(paths)
        rows = []
        for case in cases:
            if case.entry in ("run", "sweep"):
                rows.append({**dataclasses.asdict(case), "where": "in process", **check_in_process(case)})
        for case in (issue_cases(paths) + cli_sample(cases, args.cli_sample) if args.cli_sample else []):
            timeout = 45 if case.entry == "board" else 240  # a board that accepted its options serves on
            rows.append({**dataclasses.asdict(case), "where": "subprocess", **run_subprocess(case, work, timeout)})
            print(f"{case.entry:10s} {case.key:32s} {case.kind:22s} -> {rows[-1]['status']} "
                  f"({rows[-1]['seconds']} s){' LOADED ' + ','.join(rows[-1]['loaded']) if rows[-1]['loaded'] else ''}",
                  flush=True)
        left = leftovers(work)
    for row in rows:
        row["args"] = [a.replace(tmp, "<tmp>") for a in row["args"]]
        row["message"] = row["message"].replace(tmp, "<tmp>")
        row["ok"] = refused(row)
    write_results(rows, left, Path(args.out))
    bad = [r for r in rows if not r["ok"]]
    print(f"{len(rows) - len(bad)}/{len(rows)} cases end in one message with exit 2; left behind: {left}")
    return 0 if not bad and not any(left.values()) else 1


def write_results(rows: List[Dict[str, Any]], left: Dict[str, Any], out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "bad_inputs.json").write_text(json.dumps({"machine": machine(), "left_behind": left, "cases": rows},
                                                    indent=1) + "\n")
    (out / "bad_inputs.md").write_text(markdown(rows, left) + "\n")


def markdown(rows: List[Dict[str, Any]], left: Dict[str, Any]) -> str:
    from ftrun.config import Config
    from sweeper.config import FtrunSweeperConf

    keys = {k for k, *_ in schema_keys(Config)}
    settings = {f"hydra.sweeper.{k}" for k, *_ in schema_keys(FtrunSweeperConf)}
    covered = {r["key"] for r in rows}
    sub = [r for r in rows if r["where"] == "subprocess"]
    lines = [f"# Bad inputs: `python bench/bad_inputs.py`", "", f"Machine: {machine()}", "",
             f"{len(rows)} cases from the schema walk: {len(keys & covered)} of {len(keys)} run keys and "
             f"{len(settings & covered)} of {len(settings)} `hydra.sweeper` settings have cases, and "
             f"{len(covered - keys - settings)} keys of the other entry points. Every case is checked in process; "
             "a sample of each entry point also runs as a subprocess (run and sweep with MLflow on). A case ends "
             "well when it exits 2 with one message naming its key, prints no traceback and loads no model, "
             "tokenizer or dataset first.", "",
             "## Per entry point", "", "| entry point | where | cases | exit 2, key named | traceback | loaded first "
             "| median s to the message |", "|---|---|---|---|---|---|---|"]
    for (entry, where), group in _groups(rows, ("entry", "where")).items():
        secs = sorted(r["seconds"] for r in group)
        lines.append(f"| {entry} | {where} | {len(group)} | {sum(refused(r) for r in group)} | "
                     f"{sum(bool(r.get('traceback')) for r in group)} | {sum(bool(r.get('loaded')) for r in group)} | "
                     f"{secs[len(secs) // 2]:.2f} |")
    lines += ["", "## Per kind of mistake", "", "| kind | cases | exit 2, key named |", "|---|---|---|"]
    for (kind,), group in sorted(_groups(rows, ("kind",)).items()):
        lines.append(f"| {kind} | {len(group)} | {sum(refused(r) for r in group)} |")
    lines += ["", "## Left behind", "", f"- run directories: {len(left['run_dirs'])}",
              f"- MLflow runs left RUNNING: {left['mlflow_running']}", f"- studies opened: {len(left['studies'])}, "
              f"trials left RUNNING: {left['orphan_trials']}", "", "## Issue 27's three cases (subprocess)", ""]
    for r in sub[:3]:
        last = r["message"].strip().splitlines()[-1].strip() if r["message"].strip() else ""
        lines.append(f"- `{' '.join(r['args'])}`: exit {r['status']}, traceback {r['traceback']}, "
                     f"{r['seconds']} s: `{last}`")
    failed = [r for r in rows if not refused(r)]
    lines += ["", f"## Cases that do not end well ({len(failed)})", ""]
    lines += [f"- {r['entry']} ({r['where']}) `{' '.join(r['args'])}`: exit {r['status']}, traceback "
              f"{r.get('traceback', False)}, loaded {r.get('loaded') or 'nothing'}, key named {r['names_key']}"
              for r in failed] or ["none"]
    return "\n".join(lines)


def _groups(rows, keys) -> Dict[tuple, list]:
    out: Dict[tuple, list] = {}
    for r in rows:
        out.setdefault(tuple(r[k] for k in keys), []).append(r)
    return out


def machine() -> str:
    from ftrun.estimate.baseline import cpu_model

    cpu = cpu_model()
    return (f"{platform.node()}: {cpu or platform.processor()}, {os.cpu_count()} CPU cores (shared with other jobs), "
            f"Python {platform.python_version()}")


if __name__ == "__main__":
    sys.exit(main())
