"""run_log: WORKDIR/log.txt and the progress line of a run whose stderr is a file."""

import logging

import pytest

from jaxgan import run_log


def test_log_txt_gets_the_lines_and_how_the_run_ended(tmp_path, caplog):
  log = logging.getLogger("jaxgan.trainer")
  with caplog.at_level(logging.INFO, logger="jaxgan"):
    with pytest.raises(ValueError):
      with run_log.run_log(str(tmp_path), enabled=True, to_stderr=False) as progress:
        log.info("starting")
        progress.progress("step 1/2")  # on a terminal: the file only
        raise ValueError("the data went away\nsecond line")
    log.info("after the run")  # the handler is gone
  lines = [line.split(" ", 2)[2] for line in (tmp_path / "log.txt").read_text().splitlines()]
  assert lines == ["INFO jaxgan.trainer: starting", "INFO jaxgan.trainer: step 1/2",
                   "ERROR jaxgan.trainer: ended: ValueError: the data went away"]
  assert [m for m in caplog.messages if m.startswith("step")] == []  # not on stderr
  # A stop asked for during start-up is a warning there, not an error.
  from jaxgan import stopping

  for stop in (stopping.Stopped("SIGINT received while starting"), KeyboardInterrupt()):
    with pytest.raises(type(stop)):
      with run_log.run_log(str(tmp_path), enabled=True, to_stderr=False):
        raise stop
  ends = [line.split(" ", 2)[2] for line in (tmp_path / "log.txt").read_text().splitlines()][-2:]
  assert ends == ["WARNING jaxgan.trainer: ended: Stopped: SIGINT received while starting",
                  "WARNING jaxgan.trainer: ended: KeyboardInterrupt: "]


def test_lines_held_back_go_first_with_their_times(tmp_path, monkeypatch):
  log = logging.getLogger("jaxgan.data.arrays")
  monkeypatch.setattr(run_log, "MAX_HELD_RECORDS", 3)
  with run_log.held_back() as earlier:
    for i in range(5):
      log.warning("skipping %d", i)
    earlier.records[0].created -= 3600  # an hour before: the file keeps the line's own time
    with run_log.run_log(str(tmp_path), enabled=True, to_stderr=False, earlier=earlier):
      logging.getLogger("jaxgan.trainer").warning("training")  # released: held no more
  assert earlier.records == [] and earlier.dropped == 2  # handed over, not kept to the run's end
  lines = (tmp_path / "log.txt").read_text().splitlines()
  assert [line.split(" ", 2)[2] for line in lines] == [
      "WARNING jaxgan.data.arrays: skipping 0", "WARNING jaxgan.data.arrays: skipping 1",
      "WARNING jaxgan.data.arrays: skipping 2",
      "WARNING jaxgan.trainer: ... and 2 more start-up lines, on stderr only",
      "WARNING jaxgan.trainer: training"]
  assert lines[0][:19] < lines[1][:19]
  # Another process's run log writes nothing, and releases the lines all the same.
  with run_log.held_back() as other:
    with run_log.run_log(str(tmp_path / "p1"), enabled=False, to_stderr=False, earlier=other):
      log.warning("after")
  assert other.records == [] and not (tmp_path / "p1").exists()


HELD_EXCEPTION = r"""
import gc, logging, sys, weakref
from jaxgan import run_log
logging.getLogger("jaxgan").setLevel(logging.INFO)

class Big:  # a memory-mapped cache, say, in the frame of the error logged
  pass

def fail(big):
  raise OSError("cache unreadable")

with run_log.held_back() as held:
  big = Big()
  alive = weakref.ref(big)
  try:
    fail(big)
  except OSError:
    logging.getLogger("jaxgan.data.decode").warning("decode cache unreadable", exc_info=True)
  del big
  with run_log.run_log(sys.argv[1], enabled=True, to_stderr=False, earlier=held):
    gc.collect()
    print(alive() is None)
"""


def test_a_held_lines_exception_is_not_kept_to_the_runs_end(tmp_path):
  """A held line's exception keeps its frames' locals alive (a memory-mapped cache) until log.txt
  has it, not to the run's end: the run_log generator's locals live that long. (A subprocess:
  pytest's own log capture keeps every record.)"""
  import subprocess
  import sys

  proc = subprocess.run([sys.executable, "-c", HELD_EXCEPTION, str(tmp_path)],
                        capture_output=True, text=True, timeout=120)
  assert proc.returncode == 0 and proc.stdout.strip() == "True", proc.stderr[-2000:]
  assert "OSError: cache unreadable" in (tmp_path / "log.txt").read_text()


def test_a_log_txt_that_cannot_be_opened_does_not_stop_the_run(tmp_path, caplog):
  """FileHandler opens its file outside its own error handling: a log.txt another user left
  read-only (here a folder in its place) raised out of the run's first log line."""
  (tmp_path / "log.txt").mkdir()
  with caplog.at_level(logging.INFO, logger="jaxgan"):
    with run_log.run_log(str(tmp_path), enabled=True, to_stderr=True) as progress:
      logging.getLogger("jaxgan.trainer").info("starting")
      progress.progress("step 1/2")  # off a terminal: the log (stderr) still has it
  assert "step 1/2" in caplog.messages


def test_the_progress_line():
  values = {"d_loss": 1.23456, "g_loss": 0.5, "augment_p": 0.0, "ema_beta": 0.9}
  assert run_log.progress_line(300, 400, values, 64, 0.5) == (
      "step 300/400 (75%), 19.2 kimg: d_loss 1.235, g_loss 0.5, 128 img/s, ETA 0:00:50")
  values["augment_p"] = 0.25  # ADA on: its p too
  assert run_log.progress_line(1, 3, values, 8, float("nan")) == (
      "step 1/3 (33%), 0.0 kimg: d_loss 1.235, g_loss 0.5, augment_p 0.25")


@pytest.mark.parametrize("classes,said", [(("0", ""), "unconditional"), (("1", ""), "1 class"),
                                          (("3", ""), "3 classes"), (("3", "1"), "3 x 1 classes")])
def test_the_start_line_says_the_classes_trained_on(classes, said, tmp_path):
  """The synthetic data's first num_classes categories, a manifest's column after its rare names
  were merged: which classes a run trains on was said nowhere in its log."""
  import types

  import numpy as np

  from tests.conftest import tiny_config

  config = tiny_config(**{"data.num_classes": int(classes[0]),
                          "data.extra_num_classes": classes[1]})
  state = types.SimpleNamespace(g_params={"w": np.zeros(3)}, d_params={"w": np.zeros(2)})
  mesh = types.SimpleNamespace(shape={"data": 1, "fsdp": 1})
  line = run_log.start_line(config, 0, state, object(), mesh, str(tmp_path))
  assert f"; data: synthetic, {said}; " in line, line


def test_a_line_with_a_name_that_is_not_utf8_reaches_log_txt(tmp_path, monkeypatch):
  """A skipped file's line naming a legacy archive's Latin-1 file name (a surrogate escape in
  Python) failed log.txt's UTF-8 write, and the handler dropped the line silently; the run's
  legend of such class names failed the run."""
  from jaxgan import sampling

  name = b"/data/caf\xe9.jpg".decode("utf-8", "surrogateescape")
  # Not to pytest's log capture: pytest-xdist cannot send a record holding a surrogate back to
  # its controller, and the whole run stops with an internal error.
  monkeypatch.setattr(logging.getLogger("jaxgan"), "propagate", False)
  with run_log.run_log(str(tmp_path), enabled=True, to_stderr=False):
    logging.getLogger("jaxgan.data.arrays").warning("skipping %s: not an image", name)
  assert "skipping /data/caf\\udce9.jpg: not an image" in (tmp_path / "log.txt").read_text()
  sampling.save_legend(f"row 0: {name}\n", str(tmp_path / "rows.txt"))
  assert (tmp_path / "rows.txt").read_text() == "row 0: /data/caf\\udce9.jpg\n"


def test_a_log_txt_that_cannot_be_written_does_not_change_how_the_run_ends(tmp_path):
  """A full disk: the lines are dropped, and so is the buffered one that failed again as the
  file closed (an OSError there replaced the run's own end: a stop's SystemExit(75), which the
  SLURM script requeues, became a traceback and status 1)."""
  import os

  os.symlink("/dev/full", tmp_path / "log.txt")  # every write fails with ENOSPC
  with pytest.raises(SystemExit) as e:
    with run_log.run_log(str(tmp_path), enabled=True, to_stderr=False) as progress:
      logging.getLogger("jaxgan.trainer").warning("checkpoint written")
      progress.progress("step 2/4")
      raise SystemExit(75)
  assert e.value.code == 75
