"""Reading a training workdir: its resolved config and its latest checkpoint, on one device.

Used by `generate` and by tools that inspect runs; training itself restores through the trainer
with the run's own mesh.
"""

from __future__ import annotations

import os
from typing import Any

import jax
import ml_collections

from jaxgan import checkpoint as ckpt_lib
from jaxgan import config as config_lib
from jaxgan import models as models_lib
from jaxgan import state as state_lib


def load_config(workdir: str) -> ml_collections.ConfigDict:
  """WORKDIR/config.json on top of the current schema."""
  path = os.path.join(workdir, "config.json")
  if not os.path.exists(path):
    raise FileNotFoundError(f"{path} not found: is {workdir} a jaxgan training workdir?")
  with open(path, encoding="utf-8") as f:
    text = f.read()
  try:
    return config_lib.from_json(text)
  except ValueError as e:  # json's decode error, or a key this jaxgan does not know
    raise ValueError(f"{path} is not a readable jaxgan config ({e}); restore it from the run's "
                     "checkpoint meta or rerun training") from None


def load_latest(workdir: str, subdir: str = "checkpoints"
                ) -> tuple[ml_collections.ConfigDict, int, state_lib.TrainState, dict]:
  """(config, step, state, meta) of the newest readable checkpoint in WORKDIR/`subdir`
  ('checkpoints', or 'checkpoints_best' for the best-FID one), on the default device."""
  config = load_config(workdir)
  generator, discriminator = models_lib.build_models(config)
  g_tx, d_tx = state_lib.make_optimizers(config)
  abstract = jax.eval_shape(lambda: state_lib.init_state(config, generator, discriminator,
                                                         g_tx, d_tx, config.seed))
  device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
  target: Any = ckpt_lib.abstract_like(abstract, jax.tree_util.tree_map(lambda _: device, abstract))
  directory = os.path.join(workdir, subdir)
  if not os.path.isdir(directory):
    raise FileNotFoundError(f"{directory} not found: no checkpoint of this kind in {workdir}"
                            + (" (set train.eval_every to keep a best-FID checkpoint)"
                               if subdir == "checkpoints_best" else ": train first"))
  checkpointer = ckpt_lib.Checkpointer(directory, async_save=False, read_only=True)
  try:
    restored = checkpointer.restore_latest(target)
  finally:
    checkpointer.close()
  if restored is None:
    raise FileNotFoundError(f"no readable checkpoint in {directory}: train first")
  step, state, meta = restored
  return config, step, state, meta
