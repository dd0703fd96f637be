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
# waits for SIGTERM and exits 75 as a stopped run does (1 for 'failstop'); for 'stuck', ignores
# SIGTERM (a process in a collective whose peer is gone). Each writes its pid to ready.N once its
# signal handling is set.
STAND_IN = """#!/usr/bin/env bash
id="${@: -1}"; id="${id##*=}"
codes=(%s)
if [[ "${codes[$id]}" == stop || "${codes[$id]}" == stuck || "${codes[$id]}" == failstop ]]; then
  case "${codes[$id]}" in
    stop) trap 'exit 75' TERM ;;
    failstop) trap 'exit 1' TERM ;;  # its stop fails (say, its checkpoint could not be written)
    stuck) trap '' TERM ;;
  esac
  echo $$ > "%s/ready.$id"
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
    if proc.poll() is not None or time.monotonic() > deadline:
      proc.kill()
      raise AssertionError(proc.communicate(timeout=30)[1])
    time.sleep(0.05)


def _kill_stand_ins(tmp_path) -> None:
  """A failed test must not leave stand-ins behind ('stuck' ones loop until killed)."""
  for i in range(2):
    ready = tmp_path / f"ready.{i}"
    if ready.exists() and ready.read_text().strip():
      try:
        os.kill(int(ready.read_text()), signal.SIGKILL)
      except ProcessLookupError:
        pass


@pytest.mark.parametrize("statuses, want", [("stop stop", 75), ("stop failstop", 1)])
def test_a_signal_to_the_launcher_stops_the_processes_gracefully(tmp_path, statuses, want):
  """Ctrl-C or kill on the launcher: SIGTERM to each process, waited for (not killed after a
  fixed grace period while it writes its checkpoint), and 75 when all stopped; a process whose
  stop failed gives its own status."""
  proc = _launch(tmp_path, statuses)
  try:
    _started(tmp_path, proc)
    start = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == want, err
    assert time.monotonic() - start < 30  # they exited at once: no grace period waited out
  finally:
    _kill_stand_ins(tmp_path)


def test_a_second_ctrl_c_kills_processes_that_do_not_stop_and_a_second_sigterm_does_not(
    tmp_path):
  """Ctrl-C twice quits at once, as it does for one trainer; SIGTERM twice does not (preemption
  notices repeat: the processes may be writing their checkpoint)."""
  proc = _launch(tmp_path, "stuck stuck")
  try:
    _started(tmp_path, proc)
    start = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    time.sleep(0.5)
    proc.send_signal(signal.SIGTERM)
    time.sleep(1.0)  # the launcher still waits for them (the grace period is 60 s)
    assert proc.poll() is None
    proc.send_signal(signal.SIGINT)
    time.sleep(0.5)
    assert proc.poll() is None  # the first Ctrl-C
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 130, err
    assert time.monotonic() - start < 30
  finally:
    _kill_stand_ins(tmp_path)
