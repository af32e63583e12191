"""ftrun/allocator.py: the CLI starts itself again once with jemalloc preloaded, where the machine has it."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from ftrun import allocator

SHOW = ("import os; from ftrun.allocator import reexec; reexec(); "
        "maps = open('/proc/self/maps').read(); "
        "print(os.getpid(), os.environ.get('LD_PRELOAD', ''), 'libjemalloc' in maps)")


def _show(choice: str) -> list:
    env = {**os.environ, allocator.ENV: choice}
    env.pop("LD_PRELOAD", None)
    out = subprocess.run([sys.executable, "-c", SHOW], env=env, capture_output=True, text=True, check=True)
    return out.stdout.split()


@pytest.mark.skipif(allocator.library("jemalloc") is None,
                    reason="libjemalloc2 is not installed (scripts/system_packages.sh installs it)")
def test_jemalloc_is_preloaded_once():
    pid_line = _show("jemalloc")
    assert "jemalloc" in pid_line[1] and pid_line[-1] == "True"  # in LD_PRELOAD and mapped into the process
    assert len(pid_line) == 3  # one exec: LD_PRELOAD holds the library once
    assert _show("system")[-1] == "False"  # FTRUN_MALLOC=system: glibc, nothing preloaded


def test_no_library_no_exec(monkeypatch):
    monkeypatch.setenv(allocator.ENV, "jemalloc")
    monkeypatch.delenv("LD_PRELOAD", raising=False)
    monkeypatch.setattr(allocator, "library", lambda choice: None)
    monkeypatch.setattr(os, "execve", lambda *a: pytest.fail("exec without a library"))
    allocator.reexec()  # returns: the machine has no jemalloc
    assert allocator.chosen() == "system"
