"""Config checks of where a run runs: the device mesh against the devices and processes, a
step's batch against the host's memory, and the keys `jax.distributed` needs (checked before
the backend starts). Part of `validation.validate`; `run.py` asks `validate_distributed` first.
"""

from __future__ import annotations

import math

import ml_collections

from jaxgan import resources, sharding
from jaxgan.config.schema import require, require_positive_int


def check_mesh(config: ml_collections.ConfigDict, num_devices: int, num_processes: int) -> None:
  """The device mesh against the devices and processes, and the batch's split over them."""
  require_positive_int(config, "mesh.fsdp")
  fsdp, mesh_data = config.mesh.fsdp, config.mesh.data
  require(fsdp <= num_devices, "mesh.fsdp",  # whatever mesh.data: none of its values would fit
          f"{fsdp} is more than the device count ({num_devices}); set at most {num_devices}")
  require(num_devices % fsdp == 0 or mesh_data != -1, "mesh.fsdp",
          f"{fsdp} does not divide the {num_devices} devices; pick a divisor or set mesh.data")
  require(mesh_data == -1 or (isinstance(mesh_data, int) and 0 < mesh_data * fsdp <= num_devices),
          "mesh.data", f"must be -1 (all devices) or at most {num_devices // fsdp} with "
          f"mesh.fsdp={fsdp} on {num_devices} devices, got {mesh_data}")
  mesh_devices = math.prod(sharding.mesh_shape(config, num_devices))
  require(config.train.batch_size % mesh_devices == 0, "train.batch_size",
          f"global batch {config.train.batch_size} is not divisible by the {mesh_devices} "
          "devices of the mesh; use a multiple of it")
  if num_processes > 1:
    require(mesh_devices == num_devices, "mesh.data",
            f"a {num_processes}-process run must use every device ({num_devices}); "
            f"mesh.data * mesh.fsdp covers {mesh_devices}: set mesh.data=-1")
    require(config.train.batch_size % num_processes == 0, "train.batch_size",
            f"global batch {config.train.batch_size} is not divisible by the {num_processes} "
            "processes")
  _check_batch_fits_host(config, num_processes)
  # Checked whatever train.eval_every: `evaluate --workdir` reads it too.
  problem = eval_batch_problem(config.eval.batch_size, num_devices // max(num_processes, 1))
  require(not problem, "eval.batch_size", problem)
  validate_distributed(config)


def _check_batch_fits_host(config: ml_collections.ConfigDict, num_processes: int) -> None:
  """Refuses a step whose images alone (uint8, this process's share) exceed the host's memory:
  they must be read into it before they reach the devices, and the run would otherwise be
  killed by the OS after its start-up, with no message (a typo'd batch of 2^31 was)."""
  size, calls = config.data.image_size, config.train.steps_per_call
  rows = config.train.batch_size * config.train.n_critic // max(num_processes, 1)
  beyond = resources.beyond_host_memory(rows * size ** 2 * 3)
  require(not beyond, "train.batch_size",
          f"a step's {rows} images (batch_size * n_critic per process) of {size}x{size}x3 bytes "
          f"take {beyond}; use a smaller batch")
  # A call's steps are read and stacked on the host together.
  beyond = resources.beyond_host_memory(calls * rows * size ** 2 * 3)
  require(not beyond, "train.steps_per_call",
          f"a call's {calls * rows} images (batch_size * n_critic * steps_per_call per process) "
          f"of {size}x{size}x3 bytes take {beyond}; use fewer steps per call")


# One image as FID Inception's float32 input: what an evaluation batch holds per image at the
# least, before any activation.
_INCEPTION_INPUT_BYTES = 299 * 299 * 3 * 4


def eval_batch_problem(per_device: int, devices: int) -> str:
  """Why an Inception batch of `per_device` images on each of this process's `devices` cannot
  fit this host's memory ('' where it may): a typo'd batch was padded with zeros in host memory
  after the data was read (evaluate: a MemoryError traceback; training: every evaluation
  failed)."""
  images = per_device * max(devices, 1)
  beyond = resources.beyond_host_memory(images * _INCEPTION_INPUT_BYTES)
  return (f"an Inception batch of {images} images (its 299x299 float32 inputs alone) takes "
          f"{beyond}; use a smaller batch (the default is 32 per device)") if beyond else ""


def validate_distributed(config: ml_collections.ConfigDict) -> None:
  """The keys `jax.distributed` needs; checked before the backend starts."""
  d = config.distributed
  if d.coordinator_address and d.coordinator_address != "auto":
    host, _, port = d.coordinator_address.rpartition(":")
    require(bool(host) and port.isdecimal() and 1 <= int(port) <= 65535,
            "distributed.coordinator_address", f"must be host:port with a port in 1..65535 "
            f"(process 0's host), or 'auto'; got {d.coordinator_address!r}")
    require(isinstance(d.num_processes, int) and d.num_processes >= 1,
            "distributed.num_processes", f"must be >= 1, got {d.num_processes}")
    require(isinstance(d.process_id, int) and 0 <= d.process_id < d.num_processes,
            "distributed.process_id", f"must be in 0..{d.num_processes - 1}, got {d.process_id}")
    return
  # Read only with an explicit host:port: set without one, each launched process would train
  # alone, all of them in the same workdir.
  for key, default in (("num_processes", 1), ("process_id", 0)):
    if d.coordinator_address:  # 'auto'
      why = "with distributed.coordinator_address='auto' JAX detects it; leave it"
    else:
      why = ("it is read only with distributed.coordinator_address=host:port (each process "
             "would train alone, all in the same workdir); set that, or leave it")
    require(d[key] == default, f"distributed.{key}", f"got {d[key]}, but {why} at {default}")
