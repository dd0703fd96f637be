"""tf_host: TensorFlow hidden from the accelerators, or a warning when that is too late."""

import logging
import os
import subprocess
import sys
import types

import pytest

from jaxgan import tf_host
from tests.conftest import REPO


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


def test_tensorflow_starts_quietly_unless_the_user_asks(monkeypatch, fresh_import):
  """Its C++ start-up notes (oneDNN, CPU instructions: 5 lines, before absl's logging is set up)
  are off by default; a user's own TF_CPP_MIN_LOG_LEVEL or TF_ENABLE_ONEDNN_OPTS is kept."""
  env = {k: v for k, v in os.environ.items()
         if k not in ("TF_CPP_MIN_LOG_LEVEL", "TF_ENABLE_ONEDNN_OPTS")}
  done = subprocess.run(
      [sys.executable, "-c", "from jaxgan import tf_host; tf = tf_host.import_tensorflow(); "
       "import tensorflow_datasets; print(list(map(int, tf.data.Dataset.range(3))))"],
      cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
  assert done.returncode == 0 and done.stdout == "[0, 1, 2]\n", done.stderr[-2000:]
  # Its warnings and errors still show (a CUDA build's, say): only the start-up notes go.
  for note in ("oneDNN custom operations", "cpu_feature_guard"):
    assert note not in done.stderr, done.stderr[-2000:]
  monkeypatch.setenv("TF_ENABLE_ONEDNN_OPTS", "1")
  monkeypatch.delenv("TF_CPP_MIN_LOG_LEVEL", raising=False)
  monkeypatch.setitem(sys.modules, "tensorflow", _fake_tensorflow(False, [])[0])
  tf_host.import_tensorflow()
  assert os.environ["TF_ENABLE_ONEDNN_OPTS"] == "1" and os.environ["TF_CPP_MIN_LOG_LEVEL"] == "1"
