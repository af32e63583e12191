"""The config as plain data: resolved once, as a dict, flattened to dotted keys."""

from __future__ import annotations

from omegaconf import DictConfig, OmegaConf


def resolved(cfg: DictConfig) -> DictConfig:
    """The config with every interpolation resolved once and choices as plain strings.

    A run works on this: its name and objective cannot change under it, and no
    Enum reaches the libraries it calls.
    """
    return OmegaConf.create(to_container(cfg))


def to_container(cfg: DictConfig) -> dict:
    """The resolved config as plain Python, without Hydra's own node."""
    data = OmegaConf.to_container(cfg, resolve=True, throw_on_missing=False, enum_to_str=True)
    data.pop("hydra", None)
    return data


def flatten(data: dict, prefix: str = "") -> dict:
    """``{"method": {"rank": 16}}`` -> ``{"method.rank": 16}``."""
    out = {}
    for key, value in data.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            out.update(flatten(value, name + "."))
        else:
            out[name] = value
    return out
