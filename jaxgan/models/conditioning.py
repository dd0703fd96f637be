"""Class conditioning on one or several categorical attributes (e.g. articleType and baseColour).

An image's label is one integer per attribute; its embedding is the sum of one learned embedding
per attribute, so a G or D conditioned on (articleType, baseColour) can generalise to unseen
combinations of seen values, and one attribute reduces to a plain class embedding.
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import flax.linen as nn
import jax.numpy as jnp


def class_tuple(num_classes: int | Sequence[int]) -> tuple[int, ...]:
  """Classes per attribute: an int n > 0 is one attribute, 0 none; a sequence is kept."""
  if isinstance(num_classes, int):
    return (num_classes,) if num_classes > 0 else ()
  return tuple(int(c) for c in num_classes)


def as_label_matrix(labels: jnp.ndarray, num_attributes: int) -> jnp.ndarray:
  """int32 [b, num_attributes] from labels [b, num_attributes], or [b] with one attribute."""
  labels = jnp.asarray(labels)
  if labels.ndim == 1:
    if num_attributes != 1:
      raise ValueError(f"labels of shape {labels.shape} for {num_attributes} attributes; "
                       f"pass [batch, {num_attributes}]")
    labels = labels[:, None]
  if labels.ndim != 2 or labels.shape[1] != num_attributes:
    raise ValueError(f"labels of shape {labels.shape}; expected [batch, {num_attributes}]")
  return labels.astype(jnp.int32)


class ClassEmbed(nn.Module):
  """Sum over attributes of per-attribute embeddings: [b] or [b, A] int labels -> [b, features].

  Attribute i has its own `nn.Embed(num_classes[i], features)` named `attr{i}`.
  """

  num_classes: tuple[int, ...]
  features: int
  embedding_init: Callable[..., Any] = nn.initializers.normal(1.0)
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, labels: jnp.ndarray) -> jnp.ndarray:
    if not self.num_classes:
      raise ValueError("ClassEmbed needs at least one attribute")
    labels = as_label_matrix(labels, len(self.num_classes))
    out = None
    for i, n in enumerate(self.num_classes):
      e = nn.Embed(n, self.features, embedding_init=self.embedding_init, dtype=self.dtype,
                   name=f"attr{i}")(labels[:, i])
      out = e if out is None else out + e
    return out
