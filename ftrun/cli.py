"""``key=value`` command lines for the tools around a run (export, predict, chat).

Each tool declares its arguments as a dataclass; :func:`parse` merges the
command line onto it with OmegaConf, so a typo in a key or a value of the wrong
type is an error that names the key. ``--help`` prints the tool's docstring and
every key with its default and its description; it imports no torch.
"""

from __future__ import annotations

import ast
import dataclasses
import inspect
import sys
import textwrap
from typing import List, Optional, Sequence

from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from ftrun.config import ConfigError


def field_docs(cls) -> dict:
    """``{field: docstring}`` from the string literal under each dataclass field (base classes first)."""
    docs = {}
    for base in reversed(cls.__mro__[1:]):
        if dataclasses.is_dataclass(base):
            docs.update(_own_field_docs(base))
    docs.update(_own_field_docs(cls))
    return docs


def _own_field_docs(cls) -> dict:
    try:
        tree = ast.parse(textwrap.dedent(inspect.getsource(cls)))
    except (OSError, TypeError):
        return {}
    body = tree.body[0].body
    docs = {}
    for a, b in zip(body, body[1:]):
        if isinstance(a, ast.AnnAssign) and isinstance(a.target, ast.Name) and isinstance(b, ast.Expr) \
                and isinstance(b.value, ast.Constant) and isinstance(b.value.value, str):
            docs[a.target.id] = " ".join(b.value.value.split())
    return docs


def help_text(schema, doc: str, prefix: str = "") -> str:
    lines = [] if prefix else [doc.strip(), "", "Arguments (key=value):"]
    docs = field_docs(schema)
    for f in dataclasses.fields(schema):
        default = f.default if f.default is not dataclasses.MISSING else (
            f.default_factory() if f.default_factory is not dataclasses.MISSING else "???")
        if dataclasses.is_dataclass(default):
            lines.append(help_text(type(default), doc, prefix + f.name + "."))
            continue
        shown = "null" if default is None else default
        lines.append(f"  {prefix}{f.name}={shown}")
        if f.name in docs:
            lines.append(f"      {docs[f.name]}")
    return "\n".join(lines)


def parse(schema, argv: Optional[Sequence[str]], doc: str, positional: Optional[str] = None):
    """The tool's config from ``argv``; exits 0 after ``--help``, raises ConfigError on a bad argument.

    A bare first argument without ``=`` is taken as ``<positional>=<it>``.
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    if any(a in ("-h", "--help") for a in argv):
        print(help_text(schema, doc))
        raise SystemExit(0)
    dotlist: List[str] = []
    for i, a in enumerate(argv):
        if "=" not in a:
            if i == 0 and positional:
                a = f"{positional}={a}"
            else:
                raise ConfigError(f"argument '{a}': expected key=value (see --help)")
        dotlist.append(a.lstrip("+"))
    try:
        cfg = OmegaConf.merge(OmegaConf.structured(schema), OmegaConf.from_dotlist(dotlist))
    except OmegaConfBaseException as e:
        key = getattr(e, "full_key", None)
        msg = str(e).splitlines()[0]
        raise ConfigError(f"{key + ': ' if key else ''}{msg} (see --help)") from None
    return cfg


def main_guard(fn, argv=None) -> int:
    """Run ``fn(argv)``; a ConfigError ends with its message and status 2, not a traceback."""
    import logging

    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    logging.getLogger("bitsandbytes").setLevel(logging.ERROR)  # its CPU-kernel hint is not ours to show
    try:
        fn(argv)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0
