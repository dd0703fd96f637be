"""The launchers with stand-ins: launch/local_multiprocess.sh's process handling (the real
two-process run is tests/test_sharding.py::test_two_processes_match_one) and what
launch/tpu_pod.sh runs on the workers."""

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
if [[ "${codes[$id]}" == 3late ]]; then  # fails once process 1 has set its signal handling
  while [[ ! -e "%s/ready.1" ]]; do sleep 0.05; done
  exit 3
fi
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


def _launch(tmp_path, statuses: str, prefix: str = "", stderr=subprocess.PIPE, **env
            ) -> subprocess.Popen:
  stand_in = tmp_path / "python"
  stand_in.write_text(STAND_IN % (statuses, tmp_path, tmp_path))
  stand_in.chmod(0o755)
  return subprocess.Popen(["bash", "launch/local_multiprocess.sh", "2", "--workdir", "unused"],
                          cwd=REPO, stdout=subprocess.PIPE, stderr=stderr, text=True,
                          env=dict(os.environ, PYTHON=f"{prefix}{stand_in}", **env))


@pytest.mark.parametrize("statuses, want, prefix", [("75 75", 75, ""), ("0 3", 3, ""),
                                                    ("0 0", 0, "nice -n 1 ")])
def test_a_stop_is_passed_through_and_a_failure_ends_the_others(tmp_path, statuses, want, prefix):
  """A stopped run (75 from every process: the stop is agreed) exits 75, for a retry wrapper to
  resume; a failed process ends the others at once. PYTHON may be a command with arguments."""
  proc = _launch(tmp_path, statuses, prefix)
  _, err = proc.communicate(timeout=60)
  assert proc.returncode == want, err


def test_the_coordinator_listens_on_this_host_only(tmp_path):
  """JAX's coordinator service binds [::]:PORT by default: on a shared machine the network could
  reach it. Each process is told the loopback address of the port it is given."""
  stand_in = tmp_path / "python"
  stand_in.write_text('#!/usr/bin/env bash\necho "$JAX_COORDINATOR_BIND_ADDRESS ${*: -3:1}" >> '
                      f'"{tmp_path}/bind.log"\n')
  stand_in.chmod(0o755)
  proc = subprocess.run(["bash", "launch/local_multiprocess.sh", "2", "--workdir", "unused"],
                        cwd=REPO, capture_output=True, text=True, timeout=60,
                        env=dict(os.environ, PYTHON=str(stand_in)))
  assert proc.returncode == 0, proc.stderr
  lines = (tmp_path / "bind.log").read_text().splitlines()
  port = lines[0].split()[0].rsplit(":", 1)[1]
  assert lines == [f"localhost:{port} --config.distributed.coordinator_address=localhost:{port}"] * 2


def test_a_kill_grace_that_is_not_whole_seconds_is_refused_before_anything_starts(tmp_path):
  """Read in the clean-up's arithmetic, '1.5' failed there and left a stuck process running."""
  proc = subprocess.run(["bash", "launch/local_multiprocess.sh", "2", "--workdir", "unused"],
                        cwd=REPO, capture_output=True, text=True, timeout=60,
                        env=dict(os.environ, PYTHON=str(tmp_path / "absent"),
                                 JAXGAN_KILL_GRACE="1.5"))
  assert (proc.returncode, proc.stderr) == (2, "launch/local_multiprocess.sh: JAXGAN_KILL_GRACE "
                                               "must be whole seconds, got '1.5'\n")
  # '08' is a whole number of seconds (bash's arithmetic took it for a bad octal number, and
  # the clean-up after a failed process stopped there, leaving a stuck peer running): the
  # failure's status, its stuck peer killed once the 8 s are up.
  start = time.monotonic()
  proc = _launch(tmp_path, "3late stuck", JAXGAN_KILL_GRACE="08")
  try:
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 3 and time.monotonic() - start > 7.5, err  # the grace waited out
    ready = tmp_path / "ready.1"
    stat = f"/proc/{int(ready.read_text())}/stat"  # gone, or a zombie nobody reaped yet
    assert not os.path.exists(stat) or open(stat).read().rsplit(") ", 1)[1][0] == "Z"
  finally:
    _kill_stand_ins(tmp_path)


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


@pytest.mark.parametrize("statuses, want, sig, stderr", [
    ("stop stop", 75, signal.SIGTERM, "pipe"), ("stop failstop", 1, signal.SIGTERM, "pipe"),
    ("stop stop", 75, signal.SIGHUP, "full"), ("stop stop", 75, signal.SIGINT, "closed pipe")])
def test_a_signal_to_the_launcher_stops_the_processes_gracefully(tmp_path, statuses, want, sig,
                                                                stderr):
  """Ctrl-C or kill on the launcher: SIGTERM to each process, waited for (not killed after a
  fixed grace period while it writes its checkpoint), and 75 when all stopped; a process whose
  stop failed gives its own status. SIGHUP too (it ended the launcher alone, orphaning them).
  Also where its message cannot be written: a terminal gone (here /dev/full), or a pipe whose
  reader is (`| tee log` ended by the same Ctrl-C): the failed message ended the launcher."""
  proc = _launch(tmp_path, statuses,
                 stderr=open("/dev/full", "w") if stderr == "full" else subprocess.PIPE)
  try:
    _started(tmp_path, proc)
    if stderr == "closed pipe":
      proc.stderr.close()
      proc.stderr = None  # for communicate()
    start = time.monotonic()
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == want, err
    assert time.monotonic() - start < 30  # they exited at once: no grace period waited out
  finally:
    _kill_stand_ins(tmp_path)


def test_a_second_ctrl_c_kills_processes_that_do_not_stop_and_a_second_sigterm_does_not(
    tmp_path):
  """Ctrl-C twice quits at once, as it does for one trainer; SIGTERM twice does not (preemption
  notices repeat: the processes may be writing their checkpoint). Each signal is sent once the
  launcher has said it took the one before (two sent while it waits on a `sleep` would arrive as
  one); each line tells a person what it does."""
  err_path = tmp_path / "launcher.err"
  with open(err_path, "w") as err_file:
    proc = _launch(tmp_path, "stuck stuck", stderr=err_file)
  try:
    _started(tmp_path, proc)
    start = time.monotonic()

    def send(sig, line):
      proc.send_signal(sig)
      deadline = time.monotonic() + 30
      while line not in err_path.read_text():
        assert time.monotonic() < deadline and proc.poll() is None, err_path.read_text()
        time.sleep(0.05)

    send(signal.SIGTERM, "SIGTERM received: stopping the processes (each finishes its step")
    send(signal.SIGTERM, "SIGTERM again: still waiting for the processes to stop")
    time.sleep(1.0)  # the launcher still waits for them (the grace period is 60 s)
    assert proc.poll() is None
    send(signal.SIGINT, "SIGINT again: still waiting for the processes to stop (Ctrl-C twice")
    assert proc.poll() is None  # the first Ctrl-C
    proc.send_signal(signal.SIGINT)
    proc.communicate(timeout=30)
    assert proc.returncode == 130, err_path.read_text()
    assert "Ctrl-C again: killing the processes" in err_path.read_text()
    assert time.monotonic() - start < 30
  finally:
    _kill_stand_ins(tmp_path)


# Stand-ins for launch/tpu_pod.sh: `gcloud ... scp FILE TPU:PATH` copies FILE into the fake
# worker's root, `gcloud ... ssh --command CMD` runs CMD there with bash (the worker's shell);
# `python3` there logs its arguments, and `-c 'import jax; ...'` prints the version pip resolved.
FAKE_GCLOUD = """#!/usr/bin/env bash
root="%s"
if [[ " $* " == *" scp "* ]]; then cp "$5" "$root/jaxgan.tar.gz"; exit 0; fi
printf '%%s|' "$@" | sed 's/--command|.*/--command/' >> "$root/gcloud.log"
echo >> "$root/gcloud.log"
while [[ $# -gt 0 && "$1" != --command ]]; do shift; done
cd "$root" && exec bash -c "${2//\\/tmp\\/jaxgan.tar.gz/$root/jaxgan.tar.gz}"
"""
FAKE_PYTHON = """#!/usr/bin/env bash
if [[ "$1" == -c ]]; then echo 0.9.9; exit 0; fi
printf '%%s|' "$@" >> "%s/python.log"; echo >> "%s/python.log"
if [[ -n "${TRAIN_MARK:-}" ]]; then echo "$TRAIN_MARK" >> "$(dirname "$0")/../env.log"; fi
if [[ -n "${HOLD_AT_INSTALL:-}" && "$*" == "-m pip install -q -e ." ]]; then
  # A trainer that starts on this worker meanwhile: holds train.lock (its pid in holder.pid).
  flock train.lock sh -c 'echo $$ > "$HOLD_AT_INSTALL"; exec sleep 60' > /dev/null 2>&1 &
  while [[ ! -s "$HOLD_AT_INSTALL" ]]; do sleep 0.05; done
fi
"""


def _fake_workers(tmp_path) -> dict:
  """The environment that runs launch/tpu_pod.sh against the stand-ins, REPO_DIR tmp_path/w."""
  bin_dir = tmp_path / "bin"
  bin_dir.mkdir()
  for name, text in [("gcloud", FAKE_GCLOUD % tmp_path),
                     ("python3", FAKE_PYTHON % (tmp_path, tmp_path))]:
    (bin_dir / name).write_text(text)
    (bin_dir / name).chmod(0o755)
  return dict(os.environ, PATH=f"{bin_dir}:{os.environ['PATH']}", REPO_DIR=str(tmp_path / "w"))


@pytest.mark.parametrize("spec", [None, "jax[tpu]==0.6.2"])
def test_the_tpu_launcher_pins_jax_and_passes_the_arguments_whole(tmp_path, spec):
  """No upgrade on a rerun: jax[tpu] at the JAX version installing jaxgan resolved (a resume
  keeps its JAX), or JAX_TPU_SPEC as given; the training arguments arrive unsplit."""
  env = _fake_workers(tmp_path)
  if spec:
    env["JAX_TPU_SPEC"] = spec
  proc = subprocess.run(["bash", "launch/tpu_pod.sh", "tpu", "zone", "--", "--workdir",
                         "/mnt/a b"], cwd=REPO, env=env, capture_output=True, text=True,
                        timeout=120)
  assert proc.returncode == 0, proc.stderr
  calls = (tmp_path / "python.log").read_text().splitlines()
  assert calls == ["-m|pip|install|-q|-e|.|", f"-m|pip|install|-q|{spec or 'jax[tpu]==0.9.9'}|",
                   "-m|jaxgan.train|--workdir|/mnt/a b|"
                   "--config.distributed.coordinator_address=auto|"]
  assert (tmp_path / "w" / "launch" / "tpu_pod.sh").exists()  # the checkout, unpacked there
  # Training on a terminal: the session's end reaches the workers as SIGHUP.
  ssh_calls = (tmp_path / "gcloud.log").read_text().splitlines()
  assert ssh_calls[-1].endswith("|--ssh-flag=-tt|--command")


@pytest.mark.parametrize("detach", ["0", "1"])
def test_the_tpu_launcher_passes_train_env_to_the_trainer_alone(tmp_path, detach):
  """The ssh session passes no variables: TRAIN_ENV's reach the trainer (a compilation cache for
  every worker), not pip; a word that is not NAME=VALUE is refused before anything is copied."""
  env = dict(_fake_workers(tmp_path), DETACH=detach,
             TRAIN_ENV="TRAIN_MARK=a'b  JAX_COMPILATION_CACHE_DIR=/mnt/c")
  proc = subprocess.run(["bash", "launch/tpu_pod.sh", "tpu", "zone", "--", "--workdir", "w"],
                        cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
  assert proc.returncode == 0, proc.stderr
  deadline = time.monotonic() + 30  # a detached trainer runs in the background
  while not (tmp_path / "env.log").exists():
    assert time.monotonic() < deadline, "the trainer never saw TRAIN_ENV"
    time.sleep(0.05)
  time.sleep(0.2)
  assert (tmp_path / "env.log").read_text() == "a'b\n"  # once: the trainer's, not pip's
  bad = subprocess.run(["bash", "launch/tpu_pod.sh", "tpu", "zone", "--", "--workdir", "w"],
                       cwd=REPO, env=dict(env, TRAIN_ENV="A=1 oops"), capture_output=True,
                       text=True, timeout=120)
  assert (bad.returncode, bad.stderr) == (2, "launch/tpu_pod.sh: TRAIN_ENV takes NAME=VALUE "
                                             "words, got 'oops'\n")
  assert (tmp_path / "python.log").read_text().count("pip|install|-q|-e") == 1


def test_the_tpu_launcher_copies_what_git_sees(tmp_path):
  """A tar of the whole tree copied a prepared set under data/ (the README's prepare --out), a
  virtual environment and run outputs to every worker: now the files git sees, uncommitted edits
  and new files included, deleted ones left out."""
  checkout = tmp_path / "checkout"
  (checkout / "launch").mkdir(parents=True)
  (checkout / "launch" / "tpu_pod.sh").write_text(open(os.path.join(REPO, "launch",
                                                                     "tpu_pod.sh")).read())
  (checkout / ".gitignore").write_text(open(os.path.join(REPO, ".gitignore")).read())
  for name in ("tracked.py", "deleted.py", "a b.py"):
    (checkout / name).write_text("x = 1\n")
  git = lambda *args: subprocess.run(["git", "-C", str(checkout), *args], check=True,
                                     capture_output=True)
  git("init", "-q")
  git("add", ".")
  (checkout / "deleted.py").unlink()
  (checkout / "tracked.py").write_text("x = 2\n")  # an edit not yet committed
  (checkout / "new_config.py").write_text("x = 3\n")  # a file not yet added
  for ignored in ("data/catalog64/images.npy", ".venv/bin/python", "runs/x/metrics.jsonl"):
    (checkout / ignored).parent.mkdir(parents=True, exist_ok=True)
    (checkout / ignored).write_text("big")
  proc = subprocess.run(["bash", str(checkout / "launch" / "tpu_pod.sh"), "tpu", "zone", "--",
                         "--workdir", "w"], cwd=tmp_path, env=_fake_workers(tmp_path),
                        capture_output=True, text=True, timeout=120)
  assert proc.returncode == 0, proc.stderr
  worker = tmp_path / "w"
  copied = sorted(str(p.relative_to(worker)) for p in worker.rglob("*")
                  if p.is_file() and p.name != "train.lock")  # the worker's own trainer lock
  assert copied == [".gitignore", "a b.py", "launch/tpu_pod.sh", "new_config.py", "tracked.py"]
  assert (worker / "tracked.py").read_text() == "x = 2\n"


@pytest.mark.parametrize("detach", ["0", "1"])
@pytest.mark.parametrize("when", ["before", "during"])
def test_the_tpu_launcher_runs_one_trainer_per_worker(tmp_path, detach, when):
  """A rerun of the script while a detached run goes on, and gcloud's rerun of a command whose ssh
  failed (a dropped session): a worker whose trainer still runs (holds train.lock) gets no new
  code ('before': checked first) and no second trainer ('during': one that started after that
  check), and the script says why (status 73)."""
  (tmp_path / "w").mkdir()
  env = dict(_fake_workers(tmp_path), DETACH=detach)
  holder_pid = tmp_path / "holder.pid"
  if when == "before":
    holder = subprocess.Popen(["flock", str(tmp_path / "w" / "train.lock"), "sh", "-c",
                               f"echo $$ > {holder_pid}; exec sleep 60"])
    deadline = time.monotonic() + 30
    while not holder_pid.exists() or not holder_pid.read_text().strip():
      assert time.monotonic() < deadline, "the lock holder never started"
      time.sleep(0.05)
  else:
    env["HOLD_AT_INSTALL"] = str(holder_pid)
  try:
    proc = subprocess.run(["bash", "launch/tpu_pod.sh", "tpu", "zone", "--", "--workdir", "w"],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
  finally:
    if holder_pid.exists():
      os.kill(int(holder_pid.read_text()), signal.SIGKILL)
    if when == "before":
      holder.wait()
  assert proc.returncode == 73, proc.stderr
  assert "jaxgan: a trainer is already running on " in proc.stderr
  assert "train.lock); wait for it to stop (or stop it) first" in proc.stderr
  log = tmp_path / "python.log"
  calls = log.read_text().splitlines() if log.exists() else []
  # Each check runs before the next step, in the same ssh call: nothing can start after it.
  installs = ["-m|pip|install|-q|-e|.|", "-m|pip|install|-q|jax[tpu]==0.9.9|"]
  assert calls == ([] if when == "before" else installs)
  assert (tmp_path / "w" / "launch").exists() == (when == "during")  # no new code under it


# Stand-ins for launch/slurm_gpu.sbatch: `srun` logs its arguments, with $TIME_UP sends the
# script SLURM's USR1 (the time limit is near) and waits for the scancel it makes, then exits
# with $SRUN_STATUS (the tasks' status); `scontrol` and `scancel` log their arguments.
FAKE_SLURM = """#!/usr/bin/env bash
log="%s/slurm.log"
printf '%%s|' "$(basename "$0")" "$@" >> "$log"; echo >> "$log"
if [[ "$(basename "$0")" == srun ]]; then
  if [[ -n "${TIME_UP:-}" ]]; then
    kill -USR1 "$PPID"
    for _ in $(seq 100); do grep -q '^scancel' "$log" && break; sleep 0.1; done
  fi
  exit "${SRUN_STATUS:-0}"
fi
exit "${SCONTROL_STATUS:-0}"
"""


@pytest.mark.parametrize("status, time_up, requeue, scontrol, want_exit, want_requeue", [
    (75, True, "1", 0, 0, True), (75, True, "1", 1, 75, True), (75, True, "0", 0, 75, False),
    (75, False, "1", 0, 75, False), (0, False, "1", 0, 0, False), (3, True, "1", 0, 3, False)])
def test_the_slurm_script_gives_each_task_its_cores_and_requeues_a_stopped_run(
    tmp_path, status, time_up, requeue, scontrol, want_exit, want_requeue):
  """srun gets --cpus-per-task itself (Slurm >= 22.05 no longer passes sbatch's on) and does not
  kill the other tasks at the first one's exit (a stop's 75 would become their 137); a run
  stopped for the time limit (SLURM's USR1 to the script, which sends the tasks SIGTERM; 75: its
  checkpoint written) is requeued, a failure is not, a failed requeue keeps the 75, and so does a
  stop of anyone else's (`scancel --signal=TERM`: requeued, the job would never end)."""
  bin_dir = tmp_path / "bin"
  bin_dir.mkdir()
  for name in ("srun", "scontrol", "scancel"):
    (bin_dir / name).write_text(FAKE_SLURM % tmp_path)
    (bin_dir / name).chmod(0o755)
  env = dict(os.environ, PATH=f"{bin_dir}:{os.environ['PATH']}", SLURM_JOB_ID="42",
             SLURM_CPUS_PER_TASK="6", SRUN_STATUS=str(status), JAXGAN_REQUEUE=requeue,
             SCONTROL_STATUS=str(scontrol), TIME_UP="1" if time_up else "")
  proc = subprocess.run(["bash", "launch/slurm_gpu.sbatch", "--workdir", "/shared/a b"],
                        cwd=REPO, env=env, capture_output=True, text=True, timeout=60)
  assert proc.returncode == want_exit, proc.stderr
  calls = (tmp_path / "slurm.log").read_text().splitlines()
  assert calls[0] == ("srun|--kill-on-bad-exit=0|--wait=120|--cpus-per-task=6|python|-m|"
                      "jaxgan.train|--workdir|/shared/a b|"
                      "--config.distributed.coordinator_address=auto|")
  assert calls[1:] == (["scancel|--signal=TERM|42|"] if time_up else []) + (
      ["scontrol|requeue|42|"] if want_requeue else [])
