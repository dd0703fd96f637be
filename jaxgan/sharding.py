"""Device mesh, shardings and multi-host start-up: JAX's own SPMD machinery, nothing home-made.

The mesh has two axes: 'data' (pure data parallelism: a replica of the state per group) and
'fsdp' (fully sharded data parallelism: parameters and optimizer states split over it). The batch
is split over both, so every device gets a different slice. Under `jax.jit` XLA inserts the
collectives: the gradient all-reduce (reduce-scatter with fsdp), the parameter all-gathers, and the
cross-device BatchNorm reductions (statistics cover the global batch).
"""

from __future__ import annotations

import collections
import errno
import logging
import signal
import socket
import threading
from typing import Any, Optional, Sequence

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from jax.experimental import mesh_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

log = logging.getLogger(__name__)

DATA_AXIS = "data"
FSDP_AXIS = "fsdp"
BATCH_AXES = (DATA_AXIS, FSDP_AXIS)
# Leaves smaller than this stay replicated under fsdp: splitting a bias saves nothing and costs a
# collective per use.
MIN_FSDP_SIZE = 2**12


def initialize_distributed(config: ml_collections.ConfigDict) -> None:
  """Starts `jax.distributed` when the run spans several processes.

  - `distributed.coordinator_address = 'auto'`: JAX detects everything itself (Cloud TPU pods,
    SLURM, Open MPI); the launch scripts in launch/ pass this.
  - `distributed.coordinator_address = 'host:port'`: explicit, with `num_processes`, `process_id`;
    each process keeps all its local devices (no cluster detection).
  - otherwise: a single process, nothing to do.
  Must run before anything touches the JAX backend.
  """
  d = config.distributed
  if jax.distributed.is_initialized():  # the trainer starts it before its agreed checks
    return
  if not d.coordinator_address:
    return
  # JAX's preemption notifier takes SIGTERM (in C: Python's table still names the handler before)
  # and tells Python nothing. A stop request's handler goes back at once, not after the agreed
  # config checks that follow (all-gathers, seconds on a pod): a SIGTERM between was lost, and
  # the run trained to its end.
  before = signal.getsignal(signal.SIGTERM)
  # Said first: JAX waits (5 minutes by default) for every process to join, silently, and a
  # process that never does (not started, another num_processes or port) ends this one with a
  # C++ abort rather than an error.
  log.info("joining jax.distributed (%s): waiting for every process to start",
           "detected from the cluster" if d.coordinator_address == "auto" else
           f"coordinator {d.coordinator_address}, process {d.process_id} of {d.num_processes}")
  if d.coordinator_address == "auto":
    jax.distributed.initialize()
  else:
    if d.process_id == 0:
      _check_port_free(d.coordinator_address)
    # Detection off: everything is given, and under a SLURM or Open MPI allocation JAX's
    # detection would still fill in local_device_ids (one GPU per process) behind our back.
    jax.distributed.initialize(coordinator_address=d.coordinator_address,
                               num_processes=d.num_processes, process_id=d.process_id,
                               cluster_detection_method="deactivate")
  if callable(before) and threading.current_thread() is threading.main_thread():
    signal.signal(signal.SIGTERM, before)
  log.info("jax.distributed: process %d of %d, %d local / %d global devices",
           jax.process_index(), jax.process_count(), jax.local_device_count(), jax.device_count())


def uneven_devices(devices: Sequence[jax.Device]) -> str:
  """Why the processes' device counts (from the global `devices`, alike on every process: no
  collective) cannot run one job, '' where every process has as many: JAX's collectives
  between processes (every all-gather of a start's agreed checks) assume it, and failed with a
  reshape traceback on a node with a GPU hidden or drained."""
  counts = collections.Counter(d.process_index for d in devices)
  if len(set(counts.values())) <= 1:
    return ""
  seen = ", ".join(f"process {p}: {n}" for p, n in sorted(counts.items())[:8])
  more = ", ..." if len(counts) > 8 else ""
  return (f"the processes have different numbers of devices ({seen}{more}); "
          "every process of a run needs as many: check each node's visible GPUs or TPU chips "
          "(CUDA_VISIBLE_DEVICES, a drained or failed device)")


class PortInUse(ValueError):
  """The coordinator's port is taken on process 0's host."""


def _check_port_free(address: str) -> None:
  """Raises PortInUse when `address`'s port is taken on this host, where process 0 is to serve
  the coordinator: JAX's gRPC server then fails to bind, and a run of several processes could
  die of a segmentation fault rather than an error (seen with a launcher's random port)."""
  port = address.rpartition(":")[2]
  if not port.isdigit():
    return  # JAX's own error names it
  # The coordinator binds [::]:PORT, which takes IPv4 too: a dual-stack bind sees both; IPv4
  # alone where IPv6 is off. SO_REUSEADDR: a port its last run left in TIME_WAIT is free.
  for family, host in ((socket.AF_INET6, "::"), (socket.AF_INET, "")):
    try:
      probe = socket.socket(family, socket.SOCK_STREAM)
    except OSError:  # no IPv6 on this host
      continue
    try:
      with probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if family == socket.AF_INET6:  # IPv4 too, whatever the host's bindv6only default
          probe.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        probe.bind((host, int(port)))
      return
    except OSError as e:
      if e.errno == errno.EADDRINUSE:
        raise PortInUse(f"port {port} is in use on this host, where process 0 serves the "
                        "coordinator; pick a free one") from None
      # Anything else (IPv6 present but unusable, a port below 1024): the next family, or JAX.


def mesh_shape(config: ml_collections.ConfigDict, num_devices: int) -> tuple[int, int]:
  """(data, fsdp) sizes; `mesh.data = -1` takes the devices that fsdp leaves."""
  fsdp = config.mesh.fsdp
  data = num_devices // fsdp if config.mesh.data == -1 else config.mesh.data
  return data, fsdp


def make_mesh(config: ml_collections.ConfigDict) -> Mesh:
  """The ('data', 'fsdp') mesh over all devices, or the first data * fsdp of one process."""
  return Mesh(device_grid(config, jax.devices()), BATCH_AXES)


def device_grid(config: ml_collections.ConfigDict, devices: list) -> np.ndarray:
  """The [data, fsdp] array of `devices` the mesh is made of.

  Over all devices the order is JAX's topology-aware one (`create_device_mesh`): on TPU slices
  'fsdp', the axis with the most traffic, runs along physical torus neighbours, which a plain
  reshape of `jax.devices()` does not promise. Devices of several slices (`slice_index`:
  multislice TPU jobs, joined by the slower data-centre network) are laid out by
  `create_hybrid_device_mesh`: 'data' is split across the slices and every fsdp group stays
  inside one, so fsdp's parameter gathers and gradient reduce-scatters never cross between
  slices; the data-parallel traffic does (the gradient all-reduce over 'data', the global
  batch's BatchNorm statistics). A process's devices may then hold scattered rows of the batch;
  `process_rows` tells the input pipeline which ones."""
  data, fsdp = mesh_shape(config, len(devices))
  slices = len({getattr(d, "slice_index", 0) for d in devices})
  if data * fsdp == len(devices):
    try:
      if slices > 1 and data % slices == 0:
        return mesh_utils.create_hybrid_device_mesh(
            (data // slices, fsdp), (slices, 1), devices, allow_split_physical_axes=True)
      if slices > 1:
        log.warning("mesh %dx%d over %d slices: 'data' (%d) is no multiple of the slices, so "
                    "fsdp's collectives cross the network between slices", data, fsdp, slices,
                    data)
      return mesh_utils.create_device_mesh((data, fsdp), devices, allow_split_physical_axes=True)
    except (ValueError, NotImplementedError, AssertionError) as e:
      # Shapes JAX cannot lay onto the torus: still a valid mesh, with collectives that may
      # cross more links.
      log.warning("mesh %dx%d: no topology-aware device order (%s); using jax.devices() order",
                  data, fsdp, e)
  # Also a sub-mesh (single process only, see validation): asked for, but said, since the
  # devices it leaves out sit idle for the whole run.
  if data * fsdp < len(devices):
    log.warning("mesh %dx%d uses %d of the %d devices; the other %d stay idle (mesh.data=-1 "
                "takes them all)", data, fsdp, data * fsdp, len(devices),
                len(devices) - data * fsdp)
  return np.asarray(devices[:data * fsdp]).reshape(data, fsdp)


def local_mesh() -> Mesh:
  """This process's devices as a (data, fsdp=1) mesh, for work one host does alone (the samples
  and Inception features of `evaluate` and `generate`): the run mesh's axis names, so
  `batch_sharding` and `replicated` apply to it as to the run's."""
  return Mesh(np.asarray(jax.local_devices()).reshape(-1, 1), BATCH_AXES)


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def batch_sharding(mesh: Mesh, stacked: bool = False) -> NamedSharding:
  """Batch axis split over every device of the mesh: the leading axis, or the second one for
  batches stacked per step (train.steps_per_call > 1; every device keeps its rows of each step)."""
  return NamedSharding(mesh, P(None, BATCH_AXES) if stacked else P(BATCH_AXES))


def leaf_spec(shape: tuple[int, ...], fsdp: int) -> P:
  """Replicated, or split over 'fsdp' along the largest dimension that divides evenly."""
  if fsdp == 1 or int(np.prod(shape, dtype=np.int64)) < MIN_FSDP_SIZE:
    return P()
  for axis in sorted(range(len(shape)), key=lambda a: -shape[a]):
    if shape[axis] % fsdp == 0:
      spec = [None] * len(shape)
      spec[axis] = FSDP_AXIS
      return P(*spec)
  return P()


def split_values(tree: Any, fsdp: int) -> tuple[int, int]:
  """(values in the leaves of `tree` that `leaf_spec` splits over 'fsdp', all its values)."""
  sizes = [(int(np.prod(x.shape, dtype=np.int64)), leaf_spec(x.shape, fsdp) != P())
           for x in jax.tree_util.tree_leaves(tree)]
  return sum(n for n, split in sizes if split), sum(n for n, _ in sizes)


def warn_if_fsdp_splits_little(abstract_state: Any, fsdp: int, at_least: float = 0.9) -> None:
  """Logs a warning when 'fsdp' leaves most parameter values replicated: a leaf is split only
  along a dimension fsdp divides, and channel counts are powers of two: fsdp=3 splits none of the
  DCGAN values (4x4 kernels) and about 70-95% of the ResNets' (along the 3 taps of a 3x3 kernel;
  less with class embeddings), and fsdp=6 at most ~2% of either."""
  if fsdp == 1:
    return
  split, total = map(sum, zip(split_values(abstract_state.g_params, fsdp),
                              split_values(abstract_state.d_params, fsdp)))
  if split < at_least * total:
    # Why the rest stays whole, which says what to do: leaves too small to split (a model this
    # small gains little from fsdp), or leaves no dimension of which fsdp divides.
    sizes = [int(np.prod(x.shape, dtype=np.int64)) for x in jax.tree_util.tree_leaves(
        (abstract_state.g_params, abstract_state.d_params))]
    small = sum(n for n in sizes if n < MIN_FSDP_SIZE)
    odd = total - split - small
    share = lambda n: f"{100 * n / total:.0f}%" if 200 * n >= total else "<1%"
    reasons = [f"{share(small)} in leaves under {MIN_FSDP_SIZE} values, too small to split"
               if small else "",
               f"{share(odd)} in leaves with no dimension {fsdp} divides" + (
                   "" if fsdp & (fsdp - 1) == 0 else " (a power of two divides channel counts)")
               if odd else ""]
    log.warning("mesh.fsdp=%d splits only %.0f%% of the parameters; the rest is replicated on "
                "every device: %s", fsdp, 100 * split / max(total, 1),
                ", ".join(r for r in reasons if r))


def state_shardings(mesh: Mesh, abstract_state: Any) -> Any:
  """A NamedSharding for every state leaf: parameters, EMA and optimizer moments are split over
  'fsdp' (same rule by shape, so a parameter and its Adam moments live together); scalars,
  keys and small leaves are replicated."""
  fsdp = mesh.shape[FSDP_AXIS]
  return jax.tree_util.tree_map(lambda x: NamedSharding(mesh, leaf_spec(x.shape, fsdp)),
                                abstract_state)


def process_rows(sharding: NamedSharding, num_rows: int,
                 devices: Optional[Sequence[jax.Device]] = None) -> np.ndarray:
  """Sorted indices of the rows of a [num_rows, ...] batch (split along its first axis by
  `sharding`, e.g. `batch_sharding(mesh)`; a stacked batch splits each step's rows alike) that
  `devices` hold: by default this process's devices.

  `jax.make_array_from_process_local_data` fills a process's devices from its local rows in
  this order, so a process that loads exactly these rows of the global batch builds the same
  global batch under any process layout, also when its devices are not contiguous in the mesh.
  A row held by several devices (replication) is listed once."""
  wanted = set(sharding.addressable_devices if devices is None else devices)
  rows = [np.arange(num_rows)[index[0]]
          for device, index in sharding.devices_indices_map((num_rows,)).items()
          if device in wanted]
  return np.unique(np.concatenate(rows)) if rows else np.zeros(0, np.int64)


def put_batch(batch: dict[str, np.ndarray], sharding: NamedSharding, rows: int
              ) -> dict[str, jax.Array]:
  """Assembles the global batch of `rows` rows (per step: `sharding` is a `batch_sharding`) from
  this process's share of it, the rows `process_rows` lists. The global shape is given, not
  inferred from the local one: a process that loaded another number of rows fails here instead
  of building another global array than the other processes."""
  axis = list(sharding.spec).index(BATCH_AXES)

  def put(local: np.ndarray) -> jax.Array:
    shape = local.shape[:axis] + (rows,) + local.shape[axis + 1:]
    return jax.make_array_from_process_local_data(sharding, local, shape)

  return {k: put(v) for k, v in batch.items()}


def put_replicated(value: Any, mesh: Mesh) -> Any:
  """A host value that every process holds identically, as a replicated global array."""
  sharding = replicated(mesh)
  return jax.tree_util.tree_map(
      lambda x: jax.make_array_from_process_local_data(sharding, np.asarray(x)), value)


def to_host(tree: Any) -> Any:
  """Numpy copies of replicated arrays, also when other processes hold devices of the array. One
  `device_get` for the whole tree: the copies start together instead of one sync per leaf."""
  local = jax.tree_util.tree_map(lambda x: x.addressable_data(0), tree)
  return jax.tree_util.tree_map(np.asarray, jax.device_get(local))


# Stacks same-structured trees leaf by leaf: compiled once per list length (a log row's calls).
_stack_trees = jax.jit(lambda trees: jax.tree_util.tree_map(lambda *xs: jnp.stack(xs), *trees))


def to_host_list(trees: list) -> list:
  """`to_host` of each of a list of same-structured replicated trees (a log row's per-call
  metrics), stacked on the device first: one transfer per leaf instead of one per leaf and tree
  (docs/benchmarks.md has the measurement)."""
  if not trees:
    return []
  stacked = to_host(_stack_trees(list(trees)))
  return [jax.tree_util.tree_map(lambda x, i=i: x[i], stacked) for i in range(len(trees))]


def gradient_bytes_per_step(g_params: int, d_params: int, n_critic: int, data: int, fsdp: int,
                            bytes_per_value: int = 4, g_split: Optional[int] = None,
                            d_split: Optional[int] = None) -> dict[str, float]:
  """Bytes each device sends per train step for parameters and gradients (bandwidth-optimal ring
  collectives; BatchNorm statistics, a few KB, are left out).

  Pure data parallelism (fsdp = 1): an all-reduce of every gradient, 2 (N - 1) / N * size,
  once for G and `n_critic` times for D.
  With fsdp = F, every use of a parameter set gathers it ((F - 1) / F * size per all-gather),
  and every update of one reduce-scatters its gradient ((F - 1) / F * size) and all-reduces the
  1/F shard over the data axis. Uses per step: G forward and backward (2 gathers) plus one
  forward per extra critic update; D forward and backward per D update (2 gathers each) and for
  G's update (D forward and its input-gradient pass: 2 more, no D gradient).
  `g_split` / `d_split`: the values of leaves split over fsdp (`split_values`; all by default);
  the others are replicated on every device, so their gradients are all-reduced over all
  N * F devices, as under pure data parallelism, and never gathered.
  """
  gather = (fsdp - 1) / fsdp
  all_reduce = lambda values, devices: 2 * (devices - 1) / devices * values * bytes_per_value

  def network(params: int, split: Optional[int], updates: int, gathers: int) -> float:
    if fsdp == 1:
      return updates * all_reduce(params, data)
    split = params if split is None else split
    per_update = (gather * split * bytes_per_value + all_reduce(split / fsdp, data)
                  + all_reduce(params - split, data * fsdp))
    return updates * per_update + gathers * gather * split * bytes_per_value

  g = network(g_params, g_split, 1, 2 + (n_critic - 1))
  d = network(d_params, d_split, n_critic, 2 * n_critic + 2)
  return {"g_bytes": g, "d_bytes": d, "total_bytes": g + d}
