"""The search space: Hydra-Optuna-sweeper override syntax -> Optuna distributions.

A parameter is written the way Hydra's Optuna sweeper reads it, in
``hydra.sweeper.params`` or on the command line::

    lr=tag(log,interval(1e-5,1e-1))   FloatDistribution(1e-5, 1e-1, log=True)
    lr=interval(1e-5,1e-3)            FloatDistribution(1e-5, 1e-3)
    rank=int(interval(4,64))          IntDistribution(4, 64)
    rank=tag(log,int(interval(4,64))) IntDistribution(4, 64, log=True)
    warmup=tag(int,interval(0,50))    IntDistribution(0, 50)  (the ``int`` tag casts)
    rank=choice(8,16,32) / rank=8,16  CategoricalDistribution([8, 16, 32])
    epochs=range(1,4)                 IntDistribution(1, 3): Hydra's range, stop excluded
    x=range(0.1,0.5,0.1)              FloatDistribution(0.1, 0.4, step=0.1)
    x=shuffle(range(1,4))             CategoricalDistribution([1, 2, 3])

``range(start, stop, step)`` keeps Hydra's (and Python's) meaning, stop
excluded, under every sampler, and a grid enumerates exactly the values the
other samplers can draw. (Hydra's Optuna plugin turns ``range(1,5)`` into
``IntDistribution(1, 5)``, so TPE may draw 5 while its grid stops at 4, and its
grid also drops the upper bound of an int interval.) The old dictionary form of
that plugin (``{type: float, low: .., high: .., log: true}``) is accepted too.

Anything that is not a sweep (``method=qlora``, ``data.num_train=64``) is a
fixed override passed to every trial.

Conditions make a parameter apply only when others have given values::

    conditions:
      rank: {method: [lora, qlora]}     # sampled only for the LoRA family
      method.bits: {method: qlora}

A parameter whose condition does not hold is not sampled and not passed, so the
trial runs with the config's own value.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

from optuna.distributions import (
    BaseDistribution,
    CategoricalDistribution,
    FloatDistribution,
    IntDistribution,
)

class SearchSpaceError(ValueError):
    """A search-space entry that cannot be turned into a distribution; says which one."""


@dataclass
class SearchSpace:
    """Distributions (in sampling order), fixed overrides and conditions."""

    distributions: Dict[str, BaseDistribution] = field(default_factory=dict)
    fixed: Dict[str, str] = field(default_factory=dict)
    conditions: Dict[str, Dict[str, List[Any]]] = field(default_factory=dict)

    def active(self, name: str, values: Mapping[str, Any]) -> bool:
        """Whether ``name`` applies, given the values chosen so far (sampled or fixed)."""
        for parent, allowed in self.conditions.get(name, {}).items():
            if parent not in values or values[parent] not in allowed:
                return False
        return True

    def order(self) -> List[str]:
        """Parameter names with every condition's parent before its child."""
        done: List[str] = []

        def visit(name: str, stack: Tuple[str, ...]) -> None:
            if name in done:
                return
            if name in stack:
                raise SearchSpaceError(f"conditions: circular condition through {' -> '.join(stack + (name,))}")
            for parent in self.conditions.get(name, {}):
                if parent in self.distributions:
                    visit(parent, stack + (name,))
            done.append(name)

        for name in self.distributions:
            visit(name, ())
        return done

    def sample(self, trial, base: Mapping[str, Any]) -> Dict[str, Any]:
        """Suggest every active parameter on an Optuna trial; ``base`` gives the
        values of condition parents that are not searched (fixed or config defaults)."""
        values: Dict[str, Any] = dict(base)
        values.update({k: _parse_scalar(v) for k, v in self.fixed.items()})
        chosen: Dict[str, Any] = {}
        for name in self.order():
            if not self.active(name, values):
                continue
            value = suggest(trial, name, self.distributions[name])
            values[name] = chosen[name] = value
        return chosen

    def grid(self) -> Dict[str, List[Any]]:
        """Every value of every parameter, for optuna's GridSampler."""
        return {name: grid_values(name, d) for name, d in self.distributions.items()}

    def finite(self) -> bool:
        """Whether the space has a finite number of configurations (no continuous interval)."""
        return all(not isinstance(d, FloatDistribution) or d.step is not None for d in self.distributions.values())

    def grid_size(self) -> int:
        """Number of distinct active combinations (conditional params counted only where active)."""
        return len(self.grid_points())

    def grid_points(self) -> List[Dict[str, Any]]:
        points: List[Dict[str, Any]] = [{}]
        for name in self.order():
            values = grid_values(name, self.distributions[name])
            nxt = []
            for p in points:
                ctx = {**{k: _parse_scalar(v) for k, v in self.fixed.items()}, **p}
                if self.active(name, ctx):
                    nxt.extend({**p, name: v} for v in values)
                else:
                    nxt.append(p)
            points = nxt
        return points

    def describe(self) -> Dict[str, str]:
        """Human-readable space, for logs and the MLflow parent run."""
        out = {name: describe(d) for name, d in self.distributions.items()}
        for name, cond in self.conditions.items():
            if name in out:
                out[name] += " if " + " and ".join(f"{p} in {list(v)}" for p, v in cond.items())
        return out


# ---------------------------------------------------------------------------
# parsing


def sweep_space(conf: Mapping[str, Any], arguments: Sequence[str] = (),
                prior: Optional[Mapping[str, Any]] = None) -> SearchSpace:
    """The sweep's space from ``hydra.sweeper`` (``conf``) and the command line: ``search_space`` (the
    old dict form), then ``prior`` (sweep=auto's priors), then ``params``, then ``arguments``; a
    later source wins for a name. The one place the sweeper and its Hydra plugin read a space from."""
    if conf.get("custom_search_space"):
        raise SearchSpaceError("hydra.sweeper.custom_search_space: not supported by the ftrun sweeper; "
                               "express dependent parameters with hydra.sweeper.conditions")
    params = dict(conf.get("search_space") or {})
    params.update(prior or {})
    params.update(conf.get("params") or {})
    return parse_search_space(params, arguments, conf.get("conditions"))


def parse_search_space(params: Optional[Mapping[str, Any]] = None, arguments: Sequence[str] = (),
                       conditions: Optional[Mapping[str, Any]] = None) -> SearchSpace:
    """``hydra.sweeper.params`` plus the command-line overrides -> :class:`SearchSpace`.

    A command-line override of a name also in ``params`` wins (sweep or fixed).
    """
    from hydra.core.override_parser.overrides_parser import OverridesParser

    parser = OverridesParser.create()
    space = SearchSpace()
    items: List[Tuple[str, Any]] = list((params or {}).items())
    for arg in arguments:
        items.append((None, arg))
    for key, value in items:
        if key is not None and isinstance(value, Mapping):  # the plugin's old dict form
            space.fixed.pop(str(key), None)
            space.distributions[str(key)] = from_dict(str(key), value)
            continue
        text = f"{key}={_as_override_value(value)}" if key is not None else str(value)
        try:
            override = parser.parse_override(text)
        except Exception as e:  # hydra's OverrideParseException and friends
            raise SearchSpaceError(f"{text}: cannot parse ({e})") from None
        name = override.get_key_element()
        if override.is_sweep_override():
            space.fixed.pop(name, None)
            space.distributions[name] = from_override(text, override)
        else:
            space.distributions.pop(name, None)
            space.fixed[name] = override.get_value_element_as_str()
    for name, cond in (conditions or {}).items():
        if name not in space.distributions:
            raise SearchSpaceError(f"conditions.{name}: no such search parameter "
                                   f"(have: {', '.join(space.distributions) or 'none'})")
        if not isinstance(cond, Mapping):
            raise SearchSpaceError(f"conditions.{name}: give a mapping like {{method: [lora, qlora]}}")
        space.conditions[name] = {
            str(parent): [_parse_scalar(v) for v in (allowed if isinstance(allowed, (list, tuple)) or
                                                      _is_listconfig(allowed) else [allowed])]
            for parent, allowed in cond.items()
        }
    space.order()  # raises on cycles
    return space


def from_override(text: str, override) -> BaseDistribution:
    from hydra.core.override_parser.types import ChoiceSweep, IntervalSweep, RangeSweep, Transformer

    value = override.value()
    if isinstance(value, ChoiceSweep) or (isinstance(value, RangeSweep) and value.shuffle):
        choices = list(override.sweep_iterator(transformer=Transformer.encode))
        for c in choices:
            if not isinstance(c, (str, int, float, bool, type(None))):
                raise SearchSpaceError(f"{text}: choices must be str, int, float, bool or null, not {c!r}")
        choices = [_parse_scalar(c) if isinstance(c, str) else c for c in choices]
        if getattr(value, "shuffle", False) and all(isinstance(c, (int, float)) for c in choices):
            choices = sorted(choices)  # the order of a shuffle means nothing to a sampler; keep it stable
        return CategoricalDistribution(choices)
    if isinstance(value, RangeSweep):
        start, stop, step = value.start, value.stop, value.step
        if step == 0 or (stop - start) * step <= 0:
            raise SearchSpaceError(f"{text}: the range is empty")
        if step < 0:
            raise SearchSpaceError(f"{text}: use a positive step")
        if all(isinstance(v, int) for v in (start, stop, step)):
            n = len(range(start, stop, step))
            return IntDistribution(start, start + (n - 1) * step, step=step)
        n = math.ceil((stop - start) / step - 1e-9)
        last = _round(start + (n - 1) * step)
        if n == 1:
            return CategoricalDistribution([float(start)])
        return FloatDistribution(float(start), last, step=float(step))
    if isinstance(value, IntervalSweep):
        tags = set(value.tags)
        log = "log" in tags
        start, end = value.start, value.end
        if end <= start:
            raise SearchSpaceError(f"{text}: interval needs start < end")
        if log and start <= 0:
            raise SearchSpaceError(f"{text}: a log interval needs start > 0")
        if "int" in tags or (isinstance(start, int) and isinstance(end, int)):
            if int(start) != start or int(end) != end:
                raise SearchSpaceError(f"{text}: an int interval needs whole-number bounds")
            return IntDistribution(int(start), int(end), log=log)
        return FloatDistribution(float(start), float(end), log=log)
    raise SearchSpaceError(f"{text}: unsupported sweep (use interval, choice, range, tag(log, ...), int(...))")


def from_dict(name: str, d: Mapping[str, Any]) -> BaseDistribution:
    """The Hydra Optuna plugin's deprecated ``search_space`` entry: {type, low, high, step, log, choices}."""
    kind = str(d.get("type", "")).split(".")[-1]
    if kind == "categorical":
        return CategoricalDistribution(list(d["choices"]))
    if kind in ("int", "float"):
        try:
            low, high = d["low"], d["high"]
        except KeyError as e:
            raise SearchSpaceError(f"{name}: {kind} distribution needs low and high (missing {e})") from None
        log, step = bool(d.get("log", False)), d.get("step")
        if kind == "int":
            return IntDistribution(int(low), int(high), log=log, step=int(step or 1))
        return FloatDistribution(float(low), float(high), log=log, step=float(step) if step else None)
    raise SearchSpaceError(f"{name}: type must be categorical, int or float, not {d.get('type')!r}")


def grid_values(name: str, d: BaseDistribution) -> List[Any]:
    """All values of a discrete distribution, upper bound included."""
    if isinstance(d, CategoricalDistribution):
        return list(d.choices)
    if isinstance(d, IntDistribution) and not d.log:
        return list(range(d.low, d.high + 1, d.step))
    if isinstance(d, FloatDistribution) and d.step is not None:
        n = int(round((d.high - d.low) / d.step)) + 1
        return [_round(d.low + i * d.step) for i in range(n)]
    if isinstance(d, IntDistribution):  # log int: every integer
        return list(range(d.low, d.high + 1))
    raise SearchSpaceError(f"{name}: the grid sampler needs discrete values (choice, range or an int "
                           f"interval), not {describe(d)}")


def suggest(trial, name: str, d: BaseDistribution) -> Any:
    if isinstance(d, CategoricalDistribution):
        return trial.suggest_categorical(name, list(d.choices))
    if isinstance(d, IntDistribution):
        return trial.suggest_int(name, d.low, d.high, step=d.step, log=d.log)
    if isinstance(d, FloatDistribution):
        return trial.suggest_float(name, d.low, d.high, step=d.step, log=d.log)
    raise SearchSpaceError(f"{name}: unsupported distribution {d!r}")


def describe(d: BaseDistribution) -> str:
    if isinstance(d, CategoricalDistribution):
        return f"choice({', '.join(map(str, d.choices))})"
    kind = "int" if isinstance(d, IntDistribution) else "float"
    extra = ", log" if d.log else (f", step={d.step}" if d.step not in (None, 1) else "")
    return f"{kind}[{d.low}, {d.high}{extra}]"


def to_override(name: str, value: Any) -> str:
    """A sampled value as a Hydra command-line override."""
    if isinstance(value, bool):
        return f"{name}={'true' if value else 'false'}"
    if value is None:
        return f"{name}=null"
    if isinstance(value, float):
        return f"{name}={value!r}"
    return f"{name}={value}"


# ---------------------------------------------------------------------------


def _as_override_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "null"
    if isinstance(value, (list, tuple)) or _is_listconfig(value):
        return ",".join(_as_override_value(v) for v in value)  # a list is a choice, like the plugin
    return str(value)


def _is_listconfig(value: Any) -> bool:
    from omegaconf import ListConfig

    return isinstance(value, ListConfig)


def _parse_scalar(value: Any) -> Any:
    """'16' -> 16, '1e-4' -> 0.0001, 'true' -> True; other strings unchanged."""
    if not isinstance(value, str):
        return value
    low = value.strip().lower()
    if low in ("true", "false"):
        return low == "true"
    if low in ("null", "none"):
        return None
    for cast in (int, float):
        try:
            return cast(value)
        except ValueError:
            pass
    return value


def _round(x: float) -> float:
    return float(f"{x:.12g}")
