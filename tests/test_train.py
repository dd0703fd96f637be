"""End to end: the training loop's outputs, resume, determinism, generate, and the CLIs."""

import io
import json
import logging
import os
import re
import shutil
import subprocess
import sys
import time
from unittest import mock

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxgan import evaluate, generate, generation, label_choices, restore, sample_inputs
from jaxgan import sampling, train_progress, trainer
from jaxgan import data as data_lib, writers
from jaxgan import run as run_lib, run_folders, saved_run, workdir as workdir_lib
from jaxgan.data import image_sets
from jaxgan.checkpoint import CheckpointError
from jaxgan.data.arrays import DataError
from tests.conftest import REPO, run_module, tiny_config, xla_flags


def _leaves(state):
  return [np.asarray(x) for x in jax.tree_util.tree_leaves(jax.device_get(state))]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
  """A 4-step run, and the same run stopped at step 2 and resumed to step 4."""
  root = tmp_path_factory.mktemp("runs")
  full = trainer.train_and_evaluate(tiny_config(), str(root / "full"))
  trainer.train_and_evaluate(tiny_config(**{"train.num_steps": 2}), str(root / "resumed"))
  restored, real_restore = [], restore.restore_run
  with pytest.MonkeyPatch.context() as patch:  # records what the second run started from
    patch.setattr(restore, "restore_run",
                  lambda *a: restored.append(real_restore(*a)) or restored[-1])
    resumed = trainer.train_and_evaluate(tiny_config(), str(root / "resumed"))
  (root / "resumed_from").write_text(str(restored[0][0] if restored[0] else None))
  return root, full, resumed


def test_outputs(runs):
  root, _, _ = runs
  workdir = root / "full"
  rows = writers.read_metrics(str(workdir))
  assert [r["step"] for r in rows] == [2, 4]
  for row in rows:
    assert {"d_loss", "g_loss", "images_per_sec", "images_seen"} <= set(row)
    assert np.isfinite(row["d_loss"]) and np.isfinite(row["g_loss"])
    # The process's memory (a CPU backend reports no device peak: no key, not a NaN curve).
    assert 0.01 < row["memory/host_gb"] < 64
    assert ("memory/device_peak_gb" in row) == (jax.default_backend() != "cpu")
  assert rows[-1]["images_seen"] == 4 * 8
  assert rows[0]["timestamp"] <= rows[1]["timestamp"]
  assert sorted(os.listdir(workdir / "samples")) == ["reals.png", "rows.txt", "step_0000002.png",
                                                      "step_0000004.png"]
  from PIL import Image
  grid = Image.open(workdir / "samples" / "step_0000004.png")
  # One row per class (3), samples_per_class (2) columns of 16 px plus 2 px gutters.
  assert grid.size == (2 * 18 + 2, 3 * 18 + 2)
  # Beside them, training images laid out alike: row c the first batch's first 2 of class c
  # (grey cells where it has fewer).
  first = next(data_lib.build_source(tiny_config()).batches(8, 0))
  cells = np.full((6,) + first["image"].shape[1:], sampling.GUTTER, np.uint8)
  for c in range(3):
    mine = first["image"][first["label"] == c][:2]
    cells[2 * c:2 * c + len(mine)] = mine
  want = sampling.make_grid(cells, 2)
  assert np.array_equal(np.asarray(Image.open(workdir / "samples" / "reals.png")), want)
  assert not np.array_equal(want, sampling.make_grid(first["image"][:6], 2))  # labels mixed
  # Which row is which class: the grids carry no text.
  _, _, _, meta = saved_run.load_checkpoint(str(workdir))
  (attribute, names), = meta["attributes"]
  per = "class" if attribute == "class" else f"{attribute} class"
  assert (workdir / "samples" / "rows.txt").read_text() == (
      f"sample grids (step_*.png) and reals.png: a row per {per}, top to bottom\n"
      + "".join(f"row {i}: {name}\n" for i, name in enumerate(names)))
  assert sorted(os.listdir(workdir / "checkpoints")) == ["2", "4"]
  assert json.load(open(workdir / "config.json"))["train"]["num_steps"] == 4
  events = os.listdir(workdir / "tensorboard")
  assert events and events[0].startswith("events.out.tfevents")


def test_resumed_run_is_bit_identical_to_uninterrupted(runs):
  root, full, resumed = runs
  assert int(resumed.step) == 4
  # Resumed at step 2 (a fresh start would end bit-identical too: the runs are deterministic).
  assert (root / "resumed_from").read_text() == "2"
  a, b = _leaves(full), _leaves(resumed)
  assert len(a) == len(b) and all(np.array_equal(x, y) for x, y in zip(a, b))
  # The resumed run's log is continuous, not duplicated.
  assert [r["step"] for r in writers.read_metrics(str(root / "resumed"))] == [2, 4]


def test_several_steps_per_call_train_the_same_steps(runs, tmp_path):
  """train.steps_per_call=2 (a lax.scan over two stacked batches): the same steps, keys and
  batches as one step per call, and the log rows summarise the same steps."""
  root, full, _ = runs
  workdir = tmp_path / "scan"
  scanned = trainer.train_and_evaluate(tiny_config(**{"train.steps_per_call": 2}), str(workdir))
  assert int(scanned.step) == 4
  for x, y in zip(_leaves(full), _leaves(scanned)):
    np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-6)
  rows, reference = writers.read_metrics(str(workdir)), writers.read_metrics(str(root / "full"))
  assert [r["step"] for r in rows] == [2, 4] and rows[-1]["images_seen"] == 4 * 8
  for row, ref in zip(rows, reference):
    assert row["d_loss"] == pytest.approx(ref["d_loss"], rel=1e-5)
  assert sorted(os.listdir(workdir / "checkpoints")) == ["2", "4"]
  # A checkpoint step that is not a multiple of steps_per_call cannot be resumed with it.
  with pytest.raises(trainer.TrainingError, match="not a multiple of train.steps_per_call=3"):
    trainer.train_and_evaluate(tiny_config(**{
        "train.steps_per_call": 3, "train.num_steps": 6, "train.log_every": 3,
        "train.sample_every": 3, "train.checkpoint_every": 3}), str(workdir))


def test_a_due_sample_grid_lost_to_a_kill_is_drawn_on_resume(runs, tmp_path):
  """Killed after the final checkpoint but while its grid was drawn: the rerun (nothing left to
  train) draws that grid, the same image an uninterrupted run wrote."""
  root, _, _ = runs
  copy = tmp_path / "w"
  shutil.copytree(root / "full", copy)
  grid = copy / "samples" / "step_0000004.png"
  want = grid.read_bytes()
  grid.unlink()
  trainer.train_and_evaluate(tiny_config(), str(copy))
  assert grid.read_bytes() == want


def test_a_resume_says_how_many_logged_steps_a_kill_cost(runs, tmp_path, caplog):
  """Killed after its rows of step 4 but before that checkpoint was written: the rerun resumes
  from step 2 and says (stderr and log.txt) that steps 3 to 4 are trained again."""
  root, _, _ = runs
  copy = tmp_path / "w"
  shutil.copytree(root / "full", copy)
  shutil.rmtree(copy / "checkpoints" / "4")
  reals = (copy / "samples" / "reals.png").stat().st_mtime_ns
  with caplog.at_level(logging.WARNING, logger="jaxgan"):
    trainer.train_and_evaluate(tiny_config(), str(copy))
  assert (copy / "samples" / "reals.png").stat().st_mtime_ns == reals  # written once
  said = ("metrics.jsonl has rows to step 4, past the checkpoint resumed (step 2): steps 3 to 4 "
          "are trained again (2 steps lost)")
  assert said in caplog.text and said in (copy / "log.txt").read_text()
  assert [r["step"] for r in writers.read_metrics(str(copy))] == [2, 4]
  caplog.clear()
  with caplog.at_level(logging.WARNING, logger="jaxgan"):  # a finished run: nothing lost
    trainer.train_and_evaluate(tiny_config(), str(copy))
  assert "steps lost" not in caplog.text


def test_the_progress_bar_times_training_only(tmp_path, monkeypatch, caplog):
  """The terminal bar's elapsed time (and so its rate and ETA) leaves out the checkpoints,
  sample grids and evaluations, as the log rows' images/s does: each grid here takes 100 s of
  the bar's clock. The bar is closed (its line ended) before the run's closing line, which a
  terminal showed appended to the bar's."""
  from tqdm import tqdm
  clock, bars = [0.0], []

  def tick() -> float:
    clock[0] += 0.001
    return clock[0]

  def bar(num_steps, start_step, interactive):
    bars.append(tqdm(total=num_steps, initial=start_step, file=io.StringIO(), mininterval=0))
    bars[-1]._time = tick  # tqdm's own clock
    return bars[-1]

  def slow_png(*args, **kwargs):
    clock[0] += 100
    return real_png(*args, **kwargs)

  real_png = sampling.save_png
  monkeypatch.setattr(train_progress, "progress_bar", bar)
  monkeypatch.setattr(sampling, "save_png", slow_png)
  closed_when_done = []

  class Spy(logging.Handler):
    def emit(self, record):
      if record.getMessage().startswith("done: "):
        closed_when_done.append(bars[0].disable)  # tqdm's close() disables the bar

  spy = Spy()
  logging.getLogger("jaxgan.trainer").addHandler(spy)
  try:
    with caplog.at_level(logging.INFO, logger="jaxgan.trainer"):
      trainer.train_and_evaluate(tiny_config(**{"train.num_steps": 6}), str(tmp_path / "w"))
  finally:
    logging.getLogger("jaxgan.trainer").removeHandler(spy)
  assert clock[0] > 400  # reals.png and the grids of steps 2, 4 and 6
  assert bars[0].format_dict["elapsed"] < 1
  assert closed_when_done == [True]


def test_a_step_missing_its_array_files_is_skipped_in_one_line_each(runs, tmp_path):
  """`generate` on a workdir whose newest step lost its array files (state/d/): it samples the
  step before, saying so in two warnings; tensorstore's callbacks on the closed event loop and
  the reads' unretrieved errors printed 500 lines of tracebacks around them."""
  root, _, _ = runs
  copy = tmp_path / "w"
  shutil.copytree(root / "full", copy)
  shutil.rmtree(copy / "checkpoints" / "4" / "state" / "d")
  done = run_module("jaxgan.generate", "--workdir", str(copy), "--num", "2", "--out",
                    str(tmp_path / "g.png"), timeout=120)
  assert done.returncode == 0, done.stderr[-3000:]
  said = [line.split("] ", 1)[-1] for line in done.stderr.splitlines()]
  # No tracebacks; a few lines (room for a platform's own start-up warning), ours in order.
  assert "Traceback" not in done.stderr and len(said) <= 6, done.stderr[-3000:]
  first = next(i for i, line in enumerate(said) if line.startswith("reading checkpoint"))
  assert said[first].startswith(f"reading checkpoint {copy}/checkpoints/4 failed (ValueError: "
                                "NOT_FOU")
  assert said[first + 1].startswith(
      f"checkpoint {copy}/checkpoints/4 is unreadable (ValueError: NOT_FOU")
  assert said[first + 2:first + 4] == [f"sampling checkpoint step 2 of {copy}",
                                       "a grid of 3 classes x 1: 3 images for --num 2"]
  # Chosen by name: refused, offering the other steps (not the damaged one again).
  with pytest.raises(CheckpointError, match=r"^checkpoint step 4 in .* is unreadable \(.*\); "
                     r"choose another --checkpoint of \[2\]$"):
    generate.generate(str(copy), 2, str(tmp_path / "g4.png"), checkpoint="4")
  shutil.rmtree(copy / "checkpoints" / "2")
  with pytest.raises(CheckpointError, match=r"is unreadable \(.*\); no other step is there$"):
    generate.generate(str(copy), 2, str(tmp_path / "g4.png"), checkpoint="4")


def test_generate_refuses_an_out_inside_a_runs_own_folders(runs, tmp_path):
  """Single PNGs in checkpoints/4/ were deleted with that step when the run rotated it out (in
  checkpoints/40/, a new step folder every reader then warned about as unreadable); a grid in
  samples/ replaced the run's own."""
  root, _, _ = runs
  copy = tmp_path / "w"
  shutil.copytree(root / "full", copy)
  before = {p: p.stat().st_mtime_ns for p in copy.rglob("*")}
  for out, managed in ((f"{copy}/checkpoints/4/", "checkpoints"),
                       (f"{copy}/checkpoints/40/", "checkpoints"),
                       (f"{copy}/samples/step_0000004.png", "samples"),
                       (f"{copy}/checkpoints_best/g.png", "checkpoints_best")):
    with pytest.raises(ValueError) as info:
      generate.generate(str(copy), 2, out)
    assert str(info.value) == (f"--out {out} is inside {copy / managed}, a folder of the run in "
                               f"{copy}, which writes and prunes it; pass a --out outside it")
  # Single PNGs into the workdir itself: a set `evaluate --fake` refuses (it skips runs'
  # workdirs), refused before the generation; a grid there, or a folder inside it, is fine.
  for out in (f"{copy}/", f"{copy}/samples/../"):
    with pytest.raises(ValueError, match=rf"^--out {re.escape(out)}: is a training run's workdir, "
                                         r"which `evaluate --fake` does not read as a set of "
                                         rf"images; pass a folder of their own, e\.g\. "
                                         rf"{re.escape(os.path.join(out, 'fakes', ''))}$"):
      generate.generate(str(copy), 2, out)
  assert {p: p.stat().st_mtime_ns for p in copy.rglob("*")} == before
  generate.generate(str(copy), 2, f"{copy}/grids/g.png")  # elsewhere in the workdir: fine
  generate.generate(str(copy), 2, f"{copy}/fakes/")
  assert sorted(os.listdir(copy / "fakes")) == ["000000.png", "000001.png", "labels.csv"]


def test_an_edited_config_json_is_named_not_the_checkpoint(runs, tmp_path):
  """config.json whose model keys were changed by hand: the checkpoints were said to hold 'a
  train state of a different layout ... start a fresh workdir', about a healthy run."""
  from jaxgan.checkpoint_checks import LayoutError

  root, _, _ = runs
  copy = tmp_path / "w"
  shutil.copytree(root / "full", copy)
  saved = json.loads((copy / "config.json").read_text())
  width = saved["model"]["g_width"]
  saved["model"]["g_width"] = 2 * width
  saved["train"]["sample_every"] += 1  # the model's key is named first
  (copy / "config.json").write_text(json.dumps(saved))
  for checkpoint, step in (("latest", 4), ("2", 2)):
    with pytest.raises(LayoutError) as info:
      generate.generate(str(copy), 2, str(tmp_path / "g.png"), checkpoint=checkpoint)
    assert str(info.value) == (
        f"{copy / 'config.json'}: model.g_width is {2 * width}, but checkpoint step {step} was "
        f"written with {width} (1 other key(s) differ too): config.json was edited or replaced "
        "since the run wrote it; put back the values it trained with")
  # A difference that builds the same state (a resume's longer schedule) is not blamed for a
  # layout error from elsewhere (another jaxgan's checkpoint, here a patched comparison).
  saved["model"]["g_width"] = width
  (copy / "config.json").write_text(json.dumps(saved))
  from jaxgan import checkpoint as ckpt_module

  with mock.patch.object(ckpt_module, "layout_difference", lambda *a: "a leaf renamed"):
    with pytest.raises(LayoutError, match=r"holds a train state of a different layout \(a leaf "
                       r"renamed\): written by another jaxgan version"):
      generate.generate(str(copy), 2, str(tmp_path / "g.png"), checkpoint="2")


def test_a_chosen_step_with_a_truncated_array_file_names_the_storage_error(runs, tmp_path):
  """`generate --checkpoint 4` of a step whose array files lost most of their bytes said orbax's
  wrapper ('Exception: Encountered error while reading array index: (slice(... See full
  TensorStore details: <bound method ...>'), not the reason the fallback path gives. Every data
  file is cut: which of them hold the EMA weights that generate reads varies from write to
  write (the largest alone was D's or the optimizer's in some runs, and read fine)."""
  root, _, _ = runs
  copy = tmp_path / "w"
  shutil.copytree(root / "full", copy)
  data = [p for p in (copy / "checkpoints" / "4" / "state").rglob("*")
          if p.is_file() and p.parent.name == "d"]
  assert data
  for path in data:
    os.truncate(path, path.stat().st_size // 8)
  with pytest.raises(CheckpointError, match=r"^checkpoint step 4 in .* is unreadable \(ValueError: "
                     r"OUT_OF_RANGE: .*\); choose another --checkpoint of \[2\]$"):
    generate.generate(str(copy), 2, str(tmp_path / "g.png"), checkpoint="4")
  # Where orbax wraps the storage error (as it did for some of these files), the storage
  # error's own words.
  def wrapped():
    try:
      raise ValueError("OUT_OF_RANGE: Requested byte range [8, 16) is not valid")
    except ValueError as e:
      raise Exception("Encountered error while reading array index: (slice(0, 4, 1),)") from e

  checkpointer = mock.Mock(directory="ckpts", steps=lambda: [2, 4])
  with pytest.raises(CheckpointError, match=r"^checkpoint step 4 in ckpts is unreadable "
                     r"\(ValueError: OUT_OF_RANGE: Requested byte range \[8, 16\) is not valid\); "
                     r"choose another --checkpoint of \[2\]$"):
    saved_run._read_step(checkpointer, 4, wrapped)


def test_resume_refuses_a_config_that_changes_the_math(runs):
  root, _, _ = runs
  config = tiny_config(**{"optim.g_lr": 1e-3, "train.num_steps": 6})
  with pytest.raises(trainer.TrainingError, match=r"optim.g_lr: 0.0002 -> 0.001.*--allow_config_change"):
    trainer.train_and_evaluate(config, str(root / "full"))


def test_generate_is_deterministic(runs, tmp_path):
  root, _, _ = runs
  workdir = str(root / "full")
  a = generate.generate(workdir, 6, str(tmp_path / "a.png"), seed=3)
  b = generate.generate(workdir, 6, str(tmp_path / "b.png"), seed=3)
  assert open(a[0], "rb").read() == open(b[0], "rb").read()
  c = generate.generate(workdir, 6, str(tmp_path / "c.png"), seed=4)
  assert open(a[0], "rb").read() != open(c[0], "rb").read()
  # The EMA generator's standing BatchNorm statistics (the default) vs the raw G's, with 0.
  raw = generate.generate(workdir, 6, str(tmp_path / "raw.png"), seed=3, standing_stats_batches=0)
  assert open(a[0], "rb").read() != open(raw[0], "rb").read()
  singles = generate.generate(workdir, 3, str(tmp_path / "single") + "/", label="2")
  assert len(singles) == 3 and all(os.path.exists(p) for p in singles)
  with pytest.raises(ValueError, match="choose one of: tshirt, trousers, dress"):
    generate.generate(workdir, 1, str(tmp_path / "x.png"), label="boots")
  # '²' is a digit (str.isdigit) that int() refuses: the same one-line error, not int()'s.
  # '--5' is no number either (one sign): not int()'s error.
  with pytest.raises(ValueError, match=r"^--label '--5' is not a class of this model; choose one"):
    label_choices.resolve_label("--5", ["tshirt", "trousers", "dress"], 3)
  for choice in ("²", "①"):  # digits again: the documented line, not int()'s
    with pytest.raises(ValueError, match=f"^--checkpoint must be 'latest', 'best' or a step "
                                         f"number, got '{choice}'$"):
      saved_run.parse_checkpoint(choice)
  with pytest.raises(ValueError, match=r"^--label '²' is not a class of this model; choose one"):
    label_choices.resolve_label("²", ["tshirt", "trousers", "dress"], 3)


def test_sample_grids_and_generate_draw_the_ema_generator(tmp_path, monkeypatch):
  """With the EMA frozen at its start (a half-life of 1e12 images, no ramp-up: beta rounds to 1),
  G trained at two learning rates gives the same sample grids, drawn by the EMA generator; from
  the raw G they differ. And generate draws the EMA's weights, not G's: it reads only them (and
  G's batch statistics), and with a to_rgb bias of +20 in the EMA every pixel it writes is
  white."""
  frozen = {"train.ema_half_life_images": 10**12, "train.ema_rampup": 0.0,
            "train.num_steps": 2, "train.checkpoint_every": 2, "train.tensorboard": False}
  grids = []
  for lr in (2e-4, 2e-3):
    trainer.train_and_evaluate(tiny_config(**frozen, **{"optim.g_lr": lr}), str(tmp_path / str(lr)))
    grids.append((tmp_path / str(lr) / "samples" / "step_0000002.png").read_bytes())
  assert grids[0] == grids[1]
  _, _, first, _ = saved_run.load_checkpoint(str(tmp_path / "0.0002"))
  _, _, second, _ = saved_run.load_checkpoint(str(tmp_path / "0.002"))
  assert not np.array_equal(first.g_params["to_rgb"]["kernel"], second.g_params["to_rgb"]["kernel"])

  real_load = saved_run.load_checkpoint

  def biased(*args, **kwargs):
    config, step, state, meta = real_load(*args, **kwargs)
    # Neither G's raw weights nor D's nor the optimizers' moments are read.
    assert [name for name, value in vars(state).items() if value is not None] == [
        "g_batch_stats", "ema_params"]
    shift = lambda params, by: {**params, "to_rgb": {**params["to_rgb"],
                                                     "bias": params["to_rgb"]["bias"] + by}}
    return config, step, state.replace(ema_params=shift(state.ema_params, 20.0)), meta

  monkeypatch.setattr(saved_run, "load_checkpoint", biased)
  from PIL import Image
  paths = generate.generate(str(tmp_path / "0.0002"), 3, str(tmp_path / "fakes") + "/")
  assert len(paths) == 3
  for path in paths:
    assert np.asarray(Image.open(path)).min() == 255


@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")  # the drop itself
def test_generate_stops_for_a_signal_whose_exception_python_dropped(runs, tmp_path):
  """A SIGTERM in generate's first second lands in JAX's garbage-collection callback, where
  Python drops the handler's exception: the tool sampled and wrote the whole grid (100 MB, 20 s)
  before its stop status. Now it stops before sampling, and writes nothing."""
  import gc
  import signal

  from jaxgan import stopping

  def callback(phase, info):
    del info
    if phase == "start":
      os.kill(os.getpid(), signal.SIGTERM)
      time.sleep(0.05)  # the handler runs here, in the callback: its exception is dropped

  interrupts = stopping.Interrupts()
  interrupts.__enter__()
  try:
    gc.callbacks.append(callback)
    try:
      gc.collect()
    finally:
      gc.callbacks.remove(callback)
    assert interrupts.signal == signal.SIGTERM  # received, and nothing raised
    with pytest.raises(stopping.Terminated):
      generation.generate(str(runs[0] / "full"), 4, str(tmp_path / "grid.png"))
  finally:
    interrupts.__exit__()
  assert not os.listdir(tmp_path)


def test_generate_in_batches_from_either_checkpoint(runs, tmp_path, capsys, monkeypatch,
                                                    caplog):
  """--batch bounds the images per generator call (any --num fits a device) without changing
  the images; a folder holding an earlier, larger run's PNGs is refused; --checkpoint best."""
  from PIL import Image

  root, _, _ = runs
  workdir = str(root / "full")
  read = lambda paths: np.stack([np.asarray(Image.open(p)) for p in paths]).astype(int)
  whole = read(generate.generate(workdir, 5, str(tmp_path / "whole") + "/"))
  parts = read(generate.generate(workdir, 5, str(tmp_path / "parts") + "/", batch=2))
  assert np.abs(whole - parts).max() <= 1  # other batch shapes may round differently
  capsys.readouterr()
  assert len(generate.generate(workdir, 200, str(tmp_path / "many") + "/", batch=100)) == 200
  # Progress for FID-sized sets: off a terminal (here), a line a minute and the end's; and for a
  # grid of as many (it had none; a row per class: 201 of 3 classes).
  assert "generate: 200/200 images done, " in capsys.readouterr().err
  generate.generate(workdir, 200, str(tmp_path / "grid.png"), batch=100)
  assert "generate: 201/201 images done, " in capsys.readouterr().err
  with pytest.raises(ValueError, match=r"already holds 2 numbered PNGs past --num=3"):
    generate.generate(workdir, 3, str(tmp_path / "parts"))
  (tmp_path / "parts" / "1000000.png").write_bytes(b"")  # a set of millions: 7 digits
  with pytest.raises(ValueError, match=r"already holds 3 numbered PNGs past --num=3 \(000003"):
    generate.generate(workdir, 3, str(tmp_path / "parts"))
  # A run cut short over an earlier set (another seed) leaves a mix of the two: evaluate
  # refuses the folder until a run finishes it.
  def stopped(image, path, durable=True, real=sampling.save_png):
    if path.endswith("000002.png"):
      raise KeyboardInterrupt
    real(image, path, durable)

  monkeypatch.setattr(sampling, "save_png", stopped)
  with pytest.raises(KeyboardInterrupt), caplog.at_level(logging.WARNING):
    generate.generate(workdir, 5, str(tmp_path / "whole") + "/", seed=1)
  monkeypatch.undo()
  # Said before the stop's own line: what the folder holds now, and how to finish it.
  assert (f"{tmp_path / 'whole'}/ holds the first 2 of 5 images and .generate-incomplete "
          "(evaluate refuses the folder); run the same command again to write them all"
          ) in caplog.text
  with pytest.raises(DataError, match=r"whole: `jaxgan.generate` did not finish writing this "
                     r"folder \(.*\.generate-incomplete is there\)"):
    image_sets.count_images(str(tmp_path / "whole"))
  assert evaluate.main(["--real", str(tmp_path / "whole"), "--fake", str(tmp_path / "whole")]) == 2
  assert "did not finish writing" in capsys.readouterr().err
  caplog.clear()
  with caplog.at_level(logging.INFO, logger="jaxgan"):
    generate.generate(workdir, 5, str(tmp_path / "whole") + "/", seed=1)
  assert len(list(image_sets.iter_image_set(str(tmp_path / "whole")))) == 5
  # Replaced, and said so (those of the first run and of the stopped one: files it overwrote).
  assert (f"{tmp_path / 'whole'}/: replacing the 5 numbered PNGs an earlier generate left there"
          ) in caplog.messages
  # Other images there (a grid, a subfolder's) would join the set too: refused, nothing written.
  before = sorted(os.listdir(tmp_path / "whole"))
  for other in ("sub/x.jpg", "grid.png"):
    os.makedirs(os.path.dirname(tmp_path / "whole" / other), exist_ok=True)
    Image.new("RGB", (4, 4)).save(tmp_path / "whole" / other)
    with pytest.raises(ValueError, match=r"^--out .*whole/ already holds 1 other image file\(s\) "
                                         rf"\({re.escape(other)} \.\.\.\), which `evaluate --fake` "
                                         "would read with these as one set"):
      generate.generate(workdir, 5, str(tmp_path / "whole") + "/", seed=2)
    os.remove(tmp_path / "whole" / other)
  assert sorted(os.listdir(tmp_path / "whole")) == before + ["sub"]
  Image.new("RGB", (4, 4)).save(tmp_path / "whole" / "00000001.png")  # ffmpeg's %08d, not ours
  with pytest.raises(ValueError, match=r"already holds 1 other image file\(s\) \(00000001.png"):
    generate.generate(workdir, 5, str(tmp_path / "whole") + "/", seed=2)
  os.remove(tmp_path / "whole" / "00000001.png")
  # A prepared set there: `evaluate --fake` read the set instead and reported FID 0 against it.
  (tmp_path / "whole" / "dataset_info.json").write_text("{}")
  with pytest.raises(ValueError, match=r"^--out .*whole/ holds a prepared set \(dataset_info.json"
                     r"\), which `evaluate --fake` would read instead of these images"):
    generate.generate(workdir, 5, str(tmp_path / "whole") + "/", seed=2)
  os.remove(tmp_path / "whole" / "dataset_info.json")
  # A name of 252 characters is a file name (the temporary beside it was one too long).
  for long_name in ("a" * 248 + ".png", "é" * 125 + ".png"):  # 252 and 254 bytes
    assert generate.generate(workdir, 1, str(tmp_path / long_name)) == [str(tmp_path / long_name)]
  with pytest.raises(ValueError, match=r"^--out .*grid.jpg: a grid is one PNG file"):
    generate.generate(workdir, 1, str(tmp_path / "grid.jpg"))  # PNG bytes in a .jpg before
  (tmp_path / "a_file").write_text("")
  # A grid's path that cannot be written is refused before the checkpoint is read (and
  # thousands of images sampled), in the words its write would have used.
  with mock.patch.object(saved_run, "load_checkpoint", side_effect=AssertionError("read")):
    with pytest.raises(OSError,
                       match=r"^--out .*a_file/x.png \(.*a_file\): is a file, not a folder; "):
      generate.generate(workdir, 1, str(tmp_path / "a_file" / "x.png"))
    # The file in the way is named also where it is further up (makedirs: 'Not a directory').
    with pytest.raises(OSError, match=r"^--out .*a_file/sub/x.png \(.*a_file\): is a file, not a "
                                      r"folder; "):
      generate.generate(workdir, 1, str(tmp_path / "a_file" / "sub" / "x.png"))
    with pytest.raises(OSError, match=r"^--out /dev/null/: is not a folder; "):
      generate.generate(workdir, 1, "/dev/null/")
    with pytest.raises(OSError, match=r"^--out /proc/x.png: No such file or directory; pass a "
                                      r"path you can write$"):
      generate.generate(workdir, 1, "/proc/x.png")
    # A name past the file system's 255 bytes (refused after sampling, naming the temporary).
    with pytest.raises(OSError, match=r"^--out .*/a{256}\.png: File name too long; "):
      generate.generate(workdir, 1, str(tmp_path / ("a" * 256 + ".png")))
    # So is a folder for single PNGs: unwritable, or holding what evaluate would read with them.
    with pytest.raises(OSError, match=r"^--out /proc/x/: No such file or directory; "):
      generate.generate(workdir, 1, "/proc/x/")
    with pytest.raises(ValueError, match=r"already holds 3 numbered PNGs past --num=3"):
      generate.generate(workdir, 3, str(tmp_path / "parts"))
    locked, listdir = str(tmp_path / "locked"), os.listdir

    def unlistable(path="."):
      if os.path.abspath(path) == locked:
        raise PermissionError(13, "Permission denied", path)
      return listdir(path)

    os.mkdir(locked)
    with mock.patch.object(os, "listdir", unlistable):
      with pytest.raises(OSError, match=r"^--out .*locked/: Permission denied; pass a path you "
                                        r"can write$"):
        generate.generate(workdir, 1, locked + "/")
    (tmp_path / "others").mkdir()
    (tmp_path / "others" / "grid.png").write_bytes(b"")
    with pytest.raises(ValueError, match=r"already holds 1 other image file\(s\) \(grid.png"):
      generate.generate(workdir, 5, str(tmp_path / "others"))
  assert not [n for n in os.listdir(tmp_path) if "probe" in n or n.endswith(".tmp")]
  # A PNG that cannot take its place is named, not the temporary it was written to.
  os.makedirs(tmp_path / "taken" / "000000.png")
  with pytest.raises(OSError, match=r"^--out .*taken \(.*taken/000000.png\): Is a directory; "):
    generate.generate(workdir, 1, str(tmp_path / "taken"))
  assert sorted(os.listdir(tmp_path / "taken")) == [".generate-incomplete", "000000.png"]
  with pytest.raises(ValueError, match=r"^--out .*a_file/: is a file, not a folder"):
    generate.generate(workdir, 1, str(tmp_path / "a_file") + "/")
  with pytest.raises(FileNotFoundError, match="set train.eval_every"):
    generate.generate(workdir, 1, str(tmp_path / "b.png"), checkpoint="best")
  # The folders the writability probe made are gone again when a later check refuses.
  with pytest.raises(FileNotFoundError, match="set train.eval_every"):
    generate.generate(workdir, 1, str(tmp_path / "new" / "deeper" / "b.png"), checkpoint="best")
  assert not os.path.exists(tmp_path / "new")
  with pytest.raises(FileNotFoundError, match="set train.eval_every"):
    generate.generate(workdir, 1, str(tmp_path / "new" / "singles") + "/", checkpoint="best")
  assert not os.path.exists(tmp_path / "new")
  # A best-FID checkpoint that is step 2 (the newest is step 4) is the one sampled.
  copy = tmp_path / "copy"
  shutil.copytree(workdir, copy)
  shutil.copytree(copy / "checkpoints" / "2", copy / "checkpoints_best" / "2")
  best = generate.generate(str(copy), 4, str(tmp_path / "best.png"), checkpoint="best")
  latest = generate.generate(str(copy), 4, str(tmp_path / "latest.png"))
  assert open(best[0], "rb").read() != open(latest[0], "rb").read()
  # --checkpoint STEP: that step of checkpoints/ (step 2 is the copied best).
  step2 = generate.generate(str(copy), 4, str(tmp_path / "step2.png"), checkpoint="2")
  assert open(step2[0], "rb").read() == open(best[0], "rb").read()
  with pytest.raises(FileNotFoundError, match=r"no checkpoint step 3 in .*holds steps \[2, 4\]"):
    generate.generate(workdir, 1, str(tmp_path / "s.png"), checkpoint="3")
  with pytest.raises(ValueError, match="'latest', 'best' or a step number, got 'newest'"):
    generate.generate(workdir, 1, str(tmp_path / "s.png"), checkpoint="newest")


@pytest.mark.patches_traced_code
def test_generate_grids_show_a_row_per_class_and_fid_sets_the_data_mix(runs, tmp_path,
                                                                        monkeypatch):
  """A grid as training's (a row per class); single PNGs for `evaluate --fake` take their labels
  from the data's mix, as `evaluate --workdir` does, not class after class."""
  root, _, _ = runs
  workdir = str(root / "full")
  drawn, real_sample = [], sampling.sample_in_chunks

  def recording(sampler, params, statistics, z, labels, *args):
    drawn.append(np.asarray(labels))
    return real_sample(sampler, params, statistics, z, labels, *args)

  monkeypatch.setattr(sampling, "sample_in_chunks", recording)
  recorded_grid = []
  real_grid = sampling.make_grid
  monkeypatch.setattr(sampling, "make_grid",
                      lambda images, cols: recorded_grid.append(cols) or real_grid(images, cols))
  generate.generate(workdir, 6, str(tmp_path / "grid.png"))
  assert drawn[-1].tolist() == [0, 0, 1, 1, 2, 2] and recorded_grid == [2]  # 3 classes, 3 rows
  generate.generate(workdir, 2, str(tmp_path / "few.png"))  # fewer than the classes: each shows
  assert drawn[-1].tolist() == [0, 1, 2] and recorded_grid[-1] == 1
  # The synthetic catalog's mix is uniform (its checkpoints hold no counts): a skewed one.
  counts, real_load = {"rows": [0, 1, 2], "counts": [1, 2, 7]}, saved_run.load_checkpoint

  def with_counts(*args, **kwargs):
    config, step, state, meta = real_load(*args, **kwargs)
    return config, step, state, {**meta, "label_counts": counts}

  monkeypatch.setattr(saved_run, "load_checkpoint", with_counts)
  generate.generate(workdir, 40, str(tmp_path / "fid") + "/", seed=5)
  expected = sampling.draw_label_rows(counts, np.random.default_rng(5), (40,))
  np.testing.assert_array_equal(drawn[-1], expected)
  assert drawn[-1].tolist() != sorted(drawn[-1].tolist())  # drawn, not class after class


@pytest.mark.patches_traced_code
def test_truncation_and_interpolation_grids(runs, tmp_path, monkeypatch):
  from PIL import Image

  root, _, _ = runs
  workdir = str(root / "full")
  z = np.asarray(sample_inputs.latents(0, 512, 8, truncation=0.7))
  assert np.abs(z).max() <= 0.7 and z.std() > 0.3  # resampled into range, not clipped to it
  truncations, real_statistics = [], sampling.make_ema_statistics
  monkeypatch.setattr(sampling, "make_ema_statistics", lambda *args, truncation=0.0, **kwargs:
                      truncations.append(truncation) or real_statistics(
                          *args, truncation=truncation, **kwargs))
  a = generate.generate(workdir, 4, str(tmp_path / "t.png"), truncation=0.5)
  b = generate.generate(workdir, 4, str(tmp_path / "u.png"), truncation=0.5)
  assert open(a[0], "rb").read() == open(b[0], "rb").read()
  assert truncations == [0.5, 0.5]  # standing statistics from latents truncated alike
  grid = generate.generate(workdir, 1, str(tmp_path / "i.png"), interpolate=5)
  # tiny_config: 3 classes x 5 columns of 16px images with 2px gutters.
  assert Image.open(grid[0]).size == (5 * 18 + 2, 3 * 18 + 2)
  one = generate.generate(workdir, 1, str(tmp_path / "j.png"), interpolate=4, label="1")
  assert Image.open(one[0]).size == (4 * 18 + 2, 18 + 2)
  ends = sample_inputs.latents(0, 2, 8)
  path = np.asarray(sample_inputs.slerp(ends[0:1], ends[1:2], jnp.linspace(0, 1, 3)[:, None]))
  np.testing.assert_allclose(path[[0, 2]], np.asarray(ends), atol=1e-5)
  for bad in (0, 2**31, 10**20):  # past int32: a traceback from the latents' shape before
    with pytest.raises(ValueError, match=rf"^--num must be in \[1, 2\*\*31 - 1\], got {bad}$"):
      generate.generate(workdir, bad, str(tmp_path / "x.png"))
  for bad in (-1, float("nan")):
    with pytest.raises(ValueError, match="--truncation"):
      generate.generate(workdir, 1, str(tmp_path / "x.png"), truncation=bad)
  # JAX keys keep 32 bits of a seed: 2**32 would draw seed 0's latents.
  with pytest.raises(ValueError,
                     match=r"^--seed must be an integer in \[0, 2\*\*32\), got 4294967296$"):
    generate.generate(workdir, 1, str(tmp_path / "x.png"), seed=2**32)
  # Too many to hold: XLA's abort (a grid of 2**31 - 1) or numpy's traceback before.
  with pytest.raises(ValueError, match=r"^a grid of 2147483646 images at 16x16 has 549755813376 "
                     r"pixels, more than 1073741824 \(2\*\*30\); write one PNG per image \(--out "
                     r"ending in /\), or fewer \(--num, --interpolate\)$"):
    generate.generate(workdir, 2**31 - 1, str(tmp_path / "x.png"))
  # A row of 4,000,000 per class (3): said before the latents are made.
  monkeypatch.setattr(sample_inputs, "interpolation_inputs", lambda *a: pytest.fail("made"))
  with pytest.raises(ValueError, match=r"^a grid of 12000000 images .* \(2\*\*30\)"):
    generate.generate(workdir, 3, str(tmp_path / "x.png"), interpolate=4_000_000)
  with pytest.raises(ValueError, match=r"^a grid of at least 5000000 images .* \(2\*\*30\)"):
    generate.generate(workdir, 3, str(tmp_path / "x.png"), interpolate=5_000_000, label="1")
  # The fewest known before --label resolves: not a row per class where --label may pick one
  # (a legitimate row of 100 of 1000 classes was refused as 100,000 images), exact otherwise.
  assert generation.fewest_images(1, 100, None, 1000, ["3"]) == (100, False)
  assert generation.fewest_images(8, 100, "1:2", 1000) == (100, True)  # --between: 1 row
  assert generation.fewest_images(3, 10, None, 0) == (80, True)  # unconditional: 8 rows
  assert generation.fewest_images(3, 10, None, 5) == (50, True)  # a row per class
  # A grid: --num to the nearest multiple of the classes, as _plain_labels (down here).
  assert generation.fewest_images(4194400, 0, None, 1000) == (4194000, True)
  assert generation.fewest_images(4194400, 0, None, 1000, ["3"]) == (4194000, False)
  assert generation.fewest_images(5, 0, None, 3, singles=True) == (5, True)
  from jaxgan import resources

  monkeypatch.setattr(resources, "host_memory_bytes", lambda: 1000 * 8 * 4 - 1)  # z_dim 8
  with pytest.raises(ValueError, match=r"^the latents of 1000 images alone take .* GiB, "
                     r"more than this host's .* GiB of memory; generate fewer at a time"):
    generate.generate(workdir, 1000, str(tmp_path / "singles") + "/")
  assert not os.path.exists(tmp_path / "singles")


def test_unwritable_workdir_fails_before_compiling(tmp_path):
  blocker = tmp_path / "file"
  blocker.write_text("not a directory")
  with pytest.raises(workdir_lib.WorkdirError, match="is not writable"):
    trainer.train_and_evaluate(tiny_config(), str(blocker / "w"))
  for given in (str(blocker), str(blocker) + os.sep):
    with pytest.raises(workdir_lib.WorkdirError, match=r"workdir .*file/? is a file, not a folder"):
      trainer.train_and_evaluate(tiny_config(), given)
  os.symlink(tmp_path / "gone", tmp_path / "dangling")  # a run folder moved or not mounted yet
  for given in (str(tmp_path / "dangling"), str(tmp_path / "dangling") + os.sep):
    with pytest.raises(workdir_lib.WorkdirError, match=(
        f"^workdir {given} is a symbolic link to {tmp_path / 'gone'}, which does not exist; make "
        "that folder, or pass another --workdir$")):
      trainer.train_and_evaluate(tiny_config(), given)
  # A full disk: the probe file is made, then cannot be written; it went with the refusal.
  full = tmp_path / "full"
  full.mkdir()
  os.symlink("/dev/full", full / f".write_probe.0.{os.getpid()}")
  with pytest.raises(workdir_lib.WorkdirError, match=r"is not writable \(No space left"):
    workdir_lib.prepare_workdir(str(full))
  assert os.listdir(full) == []
  # So does the one in each of the run's folders (checkpoints/ on another, full, disk).
  (full / "checkpoints").mkdir()
  os.symlink("/dev/full", full / "checkpoints" / f".write_probe.0.{os.getpid()}")
  with pytest.raises(workdir_lib.WorkdirError, match=r"its checkpoints/ is not writable \(No "
                     r"space left on device\); make it writable \(or free space there\)"):
    workdir_lib.prepare_workdir(str(full))
  assert os.listdir(full / "checkpoints") == []
  # A file system that gives no limit on a name's length (-1, or 0 from a FUSE daemon) takes
  # any name: every --out was refused as too long.
  from jaxgan import generation

  for limit in (-1, 0):
    with mock.patch.object(os, "pathconf", return_value=limit):
      generation._check_name_length(str(tmp_path), str(tmp_path / ("a" * 300 + ".png")))


def test_a_workdir_in_the_folder_the_data_source_reads_is_refused(tmp_path):
  """A folder source's data.path holding the workdir: the run's sample grids were read as photos
  at its next start (a class 'samples', or 2 grids trained on unconditionally). Refused before
  the workdir is made, also as the folder itself, through a link, and for a prepared set; a
  sibling folder, a manifest's image_dir and the synthetic source are fine."""
  from PIL import Image

  photos = tmp_path / "photos"
  for name in ("shirts", "shoes"):
    os.makedirs(photos / name)
    Image.new("RGB", (16, 16), (200, 0, 0)).save(photos / name / "a.png")
  config = tiny_config(**{"data.source": "folder", "data.path": str(photos),
                          "data.num_classes": 2, "data.workers": 1})
  with pytest.raises(workdir_lib.WorkdirError, match=(
      f"^--workdir {photos / 'runs' / 'a'} is inside data.path \\({photos}\\), which the folder "
      "source reads whole: the run's sample grids and checkpoints would sit among its data; "
      "pass a --workdir outside it \\(a run already there: move its folder out, and resume it "
      "there\\)$")):
    trainer.train_and_evaluate(config, str(photos / "runs" / "a"))
  assert sorted(os.listdir(photos)) == ["shirts", "shoes"]  # nothing made
  assert "is data.path itself" in data_lib.workdir_problem(config, str(photos))
  os.symlink(photos / "shoes", tmp_path / "link")
  assert "inside data.path" in data_lib.workdir_problem(config, str(tmp_path / "link" / "run"))
  assert data_lib.workdir_problem(config, str(tmp_path / "photos_run")) == ""
  # A class folder linked into shared storage, which the scan follows: a run in its target.
  os.makedirs(tmp_path / "shared" / "bags")
  os.symlink(tmp_path / "shared" / "bags", photos / "bags")
  assert f"inside {tmp_path / 'shared' / 'bags'}, linked into data.path" in (
      data_lib.workdir_problem(config, str(tmp_path / "shared" / "bags" / "run")))
  os.remove(photos / "bags")
  # A hidden folder, which the scan skips with all it holds, unless a link leads into it; links
  # deeper down are followed too.
  assert data_lib.workdir_problem(config, str(photos / ".runs" / "a")) == ""
  os.makedirs(photos / ".store" / "hats")
  os.symlink(photos / ".store" / "hats", photos / "hats")
  assert "linked into data.path" in data_lib.workdir_problem(
      config, str(photos / ".store" / "hats" / "run"))
  os.symlink(tmp_path / "shared", photos / "shoes" / "more")
  assert "linked into data.path" in data_lib.workdir_problem(
      config, str(tmp_path / "shared" / "run"))
  os.symlink(photos, photos / "shirts" / "loop")  # a loop: each real folder walked once
  assert data_lib.workdir_problem(config, str(tmp_path / "elsewhere")) == ""
  prepared = tiny_config(**{"data.source": "prepared", "data.path": str(tmp_path / "set")})
  assert "the prepared source" in data_lib.workdir_problem(prepared, str(tmp_path / "set" / "w"))
  manifest = tiny_config(**{"data.source": "manifest", "data.path": str(tmp_path / "m.csv"),
                            "data.image_dir": str(photos)})
  assert data_lib.workdir_problem(manifest, str(photos / "run")) == ""  # reads listed files only
  assert data_lib.workdir_problem(tiny_config(), str(photos / "run")) == ""


def test_a_workdir_inside_another_runs_checkpoints_is_refused(tmp_path):
  """A run trained in WORKDIR/checkpoints/3 (or in WORKDIR/checkpoints itself) was deleted
  without a word with step 3 by that run's next save. Refused before anything is made; a run in
  another folder of a workdir is fine."""
  refusal = lambda path: run_folders.managed_refusal("--workdir", str(path))
  config = tiny_config(**{"train.tensorboard": False, "train.num_steps": 2,
                          "train.checkpoint_every": 2})
  run_a = tmp_path / "A"
  trainer.train_and_evaluate(config, str(run_a))
  before = sorted(os.listdir(run_a / "checkpoints"))
  for inside, managed in ((run_a / "checkpoints" / "2", "checkpoints"),
                          (run_a / "checkpoints", "checkpoints"),
                          (run_a / "samples" / "b", "samples"),
                          (run_a / "checkpoints_best" / "x" / "y", "checkpoints_best")):
    with pytest.raises(workdir_lib.WorkdirError, match=(
        f"^--workdir {inside} is inside {run_a / managed}, a folder of the run in {run_a}, which "
        f"writes and prunes it; pass a --workdir outside it \\(to resume that run: --workdir "
        f"{run_a}\\)$")):
      trainer.train_and_evaluate(config, str(inside))
  assert sorted(os.listdir(run_a / "checkpoints")) == before  # nothing made in them
  assert not (run_a / "checkpoints_best").exists()
  assert refusal(run_a / "sweep" / "b") == ""
  assert refusal(run_a / "checkpoints_sweep" / "b") == ""
  assert refusal(tmp_path / "checkpoints" / "c") == ""  # no run above
  assert "a folder of the run in" in refusal(run_a / "checkpoints.corrupt" / "c")
  os.symlink(run_a / "checkpoints", tmp_path / "link")  # through a link
  assert "a folder of the run in" in refusal(tmp_path / "link" / "3")
  # Another tool's config.json above is not a run's.
  os.makedirs(tmp_path / "proj" / "samples")
  (tmp_path / "proj" / "config.json").write_text('{"model_type": "bert"}')
  assert refusal(tmp_path / "proj" / "samples" / "gan1") == ""
  # Nor are runs numbered 1, 2, ... in a folder named 'checkpoints' steps of a run above them:
  # the second trains, and the first resumes.
  numbered = tmp_path / "exps" / "checkpoints"
  for name in ("1", "2", "1"):
    trainer.train_and_evaluate(config, str(numbered / name))


class _ProtocolSource:
  """A data source written to jaxgan.data's documented protocol alone (no ArraySource base, no
  optional attribute): coloured squares, one colour per class, drawn from the stream position."""

  reads = frozenset()
  unread_hint = "the protocol source reads no data keys"
  class_names = ["red", "green", "blue"]

  def __init__(self, size: int):
    self.size = size

  @staticmethod
  def validate(config, reads_data=True):
    del config, reads_data

  @classmethod
  def from_config(cls, config):
    return cls(config.data.image_size)

  def batches(self, batch_size, start_step, rows=None):
    rows = np.arange(batch_size) if rows is None else np.asarray(rows)
    step = start_step
    while True:
      position = step * batch_size + rows
      labels = (position % 3).astype(np.int32)
      images = np.full((len(rows), self.size, self.size, 3), 255, np.uint8)
      images[np.arange(len(rows)), 4:12, 4:12, labels] = 0
      yield {"image": images, "label": labels}
      step += 1


@pytest.mark.patches_traced_code
def test_a_source_written_to_the_documented_protocol_trains(tmp_path, monkeypatch):
  """What jaxgan.data's docstring (and docs/architecture.md) asks of a source is all the run
  needs: the optional attributes are optional (folder_key was read without a default: an
  AttributeError at the start)."""
  monkeypatch.setitem(data_lib.SOURCES._entries, "protocol", _ProtocolSource)
  state = trainer.train_and_evaluate(tiny_config(**{"data.source": "protocol"}),
                                     str(tmp_path / "w"))
  assert int(jax.device_get(state.step)) == 4
  assert (tmp_path / "w" / "samples" / "reals.png").exists()
  assert all(np.isfinite(x).all() for x in _leaves(state.g_params))


def test_a_full_disk_at_a_resume_is_one_line_and_leaves_the_rows(runs, tmp_path):
  """The resume rewrites metrics.jsonl (rows past the checkpoint dropped) and config.json: on a
  full disk, an OSError traceback (exit 1) and a temporary left behind. Now a WorkdirError (the
  CLI's one line), and metrics.jsonl as it was."""
  workdir = tmp_path / "w"
  shutil.copytree(runs[0] / "full", workdir)
  shutil.rmtree(workdir / "checkpoints" / "4")  # resumes from step 2: the step-4 row goes
  before = (workdir / "metrics.jsonl").read_bytes()
  os.symlink("/dev/full", workdir / "metrics.jsonl.tmp")  # every write fails with ENOSPC
  with pytest.raises(workdir_lib.WorkdirError, match=(
      f"^--workdir {workdir}: writing metrics.jsonl and config.json failed \\(No space left on "
      "device\\); make room there \\(or make it writable\\), or move the run to a folder that "
      "is, and rerun$")):
    trainer.train_and_evaluate(tiny_config(), str(workdir))
  assert (workdir / "metrics.jsonl").read_bytes() == before
  assert not [n for n in os.listdir(workdir) if n.endswith(".tmp")]


def test_a_uri_workdir_is_refused_before_anything_is_written(tmp_path, monkeypatch):
  """gs://b/r was made a local folder 'gs:' and trained, and every checkpoint write then failed
  in orbax (a path with '//'): minutes of training lost. Readers refuse it alike."""
  monkeypatch.chdir(tmp_path)
  refusal = (r"^--workdir gs://bucket/run: URIs are not supported; give a local or mounted "
             r"path \(a bucket mounted with gcsfuse --rename-dir-limit works\)$")
  with pytest.raises(workdir_lib.WorkdirError, match=refusal):
    trainer.train_and_evaluate(tiny_config(), "gs://bucket/run")
  with pytest.raises(ValueError, match=refusal):
    generate.generate("gs://bucket/run", 1, str(tmp_path / "x.png"))
  with pytest.raises(ValueError, match=r"^--out gs://b/x.png: URIs are not supported; give a "
                                       r"local or mounted path$"):
    generate.generate(str(tmp_path / "any"), 1, "gs://b/x.png")
  # A shell variable left unset: 'config.json not found: is  a jaxgan training workdir?' before.
  with pytest.raises(ValueError, match=r"^--workdir is empty; pass a training run's workdir$"):
    generate.generate("", 1, str(tmp_path / "x.png"))
  from jaxgan.metrics import suite

  monkeypatch.setenv("JAXGAN_CACHE", "gs://b/c")
  with pytest.raises(ValueError, match=r"^cache folder gs://b/c \(eval.cache_dir, --cache-dir or "
                                       r"\$JAXGAN_CACHE\): URIs are not supported"):
    suite.cache_dir("")
  assert os.listdir(tmp_path) == []


def test_another_tools_folder_is_not_overwritten(tmp_path):
  """A workdir without checkpoints is a run killed before its first one, whose files are
  rewritten: unless its config.json is not a jaxgan config, as in another tool's folder."""
  workdir = tmp_path / "theirs"
  workdir.mkdir()
  (workdir / "config.json").write_text('{"lr": 0.1, "epochs": 5}')
  (workdir / "metrics.jsonl").write_text('{"step": 5, "loss": 0.3}\n')
  with pytest.raises(workdir_lib.WorkdirError, match=(
      rf"^--workdir {re.escape(str(workdir))} holds a config.json this jaxgan cannot read as a "
      r"run's \(.*\), and no checkpoint: pass a new --workdir, or delete that config.json to train "
      r"here$")):
    trainer.train_and_evaluate(tiny_config(**{"train.num_steps": 2}), str(workdir))
  assert (workdir / "config.json").read_text() == '{"lr": 0.1, "epochs": 5}'
  assert (workdir / "metrics.jsonl").read_text() == '{"step": 5, "loss": 0.3}\n'
  assert sorted(os.listdir(workdir)) == ["config.json", "metrics.jsonl"]  # no checkpoints/ made
  piped = tmp_path / "piped"  # a pipe: its open() waited for a writer forever
  piped.mkdir()
  os.mkfifo(piped / "config.json")
  with pytest.raises(workdir_lib.WorkdirError, match=(
      rf"^--workdir {re.escape(str(piped))}: its config.json is not a file; move it away, or pass "
      "another --workdir$")):
    trainer.train_and_evaluate(tiny_config(**{"train.num_steps": 2}), str(piped))


def test_cli_train_then_generate(tmp_path):
  """The issue's smoke command on the default config, then `generate` from its checkpoint."""
  workdir = tmp_path / "w"
  proc = run_module("jaxgan.train", "--config", "configs/default.py", "--workdir", str(workdir),
                    "--config.train.num_steps=4", "--config.train.log_every=2",
                    "--config.train.sample_every=4", "--config.train.checkpoint_every=4",
                    "--config.eval.cache_dir=relative/cache")
  assert proc.returncode == 0, proc.stderr[-2000:]
  assert [r["step"] for r in writers.read_metrics(str(workdir))] == [2, 4]
  # Paths are stored absolute (generate and evaluate may run from another folder).
  saved = json.load(open(workdir / "config.json"))
  assert saved["eval"]["cache_dir"] == os.path.join(REPO, "relative", "cache")
  assert (workdir / "samples" / "step_0000004.png").exists()
  assert (workdir / "checkpoints" / "4").is_dir()
  gen = run_module("jaxgan.generate", "--workdir", str(workdir), "--num", "16", "--out",
                   str(tmp_path / "grid.png"), "--label", "watch")
  assert gen.returncode == 0, gen.stderr[-2000:]
  assert (tmp_path / "grid.png").stat().st_size > 0
  assert "read only" not in gen.stderr and "read_only" not in gen.stderr  # orbax's notices
  assert "sampling checkpoint step 4 of" in gen.stderr  # which step the grid shows
  # On 3 devices each samples a third of every chunk (16 images: chunks of 18): the same grid.
  split = run_module("jaxgan.generate", "--workdir", str(workdir), "--num", "16", "--out",
                     str(tmp_path / "split.png"), "--label", "watch",
                     env={"XLA_FLAGS": xla_flags(3)})
  assert split.returncode == 0, split.stderr[-2000:]
  from PIL import Image

  one, three = (np.asarray(Image.open(tmp_path / n), np.int32) for n in ("grid.png", "split.png"))
  assert one.shape == three.shape and np.abs(one - three).max() <= 1


NO_TF = """
import os, sys
if sys.argv[2] == 'absent':
  sys.modules['tensorflow'] = None  # any `import tensorflow` now raises ImportError
from jaxgan import trainer, generate
from tests.conftest import tiny_config
trainer.train_and_evaluate(tiny_config(**{'train.num_steps': 2, 'train.sample_every': 2}),
                           sys.argv[1])
generate.generate(sys.argv[1], 4, sys.argv[1] + '/g.png')
# Nothing of TensorFlow got in by another door (tensorflow_datasets imports, partly, without it;
# tensorboard's lazy `compat.tf` would load all of it where it is installed, without tf_host's
# hiding of the GPUs).
loaded = [m for m, mod in sys.modules.items()
          if mod is not None and m.split('.')[0].startswith('tensorflow')]
assert not loaded, loaded[:5]
# TensorBoard's curves and grids do not need it.
from jaxgan import event_file
folder = sys.argv[1] + '/tensorboard'
(name,) = os.listdir(folder)
tags = {v.tag for r in event_file.iter_records(os.path.join(folder, name))
        for v in event_file.parse_event(r).summary.value}
assert {'d_loss', 'g_loss', 'samples'} <= tags, tags
print('ok')
"""


@pytest.mark.parametrize("tensorflow", ["absent", "installed"])
def test_training_and_generation_work_without_tensorflow(tmp_path, tensorflow):
  """A host without TensorFlow trains, samples and writes TensorBoard; where it is installed, a
  synthetic-data run does not import it (seconds of start-up)."""
  proc = subprocess.run([sys.executable, "-c", NO_TF, str(tmp_path / "w"), tensorflow], cwd=REPO,
                        capture_output=True, text=True, timeout=300)
  assert proc.returncode == 0, proc.stderr[-2000:]
  assert proc.stdout.strip().endswith("ok")
  assert "TensorBoard" not in proc.stderr  # no warning: the events are written
  assert (tmp_path / "w" / "metrics.jsonl").exists()


def test_images_per_sec_times_training_not_the_grids_and_checkpoints_between_rows(
    tmp_path, monkeypatch):
  """A grid at steps 3 and 6 (sample_every 3, log_every 6) takes 1000 s on the trainer's clock:
  the row of step 6 times its 5 timed steps only (a row's interval starts after the first call,
  which compiles). With checkpoint_every 3, a checkpoint at step 3 gets its own row, written
  before its checkpoint and grid: neither counts in the next row either."""
  import time
  import types

  skipped = []  # seconds the trainer's clock has jumped: a slow disk, or a large grid
  clock = types.SimpleNamespace(perf_counter=lambda: time.perf_counter() + sum(skipped))
  monkeypatch.setattr(train_progress, "time", clock)  # the rows' clock
  real_save = sampling.save_png

  def slow_save(image, path, *args, **kwargs):
    skipped.append(1000.0)
    real_save(image, path, *args, **kwargs)

  monkeypatch.setattr(sampling, "save_png", slow_save)
  for checkpoint_every, steps in ((6, [6]), (3, [3, 6])):
    skipped.clear()
    workdir = tmp_path / str(checkpoint_every)
    config = tiny_config(**{"train.num_steps": 6, "train.log_every": 6, "train.sample_every": 3,
                            "train.checkpoint_every": checkpoint_every,
                            "train.tensorboard": False})
    trainer.train_and_evaluate(config, str(workdir))
    assert len(skipped) == 3  # the grids were saved, and reals.png before the first step
    rows = writers.read_metrics(str(workdir))
    assert [row["step"] for row in rows] == steps
    # 2 to 5 steps of 8 in < 100 s (measured: 0.04 s); with a grid's 1000 s counted, < 0.04.
    assert all(row["images_per_sec"] > 5 * 8 / 100 for row in rows), rows


def test_off_a_terminal_a_run_logs_a_line_per_row_and_keeps_log_txt(tmp_path, capsys, caplog):
  """Redirected (a cluster job's log file), the bar's carriage-return redraws made one unreadable
  line with the losses once a minute: there a plain line per log row instead, no bar. Process 0's
  log lines also go to WORKDIR/log.txt (there was no run log), appended across restarts."""
  import logging
  import signal

  config = tiny_config(**{"train.num_steps": 4, "train.log_every": 2, "train.tensorboard": False})
  workdir = str(tmp_path / "w")
  with caplog.at_level(logging.INFO, logger="jaxgan"):
    trainer.train_and_evaluate(config, workdir)
    config.train.num_steps = 6
    ignored = signal.signal(signal.SIGINT, signal.SIG_IGN)  # as a script's background job
    try:
      trainer.train_and_evaluate(config, workdir)  # extended: a resume
    finally:
      signal.signal(signal.SIGINT, ignored)
  err = capsys.readouterr().err
  assert "train (compiling)" not in err and "train:" not in err and "\r" not in err, err
  rows = [m for m in caplog.messages if m.startswith("step ")]
  assert [r.split(":")[0] for r in rows] == [
      "step 2/4 (50%), 0.0 kimg", "step 4/4 (100%), 0.0 kimg", "step 6/6 (100%), 0.0 kimg"]
  assert all(" d_loss " in r and " g_loss " in r and " img/s, ETA 0:00:" in r for r in rows), rows
  logged = [line.split(": ", 1)[1] for line in open(os.path.join(workdir, "log.txt"))]
  _, _, state, _ = saved_run.load_checkpoint(workdir)
  g, d = (sum(x.size for x in _leaves(p)) for p in (state.g_params, state.d_params))
  starts = [line for line in logged if line.startswith(("training ", "resuming dcgan"))]
  assert starts == [f"{what} dcgan at step {step} of {total}: G {g:,}, D {d:,} parameters; data: "
                    f"synthetic, 3 classes; 1 cpu device(s), mesh 1x1 (data x fsdp); workdir "
                    f"{workdir}\n"
                    for what, step, total in [("training", 0, 4), ("resuming", 4, 6)]]
  assert [line for line in logged if line.startswith("step ")] == [r + "\n" for r in rows]
  done = [line for line in logged if line.startswith("done: ")]
  assert [d.split(" steps in ")[0] for d in done] == ["done: step 4 of 4, 4",
                                                      "done: step 6 of 6, 2"]
  assert "resuming from checkpoint step 4" in "".join(logged)
  # Where SIGINT is ignored (the second run), said: kill -INT did nothing, silently.
  assert [line.split(" (")[0] for line in logged if "SIGINT" in line] == [
      "SIGINT is ignored in this process"]
  # Not under launch/local_multiprocess.sh, whose processes it stops with SIGTERM.
  config.train.num_steps = 7
  ignored = signal.signal(signal.SIGINT, signal.SIG_IGN)
  try:
    with pytest.MonkeyPatch.context() as patch:
      patch.setenv("JAXGAN_LAUNCHER", "local_multiprocess")
      trainer.train_and_evaluate(config, workdir)
  finally:
    signal.signal(signal.SIGINT, ignored)
  assert open(os.path.join(workdir, "log.txt")).read().count("SIGINT is ignored") == 1
  # A start with nothing left to train says how it ended too (log.txt ended at its start).
  with caplog.at_level(logging.INFO, logger="jaxgan"):
    trainer.train_and_evaluate(config, workdir)
  last = open(os.path.join(workdir, "log.txt")).read().splitlines()[-1].split(": ", 1)[1]
  assert last.startswith("done: step 7 of 7, nothing left to train; checkpoints in ")


@pytest.mark.patches_traced_code
def test_the_progress_bar_says_it_compiles_and_times_the_steps_after(tmp_path, capsys,
                                                                     monkeypatch):
  """The first call (the compile: a minute for a ResNet on a CPU) is 1000 s on tqdm's clock
  here: the bar's elapsed time and rate count the steps after it only."""
  import dataclasses
  import time

  import tqdm.std

  jumped = []
  monkeypatch.setattr(tqdm.std, "time", lambda: time.time() + sum(jumped))
  real_build = run_lib.build_run

  def slow_first_call(config):
    run = real_build(config)

    def train_step(*args):
      jumped.append(0.0 if jumped else 1000.0)
      return run.train_step(*args)

    return dataclasses.replace(run, train_step=train_step)

  monkeypatch.setattr(run_lib, "build_run", slow_first_call)
  monkeypatch.setattr(sys.stderr, "isatty", lambda: True)  # the bar is a terminal's
  config = tiny_config(**{"train.num_steps": 8, "train.log_every": 4, "train.tensorboard": False})
  trainer.train_and_evaluate(config, str(tmp_path / "w"))
  assert len(jumped) == 8
  # On a terminal the bar shows the rows: their lines go to log.txt alone.
  logged = open(tmp_path / "w" / "log.txt").read()
  assert "jaxgan.trainer: step 4/8 (50%)" in logged and "jaxgan.trainer: step 8/8" in logged
  bars = [line for line in capsys.readouterr().err.split("\r") if line.startswith("train")]
  assert bars[0].startswith("train (compiling):   0%"), bars
  # Once compiled: no rate yet (one step over ~0 s would show thousands of steps/s).
  assert bars[1].startswith("train:  12%") and "?step/s" in bars[1], bars
  assert "train: 100%" in bars[-1] and " 8/8 [00:0" in bars[-1] and "step/s" in bars[-1], bars


def test_the_input_thread_ends_with_the_run_also_when_it_fails(tmp_path, monkeypatch):
  """Training that fails returns with its prefetch thread (and the data iterator it holds)
  stopped, even while the error is kept (a notebook keeps the last traceback, and with it the
  trainer's frame): a process that goes on must not keep reading data."""
  import threading

  from jaxgan import sharding

  real_put, puts, started = sharding.put_batch, [], []
  before = set(threading.enumerate())

  def put_then_fail(batch, where, rows):
    puts.append(1)
    if len(puts) == 2:  # the input thread is running now
      started.extend(t for t in threading.enumerate()
                     if t not in before and t.name == "jaxgan-prefetch")
      raise RuntimeError("device lost")
    return real_put(batch, where, rows)

  monkeypatch.setattr(sharding, "put_batch", put_then_fail)
  with pytest.raises(RuntimeError, match="device lost") as kept:
    trainer.train_and_evaluate(tiny_config(**{"train.num_steps": 4, "train.tensorboard": False}),
                               str(tmp_path / "w"))
  assert len(started) == 1
  for thread in started:
    thread.join(timeout=5)
  assert not [t for t in started if t.is_alive()] and kept.traceback


def test_a_run_that_fails_on_its_data_leaves_no_empty_workdir(tmp_path):
  """The workdir is made (and proven writable) before the data is read: a data error then left
  an empty folder behind (and the folders above it that it made); one that was there stays."""
  from jaxgan import data as data_lib

  (tmp_path / "photos").mkdir()  # no images in it
  config = tiny_config(**{"data.source": "folder", "data.path": str(tmp_path / "photos")})
  for existed in (False, True):
    if existed:
      (tmp_path / "runs" / "new" / "w").mkdir(parents=True)
    with pytest.raises(data_lib.DataError, match="no images in"):
      trainer.train_and_evaluate(config, str(tmp_path / "runs" / "new" / "w"))
    assert (tmp_path / "runs" / "new" / "w").exists() == existed
    assert (tmp_path / "runs").exists() == existed


@pytest.mark.patches_traced_code
def test_single_pngs_come_with_their_classes(runs, tmp_path, monkeypatch):
  """One PNG per image said nothing of its class: labels.csv names each file's class (and index),
  the labels the generator was given; none for soft labels, and an earlier run's is removed."""
  import csv

  root, _, _ = runs
  workdir = str(root / "full")
  given = []
  real_chunks = sampling.sample_in_chunks
  monkeypatch.setattr(sampling, "sample_in_chunks", lambda sampler, params, stats, z, labels, *a:
                      given.append(np.asarray(labels)) or real_chunks(sampler, params, stats, z,
                                                                     labels, *a))
  out = tmp_path / "singles"
  generate.generate(workdir, 7, str(out) + "/", seed=3)
  _, _, _, meta = saved_run.load_checkpoint(workdir)
  (attribute, names), = meta["attributes"]
  rows = list(csv.reader(open(out / generate.LABELS_FILE)))
  assert rows[0] == ["file", attribute, f"{attribute}_index"]
  assert rows[1:] == [[f"{i:06d}.png", names[j], str(j)] for i, j in enumerate(given[0])]
  assert len(set(given[0])) > 1  # several classes: the rows are each image's own
  generate.generate(workdir, 7, str(out) + "/", label=names[1], seed=3)  # over the first set
  rows = list(csv.reader(open(out / generate.LABELS_FILE)))
  assert [r[1:] for r in rows[1:]] == [[names[1], "1"]] * 7
  # Soft labels (--between): the images lie between classes, so no classes are listed (and the
  # earlier set's list goes).
  for name in os.listdir(out):
    if name.endswith(".png"):
      os.remove(out / name)
  generate.generate(workdir, 2, str(out) + "/", interpolate=2, between=f"{names[0]}:{names[1]}")
  assert not (out / generate.LABELS_FILE).exists()
