"""The train state: one pytree holding everything a run needs to continue exactly.

Parameters and optimizer states are float32 whatever the compute dtype. The EMA generator keeps
its own parameters only: where it is sampled (grids, evaluation, `generate`) its BatchNorm
statistics are recomputed from its own outputs ("standing statistics", `sampling`), or with
`eval.standing_stats_batches=0` taken from G's running ones (as StyleGAN2-ADA copies buffers).
"""

from __future__ import annotations

import copy
from typing import Any

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import optax

from jaxgan import augment as augment_lib
from jaxgan import config as config_lib
from jaxgan import models as models_lib
from jaxgan import state_digest

PyTree = Any


@flax.struct.dataclass
class TrainState:
  step: jnp.ndarray  # int32 scalar: G updates done
  # int32 scalar: real images shown to D. Wraps past 2^31, so the logs count images from the step
  # in Python ints instead; kept so checkpoints keep their layout.
  images_seen: jnp.ndarray
  rng: jnp.ndarray  # uint32[2]: the run's base key; step keys are fold_in(rng, step)
  nonfinite_streak: jnp.ndarray  # int32 scalar: consecutive skipped (non-finite) steps
  nonfinite_total: jnp.ndarray  # int32 scalar: all skipped steps of the run
  g_params: PyTree
  g_batch_stats: PyTree
  d_params: PyTree
  d_batch_stats: PyTree
  g_opt_state: PyTree
  d_opt_state: PyTree
  ema_params: PyTree
  augment: PyTree  # augment.AugmentState: ADA's p and its sign accumulators (p = 0 unless 'ada')
  lecam: PyTree  # {'real', 'fake'}: EMAs of D's mean outputs, LeCam's anchors


def make_optimizers(config: ml_collections.ConfigDict
                    ) -> tuple[optax.GradientTransformation, optax.GradientTransformation]:
  """Separate Adam optimizers for G and D (DCGAN defaults: lr 2e-4, b1 0.5).

  With lazy R1 (StyleGAN2's lazy regularisation) D takes an extra regulariser step every k =
  `config_lib.r1_period(config)` minibatches, k + 1 Adam steps where plain training takes k. As
  in StyleGAN2, D's lr is scaled by c = k / (k + 1) and its betas raised to the power c, so per
  minibatch D moves (and its moments forget) as it would without the extra step.
  """
  o = config.optim
  d_lr, b1, b2 = o.d_lr, o.b1, o.b2
  if config.loss.r1_gamma > 0:
    k = config_lib.r1_period(config)
    c = k / (k + 1)
    d_lr, b1, b2 = d_lr * c, b1 ** c, b2 ** c
  return optax.adam(o.g_lr, b1=o.b1, b2=o.b2), optax.adam(d_lr, b1=b1, b2=b2)


def init_state(config: ml_collections.ConfigDict, generator: nn.Module, discriminator: nn.Module,
               g_tx: optax.GradientTransformation, d_tx: optax.GradientTransformation,
               seed: int) -> TrainState:
  """A fresh state from `seed`. Pure and jittable: the trainer jits it with output shardings so
  parameters are created directly where they live."""
  root = jax.random.PRNGKey(seed)
  g_key, d_key, run_key = jax.random.split(root, 3)
  size, nc = config.data.image_size, config.data.num_classes
  z = jnp.zeros((2, config.model.z_dim), jnp.float32)
  labels = jnp.zeros(config_lib.label_shape(config, 2), jnp.int32) if nc > 0 else None
  images = jnp.zeros((2, size, size, 3), jnp.float32)
  g_vars = generator.init(g_key, z, labels, train=False)
  d_vars = discriminator.init(d_key, images, labels, train=False)
  g_params, d_params = g_vars["params"], d_vars["params"]
  return TrainState(
      step=jnp.zeros((), jnp.int32),
      images_seen=jnp.zeros((), jnp.int32),
      rng=run_key,
      nonfinite_streak=jnp.zeros((), jnp.int32),
      nonfinite_total=jnp.zeros((), jnp.int32),
      g_params=g_params,
      g_batch_stats=g_vars.get("batch_stats", {}),
      d_params=d_params,
      d_batch_stats=d_vars.get("batch_stats", {}),
      g_opt_state=g_tx.init(g_params),
      d_opt_state=d_tx.init(d_params),
      ema_params=jax.tree_util.tree_map(jnp.copy, g_params),
      augment=augment_lib.init_state(
          config.augment.ada_p_init if augment_lib.AUGMENTS.get(config.augment.name).uses_p
          else 0.0),
      lecam={"real": jnp.zeros((), jnp.float32), "fake": jnp.zeros((), jnp.float32)},
  )


def abstract_state(config: ml_collections.ConfigDict) -> TrainState:
  """The shapes and dtypes of `config`'s train state (jax.eval_shape: nothing computed)."""
  generator, discriminator = models_lib.build_models(config)
  g_tx, d_tx = make_optimizers(config)
  return jax.eval_shape(lambda: init_state(config, generator, discriminator, g_tx, d_tx,
                                           config.seed))


def same_layout(a: Any, b: Any) -> bool:
  """Whether two (abstract) states have the same tree, shapes and dtypes: one restores into the
  other."""
  layout = lambda tree: jax.tree_util.tree_flatten(
      jax.tree_util.tree_map(lambda x: (tuple(x.shape), str(x.dtype)), tree))
  return layout(a) == layout(b)


def class_axes(config: ml_collections.ConfigDict) -> dict[str, tuple[int, int]]:
  """{'collection/path': (attribute, axis)} for the state's arrays that hold one entry per class
  of a conditioning attribute along one axis (G's class embeddings, a projection D's tables, their
  EMA and Adam moments): found by tracing, as the arrays whose shape grows by one along that axis
  when the attribute has one class more, so every registered model is covered without a list of
  layer names. What `train.init_from` matches by class name."""
  classes = list(config_lib.attribute_classes(config))
  shapes = lambda cfg: {
      f"{collection}/{state_digest.path_name(path)}": tuple(leaf.shape)
      for collection, tree in flax.serialization.to_state_dict(abstract_state(cfg)).items()
      for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]}
  base = shapes(config) if classes else {}
  found = {}
  for i in range(len(classes)):
    more = copy.deepcopy(config)
    counts = classes[:i] + [classes[i] + 1] + classes[i + 1:]
    with more.unlocked():
      more.data.num_classes = counts[0]
      more.data.extra_num_classes = ",".join(str(c) for c in counts[1:])
    for name, shape in shapes(more).items():
      grown = [a for a, (x, y) in enumerate(zip(shape, base.get(name, ()))) if x == y + 1]
      if len(shape) == len(base.get(name, ())) and len(grown) == 1 and all(
          x == y for a, (x, y) in enumerate(zip(shape, base[name])) if a != grown[0]):
        found[name] = (i, grown[0])
  return found
