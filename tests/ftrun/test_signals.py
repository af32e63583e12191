"""A stop signal raises where the run is, except inside the tracker's MLflow writes, where it waits for the write."""

from __future__ import annotations

import os
import signal

import pytest

from ftrun import signals


@pytest.fixture()
def handlers():
    saved = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGINT)}
    signals.stop_on_signals()
    yield
    for sig, handler in saved.items():
        signal.signal(sig, handler)


def test_sigterm_raises_stopped_where_the_run_is(handlers):
    with pytest.raises(signals.Stopped) as e:
        os.kill(os.getpid(), signal.SIGTERM)  # os.kill runs the handler before it returns
    assert e.value.signum == signal.SIGTERM


def test_a_signal_inside_deferred_waits_for_the_block_and_is_raised_once(handlers):
    done = []
    with pytest.raises(signals.Stopped) as e:
        with signals.deferred():
            with signals.deferred():  # nested: held until the outer block ends
                os.kill(os.getpid(), signal.SIGTERM)
                done.append("inner")
            done.append("outer")
    assert done == ["inner", "outer"] and e.value.signum == signal.SIGTERM
    with signals.deferred():  # the held signal was consumed: a later block ends quietly
        done.append("again")
    assert done[-1] == "again"
