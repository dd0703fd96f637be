"""Config schema, validation (one line naming the key, before compilation) and the --config
flags (a bad override or config file as one line: flag_parsing.py). The tools' other flags:
test_cli.py."""

import glob
import json
import os

import pytest

from jaxgan import config as config_lib, flag_parsing
from jaxgan.config import validation as config_validation
from tests.conftest import REPO, run_module


@pytest.mark.parametrize("key,value,message", [
    ("data.image_size", 0, "data.image_size: must be a positive integer"),
    ("data.image_size", -32, "data.image_size: must be a positive integer"),
    ("data.image_size", 48, "data.image_size: model 'dcgan' builds images of size"),
    ("train.batch_size", 0, "train.batch_size: must be a positive integer"),
    ("train.num_steps", -1, "train.num_steps: must be a positive integer"),
    ("train.log_every", 0, "train.log_every"),
    ("data.num_classes", -2, "data.num_classes"),
    ("data.num_classes", 9, "data.num_classes: the synthetic catalog has 8 categories"),
    ("model.name", "stylegan9", "model.name: unknown model 'stylegan9'"),
    ("loss.name", "wasserstein", "loss.name: unknown loss 'wasserstein'"),
    ("data.source", "s3", "data.source: unknown data source 's3'"),
    ("train.dtype", "float16", "train.dtype: must be one of"),
    ("optim.g_lr", 0.0, "optim.g_lr: must be > 0"),
    ("optim.d_lr", float("inf"), "optim.d_lr: must be > 0 and finite in float32, got inf"),
    ("optim.g_lr", 1e39, "optim.g_lr: must be > 0 and finite in float32, got 1e+39"),
    ("data.max_bad_fraction", 5, "data.max_bad_fraction: must be a fraction in [0, 1], got 5"),
    ("data.workers", -3, "data.workers: must be an integer >= 0 (0 = every core), got -3"),
    # Each would reject every image, found only after the data had been decoded.
    ("data.max_pixels", 0, "data.max_pixels: must be a positive integer, got 0"),
    ("data.min_source_size", 0, "data.min_source_size: must be a positive integer, got 0"),
    # Read by `evaluate --workdir` as its sample count even when training never evaluates.
    ("train.eval_num_samples", -3, "train.eval_num_samples: must be a positive integer, got -3"),
    # ada_init_p is 0 by default: ADA's pipeline at a fixed p of 0 never augments.
    ("augment.name", "ada_fixed", "augment.ada_p_init: augment.name=ada_fixed applies ADA's "
     "pipeline at this fixed p, and at 0 (in float32, in which the step holds it) it never "
     "augments"),
    # Read only with an explicit host:port: without it, each process would train alone.
    ("distributed.num_processes", 4, "distributed.num_processes: got 4, but it is read only "
     "with distributed.coordinator_address=host:port"),
    ("distributed.process_id", 2, "distributed.process_id: got 2, but it is read only"),
    ("optim.b1", 1.0, "optim.b1"),
    # Each was a traceback after the workdir was written: host memory for the latents (596 GiB)
    # or the grid (64 GiB).
    ("eval.standing_stats_batches", 10**8, "eval.standing_stats_batches: must be at most 10000"),
    ("train.samples_per_class", 2**31 - 1, "train.samples_per_class: 2147483647 columns of 3 "
     "rows at 16x16 make a sample grid of 1,649,267,440,896 pixels, past 1,073,741,824; set at "
     "most 1398101"),
    ("train.steps_per_call", 65, "train.steps_per_call: must be at most 64 (each call compiles "
     "that many unrolled copies of the step), got 65"),
    # Checked as float32 holds them: 1.0 there makes Adam's every update non-finite, 0.0 a
    # learning rate that never moves (or a weight that is off).
    ("optim.b2", 0.99999999999, "optim.b2: 0.99999999999 is 1.0 in float32, in which the step "
     "computes; use at most 0.9999999"),
    ("loss.lecam_ema_decay", 1 - 1e-11, "loss.lecam_ema_decay: 0.99999999999 is 1.0 in float32"),
    ("optim.g_lr", 1e-46, "optim.g_lr: must be > 0 and finite in float32, got 1e-46"),
    ("loss.lecam_weight", 1e-46, "loss.lecam_weight: 1e-46 is 0 in float32, in which the step "
     "computes (so it would be off); set 0 to turn it off"),
    # ':' hung in jax.distributed, a port that is not a number was a traceback from its server.
    ("distributed.coordinator_address", "localhost:abc", "distributed.coordinator_address: must "
     "be host:port with a port in 1..65535 (process 0's host), or 'auto'; got 'localhost:abc'"),
    ("distributed.coordinator_address", ":", "distributed.coordinator_address: must be host:port"),
    ("distributed.coordinator_address", "host:99999", "distributed.coordinator_address: must be"),
    ("loss.name", "wgan_gp", "model.d_norm: loss 'wgan_gp' penalises per-sample gradients"),
    ("mesh.data", 3, "mesh.data"),
    ("model.downsample_impl", "fft", "model.downsample_impl: must be one of"),
    ("model.norm_impl", "cudnn", "model.norm_impl: must be one of"),
    ("train.steps_per_call", 0, "train.steps_per_call"),
    ("seed", -1, "seed: must be an integer in [0, 2**32), got -1"),
    ("seed", 2**32 + 5, "seed: must be an integer in [0, 2**32), got 4294967301"),
    # Past int32 (the step's counters and shapes; float() of 10**400 overflows): a traceback
    # after compiling, or inside validation itself for loss.r1_interval.
    ("train.batch_size", 10**12, "train.batch_size: must be at most 2147483647 in size (int32, "
     "as the step holds it), got 1000000000000"),
    ("train.num_steps", 2**31, "train.num_steps: must be at most 2147483647"),
    ("loss.r1_interval", 10**400, "loss.r1_interval: must be at most 2147483647"),
    ("augment.ada_interval", 2**40, "augment.ada_interval: must be at most 2147483647"),
    ("train.ema_half_life_images", 10**400, "train.ema_half_life_images: must be finite in "
     "float32, got an integer of 401 digits"),
])
def test_invalid_values_name_the_key(make_config, key, value, message):
  config = make_config(**{key: value})
  with pytest.raises(config_lib.ConfigError) as info:
    config_validation.validate(config, num_devices=1)
  assert message in str(info.value)
  assert "\n" not in str(info.value)


@pytest.mark.parametrize("key", ["data.path", "data.cache_dir", "eval.weights", "eval.cache_dir",
                                 "train.init_from"])
def test_a_uri_for_a_local_path_is_refused(make_config, key):
  """gs://b/c became a local folder 'gs:' (eval.cache_dir: a cache written there, silently);
  TFDS reads its own data dir, gs:// included."""
  with pytest.raises(config_lib.ConfigError, match=(
      rf"^config key {key}: 'gs://b/c': URIs are not supported; give a local or mounted path$")):
    config_validation.validate(make_config(**{key: "gs://b/c"}), num_devices=1, reads_data=False)
  config_validation.validate(make_config(**{"data.source": "tfds", "data.tfds_name": "mnist",
                                            "data.tfds_data_dir": "gs://b/c"}),
                             num_devices=1, reads_data=False)


def test_integer_keys_the_step_reads_as_floats_may_pass_int32(make_config):
  """A half-life of 10**12 images freezes the EMA (a test does so); the keys only the host reads
  are not bound either."""
  # Host-only: prepare's flag takes it too.
  config_validation.validate(make_config(**{"data.source": "folder", "data.max_pixels": 3 * 10**9}),
                             num_devices=1, reads_data=False)
  config_validation.validate(make_config(**{"train.ema_half_life_images": 10**12,
                                            "augment.name": "ada", "augment.ada_kimg": 2**40}),
                             num_devices=1)


def test_the_loader_limits_default_alike_in_training_and_prepare():
  """data.min_source_size and data.max_pixels, prepare's --min-source-size and --max-pixels, and
  the loader's own defaults (evaluate's folders) are one setting each."""
  from jaxgan import prepare
  from jaxgan.data.images import LoadOptions

  config = config_lib.base_config()
  args = prepare.parse_args(["--images", "in", "--out", "out"])
  defaults = (LoadOptions.min_source_size, LoadOptions.max_pixels)
  assert (config.data.min_source_size, config.data.max_pixels) == defaults
  assert (args.min_source_size, args.max_pixels) == defaults


def test_prepare_help_states_each_default(capsys):
  from jaxgan import prepare

  with pytest.raises(SystemExit) as info:
    prepare.parse_args(["--help"])
  assert info.value.code == 0
  text = " ".join(capsys.readouterr().out.split())  # argparse wraps lines
  for default in ("side of the square images written (default: 64)", "(default: id)",
                  "(default: {id}.jpg)", "(default: other)", "(default: 8)",
                  "(default: 64000000)"):
    assert default in text
  assert "(default: None)" not in text and "(default: )" not in text


RESNET32 = {"model.name": "resnet", "data.image_size": 32}


@pytest.mark.parametrize("overrides,message", [
    ({**RESNET32, "model.attention_resolution": 32},  # a G block's size, but not a D block's
     "model.attention_resolution: 32 is not a resolution both ResNet G and D have at image size 32; "
     "choose one of [8, 16]"),
    ({**RESNET32, "model.attention_resolution": 48}, "model.attention_resolution: 48"),
    ({**RESNET32, "model.z_dim": 3}, "model.z_dim: 3 is smaller than the 4 latent chunks"),
    ({**RESNET32, "model.shared_dim": 0}, "model.shared_dim: must be a positive integer"),
    ({"data.num_classes": 0, "eval.metrics": "fid,per_class_fid"},
     "eval.metrics: 'per_class_fid' needs a conditional run"),
    ({"eval.num_real": -1}, "eval.num_real: must be an integer >= 0"),
    # An infinite weight skips every step it applies to as non-finite (R1's, 1 in r1_interval,
    # never streaked to the stop: R1 silently never applied).
    ({"model.d_norm": "layer", "loss.r1_gamma": float("inf")},
     "loss.r1_gamma: must be >= 0 and finite in float32 as scaled, got inf"),
    # Finite in float64 but inf in the float32 step, itself or times R1's lazy scale (0.5 * 16).
    ({"model.d_norm": "layer", "loss.r1_gamma": 1e38},
     "loss.r1_gamma: must be >= 0 and finite in float32 as scaled, got 1e+38"),
    ({"loss.lecam_weight": float("inf")},
     "loss.lecam_weight: must be >= 0 and finite in float32, got inf"),
    ({"model.orthogonal_reg": 1e39},
     "model.orthogonal_reg: must be >= 0 and finite in float32, got 1e+39"),
    ({"loss.gp_weight": -1.0}, "loss.gp_weight: must be >= 0 and finite in float32, got -1.0"),
    # 0 in float32, as the step holds p: a fixed p that never augments, trained on silently.
    ({"augment.name": "ada_fixed", "augment.ada_p_init": 1e-50},
     "augment.ada_p_init: augment.name=ada_fixed applies ADA's pipeline at this fixed p, and at "
     "0 (in float32"),
    # An empty policy parsed to no op: DiffAugment returned its input, silently.
    ({"augment.name": "diffaugment", "augment.policy": " , "},
     "augment.policy: ' , ' names no op, so DiffAugment would never augment"),
    ({"train.eval_every": 10, "eval.metrics": " "},
     "eval.metrics: is empty while train.eval_every=10 evaluates; name the metrics"),
    ({"train.eval_every": 10, "train.eval_num_samples": 3, "eval.metrics": "fid,pr"},
     "train.eval_num_samples: must be >= 4 for eval.metrics='fid,pr', got 3"),
    ({"train.eval_every": 10, "eval.num_real": 2, "eval.metrics": "pr"},
     "eval.num_real: must be 0 or >= 4 for eval.metrics='pr', got 2"),
    # A catalog's keys with the default source: it would train on drawings without a word.
    ({"data.path": "data/catalog64"}, "data.path: data.source is 'synthetic', which reads no "
     "files; set --config.data.source (prepared, folder, manifest or tfds) or drop data.path"),
    ({"data.label_column": "articleType"}, "data.label_column: data.source is 'synthetic'"),
    # A key the source does not read, ignored without a word before: a prepared set's labels
    # and images were made by `prepare`; a folder has no tfds name.
    ({"data.source": "prepared", "data.path": "x", "data.min_class_count": 50},
     "data.min_class_count: data.source is 'prepared', whose images and labels `python -m "
     "jaxgan.prepare` made (its flags --min-class-count"),
    ({"data.source": "prepared", "data.path": "x", "data.label_column": "articleType"},
     "data.label_column: data.source is 'prepared'"),
    ({"data.source": "folder", "data.path": "x", "data.tfds_name": "cifar10"},
     "data.tfds_name: data.source is 'folder', which does not read it; drop data.tfds_name"),
    ({"data.source": "tfds", "data.tfds_name": "cifar10", "data.path": "x"},
     "data.path: data.source is 'tfds', which does not read it"),
    ({"data.min_source_size": 30}, "data.min_source_size: data.source is 'synthetic', which "
     "reads no files"),
    # How a source reads, for a source that does not: data.max_bad_fraction=0 on a prepared set
    # asked for a strictness that nothing checked (prepare dropped its bad files).
    ({"data.source": "prepared", "data.path": "x", "data.max_bad_fraction": 0.0},
     "data.max_bad_fraction: data.source is 'prepared', whose images and labels"),
    ({"data.source": "prepared", "data.path": "x", "data.workers": 4},
     "data.workers: data.source is 'prepared'"),
    ({"data.workers": 4}, "data.workers: data.source is 'synthetic', which reads no files"),
    # Whatever train.eval_every (evaluate --workdir reads it): every evaluation failed with a
    # MemoryError while the run trained on.
    ({"eval.batch_size": 10**8}, "eval.batch_size: an Inception batch of 100000000 images (its "
     "299x299 float32 inputs alone) takes 9.991e+04 GiB, more than this host's"),
    ({"data.source": "tfds", "data.tfds_name": "cifar10", "data.cache_dir": "/tmp/c"},
     "data.cache_dir: data.source is 'tfds', which does not read it; drop data.cache_dir"),
    # A model's, loss's or augmentation's key that the one picked does not read: ignored
    # without a word before (a DCGAN trained for days without the attention asked for).
    ({"model.attention_resolution": 16}, "model.attention_resolution: model.name is 'dcgan', "
     "which does not read it; drop model.attention_resolution (or pick a model that reads it)"),
    ({**RESNET32, "model.d_norm": "layer"}, "model.d_norm: model.name is 'resnet', which does not "
     "read it"),
    ({**RESNET32, "model.embed_dim": 32}, "model.embed_dim: model.name is 'resnet', which does "
     "not read it"),  # its class embedding is model.shared_dim
    ({"loss.name": "hinge", "loss.gp_weight": 5.0}, "loss.gp_weight: loss.name is 'hinge', "
     "which does not read it; drop loss.gp_weight (or pick a loss that reads it)"),
    ({"augment.name": "ada", "augment.policy": "color"}, "augment.policy: augment.name is 'ada', "
     "which does not read it"),
    ({"augment.name": "diffaugment", "augment.ada_target": 0.5}, "augment.ada_target: "
     "augment.name is 'diffaugment', which does not read it"),
    ({"augment.name": "ada_fixed", "augment.ada_p_init": 0.2, "augment.ada_kimg": 100},
     "augment.ada_kimg: augment.name is 'ada_fixed', which does not read it"),
    # A regulariser's setting with that regulariser off: R1's interval without R1 trained a run
    # with no R1 at all, without a word.
    ({"loss.r1_interval": 4}, "loss.r1_interval: R1 is off (loss.r1_gamma = 0), so it has no "
     "effect; drop loss.r1_interval or set loss.r1_gamma > 0"),
    ({"loss.lecam_ema_decay": 0.9}, "loss.lecam_ema_decay: LeCam is off (loss.lecam_weight = 0)"),
    # mesh.data was named, with "at most 0" for it.
    ({"mesh.fsdp": 16, "mesh.data": 1}, "mesh.fsdp: 16 is more than the device count (1); set at "
     "most 1"),
    ({"mesh.fsdp": 2}, "mesh.fsdp: 2 is more than the device count (1)"),
    ({"distributed.coordinator_address": "auto", "distributed.num_processes": 4},
     "distributed.num_processes: got 4, but with distributed.coordinator_address='auto' JAX "
     "detects it; leave it at 1"),
])
def test_invalid_combinations_name_the_key(make_config, overrides, message):
  with pytest.raises(config_lib.ConfigError) as info:
    config_validation.validate(make_config(**overrides), num_devices=1)
  assert message in str(info.value) and "\n" not in str(info.value)


def test_a_regularisers_settings_are_accepted_while_it_is_on(make_config):
  config_validation.validate(make_config(**{"loss.r1_gamma": 1.0, "loss.r1_interval": 4,
                                            "model.d_norm": "layer", "loss.lecam_weight": 0.1,
                                            "loss.lecam_ema_decay": 0.9}), num_devices=1)


def test_how_a_source_reads_is_accepted_where_it_reads(make_config):
  """data.workers, max_bad_fraction and cache_dir: refused above where unread, accepted here."""
  how = {"data.workers": 2, "data.max_bad_fraction": 0.0, "data.cache_dir": "/tmp/c"}
  for source in ({"data.source": "folder", "data.path": "x"},
                 {"data.source": "manifest", "data.path": "x.csv", "data.label_column": "a"}):
    config_validation.validate(make_config(**source, **how), num_devices=1, reads_data=False)
  config_validation.validate(make_config(**{"data.source": "prepared", "data.path": "x",
                                            "data.cache_dir": "/tmp/c"}),
                             num_devices=1, reads_data=False)
  config_validation.validate(make_config(**{"data.source": "tfds", "data.tfds_name": "cifar10",
                                            "data.max_bad_fraction": 0.0}), num_devices=1,
                             reads_data=False)


def test_resnet_d_has_no_batchnorm_to_refuse(make_config):
  # model.d_norm is a DCGAN D setting: per-sample-gradient losses need no change of it for ResNet.
  for overrides in ({"loss.name": "wgan_gp"}, {"loss.r1_gamma": 1.0}):
    config_validation.validate(make_config(**RESNET32, **overrides, **{"model.d_norm": "batch"}), 1)
  # An unconditional ResNet G has no class embedding: shared_dim is not used, 0 is fine.
  config_validation.validate(
             make_config(**RESNET32, **{"data.num_classes": 0, "model.shared_dim": 0}), 1)
  for size, attention in ((32, 16), (64, 32), (128, 64)):
    config_validation.validate(make_config(**{**RESNET32, "data.image_size": size,
                                              "model.attention_resolution": attention}), 1)


def test_schedule_must_fit_steps_per_call(make_config):
  config = make_config(**{"train.steps_per_call": 2})
  config_validation.validate(config, num_devices=1)
  config_validation.validate_schedule(config)  # 4 steps, every 2
  config = make_config(**{"train.steps_per_call": 3})
  config_validation.validate(config, num_devices=1)  # the benchmark needs no schedule
  with pytest.raises(config_lib.ConfigError, match="train.num_steps: 4 is not a multiple of "
                     "train.steps_per_call=3"):
    config_validation.validate_schedule(config)


def test_an_eval_cache_dir_that_is_a_file_is_refused_where_training_evaluates(
    make_config, tmp_path, monkeypatch):
  """Each evaluation's caching of the reals' features failed with a warning (the features were
  extracted again at every start); `evaluate --cache-dir` refused it already. Only where the run
  evaluates: without train.eval_every the key is unread (evaluate --cache-dir may override it)."""
  from jaxgan import startup, trainer
  from tests.conftest import tiny_config

  monkeypatch.setattr(startup.inception_weights, "find_weights", lambda path: path)  # found
  made = []
  real_prepare = startup.workdir_lib.prepare_workdir
  monkeypatch.setattr(startup.workdir_lib, "prepare_workdir",
                      lambda workdir: made.append(workdir) or real_prepare(workdir))
  (tmp_path / "cache").write_text("")
  for where, blocked in ((tmp_path / "cache", ""), (tmp_path / "cache" / "sub", " \\(.*cache\\)")):
    config = tiny_config(**{"train.eval_every": 2, "eval.cache_dir": str(where)})
    with pytest.raises(config_lib.ConfigError, match=(
        f"^config key eval.cache_dir: {where}{blocked}: is a file, not a folder; set a folder "
        r"\(or '' for the default\)$")):
      trainer.train_and_evaluate(config, str(tmp_path / "w"))
  assert made == []  # refused before the workdir was made
  # Without evaluations the key is unread: the run trains.
  config = tiny_config(**{"train.num_steps": 1, "train.tensorboard": False,
                          "eval.cache_dir": str(tmp_path / "cache")})
  assert int(trainer.train_and_evaluate(config, str(tmp_path / "w")).step) == 1


@pytest.mark.patches_traced_code
def test_a_batch_larger_than_the_hosts_memory_is_refused(make_config, monkeypatch):
  """Not read, then killed by the OS with no message (after writing the workdir's config)."""
  with pytest.raises(config_lib.ConfigError, match=r"^config key train.batch_size: a step's "
                     r"2147483646 images .* take 6144 GiB, more than this host's .* GiB of "
                     r"memory; use a smaller batch$"):
    config_validation.validate(make_config(**{"train.batch_size": 2**31 - 2, "data.image_size": 32,
                                              "train.n_critic": 1}), num_devices=1)
  from jaxgan import resources
  from jaxgan.config import mesh_checks
  # The Inception batch's own bound (its 299x299 inputs) would refuse first at these sizes.
  monkeypatch.setattr(mesh_checks, "eval_batch_problem", lambda *args: "")
  config = make_config(**{"train.batch_size": 8, "train.n_critic": 2, "data.image_size": 16})
  needed = 16 * 16 * 16 * 3  # 16 rows a step
  monkeypatch.setattr(resources, "host_memory_bytes", lambda: needed)
  config_validation.validate(config, num_devices=1)
  config_validation.validate(make_config(**{"train.batch_size": 16, "train.n_critic": 2,
                                            "data.image_size": 16}), num_devices=1, num_processes=2)
  monkeypatch.setattr(resources, "host_memory_bytes", lambda: needed - 1)
  with pytest.raises(config_lib.ConfigError, match=r"a step's 16 images \(batch_size \* "
                     r"n_critic per process\) of 16x16x3 bytes"):
    config_validation.validate(config, num_devices=1)
  # A call of several steps holds them all (stacked): refused where one step alone fits.
  monkeypatch.setattr(resources, "host_memory_bytes", lambda: 3 * needed)
  config_validation.validate(config, num_devices=1)
  with config.unlocked():
    config.train.steps_per_call = 4
  with pytest.raises(config_lib.ConfigError, match=r"^config key train.steps_per_call: a call's "
                     r"64 images \(batch_size \* n_critic \* steps_per_call per process\) of "
                     r"16x16x3 bytes take .*; use fewer steps per call$"):
    config_validation.validate(config, num_devices=1)
  monkeypatch.setattr(resources, "host_memory_bytes", lambda: None)  # the OS does not say
  config_validation.validate(config, num_devices=1)


@pytest.mark.patches_traced_code
def test_a_train_state_larger_than_the_hosts_memory_is_refused_before_compiling(monkeypatch):
  """A typo'd model.z_dim of 10^8 (800 GB of state) started, then ended in a MemoryError
  traceback (or the OS's kill) after writing the workdir."""
  import jax

  from jaxgan import resources, run as run_lib
  from tests.conftest import tiny_config

  with pytest.raises(config_lib.ConfigError, match=r"^config key model: dcgan's train state \(G "
                     r"[0-9,]+ and D [0-9,]+ parameters, G's EMA and the optimizers' moments\) "
                     r"takes .* GiB, more than this host's .* GiB of memory; use a smaller model "
                     r"\(model.z_dim, model.g_width, model.d_width\) or split it over more "
                     r"devices with mesh.fsdp$"):
    run_lib.build_run(tiny_config(**{"model.z_dim": 10**9}))
  config = tiny_config()
  state = run_lib.build_run(config).abstract_state  # on one device: all of it
  needed = sum(x.size * x.dtype.itemsize for x in jax.tree_util.tree_leaves(state))
  from jaxgan.config import mesh_checks  # the batches' own bounds would refuse first at these sizes
  monkeypatch.setattr(mesh_checks, "eval_batch_problem", lambda *args: "")
  monkeypatch.setattr(mesh_checks, "_check_batch_fits_host", lambda *args: None)
  monkeypatch.setattr(resources, "host_memory_bytes", lambda: needed)
  run_lib.build_run(config)
  monkeypatch.setattr(resources, "host_memory_bytes", lambda: needed - 1)
  with pytest.raises(config_lib.ConfigError, match=r"^config key model: "):
    run_lib.build_run(config)
  # Compiled only (--compile_only: planning for devices this machine lacks), it is not refused.
  assert run_lib.compile_report(config)["num_devices"] == 1


def test_batch_must_divide_over_devices(make_config):
  config = make_config(**{"train.batch_size": 12})
  config_validation.validate(config, num_devices=4)
  with pytest.raises(config_lib.ConfigError, match="train.batch_size: global batch 12 is not "
                     "divisible by the 8 devices of the mesh"):
    config_validation.validate(config, num_devices=8)


def test_valid_configs_pass(make_config):
  config_validation.validate(make_config(), num_devices=1)
  config_validation.validate(make_config(**{"loss.name": "wgan_gp", "model.d_norm": "layer",
                                            "train.n_critic": 2}), num_devices=1)


def test_unknown_keys_are_rejected(make_config):
  config = make_config()
  config.train.unlocked = True  # tiny_config is not locked; a config file could do this
  with pytest.raises(config_lib.ConfigError, match="unknown config key train.unlocked"):
    config_validation.validate(config, num_devices=1)
  # A config file's typo gets the command line's suggestion too.
  config = make_config()
  config.train.num_stepz = 5
  with pytest.raises(config_lib.ConfigError) as raised:
    config_validation.validate(config, num_devices=1)
  assert str(raised.value) == ("unknown config key train.num_stepz: not in the schema of "
                               "jaxgan/config/schema.py (check the spelling). Did you mean "
                               "train.num_steps?")


def test_json_round_trip(make_config):
  config = make_config(**{"train.num_steps": 7})
  again = config_lib.from_json(config_lib.to_json(config))
  assert again.to_dict() == config.to_dict()


@pytest.mark.parametrize("text, message", [
    ("null", "a JSON object of config sections was expected, got 'null'"),  # was: the defaults
    ("[]", "a JSON object of config sections was expected"),  # was: AttributeError
    # ConfigDict's TypeError for a list where a number belongs:
    ('{"train": {"batch_size": [1, 2]}}', "config key train.batch_size: Could not override"),
    # ConfigDict takes a null for any key: generate failed on it with a TypeError in sampling.
    ('{"train": {"batch_size": null}}', "config key train.batch_size: must be an integer, got "
                                        "None"),
    # Was: 'unknown key train'.
    ('{"train": null}', "config key train: a section of keys, got None"),
    ('{"model": "dcgan"}', "config key model: a section of keys, got 'dcgan'"),
])
def test_a_damaged_workdir_config_is_one_clear_error(tmp_path, text, message):
  from jaxgan import saved_run

  (tmp_path / "config.json").write_text(text)
  with pytest.raises(ValueError, match="config.json is not a readable jaxgan config") as info:
    saved_run.load_config(str(tmp_path))
  assert message in str(info.value)


def test_a_workdir_config_that_is_no_text_file_is_one_clear_error(tmp_path):
  """A config.json folder was an IsADirectoryError traceback (evaluate), a pipe hung generate in
  open(), undecodable bytes named no file, and a --workdir that is a file looked for
  FILE/config.json."""
  from jaxgan import saved_run

  folder, pipe, binary = tmp_path / "folder", tmp_path / "pipe", tmp_path / "binary"
  for workdir in (folder, pipe, binary):
    workdir.mkdir()
  (folder / "config.json").mkdir()
  os.mkfifo(pipe / "config.json")
  (binary / "config.json").write_bytes(b"\xff\xfe{}")
  for workdir, message in ((folder, "is not a file; restore the run's config.json"),
                           (pipe, "is not a file; restore the run's config.json"),
                           (binary, "is not a readable jaxgan config ('utf-8' codec can't "
                                    "decode byte 0xff")):
    with pytest.raises(ValueError) as info:
      saved_run.load_config(str(workdir))
    assert str(info.value).startswith(f"{workdir / 'config.json'} {message}")
  (tmp_path / "file").write_text("{}")
  with pytest.raises(ValueError, match=r"^--workdir \S+file is a file, not a folder; pass a "
                                       "training run's workdir"):
    saved_run.load_config(str(tmp_path / "file"))


@pytest.mark.parametrize("key, value, known", [
    ("model", {"name": "stylegan2"}, "dcgan, resnet"),  # a newer jaxgan's model, say
    ("train", {"dtype": "float64"}, "float32, bfloat16"),
    ("data", {"source": "webdataset"}, "folder, manifest, prepared, synthetic, tfds"),
])
def test_a_workdir_config_naming_code_this_jaxgan_lacks_is_one_clear_error(tmp_path, key, value,
                                                                          known):
  """generate and evaluate --workdir built from it and failed with the registry's KeyError
  traceback (or a dict's, for the dtype)."""
  from jaxgan import saved_run

  (tmp_path / "config.json").write_text(json.dumps({key: value}))
  (name, bad), = value.items()
  with pytest.raises(ValueError) as info:
    saved_run.load_config(str(tmp_path))
  assert str(info.value) == (f"{tmp_path / 'config.json'}: {key}.{name} is {bad!r}, which this "
                             f"jaxgan does not have (it has {known}); use the jaxgan that trained "
                             "the run")


def test_cli_rejects_unknown_override_and_bad_value_before_compiling(tmp_path):
  workdir = tmp_path / "w"
  typo = run_module("jaxgan.train", "--config", "configs/default.py", "--workdir", str(workdir),
                    "--config.seed=1", "--config.train.batch_sizee=3")
  assert typo.returncode == 2
  assert typo.stderr.strip().splitlines() == [  # one line, not ml_collections' traceback
      "error: --config.train.batch_sizee: unknown key 'batch_sizee'. Did you mean \"batch_size\" "
      "instead of \"batch_sizee\"? (the keys: docs/config.md or jaxgan/config/schema.py)"]
  # Blamed on the override that is not a key, not on a valid one with the same name.
  both = run_module("jaxgan.train", "--config", "configs/default.py", "--workdir", str(workdir),
                    "--config.train.batch_size=64", "--config.data.batch_size=3")
  assert both.returncode == 2 and both.stderr.strip().splitlines() == [
      "error: --config.data.batch_size: unknown key 'batch_size'. Did you mean eval.batch_size "
      "or train.batch_size? (the keys: docs/config.md or jaxgan/config/schema.py)"], both.stderr
  # A bug inside a config file is not dressed up as a bad override: the file's own error, with
  # its line.
  (tmp_path / "buggy.py").write_text("from jaxgan.config import base_config\n\n"
                                     "def get_config():\n  return base_config().trian\n")
  buggy = run_module("jaxgan.train", "--config", str(tmp_path / "buggy.py"), "--workdir",
                     str(workdir), "--config.seed=1")
  assert buggy.returncode == 2 and len(buggy.stderr.strip().splitlines()) == 1, buggy.stderr
  assert buggy.stderr.startswith(f"error: --config {tmp_path / 'buggy.py'}: AttributeError: ")
  assert "trian" in buggy.stderr and f"({tmp_path / 'buggy.py'}:4, raised in " in buggy.stderr
  assert "ml_collections" in buggy.stderr  # where it was raised: the library the line called
  # Asking for help after a bad flag: still the flag's one-line error, not a traceback.
  late_help = run_module("jaxgan.train", "--config", "configs/default.py",
                         "--config.train.nosuch=1", "--help")
  assert late_help.returncode == 2 and late_help.stderr.strip().splitlines() == [
      "error: --config.train.nosuch: unknown key 'nosuch'. (the keys: docs/config.md or "
      "jaxgan/config/schema.py)"], late_help.stderr
  # A get_config() that forgot its return: not "--config is required", which it was given.
  (tmp_path / "none.py").write_text("def get_config():\n  pass\n")
  none = run_module("jaxgan.train", "--config", str(tmp_path / "none.py"), "--workdir",
                    str(workdir))
  assert none.returncode == 2 and none.stderr.strip().splitlines()[-1] == (
      f"error: --config {tmp_path / 'none.py'}: get_config() returned None; it must return the "
      "ConfigDict, as configs/default.py does")
  # The same with an override, which ml_collections tried to apply to None (a KeyError traceback).
  none = run_module("jaxgan.train", "--config", str(tmp_path / "none.py"), "--workdir",
                    str(workdir), "--config.seed=1")
  assert none.returncode == 2 and none.stderr.strip().splitlines()[-1] == (
      f"error: --config {tmp_path / 'none.py'}: get_config() returned None; it must return the "
      "ConfigDict, as configs/default.py does"), none.stderr
  # A section the file set to None, under an override into it: the override and the section,
  # not ml_collections' traceback.
  (tmp_path / "no_train.py").write_text(
      "from jaxgan.config import base_config\n\ndef get_config():\n  c = base_config()\n"
      "  c.train = None\n  return c\n")
  no_train = run_module("jaxgan.train", "--config", str(tmp_path / "no_train.py"), "--workdir",
                        str(workdir), "--config.seed=1", "--config.train.num_steps=2")
  assert no_train.returncode == 2 and no_train.stderr.strip().splitlines() == [
      f"error: --config.train.num_steps: section train is None in {tmp_path / 'no_train.py'}; a "
      "config file sets the keys in it instead (config.train.KEY = ...)"], no_train.stderr
  bad = run_module("jaxgan.train", "--config", "configs/default.py", "--workdir", str(workdir),
                   "--config.data.image_size=40")
  assert bad.returncode == 2
  assert bad.stderr.strip().splitlines()[-1].startswith("error: config key data.image_size:")
  assert not workdir.exists()  # failed before any work, nothing written


def test_an_unknown_override_is_matched_to_near_keys_or_keys_containing_it():
  """ml_collections suggests by spelling alone: --config.train.steps got no suggestion."""
  assert flag_parsing._similar_keys("--config.train.steps") == " Did you mean train.num_steps?"
  assert flag_parsing._similar_keys("--config.model.width") == (
      " Did you mean model.g_width, model.d_width or model.max_width?")
  assert flag_parsing._similar_keys("--config.sed") == " Did you mean seed?"  # a root key
  assert flag_parsing._similar_keys("--config.train.nosuch") == ""
  # No such section: words of any key.
  assert flag_parsing._similar_keys("--config.nosuch.steps") == (
      " Did you mean train.max_nonfinite_steps, train.num_steps or train.steps_per_call?")
  # The name in other sections first; no substring guesses from a name of fewer than 3
  # letters (it is in too many), but whole words of keys, in any section.
  assert flag_parsing._similar_keys("--config.data.batch_size") == (
      " Did you mean eval.batch_size or train.batch_size?")
  assert flag_parsing._similar_keys("--config.train.n") == " Did you mean train.n_critic?"
  assert flag_parsing._similar_keys("--config.train.lr") == (
      " Did you mean optim.d_lr or optim.g_lr?")
  assert flag_parsing._similar_keys("--config.train.q") == ""


def test_a_config_that_is_not_a_config_dict_or_lacks_a_section_is_named_so():
  """Not "unknown config key train" (or augment, the first key of a dict's), which sends the
  user looking for a typo."""
  config = config_lib.base_config()
  config.train = None
  with pytest.raises(config_lib.ConfigError, match=r"^config key train: must be a section of "
                     r"keys, got None; set the keys in it instead \(config.train.KEY = ...\)$"):
    config_validation.validate(config, num_devices=1)
  with pytest.raises(config_lib.ConfigError, match=r"^the config is a dict, not an "
                     r"ml_collections.ConfigDict: get_config\(\) must return the ConfigDict"):
    config_validation.validate(config_lib.base_config().to_dict(), num_devices=1)
  # config.json (a resume) with a value given as a section: not the default put in its place.
  saved = json.loads(config_lib.to_json(config_lib.base_config()))
  saved["seed"] = {}
  with pytest.raises(config_lib.ConfigError,
                     match=r"^config key seed: must be a value, got a section of keys \(\{\}\)$"):
    config_lib.from_json(json.dumps(saved))


@pytest.mark.parametrize("args, message", [
    (["--config", "configs/nope.py", "--workdir", "W"],
     "error: --config configs/nope.py: no such file; pass a config file, e.g. configs/default.py"),
    (["--workdir", "W", "--config.train.num_steps=2"],
     "error: --config is required (see --help): the config file, e.g. configs/default.py, that "
     "the --config.KEY overrides apply to"),
    (["--config", "configs/default.py", "--workdir", "W", "--config.train.batch_size=abc"],
     "error: --config.train.batch_size=abc: must be an integer, got 'abc' (see --help)"),
    (["--config", "configs/default.py"], "error: --workdir is required (see --help)"),
    # Config files that are not jaxgan configs, and overrides of a value's "keys": tracebacks.
    (["--config", "T/no_get_config.py", "--workdir", "W"],
     "error: --config T/no_get_config.py: defines no get_config(); a config file returns its "
     "ConfigDict from get_config(), as configs/default.py does"),
    (["--config", "T/bare.py", "--workdir", "W"], "error: config key augment.ada_interval is "
     "missing (N schema keys are): build config files on jaxgan.config.base_config(), as "
     "configs/default.py does"),
    (["--config", "T/bare.py", "--workdir", "W", "--compile_only"], "error: config key "
     "augment.ada_interval is missing (N schema keys are): build config files on "
     "jaxgan.config.base_config(), as configs/default.py does"),
    (["--config", "configs/default.py:big", "--workdir", "W"], "error: --config configs/"
     "default.py:big: TypeError: get_config() takes 0 positional arguments but 1 was given"),
    # What a config file raises while it loads: its type, message and line, not a traceback.
    (["--config", "README.md", "--workdir", "W"], "error: --config README.md: SyntaxError: "
     "MSG (README.md:L)"),
    # A run's config.json, to resume it: NameError: name 'false' is not defined before.
    (["--config", "T/config.json", "--workdir", "W"], "error: --config T/config.json: a JSON "
     "file; --config takes a Python file defining get_config(), e.g. configs/default.py (a run's "
     "config.json records what it resolved; to resume a run, rerun the command that started it)"),
    (["--config", "T/zero.py", "--workdir", "W"], "error: --config T/zero.py: ZeroDivisionError: "
     "division by zero (T/zero.py:3)"),
    (["--config", "T/imports.py", "--workdir", "W"], "error: --config T/imports.py: "
     "ModuleNotFoundError: No module named 'not_a_module_here' (T/imports.py:1)"),
    (["--config", "configs", "--workdir", "W"],
     "error: --config configs: a folder; pass a config file, e.g. configs/default.py"),
    # Two config files: with an override, absl named that override 'defined twice'; without,
    # the second file won unsaid.
    (["--config", "configs/default.py", "--config=configs/catalog64.py", "--workdir", "W",
      "--config.train.num_steps=2"],
     "error: --config given 2 times (configs/default.py, configs/catalog64.py); pass one config "
     "file, and change its keys with --config.KEY=VALUE"),
    (["--config", "configs/default.py", "--config", "configs/default.py", "--workdir", "W"],
     "error: --config given 2 times (configs/default.py, configs/default.py); pass one config "
     "file, and change its keys with --config.KEY=VALUE"),
    (["--config", "configs/default.py", "--workdir", "W", "--config.model.name.x=1"],
     "error: --config.model.name.x: model.name is a value, not a section of keys"),
    (["configs/default.py", "--config", "configs/default.py", "--workdir", "W"],
     "error: unexpected argument 'configs/default.py': flags take the form --name=value (see "
     "--help)"),
    # Flag names with '-' as with '_' (here the value is wrong, so nothing trains).
    (["--config", "configs/default.py", "--workdir", "W", "--compile-only=maybe"],
     "error: --compile_only=maybe: must be true or false, got 'maybe' (see --help)"),
    (["--config", "configs/default.py", "--workdir", "W", "--config.train.tensorboard=maybe"],
     "error: --config.train.tensorboard=maybe: must be true or false, got 'maybe' (see --help)"),
    (["--config", "configs/default.py", "--workdir", "W", "--config.train.max-nonfinite-steps=x"],
     "error: --config.train.max_nonfinite_steps=x: must be an integer, got 'x' (see --help)"),
    # a key's '-' too (was a traceback); Python's words for int('1e2') and float('abc') were
    (["--config", "configs/default.py", "--workdir", "W", "--config.train.batch_size=1e2"],
     "error: --config.train.batch_size=1e2: must be an integer, got '1e2' (see --help)"),
    (["--config", "configs/default.py", "--workdir", "W", "--config.optim.g_lr=abc"],
     "error: --config.optim.g_lr=abc: must be a number, got 'abc' (see --help)"),
    (["--config", "configs/default.py", "--workdir", "W", "--config.train.batch_size[0]=1"],
     "error: --config.train.batch_size[0]: not a config key; overrides name a schema key, e.g. "
     "--config.train.batch_size=32 (the keys: docs/config.md or jaxgan/config/schema.py)"),
    (["--config", "configs/default.py", "--workdir", "W", "--config..seed=1"],
     "error: --config..seed: not a config key; overrides name a schema key, e.g. "
     "--config.train.batch_size=32 (the keys: docs/config.md or jaxgan/config/schema.py)"),
    (["--config", "T/frozen.py", "--workdir", "W"], "error: --config T/frozen.py: get_config() "
     "returned a FrozenConfigDict; it must return the ConfigDict, as configs/default.py does"),
    # A config file's None where a number belongs: one line, not a TypeError in validation.
    (["--config", "T/none_lr.py", "--workdir", "W"],
     "error: config key optim.g_lr: must be a number, got None"),
    # An override of a schema key the file lacks: the file's fault (was a traceback).
    (["--config", "T/bare.py", "--workdir", "W", "--config.train.batch_size=3"],
     "error: --config.train.batch_size: T/bare.py has no key train.batch_size, which the schema "
     "has: build config files on jaxgan.config.base_config(), as configs/default.py does"),
    # The one it lacks, where another override names a key of the same name (ml_collections names
    # 'batch_size' alone; the first override of that name was blamed).
    (["--config", "T/lack.py", "--workdir", "W", "--config.eval.batch_size=32",
      "--config.train.batch_size=3"],
     "error: --config.train.batch_size: T/lack.py has no key train.batch_size, which the schema "
     "has: build config files on jaxgan.config.base_config(), as configs/default.py does"),
    (["--config", "configs/default.py", "--workdir="],
     "error: --workdir is empty; pass the folder to write the run to"),
    # A config key's name as a flag of its own: how to set it (absl's guess, --log_dir for
    # --log_every, dropped).
    (["--config", "configs/default.py", "--workdir", "W", "--num-steps=10"],
     "error: Unknown command line flag 'num_steps'. Config keys are set as "
     "--config.train.num_steps=10 (see --help)"),
    (["--config", "configs/default.py", "--workdir", "W", "--log_every=5"],
     "error: Unknown command line flag 'log_every'. Config keys are set as "
     "--config.train.log_every=5 (see --help)"),
    # A config file's value of another type, and its typo (as an override's is): plain words.
    (["--config", "T/retyped.py", "--workdir", "W"], "error: --config T/retyped.py: config key "
     "train.num_steps holds an int, got '5' (a str) (T/retyped.py:5)"),
    # The section from the assignment, not a comparison; none where the line sets two.
    (["--config", "T/compared.py", "--workdir", "W"], "error: --config T/compared.py: config "
     "key train.batch_size holds an int, got '5' (a str) (T/compared.py:5)"),
    (["--config", "T/twice.py", "--workdir", "W"], "error: --config T/twice.py: config key "
     "batch_size holds an int, got '5' (a str) (T/twice.py:5)"),
    # Named with its file and line (was: the key alone).
    (["--config", "T/typo.py", "--workdir", "W"], "error: --config T/typo.py: unknown config key "
     "train.num_stepz: not in the schema of jaxgan/config/schema.py (check the spelling). Did you "
     "mean train.num_steps? (T/typo.py:5)"),
    (["--config", "T/typo_dict.py", "--workdir", "W"], "error: --config T/typo_dict.py: unknown "
     "config key train.num_stepz: not in the schema of jaxgan/config/schema.py (check the "
     "spelling). Did you mean train.num_steps? (T/typo_dict.py:5)"),
    # The line that sets it in its section, not another section's key of that name (line 5).
    (["--config", "T/wrong_section.py", "--workdir", "W"], "error: --config T/wrong_section.py: "
     "unknown config key model.batch_size: not in the schema of jaxgan/config/schema.py (check "
     "the spelling). Did you mean eval.batch_size or train.batch_size? (T/wrong_section.py:6)"),
    # Named by its last part alone on several lines: no line (a wrong one would mislead).
    (["--config", "T/ambiguous.py", "--workdir", "W"], "error: --config T/ambiguous.py: unknown "
     "config key model.batch_size: not in the schema of jaxgan/config/schema.py (check the "
     "spelling). Did you mean eval.batch_size or train.batch_size?"),
])
def test_cli_usage_errors_are_one_line_with_status_2(tmp_path, args, message):
  """absl's own parsing errors exited 1 (a crash's status) after a 'FATAL' line, a missing config
  file gave ml_collections' traceback, and overrides without --config an 'unknown flag'."""
  (tmp_path / "no_get_config.py").write_text("SEED = 1\n")
  (tmp_path / "config.json").write_text('{"seed": 0, "train": {"tensorboard": false}}')
  (tmp_path / "zero.py").write_text("def get_config():\n  from jaxgan.config import base_config\n"
                                    "  return base_config() if 1 / 0 else None\n")
  (tmp_path / "imports.py").write_text("import not_a_module_here\n")
  (tmp_path / "frozen.py").write_text("import ml_collections\nfrom jaxgan.config import "
                                      "base_config\n\ndef get_config():\n  return "
                                      "ml_collections.FrozenConfigDict(base_config())\n")
  (tmp_path / "none_lr.py").write_text("from jaxgan.config import base_config\n\n"
                                       "def get_config():\n  c = base_config()\n"
                                       "  c.optim.g_lr = None\n  return c\n")
  (tmp_path / "bare.py").write_text("import ml_collections\n\ndef get_config():\n"
                                    "  return ml_collections.ConfigDict({'seed': 1})\n")
  (tmp_path / "lack.py").write_text("from jaxgan.config import base_config\n\ndef get_config():\n"
                                    "  c = base_config()\n  del c.train['batch_size']\n"
                                    "  return c\n")
  for name, line in (("retyped", 'c.train.num_steps = "5"'), ("typo", "c.train.num_stepz = 5"),
                     ("typo_dict", "c.train.update(num_stepz=5)"),
                     ("wrong_section", "c.train.batch_size = 64\n  c.model.batch_size = 32"),
                     ("ambiguous", "batch_size = 64\n  c.model.update(batch_size=batch_size)"),
                     ("compared", 'if c.eval.batch_size == 32: c.train.batch_size = "5"'),
                     ("twice", 'c.eval.batch_size = 4; c.train.batch_size = "5"')):
    (tmp_path / f"{name}.py").write_text("from jaxgan.config import base_config\n\n"
                                         f"def get_config():\n  c = base_config()\n  {line}\n"
                                         "  return c\n")
  args = [str(tmp_path / "w") if a == "W" else a.replace("T/", f"{tmp_path}/") for a in args]
  with pytest.raises(SyntaxError) as readme:  # where Python itself stops reading README.md
    compile(open(os.path.join(REPO, "README.md")).read(), "README.md", "exec")
  message = message.replace("T/", f"{tmp_path}/").replace(
      "MSG (README.md:L)", f"{readme.value.msg} (README.md:{readme.value.lineno})").replace(
      "(N schema", f"({len(list(config_lib.flat_items(config_lib.base_config()))) - 1} schema")
  proc = run_module("jaxgan.train", *args)
  assert (proc.returncode, proc.stderr.strip().splitlines()) == (2, [message])
  assert not (tmp_path / "w").exists()


@pytest.mark.parametrize("name", sorted(
    os.path.relpath(p, os.path.join(REPO, "configs"))
    for p in glob.glob(os.path.join(REPO, "configs", "**", "*.py"), recursive=True)))
def test_every_shipped_config_validates_and_builds(name):
  """Each config validates (prepared-data configs pointed at synthetic data) and its models
  trace at its image size."""
  import jax
  import jax.numpy as jnp

  from jaxgan import models

  config = config_lib.load_config_file(os.path.join(REPO, "configs", name))
  if config.data.source == "prepared":
    with config.unlocked():
      config.data.source, config.data.num_classes = "synthetic", 8
  config_validation.validate(config, 1, 1)
  json.loads(config_lib.to_json(config))
  g, d = models.build_models(config)
  z = jnp.zeros((2, config.model.z_dim))
  labels = jnp.zeros((2,), jnp.int32) if config.data.num_classes else None
  # One trace of G gives its output with its variables (init, then apply, traced it twice).
  images, _ = jax.eval_shape(lambda: g.init_with_output(jax.random.PRNGKey(0), z, labels,
                                                        train=False))
  size = config.data.image_size
  assert images.shape == (2, size, size, 3)
  jax.eval_shape(lambda: d.init(jax.random.PRNGKey(0), jnp.zeros((2, size, size, 3)), labels,
                                train=False))


def test_a_key_the_checkpoint_lacks_counts_as_its_default_on_resume(make_config):
  """A checkpoint written before a key existed trained with the default's behaviour: resuming
  with another value changes the math and is refused like any other change."""
  from jaxgan.config.resume import (config_differences, describe_consequences,
                                    describe_differences)

  old = make_config().to_dict()
  del old["loss"]["lecam_weight"]  # as written before the key existed
  assert config_differences(old, make_config()) == ([], [])  # the default: nothing changed
  blocking, allowed = config_differences(old, make_config(**{"loss.lecam_weight": 0.1,
                                                             "train.log_every": 7}))
  assert describe_differences(blocking) == "loss.lecam_weight: 0.0 -> 0.1"
  assert [key for key, _, _ in allowed] == ["train.log_every"]
  # Accepted anyway (--allow_config_change), a new batch size leaves what is counted from the
  # step wrong: said once, whichever of the keys changed.
  changed = config_differences(old, make_config(**{"train.batch_size": 128,
                                                   "train.n_critic": 2}))[0]
  both = describe_consequences(changed)
  assert both.startswith("the data position (the stream skips or ")
  assert both.count("data position") == 1 and "EMA ramp-up" in both
  assert "train.batch_size and train.n_critic" in both
  # The EMA ramp-up counts G's images (step x batch_size): n_critic alone leaves it right.
  critic = describe_consequences(config_differences(old, make_config(**{"train.n_critic": 2}))[0])
  assert "images_seen" in critic and "EMA" not in critic and "LeCam's debiasing" in critic
  assert describe_consequences(blocking) == ""
  # Set by each launch (a launcher's random port, each process's id): not listed as changes at
  # every resume of a multi-process run; the process count, a layout change, is.
  launched = make_config(**{"distributed.coordinator_address": "localhost:27058",
                            "distributed.process_id": 1, "distributed.num_processes": 2})
  assert config_differences(old, launched) == ([], [("distributed.num_processes", 1, 2)])
  # A tolerance, not the math: the DataError for too many bad files says to raise it on resume.
  assert config_differences(old, make_config(**{"data.max_bad_fraction": 0.05}))[0] == []
  assert config_differences({}, make_config(**{"loss.lecam_weight": 0.1})) == ([], [])  # unknown
  # A key the run's source never read (accepted before validation refused it): dropping it on
  # resume is no change of the math.
  prepared = {"data.source": "prepared", "data.path": "/x"}
  ignored = make_config(**prepared).to_dict()
  ignored["data"]["min_class_count"] = 50
  assert config_differences(ignored, make_config(**prepared)) == ([], [])
  assert config_differences(ignored, make_config())[0]  # the source itself changed
  # So for a model's, loss's or augmentation's key (attention with DCGAN, accepted before).
  attention = make_config().to_dict()
  attention["model"]["attention_resolution"] = 16
  attention["loss"]["gp_weight"] = 5.0
  assert config_differences(attention, make_config()) == ([], [])
  assert sorted(key for key, _, _ in config_differences(
      attention, make_config(**{"loss.name": "wgan_gp", "model.d_norm": "layer"}))[0]) == [
          "loss.gp_weight", "loss.name", "model.d_norm"]  # another loss: its weight counts
  # And for a regulariser's setting while it was off (accepted before): dropped on resume, no
  # change; with the regulariser turned on, it counts.
  idle = make_config().to_dict()
  idle["loss"]["r1_interval"] = 8
  assert config_differences(idle, make_config()) == ([], [])
  assert sorted(key for key, _, _ in config_differences(
      idle, make_config(**{"loss.r1_gamma": 1.0}))[0]) == ["loss.r1_gamma", "loss.r1_interval"]
  tupled = make_config()
  tupled.unlock()
  tupled.data.extra = (1, 2)  # JSON writes it as [1, 2]: not a change
  listed = tupled.to_dict()
  listed["data"]["extra"] = [1, 2]
  assert config_differences(listed, tupled) == ([], [])


def test_paths_are_stored_absolute_and_old_relative_ones_are_not_a_change(make_config, tmp_path,
                                                                          monkeypatch):
  """`evaluate --workdir` and `generate` read a run's data and caches from any folder; a run
  that stored a relative path resumes from the folder it means without a config change."""
  from jaxgan.config.resume import config_differences

  monkeypatch.chdir(tmp_path)
  relative = make_config(**{"data.source": "prepared", "data.path": "data/x",
                            "eval.cache_dir": "~/cache", "eval.weights": "gs://bucket/w.pt"})
  resolved = config_lib.with_absolute_paths(relative)
  assert resolved.data.path == str(tmp_path / "data" / "x") and relative.data.path == "data/x"
  assert resolved.eval.cache_dir == os.path.expanduser("~/cache")
  assert resolved.eval.weights == "gs://bucket/w.pt" and resolved.data.image_dir == ""
  assert config_differences(relative.to_dict(), resolved) == ([], [])
  # The data mounted elsewhere (another host): allowed, and logged; a change of what the data
  # holds is the data fingerprint's to catch (a warning on resume).
  moved = make_config(**{"data.source": "prepared", "data.path": "/mnt/data/x",
                         "eval.cache_dir": "~/cache", "eval.weights": "gs://bucket/w.pt"})
  blocking, allowed = config_differences(relative.to_dict(), moved)
  assert blocking == [] and [key for key, _, _ in allowed] == ["data.path"]


def test_a_distributed_start_jax_refuses_is_one_line_naming_the_key(tmp_path):
  """'auto' outside a cluster JAX detects: JAX's ValueError was a traceback."""
  from conftest import run_module

  proc = run_module("jaxgan.train", "--config", "configs/default.py", "--workdir",
                    str(tmp_path / "w"), "--compile_only",
                    "--config.distributed.coordinator_address=auto", timeout=120)
  assert proc.returncode == 2, proc.stderr[-2000:]
  error = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
  assert len(error) == 1 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
  assert error[0].startswith("error: config key distributed.coordinator_address ('auto'): "
                             "jax.distributed could not start ("), error[0]
  assert not (tmp_path / "w").exists()
