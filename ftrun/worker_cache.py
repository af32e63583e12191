"""What a long-lived process keeps between runs: the read-only things that runs share.

A sweep's warm worker (:mod:`sweeper.worker`) runs many trials in one process.
It calls :func:`enable` once; from then on :func:`shared` builds a value the
first time a key is asked for and keeps it, and every run gets its own copy
(``copy``), so a run can never change what the next one starts from (Ray Tune's
``reuse_actors`` rule: what a worker keeps is read-only; everything a trial
builds is new per trial). Without :func:`enable` (a plain ``python -m ftrun``)
:func:`shared` just builds, keeps nothing and copies nothing.

Kept, keyed by everything that changes them: the tokenizer (model path and
template), the tokenized datasets (data config, tokenizer, template, cutoff_len,
packing: the whole ``data`` group), and the base model's weights in host memory
(path, dtype, attention, head; quantized bases are not kept: they are
quantized again per run).
"""

from __future__ import annotations

import json
import logging
from collections import OrderedDict
from typing import Any, Callable, Optional

log = logging.getLogger(__name__)

_store: Optional["OrderedDict[str, Any]"] = None
_limit = 0
hits = {"hit": 0, "miss": 0}


def enable(max_items: int = 6) -> None:
    """Keep up to ``max_items`` values (least recently used dropped first)."""
    global _store, _limit
    _store = OrderedDict() if _store is None else _store
    _limit = max_items


def enabled() -> bool:
    return _store is not None


def clear() -> None:
    if _store is not None:
        _store.clear()


def shared(kind: str, key: Any, build: Callable[[], Any], copy: Callable[[Any], Any] = lambda v: v) -> Any:
    """``copy(value)`` of the value kept for (kind, key), built with ``build()`` on first use;
    just ``build()`` when keeping is off."""
    if _store is None:
        return build()
    k = kind + ":" + json.dumps(key, sort_keys=True, default=str)
    if k in _store:
        _store.move_to_end(k)
        hits["hit"] += 1
        log.info("Reusing the %s this worker already holds", kind)
    else:
        hits["miss"] += 1
        _store[k] = build()
        while len(_store) > _limit:
            _store.popitem(last=False)
    return copy(_store[k])


def deepcopy(value: Any) -> Any:
    import copy

    return copy.deepcopy(value)
