"""Sampling a trained run into files, behind `python -m jaxgan.generate` (whose docstring and flags
say what each option does): the checkpoint's EMA generator sampled in chunks over the local
devices, the labels a grid or single PNGs take, and what is written (one grid PNG, or numbered
PNGs with labels.csv), each refused in one line before any sampling where it cannot be done.
"""

from __future__ import annotations

import csv
import errno
import logging
import math
import os
import re
from typing import Iterator, Optional, Sequence, Union

import ml_collections
import numpy as np

from jaxgan import atomic_write, label_choices, resources, stopping
from jaxgan import progress as progress_lib
from jaxgan.config import paths as config_paths

log = logging.getLogger("jaxgan.generate")  # the CLI's name: its INFO lines are shown


def _label_matrix(first, chosen: dict[int, int], classes: Sequence[int], seed: int, repeat: int):
  """[n, A] labels: column 0 is `first`; column i is the chosen class, or uniform draws from the
  seed, one per `repeat` consecutive images (a row of an interpolation grid)."""
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top

  from jaxgan import sample_inputs  # pylint: disable=g-import-not-at-top

  n = len(first)
  columns = [first]
  for i, num in enumerate(classes[1:], 1):
    if i in chosen:
      columns.append(jnp.full((n,), chosen[i], jnp.int32))
    else:
      draws = sample_inputs.attribute_draws(seed, i, -(-n // repeat), num)  # not the latents' key
      columns.append(jnp.repeat(draws, repeat)[:n])
  return jnp.stack(columns, axis=1)


def _plain_labels(num: int, nc: int, chosen: dict[int, int], given: list[str], singles: bool,
                  label_counts: Optional[dict], seed: int, cols: int):
  """(num, labels, grid columns) of plain samples of a conditional model (no interpolation)."""
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top

  from jaxgan import sampling  # pylint: disable=g-import-not-at-top

  if singles and label_counts:
    # An FID set: the data's label mix (of the rows that match --label), the distribution
    # evaluation draws from (uniform would give rare classes the weight of common ones,
    # combinations the data never has, and another FID than `evaluate --workdir`).
    counts = sampling.label_counts_matching(label_counts, chosen)
    if counts is None:
      raise ValueError(f"--label {' --label '.join(given)}: no training image has this "
                       "combination; pick classes that occur together")
    return num, jnp.asarray(sampling.draw_label_rows(counts, np.random.default_rng(seed),
                                                     (num,))), cols
  if 0 in chosen:
    return num, jnp.full((num,), chosen[0], jnp.int32), cols
  if singles:  # no recorded mix (the synthetic catalog, older runs): classes in turn
    return num, jnp.arange(num, dtype=jnp.int32) % nc, cols
  # A row per class of the first attribute, every class shown, as training's grids.
  cols = _grid_columns(num, nc)
  if cols * nc != num:
    log.info("a grid of %d classes x %d: %d images for --num %d", nc, cols, cols * nc, num)
  return cols * nc, jnp.arange(cols * nc, dtype=jnp.int32) // cols, cols


def generate(workdir: str, num: int, out: str,
             label: Union[str, Sequence[str], None] = None, seed: int = 0,
             truncation: float = 0.0, interpolate: int = 0,
             between: Optional[str] = None, checkpoint: str = "latest",
             batch: int = 256, standing_stats_batches: int = -1) -> list[str]:
  """Writes the images and returns the paths written. `label`: one --label value or several;
  `between`: a --between value (needs `interpolate`); `checkpoint`: 'latest', 'best' (FID) or a
  step number; `batch`: images per generator call; `standing_stats_batches`: -1 = the run's
  setting."""
  from jaxgan import config as config_lib  # pylint: disable=g-import-not-at-top
  from jaxgan.config import validation as config_validation  # pylint: disable=g-import-not-at-top
  import jax  # pylint: disable=g-import-not-at-top
  from jaxgan import models, sampling, sharding  # pylint: disable=g-import-not-at-top
  from jaxgan import sample_inputs  # pylint: disable=g-import-not-at-top
  from jaxgan import run_folders, saved_run  # pylint: disable=g-import-not-at-top

  if not 0 < num <= 2**31 - 1:  # larger: JAX's shapes are int32 (a traceback from the latents)
    raise ValueError(f"--num must be in [1, 2**31 - 1], got {num}")
  if not truncation >= 0:  # NaN too: it would pass as 'off' (every comparison with it is False)
    raise ValueError(f"--truncation must be >= 0 (0 = off), got {truncation}")
  if interpolate < 0 or interpolate == 1:
    raise ValueError(f"--interpolate needs at least 2 columns (0 = off), got {interpolate}")
  if between is not None and not interpolate:
    raise ValueError("--between needs --interpolate N (the columns from FROM to TO, N >= 2)")
  if batch <= 0:
    raise ValueError(f"--batch must be positive, got {batch}")
  if not -1 <= standing_stats_batches <= config_validation.MAX_STANDING_STATS_BATCHES:
    raise ValueError(f"--standing_stats_batches must be -1 (the run's setting), 0 (the raw G's "
                     f"statistics) or up to {config_validation.MAX_STANDING_STATS_BATCHES}, got "
                     f"{standing_stats_batches}")
  if config_validation.seed_problem(seed):
    raise ValueError(f"--seed {config_validation.seed_problem(seed)}")
  checkpoint = saved_run.parse_checkpoint(checkpoint)
  if config_lib.is_uri(out):
    raise ValueError(f"--out {out}: {config_lib.NOT_LOCAL}")
  singles = out.endswith(os.sep) or os.path.isdir(out)
  if not singles and not out.lower().endswith(".png"):  # PNG bytes in a .jpg, or in 'samples'
    raise ValueError(f"--out {out}: a grid is one PNG file, so name it *.png (or end the path "
                     "with / for one PNG per image)")
  if singles and os.path.isfile(out.rstrip(os.sep)):  # 'file/' itself does not exist for os.path
    raise ValueError(f"--out {out}: is a file, not a folder; for single PNGs pass a folder (or "
                     "drop the trailing / for one grid PNG)")
  # In a run's checkpoints/ the images went with that step when it was rotated out (and made a
  # step folder of their own, unreadable, in checkpoints/40/); in its samples/ they replaced the
  # run's own grid.
  managed = run_folders.managed_refusal("--out", out)
  if managed:
    raise ValueError(managed)
  if singles and run_folders.is_run(out.rstrip(os.sep) or os.sep):
    # `evaluate --fake` skips a run's workdir (its images are grids): a set written there
    # took the whole generation, then was refused.
    raise ValueError(f"--out {out}: is a training run's workdir, which `evaluate --fake` does not "
                     "read as a set of images; pass a folder of their own, e.g. "
                     f"{os.path.join(out, 'fakes', '')}")
  given = [label] if isinstance(label, str) else list(label or [])
  run_config = saved_run.load_config(workdir)
  classes = config_lib.attribute_classes(run_config)
  # Now, before the checkpoint is read and the latents are made: the fewest images asked for.
  fewest, exact = fewest_images(num, interpolate, between, run_config.data.num_classes, given,
                                singles)
  _check_fits(fewest, exact, run_config, singles)
  # --out before the checkpoint is read and its statistics computed (minutes with a large model
  # on a CPU); singles again as they are written, at their exact count.
  if singles:
    try:
      _check_singles_folder(out, fewest if exact else None)
    except OSError as e:  # a folder it cannot list: in the words its write would use
      raise _out_error(out, e) from e
  _check_writable(out, out if singles else os.path.dirname(os.path.abspath(out)))
  # Bad --label/--between values are refused from the checkpoint's meta, before its state is read.
  resolve = lambda meta: label_choices.resolve_choices(meta, given, between, classes)
  config, step, state, meta = saved_run.load_checkpoint(
      workdir, checkpoint, check_meta=resolve, parts=saved_run.SAMPLER_PARTS)
  stopping.raise_if_interrupted()  # reading it took seconds: a stop Python dropped meanwhile
  log.info("sampling checkpoint step %d of %s", step, workdir)
  if standing_stats_batches >= 0:
    with config.unlocked():
      config.eval.standing_stats_batches = standing_stats_batches
  generator, _ = models.build_models(config)
  nc = config.data.num_classes
  chosen, (attribute, start, stop) = resolve(meta)
  cols = math.ceil(math.sqrt(num))
  labels = None
  if between is not None:
    # Soft labels [rows * N, sum(classes)]: every attribute is already in them.
    z, labels, cols = sample_inputs.label_interpolation_inputs(
        seed, classes, attribute, start, stop, interpolate, math.ceil(num / interpolate),
        config.model.z_dim, truncation, chosen)
    num = len(z)
  elif interpolate:
    z, labels, cols = sample_inputs.interpolation_inputs(seed, nc, interpolate, config.model.z_dim,
                                                    truncation)
    if 0 in chosen:  # one class of the first attribute: one row
      index = chosen[0]
      z, labels = z[index * interpolate:(index + 1) * interpolate], labels[:interpolate] * 0 + index
    num = len(z)
  else:
    if nc > 0:  # a grid's num becomes a multiple of the class count
      num, labels, cols = _plain_labels(num, nc, chosen, given, singles,
                                        meta.get("label_counts"), seed, cols)
    z = sample_inputs.latents(seed, num, config.model.z_dim, truncation)
  # A first attribute's column ([n]; rows drawn from the data's combinations are [n, A]): the
  # other attributes from --label or drawn.
  if len(classes) > 1 and between is None and labels.ndim == 1:
    labels = _label_matrix(labels, chosen, classes, seed, interpolate or 1)
  # Every local device samples its share of each chunk, from its own copy of the EMA weights.
  mesh = sharding.local_mesh()
  rows = sharding.batch_sharding(mesh)
  ema_params, g_batch_stats = jax.device_put((state.ema_params, state.g_batch_stats),
                                             sharding.replicated(mesh))
  del state  # its single-device copy of the EMA weights
  # The data's label mix, as training and evaluation drew it (uniform without a recorded mix:
  # runs on the synthetic catalog, or from before it was recorded), and latents truncated as
  # the samples' are.
  statistics = sampling.make_ema_statistics(config, generator, meta.get("label_counts"),
                                            batch_sharding=rows, truncation=truncation)(
      ema_params, g_batch_stats)
  _check_fits(num, True, config, singles)  # exactly, as a grid's labels or interpolation made it
  chunk = -(-min(batch, num) // mesh.size) * mesh.size  # whole rows for every device
  chunks = sampling.sample_in_chunks(sampling.make_sampler(generator, rows), ema_params,
                                     statistics, z, labels, chunk, rows)
  try:
    if singles:
      attributes = label_choices.model_attributes(meta, classes) if labels is not None else []
      return _write_singles(chunks, out, num, _label_rows(labels, attributes))
    images = np.concatenate(list(_counted(chunks, num)))
    stopping.raise_if_interrupted()  # a stop Python dropped: no grid written after it
    sampling.save_png(sampling.make_grid(images, cols=cols), out)
    return [out]
  except OSError as e:
    raise _out_error(out, e) from e


def _counted(chunks, num: int) -> Iterator[np.ndarray]:
  """Each chunk's images, counted on a bar once used (an FID set of 50,000 PNGs, or a grid of
  thousands, takes minutes; not for a handful), and a stop request seen between chunks."""
  with progress_lib.progress(num, "generate", enabled=num >= 200) as bar:
    for _, images in chunks:
      stopping.raise_if_interrupted()
      yield images
      bar.update(len(images))


def _grid_columns(num: int, num_classes: int) -> int:
  """Columns of a grid with a row per class: --num to the nearest multiple of the class count
  (halves up: Python's round() would send them to the even multiple, 20 -> 16 but 12 -> 16 for
  8 classes), at least one."""
  return max(1, (2 * num + num_classes) // (2 * num_classes))


def fewest_images(num: int, interpolate: int, between: Optional[str], num_classes: int,
                  given: Sequence[str] = (), singles: bool = False) -> tuple[int, bool]:
  """(the fewest images generate's arguments make, whether exactly that many), known before the
  checkpoint's meta resolves the --label values `given`: --between's ceil(num / N) rows of N;
  --interpolate's row of N per class (8 rows unconditional), one where a label may pick a class;
  single PNGs and an unconditional grid: --num; a conditional grid: --num to the nearest multiple
  of the class count (as `_plain_labels`), --num itself where a label may pick one class."""
  if between is not None:
    return -(-num // interpolate) * interpolate, True
  if interpolate:
    if num_classes <= 0 or not given:
      return (8 if num_classes <= 0 else num_classes) * interpolate, True
    return interpolate, False
  if singles or num_classes <= 0:
    return num, True
  rounded = _grid_columns(num, num_classes) * num_classes
  return (rounded, True) if not given else (min(num, rounded), False)


def _check_fits(num: int, exact: bool, config: ml_collections.ConfigDict, singles: bool) -> None:
  """Raises ValueError when `num` images (--num, or --interpolate's rows) cannot be sampled
  here: a grid (held whole, then one PNG) past the training grids' pixel bound, or latents (made
  at once, so that a seed's images do not depend on --batch) larger than this host's memory.
  Said before sampling, not as XLA's abort or numpy's traceback."""
  from jaxgan.config.validation import MAX_GRID_PIXELS  # pylint: disable=g-import-not-at-top

  size, least = config.data.image_size, "" if exact else "at least "
  if not singles and num * size * size > MAX_GRID_PIXELS:
    raise ValueError(f"a grid of {least}{num} images at {size}x{size} has {least}"
                     f"{num * size * size} pixels, more than {MAX_GRID_PIXELS} (2**30); write one "
                     "PNG per image (--out ending in /), or fewer (--num, --interpolate)")
  beyond = resources.beyond_host_memory(num * config.model.z_dim * 4)
  if beyond:
    raise ValueError(f"the latents of {least}{num} images alone take {beyond}; generate fewer "
                     "at a time (another --seed for each part)")


def _out_error(out: str, e: OSError) -> OSError:
  """The one-line error of a failed write to --out, naming the file where it is another than
  --out (a subfolder listed)."""
  # A failed rename names its temporary first and the file meant (the PNG) second.
  name, why = e.filename2 or e.filename, e.strerror or e
  if name and e.errno in (errno.EEXIST, errno.ENOTDIR):
    # Something other than a folder where the path needs one: makedirs says 'File exists' (for
    # that path) or 'Not a directory' (for one below it). The one in the way is named.
    existing = config_paths.nearest_existing(name)
    if not os.path.isdir(existing):
      name = existing
      why = "is a file, not a folder" if os.path.isfile(existing) else "is not a folder"
  other = name and os.path.abspath(name) != os.path.abspath(out)
  where = f" ({name})" if other else ""
  return OSError(f"--out {out}{where}: {why}; pass a path you can write")


def _check_writable(out: str, folder: str) -> None:
  """Creates `folder` (the grid's, or the singles' --out) and a file in it, all removed at once:
  an unwritable path is refused before the checkpoint is read and thousands of images sampled,
  and a later refusal (a --label the checkpoint lacks) leaves no empty folders behind."""
  created = atomic_write.missing_folders(folder)  # the probe's (the writes make them again)
  # A short name of its own: --out's may be near the 255-byte limit (save_png's temporary
  # beside it is cut to fit).
  probe = os.path.join(folder, f".jaxgan-probe-{os.getpid()}")
  try:
    os.makedirs(folder, exist_ok=True)
    with open(probe, "wb"):
      pass
    os.remove(probe)
    _check_name_length(folder, out)
  except OSError as e:
    if e.filename == probe:  # the grid's own path, as its write would have named it
      e.filename = out
    raise _out_error(out, e) from e
  finally:
    atomic_write.remove_empty(created)


def _check_name_length(folder: str, out: str) -> None:
  """Raises ENAMETOOLONG for an --out whose name is longer than `folder`'s file system takes,
  found otherwise by the grid's rename after sampling (naming its temporary). Not by creating
  --out itself: a stop or another generate between that and its removal would leave it."""
  try:
    limit = os.pathconf(folder, "PC_NAME_MAX")
  except (AttributeError, OSError, ValueError):  # not on Windows; a file system that does not say
    return
  if 0 < limit < len(os.fsencode(os.path.basename(out))):  # -1, 0: no limit said
    raise OSError(errno.ENAMETOOLONG, os.strerror(errno.ENAMETOOLONG), out)


LABELS_FILE = "labels.csv"


def _label_rows(labels, attributes) -> Optional[list[list[str]]]:
  """labels.csv's header and a row per image: each attribute's class name and index; None for an
  unconditional model, and for soft labels (--between), whose images lie between classes."""
  if labels is None or not np.issubdtype(np.asarray(labels).dtype, np.integer):
    return None
  labels = np.asarray(labels).reshape(len(labels), -1)
  header = ["file"] + [column for name, _ in attributes for column in (name, f"{name}_index")]
  names = lambda i, j: attributes[i][1][j] if j < len(attributes[i][1]) else str(j)
  return [header] + [[f"{n:06d}.png"] + [v for i, j in enumerate(row) for v in (names(i, j),
                                                                               str(j))]
                     for n, row in enumerate(labels.tolist())]


def _numbered(name: str) -> bool:
  """Whether `name` is one this writes: f"{i:06d}.png" exactly (7 digits and more from
  1,000,000 on); another tool's 00000001.png is not one of them."""
  return bool(re.fullmatch(r"\d{6,}\.png", name)) and name == f"{int(name[:-4]):06d}.png"


def _check_singles_folder(out: str, num: Optional[int]) -> int:
  """Refuses a singles --out that `evaluate --fake` would not read as these `num` images alone
  (None: the count is not known yet): one holding a prepared set (read instead), numbered PNGs
  past `num` (an earlier, larger run), or any other image. Returns how many numbered PNGs (of an
  earlier generate) it holds, which these replace."""
  from jaxgan.data import image_sets  # pylint: disable=g-import-not-at-top
  from jaxgan.data.prepared import INFO_FILE  # pylint: disable=g-import-not-at-top

  if not os.path.isdir(out):
    return 0
  if os.path.isfile(os.path.join(out, INFO_FILE)):  # tools given the folder read the set instead
    raise ValueError(f"--out {out} holds a prepared set ({INFO_FILE}), which `evaluate --fake` "
                     "would read instead of these images; use an empty folder")
  numbered = [n for n in os.listdir(out) if _numbered(n)]
  stale = sorted((n for n in numbered if num is not None and int(n[:-4]) >= num),
                 key=lambda n: int(n[:-4]))
  if stale:
    raise ValueError(f"--out {out} already holds {len(stale)} numbered PNGs past --num={num} "
                     f"({stale[0]} ...) from an earlier run; use an empty folder or delete them")
  # Any other image there (a grid, another tool's files; subfolders too) would be read with
  # these as one set by `evaluate --fake`.
  ours = lambda p: (_numbered(os.path.basename(p))
                    and os.path.realpath(os.path.dirname(p)) == os.path.realpath(out))
  others = [p for p in image_sets.list_images(out) if not ours(p)]
  if others:
    raise ValueError(f"--out {out} already holds {len(others)} other image file(s) "
                     f"({os.path.relpath(others[0], out)} ...), which `evaluate --fake` would "
                     "read with these as one set; use an empty folder or move them")
  return len(numbered)


def _write_singles(chunks, out: str, num: int, label_rows: Optional[list] = None) -> list[str]:
  """000000.png ... in `out`, a chunk at a time (any --num fits in memory), and `label_rows` as
  labels.csv (each image's classes). A folder already holding numbered PNGs past --num (an
  earlier, larger run) or any other image is refused: `evaluate --fake` would read them with
  these as one set; so is one this wrote until its last file (image_sets.INCOMPLETE_MARKER), and
  one holding a prepared set, which it would read instead."""
  from jaxgan import sampling  # pylint: disable=g-import-not-at-top
  from jaxgan.data.image_sets import INCOMPLETE_MARKER  # pylint: disable=g-import-not-at-top

  earlier = _check_singles_folder(out, num)
  if earlier:  # said, not refused: the same command again is how a stopped set is completed
    log.info("%s: replacing the %s numbered PNGs an earlier generate left there", out,
             f"{earlier:,}")
  os.makedirs(out, exist_ok=True)
  # Until the last file is written: a run cut short over an earlier set leaves a mix of the two,
  # which `evaluate --fake` refuses while this is there.
  marker = os.path.join(out, INCOMPLETE_MARKER)
  with open(marker, "w", encoding="utf-8") as f:
    f.write("jaxgan.generate is writing this folder, or was stopped before it finished\n")
  paths, written = [], 0
  try:
    for images in _counted(chunks, num):  # one process: every row, in order
      for image in images:
        paths.append(os.path.join(out, f"{len(paths):06d}.png"))
        # Not synced one by one: a sync per file costs milliseconds, minutes for an FID set.
        sampling.save_png(image, paths[-1], durable=False)
        written += 1
  except BaseException:
    # What the folder now holds, before the stop's or the error's own line.
    log.warning("%s holds the first %s of %s images and %s (evaluate refuses the folder); run "
                "the same command again to write them all", out, f"{written:,}", f"{num:,}",
                INCOMPLETE_MARKER)
    raise
  labels_path = os.path.join(out, LABELS_FILE)
  if label_rows is not None:
    with open(labels_path, "w", newline="", encoding="utf-8") as f:
      csv.writer(f).writerows(label_rows)
  elif os.path.exists(labels_path):  # an earlier run's: not these images' classes
    os.remove(labels_path)
  getattr(os, "sync", lambda: None)()  # once for all: a crash must not leave empty PNGs
  stopping.raise_if_interrupted()  # the marker stays: a stopped folder is not complete
  os.remove(marker)
  return paths
