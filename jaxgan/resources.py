"""Memory in use, for the training log (StyleGAN2-ADA's Resources/* figures) and the benchmark:
the accelerators' peak where the backend reports it (GPU, TPU; not CPU), and the host process's
resident memory (a tf.data pipeline or a leak that grows over days shows there first); and the
host's physical memory, which the checks before a large allocation compare against (no JAX at
import: image-decoding workers load this module)."""

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
  """This host's physical memory, or None where the OS does not say."""
  try:
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
  except (AttributeError, OSError, ValueError):  # Windows; an OS without the names
    return None


def beyond_host_memory(needed: int) -> str:
  """'X GiB, more than this host's Y GiB of memory' when `needed` bytes exceed this host's
  physical memory, else '' (also where the OS does not say): for the one-line errors that come
  before an allocation that would end in the OS's out-of-memory kill (no message at all)."""
  memory = host_memory_bytes()
  if memory is None or needed <= memory:
    return ""
  return f"{needed / _GB:.4g} GiB, more than this host's {memory / _GB:.4g} GiB of memory"
