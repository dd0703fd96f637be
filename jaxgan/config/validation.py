"""Config validation: every value that could fail later, checked before data loading and compiling.

Each check raises `ConfigError` with one line that names the key and says what to do, so a bad
config costs seconds, not a compile. Registries (models, losses, data sources, augmentations,
metrics, the mesh) are asked about their own keys, so a new entry brings its checks with it. That
puts this module a layer above them: `jaxgan.config` (the schema, which they import) does not
import it; callers import `jaxgan.config.validation` by name.
"""

from __future__ import annotations

import ml_collections
import numpy as np

from jaxgan import augment as augment_lib
from jaxgan import data as data_lib
from jaxgan import losses, models
from jaxgan.config import mesh_checks
from jaxgan.config.paths import NOT_LOCAL, PATH_KEYS, is_uri
from jaxgan.config.schema import (DTYPES, ConfigError, attribute_classes, base_config,
                                  check_complete, check_known_keys, check_types, flat_items, get,
                                  parse_class_counts, r1_period, require, require_positive_int)
from jaxgan.metrics import suite as metrics_suite
from jaxgan.models.batchnorm import NORM_IMPLS
from jaxgan.models.dcgan import D_NORMS
from jaxgan.models.layers import DOWNSAMPLE_IMPLS, UPSAMPLE_IMPLS


_ONE_OF = {"model": "a model", "loss": "a loss", "augment": "an augmentation"}
FLOAT32_MAX = 3.4028234663852886e38  # the step computes in float32: larger is inf there
INT32_MAX = 2**31 - 1
MAX_STEPS_PER_CALL = 64
MAX_STANDING_STATS_BATCHES = 10_000
MAX_GRID_PIXELS = 2**30  # a sample grid of 32k x 32k pixels (3 GiB as uint8 RGB)
READ_AS_FLOAT = frozenset({"train.ema_half_life_images", "augment.ada_kimg"})  # integer keys
# Integer keys only the host's Python reads (image limits, process and checkpoint counts): no bound
# of int32's (prepare takes the same --max-pixels unbounded).
HOST_ONLY = frozenset({"data.max_pixels", "data.min_source_size", "data.workers",
                       "data.min_class_count", "train.keep_checkpoints"})


def seed_problem(seed: object) -> str:
  """Why `seed` cannot seed a run or a sampling, or ''. JAX keys keep its low 32 bits: 5 and
  2**32 + 5 would share every key (-1 and 2**32 - 1 too) while numpy's draws differed."""
  if isinstance(seed, int) and not isinstance(seed, bool) and 0 <= seed < 2**32:
    return ""
  return f"must be an integer in [0, 2**32), got {seed!r}"


def validate_schedule(config: ml_collections.ConfigDict) -> None:
  """Training's schedule fits train.steps_per_call: the loop logs, samples, checkpoints and
  evaluates between calls, so every interval is a multiple of the steps one call runs. (Only the
  training loop needs this; the benchmark and compile_only run the step without a schedule.)"""
  k = config.train.steps_per_call
  for key in ("train.num_steps", "train.log_every", "train.sample_every",
              "train.checkpoint_every", "train.eval_every"):
    value = config.train[key.split(".")[1]]
    require(value % k == 0, key, f"{value} is not a multiple of train.steps_per_call={k} (the "
            "loop acts between calls); make it one, or lower train.steps_per_call")


def validate(config: ml_collections.ConfigDict, num_devices: int, num_processes: int = 1,
             reads_data: bool = True) -> None:
  """Checks every value that could fail later; raises ConfigError naming the key.

  Runs before data loading and compilation, so a bad config costs seconds, not a compile.
  `reads_data=False` (--compile_only, the benchmark: the step on made-up batches) skips the data
  source's checks of where the data is (data.path given, a prepared set's info read and matched).
  In this order: a key's own value first, then how keys combine.
  """
  _check_values(config)
  _check_classes(config)
  _check_components(config)
  _check_regularisers(config)
  _check_training(config)
  mesh_checks.check_mesh(config, num_devices, num_processes)
  _check_unread(config, reads_data)


def _check_values(config: ml_collections.ConfigDict) -> None:
  """Known keys, their types, and the numbers' ranges as the step holds them."""
  check_known_keys(config)
  check_complete(config)
  check_types(config)
  require(not seed_problem(config.seed), "seed", seed_problem(config.seed))
  # TFDS reads its data dir itself, gs:// included.
  for key in PATH_KEYS:
    require(key == "data.tfds_data_dir" or not is_uri(get(config, key)), key,
            f"{get(config, key)!r}: {NOT_LOCAL}")
  # The step and its counters hold integer keys as int32 (the step number its keys fold in,
  # shapes, intervals compared with the step): a larger value failed as a traceback after
  # compiling (or wrapped the step counter). The keys the step reads as floats may be larger (a
  # half-life of 10**12 images freezes the EMA), as long as float() of them does not overflow.
  # The seed is a uint32 (seed_problem).
  defaults = dict(flat_items(base_config()))
  for key, value in flat_items(config):
    if key == "seed" or key in HOST_ONLY or not isinstance(value, int) or isinstance(value, bool):
      continue
    shown = value if abs(value) < 10**20 else f"an integer of {len(str(abs(value)))} digits"
    if key in READ_AS_FLOAT or isinstance(defaults.get(key), float):
      require(abs(value) <= FLOAT32_MAX, key, f"must be finite in float32, got {shown}")
    else:
      require(abs(value) <= INT32_MAX, key, f"must be at most {INT32_MAX} in size (int32, as "
              f"the step holds it), got {shown}")
  for key in ("data.image_size", "model.z_dim", "model.g_width", "model.d_width",
              "model.max_width", "model.embed_dim", "train.batch_size", "train.num_steps",
              "train.n_critic", "train.steps_per_call", "train.log_every", "train.sample_every", "train.checkpoint_every",
              "train.keep_checkpoints", "train.samples_per_class", "train.max_nonfinite_steps",
              "data.min_source_size", "data.max_pixels",
              "train.eval_num_samples"):  # evaluate --workdir's default, trained or not
    require_positive_int(config, key)
  # The call's scan is unrolled (XLA:CPU compiles a rolled loop's convolutions to its slow
  # generic kernels): K copies of the step to compile, 252 s at 64 for a tiny model on 2 cores.
  require(config.train.steps_per_call <= MAX_STEPS_PER_CALL, "train.steps_per_call",
          f"must be at most {MAX_STEPS_PER_CALL} (each call compiles that many unrolled copies "
          f"of the step), got {config.train.steps_per_call}")


def _check_classes(config: ml_collections.ConfigDict) -> None:
  """The class counts (conditioning) and the label columns."""
  nc = config.data.num_classes
  require(nc != -1 or config.data.source != "prepared", "data.num_classes",
          "-1 (the prepared set's class counts) was not read from data.path's "
          "dataset_info.json here; set --config.data.num_classes=N")
  require(isinstance(nc, int) and nc >= 0, "data.num_classes",
          f"must be 0 (unconditional), a positive integer, or -1 with data.source=prepared "
          f"(the prepared set's count), got {nc!r}")
  try:
    extra = parse_class_counts(config.data.extra_num_classes)
  except ValueError as e:
    raise ConfigError(f"config key data.extra_num_classes: {e}") from None
  require(not extra or nc > 0, "data.extra_num_classes",
          f"{config.data.extra_num_classes!r} needs data.num_classes > 0 (the first attribute's "
          "classes); set it, or set data.extra_num_classes='' to train unconditionally")
  require(isinstance(config.data.label_columns, str), "data.label_columns",
          f"must be a comma-separated string of column names, got {config.data.label_columns!r}")


def _check_components(config: ml_collections.ConfigDict) -> None:
  """The registries' names (model, loss, data source), the dtype and the layers' choices, and
  the model's own checks."""
  extra = parse_class_counts(config.data.extra_num_classes)  # (checked by _check_classes)
  require(config.model.name in models.MODELS, "model.name",
          f"unknown model {config.model.name!r}; choose one of {models.MODELS.names()}")
  require(config.loss.name in losses.LOSSES, "loss.name",
          f"unknown loss {config.loss.name!r}; choose one of {losses.LOSSES.names()}")
  require(config.data.source in data_lib.SOURCES, "data.source",
          f"unknown data source {config.data.source!r}; choose one of {data_lib.SOURCES.names()}")
  require(not extra or getattr(data_lib.SOURCES.get(config.data.source), "multi_attribute", False),
          "data.extra_num_classes", f"the {config.data.source!r} source serves one attribute; "
          "use data.source='prepared' (prepare --label-column A --label-column B) or 'manifest' "
          "(data.label_columns), or set data.extra_num_classes=''")
  require(config.train.dtype in DTYPES, "train.dtype",
          f"must be one of {list(DTYPES)}, got {config.train.dtype!r}")
  require(config.model.d_norm in D_NORMS, "model.d_norm",
          f"must be one of {list(D_NORMS)}, got {config.model.d_norm!r}")

  require(config.model.upsample_impl in UPSAMPLE_IMPLS, "model.upsample_impl",
          f"must be one of {list(UPSAMPLE_IMPLS)}, got {config.model.upsample_impl!r}")
  require(config.model.downsample_impl in DOWNSAMPLE_IMPLS, "model.downsample_impl",
          f"must be one of {list(DOWNSAMPLE_IMPLS)}, got {config.model.downsample_impl!r}")
  require(config.model.norm_impl in NORM_IMPLS, "model.norm_impl",
          f"must be one of {list(NORM_IMPLS)}, got {config.model.norm_impl!r}")
  model = models.MODELS.get(config.model.name)
  require(config.data.image_size in model.supported_image_sizes, "data.image_size",
          f"model {config.model.name!r} builds images of size "
          f"{list(model.supported_image_sizes)}, got {config.data.image_size}")
  model.validate(config)


def _check_regularisers(config: ml_collections.ConfigDict) -> None:
  """The loss's and augmentation's settings, and which D normalisation they allow."""
  model = models.MODELS.get(config.model.name)
  loss = losses.LOSSES.get(config.loss.name)
  if loss.needs_per_sample_critic and model.d_norm_applies:
    require(config.model.d_norm != "batch", "model.d_norm",
            f"loss {config.loss.name!r} penalises per-sample gradients, which BatchNorm in D "
            "mixes; set --config.model.d_norm=layer (or none)")
  # Finite in float32, as the step computes: an infinite weight makes every step it applies to
  # non-finite, and those are skipped (R1's 1 step in r1_interval never streaks to the stop: it
  # would silently never apply). R1's weight as the step scales it, by its lazy D steps.
  require_positive_int(config, "loss.r1_interval")
  scaled = {"loss.r1_gamma": 0.5 * r1_period(config)}
  for key in ("loss.gp_weight", "loss.r1_gamma", "loss.lecam_weight", "model.orthogonal_reg"):
    value = get(config, key)
    require(0 <= value and value * scaled.get(key, 1) <= FLOAT32_MAX, key,
            f"must be >= 0 and finite in float32{' as scaled' if key in scaled else ''}, got "
            f"{value}")
    require(not 0 < value or _float32(value) > 0, key, f"{value} is 0 in float32, in which the "
            "step computes (so it would be off); set 0 to turn it off, or a larger value")
  require_positive_int(config, "augment.ada_interval")
  _below_one_in_float32(config, "loss.lecam_ema_decay")
  require(config.augment.name in augment_lib.AUGMENTS, "augment.name",
          f"unknown augmentation {config.augment.name!r}; choose one of "
          f"{augment_lib.AUGMENTS.names()}")
  augment_lib.AUGMENTS.get(config.augment.name).validate(config.augment)
  if augment_lib.AUGMENTS.get(config.augment.name).adaptive:
    require(loss.ada_boundary is not None, "augment.name",
            f"ADA tunes p from the sign of D(real), which loss.name={config.loss.name} does not "
            "give (its critic's outputs can shift freely); use augment.name=diffaugment, or "
            "loss.name non_saturating, hinge or least_squares")
  require(config.augment.ada_kimg > 0, "augment.ada_kimg",
          f"must be > 0 (thousands of images for p to go 0 -> 1), got {config.augment.ada_kimg}")
  require(-1 < config.augment.ada_target < 1, "augment.ada_target",
          f"must be in (-1, 1) (a target for E[sign(D(real))]), got {config.augment.ada_target}")
  require(0 <= config.augment.ada_p_init <= 1, "augment.ada_p_init",
          f"must be in [0, 1], got {config.augment.ada_p_init}")
  fixed = augment_lib.AUGMENTS.get(config.augment.name)
  # StyleGAN2-ADA's --aug=fixed requires its --p likewise: at p = 0 no image is ever augmented.
  # In float32, as the step holds p: 1e-50 is 0 there.
  require(not fixed.uses_p or fixed.adaptive or _float32(config.augment.ada_p_init) > 0,
          "augment.ada_p_init", f"augment.name={config.augment.name} applies ADA's pipeline at "
          "this fixed p, and at 0 (in float32, in which the step holds it) it never augments; "
          "set it (e.g. 0.2), or augment.name=ada to tune p from 0")
  if config.loss.r1_gamma > 0 and model.d_norm_applies:
    require(config.model.d_norm != "batch", "model.d_norm",
            "R1 penalises per-sample gradients, which BatchNorm in D mixes; set "
            "--config.model.d_norm=layer (or none)")


def _check_training(config: ml_collections.ConfigDict) -> None:
  """The optimiser, the EMA, the data's tolerances, the evaluations and the sample grids."""
  nc = config.data.num_classes
  for key in ("optim.g_lr", "optim.d_lr"):
    require(0 < _float32(get(config, key)) <= FLOAT32_MAX, key, f"must be > 0 and finite in "
            f"float32, got {get(config, key)}")
  for key in ("optim.b1", "optim.b2"):
    _below_one_in_float32(config, key)
  require(config.train.ema_half_life_images >= 0, "train.ema_half_life_images",
          f"must be >= 0 (0 disables the EMA), got {config.train.ema_half_life_images}")
  require(config.train.ema_rampup >= 0, "train.ema_rampup",
          f"must be >= 0, got {config.train.ema_rampup}")
  require(isinstance(config.train.eval_every, int) and config.train.eval_every >= 0,
          "train.eval_every", f"must be an integer >= 0 (0 = no evaluation), got "
          f"{config.train.eval_every!r}")
  names = metrics_suite.split_names(config.eval.metrics)
  # Each evaluation would extract every fake's and real's features and log nothing.
  require(names or not config.train.eval_every, "eval.metrics",
          f"is empty while train.eval_every={config.train.eval_every} evaluates; name the "
          f"metrics (e.g. fid,kid) or set train.eval_every=0")
  for name in names:
    require(name in metrics_suite.METRICS, "eval.metrics",
            f"unknown metric {name!r}; choose from {metrics_suite.METRICS.names()}")
    require(nc > 0 or not metrics_suite.needs_labels([name]),
            "eval.metrics", f"{name!r} needs a conditional run (data.num_classes > 0); drop it")
  fewest = metrics_suite.min_samples(names)
  if config.train.eval_every:
    require(config.train.eval_num_samples >= fewest, "train.eval_num_samples",
            f"must be >= {fewest} for eval.metrics={config.eval.metrics!r}, got "
            f"{config.train.eval_num_samples}")
  require_positive_int(config, "eval.batch_size")
  require(0 <= config.data.max_bad_fraction <= 1, "data.max_bad_fraction",
          f"must be a fraction in [0, 1], got {config.data.max_bad_fraction}")
  require(isinstance(config.data.workers, int) and config.data.workers >= 0, "data.workers",
          f"must be an integer >= 0 (0 = every core), got {config.data.workers!r}")
  require(isinstance(config.eval.standing_stats_batches, int)
          and config.eval.standing_stats_batches >= 0, "eval.standing_stats_batches",
          "must be an integer >= 0 (0 = the raw G's running statistics), got "
          f"{config.eval.standing_stats_batches!r}")
  # Its latents are drawn at once (10^8 batches asked 596 GiB of host memory, a traceback).
  require(config.eval.standing_stats_batches <= MAX_STANDING_STATS_BATCHES,
          "eval.standing_stats_batches", f"must be at most {MAX_STANDING_STATS_BATCHES} (BigGAN's "
          f"standing statistics take tens), got {config.eval.standing_stats_batches}")
  classes = attribute_classes(config)
  rows = classes[0] if classes and classes[0] > 0 else 8  # sample_inputs.grid_inputs' rows
  size = config.data.image_size
  if isinstance(size, int) and size > 0:  # (checked above; a bad one is its own error)
    pixels = rows * config.train.samples_per_class * size * size
    fits = MAX_GRID_PIXELS // (rows * size * size)  # columns that fit (0: not even one)
    require(pixels <= MAX_GRID_PIXELS, "train.samples_per_class",
            f"{config.train.samples_per_class} columns of {rows} rows at {size}x{size} make a "
            f"sample grid of {pixels:,} pixels, past {MAX_GRID_PIXELS:,}; " +
            (f"set at most {fits}" if fits else "even one column per class is too many: lower "
             "data.image_size or the classes"))
  require(isinstance(config.eval.num_real, int) and config.eval.num_real >= 0, "eval.num_real",
          f"must be an integer >= 0 (0 = train.eval_num_samples), got {config.eval.num_real!r}")
  if config.train.eval_every and config.eval.num_real:
    require(config.eval.num_real >= fewest, "eval.num_real",
            f"must be 0 or >= {fewest} for eval.metrics={config.eval.metrics!r}, got "
            f"{config.eval.num_real}")


def _check_unread(config: ml_collections.ConfigDict, reads_data: bool) -> None:
  """Keys set that the chosen model, loss, augmentation or data source would not read (a
  change that changes nothing, silently), then the data source's own checks."""
  source = data_lib.SOURCES.get(config.data.source)
  defaults = base_config()
  for key in data_lib.SOURCE_KEYS:
    require(key in source.reads or config.data[key] == defaults.data[key], f"data.{key}",
            f"data.source is {config.data.source!r}, " + source.unread_hint.format(key=key))
  # A model, loss or augmentation key that the chosen one does not read (attention with DCGAN,
  # a gradient-penalty weight with the hinge loss) would change nothing, silently.
  for key in sorted(k for k in unread_keys(config) if not k.startswith("data.")):
    section, leaf = key.split(".")
    require(get(config, key) == defaults[section][leaf], key,
            f"{section}.name is {config[section].name!r}, which does not read it; drop {key} "
            f"(or pick {_ONE_OF[section]} that reads it)")
  # A regulariser's setting while that regulariser is off changes nothing either.
  for key, (switch, name) in READ_WHILE_ON.items():
    section, leaf = key.split(".")
    require(get(config, switch) > 0 or get(config, key) == defaults[section][leaf], key,
            f"{name} is off ({switch} = 0), so it has no effect; drop {key} or set {switch} > 0")
  try:
    source.validate(config, reads_data=reads_data)
  except data_lib.PreparedSizeError as e:
    sizes = list(models.MODELS.get(config.model.name).supported_image_sizes)
    if e.prepared_size in sizes:
      raise
    raise ConfigError(f"config key data.image_size: {config.data.path} was prepared at "
                      f"{e.prepared_size}, which model {config.model.name!r} does not build "
                      f"(sizes {sizes}); prepare it again at one of them (--image-size)"
                      ) from None


# Keys read only while another is positive: the key, (the switch, what it switches on).
READ_WHILE_ON = {"loss.r1_interval": ("loss.r1_gamma", "R1"),
                  "loss.lecam_ema_decay": ("loss.lecam_weight", "LeCam")}


def unread_keys(config: ml_collections.ConfigDict) -> set[str]:
  """The keys that the config's data source, model, loss and augmentation (known names only) do
  not read, e.g. 'model.attention_resolution' for DCGAN: their values change nothing."""
  unread = set()
  for section, name, registry, keys in (
      ("data", config.data.source, data_lib.SOURCES, data_lib.SOURCE_KEYS),
      ("model", config.model.name, models.MODELS, models.FAMILY_KEYS),
      ("loss", config.loss.name, losses.LOSSES, losses.FAMILY_KEYS),
      ("augment", config.augment.name, augment_lib.AUGMENTS, augment_lib.FAMILY_KEYS)):
    if name in registry:
      unread |= {f"{section}.{k}" for k in keys if k not in registry.get(name).reads}
  return unread


def _float32(value: float) -> float:
  """`value` as the step reads it: rounded to float32 (1e-46 is 0 there, 1 - 1e-11 is 1)."""
  return float(np.float32(value)) if abs(value) <= FLOAT32_MAX else value


def _below_one_in_float32(config: ml_collections.ConfigDict, key: str) -> None:
  """A decay rate in [0, 1) as float32 holds it: one that rounds to 1 (Adam's b2 = 0.99999999999)
  makes every step's update non-finite (Adam's bias correction divides by 1 - b2^t = 0)."""
  value = get(config, key)
  require(0 <= value < 1, key, f"must be in [0, 1), got {value}")
  require(_float32(value) < 1, key, f"{value} is 1.0 in float32, in which the step computes; "
          "use at most 0.9999999 (the largest float32 below 1 is 1 - 6e-8)")
