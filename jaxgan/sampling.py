"""Sampling from the EMA generator and writing image grids."""

from __future__ import annotations

import contextlib
import functools
import logging
import math
import os
from typing import Any, Callable, Iterator, Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax.sharding import NamedSharding
import ml_collections
import numpy as np
from PIL import Image

from jaxgan.atomic_write import publish
from jaxgan.config import attribute_classes
from jaxgan import kept_programs, stopping
from jaxgan.sample_inputs import host_truncated_normal

log = logging.getLogger(__name__)


def make_sampler(generator: nn.Module, out_sharding: Optional[NamedSharding] = None
                 ) -> Callable[..., jax.Array]:
  """Jitted `(ema_params, g_batch_stats, z, labels) -> uint8 NHWC` in inference mode.

  `out_sharding`: replicated (training's grids), every process holds the whole output; a batch
  sharding (the evaluation's fakes, `generate`), each device keeps the images of its rows.
  One function per generator and sharding in a process (`kept_programs`): a run built again
  samples with the program it traced and compiled before.
  """
  return kept_programs.kept(_sampler, generator, out_sharding)


def _sampler(generator: nn.Module, out_sharding: Optional[NamedSharding]) -> Callable:

  @functools.partial(jax.jit, out_shardings=out_sharding)
  def sample(ema_params, g_batch_stats, z, labels):
    variables = {"params": ema_params}
    if g_batch_stats:
      variables["batch_stats"] = g_batch_stats
    images = generator.apply(variables, z, labels, train=False)
    return to_uint8(images)

  return sample


def _is_norm_statistic(path) -> bool:
  """BatchNorm's running mean and variance (spectral norm's vectors share the collection)."""
  return getattr(path[-1], "key", None) in ("mean", "var")


# Rows per standing-statistics batch at most: the batch statistics' expectations do not depend on
# the batch size (the variance's bias, 1 - 1/n, is < 0.4 % from here on), and a tool sampling a
# pod-trained run on one device must not need the pod's batch in memory.
MAX_STANDING_BATCH = 256
# The running averages start from this once (and from 0 once): the difference of the two
# updates, divided by it, is each module's momentum. Large, so that the batch statistics' part
# of the update cannot cancel digits of it (float32).
_PROBE = 1e20


def label_counts(label_rows: np.ndarray) -> Optional[dict]:
  """The data's label rows as {'rows': distinct rows (sorted), 'counts': how often each occurs},
  or None without rows: what standing statistics need of them, small enough for a checkpoint's
  metadata (JSON), so that `generate`, which has no data, draws labels as training and
  evaluation do."""
  if label_rows is None or not len(label_rows):
    return None
  rows, counts = np.unique(np.asarray(label_rows, np.int32), axis=0, return_counts=True)
  return {"rows": rows.tolist(), "counts": counts.tolist()}


def label_counts_matching(counts: dict, chosen: dict[int, int]) -> Optional[dict]:
  """`counts` (of `label_counts`) restricted to the rows whose attribute i is chosen[i] for every
  chosen one; None when no row matches."""
  rows = np.asarray(counts["rows"], np.int32)
  keep = np.ones(len(rows), bool)
  for attribute, value in chosen.items():
    keep &= (rows if rows.ndim == 1 else rows[:, attribute]) == value
  if not keep.any():
    return None
  return {"rows": rows[keep].tolist(),
          "counts": np.asarray(counts["counts"], np.int64)[keep].tolist()}


def draw_label_rows(counts: dict, rng: np.random.Generator, shape: tuple) -> np.ndarray:
  """Rows drawn in proportion to their counts: index i of the sorted rows, each repeated its
  count times, without building that (data-sized) array."""
  ends = np.cumsum(np.asarray(counts["counts"], np.int64))
  positions = rng.integers(0, ends[-1], shape)
  return np.asarray(counts["rows"], np.int32)[np.searchsorted(ends, positions, side="right")]


def make_standing_stats(generator: nn.Module, z_dim: int, classes: Sequence[int],
                        num_batches: int, batch_size: int, seed: int = 0,
                        label_counts: Optional[dict] = None,
                        out_sharding: Optional[NamedSharding] = None,
                        batch_sharding: Optional[NamedSharding] = None,
                        truncation: float = 0.0) -> Callable[[Any, Any], Any]:
  """Jitted `(params, batch_stats) -> batch_stats` whose BatchNorm means and variances are the
  generator's own: averaged over `num_batches` batches of `batch_size` fixed latents run in
  training mode; other leaves (spectral norm's vectors) are kept. BigGAN's "standing
  statistics". Labels are drawn from `label_counts` (of the data's label rows: its class mix
  and attribute combinations), or uniformly per attribute over `classes` without them. The
  latents follow the normal truncated to [-truncation, truncation] when that is > 0, as the
  samples they will normalise do (BigGAN keeps standing statistics per truncation).

  Why: the EMA generator's weights are an average, but the running statistics are the raw G's,
  gathered from its activations; normalising the EMA G's activations with them shifts every
  layer (docs/architecture.md has the measurement). Each batch's statistics are read from the
  running-average update `m * old + (1 - m) * batch` that training mode performs, started from
  0; `m` comes from one update started from a large value, so no module's momentum needs to be
  known here. `batch_sharding` (the run's, splitting the leading axis over the mesh) splits each
  batch's rows over the devices instead of computing them on every device; ignored where it
  does not divide `batch_size`.
  """
  classes = tuple(classes)
  if batch_sharding is not None and batch_size % batch_sharding.num_devices:
    batch_sharding = None
  rng = np.random.default_rng([seed, 0x5751])
  shape = (num_batches, batch_size, z_dim)
  z = (host_truncated_normal(rng, shape, truncation) if truncation > 0
       else rng.standard_normal(shape)).astype(np.float32)
  labels = None
  if classes and label_counts:
    # From the counts: the same from the data (in any order) as from a checkpoint's meta.
    labels = draw_label_rows(label_counts, rng, (num_batches, batch_size))
  elif classes:
    labels = np.stack([rng.integers(0, n, (num_batches, batch_size)) for n in classes],
                      -1).astype(np.int32)
    labels = labels if len(classes) > 1 else labels[..., 0]

  standing_from = kept_programs.kept(_standing_program, generator, num_batches, out_sharding,
                                     batch_sharding)

  def standing(params, batch_stats):
    return standing_from(params, batch_stats, z, labels)

  standing.lower = lambda params, batch_stats: standing_from.lower(params, batch_stats, z, labels)
  return standing


def _standing_program(generator: nn.Module, num_batches: int,
                      out_sharding: Optional[NamedSharding],
                      batch_sharding: Optional[NamedSharding]) -> Callable:
  """Jitted `(params, batch_stats, z, labels) -> standing statistics` (make_standing_stats')."""
  split = (lambda x: x) if batch_sharding is None else (
      lambda x: jax.lax.with_sharding_constraint(x, batch_sharding))

  def updated_from(params, batch_stats, value, z_k, labels_k):
    start = jax.tree_util.tree_map_with_path(
        lambda p, x: jnp.full_like(x, value) if _is_norm_statistic(p) else x, batch_stats)
    # Split rows: the batch means become all-reduces over the mesh (GSPMD), as in training.
    _, updates = generator.apply({"params": params, "batch_stats": start}, split(z_k),
                                 None if labels_k is None else split(labels_k),
                                 train=True, mutable=["batch_stats"])
    return updates["batch_stats"]

  # The latents and labels are arguments, not constants closed over: baked into the program
  # they made it megabytes larger and slower to compile. Host arrays: the same on every process.
  @functools.partial(jax.jit, out_shardings=out_sharding)
  def standing_from(params, batch_stats, z, labels):
    label = (lambda k: None) if labels is None else (lambda k: labels[k])
    from_zeros = updated_from(params, batch_stats, 0.0, z[0], label(0))
    momentum = jax.tree_util.tree_map(
        lambda a, b: (a - b) / _PROBE,
        updated_from(params, batch_stats, _PROBE, z[0], label(0)), from_zeros)

    def add_batch(total, k):
      new = updated_from(params, batch_stats, 0.0, z[k], label(k))
      return jax.tree_util.tree_map(lambda t, x: t + x, total, new), None

    total, _ = jax.lax.scan(add_batch, from_zeros, jnp.arange(1, num_batches))
    return jax.tree_util.tree_map_with_path(
        lambda p, old, t, m: t / (num_batches * (1.0 - m)) if _is_norm_statistic(p) else old,
        batch_stats, total, momentum)

  return standing_from


def make_ema_statistics(config: ml_collections.ConfigDict, generator: nn.Module,
                        label_counts: Optional[dict] = None,
                        out_sharding: Optional[NamedSharding] = None,
                        batch_sharding: Optional[NamedSharding] = None,
                        truncation: float = 0.0) -> Callable[[Any, Any], Any]:
  """`(ema_params, g_batch_stats) -> batch_stats` to sample the EMA generator with: standing
  statistics (`eval.standing_stats_batches` batches of `train.batch_size` rows, at most
  MAX_STANDING_BATCH; labels drawn by `label_counts`, the data's, when given; latents truncated
  as the samples' are), or the raw G's running statistics unchanged when that is 0 or G has no
  BatchNorm.

  A call with the very objects of the previous call returns its result again: the trainer's
  grid and evaluation of one step share one computation (and, sharing this function, one
  compilation)."""
  batches = config.eval.standing_stats_batches
  if batches <= 0:
    return lambda ema_params, g_batch_stats: g_batch_stats
  standing = make_standing_stats(generator, config.model.z_dim, attribute_classes(config),
                                 batches, min(config.train.batch_size, MAX_STANDING_BATCH),
                                 config.seed, label_counts, out_sharding, batch_sharding,
                                 truncation)
  # The last call's arguments and result. The arguments are held, so their ids cannot be
  # reused by other objects while compared; jax arrays are immutable, so the same objects mean
  # the same values (a donated state's arrays are deleted, not changed).
  last: list = []

  def statistics(ema_params, g_batch_stats):
    if last and last[0] is ema_params and last[1] is g_batch_stats:
      return last[2]
    has_norm = any(_is_norm_statistic(p) for p, _ in
                   jax.tree_util.tree_leaves_with_path(g_batch_stats or {}))
    result = standing(ema_params, g_batch_stats) if has_norm else g_batch_stats
    last[:] = [ema_params, g_batch_stats, result]
    return result

  return statistics


def sample_in_chunks(sampler: Callable[..., jax.Array], ema_params: Any, g_batch_stats: Any,
                     z: np.ndarray, labels: Optional[np.ndarray], chunk: int,
                     batch_sharding: Optional[NamedSharding] = None, ahead: bool = True
                     ) -> Iterator[tuple[np.ndarray, np.ndarray]]:
  """(rows, images) per sampler call: host uint8 images of the EMA generator (normalised with
  `g_batch_stats`, e.g. those of `make_ema_statistics`) and the indices of the rows of `z` (and
  `labels`: None, int classes or soft weights) they were sampled from, `chunk` rows per call, in
  order.

  The last call is padded with zero rows (dropped from its output), so one compilation serves
  any number of images and the device holds two chunks at most: 50k images for FID fit where
  one call would run out of memory. Each image depends only on its own row (G samples in
  inference mode, with fixed statistics), so chunking changes no image beyond float rounding of
  other batch shapes.

  `batch_sharding` (over a mesh; the sampler's output sharded alike, `make_sampler(g,
  batch_sharding)`, and `chunk` a multiple of its device count) splits each chunk's rows over
  the mesh's devices instead of computing every image on every device, and this process gets
  the images its own devices hold, `rows` saying which (every row on one process). Without it
  the sampler runs where its inputs are (one device).

  `ahead`: the next chunk is sampled while the caller handles this one. Off, each chunk is
  sampled when asked for: a caller that runs its own work on the device (the evaluator's
  Inception) then neither waits behind the next chunk nor holds it in device memory."""
  z = np.asarray(z)
  labels = None if labels is None else np.asarray(labels)

  def place(part: Optional[np.ndarray]):
    if part is None or batch_sharding is None:
      return part
    # Every process holds all of z: each device takes its own rows from it.
    return jax.make_array_from_callback(part.shape, batch_sharding, lambda index: part[index])

  def dispatch(start: int) -> tuple[np.ndarray, list]:
    # A tool's stop that Python dropped (JAX's garbage-collection callback): before each chunk,
    # not after the whole set (a no-op under the trainer, which stops at a step).
    stopping.raise_if_interrupted()
    count = min(chunk, len(z) - start)
    z_part = _pad_rows(z[start:start + count], chunk)
    l_part = None if labels is None else _pad_rows(labels[start:start + count], chunk)
    rows, blocks = _local_row_blocks(sampler(ema_params, g_batch_stats, place(z_part),
                                             place(l_part)))
    return start + rows, blocks

  def fetched(rows: np.ndarray, blocks: list) -> tuple[np.ndarray, np.ndarray]:
    wanted = rows < len(z)  # not the padding
    return rows[wanted], np.concatenate(jax.device_get(blocks))[wanted]

  if not ahead:
    for start in range(0, len(z), chunk):
      yield fetched(*dispatch(start))
    return
  # One chunk ahead: the device computes the next while the caller uses this one (generate's PNG
  # writes).
  pending = dispatch(0) if len(z) else None
  for start in range(chunk, len(z) + chunk, chunk):
    rows, blocks = pending
    pending = dispatch(start) if start < len(z) else None
    yield fetched(rows, blocks)


def _local_row_blocks(array: jax.Array) -> tuple[np.ndarray, list]:
  """(row indices, device buffers) of the distinct row blocks this process holds of `array`
  (split along its first axis, or replicated), in row order."""
  blocks: dict[int, Any] = {}
  for shard in array.addressable_shards:
    blocks.setdefault(shard.index[0].start or 0, shard.data)  # replicas: the first copy
  starts = sorted(blocks)
  rows = np.concatenate([np.arange(s, s + blocks[s].shape[0]) for s in starts])
  return rows, [blocks[s] for s in starts]


def _pad_rows(rows: np.ndarray, count: int) -> np.ndarray:
  if len(rows) == count:
    return rows
  return np.concatenate([rows, np.zeros((count - len(rows),) + rows.shape[1:], rows.dtype)])


def to_uint8(images: jnp.ndarray) -> jnp.ndarray:
  """[-1, 1] floats -> uint8 [0, 255], rounding to nearest."""
  return jnp.clip(jnp.round((images + 1.0) * 127.5), 0, 255).astype(jnp.uint8)


GUTTER = 160  # the grids' grey between images (and in empty cells)


def make_grid(images: np.ndarray, cols: int, pad: int = 2, pad_value: int = GUTTER
              ) -> np.ndarray:
  """uint8 [N, H, W, 3] -> one uint8 image, row-major, `cols` per row, grey gutters."""
  n, h, w, c = images.shape
  rows = math.ceil(n / cols)
  grid = np.full((rows * (h + pad) + pad, cols * (w + pad) + pad, c), pad_value, np.uint8)
  for i in range(n):
    r, col = divmod(i, cols)
    y, x = pad + r * (h + pad), pad + col * (w + pad)
    grid[y:y + h, x:x + w] = images[i]
  return grid


def reals_grid(batch: dict, rows: int, cols: int, by_class: bool = False) -> np.ndarray:
  """StyleGAN2-ADA's reals.png, laid out as the sample grids are, to set beside them and to check
  the input (colours, orientation, crops) before a long run: training images of a host batch
  (uint8, as the data yields them; stacked [k, rows, ...] batches too), `rows` x `cols`.
  `by_class`: row c holds the batch's first images of (first-attribute) class c, as row c of
  the grids holds class c's samples; cells a small batch has no image for are left in the
  gutters' grey. Otherwise the batch's first rows * cols images (grey where it has fewer)."""
  images = np.asarray(batch["image"])
  lead = images.ndim - 3  # [rows] or [k, rows] before H, W, C
  images = images.reshape((-1,) + images.shape[lead:])
  cells = np.full((rows * cols,) + images.shape[1:], GUTTER, images.dtype)
  if not by_class or "label" not in batch:
    mine = images[:rows * cols]  # a process's rows of a small batch may not fill the grid
    cells[:len(mine)] = mine
    return make_grid(cells, cols)
  labels = np.asarray(batch["label"])
  first = labels.reshape(len(images), -1)[:, 0]  # [n] or [n, attributes]: the grids' rows
  for c in range(rows):
    mine = images[first == c][:cols]
    cells[c * cols:c * cols + len(mine)] = mine
  return make_grid(cells, cols)


def save_reals(batch: dict, rows: int, cols: int, path: str, by_class: bool = False
               ) -> np.ndarray:
  """Writes `reals_grid` to `path` and returns it; a failed write is logged, not raised (a grid
  is not worth the run)."""
  grid = reals_grid(batch, rows, cols, by_class)
  try:
    save_png(grid, path)
  except OSError as e:
    log.error("writing %s failed (%s); training goes on", path, e)
  return grid


def save_legend(text: str, path: str) -> None:
  """Writes a grid's legend (nothing for an empty one); a failed write is logged, not raised:
  the grids are worth more than their legend."""
  if not text:
    return
  try:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    # backslashreplace: a class name that is not UTF-8 (a prepared set's from before such
    # folder names were refused) failed the run here.
    with open(path, "w", encoding="utf-8", errors="backslashreplace") as f:
      f.write(text)
  except OSError as e:
    log.warning("writing %s failed (%s); the sample grids go on without it", path, e)


def save_png(image: np.ndarray, path: str, durable: bool = True) -> None:
  """Writes atomically (temp file + rename) so a reader never sees half a PNG; `durable` also
  syncs it to disk (`publish`), which bulk writers of files they can write again skip (two syncs
  per file made 50k samples minutes slower)."""
  folder, name = os.path.split(os.path.abspath(path))
  os.makedirs(folder, exist_ok=True)
  # Within the 255 bytes a file name may have, as `path`'s own name is (bytes, not characters:
  # 'é' is two); a cut inside a character is dropped.
  raw = os.fsencode(name)
  short = raw[:200].decode("utf-8", "ignore") if len(raw) > 200 else name
  tmp = os.path.join(folder, f"{short}.tmp")
  try:
    Image.fromarray(image).save(tmp, format="PNG")
    if durable:
      publish(tmp, path)
    else:
      os.replace(tmp, path)
  except BaseException:
    with contextlib.suppress(OSError):  # a failed write (disk full) leaves no partial file
      os.remove(tmp)
    raise
