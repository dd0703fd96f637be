"""Stop requests: SIGTERM/SIGINT/SIGHUP (preemption notices, Ctrl-C, a closed terminal or ssh
session) become a flag the training loop checks after each call, and every process stops after
the same step. The other tools (prepare, evaluate, generate) stop at once instead: `Interrupts`
raises, and `raise_if_interrupted` raises again where Python dropped that exception."""

from __future__ import annotations

import contextlib
import os
import signal
from typing import Iterator, Optional

# JAX (via multihost) is imported where a check needs it, not here: the training CLI opens its
# stop request before JAX loads (seconds), so that a signal then is not the process's end.


# The signals that ask for a graceful stop. SIGHUP too: a dropped ssh session (launch/tpu_pod.sh
# runs training in one) would otherwise kill every worker with no checkpoint.
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)

# The exit status of a run stopped by a signal before train.num_steps (EX_TEMPFAIL, "try again"):
# not 0, which job runners (a Kubernetes Job, a retry wrapper) would take for a finished run.
EXIT_STOPPED = 75


@contextlib.contextmanager
def signals_held() -> Iterator[None]:
  """The stop signals held back (blocked) while it lasts, and delivered when it ends: around
  handlers being changed (one landing between installing ours and the flag that says so would
  escape as a traceback), and around loading JAX in the tools whose handler raises (an exception
  raised into the middle of jaxlib's import can leave it half-initialised, and the process then
  crashed with SIGSEGV instead of ending with its one line). Not for long work: a signal is not
  seen until it ends."""
  if not hasattr(signal, "pthread_sigmask"):  # not on Windows
    yield
    return
  before = signal.pthread_sigmask(signal.SIG_BLOCK, set(STOP_SIGNALS))
  try:
    yield
  finally:
    signal.pthread_sigmask(signal.SIG_SETMASK, before)


def _install(handler) -> dict:
  """`handler` for each of STOP_SIGNALS; returns {signal: the handler it replaced}. A signal the
  process was started to ignore stays ignored: `nohup` ignores SIGHUP so that a run outlives its
  terminal, and a handler here would stop it there (a background job's SIGINT likewise)."""
  previous = {}
  for sig in STOP_SIGNALS:
    if signal.getsignal(sig) is signal.SIG_IGN:
      continue
    try:
      previous[sig] = signal.signal(sig, handler)
    except ValueError:  # not the main thread: signals stay with their owner
      pass
  return previous


class _SignalContext:
  """Installs `self._handle` for the stop signals on entry (`_install`) and puts back what it
  replaced on exit. Subclasses define `_handle`."""

  def __init__(self):
    self.signal: Optional[int] = None  # the first stop signal received
    self._previous = {}

  def __enter__(self):
    self._previous = _install(self._handle)
    return self

  def __exit__(self, *exc) -> None:
    for sig, handler in self._previous.items():
      # None: a handler not set from Python, which ours replaced.
      signal.signal(sig, signal.SIG_DFL if handler is None else handler)

  def _handle(self, signum, frame) -> None:
    raise NotImplementedError


class Stopped(Exception):
  """A stop signal arrived while the run was starting: it stopped before its first step
  (nothing trained, so nothing to save); or during its last step, which left the end undone
  (the final evaluation, or the final checkpoint): a rerun finishes it."""


class StopRequest(_SignalContext):
  """A context that holds the first stop signal (STOP_SIGNALS) received while it is open; a
  SIGINT after that one ends the process at once (Ctrl-C twice: quit without waiting). The first
  one's handler arms that, so a process already stuck in the runtime then (which never runs
  Python handlers) needs Ctrl-\\ or kill.

  `check()` is the loop's question "stop after this call?". With several processes every one must
  stop at the same step (the checkpoint and samples are collective), so the answer is agreed: a
  signal seen by any process stops all of them. The local flag is only read, never overwritten,
  so a signal arriving during that exchange is not lost.
  """

  def __init__(self, exchange_every_calls: int = 8):
    # The exchange is an all-gather queued behind the call's step, so the host waits for the step
    # instead of moving the next batch meanwhile: done every few calls (a stop then waits at most
    # that many calls, seconds of a cluster's usual 30 s+ grace period) and when asked to.
    super().__init__()
    self.exchange_every_calls = exchange_every_calls

  def _handle(self, signum, frame) -> None:
    if self.signal is None:  # the first one names the stop
      self.signal = signum
      # Said at once: the stop waits for the step, or for the end of a start-up stage (minutes
      # of decoding). os.write, not print or logging: the handler may interrupt their writes.
      again = " (Ctrl-C to quit at once)" if signal.SIGINT in self._previous else ""
      try:
        os.write(2, f"{signal.Signals(signum).name} received: stopping after this step, "
                    f"start-up stage or evaluation batch{again}\n".encode())
      except OSError:  # no stderr (a daemon) or a full pipe: the stop itself must not fail
        pass
    # From now on Ctrl-C quits at once: the user will not wait for the graceful stop (a hung
    # collective, a long evaluation). The OS's default action, not a Python exception: Python
    # runs handlers only between bytecodes, never while the main thread waits in the runtime.
    # (SIGTERM and SIGHUP keep this handler: preemption notices may repeat.)
    if signal.SIGINT in self._previous:  # not where SIGINT was ignored (a background job)
      signal.signal(signal.SIGINT, signal.SIG_DFL)

  def reinstall(self) -> None:
    """Takes the stop signals back from a library that replaced their handlers: joining
    jax.distributed installs a preemption notifier on SIGTERM that tells Python nothing. (SIGINT
    stays with the OS once a first signal armed Ctrl-C to quit at once.)"""
    for sig in self._previous:
      if not (sig == signal.SIGINT and self.signal is not None):
        signal.signal(sig, self._handle)

  def check(self, call: int, exchange: bool = False) -> Optional[int]:
    """The signal to stop on after call number `call`, or None; the same on every process.

    `exchange` forces the processes' exchange (pass it where the host waits for the step anyway,
    e.g. at log rows); `call` must count alike on every process."""
    import jax  # pylint: disable=g-import-not-at-top

    from jaxgan import multihost  # pylint: disable=g-import-not-at-top

    if jax.process_count() > 1 and not exchange and call % self.exchange_every_calls:
      return None
    return multihost.first_signal(self.signal)

  def check_before_training(self, stage: str) -> None:
    """Raises Stopped if a stop signal reached any process by the end of start-up `stage`
    (agreed: call it at the same points on every process)."""
    signum = self.check(0, exchange=True)
    if signum is not None:
      raise Stopped(f"{signal.Signals(signum).name} received while starting ({stage}): stopped "
                    "before training; rerun to start or resume")


class Terminated(KeyboardInterrupt):
  """SIGTERM (kill, a scheduler's preemption), raised in the main thread as Ctrl-C raises
  KeyboardInterrupt: a subclass, so every clean-up that runs for Ctrl-C runs for it too."""


class HungUp(KeyboardInterrupt):
  """SIGHUP (the terminal or ssh session closed), raised as Ctrl-C raises KeyboardInterrupt."""


class Interrupts(_SignalContext):
  """A context for the tools other than the trainer: the first SIGINT, SIGTERM or SIGHUP raises
  KeyboardInterrupt, `Terminated` or `HungUp` in the main thread, and is remembered. After it,
  Ctrl-C quits at once (the OS's default action, as the trainer's second Ctrl-C: a Python
  exception would cut the first one's clean-up short and could leave decoding workers that the
  exit then waits on),
  and a repeated SIGTERM or SIGHUP is ignored while that clean-up runs. A signal the process was
  started to ignore (a background job's SIGINT, nohup's SIGHUP) stays ignored."""

  SIGNALS = STOP_SIGNALS
  ERRORS = {signal.SIGINT: KeyboardInterrupt, signal.SIGTERM: Terminated, signal.SIGHUP: HungUp}


  def _handle(self, signum, frame) -> None:
    del frame
    if self.signal is not None:
      if signum == signal.SIGINT:  # ours again (a decode put it back): quit at once all the same
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        os.kill(os.getpid(), signal.SIGINT)
      return  # a repeated SIGTERM or SIGHUP: the clean-up runs to its end
    self.signal = signum
    if signal.SIGINT in self._previous:
      signal.signal(signal.SIGINT, signal.SIG_DFL)
    raise self.ERRORS[signum]()

  def error(self) -> Optional[BaseException]:
    """The exception of the signal received, or None."""
    return None if self.signal is None else self.ERRORS[self.signal]()



def raise_if_interrupted() -> None:
  """Raises the exception of a stop signal that an open `Interrupts` received, again. Python
  drops an exception raised while a garbage-collection callback runs (JAX registers one): the
  tool would go on, finish and exit 0. The long loops (decoding, writing shards, Inception
  batches, sampling) call this once per unit of work, and before anything is published. It finds
  the `Interrupts` through the installed handlers (SIGTERM's or SIGHUP's; SIGINT's is the OS's
  after a first signal, so a dropped Ctrl-C in a process started with both ignored is not found):
  a no-op under the trainer's StopRequest, which stops at a step instead."""
  for sig in Interrupts.SIGNALS:
    owner = getattr(signal.getsignal(sig), "__self__", None)
    if isinstance(owner, Interrupts):
      error = owner.error()
      if error is not None:
        raise error
