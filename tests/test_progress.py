"""progress: a bar on a terminal, plain lines (with the time left) off one."""

import pytest

from jaxgan import progress


def test_lines_say_what_is_left_a_minute_apart_and_the_end(monkeypatch, capsys):
  """Off a terminal, a line a minute with the time left at the rate so far (an evaluation's
  Inception takes an hour on a CPU), and the end without one."""
  now = [100.0]
  monkeypatch.setattr(progress.time, "monotonic", lambda: now[0])
  lines = progress.Lines("inception (reals)", 5000)
  now[0] += 30
  lines.update(500)  # under a minute since the last line: none
  now[0] += 70
  lines.update(500)
  now[0] += 400
  lines.end()
  assert capsys.readouterr().err.splitlines() == [
      "inception (reals): 1,000/5,000 images, 10.0 img/s, 100 s, ETA 0:06:40",
      "inception (reals): 1,000/5,000 images done, 2.0 img/s, 500 s"]


def test_off_a_terminal_no_bar_redraws_and_the_end_only_when_the_work_completes(capsys):
  """prepare's and generate's bars wrote carriage-return redraws into redirected logs (74 in one
  catalog prepare's); there it is lines now, and a stopped or failed work says no 'done'."""
  with progress.progress(3, "decode") as bar:  # pytest's capture: not a terminal
    bar.update(2)
    bar.update(1)
  err = capsys.readouterr().err
  assert err.startswith("decode: 3/3 images done, ") and "\r" not in err
  assert err.count("\n") == 1
  with pytest.raises(KeyboardInterrupt):
    with progress.progress(3, "decode") as bar:
      bar.update(1)
      raise KeyboardInterrupt
  assert capsys.readouterr().err == ""
  with progress.progress(3, "decode", enabled=False) as bar:  # a handful of images: silent
    bar.update(3)
  assert capsys.readouterr().err == ""


def test_a_line_does_not_start_jaxs_backend():
  """prepare imports JAX but never uses a device: a progress line asking for the process index
  started the backend (on an accelerator host it took the device, or failed without one)."""
  import subprocess
  import sys

  script = ("import jax\n"
            "from jax._src import xla_bridge\n"
            "from jaxgan import progress\n"
            "with progress.progress(3, 'decode') as bar:\n"
            "  bar.update(3)\n"
            "print(xla_bridge.backends_are_initialized())\n")
  done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                        timeout=120, check=False)
  assert done.returncode == 0, done.stderr[-2000:]
  assert done.stdout.strip() == "False" and done.stderr.startswith("decode: 3/3 images done")
