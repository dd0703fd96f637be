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


@pytest.mark.parametrize("first", [signal.SIGTERM, signal.SIGINT])
def test_a_second_ctrl_c_interrupts_at_once(first):
  with stopping.StopRequest() as stop:
    os.kill(os.getpid(), first)
    with pytest.raises(KeyboardInterrupt):
      os.kill(os.getpid(), signal.SIGINT)
    assert stop.check(1) == first
    os.kill(os.getpid(), signal.SIGTERM)  # preemption notices repeat: no interrupt
    assert stop.check(2) == first


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


def test_the_loop_exchanges_at_log_rows_and_due_evaluations_and_a_stop_skips_the_eval(
    tmp_path, monkeypatch):
  """The trainer asks for the exchange where the host waits anyway (log rows) and before a due
  evaluation (a stop seen late there would cost minutes of Inception); a stop that lands on a
  due evaluation's step checkpoints and skips the evaluation."""
  from jaxgan import evaluator as evaluator_lib
  from jaxgan import trainer
  from jaxgan.metrics import inception
  from tests.conftest import tiny_config

  evaluated, exchanged = [], []

  class Periodic:  # the evaluation's place in the loop, without Inception
    def __init__(self, *args, **kwargs):
      pass

    def __call__(self, step, state):
      evaluated.append(step)
      return {}

    def close(self):
      pass

  monkeypatch.setattr(evaluator_lib, "PeriodicEval", Periodic)
  monkeypatch.setattr(evaluator_lib, "Evaluator", lambda *args, **kwargs: None)
  monkeypatch.setattr(inception, "find_weights", lambda weights: "stand-in")
  real_check = stopping.StopRequest.check

  def check(self, call, exchange=False):
    if exchange:
      exchanged.append(call)
    if call == 6:  # a preemption notice during step 6, which has an evaluation due
      self.signal = signal.SIGTERM
    return real_check(self, call, exchange)

  monkeypatch.setattr(stopping.StopRequest, "check", check)
  state = trainer.train_and_evaluate(tiny_config(**{
      "train.num_steps": 12, "train.log_every": 4, "train.eval_every": 3,
      "train.checkpoint_every": 100, "train.sample_every": 100, "train.tensorboard": False}),
      str(tmp_path))
  assert int(state.step) == 6
  assert exchanged == [3, 4, 6]
  assert evaluated == [3]
  assert sorted(os.listdir(tmp_path / "checkpoints")) == ["6"]
