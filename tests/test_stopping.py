"""stopping: SIGTERM/SIGINT become a flag, and when processes exchange it."""

import os
import signal

import jax
import pytest

from jaxgan import multihost, stopping


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_is_held_and_handlers_restored(sig):
  before = signal.getsignal(sig)
  with stopping.StopRequest() as stop:
    assert stop.check(0) is None
    os.kill(os.getpid(), sig)  # handled in the main thread before kill returns
    assert stop.check(1) == sig
  assert signal.getsignal(sig) is before


def test_several_processes_exchange_every_few_calls_or_when_asked(monkeypatch):
  exchanged = []
  monkeypatch.setattr(jax, "process_count", lambda: 2)
  monkeypatch.setattr(multihost, "first_signal", lambda local: exchanged.append(local) or 15)
  stop = stopping.StopRequest(exchange_every_calls=4)
  stop.signal = 15
  answers = [stop.check(call) for call in range(1, 9)]
  # Only calls 4 and 8 exchange (the flag waits for them); a log row's call exchanges at once.
  assert answers == [None, None, None, 15, None, None, None, 15]
  assert stop.check(5, exchange=True) == 15 and len(exchanged) == 3
