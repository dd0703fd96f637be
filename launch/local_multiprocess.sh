#!/usr/bin/env bash
# Runs N jaxgan training processes on this machine, joined through jax.distributed (CPU
# collectives), to test multi-process code paths without a cluster.
#
#   launch/local_multiprocess.sh N --config configs/default.py --workdir runs/mp [--config.k=v ...]
#
# Every process gets the same arguments plus its process id; process 0 is the coordinator and the
# only one that writes config.json, metrics, samples and TensorBoard events (each logs its own
# lines to the shared stderr). Checkpoints are written by all of them together.
# The processes run on the CPU (JAX_PLATFORMS=cpu unless set): on a GPU host each would otherwise
# claim every GPU. Exit status: 0 when all finished; 75 when a stop signal stopped them (they stop
# at the same step, checkpointed: rerun to resume); another process's failure otherwise.
# PYTHON: the interpreter command, split into words (default: python; e.g. "taskset -c 1 python");
# JAXGAN_COORDINATOR_PORT: the coordinator's port (default: one the OS reports free);
# JAXGAN_KILL_GRACE: whole seconds the processes get to stop (on a stop signal to this script:
# SIGINT, SIGTERM or SIGHUP; or after one process failed) before they are killed (default 60).
set -euo pipefail

if (( BASH_VERSINFO[0] < 4 || (BASH_VERSINFO[0] == 4 && BASH_VERSINFO[1] < 3) )); then
  echo "$0 needs bash >= 4.3 (wait -n); this is ${BASH_VERSION}" >&2
  exit 2
fi
export JAX_PLATFORMS="${JAX_PLATFORMS:-cpu}"
# Its processes run in this script's background, so SIGINT is ignored in them: a stop signal to
# this script reaches them as SIGTERM. Said so, the trainer does not warn about the SIGINT.
export JAXGAN_LAUNCHER=local_multiprocess
# A message into a pipe whose reader is gone (`... 2>&1 | tee log`, and Ctrl-C ended tee) must
# fail as an error the handlers ignore, not end this script by SIGPIPE and orphan the processes.
trap '' PIPE

if [[ $# -lt 1 || ! "$1" =~ ^[1-9][0-9]*$ ]]; then
  echo "usage: $0 NUM_PROCESSES [jaxgan.train arguments...]" >&2
  exit 2
fi
num="$1"
shift
grace="${JAXGAN_KILL_GRACE:-60}"
if [[ ! "$grace" =~ ^[0-9]+$ ]]; then  # checked now: bash arithmetic on it fails mid-clean-up
  echo "$0: JAXGAN_KILL_GRACE must be whole seconds, got '${grace}'" >&2
  exit 2
fi
grace=$((10#$grace))  # decimal: bash reads '08' as a bad octal number, '010' as 8
# A port the OS reports free now (process 0 binds it moments later, and jaxgan's start names a
# port taken meanwhile): a random one collided with other programs' now and then. python3, not
# $PYTHON: that may be any command (a wrapper); a random port where python3 is missing.
free_port() {
  python3 -c 'import socket; s = socket.socket(); s.bind(("", 0)); print(s.getsockname()[1])' \
    2>/dev/null || echo $((20000 + RANDOM % 20000))
}
port="${JAXGAN_COORDINATOR_PORT:-$(free_port)}"
read -r -a python <<< "${PYTHON:-python}"  # a command with arguments, e.g. taskset -c 1 python

pids=()
running() {
  # Whether process $1 still runs. Not `kill -0` alone: a process that exited while this shell
  # was inside a trap may stay a zombie (not yet reaped here), which `kill -0` reports alive, so
  # a stop whose processes had all exited waited out the whole grace period (seen under load).
  local stat=""
  if [[ -d /proc/self ]]; then
    # `read`, not $(<file): under `set -e` a failed $(<file) (the process reaped meanwhile) ended
    # this script.
    read -r stat 2>/dev/null < "/proc/$1/stat" || return 1  # gone: reaped
    stat="${stat##*) }"
    [[ "${stat:0:1}" != Z ]]
  else
    kill -0 "$1" 2>/dev/null  # no /proc (macOS): the best this shell can tell
  fi
}
cleanup() {
  # SIGTERM (each process finishes its step and writes the agreed checkpoint), then wait for them
  # to exit; SIGKILL only after a grace period, for a process stuck in a collective whose peer is
  # gone.
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  # +1: bash's SECONDS ticks on the wall clock's whole seconds, so SECONDS + grace came up to a
  # second early (a 1 s grace could be none; a test of 8 s saw 7.2 s under load).
  local deadline=$((SECONDS + grace + 1))
  while ((SECONDS < deadline)); do
    local alive=0
    for pid in "${pids[@]}"; do running "$pid" && alive=1; done
    ((alive)) || return 0
    sleep 0.5
  done
  for pid in "${pids[@]}"; do kill -9 "$pid" 2>/dev/null || true; done
}
status=0  # the first failure's exit status (or 75 once a process stopped)
interrupted=0
on_signal() {
  # Ctrl-C or kill on this script: SIGTERM to the processes, waited for. A second Ctrl-C (the
  # processes' "Ctrl-C to quit at once": as background jobs they ignore SIGINT) kills them; a
  # repeated SIGTERM does not (preemption notices repeat, as the trainer assumes too). Its
  # messages may fail (a closed terminal's SIGHUP): `|| true`, or set -e would end this script
  # there and orphan the processes.
  if [[ "$1" == INT ]] && ((interrupted)); then
    echo "local_multiprocess.sh: Ctrl-C again: killing the processes" >&2 || true
    for pid in "${pids[@]}"; do kill -9 "$pid" 2>/dev/null || true; done
    exit 130
  fi
  [[ "$1" == INT ]] && interrupted=1
  if ((${stopping:-0})); then  # already waiting for them
    echo "local_multiprocess.sh: SIG$1 again: still waiting for the processes to stop" \
         "(Ctrl-C twice kills them)" >&2 || true
    return
  fi
  stopping=1
  if [[ "$status" != 0 && "$status" != 75 ]]; then
    echo "local_multiprocess.sh: SIG$1 received while a process's failure (status $status) is" \
         "ending the others; Ctrl-C twice kills them" >&2 || true
  else
    echo "local_multiprocess.sh: SIG$1 received: stopping the processes (each finishes its" \
         "step and writes its checkpoint; Ctrl-C twice kills them)" >&2 || true
  fi
  cleanup
  if [[ "$status" != 0 && "$status" != 75 ]]; then
    exit "$status"  # a failure was being handled when the signal came
  fi
  # 75 when every process stopped so (0: it had finished before; 127: bash no longer knows the
  # status of one that `wait -n` reaped); otherwise the first other status, a failure.
  local result=75 rc
  for pid in "${pids[@]}"; do
    rc=0
    wait "$pid" 2>/dev/null || rc=$?
    if [[ "$rc" != 75 && "$rc" != 0 && "$rc" != 127 && "$result" == 75 ]]; then
      result="$rc"
    fi
  done
  exit "$result"
}
trap 'on_signal INT' INT
trap 'on_signal TERM' TERM
trap 'on_signal HUP' HUP  # a closing terminal or a supervisor: the processes would be orphaned

# The coordinator listens on this host only (JAX's default, [::], would take connections from
# the network on a shared machine), unless JAX_COORDINATOR_BIND_ADDRESS says otherwise.
bind="${JAX_COORDINATOR_BIND_ADDRESS:-localhost:${port}}"
for ((i = 0; i < num; i++)); do
  JAX_COORDINATOR_BIND_ADDRESS="$bind" "${python[@]}" -m jaxgan.train "$@" \
    --config.distributed.coordinator_address="localhost:${port}" \
    --config.distributed.num_processes="${num}" \
    --config.distributed.process_id="${i}" &
  pids+=("$!")
done

# Whichever process ends first: if it failed, the others would wait for it forever. A stopped one
# (75) is waited out: the stop is agreed, so the others are writing the same step's checkpoint.
for ((i = 0; i < num; i++)); do
  rc=0
  wait -n || rc=$?
  if [[ "$rc" == 75 ]]; then
    status=75
  elif [[ "$rc" != 0 ]]; then
    status="$rc"
    cleanup
    break
  fi
done
exit "$status"
