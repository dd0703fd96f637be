"""Class conditioning on one or several categorical attributes (e.g. articleType and baseColour).

An image's label is one integer per attribute; its embedding is the sum of one learned embedding
per attribute, so a G or D conditioned on (articleType, baseColour) can generalise to unseen
combinations of seen values, and one attribute reduces to a plain class embedding.

Soft labels: instead of integers, labels may be floats [b, sum(classes)], the concatenation,
attribute by attribute, of per-attribute class weights; the embedding is then
sum_i weights_i @ table_i, so a one-hot row embeds exactly as its integer label and a mixture of
two classes embeds as the mixture of their embeddings (BigGAN-style class interpolation).
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import flax.linen as nn
import jax
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


def is_soft(labels: Any) -> bool:
  """Whether `labels` are class weights (a floating array) rather than class indices."""
  return labels is not None and jnp.issubdtype(jnp.asarray(labels).dtype, jnp.floating)


def embed_labels(embeds: Sequence[nn.Embed], labels: jnp.ndarray) -> jnp.ndarray:
  """Sum over attributes of `embeds[i]` applied to attribute i's labels -> [b, features].

  Integer labels ([b] with one attribute, or [b, A]) index each table through `nn.Embed` itself,
  exactly as before soft labels existed. Float labels [b, sum(num_embeddings)] weight each table's
  rows: sum_i weights_i @ table_i. Call inside the owning module's compact method (the tables are
  read from the bound `nn.Embed`s, which creates them at init).
  """
  if not is_soft(labels):
    matrix = as_label_matrix(labels, len(embeds))
    out = None
    for i, e in enumerate(embeds):
      v = e(matrix[:, i])
      out = v if out is None else out + v
    return out
  labels = jnp.asarray(labels)
  widths = [e.num_embeddings for e in embeds]
  if labels.ndim != 2 or labels.shape[1] != sum(widths):
    raise ValueError(f"soft labels of shape {labels.shape}; expected [batch, {sum(widths)}] "
                     f"(class weights of the {len(widths)} attribute(s) with {widths} classes, "
                     "concatenated)")
  out, offset = None, 0
  for e, n in zip(embeds, widths):
    table = e.embedding  # reading it binds the submodule: its setup creates or loads the param
    # HIGHEST: a one-hot row must reproduce its table row exactly, also where float32 matmuls
    # default to reduced precision (TF32 / bf16 passes on GPU and TPU).
    v = jnp.dot(labels[:, offset:offset + n].astype(jnp.float32), table.astype(jnp.float32),
                precision=jax.lax.Precision.HIGHEST)
    v = v.astype(e.dtype or table.dtype)  # the dtype nn.Embed returns for integer labels
    out, offset = (v if out is None else out + v), offset + n
  return out


class ClassEmbed(nn.Module):
  """Sum over attributes of per-attribute embeddings: [b] or [b, A] int labels, or float class
  weights [b, sum(num_classes)] (see `embed_labels`) -> [b, features].

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
    embeds = [nn.Embed(n, self.features, embedding_init=self.embedding_init, dtype=self.dtype,
                       name=f"attr{i}") for i, n in enumerate(self.num_classes)]
    return embed_labels(embeds, labels)
