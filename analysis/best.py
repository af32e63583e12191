"""``python -m analysis best --study NAME``: the best trial as a config ``python -m ftrun`` reruns exactly.

The override list starts from the trial's MLflow ``overrides`` tag (what the
trial was launched with), or from the trial's Optuna params when there is no
run. It is then checked against the truth: the whole resolved config the trial
recorded as MLflow params. The config those overrides compose from ``ftrun/conf/`` is
compared key by key, and any key that differs (ftrun/conf/ changed since, a fixed
sweep override missing from the tag) gets an explicit override. What is left
different is printed.

By default the result is written as ``ftrun/conf/experiment/<name>.yaml`` (a global
package with ``override /group: option`` defaults), so the rerun is
``python -m ftrun +experiment=<name>``; ``--print`` prints the override list only.
"""

from __future__ import annotations

import ast
import re
import shlex
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

from analysis import store

from ftrun.compose import conf_dir as _shipped_conf
from ftrun.config import ALIASES, canonical_overrides
from ftrun.contract import ATTR_OVERRIDES, TAG_OVERRIDES

CONF_DIR = _shipped_conf()
_BARE = re.compile(r"^[A-Za-z_/.][\w./:\-]*$")
_RESERVED = {"true", "false", "null", "none", "yes", "no", "on", "off", "nan", "inf"}


# ---------------------------------------------------------------------------
# picking the trial


def best_trial(study, objective: int = 0):
    """The best complete trial; with several objectives, the Pareto trial best on ``objective``."""
    import optuna

    if len(study.directions) == 1:
        return study.best_trial
    front = study.best_trials
    if not front:
        raise LookupError(f"study '{study.study_name}' has no complete trials")
    sign = -1 if study.directions[objective] == optuna.study.StudyDirection.MAXIMIZE else 1
    return min(front, key=lambda t: sign * t.values[objective])


# ---------------------------------------------------------------------------
# overrides


def split_overrides(text: str) -> List[str]:
    """Split a space-joined override list, keeping quoted strings and brackets whole."""
    out, cur, quote, depth = [], [], None, 0
    for ch in text:
        if quote:
            cur.append(ch)
            if ch == quote:
                quote = None
        elif ch in "'\"":
            quote = ch
            cur.append(ch)
        elif ch in "[{(":
            depth += 1
            cur.append(ch)
        elif ch in "]})":
            depth -= 1
            cur.append(ch)
        elif ch.isspace() and depth == 0:
            if cur:
                out.append("".join(cur))
                cur = []
        else:
            cur.append(ch)
    if cur:
        out.append("".join(cur))
    return out


def hydra_value(value) -> str:
    """A Python value as Hydra override syntax."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(hydra_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ",".join(f"{k}:{hydra_value(v)}" for k, v in value.items()) + "}"
    s = str(value)
    if _BARE.match(s) and s.lower() not in _RESERVED:
        return s
    return "'" + s.replace("\\", "\\\\").replace("'", "\\'") + "'"


def param_value(text: str):
    """An MLflow param (``str(value)`` of the resolved config) back to the Python value."""
    if text == "None":
        return None
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text


def override_key(override: str) -> str:
    return override.split("=", 1)[0].lstrip("+~")


def compose(overrides: Sequence[str], conf_dir: Path = CONF_DIR) -> Dict[str, str]:
    """The flattened resolved config (as MLflow params are written) that ``overrides`` compose."""
    from ftrun.compose import compose as ftrun_compose
    from ftrun.config import flatten, to_container

    cfg = ftrun_compose(overrides, config_dir=None if Path(conf_dir) == CONF_DIR else conf_dir)
    return {k: _param(v) for k, v in flatten(to_container(cfg)).items()}


def _param(value) -> str:
    # as ftrun.tracking writes params (kept here so composing does not import transformers)
    s = str(value)
    return s if len(s) <= 6000 else s[:5997] + "..."


def group_option(conf_dir: Path, key: str, value: str) -> Optional[str]:
    """For ``<group>.name`` = value, the option file in ftrun/conf/<group>/ that sets that name."""
    group, _, leaf = key.rpartition(".")
    folder = Path(conf_dir) / group.replace(".", "/")
    if leaf != "name" or not folder.is_dir():
        return None
    if (folder / f"{value}.yaml").is_file():
        return value
    for f in sorted(folder.glob("*.yaml")):
        if re.search(rf"^name:\s*['\"]?{re.escape(value)}['\"]?\s*$", f.read_text(), re.M):
            return f.stem
    return None


def differences(composed: Dict[str, str], recorded: Dict[str, str],
                ignore: Sequence[str] = store.VOLATILE_PARAMS) -> Dict[str, Tuple[Optional[str], Optional[str]]]:
    """{key: (composed, recorded)} for every recorded key the composition does not reproduce.

    A run recorded before each knob had one home also has its short copies (``lr``
    beside ``optimizer.lr``); those are compared at their home only.
    """
    return {k: (composed.get(k), v) for k, v in recorded.items()
            if k not in ignore and not (k in ALIASES and ALIASES[k] in recorded) and composed.get(k) != v}


def exact_overrides(start: Sequence[str], recorded: Dict[str, str], conf_dir: Path = CONF_DIR,
                    rounds: int = 4) -> Tuple[List[str], Dict[str, Tuple]]:
    """``start`` plus the overrides that make the composition match ``recorded``; and what still differs.

    Each round fixes the shallowest differing keys first (``lr`` before
    ``optimizer.lr``, a group's option before its fields) and composes again, so
    interpolations keep working and groups are switched as groups.
    """
    ignore = {*store.VOLATILE_PARAMS}
    overrides = canonical_overrides([o for o in start if override_key(o) not in ignore])
    diff = differences(compose(overrides, conf_dir), recorded) if recorded else {}
    for _ in range(rounds):
        if not diff:
            break
        depth = min(k.count(".") for k in diff)
        groups = {k: group_option(conf_dir, k, recorded[k]) for k in diff if k.endswith(".name")}
        fixes = {}
        for key, option in groups.items():
            if option:
                fixes[key.rpartition(".")[0]] = option
        if not fixes:
            for key in diff:
                if key.count(".") == depth:
                    prefix = "+" if diff[key][0] is None else ""
                    fixes[prefix + key] = hydra_value(param_value(recorded[key]))
        fixed_keys = {override_key(k) for k in fixes}
        overrides = [o for o in overrides if override_key(o) not in fixed_keys]
        overrides += [f"{k}={v}" for k, v in fixes.items()]
        diff = differences(compose(overrides, conf_dir), recorded)
    return overrides, diff


def experiment_yaml(overrides: Sequence[str], conf_dir: Path = CONF_DIR, header: str = "") -> str:
    """The overrides as a global-package experiment config: group choices as defaults, the rest as values."""
    import yaml
    from hydra.core.override_parser.overrides_parser import OverridesParser

    parser = OverridesParser.create()
    defaults, values = [], {}
    for ov in parser.parse_overrides(list(overrides)):
        key, value = ov.key_or_group, ov.value()
        if ov.is_delete():
            raise ValueError(f"cannot write a deletion ({ov.input_line}) as a config value")
        if "." not in key and (Path(conf_dir) / key).is_dir() and isinstance(value, str):
            defaults.append({f"override /{key}": value})
            continue
        node = values
        *path, leaf = key.split(".")
        for part in path:
            node = node.setdefault(part, {})
        node[leaf] = value
    body = {"defaults": [*defaults, "_self_"], **values}
    return "# @package _global_\n" + header + yaml.safe_dump(body, sort_keys=False, default_flow_style=False)


# ---------------------------------------------------------------------------
# the command


def resolve(study, c=None, objective: int = 0, conf_dir: Path = CONF_DIR):
    """(trial, its run or None, exact override list, remaining differences)."""
    trial = best_trial(study, objective)
    rec = store.trial_runs(c, study).get(trial.number) if c is not None else None
    if rec is not None and rec.tags.get(TAG_OVERRIDES) is not None:
        start = split_overrides(rec.tags[TAG_OVERRIDES])
    elif trial.user_attrs.get(ATTR_OVERRIDES):  # the sweeper keeps the trial's overrides here
        start = [str(o) for o in trial.user_attrs[ATTR_OVERRIDES]]
    else:
        start = [f"{k}={hydra_value(v)}" for k, v in trial.params.items()]
    recorded = rec.params if rec is not None else {}
    try:
        overrides, diff = exact_overrides(start, recorded, conf_dir)
    except Exception:  # the tag holds something ftrun/conf/ no longer accepts: rebuild from the record
        overrides, diff = exact_overrides([f"{k}={hydra_value(v)}" for k, v in trial.params.items()],
                                          recorded, conf_dir)
    return trial, rec, overrides, diff


def main(args) -> int:
    c = store.client(args.tracking_uri)
    study = store.load_study(args.study, args.storage, c=c)
    conf_dir = Path(args.conf_dir) if args.conf_dir else CONF_DIR
    trial, rec, overrides, diff = resolve(study, c, args.objective, conf_dir)
    values = ", ".join(f"{v:.6g}" for v in trial.values)
    print(f"best trial {trial.number} of study '{study.study_name}': {values}"
          + (f" (MLflow run {rec.run_id})" if rec else " (no MLflow run found: from the trial's params)"))
    if rec is None:
        print("warning: without the run's recorded config the fixed (non-searched) overrides of the sweep are unknown")
    if diff:
        print("warning: these recorded values are not reproduced by ftrun/conf/ as it is now:")
        for k, (now, then) in sorted(diff.items()):
            print(f"  {k}: recorded {then}, composes to {now}")
    elif rec is not None:
        print(f"checked: the overrides compose to the recorded config ({len(rec.params)} params)")
    command = "python -m ftrun " + " ".join(shlex.quote(o) for o in overrides)
    if args.print:
        print(command)
        return 0
    name = args.name or "best_" + re.sub(r"[^\w\-]+", "_", study.study_name)
    path = conf_dir / "experiment" / f"{name}.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    header = (f"# best trial {trial.number} of study '{study.study_name}' ({values})\n"
              f"# rerun: python -m ftrun +experiment={name}\n# same as: {command}\n")
    path.write_text(experiment_yaml(overrides, conf_dir, header))
    check = differences(compose([f"+experiment={name}"], conf_dir), rec.params) if rec is not None else {}
    print(f"wrote {path}")
    if check:
        print("warning: the experiment file composes differently from the recorded config in: "
              + ", ".join(sorted(check)))
    print(f"rerun: python -m ftrun +experiment={name}")
    print(f"   or: {command}")
    return 0
