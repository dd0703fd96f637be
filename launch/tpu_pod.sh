#!/usr/bin/env bash
# Runs the same jaxgan training command on every worker of an existing Cloud TPU VM pod slice.
#
#   launch/tpu_pod.sh TPU_NAME ZONE -- --config configs/default.py --workdir /mnt/shared/runs/x
#
# Environment (optional): PROJECT (gcloud project), REPO_DIR (where the code goes on the workers,
# default ~/jaxgan), JAX_TPU_SPEC (default: jax[tpu] at the version of JAX that installing jaxgan
# resolved), TRAIN_ENV (variables for the trainer on every worker, NAME=VALUE words, e.g.
# TRAIN_ENV="JAX_COMPILATION_CACHE_DIR=/mnt/shared/jax-cache": the ssh session passes none;
# values are passed as written, so give absolute paths, not ~ or $HOME). The workdir must be a
# shared POSIX path that every worker can write (an NFS/Filestore mount, or a bucket mounted with
# gcsfuse), since checkpoints are written collectively; gs:// URIs are not supported yet.
#
# Steps: copy this checkout's files that git sees to every worker, install jaxgan with JAX for TPU, then start training
# on all workers at once; jax.distributed detects the pod by itself (coordinator_address=auto).
# Training runs inside the ssh session, on a terminal (ssh -tt; gcloud runs a --command without
# one), so it ends with it: the session's end reaches every worker as SIGHUP (and Ctrl-C a worker
# as SIGINT: a stop on one process stops them all), and each writes its checkpoint and exits
# (status 75). Without the terminal nothing would tell
# the workers, and process 0 would fail on its next write to the closed session. Rerunning this
# script resumes from the last checkpoint. For runs that must outlive the session, DETACH=1
# starts the workers under nohup (SIGHUP ignored, which training keeps), appending to
# REPO_DIR/train.log on each, and returns. Either way a worker runs one trainer at a time (a lock
# on REPO_DIR/train.lock): gcloud runs the command again when ssh fails (a dropped connection),
# and a rerun while a detached run goes on would otherwise start a second one beside it (and
# replace its code first); such a worker gets no code and no trainer, and exits 73 saying so.
set -euo pipefail

if [[ $# -lt 3 || "$3" != "--" ]]; then
  echo "usage: $0 TPU_NAME ZONE -- [jaxgan.train arguments...]" >&2
  exit 2
fi
tpu="$1"
zone="$2"
shift 3
repo_dir="${REPO_DIR:-~/jaxgan}"
read -r -a train_env <<< "${TRAIN_ENV:-}"
for word in ${train_env[@]+"${train_env[@]}"}; do  # checked before anything is copied
  if [[ ! "$word" =~ ^[A-Za-z_][A-Za-z0-9_]*= ]]; then
    echo "$0: TRAIN_ENV takes NAME=VALUE words, got '${word}'" >&2
    exit 2
  fi
done
project_flag=()
[[ -n "${PROJECT:-}" ]] && project_flag=(--project "$PROJECT")
# "${a[@]}" of an empty array fails under set -u on bash < 4.4 (macOS): expand it guarded.
here="$(cd "$(dirname "$0")/.." && pwd)"

ssh_all() {  # ssh_all COMMAND [gcloud flags...]
  local command="$1"
  shift
  gcloud compute tpus tpu-vm ssh "$tpu" --zone "$zone" ${project_flag[@]+"${project_flag[@]}"} --worker=all \
    "$@" --command "$command"
}

# 0. A worker whose trainer still runs (a detached run) keeps its code: nothing is copied.
busy="{ echo \"jaxgan: a trainer is already running on \$(hostname) (it holds \
$repo_dir/train.lock); wait for it to stop (or stop it) first\" >&2; exit 73; }"
ssh_all "[ ! -e $repo_dir/train.lock ] || flock -n $repo_dir/train.lock true || $busy"

# 1. Code: a tarball of the working tree on every worker. In a git checkout, the files git sees
# (tracked, and new ones .gitignore does not exclude; uncommitted edits included): a prepared set
# under data/, a virtual environment or run outputs in the tree stay here (a tar of the whole tree
# copied them to every worker). Elsewhere the tree without .git and run outputs. Never the lock:
# a new file there would not be the one a running trainer holds.
tarball="$(mktemp -t jaxgan.XXXXXX.tar.gz)"
if git -C "$here" rev-parse --is-inside-work-tree > /dev/null 2>&1; then
  # Files deleted but not yet committed are still listed: only those that exist go in.
  git -C "$here" ls-files -z --cached --others --exclude-standard \
    | while IFS= read -r -d '' f; do
        if [[ -e "$here/$f" && "$f" != train.lock && "$f" != train.log ]]; then
          printf '%s\0' "$f"
        fi
      done \
    | tar -C "$here" --null -T - -czf "$tarball"
else
  tar -C "$here" --exclude=.git --exclude=runs --exclude=workdirs --exclude='*.egg-info' \
    --exclude=./train.lock --exclude=./train.log -czf "$tarball" .
fi
gcloud compute tpus tpu-vm scp "$tarball" "$tpu":/tmp/jaxgan.tar.gz --zone "$zone" \
  ${project_flag[@]+"${project_flag[@]}"} --worker=all
rm -f "$tarball"

# 2. Environment: jaxgan and JAX for TPU on every worker (TensorFlow stays CPU-only). The TPU
# extra is pinned to the JAX version pip resolved for jaxgan on that worker, and nothing is
# upgraded: a rerun (a resume) keeps each worker's JAX. A fresh or replaced worker keeps the JAX
# of its image, or without one resolves the newest JAX jaxgan allows, so for a pod whose workers
# may change, pin one version for all with JAX_TPU_SPEC (e.g. 'jax[tpu]==0.6.2', installed as
# given).
if [[ -n "${JAX_TPU_SPEC:-}" ]]; then
  tpu_spec="$(printf '%q' "$JAX_TPU_SPEC")"
else
  tpu_spec="\"jax[tpu]==\$(python3 -c 'import jax; print(jax.__version__)')\""
fi
ssh_all "mkdir -p $repo_dir && tar -xzf /tmp/jaxgan.tar.gz -C $repo_dir && cd $repo_dir && \
  python3 -m pip install -q -e . && python3 -m pip install -q $tpu_spec"

# 3. Train: the same command everywhere; each worker feeds its share of the global batch.
args=""
for a in "$@"; do args+=" $(printf '%q' "$a")"; done
env_words=""
for word in ${train_env[@]+"${train_env[@]}"}; do env_words+=" $(printf '%q' "$word")"; done
train="${env_words:+env$env_words }python3 -m jaxgan.train$args \
--config.distributed.coordinator_address=auto"
if [[ "${DETACH:-0}" == 1 ]]; then
  # Checked here, where the error can be seen; the detached trainer then holds the lock itself.
  # (Separate commands: 'a && b &' would put the check in the background too.)
  ssh_all "cd $repo_dir || exit; flock -n train.lock true || $busy; \
    nohup flock -n train.lock $train >> train.log 2>&1 < /dev/null &"
else
  ssh_all "cd $repo_dir && { flock -n -E 73 train.lock $train || { s=\$?; \
    [[ \$s == 73 ]] && $busy; exit \$s; }; }" --ssh-flag=-tt
fi
