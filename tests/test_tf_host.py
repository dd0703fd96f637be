"""tf_host: TensorFlow hidden from the accelerators, or a warning when that is too late."""

import logging
import sys
import types

import pytest

from jaxgan import tf_host


def _fake_tensorflow(initialised: bool, gpus: list):
  hidden = []

  def set_visible_devices(devices, kind):
    if initialised:
      raise RuntimeError("Visible devices cannot be modified after being initialized")
    hidden.append((devices, kind))

  config = types.SimpleNamespace(set_visible_devices=set_visible_devices,
                                 get_visible_devices=lambda kind: gpus)
  return types.SimpleNamespace(config=config), hidden


@pytest.fixture
def fresh_import():
  """Clears import_tensorflow's cache before and after, also when the test fails: the fake
  module must never reach the tests that follow."""
  tf_host.import_tensorflow.cache_clear()
  yield
  tf_host.import_tensorflow.cache_clear()


def test_gpus_are_hidden_or_the_failure_is_reported(monkeypatch, caplog, fresh_import):
  for initialised, gpus, warned in [(False, ["GPU:0"], False), (True, [], False),
                                    (True, ["GPU:0", "GPU:1"], True)]:
    fake, hidden = _fake_tensorflow(initialised, gpus)
    monkeypatch.setitem(sys.modules, "tensorflow", fake)
    tf_host.import_tensorflow.cache_clear()
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="jaxgan.tf_host"):
      assert tf_host.import_tensorflow() is fake
    assert hidden == ([] if initialised else [([], "GPU")])
    assert ("could hide 2 GPU(s)" in caplog.text) == warned, caplog.text
