"""Console output: a stop's message reaches a person once and a caller reading stdout always."""

import logging
import sys

from jaxgan import console


def test_a_message_is_shown_once_where_stdout_and_stderr_are_one_file(tmp_path, monkeypatch,
                                                                      caplog):
  log = logging.getLogger("jaxgan.test_console")
  run_log = logging.FileHandler(tmp_path / "log.txt")  # the run's log.txt, on 'jaxgan'
  logging.getLogger("jaxgan").addHandler(run_log)
  try:
    with open(tmp_path / "terminal", "w") as both:  # `train ... > run.log 2>&1`, or a terminal
      monkeypatch.setattr(sys, "stdout", both)
      monkeypatch.setattr(sys, "stderr", both)
      with caplog.at_level(logging.WARNING, logger=log.name):
        console.report("SIGINT received: stopped after step 3", log)
  finally:
    logging.getLogger("jaxgan").removeHandler(run_log)
    run_log.close()
  assert (tmp_path / "terminal").read_text() == "SIGINT received: stopped after step 3\n"
  assert not caplog.records  # the root's handler would have written it to the same file again
  # The run's log.txt says how it ended all the same.
  assert (tmp_path / "log.txt").read_text() == "SIGINT received: stopped after step 3\n"


def test_a_message_goes_to_the_log_and_to_stdout_where_they_differ(tmp_path, monkeypatch, caplog):
  log = logging.getLogger("jaxgan.test_console")
  with open(tmp_path / "out", "w") as out, open(tmp_path / "err", "w") as err:
    monkeypatch.setattr(sys, "stdout", out)
    monkeypatch.setattr(sys, "stderr", err)
    with caplog.at_level(logging.WARNING, logger=log.name):
      console.report("SIGINT received: stopped after step 3", log)
  assert (tmp_path / "out").read_text() == "SIGINT received: stopped after step 3\n"
  assert [r.getMessage() for r in caplog.records] == ["SIGINT received: stopped after step 3"]
