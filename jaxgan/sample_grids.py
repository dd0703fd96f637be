"""A training run's sample grids: the EMA generator on the same latents at every
`train.sample_every` steps (a row per class; samples/step_N.png and TensorBoard's "samples"),
samples/rows.txt saying which row is which class, and the first batch's reals once
(samples/reals.png)."""

from __future__ import annotations

import logging
import os
from typing import Any, Optional

import ml_collections

from jaxgan import config as config_lib
from jaxgan import sample_inputs
from jaxgan import sampling
from jaxgan import sharding
from jaxgan import writers

log = logging.getLogger(__name__)


class SampleGrids:
  """The grids of a run (`run`: run.build_run's, for its mesh and generator) in `workdir`.
  Every process takes part in sampling; `is_main` (process 0) writes the files.

  `statistics`: the EMA generator's BatchNorm statistics for its samples, shared with the run's
  evaluations (a step's grid and evaluation compute them once)."""

  def __init__(self, config: ml_collections.ConfigDict, run: Any, attributes: list,
               label_counts: Optional[dict], workdir: str, writer: writers.MetricsWriter,
               is_main: bool):
    self.folder = os.path.join(workdir, "samples")
    self.writer, self.is_main = writer, is_main
    self.sampler = sampling.make_sampler(run.generator, sharding.replicated(run.mesh))
    self.statistics = sampling.make_ema_statistics(
        config, run.generator, label_counts, out_sharding=sharding.replicated(run.mesh),
        batch_sharding=sharding.batch_sharding(run.mesh))
    z, labels, self.columns = sample_inputs.grid_inputs(
        config.seed, config_lib.attribute_classes(config), config.train.samples_per_class,
        config.model.z_dim)
    self.z, self.labels = sharding.put_replicated((z, labels), run.mesh)
    if is_main:  # which row of the grids is which class (they carry no text)
      sampling.save_legend(sample_inputs.grid_legend(attributes),
                           os.path.join(self.folder, "rows.txt"))
    self._reals_due = is_main and not os.path.exists(self.reals_path)

  @property
  def reals_path(self) -> str:
    return os.path.join(self.folder, "reals.png")

  def path(self, step: int) -> str:
    return os.path.join(self.folder, f"step_{step:07d}.png")

  def save(self, step: int, state: Any) -> None:
    """The grid of `state`'s EMA generator at `step`. Collective: every process calls it."""
    statistics = self.statistics(state.ema_params, state.g_batch_stats)
    images = sharding.to_host(self.sampler(state.ema_params, statistics, self.z, self.labels))
    if self.is_main:
      grid = sampling.make_grid(images, self.columns)
      try:
        sampling.save_png(grid, self.path(step))
      except OSError as e:  # disk full, a lost mount: a missing grid is not worth the run
        log.error("step %d: writing %s failed (%s); training goes on", step, self.path(step), e)
      self.writer.write_image(step, "samples", grid)

  def save_reals(self, step: int, host_batch: dict) -> None:
    """The first batch's images (process 0's rows) as reals.png, once, where it is missing."""
    if not self._reals_due:
      return
    self._reals_due = False
    grid = sampling.save_reals(host_batch, len(self.z) // self.columns, self.columns,
                               self.reals_path, by_class=self.labels is not None)
    self.writer.write_image(step, "reals", grid)
