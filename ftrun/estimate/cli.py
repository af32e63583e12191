"""``python -m ftrun.estimate``: the command line (the run's overrides plus ``estimate.KEY=VALUE``)."""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path
from typing import List, Sequence, Tuple

from ftrun.config import ConfigError
from ftrun.estimate.baseline import cache_file
from ftrun.estimate.breakdown import gib
from ftrun.estimate.process import estimate, fits

ESTIMATE_KEYS = {"devices": int, "sharding": str, "device": str, "limit": str, "measure": bool, "steps": int,
                 "json": str, "refresh_baseline": bool}


def parse_size(text: str) -> float:
    """``24GiB``, ``80GB``, ``512MiB`` or a number of bytes -> bytes."""
    m = re.fullmatch(r"\s*([0-9.]+)\s*([kKmMgGtT]i?[bB]?|[bB])?\s*", str(text))
    if not m:
        raise ConfigError(f"estimate.limit={text}: give a size like 24GiB, 80GB or 512MiB")
    unit = (m.group(2) or "b").lower().rstrip("b")
    scale = {"": 1, "k": 1e3, "ki": 2**10, "m": 1e6, "mi": 2**20, "g": 1e9, "gi": 2**30, "t": 1e12, "ti": 2**40}
    return float(m.group(1)) * scale[unit]


def split_args(argv: Sequence[str]) -> Tuple[dict, List[str]]:
    """``estimate.KEY=VALUE`` arguments for the estimate; the rest are the run's overrides."""
    own, run = {}, []
    for a in argv:
        if a.startswith("estimate."):
            key, _, value = a[len("estimate."):].partition("=")
            if key not in ESTIMATE_KEYS:
                raise ConfigError(f"{a}: unknown key; estimate takes {', '.join('estimate.' + k for k in ESTIMATE_KEYS)}")
            kind = ESTIMATE_KEYS[key]
            if kind is bool:
                own[key] = value.lower() in ("1", "true", "yes")
            elif kind is int:
                try:
                    own[key] = int(value)
                except ValueError:
                    raise ConfigError(f"{a}: estimate.{key} must be a whole number") from None
            else:
                own[key] = value
        else:
            run.append(a)
    return own, run


def compose(overrides: Sequence[str]):
    """The run config that ``ftrun <overrides>`` would train, validated (:func:`ftrun.compose.compose`)."""
    from ftrun.compose import compose as compose_run
    from ftrun.config import resolved, validate

    cfg = compose_run(list(overrides))
    validate(cfg)
    return resolved(cfg)


def main(argv=None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    if any(a in ("-h", "--help") for a in argv):
        import ftrun.estimate

        print(ftrun.estimate.__doc__.strip())
        return
    own, overrides = split_args(argv)
    cfg = compose(overrides)
    if own.get("refresh_baseline"):
        cache_file(str(cfg.method.name), bool(cfg.tracking.enabled)).unlink(missing_ok=True)
    est = estimate(cfg, devices=own.get("devices", 1), sharding=own.get("sharding", "none"),
                   device=own.get("device"))
    print(est.table())
    out = {"estimate": est.as_dict(), "overrides": overrides}
    if "limit" in own:
        ok, reason = fits(cfg, parse_size(own["limit"]), devices=est.devices, sharding=est.sharding,
                          device=est.device)
        print(reason)
        out["fits"] = {"ok": ok, "reason": reason}
    if own.get("measure"):
        from ftrun.estimate.measured_peak import measure

        got = measure(cfg, steps=own.get("steps", 2))
        err = est.tensor_peak / got["tensor_peak"] - 1
        print(f"measured on cpu over {got['steps']} steps: tensor peak {gib(got['tensor_peak'])} "
              f"(estimate {err:+.1%}), resident-memory rise {gib(got['rss_peak_delta'])} "
              f"(the process's peak of a real run: bench/memory_estimate.py --process)")
        out["measured"] = got
        out["error"] = err
    if own.get("json"):
        Path(own["json"]).write_text(json.dumps(out, indent=2))

