"""ftrun/collector.py: the garbage collector is paused while a run sets up, and what set-up made is frozen
before training, so that no full collection walks the imported stack."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

from tests.conftest import FAST, ROOT

SEMANTICS = textwrap.dedent("""
    import gc, json
    from ftrun import collector
    seen = {"enabled_at_start": gc.isenabled()}
    collector.resume()                       # nothing paused: nothing frozen
    seen["frozen_without_pause"] = gc.get_freeze_count()
    collector.pause()
    seen["enabled_while_paused"] = gc.isenabled()
    keep = [[i] for i in range(1000)]
    class Node: pass
    cycle = Node(); cycle.me = cycle
    import weakref; gone = weakref.ref(cycle); del cycle   # garbage only a collection can free
    collector.resume()
    seen["cycle_collected_before_freeze"] = gone() is None
    seen["enabled_after_resume"] = gc.isenabled()
    seen["frozen_after_resume"] = gc.get_freeze_count()
    collector.pause()                        # a second run in this process: the collector stays on
    seen["enabled_after_second_pause"] = gc.isenabled()
    print(json.dumps(seen))
""")

# a real run, watched: full collections before training starts, and what is frozen when it does
WATCH = textwrap.dedent("""
    import gc, json, os, runpy, sys
    full = []
    gc.callbacks.append(lambda phase, info: full.append(1) if phase == "stop" and info["generation"] == 2 else None)
    import ftrun.fit
    original = ftrun.fit._train
    def watched(*a, **k):
        json.dump({"full_collections_before_training": len(full), "frozen": gc.get_freeze_count(),
                   "enabled": gc.isenabled()}, open(os.environ["WATCH_OUT"], "w"))
        return original(*a, **k)
    ftrun.fit._train = watched
    sys.argv = ["ftrun", *sys.argv[1:]]
    runpy.run_module("ftrun", run_name="__main__")
""")


def _python(code: str, *args: str, env=None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code, *args], cwd=ROOT, capture_output=True, text=True,
                          env={**os.environ, **(env or {})}, timeout=600)


def test_pause_stops_collection_and_resume_collects_once_then_freezes_what_is_left():
    out = _python(SEMANTICS)
    assert out.returncode == 0, out.stderr
    seen = json.loads(out.stdout)
    assert seen["enabled_at_start"] and not seen["enabled_while_paused"] and seen["enabled_after_resume"]
    assert seen["frozen_without_pause"] == 0
    assert seen["frozen_after_resume"] > 1000  # the list made while paused, and everything before it
    assert seen["enabled_after_second_pause"]
    assert seen["cycle_collected_before_freeze"]  # set-up's garbage is freed, not frozen for good


def test_a_run_sets_up_with_one_full_collection_and_trains_with_the_stack_frozen(tiny_dir, tmp_path, mlflow_uri):
    watch = tmp_path / "watch.json"
    out = _python(WATCH, *FAST, f"output_root={tmp_path / 'out'}", "name=gc",
                  env={"WATCH_OUT": str(watch), "FTRUN_MALLOC": "system"})
    assert out.returncode == 0, out.stderr[-3000:]
    seen = json.loads(watch.read_text())
    assert seen["enabled"]
    assert seen["full_collections_before_training"] == 1  # the one resume makes (unpaused: one per ~25% growth)
    assert seen["frozen"] > 100_000  # torch, transformers, datasets and MLflow, out of every later collection
