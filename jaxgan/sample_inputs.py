"""What to sample: seeded latents (with BigGAN's truncation), their spherical interpolation,
and the latents and labels of sample grids and interpolation grids. The same on every machine:
everything is drawn from JAX keys made from the seed, but for `host_truncated_normal`, the
seeded numpy draws of the standing BatchNorm statistics' latents (sampling.py)."""

from __future__ import annotations

from typing import Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np


def latents(seed: int, num: int, z_dim: int, truncation: float = 0.0) -> jax.Array:
  """Standard-normal latents from a seed (the same on every machine).

  `truncation` > 0 is BigGAN's truncation trick: values outside [-t, t] are resampled, i.e.
  the latents follow the normal distribution truncated to [-t, t] (more typical, less varied
  samples as t shrinks).
  """
  key = jax.random.PRNGKey(seed)
  if truncation > 0:
    return jax.random.truncated_normal(key, -truncation, truncation, (num, z_dim), jnp.float32)
  return jax.random.normal(key, (num, z_dim), jnp.float32)


def host_truncated_normal(rng: np.random.Generator, shape: tuple[int, ...], truncation: float
                          ) -> np.ndarray:
  """float64 draws of the standard normal truncated to [-t, t] (`latents`' distribution), from a
  numpy generator, by rejection at a bounded cost for any t: proposed by the normal itself for
  t >= 1 (each accepted with probability >= 0.68), else uniformly on [-t, t] and kept with
  probability exp(-z^2 / 2) (>= 0.61). The normal proposal alone needs ~1/t rounds: minutes as t
  nears 0."""
  z, todo = np.empty(shape), np.ones(shape, bool)
  while todo.any():
    where = np.flatnonzero(todo)
    if truncation >= 1:
      draw = rng.standard_normal(len(where))
      keep = np.abs(draw) <= truncation
    else:
      draw = rng.uniform(-truncation, truncation, len(where))
      keep = rng.random(len(where)) < np.exp(-0.5 * draw * draw)
    z.flat[where[keep]] = draw[keep]
    todo.flat[where[keep]] = False
  return z


def slerp(a: jax.Array, b: jax.Array, t: jax.Array) -> jax.Array:
  """Spherical interpolation between latents (rows of a and b) at fractions t: stays at the norm
  Gaussian latents have, where a straight line would pass through low-norm, atypical z."""
  a_n = a / jnp.linalg.norm(a, axis=-1, keepdims=True)
  b_n = b / jnp.linalg.norm(b, axis=-1, keepdims=True)
  omega = jnp.arccos(jnp.clip(jnp.sum(a_n * b_n, -1, keepdims=True), -1.0, 1.0))
  so = jnp.sin(omega)
  safe = so > 1e-6
  wa = jnp.where(safe, jnp.sin((1.0 - t) * omega) / jnp.where(safe, so, 1.0), 1.0 - t)
  wb = jnp.where(safe, jnp.sin(t * omega) / jnp.where(safe, so, 1.0), t)
  return wa * a + wb * b


def interpolation_inputs(seed: int, num_classes: int, steps: int, z_dim: int,
                         truncation: float = 0.0) -> tuple[jax.Array, Optional[jax.Array], int]:
  """Latent interpolation grid: one row per class (8 rows unconditional), `steps` columns moving
  from one latent to another by slerp; the same two latents in every row, so columns compare
  classes at a fixed z."""
  rows = num_classes if num_classes > 0 else 8
  ends = latents(seed, 2 * (1 if num_classes > 0 else rows), z_dim, truncation)
  starts, stops = ends[0::2], ends[1::2]
  t = jnp.linspace(0.0, 1.0, steps)[None, :, None]
  z = slerp(starts[:, None, :], stops[:, None, :], t)  # [rows or 1, steps, z]
  if truncation > 0:
    # slerp keeps the norm, not the box: between two truncated latents its weights add up to
    # more than 1 (up to sqrt(2) at right angles), so mid-row entries reached 1.4 t. Clipped to
    # [-t, t], where the ends were drawn and the standing statistics were computed.
    z = jnp.clip(z, -truncation, truncation)
  z = jnp.broadcast_to(z, (rows, steps, z_dim)).reshape(rows * steps, z_dim)
  labels = (jnp.repeat(jnp.arange(num_classes, dtype=jnp.int32), steps)
            if num_classes > 0 else None)
  return z, labels, steps


def attribute_draws(seed: int, attribute: int, num: int, num_classes: int) -> jax.Array:
  """`num` classes of `attribute` drawn uniformly from the seed, int32 [num]. The key is the seed's
  folded with the attribute index: not the latents' key, and independent across attributes."""
  key = jax.random.fold_in(jax.random.PRNGKey(seed), attribute)
  return jax.random.randint(key, (num,), 0, num_classes, jnp.int32)


def label_interpolation_inputs(seed: int, classes: Sequence[int], attribute: int, start: int,
                               stop: int, steps: int, rows: int, z_dim: int,
                               truncation: float = 0.0, fixed: Optional[dict[int, int]] = None
                               ) -> tuple[jax.Array, jax.Array, int]:
  """Class interpolation grid (BigGAN-style): (z [rows * steps, z_dim], soft labels
  [rows * steps, sum(classes)], cols = steps).

  Row r keeps one latent (`latents(seed, rows, ...)`, so the change along a row is the class's
  alone); column t in linspace(0, 1, steps) weights `attribute`'s classes (1 - t) * one-hot(start)
  + t * one-hot(stop). Every other attribute i is one-hot of `fixed[i]` when given, else one class
  per row drawn by `attribute_draws` (the convention of generate's random attributes).
  Labels are the per-attribute weight blocks concatenated, as the generators take soft labels.
  """
  classes, fixed = tuple(classes), dict(fixed or {})
  if not 0 <= attribute < len(classes):
    raise ValueError(f"attribute {attribute} out of range for {len(classes)} attribute(s)")
  for i, c in [(attribute, start), (attribute, stop), *fixed.items()]:
    if not (0 <= i < len(classes) and 0 <= c < classes[i]):
      raise ValueError(f"class {c} of attribute {i} out of range for classes {classes}")
  if attribute in fixed:
    raise ValueError(f"attribute {attribute} is interpolated, so it cannot also be fixed")
  if steps < 2 or rows < 1:
    raise ValueError(f"need steps >= 2 and rows >= 1, got steps={steps}, rows={rows}")
  z = jnp.repeat(latents(seed, rows, z_dim, truncation), steps, axis=0)
  t = jnp.tile(jnp.linspace(0.0, 1.0, steps), rows)[:, None]  # [rows * steps, 1]
  blocks = []
  for i, n in enumerate(classes):
    if i == attribute:
      eye = jnp.eye(n, dtype=jnp.float32)
      blocks.append((1.0 - t) * eye[start] + t * eye[stop])
    else:
      index = (jnp.full((rows,), fixed[i], jnp.int32) if i in fixed
               else attribute_draws(seed, i, rows, n))
      blocks.append(jnp.repeat(jax.nn.one_hot(index, n, dtype=jnp.float32), steps, axis=0))
  return z, jnp.concatenate(blocks, axis=1), steps


def grid_inputs(seed: int, num_classes: int | Sequence[int], per_class: int, z_dim: int
                ) -> tuple[jax.Array, Optional[jax.Array], int]:
  """Fixed noise and labels for training grids: one row per class (8 rows unconditional).

  `num_classes` is a class count or the classes per attribute (`config.attribute_classes`); with
  several attributes the rows are the first attribute's classes and every other attribute is
  fixed at class 0, so labels are [n, A] and the grid keeps one row per first-attribute class.
  """
  classes = (num_classes,) if isinstance(num_classes, int) else tuple(num_classes)
  first = classes[0] if classes and classes[0] > 0 else 0
  rows = first if first > 0 else 8
  z = latents(seed, rows * per_class, z_dim)
  if not first:
    return z, None, per_class
  labels = jnp.repeat(jnp.arange(first, dtype=jnp.int32), per_class)
  if len(classes) > 1:
    labels = jnp.zeros((len(labels), len(classes)), jnp.int32).at[:, 0].set(labels)
  return z, labels, per_class


def grid_legend(attributes: Sequence[tuple[str, Sequence[str]]]) -> str:
  """What the rows of `grid_inputs`' grids are, for a person reading them: one line per row,
  the first attribute's class names in index order (`attributes`: (name, class names) per
  attribute); '' for an unconditional model."""
  if not attributes or not attributes[0][1]:
    return ""
  (name, names), others = attributes[0], attributes[1:]
  fixed = ", ".join(f"{other}={values[0] if values else 0}" for other, values in others)
  per = "class" if name == "class" else f"{name} class"  # a folder's one attribute is 'class'
  head = (f"sample grids (step_*.png) and reals.png: a row per {per}, top to bottom"
          + (f"; the samples' other attributes at class 0 ({fixed})" if fixed else "") + "\n")
  return head + "".join(f"row {i}: {n}\n" for i, n in enumerate(names))
