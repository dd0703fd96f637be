"""Rows of a memory-mapped prepared set gathered by one thread vs ArraySource's threads, with the
page cache dropped before each batch (needs root: writes /proc/sys/vm/drop_caches).

  python benchmarks/memmap_gather.py [--rows 40000] [--batch 1024] [--pairs 10] [--path FILE]

Alternates the two in pairs on fresh random batches and prints each pair and the medians. A
VM's host may cache the disk itself, so later pairs can read faster than a true cold read.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import os
import subprocess
import time

import numpy as np

from jaxgan.data import arrays


def main() -> None:
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--rows", type=int, default=40000)
  p.add_argument("--batch", type=int, default=1024)
  p.add_argument("--pairs", type=int, default=10)
  p.add_argument("--path", default="/tmp/jaxgan-memmap-gather.npy")
  args = p.parse_args()
  if os.geteuid() != 0:
    raise SystemExit("error: dropping the page cache needs root")
  if not os.path.exists(args.path):  # 64x64 RGB rows, as a prepared set's cache file holds
    images = np.lib.format.open_memmap(args.path, "w+", np.uint8, (args.rows, 64, 64, 3))
    for i in range(0, args.rows, 5000):
      images[i:i + 5000] = np.random.default_rng(i).integers(0, 255, images[i:i + 5000].shape)
    images.flush()
    del images
  mapped = np.load(args.path, mmap_mode="r")
  pool = concurrent.futures.ThreadPoolExecutor(arrays.GATHER_THREADS)
  rng = np.random.default_rng(1)
  times: dict[str, list[float]] = {"one thread": [], f"{arrays.GATHER_THREADS} threads": []}
  for _ in range(args.pairs):
    for name, gather in zip(times, (lambda i: np.take(mapped, i, axis=0),
                                    lambda i: arrays._gather(mapped, i, pool))):
      idx = rng.integers(0, len(mapped), args.batch)
      subprocess.run("sync; echo 1 > /proc/sys/vm/drop_caches", shell=True, check=True)
      start = time.perf_counter()
      gather(idx)
      times[name].append(time.perf_counter() - start)
  print("pairs (ms):", ", ".join(f"{a * 1e3:.0f}/{b * 1e3:.0f}" for a, b in zip(*times.values())))
  for name, values in times.items():
    print(f"{name}: median {np.median(values) * 1e3:.0f} ms per batch of {args.batch}")


if __name__ == "__main__":
  main()
