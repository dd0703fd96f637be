"""The training loop: wires config, data, state, the jitted step and the outputs together.

It orchestrates only; the math lives in steps.py, models/ and losses.py.
"""

from __future__ import annotations

import collections
import contextlib
import logging
import os
import signal
import sys
import time
from typing import Any, Optional

import jax
import ml_collections
import numpy as np

from jaxgan import checkpoint as ckpt_lib
from jaxgan import config as config_lib
from jaxgan import console
from jaxgan import data as data_lib
from jaxgan import evaluator as evaluator_lib
from jaxgan import init_from
from jaxgan import multihost
from jaxgan import periodic_eval
from jaxgan import restore
from jaxgan import run as run_lib
from jaxgan import run_health
from jaxgan import run_log
from jaxgan import sample_grids
from jaxgan import sampling
from jaxgan import sharding
from jaxgan import state as state_lib
from jaxgan import startup
from jaxgan import stopping as stopping_lib
from jaxgan import train_progress
from jaxgan import writers
from jaxgan.metrics import inception_weights
from jaxgan.run_health import TrainingError

log = logging.getLogger(__name__)

# Steps the host may dispatch ahead of the device: enough to hide its per-call work and pauses,
# few enough that queued batches (each on the device from its dispatch) stay a few batches.
MAX_STEPS_AHEAD = 4


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str,
                       allow_config_change: bool = False,
                       stop: Optional[stopping_lib.StopRequest] = None) -> state_lib.TrainState:
  """Trains until `train.num_steps`, resuming from WORKDIR/checkpoints when present; returns the
  final state. A run stopped by SIGTERM/SIGINT/SIGHUP returns early, its state's step short of
  `train.num_steps` (the CLI then exits with stopping.EXIT_STOPPED); one stopped while starting
  raises stopping.Stopped before its first step, and so does one stopped in its last step
  before its end (the final evaluation, or a checkpoint that could not be written). `stop`: a
  stop request its caller opened earlier (the CLI's, before JAX loads); else it opens its own."""
  # jax.distributed is joined first (where configured): it installs its own SIGTERM handler (a
  # preemption notifier that keeps the process alive and tells Python nothing), so the stop
  # request opens after it (or, opened by the caller, takes its handlers back) and stays open to
  # the end, not around the loop only: a stop signal during start-up (data, restore, Inception:
  # minutes) then stops the run at the next start-up stage, where it was lost and the run trained.
  with contextlib.ExitStack() as scope:
    earlier = scope.enter_context(run_log.held_back())  # log.txt's first lines, once it opens
    run_lib.join_processes(config)
    if stop is None:
      stop = scope.enter_context(stopping_lib.StopRequest())
    else:
      stop.reinstall()
      stop.check_before_training("while loading the trainer")  # before the config is read
    # Stored so in config.json and the checkpoints: `evaluate --workdir` may run from elsewhere.
    config = config_lib.with_absolute_paths(config)
    # data.num_classes=-1 becomes the prepared set's counts here (agreed: the first exchange),
    # stored resolved in config.json and the checkpoints.
    config = run_lib.resolve_class_counts(config)
    with contextlib.ExitStack() as held:
      return _train(config, workdir, allow_config_change, stop, held, earlier)


def _train(config: ml_collections.ConfigDict, workdir: str, allow_config_change: bool,
           stop: stopping_lib.StopRequest, held: contextlib.ExitStack,
           earlier: run_log.HeldLines) -> state_lib.TrainState:
  """train_and_evaluate's work, with the stop request open; the workdir's run lock goes into
  `held` (released when the run ends, however it ends); `earlier`: the lines logged so far."""
  run, source, data_fingerprint, order, donor = startup.start_run(config, workdir, stop, held)
  is_main = jax.process_index() == 0
  cfg = config.train
  interactive = sys.stderr.isatty()  # else a log file (a cluster job): lines, not a bar
  progress_log = held.enter_context(run_log.run_log(workdir, is_main, not interactive, earlier))
  stop.check_before_training("after reading the data")  # log.txt says so, after the data's lines
  content = data_lib.content_digest(source)  # every image, where the fingerprint samples 64
  if jax.process_count() > 1:
    data_lib.check_same_on_every_process(source, content, order)

  # Each closer goes into `held` as its object is made: closed in reverse when the run ends,
  # however it ends, a failure while starting (Inception's weights, say) included.
  checkpointer = ckpt_lib.Checkpointer(os.path.join(workdir, "checkpoints"), cfg.keep_checkpoints)
  held.callback(checkpointer.close)

  k = run.steps_per_call
  devices = restore.devices_record(run.mesh)  # what computed each step, as its meta records
  # [[attribute, class names]] as the checkpoints' meta holds them (JSON lists).
  attributes = [[name, list(names)] for name, names in data_lib.attribute_names(source)]
  start_step, state, donor_named = _initial_state(
      checkpointer, run, config, workdir, allow_config_change, attributes, stop, donor,
      (data_fingerprint, order, devices, content))
  del donor  # its arrays are the state's now
  startup.write_run_files(config, workdir, start_step)
  log.info("%s", run_log.start_line(config, start_step, state, source, run.mesh, workdir))
  # A stop request leaves an ignored SIGINT so; a launcher that forwards stops as SIGTERM says so.
  if (is_main and signal.getsignal(signal.SIGINT) is signal.SIG_IGN
      and not os.environ.get("JAXGAN_LAUNCHER")):
    log.warning("SIGINT is ignored in this process (a job a script started in the background): "
                "Ctrl-C and kill -INT do not stop it; stop it with SIGTERM (kill %d)", os.getpid())

  # This process loads the rows of each global batch that its devices hold (by position, so the
  # global batch is the same under any process layout and device order).
  rows_per_step = cfg.batch_size * cfg.n_critic
  rows = sharding.process_rows(sharding.batch_sharding(run.mesh), rows_per_step)
  batches = data_lib.prefetch(data_lib.stack_batches(
      source.batches(rows_per_step, start_step, rows), k))
  # Stops the input thread when the run ends, not when the generator is collected: a kept
  # traceback (a notebook's last error) holds this frame, and the thread would go on reading.
  held.callback(batches.close)
  label_counts = sampling.label_counts(getattr(source, "labels", None))  # the data's label mix
  writer = writers.MetricsWriter(workdir, enabled=is_main, tensorboard=cfg.tensorboard)
  held.callback(writer.close)
  grids = sample_grids.SampleGrids(config, run, attributes, label_counts, workdir, writer, is_main)

  def meta(step: int) -> dict:
    return {"config": config.to_dict(), "class_names": list(source.class_names),
            "attributes": attributes,
            "step": step, "data_position": step, "data_fingerprint": data_fingerprint,
            restore.DATA_CONTENT_KEY: content,
            "order_fingerprint": order, restore.DEVICES_KEY: devices,
            **({"label_counts": label_counts} if label_counts else {}),
            **({restore.DONOR_NAMED_KEY: donor_named} if donor_named else {})}

  evaluate = _periodic_eval(config, workdir, run, source, grids, stop, writer, meta, start_step,
                            data_fingerprint, order) if cfg.eval_every else None
  if evaluate:
    held.callback(evaluate.close)

  step = start_step
  progress = train_progress.TrainingProgress(cfg, start_step, source, writer, progress_log,
                                             interactive)
  held.callback(progress.close)
  started = time.perf_counter()
  in_flight: collections.deque = collections.deque()  # the newest calls' outputs
  max_calls_ahead = max(1, MAX_STEPS_AHEAD // k)
  longest_streak: Any = np.int32(0)  # since the last check (any call's, not just the last)
  saved = False  # whether the latest checkpoint save could be started
  # The last start-up stage (the state initialised or restored, Inception loaded): a signal
  # that came during it stops the run here, not after the first calls (or a start-of-run
  # evaluation) and their checkpoint.
  stop.check_before_training("before the first step")
  if start_step:
    _catch_up(start_step, state, cfg, grids, evaluate, workdir, stop, is_main)
  while step < cfg.num_steps:
    host_batch = next(batches)
    grids.save_reals(step, host_batch)
    batch = sharding.put_batch(host_batch, run.batch_sharding, rows_per_step)
    state, metrics = run.train_step(state, batch)
    in_flight.append(metrics["nonfinite_streak"])
    longest_streak = run_health.longest_streak(longest_streak, metrics["nonfinite_streak"])
    if len(in_flight) > max_calls_ahead:
      jax.block_until_ready(in_flight.popleft())  # waits, reads nothing back
    step += k
    progress.called(step, k, metrics, stacked=k > 1)
    # Read the flag once per call: a signal that lands after this line (say while the log
    # row is written) must wait for the next call, not stop this one without its checkpoint.
    eval_due = evaluate is not None and (step % cfg.eval_every == 0 or step == cfg.num_steps)
    # Also at each checkpoint (every one an evaluation writes too): a resume from it logs the
    # steps after it again, and would miss those since the last row, kept in memory only.
    row = (step % cfg.log_every == 0 or step == cfg.num_steps
           or step % cfg.checkpoint_every == 0 or eval_due)
    # Log rows wait for the step anyway; before an evaluation a late stop would cost minutes.
    stopping = stop.check(step // k, exchange=row or eval_due)
    last = step == cfg.num_steps or stopping is not None
    logged = row or last
    if logged:
      jax.block_until_ready(metrics)  # the row's time ends with its step, not with the fetch
      # Before the check below: the row shows the losses.
      progress.write_row(step)
    # Also before an evaluation: it takes minutes in which a preemption notice waits, and a
    # kill then would cost every step since the last checkpoint.
    checkpoint_due = step % cfg.checkpoint_every == 0 or last or eval_due
    sample_due = step % cfg.sample_every == 0 or step == cfg.num_steps
    if (checkpoint_due or sample_due) and not (row or last):
      # Inside a row's interval: images/s times training, not this checkpoint, grid or
      # evaluation (the step's own work is waited for first, and counted).
      jax.block_until_ready(metrics)
      progress.pause()
    if row or checkpoint_due:
      # Only where the loop waits for the step anyway (not every call, which would keep the
      # host one call ahead at most), and before any checkpoint past the limit is written.
      # Skipped steps leave the weights as they were, so a late stop loses nothing.
      run_health.check_nonfinite(longest_streak, step, cfg.max_nonfinite_steps, checkpointer,
                                 cfg.dtype)
      longest_streak = np.int32(0)
    # The checkpoint first (its write is asynchronous and overlaps what follows): on a stop
    # request it is what the grace period is for.
    if checkpoint_due:
      saved = checkpointer.save(step, state, meta(step))
      if not last:  # a stop and the end report their own failed write
        run_health.check_checkpoint_writes(checkpointer)
    if sample_due:
      grids.save(step, state)
    # Not on a stop request: the grace period is for the checkpoint, not minutes of Inception.
    evaluated = False
    if eval_due and stopping is None:
      # Cut short by a stop request that comes meanwhile ({} then, and no row), which is taken
      # here, after the checkpoint written before the evaluation (collective: eval_due is
      # alike on every process).
      evaluated = bool(evaluate(step, state))
      stopping = stop.check(step // k, exchange=True)
      last = last or stopping is not None
    if checkpoint_due or sample_due:  # the bar's rate and ETA time training, as the rows do
      progress.resume()
    # (A stop that came during the evaluation needs no row of its own: every evaluation step
    # is a row step, logged before it.)
    if logged:
      progress.next_row()
    if stopping is not None:
      progress.close()  # its line ended before the stop's lines, not joined to them
      # `last` holds here, so this step's save was tried.
      _report_stop(stopping, step, cfg.num_steps, checkpointer, saved,
                   eval_skipped=eval_due and not evaluated)
      break
  else:
    progress.close()  # on a terminal the closing lines were appended to the bar's line
    written = checkpointer.wait() and saved  # waited for on every process alike
    if step > start_step and not multihost.all_processes(written):
      raise TrainingError(
          f"trained to step {step}, but its checkpoint could not be written to "
          f"{checkpointer.directory} (error above); a rerun resumes from "
          f"{run_health.resume_point(checkpointer)} and writes it: free space or fix the "
          "storage first")
    # Also where the run started complete (a rerun, one that evaluated its last step): log.txt
    # says how every start ended.
    log.info("done: step %d of %d, %s; checkpoints in %s, sample grids in %s", step,
             cfg.num_steps, f"{step - start_step} steps in "
             f"{run_log.duration(time.perf_counter() - started)}" if step > start_step
             else "nothing left to train", checkpointer.directory,
             os.path.abspath(os.path.join(workdir, "samples")))
  return state


def _initial_state(checkpointer: ckpt_lib.Checkpointer, run: run_lib.Run,
                   config: ml_collections.ConfigDict, workdir: str, allow_config_change: bool,
                   attributes: list, stop: stopping_lib.StopRequest, donor: Any,
                   recorded: tuple) -> tuple[int, state_lib.TrainState, str]:
  """(start step, state, the donor as the command line named it or '') of a run: restored from
  its latest readable checkpoint (warning about what changed since: `recorded` is this start's
  data fingerprint, order fingerprint, devices and content digest), else initialised, from
  `donor`'s weights where given (transfer learning)."""
  restored = restore.restore_run(checkpointer, run, config, workdir, allow_config_change,
                                 attributes)
  stop.check_before_training("after restoring the checkpoint")  # before anything compiles
  if restored is not None:
    start_step, state, meta = restored
    data_fingerprint, order, devices, content = recorded
    restore.warn_about_changes(meta, start_step, workdir, config, data_fingerprint, order,
                               devices, content)
    restore.keep_first_start_keys(meta, config)
    checkpointer.prune(start_step)
    return start_step, state, meta.get(restore.DONOR_NAMED_KEY, "")
  state = run.make_state()
  if donor is None:
    return 0, state, ""
  state = init_from.initialise_from(state, donor, attributes)
  # Recorded (config.json, every checkpoint's meta) as the step folder read, not the workdir
  # named, whose latest step moves on while that run trains; what was named, in the meta (a
  # resume whose command line names it again is not warned about).
  donor_named, config.train.init_from = config.train.init_from, donor.folder
  return 0, state, donor_named


def _periodic_eval(config: ml_collections.ConfigDict, workdir: str, run: run_lib.Run, source: Any,
                   grids: sample_grids.SampleGrids, stop: stopping_lib.StopRequest,
                   writer: writers.MetricsWriter, meta: Any, start_step: int,
                   data_fingerprint: str, order: str) -> periodic_eval.PeriodicEval:
  """The run's evaluations every `train.eval_every` steps, with the Inception weights loaded."""
  # Each host loads (and may convert) the Inception weights: agreed before the collectives.
  # Each device samples its share of the fakes (not all of them, as the grids' sampler does).
  try:
    evaluator = multihost.agreed(lambda: evaluator_lib.Evaluator(
        config, run.generator, source, batch_sharding=sharding.batch_sharding(run.mesh),
        statistics=grids.statistics, should_stop=lambda: stop.signal is not None),
        "loading the Inception weights")
  except inception_weights.WeightsError as e:  # a damaged file: found before the first step
    raise config_lib.ConfigError(f"config key eval.weights: {e}") from None
  return periodic_eval.PeriodicEval(config, workdir, evaluator, writer, meta, start_step,
                                    data_fingerprint, order)


def _catch_up(start_step: int, state: state_lib.TrainState, cfg: ml_collections.ConfigDict,
              grids: sample_grids.SampleGrids, evaluate: Optional[periodic_eval.PeriodicEval],
              workdir: str, stop: stopping_lib.StopRequest, is_main: bool) -> None:
  """What a resumed step was due and may lack: its sample grid and its evaluation."""
  if start_step % cfg.sample_every == 0 or start_step == cfg.num_steps:
    # A run killed while drawing a due grid (its checkpoint was already written) draws it now.
    if multihost.from_process_0(is_main and not os.path.exists(grids.path(start_step))):
      grids.save(start_step, state)
  if evaluate and (start_step % cfg.eval_every == 0 or start_step == cfg.num_steps):
    # A run stopped at a due step (a stop skips the evaluation) or killed while evaluating it
    # resumes exactly there: evaluate that step now, unless it has a successful eval row (every
    # one holds eval/num_samples; a failed one, eval/failed only, is retried).
    if multihost.from_process_0(is_main and not periodic_eval.has_eval_row(workdir, start_step)):
      evaluate(start_step, state)
      # A stop that cut it short stops the run here: training on would checkpoint a later step,
      # and this one would never be evaluated.
      stop.check_before_training(f"evaluating the resumed step {start_step}")


def _report_stop(signum: int, step: int, num_steps: int, checkpointer: ckpt_lib.Checkpointer,
                 saved: bool, eval_skipped: bool) -> None:
  """Says that signal `signum` stopped the run after `step`, whose checkpoint save was tried
  (`saved`: it could be started); raises stopping.Stopped where that was the last step but not
  the run's end (its evaluation skipped, or its checkpoint unwritten). Collective."""
  name = signal.Signals(signum).name
  written = multihost.all_processes(checkpointer.wait() and saved)  # all say and do alike
  if written:
    msg = f"{name} received: stopped after step {step}, checkpoint written; rerun to resume"
  else:
    msg = (f"{name} received: stopped after step {step}, but its checkpoint could not be "
           f"written (error above); a rerun resumes from {run_health.resume_point(checkpointer)}")
  if step == num_steps and (eval_skipped or not written):
    # The last step, not the end (its evaluation or checkpoint left): a caller judging by the
    # step would take the run for finished (train's exit status 0, never rerun).
    raise stopping_lib.Stopped(msg + (" (its evaluation was skipped: the rerun runs it)"
                                      if eval_skipped and written else ""))
  if step == num_steps:  # nothing left: the run is complete (exit status 0)
    msg = (f"{name} received during the last step: the run is complete (step {step}, "
           "checkpoint written)")
  if jax.process_index() == 0:
    console.report(msg, log)
  else:
    log.warning(msg)
