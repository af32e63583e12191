"""The error a configuration mistake raises, and how its message prints a value."""

from __future__ import annotations

from typing import Any


class ConfigError(ValueError):
    """A user mistake in the configuration; the message says what to change."""


def show_value(value: Any) -> str:
    """A value as the override that sets it spells it: ``true``, ``[a,b]``, ``1e-05``."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list):
        return "[" + ",".join(show_value(v) for v in value) + "]"
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)
