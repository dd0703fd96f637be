"""Memory in use, for the training log (StyleGAN2-ADA's Resources/* figures) and the benchmark:
the accelerators' peak where the backend reports it (GPU, TPU; not CPU), and the host process's
resident memory (a tf.data pipeline or a leak that grows over days shows there first); and the
memory this process may use (physical, or its container's limit), which the checks before a large
allocation compare against (no JAX at import: image-decoding workers load this module)."""

from __future__ import annotations

import os
from typing import Optional, Sequence

_GB = 2.0**30


def peak_memory_bytes(devices: Optional[Sequence] = None) -> Optional[int]:
  """The largest peak allocation so far among `devices` (default: the first device), where the
  backend reports one; None where none does. JAX cannot reset the peak: it is the process's."""
  import jax  # pylint: disable=g-import-not-at-top  (here: decoding workers import this module)

  peaks = []
  for device in devices or jax.devices()[:1]:
    stats = device.memory_stats() if hasattr(device, "memory_stats") else None
    if (stats or {}).get("peak_bytes_in_use") is not None:
      peaks.append(int(stats["peak_bytes_in_use"]))
  return max(peaks) if peaks else None


def host_resident_bytes() -> Optional[int]:
  """This process's resident memory now (Linux's /proc; None elsewhere)."""
  try:
    with open("/proc/self/statm", encoding="ascii") as f:
      return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
  except (OSError, ValueError, IndexError, AttributeError):
    return None


def memory_row(devices: Sequence) -> dict[str, float]:
  """The log row's memory figures in GiB: `memory/device_peak_gb` (the largest of `devices`'
  peaks: this process's) and `memory/host_gb`, each where it is known (absent, not NaN, where it
  is not: a CPU run's curves would be all gaps)."""
  row = {}
  peak = peak_memory_bytes(devices)
  if peak is not None:
    row["memory/device_peak_gb"] = peak / _GB
  host = host_resident_bytes()
  if host is not None:
    row["memory/host_gb"] = host / _GB
  return row


def host_memory_bytes() -> Optional[int]:
  """The memory this process may use: the host's physical memory, or its cgroup's limit where
  that is lower (a container's: a Kubernetes pod limited to 32 GiB on a 1 TiB host is killed at
  32); None where the OS does not say."""
  try:
    physical = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
  except (AttributeError, OSError, ValueError):  # Windows; an OS without the names
    physical = None
  limits = [m for m in (physical, cgroup_memory_limit()) if m is not None]
  return min(limits) if limits else None


# cgroup v1 writes "no limit" as a page-rounded 2^63 - 1.
_NO_LIMIT = 2**62


def cgroup_memory_limit(proc_cgroup: str = "/proc/self/cgroup", root: str = "/sys/fs/cgroup"
                        ) -> Optional[int]:
  """The lowest memory limit on this process's cgroup and the cgroups above it (cgroup v2's
  memory.max, v1's memory.limit_in_bytes), or None where none is set or readable (not Linux; no
  cgroup file system mounted). Inside a container its own cgroup is mounted at `root`, while
  `proc_cgroup` may name the host's path for it: both places are read."""
  try:
    with open(proc_cgroup, encoding="utf-8") as f:
      lines = f.read().splitlines()
  except OSError:
    return None
  files = []
  for line in lines:
    parts = line.split(":", 2)
    if len(parts) != 3:
      continue
    hierarchy, controllers, path = parts
    if hierarchy == "0" and not controllers:  # v2: one unified hierarchy
      base, name = root, "memory.max"
    elif "memory" in controllers.split(","):  # v1: the memory controller's own hierarchy
      base, name = os.path.join(root, "memory"), "memory.limit_in_bytes"
    else:
      continue
    folders = [p for p in path.strip("/").split("/") if p]
    files += [os.path.join(base, *folders[:depth], name) for depth in range(len(folders) + 1)]
  limits = []
  for path in files:
    try:
      with open(path, encoding="ascii") as f:
        value = f.read().strip()
    except OSError:
      continue
    if value.isdigit() and int(value) < _NO_LIMIT:  # v2 writes "max" for none
      limits.append(int(value))
  return min(limits) if limits else None


def out_of_memory(error: BaseException) -> str:
  """The first line of `error` where it is XLA's out-of-memory error (a GPU/TPU's
  RESOURCE_EXHAUSTED about memory or an allocation, the CPU's 'Out of memory allocating ...'),
  else '' (also for other RESOURCE_EXHAUSTED errors: a collective's message over gRPC's size
  limit keeps its traceback)."""
  text = str(error)
  first = text.splitlines()[0] if text else ""
  lower = text.lower()
  memory = "out of memory" in lower or ("RESOURCE_EXHAUSTED" in text and (
      "memory" in lower or "allocat" in lower))
  return first if memory else ""


def beyond_host_memory(needed: int) -> str:
  """'X GiB, more than this host's Y GiB of memory' when `needed` bytes exceed the memory this
  process may use (host_memory_bytes), else '' (also where the OS does not say): for the
  one-line errors that come before an allocation that would end in the OS's out-of-memory kill
  (no message at all)."""
  memory = host_memory_bytes()
  if memory is None or needed <= memory:
    return ""
  whose = ("its container's (cgroup) limit of" if memory == cgroup_memory_limit()
           else "this host's")
  return f"{needed / _GB:.4g} GiB, more than {whose} {memory / _GB:.4g} GiB of memory"
