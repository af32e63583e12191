"""The garbage collector paused while a run sets up; what set-up made frozen before training starts.

Importing the training stack (torch, transformers, datasets, peft, MLflow and its SQL store) makes ~800,000
Python objects that live as long as the process. CPython runs a full collection each time the long-lived heap has
grown by a quarter, and each walks every object so far: on the peer benchmark's run (bench/peer_llamafactory.py,
tiny Llama, 2 EPYC cores) 11 full collections during imports and set-up took 2.2 s of a 13 s process, and the
Trainer's own ``gc.collect()`` as ``train`` starts (accelerate's ``free_memory``) 0.35 s more.

:func:`pause` stops the collector (``python -m ftrun`` calls it once the config is valid; a sweep's warm worker
around its imports); :func:`resume` moves everything that exists to the permanent generation (:func:`gc.freeze`:
no later collection walks it) and starts the collector again, so that training collects only what training
makes. One full collection comes first (0.7 s on that run, against the 11): set-up's cyclic garbage (27,000-54,000
objects there, 6-10 MB of peak RSS) would otherwise stay frozen for good, and a cycle that holds a tensor would hold
its memory with it. Only a process's first :func:`pause` counts (a second run in the same process, as under
Hydra's in-process launcher, would freeze the first one's garbage); :func:`resume` does nothing where no
:func:`pause` stopped the collector.
"""

from __future__ import annotations

import gc

_paused = False
_used = False


def pause() -> None:
    """Stop automatic collection until :func:`resume`; the process's first call only, and if it is on."""
    global _paused, _used
    if not _used and gc.isenabled():
        gc.disable()
        _paused = True
    _used = True


def resume() -> None:
    """Collect set-up's garbage once, freeze what is left and collect automatically again, if :func:`pause`
    stopped it."""
    global _paused
    if _paused:
        gc.collect()
        gc.freeze()
        gc.enable()
        _paused = False
