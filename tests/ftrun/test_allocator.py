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
DECAY = ("import ctypes; from ftrun.allocator import reexec; reexec(); "
         "v = ctypes.c_ssize_t(); n = ctypes.c_size_t(ctypes.sizeof(v)); lib = ctypes.CDLL(None); "
         "assert lib.mallctl(b'opt.dirty_decay_ms', ctypes.byref(v), ctypes.byref(n), None, 0) == 0; "
         "print(v.value)")

RELEASE = ("import ctypes; from ftrun.allocator import reexec, release; reexec(); "
           "libc = ctypes.CDLL(None); libc.malloc.restype = ctypes.c_void_p; "
           "rss = lambda: next(int(x.split()[1]) for x in open('/proc/self/status') if x.startswith('VmRSS')) >> 10; "
           "r0 = rss(); blocks = [libc.malloc(4 << 20) for _ in range(50)]; "
           "[ctypes.memset(b, 1, 4 << 20) for b in blocks]; r1 = rss(); "
           "[libc.free(ctypes.c_void_p(b)) for b in blocks]; r2 = rss(); done = release(); "
           "print(done, r1 - r0, r2 - r0, rss() - r0)")


def _show(choice: str, script: str = SHOW, **environ) -> list:
    env = {**os.environ, allocator.ENV: choice, **environ}
    env.pop("LD_PRELOAD", None)
    if "MALLOC_CONF" not in environ:
        env.pop("MALLOC_CONF", None)
    out = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, check=True)
    return out.stdout.split()


@pytest.mark.skipif(allocator.library("jemalloc") is None,
                    reason="libjemalloc2 is not installed (scripts/system_packages.sh installs it)")
def test_jemalloc_is_preloaded_once():
    pid_line = _show("jemalloc")
    assert "jemalloc" in pid_line[1] and pid_line[-1] == "True"  # in LD_PRELOAD and mapped into the process
    assert len(pid_line) == 3  # one exec: LD_PRELOAD holds the library once
    assert _show("system")[-1] == "False"  # FTRUN_MALLOC=system: glibc, nothing preloaded


@pytest.mark.skipif(allocator.library("jemalloc") is None,
                    reason="libjemalloc2 is not installed (scripts/system_packages.sh installs it)")
def test_jemalloc_keeps_freed_pages_unless_malloc_conf_says_otherwise():
    assert _show("jemalloc", DECAY) == ["-1"]  # JEMALLOC_CONF: no decay
    assert _show("jemalloc", DECAY, MALLOC_CONF="dirty_decay_ms:5000") == ["5000"]  # the user's own options
    assert _show("jemalloc", DECAY, MALLOC_CONF="") == ["10000"]  # empty: jemalloc's defaults


def test_no_library_no_exec(monkeypatch):
    monkeypatch.setenv(allocator.ENV, "jemalloc")
    monkeypatch.delenv("LD_PRELOAD", raising=False)
    monkeypatch.setattr(allocator, "library", lambda choice: None)
    monkeypatch.setattr(os, "execve", lambda *a: pytest.fail("exec without a library"))
    allocator.reexec()  # returns: the machine has no jemalloc
    assert allocator.chosen() == "system"


@pytest.mark.skipif(allocator.library("jemalloc") is None,
                    reason="libjemalloc2 is not installed (scripts/system_packages.sh installs it)")
def test_release_hands_the_kept_pages_back():
    done, grown, after_free, after_release = _show("jemalloc", RELEASE)
    assert done == "True" and int(grown) >= 190  # 200 MiB written
    assert int(after_free) >= 0.9 * int(grown)  # freed, kept for reuse (no decay)
    assert int(after_release) <= 0.1 * int(grown)  # handed back
    assert _show("system", RELEASE)[0] == "False"  # glibc: nothing to release this way
