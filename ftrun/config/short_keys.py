"""Short spellings of knobs (``lr`` is ``optimizer.lr``) and the other names a knob answers to.

Every knob has one home. The ones people sweep have a short spelling as well
(:data:`SHORT_KEYS`: ``lr``, ``rank``, ``alpha``, ``cutoff_len``);
:func:`canonical_overrides` rewrites each alias to its home before Hydra composes,
so both reach the same value and the same check, and ``--cfg job`` shows each knob
once. Messages name a key by its short spelling (:func:`display_key`).
"""

from __future__ import annotations

from typing import List, Sequence


# the short spellings people sweep -> the one home of each value
SHORT_KEYS = {
    "lr": "optimizer.lr",
    "rank": "method.rank",
    "alpha": "method.alpha",
    "cutoff_len": "data.cutoff_len",
}
# other spellings that refer to a home (kept so that old command lines and experiment files still work)
# LLaMA-Factory's names of knobs that ftrun spells otherwise (README: "LLaMA-Factory's Train tab")
LLAMAFACTORY_NAMES = {
    "rope_scaling": "model.rope_scaling",
    "enable_liger_kernel": "model.liger_kernel",
    "resize_vocab": "model.resize_vocab",
    "enable_thinking": "model.enable_thinking",
    "neat_packing": "data.neat_packing",
    "use_pissa": "method.pissa",
    "pissa_iter": "method.pissa_iters",
    "additional_target": "method.extra_modules",
    "adapter_name_or_path": "method.adapter",
    "create_new_adapter": "method.create_new_adapter",
    "quantization_method": "method.quant_method",
    "pref_ftx": "stage.pref_ftx",
}
ALIASES = {**SHORT_KEYS, "stage.objective": "objective", **LLAMAFACTORY_NAMES}
_SHORT_NAME = {home: short for short, home in SHORT_KEYS.items()}


def canonical_overrides(overrides: Sequence[str], keep_sweeps: bool = False) -> List[str]:
    """Overrides with every alias written as its home key: ``lr=1e-4`` -> ``optimizer.lr=1e-4``.

    ``+lr=...`` loses its ``+`` (the home always exists). ``keep_sweeps`` (a ``-m``
    command line) leaves search-space overrides such as ``lr=choice(1e-4,1e-3)`` as
    typed: Hydra does not compose them, and the sweeper names the study's parameter
    after them, as the sweep presets, ``enqueue`` and ``conditions`` do; each trial
    then gets ``lr=<value>``, rewritten here.
    """
    out = []
    for o in overrides:
        o = str(o)
        prefix = "++" if o.startswith("++") else o[:1] if o[:1] in "+~" else ""
        rest = o[len(prefix):]
        key, eq, value = rest.partition("=")
        if key in ALIASES and not (keep_sweeps and _is_sweep(o)):
            if prefix == "+":
                prefix = ""
            o = f"{prefix}{ALIASES[key]}{eq}{value}"
        out.append(o)
    return out


def _is_sweep(override: str) -> bool:
    from hydra.core.override_parser.overrides_parser import OverridesParser

    try:
        return OverridesParser.create().parse_override(override).is_sweep_override()
    except Exception:  # not an override Hydra can parse: Hydra will say so
        return False


def display_key(key: str) -> str:
    """How a message names a key: its short spelling when it has one (``optimizer.lr`` -> ``lr``)."""
    return _SHORT_NAME.get(key, key)


# ---------------------------------------------------------------------------
