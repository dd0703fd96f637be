"""A training run's start, before anything compiles: the config, weights, workdir and data checked
by every process and agreed (`start_run`, which removes a workdir it made for a run that then
failed to start), and the workdir's run files rewritten for the start step (`write_run_files`)."""

from __future__ import annotations

import contextlib
import logging
import os
import time
from typing import Any, Optional

import jax
import ml_collections
import numpy as np

from jaxgan import atomic_write
from jaxgan import checkpoint as ckpt_lib
from jaxgan import config as config_lib
from jaxgan import data as data_lib
from jaxgan import init_from
from jaxgan import multihost
from jaxgan import run as run_lib
from jaxgan import state as state_lib
from jaxgan import stopping as stopping_lib
from jaxgan import run_folders
from jaxgan import workdir as workdir_lib
from jaxgan import writers
from jaxgan.config import validation as config_validation
from jaxgan.metrics import inception_weights
from jaxgan.metrics import suite as metrics_suite

log = logging.getLogger(__name__)


def start_run(config: ml_collections.ConfigDict, workdir: str, stop: stopping_lib.StopRequest,
              held: contextlib.ExitStack
              ) -> tuple[run_lib.Run, Any, int, int, Optional[init_from.Donor]]:
  """Everything checked before anything compiles: config, weights, workdir (its run lock goes
  into `held`), data (read for its fingerprints: contents and order), and on a run's first start
  `train.init_from`'s arrays; returns (the run, the data source, its fingerprint, its order's
  fingerprint, the donor or None). Agreed: any process's failure raises on all.

  The processes have joined first (alone, a failing process would leave the others in
  jax.distributed's rendezvous); agreed, because a process that fails alone (a data.path or
  weights file missing on its host, files it cannot read) would leave the others waiting in the
  first collective."""
  made_workdir = []  # [the folders this process created: the workdir and those above it]

  def start() -> tuple[run_lib.Run, Any, int, int]:
    run = run_lib.build_run(config)  # validates the config
    if config.train.eval_every:
      try:  # now, not after the first eval_every steps (training only: compile_only needs none)
        inception_weights.find_weights(config.eval.weights)
      except FileNotFoundError as e:
        raise config_lib.ConfigError(f"config key eval.weights: {e} (or set train.eval_every=0)"
                                     ) from None
      _check_cache_dir(config.eval.cache_dir)
    config_validation.validate_schedule(config)
    inside = (data_lib.workdir_problem(config, workdir)
              or run_folders.managed_refusal("--workdir", workdir))
    if inside:  # before it is made there
      raise workdir_lib.WorkdirError(inside)
    made_workdir.append(workdir_lib.prepare_workdir(workdir))
    if jax.process_index() == 0:  # one run per workdir; its other processes are its own
      held.enter_context(workdir_lib.run_lock(workdir))
    _check_not_foreign(workdir)  # before anything is written into it (checkpoints/ included)
    source = data_lib.build_source(config)
    few = metrics_suite.too_few_reals(metrics_suite.parse_names(config.eval.metrics),
                                      getattr(source, "num_examples", None))
    if config.train.eval_every and few:  # every evaluation failed, after its Inception work
      raise config_lib.ConfigError(f"config key train.eval_every: eval.metrics {few}; add "
                                   "images, or set train.eval_every=0")
    return run, source, data_lib.fingerprint(source), data_lib.order_fingerprint(source)

  try:
    run, source, fingerprint, order = multihost.agreed(start, "starting the run")
    check_workdir_shared(workdir, stop)
    donor = None
    # A first start (a resume reads its own checkpoints): the donor's arrays, read now, while a
    # refusal (another model, a damaged step) still leaves no workdir behind. Every process is
    # here (start was agreed): read_donor's collectives meet.
    if config.train.init_from and not multihost.any_process(
        workdir_lib.has_step_folders(workdir)):
      # Agreed as a whole (its reads are agreed one by one too): a refusal that one process
      # reaches from its own view of the files raises on all, and start_run's clean-up below
      # then runs alike everywhere.
      donor = multihost.agreed(lambda: init_from.read_donor(
          _donor_path(config.train.init_from, workdir),
          ckpt_lib.abstract_like(run.abstract_state, run.state_shardings), config.model.name,
          config.data.image_size, state_lib.class_axes(config),
          [[name, list(names)] for name, names in data_lib.attribute_names(source)]),
          "reading train.init_from's checkpoint")
    return run, source, fingerprint, order, donor
  except BaseException as e:
    # Bad data: no empty workdir left behind to puzzle over. After the exchange, so another
    # process is not between creating the folder and probing it.
    held.close()  # the lock file goes too
    created = made_workdir[0] if made_workdir else []
    made = bool(created)
    if multihost.raised_after_agreeing(e):  # every process is here: agree (after each closed
      made = multihost.any_process(made)    # its lock), as any may be the one that made it
    if made:
      workdir_lib.remove_if_empty(workdir)
      atomic_write.remove_empty(created[:-1])  # the folders above it that this process made
    if multihost.raised_after_agreeing(e):
      # A stop signal sent to the whole process group (scancel, a terminal's Ctrl-C while a
      # worker was starting) also ends the decoding workers: then it is the stop, not the error
      # it caused. Only for the errors agreed raises on every process after its exchange, of
      # any type: the check is collective, and a type test would send the failing process and
      # its peers (PeerError) different ways. Its own collective's failure (a dead peer) must
      # not lead into another collective.
      try:
        stop.check_before_training("while starting the run")
      except stopping_lib.Stopped:
        log.warning("starting the run failed after a stop signal (%s: %s)", type(e).__name__, e)
        raise
    raise


# How long a process looks for the file process 0 wrote into the workdir: a network file system
# may cache "no such file" for its attribute timeout (NFS: acdirmax, 60 s by default).
SHARED_WORKDIR_WAIT_S = 90.0
_PROBE_PREFIX = ".shared-check-"


def check_workdir_shared(workdir: str, stop: stopping_lib.StopRequest) -> None:
  """Raises WorkdirError on every process when some process does not see a file process 0 wrote
  into `workdir`: a path local to each host, or a --workdir that differs between processes,
  trained on and then hung in the first checkpoint's save (orbax waits 10 minutes there for
  the folders process 0 makes, and a stop signal cannot end it). A stop signal ends the wait
  (stopping.Stopped on every process)."""
  if jax.process_count() == 1:
    return
  nonce = multihost.from_process_0(np.frombuffer(os.urandom(8), np.uint32).copy())
  probe = os.path.join(workdir, f"{_PROBE_PREFIX}{nonce[0]:08x}{nonce[1]:08x}")

  def write() -> None:
    if jax.process_index() == 0:
      for name in os.listdir(workdir):  # left by a process 0 killed in here; not a probe that
        path = os.path.join(workdir, name)  # might be live (locks may be per host: NFS, gcsfuse)
        with contextlib.suppress(OSError):
          if (name.startswith(_PROBE_PREFIX)
              and time.time() - os.path.getmtime(path) > 2 * SHARED_WORKDIR_WAIT_S):
            os.remove(path)
      with open(probe, "w", encoding="utf-8") as f:
        f.write("written by process 0 as the run starts: every process must see this file\n")

  try:
    multihost.agreed(write, "writing a file into the workdir")  # its exchange: written before read
    deadline = time.monotonic() + SHARED_WORKDIR_WAIT_S
    while not os.path.exists(probe) and time.monotonic() < deadline and stop.signal is None:
      time.sleep(0.5)
    seen = multihost.all_gather(np.int32(os.path.exists(probe)))
  finally:
    if jax.process_index() == 0:
      with contextlib.suppress(OSError):
        os.remove(probe)
  blind = [i for i, v in enumerate(seen.ravel()) if not v]
  if blind:
    stop.check_before_training("while checking that every process sees the workdir")
    raise workdir_lib.WorkdirError(
        f"--workdir {workdir}: process(es) {', '.join(map(str, blind))} do not see the file "
        f"process 0 wrote there within {SHARED_WORKDIR_WAIT_S:.0f} s: every process must be "
        "given the same folder, one that all hosts share (a network file system, a bucket "
        "through gcsfuse); a folder local to each host would hang in the first checkpoint")


def _check_cache_dir(cache_dir: str) -> None:
  """Refuses an eval.cache_dir that is a file, or below one: each evaluation's caching of the
  reals' features failed with a warning (and every start extracted them again)."""
  problem = config_lib.not_a_folder(cache_dir)
  if problem:
    raise config_lib.ConfigError(f"config key eval.cache_dir: {problem}; set a folder (or '' for "
                                 "the default)")


def _donor_path(named: str, workdir: str) -> str:
  """Where a first start reads train.init_from (`named`): the step folder that `workdir`'s
  config.json records where an earlier first start stopped before its first checkpoint and
  `named` is that step's run again (its workdir or checkpoints folder), so that the run starts
  over as it began, as an uninterrupted one would have, not from a step its donor has trained
  since; `named` otherwise, and where that step is gone (warned of)."""
  try:
    with open(os.path.join(workdir, "config.json"), encoding="utf-8") as f:
      recorded = os.path.normpath(config_lib.from_json(f.read()).train.init_from or ".")
  except (OSError, ValueError):  # a new run's (none), or one _check_not_foreign refused
    return named
  if not os.path.basename(recorded).isdecimal():  # none, or an older run's record of a workdir
    return named
  try:
    folder, step = init_from.locate(named)  # the checkpoints folder it names, as read_donor
  except config_lib.ConfigError:  # none there: read_donor says so
    return named
  if step is not None or os.path.realpath(folder) != os.path.realpath(os.path.dirname(recorded)):
    return named  # a step folder named (that one is read), or another donor
  try:
    init_from.locate(recorded)
  except config_lib.ConfigError:
    log.warning("train.init_from: step folder %s, which this run's first start read (its "
                "config.json records it), is gone: reading %s's latest step instead", recorded,
                named)
    return named
  log.info("train.init_from: %s again, the step folder this run's first start read (its "
           "config.json records it; a step folder named reads that one)", recorded)
  return recorded


def _check_not_foreign(workdir: str) -> None:
  """Raises WorkdirError when `workdir` has no checkpoint and a config.json that is not a
  jaxgan run's: another tool's folder, whose config.json and metrics rows the run would
  overwrite without a word (a jaxgan run killed before its first checkpoint is started over)."""
  config_path = os.path.join(workdir, "config.json")
  if workdir_lib.has_step_folders(workdir) or not os.path.exists(config_path):
    return
  if not os.path.isfile(config_path):  # a pipe: open() below waited for a writer forever
    raise workdir_lib.WorkdirError(f"--workdir {workdir}: its config.json is not a file; move it "
                                   "away, or pass another --workdir")
  try:
    with open(config_path, encoding="utf-8") as f:
      config_lib.from_json(f.read())
  except (OSError, ValueError) as e:
    raise workdir_lib.WorkdirError(
        f"--workdir {workdir} holds a config.json this jaxgan cannot read as a run's ({e}), "
        "and no checkpoint: pass a new --workdir, or delete that config.json to train here"
        ) from None


def write_run_files(config: ml_collections.ConfigDict, workdir: str, start_step: int) -> None:
  """WORKDIR/config.json, and metrics.jsonl and the TensorBoard events cut back to `start_step`:
  written by process 0, agreed (as everything local before a collective)."""

  def write() -> None:
    if jax.process_index() != 0:
      return
    try:
      write_files()
    except OSError as e:  # a full disk at a resume: one line, not a traceback
      name = os.path.basename(e.filename or "").removesuffix(".tmp")  # the file it replaces
      raise workdir_lib.WorkdirError(
          f"--workdir {workdir}: writing {name or 'metrics.jsonl and config.json'} failed "
          f"({e.strerror or e}); make room there (or make it writable), or move the run to a "
          "folder that is, and rerun") from e

  def write_files() -> None:
    config_path = os.path.join(workdir, "config.json")
    # Rows after the start step are logged again (also when a run killed before its first
    # checkpoint starts over), and a row cut short by a kill must not swallow the next one.
    logged_to = writers.drop_rows_after(workdir, start_step)
    if logged_to is not None:  # a kill (or a failed checkpoint write) after the last checkpoint
      log.warning("metrics.jsonl has rows to step %d, %s: steps %d to %d are trained again "
                  "(%d steps lost)", logged_to,
                  f"past the checkpoint resumed (step {start_step})" if start_step
                  else "but no checkpoint", start_step + 1, logged_to, logged_to - start_step)
    # Also with TensorBoard off now: a later resume with it on would show those steps' events.
    writers.drop_events_after(workdir, start_step)
    try:
      with open(config_path + ".tmp", "w", encoding="utf-8") as f:
        f.write(config_lib.to_json(config))
      # Readers (generate) never see half a file, nor an empty one after a host crash.
      atomic_write.publish(config_path + ".tmp", config_path)
    except BaseException:
      with contextlib.suppress(OSError):
        os.remove(config_path + ".tmp")
      raise

  multihost.agreed(write, "writing the workdir's config.json and metrics.jsonl")
