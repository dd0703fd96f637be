"""launch/local_multiprocess.sh's process handling, with stand-ins for the training processes
(the real two-process run is tests/test_sharding.py::test_two_processes_match_one)."""

import os
import signal
import subprocess
import time

import pytest

from tests.conftest import REPO

# A stand-in for `python -m jaxgan.train ...`: exits with the status listed for its process id
# (the last argument, --config.distributed.process_id=N), a second later for 0; for 'stop',
# waits for SIGTERM and exits 75 as a stopped run does; for 'stuck', ignores SIGTERM (a process
# in a collective whose peer is gone). Each writes ready.N once its signal handling is set.
STAND_IN = """#!/usr/bin/env bash
id="${@: -1}"; id="${id##*=}"
codes=(%s)
if [[ "${codes[$id]}" == stop || "${codes[$id]}" == stuck ]]; then
  if [[ "${codes[$id]}" == stop ]]; then trap 'exit 75' TERM; else trap '' TERM; fi
  touch "%s/ready.$id"
  while :; do sleep 0.1; done  # short sleeps: none outlives a killed stand-in by much
fi
[[ "${codes[$id]}" == 0 ]] && sleep 1
exit "${codes[$id]}"
"""


def _launch(tmp_path, statuses: str) -> subprocess.Popen:
  stand_in = tmp_path / "python"
  stand_in.write_text(STAND_IN % (statuses, tmp_path))
  stand_in.chmod(0o755)
  return subprocess.Popen(["bash", "launch/local_multiprocess.sh", "2", "--workdir", "unused"],
                          cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                          env=dict(os.environ, PYTHON=str(stand_in)))


@pytest.mark.parametrize("statuses, want", [("75 75", 75), ("0 3", 3), ("0 0", 0)])
def test_a_stop_is_passed_through_and_a_failure_ends_the_others(tmp_path, statuses, want):
  """A stopped run (75 from every process: the stop is agreed) exits 75, for a retry wrapper to
  resume; a failed process ends the others at once."""
  proc = _launch(tmp_path, statuses)
  _, err = proc.communicate(timeout=60)
  assert proc.returncode == want, err


def _started(tmp_path, proc: subprocess.Popen) -> None:
  """Waits until both stand-ins have set their signal handling."""
  deadline = time.monotonic() + 30
  while not all((tmp_path / f"ready.{i}").exists() for i in range(2)):
    assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()[1]
    time.sleep(0.05)


def test_a_signal_to_the_launcher_stops_the_processes_gracefully(tmp_path):
  """Ctrl-C or kill on the launcher: SIGTERM to each process, waited for (not killed after a
  fixed grace period while it writes its checkpoint), and 75 when all stopped."""
  proc = _launch(tmp_path, "stop stop")
  _started(tmp_path, proc)
  start = time.monotonic()
  proc.send_signal(signal.SIGTERM)
  _, err = proc.communicate(timeout=60)
  assert proc.returncode == 75, err
  assert time.monotonic() - start < 30  # they exited at once: no grace period waited out


def test_a_second_ctrl_c_kills_processes_that_do_not_stop(tmp_path):
  proc = _launch(tmp_path, "stuck stuck")
  _started(tmp_path, proc)
  start = time.monotonic()
  proc.send_signal(signal.SIGINT)
  time.sleep(1.0)  # the launcher waits for them (the grace period is 60 s)
  assert proc.poll() is None
  proc.send_signal(signal.SIGINT)
  _, err = proc.communicate(timeout=30)
  assert proc.returncode == 130, err
  assert time.monotonic() - start < 30
